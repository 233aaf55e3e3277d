"""Simulated Modbus energy meters: a pymodbus server serving any register map with live values.

- `SimulatedModbusMeter`: one meter (a map from hal.meter.maps and a unit id) whose per-phase
  voltage, current and power, imported and exported energy and frequency are set with
  `set_values()` and served, encoded as the map says, on every request. Fault switches
  (`set_fault`): SILENT (no answer), EXCEPTION (a Modbus exception response), GARBAGE (an
  answer with a broken checksum — RTU — or a broken header — TCP), WRONG_UNIT (the answer
  carries another unit id) and ENERGY_BACKWARDS (the energy registers read lower than the
  true count).
- Signing: a map with a `[signed]` table (evsed_ocmf) makes the meter sign. It serves an
  OCMF-like record "OCMF|{payload}|{signature}" of its imported energy register (the payload
  JSON with the reading in kWh, a pagination counter and the time; the signature JSON with
  "SA": "ECDSA-secp256r1-SHA256" and "SD": the DER signature of the payload text, as hex),
  signed with an ECDSA P-256 key made with `cryptography` (or the one given), and its public
  key (DER SubjectPublicKeyInfo, as the map's public_key_format says). `set_signed_fault`
  serves a broken record instead (too long, not ASCII, a bad public key, no record). Like a
  real signing meter it signs a new snapshot once per `record_period_s` while energy flows
  (`advance`, which signs the register as the period ends); a value set with `set_values` is
  signed at once.
- `ModbusMeterServer`: a pymodbus server (pymodbus.simulator SimDevice per meter) on
  127.0.0.1 (TCP) or on one end of a `PtyLink` (RTU); several meters share one server the way
  they share an RS-485 line. On RTU a request for a unit id no meter has goes unanswered, as on
  a real bus.
- `PtyLink`: two pseudo-terminals joined like a null-modem cable, reached through stable
  symlinks; `inject()` writes junk onto evsed's end of the line, `unplug()` / `replug()` make
  evsed's serial port disappear and come back.

Everything runs on the asyncio loop of the caller (tests, demos).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import os
import shutil
import tempfile
import tty
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from hal.interfaces import MeterReading
from hal.meter.maps import Function, MeterMap, Register, registers_for, resolve_map

__all__ = [
    "OCMF_SIGNING_METHOD",
    "MeterFault",
    "ModbusMeterServer",
    "PtyLink",
    "SignedFault",
    "SimulatedModbusMeter",
    "split_ocmf",
]

OCMF_SIGNING_METHOD = "ECDSA-secp256r1-SHA256"

PhaseValues = float | Sequence[float]


class MeterFault(StrEnum):
    SILENT = "silent"
    EXCEPTION = "exception"
    GARBAGE = "garbage"
    WRONG_UNIT = "wrong_unit"
    ENERGY_BACKWARDS = "energy_backwards"


class SignedFault(StrEnum):
    """Broken signed records the simulated meter can serve."""

    TOO_LONG = "too_long"  # the length register says more than the map's max_length
    NOT_ASCII = "not_ascii"  # the record holds bytes outside printable ASCII
    BAD_PUBLIC_KEY = "bad_public_key"  # the public key registers hold no hex / base64 text
    NO_RECORD = "no_record"  # the length register is 0


def split_ocmf(record: str) -> tuple[str, dict[str, object]]:
    """The payload text and the signature object of an "OCMF|{payload}|{signature}" record;
    ValueError when it is not one (what a CSMS would do before verifying)."""
    parts = record.split("|")
    if len(parts) != 3 or parts[0] != "OCMF":
        raise ValueError("not an OCMF|payload|signature record")
    signature = json.loads(parts[2])
    if not isinstance(signature, dict):
        raise ValueError("OCMF signature is not a JSON object")
    return parts[1], signature


def _crc16(data: bytes) -> bytes:
    """Modbus RTU CRC-16 as sent on the wire (low byte first)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


class SimulatedModbusMeter:
    """One simulated meter: a register map, a unit id, the values it measures and its faults."""

    def __init__(
        self,
        meter_map: MeterMap | str,
        unit_id: int = 1,
        *,
        voltage_v: PhaseValues = 230.0,
        current_a: PhaseValues = 0.0,
        power_w: PhaseValues | None = None,
        energy_import_wh: float = 0.0,
        energy_export_wh: float = 0.0,
        frequency_hz: float = 50.0,
        signing_key: ec.EllipticCurvePrivateKey | None = None,
    ) -> None:
        self.map = resolve_map(meter_map) if isinstance(meter_map, str) else meter_map
        # Signing (maps with a [signed] table): the key, the record of the served energy.
        self.signing_key = signing_key or ec.generate_private_key(ec.SECP256R1())
        self.signed_fault: SignedFault | None = None
        self.records = 0  # signed records made (the OCMF pagination counter)
        self._record: tuple[float, str] | None = None  # (energy served, record)
        self.record_period_s = 1.0  # while energy flows (advance), a new record this often
        self._unsigned_s = 0.0  # time advanced since the last record period began
        if not 1 <= unit_id <= 247:
            raise ValueError(f"unit id {unit_id}: expected 1..247")
        self.unit_id = unit_id
        self.requests = 0  # requests this meter received (answered or not)
        # Called with (function code, first address asked) as each request arrives, before it is
        # answered: tests change the values between a driver's requests with it.
        self.on_request: Callable[[int, int], None] | None = None
        self.fault: MeterFault | None = None
        self.exception_code = ExcCodes.DEVICE_FAILURE
        self.backwards_wh = 1000.0
        self.wrong_unit_id = unit_id % 247 + 1
        phases = self.map.phases
        self._voltage: tuple[float, ...] = (0.0,) * phases
        self._current: tuple[float, ...] = (0.0,) * phases
        self._power: tuple[float, ...] = (0.0,) * phases
        self._energy_import = 0.0
        self._energy_export = 0.0
        self._frequency = 50.0
        self.set_values(
            voltage_v=voltage_v,
            current_a=current_a,
            power_w=power_w,
            energy_import_wh=energy_import_wh,
            energy_export_wh=energy_export_wh,
            frequency_hz=frequency_hz,
        )

    # -- values --------------------------------------------------------------------------------

    def _phases(self, value: PhaseValues, what: str) -> tuple[float, ...]:
        if isinstance(value, int | float):
            return (float(value),) * self.map.phases
        values = tuple(float(v) for v in value)
        if len(values) != self.map.phases:
            raise ValueError(f"{what}: {len(values)} values for a {self.map.phases}-phase meter")
        return values

    def set_values(
        self,
        *,
        voltage_v: PhaseValues | None = None,
        current_a: PhaseValues | None = None,
        power_w: PhaseValues | None = None,
        energy_import_wh: float | None = None,
        energy_export_wh: float | None = None,
        frequency_hz: float | None = None,
    ) -> None:
        """Change what the meter measures; per-phase values take one number for all phases or
        one per phase. Power follows voltage x current unless given. Raises ValueError (and
        changes nothing) when a value does not fit its register."""
        before = (
            self._voltage,
            self._current,
            self._power,
            self._energy_import,
            self._energy_export,
            self._frequency,
        )
        if voltage_v is not None:
            self._voltage = self._phases(voltage_v, "voltage_v")
        if current_a is not None:
            self._current = self._phases(current_a, "current_a")
        if power_w is not None:
            self._power = self._phases(power_w, "power_w")
        elif voltage_v is not None or current_a is not None:
            self._power = tuple(v * i for v, i in zip(self._voltage, self._current, strict=True))
        if energy_import_wh is not None:
            self._energy_import = float(energy_import_wh)
            self._record = None  # a value set is signed at once
        if energy_export_wh is not None:
            self._energy_export = float(energy_export_wh)
        if frequency_hz is not None:
            self._frequency = float(frequency_hz)
        try:
            for register in self.map.registers.values():
                register.encode(self._served(register.name))
        except ValueError:
            (
                self._voltage,
                self._current,
                self._power,
                self._energy_import,
                self._energy_export,
                self._frequency,
            ) = before
            raise

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass at the present power: positive total power adds to the imported
        energy, negative to the exported."""
        energy = sum(self._power) * seconds / 3600.0
        self._unsigned_s += seconds
        if energy >= 0:
            self._energy_import += energy
        else:
            self._energy_export -= energy
        # A new record period (with a little slack: ten steps of 0.1 s add up to 0.999...):
        # the meter signs its register now, as a real one does, not when it is next read.
        if energy and self._unsigned_s >= self.record_period_s - 1e-6:
            self._unsigned_s = 0.0
            self._record = None
            if self.map.signed is not None:
                self.signed_record()

    @property
    def values(self) -> MeterReading:
        """What the meter measures (exported energy and frequency only when mapped)."""
        return MeterReading(
            energy_import_wh=self._energy_import,
            voltage_v=self._voltage,
            current_a=self._current,
            power_w=self._power,
            energy_export_wh=self._energy_export if "energy_export" in self.map.registers else None,
            frequency_hz=self._frequency if "frequency" in self.map.registers else None,
        )

    def _served(self, name: str) -> float:
        """The value register `name` shows now (faults included)."""
        if name.startswith("energy_"):
            true = self._energy_import if name == "energy_import" else self._energy_export
            if self.fault is MeterFault.ENERGY_BACKWARDS:
                return max(0.0, true - self.backwards_wh)
            return true
        if name == "frequency":
            return self._frequency
        kind, phase = name.rsplit("_l", 1)
        series = {"voltage": self._voltage, "current": self._current, "power": self._power}
        return series[kind][int(phase) - 1]

    # -- signing -------------------------------------------------------------------------------

    @property
    def public_key_der(self) -> bytes:
        """The meter's public key as DER SubjectPublicKeyInfo."""
        return self.signing_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def signed_record(self) -> str:
        """The signed record of the imported energy register as served now (made anew after
        set_values changed the energy, and once per record_period_s of energy flowing)."""
        energy = self._served("energy_import")
        if self._record is not None:
            return self._record[1]
        self.records += 1
        now = datetime.now(UTC)
        payload = {
            "FV": "1.0",
            "GI": "evsed simulated meter",
            "GS": f"SIM-{self.unit_id}",
            "PG": f"T{self.records}",
            "RD": [
                {
                    "TM": now.strftime("%Y-%m-%dT%H:%M:%S,") + f"{now.microsecond // 1000:03d}"
                    "+0000 S",
                    "RV": round(energy / 1000.0, 4),
                    "RI": "1-b:1.8.0",
                    "RU": "kWh",
                    "ST": "G",
                }
            ],
        }
        text = json.dumps(payload, separators=(",", ":"))
        signature = self.signing_key.sign(text.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        record = "OCMF|{}|{}".format(
            text,
            json.dumps(
                {"SA": OCMF_SIGNING_METHOD, "SD": signature.hex().upper()}, separators=(",", ":")
            ),
        )
        self._record = (energy, record)
        return record

    def set_signed_fault(self, fault: SignedFault | None) -> None:
        """Serve a broken signed record (None: the real one again)."""
        self.signed_fault = fault

    def _signed_words(self) -> dict[int, int]:
        """Register address -> content of every signed register (faults applied)."""
        block = self.map.signed
        if block is None:
            return {}
        fault = self.signed_fault
        record = self.signed_record().encode("ascii")
        length = len(record)
        if fault is SignedFault.NOT_ASCII:
            record = record[:10] + b"\xff\xfe" + record[12:]
        elif fault is SignedFault.TOO_LONG:
            length = block.max_length + 1
        elif fault is SignedFault.NO_RECORD:
            length = 0
        out = _text_words(block.length, block.data, record, length, block.max_length)
        if block.public_key is not None and block.public_key_length is not None:
            if fault is SignedFault.BAD_PUBLIC_KEY:
                key = b"not a key!"
            elif block.public_key_format == "hex":
                key = self.public_key_der.hex().encode("ascii")
            else:
                key = base64.b64encode(self.public_key_der)
            out.update(
                _text_words(
                    block.public_key_length,
                    block.public_key,
                    key,
                    len(key),
                    block.public_key_max_length,
                )
            )
        return out

    # -- faults --------------------------------------------------------------------------------

    def set_fault(
        self,
        fault: MeterFault | None,
        *,
        exception_code: int = ExcCodes.DEVICE_FAILURE,
        backwards_wh: float = 1000.0,
        wrong_unit_id: int | None = None,
    ) -> None:
        """Switch a fault on (None: off). EXCEPTION answers `exception_code`; ENERGY_BACKWARDS
        serves the energies `backwards_wh` lower; WRONG_UNIT answers as `wrong_unit_id`."""
        self.exception_code = ExcCodes(exception_code)
        if not math.isfinite(backwards_wh) or backwards_wh <= 0:
            raise ValueError(f"backwards_wh {backwards_wh}: expected a number > 0")
        self.backwards_wh = backwards_wh
        if wrong_unit_id is not None:
            if wrong_unit_id == self.unit_id or not 0 <= wrong_unit_id <= 255:
                raise ValueError(f"wrong_unit_id {wrong_unit_id}: expected another unit id")
            self.wrong_unit_id = wrong_unit_id
        self.fault = fault
        self._record = None  # the served energy may have changed

    # -- serving -------------------------------------------------------------------------------

    def device(self) -> SimDevice:
        """A pymodbus SimDevice serving the map's blocks, values refreshed on every request."""
        holding: list[SimData] = []
        inputs: list[SimData] = []
        for block in self.map.blocks:
            target = inputs if block.function is Function.INPUT else holding
            target.append(
                SimData(block.address, count=block.count, values=0, datatype=DataType.REGISTERS)
            )
        if self.map.signed is not None:
            target = inputs if self.map.signed.function is Function.INPUT else holding
            for _, address, count in self.map.signed.spans():
                target.append(SimData(address, count=count, values=0, datatype=DataType.REGISTERS))
            target.sort(key=lambda data: data.address)
        return SimDevice(
            id=self.unit_id,
            simdata=(
                [SimData(0, values=False, datatype=DataType.BITS)],
                [SimData(0, values=False, datatype=DataType.BITS)],
                holding or [SimData(0, datatype=DataType.INVALID)],
                inputs or [SimData(0, datatype=DataType.INVALID)],
            ),
            action=self._action,
        )

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        del count, values
        self.requests += 1
        if self.on_request is not None:
            self.on_request(function_code, address)
        if self.fault is MeterFault.EXCEPTION:
            return self.exception_code
        for register in self._mapped(function_code):
            words = register.encode(self._served(register.name))
            offset = register.address - start_address
            registers[offset : offset + len(words)] = words
        signed = self.map.signed
        if signed is not None and signed.function.code == function_code:
            for at, word in self._signed_words().items():
                if start_address <= at < start_address + len(registers):
                    registers[at - start_address] = word
        return None

    def _mapped(self, function_code: int) -> list[Register]:
        return [r for r in self.map.registers.values() if r.function.code == function_code]

    def outgoing(self, packet: bytes, *, rtu: bool) -> bytes:
        """The bytes actually sent for the answer `packet` (faults applied)."""
        fault = self.fault
        if fault is MeterFault.SILENT:
            return b""
        if fault is MeterFault.GARBAGE:
            if rtu:
                broken = bytearray(packet)
                broken[-3] ^= 0xFF  # the last data byte: the checksum no longer matches
                return bytes(broken)
            return packet[:2] + b"\x13\x37" + packet[4:]  # not the Modbus protocol id 0
        if fault is MeterFault.WRONG_UNIT:
            if rtu:
                frame = bytes([self.wrong_unit_id]) + packet[1:-2]
                return frame + _crc16(frame)
            return packet[:6] + bytes([self.wrong_unit_id]) + packet[7:]
        return packet


def _text_words(
    length_at: int, data_at: int, text: bytes, length: int, max_length: int
) -> dict[int, int]:
    """Registers of a length register and ASCII text (two bytes a register, high byte first),
    the text cut or padded with zeros to `max_length`."""
    data = text[:max_length].ljust(2 * registers_for(max_length), b"\0")
    out = {length_at: length & 0xFFFF}
    for index in range(registers_for(max_length)):
        out[data_at + index] = int.from_bytes(data[2 * index : 2 * index + 2], "big")
    return out


# ---------------------------------------------------------------------------------------------
# The line: a pair of ptys joined like a null-modem cable


@dataclass
class _Pty:
    master: int
    slave: int
    path: Path


class PtyLink:
    """Two pseudo-terminals joined like a null-modem cable.

    `device_path` is the meters' end (the simulator's server opens it), `host_path` evsed's end
    (the driver's `port`); both are symlinks in `directory` to /dev/pts/N. Bytes written on
    one end are read on the other. Call open() on the event loop, close() when done.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self._own_directory = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="evsed-rs485-"))
        self.device_path = self.directory / "meters"
        self.host_path = self.directory / "evsed"
        self._device: _Pty | None = None
        self._host: _Pty | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._device is None:
            self._device = self._new(self.device_path)
        if self._host is None:
            self._host = self._new(self.host_path)

    def _new(self, path: Path) -> _Pty:
        assert self._loop is not None
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        temporary = path.with_name(path.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        os.symlink(os.ttyname(slave), temporary)
        os.replace(temporary, path)
        side = _Pty(master, slave, path)
        self._loop.add_reader(master, self._pump, side)
        return side

    def _pump(self, source: _Pty) -> None:
        try:
            data = os.read(source.master, 4096)
        except OSError:  # nothing there after all, or the pty went away
            return
        target = self._host if source is self._device else self._device
        if target is not None and data:
            self._write(target, data)

    @staticmethod
    def _write(target: _Pty, data: bytes) -> None:
        with contextlib.suppress(OSError):  # a full or closed line drops bytes, as a wire would
            os.write(target.master, data)

    def inject(self, data: bytes) -> None:
        """Put `data` on the line towards evsed (noise, junk) as if a device had sent it."""
        if self._host is not None:
            self._write(self._host, data)

    def _close(self, side: _Pty | None) -> None:
        if side is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(side.master)
        for fd in (side.master, side.slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            side.path.unlink()

    def unplug(self) -> None:
        """evsed's end disappears (like a USB adapter pulled out): its open port hangs up and
        `host_path` no longer exists."""
        self._close(self._host)
        self._host = None

    def replug(self) -> None:
        """evsed's end comes back (a new pty behind the same `host_path`)."""
        if self._host is None:
            self._host = self._new(self.host_path)

    def close(self) -> None:
        self._close(self._host)
        self._close(self._device)
        self._host = self._device = None
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# The server


async def _no_such_unit(
    function_code: int,
    start_address: int,
    address: int,
    count: int,
    registers: list[int],
    values: list[int] | list[bool] | None,
) -> ExcCodes | None:
    """Unit ids nobody has: a TCP gateway answers "target failed to respond" (RTU: dropped)."""
    del function_code, start_address, address, count, registers, values
    return ExcCodes.GATEWAY_NO_RESPONSE


class ModbusMeterServer:
    """Serve simulated meters over Modbus TCP (127.0.0.1) or RTU (a PtyLink).

    TCP: `tcp_port` 0 picks a free port; after start() `tcp_port` is the real one and
    restart() reuses it. RTU: evsed's end of the line is `port` (a symlink that survives
    unplug/replug and restart).
    """

    def __init__(
        self,
        *meters: SimulatedModbusMeter,
        transport: str = "tcp",
        host: str = "127.0.0.1",
        tcp_port: int = 0,
        baudrate: int = 9600,
        parity: str = "N",
        stopbits: int = 1,
        directory: Path | None = None,
    ) -> None:
        if transport not in ("tcp", "rtu"):
            raise ValueError(f"transport {transport!r}: expected 'tcp' or 'rtu'")
        units = [meter.unit_id for meter in meters]
        if not meters or len(set(units)) != len(units):
            raise ValueError(f"unit ids {units}: expected one or more, all different")
        self.meters = {meter.unit_id: meter for meter in meters}
        self.transport = transport
        self.host = host
        self.tcp_port = tcp_port
        self.baudrate = baudrate
        self.parity = parity
        self.stopbits = stopbits
        self.link: PtyLink | None = PtyLink(directory) if transport == "rtu" else None
        self._server: ModbusTcpServer | ModbusSerialServer | None = None

    @property
    def port(self) -> str:
        """RTU: the serial port evsed opens."""
        if self.link is None:
            raise AttributeError("a TCP server has no serial port")
        return str(self.link.host_path)

    @property
    def running(self) -> bool:
        return self._server is not None

    def _trace(self, sending: bool, packet: bytes) -> bytes:
        if not sending:
            return packet
        rtu = self.transport == "rtu"
        unit_at = 0 if rtu else 6
        if len(packet) <= unit_at:
            return packet
        meter = self.meters.get(packet[unit_at])
        if meter is None:
            return b"" if rtu else packet
        return meter.outgoing(packet, rtu=rtu)

    def _devices(self) -> list[SimDevice]:
        devices = [meter.device() for meter in self.meters.values()]
        if self.transport == "tcp":
            devices.append(
                SimDevice(
                    id=0,
                    simdata=[SimData(0, datatype=DataType.INVALID)],
                    action=_no_such_unit,
                )
            )
        return devices

    async def start(self) -> None:
        if self._server is not None:
            return
        server: ModbusTcpServer | ModbusSerialServer
        if self.link is not None:
            self.link.open()
            server = ModbusSerialServer(
                self._devices(),
                framer=FramerType.RTU,
                port=str(self.link.device_path),
                baudrate=self.baudrate,
                parity=self.parity,
                stopbits=self.stopbits,
                trace_packet=self._trace,
            )
        else:
            server = ModbusTcpServer(
                self._devices(),
                address=(self.host, self.tcp_port),
                trace_packet=self._trace,
            )
        await server.serve_forever(background=True)
        self._server = server
        if self.link is None:
            sockets = getattr(server.transport, "sockets", None) or ()
            for sock in sockets:
                self.tcp_port = int(sock.getsockname()[1])
                break

    async def restart(self) -> None:
        """Stop serving (connections drop) and serve again on the same port."""
        await self._shutdown()
        await self.start()

    async def _shutdown(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            shutdown: Callable[[], Awaitable[None]] = server.shutdown  # untyped in pymodbus
            await shutdown()

    async def stop(self) -> None:
        await self._shutdown()
        if self.link is not None:
            self.link.close()
