"""Exporting evsed's API on D-Bus: the bus connection, the objects, the well-known name.

`export()` connects to the system bus (or the bus at `bus_address`), exports
/org/evsed/Station (with org.evsed.Firmware1 next to Station1 when a firmware manager is
given), one /org/evsed/Evse/<id> per EVSE and, only with simulated hardware,
/org/evsed/Simulator, then requests the name `org.evsed`. `DbusService.close()` undoes all of
it: vendor registrations are dropped, objects unexported, the name released, the bus closed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from sdbus import SdBus, sd_bus_open_system

from service.dbus.interfaces import (
    EvseInterface,
    FirmwareInterface,
    FirmwareManagerLike,
    SimulatorInterface,
    StationInterface,
)
from service.dbus.vendors import DEFAULT_VENDOR_TIMEOUT_S
from service.station.api import FrameSource, SimulatorApi, StationApi

if TYPE_CHECKING:
    from sdbus.dbus_proxy_async_interface_base import DbusExportHandle
    from sdbus.sd_bus_internals import SdBusMessage, SdBusSlot

__all__ = [
    "BUS_NAME",
    "SIMULATOR_PATH",
    "STATION_PATH",
    "DbusService",
    "evse_path",
    "export",
    "open_bus",
]

log = logging.getLogger("evsed.dbus")

BUS_NAME = "org.evsed"
STATION_PATH = "/org/evsed/Station"
EVSE_PATH_PREFIX = "/org/evsed/Evse/"
SIMULATOR_PATH = "/org/evsed/Simulator"

_DBUS_NAME = "org.freedesktop.DBus"
_DBUS_PATH = "/org/freedesktop/DBus"
_CLOSE_TIMEOUT_S = 5.0
_ENV_LOCK = threading.Lock()


def evse_path(evse_id: int) -> str:
    return f"{EVSE_PATH_PREFIX}{evse_id}"


def open_bus(address: str | None = None) -> SdBus:
    """The system bus, or the bus at `address`.

    sdbus 0.14 cannot open a bus by address (no sd_bus_set_address), but sd_bus_open_system()
    honours DBUS_SYSTEM_BUS_ADDRESS: the variable is set for the duration of the call only.
    """
    if address is None:
        return sd_bus_open_system()
    with _ENV_LOCK:
        saved = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = address
        try:
            return sd_bus_open_system()
        finally:
            if saved is None:
                del os.environ["DBUS_SYSTEM_BUS_ADDRESS"]
            else:
                os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = saved


class DbusService:
    """The exported objects on one bus connection; `close()` releases everything."""

    def __init__(
        self,
        bus: SdBus,
        station: StationInterface,
        evses: dict[int, EvseInterface],
        simulator: SimulatorInterface | None,
        firmware: FirmwareInterface | None = None,
    ) -> None:
        self.bus = bus
        self.station = station
        self.evses = evses
        self.simulator = simulator
        self.firmware = firmware
        self._handles: list[DbusExportHandle] = []
        self._slots: list[SdBusSlot] = []
        self._name_owned = False
        self.closed = False

    def on_api_change(self, evse_id: int) -> None:
        """The `StationApi.on_change` callback: emit signals for what changed. Never raises."""
        if self.closed:
            return
        try:
            if evse_id == 0:
                self.station.refresh()
                return
            evse = self.evses.get(evse_id)
            if evse is None:
                log.debug("change reported for EVSE %d, which is not exported", evse_id)
                return
            evse.refresh()
        except Exception:
            log.exception("emitting the change of %s failed", evse_id or "the station")

    def on_firmware_change(self, *_args: object) -> None:
        """The firmware manager's `on_change` callback: emit Firmware1's PropertiesChanged.
        Never raises."""
        if self.closed or self.firmware is None:
            return
        try:
            self.firmware.refresh()
        except Exception:
            log.exception("emitting the firmware change failed")

    def on_frame(self, direction: str, frame: str) -> None:
        """The `FrameSource.on_frame` callback: emit Station1.OcppFrame. Never raises."""
        if self.closed:
            return
        try:
            self.station.emit_frame(direction, frame)
        except Exception:
            log.exception("emitting an OcppFrame signal failed")

    def _on_name_owner_changed(self, message: SdBusMessage) -> None:
        try:
            name, _old, new = message.get_contents()
            if isinstance(name, str) and name.startswith(":") and not new:
                self.station.vendors.owner_left(name)
        except Exception:
            log.exception("handling NameOwnerChanged failed")

    async def _start(self) -> None:
        self._slots.append(
            await self.bus.match_signal_async(
                _DBUS_NAME, _DBUS_PATH, _DBUS_NAME, "NameOwnerChanged", self._on_name_owner_changed
            )
        )
        self._handles.append(self.station.export_to_dbus(STATION_PATH, self.bus))
        if self.firmware is not None:
            self._handles.append(self.firmware.export_to_dbus(STATION_PATH, self.bus))
        for evse_id, evse in self.evses.items():
            self._handles.append(evse.export_to_dbus(evse_path(evse_id), self.bus))
        if self.simulator is not None:
            self._handles.append(self.simulator.export_to_dbus(SIMULATOR_PATH, self.bus))
        await self.bus.request_name_async(BUS_NAME, 0)
        self._name_owned = True

    async def close(self) -> None:
        """Drop vendor registrations, unexport, release `org.evsed`, close the connection."""
        if self.closed:
            return
        self.closed = True
        self.station.vendors.close()
        for handle in self._handles:
            handle.stop()
        for slot in self._slots:
            slot.close()
        if self._name_owned:
            # A round trip also flushes the replies and signals still queued on the connection.
            try:
                await asyncio.wait_for(
                    self._call_bus("ReleaseName", "s", BUS_NAME), _CLOSE_TIMEOUT_S
                )
            except Exception as exc:
                log.warning("releasing %s failed: %s", BUS_NAME, exc)
        self.bus.close()

    async def _call_bus(self, member: str, signature: str, *args: Any) -> tuple[Any, ...]:
        message = self.bus.new_method_call_message(_DBUS_NAME, _DBUS_PATH, _DBUS_NAME, member)
        message.append_data(signature, *args)
        reply = await self.bus.call_async(message)
        return reply.get_contents()


async def export(
    api: StationApi,
    simulator: SimulatorApi | None,
    *,
    bus_address: str | None = None,
    vendor_timeout_s: float = DEFAULT_VENDOR_TIMEOUT_S,
    firmware: FirmwareManagerLike | None = None,
) -> DbusService:
    """Export `api` (and `simulator` when given) as `org.evsed` on the bus.

    `bus_address` None means the system bus (DBUS_SYSTEM_BUS_ADDRESS is honoured).
    When `api` is also a `FrameSource`, every OCPP frame is emitted as Station1.OcppFrame and
    the recent ones are served by Station1.RecentFrames.
    `vendor_timeout_s` bounds the wait for a registered client's AnswerDataTransfer.
    `firmware` (the firmware manager) adds org.evsed.Firmware1 on /org/evsed/Station.
    Raises sdbus errors when the bus cannot be reached or the name is owned by another process.
    """
    bus = open_bus(bus_address)
    service: DbusService | None = None
    try:
        frames = api if isinstance(api, FrameSource) else None
        station = StationInterface(api, vendor_timeout_s, frames)
        evses = {evse_id: EvseInterface(api, evse_id) for evse_id in api.evse_ids()}
        sim = SimulatorInterface(simulator) if simulator is not None else None
        fw = FirmwareInterface(firmware) if firmware is not None else None
        service = DbusService(bus, station, evses, sim, fw)
        await service._start()
    except BaseException:
        if service is not None:
            service.closed = True
            service.station.vendors.close()
            for handle in service._handles:
                handle.stop()
            for slot in service._slots:
                slot.close()
        bus.close()
        raise
    api.on_change(service.on_api_change)
    if frames is not None:
        frames.on_frame(service.on_frame)
    if firmware is not None:
        firmware.on_change(service.on_firmware_change)
    log.info(
        "D-Bus: %s exported (%d EVSE%s%s)",
        BUS_NAME,
        len(evses),
        "" if len(evses) == 1 else "s",
        ", simulator" if sim is not None else "",
    )
    return service
