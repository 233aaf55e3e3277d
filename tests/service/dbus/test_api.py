"""Tests of service.dbus on a real private dbus-daemon, with sdbus clients and busctl.

The daemon behind the API is a different component; here a tiny fake StationApi/SimulatorApi
stands in for it: it keeps snapshots, records calls and raises ApiErrors on bad input. Everything
on the D-Bus side is real: the bus, the service's connection, sdbus proxies on a second
connection, and `busctl` as a black-box client. Every wait is bounded; nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import select
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sdbus import DbusInvalidArgsError, SdBus
from sdbus.sd_bus_internals import SdBusMessage, SdBusRequestNameError

from service.dbus import (
    BUS_NAME,
    EVSE_INTERFACE,
    SIMULATOR_PATH,
    STATION_INTERFACE,
    STATION_PATH,
    DbusService,
    EvseInterface,
    SimulatorInterface,
    StationInterface,
    evse_path,
    export,
)
from service.dbus.errors import EvsedError, InvalidArgumentError
from service.dbus.server import open_bus
from service.station.api import (
    DataTransferAnswer,
    EvseSnapshot,
    InvalidArgument,
    InvalidState,
    NotAvailable,
    StationSnapshot,
    UnknownEvse,
    VendorHandler,
)

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        shutil.which("dbus-daemon") is None or shutil.which("busctl") is None,
        reason="needs dbus-daemon and busctl",
    ),
]

BUS_CONF = Path(__file__).with_name("bus.conf")
LIMIT = 15.0  # generous bound against hangs only


# --- the fake daemon -----------------------------------------------------------------------------


def _evse(evse_id: int) -> EvseSnapshot:
    return EvseSnapshot(
        evse_id=evse_id,
        status="Available",
        error_code="NoError",
        availability="Operative",
        pilot_state="A",
        session_id="",
        transaction_id="",
        id_tag="",
        energy_wh=1234.5,
        session_energy_wh=0.0,
        power_w=0.0,
        current_a=(0.0, 0.0, 0.0),
        voltage_v=(230.0, 231.0, 229.5),
        offered_current_a=16.0,
    )


class FakeApi:
    """StationApi + SimulatorApi: snapshots, a call log, ApiErrors for bad input."""

    def __init__(self) -> None:
        self.snapshot = StationSnapshot(
            charge_point_id="CP-1",
            vendor="Acme",
            model="Wallbox",
            firmware_version="1.2.3",
            connection_state="connected",
            ocpp_version="1.6",
            registration="Accepted",
            queued_messages=2,
        )
        self.evses = {1: _evse(1), 2: _evse(2)}
        self.calls: list[tuple[Any, ...]] = []
        self.callbacks: list[Callable[[int], None]] = []
        self.vendors: dict[str, VendorHandler] = {}
        self.fail_next: Exception | None = None
        self.sessions = 0

    # helpers for the tests: what the daemon would do when its state changes
    def change_station(self, **fields: Any) -> None:
        self.snapshot = dataclasses.replace(self.snapshot, **fields)
        for callback in self.callbacks:
            callback(0)

    def change_evse(self, evse_id: int, **fields: Any) -> None:
        self.evses[evse_id] = dataclasses.replace(self.evses[evse_id], **fields)
        for callback in self.callbacks:
            callback(evse_id)

    def _call(self, *call: Any) -> None:
        self.calls.append(call)
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc

    def _known(self, evse_id: int) -> EvseSnapshot:
        if evse_id not in self.evses:
            raise UnknownEvse(f"no EVSE {evse_id}")
        return self.evses[evse_id]

    # StationApi
    def station(self) -> StationSnapshot:
        return self.snapshot

    def evse_ids(self) -> list[int]:
        return sorted(self.evses)

    def evse(self, evse_id: int) -> EvseSnapshot:
        return self._known(evse_id)

    def on_change(self, callback: Callable[[int], None]) -> None:
        self.callbacks.append(callback)

    def start_session(self, evse_id: int, id_tag: str) -> str:
        self._call("start_session", evse_id, id_tag)
        snap = self._known(evse_id)
        if not id_tag or len(id_tag) > 20:
            raise InvalidArgument("id tag must be 1..20 characters")
        if snap.session_id:
            raise InvalidState(f"EVSE {evse_id} is already in a session")
        self.sessions += 1
        session_id = f"session-{self.sessions}"
        self.change_evse(evse_id, session_id=session_id, id_tag=id_tag, status="Preparing")
        return session_id

    def stop_session(self, evse_id: int) -> None:
        self._call("stop_session", evse_id)
        if not self._known(evse_id).session_id:
            raise InvalidState(f"EVSE {evse_id} has no session")
        self.change_evse(evse_id, session_id="", id_tag="", status="Available")

    def set_availability(self, evse_id: int, operative: bool) -> str:
        self._call("set_availability", evse_id, operative)
        snap = self._known(evse_id)
        return "Scheduled" if snap.session_id else "Accepted"

    def present_token(self, evse_id: int, id_tag: str) -> None:
        self._call("present_token", evse_id, id_tag)
        if evse_id != 0:
            self._known(evse_id)

    async def data_transfer(self, vendor_id: str, message_id: str, data: str) -> tuple[str, str]:
        self._call("data_transfer", vendor_id, message_id, data)
        if self.snapshot.connection_state != "connected":
            raise NotAvailable("not connected to the CSMS")
        await asyncio.sleep(0)  # a real round trip would suspend here
        return ("Accepted", f"echo:{data}")

    def register_vendor(self, vendor_id: str, handler: VendorHandler) -> None:
        self._call("register_vendor", vendor_id)
        self.vendors[vendor_id] = handler

    def unregister_vendor(self, vendor_id: str) -> None:
        self._call("unregister_vendor", vendor_id)
        self.vendors.pop(vendor_id, None)

    # SimulatorApi
    def plug(self, evse_id: int) -> None:
        self._call("plug", evse_id)
        self._known(evse_id)

    def unplug(self, evse_id: int) -> None:
        self._call("unplug", evse_id)
        self._known(evse_id)

    def set_ev_ready(self, evse_id: int, ready: bool) -> None:
        self._call("set_ev_ready", evse_id, ready)
        self._known(evse_id)

    def set_ev_max_current(self, evse_id: int, amps: float) -> None:
        self._call("set_ev_max_current", evse_id, amps)
        self._known(evse_id)
        if amps < 0:
            raise InvalidArgument("current must be >= 0")

    def present_rfid(self, evse_id: int, id_tag: str) -> None:
        self._call("present_rfid", evse_id, id_tag)
        self._known(evse_id)

    def raise_fault(self, evse_id: int, error_code: str) -> None:
        self._call("raise_fault", evse_id, error_code)
        self._known(evse_id)

    def clear_fault(self, evse_id: int) -> None:
        self._call("clear_fault", evse_id)
        self._known(evse_id)

    def websocket_disconnect(self) -> None:
        self._call("websocket_disconnect")

    def websocket_connect(self) -> None:
        self._call("websocket_connect")


# --- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture
def bus_address() -> Iterator[str]:
    """A private dbus-daemon, a direct child of the test process."""
    proc = subprocess.Popen(
        ["dbus-daemon", f"--config-file={BUS_CONF}", "--nofork", "--print-address=1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], LIMIT)
        assert ready, "dbus-daemon printed no address"
        address = proc.stdout.readline().strip()
        assert address.startswith("unix:"), address
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=LIMIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def fake() -> FakeApi:
    return FakeApi()


@pytest.fixture
async def service(bus_address: str, fake: FakeApi) -> AsyncIterator[DbusService]:
    svc = await asyncio.wait_for(export(fake, fake, bus_address=bus_address), LIMIT)
    try:
        yield svc
    finally:
        await asyncio.wait_for(svc.close(), LIMIT)


@contextlib.contextmanager
def client(bus_address: str) -> Iterator[SdBus]:
    bus = open_bus(bus_address)
    try:
        yield bus
    finally:
        bus.close()


@pytest.fixture
def client_bus(bus_address: str) -> Iterator[SdBus]:
    with client(bus_address) as bus:
        yield bus


async def busctl(address: str, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "busctl",
        f"--address={address}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), LIMIT)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def subscribe(
    bus: SdBus, path: str, interface: str, member: str
) -> tuple[Any, asyncio.Queue[tuple[Any, ...]]]:
    """A match on the bus (installed when this returns) feeding the signal bodies to a queue."""
    queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    def on_signal(message: SdBusMessage) -> None:
        queue.put_nowait(message.get_contents())

    slot = await asyncio.wait_for(
        bus.match_signal_async(BUS_NAME, path, interface, member, on_signal), LIMIT
    )
    return slot, queue


async def next_item(queue: asyncio.Queue[tuple[Any, ...]]) -> tuple[Any, ...]:
    return await asyncio.wait_for(queue.get(), LIMIT)


async def raw_call(bus: SdBus, path: str, interface: str, member: str, sig: str, *args: Any) -> Any:
    message = bus.new_method_call_message(BUS_NAME, path, interface, member)
    if sig:
        message.append_data(sig, *args)
    reply = await asyncio.wait_for(bus.call_async(message), LIMIT)
    return reply.get_contents()


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(LIMIT):
        while not condition():
            await asyncio.sleep(0.02)


# --- properties ----------------------------------------------------------------------------------


async def test_properties_via_sdbus_proxy(service: DbusService, client_bus: SdBus) -> None:
    async with asyncio.timeout(LIMIT):
        station = StationInterface.new_proxy(BUS_NAME, STATION_PATH, client_bus)
        assert await station.charge_point_id == "CP-1"
        assert await station.evse_ids == [1, 2]
        assert await station.properties_get_all_dict() == {
            "charge_point_id": "CP-1",
            "vendor": "Acme",
            "model": "Wallbox",
            "firmware_version": "1.2.3",
            "firmware_status": "Idle",
            "connection_state": "connected",
            "ocpp_version": "1.6",
            "registration": "Accepted",
            "queued_messages": 2,
            "evse_ids": [1, 2],
        }
        evse = EvseInterface.new_proxy(BUS_NAME, evse_path(2), client_bus)
        values = await evse.properties_get_all_dict()
        assert values["id"] == 2
        assert values["status"] == "Available"
        assert values["energy_wh"] == 1234.5
        assert values["voltage_v"] == [230.0, 231.0, 229.5]
        assert values["offered_current_a"] == 16.0
        assert len(values) == 14


async def test_properties_via_busctl(service: DbusService, bus_address: str, fake: FakeApi) -> None:
    rc, out = await busctl(
        bus_address, "get-property", BUS_NAME, STATION_PATH, STATION_INTERFACE, "ChargePointId"
    )
    assert (rc, out.strip()) == (0, 's "CP-1"')
    rc, out = await busctl(
        bus_address, "get-property", BUS_NAME, STATION_PATH, STATION_INTERFACE, "EvseIds"
    )
    assert (rc, out.strip()) == (0, "au 2 1 2")
    rc, out = await busctl(
        bus_address, "get-property", BUS_NAME, evse_path(1), EVSE_INTERFACE, "VoltageV", "Id"
    )
    assert (rc, out.split("\n")[:2]) == (0, ["ad 3 230 231 229.5", "u 1"])

    fake.change_station(connection_state="disconnected", ocpp_version="")
    rc, out = await busctl(
        bus_address, "get-property", BUS_NAME, STATION_PATH, STATION_INTERFACE, "ConnectionState"
    )
    assert (rc, out.strip()) == (0, 's "disconnected"')


async def test_introspection_shows_the_whole_api(service: DbusService, bus_address: str) -> None:
    rc, tree = await busctl(bus_address, "tree", BUS_NAME)
    assert rc == 0
    for path in (STATION_PATH, evse_path(1), evse_path(2), SIMULATOR_PATH):
        assert path in tree
    rc, station = await busctl(bus_address, "introspect", BUS_NAME, STATION_PATH)
    assert rc == 0
    for member in (
        "ChargePointId", "Vendor", "Model", "FirmwareVersion", "ConnectionState", "OcppVersion",
        "Registration", "QueuedMessages", "EvseIds", "PresentToken", "DataTransfer",
        "RegisterVendor", "UnregisterVendor", "AnswerDataTransfer", "DataTransferRequest",
    ):  # fmt: skip
        assert f".{member} " in station, member
    rc, evse = await busctl(bus_address, "introspect", BUS_NAME, evse_path(1))
    assert rc == 0
    for member in (
        "Id", "Status", "ErrorCode", "Availability", "PilotState", "SessionId", "TransactionId",
        "IdTag", "EnergyWh", "SessionEnergyWh", "PowerW", "CurrentA", "VoltageV",
        "OfferedCurrentA", "StartSession", "StopSession", "SetAvailability", "StatusChanged",
    ):  # fmt: skip
        assert f".{member} " in evse, member


async def test_export_uses_the_system_bus_address_from_the_environment(
    bus_address: str, fake: FakeApi, client_bus: SdBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus_address)
    svc = await asyncio.wait_for(export(fake, None), LIMIT)
    try:
        station = StationInterface.new_proxy(BUS_NAME, STATION_PATH, client_bus)
        assert await asyncio.wait_for(station.model.get_async(), LIMIT) == "Wallbox"
    finally:
        await asyncio.wait_for(svc.close(), LIMIT)
    rc, out = await busctl(bus_address, "list")
    assert rc == 0
    assert BUS_NAME not in out  # close() released the name


async def test_a_second_export_cannot_take_the_name(
    service: DbusService, bus_address: str, fake: FakeApi, client_bus: SdBus
) -> None:
    with pytest.raises(SdBusRequestNameError):
        await asyncio.wait_for(export(fake, None, bus_address=bus_address), LIMIT)
    station = StationInterface.new_proxy(BUS_NAME, STATION_PATH, client_bus)
    assert await asyncio.wait_for(station.vendor.get_async(), LIMIT) == "Acme"


# --- change signals ------------------------------------------------------------------------------


async def test_properties_changed_and_status_changed(
    service: DbusService, client_bus: SdBus, fake: FakeApi
) -> None:
    props_slot, props = await subscribe(
        client_bus, evse_path(1), "org.freedesktop.DBus.Properties", "PropertiesChanged"
    )
    status_slot, statuses = await subscribe(
        client_bus, evse_path(1), EVSE_INTERFACE, "StatusChanged"
    )
    station_slot, station_props = await subscribe(
        client_bus, STATION_PATH, "org.freedesktop.DBus.Properties", "PropertiesChanged"
    )
    try:
        fake.change_evse(1, power_w=7200.0, current_a=(10.0, 10.5, 11.0))
        interface, changed, invalidated = await next_item(props)
        assert interface == EVSE_INTERFACE
        assert changed == {"PowerW": ("d", 7200.0), "CurrentA": ("ad", [10.0, 10.5, 11.0])}
        assert invalidated == []

        fake.change_evse(1, status="Faulted", error_code="GroundFailure")
        _, changed, _ = await next_item(props)
        assert changed == {"Status": ("s", "Faulted"), "ErrorCode": ("s", "GroundFailure")}
        assert await next_item(statuses) == ("Faulted", "GroundFailure")

        fake.change_station(registration="Rejected", queued_messages=5)
        interface, changed, _ = await next_item(station_props)
        assert interface == STATION_INTERFACE
        assert changed == {"Registration": ("s", "Rejected"), "QueuedMessages": ("u", 5)}

        # a report without a difference sends nothing; StatusChanged only follows Status/ErrorCode
        fake.change_evse(1)
        fake.change_evse(1, energy_wh=1300.0)
        _, changed, _ = await next_item(props)
        assert changed == {"EnergyWh": ("d", 1300.0)}
        assert statuses.empty()
    finally:
        props_slot.close()
        status_slot.close()
        station_slot.close()


# --- methods and errors --------------------------------------------------------------------------


async def test_start_session_and_error_names(
    service: DbusService, client_bus: SdBus, fake: FakeApi
) -> None:
    evse1 = EvseInterface.new_proxy(BUS_NAME, evse_path(1), client_bus)
    assert await asyncio.wait_for(evse1.start_session("TAG1"), LIMIT) == "session-1"
    assert await asyncio.wait_for(evse1.session_id.get_async(), LIMIT) == "session-1"

    with pytest.raises(EvsedError) as info:
        await asyncio.wait_for(evse1.start_session("TAG2"), LIMIT)
    assert type(info.value).dbus_error_name == "org.evsed.Error.InvalidState"
    assert "already in a session" in str(info.value)

    with pytest.raises(EvsedError) as info:
        await asyncio.wait_for(evse1.start_session(""), LIMIT)
    assert type(info.value).dbus_error_name == "org.evsed.Error.InvalidArgument"

    # EVSE objects exist for the ids known at export; a daemon that no longer knows one answers
    # UnknownEvse, and the client sees that error name
    del fake.evses[2]
    evse2 = EvseInterface.new_proxy(BUS_NAME, evse_path(2), client_bus)
    with pytest.raises(EvsedError) as info:
        await asyncio.wait_for(evse2.start_session("TAG1"), LIMIT)
    assert type(info.value).dbus_error_name == "org.evsed.Error.UnknownEvse"
    assert str(info.value) == "no EVSE 2"

    await asyncio.wait_for(evse1.stop_session(), LIMIT)
    assert await asyncio.wait_for(evse1.set_availability(False), LIMIT) == "Accepted"
    assert fake.calls == [
        ("start_session", 1, "TAG1"),
        ("start_session", 1, "TAG2"),
        ("start_session", 1, ""),
        ("start_session", 2, "TAG1"),
        ("stop_session", 1),
        ("set_availability", 1, False),
    ]


async def test_errors_seen_by_busctl(service: DbusService, bus_address: str) -> None:
    station = (BUS_NAME, STATION_PATH, STATION_INTERFACE)
    rc, out = await busctl(bus_address, "call", *station, "PresentToken", "us", "9", "TAG")
    assert rc != 0
    assert "no EVSE 9" in out
    rc, out = await busctl(bus_address, "call", *station, "PresentToken", "us", "0", "TAG")
    assert (rc, out.strip()) == (0, "")


async def test_wrong_argument_types_are_rejected_by_dbus(
    service: DbusService, bus_address: str, client_bus: SdBus, fake: FakeApi
) -> None:
    evse1 = (BUS_NAME, evse_path(1), EVSE_INTERFACE)
    rc, out = await busctl(bus_address, "call", *evse1, "StartSession", "i", "5")
    assert rc != 0
    assert "Invalid arguments" in out
    with pytest.raises(DbusInvalidArgsError) as info:
        await raw_call(client_bus, evse_path(1), EVSE_INTERFACE, "StartSession", "i", 5)
    assert type(info.value).dbus_error_name == "org.freedesktop.DBus.Error.InvalidArgs"
    assert fake.calls == []  # never reached the API

    rc, out = await busctl(bus_address, "call", *evse1, "StartSession", "s", "TAG7")
    assert (rc, out.strip()) == (0, 's "session-1"')


async def test_unexpected_exception_becomes_failed_and_service_lives_on(
    service: DbusService, client_bus: SdBus, fake: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    evse1 = EvseInterface.new_proxy(BUS_NAME, evse_path(1), client_bus)
    fake.fail_next = RuntimeError("secret internals")
    with pytest.raises(EvsedError) as info:
        await asyncio.wait_for(evse1.start_session("TAG1"), LIMIT)
    assert type(info.value).dbus_error_name == "org.evsed.Error.Failed"
    assert "secret" not in str(info.value)
    logged = [r.exc_info[1] for r in caplog.records if r.exc_info is not None]
    assert [str(exc) for exc in logged] == ["secret internals"]

    assert await asyncio.wait_for(evse1.start_session("TAG1"), LIMIT) == "session-1"


async def test_data_transfer_round_trip(
    service: DbusService, client_bus: SdBus, fake: FakeApi
) -> None:
    station = StationInterface.new_proxy(BUS_NAME, STATION_PATH, client_bus)
    answer = await asyncio.wait_for(station.data_transfer("com.acme", "Price", "{}"), LIMIT)
    assert answer == ("Accepted", "echo:{}")
    assert fake.calls == [("data_transfer", "com.acme", "Price", "{}")]

    fake.change_station(connection_state="disconnected")
    with pytest.raises(EvsedError) as info:
        await asyncio.wait_for(station.data_transfer("com.acme", "Price", "{}"), LIMIT)
    assert type(info.value).dbus_error_name == "org.evsed.Error.NotAvailable"


# --- vendor handlers -----------------------------------------------------------------------------


async def test_registered_client_answers_inbound_data_transfer(
    service: DbusService, bus_address: str, client_bus: SdBus, fake: FakeApi
) -> None:
    station = StationInterface.new_proxy(BUS_NAME, STATION_PATH, client_bus)
    slot, requests = await subscribe(
        client_bus, STATION_PATH, STATION_INTERFACE, "DataTransferRequest"
    )
    try:
        await asyncio.wait_for(station.register_vendor("com.acme"), LIMIT)
        assert fake.calls == [("register_vendor", "com.acme")]

        # the CSMS's DataTransfer reaches the daemon, which calls the handler
        inbound: asyncio.Future[DataTransferAnswer] = asyncio.ensure_future(
            fake.vendors["com.acme"]("SetPrice", '{"p": 1}')
        )
        request_id, vendor_id, message_id, data = await next_item(requests)
        assert (vendor_id, message_id, data) == ("com.acme", "SetPrice", '{"p": 1}')

        # another client cannot answer it, nor can a bad status
        with client(bus_address) as other_bus:
            other = StationInterface.new_proxy(BUS_NAME, STATION_PATH, other_bus)
            with pytest.raises(InvalidArgumentError):
                await asyncio.wait_for(
                    other.answer_data_transfer(request_id, "Accepted", ""), LIMIT
                )
        with pytest.raises(InvalidArgumentError):
            await asyncio.wait_for(station.answer_data_transfer(request_id, "Maybe", ""), LIMIT)

        await asyncio.wait_for(station.answer_data_transfer(request_id, "Accepted", "ok"), LIMIT)
        answer = await asyncio.wait_for(inbound, LIMIT)
        assert answer == ("Accepted", "ok")

        # answered once only
        with pytest.raises(InvalidArgumentError):
            await asyncio.wait_for(station.answer_data_transfer(request_id, "Accepted", ""), LIMIT)

        await asyncio.wait_for(station.unregister_vendor("com.acme"), LIMIT)
        assert "com.acme" not in fake.vendors
    finally:
        slot.close()


async def test_unanswered_request_times_out_as_rejected(
    bus_address: str, client_bus: SdBus, fake: FakeApi
) -> None:
    svc = await asyncio.wait_for(
        export(fake, None, bus_address=bus_address, vendor_timeout_s=0.2), LIMIT
    )
    try:
        station = StationInterface.new_proxy(BUS_NAME, STATION_PATH, client_bus)
        slot, requests = await subscribe(
            client_bus, STATION_PATH, STATION_INTERFACE, "DataTransferRequest"
        )
        try:
            await asyncio.wait_for(station.register_vendor("com.acme"), LIMIT)
            answer = await asyncio.wait_for(fake.vendors["com.acme"]("Ping", "x"), LIMIT)
            assert answer == ("Rejected", "")
            request_id, *_ = await next_item(requests)  # the request was sent, never answered
            with pytest.raises(InvalidArgumentError):  # too late now
                await asyncio.wait_for(
                    station.answer_data_transfer(request_id, "Accepted", ""), LIMIT
                )
        finally:
            slot.close()
    finally:
        await asyncio.wait_for(svc.close(), LIMIT)
    assert ("unregister_vendor", "com.acme") in fake.calls  # close() dropped the registration


async def test_registration_ends_when_the_client_leaves_the_bus(
    service: DbusService, bus_address: str, fake: FakeApi
) -> None:
    with client(bus_address) as vendor_bus:
        station = StationInterface.new_proxy(BUS_NAME, STATION_PATH, vendor_bus)
        await asyncio.wait_for(station.register_vendor("com.acme"), LIMIT)
        assert "com.acme" in fake.vendors
    await until(lambda: "com.acme" not in fake.vendors)
    assert fake.calls[-1] == ("unregister_vendor", "com.acme")


async def test_vendor_owned_by_another_client_is_refused(
    service: DbusService, bus_address: str, client_bus: SdBus
) -> None:
    station = StationInterface.new_proxy(BUS_NAME, STATION_PATH, client_bus)
    await asyncio.wait_for(station.register_vendor("com.acme"), LIMIT)
    with client(bus_address) as other_bus:
        other = StationInterface.new_proxy(BUS_NAME, STATION_PATH, other_bus)
        for call in (other.register_vendor, other.unregister_vendor):
            with pytest.raises(EvsedError) as info:
                await asyncio.wait_for(call("com.acme"), LIMIT)
            assert type(info.value).dbus_error_name == "org.evsed.Error.InvalidState"
    with pytest.raises(InvalidArgumentError):
        await asyncio.wait_for(station.register_vendor(""), LIMIT)


# --- simulator -----------------------------------------------------------------------------------


async def test_simulator_absent_without_simulated_hardware(bus_address: str, fake: FakeApi) -> None:
    svc = await asyncio.wait_for(export(fake, None, bus_address=bus_address), LIMIT)
    try:
        rc, tree = await busctl(bus_address, "tree", BUS_NAME)
        assert rc == 0
        assert STATION_PATH in tree
        assert "Simulator" not in tree
        rc, out = await busctl(bus_address, "introspect", BUS_NAME, SIMULATOR_PATH)
        assert rc != 0 or "org.evsed.Simulator1" not in out
    finally:
        await asyncio.wait_for(svc.close(), LIMIT)


async def test_simulator_methods(
    service: DbusService, bus_address: str, client_bus: SdBus, fake: FakeApi
) -> None:
    rc, out = await busctl(bus_address, "introspect", BUS_NAME, SIMULATOR_PATH)
    assert rc == 0
    assert "org.evsed.Simulator1" in out
    sim_iface = (BUS_NAME, SIMULATOR_PATH, "org.evsed.Simulator1")
    rc, _ = await busctl(bus_address, "call", *sim_iface, "Plug", "u", "1")
    assert rc == 0

    sim = SimulatorInterface.new_proxy(BUS_NAME, SIMULATOR_PATH, client_bus)
    for call in (
        sim.set_ev_ready(1, True),
        sim.set_ev_max_current(2, 13.5),
        sim.present_rfid(1, "CARD"),
        sim.raise_fault(2, "OverCurrentFailure"),
        sim.clear_fault(2),
        sim.unplug(1),
        sim.websocket_disconnect(),
        sim.websocket_connect(),
    ):
        await asyncio.wait_for(call, LIMIT)
    with pytest.raises(EvsedError) as info:
        await asyncio.wait_for(sim.plug(7), LIMIT)
    assert type(info.value).dbus_error_name == "org.evsed.Error.UnknownEvse"
    assert fake.calls == [
        ("plug", 1),
        ("set_ev_ready", 1, True),
        ("set_ev_max_current", 2, 13.5),
        ("present_rfid", 1, "CARD"),
        ("raise_fault", 2, "OverCurrentFailure"),
        ("clear_fault", 2),
        ("unplug", 1),
        ("websocket_disconnect",),
        ("websocket_connect",),
        ("plug", 7),
    ]
