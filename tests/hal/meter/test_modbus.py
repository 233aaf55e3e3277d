"""Tests of hal.meter.modbus against hal.sim.modbus_meter over real transports.

TCP: a pymodbus server on 127.0.0.1. RTU: the same server on one end of a PtyLink (two
os.openpty() pairs joined by the simulator, like a null-modem cable) and the driver's
pymodbus serial client on the other end — real ttys, real RTU frames and CRCs, no socat.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import os
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from hal.interfaces import MeterError, MeterReading, SignedMeterData
from hal.meter.maps import builtin_names, resolve_map
from hal.meter.modbus import ModbusBus, ModbusMeter, build
from hal.registry import HardwareConfigError
from hal.sim.modbus_meter import (
    MeterFault,
    ModbusMeterServer,
    SignedFault,
    SimulatedModbusMeter,
    split_ocmf,
)
from service.config import Connector, Evse, Hardware
from service.config_reader import Scalar

pytestmark = pytest.mark.timeout(60)

FAST = {"timeout_s": 0.5, "retries": 0}

ServerFactory = Callable[..., Awaitable[ModbusMeterServer]]


@pytest.fixture
async def serve() -> AsyncIterator[ServerFactory]:
    servers: list[ModbusMeterServer] = []

    async def start(*meters: SimulatedModbusMeter, **kwargs: Any) -> ModbusMeterServer:
        server = ModbusMeterServer(*meters, **kwargs)
        servers.append(server)
        await server.start()
        return server

    yield start
    for server in servers:
        await server.stop()


class Meters:
    """Builds drivers the way the daemon does (one `shared` dict) and closes them."""

    def __init__(self) -> None:
        self.shared: dict[str, object] = {}
        self.built: list[ModbusMeter] = []

    def build(self, evse_id: int, options: dict[str, Scalar], phases: int = 3) -> ModbusMeter:
        evse = Evse(
            id=evse_id,
            meter=Hardware("modbus", options),
            connectors=(Connector(phases=phases),),
        )
        meter = build(evse, evse.meter, self.shared)
        self.built.append(meter)
        return meter


@pytest.fixture
async def meters() -> AsyncIterator[Meters]:
    made = Meters()
    yield made
    for meter in made.built:
        await meter.close()


def tcp(server: ModbusMeterServer, map_name: str, unit_id: int = 1) -> dict[str, Scalar]:
    return {
        "map": map_name,
        "transport": "tcp",
        "host": "127.0.0.1",
        "tcp_port": server.tcp_port,
        "unit_id": unit_id,
        **FAST,
    }


def rtu(server: ModbusMeterServer, map_name: str, unit_id: int = 1) -> dict[str, Scalar]:
    return {"map": map_name, "transport": "rtu", "port": server.port, "unit_id": unit_id, **FAST}


def options_for(transport: str) -> Callable[[ModbusMeterServer, str, int], dict[str, Scalar]]:
    return tcp if transport == "tcp" else rtu


def assert_close(read: MeterReading, true: MeterReading, map_name: str) -> None:
    """Equal within each register's resolution (and float32 precision)."""
    meter_map = resolve_map(map_name)

    def check(name: str, got: float | None, want: float | None) -> None:
        assert got is not None and want is not None, name
        register = meter_map.registers[name]
        tolerance = max(register.factor / 2, abs(want) * 1e-6) + 1e-9
        assert abs(got - want) <= tolerance, f"{name}: read {got}, expected {want}"

    for kind, got_values, want_values in (
        ("voltage", read.voltage_v, true.voltage_v),
        ("current", read.current_a, true.current_a),
        ("power", read.power_w, true.power_w),
    ):
        assert len(got_values) == meter_map.phases
        for phase, (got, want) in enumerate(zip(got_values, want_values, strict=True), 1):
            check(f"{kind}_l{phase}", got, want)
    check("energy_import", read.energy_import_wh, true.energy_import_wh)
    check("energy_export", read.energy_export_wh, true.energy_export_wh)
    check("frequency", read.frequency_hz, true.frequency_hz)


def distinct_values(phases: int) -> dict[str, Any]:
    return {
        "voltage_v": (229.5, 231.2, 232.8)[:phases],
        "current_a": (6.5, 16.25, 31.75)[:phases],
        "power_w": (1490.5, -120.25, 7390.0)[:phases],
        "energy_import_wh": 1_234_567.0,
        "energy_export_wh": 4321.0,
        "frequency_hz": 49.98,
    }


# -- values round-trip -------------------------------------------------------------------------


@pytest.mark.parametrize("map_name", builtin_names())
async def test_every_builtin_map_reads_right_over_tcp(
    serve: ServerFactory, meters: Meters, map_name: str
) -> None:
    phases = resolve_map(map_name).phases
    sim = SimulatedModbusMeter(map_name, 7, **distinct_values(phases))
    server = await serve(sim)
    meter = meters.build(1, tcp(server, map_name, 7), phases=phases)
    await meter.start()

    reading = await meter.read()
    assert_close(reading, sim.values, map_name)
    # As few requests as the map allows: one per block (signed records: tested apart).
    if resolve_map(map_name).signed is None:
        assert sim.requests == len(resolve_map(map_name).blocks)

    sim.set_values(current_a=0.0, energy_import_wh=1_300_000.0)  # power follows V x I
    reading = await meter.read()
    assert_close(reading, sim.values, map_name)
    assert reading.power_total_w == 0.0


async def test_rtu_reads_a_three_phase_and_a_single_phase_meter(
    serve: ServerFactory, meters: Meters
) -> None:
    three = SimulatedModbusMeter("sdm630", 1, **distinct_values(3))
    one = SimulatedModbusMeter("sdm120", 2, **distinct_values(1))
    server = await serve(three, one, transport="rtu")
    m3 = meters.build(1, rtu(server, "sdm630", 1))
    m1 = meters.build(2, rtu(server, "sdm120", 2), phases=1)
    await m3.start()
    await m1.start()

    assert_close(await m3.read(), three.values, "sdm630")
    single = await m1.read()
    assert_close(single, one.values, "sdm120")
    assert len(single.voltage_v) == len(single.current_a) == len(single.power_w) == 1


async def test_meters_on_one_line_share_one_client_and_never_interleave(
    serve: ServerFactory, meters: Meters
) -> None:
    sims = [
        SimulatedModbusMeter("sdm630", 1, voltage_v=231.0, current_a=10.0, energy_import_wh=1e5),
        SimulatedModbusMeter("em340", 2, voltage_v=229.0, current_a=20.0, energy_import_wh=2e5),
        SimulatedModbusMeter("sdm120", 3, voltage_v=227.0, current_a=30.0, energy_import_wh=3e5),
    ]
    server = await serve(*sims, transport="rtu")
    drivers = [
        meters.build(1, rtu(server, "sdm630", 1)),
        meters.build(2, rtu(server, "em340", 2)),
        meters.build(3, rtu(server, "sdm120", 3), phases=1),
    ]
    assert drivers[0].bus is drivers[1].bus is drivers[2].bus
    assert list(meters.shared) == ["modbus-rtu:" + os.path.realpath(server.port)]
    for driver in drivers:
        await driver.start()

    rounds = 5
    for n in range(rounds):
        for sim in sims:
            sim.set_values(energy_import_wh=sim.values.energy_import_wh + 100.0 * n)
        readings = await asyncio.gather(*(driver.read() for driver in drivers))
        for reading, sim, driver in zip(readings, sims, drivers, strict=True):
            assert_close(reading, sim.values, driver.map.name)
    for sim, driver in zip(sims, drivers, strict=True):
        assert sim.requests == rounds * len(driver.map.blocks)


async def test_tcp_meters_behind_one_gateway_share_one_connection(
    serve: ServerFactory, meters: Meters
) -> None:
    a = SimulatedModbusMeter("abb_b23", 11, voltage_v=230.0, current_a=5.0)
    b = SimulatedModbusMeter("sdm72", 12, voltage_v=240.0, current_a=7.0)
    server = await serve(a, b)
    first = meters.build(1, tcp(server, "abb_b23", 11))
    second = meters.build(2, tcp(server, "sdm72", 12))
    assert first.bus is second.bus
    one, two = await asyncio.gather(first.read(), second.read())
    assert_close(one, a.values, "abb_b23")
    assert_close(two, b.values, "sdm72")


# -- faults and recovery -----------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (MeterFault.SILENT, "no answer within 0.5 s (1 attempt) (reading input registers"),
        (MeterFault.EXCEPTION, "exception response 4 (device failure) to reading input"),
        (MeterFault.GARBAGE, "garbled answer"),
        (MeterFault.WRONG_UNIT, "answer from unit id 9 instead of 5"),
    ],
)
async def test_a_fault_raises_meter_error_and_the_meter_recovers(
    serve: ServerFactory, meters: Meters, transport: str, fault: MeterFault, reason: str
) -> None:
    sim = SimulatedModbusMeter("sdm630", 5, current_a=16.0, energy_import_wh=5000.0)
    server = await serve(sim, transport=transport)
    meter = meters.build(1, options_for(transport)(server, "sdm630", 5))
    await meter.start()
    assert_close(await meter.read(), sim.values, "sdm630")

    sim.set_fault(fault, wrong_unit_id=9)
    for _ in range(2):
        with pytest.raises(MeterError) as caught:
            await meter.read()
        assert str(caught.value).startswith("EVSE 1 meter (sdm630, unit 5 on ")
        assert reason in str(caught.value)

    sim.set_fault(None)
    sim.set_values(energy_import_wh=5100.0)
    assert_close(await meter.read(), sim.values, "sdm630")


async def test_rtu_checksum_errors_are_reported_as_garbled(
    serve: ServerFactory, meters: Meters
) -> None:
    sim = SimulatedModbusMeter("sdm630", 1)
    server = await serve(sim, transport="rtu")
    meter = meters.build(1, rtu(server, "sdm630"))
    sim.set_fault(MeterFault.GARBAGE)
    with pytest.raises(MeterError, match=r"garbled answer .*checksum or framing error"):
        await meter.read()


async def test_retries_send_the_request_again(serve: ServerFactory, meters: Meters) -> None:
    sim = SimulatedModbusMeter("sdm120", 1)
    server = await serve(sim, transport="rtu")
    meter = meters.build(1, {**rtu(server, "sdm120"), "retries": 2, "timeout_s": 0.4}, 1)
    sim.set_fault(MeterFault.SILENT)
    with pytest.raises(MeterError, match=r"no answer within 0.4 s \(3 attempts\)"):
        await meter.read()
    assert sim.requests == 3  # the first block, three times; the reading stops there


async def test_junk_on_the_rtu_line_never_breaks_the_driver(
    serve: ServerFactory, meters: Meters
) -> None:
    sim = SimulatedModbusMeter("sdm630", 1, current_a=8.0, energy_import_wh=100.0)
    server = await serve(sim, transport="rtu")
    assert server.link is not None
    meter = meters.build(1, rtu(server, "sdm630"))
    await meter.start()
    junk = [
        bytes(range(256)),
        b"\x01\x04\x24" + bytes(20),  # the start of an answer that never ends
        b"\x01\x83\x02\x00\x00",  # an exception frame with a bad checksum
        b"\xff" * 300,
    ]
    for noise in junk:
        server.link.inject(noise)  # between requests
        try:
            await meter.read()
        except MeterError as exc:
            assert "garbled answer" in str(exc) or "no answer" in str(exc)
        task = asyncio.create_task(meter.read())
        await asyncio.sleep(0)
        server.link.inject(noise)  # while a request is on the line
        try:
            await task
        except MeterError as exc:
            assert "garbled answer" in str(exc) or "no answer" in str(exc)
        assert_close(await meter.read(), sim.values, "sdm630")


async def test_energy_running_backwards_is_refused_and_not_used(
    serve: ServerFactory, meters: Meters
) -> None:
    sim = SimulatedModbusMeter("sdm630", 1, energy_import_wh=10_000.0, energy_export_wh=500.0)
    server = await serve(sim)
    meter = meters.build(1, tcp(server, "sdm630"))
    good = await meter.read()
    assert good.energy_import_wh == 10_000.0

    sim.set_fault(MeterFault.ENERGY_BACKWARDS, backwards_wh=1000.0)
    with pytest.raises(
        MeterError, match=re.escape("energy_import ran backwards: 9000.0 Wh after 10000.0 Wh")
    ):
        await meter.read()
    assert meter.last_good == good  # the bad reading is not the new reference

    # Lower than the last good reading, though higher than what the faulty meter sent.
    sim.set_fault(None)
    sim.set_values(energy_import_wh=9_500.0)
    with pytest.raises(
        MeterError, match=re.escape("energy_import ran backwards: 9500.0 Wh after 10000.0")
    ):
        await meter.read()

    sim.set_values(energy_import_wh=10_000.0, energy_export_wh=400.0)
    with pytest.raises(
        MeterError, match=re.escape("energy_export ran backwards: 400.0 Wh after 500.0 Wh")
    ):
        await meter.read()

    sim.set_values(energy_import_wh=10_250.0, energy_export_wh=500.0)
    assert (await meter.read()).energy_import_wh == 10_250.0


async def test_a_tcp_server_restart_is_recovered(serve: ServerFactory, meters: Meters) -> None:
    sim = SimulatedModbusMeter("em340", 3, current_a=10.0, energy_import_wh=7000.0)
    server = await serve(sim)
    meter = meters.build(1, tcp(server, "em340", 3))
    await meter.start()
    assert_close(await meter.read(), sim.values, "em340")

    await server.stop()
    for _ in range(2):
        with pytest.raises(MeterError, match=r"no answer|connection .* lost|cannot connect"):
            await meter.read()
    with pytest.raises(MeterError, match=f"cannot connect to 127.0.0.1:{server.tcp_port}"):
        await meter.read()

    await server.start()  # same port
    sim.set_values(energy_import_wh=7100.0)
    assert_close(await meter.read(), sim.values, "em340")

    await server.restart()  # connections dropped while the driver is idle
    for _ in range(3):
        assert_close(await meter.read(), sim.values, "em340")


async def test_a_serial_port_that_disappears_and_comes_back(
    serve: ServerFactory, meters: Meters
) -> None:
    sim = SimulatedModbusMeter("sdm630", 1, energy_import_wh=42_000.0)
    server = await serve(sim, transport="rtu")
    assert server.link is not None
    meter = meters.build(1, rtu(server, "sdm630"))
    await meter.start()
    assert (await meter.read()).energy_import_wh == 42_000.0

    server.link.unplug()
    for _ in range(2):
        with pytest.raises(MeterError, match=f"serial port {server.port} (disappeared|does not)"):
            await meter.read()

    server.link.replug()
    assert (await meter.read()).energy_import_wh == 42_000.0

    await server.restart()  # the meters' side of the line closes and reopens
    assert (await meter.read()).energy_import_wh == 42_000.0


async def test_start_reports_a_missing_port_and_read_works_once_it_exists(
    serve: ServerFactory, meters: Meters, tmp_path: Path
) -> None:
    missing = tmp_path / "ttyUSB7"
    meter = meters.build(1, {"map": "sdm630", "transport": "rtu", "port": str(missing), **FAST})
    with pytest.raises(MeterError, match=f"serial port {missing} does not exist"):
        await meter.start()
    with pytest.raises(MeterError, match="does not exist"):
        await meter.read()

    sim = SimulatedModbusMeter("sdm630", 1, energy_import_wh=3000.0)
    server = await serve(sim, transport="rtu")
    missing.symlink_to(server.port)
    assert (await meter.read()).energy_import_wh == 3000.0


async def test_start_reports_a_tcp_meter_that_refuses(serve: ServerFactory, meters: Meters) -> None:
    with socket.socket() as probe:  # a port nobody listens on (yet)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options: dict[str, Scalar] = {
        "map": "sdm630",
        "transport": "tcp",
        "host": "127.0.0.1",
        "tcp_port": port,
        **FAST,
    }
    meter = meters.build(1, options)
    with pytest.raises(MeterError, match=f"cannot connect to 127.0.0.1:{port}"):
        await meter.start()
    sim = SimulatedModbusMeter("sdm630", 1, energy_import_wh=9000.0)
    await serve(sim, tcp_port=port)
    assert (await meter.read()).energy_import_wh == 9000.0


# -- values out of range -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"voltage_v": (230.0, math.nan, 230.0)}, "voltage_l2 is nan (not a number)"),
        ({"current_a": (math.inf, 0.0, 0.0), "power_w": 0.0}, "current_l1 is inf"),
        ({"power_w": (0.0, 0.0, -math.inf)}, "power_l3 is -inf"),
        ({"voltage_v": (-5.0, 230.0, 230.0)}, "voltage_l1 -5 V is negative"),
        ({"current_a": (0.0, -1.5, 0.0)}, "current_l2 -1.5 A is negative"),
        ({"frequency_hz": 80.0}, "frequency 80 Hz is outside 40..70 Hz"),
        ({"frequency_hz": 0.0}, "frequency 0 Hz is outside 40..70 Hz"),
        ({"energy_import_wh": -5.0}, "energy_import -5 Wh is negative"),
    ],
)
async def test_values_out_of_range_raise_meter_error_until_they_are_sane(
    serve: ServerFactory, meters: Meters, values: dict[str, Any], reason: str
) -> None:
    sim = SimulatedModbusMeter("sdm630", 1, current_a=6.0)
    server = await serve(sim)
    meter = meters.build(1, tcp(server, "sdm630"))
    sim.set_values(**values)
    with pytest.raises(MeterError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        await meter.read()
    sim.set_values(**distinct_values(3))
    assert_close(await meter.read(), sim.values, "sdm630")


async def test_small_negative_noise_reads_as_zero(serve: ServerFactory, meters: Meters) -> None:
    sim = SimulatedModbusMeter("sdm630", 1, voltage_v=(230.0, -0.5, 230.0), current_a=-0.05)
    server = await serve(sim)
    reading = await meters.build(1, tcp(server, "sdm630")).read()
    assert reading.voltage_v == (230.0, 0.0, 230.0)
    assert reading.current_a == (0.0, 0.0, 0.0)


async def test_integer_meters_report_negative_and_unavailable_values(
    serve: ServerFactory, meters: Meters
) -> None:
    em340 = SimulatedModbusMeter("em340", 1, voltage_v=(230.0, 230.0, -12.0))
    abb = SimulatedModbusMeter("abb_b23", 2, current_a=(1.0, math.nan, 1.0), power_w=0.0)
    server = await serve(em340, abb)
    with pytest.raises(MeterError, match="voltage_l3 -12 V is negative"):
        await meters.build(1, tcp(server, "em340", 1)).read()
    with pytest.raises(
        MeterError, match=r"current_l2 is marked not available by the meter \(raw 0xffffffff\)"
    ):
        await meters.build(2, tcp(server, "abb_b23", 2)).read()


# -- configuration -----------------------------------------------------------------------------


def build_one(
    options: dict[str, Scalar], *, evse_id: int = 3, phases: int = 3, shared: Any = None
) -> ModbusMeter:
    evse = Evse(
        id=evse_id, meter=Hardware("modbus", options), connectors=(Connector(phases=phases),)
    )
    return build(evse, evse.meter, {} if shared is None else shared)


RTU_OK: dict[str, Scalar] = {"map": "sdm630", "transport": "rtu", "port": "/dev/ttyUSB0"}
TCP_OK: dict[str, Scalar] = {"map": "sdm630", "transport": "tcp", "host": "10.0.0.5"}


@pytest.mark.parametrize(
    ("options", "option", "problem"),
    [
        ({}, "map", "missing"),
        ({**RTU_OK, "map": "sdm999"}, "map", "not a built-in map"),
        ({**RTU_OK, "map": "meters/x.toml"}, "map", "nor an absolute path"),
        ({**RTU_OK, "map": "/nonexistent/x.toml"}, "map", "/nonexistent/x.toml: cannot read"),
        ({**RTU_OK, "map": 630}, "map", "found 630; expected a non-empty string"),
        ({**RTU_OK, "map": "sdm120"}, "map", "sdm120 measures 1 phase(s) but a connector"),
        ({"map": "sdm630"}, "transport", "missing"),
        ({**RTU_OK, "transport": "usb"}, "transport", 'found "usb"; expected one of "rtu", "tcp"'),
        ({"map": "sdm630", "transport": "rtu"}, "port", "missing"),
        ({**RTU_OK, "port": "ttyUSB0"}, "port", "an absolute path to a serial device"),
        ({**RTU_OK, "baudrate": 1234}, "baudrate", "found 1234; expected one of 1200, 2400"),
        ({**RTU_OK, "baudrate": True}, "baudrate", "found true"),
        ({**RTU_OK, "parity": "X"}, "parity", 'expected one of "N", "E", "O"'),
        ({**RTU_OK, "stopbits": 3}, "stopbits", "expected one of 1, 2"),
        ({**RTU_OK, "host": "10.0.0.5"}, "host", 'only for transport "tcp"'),
        ({**RTU_OK, "tcp_port": 502}, "tcp_port", 'only for transport "tcp"'),
        ({**TCP_OK, "port": "/dev/ttyUSB0"}, "port", 'only for transport "rtu"'),
        ({**TCP_OK, "baudrate": 9600}, "baudrate", 'only for transport "rtu"'),
        ({"map": "sdm630", "transport": "tcp"}, "host", "missing"),
        ({**TCP_OK, "tcp_port": 70000}, "tcp_port", "expected an integer 1..65535"),
        ({**RTU_OK, "unit_id": 0}, "unit_id", "found 0; expected an integer 1..247"),
        ({**RTU_OK, "unit_id": 248}, "unit_id", "expected an integer 1..247"),
        ({**RTU_OK, "unit_id": "1"}, "unit_id", 'found "1"'),
        ({**RTU_OK, "timeout_s": 0}, "timeout_s", "expected a number > 0 and <= 60"),
        ({**RTU_OK, "timeout_s": "1s"}, "timeout_s", 'found "1s"'),
        ({**RTU_OK, "retries": -1}, "retries", "expected an integer 0..10"),
        ({**RTU_OK, "speed": 9600}, "speed", "unknown option of backend 'modbus'"),
    ],
)
def test_bad_options_name_the_evse_and_the_option(
    options: dict[str, Scalar], option: str, problem: str
) -> None:
    with pytest.raises(HardwareConfigError) as caught:
        build_one(options)
    message = str(caught.value)
    assert message.startswith(f"EVSE 3: evse[3].meter.options.{option}: "), message
    assert problem in message, message


def test_a_bad_map_file_is_named_with_the_option(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[meter]\nphases = 1\n[registers]\nvoltage_l1 = { address = 0 }\n")
    with pytest.raises(HardwareConfigError) as caught:
        build_one({**RTU_OK, "map": str(path)}, phases=1)
    assert str(caught.value) == (
        f"EVSE 3: evse[3].meter.options.map: {path}: registers.voltage_l1.function: "
        "missing (and [defaults] does not set it)"
    )


def test_meters_sharing_a_bus_must_agree_on_its_settings() -> None:
    shared: dict[str, object] = {}
    first = build_one({**RTU_OK, "baudrate": 19200}, evse_id=1, shared=shared)
    assert isinstance(shared["modbus-rtu:/dev/ttyUSB0"], ModbusBus)
    with pytest.raises(HardwareConfigError) as caught:
        build_one({**RTU_OK, "unit_id": 2}, evse_id=2, shared=shared)
    assert str(caught.value) == (
        "EVSE 2: evse[2].meter.options.baudrate: found 9600, but EVSE 1 uses 19200 on "
        "/dev/ttyUSB0; meters on one bus share its settings"
    )
    with pytest.raises(HardwareConfigError, match=r"evse\[2\].meter.options.unit_id: unit id 1"):
        build_one({**RTU_OK, "baudrate": 19200}, evse_id=2, shared=shared)
    second = build_one({**RTU_OK, "baudrate": 19200, "unit_id": 2}, evse_id=2, shared=shared)
    assert second.bus is first.bus


def test_a_port_held_by_another_driver_is_refused() -> None:
    shared: dict[str, object] = {"modbus-rtu:/dev/ttyUSB0": object()}
    with pytest.raises(HardwareConfigError, match="already used by another driver"):
        build_one(RTU_OK, shared=shared)


# -- signed records ----------------------------------------------------------------------------


def verify_ocmf(signed: SignedMeterData, energy_wh: float) -> None:
    """What a CSMS does: the record's signature checks out with the meter's public key, and
    the record holds the energy."""
    payload, signature = split_ocmf(signed.signed_meter_data)
    key = load_der_public_key(base64.b64decode(signed.public_key))
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(
        bytes.fromhex(str(signature["SD"])), payload.encode("ascii"), ec.ECDSA(hashes.SHA256())
    )
    assert json.loads(payload)["RD"][0]["RV"] == pytest.approx(energy_wh / 1000, abs=1e-4)


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
async def test_a_signing_meter_hands_on_records_that_verify(
    serve: ServerFactory, meters: Meters, transport: str
) -> None:
    sim = SimulatedModbusMeter("evsed_ocmf", 3, energy_import_wh=12_345.6)
    server = await serve(sim, transport=transport)
    meter = meters.build(1, options_for(transport)(server, "evsed_ocmf", 3))
    reading = await meter.read()
    signed = reading.signed
    assert signed is not None
    assert signed.signing_method == "ECDSA-secp256r1-SHA256"
    assert signed.encoding_method == "OCMF"
    assert base64.b64decode(signed.public_key) == sim.public_key_der
    verify_ocmf(signed, 12_345.6)
    # The values; twice (the record read again, to be sure it was not torn) the length and the
    # record (in requests of at most max_registers); the public key length, the public key.
    record_requests = -(-len(signed.signed_meter_data) // 2 // 100)
    assert sim.requests == 1 + 2 * (1 + record_requests) + 2

    sim.set_values(energy_import_wh=13_000.0)
    before = sim.requests
    reading = await meter.read()
    assert reading.signed is not None and reading.signed.public_key == signed.public_key
    verify_ocmf(reading.signed, 13_000.0)
    assert sim.requests - before == 1 + 2 * (1 + record_requests)  # the key is read once


def renew_during_second_request(sim: SimulatedModbusMeter, times: int | None) -> list[int]:
    """Make the meter renew its record (1 Wh more) as the second request of a record read
    arrives, `times` times (None: every time); the list counts the renewals."""
    block = sim.map.signed
    assert block is not None
    renewed: list[int] = []

    def hook(function_code: int, address: int) -> None:
        del function_code
        if address == block.data + 100 and (times is None or len(renewed) < times):
            renewed.append(address)
            sim.set_values(energy_import_wh=sim.values.energy_import_wh + 1.0)

    sim.on_request = hook
    return renewed


async def test_a_record_renewed_while_it_is_read_is_read_again(
    serve: ServerFactory, meters: Meters
) -> None:
    # A record spans several requests; the meter renews it between two of them. The first
    # read is torn (its signature holds for neither record): it must not be handed on.
    sim = SimulatedModbusMeter("evsed_ocmf", 1, energy_import_wh=12_345.0)
    assert len(sim.signed_record()) > 200  # more than one request of 100 registers
    server = await serve(sim)
    meter = meters.build(1, tcp(server, "evsed_ocmf"))
    renewed = renew_during_second_request(sim, times=1)
    reading = await meter.read()
    assert renewed
    assert reading.energy_import_wh == pytest.approx(12_345.0)  # read before the renewal
    assert reading.signed is not None
    verify_ocmf(reading.signed, 12_346.0)  # the renewed record, whole


async def test_a_record_that_keeps_changing_is_not_used(
    serve: ServerFactory, meters: Meters, caplog: pytest.LogCaptureFixture
) -> None:
    sim = SimulatedModbusMeter("evsed_ocmf", 1, energy_import_wh=500.0)
    server = await serve(sim)
    meter = meters.build(1, tcp(server, "evsed_ocmf"))
    renewed = renew_during_second_request(sim, times=None)
    with caplog.at_level(logging.INFO, logger="evsed.hal.meter"):
        reading = await meter.read()
        assert len(renewed) == 3  # read three times, never the same twice
        assert reading.signed is None
        assert reading.energy_import_wh == pytest.approx(500.0)  # the plain values stay
        assert "the record changed while it was read, 3 reads in a row" in caplog.text
        sim.on_request = None
        reading = await meter.read()
    assert reading.signed is not None
    verify_ocmf(reading.signed, 503.0)
    assert "signed records readable again" in caplog.text


async def test_plain_meters_have_no_signed_data(serve: ServerFactory, meters: Meters) -> None:
    sim = SimulatedModbusMeter("sdm630", 1, energy_import_wh=5.0)
    server = await serve(sim)
    reading = await meters.build(1, tcp(server, "sdm630")).read()
    assert reading.signed is None


@pytest.mark.parametrize(
    ("fault", "warning"),
    [
        (SignedFault.TOO_LONG, "length 1001 is more than the map's 1000 bytes"),
        (SignedFault.NOT_ASCII, "not printable ASCII (0xff)"),
        (SignedFault.BAD_PUBLIC_KEY, "public key is not hex text"),
    ],
)
async def test_a_bad_signed_record_keeps_the_plain_values_and_warns_once(
    serve: ServerFactory,
    meters: Meters,
    caplog: pytest.LogCaptureFixture,
    fault: SignedFault,
    warning: str,
) -> None:
    sim = SimulatedModbusMeter("evsed_ocmf", 1, energy_import_wh=2000.0)
    sim.set_signed_fault(fault)
    server = await serve(sim)
    meter = meters.build(1, tcp(server, "evsed_ocmf"))
    with caplog.at_level(logging.INFO, logger="evsed.hal.meter"):
        for _ in range(3):
            reading = await meter.read()
            assert reading.signed is None
            assert reading.energy_import_wh == pytest.approx(2000.0)
            assert reading.voltage_v == pytest.approx((230.0,) * 3)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and warning in warnings[0].getMessage()
        sim.set_signed_fault(None)
        reading = await meter.read()
    assert reading.signed is not None
    verify_ocmf(reading.signed, 2000.0)
    assert "signed records readable again" in caplog.text


async def test_no_record_is_no_signed_data_and_no_warning(
    serve: ServerFactory, meters: Meters, caplog: pytest.LogCaptureFixture
) -> None:
    sim = SimulatedModbusMeter("evsed_ocmf", 1)
    sim.set_signed_fault(SignedFault.NO_RECORD)
    server = await serve(sim)
    with caplog.at_level(logging.WARNING):
        reading = await meters.build(1, tcp(server, "evsed_ocmf")).read()
    assert reading.signed is None
    assert caplog.records == []


async def test_a_signed_register_the_meter_refuses_is_a_warning_not_a_fault(
    serve: ServerFactory, meters: Meters, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A map naming signed registers the meter does not have: an exception response to them.
    text = resolve_map("evsed_ocmf").source.read_text()
    plain = SimulatedModbusMeter("sdm630", 1, energy_import_wh=7.0)
    server = await serve(plain)
    path = tmp_path / "wrong.toml"
    sdm = resolve_map("sdm630").source.read_text()
    signed_part = text[text.index("\n[signed]") :]
    path.write_text(sdm + "\n" + signed_part)
    with caplog.at_level(logging.WARNING, logger="evsed.hal.meter"):
        reading = await meters.build(1, tcp(server, str(path))).read()
    assert reading.signed is None and reading.energy_import_wh == pytest.approx(7.0)
    assert "signed record not used: exception response 2 (illegal data address)" in caplog.text
