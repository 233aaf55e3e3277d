"""The NXP PN532 token reader over HSU (its UART): frame codec, the Pn532Reader driver, build().

Wire protocol, from NXP's PN532 User Manual (UM0701-02, "Host controller communication
protocol"):

- Normal information frame: preamble 0x00, start code 0x00 0xFF, LEN (TFI + data bytes), LCS
  (LEN + LCS = 0 mod 256), TFI (0xD4 host to PN532, 0xD5 PN532 to host), data, DCS
  (TFI + data + DCS = 0 mod 256), postamble 0x00. The first data byte is the command code; a
  response carries the command code + 1.
- ACK 00 00 FF 00 FF 00, NACK 00 00 FF FF 00 00 (ask the other side to send its last frame
  again), error frame 00 00 FF 01 FF 7F 81 00 (application-level error, e.g. a syntax error).
- Extended information frames (LEN = LCS = 0xFF, then a 16-bit length) are not supported: this
  driver never sends a command that needs one, and rejects any it receives.
- Every command is acknowledged (ACK) before its response comes; the host may abort a command
  by sending an ACK, and ask again for a response that came with a bad checksum with a NACK.

Receiving is lenient where that loses nothing: preamble and postamble bytes are optional (0x00
bytes between frames are filler), and bytes outside frames are reported as garbage.

HSU wake-up: the PN532 starts in Low VBat (power-down) mode. On HSU it wakes on a falling edge,
so the host sends 0x55 0x55 and a run of 0x00 bytes (time for the oscillator to start), and the
first command must be SAMConfiguration (normal mode). The driver does that at start and again
after every failed exchange (the reader may have been power-cycled), then GetFirmwareVersion
(logged) and RFConfiguration MaxRetries (MxRtyPassiveActivation = 1: InListPassiveTarget answers
"0 targets" when no card is in the field instead of waiting forever, the default).

The driver polls InListPassiveTarget (MaxTg 1, BrTy 0x00: 106 kbps type A) every
`poll_interval_s` and reports the card's NFCID1 (UID, 4, 7 or 10 bytes) as an idTag in
upper-case hex. A card left on the reader is reported once; it is reported again only after
it was absent for `rearm_s` (measured between the first poll that missed it and the one that
sees it again; polls that fail count neither way). A reader that does not answer, answers
garbage or refuses commands for `timeout_s` is reported with on_fault("ReaderFailure", info),
cleared with on_fault(None, info) at its next good answer.

Serial I/O: pyserial opens and configures the port (8N1, `baudrate`, exclusive lock); reads run
on the event loop through loop.add_reader on the port's non-blocking fd, writes (a few dozen
bytes per frame) are plain non-blocking os.write calls; nothing blocks the loop. A port that
fails (read/write error, device gone) is closed and reopened on the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import serial  # type: ignore[import-untyped, unused-ignore]

from hal.interfaces import FaultCallback

if TYPE_CHECKING:
    from service.config import Evse, Hardware

__all__ = [
    "ACK_FRAME",
    "BACKEND",
    "BAUDRATES",
    "CMD_GET_FIRMWARE_VERSION",
    "CMD_IN_LIST_PASSIVE_TARGET",
    "CMD_RF_CONFIGURATION",
    "CMD_SAM_CONFIGURATION",
    "ERROR_FRAME",
    "NACK_FRAME",
    "TFI_HOST_TO_PN532",
    "TFI_PN532_TO_HOST",
    "WAKEUP",
    "Ack",
    "BadFrame",
    "ErrorFrame",
    "FirmwareVersion",
    "FrameDecoder",
    "InfoFrame",
    "Nack",
    "Pn532Error",
    "Pn532ProtocolError",
    "Pn532Reader",
    "Received",
    "TargetA",
    "build",
    "decode_frames",
    "encode_command",
    "encode_frame",
    "parse_firmware_version",
    "parse_passive_targets_106a",
]

log = logging.getLogger(__name__)

BACKEND = "pn532"

TFI_HOST_TO_PN532 = 0xD4
TFI_PN532_TO_HOST = 0xD5
TFI_ERROR = 0x7F

CMD_GET_FIRMWARE_VERSION = 0x02
CMD_SAM_CONFIGURATION = 0x14
CMD_RF_CONFIGURATION = 0x32
CMD_IN_LIST_PASSIVE_TARGET = 0x4A

BRTY_106_TYPE_A = 0x00
SAM_MODE_NORMAL = 0x01
RF_CFG_MAX_RETRIES = 0x05

_START_CODE = b"\x00\xff"
ACK_FRAME = b"\x00\x00\xff\x00\xff\x00"
NACK_FRAME = b"\x00\x00\xff\xff\x00\x00"
ERROR_FRAME = b"\x00\x00\xff\x01\xff\x7f\x81\x00"
# HSU wake-up: 0x55 gives the falling edges, the 0x00 run the oscillator start-up time.
WAKEUP = b"\x55\x55" + bytes(14)

MAX_NORMAL_DATA = 254  # LEN is one byte and counts the TFI
MAX_EXTENDED_LEN = 265  # the PN532's largest frame (TFI + 264 bytes)
UID_LENGTHS = (4, 7, 10)  # ISO/IEC 14443-3 single, double, triple size NFCID1

BAUDRATES = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
DEFAULT_BAUDRATE = 115200
DEFAULT_POLL_INTERVAL_S = 0.25
DEFAULT_REARM_S = 1.0
DEFAULT_TIMEOUT_S = 2.0

_MAX_RESENDS = 3  # NACKs (either way) tolerated within one exchange
_MAX_REPLY_WAIT_S = 1.0  # longest wait for the ACK + response of one command


# ----------------------------------------------------------------------------------- codec


class Pn532Error(Exception):
    """The PN532's serial port cannot be opened (raised by Pn532Reader.start)."""


class Pn532ProtocolError(Exception):
    """A PN532 answer that is well framed but does not say what the command requires."""


@dataclass(frozen=True, slots=True)
class Ack:
    """ACK frame: the command was received (from the PN532), or abort (from the host)."""


@dataclass(frozen=True, slots=True)
class Nack:
    """NACK frame: send your last frame again."""


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """The PN532's application-level error frame (syntax error in the command)."""


@dataclass(frozen=True, slots=True)
class InfoFrame:
    """A normal information frame: its TFI and data (command or response code first)."""

    tfi: int
    data: bytes


@dataclass(frozen=True, slots=True)
class BadFrame:
    """Bytes that are no valid frame. `reason`: "garbage" (bytes outside any frame), "lcs",
    "dcs", "length" (LEN 0 or extended length out of range) or "extended" (a valid extended
    frame, not supported)."""

    reason: str
    raw: bytes


Received = Ack | Nack | ErrorFrame | InfoFrame | BadFrame


def encode_frame(tfi: int, data: bytes) -> bytes:
    """A normal information frame carrying `tfi` and `data` (at most 254 bytes)."""
    if not 0 <= tfi <= 0xFF:
        raise ValueError(f"TFI {tfi!r} is not a byte")
    if len(data) > MAX_NORMAL_DATA:
        raise ValueError(
            f"{len(data)} data bytes need an extended frame (at most {MAX_NORMAL_DATA} fit)"
        )
    length = len(data) + 1
    dcs = (-(tfi + sum(data))) & 0xFF
    return bytes([0x00, 0x00, 0xFF, length, (-length) & 0xFF, tfi, *data, dcs, 0x00])


def encode_command(command: int, params: bytes = b"") -> bytes:
    """A host-to-PN532 command frame (TFI 0xD4)."""
    if not 0 <= command <= 0xFF:
        raise ValueError(f"command {command!r} is not a byte")
    return encode_frame(TFI_HOST_TO_PN532, bytes([command]) + params)


def _garbage(chunk: bytes) -> list[Received]:
    """Bytes found between frames: 0x00 is filler (preamble/postamble), anything else garbage."""
    garbage = chunk.strip(b"\x00")
    return [BadFrame("garbage", garbage)] if garbage else []


def decode_frames(buffer: bytes) -> tuple[list[Received], bytes]:
    """Split `buffer` into the frames it holds, in order, and the bytes kept for later (an
    incomplete frame at its end). After a checksum error the scan resumes just past that
    frame's start code, so a good frame that follows a truncated one is still found."""
    items: list[Received] = []
    i = 0
    n = len(buffer)
    while True:
        j = buffer.find(_START_CODE, i)
        if j < 0:
            keep = n - 1 if n > i and buffer[-1] == 0x00 else n  # maybe the start code's 1st
            items += _garbage(buffer[i:keep])
            return items, buffer[keep:]
        items += _garbage(buffer[i:j])
        if n < j + 4:
            return items, buffer[j:]
        length, lcs = buffer[j + 2], buffer[j + 3]
        if length == 0x00 and lcs == 0xFF:
            items.append(Ack())
            i = j + 4
            continue
        if length == 0xFF and lcs == 0x00:
            items.append(Nack())
            i = j + 4
            continue
        if length == 0xFF and lcs == 0xFF:
            if n < j + 7:
                return items, buffer[j:]
            ext_len = buffer[j + 4] << 8 | buffer[j + 5]
            if (buffer[j + 4] + buffer[j + 5] + buffer[j + 6]) & 0xFF or not (
                1 <= ext_len <= MAX_EXTENDED_LEN
            ):
                items.append(BadFrame("length", buffer[j : j + 7]))
                i = j + 2
                continue
            end = j + 7 + ext_len + 1
            if n < end:
                return items, buffer[j:]
            items.append(BadFrame("extended", buffer[j:end]))
            i = end
            continue
        if (length + lcs) & 0xFF:
            items.append(BadFrame("lcs", buffer[j : j + 4]))
            i = j + 2
            continue
        if length == 0:
            items.append(BadFrame("length", buffer[j : j + 4]))
            i = j + 2
            continue
        end = j + 4 + length + 1
        if n < end:
            return items, buffer[j:]
        body = buffer[j + 4 : end - 1]
        if (sum(body) + buffer[end - 1]) & 0xFF:
            items.append(BadFrame("dcs", buffer[j:end]))
            i = j + 2
            continue
        if body == bytes([TFI_ERROR]):
            items.append(ErrorFrame())
        else:
            items.append(InfoFrame(body[0], bytes(body[1:])))
        i = end


class FrameDecoder:
    """decode_frames over a byte stream: feed() what arrives, get the frames it completes."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> list[Received]:
        items, self._rest = decode_frames(self._rest + data)
        return items

    def reset(self) -> None:
        """Forget a partly received frame."""
        self._rest = b""

    @property
    def pending(self) -> bytes:
        return self._rest


@dataclass(frozen=True, slots=True)
class FirmwareVersion:
    """GetFirmwareVersion's answer: IC (0x32 for a PN532), version, revision, support bits."""

    ic: int
    version: int
    revision: int
    support: int


def parse_firmware_version(payload: bytes) -> FirmwareVersion:
    """GetFirmwareVersion's response payload (after the 0x03 response code)."""
    if len(payload) != 4:
        raise Pn532ProtocolError(f"GetFirmwareVersion: {len(payload)} bytes instead of 4")
    return FirmwareVersion(*payload)


@dataclass(frozen=True, slots=True)
class TargetA:
    """One ISO/IEC 14443 type A target found by InListPassiveTarget at 106 kbps."""

    tg: int
    sens_res: bytes  # ATQA, 2 bytes
    sel_res: int  # SAK
    uid: bytes  # NFCID1
    ats: bytes = b""  # ATS, ATSLength byte included, for ISO/IEC 14443-4 cards

    @property
    def id_tag(self) -> str:
        """The UID as an OCPP idTag: upper-case hex, e.g. "04A2B3C4D5E680"."""
        return self.uid.hex().upper()


def parse_passive_targets_106a(payload: bytes) -> tuple[TargetA, ...]:
    """InListPassiveTarget's response payload (after the 0x4B response code) for BrTy 0x00:
    NbTg, then per target Tg, SENS_RES (2), SEL_RES, NFCIDLength, NFCID1 and, when SEL_RES
    says ISO/IEC 14443-4 (bit 0x20), ATSLength and the rest of the ATS."""
    if not payload:
        raise Pn532ProtocolError("InListPassiveTarget: empty response")
    count = payload[0]
    if count > 2:
        raise Pn532ProtocolError(f"InListPassiveTarget: NbTg {count} (at most 2)")
    targets: list[TargetA] = []
    i = 1
    for _ in range(count):
        if len(payload) < i + 5:
            raise Pn532ProtocolError("InListPassiveTarget: target data cut short")
        tg, sens_res, sel_res, uid_len = (
            payload[i],
            payload[i + 1 : i + 3],
            payload[i + 3],
            payload[i + 4],
        )
        if uid_len not in UID_LENGTHS:
            raise Pn532ProtocolError(f"InListPassiveTarget: NFCIDLength {uid_len}")
        i += 5
        uid = payload[i : i + uid_len]
        if len(uid) != uid_len:
            raise Pn532ProtocolError("InListPassiveTarget: NFCID1 cut short")
        i += uid_len
        ats = b""
        if sel_res & 0x20 and i < len(payload):
            ats_len = payload[i]
            ats = payload[i : i + ats_len]
            if ats_len == 0 or len(ats) != ats_len:
                raise Pn532ProtocolError("InListPassiveTarget: ATS cut short")
            i += ats_len
        targets.append(TargetA(tg, bytes(sens_res), sel_res, bytes(uid), bytes(ats)))
    if i != len(payload):
        raise Pn532ProtocolError(f"InListPassiveTarget: {len(payload) - i} extra bytes")
    return tuple(targets)


# ---------------------------------------------------------------------------------- driver


class _ExchangeFailed(Exception):
    """One command got no usable answer; the message says why."""


@dataclass(frozen=True, slots=True)
class _PortLost:
    reason: str


def _check_number(name: str, value: object, *, low: float, high: float, above: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, not {value!r}")
    number = float(value)
    if not math.isfinite(number) or number > high or number < low or (above and number == low):
        sign = ">" if above else ">="
        raise ValueError(f"{name} must be {sign} {low:g} and <= {high:g}, not {value!r}")
    return number


# name -> (lowest, highest, lowest excluded)
_NUMBER_OPTIONS: dict[str, tuple[float, float, bool]] = {
    "poll_interval_s": (0.0, 60.0, True),
    "rearm_s": (0.0, 3600.0, False),
    "timeout_s": (0.0, 600.0, True),
}


class Pn532Reader:
    """hal.interfaces.TokenReader for a PN532 on a serial port (HSU).

    `start()` opens the port (Pn532Error when it cannot) and starts polling; `close()` stops.
    Callbacks run on the event loop via loop.call_soon. `firmware` holds the last
    GetFirmwareVersion answer.
    """

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = DEFAULT_BAUDRATE,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        rearm_s: float = DEFAULT_REARM_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if not isinstance(port, str) or not port:
            raise ValueError(f"port must be a device path, not {port!r}")
        if isinstance(baudrate, bool) or baudrate not in BAUDRATES:
            raise ValueError(f"baudrate must be one of {BAUDRATES}, not {baudrate!r}")
        numbers = {"poll_interval_s": poll_interval_s, "rearm_s": rearm_s, "timeout_s": timeout_s}
        for name, value in numbers.items():
            low, high, above = _NUMBER_OPTIONS[name]
            _check_number(name, value, low=low, high=high, above=above)
        self.port = port
        self.baudrate = baudrate
        self.poll_interval_s = float(poll_interval_s)
        self.rearm_s = float(rearm_s)
        self.timeout_s = float(timeout_s)
        self._reply_wait_s = min(self.timeout_s, _MAX_REPLY_WAIT_S)
        self.firmware: FirmwareVersion | None = None

        self._token_callbacks: list[Callable[[str], None]] = []
        self._fault_callbacks: list[FaultCallback] = []
        self._serial: serial.Serial | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._decoder = FrameDecoder()
        self._inbox: asyncio.Queue[Received | _PortLost] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._initialised = False
        self._faulted = False
        self._last_answer = 0.0
        self._last_error = ""
        # Cards seen: UID -> None while on the reader, else when it was first missed.
        self._cards: dict[str, float | None] = {}

    def __repr__(self) -> str:
        return f"Pn532Reader({self.port!r})"

    # ------------------------------------------------------------------- TokenReader API

    def on_token(self, callback: Callable[[str], None]) -> None:
        """Call `callback(id_tag)` (on the event loop) when a card comes to the reader."""
        self._token_callbacks.append(callback)

    def on_fault(self, callback: FaultCallback) -> None:
        """`callback("ReaderFailure", info)` when the reader stops answering,
        `callback(None, info)` when it answers again."""
        self._fault_callbacks.append(callback)

    async def start(self) -> None:
        """Open the port and start polling. Raises Pn532Error when the port cannot be opened;
        later failures are faults, retried every poll."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        try:
            self._open()
        except _ExchangeFailed as exc:
            raise Pn532Error(f"PN532 reader: {exc}") from None
        self._last_answer = self._loop.time()
        self._task = asyncio.create_task(self._run(), name=f"pn532 {self.port}")

    async def close(self) -> None:
        """Stop polling and close the port."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._close_port()

    # ----------------------------------------------------------------------------- polling

    async def _run(self) -> None:
        while True:
            try:
                await self._cycle()
            except (_ExchangeFailed, Pn532ProtocolError) as exc:
                self._failed(str(exc))
            except Exception as exc:  # a bug here must not stop the polling
                log.exception("PN532 on %s: unexpected error", self.port)
                self._failed(f"unexpected error: {exc!r}")
            await asyncio.sleep(self.poll_interval_s)

    async def _cycle(self) -> None:
        if self._serial is None:
            self._open()
        if not self._initialised:
            await self._initialise()
        payload = await self._exchange(CMD_IN_LIST_PASSIVE_TARGET, bytes([1, BRTY_106_TYPE_A]))
        targets = parse_passive_targets_106a(payload)
        self._answered()
        self._seen([target.id_tag for target in targets])

    async def _initialise(self) -> None:
        # Normal mode, virtual-card timeout 1 s (unused), IRQ pin used.
        await self._exchange(
            CMD_SAM_CONFIGURATION, bytes([SAM_MODE_NORMAL, 0x14, 0x01]), prefix=WAKEUP
        )
        firmware = parse_firmware_version(await self._exchange(CMD_GET_FIRMWARE_VERSION))
        if firmware != self.firmware:
            log.info(
                "PN532 on %s: IC 0x%02X firmware %d.%d support 0x%02X",
                self.port,
                firmware.ic,
                firmware.version,
                firmware.revision,
                firmware.support,
            )
        self.firmware = firmware
        # MaxRetries: MxRtyATR default, MxRtyPSL 1, MxRtyPassiveActivation 1 (not forever).
        await self._exchange(CMD_RF_CONFIGURATION, bytes([RF_CFG_MAX_RETRIES, 0xFF, 0x01, 0x01]))
        self._initialised = True

    def _answered(self) -> None:
        assert self._loop is not None
        self._last_answer = self._loop.time()
        if self._faulted:
            self._faulted = False
            log.info("PN532 on %s answers again", self.port)
            self._report_fault(None, f"PN532 on {self.port} answers again")

    def _failed(self, reason: str) -> None:
        assert self._loop is not None
        self._initialised = False  # wake it up and configure it again before the next poll
        if reason != self._last_error:
            log.debug("PN532 on %s: %s", self.port, reason)
        self._last_error = reason
        silent_for = self._loop.time() - self._last_answer
        if not self._faulted and silent_for >= self.timeout_s:
            self._faulted = True
            info = f"PN532 on {self.port}: no valid answer for {silent_for:.1f} s ({reason})"
            log.warning("%s", info)
            self._report_fault("ReaderFailure", info)

    def _seen(self, present: Sequence[str]) -> None:
        assert self._loop is not None
        now = self._loop.time()
        for id_tag in present:
            known = id_tag in self._cards
            missed_since = self._cards.get(id_tag)
            if not known or (missed_since is not None and now - missed_since >= self.rearm_s):
                log.info("PN532 on %s: card %s", self.port, id_tag)
                for callback in self._token_callbacks:
                    self._loop.call_soon(callback, id_tag)
            self._cards[id_tag] = None
        for id_tag, missed_since in list(self._cards.items()):
            if id_tag in present:
                continue
            if missed_since is None:
                self._cards[id_tag] = now
            elif now - missed_since >= self.rearm_s:
                del self._cards[id_tag]

    def _report_fault(self, code: str | None, info: str) -> None:
        assert self._loop is not None
        for callback in self._fault_callbacks:
            self._loop.call_soon(callback, code, info)

    # ---------------------------------------------------------------------------- exchange

    async def _exchange(self, command: int, params: bytes = b"", *, prefix: bytes = b"") -> bytes:
        """Send `command`, wait for its ACK and its response; the response's payload."""
        assert self._loop is not None
        name = f"command 0x{command:02X}"
        deadline = self._loop.time() + self._reply_wait_s
        frame = encode_command(command, params)
        self._flush_input()
        self._write(prefix + frame)
        resends = 0
        while True:  # the ACK
            item = await self._next(deadline, f"ACK to {name}")
            if isinstance(item, Ack):
                break
            if isinstance(item, Nack):
                resends += 1
                if resends > _MAX_RESENDS:
                    raise _ExchangeFailed(f"{name} refused with NACK {resends} times")
                self._flush_input()
                self._write(frame)
            elif isinstance(item, ErrorFrame):
                raise _ExchangeFailed(f"error frame in answer to {name}")
            # garbage, bad frames and stale responses: keep waiting
        resends = 0
        while True:  # the response
            try:
                item = await self._next(deadline, f"response to {name}")
            except _ExchangeFailed:
                self._abort()
                raise
            if isinstance(item, InfoFrame):
                if item.tfi == TFI_PN532_TO_HOST and item.data[:1] == bytes([command + 1]):
                    return item.data[1:]
            elif isinstance(item, ErrorFrame):
                raise _ExchangeFailed(f"error frame in answer to {name}")
            elif isinstance(item, BadFrame) and item.reason in ("lcs", "dcs"):
                resends += 1
                if resends > _MAX_RESENDS:
                    self._abort()
                    raise _ExchangeFailed(f"response to {name}: {resends} checksum errors")
                self._write(NACK_FRAME)

    async def _next(self, deadline: float, what: str) -> Received:
        try:
            async with asyncio.timeout_at(deadline):
                item = await self._inbox.get()
        except TimeoutError:
            raise _ExchangeFailed(f"no {what}") from None
        if isinstance(item, _PortLost):
            raise _ExchangeFailed(item.reason)
        return item

    def _abort(self) -> None:
        """Tell the PN532 to drop the command in progress (an ACK from the host)."""
        with contextlib.suppress(_ExchangeFailed):
            self._write(ACK_FRAME)

    # ------------------------------------------------------------------------ serial port

    def _open(self) -> None:
        assert self._loop is not None
        try:
            port = serial.Serial(
                port=self.port,
                baudrate=self.baudrate,
                bytesize=serial.EIGHTBITS,
                parity=serial.PARITY_NONE,
                stopbits=serial.STOPBITS_ONE,
                timeout=0,
                write_timeout=0,
                exclusive=True,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            code = exc.errno if isinstance(exc, OSError) else None
            if code in (errno.EAGAIN, errno.EWOULDBLOCK):
                detail = "in use by another process (locked)"
            else:
                detail = os.strerror(code) if code else str(exc)
            raise _ExchangeFailed(f"cannot open {self.port}: {detail}") from None
        self._serial = port
        self._decoder.reset()
        while not self._inbox.empty():  # what was left of the last connection
            self._inbox.get_nowait()
        self._loop.add_reader(port.fileno(), self._readable)
        self._initialised = False

    def _close_port(self) -> None:
        port, self._serial = self._serial, None
        self._initialised = False
        if port is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(port.fileno())
        try:
            port.close()
        except (serial.SerialException, OSError) as exc:
            log.debug("PN532 on %s: closing the port: %s", self.port, exc)

    def _port_lost(self, reason: str) -> None:
        log.warning("PN532 on %s: %s; reopening it", self.port, reason)
        self._close_port()
        self._inbox.put_nowait(_PortLost(reason))

    def _readable(self) -> None:
        port = self._serial
        if port is None:
            return
        try:
            data = os.read(port.fileno(), 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            self._port_lost(f"read failed: {exc}")
            return
        if not data:
            self._port_lost("the device is gone")
            return
        for item in self._decoder.feed(data):
            self._inbox.put_nowait(item)

    def _flush_input(self) -> None:
        """Half duplex: before a command, whatever was received belongs to an older one."""
        while not self._inbox.empty():
            if isinstance(self._inbox.get_nowait(), _PortLost):
                raise _ExchangeFailed("the port was lost")
        self._decoder.reset()
        if self._serial is not None:
            try:
                self._serial.reset_input_buffer()
            except (serial.SerialException, OSError) as exc:
                self._port_lost(f"flush failed: {exc}")
                raise _ExchangeFailed(f"flush failed: {exc}") from None

    def _write(self, data: bytes) -> None:
        port = self._serial
        if port is None:
            raise _ExchangeFailed("the port is closed")
        try:
            written = os.write(port.fileno(), data)
        except BlockingIOError:
            raise _ExchangeFailed("the port does not take data (output buffer full)") from None
        except OSError as exc:
            self._port_lost(f"write failed: {exc}")
            raise _ExchangeFailed(f"write failed: {exc}") from None
        if written != len(data):
            raise _ExchangeFailed(f"wrote {written} of {len(data)} bytes")


# ----------------------------------------------------------------------------------- build

OPTIONS = ("port", "baudrate", "poll_interval_s", "rearm_s", "timeout_s")


def build(evse: Evse, hardware: Hardware, shared: dict[str, object] | None = None) -> Pn532Reader:
    """The PN532 reader of `evse` from its [evse.token_reader.options]: `port` (required, the
    serial device), `baudrate` (default 115200), `poll_interval_s` (0.25), `rearm_s` (1.0),
    `timeout_s` (2.0). Raises hal.registry.HardwareConfigError naming the EVSE and option;
    `shared` records which EVSE uses each port, so two EVSEs cannot claim one reader."""
    from hal.registry import HardwareConfigError  # here: hal.registry imports the drivers

    def error(name: str, problem: str) -> HardwareConfigError:
        return HardwareConfigError(
            f"EVSE {evse.id}: evse[{evse.id}].token_reader.options.{name}: {problem}"
        )

    options = dict(hardware.options)
    for name in options:
        if name not in OPTIONS:
            raise error(
                name, f"unknown option of backend {BACKEND!r}; expected one of {', '.join(OPTIONS)}"
            )
    port = options.get("port")
    if port is None:
        raise error("port", "missing; the serial device of the reader, e.g. /dev/ttyUSB0")
    if not isinstance(port, str) or not port:
        raise error("port", f"found {port!r}; expected a device path")
    baudrate = options.get("baudrate", DEFAULT_BAUDRATE)
    if isinstance(baudrate, bool) or baudrate not in BAUDRATES:
        raise error(
            "baudrate", f"found {baudrate!r}; expected one of {', '.join(map(str, BAUDRATES))}"
        )
    assert isinstance(baudrate, int)
    numbers: dict[str, float] = {}
    defaults = {
        "poll_interval_s": DEFAULT_POLL_INTERVAL_S,
        "rearm_s": DEFAULT_REARM_S,
        "timeout_s": DEFAULT_TIMEOUT_S,
    }
    for name, default in defaults.items():
        low, high, above = _NUMBER_OPTIONS[name]
        try:
            numbers[name] = _check_number(
                name, options.get(name, default), low=low, high=high, above=above
            )
        except ValueError as exc:
            raise error(name, str(exc)) from None
    if not os.path.exists(port):
        raise error("port", f"{port} does not exist")
    if shared is not None:
        key = f"{BACKEND}:{os.path.realpath(port)}"
        owner = shared.setdefault(key, evse.id)
        if owner != evse.id:
            raise error("port", f"{port} is already the token reader of EVSE {owner}")
    return Pn532Reader(port, baudrate=baudrate, **numbers)
