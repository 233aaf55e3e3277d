"""Fuzzing the hardware-side parsers with a seeded generator.

Each parser gets random input, mutated valid input and valid input split at random places
with noise around it. The rules: a parser returns a result or raises the error it documents
(RAPI FrameError, PN532 Pn532ProtocolError, InfyPower FrameError, the meter's MeterError) and
never anything else; valid frames are found again, in order, whatever the chunking; a stream
decoder keeps a bounded buffer.
"""

from __future__ import annotations

import math
import random
import string
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

MAX_FINDINGS = 10
#: Ranges a healthy meter reports, by kind of register (the rest: 0..1e5).
PLAUSIBLE = {
    "voltage": (180.0, 260.0),
    "current": (0.0, 40.0),
    "power": (0.0, 23000.0),
    "frequency": (49.0, 51.0),
}


class Tally:
    def __init__(self, name: str) -> None:
        self.name = name
        self.inputs = 0
        self.outcomes: Counter[str] = Counter()
        self.unexpected = 0
        self.property_failures = 0
        self.findings: list[str] = []

    def unexpected_exception(self, what: str, exc: BaseException) -> None:
        self.unexpected += 1
        if len(self.findings) < MAX_FINDINGS:
            tb = "".join(traceback.format_exception(exc)[-2:]).strip()
            self.findings.append(f"{what}: {tb[-500:]}")

    def property_failed(self, text: str) -> None:
        self.property_failures += 1
        if len(self.findings) < MAX_FINDINGS:
            self.findings.append(text[:600])

    def as_dict(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "outcomes": dict(self.outcomes.most_common()),
            "unexpected": self.unexpected,
            "property_failures": self.property_failures,
            "findings": self.findings,
        }


def _rand_bytes(
    rng: random.Random, low: int = 0, high: int = 120, *, exclude: bytes = b""
) -> bytes:
    out = bytearray()
    for _ in range(rng.randint(low, high)):
        b = rng.getrandbits(8)
        while b in exclude:
            b = rng.getrandbits(8)
        out.append(b)
    return bytes(out)


def _chunks(rng: random.Random, data: bytes) -> list[bytes]:
    parts, i = [], 0
    while i < len(data):
        step = rng.randint(1, 40)
        parts.append(data[i : i + step])
        i += step
    return parts


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        roll = rng.random()
        if not b or roll < 0.3:
            b.insert(rng.randint(0, len(b)), rng.getrandbits(8))
        elif roll < 0.6:
            b[rng.randrange(len(b))] = rng.getrandbits(8)
        elif roll < 0.8:
            del b[rng.randrange(len(b))]
        else:
            b = b[: rng.randint(0, len(b))]
    return bytes(b)


def _guard(
    t: Tally,
    what: str,
    expected: tuple[type[BaseException], ...],
    fn: Callable[..., Any],
    *args: Any,
) -> Any:
    """fn(*args), counting how it ended; an exception not in `expected` is a finding."""
    try:
        result = fn(*args)
    except expected as exc:
        t.outcomes[f"{what}:{type(exc).__name__}"] += 1
        return None
    except Exception as exc:
        t.unexpected_exception(what, exc)
        return None
    t.outcomes[f"{what}:ok"] += 1
    return result


# --------------------------------------------------------------------------------- RAPI
def fuzz_rapi(rng: random.Random, count: int) -> Tally:
    from hal.pilot import rapi_protocol as rp

    t = Tally("rapi")
    alnum = string.ascii_uppercase + string.digits
    arg_chars = string.ascii_letters + string.digits + ".-_"
    for _ in range(count):
        t.inputs += 1
        roll = rng.random()
        if roll < 0.35:
            # A stream of valid frames in random chunks, with noise without '$' between.
            frames = []
            stream = b""
            for _ in range(rng.randint(1, 4)):
                name = "".join(rng.choice(alnum) for _ in range(2))
                args = [
                    "".join(rng.choice(arg_chars) for _ in range(rng.randint(1, 8)))
                    for _ in range(rng.randint(0, 4))
                ]
                seq = rng.choice([None, rng.randint(1, 255)])
                encoded = rp.encode_command(name, args, seq)
                frames.append((tuple([name, *args]), seq))
                stream += _rand_bytes(rng, 0, 6, exclude=b"$") + encoded
            reader = rp.FrameReader(rp.RapiStats())
            got = []
            for part in _chunks(rng, stream):
                got += _guard(t, "stream", (), reader.feed, part) or []
            found = [(f.tokens, f.seq) for f in got]
            if found != frames:
                t.property_failed(f"rapi stream {stream!r}: {found} != {frames}")
            else:
                t.outcomes["roundtrip:ok"] += 1
        elif roll < 0.7:
            name = "".join(rng.choice(alnum) for _ in range(2))
            raw = rp.encode_command(name, ["1", "A"], rng.choice([None, 7]))
            mutated = _mutate(rng, raw[:-1])
            _guard(t, "decode_frame", (rp.FrameError,), rp.decode_frame, mutated)
            reader = rp.FrameReader(rp.RapiStats())
            _guard(t, "feed", (), reader.feed, mutated + b"\r")
        elif roll < 0.85:
            data = _rand_bytes(rng, 0, 300)
            reader = rp.FrameReader(rp.RapiStats())
            for part in _chunks(rng, data):
                _guard(t, "feed-random", (), reader.feed, part)
            pending = reader._frame
            if pending is not None and len(pending) > rp.MAX_FRAME_BYTES + 1:
                t.property_failed(f"rapi reader holds {len(pending)} bytes")
            _guard(t, "decode-random", (rp.FrameError,), rp.decode_frame, data)
        else:
            tokens = [
                rng.choice(
                    [
                        "0",
                        "1",
                        "ff",
                        "FF",
                        "-1",
                        "zz",
                        "",
                        "100000000000",
                        "0x3",
                        "\uff17",
                        "1e3",
                        " 2",
                    ]
                )
                for _ in range(rng.randint(0, 6))
            ]
            for parse in (rp.parse_get_state, rp.parse_state_notification):
                status = _guard(t, parse.__name__, (rp.FrameError,), parse, tokens)
                if status is not None:
                    _guard(
                        t,
                        "pilot_state_of",
                        (),
                        lambda st, known: rp.pilot_state_of(st, pilot_known=known),
                        status,
                        rng.random() < 0.5,
                    )
                    _guard(t, "mcu_fault", (), rp.mcu_fault, status.evse_state)
    return t


# -------------------------------------------------------------------------------- PN532
def fuzz_pn532(rng: random.Random, count: int) -> Tally:
    from hal.rfid import pn532

    t = Tally("pn532")
    bound = 7 + pn532.MAX_EXTENDED_LEN + 1
    for _ in range(count):
        t.inputs += 1
        roll = rng.random()
        if roll < 0.35:
            frames = []
            stream = b""
            for _ in range(rng.randint(1, 4)):
                tfi = rng.choice([0xD5, 0xD4, rng.getrandbits(8)])
                if tfi == pn532.TFI_ERROR:
                    tfi = 0xD5
                data = _rand_bytes(rng, 0, 60)
                frames.append((tfi, data))
                # Noise without 0xFF cannot hold a start code (00 FF).
                stream += _rand_bytes(rng, 0, 8, exclude=b"\xff") + pn532.encode_frame(tfi, data)
            decoder = pn532.FrameDecoder()
            items = []
            for part in _chunks(rng, stream):
                items += _guard(t, "stream", (), decoder.feed, part) or []
            found = [(i.tfi, i.data) for i in items if isinstance(i, pn532.InfoFrame)]
            if found != frames:
                t.property_failed(f"pn532 stream {stream.hex()}: {found} != {frames}")
            else:
                t.outcomes["roundtrip:ok"] += 1
        elif roll < 0.75:
            base = rng.choice(
                [
                    pn532.ACK_FRAME,
                    pn532.NACK_FRAME,
                    pn532.ERROR_FRAME,
                    pn532.encode_frame(0xD5, _rand_bytes(rng, 0, 40)),
                ]
            )
            data = _mutate(rng, base) if rng.random() < 0.7 else _rand_bytes(rng, 0, 300)
            if rng.random() < 0.3:
                data = b"\x00\xff" + data  # a start code in front of anything
            result = _guard(t, "decode_frames", (), pn532.decode_frames, data)
            if result is not None:
                _, rest = result
                if not data.endswith(rest) or len(rest) > bound:
                    t.property_failed(f"pn532 rest {rest.hex()} of {data.hex()}")
        else:
            payload = _rand_bytes(rng, 0, 40)
            if rng.random() < 0.5 and payload:
                payload = bytes([rng.randint(0, 3)]) + payload[1:]
            _guard(
                t,
                "targets",
                (pn532.Pn532ProtocolError,),
                pn532.parse_passive_targets_106a,
                payload,
            )
            _guard(
                t,
                "firmware",
                (pn532.Pn532ProtocolError,),
                pn532.parse_firmware_version,
                payload[: rng.choice([4, 4, 3, 5])],
            )
    return t


# -------------------------------------------------------------------------------- Modbus
def fuzz_modbus(rng: random.Random, count: int) -> Tally:
    from hal.interfaces import MeterError
    from hal.meter.maps import builtin_names, resolve_map
    from hal.meter.modbus import ModbusMeter

    t = Tally("modbus")
    maps = [resolve_map(name) for name in builtin_names()]
    meters = {m.name: ModbusMeter(m, None, 1, label=f"fuzz {m.name}") for m in maps}  # type: ignore[arg-type]
    special = [0, 0xFFFF, 0x7FFF, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0x0001]
    for _ in range(count):
        t.inputs += 1
        meter_map = rng.choice(maps)
        meter = meters[meter_map.name]
        values: dict[str, float] = {}
        for register in meter_map.registers.values():
            roll = rng.random()
            if roll < 0.45:
                words = [
                    rng.choice(special) if rng.random() < 0.3 else rng.getrandbits(16)
                    for _ in range(register.words)
                ]
            elif roll < 0.9:
                # A plausible value, encoded the way the meter would, then decoded.
                value = rng.uniform(*PLAUSIBLE.get(register.name.split("_")[0], (0.0, 1e5)))
                try:
                    words = register.encode(value)
                except ValueError:
                    t.outcomes["encode:ValueError"] += 1
                    continue
                back = _guard(t, "decode", (), register.decode, words)
                if back is not None and not math.isclose(
                    back, value, rel_tol=1e-3, abs_tol=abs(register.factor) + 1e-6
                ):
                    t.property_failed(f"{meter_map.name}.{register.name}: {value} -> {back}")
                if back is not None:
                    values[register.name] = back
                continue
            else:
                words = [rng.getrandbits(16) for _ in range(rng.choice([0, 1, 3, 5]))]
                if len(words) != register.words:
                    _guard(t, "decode-length", (ValueError,), register.decode, words)
                    continue
            value = _guard(t, "decode", (), register.decode, words)
            if value is not None:
                values[register.name] = value
        if len(values) == len(meter_map.registers):
            if rng.random() < 0.1:
                meter._last = None
            reading = _guard(t, "reading", (MeterError,), meter._check, values)
            if reading is not None:
                meter._last = reading
    return t


# ------------------------------------------------------------------------------ InfyPower
def fuzz_infypower(rng: random.Random, count: int) -> Tally:
    import can

    from hal.power import infypower as ip

    t = Tally("infypower")
    decoders = (
        ip.decode_module_count,
        ip.decode_module_output,
        ip.decode_set_output,
        ip.decode_on_off,
        ip.decode_status,
    )
    for _ in range(count):
        t.inputs += 1
        roll = rng.random()
        if roll < 0.5:
            arbitration_id = rng.choice(
                [rng.getrandbits(29), rng.getrandbits(11), rng.getrandbits(32), 0, (1 << 29) - 1]
            )
            fd = rng.random() < 0.05
            length = (
                rng.choice([8, 8, 8, 0, 1, 7, 9, 12, 64]) if fd else rng.choice([8, 8, 0, 3, 7])
            )
            message = can.Message(
                arbitration_id=arbitration_id,
                data=_rand_bytes(rng, length, length),
                is_extended_id=rng.random() < 0.85,
                is_remote_frame=rng.random() < 0.05,
                is_error_frame=rng.random() < 0.05,
                is_fd=fd,
                check=False,
            )
            frame = _guard(t, "decode_frame", (ip.FrameError,), ip.decode_frame, message)
            data = frame.data if frame is not None else bytes(message.data)
        else:
            data = _rand_bytes(rng, 0, 10) if rng.random() < 0.2 else _rand_bytes(rng, 8, 8)
            x = rng.getrandbits(29)
            back = _guard(t, "id-roundtrip", (), lambda v: ip.encode_id(ip.decode_id(v)), x)
            if back is not None and back != x:
                t.property_failed(f"infypower id {x:#x} -> {back:#x}")
        for decode in decoders:
            value = _guard(t, decode.__name__, (ip.FrameError,), decode, data)
            if isinstance(value, ip.ModuleStatus):
                _guard(t, "fault_code", (), ip.fault_code, value.faults)
                _guard(t, "fault_names", (), ip.fault_names, value.bits)
    return t


PARSERS: dict[str, Callable[[random.Random, int], Tally]] = {
    "rapi": fuzz_rapi,
    "pn532": fuzz_pn532,
    "modbus": fuzz_modbus,
    "infypower": fuzz_infypower,
}


def run(per_parser: int, *, seed: int) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for name, fuzz in PARSERS.items():
        rng = random.Random(f"{seed}-{name}")
        try:
            results[name] = fuzz(rng, per_parser).as_dict()
        except ImportError as exc:
            results[name] = {
                "inputs": 0,
                "unexpected": 0,
                "property_failures": 0,
                "skipped": f"not importable: {exc}",
                "findings": [],
            }
    return results
