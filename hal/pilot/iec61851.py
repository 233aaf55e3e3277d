"""IEC 61851-1 control-pilot arithmetic: PWM duty cycle <-> current, proximity-pilot cable
ratings and pilot-voltage states, as pure functions.

Duty cycle (IEC 61851-1 Annex A), EVSE side, for an offer of I amperes:

- 6 A <= I <= 51 A: duty = I / 0.6 %            (6 A -> 10 %, 51 A -> 85 %)
- 51 A < I <= 80 A: duty = I / 2.5 + 64 %       (80 A -> 96 %)
- 5 % means "digital communication required" (ISO 15118 / DIN 70121), no analogue offer;
- 100 % (a steady +12 V, no oscillation) means "not available": no energy offered.

EV side, reading a duty cycle d back (the table the EV applies, tolerances included):
d < 3 %: no charging; 3-7 %: digital communication required; 7-8 %: no charging;
8-10 %: 6 A; 10-85 %: d x 0.6; 85-96 %: (d - 64) x 2.5; 96-97 %: 80 A; > 97 %: no charging.
The round trip current -> duty -> current is exact except for 51 A < I <= 52.5 A: the upper
formula then gives a duty of at most 85 %, which the EV reads with the lower one as slightly *less*
current than offered (the standard's own gap; it errs on the safe side).

Proximity pilot (IEC 61851-1 Annex B / IEC 62196): a resistor between PP and PE in the plug
codes the cable's current capacity: 1.5 kOhm 13 A, 680 Ohm 20 A, 220 Ohm 32 A, 100 Ohm 63 A.
A reading outside every band (open circuit, short, between bands) is not a valid cable.

Pilot voltage (the positive plateau the EVSE measures): +12 V A, +9 V B, +6 V C, +3 V D,
0 V E, -12 V F, each +-1 V; anything between the bands is no valid state.
"""

from __future__ import annotations

import math

from hal.interfaces import PilotState

__all__ = [
    "DIGITAL_COMMUNICATION_DUTY_PCT",
    "MAX_PWM_CURRENT_A",
    "MIN_PWM_CURRENT_A",
    "NOT_AVAILABLE_DUTY_PCT",
    "PILOT_VOLTAGE_TOLERANCE_V",
    "PP_CABLE_RATINGS",
    "cable_rating_from_pp_resistor",
    "current_from_duty_cycle",
    "duty_cycle_from_current",
    "pilot_voltage",
    "requires_digital_communication",
    "state_from_pilot_voltage",
]

MIN_PWM_CURRENT_A = 6.0
MAX_PWM_CURRENT_A = 80.0
# Where the lower formula (I / 0.6) hands over to the upper one (I / 2.5 + 64).
_LOW_RANGE_MAX_A = 51.0
DIGITAL_COMMUNICATION_DUTY_PCT = 5.0
NOT_AVAILABLE_DUTY_PCT = 100.0

# (lowest ohms, highest ohms, nominal ohms, cable rating in amperes), per IEC 61851-1 Table B.2.
PP_CABLE_RATINGS: tuple[tuple[float, float, float, float], ...] = (
    (1100.0, 2460.0, 1500.0, 13.0),
    (400.0, 936.0, 680.0, 20.0),
    (164.0, 308.0, 220.0, 32.0),
    (75.0, 140.0, 100.0, 63.0),
)

PILOT_VOLTAGE_TOLERANCE_V = 1.0
_PILOT_VOLTAGES: dict[PilotState, float] = {
    PilotState.A: 12.0,
    PilotState.B: 9.0,
    PilotState.C: 6.0,
    PilotState.D: 3.0,
    PilotState.E: 0.0,
    PilotState.F: -12.0,
}


def _finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value!r}")
    return float(value)


def duty_cycle_from_current(amps: float) -> float:
    """The PWM duty cycle (percent) that offers `amps` (6 to 80 A) to the EV.

    Raises ValueError outside 6-80 A: below 6 A there is no analogue offer (use
    NOT_AVAILABLE_DUTY_PCT, a steady +12 V), above 80 A none is defined.
    """
    current = _finite("current", amps)
    if not MIN_PWM_CURRENT_A <= current <= MAX_PWM_CURRENT_A:
        raise ValueError(
            f"IEC 61851-1 PWM offers {MIN_PWM_CURRENT_A:g} to {MAX_PWM_CURRENT_A:g} A, "
            f"not {current:g} A"
        )
    if current <= _LOW_RANGE_MAX_A:
        return current / 0.6
    return current / 2.5 + 64.0


def current_from_duty_cycle(duty_pct: float) -> float | None:
    """The current (A) an EV may draw when it reads `duty_pct`; None when that duty cycle
    allows no analogue charging (including 5 %, digital communication, and 100 %).

    Raises ValueError for a duty cycle outside 0-100 %.
    """
    duty = _finite("duty cycle", duty_pct)
    if not 0.0 <= duty <= 100.0:
        raise ValueError(f"a duty cycle is 0 to 100 %, not {duty:g} %")
    if duty < 8.0 or duty > 97.0:
        return None
    if duty < 10.0:
        return MIN_PWM_CURRENT_A
    if duty <= 85.0:
        return duty * 0.6
    if duty <= 96.0:
        return (duty - 64.0) * 2.5
    return MAX_PWM_CURRENT_A


def requires_digital_communication(duty_pct: float) -> bool:
    """True for 3-7 % (nominally 5 %): the EVSE asks for high-level communication."""
    duty = _finite("duty cycle", duty_pct)
    if not 0.0 <= duty <= 100.0:
        raise ValueError(f"a duty cycle is 0 to 100 %, not {duty:g} %")
    return 3.0 <= duty <= 7.0


def cable_rating_from_pp_resistor(ohms: float) -> float | None:
    """The cable's current capacity (A) coded by a PP-PE resistance of `ohms`; None when the
    value is in no band (no cable / open circuit, a short, or between two bands)."""
    value = _finite("resistance", ohms)
    if value < 0:
        raise ValueError(f"a resistance is >= 0 Ohm, not {value:g}")
    for low, high, _nominal, amps in PP_CABLE_RATINGS:
        if low <= value <= high:
            return amps
    return None


def pilot_voltage(state: PilotState) -> float:
    """The nominal positive pilot voltage of `state` (what the EVSE measures)."""
    return _PILOT_VOLTAGES[PilotState(state)]


def state_from_pilot_voltage(volts: float) -> PilotState | None:
    """The state whose nominal voltage is within +-1 V of `volts`; None between the bands."""
    value = _finite("voltage", volts)
    for state, nominal in _PILOT_VOLTAGES.items():
        if abs(value - nominal) <= PILOT_VOLTAGE_TOLERANCE_V:
            return state
    return None
