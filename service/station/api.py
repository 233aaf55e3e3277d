"""The local control surface of the station, as the D-Bus layer (service/dbus) sees it.

The daemon implements `StationApi` (and `SimulatorApi` when simulated hardware is configured);
service/dbus exports them. Errors are raised as `ApiError` subclasses, each mapped to a named
D-Bus error, and a refused call changes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class ApiError(Exception):
    """Base of the errors a local API call can raise; `name` is the D-Bus error suffix."""

    name = "Failed"


class UnknownEvse(ApiError):
    name = "UnknownEvse"


class InvalidArgument(ApiError):
    name = "InvalidArgument"


class InvalidState(ApiError):
    name = "InvalidState"


class NotAvailable(ApiError):
    """The feature is off (e.g. external websocket control disabled) or the link is down."""

    name = "NotAvailable"


class Timeout(ApiError):
    name = "Timeout"


@dataclass(frozen=True, slots=True)
class StationSnapshot:
    charge_point_id: str
    vendor: str
    model: str
    firmware_version: str
    connection_state: str  # "connected" | "connecting" | "disconnected" | "waiting"
    ocpp_version: str  # "1.6" | "2.0.1" | "" when disconnected
    registration: str  # "Unknown" | "Pending" | "Accepted" | "Rejected"
    queued_messages: int
    # The firmware update state (service.firmware.manager.FirmwareState): "Idle" when no update
    # ever ran, else the state of the last one ("Downloading", ..., "Installed", a failure).
    firmware_status: str = "Idle"


@dataclass(frozen=True, slots=True)
class EvseSnapshot:
    evse_id: int
    status: str  # OCPP status: Available, Preparing, Charging, SuspendedEV, ... Faulted
    error_code: str  # OCPP 1.6 ChargePointErrorCode, "NoError" when fine
    availability: str  # "Operative" | "Inoperative"
    pilot_state: str  # "A".."F"
    session_id: str  # "" when none
    transaction_id: str  # CSMS transaction id once known, else local id, "" when none
    id_tag: str  # the token of the session, "" when none
    energy_wh: float  # meter register
    session_energy_wh: float  # energy of the current session
    power_w: float
    current_a: tuple[float, ...]
    voltage_v: tuple[float, ...]
    offered_current_a: float


@dataclass(frozen=True, slots=True)
class ConfigurationEntry:
    """One OCPP configuration key as the local API reports it (the value as OCPP sends it)."""

    key: str
    value: str
    readonly: bool
    reboot_required: bool


@dataclass(frozen=True, slots=True)
class FrameRecord:
    """One OCPP frame seen on the CSMS link: wall-clock time (s), "in" or "out", the text."""

    time: float
    direction: str
    frame: str


# (status, data) answered by a local vendor handler for an inbound DataTransfer
DataTransferAnswer = tuple[str, str]
VendorHandler = Callable[[str, str], Awaitable[DataTransferAnswer]]


class StationApi(Protocol):
    def station(self) -> StationSnapshot: ...

    def evse_ids(self) -> list[int]: ...

    def evse(self, evse_id: int) -> EvseSnapshot:
        """Raises UnknownEvse."""
        ...

    def on_change(self, callback: Callable[[int], None]) -> None:
        """`callback(evse_id)` after any change of that EVSE's snapshot; 0 for the station."""
        ...

    def start_session(self, evse_id: int, id_tag: str) -> str:
        """Authorize `id_tag` on the EVSE as a local start; returns the session id.

        Raises UnknownEvse, InvalidArgument (empty/too long tag), InvalidState (faulted,
        inoperative, already in a session).
        """
        ...

    def stop_session(self, evse_id: int) -> None:
        """Stop the session locally (reason Local). Raises UnknownEvse, InvalidState."""
        ...

    def set_availability(self, evse_id: int, operative: bool) -> str:
        """Returns "Accepted" or "Scheduled" (applies when the session ends)."""
        ...

    def present_token(self, evse_id: int, id_tag: str, token_type: str | None = None) -> None:
        """A token from a local provider (payment terminal...), as if read by the EVSE's
        reader; evse_id 0 means the first EVSE that can use it. `token_type`: its OCPP 2.0.1
        IdTokenEnumType (None: ISO14443, a card). Raises InvalidArgument (a token the protocol
        in use cannot carry: 20 characters under 1.6, 36 under 2.0.1), UnknownEvse,
        InvalidState."""
        ...

    def press_start_button(self, evse_id: int) -> str:
        """The EVSE's start button (OCPP 2.0.1 C02): with authorization off (AuthEnabled /
        AuthCtrlr.Enabled false) it starts a session nobody authorized and stops it when
        pressed again; returns the session id. Raises UnknownEvse, InvalidState (a token is
        needed, or the session is a token's)."""
        ...

    async def data_transfer(self, vendor_id: str, message_id: str, data: str) -> tuple[str, str]:
        """Send DataTransfer to the CSMS; returns (status, data). Raises NotAvailable
        (offline/not registered), Timeout."""
        ...

    def register_vendor(self, vendor_id: str, handler: VendorHandler) -> None:
        """Inbound DataTransfer for `vendor_id` is answered by `handler(message_id, data)`."""
        ...

    def unregister_vendor(self, vendor_id: str) -> None: ...

    def get_configuration(self, keys: list[str]) -> list[ConfigurationEntry]:
        """The OCPP configuration keys named (all of them, in catalog order, when `keys` is
        empty). Raises InvalidArgument naming every unknown key."""
        ...

    def change_configuration(self, key: str, value: str) -> str:
        """Change an OCPP configuration key by the rules of OCPP ChangeConfiguration; returns
        "Accepted", "Rejected" (read-only key or bad value), "RebootRequired" (stored, applies
        after a restart) or "NotSupported" (unknown key)."""
        ...


@runtime_checkable
class FrameSource(Protocol):
    """Optional capability of a StationApi: the OCPP frames on the CSMS link."""

    def on_frame(self, callback: Callable[[str, str], None]) -> None:
        """`callback(direction, frame)` for every frame, "in" (from the CSMS) or "out"."""
        ...

    def recent_frames(self, limit: int) -> list[FrameRecord]:
        """The last `limit` frames kept in memory, oldest first."""
        ...


class SimulatorApi(Protocol):
    """Only present when simulated hardware is configured; never exported otherwise."""

    def plug(self, evse_id: int) -> None: ...

    def unplug(self, evse_id: int) -> None: ...

    def set_ev_ready(self, evse_id: int, ready: bool) -> None:
        """EV asks for energy (state C) or not (state B)."""
        ...

    def set_ev_max_current(self, evse_id: int, amps: float) -> None: ...

    def present_rfid(self, evse_id: int, id_tag: str) -> None: ...

    def press_button(self, evse_id: int) -> None:
        """Press the EVSE's simulated start button once (NotAvailable when it has none)."""
        ...

    def set_safety_input(self, evse_id: int, name: str, active: bool) -> None:
        """Press / release the simulated emergency stop (`name` "emergency_stop") or trip /
        reset the simulated RCD ("rcd"). InvalidArgument for another name."""
        ...

    def raise_fault(self, evse_id: int, error_code: str) -> None: ...

    def clear_fault(self, evse_id: int) -> None: ...

    def websocket_disconnect(self) -> None: ...

    def websocket_connect(self) -> None: ...
