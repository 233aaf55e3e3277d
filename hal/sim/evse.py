"""The simulated EVSE: one physical model of an EV, pilot, contactor and meter behind the HAL.

`SimulatedEvse` holds the whole physical state of one EVSE and its (simulated) EV, and exposes
it twice: as four adapter objects that satisfy the hal.interfaces Protocols (`.meter`,
`.pilot`, `.contactor`, `.token_reader`, bundled as `.hardware`), which is all the daemon sees,
and as a control surface for tests and simulator UIs (plug, unplug, EV readiness, faults,
RFID, start button, contactor weld, meter failure, `snapshot()`).

Physics, kept consistent on every change:

- Pilot state: A unplugged; B plugged and the EV not ready; C (D if the EV asks for
  ventilation) plugged and the EV ready; E or F while a fault is raised, whatever else holds.
  An EV that is ready stays in C even when the EVSE offers nothing (0 A or less than 6 A); it
  then draws nothing.
- Current flows only while the contacts are closed (commanded, or welded), the pilot is in C or
  D and the offer is at least 6 A: per phase min(EV maximum, offer) on the phases the EV uses.
- Power per phase is voltage x current; the meter register integrates that power over the
  injected monotonic clock, brought up to date before every change and on every read, so the
  energy is exact whatever the read rate.

All methods must run on the event loop's thread. Callbacks (pilot changes, tokens) are never
called from inside the call that caused them: each is scheduled with loop.call_soon, so the
daemon never re-enters itself.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from hal.interfaces import EvseHardware, FaultCallback, MeterError, MeterReading, PilotState
from service.config import Connector

__all__ = [
    "DEFAULT_FREQUENCY_HZ",
    "DEFAULT_VOLTAGE_V",
    "MIN_CHARGING_CURRENT_A",
    "FaultKind",
    "SimContactor",
    "SimMeter",
    "SimPilot",
    "SimSnapshot",
    "SimStartButton",
    "SimTokenReader",
    "SimulatedEvse",
]

DEFAULT_VOLTAGE_V = 230.0
DEFAULT_FREQUENCY_HZ = 50.0
# IEC 61851-1: a duty cycle below the one for 6 A does not allow charging.
MIN_CHARGING_CURRENT_A = 6.0

_T = TypeVar("_T")


class FaultKind(StrEnum):
    """Faults the simulator can raise, and the pilot state each one forces."""

    PILOT = "pilot"  # pilot short circuit / diode missing: state E
    EVSE = "evse"  # the EVSE itself is not available: state F

    @property
    def pilot_state(self) -> PilotState:
        return PilotState.E if self is FaultKind.PILOT else PilotState.F


@dataclass(frozen=True, slots=True)
class SimSnapshot:
    """The whole simulated EVSE at one instant, for UIs. Per-phase tuples cover wired phases."""

    plugged: bool
    connector_id: int | None  # the connector the EV is plugged into
    ev_ready: bool
    state: PilotState
    offered_current_a: float
    locked: bool
    contactor_closed: bool  # feedback: closed when commanded or welded
    welded: bool
    fault: FaultKind | None
    meter_failed: bool
    current_a: tuple[float, ...]
    power_w: float
    energy_import_wh: float


class SimMeter:
    """hal.interfaces.Meter of a SimulatedEvse."""

    def __init__(self, sim: SimulatedEvse) -> None:
        self._sim = sim

    async def read(self) -> MeterReading:
        # A real meter answers after some I/O; yield once so callers cannot rely on otherwise.
        await asyncio.sleep(0)
        return self._sim._meter_reading()


class SimPilot:
    """hal.interfaces.Pilot of a SimulatedEvse (control pilot, proximity and cable lock)."""

    def __init__(self, sim: SimulatedEvse) -> None:
        self._sim = sim

    @property
    def state(self) -> PilotState:
        return self._sim._state

    @property
    def offered_current_a(self) -> float:
        return self._sim._offered_a

    @property
    def locked(self) -> bool:
        return self._sim._locked

    def on_change(self, callback: Callable[[PilotState], None]) -> None:
        """Call `callback(new_state)` via loop.call_soon after every change of `state`."""
        self._sim._pilot_callbacks.append(callback)

    def set_offered_current(self, amps: float) -> None:
        """Offer `amps` per phase; 0 or anything below 6 A offers nothing (the EV stays in C)."""
        if not math.isfinite(amps) or amps < 0:
            raise ValueError(f"offered current must be a finite number >= 0, not {amps!r}")
        with self._sim._changing():
            self._sim._offered_a = float(amps)

    def set_locked(self, locked: bool) -> None:
        self._sim._locked = bool(locked)

    @property
    def cable_max_current_a(self) -> float | None:
        """The plugged connector's rating (a tethered cable), None when unplugged."""
        plugged = self._sim._plugged_into
        return None if plugged is None else plugged.max_current_a

    def on_fault(self, callback: FaultCallback) -> None:
        """The simulated pilot reports its faults through the pilot state (E/F) instead."""
        self._sim._fault_callbacks.append(callback)


class SimContactor:
    """hal.interfaces.Contactor of a SimulatedEvse; feedback follows the command at once."""

    def __init__(self, sim: SimulatedEvse) -> None:
        self._sim = sim

    def set_closed(self, closed: bool) -> None:
        with self._sim._changing():
            self._sim._contactor_commanded = bool(closed)
        if not closed and self._sim._welded:
            # The mirror contact still reads closed after an open command: welded.
            self._sim._report_fault("PowerSwitchFailure", "contactor welded: feedback closed")

    @property
    def closed(self) -> bool:
        return self._sim._contacts_closed

    def on_fault(self, callback: FaultCallback) -> None:
        self._sim._fault_callbacks.append(callback)


class SimTokenReader:
    """hal.interfaces.TokenReader of a SimulatedEvse; tokens come from present_rfid()."""

    def __init__(self, sim: SimulatedEvse) -> None:
        self._sim = sim

    def on_token(self, callback: Callable[[str], None]) -> None:
        """Call `callback(id_tag)` via loop.call_soon for every token presented."""
        self._sim._token_callbacks.append(callback)

    def on_fault(self, callback: FaultCallback) -> None:
        """The simulated reader never fails."""


class SimSafety:
    """hal.interfaces.SafetyInputs of a SimulatedEvse: an emergency-stop button and an RCD."""

    def __init__(self, sim: SimulatedEvse) -> None:
        self._sim = sim
        self._estop = False
        self._rcd = False
        self._callbacks: list[Callable[[], None]] = []

    @property
    def emergency_stop(self) -> bool:
        return self._estop

    @property
    def rcd_tripped(self) -> bool:
        return self._rcd

    def on_change(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def press_emergency_stop(self, pressed: bool = True) -> None:
        """Press (or release) the button; the contacts are forced open while pressed."""
        with self._sim._changing():
            self._estop = bool(pressed)
        self._notify()

    def trip_rcd(self, tripped: bool = True) -> None:
        with self._sim._changing():
            self._rcd = bool(tripped)
        self._notify()

    def _notify(self) -> None:
        loop = self._sim._running_loop()
        for callback in tuple(self._callbacks):
            loop.call_soon(callback)


class SimStartButton:
    """hal.interfaces.StartButton of a SimulatedEvse: a momentary push button."""

    def __init__(self, sim: SimulatedEvse) -> None:
        self._sim = sim
        self._callbacks: list[Callable[[], None]] = []

    def on_press(self, callback: Callable[[], None]) -> None:
        """Call `callback()` via loop.call_soon once per press()."""
        self._callbacks.append(callback)

    def press(self) -> None:
        """Press and release the button once: one press for every on_press callback."""
        if not self._callbacks:
            return
        loop = self._sim._running_loop()
        for callback in tuple(self._callbacks):
            loop.call_soon(callback)


class SimulatedEvse:
    """One simulated EVSE with its connectors, and the EV that may be plugged into it.

    `connectors` are the EVSE's connectors from the configuration; the meter is wired for the
    largest number of phases among them. `ev_max_current_a` is what the EV draws per phase at
    most; None means the maximum current of the connector it is plugged into. `clock` is a
    monotonic clock in seconds. `start_button`: whether the EVSE has a start button
    (`.start_button`, in `.hardware`, pressed with press_button()).
    """

    def __init__(
        self,
        connectors: Sequence[Connector] = (Connector(),),
        *,
        voltage_v: float = DEFAULT_VOLTAGE_V,
        initial_energy_wh: float = 0.0,
        ev_max_current_a: float | None = None,
        frequency_hz: float = DEFAULT_FREQUENCY_HZ,
        clock: Callable[[], float] = time.monotonic,
        start_button: bool = True,
    ) -> None:
        if not connectors:
            raise ValueError("a simulated EVSE needs at least one connector")
        ids = [c.id for c in connectors]
        if len(set(ids)) != len(ids):
            raise ValueError(f"connector ids must be distinct, not {ids}")
        _check_number("voltage_v", voltage_v, above_zero=True)
        _check_number("initial_energy_wh", initial_energy_wh)
        _check_number("frequency_hz", frequency_hz, above_zero=True)
        if ev_max_current_a is not None:
            _check_number("ev_max_current_a", ev_max_current_a)
        self._connectors = {c.id: c for c in connectors}
        self._wired_phases = max(c.phases for c in connectors)
        self._voltage_v = float(voltage_v)
        self._frequency_hz = float(frequency_hz)
        self._clock = clock

        # The EV.
        self._plugged_into: Connector | None = None
        self._ev_phases = 0
        self._ev_ready = False
        self._ev_ventilation = False
        self._ev_max_current_a = None if ev_max_current_a is None else float(ev_max_current_a)
        # The EVSE.
        self._state = PilotState.A
        self._fault: FaultKind | None = None
        self._offered_a = 0.0
        self._locked = False
        self._contactor_commanded = False
        self._welded = False
        self._meter_failed = False
        self._energy_wh = float(initial_energy_wh)
        self._integrated_until = clock()

        self._pilot_callbacks: list[Callable[[PilotState], None]] = []
        self._token_callbacks: list[Callable[[str], None]] = []
        self._fault_callbacks: list[FaultCallback] = []
        self.meter = SimMeter(self)
        self.pilot = SimPilot(self)
        self.contactor = SimContactor(self)
        self.token_reader = SimTokenReader(self)
        self.safety = SimSafety(self)
        self.start_button = SimStartButton(self) if start_button else None
        self.hardware = EvseHardware(
            meter=self.meter,
            pilot=self.pilot,
            contactor=self.contactor,
            token_reader=self.token_reader,
            safety=self.safety,
            start_button=self.start_button,
        )

    # ----------------------------------------------------------------- EV model (control)

    def plug(self, connector_id: int | None = None, *, phases: int | None = None) -> None:
        """Plug the EV into `connector_id` (default: the first connector).

        `phases` is how many phases the EV charges on (default: all of the connector's). The
        pilot goes to B, then on to C/D if the EV is already ready. Plugging again into the same
        connector with the same phases does nothing; into another one raises RuntimeError.
        """
        connector = (
            next(iter(self._connectors.values()))
            if connector_id is None
            else self._connectors.get(connector_id)
        )
        if connector is None:
            raise ValueError(f"no connector {connector_id}; connectors: {sorted(self._connectors)}")
        ev_phases = connector.phases if phases is None else phases
        if not 1 <= ev_phases <= connector.phases:
            raise ValueError(
                f"an EV on connector {connector.id} charges on 1 to {connector.phases} "
                f"phases, not {phases}"
            )
        if self._plugged_into is not None:
            if self._plugged_into.id == connector.id and self._ev_phases == ev_phases:
                return
            raise RuntimeError(
                f"the EV is plugged into connector {self._plugged_into.id}; unplug it first"
            )
        with self._changing():
            self._plugged_into = connector
            self._ev_phases = ev_phases
            # An EV always shows B first; it closes S2 (C) only once it sees the EVSE.
            if self._fault is None and self._ev_ready:
                self._set_state(PilotState.B)

    def unplug(self) -> None:
        """Pull the cable out, whatever is going on (the pilot drops to A; no current)."""
        with self._changing():
            self._plugged_into = None

    def set_ev_ready(self, ready: bool) -> None:
        """True: the EV wants energy (C, or D with ventilation); False: it does not (B).

        Readiness belongs to the EV and survives unplugging.
        """
        with self._changing():
            self._ev_ready = bool(ready)

    def set_ev_ventilation(self, required: bool) -> None:
        """Whether the ready EV asks for ventilation (state D instead of C)."""
        with self._changing():
            self._ev_ventilation = bool(required)

    def set_ev_max_current(self, amps: float | None) -> None:
        """What the EV draws per phase at most; None: the plugged connector's maximum."""
        if amps is not None:
            _check_number("EV maximum current", amps)
        with self._changing():
            self._ev_max_current_a = _float_or_none(amps)

    def raise_fault(self, kind: FaultKind | str) -> None:
        """Force the pilot to E ("pilot") or F ("evse") until clear_fault(); no current flows."""
        try:
            fault = FaultKind(kind)
        except ValueError:
            known = ", ".join(repr(k.value) for k in FaultKind)
            raise ValueError(f"unknown fault kind {kind!r}; known: {known}") from None
        with self._changing():
            self._fault = fault

    def clear_fault(self) -> None:
        with self._changing():
            self._fault = None

    def present_rfid(self, id_tag: str) -> None:
        """Hold a token to the reader: every on_token callback gets `id_tag` (via call_soon)."""
        if not isinstance(id_tag, str) or not id_tag:
            raise ValueError(f"an id tag is a non-empty string, not {id_tag!r}")
        self._schedule(self._token_callbacks, id_tag)

    def press_button(self) -> None:
        """Press the EVSE's start button once; RuntimeError when it has none."""
        if self.start_button is None:
            raise RuntimeError("this simulated EVSE has no start button")
        self.start_button.press()

    # ----------------------------------------------------------------- fault injection

    def weld(self, welded: bool = True) -> None:
        """Weld the contacts shut: they stay closed (feedback and current) whatever
        set_closed says, until weld(False) repairs them (which clears the fault)."""
        was = self._welded
        with self._changing():
            self._welded = bool(welded)
        if was and not welded and self._fault_callbacks:
            self._report_fault(None, "contactor repaired")

    def meter_fail(self, failed: bool = True) -> None:
        """While failed, meter.read() raises MeterError; the register keeps counting."""
        self._meter_failed = bool(failed)

    # ----------------------------------------------------------------- observation

    @property
    def voltage_v(self) -> float:
        return self._voltage_v

    def snapshot(self) -> SimSnapshot:
        self._integrate()
        currents = self._phase_currents()
        return SimSnapshot(
            plugged=self._plugged_into is not None,
            connector_id=None if self._plugged_into is None else self._plugged_into.id,
            ev_ready=self._ev_ready,
            state=self._state,
            offered_current_a=self._offered_a,
            locked=self._locked,
            contactor_closed=self._contacts_closed,
            welded=self._welded,
            fault=self._fault,
            meter_failed=self._meter_failed,
            current_a=currents,
            power_w=sum(self._voltage_v * i for i in currents),
            energy_import_wh=self._energy_wh,
        )

    # ----------------------------------------------------------------- the physics

    @property
    def _contacts_closed(self) -> bool:
        # The emergency stop and the RCD cut the contactor coil supply in hardware.
        cut = self.safety.emergency_stop or self.safety.rcd_tripped
        return (self._contactor_commanded and not cut) or self._welded

    def _pilot_state(self) -> PilotState:
        if self._fault is not None:
            return self._fault.pilot_state
        if self._plugged_into is None:
            return PilotState.A
        if not self._ev_ready:
            return PilotState.B
        return PilotState.D if self._ev_ventilation else PilotState.C

    def _current_per_phase(self) -> float:
        if (
            self._plugged_into is None
            or not self._contacts_closed
            or not self._state.wants_energy
            or self._offered_a < MIN_CHARGING_CURRENT_A
        ):
            return 0.0
        ev_max = (
            self._plugged_into.max_current_a
            if self._ev_max_current_a is None
            else self._ev_max_current_a
        )
        return min(ev_max, self._offered_a)

    def _phase_currents(self) -> tuple[float, ...]:
        amps = self._current_per_phase()
        return tuple(amps if n < self._ev_phases else 0.0 for n in range(self._wired_phases))

    def _integrate(self) -> None:
        """Bring the energy register up to now at the power that has flowed since last time."""
        now = self._clock()
        elapsed = now - self._integrated_until
        if elapsed <= 0:
            return  # a clock that stands still (or a fake one set back) adds nothing
        power_w = self._voltage_v * sum(self._phase_currents())
        self._energy_wh += power_w * elapsed / 3600.0
        self._integrated_until = now

    @contextmanager
    def _changing(self) -> Iterator[None]:
        """Wrap one change of the physical state: settle the energy first, then the pilot."""
        if self._pilot_callbacks:
            self._running_loop()  # refuse before anything changes, not halfway through
        self._integrate()
        yield
        self._set_state(self._pilot_state())

    def _report_fault(self, code: str | None, info: str) -> None:
        if not self._fault_callbacks:
            return
        loop = self._running_loop()
        for callback in tuple(self._fault_callbacks):
            loop.call_soon(callback, code, info)

    def _set_state(self, state: PilotState) -> None:
        if state != self._state:
            self._state = state
            self._schedule(self._pilot_callbacks, state)

    def _schedule(self, callbacks: list[Callable[[_T], None]], argument: _T) -> None:
        if not callbacks:
            return
        loop = self._running_loop()
        for callback in tuple(callbacks):
            loop.call_soon(callback, argument)

    @staticmethod
    def _running_loop() -> asyncio.AbstractEventLoop:
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "SimulatedEvse must be driven from the running event loop's thread"
            ) from None

    def _meter_reading(self) -> MeterReading:
        if self._meter_failed:
            raise MeterError("simulated meter failure: no answer")
        self._integrate()
        currents = self._phase_currents()
        return MeterReading(
            energy_import_wh=self._energy_wh,
            voltage_v=(self._voltage_v,) * self._wired_phases,
            current_a=currents,
            power_w=tuple(self._voltage_v * i for i in currents),
            frequency_hz=self._frequency_hz,
        )


def _check_number(name: str, value: object, *, above_zero: bool = False) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (above_zero and value == 0)
    ):
        bound = "> 0" if above_zero else ">= 0"
        raise ValueError(f"{name} must be a finite number {bound}, not {value!r}")


def _float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)
