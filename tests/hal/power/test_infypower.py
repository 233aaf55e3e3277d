"""Tests of hal.power.infypower: the V1.x frame codec, the option checks, and InfyPowerGroup
against hal.sim.infypower speaking the same frames over python-can (the in-process `virtual`
bus; real SocketCAN on vcan0 in the VM, marked `vm`)."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import can
import pytest

from hal.interfaces import PowerModule, PowerReading
from hal.power.infypower import (
    CONTROLLER_ADDRESS,
    Command,
    Device,
    ErrorCode,
    FrameError,
    FrameId,
    InfyPowerGroup,
    ModuleStatus,
    StatusBit,
    build,
    decode_frame,
    decode_id,
    decode_module_count,
    decode_module_output,
    decode_on_off,
    decode_set_output,
    decode_status,
    encode_id,
    encode_module_count,
    encode_module_output,
    encode_on_off,
    encode_set_output,
    encode_status,
    fault_code,
    fault_names,
    make_message,
    parse_options,
)
from hal.registry import HardwareConfigError
from hal.sim.infypower import InfyPowerSimulator, garbage_frames
from service.config import Evse, Hardware
from service.config_reader import Scalar

# ----------------------------------------------------------------------------- codec


@pytest.mark.parametrize(
    ("frame_id", "arbitration_id"),
    [
        (FrameId(Command.SET_MODULE_OUTPUT, 0x05, 0xF0), 0x029C05F0),
        (FrameId(Command.READ_MODULE_COUNT, 0x01, 0xF0, Device.GROUP), 0x02C201F0),
        (FrameId(Command.READ_MODULE_OUTPUT, 0xF0, 0x3E), 0x0283F03E),
        (
            FrameId(Command.SET_ON_OFF, 0xF0, 0x02, Device.SINGLE, ErrorCode.DATA_INVALID),
            0x0E9AF002,
        ),
        (FrameId(0x3F, 0xFF, 0xFF, 0x0F, 0x07), 0x1FFFFFFF),
        (FrameId(0, 0, 0, 0, 0), 0),
    ],
)
def test_identifier_fields_sit_where_the_protocol_puts_them(
    frame_id: FrameId, arbitration_id: int
) -> None:
    assert encode_id(frame_id) == arbitration_id
    assert decode_id(arbitration_id) == frame_id


def test_every_identifier_field_round_trips_on_its_own() -> None:
    widths = {"error": 3, "device": 4, "command": 6, "destination": 8, "source": 8}
    for name, bits in widths.items():
        for value in (1, (1 << bits) - 1):
            fields = {"command": 0, "destination": 0, "source": 0, "device": 0, "error": 0}
            fields[name] = value
            frame_id = FrameId(**fields)
            decoded = decode_id(encode_id(frame_id))
            assert decoded == frame_id
            assert bin(encode_id(frame_id)).count("1") == bin(value).count("1")


@pytest.mark.parametrize(
    "frame_id",
    [
        FrameId(64, 0, 0),
        FrameId(0, 256, 0),
        FrameId(0, 0, -1),
        FrameId(0, 0, 0, 16),
        FrameId(0, 0, 0, 0, 8),
        FrameId(True, 0, 0),
    ],
)
def test_identifier_fields_out_of_range_are_refused(frame_id: FrameId) -> None:
    with pytest.raises(ValueError):
        encode_id(frame_id)


@pytest.mark.parametrize("arbitration_id", [1 << 29, -1, 0x7FFFFFFF])
def test_identifiers_beyond_29_bits_do_not_decode(arbitration_id: int) -> None:
    with pytest.raises(FrameError):
        decode_id(arbitration_id)


def test_set_output_is_millivolts_and_milliamps_big_endian() -> None:
    data = encode_set_output(500.0, 20.0)
    assert data == bytes.fromhex("0007a12000004e20")
    assert decode_set_output(data) == (500.0, 20.0)
    assert decode_set_output(encode_set_output(749.9996, 33.3333)) == (750.0, 33.333)
    assert encode_set_output(0, 0) == bytes(8)
    assert decode_set_output(encode_set_output(4294967.295, 0.001)) == (4294967.295, 0.001)


@pytest.mark.parametrize(
    ("voltage", "current"),
    [(-1.0, 1.0), (1.0, -0.001), (float("nan"), 1.0), (1.0, float("inf")), (4294968.0, 0.0)],
)
def test_set_output_values_that_do_not_fit_are_refused(voltage: float, current: float) -> None:
    with pytest.raises(ValueError):
        encode_set_output(voltage, current)


def test_module_output_is_two_big_endian_floats() -> None:
    data = encode_module_output(500.0, 20.5)
    assert data == bytes.fromhex("43fa000041a40000")
    assert decode_module_output(data) == (500.0, 20.5)
    with pytest.raises(FrameError):
        decode_module_output(struct.pack(">ff", float("nan"), 1.0))
    with pytest.raises(FrameError):
        decode_module_output(struct.pack(">ff", 1.0, float("inf")))
    with pytest.raises(FrameError):
        decode_module_output(data[:7])


def test_on_off_byte() -> None:
    assert encode_on_off(True) == bytes(8)
    assert encode_on_off(False) == bytes.fromhex("0100000000000000")
    assert decode_on_off(encode_on_off(True)) is True
    assert decode_on_off(encode_on_off(False)) is False
    with pytest.raises(FrameError):
        decode_on_off(bytes.fromhex("0200000000000000"))
    with pytest.raises(FrameError):
        decode_on_off(bytes(3))


def test_module_count_is_byte_2() -> None:
    assert encode_module_count(3) == bytes.fromhex("0000030000000000")
    assert decode_module_count(encode_module_count(60)) == 60
    with pytest.raises(ValueError):
        encode_module_count(256)


@pytest.mark.parametrize("bit", list(StatusBit))
def test_each_status_bit_sits_in_its_table(bit: StatusBit) -> None:
    index = int(bit).bit_length() - 1
    data = encode_status(ModuleStatus(group=2, temperature_c=-20, bits=bit))
    expected_byte = 7 - index // 8  # table 0 in byte 7, table 1 in byte 6, table 2 in byte 5
    assert data[expected_byte] == 1 << (index % 8)
    assert [i for i, b in enumerate(data) if b] == sorted({2, 4, expected_byte})
    assert data[2] == 2
    assert data[4] == 0xEC  # -20 degC
    assert decode_status(data) == ModuleStatus(2, -20, bit)


def test_status_round_trips_all_bits_and_temperatures() -> None:
    for temperature in (-128, -1, 0, 45, 127):
        status = ModuleStatus(group=7, temperature_c=temperature, bits=StatusBit(0xFFFFFF))
        assert decode_status(encode_status(status)) == status
    with pytest.raises(ValueError):
        encode_status(ModuleStatus(1, 128, StatusBit(0)))
    with pytest.raises(FrameError):
        decode_status(bytes(6))


def test_fault_codes_and_names() -> None:
    assert fault_code(StatusBit(0)) is None
    state_bits = (
        StatusBit.SLEEPING
        | StatusBit.DC_OFF
        | StatusBit.WALK_IN
        | StatusBit.POWER_LIMIT
        | StatusBit.PFC_OFF
    )
    assert fault_code(state_bits) is None
    assert fault_names(state_bits) == ()
    assert fault_code(StatusBit.OUTPUT_OVER_VOLTAGE) == "OverVoltage"
    assert fault_code(StatusBit.OUTPUT_SHORT) == "OverCurrentFailure"
    assert fault_code(StatusBit.OVER_TEMPERATURE) == "HighTemperature"
    for bit in (StatusBit.FAULT, StatusBit.PROTECTION, StatusBit.FAN_FAULT):
        assert fault_code(bit) == "InternalError"
    for bit in (StatusBit.INPUT_PHASE_LOST, StatusBit.INPUT_UNDER_VOLTAGE, StatusBit.ID_REPEAT):
        assert fault_code(bit) == "OtherError"
    # the most severe wins
    assert fault_code(StatusBit.FAN_FAULT | StatusBit.OVER_TEMPERATURE) == "HighTemperature"
    assert fault_code(StatusBit(0xFFFFFF)) == "OverVoltage"
    assert fault_names(StatusBit.OVER_TEMPERATURE | StatusBit.SLEEPING) == ("over_temperature",)


def test_decode_frame_takes_only_8_byte_extended_data_frames() -> None:
    good = make_message(FrameId(Command.READ_MODULE_OUTPUT, 0xF0, 1), encode_module_output(1, 2))
    frame = decode_frame(good)
    assert frame.id == FrameId(Command.READ_MODULE_OUTPUT, 0xF0, 1)
    assert frame.data == encode_module_output(1, 2)
    bad = [
        can.Message(arbitration_id=0x123, data=bytes(8), is_extended_id=False),
        can.Message(arbitration_id=good.arbitration_id, is_remote_frame=True, dlc=8),
        can.Message(is_error_frame=True),
        can.Message(arbitration_id=good.arbitration_id, data=bytes(7)),
        can.Message(arbitration_id=good.arbitration_id, data=bytes(12), is_fd=True),
    ]
    for message in bad:
        with pytest.raises(FrameError):
            decode_frame(message)
    with pytest.raises(FrameError):
        make_message(FrameId(1, 2, 3), bytes(4))


# ----------------------------------------------------------------------------- options


def hardware(**options: Scalar) -> Hardware:
    return Hardware(backend="infypower", options=dict(options))


def test_defaults() -> None:
    options = parse_options(Evse(id=1), hardware())
    assert options.interface == "socketcan"
    assert options.channel == "can0"
    assert options.bitrate == 125000
    assert options.group == 0
    assert options.addresses == ()
    assert options.discovery
    assert options.timeout_s == 2.0
    assert options.poll_interval_s == 0.5
    assert options.monitor_address == 0xF0


def test_addresses_as_a_string_a_number_or_a_list() -> None:
    evse = Evse(id=1)
    assert parse_options(evse, hardware(addresses="0, 1,0x02")).addresses == (0, 1, 2)
    assert parse_options(evse, hardware(addresses=5)).addresses == (5,)
    assert parse_options(evse, hardware(addresses="")).discovery
    listed = Hardware("infypower", {"addresses": [3, 4]})  # type: ignore[dict-item]
    assert parse_options(evse, listed).addresses == (3, 4)
    short = parse_options(evse, hardware(timeout_s=1))
    assert short.poll_interval_s == 0.25


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"port": "can0"}, "port"),
        ({"interface": "kvaser"}, "interface"),
        ({"interface": 1}, "interface"),
        ({"channel": ""}, "channel"),
        ({"channel": 0}, "channel"),
        ({"channel": "can0/x"}, "channel"),
        ({"interface": "udp_multicast", "channel": "10.0.0.1"}, "channel"),
        ({"interface": "virtual"}, "channel"),
        ({"bitrate": "125k"}, "bitrate"),
        ({"bitrate": True}, "bitrate"),
        ({"bitrate": 0}, "bitrate"),
        ({"bitrate": 125000.0}, "bitrate"),
        ({"group": 63}, "group"),
        ({"group": -1}, "group"),
        ({"group": "1"}, "group"),
        ({"addresses": "0,x"}, "addresses"),
        ({"addresses": "0,0"}, "addresses"),
        ({"addresses": "63"}, "addresses"),
        ({"addresses": 1.5}, "addresses"),
        ({"addresses": True}, "addresses"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": -1}, "timeout_s"),
        ({"timeout_s": float("nan")}, "timeout_s"),
        ({"timeout_s": "2"}, "timeout_s"),
        ({"timeout_s": 1, "poll_interval_s": 0.6}, "poll_interval_s"),
        ({"poll_interval_s": 0}, "poll_interval_s"),
        ({"monitor_address": 0x10}, "monitor_address"),
        ({"monitor_address": 256}, "monitor_address"),
        ({"monitor_address": "0xF0"}, "monitor_address"),
    ],
)
def test_bad_options_are_refused_naming_evse_and_option(
    options: dict[str, Scalar], name: str
) -> None:
    with pytest.raises(HardwareConfigError) as caught:
        build(Evse(id=3), hardware(**options), {})
    message = str(caught.value)
    assert message.startswith("EVSE 3: ")
    assert f"evse[3].power_module.options.{name}" in message


def test_groups_on_one_bus_share_it_but_not_their_modules() -> None:
    shared: dict[str, object] = {}
    build(Evse(id=1), hardware(group=1), shared)
    build(Evse(id=2), hardware(group=2), shared)
    build(Evse(id=3), hardware(addresses="4,5"), shared)
    assert len(shared) == 1
    with pytest.raises(HardwareConfigError, match=r"EVSE 4: .*options\.group"):
        build(Evse(id=4), hardware(group=1), shared)
    with pytest.raises(HardwareConfigError, match=r"EVSE 5: .*options\.addresses"):
        build(Evse(id=5), hardware(addresses="5,6"), shared)
    with pytest.raises(HardwareConfigError, match=r"EVSE 6: .*options\.bitrate"):
        build(Evse(id=6), hardware(group=3, bitrate=250000), shared)
    build(Evse(id=7), hardware(group=1, channel="can1"), shared)
    assert len(shared) == 2


async def test_a_missing_interface_is_a_clear_error_at_start() -> None:
    group = build(Evse(id=2), hardware(channel="nocan9"), {})
    with pytest.raises(HardwareConfigError) as caught:
        await group.start()
    assert "EVSE 2: evse[2].power_module.options.channel" in str(caught.value)
    assert "nocan9" in str(caught.value)
    await group.close()  # never started: nothing to do


def test_setpoints_out_of_range_are_refused() -> None:
    group = build(Evse(id=1), hardware(), {})
    for voltage, current in ((-1, 10), (500, -1), (float("nan"), 1), (500, float("inf"))):
        with pytest.raises(ValueError):
            group.set_output(voltage, current)
    with pytest.raises(ValueError):
        group.set_output(1501, 10)
    group.set_output(0, 0)


# ----------------------------------------------------------------------------- the driver


async def wait_until(what: str, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class FaultLog:
    """Records on_fault callbacks and checks they run on the loop's thread."""

    def __init__(self, group: InfyPowerGroup) -> None:
        self.seen: list[tuple[str | None, str]] = []
        self._thread = threading.get_ident()
        group.on_fault(self)

    def __call__(self, code: str | None, info: str) -> None:
        assert threading.get_ident() == self._thread
        asyncio.get_running_loop()  # raises unless called from the loop
        self.seen.append((code, info))

    @property
    def code(self) -> str | None:
        return self.seen[-1][0] if self.seen else None

    @property
    def info(self) -> str:
        return self.seen[-1][1] if self.seen else ""


@dataclass
class Rig:
    sim: InfyPowerSimulator
    group: InfyPowerGroup
    faults: FaultLog

    def set_currents(self) -> list[float]:
        return [m.set_current_a for m in self.sim.modules()]


FAST: dict[str, Scalar] = {"timeout_s": 1.0, "poll_interval_s": 0.1}


@asynccontextmanager
async def rig(
    *,
    interface: str = "virtual",
    channel: str | None = None,
    addresses: tuple[int, ...] = (0, 1, 2),
    group: int = 1,
    options: dict[str, Scalar] | None = None,
    shared: dict[str, object] | None = None,
    sim_group: int | None = None,
) -> AsyncIterator[Rig]:
    channel = channel or f"infy-{uuid.uuid4().hex[:8]}"
    sim = InfyPowerSimulator(
        interface=interface,
        channel=channel,
        addresses=addresses,
        group=group if sim_group is None else sim_group,
    )
    settings: dict[str, Scalar] = {
        "interface": interface,
        "channel": channel,
        "group": group,
        **FAST,
        **(options or {}),
    }
    driver = build(Evse(id=1), hardware(**settings), {} if shared is None else shared)
    faults = FaultLog(driver)
    sim.start()
    try:
        await driver.start()
        try:
            yield Rig(sim, driver, faults)
        finally:
            await driver.close()
    finally:
        sim.stop()


async def settled_reading(group: InfyPowerGroup, voltage: float, current: float) -> PowerReading:
    """The first reading close to `voltage` and `current` (the output ramps); after 15 s, the
    last one, for the caller's assertions to show."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while True:
        reading = await group.read()
        close = abs(reading.voltage_v - voltage) < 0.5 and abs(reading.current_a - current) < 0.1
        if close or loop.time() > deadline:
            return reading
        await asyncio.sleep(0.02)


async def discovered(r: Rig, count: int = 3) -> None:
    await wait_until(f"{count} modules", lambda: len(r.group.present_addresses) == count)


async def test_the_group_is_a_power_module() -> None:
    async with rig() as r:
        module: PowerModule = r.group
        reading = await module.read()
        assert reading.current_a == 0.0


async def test_discovery_finds_the_modules_of_its_group_only() -> None:
    channel = f"infy-{uuid.uuid4().hex[:8]}"
    with InfyPowerSimulator(channel=channel, addresses=(10, 11), group=2) as other:
        async with rig(channel=channel, addresses=(3, 4, 5), group=1) as r:
            await discovered(r)
            assert r.group.addresses == (3, 4, 5)
            await wait_until("the module count", lambda: r.group.module_count == 3)
            r.group.set_output(400, 30)
            await wait_until("setpoints", lambda: r.set_currents() == [10.0, 10.0, 10.0])
            assert [m.set_current_a for m in other.modules()] == [0.0, 0.0]
            assert r.faults.seen == []


async def test_fixed_addresses_drive_only_those_modules() -> None:
    async with rig(addresses=(3, 4, 5), options={"addresses": "3,5"}) as r:
        r.group.set_output(400, 30)
        r.group.set_enabled(True)
        await wait_until("setpoints", lambda: r.set_currents() == [15.0, 0.0, 15.0])
        assert r.group.addresses == (3, 5)
        assert r.sim.module(4).frames_heard == 0
        assert not r.sim.module(4).on
        await wait_until("both on", lambda: r.sim.module(3).on and r.sim.module(5).on)


async def test_set_output_splits_the_current_and_enabled_modules_ramp() -> None:
    async with rig() as r:
        await discovered(r)
        r.group.set_output(500, 60)
        await wait_until("20 A each", lambda: r.set_currents() == [20.0, 20.0, 20.0])
        assert all(m.set_voltage_v == 500.0 and not m.on for m in r.sim.modules())
        assert (await r.group.read()).voltage_v == 0.0

        r.group.set_enabled(True)
        await wait_until("all on", lambda: all(m.on for m in r.sim.modules()))
        await wait_until("500 V on the load", lambda: r.sim.bus_voltage_v > 499.5)
        # 500 V into 10 ohm: 50 A, below the 60 A limit; the driver sums what the modules say
        reading = await settled_reading(r.group, 500.0, 50.0)
        assert reading.voltage_v == pytest.approx(500.0, abs=0.5)
        assert reading.current_a == pytest.approx(50.0, abs=0.1)
        assert reading.faults == ()
        module_currents = [m.current_a or 0.0 for m in r.group.modules()]
        assert module_currents == pytest.approx([50 / 3] * 3, abs=0.1)

        # a heavier load: the modules limit at 20 A each, the voltage sags to 60 A x 5 ohm
        r.sim.set_load(5.0)
        reading = await settled_reading(r.group, 300.0, 60.0)
        assert reading.voltage_v == pytest.approx(300.0, abs=0.5)
        assert reading.current_a == pytest.approx(60.0, abs=0.1)

        r.group.set_enabled(False)
        await wait_until("all off", lambda: not any(m.on for m in r.sim.modules()))
        await wait_until("no output", lambda: r.sim.bus_voltage_v < 1.0)
        assert r.faults.seen == []


ALARMS = [
    (StatusBit.OUTPUT_OVER_VOLTAGE, "OverVoltage", "output_over_voltage"),
    (StatusBit.OUTPUT_SHORT, "OverCurrentFailure", "output_short"),
    (StatusBit.OVER_TEMPERATURE, "HighTemperature", "over_temperature"),
    (StatusBit.FAULT, "InternalError", "fault"),
    (StatusBit.FAN_FAULT, "InternalError", "fan_fault"),
    (StatusBit.INPUT_PHASE_LOST, "OtherError", "input_phase_lost"),
]


@pytest.mark.parametrize(("bit", "code", "name"), ALARMS)
async def test_an_alarm_bit_is_reported_and_cleared(bit: StatusBit, code: str, name: str) -> None:
    async with rig() as r:
        await discovered(r)
        r.sim.set_alarm(1, bit)
        await wait_until("the fault", lambda: r.faults.code == code)
        assert r.faults.seen == [(code, f"module 1: {name}")]
        assert (await r.group.read()).faults == (f"module 1: {name}",)
        r.sim.set_alarm(1, 0)
        await wait_until("the fault cleared", lambda: r.faults.code is None and bool(r.faults.seen))
        assert r.faults.seen[-1] == (None, "power modules healthy")
        assert (await r.group.read()).faults == ()


async def test_the_most_severe_alarm_is_reported_and_state_bits_are_not_faults() -> None:
    async with rig() as r:
        await discovered(r)
        r.sim.set_alarm(0, StatusBit.SLEEPING | StatusBit.WALK_IN | StatusBit.POWER_LIMIT)

        def status_bits(address: int) -> StatusBit:
            state = next(m for m in r.group.modules() if m.address == address)
            return state.status.bits if state.status else StatusBit(0)

        await wait_until("the state bits", lambda: bool(status_bits(0) & StatusBit.WALK_IN))
        r.sim.set_alarm(2, StatusBit.INPUT_PHASE_LOST)
        await wait_until("OtherError", lambda: r.faults.code == "OtherError")
        r.sim.set_alarm(1, StatusBit.OVER_TEMPERATURE)
        await wait_until("HighTemperature", lambda: r.faults.code == "HighTemperature")
        assert r.faults.info == "module 1: over_temperature"
        assert set((await r.group.read()).faults) == {
            "module 1: over_temperature",
            "module 2: input_phase_lost",
        }
        r.sim.set_alarm(1, 0)
        await wait_until("back to OtherError", lambda: r.faults.code == "OtherError")
        r.sim.set_alarm(2, 0)
        await wait_until("healthy", lambda: r.faults.code is None)
        assert [code for code, _ in r.faults.seen] == [
            "OtherError",
            "HighTemperature",
            "OtherError",
            None,
        ]


async def test_a_tripped_module_delivers_nothing_until_the_alarm_clears() -> None:
    async with rig() as r:
        await discovered(r)
        r.group.set_output(500, 60)
        r.group.set_enabled(True)
        await wait_until("500 V", lambda: r.sim.bus_voltage_v > 499.5)
        r.sim.set_alarm(2, StatusBit.OUTPUT_OVER_VOLTAGE)
        await wait_until("OverVoltage", lambda: r.faults.code == "OverVoltage")
        await wait_until("module 2 dark", lambda: r.sim.module(2).current_a == 0.0)
        r.sim.set_alarm(2, 0)
        await wait_until("healthy", lambda: r.faults.code is None)
        await wait_until("module 2 back", lambda: r.sim.module(2).current_a > 10)


async def test_a_silent_module_is_a_fault_and_the_others_share_its_current() -> None:
    async with rig() as r:
        await discovered(r)
        r.group.set_output(500, 60)
        r.group.set_enabled(True)
        await wait_until("20 A each", lambda: r.set_currents() == [20.0, 20.0, 20.0])
        r.sim.set_silent(1)
        await wait_until("the fault", lambda: r.faults.code == "InternalError")
        assert r.faults.seen == [("InternalError", "power module not answering: module 1")]
        assert list(r.group.present_addresses) == [0, 2]
        assert "module 1: not answering" in (await r.group.read()).faults
        await wait_until("30 A each", lambda: r.set_currents() == [30.0, 20.0, 30.0])

        r.sim.set_silent(1, False)
        await wait_until("recovery", lambda: r.faults.code is None)
        assert r.faults.seen[-1] == (None, "power modules healthy")
        assert r.group.present_addresses == (0, 1, 2)
        await wait_until("20 A each again", lambda: r.set_currents() == [20.0, 20.0, 20.0])
        await wait_until("all on", lambda: all(m.on for m in r.sim.modules()))


async def test_a_silent_module_that_still_hears_is_switched_off() -> None:
    async with rig() as r:
        await discovered(r)
        r.group.set_output(500, 60)
        r.group.set_enabled(True)
        await wait_until("all on", lambda: all(m.on for m in r.sim.modules()))
        # Module 2 stops answering. Whether or not it still hears, every frame the driver
        # sends it from then on is "off": a module it cannot see must not add current.
        r.sim.set_silent(2)
        await wait_until("the fault", lambda: r.faults.code == "InternalError")
        sent: list[can.Message] = []
        listener = can.Bus(interface="virtual", channel=r.sim.channel)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while loop.time() < deadline and len(sent) < 3:
                message = await asyncio.to_thread(listener.recv, 0.5)
                if message is None:
                    continue
                fid = decode_id(message.arbitration_id)
                ours = fid.destination == 2 and fid.source == CONTROLLER_ADDRESS
                if ours and fid.command in (Command.SET_ON_OFF, Command.SET_MODULE_OUTPUT):
                    sent.append(message)
        finally:
            listener.shutdown()
        assert len(sent) >= 3
        assert all(decode_id(m.arbitration_id).command == Command.SET_ON_OFF for m in sent)
        assert all(decode_on_off(bytes(m.data)) is False for m in sent)


async def test_all_modules_silent_then_back() -> None:
    async with rig() as r:
        await discovered(r)
        for address in (0, 1, 2):
            r.sim.set_silent(address)
        await wait_until(
            "all silent", lambda: r.faults.info == "power module not answering: modules 0, 1, 2"
        )
        assert r.faults.code == "InternalError"
        reading = await r.group.read()
        assert (reading.voltage_v, reading.current_a) == (0.0, 0.0)
        for address in (0, 1, 2):
            r.sim.set_silent(address, False)
        await wait_until("recovery", lambda: r.faults.code is None and bool(r.faults.seen))


async def test_a_simulator_that_goes_away_and_comes_back() -> None:
    channel = f"infy-{uuid.uuid4().hex[:8]}"
    async with rig(channel=channel, options={"addresses": "0,1,2"}) as r:
        await discovered(r)
        r.sim.stop()
        await wait_until("silence", lambda: r.faults.code == "InternalError")
        with InfyPowerSimulator(channel=channel, addresses=(0, 1, 2), group=1):
            await wait_until("recovery", lambda: r.faults.code is None)


async def test_no_module_answering_at_all() -> None:
    channel = f"infy-{uuid.uuid4().hex[:8]}"
    for options, info in (
        ({"group": 4}, "power module not answering: no module of group 4"),
        ({"addresses": "0,1"}, "power module not answering: modules 0, 1"),
    ):
        settings: dict[str, Scalar] = {"interface": "virtual", "channel": channel, **FAST}
        group = build(Evse(id=1), hardware(**settings, **options), {})
        faults = FaultLog(group)
        await group.start()
        try:
            group.set_output(500, 60)
            group.set_enabled(True)
            seen = faults.seen
            await wait_until("the fault", lambda: bool(seen))  # noqa: B023
            assert seen == [("InternalError", info)]
            assert (await group.read()).current_a == 0.0
        finally:
            await group.close()


async def test_garbage_and_frames_for_others_are_ignored() -> None:
    async with rig() as r:
        await discovered(r)
        r.group.set_output(500, 60)
        r.group.set_enabled(True)
        await wait_until("500 V", lambda: r.sim.bus_voltage_v > 499.5)
        before_malformed = r.group.counters.malformed
        before_ignored = r.group.counters.ignored
        for _ in range(3):
            r.sim.send_garbage()
        await wait_until(
            "the garbage",
            lambda: (
                r.group.counters.malformed - before_malformed >= 3 * 8
                and r.group.counters.ignored - before_ignored >= 3 * 7
            ),
        )
        reading = await r.group.read()
        assert reading.current_a < 60
        assert reading.voltage_v < 501
        assert reading.faults == ()
        assert r.group.addresses == (0, 1, 2)
        assert r.faults.seen == []
        # and it still works
        r.group.set_output(400, 30)
        await wait_until("10 A each", lambda: r.set_currents() == [10.0, 10.0, 10.0])


async def test_garbage_from_a_silent_module_does_not_revive_it() -> None:
    async with rig() as r:
        await discovered(r)
        r.sim.set_silent(1)
        await wait_until("the fault", lambda: r.faults.code == "InternalError")
        before = r.group.counters.malformed
        for _ in range(5):
            r.sim.inject(garbage_frames(CONTROLLER_ADDRESS, 1, 1))
        await wait_until("the garbage", lambda: r.group.counters.malformed - before >= 5 * 8)
        assert r.group.present_addresses == (0, 2)
        assert r.faults.code == "InternalError"


async def test_a_refused_setpoint_is_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    async with rig() as r:
        await discovered(r)
        r.group.set_output(1200, 30)  # the simulated modules stop at 1000 V
        await wait_until("the refusals", lambda: r.group.counters.rejected >= 3)
        assert "refused command 0x1c: data_invalid" in caplog.text
        assert r.set_currents() == [0.0, 0.0, 0.0]
        assert r.faults.seen == []
        r.group.set_output(800, 30)
        await wait_until("accepted", lambda: r.set_currents() == [10.0, 10.0, 10.0])


async def test_close_switches_every_module_off() -> None:
    channel = f"infy-{uuid.uuid4().hex[:8]}"
    with InfyPowerSimulator(channel=channel, addresses=(0, 1, 2), group=1) as sim:
        settings: dict[str, Scalar] = {"interface": "virtual", "channel": channel, **FAST}
        group = build(Evse(id=1), hardware(group=1, **settings), {})
        await group.start()
        group.set_output(500, 30)
        group.set_enabled(True)
        await wait_until("all on", lambda: all(m.on for m in sim.modules()))
        await group.close()
        await wait_until("all off", lambda: not any(m.on for m in sim.modules()))
        frames = sim.requests
        await asyncio.sleep(0.3)
        assert sim.requests == frames  # nothing sent after close


async def test_two_groups_share_one_bus() -> None:
    channel = f"infy-{uuid.uuid4().hex[:8]}"
    shared: dict[str, object] = {}
    with (
        InfyPowerSimulator(channel=channel, addresses=(0, 1), group=1) as sim1,
        InfyPowerSimulator(channel=channel, addresses=(2, 3, 4), group=2) as sim2,
    ):
        settings: dict[str, Scalar] = {"interface": "virtual", "channel": channel, **FAST}
        first = build(Evse(id=1), hardware(group=1, **settings), shared)
        second = build(Evse(id=2), hardware(group=2, **settings), shared)
        assert len(shared) == 1
        await first.start()
        await second.start()
        try:
            await wait_until(
                "both discovered",
                lambda: first.addresses == (0, 1) and second.addresses == (2, 3, 4),
            )
            first.set_output(400, 20)
            second.set_output(600, 90)
            await wait_until(
                "first", lambda: [m.set_current_a for m in sim1.modules()] == [10.0, 10.0]
            )
            await wait_until(
                "second", lambda: [m.set_current_a for m in sim2.modules()] == [30.0, 30.0, 30.0]
            )
            await first.close()
            second.set_output(600, 60)  # the bus stays open for the second group
            await wait_until(
                "second again",
                lambda: [m.set_current_a for m in sim2.modules()] == [20.0, 20.0, 20.0],
            )
        finally:
            await first.close()
            await second.close()


# ----------------------------------------------------------------------------- SocketCAN (VM)


def _have_interface(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


@pytest.fixture
def vcan0() -> Iterator[str]:
    """vcan0, created (and removed again) when it is missing and this is allowed here."""
    created = False
    if not _have_interface("vcan0"):
        if os.geteuid() != 0:
            pytest.skip("no vcan0 and not root")
        add = subprocess.run(
            ["ip", "link", "add", "dev", "vcan0", "type", "vcan"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if add.returncode != 0:
            pytest.skip(f"no SocketCAN here (ip link add vcan0: {add.stderr.strip()})")
        created = True
    subprocess.run(["ip", "link", "set", "up", "vcan0"], check=True, timeout=10)
    try:
        yield "vcan0"
    finally:
        if created:
            subprocess.run(["ip", "link", "delete", "vcan0"], check=False, timeout=10)


def _link(name: str, state: str) -> None:
    subprocess.run(["ip", "link", "set", state, name], check=True, timeout=10)


@pytest.mark.vm
async def test_over_socketcan_on_vcan(vcan0: str) -> None:
    slow: dict[str, Scalar] = {"timeout_s": 2.0, "poll_interval_s": 0.2}
    async with rig(interface="socketcan", channel=vcan0, options=slow) as r:
        await discovered(r)
        assert r.group.addresses == (0, 1, 2)
        r.group.set_output(500, 60)
        await wait_until("20 A each", lambda: r.set_currents() == [20.0, 20.0, 20.0])
        r.group.set_enabled(True)
        await wait_until("500 V", lambda: r.sim.bus_voltage_v > 499.5)
        for _ in range(1000):
            reading = await r.group.read()
            if abs(reading.current_a - 50.0) < 0.1:
                break
            await asyncio.sleep(0.02)
        assert reading.current_a == pytest.approx(50.0, abs=0.1)

        r.sim.set_alarm(1, StatusBit.OVER_TEMPERATURE)
        await wait_until("HighTemperature", lambda: r.faults.code == "HighTemperature")
        r.sim.set_alarm(1, 0)
        await wait_until("cleared", lambda: r.faults.code is None)

        r.sim.set_silent(2)
        silent_info = "power module not answering: module 2"
        await wait_until("silent", lambda: r.faults.info == silent_info)
        r.sim.set_silent(2, False)
        await wait_until("back", lambda: r.faults.code is None and len(r.faults.seen) == 4)

        before = r.group.counters.malformed
        r.sim.send_garbage()
        await wait_until("garbage", lambda: r.group.counters.malformed - before >= 7)
        assert r.group.present_addresses == (0, 1, 2)

        # the interface goes down under the running driver, and comes back
        _link(vcan0, "down")
        try:
            await wait_until("all silent", lambda: r.faults.info.endswith("modules 0, 1, 2"))
        finally:
            _link(vcan0, "up")
        await wait_until("recovery", lambda: r.faults.code is None)
        await wait_until("all on", lambda: all(m.on for m in r.sim.modules()))


# ----------------------------------------------------------------------------- across processes

REPO = Path(__file__).resolve().parents[3]
MULTICAST = "239.74.163.2"


@pytest.fixture
def netns() -> Iterator[str]:
    """A private network namespace whose loopback carries 239.0.0.0/8 multicast, so
    udp_multicast frames never leave it (see PLATFORM.md). Skips where that cannot be made."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    name = f"infy{os.getpid()}{uuid.uuid4().hex[:6]}"
    steps = [
        ["ip", "netns", "add", name],
        ["ip", "-n", name, "link", "set", "lo", "multicast", "on"],
        ["ip", "-n", name, "link", "set", "lo", "up"],
        ["ip", "-n", name, "route", "add", "239.0.0.0/8", "dev", "lo"],
    ]
    try:
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=10, check=False)
            if done.returncode != 0:
                pytest.skip(f"{' '.join(step)}: {done.stderr.strip()}")
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=10)


class Child:
    """A child process in the namespace: commands on its stdin, lines from its stdout."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.faults: list[tuple[str | None, str]] = []
        self._seen = 0  # faults already matched by fault()

    @classmethod
    async def spawn(cls, netns: str, args: list[str], stderr: Path) -> Child:
        with stderr.open("wb") as errors:
            process = await asyncio.create_subprocess_exec(
                "ip",
                "netns",
                "exec",
                netns,
                sys.executable,
                *args,
                cwd=REPO,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=errors,
            )
        return cls(process)

    async def line(self, timeout: float = 20.0) -> str:
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not raw:
            raise AssertionError("the child closed its output")
        return raw.decode().strip()

    async def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        await self.process.stdin.drain()

    async def event(self, timeout: float = 20.0) -> dict[str, object]:
        """The next JSON line of the driver peer that is not a fault (faults are recorded)."""
        while True:
            event = json.loads(await self.line(timeout))
            assert isinstance(event, dict)
            if "fault" in event:
                self.faults.append((event["fault"], str(event["info"])))
                continue
            return event

    async def ask(self, command: str) -> dict[str, object]:
        await self.send(command)
        return await self.event()

    async def state_until(
        self, what: str, predicate: Callable[[dict[str, object]], bool]
    ) -> dict[str, object]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while True:
            state = await self.ask("state")
            if predicate(state):
                return state
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {state}")
            await asyncio.sleep(0.1)

    async def fault(self, expected: tuple[str | None, str]) -> None:
        """Wait for the fault callback `expected` after the one the last call matched."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while expected not in self.faults[self._seen :]:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no fault {expected}; saw {self.faults}")
            try:
                event = json.loads(await self.line(remaining))
            except TimeoutError:
                continue
            if "fault" in event:
                self.faults.append((event["fault"], str(event["info"])))
        self._seen = self.faults.index(expected, self._seen) + 1

    async def sim(self, command: str) -> list[str]:
        """A simulator command; the lines it printed before its "ok"."""
        await self.send(command)
        lines: list[str] = []
        while (line := await self.line()) != "ok":
            assert not line.startswith("error"), line
            lines.append(line)
        return lines

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.terminate()
        return await asyncio.wait_for(self.process.wait(), 10)


async def test_across_processes_over_udp_multicast(netns: str, tmp_path: Path) -> None:
    sim_args = ["-m", "hal.sim.infypower", "--interface", "udp_multicast", "--channel"]
    sim = await Child.spawn(
        netns, [*sim_args, MULTICAST, "--addresses", "0,1,2", "--group", "1"], tmp_path / "sim"
    )
    driver: Child | None = None
    try:
        assert await sim.line() == "ready"
        driver = await Child.spawn(
            netns,
            ["-m", "tests.hal.power.udp_peer", "udp_multicast", MULTICAST, "1"],
            tmp_path / "driver",
        )
        assert await driver.event() == {"ready": True}
        assert await driver.ask("output 500 60") == {"ok": True}
        assert await driver.ask("enable 1") == {"ok": True}
        state = await driver.state_until(
            "50 A from three modules",
            lambda s: s["present"] == [0, 1, 2] and abs(float(s["current"]) - 50) < 0.1,  # type: ignore[arg-type]
        )
        assert state["faults"] == []
        assert all("set=500/20" in line for line in await sim.sim("state"))

        await sim.sim("silent 1")
        await driver.fault(("InternalError", "power module not answering: module 1"))
        await sim.sim("talk 1")
        await driver.fault((None, "power modules healthy"))
        await sim.sim(f"alarm 2 {int(StatusBit.OUTPUT_OVER_VOLTAGE):#x}")
        await driver.fault(("OverVoltage", "module 2: output_over_voltage"))
        await sim.sim("alarm 2 0")
        await driver.fault((None, "power modules healthy"))

        await sim.sim("garbage")
        state = await driver.state_until("the garbage", lambda s: s["malformed"] >= 8)  # type: ignore[operator]
        assert state["present"] == [0, 1, 2]
        assert state["faults"] == []
        assert driver.faults[-1] == (None, "power modules healthy")

        await driver.send("quit")
        assert await driver.event() == {"closed": True}
        assert await asyncio.wait_for(driver.process.wait(), 10) == 0
        await asyncio.sleep(0.2)
        assert all(" on=0 " in line for line in await sim.sim("state"))
    finally:
        if driver is not None:
            await driver.stop()
        await sim.stop()
