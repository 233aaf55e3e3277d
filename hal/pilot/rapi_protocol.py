"""OpenEVSE RAPI wire format, sans I/O: frames, checksums, sequence ids, the EVSE state codes
and what they mean for the IEC 61851 pilot state and OCPP error codes.

Frames, as the firmware's rapi_proc.h documents them (RAPI 3.0.0 and later):

    command   $cc pp pp ... :ss^xk\\r      cc two letters, pp parameters, ss sequence id
    reply     $OK pp ... :ss^xk\\r / $NK ... (the sequence id of the command echoed)
    async     $AT evse pilot amps vflags^xk\\r, $AB postcode fwrev^xk\\r, ...

`^xk` is the 8-bit XOR of every character before the `^`, as two hex digits; the legacy
`*ck` is their 8-bit sum. Commands go out with an XOR checksum and a sequence id (never 00).
Received frames must carry a valid checksum of either kind: frames without one (RAPI 1.x
replies; "for testing only" in the spec) are rejected like any other malformed frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hal.interfaces import PilotState

__all__ = [
    "ECF_PP_AUTO_AMPACITY",
    "ECVF_CHARGING_ON",
    "ECVF_EV_CONNECTED",
    "EVSE_STATE_DISABLED",
    "EVSE_STATE_SLEEPING",
    "EVSE_STATE_UNKNOWN",
    "MAX_FRAME_BYTES",
    "RELAY_FAULT_STATES",
    "FrameError",
    "FrameReader",
    "McuStatus",
    "RapiFrame",
    "RapiStats",
    "additive_checksum",
    "decode_frame",
    "encode_command",
    "mcu_fault",
    "parse_get_state",
    "parse_state_notification",
    "pilot_state_of",
    "xor_checksum",
]

# EVSE state codes (J1772EvseController.h, EVSE_STATE_xxx).
EVSE_STATE_UNKNOWN = 0x00
EVSE_STATE_A = 0x01
EVSE_STATE_B = 0x02
EVSE_STATE_C = 0x03
EVSE_STATE_D = 0x04
EVSE_STATE_DIODE_CHK_FAILED = 0x05
EVSE_STATE_GFCI_FAULT = 0x06
EVSE_STATE_NO_GROUND = 0x07
EVSE_STATE_STUCK_RELAY = 0x08
EVSE_STATE_GFI_TEST_FAILED = 0x09
EVSE_STATE_OVER_TEMPERATURE = 0x0A
EVSE_STATE_OVER_CURRENT = 0x0B
EVSE_STATE_RELAY_CLOSURE_FAULT = 0x0E
EVSE_STATE_PP_SHORTED = 0x0F
EVSE_STATE_PP_MISSING = 0x10
EVSE_STATE_EEPROM_FAILURE = 0x11
EVSE_STATE_SLEEPING = 0xFE
EVSE_STATE_DISABLED = 0xFF

# Volatile flags (m_wVFlags, ECVF_xxx) reported by GS and $AT.
ECVF_HARD_FAULT = 0x0002
ECVF_CHARGING_ON = 0x0040  # the charging relay is (commanded) closed
ECVF_GFI_TRIPPED = 0x0080
ECVF_EV_CONNECTED = 0x0100  # valid only while the pilot is not at -12 V
# Settings flags (m_wFlags, ECF_xxx) reported by GE.
ECF_PP_AUTO_AMPACITY = 0x0040

MAX_FRAME_BYTES = 64  # the firmware's own buffer is 32-40 bytes; anything longer is noise

_PILOT_BY_CODE: dict[int, PilotState] = {
    EVSE_STATE_A: PilotState.A,
    EVSE_STATE_B: PilotState.B,
    EVSE_STATE_C: PilotState.C,
    EVSE_STATE_D: PilotState.D,
}

# MCU fault states -> (OCPP 1.6 ChargePointErrorCode, info). The diode check fails when the
# pilot's negative half does not reach -12 V: the EV's diode is missing or the pilot is
# shorted, a fault of the pilot link to the EV, hence EVCommunicationError.
_FAULTS: dict[int, tuple[str, str]] = {
    EVSE_STATE_DIODE_CHK_FAILED: ("EVCommunicationError", "diode check failed"),
    EVSE_STATE_GFCI_FAULT: ("GroundFailure", "ground fault (GFI) tripped"),
    EVSE_STATE_NO_GROUND: ("GroundFailure", "no ground"),
    EVSE_STATE_STUCK_RELAY: ("PowerSwitchFailure", "stuck relay"),
    EVSE_STATE_GFI_TEST_FAILED: ("GroundFailure", "GFI self-test failed"),
    EVSE_STATE_OVER_TEMPERATURE: ("HighTemperature", "over temperature"),
    EVSE_STATE_OVER_CURRENT: ("OverCurrentFailure", "over current"),
    EVSE_STATE_RELAY_CLOSURE_FAULT: ("PowerSwitchFailure", "relay did not close"),
    EVSE_STATE_PP_SHORTED: ("OtherError", "proximity pilot shorted"),
    EVSE_STATE_PP_MISSING: ("OtherError", "proximity pilot resistor missing"),
    EVSE_STATE_EEPROM_FAILURE: ("InternalError", "MCU EEPROM failure"),
}
RELAY_FAULT_STATES = frozenset({EVSE_STATE_STUCK_RELAY, EVSE_STATE_RELAY_CLOSURE_FAULT})


class FrameError(ValueError):
    """A frame that is not valid RAPI; `kind` is "checksum" or "malformed"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class RapiFrame:
    """One valid frame: its tokens without the `$`, sequence id and checksum."""

    tokens: tuple[str, ...]
    seq: int | None = None

    @property
    def name(self) -> str:
        return self.tokens[0]

    @property
    def args(self) -> tuple[str, ...]:
        return self.tokens[1:]

    @property
    def ok(self) -> bool:
        return self.tokens[0] == "OK"


@dataclass(slots=True)
class RapiStats:
    """Counters of one RAPI link, for logs, D-Bus and tests."""

    frames: int = 0  # valid frames received
    bad_checksum: int = 0
    truncated: int = 0  # a frame cut off by the start of the next one
    malformed: int = 0  # not ASCII, no checksum, too long, bad tokens or arguments
    garbage_bytes: int = 0  # bytes outside any frame
    stray_replies: int = 0  # $OK/$NK that answer no command in flight
    timeouts: int = 0  # commands left unanswered
    naks: int = 0
    heartbeats: int = 0  # valid GS answers
    reconnects: int = 0  # times the port was reopened after it was lost


def xor_checksum(data: bytes) -> int:
    result = 0
    for byte in data:
        result ^= byte
    return result


def additive_checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def encode_command(command: str, args: Sequence[str] = (), seq: int | None = None) -> bytes:
    """`$cc args :ss^xk\\r`. `seq` is 1-255 (00 is reserved as invalid)."""
    if len(command) != 2 or not command.isascii() or not command.isalnum():
        raise ValueError(f"a RAPI command is two letters or digits, not {command!r}")
    text = "$" + command
    for arg in args:
        if not arg or not arg.isascii() or any(c in arg for c in " $^*:\r\n"):
            raise ValueError(f"bad RAPI argument {arg!r}")
        text += " " + arg
    if seq is not None:
        if not 1 <= seq <= 0xFF:
            raise ValueError(f"a RAPI sequence id is 1-255, not {seq}")
        text += f" :{seq:02X}"
    body = text.encode("ascii")
    return body + f"^{xor_checksum(body):02X}\r".encode("ascii")


def decode_frame(raw: bytes) -> RapiFrame:
    """One frame from `$` up to (without) the CR. Raises FrameError."""
    if not raw.startswith(b"$"):
        raise FrameError("malformed", "frame does not start with '$'")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise FrameError("malformed", "frame is not ASCII") from None
    if not text.isprintable():
        raise FrameError("malformed", "frame holds control characters")
    marks = [i for i in (text.find("^"), text.find("*")) if i >= 0]
    if not marks:
        raise FrameError("malformed", "frame has no checksum")
    at = min(marks)
    body, mark, given = raw[:at], text[at], text[at + 1 :]
    if len(given) != 2 or any(c not in "0123456789abcdefABCDEF" for c in given):
        raise FrameError("malformed", f"bad checksum field {given!r}")
    expected = xor_checksum(body) if mark == "^" else additive_checksum(body)
    if int(given, 16) != expected:
        raise FrameError("checksum", f"checksum {given} != {expected:02X}")
    tokens = text[1:at].split()
    if not tokens or len(tokens[0]) != 2 or not tokens[0].isalnum():
        raise FrameError("malformed", "frame has no two-letter name")
    seq = None
    if len(tokens) > 1 and tokens[-1].startswith(":"):
        digits = tokens.pop()[1:]
        if len(digits) != 2 or any(c not in "0123456789abcdefABCDEF" for c in digits):
            raise FrameError("malformed", f"bad sequence id {digits!r}")
        seq = int(digits, 16)
    return RapiFrame(tuple(tokens), seq)


class FrameReader:
    """Splits a byte stream into frames; counts what it throws away in `stats`.

    A `$` always starts a new frame (a frame still open is truncated), a CR ends one; bytes
    outside frames and line feeds (the firmware's echo mode) are skipped.
    """

    def __init__(self, stats: RapiStats) -> None:
        self.stats = stats
        self._frame: bytearray | None = None
        self.problems: list[str] = []  # readable problems since the caller last cleared it

    def reset(self) -> None:
        """Forget a half-received frame (the port was closed)."""
        self._frame = None

    def feed(self, data: bytes) -> list[RapiFrame]:
        frames: list[RapiFrame] = []
        stray = 0
        for byte in data:
            if byte == 0x24:  # "$"
                if self._frame is not None:
                    self.stats.truncated += 1
                    self.problems.append(f"truncated frame {bytes(self._frame)!r}")
                self._frame = bytearray(b"$")
            elif self._frame is None:
                if byte not in (0x0D, 0x0A):
                    stray += 1
            elif byte == 0x0D:
                raw, self._frame = bytes(self._frame), None
                try:
                    frames.append(decode_frame(raw))
                except FrameError as exc:
                    if exc.kind == "checksum":
                        self.stats.bad_checksum += 1
                    else:
                        self.stats.malformed += 1
                    self.problems.append(f"{exc}: {raw!r}")
                else:
                    self.stats.frames += 1
            else:
                self._frame.append(byte)
                if len(self._frame) > MAX_FRAME_BYTES:
                    self.stats.malformed += 1
                    self.problems.append(f"frame longer than {MAX_FRAME_BYTES} bytes")
                    self._frame = None
        if stray:
            self.stats.garbage_bytes += stray
            self.problems.append(f"{stray} byte(s) outside any frame")
        return frames


@dataclass(frozen=True, slots=True)
class McuStatus:
    """What GS and $AT tell about the MCU. `capacity_a` is None from GS (it has none)."""

    evse_state: int
    pilot_code: int
    vflags: int
    capacity_a: int | None = None

    @property
    def relay_closed(self) -> bool:
        """Relay feedback: commanded on, or found welded by the MCU's stuck-relay check."""
        return bool(self.vflags & ECVF_CHARGING_ON) or self.evse_state == EVSE_STATE_STUCK_RELAY


def _number(text: str, base: int) -> int:
    try:
        return int(text, base)
    except ValueError:
        raise FrameError("malformed", f"bad number {text!r}") from None


def parse_get_state(args: Sequence[str]) -> McuStatus:
    """`$OK evsestate(hex) elapsed(dec) pilotstate(hex) vflags(hex)`."""
    if len(args) < 4:
        raise FrameError("malformed", f"GS answer with {len(args)} values, expected 4")
    _number(args[1], 10)
    return McuStatus(_number(args[0], 16), _number(args[2], 16), _number(args[3], 16))


def parse_state_notification(args: Sequence[str]) -> McuStatus:
    """`$AT evsestate(hex) pilotstate(hex) currentcapacity(dec) vflags(hex)`."""
    if len(args) < 4:
        raise FrameError("malformed", f"$AT with {len(args)} values, expected 4")
    return McuStatus(
        _number(args[0], 16), _number(args[1], 16), _number(args[3], 16), _number(args[2], 10)
    )


def pilot_state_of(status: McuStatus, *, pilot_known: bool = True) -> PilotState:
    """The IEC 61851 state an MCU status stands for.

    States A-D map one to one. Sleeping / disabled (the EVSE offers nothing): the firmware then
    keeps only the EV-connected flag up to date, not the pilot state, which keeps the value it
    had when the MCU went to sleep. So: A when no EV is connected; else that pilot state (B, C
    or D) if `pilot_known` (the EV stayed connected since), else B. Every fault state, and the
    MCU's own "unknown" while it boots, is F: the EVSE is not available. OpenEVSE has no state
    E of its own: a shorted pilot fails the diode check, so it is F.
    """
    state = _PILOT_BY_CODE.get(status.evse_state)
    if state is not None:
        return state
    if status.evse_state in (EVSE_STATE_SLEEPING, EVSE_STATE_DISABLED):
        if not status.vflags & ECVF_EV_CONNECTED:
            return PilotState.A
        measured = _PILOT_BY_CODE.get(status.pilot_code) if pilot_known else None
        return PilotState.B if measured is None or measured is PilotState.A else measured
    return PilotState.F


def mcu_fault(evse_state: int) -> tuple[str, str] | None:
    """(OCPP error code, info) for an MCU fault state; None when the state is no fault."""
    if evse_state in _PILOT_BY_CODE or evse_state in (
        EVSE_STATE_UNKNOWN,
        EVSE_STATE_SLEEPING,
        EVSE_STATE_DISABLED,
    ):
        return None
    return _FAULTS.get(evse_state, ("InternalError", f"MCU fault state 0x{evse_state:02x}"))
