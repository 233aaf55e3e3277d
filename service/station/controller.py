"""The charging controller of one EVSE: the safety rules between the station and the power path.

`decide` is the whole rule set as one pure function (table-tested): the contactor may close only
in pilot state C or D, for a started and authorized transaction, with no fault, no emergency
stop, and an offer of at least 6 A; in every other case it opens, and the offer drops to 0.
`ChargingController.apply` puts a decision on the hardware in the safe order — open before
anything else, close last — and records the time from the cause (the event the station was
handling) to the contactor command. The station calls it after every input; nothing else
commands the contactor, so OCPP and D-Bus cannot bypass these rules.

AC: the offer is the pilot's PWM duty cycle (hal Pilot.set_offered_current). DC: the offer is
the power module's current setpoint, at the EVSE's target voltage; the module is enabled only
while the contactor is closed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from hal.interfaces import EvseHardware, PilotState

# IEC 61851-1: below 6 A there is no valid PWM offer; the EV must not draw.
MIN_OFFER_A = 6.0


@dataclass(frozen=True, slots=True)
class PowerInputs:
    pilot: PilotState
    transaction: bool  # a started transaction
    authorized: bool  # ...whose idTag is (still) authorized, or within MaxEnergyOnInvalidId
    faulted: bool
    emergency_stop: bool
    limit_a: float  # what the station allows now (connector rating, TxProfile, 0 = nothing)
    cable_max_a: float | None = None  # proximity pilot rating of the plugged cable


@dataclass(frozen=True, slots=True)
class PowerDecision:
    offer_a: float
    close: bool
    reason: str  # why the contactor is open (for logs), "" when closed


def decide(inputs: PowerInputs) -> PowerDecision:
    """The safety rules. Pure: same inputs, same answer."""
    if inputs.emergency_stop:
        return PowerDecision(0.0, False, "emergency stop")
    if inputs.faulted:
        return PowerDecision(0.0, False, "fault")
    if not inputs.pilot.plugged:
        return PowerDecision(0.0, False, f"pilot state {inputs.pilot}")
    if not inputs.transaction:
        return PowerDecision(0.0, False, "no transaction")
    if not inputs.authorized:
        return PowerDecision(0.0, False, "not authorized")
    offer = inputs.limit_a
    if inputs.cable_max_a is not None:
        offer = min(offer, inputs.cable_max_a)
    if offer < MIN_OFFER_A:
        return PowerDecision(0.0, False, "limit below 6 A")
    if not inputs.pilot.wants_energy:
        return PowerDecision(offer, False, "EV not ready (state B)")
    return PowerDecision(offer, True, "")


@dataclass(frozen=True, slots=True)
class Actuation:
    """One contactor command: what, and how long after its cause."""

    closed: bool
    latency_s: float


class ChargingController:
    def __init__(
        self, hardware: EvseHardware, now: Callable[[], float], *, dc_voltage_v: float = 0.0
    ) -> None:
        self.hardware = hardware
        self.now = now
        self.dc_voltage_v = dc_voltage_v
        self.offer_a = 0.0
        self.decision = PowerDecision(0.0, False, "idle")
        self.actuations: deque[Actuation] = deque(maxlen=256)

    def apply(self, inputs: PowerInputs, *, cause_time: float | None = None) -> PowerDecision:
        """Decide and drive the hardware. `cause_time` (`now()` when the causing event
        arrived) is used to record the cause → contactor latency."""
        decision = decide(inputs)
        self.decision = decision
        hw = self.hardware
        module = hw.power_module
        if not decision.close:
            if hw.contactor.closed:
                hw.contactor.set_closed(False)
                self._record(False, cause_time)
            if module is not None:
                module.set_enabled(False)
        if self.offer_a != decision.offer_a:
            self.offer_a = decision.offer_a
            if module is not None:
                module.set_output(self.dc_voltage_v, decision.offer_a)
            else:
                hw.pilot.set_offered_current(decision.offer_a)
        if decision.close and not hw.contactor.closed:
            hw.contactor.set_closed(True)
            self._record(True, cause_time)
            if module is not None:
                module.set_enabled(True)
        return decision

    def _record(self, closed: bool, cause_time: float | None) -> None:
        if cause_time is not None:
            self.actuations.append(Actuation(closed, self.now() - cause_time))
