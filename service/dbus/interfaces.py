"""The D-Bus interfaces org.evsed.Station1, org.evsed.Evse1, org.evsed.Simulator1 and
org.evsed.Firmware1.

Each class is both the exported object (built with the API it serves) and, through sdbus's
`new_proxy`, a typed client for the same interface. Property getters read the API live; the
objects compare snapshots when the API reports a change and emit PropertiesChanged (and Evse1's
StatusChanged) for what differs. Every method runs inside `dbus_errors`, so an API error becomes
its `org.evsed.Error.*` and nothing raised below can take the service down.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from sdbus import (
    DbusInterfaceCommonAsync,
    DbusPropertyConstFlag,
    DbusPropertyEmitsChangeFlag,
    DbusUnprivilegedFlag,
    dbus_method_async,
    dbus_property_async,
    dbus_signal_async,
    get_current_message,
)

from service.dbus.errors import dbus_errors
from service.dbus.vendors import VendorBroker
from service.station.api import (
    EvseSnapshot,
    FrameSource,
    InvalidArgument,
    InvalidState,
    NotAvailable,
    SimulatorApi,
    StationApi,
    StationSnapshot,
)

__all__ = [
    "EVSE_INTERFACE",
    "FIRMWARE_INTERFACE",
    "SIMULATOR_INTERFACE",
    "STATION_INTERFACE",
    "EvseInterface",
    "FirmwareInterface",
    "FirmwareManagerLike",
    "SimulatorInterface",
    "StationInterface",
    "evse_values",
    "firmware_values",
    "station_values",
]

log = logging.getLogger("evsed.dbus")

STATION_INTERFACE = "org.evsed.Station1"
EVSE_INTERFACE = "org.evsed.Evse1"
SIMULATOR_INTERFACE = "org.evsed.Simulator1"
FIRMWARE_INTERFACE = "org.evsed.Firmware1"

_CHANGES = DbusPropertyEmitsChangeFlag

# property name -> (D-Bus signature, value), as PropertiesChanged carries them
PropertyValues = dict[str, tuple[str, Any]]


def station_values(snap: StationSnapshot, evse_ids: list[int]) -> PropertyValues:
    return {
        "ChargePointId": ("s", snap.charge_point_id),
        "Vendor": ("s", snap.vendor),
        "Model": ("s", snap.model),
        "FirmwareVersion": ("s", snap.firmware_version),
        "ConnectionState": ("s", snap.connection_state),
        "OcppVersion": ("s", snap.ocpp_version),
        "Registration": ("s", snap.registration),
        "QueuedMessages": ("u", max(0, snap.queued_messages)),
        "EvseIds": ("au", list(evse_ids)),
        "FirmwareStatus": ("s", snap.firmware_status),
    }


def evse_values(snap: EvseSnapshot) -> PropertyValues:
    return {
        "Id": ("u", snap.evse_id),
        "Status": ("s", snap.status),
        "ErrorCode": ("s", snap.error_code),
        "Availability": ("s", snap.availability),
        "PilotState": ("s", snap.pilot_state),
        "SessionId": ("s", snap.session_id),
        "TransactionId": ("s", snap.transaction_id),
        "IdTag": ("s", snap.id_tag),
        "EnergyWh": ("d", float(snap.energy_wh)),
        "SessionEnergyWh": ("d", float(snap.session_energy_wh)),
        "PowerW": ("d", float(snap.power_w)),
        "CurrentA": ("ad", [float(v) for v in snap.current_a]),
        "VoltageV": ("ad", [float(v) for v in snap.voltage_v]),
        "OfferedCurrentA": ("d", float(snap.offered_current_a)),
    }


def dbus_text(text: str) -> str:
    """`text` as a D-Bus string can carry it: no NUL (a CSMS may send anything)."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _changed(old: PropertyValues, new: PropertyValues) -> PropertyValues:
    return {name: value for name, value in new.items() if old.get(name) != value}


def _caller() -> str:
    sender = get_current_message().sender
    if not sender:
        raise InvalidState("the call has no sender")
    return sender


class StationInterface(DbusInterfaceCommonAsync, interface_name=STATION_INTERFACE):
    """/org/evsed/Station: the charge point as a whole."""

    def __init__(
        self, api: StationApi, timeout_s: float, frames: FrameSource | None = None
    ) -> None:
        super().__init__()
        self._api = api
        self._frames = frames
        self._evse_ids = list(api.evse_ids())  # the EVSE objects exported; fixed for life
        self._last_snapshot = api.station()
        self._last = station_values(self._last_snapshot, self._evse_ids)
        self.vendors = VendorBroker(api, self._emit_request, timeout_s)

    # --- change tracking -------------------------------------------------------------------

    def _snapshot(self) -> StationSnapshot:
        try:
            return self._api.station()
        except Exception:
            log.exception("reading the station snapshot failed")
            return self._last_snapshot

    def refresh(self) -> None:
        """Compare with the last state sent and emit PropertiesChanged for what differs."""
        snap = self._api.station()
        new = station_values(snap, self._evse_ids)
        changed = _changed(self._last, new)
        self._last, self._last_snapshot = new, snap
        if changed:
            self.properties_changed.emit((STATION_INTERFACE, changed, []))

    def _emit_request(self, request_id: str, vendor_id: str, message_id: str, data: str) -> None:
        self.data_transfer_request.emit((request_id, vendor_id, message_id, data))

    # --- properties ------------------------------------------------------------------------

    @dbus_property_async("s", flags=_CHANGES)
    def charge_point_id(self) -> str:
        return self._snapshot().charge_point_id

    @dbus_property_async("s", flags=_CHANGES)
    def vendor(self) -> str:
        return self._snapshot().vendor

    @dbus_property_async("s", flags=_CHANGES)
    def model(self) -> str:
        return self._snapshot().model

    @dbus_property_async("s", flags=_CHANGES)
    def firmware_version(self) -> str:
        return self._snapshot().firmware_version

    @dbus_property_async("s", flags=_CHANGES)
    def connection_state(self) -> str:
        return self._snapshot().connection_state

    @dbus_property_async("s", flags=_CHANGES)
    def ocpp_version(self) -> str:
        return self._snapshot().ocpp_version

    @dbus_property_async("s", flags=_CHANGES)
    def registration(self) -> str:
        return self._snapshot().registration

    @dbus_property_async("u", flags=_CHANGES)
    def queued_messages(self) -> int:
        return max(0, self._snapshot().queued_messages)

    @dbus_property_async("au", flags=DbusPropertyConstFlag)
    def evse_ids(self) -> list[int]:
        return list(self._evse_ids)

    @dbus_property_async("s", flags=_CHANGES)
    def firmware_status(self) -> str:
        return self._snapshot().firmware_status

    # --- methods ---------------------------------------------------------------------------

    @dbus_method_async("us", input_args_names=("evse_id", "id_tag"), flags=DbusUnprivilegedFlag)
    async def present_token(self, evse_id: int, id_tag: str) -> None:
        with dbus_errors("PresentToken"):
            self._api.present_token(evse_id, id_tag)

    @dbus_method_async(
        "uss",
        input_args_names=("evse_id", "id_token", "token_type"),
        flags=DbusUnprivilegedFlag,
    )
    async def present_id_token(self, evse_id: int, id_token: str, token_type: str) -> None:
        with dbus_errors("PresentIdToken"):
            self._api.present_token(evse_id, id_token, token_type or None)

    @dbus_method_async(
        "sss",
        "ss",
        input_args_names=("vendor_id", "message_id", "data"),
        result_args_names=("status", "data"),
        flags=DbusUnprivilegedFlag,
    )
    async def data_transfer(self, vendor_id: str, message_id: str, data: str) -> tuple[str, str]:
        with dbus_errors("DataTransfer"):
            status, answer = await self._api.data_transfer(vendor_id, message_id, data)
            return (status, answer)

    @dbus_method_async("s", input_args_names=("vendor_id",), flags=DbusUnprivilegedFlag)
    async def register_vendor(self, vendor_id: str) -> None:
        with dbus_errors("RegisterVendor"):
            self.vendors.register(vendor_id, _caller())

    @dbus_method_async("s", input_args_names=("vendor_id",), flags=DbusUnprivilegedFlag)
    async def unregister_vendor(self, vendor_id: str) -> None:
        with dbus_errors("UnregisterVendor"):
            self.vendors.unregister(vendor_id, _caller())

    @dbus_method_async(
        "sss", input_args_names=("request_id", "status", "data"), flags=DbusUnprivilegedFlag
    )
    async def answer_data_transfer(self, request_id: str, status: str, data: str) -> None:
        with dbus_errors("AnswerDataTransfer"):
            self.vendors.answer(request_id, status, data, _caller())

    @dbus_method_async(
        "as",
        "a(ssbb)",
        input_args_names=("keys",),
        result_args_names=("configuration",),
        flags=DbusUnprivilegedFlag,
    )
    async def get_configuration(self, keys: list[str]) -> list[tuple[str, str, bool, bool]]:
        with dbus_errors("GetConfiguration"):
            return [
                (e.key, e.value, e.readonly, e.reboot_required)
                for e in self._api.get_configuration(list(keys))
            ]

    @dbus_method_async(
        "ss",
        "s",
        input_args_names=("key", "value"),
        result_args_names=("status",),
        flags=DbusUnprivilegedFlag,
    )
    async def change_configuration(self, key: str, value: str) -> str:
        with dbus_errors("ChangeConfiguration"):
            return self._api.change_configuration(key, value)

    @dbus_method_async(
        "u",
        "a(dss)",
        input_args_names=("limit",),
        result_args_names=("frames",),
        flags=DbusUnprivilegedFlag,
    )
    async def recent_frames(self, limit: int) -> list[tuple[float, str, str]]:
        with dbus_errors("RecentFrames"):
            if self._frames is None:
                raise NotAvailable("this evsed keeps no frame history")
            if limit > 10_000:
                raise InvalidArgument("limit must be at most 10000")
            return [
                (r.time, r.direction, dbus_text(r.frame)) for r in self._frames.recent_frames(limit)
            ]

    # --- signals ---------------------------------------------------------------------------

    @dbus_signal_async("ssss", signal_args_names=("request_id", "vendor_id", "message_id", "data"))
    def data_transfer_request(self) -> tuple[str, str, str, str]:
        raise NotImplementedError

    @dbus_signal_async("ss", signal_args_names=("direction", "frame"))
    def ocpp_frame(self) -> tuple[str, str]:
        raise NotImplementedError

    def emit_frame(self, direction: str, frame: str) -> None:
        self.ocpp_frame.emit((direction, dbus_text(frame)))


class EvseInterface(DbusInterfaceCommonAsync, interface_name=EVSE_INTERFACE):
    """/org/evsed/Evse/<id>: one EVSE (a charging point with its connector)."""

    def __init__(self, api: StationApi, evse_id: int) -> None:
        super().__init__()
        self._api = api
        self._evse_id = evse_id
        self._last_snapshot = api.evse(evse_id)
        self._last = evse_values(self._last_snapshot)

    def _snapshot(self) -> EvseSnapshot:
        try:
            return self._api.evse(self._evse_id)
        except Exception:
            log.exception("reading the snapshot of EVSE %d failed", self._evse_id)
            return self._last_snapshot

    def refresh(self) -> None:
        """Emit PropertiesChanged (and StatusChanged) for what differs from the last state."""
        snap = self._api.evse(self._evse_id)
        new = evse_values(snap)
        changed = _changed(self._last, new)
        self._last, self._last_snapshot = new, snap
        if not changed:
            return
        self.properties_changed.emit((EVSE_INTERFACE, changed, []))
        if "Status" in changed or "ErrorCode" in changed:
            self.status_changed.emit((snap.status, snap.error_code))

    # --- properties ------------------------------------------------------------------------

    @dbus_property_async("u", flags=DbusPropertyConstFlag)
    def id(self) -> int:
        return self._evse_id

    @dbus_property_async("s", flags=_CHANGES)
    def status(self) -> str:
        return self._snapshot().status

    @dbus_property_async("s", flags=_CHANGES)
    def error_code(self) -> str:
        return self._snapshot().error_code

    @dbus_property_async("s", flags=_CHANGES)
    def availability(self) -> str:
        return self._snapshot().availability

    @dbus_property_async("s", flags=_CHANGES)
    def pilot_state(self) -> str:
        return self._snapshot().pilot_state

    @dbus_property_async("s", flags=_CHANGES)
    def session_id(self) -> str:
        return self._snapshot().session_id

    @dbus_property_async("s", flags=_CHANGES)
    def transaction_id(self) -> str:
        return self._snapshot().transaction_id

    @dbus_property_async("s", flags=_CHANGES)
    def id_tag(self) -> str:
        return self._snapshot().id_tag

    @dbus_property_async("d", flags=_CHANGES)
    def energy_wh(self) -> float:
        return float(self._snapshot().energy_wh)

    @dbus_property_async("d", flags=_CHANGES)
    def session_energy_wh(self) -> float:
        return float(self._snapshot().session_energy_wh)

    @dbus_property_async("d", flags=_CHANGES)
    def power_w(self) -> float:
        return float(self._snapshot().power_w)

    @dbus_property_async("ad", flags=_CHANGES)
    def current_a(self) -> list[float]:
        return [float(v) for v in self._snapshot().current_a]

    @dbus_property_async("ad", flags=_CHANGES)
    def voltage_v(self) -> list[float]:
        return [float(v) for v in self._snapshot().voltage_v]

    @dbus_property_async("d", flags=_CHANGES)
    def offered_current_a(self) -> float:
        return float(self._snapshot().offered_current_a)

    # --- methods ---------------------------------------------------------------------------

    @dbus_method_async(
        "s",
        "s",
        input_args_names=("id_tag",),
        result_args_names=("session_id",),
        flags=DbusUnprivilegedFlag,
    )
    async def start_session(self, id_tag: str) -> str:
        with dbus_errors("StartSession"):
            return self._api.start_session(self._evse_id, id_tag)

    @dbus_method_async(flags=DbusUnprivilegedFlag)
    async def stop_session(self) -> None:
        with dbus_errors("StopSession"):
            self._api.stop_session(self._evse_id)

    @dbus_method_async(
        result_signature="s", result_args_names=("session_id",), flags=DbusUnprivilegedFlag
    )
    async def press_start_button(self) -> str:
        with dbus_errors("PressStartButton"):
            return self._api.press_start_button(self._evse_id)

    @dbus_method_async(
        "b",
        "s",
        input_args_names=("operative",),
        result_args_names=("result",),
        flags=DbusUnprivilegedFlag,
    )
    async def set_availability(self, operative: bool) -> str:
        with dbus_errors("SetAvailability"):
            return self._api.set_availability(self._evse_id, operative)

    # --- signals ---------------------------------------------------------------------------

    @dbus_signal_async("ss", signal_args_names=("status", "error_code"))
    def status_changed(self) -> tuple[str, str]:
        raise NotImplementedError


class SimulatorInterface(DbusInterfaceCommonAsync, interface_name=SIMULATOR_INTERFACE):
    """/org/evsed/Simulator: drives the simulated hardware (only with simulated hardware)."""

    def __init__(self, sim: SimulatorApi) -> None:
        super().__init__()
        self._sim = sim

    @dbus_method_async("u", input_args_names=("evse_id",), flags=DbusUnprivilegedFlag)
    async def plug(self, evse_id: int) -> None:
        with dbus_errors("Plug"):
            self._sim.plug(evse_id)

    @dbus_method_async("u", input_args_names=("evse_id",), flags=DbusUnprivilegedFlag)
    async def unplug(self, evse_id: int) -> None:
        with dbus_errors("Unplug"):
            self._sim.unplug(evse_id)

    @dbus_method_async("ub", input_args_names=("evse_id", "ready"), flags=DbusUnprivilegedFlag)
    async def set_ev_ready(self, evse_id: int, ready: bool) -> None:
        with dbus_errors("SetEvReady"):
            self._sim.set_ev_ready(evse_id, ready)

    @dbus_method_async("ud", input_args_names=("evse_id", "amps"), flags=DbusUnprivilegedFlag)
    async def set_ev_max_current(self, evse_id: int, amps: float) -> None:
        with dbus_errors("SetEvMaxCurrent"):
            self._sim.set_ev_max_current(evse_id, amps)

    @dbus_method_async("us", input_args_names=("evse_id", "id_tag"), flags=DbusUnprivilegedFlag)
    async def present_rfid(self, evse_id: int, id_tag: str) -> None:
        with dbus_errors("PresentRfid"):
            self._sim.present_rfid(evse_id, id_tag)

    @dbus_method_async("u", input_args_names=("evse_id",), flags=DbusUnprivilegedFlag)
    async def press_button(self, evse_id: int) -> None:
        with dbus_errors("PressButton"):
            self._sim.press_button(evse_id)

    @dbus_method_async(
        "usb", input_args_names=("evse_id", "name", "active"), flags=DbusUnprivilegedFlag
    )
    async def set_safety_input(self, evse_id: int, name: str, active: bool) -> None:
        with dbus_errors("SetSafetyInput"):
            self._sim.set_safety_input(evse_id, name, active)

    @dbus_method_async("us", input_args_names=("evse_id", "error_code"), flags=DbusUnprivilegedFlag)
    async def raise_fault(self, evse_id: int, error_code: str) -> None:
        with dbus_errors("RaiseFault"):
            self._sim.raise_fault(evse_id, error_code)

    @dbus_method_async("u", input_args_names=("evse_id",), flags=DbusUnprivilegedFlag)
    async def clear_fault(self, evse_id: int) -> None:
        with dbus_errors("ClearFault"):
            self._sim.clear_fault(evse_id)

    @dbus_method_async(flags=DbusUnprivilegedFlag)
    async def websocket_disconnect(self) -> None:
        with dbus_errors("WebsocketDisconnect"):
            self._sim.websocket_disconnect()

    @dbus_method_async(flags=DbusUnprivilegedFlag)
    async def websocket_connect(self) -> None:
        with dbus_errors("WebsocketConnect"):
            self._sim.websocket_connect()


# --- org.evsed.Firmware1 ---------------------------------------------------------------------

_INT32 = range(-(2**31), 2**31)


class FirmwareManagerLike(Protocol):
    """What Firmware1 needs of service.firmware.manager.FirmwareManager."""

    def snapshot(self) -> dict[str, object]: ...

    def on_change(self, callback: Callable[[], None]) -> None: ...

    async def install_local(self, path: Path) -> None: ...


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and value in _INT32 else default


def public_location(location: str) -> str:
    """A location as anyone on the bus may read it: no password from user:password@host."""
    try:
        parts = urlsplit(location)
        if parts.password is None:
            return location
        host = parts.netloc.rpartition("@")[2]
        netloc = f"{parts.username}@{host}" if parts.username else host
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return location


def firmware_values(snap: Mapping[str, object]) -> PropertyValues:
    """Firmware1's properties from a manager snapshot (missing or odd values: defaults)."""
    return {
        "State": ("s", dbus_text(str(snap.get("state", "Idle")))),
        "Progress": ("i", _int(snap.get("progress"), 0)),
        "LastError": ("s", dbus_text(str(snap.get("last_error", "")))),
        "RequestId": ("i", _int(snap.get("request_id"), -1)),
        "Location": ("s", dbus_text(public_location(str(snap.get("location", ""))))),
        "Backend": ("s", dbus_text(str(snap.get("backend", "")))),
    }


def _is_busy(exc: BaseException) -> bool:
    # service.firmware.manager.FirmwareBusy, matched by name: the D-Bus layer does not import
    # the firmware machinery (and its backends) just to translate one exception.
    return any(cls.__name__ == "FirmwareBusy" for cls in type(exc).__mro__)


class FirmwareInterface(DbusInterfaceCommonAsync, interface_name=FIRMWARE_INTERFACE):
    """/org/evsed/Station, next to Station1: the firmware update state and local installs.

    The properties mirror the manager's `snapshot()`; `refresh()` (called on the manager's
    `on_change`) emits PropertiesChanged for what differs. InstallFile is privileged: it has no
    DbusUnprivilegedFlag, so sd-bus itself refuses callers without CAP_SYS_ADMIN (other than
    the daemon's own user), whatever the bus policy lets through.
    """

    def __init__(self, manager: FirmwareManagerLike) -> None:
        super().__init__()
        self._manager = manager
        try:
            snap = manager.snapshot()
        except Exception:
            log.exception("reading the firmware snapshot failed")
            snap = {}
        self._last = firmware_values(snap)

    def _value(self, name: str) -> Any:
        try:
            return firmware_values(self._manager.snapshot())[name][1]
        except Exception:
            log.exception("reading the firmware snapshot failed")
            return self._last[name][1]

    def refresh(self) -> None:
        """Compare with the last state sent and emit PropertiesChanged for what differs."""
        new = firmware_values(self._manager.snapshot())
        changed = _changed(self._last, new)
        self._last = new
        if changed:
            self.properties_changed.emit((FIRMWARE_INTERFACE, changed, []))

    # --- properties ------------------------------------------------------------------------

    @dbus_property_async("s", flags=_CHANGES)
    def state(self) -> str:
        return str(self._value("State"))

    @dbus_property_async("i", flags=_CHANGES)
    def progress(self) -> int:
        return int(self._value("Progress"))

    @dbus_property_async("s", flags=_CHANGES)
    def last_error(self) -> str:
        return str(self._value("LastError"))

    @dbus_property_async("i", flags=_CHANGES)
    def request_id(self) -> int:
        return int(self._value("RequestId"))

    @dbus_property_async("s", flags=_CHANGES)
    def location(self) -> str:
        return str(self._value("Location"))

    @dbus_property_async("s", flags=_CHANGES)
    def backend(self) -> str:
        return str(self._value("Backend"))

    # --- methods ---------------------------------------------------------------------------

    @dbus_method_async("s", input_args_names=("path",))
    async def install_file(self, path: str) -> None:
        with dbus_errors("InstallFile"):
            if not path.startswith("/"):
                raise InvalidArgument(f"{path!r}: give an absolute path")
            try:
                await self._manager.install_local(Path(path))
            except ValueError as exc:
                raise InvalidArgument(str(exc)) from exc
            except Exception as exc:
                if _is_busy(exc):
                    raise InvalidState(str(exc) or "a firmware update is in progress") from exc
                raise
