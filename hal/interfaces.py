"""The hardware each EVSE is built from, as typing.Protocols the station drives.

Backends (hal/sim today, real drivers with issue 4) implement these; the daemon picks one per
device kind and EVSE from the configuration ([evse.meter] backend = "sim" ...). Callbacks run
on the asyncio loop; a blocking driver does its I/O in a thread or on an fd reader and hops
back with loop.call_soon_threadsafe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class PilotState(StrEnum):
    """IEC 61851-1 control pilot states as the EVSE sees them."""

    A = "A"  # no EV connected
    B = "B"  # EV connected, not ready to charge
    C = "C"  # EV connected, ready, charging allowed (ventilation not required)
    D = "D"  # EV connected, ready, ventilation required
    E = "E"  # short circuit / pilot error (no power)
    F = "F"  # EVSE not available (fault)

    @property
    def plugged(self) -> bool:
        return self in (PilotState.B, PilotState.C, PilotState.D)

    @property
    def wants_energy(self) -> bool:
        return self in (PilotState.C, PilotState.D)


@dataclass(frozen=True, slots=True)
class SignedMeterData:
    """A reading the meter signed itself (the fields of OCPP 2.0.1 SignedMeterValueType).

    `signed_meter_data` is the record exactly as the meter gave it (printable ASCII, e.g. an
    OCMF string "OCMF|{payload}|{signature}"); OCPP 2.0.1 sends it base64 encoded.
    `public_key` is the meter's public key, base64 encoded ("" when the meter gives none).
    """

    signed_meter_data: str
    signing_method: str  # e.g. "ECDSA-secp256r1-SHA256"
    encoding_method: str  # e.g. "OCMF"
    public_key: str = ""


@dataclass(frozen=True, slots=True)
class MeterReading:
    """One snapshot of an energy meter. Per-phase tuples hold L1, L2, L3 (as many as wired).

    `signed` is the meter's own signed record of its imported energy register, for meters
    that provide one (a register map with a [signed] table); None otherwise.
    """

    energy_import_wh: float
    voltage_v: tuple[float, ...]
    current_a: tuple[float, ...]
    power_w: tuple[float, ...]
    energy_export_wh: float | None = None
    frequency_hz: float | None = None
    signed: SignedMeterData | None = None

    @property
    def power_total_w(self) -> float:
        return sum(self.power_w)


# A device reports a fault with an OCPP 1.6 ChargePointErrorCode ("PowerSwitchFailure",
# "ReaderFailure", "EVCommunicationError", ...) and a short readable info, and clears it with
# None. The station turns these into connector faults.
FaultCallback = Callable[[str | None, str], None]


class MeterError(Exception):
    """The meter did not answer, answered garbage, or its register ran backwards."""


class Meter(Protocol):
    async def read(self) -> MeterReading:
        """The current reading; raises MeterError when the meter cannot be read."""
        ...


class Pilot(Protocol):
    """Control pilot + proximity + connector lock, as one device (the charge controller)."""

    @property
    def state(self) -> PilotState: ...

    def on_change(self, callback: Callable[[PilotState], None]) -> None:
        """Call `callback` on every state change (on the event loop)."""
        ...

    def set_offered_current(self, amps: float) -> None:
        """Advertise `amps` via the PWM duty cycle (IEC 61851-1); 0, or anything below 6 A,
        stops offering energy: the EV stays in its state and draws nothing."""
        ...

    def set_locked(self, locked: bool) -> None: ...

    @property
    def locked(self) -> bool:
        """Lock feedback: the actuator's reported position."""
        ...

    @property
    def cable_max_current_a(self) -> float | None:
        """The plugged cable's rating from the proximity pilot; None when not known."""
        ...

    def on_fault(self, callback: FaultCallback) -> None:
        """Diode-check failure, lock failure, MCU silent...: `callback(code, info)`."""
        ...


class Contactor(Protocol):
    def set_closed(self, closed: bool) -> None: ...

    @property
    def closed(self) -> bool:
        """Feedback (mirror contact) state."""
        ...

    def on_fault(self, callback: FaultCallback) -> None:
        """A welded or stuck contactor: `callback("PowerSwitchFailure", info)`."""
        ...


class TokenReader(Protocol):
    def on_token(self, callback: Callable[[str], None]) -> None:
        """Call `callback(id_tag)` when a token is presented (on the event loop)."""
        ...

    def on_fault(self, callback: FaultCallback) -> None:
        """The reader stopped answering: `callback("ReaderFailure", info)`."""
        ...


@dataclass(frozen=True, slots=True)
class PowerReading:
    """What a DC power module (or a group of them) reports."""

    voltage_v: float
    current_a: float
    faults: tuple[str, ...] = ()  # readable fault bits, empty when healthy


class PowerModule(Protocol):
    """A DC power stage (one module or a group driven as one output)."""

    def set_output(self, voltage_v: float, current_a: float) -> None: ...

    def set_enabled(self, enabled: bool) -> None: ...

    async def read(self) -> PowerReading: ...

    def on_fault(self, callback: FaultCallback) -> None: ...


class SafetyInputs(Protocol):
    """Emergency stop and residual-current device inputs (GPIO)."""

    @property
    def emergency_stop(self) -> bool: ...

    @property
    def rcd_tripped(self) -> bool: ...

    def on_change(self, callback: Callable[[], None]) -> None:
        """Called after either input changed; read the properties for the new values."""
        ...


class StartButton(Protocol):
    """A momentary start button on the EVSE (OCPP 2.0.1 C02: authorization by a button).

    A press is the button going from released to pressed, once settled; holding it does not
    repeat. Drivers that own resources have `await start()` / `await close()` as well.
    """

    def on_press(self, callback: Callable[[], None]) -> None:
        """Call `callback()` once per press (on the event loop, never from inside a call)."""
        ...


@dataclass(frozen=True, slots=True)
class EvseHardware:
    """The devices of one EVSE, as the daemon assembled them from the configuration."""

    meter: Meter
    pilot: Pilot
    contactor: Contactor
    token_reader: TokenReader
    power_module: PowerModule | None = None  # DC chargers
    safety: SafetyInputs | None = None
    start_button: StartButton | None = None
