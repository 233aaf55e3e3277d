"""The Modbus meter driver (backend "modbus"): ModbusMeter reads a mapped meter over RTU or TCP.

One `ModbusMeter` is one meter: a register map (hal.meter.maps), a unit id and a bus. A
`ModbusBus` is one pymodbus client — an RS-485 line (RTU) or a TCP connection — with a lock
held for a meter's whole reading, so several meters on one line (one per EVSE) share a client
and their requests never interleave. `build()` keeps buses in the daemon's `shared` dict under
"modbus-rtu:<port>" or "modbus-tcp:<host>:<tcp_port>".

A reading takes one request per block of the map. It raises MeterError, with the meter and the
reason in the message, when the meter does not answer, answers with an exception, answers
garbage (checksum or framing error) or as another unit id, when a value is out of range (NaN
or infinite; voltage or current below zero beyond a small tolerance, smaller negatives read as
0; frequency outside 40..70 Hz; negative energy; a register marked "not available"), and when
an energy register is lower than in the last good reading (that reading is not used, and the
last good one stays the reference). The next read() tries again: a broken transport (closed
serial port, TCP connection reset) is reopened then, so the meter works again as soon as it
answers correctly.

A map with a `[signed]` table (hal.meter.maps.SignedBlock) names where the meter keeps its
latest signed record: after the measured values, read() reads the record's length and then the
record (and, once, the meter's public key) and hands it on as MeterReading.signed. The record
is read again until two reads in a row agree (at most SIGNED_READS times): a record longer
than one request would otherwise be torn when the meter renews it between requests. A signed
record that cannot be used — one that keeps changing while it is read, a length beyond the
map's max_length, characters that are not printable ASCII, a public key that is not hex /
base64, a request that fails — leaves the reading's plain values as they are with `signed`
None, and logs a warning (once per kind of problem, and a note when the record is good
again); it is never a MeterError.

Options (`[evse.meter.options]`): map, transport, port, baudrate, parity, stopbits, host,
tcp_port, unit_id, timeout_s, retries — see OPTIONS below and docs/meter-maps.md.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

import hal.registry  # HardwareConfigError, looked up late: hal.registry imports the drivers
from hal.interfaces import MeterError, MeterReading, SignedMeterData
from hal.meter.maps import (
    Block,
    Function,
    MeterMap,
    MeterMapError,
    Register,
    SignedBlock,
    registers_for,
    resolve_map,
)
from service.config import Evse, Hardware
from service.config_reader import Scalar, show

__all__ = [
    "BAUDRATES",
    "FREQUENCY_RANGE_HZ",
    "OPTIONS",
    "BusSettings",
    "ModbusBus",
    "ModbusMeter",
    "build",
]

log = logging.getLogger("evsed.hal.meter")

# Values slightly below zero are measurement noise and read as 0; below these they are an error.
CURRENT_TOLERANCE_A = 0.1
VOLTAGE_TOLERANCE_V = 1.0
FREQUENCY_RANGE_HZ = (40.0, 70.0)
# A signed record is read until two reads in a row agree, at most this many times.
SIGNED_READS = 3

BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
PARITIES = ("N", "E", "O")
TRANSPORTS = ("rtu", "tcp")

# Option name -> what it means (for error messages and the docs).
OPTIONS: dict[str, str] = {
    "map": 'register map: a built-in name ("sdm630", ...) or an absolute path to a .toml map',
    "transport": '"rtu" (RS-485 serial line) or "tcp"',
    "port": "rtu: the serial device, e.g. /dev/ttyUSB0",
    "baudrate": "rtu: bits per second, default 9600",
    "parity": 'rtu: "N", "E" or "O", default "N"',
    "stopbits": "rtu: 1 or 2, default 1",
    "host": "tcp: the meter's or gateway's address",
    "tcp_port": "tcp: the TCP port, default 502",
    "unit_id": "the meter's Modbus unit id 1..247, default 1",
    "timeout_s": "seconds to wait for an answer, default 1.0",
    "retries": "requests sent again after a timeout, default 1",
}
_RTU_ONLY = ("port", "baudrate", "parity", "stopbits")
_TCP_ONLY = ("host", "tcp_port")

_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


class _BusError(Exception):
    """A request failed; str() is the readable reason (the meter adds who it is)."""


class _SignedError(Exception):
    """The signed record (or public key) cannot be used; str() says why."""


def _ascii(raw: bytes, what: str) -> str:
    """`raw` as text; _SignedError when a byte is not printable ASCII."""
    bad = next((byte for byte in raw if not 0x20 <= byte <= 0x7E), None)
    if bad is not None:
        raise _SignedError(f"{what} holds a byte that is not printable ASCII ({bad:#04x})")
    return raw.decode("ascii")


@dataclass(frozen=True, slots=True)
class BusSettings:
    """How to reach a bus; meters sharing a bus must agree on all of it."""

    transport: str  # "rtu" | "tcp"
    port: str = ""
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    host: str = ""
    tcp_port: int = 502
    timeout_s: float = 1.0
    retries: int = 1

    @property
    def key(self) -> str:
        """The key of the bus in the daemon's `shared` dict: ("modbus-rtu", port) as a string
        (the device's real path, so two names of one adapter are one bus) or
        ("modbus-tcp", host, tcp_port)."""
        if self.transport == "rtu":
            return "modbus-rtu:" + os.path.realpath(self.port)
        return f"modbus-tcp:{self.host}:{self.tcp_port}"

    @property
    def where(self) -> str:
        return self.port if self.transport == "rtu" else f"{self.host}:{self.tcp_port}"


def _crc16(data: bytes) -> int:
    """Modbus RTU CRC-16 (polynomial 0xA001, initial 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


class ModbusBus:
    """One Modbus client (an RS-485 line or a TCP connection) and the meters' lock.

    The client is created on the event loop when first needed and reopened after the transport
    broke. Hold `lock` around `connect()` and `read_block()`.
    """

    def __init__(self, settings: BusSettings, *, owner: str = "") -> None:
        self.settings = settings
        self.owner = owner  # who configured the bus first (for error messages)
        self.lock = asyncio.Lock()
        self.units: dict[int, str] = {}  # unit id -> its user (for error messages)
        self._client: AsyncModbusSerialClient | AsyncModbusTcpClient | None = None
        self._users = 0
        self._received: list[bytes] = []

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def acquire(self) -> None:
        self._users += 1

    def release(self) -> None:
        self._users = max(0, self._users - 1)
        if self._users == 0:
            self._drop()

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _trace(self, sending: bool, data: bytes) -> bytes:
        """pymodbus hands every received buffer here: kept to explain a missing answer."""
        if not sending and len(self._received) < 64:
            self._received.append(bytes(data))
        return data

    async def connect(self) -> None:
        """Open the transport unless it is open. Raises _BusError."""
        if self.connected:
            return
        self._drop()
        settings = self.settings
        client: AsyncModbusSerialClient | AsyncModbusTcpClient
        if settings.transport == "rtu":
            if not os.path.exists(settings.port):
                raise _BusError(f"serial port {settings.port} does not exist")
            client = AsyncModbusSerialClient(
                settings.port,
                framer=FramerType.RTU,
                baudrate=settings.baudrate,
                bytesize=8,
                parity=settings.parity,
                stopbits=settings.stopbits,
                timeout=settings.timeout_s,
                retries=settings.retries,
                reconnect_delay=0,
                trace_packet=self._trace,
            )
            failure = f"cannot open serial port {settings.port}"
        else:
            client = AsyncModbusTcpClient(
                settings.host,
                port=settings.tcp_port,
                timeout=settings.timeout_s,
                retries=settings.retries,
                reconnect_delay=0,
                trace_packet=self._trace,
            )
            failure = f"cannot connect to {settings.where}"
        try:
            opened = await client.connect()
        except (OSError, ModbusException) as exc:
            client.close()
            raise _BusError(f"{failure}: {exc}") from None
        if not opened:
            client.close()
            raise _BusError(failure)
        self._client = client

    async def read_block(self, unit_id: int, block: Block) -> list[int]:
        """The registers of one block of one meter. Raises _BusError."""
        await self.connect()
        client = self._client
        assert client is not None
        what = f"{block.function} registers {block.address:#06x}+{block.count}"
        self._received.clear()
        read = (
            client.read_input_registers
            if block.function is Function.INPUT
            else client.read_holding_registers
        )
        try:
            response = await read(block.address, count=block.count, device_id=unit_id)
        except ConnectionException as exc:
            self._drop()
            raise _BusError(f"connection to {self.settings.where} lost ({exc.string})") from None
        except ModbusIOException:
            if self.settings.transport == "rtu" and not os.path.exists(self.settings.port):
                self._drop()
                raise _BusError(f"serial port {self.settings.port} disappeared") from None
            raise _BusError(f"{self._explain_silence(unit_id)} (reading {what})") from None
        except ModbusException as exc:
            raise _BusError(f"{exc.string} (reading {what})") from None
        except Exception as exc:  # never let a transport problem escape as anything else
            self._drop()
            raise _BusError(f"{type(exc).__name__}: {exc} (reading {what})") from None
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            name = _EXCEPTION_NAMES.get(code, "unknown exception")
            raise _BusError(f"exception response {code} ({name}) to reading {what}")
        if unit_id and response.dev_id != unit_id:
            raise _BusError(f"answer from unit id {response.dev_id} instead of {unit_id}")
        registers = list(response.registers)
        if len(registers) != block.count:
            raise _BusError(
                f"answer with {len(registers)} registers to reading {what} (function "
                f"{response.function_code:#04x})"
            )
        return registers

    def _explain_silence(self, unit_id: int) -> str:
        """Why no usable answer arrived: nothing at all, another unit, or garbage."""
        settings = self.settings
        if not self._received:
            attempts = settings.retries + 1
            plural = "s" if attempts > 1 else ""
            return f"no answer within {settings.timeout_s:g} s ({attempts} attempt{plural})"
        for data in self._received:
            other = self._answering_unit(data)
            if other is not None and other != unit_id:
                return f"answer from unit id {other} instead of {unit_id}"
        size = max(len(data) for data in self._received)
        check = "checksum or framing error" if settings.transport == "rtu" else "framing error"
        return f"garbled answer ({size} bytes; {check})"

    def _answering_unit(self, data: bytes) -> int | None:
        """The unit id of a well-formed answer frame in `data`, else None."""
        if self.settings.transport == "rtu":
            if len(data) >= 5 and _crc16(data[:-2]) == int.from_bytes(data[-2:], "little"):
                return data[0]
            return None
        well_formed = (
            len(data) >= 9
            and data[2:4] == b"\x00\x00"
            and int.from_bytes(data[4:6], "big") == len(data) - 6
        )
        return data[6] if well_formed else None


class ModbusMeter:
    """A Modbus energy meter (hal.interfaces.Meter): `await start()`, `await read()`, `await
    close()`. start() raises MeterError when the bus cannot be opened; read() tries again."""

    def __init__(self, meter_map: MeterMap, bus: ModbusBus, unit_id: int, *, label: str) -> None:
        self.map = meter_map
        self.bus = bus
        self.unit_id = unit_id
        self.label = label
        self._started = False
        self._last: MeterReading | None = None
        self._public_key: str | None = None  # base64, once read
        self._signed_problem: str | None = None  # the last signed-record problem logged
        self._layout: list[tuple[Block, list[tuple[Register, int]]]] = [
            (
                block,
                [
                    (register, register.address - block.address)
                    for register in meter_map.registers.values()
                    if block.holds(register)
                ],
            )
            for block in meter_map.blocks
        ]

    @property
    def last_good(self) -> MeterReading | None:
        """The last reading that passed every check (the reference for energy)."""
        return self._last

    def _use_bus(self) -> None:
        if not self._started:
            self._started = True
            self.bus.acquire()

    async def start(self) -> None:
        self._use_bus()
        async with self.bus.lock:
            try:
                await self.bus.connect()
            except _BusError as exc:
                raise MeterError(f"{self.label}: {exc}") from None

    async def close(self) -> None:
        if self._started:
            self._started = False
            self.bus.release()

    async def read(self) -> MeterReading:
        self._use_bus()
        values: dict[str, float] = {}
        async with self.bus.lock:
            for block, registers in self._layout:
                try:
                    words = await self.bus.read_block(self.unit_id, block)
                except _BusError as exc:
                    raise MeterError(f"{self.label}: {exc}") from None
                for register, offset in registers:
                    value = register.decode(words[offset : offset + register.words])
                    if value is None:
                        raw = register.raw(words[offset : offset + register.words])
                        raise MeterError(
                            f"{self.label}: {register.name} is marked not available by the "
                            f"meter (raw {raw:#x})"
                        )
                    values[register.name] = value
            reading = self._check(values)
            if self.map.signed is not None:
                signed = await self._read_signed(self.map.signed)
                if signed is not None:
                    reading = replace(reading, signed=signed)
        self._last = reading
        return reading

    # -- signed records ------------------------------------------------------------------------

    async def _read_signed(self, block: SignedBlock) -> SignedMeterData | None:
        """The meter's signed record now, or None (a warning says why when it is unusable).
        Call with the bus lock held."""
        try:
            record = await self._read_stable_record(block)
            if record is None:
                self._signed_ok()
                return None
            public_key = await self._read_public_key(block)
        except _SignedError as exc:
            self._signed_failed(str(exc))
            return None
        self._signed_ok()
        return SignedMeterData(
            signed_meter_data=record,
            signing_method=block.signing_method,
            encoding_method=block.encoding_method,
            public_key=public_key,
        )

    async def _read_stable_record(self, block: SignedBlock) -> str | None:
        """The signed record, read until two reads in a row bring the same bytes. A record
        longer than one request is read in several, and a meter that makes a new record between
        them would otherwise hand on a torn one: half of each, whose signature holds for
        neither, or with padding past the end of a shorter one. The content is checked once
        the bytes are stable."""
        previous: bytes | None = None
        for attempt in range(SIGNED_READS):
            raw = await self._read_raw(
                block.function, block.length, block.data, block.max_length, "signed record"
            )
            if attempt > 0 and raw == previous:
                return None if raw is None else _ascii(raw, "signed record")
            previous = raw
        raise _SignedError(f"the record changed while it was read, {SIGNED_READS} reads in a row")

    async def _read_public_key(self, block: SignedBlock) -> str:
        if self._public_key is not None:
            return self._public_key
        if block.public_key is None or block.public_key_length is None:
            self._public_key = ""
            return ""
        raw = await self._read_raw(
            block.function,
            block.public_key_length,
            block.public_key,
            block.public_key_max_length,
            "public key",
        )
        if raw is None:
            raise _SignedError("the meter has no public key (length 0)")
        text = _ascii(raw, "public key")
        try:
            if block.public_key_format == "hex":
                key = bytes.fromhex(text)
            else:
                key = base64.b64decode(text, validate=True)
        except (ValueError, binascii.Error):
            raise _SignedError(f"public key is not {block.public_key_format} text") from None
        if not key:
            raise _SignedError("the meter has no public key (empty)")
        self._public_key = base64.b64encode(key).decode("ascii")
        return self._public_key

    async def _read_registers(self, function: Function, address: int, count: int) -> list[int]:
        words: list[int] = []
        step = self.map.max_registers
        for start in range(address, address + count, step):
            block = Block(function, start, min(step, address + count - start))
            try:
                words.extend(await self.bus.read_block(self.unit_id, block))
            except _BusError as exc:
                raise _SignedError(str(exc)) from None
        return words

    async def _read_raw(
        self, function: Function, length_at: int, data_at: int, max_length: int, what: str
    ) -> bytes | None:
        """The bytes whose length is in register `length_at` and which start at `data_at`;
        None when the length is 0. Raises _SignedError for a length beyond `max_length`."""
        (length,) = await self._read_registers(function, length_at, 1)
        if length == 0:
            return None
        if length > max_length:
            raise _SignedError(f"{what} length {length} is more than the map's {max_length} bytes")
        words = await self._read_registers(function, data_at, registers_for(length))
        return b"".join(word.to_bytes(2, "big") for word in words)[:length]

    def _signed_failed(self, problem: str) -> None:
        if problem != self._signed_problem:
            log.warning("%s: signed record not used: %s", self.label, problem)
        self._signed_problem = problem

    def _signed_ok(self) -> None:
        if self._signed_problem is not None:
            log.info("%s: signed records readable again", self.label)
        self._signed_problem = None

    def _fail(self, problem: str) -> MeterError:
        return MeterError(f"{self.label}: {problem}")

    def _check(self, values: Mapping[str, float]) -> MeterReading:
        for name, value in values.items():
            if not math.isfinite(value):
                raise self._fail(f"{name} is {value} (not a number)")
        voltage = self._non_negative(values, "voltage", VOLTAGE_TOLERANCE_V, "V")
        current = self._non_negative(values, "current", CURRENT_TOLERANCE_A, "A")
        power = tuple(values[name] for name in self.map.phase_names("power"))
        frequency = values.get("frequency")
        low, high = FREQUENCY_RANGE_HZ
        if frequency is not None and not low <= frequency <= high:
            raise self._fail(f"frequency {frequency:g} Hz is outside {low:g}..{high:g} Hz")
        energy_import = values["energy_import"]
        energy_export = values.get("energy_export")
        last = self._last
        for name, energy, before in (
            ("energy_import", energy_import, last.energy_import_wh if last else None),
            ("energy_export", energy_export, last.energy_export_wh if last else None),
        ):
            if energy is None:
                continue
            if energy < 0:
                raise self._fail(f"{name} {energy:g} Wh is negative")
            if before is not None and energy < before:
                raise self._fail(
                    f"{name} ran backwards: {energy:.1f} Wh after {before:.1f} Wh; "
                    "reading discarded"
                )
        return MeterReading(
            energy_import_wh=energy_import,
            voltage_v=voltage,
            current_a=current,
            power_w=power,
            energy_export_wh=energy_export,
            frequency_hz=frequency,
        )

    def _non_negative(
        self, values: Mapping[str, float], kind: str, tolerance: float, unit: str
    ) -> tuple[float, ...]:
        out: list[float] = []
        for name in self.map.phase_names(kind):
            value = values[name]
            if value < -tolerance:
                raise self._fail(f"{name} {value:g} {unit} is negative")
            out.append(max(value, 0.0))
        return tuple(out)


# ---------------------------------------------------------------------------------------------
# Configuration


class _Options:
    """Typed access to one meter's options; every problem is a HardwareConfigError."""

    def __init__(self, evse: Evse, options: Mapping[str, Scalar]) -> None:
        self.evse = evse
        self.options = options

    def key(self, name: str) -> str:
        return f"evse[{self.evse.id}].meter.options.{name}"

    def fail(self, name: str, problem: str) -> hal.registry.HardwareConfigError:
        message = f"EVSE {self.evse.id}: {self.key(name)}: {problem}"
        return hal.registry.HardwareConfigError(message)

    def found(self, name: str, expected: str) -> hal.registry.HardwareConfigError:
        return self.fail(name, f"found {show(self.options[name])}; expected {expected}")

    def required(self, name: str) -> Scalar:
        if name not in self.options:
            raise self.fail(name, f"missing; the modbus meter needs it ({OPTIONS[name]})")
        return self.options[name]

    def string(self, name: str, default: str | None = None) -> str:
        value = self.required(name) if default is None else self.options.get(name, default)
        if not isinstance(value, str) or not value:
            raise self.found(name, "a non-empty string")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str | None = None) -> str:
        value = self.string(name, default)
        if value not in choices:
            raise self.found(name, f"one of {', '.join(show(c) for c in choices)}")
        return value

    def integer(self, name: str, default: int, allowed: range | tuple[int, ...]) -> int:
        value = self.options.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
            if isinstance(allowed, range):
                expected = f"an integer {allowed.start}..{allowed.stop - 1}"
            else:
                expected = f"one of {', '.join(str(a) for a in allowed)}"
            raise self.found(name, expected)
        return value

    def number(self, name: str, default: float, low: float, high: float) -> float:
        value = self.options.get(name, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not low < value <= high
        ):
            raise self.found(name, f"a number > {low:g} and <= {high:g}")
        return float(value)


def _settings(opts: _Options) -> BusSettings:
    for name in opts.options:
        if name not in OPTIONS:
            raise opts.fail(
                name, f"unknown option of backend 'modbus'; expected one of {', '.join(OPTIONS)}"
            )
    transport = opts.choice("transport", TRANSPORTS)
    wrong = _TCP_ONLY if transport == "rtu" else _RTU_ONLY
    for name in wrong:
        if name in opts.options:
            other = "tcp" if transport == "rtu" else "rtu"
            raise opts.fail(name, f'only for transport "{other}" (transport is "{transport}")')
    timeout_s = opts.number("timeout_s", 1.0, 0.0, 60.0)
    retries = opts.integer("retries", 1, range(0, 11))
    if transport == "rtu":
        port = opts.string("port")
        if not os.path.isabs(port):
            raise opts.found("port", "an absolute path to a serial device, e.g. /dev/ttyUSB0")
        return BusSettings(
            transport="rtu",
            port=port,
            baudrate=opts.integer("baudrate", 9600, BAUDRATES),
            parity=opts.choice("parity", PARITIES, "N"),
            stopbits=opts.integer("stopbits", 1, (1, 2)),
            timeout_s=timeout_s,
            retries=retries,
        )
    return BusSettings(
        transport="tcp",
        host=opts.string("host"),
        tcp_port=opts.integer("tcp_port", 502, range(1, 65536)),
        timeout_s=timeout_s,
        retries=retries,
    )


def build(evse: Evse, hardware: Hardware, shared: dict[str, object]) -> ModbusMeter:
    """The meter of `evse` from its options; meters on one bus share a ModbusBus via `shared`.

    Raises HardwareConfigError naming the EVSE and the option. Opens nothing (see start()).
    """
    opts = _Options(evse, hardware.options)
    spec = opts.string("map")
    try:
        meter_map = resolve_map(spec)
    except MeterMapError as exc:
        raise opts.fail("map", str(exc)) from None
    phases = max((connector.phases for connector in evse.connectors), default=1)
    if meter_map.phases < phases:
        raise opts.fail(
            "map",
            f"{meter_map.name} measures {meter_map.phases} phase(s) but a connector of this "
            f"EVSE has {phases}",
        )
    settings = _settings(opts)
    unit_id = opts.integer("unit_id", 1, range(1, 248))
    me = f"EVSE {evse.id}"

    existing = shared.get(settings.key)
    if existing is not None and not isinstance(existing, ModbusBus):
        raise opts.fail(
            "port" if settings.transport == "rtu" else "host",
            f"{settings.where} is already used by another driver",
        )
    bus = existing if isinstance(existing, ModbusBus) else ModbusBus(settings, owner=me)
    if bus.settings != settings:
        for field in fields(BusSettings):
            mine, theirs = getattr(settings, field.name), getattr(bus.settings, field.name)
            if mine != theirs:
                raise opts.fail(
                    field.name,
                    f"found {show(mine)}, but {bus.owner} uses {show(theirs)} on "
                    f"{settings.where}; meters on one bus share its settings",
                )
    if unit_id in bus.units:
        raise opts.fail(
            "unit_id", f"unit id {unit_id} on {settings.where} is already {bus.units[unit_id]}'s"
        )
    bus.units[unit_id] = f"{me} meter"
    shared[settings.key] = bus
    label = f"{me} meter ({meter_map.name}, unit {unit_id} on {settings.where})"
    return ModbusMeter(meter_map, bus, unit_id, label=label)
