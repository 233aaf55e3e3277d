"""A simulator of InfyPower DC power modules answering on a CAN bus with the V1.x frames.

`InfyPowerSimulator` owns a python-can bus (virtual, socketcan or udp_multicast) and a thread
that answers every request the way the modules would (hal.power.infypower documents the
frames): each module has an address, a group, a voltage setpoint, a current limit and on/off.
It answers requests addressed to itself, to the broadcast address 0x3F and to its group
(device number 0x0B); set commands are acknowledged with the same payload, values a module
cannot do are refused with error code 3 (data invalid), unknown commands with error code 2.
A group's module count is answered by its lowest-address module only.

Physics: the modules that are on (and not tripped by an alarm) feed one resistive load in
parallel. The bus voltage approaches its target with a first-order lag (`time_constant_s`):
the highest voltage setpoint when the load draws no more than the summed current limits,
otherwise (current limiting) the summed limits times the load resistance. The load current
V / R is shared in proportion to the modules' limits. A module that is off, or tripped by an
alarm (over-voltage, short circuit, over-temperature, internal fault), delivers nothing and
shows "DC side off" in its status; like the real modules, one that heard nothing from the
controller for `comm_timeout_s` (10 s) switches itself off.

Fault injection for tests: `set_alarm` (any StatusBit), `set_silent` (the module neither hears
nor answers, as if unplugged from the bus), `set_load`, `inject` (raw frames) and
`send_garbage` (short, standard, remote, error frames, frames for another controller, replies
from unknown modules or other groups, NaN readings, error replies).

The control methods are thread-safe. Run it standalone across processes with
`python -m hal.sim.infypower --interface udp_multicast --channel 239.74.163.2 --addresses 0,1,2`:
it prints "ready" and then takes commands on stdin ("silent 1", "talk 1", "alarm 1 0x1000",
"load 10", "garbage", "quit").
"""

from __future__ import annotations

import argparse
import contextlib
import math
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import can

from hal.power.infypower import (
    BROADCAST_ADDRESS,
    CONTROLLER_ADDRESS,
    Command,
    Device,
    ErrorCode,
    FrameError,
    FrameId,
    ModuleStatus,
    StatusBit,
    decode_frame,
    decode_on_off,
    decode_set_output,
    encode_id,
    encode_module_count,
    encode_module_output,
    encode_set_output,
    encode_status,
    make_message,
)

__all__ = ["TRIPPING_ALARMS", "InfyPowerSimulator", "SimModule", "garbage_frames", "main"]

# Alarms that make a module cut its output while they last.
TRIPPING_ALARMS = (
    StatusBit.OUTPUT_OVER_VOLTAGE
    | StatusBit.OUTPUT_SHORT
    | StatusBit.OVER_TEMPERATURE
    | StatusBit.FAULT
)


@dataclass(frozen=True, slots=True)
class SimModule:
    """One simulated module at one instant."""

    address: int
    group: int
    on: bool  # as commanded
    set_voltage_v: float
    set_current_a: float
    voltage_v: float  # measured output
    current_a: float
    alarms: StatusBit
    silent: bool
    temperature_c: int
    frames_heard: int  # requests this module took (not counting while silent)


class _Module:
    def __init__(self, address: int, group: int, now: float) -> None:
        self.address = address
        self.group = group
        self.on = False
        self.set_voltage_v = 0.0
        self.set_current_a = 0.0
        self.alarms = StatusBit(0)
        self.silent = False
        self.temperature_c = 25
        self.last_heard = now
        self.frames_heard = 0

    @property
    def delivering(self) -> bool:
        return self.on and not (self.alarms & TRIPPING_ALARMS)


class InfyPowerSimulator:
    """N InfyPower modules on one CAN channel; start() it, stop() it (or use `with`)."""

    def __init__(
        self,
        *,
        interface: str = "virtual",
        channel: str = "infypower",
        addresses: Sequence[int] = (0, 1, 2),
        group: int = 0,
        bitrate: int = 125000,
        load_ohm: float = 10.0,
        time_constant_s: float = 0.05,
        max_voltage_v: float = 1000.0,
        min_voltage_v: float = 0.0,
        max_current_a: float = 100.0,
        comm_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if len(set(addresses)) != len(addresses) or not all(
            0 <= a < BROADCAST_ADDRESS for a in addresses
        ):
            raise ValueError(f"module addresses must be distinct 0..62, not {addresses!r}")
        self.interface = interface
        self.channel = channel
        self.bitrate = bitrate
        self.max_voltage_v = max_voltage_v
        self.min_voltage_v = min_voltage_v
        self.max_current_a = max_current_a
        self.comm_timeout_s = comm_timeout_s
        self.time_constant_s = time_constant_s
        self._clock = clock
        now = clock()
        self._modules = {a: _Module(a, group, now) for a in sorted(addresses)}
        self._load_ohm = float(load_ohm)
        self._bus_voltage = 0.0
        self._last_step = now
        self._lock = threading.Lock()
        self._outbox: queue.SimpleQueue[can.Message] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bus: can.BusABC | None = None
        self.requests = 0  # frames taken as requests by at least one module

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._thread is not None:
            return
        self._bus = can.Bus(interface=self.interface, channel=self.channel, bitrate=self.bitrate)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="infypower-sim", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(5)
        if self._bus is not None:
            self._bus.shutdown()
            self._bus = None

    def __enter__(self) -> InfyPowerSimulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ control

    def module(self, address: int) -> SimModule:
        with self._lock:
            self._step(self._clock())
            return self._snapshot(self._modules[address])

    def modules(self) -> tuple[SimModule, ...]:
        with self._lock:
            self._step(self._clock())
            return tuple(self._snapshot(m) for m in self._modules.values())

    @property
    def bus_voltage_v(self) -> float:
        with self._lock:
            self._step(self._clock())
            return self._bus_voltage

    @property
    def load_current_a(self) -> float:
        with self._lock:
            self._step(self._clock())
            return self._load_current()

    def set_alarm(self, address: int, alarms: StatusBit | int) -> None:
        """Replace the module's alarm bits (0 clears them)."""
        with self._lock:
            self._step(self._clock())
            self._modules[address].alarms = StatusBit(alarms)

    def set_silent(self, address: int, silent: bool = True) -> None:
        """A silent module neither hears nor answers, as if cut from the bus."""
        with self._lock:
            module = self._modules[address]
            if module.silent and not silent:
                module.last_heard = self._clock()
            module.silent = bool(silent)

    def set_temperature(self, address: int, celsius: int) -> None:
        with self._lock:
            self._modules[address].temperature_c = int(celsius)

    def set_load(self, ohm: float) -> None:
        """The load resistance; math.inf is an open circuit."""
        if not ohm > 0:
            raise ValueError(f"load resistance must be > 0, not {ohm!r}")
        with self._lock:
            self._step(self._clock())
            self._load_ohm = float(ohm)

    def inject(self, messages: Iterable[can.Message]) -> None:
        """Send raw frames on the bus from the simulator's side."""
        for message in messages:
            self._outbox.put(message)

    def send_garbage(self, controller: int = CONTROLLER_ADDRESS) -> int:
        """Send `garbage_frames(...)` for this simulator's modules; returns how many."""
        with self._lock:
            first = next(iter(self._modules))
            group = next(iter(self._modules.values())).group
        frames = garbage_frames(controller, first, group)
        self.inject(frames)
        return len(frames)

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        bus = self._bus
        assert bus is not None
        while not self._stop.is_set():
            while True:
                try:
                    outgoing = self._outbox.get_nowait()
                except queue.Empty:
                    break
                self._send(bus, outgoing)
            try:
                message = bus.recv(timeout=0.01)
            except Exception:
                self._stop.wait(0.05)
                continue
            with self._lock:
                self._step(self._clock())
                replies = self._handle(message) if message is not None else []
            for reply in replies:
                self._send(bus, reply)

    @staticmethod
    def _send(bus: can.BusABC, message: can.Message) -> None:
        # A full or downed interface loses the frame, as on a real bus.
        with contextlib.suppress(Exception):
            bus.send(message, timeout=0.2)

    # ------------------------------------------------------------------ the protocol

    def _handle(self, message: can.Message) -> list[can.Message]:
        try:
            frame = decode_frame(message)
        except FrameError:
            return []
        fid = frame.id
        if fid.source <= BROADCAST_ADDRESS or fid.error != ErrorCode.NORMAL:
            return []  # from another module, or itself a reply
        targets = [
            m
            for m in self._modules.values()
            if not m.silent
            and (
                (fid.device == Device.SINGLE and fid.destination in (m.address, BROADCAST_ADDRESS))
                or (fid.device == Device.GROUP and fid.destination == m.group)
            )
        ]
        if targets:
            self.requests += 1
        now = self._clock()
        replies: list[can.Message] = []
        for module in targets:
            module.last_heard = now
            module.frames_heard += 1
            answer = self._answer(module, fid, frame.data, targets)
            if answer is not None:
                error, data = answer
                reply_id = FrameId(fid.command, fid.source, module.address, fid.device, error)
                replies.append(make_message(reply_id, data))
        return replies

    def _answer(
        self, module: _Module, fid: FrameId, data: bytes, targets: Sequence[_Module]
    ) -> tuple[int, bytes] | None:
        command = fid.command
        if command == Command.READ_MODULE_COUNT:
            if module is not targets[0]:
                return None
            count = sum(
                1 for m in self._modules.values() if not m.silent and m.group == module.group
            )
            if fid.device == Device.SINGLE:
                count = sum(1 for m in self._modules.values() if not m.silent)
            return ErrorCode.NORMAL, encode_module_count(count)
        if command == Command.READ_MODULE_OUTPUT:
            voltage, current = self._output(module)
            return ErrorCode.NORMAL, encode_module_output(voltage, current)
        if command == Command.READ_MODULE_STATUS:
            bits = module.alarms
            if not module.delivering:
                bits |= StatusBit.DC_OFF
            status = ModuleStatus(module.group, max(-128, min(127, module.temperature_c)), bits)
            return ErrorCode.NORMAL, encode_status(status)
        if command == Command.SET_MODULE_OUTPUT:
            voltage, current = decode_set_output(data)
            if not (
                self.min_voltage_v <= voltage <= self.max_voltage_v
                and current <= self.max_current_a
            ):
                return ErrorCode.DATA_INVALID, data
            module.set_voltage_v, module.set_current_a = voltage, current
            return ErrorCode.NORMAL, encode_set_output(voltage, current)
        if command == Command.SET_ON_OFF:
            try:
                module.on = decode_on_off(data)
            except FrameError:
                return ErrorCode.DATA_INVALID, data
            return ErrorCode.NORMAL, data
        return ErrorCode.COMMAND_INVALID, bytes(8)

    # ------------------------------------------------------------------ the physics

    def _step(self, now: float) -> None:
        """Advance the output from the last step to `now` (under the lock)."""
        dt = now - self._last_step
        if dt <= 0:
            return
        self._last_step = now
        for module in self._modules.values():
            if module.on and now - module.last_heard > self.comm_timeout_s:
                module.on = False  # the module's own watchdog
        target = self._target_voltage()
        tau = self.time_constant_s
        factor = 1.0 if tau <= 0 else 1.0 - math.exp(-dt / tau)
        self._bus_voltage += (target - self._bus_voltage) * factor
        if abs(self._bus_voltage - target) < 1e-6:
            self._bus_voltage = target

    def _target_voltage(self) -> float:
        feeding = [m for m in self._modules.values() if m.delivering]
        if not feeding:
            return 0.0
        setpoint = max(m.set_voltage_v for m in feeding)
        limit = sum(m.set_current_a for m in feeding)
        if math.isinf(self._load_ohm) or setpoint / self._load_ohm <= limit:
            return setpoint
        return limit * self._load_ohm

    def _load_current(self) -> float:
        if math.isinf(self._load_ohm):
            return 0.0
        return self._bus_voltage / self._load_ohm

    def _output(self, module: _Module) -> tuple[float, float]:
        if not module.delivering:
            return 0.0, 0.0
        feeding = [m for m in self._modules.values() if m.delivering]
        limit = sum(m.set_current_a for m in feeding)
        share = module.set_current_a / limit if limit > 0 else 1.0 / len(feeding)
        return self._bus_voltage, self._load_current() * share

    def _snapshot(self, module: _Module) -> SimModule:
        voltage, current = self._output(module)
        return SimModule(
            address=module.address,
            group=module.group,
            on=module.on,
            set_voltage_v=module.set_voltage_v,
            set_current_a=module.set_current_a,
            voltage_v=voltage,
            current_a=current,
            alarms=module.alarms,
            silent=module.silent,
            temperature_c=module.temperature_c,
            frames_heard=module.frames_heard,
        )


def garbage_frames(controller: int, module: int, group: int) -> list[can.Message]:
    """Frames a driver must ignore: each is malformed or not meant for it. `module` is a real
    module's address, `group` its group, `controller` the driver's address."""
    output = FrameId(Command.READ_MODULE_OUTPUT, controller, module)
    status = FrameId(Command.READ_MODULE_STATUS, controller, module)
    huge = encode_module_output(999.0, 999.0)
    alarmed = encode_status(ModuleStatus(group, 25, StatusBit(0xFFFFFF)))
    other_group = encode_status(ModuleStatus((group + 1) % 63, 25, StatusBit(0xFFFFFF)))

    def raw(frame_id: FrameId, data: bytes) -> can.Message:
        return can.Message(arbitration_id=encode_id(frame_id), data=data, is_extended_id=True)

    nan = bytes.fromhex("7fc00000") + bytes.fromhex("41a00000")
    return [
        raw(output, huge[:4]),  # truncated reply
        raw(status, alarmed[:7]),  # truncated status
        raw(status, b""),  # empty
        can.Message(arbitration_id=0x123, data=huge, is_extended_id=False),  # standard id
        can.Message(
            arbitration_id=encode_id(output), is_extended_id=True, is_remote_frame=True, dlc=8
        ),
        can.Message(is_error_frame=True, arbitration_id=0, data=b""),
        make_message(FrameId(Command.READ_MODULE_OUTPUT, (controller + 1) & 0xFF, module), huge),
        make_message(FrameId(Command.READ_MODULE_STATUS, (controller + 1) & 0xFF, module), alarmed),
        make_message(FrameId(Command.READ_MODULE_OUTPUT, controller, 0x30), huge),  # unknown
        make_message(FrameId(Command.READ_MODULE_STATUS, controller, 0x31), other_group),
        make_message(output, nan),  # NaN voltage
        make_message(output, encode_module_output(-5.0, 1e9)),  # implausible
        make_message(FrameId(0x3E, controller, module), huge),  # unused command
        make_message(FrameId(Command.READ_MODULE_OUTPUT, controller, 0xF3), huge),  # not a module
        make_message(FrameId(Command.READ_MODULE_OUTPUT, controller, 0x3F), huge),  # broadcast
    ]


def _parse_addresses(text: str) -> list[int]:
    return [int(part, 0) for part in text.split(",") if part.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """Run a simulator until "quit" or end of stdin (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m hal.sim.infypower")
    parser.add_argument("--interface", default="virtual")
    parser.add_argument("--channel", default="infypower")
    parser.add_argument("--addresses", default="0,1,2")
    parser.add_argument("--group", type=int, default=0)
    parser.add_argument("--load-ohm", type=float, default=10.0)
    args = parser.parse_args(argv)
    sim = InfyPowerSimulator(
        interface=args.interface,
        channel=args.channel,
        addresses=_parse_addresses(args.addresses),
        group=args.group,
        load_ohm=args.load_ohm,
    )
    with sim:
        print("ready", flush=True)
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            try:
                if words[0] == "quit":
                    break
                if words[0] == "silent":
                    sim.set_silent(int(words[1], 0))
                elif words[0] == "talk":
                    sim.set_silent(int(words[1], 0), False)
                elif words[0] == "alarm":
                    sim.set_alarm(int(words[1], 0), int(words[2], 0))
                elif words[0] == "load":
                    sim.set_load(float(words[1]))
                elif words[0] == "garbage":
                    sim.send_garbage()
                elif words[0] == "state":
                    for m in sim.modules():
                        print(
                            f"module {m.address} on={int(m.on)} set={m.set_voltage_v:g}/"
                            f"{m.set_current_a:g} out={m.voltage_v:.1f}/{m.current_a:.2f}",
                            flush=True,
                        )
                else:
                    raise ValueError(words[0])
            except (ValueError, IndexError, KeyError) as exc:
                print(f"error {exc}", flush=True)
                continue
            print("ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
