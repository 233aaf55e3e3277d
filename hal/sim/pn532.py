"""A PN532 emulator on the far end of a pty pair, speaking the real HSU frames, for tests.

Transport: os.openpty(). The emulator owns the master fd and reads and writes it raw (a thread,
non-blocking writes); the driver under test opens the slave side by path with pyserial, as it
would /dev/ttyUSB0. The emulator keeps its own slave fd open too (raw mode), so the pair stays
up while the driver closes and reopens the port. With `link`, the port is a symlink to the
slave (like socat's link=): unplug() removes it and closes the pair (the driver's fd fails),
replug() makes a new pair behind the same path.

What it emulates (NXP UM0701-02): it powers up asleep (Low VBat); on HSU a 0x55 byte wakes it,
frames sent while asleep are lost, and after a wake-up it answers nothing but SAMConfiguration
(this emulator is strict there: other commands are ignored, as if lost). Each valid command
frame is acknowledged (ACK) and answered; a host ACK aborts a command in progress, a host NACK
gets the last response again, frames with a bad checksum are ignored. Commands:
GetFirmwareVersion (IC 0x32, firmware 1.6), SAMConfiguration, RFConfiguration (MaxRetries is
honoured: with MxRtyPassiveActivation 0xFF, the power-up default, InListPassiveTarget waits
until a card comes), InListPassiveTarget at 106 kbps type A (the card on the reader, or 0
targets); any other command or a bad parameter gets the syntax error frame.

Controls (thread-safe, call from the test): place_card(uid_hex), remove_card(), and the line
faults silent(), corrupt_checksums(), send_garbage() (garbage instead of every frame), noise()
(garbage between valid frames), truncate_frames(), nack_commands(), inject(raw), power_cycle(),
unplug() / replug(). Counters: `commands` (codes of the valid commands received, in order),
`wakeups`, `polls` and `empty_polls` (InListPassiveTarget answers with and without a card).
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import threading
import tty
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hal.rfid.pn532 import (
    ACK_FRAME,
    CMD_GET_FIRMWARE_VERSION,
    CMD_IN_LIST_PASSIVE_TARGET,
    CMD_RF_CONFIGURATION,
    CMD_SAM_CONFIGURATION,
    ERROR_FRAME,
    NACK_FRAME,
    TFI_HOST_TO_PN532,
    TFI_PN532_TO_HOST,
    UID_LENGTHS,
    Ack,
    FrameDecoder,
    InfoFrame,
    Nack,
    encode_frame,
)

__all__ = ["Pn532Emulator", "SimCard"]

FIRMWARE = bytes([0x32, 0x01, 0x06, 0x07])  # PN532, firmware 1.6, ISO 18092 + A + B
_WAKE_BYTE = 0x55
_INFINITE = 0xFF


@dataclass(frozen=True, slots=True)
class SimCard:
    """A type A card: its UID (NFCID1), SENS_RES (ATQA) and SEL_RES (SAK)."""

    uid: bytes
    sens_res: bytes
    sel_res: int

    @classmethod
    def from_hex(
        cls, uid_hex: str, *, sens_res: bytes | None = None, sel_res: int | None = None
    ) -> SimCard:
        """A card with UID `uid_hex` (4, 7 or 10 bytes); by default a MIFARE Classic 1K for a
        4-byte UID, a MIFARE Ultralight for longer ones."""
        uid = bytes.fromhex(uid_hex)
        if len(uid) not in UID_LENGTHS:
            raise ValueError(f"a UID has 4, 7 or 10 bytes, not {len(uid)}")
        if sens_res is None:
            # ATQA bits 7-8: UID size single / double / triple.
            sens_res = bytes([0x00, {4: 0x04, 7: 0x44, 10: 0x84}[len(uid)]])
        if sel_res is None:
            sel_res = 0x08 if len(uid) == 4 else 0x00
        if len(sens_res) != 2 or not 0 <= sel_res <= 0xFF:
            raise ValueError("SENS_RES has 2 bytes, SEL_RES is one byte")
        return cls(uid, sens_res, sel_res)


class Pn532Emulator:
    """One emulated PN532 behind a pty; `port` is the path for the driver to open."""

    def __init__(self, link: str | os.PathLike[str] | None = None, *, asleep: bool = True):
        self._link = Path(link) if link is not None else None
        self._power_up_asleep = asleep
        self._lock = threading.RLock()
        self._master: int | None = None
        self._slave: int | None = None
        self._slave_name = ""
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._wake_r, self._wake_w = -1, -1
        self._requests: list[tuple[Callable[[], None], threading.Event]] = []
        self._random = random.Random(532)
        self._decoder = FrameDecoder()
        # The chip.
        self._asleep = asleep
        self._low_vbat = True
        self._passive_retries = _INFINITE
        self._pending_poll = False
        self._last_response: bytes | None = None
        self._card: SimCard | None = None
        # Line faults.
        self._silent = False
        self._corrupt = False
        self._garbage = False
        self._noise = False
        self._truncate = False
        self._nack = False
        # Observations.
        self.commands: list[int] = []
        self.wakeups = 0
        self.polls = 0
        self.empty_polls = 0

    # --------------------------------------------------------------------------- lifecycle

    @property
    def port(self) -> str:
        """The path the driver opens: the symlink if one was asked for, else the pty slave."""
        return str(self._link) if self._link is not None else self._slave_name

    def start(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        self._open_pty()
        self._thread = threading.Thread(target=self._serve, name="pn532-emulator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join(timeout=5)
            self._thread = None
        self._close_pty()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> Pn532Emulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------------------- controls

    def place_card(
        self, uid_hex: str, *, sens_res: bytes | None = None, sel_res: int | None = None
    ) -> None:
        """Put a card on the reader (replacing any card there)."""
        card = SimCard.from_hex(uid_hex, sens_res=sens_res, sel_res=sel_res)
        with self._lock:
            self._card = card
            if self._pending_poll:
                self._pending_poll = False
                self._respond(CMD_IN_LIST_PASSIVE_TARGET, self._targets())

    def remove_card(self) -> None:
        with self._lock:
            self._card = None

    def silent(self, on: bool = True) -> None:
        """Hear nothing, answer nothing (a dead reader or a cut wire)."""
        with self._lock:
            self._silent = on

    def corrupt_checksums(self, on: bool = True) -> None:
        """Send every response with a wrong DCS (ACKs stay good)."""
        with self._lock:
            self._corrupt = on

    def send_garbage(self, on: bool = True) -> None:
        """Send garbage bytes instead of every frame (ACK and response)."""
        with self._lock:
            self._garbage = on

    def noise(self, on: bool = True) -> None:
        """Send garbage bytes before every (valid) frame."""
        with self._lock:
            self._noise = on

    def truncate_frames(self, on: bool = True) -> None:
        """Send only the first half of every response (ACKs stay whole)."""
        with self._lock:
            self._truncate = on

    def nack_commands(self, on: bool = True) -> None:
        """Answer every command with a NACK."""
        with self._lock:
            self._nack = on

    def inject(self, raw: bytes) -> None:
        """Send `raw` to the host now, as it is."""
        with self._lock:
            self._send_raw(raw)

    def power_cycle(self) -> None:
        """Power off and on: asleep in Low VBat mode, RF settings back to their defaults."""
        with self._lock:
            self._asleep = True
            self._low_vbat = True
            self._passive_retries = _INFINITE
            self._pending_poll = False
            self._last_response = None
            self._decoder.reset()

    def unplug(self) -> None:
        """The device disappears: the pty pair is closed (and the symlink removed)."""
        self._in_thread(self._close_pty)

    def replug(self) -> None:
        """The device comes back: a new pty pair (behind the same symlink), powered up anew."""

        def plug() -> None:
            self.power_cycle()
            self._asleep = self._power_up_asleep
            self._open_pty()

        self._in_thread(plug)

    # ------------------------------------------------------------------------------ pty

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        with self._lock:
            self._master, self._slave = master, slave
            self._slave_name = os.ttyname(slave)
            self._decoder.reset()
        if self._link is not None:
            temporary = self._link.with_name(self._link.name + ".new")
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            temporary.symlink_to(self._slave_name)
            temporary.replace(self._link)

    def _close_pty(self) -> None:
        if self._link is not None:
            with contextlib.suppress(FileNotFoundError):
                self._link.unlink()
        with self._lock:
            fds = (self._master, self._slave)
            self._master = self._slave = None
        for fd in fds:
            if fd is not None:
                os.close(fd)

    def _in_thread(self, action: Callable[[], None]) -> None:
        """Run `action` on the emulator's thread (the only one that reads or closes the
        master fd) and wait for it."""
        done = threading.Event()
        with self._lock:
            self._requests.append((action, done))
        os.write(self._wake_w, b"x")
        if not done.wait(timeout=5):
            raise TimeoutError("the PN532 emulator's thread did not answer")

    def _serve(self) -> None:
        while not self._stopping:
            with self._lock:
                requests, self._requests = self._requests, []
            for action, done in requests:
                action()
                done.set()
            master = self._master
            fds = [self._wake_r] if master is None else [self._wake_r, master]
            ready, _, _ = select.select(fds, [], [], 1.0)
            if self._wake_r in ready:
                os.read(self._wake_r, 512)
            if master is not None and master in ready:
                try:
                    data = os.read(master, 4096)
                except BlockingIOError:
                    continue
                except OSError:  # EIO: no slave open (cannot happen: we hold one)
                    data = b""
                if data:
                    self._received(data)

    # ---------------------------------------------------------------------------- the chip

    def _received(self, data: bytes) -> None:
        with self._lock:
            if self._silent:
                return
            if self._asleep:
                woken = data.find(_WAKE_BYTE)
                if woken < 0:
                    return  # lost: the chip sleeps
                self._asleep = False
                self.wakeups += 1
                self._decoder.reset()
                data = data[woken:]
            for item in self._decoder.feed(data):
                if isinstance(item, Ack):
                    self._pending_poll = False  # the host aborts the command in progress
                elif isinstance(item, Nack):
                    if self._last_response is not None:
                        self._send(self._last_response, response=True)
                elif isinstance(item, InfoFrame) and item.tfi == TFI_HOST_TO_PN532 and item.data:
                    self._command(item.data[0], item.data[1:])
                # bad frames and garbage are ignored: the host times out and tries again

    def _command(self, command: int, params: bytes) -> None:
        if self._nack:
            self._send_raw(NACK_FRAME)
            return
        if self._low_vbat and command != CMD_SAM_CONFIGURATION:
            return  # after a wake-up only SAMConfiguration is heard
        self.commands.append(command)
        self._pending_poll = False
        self._send(ACK_FRAME)
        if command == CMD_GET_FIRMWARE_VERSION and not params:
            self._respond(command, FIRMWARE)
        elif command == CMD_SAM_CONFIGURATION and 1 <= len(params) <= 3 and 1 <= params[0] <= 4:
            self._low_vbat = False
            self._respond(command, b"")
        elif command == CMD_RF_CONFIGURATION and params:
            if params[0] == 0x05 and len(params) == 4:
                self._passive_retries = params[3]
            self._respond(command, b"")
        elif command == CMD_IN_LIST_PASSIVE_TARGET and len(params) >= 2 and params[0] in (1, 2):
            if params[1] != 0x00:
                self._respond(command, b"\x00")  # no card of another type here
            elif self._card is None and self._passive_retries == _INFINITE:
                self._pending_poll = True  # wait for a card, as the real chip does
            else:
                self._respond(command, self._targets())
        else:
            self._last_response = ERROR_FRAME
            self._send(ERROR_FRAME, response=True)

    def _targets(self) -> bytes:
        card = self._card
        if card is None:
            self.empty_polls += 1
            return b"\x00"
        self.polls += 1
        return bytes([1, 1, *card.sens_res, card.sel_res, len(card.uid), *card.uid])

    def _respond(self, command: int, payload: bytes) -> None:
        frame = encode_frame(TFI_PN532_TO_HOST, bytes([command + 1]) + payload)
        self._last_response = frame
        self._send(frame, response=True)

    def _send(self, frame: bytes, *, response: bool = False) -> None:
        """Send one frame through the line faults that are on."""
        if self._garbage:
            self._send_raw(self._garbage_bytes(len(frame)))
            return
        if response and self._corrupt:
            frame = frame[:-2] + bytes([frame[-2] ^ 0x5A]) + frame[-1:]
        if response and self._truncate:
            frame = frame[: len(frame) // 2]
        if self._noise:
            frame = self._garbage_bytes(5) + frame
        self._send_raw(frame)

    def _garbage_bytes(self, count: int) -> bytes:
        # No 0x00 or 0xFF, so garbage can never hold a start code.
        return bytes(self._random.randint(0x01, 0xFE) for _ in range(count))

    def _send_raw(self, data: bytes) -> None:
        if self._master is None or self._silent:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._master, data)
