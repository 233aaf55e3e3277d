"""InfyPower DC power modules over CAN: the V1.x frame codec and `InfyPowerGroup`, the driver.

The wire protocol (InfyPower REG/BEG/BEC "charger module CAN communication protocol" V1.x, as
publicly described): CAN 2.0B extended frames, 125 kbit/s, always 8 data bytes, big-endian.
The 29-bit identifier is

    bits 28-26 error code   (0 normal, 2 command invalid, 3 data invalid, 7 starting up)
    bits 25-22 device number (0x0A: one module, 0x0B: a group of modules)
    bits 21-16 command number
    bits 15-8  destination address (a module 0x00-0x3E, 0x3F broadcast, a group number when
               the device number is 0x0B, or the controller, 0xF0 by default)
    bits 7-0   source address

A module answers a request with the same command number, destination and source swapped.
Commands used here (requests carry 8 zero bytes unless said otherwise):

    0x02 read module count   reply byte 2: modules in the group
    0x03 read module output  reply bytes 0-3 / 4-7: voltage V / current A, IEEE-754 float32
    0x04 read module status  reply byte 2: group number, byte 4: temperature degC (signed),
                             bytes 5, 6, 7: status tables 2, 1, 0 (`StatusBit`)
    0x1A switch on/off       byte 0: 0x00 on, 0x01 off
    0x1C set module output   bytes 0-3: voltage mV, bytes 4-7: current limit mA (uint32)

The first half of this module is pure functions over (identifier, bytes). The second half is the
driver: `build()` validates the options and returns an `InfyPowerGroup`, which drives several
modules as one output (hal.interfaces.PowerModule). The modules are the fixed `addresses`, or
are discovered: every module answers a status read addressed to its group, and its reply names
the group. A poll task (every `poll_interval_s`) reads every module's output and status, and
sends each answering module its share of the current (the group current divided by the number
of answering modules) and on/off. A module silent for `timeout_s` is reported, stops counting
for the split and is sent "off" while silent (if it can still hear us it cannot add current);
when it answers again it gets its share back. Frames come from a receive thread (bus.recv) and
are handed to the event loop with call_soon_threadsafe; frames go out through a one-thread
executor, so the loop never blocks on the bus and frames keep their order. Fault callbacks are
scheduled with loop.call_soon.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import logging
import math
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import NamedTuple

import can

from hal import registry as _registry
from hal.interfaces import FaultCallback, PowerReading
from service.config import Evse, Hardware

__all__ = [
    "BROADCAST_ADDRESS",
    "CONTROLLER_ADDRESS",
    "FAULT_CODES",
    "INTERFACES",
    "MAX_MODULE_ADDRESS",
    "PAYLOAD_LENGTH",
    "Command",
    "Device",
    "ErrorCode",
    "Frame",
    "FrameCounters",
    "FrameError",
    "FrameId",
    "InfyPowerGroup",
    "InfyPowerOptions",
    "ModuleState",
    "ModuleStatus",
    "StatusBit",
    "build",
    "decode_frame",
    "decode_id",
    "decode_module_count",
    "decode_module_output",
    "decode_on_off",
    "decode_set_output",
    "decode_status",
    "encode_id",
    "encode_module_count",
    "encode_module_output",
    "encode_on_off",
    "encode_set_output",
    "encode_status",
    "fault_code",
    "fault_names",
    "make_message",
    "parse_options",
]

log = logging.getLogger(__name__)

CONTROLLER_ADDRESS = 0xF0
BROADCAST_ADDRESS = 0x3F
MAX_MODULE_ADDRESS = 0x3E
PAYLOAD_LENGTH = 8
READ_REQUEST = bytes(PAYLOAD_LENGTH)

_ID_BITS = 29
_MAX_U32 = 0xFFFFFFFF
_OUTPUT = struct.Struct(">ff")
_SETPOINT = struct.Struct(">II")


class Device(IntEnum):
    """The device number field: one module, or every module of a group."""

    SINGLE = 0x0A
    GROUP = 0x0B


class Command(IntEnum):
    READ_MODULE_COUNT = 0x02
    READ_MODULE_OUTPUT = 0x03
    READ_MODULE_STATUS = 0x04
    SET_ON_OFF = 0x1A
    SET_MODULE_OUTPUT = 0x1C


class ErrorCode(IntEnum):
    NORMAL = 0x00
    COMMAND_INVALID = 0x02
    DATA_INVALID = 0x03
    STARTING = 0x07


class StatusBit(IntFlag):
    """The three status tables of a status reply as one 24-bit word: table 0 (reply byte 7) in
    bits 0-7, table 1 (byte 6) in bits 8-15, table 2 (byte 5) in bits 16-23."""

    OUTPUT_SHORT = 1 << 0
    SLEEPING = 1 << 4
    DISCHARGE_ABNORMAL = 1 << 5
    DC_OFF = 1 << 8
    FAULT = 1 << 9
    PROTECTION = 1 << 10
    FAN_FAULT = 1 << 11
    OVER_TEMPERATURE = 1 << 12
    OUTPUT_OVER_VOLTAGE = 1 << 13
    WALK_IN = 1 << 14
    COMMUNICATION_INTERRUPT = 1 << 15
    POWER_LIMIT = 1 << 16
    ID_REPEAT = 1 << 17
    LOAD_SHARING = 1 << 18
    INPUT_PHASE_LOST = 1 << 19
    INPUT_UNBALANCED = 1 << 20
    INPUT_UNDER_VOLTAGE = 1 << 21
    INPUT_OVER_VOLTAGE = 1 << 22
    PFC_OFF = 1 << 23


# Alarm bits and the OCPP 1.6 ChargePointErrorCode each one raises. The other bits (sleeping,
# DC side off, walk-in, power limit, PFC off) describe the state, not a fault.
FAULT_CODES: dict[StatusBit, str] = {
    StatusBit.OUTPUT_OVER_VOLTAGE: "OverVoltage",
    StatusBit.OUTPUT_SHORT: "OverCurrentFailure",
    StatusBit.OVER_TEMPERATURE: "HighTemperature",
    StatusBit.FAULT: "InternalError",
    StatusBit.PROTECTION: "InternalError",
    StatusBit.FAN_FAULT: "InternalError",
    StatusBit.LOAD_SHARING: "InternalError",
    StatusBit.DISCHARGE_ABNORMAL: "InternalError",
    StatusBit.INPUT_PHASE_LOST: "OtherError",
    StatusBit.INPUT_UNBALANCED: "OtherError",
    StatusBit.INPUT_UNDER_VOLTAGE: "OtherError",
    StatusBit.INPUT_OVER_VOLTAGE: "OtherError",
    StatusBit.ID_REPEAT: "OtherError",
    StatusBit.COMMUNICATION_INTERRUPT: "OtherError",
}
# Most severe first: the code reported when several faults are active.
_CODE_ORDER = (
    "OverVoltage",
    "OverCurrentFailure",
    "HighTemperature",
    "InternalError",
    "OtherError",
)
_FAULT_MASK = StatusBit(0)
for _bit in FAULT_CODES:
    _FAULT_MASK |= _bit


class FrameError(ValueError):
    """A frame that is not an InfyPower frame: standard id, remote or error frame, wrong
    length, or a field that does not decode."""


@dataclass(frozen=True, slots=True)
class FrameId:
    """The fields of a 29-bit InfyPower identifier."""

    command: int
    destination: int
    source: int
    device: int = Device.SINGLE
    error: int = ErrorCode.NORMAL


@dataclass(frozen=True, slots=True)
class Frame:
    id: FrameId
    data: bytes


@dataclass(frozen=True, slots=True)
class ModuleStatus:
    """A status reply: the module's group, temperature and status word."""

    group: int
    temperature_c: int
    bits: StatusBit

    @property
    def faults(self) -> StatusBit:
        return self.bits & _FAULT_MASK


def _field(name: str, value: int, bits: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << bits):
        raise ValueError(f"{name} must be an integer 0..{(1 << bits) - 1}, not {value!r}")
    return value


def encode_id(frame_id: FrameId) -> int:
    """The 29-bit identifier of `frame_id`; ValueError when a field does not fit."""
    return (
        _field("error", frame_id.error, 3) << 26
        | _field("device", frame_id.device, 4) << 22
        | _field("command", frame_id.command, 6) << 16
        | _field("destination", frame_id.destination, 8) << 8
        | _field("source", frame_id.source, 8)
    )


def decode_id(arbitration_id: int) -> FrameId:
    """The fields of a 29-bit identifier; FrameError when it is not one."""
    if isinstance(arbitration_id, bool) or not isinstance(arbitration_id, int):
        raise FrameError(f"an identifier is an integer, not {arbitration_id!r}")
    if not 0 <= arbitration_id < (1 << _ID_BITS):
        raise FrameError(f"identifier {arbitration_id:#x} does not fit 29 bits")
    return FrameId(
        command=(arbitration_id >> 16) & 0x3F,
        destination=(arbitration_id >> 8) & 0xFF,
        source=arbitration_id & 0xFF,
        device=(arbitration_id >> 22) & 0x0F,
        error=(arbitration_id >> 26) & 0x07,
    )


def _payload(data: bytes | bytearray) -> bytes:
    if len(data) != PAYLOAD_LENGTH:
        raise FrameError(f"an InfyPower payload has {PAYLOAD_LENGTH} bytes, not {len(data)}")
    return bytes(data)


def decode_frame(message: can.Message) -> Frame:
    """The InfyPower frame in `message`; FrameError for anything else (standard identifier,
    remote, error or FD frame, a length other than 8)."""
    if message.is_error_frame:
        raise FrameError("error frame")
    if message.is_remote_frame:
        raise FrameError("remote frame")
    if not message.is_extended_id:
        raise FrameError(f"standard identifier {message.arbitration_id:#x}")
    if message.is_fd:
        raise FrameError("CAN FD frame")
    return Frame(decode_id(message.arbitration_id), _payload(message.data))


def make_message(frame_id: FrameId, data: bytes) -> can.Message:
    """A python-can message carrying one InfyPower frame."""
    return can.Message(arbitration_id=encode_id(frame_id), data=_payload(data), is_extended_id=True)


def encode_module_count(count: int) -> bytes:
    return bytes((0, 0, _field("count", count, 8), 0, 0, 0, 0, 0))


def decode_module_count(data: bytes) -> int:
    return _payload(data)[2]


def encode_module_output(voltage_v: float, current_a: float) -> bytes:
    """A module's measured output (reply to READ_MODULE_OUTPUT)."""
    return _OUTPUT.pack(voltage_v, current_a)


def decode_module_output(data: bytes) -> tuple[float, float]:
    """(voltage V, current A); FrameError unless both are finite numbers."""
    voltage, current = _OUTPUT.unpack(_payload(data))
    if not (math.isfinite(voltage) and math.isfinite(current)):
        raise FrameError(f"module output is not a pair of numbers: {voltage!r}, {current!r}")
    return voltage, current


def encode_set_output(voltage_v: float, current_a: float) -> bytes:
    """SET_MODULE_OUTPUT payload: voltage in mV and current limit in mA, rounded."""
    millivolts = _milli("voltage_v", voltage_v)
    milliamps = _milli("current_a", current_a)
    return _SETPOINT.pack(millivolts, milliamps)


def _milli(name: str, value: float) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value!r}")
    milli = round(value * 1000)
    if not 0 <= milli <= _MAX_U32:
        raise ValueError(f"{name} {value!r} is outside 0..{_MAX_U32 / 1000:g}")
    return milli


def decode_set_output(data: bytes) -> tuple[float, float]:
    """(voltage V, current A) of a SET_MODULE_OUTPUT payload."""
    millivolts, milliamps = _SETPOINT.unpack(_payload(data))
    return millivolts / 1000, milliamps / 1000


def encode_on_off(on: bool) -> bytes:
    return bytes((0x00 if on else 0x01, 0, 0, 0, 0, 0, 0, 0))


def decode_on_off(data: bytes) -> bool:
    """True for "on"; FrameError for a byte 0 other than 0x00 (on) or 0x01 (off)."""
    flag = _payload(data)[0]
    if flag not in (0x00, 0x01):
        raise FrameError(f"on/off byte is 0x00 or 0x01, not {flag:#04x}")
    return flag == 0x00


def encode_status(status: ModuleStatus) -> bytes:
    bits = int(status.bits)
    if not 0 <= bits <= 0xFFFFFF:
        raise ValueError(f"status bits must fit 24 bits, not {bits:#x}")
    if not -128 <= status.temperature_c <= 127:
        raise ValueError(f"temperature must be -128..127 degC, not {status.temperature_c!r}")
    return bytes(
        (
            0,
            0,
            _field("group", status.group, 8),
            0,
            status.temperature_c & 0xFF,
            (bits >> 16) & 0xFF,
            (bits >> 8) & 0xFF,
            bits & 0xFF,
        )
    )


def decode_status(data: bytes) -> ModuleStatus:
    raw = _payload(data)
    temperature = raw[4] - 256 if raw[4] >= 128 else raw[4]
    return ModuleStatus(
        group=raw[2],
        temperature_c=temperature,
        bits=StatusBit(raw[5] << 16 | raw[6] << 8 | raw[7]),
    )


def fault_names(bits: StatusBit) -> tuple[str, ...]:
    """The readable names of the alarm bits set in `bits` (state bits left out)."""
    return tuple((bit.name or "").lower() for bit in FAULT_CODES if bits & bit)


def fault_code(bits: StatusBit) -> str | None:
    """The OCPP 1.6 error code of the most severe alarm in `bits`; None without alarms."""
    codes = {code for bit, code in FAULT_CODES.items() if bits & bit}
    return next((code for code in _CODE_ORDER if code in codes), None)


# --------------------------------------------------------------------------- options

INTERFACES = ("socketcan", "virtual", "udp_multicast")
DEFAULT_TIMEOUT_S = 2.0
DEFAULT_POLL_INTERVAL_S = 0.5
DEFAULT_BITRATE = 125000
MAX_VOLTAGE_V = 1500.0  # above any InfyPower module; a module refuses what it cannot do
MAX_CURRENT_A = 6000.0
_OPTION_NAMES = (
    "interface",
    "channel",
    "bitrate",
    "group",
    "addresses",
    "timeout_s",
    "poll_interval_s",
    "monitor_address",
)


@dataclass(frozen=True, slots=True)
class InfyPowerOptions:
    """The validated options of one group (see `parse_options`)."""

    interface: str = "socketcan"
    channel: str = "can0"
    bitrate: int = DEFAULT_BITRATE
    group: int = 0
    addresses: tuple[int, ...] = ()  # empty: discover the modules of `group`
    timeout_s: float = DEFAULT_TIMEOUT_S
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S
    monitor_address: int = CONTROLLER_ADDRESS

    @property
    def discovery(self) -> bool:
        return not self.addresses


def _option_key(evse: Evse, name: str) -> str:
    return f"evse[{evse.id}].power_module.options.{name}"


def _config_error(evse: Evse, name: str, found: object, expected: str) -> Exception:
    shown = repr(found) if not isinstance(found, bool) else str(found).lower()
    return _registry.HardwareConfigError(
        f"EVSE {evse.id}: {_option_key(evse, name)}: found {shown}; expected {expected}"
    )


def _int_option(
    evse: Evse, options: dict[str, object], name: str, default: int, low: int, high: int
) -> int:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _config_error(evse, name, value, f"an integer {low}..{high}")
    return value


def _number_option(
    evse: Evse, options: dict[str, object], name: str, default: float, high: float
) -> float:
    value = options.get(name, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= high
    ):
        raise _config_error(evse, name, value, f"a number > 0 and <= {high:g}")
    return float(value)


def _addresses_option(evse: Evse, value: object) -> tuple[int, ...]:
    expected = (
        f'module addresses 0..{MAX_MODULE_ADDRESS}, as a list or a string such as "0,1,2" '
        "(empty: discover the group)"
    )
    items: list[object]
    if isinstance(value, str):
        text = value.replace(" ", "")
        items = []
        for part in text.split(",") if text else []:
            try:
                items.append(int(part, 0))
            except ValueError:
                raise _config_error(evse, "addresses", value, expected) from None
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise _config_error(evse, "addresses", value, expected)
    addresses: list[int] = []
    for item in items:
        if (
            isinstance(item, bool)
            or not isinstance(item, int)
            or not 0 <= item <= MAX_MODULE_ADDRESS
            or item in addresses
        ):
            raise _config_error(evse, "addresses", value, expected + ", each once")
        addresses.append(item)
    return tuple(addresses)


def parse_options(evse: Evse, hardware: Hardware) -> InfyPowerOptions:
    """Check `hardware.options`; HardwareConfigError names the EVSE and the option.

    interface ("socketcan" | "virtual" | "udp_multicast", default "socketcan"), channel (the
    network interface, virtual channel name or multicast group; default "can0"), bitrate
    (default 125000; socketcan takes it from the system's interface set-up), group (0..62,
    default 0), addresses (module addresses as "0,1,2"; empty: discover the group), timeout_s
    (a module silent this long is a fault, default 2), poll_interval_s (default 0.5, at most
    half of timeout_s), monitor_address (this controller's address, 0x40..0xFF, default 0xF0).
    """
    options: dict[str, object] = dict(hardware.options)
    for name in options:
        if name not in _OPTION_NAMES:
            raise _registry.HardwareConfigError(
                f"EVSE {evse.id}: {_option_key(evse, name)}: unknown option of backend "
                f"{hardware.backend!r}; expected one of {', '.join(_OPTION_NAMES)}"
            )
    interface = options.get("interface", "socketcan")
    if interface not in INTERFACES:
        raise _config_error(evse, "interface", interface, " or ".join(map(repr, INTERFACES)))
    assert isinstance(interface, str)
    default_channel = "can0" if interface == "socketcan" else ""
    channel = options.get("channel", default_channel)
    if not isinstance(channel, str) or not channel.strip():
        raise _config_error(evse, "channel", channel, 'a non-empty string such as "can0"')
    if interface == "socketcan" and (len(channel) > 15 or "/" in channel or " " in channel):
        raise _config_error(evse, "channel", channel, "a network interface name such as can0")
    if interface == "udp_multicast":
        try:
            multicast = ipaddress.ip_address(channel).is_multicast
        except ValueError:
            multicast = False
        if not multicast:
            raise _config_error(evse, "channel", channel, "an IPv4 or IPv6 multicast address")
    bitrate = _int_option(evse, options, "bitrate", DEFAULT_BITRATE, 5000, 1000000)
    group = _int_option(evse, options, "group", 0, 0, MAX_MODULE_ADDRESS)
    addresses = _addresses_option(evse, options.get("addresses", ""))
    timeout_s = _number_option(evse, options, "timeout_s", DEFAULT_TIMEOUT_S, 600.0)
    poll_interval_s = _number_option(
        evse, options, "poll_interval_s", min(DEFAULT_POLL_INTERVAL_S, timeout_s / 4), 60.0
    )
    if poll_interval_s > timeout_s / 2:
        raise _config_error(
            evse,
            "poll_interval_s",
            options.get("poll_interval_s"),
            f"at most half of timeout_s ({timeout_s / 2:g})",
        )
    monitor = _int_option(evse, options, "monitor_address", CONTROLLER_ADDRESS, 0x40, 0xFF)
    return InfyPowerOptions(
        interface=interface,
        channel=channel,
        bitrate=bitrate,
        group=group,
        addresses=addresses,
        timeout_s=timeout_s,
        poll_interval_s=poll_interval_s,
        monitor_address=monitor,
    )


# --------------------------------------------------------------------------- the shared bus

FrameListener = Callable[[can.Message], None]
_MAX_QUEUED = 256


class CanLinkError(Exception):
    """The CAN interface could not be opened."""


class _CanLink:
    """One python-can bus, shared by every group on it (reference counted).

    A receive thread runs bus.recv and hands each message to the listeners on the event loop
    (call_soon_threadsafe); sends go through a one-thread executor, in order, so the loop never
    waits for the bus. Receive errors (an interface that went down) are logged once and retried.
    """

    def __init__(self, interface: str, channel: str, bitrate: int) -> None:
        self.interface = interface
        self.channel = channel
        self.bitrate = bitrate
        self.users: list[InfyPowerOptions] = []  # for conflict checks at build time
        self._listeners: list[FrameListener] = []
        self._bus: can.BusABC | None = None
        self._lock = asyncio.Lock()
        self._stop = threading.Event()
        self._rx_thread: threading.Thread | None = None
        self._tx: concurrent.futures.ThreadPoolExecutor | None = None
        self._send_failing = False
        self._queued = 0  # frames handed to the sender thread and not sent yet
        self._queued_lock = threading.Lock()
        self.dropped = 0  # frames dropped because the sender was _MAX_QUEUED behind
        self._dropping = False

    def _open(self) -> can.BusABC:
        try:
            return can.Bus(interface=self.interface, channel=self.channel, bitrate=self.bitrate)
        except Exception as exc:  # OSError, CanError, ImportError (msgpack) ...
            raise CanLinkError(f"{type(exc).__name__}: {exc}") from exc

    async def acquire(self, listener: FrameListener) -> None:
        async with self._lock:
            if self._bus is None:
                bus = await asyncio.to_thread(self._open)
                loop = asyncio.get_running_loop()
                self._bus = bus
                self._stop = threading.Event()
                self._tx = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix=f"can-tx-{self.channel}"
                )
                self._rx_thread = threading.Thread(
                    target=self._receive,
                    args=(bus, loop, self._stop),
                    name=f"can-rx-{self.channel}",
                    daemon=True,
                )
                self._rx_thread.start()
                log.info("opened CAN %s channel %s", self.interface, self.channel)
            self._listeners.append(listener)

    async def release(self, listener: FrameListener) -> None:
        async with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)
            if self._listeners or self._bus is None:
                return
            # Frames already queued (the "off" of close()) go out before the bus closes.
            tx, self._tx = self._tx, None
            if tx is not None:
                await asyncio.to_thread(tx.shutdown, True)
            bus, self._bus = self._bus, None
            rx, self._rx_thread = self._rx_thread, None
            self._stop.set()
            if rx is not None:
                await asyncio.to_thread(rx.join)
            await asyncio.to_thread(bus.shutdown)
            log.info("closed CAN %s channel %s", self.interface, self.channel)

    def send(self, message: can.Message) -> None:
        """Queue `message` for sending; never blocks. Dropped when the link is closed, or when
        the sender is _MAX_QUEUED frames behind (a bus where nobody acknowledges)."""
        tx = self._tx
        if tx is None:
            return
        with self._queued_lock:
            if self._queued >= _MAX_QUEUED:
                if not self._dropping:
                    log.warning("CAN %s: sending is stuck, dropping frames", self.channel)
                self._dropping = True
                self.dropped += 1
                return
            self._dropping = False
            self._queued += 1
        try:
            tx.submit(self._send_now, message)
        except RuntimeError:  # shut down meanwhile
            with self._queued_lock:
                self._queued -= 1

    def _send_now(self, message: can.Message) -> None:
        with self._queued_lock:
            self._queued -= 1
        bus = self._bus
        if bus is None:
            return
        try:
            bus.send(message, timeout=0.2)
        except Exception as exc:
            if not self._send_failing:
                log.warning("CAN %s: cannot send: %s", self.channel, exc)
            self._send_failing = True
        else:
            if self._send_failing:
                log.info("CAN %s: sending works again", self.channel)
            self._send_failing = False

    def _receive(
        self, bus: can.BusABC, loop: asyncio.AbstractEventLoop, stop: threading.Event
    ) -> None:
        failing = False
        while not stop.is_set():
            try:
                message = bus.recv(timeout=0.1)
            except Exception as exc:
                if stop.is_set():
                    return
                if not failing:
                    log.warning("CAN %s: receive failed: %s", self.channel, exc)
                failing = True
                stop.wait(0.2)
                continue
            if failing:
                log.info("CAN %s: receiving works again", self.channel)
                failing = False
            if message is None:
                continue
            try:
                loop.call_soon_threadsafe(self._dispatch, message)
            except RuntimeError:  # the loop is closed
                return

    def _dispatch(self, message: can.Message) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(message)
            except Exception:
                log.exception("CAN %s: listener failed on %s", self.channel, message)


# --------------------------------------------------------------------------- the driver


@dataclass(frozen=True, slots=True)
class ModuleState:
    """One module as the driver last saw it."""

    address: int
    present: bool  # answered within timeout_s
    voltage_v: float | None
    current_a: float | None
    status: ModuleStatus | None


class _Module:
    __slots__ = (
        "address",
        "current_a",
        "known_since",
        "last_seen",
        "silent",
        "status",
        "voltage_v",
    )

    def __init__(self, address: int, now: float) -> None:
        self.address = address
        self.known_since = now
        self.last_seen: float | None = None
        self.silent = False
        self.voltage_v: float | None = None
        self.current_a: float | None = None
        self.status: ModuleStatus | None = None

    @property
    def present(self) -> bool:
        return self.last_seen is not None and not self.silent


@dataclass(slots=True)
class FrameCounters:
    """What the driver received: for diagnostics and tests."""

    received: int = 0
    malformed: int = 0  # not an 8-byte extended data frame
    ignored: int = 0  # another destination, unknown module, other group, unused command
    rejected: int = 0  # a module answered with an error code
    accepted: int = 0


_HEALTHY_INFO = "power modules healthy"
_SILENT_INFO = "power module not answering"
_MAX_INFO = 50  # OCPP 1.6 StatusNotification.info


class InfyPowerGroup:
    """Several InfyPower modules driven as one DC output (hal.interfaces.PowerModule).

    Call `await start()` on the event loop before use and `await close()` at the end (close
    switches every known module off). set_output / set_enabled take effect at once (sent from
    the loop right after the call) and are repeated every poll, so a module that restarts gets
    them back.
    """

    def __init__(
        self,
        options: InfyPowerOptions,
        *,
        link: _CanLink | None = None,
        evse_id: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._options = options
        self._link = link or _CanLink(options.interface, options.channel, options.bitrate)
        self._evse_id = evse_id
        self._where = f"EVSE {evse_id} InfyPower group"
        self._clock = clock
        self._modules: dict[int, _Module] = {}
        self._module_count: int | None = None
        self._voltage_v = 0.0
        self._current_a = 0.0
        self._enabled = False
        self._callbacks: list[FaultCallback] = []
        self._reported: tuple[str | None, str] = (None, _HEALTHY_INFO)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._started_at = 0.0
        self._push_pending = False
        self._rejections: dict[tuple[int, int], int] = {}
        self.counters = FrameCounters()

    # ------------------------------------------------------------------ PowerModule

    def set_output(self, voltage_v: float, current_a: float) -> None:
        """Voltage setpoint for every module and the group's current limit, split equally
        across the answering modules. ValueError when out of range."""
        voltage = _checked("voltage_v", voltage_v, MAX_VOLTAGE_V)
        current = _checked("current_a", current_a, MAX_CURRENT_A)
        self._voltage_v, self._current_a = voltage, current
        self._schedule_push()

    def set_enabled(self, enabled: bool) -> None:
        """Switch the answering modules on (off: every known module, and the whole group when
        discovering)."""
        self._enabled = bool(enabled)
        self._schedule_push()

    async def read(self) -> PowerReading:
        """The group's output: the highest voltage and the summed current of the answering
        modules, and the readable faults (alarm bits, modules not answering)."""
        await asyncio.sleep(0)
        present = [m for m in self._sorted_modules() if m.present]
        voltage = max((m.voltage_v for m in present if m.voltage_v is not None), default=0.0)
        current = sum(m.current_a for m in present if m.current_a is not None)
        texts = tuple(fault.text for fault in self._fault_entries())
        return PowerReading(voltage_v=voltage, current_a=current, faults=texts)

    def on_fault(self, callback: FaultCallback) -> None:
        """`callback(code, info)` (on the loop, via call_soon) when the group's worst fault
        changes; `callback(None, info)` when every fault is gone."""
        self._callbacks.append(callback)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the CAN interface and start polling. HardwareConfigError when the interface
        cannot be opened (missing device, no SocketCAN, msgpack missing for udp_multicast)."""
        if self._task is not None:
            return
        options = self._options
        try:
            await self._link.acquire(self._on_message)
        except CanLinkError as exc:
            key = f"evse[{self._evse_id}].power_module.options.channel"
            raise _registry.HardwareConfigError(
                f"EVSE {self._evse_id}: {key}: cannot open CAN interface "
                f"{options.interface!r} channel {options.channel!r}: {exc}"
            ) from exc
        self._loop = asyncio.get_running_loop()
        self._started_at = self._clock()
        for address in options.addresses:
            self._modules[address] = _Module(address, self._started_at)
        self._task = self._loop.create_task(self._poll_forever(), name=f"infypower {self._where}")

    async def close(self) -> None:
        """Switch every known module off, stop polling and release the interface."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self._enabled = False
        self._send_off()
        await self._link.release(self._on_message)
        self._loop = None

    # ------------------------------------------------------------------ observation

    @property
    def options(self) -> InfyPowerOptions:
        return self._options

    @property
    def addresses(self) -> tuple[int, ...]:
        """Every module address known: configured, or discovered so far."""
        return tuple(sorted(self._modules))

    @property
    def present_addresses(self) -> tuple[int, ...]:
        """The modules that answered within timeout_s (the ones sharing the current)."""
        return tuple(m.address for m in self._sorted_modules() if m.present)

    @property
    def module_count(self) -> int | None:
        """The module count the group last reported (discovery only), None before."""
        return self._module_count

    def modules(self) -> tuple[ModuleState, ...]:
        return tuple(
            ModuleState(m.address, m.present, m.voltage_v, m.current_a, m.status)
            for m in self._sorted_modules()
        )

    # ------------------------------------------------------------------ sending

    def _send(
        self, command: Command, destination: int, data: bytes, device: Device = Device.SINGLE
    ) -> None:
        frame_id = FrameId(command, destination, self._options.monitor_address, device)
        self._link.send(make_message(frame_id, data))

    def _schedule_push(self) -> None:
        loop = self._loop
        if loop is None or self._push_pending:
            return
        self._push_pending = True
        loop.call_soon(self._push)

    def _push(self) -> None:
        """Send setpoints and on/off: each answering module its share; off to the others."""
        self._push_pending = False
        if self._task is None:
            return
        modules = self._sorted_modules()
        present = [m for m in modules if m.present]
        share = self._current_a / len(present) if present else 0.0
        setpoint = encode_set_output(self._voltage_v, share)
        for module in modules:
            if module.present:
                self._send(Command.SET_MODULE_OUTPUT, module.address, setpoint)
                self._send(Command.SET_ON_OFF, module.address, encode_on_off(self._enabled))
            else:
                self._send(Command.SET_ON_OFF, module.address, encode_on_off(False))
        if not self._enabled and self._options.discovery:
            self._send(Command.SET_ON_OFF, self._options.group, encode_on_off(False), Device.GROUP)

    def _send_off(self) -> None:
        for module in self._sorted_modules():
            self._send(Command.SET_ON_OFF, module.address, encode_on_off(False))
        if self._options.discovery:
            self._send(Command.SET_ON_OFF, self._options.group, encode_on_off(False), Device.GROUP)

    async def _poll_forever(self) -> None:
        while True:
            try:
                self._poll()
            except Exception:
                log.exception("%s: poll failed", self._where)
            await asyncio.sleep(self._options.poll_interval_s)

    def _poll(self) -> None:
        self._evaluate()
        options = self._options
        if options.discovery:
            self._send(Command.READ_MODULE_COUNT, options.group, READ_REQUEST, Device.GROUP)
            self._send(Command.READ_MODULE_STATUS, options.group, READ_REQUEST, Device.GROUP)
        for module in self._sorted_modules():
            if not options.discovery:
                self._send(Command.READ_MODULE_STATUS, module.address, READ_REQUEST)
            self._send(Command.READ_MODULE_OUTPUT, module.address, READ_REQUEST)
        self._schedule_push()

    # ------------------------------------------------------------------ receiving

    def _on_message(self, message: can.Message) -> None:
        counters = self.counters
        counters.received += 1
        try:
            frame = decode_frame(message)
        except FrameError as exc:
            counters.malformed += 1
            log.debug("%s: ignoring frame %s: %s", self._where, message, exc)
            return
        fid = frame.id
        if fid.destination != self._options.monitor_address or fid.source > MAX_MODULE_ADDRESS:
            counters.ignored += 1
            return
        module = self._modules.get(fid.source)
        if fid.command == Command.READ_MODULE_STATUS and fid.error == ErrorCode.NORMAL:
            status = decode_status(frame.data)
            if self._options.discovery:
                if status.group != self._options.group:
                    module = None  # another group's module (or one moved away): not ours
                elif module is None:
                    module = self._discover(fid.source)
            if module is None:
                counters.ignored += 1
                return
            self._accept(module)
            if module.status != status:
                module.status = status
                self._evaluate()
            return
        if module is None:
            counters.ignored += 1
            return
        if fid.error != ErrorCode.NORMAL:
            counters.rejected += 1
            self._rejected(module, fid)
            self._accept(module)
            return
        if fid.command == Command.READ_MODULE_OUTPUT:
            try:
                voltage, current = decode_module_output(frame.data)
            except FrameError as exc:
                counters.malformed += 1
                log.debug("%s: module %d: %s", self._where, module.address, exc)
                return
            if not (0.0 <= voltage <= 2 * MAX_VOLTAGE_V and abs(current) <= MAX_CURRENT_A):
                counters.malformed += 1
                log.debug(
                    "%s: module %d: implausible output %r V %r A",
                    self._where,
                    module.address,
                    voltage,
                    current,
                )
                return
            module.voltage_v, module.current_a = voltage, current
            self._accept(module)
        elif fid.command == Command.READ_MODULE_COUNT:
            self._module_count = decode_module_count(frame.data)
            self._accept(module)
        elif fid.command in (Command.SET_MODULE_OUTPUT, Command.SET_ON_OFF):
            self._accept(module)  # an acknowledgement
        else:
            counters.ignored += 1

    def _discover(self, address: int) -> _Module:
        module = _Module(address, self._clock())
        self._modules[address] = module
        log.info("%s: found module %d in group %d", self._where, address, self._options.group)
        return module

    def _accept(self, module: _Module) -> None:
        self.counters.accepted += 1
        was_present = module.present
        module.last_seen = self._clock()
        if module.silent:
            log.info("%s: module %d answers again", self._where, module.address)
        module.silent = False
        if not was_present:
            self._evaluate()
            self._schedule_push()

    def _rejected(self, module: _Module, fid: FrameId) -> None:
        key = (module.address, fid.command)
        if self._rejections.get(key) != fid.error:
            self._rejections[key] = fid.error
            try:
                reason = ErrorCode(fid.error).name.lower()
            except ValueError:
                reason = f"error {fid.error}"
            log.warning(
                "%s: module %d refused command %#04x: %s",
                self._where,
                module.address,
                fid.command,
                reason,
            )

    # ------------------------------------------------------------------ faults

    def _sorted_modules(self) -> list[_Module]:
        return [self._modules[a] for a in sorted(self._modules)]

    def _fault_entries(self) -> list[_Fault]:
        entries: list[_Fault] = []
        for module in self._sorted_modules():
            if module.silent:
                text = f"module {module.address}: not answering"
                entries.append(_Fault("InternalError", text, str(module.address)))
            elif module.status is not None:
                for name in fault_names(module.status.bits):
                    code = FAULT_CODES[StatusBit[name.upper()]]
                    entries.append(_Fault(code, f"module {module.address}: {name}"))
        if (
            self._options.discovery
            and not self._modules
            and self._loop is not None
            and self._clock() - self._started_at > self._options.timeout_s
        ):
            group = f"no module of group {self._options.group}"
            entries.append(_Fault("InternalError", group, group))
        return entries

    def _evaluate(self) -> None:
        """Mark modules silent after timeout_s, then report the worst fault if it changed."""
        now = self._clock()
        presence_changed = False
        for module in self._sorted_modules():
            since = module.last_seen if module.last_seen is not None else module.known_since
            if not module.silent and now - since > self._options.timeout_s:
                module.silent = True
                presence_changed = True
                log.warning(
                    "%s: module %d not answering for %.1f s",
                    self._where,
                    module.address,
                    now - since,
                )
        self._report(self._fault_entries())
        if presence_changed:
            self._schedule_push()

    def _report(self, entries: Sequence[_Fault]) -> None:
        code = next((c for c in _CODE_ORDER if any(e.code == c for e in entries)), None)
        if code is None:
            state: tuple[str | None, str] = (None, _HEALTHY_INFO)
        else:
            state = (code, _summary(code, entries))
        if state == self._reported:
            return
        previous, self._reported = self._reported, state
        if state[0] is None and previous[0] is None:
            return
        if state[0] is None:
            log.info("%s: faults cleared", self._where)
        else:
            log.warning("%s: fault %s: %s", self._where, state[0], state[1])
        loop = self._loop
        if loop is None:
            return
        for callback in tuple(self._callbacks):
            loop.call_soon(callback, state[0], state[1])


class _Fault(NamedTuple):
    code: str  # OCPP 1.6 ChargePointErrorCode
    text: str  # readable, for PowerReading.faults
    silent: str | None = None  # the silent module (or "no module of group N")


def _summary(code: str, entries: Iterable[_Fault]) -> str:
    """The info of the reported fault: who is silent, else the first alarm of `code`."""
    faults = [fault for fault in entries if fault.code == code]
    silent = [fault.silent for fault in faults if fault.silent is not None]
    if silent and silent[0].startswith("no module"):
        info = f"{_SILENT_INFO}: {silent[0]}"
    elif silent:
        plural = "modules" if len(silent) > 1 else "module"
        info = f"{_SILENT_INFO}: {plural} {', '.join(silent)}"
    else:
        info = faults[0].text + (f" (+{len(faults) - 1} more)" if len(faults) > 1 else "")
    return info if len(info) <= _MAX_INFO else info[: _MAX_INFO - 3] + "..."


def _checked(name: str, value: float, high: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= high
    ):
        raise ValueError(f"{name} must be a number 0..{high:g}, not {value!r}")
    return float(value)


# --------------------------------------------------------------------------- build


def _link_key(options: InfyPowerOptions) -> str:
    return f"can:{options.interface}:{options.channel}"


def build(evse: Evse, hardware: Hardware, shared: dict[str, object]) -> InfyPowerGroup:
    """The InfyPower group of `evse` from its options (see `parse_options`).

    Groups on one CAN interface share one bus (kept in `shared`); they must not drive the
    same modules: the same group in discovery, or a module address twice, is refused.
    """
    options = parse_options(evse, hardware)
    key = _link_key(options)
    link = shared.get(key)
    if link is None:
        link = _CanLink(options.interface, options.channel, options.bitrate)
        shared[key] = link
    assert isinstance(link, _CanLink)
    if link.bitrate != options.bitrate:
        raise _config_error(
            evse,
            "bitrate",
            options.bitrate,
            f"{link.bitrate}, the bitrate another device set for {options.channel}",
        )
    for other in link.users:
        clash = (options.discovery and other.discovery and options.group == other.group) or bool(
            set(options.addresses) & set(other.addresses)
        )
        if clash:
            name = "group" if options.discovery else "addresses"
            value = options.group if options.discovery else ",".join(map(str, options.addresses))
            raise _config_error(
                evse, name, value, f"modules no other EVSE drives on {options.channel}"
            )
    link.users.append(options)
    return InfyPowerGroup(options, link=link, evse_id=evse.id)
