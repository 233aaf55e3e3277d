"""DataTransfer both ways through the real daemon: a D-Bus client sends one to the CSMS, and
answers the CSMS's requests for the vendor id it registered."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sdbus.sd_bus_internals import SdBusMessage

from service.dbus import BUS_NAME, STATION_INTERFACE, STATION_PATH, StationInterface
from service.dbus.errors import NotAvailableError
from service.dbus.server import open_bus
from testcsms.server import TestCsms
from tests.integration.conftest import DaemonProcess, start_daemon, write_config

CP = "CP-IT-1"
LIMIT = 10


async def test_data_transfer_both_ways(csms: TestCsms, daemons: list[DaemonProcess],
                                       tmp_path: Path, dbus_address: str) -> None:
    config = write_config(tmp_path, csms.url, dbus_address=dbus_address,
                          csms_extra="external_websocket_control = true")
    daemon = await start_daemon(config, tmp_path)
    daemons.append(daemon)
    await daemon.wait_notification("READY=1")
    await csms.wait_for("StatusNotification")
    bus = open_bus(dbus_address)
    try:
        station = StationInterface.new_proxy(BUS_NAME, STATION_PATH, bus)
        # Outbound: the test CSMS answers Accepted and echoes the data.
        status, data = await asyncio.wait_for(
            station.data_transfer("com.acme", "Ping", "hello"), LIMIT)
        assert (status, data) == ("Accepted", "hello")
        [sent] = await csms.wait_for("DataTransfer")
        assert sent.payload == {"vendorId": "com.acme", "messageId": "Ping", "data": "hello"}

        # Inbound: an unknown vendor, then a registered one answered by this client.
        assert await csms.call(CP, "DataTransfer", {"vendorId": "org.nobody"}) == {
            "status": "UnknownVendorId"}
        requests: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

        def on_signal(message: SdBusMessage) -> None:
            requests.put_nowait(message.get_contents())

        slot = await bus.match_signal_async(BUS_NAME, STATION_PATH, STATION_INTERFACE,
                                            "DataTransferRequest", on_signal)
        await asyncio.wait_for(station.register_vendor("com.acme"), LIMIT)
        answer_task = asyncio.ensure_future(csms.call(
            CP, "DataTransfer", {"vendorId": "com.acme", "messageId": "SetPrice",
                                 "data": '{"eur_kwh": 0.39}'}))
        request_id, vendor, message_id, payload = await asyncio.wait_for(requests.get(), LIMIT)
        assert (vendor, message_id, payload) == ("com.acme", "SetPrice", '{"eur_kwh": 0.39}')
        await asyncio.wait_for(station.answer_data_transfer(request_id, "Accepted", "ok"),
                               LIMIT)
        assert await asyncio.wait_for(answer_task, LIMIT) == {"status": "Accepted",
                                                              "data": "ok"}
        slot.close()

        # Offline: a DataTransfer cannot reach the CSMS and says so.
        await asyncio.wait_for(
            bus.call_async(bus.new_method_call_message(
                BUS_NAME, "/org/evsed/Simulator", "org.evsed.Simulator1",
                "WebsocketDisconnect")), LIMIT)
        await csms.wait_until(lambda: csms.connections[-1].closed is not None)
        await asyncio.sleep(0.3)
        with pytest.raises(NotAvailableError):
            await asyncio.wait_for(station.data_transfer("com.acme", "Ping", ""), LIMIT)
    finally:
        bus.close()
    assert await daemon.stop() == 0
