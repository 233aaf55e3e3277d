"""Tests of hal.pilot.iec61851: duty cycle <-> current, PP cable ratings, pilot-voltage states."""

from __future__ import annotations

import math

import pytest

from hal.interfaces import PilotState
from hal.pilot.iec61851 import (
    DIGITAL_COMMUNICATION_DUTY_PCT,
    NOT_AVAILABLE_DUTY_PCT,
    cable_rating_from_pp_resistor,
    current_from_duty_cycle,
    duty_cycle_from_current,
    pilot_voltage,
    requires_digital_communication,
    state_from_pilot_voltage,
)


@pytest.mark.parametrize(
    ("amps", "duty"),
    [
        (6.0, 10.0),
        (10.0, 100 / 6),
        (16.0, 26.6667),
        (32.0, 53.3333),
        (51.0, 85.0),  # the last current of the lower formula
        (52.5, 85.0),  # the upper formula: 52.5 / 2.5 + 64
        (63.0, 89.2),
        (80.0, 96.0),
    ],
)
def test_duty_cycle_from_current(amps: float, duty: float) -> None:
    assert duty_cycle_from_current(amps) == pytest.approx(duty, abs=1e-3)


@pytest.mark.parametrize("amps", [0.0, 5.99, 80.01, 100.0, -6.0, math.nan, math.inf])
def test_duty_cycle_from_current_out_of_range(amps: float) -> None:
    with pytest.raises(ValueError):
        duty_cycle_from_current(amps)


@pytest.mark.parametrize("amps", [True, "16", None])
def test_duty_cycle_from_current_not_a_number(amps: object) -> None:
    with pytest.raises(ValueError):
        duty_cycle_from_current(amps)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("duty", "amps"),
    [
        (10.0, 6.0),
        (26.6667, 16.0),
        (50.0, 30.0),
        (85.0, 51.0),
        (89.2, 63.0),
        (96.0, 80.0),
        (8.0, 6.0),  # 8-10 %: 6 A
        (9.5, 6.0),
        (96.5, 80.0),  # 96-97 %: 80 A
        (97.0, 80.0),
    ],
)
def test_current_from_duty_cycle(duty: float, amps: float) -> None:
    assert current_from_duty_cycle(duty) == pytest.approx(amps, abs=1e-3)


@pytest.mark.parametrize("duty", [0.0, 2.9, DIGITAL_COMMUNICATION_DUTY_PCT, 7.5, 97.1, 100.0])
def test_no_analogue_charging(duty: float) -> None:
    assert current_from_duty_cycle(duty) is None


def test_not_available_means_no_charge() -> None:
    assert NOT_AVAILABLE_DUTY_PCT == 100.0
    assert current_from_duty_cycle(NOT_AVAILABLE_DUTY_PCT) is None


@pytest.mark.parametrize("duty", [-0.1, 100.1, math.nan, math.inf])
def test_duty_cycle_out_of_range(duty: float) -> None:
    with pytest.raises(ValueError):
        current_from_duty_cycle(duty)
    with pytest.raises(ValueError):
        requires_digital_communication(duty)


def test_digital_communication() -> None:
    assert requires_digital_communication(5.0)
    assert requires_digital_communication(3.0)
    assert requires_digital_communication(7.0)
    assert not requires_digital_communication(2.9)
    assert not requires_digital_communication(10.0)


@pytest.mark.parametrize("amps", [6, 7.5, 13, 16, 20, 32, 40, 50, 51, 52.6, 60, 63, 70, 80])
def test_round_trip(amps: float) -> None:
    assert current_from_duty_cycle(duty_cycle_from_current(amps)) == pytest.approx(amps)


@pytest.mark.parametrize("amps", [51.5, 52.0, 52.5])
def test_round_trip_gap_errs_low(amps: float) -> None:
    """Above 51 A up to 52.5 A the two formulas overlap: the EV reads a little less, never more."""
    read = current_from_duty_cycle(duty_cycle_from_current(amps))
    assert read is not None
    assert 50.0 < read < amps


@pytest.mark.parametrize(
    ("ohms", "amps"),
    [
        (1500.0, 13.0),
        (680.0, 20.0),
        (220.0, 32.0),
        (100.0, 63.0),
        (1100.0, 13.0),
        (2460.0, 13.0),
        (400.0, 20.0),
        (936.0, 20.0),
        (164.0, 32.0),
        (308.0, 32.0),
        (75.0, 63.0),
        (140.0, 63.0),
    ],
)
def test_pp_ratings(ohms: float, amps: float) -> None:
    assert cable_rating_from_pp_resistor(ohms) == amps


@pytest.mark.parametrize("ohms", [0.0, 10.0, 150.0, 350.0, 1000.0, 3000.0, 1e9])
def test_pp_no_valid_cable(ohms: float) -> None:
    """A short, an open circuit or a value between two bands codes no cable."""
    assert cable_rating_from_pp_resistor(ohms) is None


@pytest.mark.parametrize("ohms", [-1.0, math.nan, math.inf])
def test_pp_bad_value(ohms: float) -> None:
    with pytest.raises(ValueError):
        cable_rating_from_pp_resistor(ohms)


@pytest.mark.parametrize(
    ("volts", "state"),
    [
        (12.0, PilotState.A),
        (11.2, PilotState.A),
        (9.0, PilotState.B),
        (8.1, PilotState.B),
        (6.0, PilotState.C),
        (3.0, PilotState.D),
        (0.0, PilotState.E),
        (-0.5, PilotState.E),
        (-12.0, PilotState.F),
        (-11.5, PilotState.F),
    ],
)
def test_state_from_pilot_voltage(volts: float, state: PilotState) -> None:
    assert state_from_pilot_voltage(volts) is state


@pytest.mark.parametrize("volts", [10.5, 7.5, 4.5, 1.5, -5.0, 14.0, -14.0])
def test_pilot_voltage_between_bands(volts: float) -> None:
    assert state_from_pilot_voltage(volts) is None


def test_pilot_voltage_nominal_round_trip() -> None:
    for state in PilotState:
        assert state_from_pilot_voltage(pilot_voltage(state)) is state
    with pytest.raises(ValueError):
        state_from_pilot_voltage(math.nan)
