"""The serial connection to one RAPI MCU, shared by its pilot and contactor: the port, the poll
loop and heartbeat, the commands that bring the MCU to what evsed wants, and the pilot state and
faults derived from its answers (see hal.pilot.rapi for the behaviour).

I/O: pyserial opens and configures the port (baud rate, raw mode, exclusive lock); reading and
writing then go through its non-blocking file descriptor on the asyncio loop (add_reader /
add_writer), so nothing blocks the loop and no thread is needed. One command is in flight at a
time, from one task, matched to its reply by the RAPI sequence id. Callbacks are scheduled with
loop.call_soon, fault reports before state changes, never from inside a caller's method.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import serial

from hal.interfaces import FaultCallback, PilotState
from hal.pilot.rapi_protocol import (
    ECF_PP_AUTO_AMPACITY,
    ECVF_EV_CONNECTED,
    EVSE_STATE_A,
    EVSE_STATE_D,
    EVSE_STATE_SLEEPING,
    EVSE_STATE_UNKNOWN,
    RELAY_FAULT_STATES,
    FrameError,
    FrameReader,
    McuStatus,
    RapiFrame,
    RapiStats,
    encode_command,
    mcu_fault,
    parse_get_state,
    parse_state_notification,
    pilot_state_of,
)

if TYPE_CHECKING:
    from hal.pilot.rapi import RapiContactor, RapiPilot

__all__ = [
    "DEFAULT_BAUDRATE",
    "DEFAULT_POLL_INTERVAL_S",
    "DEFAULT_TIMEOUT_S",
    "MAX_OFFER_A",
    "MIN_OFFER_A",
    "SILENT_INFO",
    "RapiError",
    "RapiLink",
]

log = logging.getLogger(__name__)

DEFAULT_BAUDRATE = 115200
DEFAULT_POLL_INTERVAL_S = 1.0
DEFAULT_TIMEOUT_S = 3.0
MIN_OFFER_A = 6
MAX_OFFER_A = 80  # IEC 61851-1 PWM ends at 80 A; RAPI's SC takes one byte
SILENT_INFO = "MCU not answering"
_COMPLAINT_INTERVAL_S = 10.0


class RapiError(ConnectionError):
    """The RAPI port cannot be opened."""


class _LinkDown(Exception):
    """The port failed while a command was in flight."""


class _NoReply(Exception):
    """A command went unanswered (or was answered with nonsense)."""


class RapiLink:
    """One serial connection to one RAPI MCU, shared by the EVSE's pilot and contactor."""

    def __init__(
        self,
        *,
        evse_id: int,
        port: str,
        baudrate: int = DEFAULT_BAUDRATE,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        lock: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.evse_id = evse_id
        self.port = port
        self.configure(
            baudrate=baudrate, poll_interval_s=poll_interval_s, timeout_s=timeout_s, lock=lock
        )
        # The options the devices' configuration set explicitly (hal.pilot.rapi merges them).
        self.options: dict[str, str | int | float | bool] = {}
        self.stats = RapiStats()
        self._clock = clock
        self._frames = FrameReader(self.stats)
        self._serial: Any = None
        self._fd = -1
        self._out = bytearray()
        self._writing = False
        self._task: asyncio.Task[None] | None = None
        self._users = 0
        self._closing = False
        self._wake = asyncio.Event()
        self._first_answer = asyncio.Event()
        # The command in flight: its sequence id, the future its reply resolves, and what to
        # do with the reply the moment it arrives.
        self._pending: (
            tuple[int, asyncio.Future[RapiFrame], Callable[[RapiFrame], None] | None] | None
        ) = None
        self._seq = 0
        self._open_failure_logged = False
        self._last_complaint = -math.inf
        # What the MCU told us.
        self.status: McuStatus | None = None
        self.capacity_a: int | None = None
        self.firmware: str | None = None
        self._settings_flags: int | None = None
        self.lock_feedback: bool | None = None
        self._cable_a: int | None = None
        self._cable_asked = False
        self._last_heartbeat = clock()
        self._silent = False
        # Whether the MCU's pilot state field is current while it sleeps (see pilot_state_of).
        self._pilot_known = False
        self._unknown_since: float | None = None
        # What evsed wants, and what the MCU acknowledged (None: unknown, send again).
        self.offer_a = 0
        self.hold_open = False
        self.lock_wish: bool | None = None
        self._applied_mode: bool | None = None  # True enabled (FE), False asleep (FS)
        self._applied_amps: int | None = None
        self._applied_lock: bool | None = None
        self._lock_manual = False
        self._lock_missing = False  # the MCU refused S5 (firmware without MENNEKES_LOCK)
        self._lock_problem: str | None = None
        # What was reported.
        self.state = PilotState.F
        self._announce = False
        self._pilot_fault: tuple[str, str] | None = None
        self._contactor_fault: tuple[str, str] | None = None
        self.pilot_callbacks: list[Callable[[PilotState], None]] = []
        self.pilot_fault_callbacks: list[FaultCallback] = []
        self.contactor_fault_callbacks: list[FaultCallback] = []
        self.pilot_device: RapiPilot | None = None  # built by hal.pilot.rapi
        self.contactor_device: RapiContactor | None = None

    def configure(
        self, *, baudrate: int, poll_interval_s: float, timeout_s: float, lock: bool
    ) -> None:
        """Set the link's parameters (before start)."""
        self.baudrate = baudrate
        self.poll_interval_s = poll_interval_s
        self.timeout_s = timeout_s
        self.lock_enabled = lock
        self.reply_timeout_s = min(1.0, timeout_s / 2)

    # ----------------------------------------------------------------- lifecycle

    @property
    def running(self) -> bool:
        return self._task is not None

    @property
    def connected(self) -> bool:
        return self._serial is not None

    @property
    def silent(self) -> bool:
        return self._silent

    async def start(self) -> None:
        """Open the port and start polling. Waits up to `timeout_s` for the MCU's first
        answer, which sets the initial state without an on_change call; an MCU that stays
        silent leaves the state F and raises the fault.

        A port that cannot be opened raises RapiError (the clear error at start), but the link
        is started all the same: it keeps trying to open the port every poll interval and
        reports EVCommunicationError meanwhile; close() stops it."""
        self._users += 1
        if self._task is not None:
            return
        error: RapiError | None = None
        try:
            self._open()
        except RapiError as exc:
            error = exc
            self._open_failure_logged = True
        self._last_heartbeat = self._clock()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name=f"rapi {self.port}")
        if error is not None:
            self._announce = True
            raise error
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._first_answer.wait()
        except TimeoutError:
            log.warning("EVSE %d: RAPI MCU on %s did not answer", self.evse_id, self.port)
        self._announce = True
        self._check_silence()

    async def close(self) -> None:
        """Stop when the last device using the link closes: the MCU is put to sleep (no
        energy without evsed watching), the port closed."""
        if self._users > 0:
            self._users -= 1
        if self._users > 0 or self._task is None:
            return
        task, self._task = self._task, None
        # The flag ends the loop even if the cancellation meets a wait that just completed.
        self._closing = True
        self._wake.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if self._serial is not None:
            with contextlib.suppress(OSError):
                os.write(self._fd, encode_command("FS"))
            self._drop_port()

    # ----------------------------------------------------------------- wishes (devices)

    def set_offer(self, amps: float) -> None:
        if isinstance(amps, bool) or not isinstance(amps, int | float) or not math.isfinite(amps):
            raise ValueError(f"offered current must be a finite number >= 0, not {amps!r}")
        if amps < 0:
            raise ValueError(f"offered current must be a finite number >= 0, not {amps!r}")
        whole = 0 if amps < MIN_OFFER_A else int(min(amps, MAX_OFFER_A))
        if whole >= MIN_OFFER_A:
            self.hold_open = False
        self.offer_a = whole
        self._wake.set()

    def set_contactor(self, closed: bool) -> None:
        self.hold_open = not closed
        self._wake.set()

    def set_lock(self, locked: bool) -> None:
        self.lock_wish = bool(locked)
        if not self.lock_enabled:
            self.lock_feedback = self.lock_wish
        self._wake.set()

    @property
    def wants_enabled(self) -> bool:
        return self.offer_a >= MIN_OFFER_A and not self.hold_open

    @property
    def relay_closed(self) -> bool:
        return self.status is not None and self.status.relay_closed

    @property
    def cable_max_current_a(self) -> float | None:
        if self._cable_a is None or not self.state.plugged:
            return None
        return float(self._cable_a)

    # ----------------------------------------------------------------- the poll loop

    async def _run(self) -> None:
        while not self._closing:
            self._wake.clear()  # a wish made while the cycle runs wakes the next one at once
            try:
                if self._serial is None:
                    self._reopen()
                if self._serial is not None:
                    await self._cycle()
            except (_LinkDown, _NoReply):
                pass
            except Exception:
                # A bug must not end the heartbeat: the watchdog keeps reporting silence.
                log.exception("EVSE %d: RAPI poll on %s failed", self.evse_id, self.port)
            self._check_silence()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval_s):
                    await self._wake.wait()

    async def _cycle(self) -> None:
        """Bring the MCU to what evsed wants, then poll it."""
        if self._settings_flags is None:
            reply = await self._command("GE")
            self._settings_flags = _int_arg(reply, 1, 16) if reply.ok else 0
        await self._apply_mode()
        if self.lock_enabled:
            await self._apply_lock()
        await self._command("GS", on_reply=self._on_state_reply)
        if self.lock_enabled and not self._lock_missing:
            await self._poll_lock()
        if (
            self.state.plugged
            and not self._cable_asked
            and (self._settings_flags or 0) & ECF_PP_AUTO_AMPACITY
        ):
            reply = await self._command("GC")
            self._cable_asked = True
            self._cable_a = _int_arg(reply, 3, 10) if reply.ok else None
            self._refresh()

    def _on_state_reply(self, reply: RapiFrame) -> None:
        """The heartbeat. Runs as the reply arrives, before any frame behind it: a $AT sent
        after the answer must not be overtaken by it."""
        if not reply.ok:
            return
        try:
            status = parse_get_state(reply.args)
        except FrameError as exc:
            self.stats.malformed += 1
            self._complain(f"bad GS answer: {exc}")
            return
        self.stats.heartbeats += 1
        self._last_heartbeat = self._clock()
        self._first_answer.set()
        self._take_status(status)
        self._check_silence()

    async def _apply_mode(self) -> None:
        enabled = self.wants_enabled
        if enabled and self._applied_amps != self.offer_a:
            amps = self.offer_a
            reply = await self._command("SC", str(amps), "V")
            self._applied_amps = amps
            answered = _int_arg(reply, 0, 10)
            if answered is not None:
                self.capacity_a = answered
            if not reply.ok:
                log.warning(
                    "EVSE %d: MCU set %s A instead of the %d A asked", self.evse_id, answered, amps
                )
        if self._applied_mode != enabled:
            reply = await self._command("FE" if enabled else "FS")
            if reply.ok:
                self._applied_mode = enabled

    async def _apply_lock(self) -> None:
        """Manual lock mode from the start (evsed decides, not the MCU's plug-in automatic),
        then the position evsed asked for."""
        if not self._lock_manual and not self._lock_missing:
            reply = await self._command("S5", "M")
            self._lock_manual = reply.ok
            self._lock_missing = not reply.ok
        wish = self.lock_wish
        if self._lock_missing:
            if wish is not None:
                self._set_lock_problem("MCU has no lock control")
            return
        if wish is not None and self._applied_lock != wish:
            reply = await self._command("S5", "1" if wish else "0")
            if not reply.ok:
                self._set_lock_problem("lock command refused")
                return
            self._applied_lock = wish

    async def _poll_lock(self) -> None:
        reply = await self._command("G5")
        state = _int_arg(reply, 0, 10) if reply.ok else None
        if state is None:
            return
        self.lock_feedback = state == 1
        wish = self.lock_wish
        if wish is None or self._applied_lock != wish:
            return
        if self.lock_feedback == wish:
            self._set_lock_problem(None)
        else:
            self._set_lock_problem("lock did not engage" if wish else "lock did not release")
            self._applied_lock = None  # command it again next time

    def _set_lock_problem(self, problem: str | None) -> None:
        if problem != self._lock_problem:
            self._lock_problem = problem
            self._refresh()

    async def _command(
        self, name: str, *args: str, on_reply: Callable[[RapiFrame], None] | None = None
    ) -> RapiFrame:
        if self._serial is None:
            raise _LinkDown
        self._seq = self._seq % 0xFF + 1
        future: asyncio.Future[RapiFrame] = asyncio.get_running_loop().create_future()
        self._pending = (self._seq, future, on_reply)
        try:
            self._send(encode_command(name, args, self._seq))
            async with asyncio.timeout(self.reply_timeout_s):
                reply = await future
        except TimeoutError:
            self.stats.timeouts += 1
            raise _NoReply from None
        finally:
            self._pending = None
            if future.done() and not future.cancelled():
                future.exception()  # the port failed under it: seen here, not logged by asyncio
        if not reply.ok:
            self.stats.naks += 1
            log.debug("EVSE %d: RAPI %s %s -> NK %s", self.evse_id, name, args, reply.args)
        return reply

    # ----------------------------------------------------------------- state and faults

    def _take_status(self, status: McuStatus) -> None:
        if status.evse_state == EVSE_STATE_UNKNOWN:
            # After FE (and at boot) the firmware reports "unknown" until it has measured the
            # pilot again (a few hundred ms): keep the last state unless that goes on.
            now = self._clock()
            if self._unknown_since is None:
                self._unknown_since = now
            # Not when the MCU was silent: the last status is stale then, the state stays F.
            fresh = self.status is not None and not self._silent
            if fresh and now - self._unknown_since < self.timeout_s:
                return
        else:
            self._unknown_since = None
        self.status = status
        if EVSE_STATE_A <= status.evse_state <= EVSE_STATE_D:
            self._pilot_known = True  # measuring: the pilot state field is live
        elif not status.vflags & ECVF_EV_CONNECTED:
            self._pilot_known = False  # unplugged while not measuring: the field is stale
        if status.capacity_a is not None:
            self.capacity_a = status.capacity_a
        # The MCU left the mode evsed set (its own timer, a button, a reset we missed).
        if self._applied_mode is True and status.evse_state == EVSE_STATE_SLEEPING:
            self._applied_mode = None
        if self._applied_mode is False and EVSE_STATE_A <= status.evse_state <= EVSE_STATE_D:
            self._applied_mode = None
        self._refresh()

    def _check_silence(self) -> None:
        silent = self._clock() - self._last_heartbeat >= self.timeout_s
        if silent != self._silent:
            self._silent = silent
            if silent:
                log.warning("EVSE %d: RAPI MCU on %s is not answering", self.evse_id, self.port)
            else:
                log.info("EVSE %d: RAPI MCU on %s answers again", self.evse_id, self.port)
            self._refresh()

    def _refresh(self) -> None:
        """Derive state and faults from what is known; report what changed."""
        status = self.status
        if self._silent or status is None:
            state = PilotState.F
        else:
            state = pilot_state_of(status, pilot_known=self._pilot_known)
        if not state.plugged and state is not PilotState.F:
            self._cable_a = None
            self._cable_asked = False
        mcu = None if status is None else mcu_fault(status.evse_state)
        if self._silent:
            pilot_fault: tuple[str, str] | None = ("EVCommunicationError", SILENT_INFO)
        elif mcu is not None:
            pilot_fault = mcu
        elif self._lock_problem is not None:
            pilot_fault = ("ConnectorLockFailure", self._lock_problem)
        else:
            pilot_fault = None
        contactor_fault = (
            mcu
            if mcu is not None and status is not None and status.evse_state in RELAY_FAULT_STATES
            else None
        )
        loop = asyncio.get_running_loop()
        if pilot_fault != self._pilot_fault:
            self._pilot_fault = pilot_fault
            self._report(loop, self.pilot_fault_callbacks, pilot_fault)
        if contactor_fault != self._contactor_fault:
            self._contactor_fault = contactor_fault
            self._report(loop, self.contactor_fault_callbacks, contactor_fault)
        if state is not self.state:
            log.info("EVSE %d: pilot %s -> %s", self.evse_id, self.state, state)
            self.state = state
            if self._announce:
                for callback in tuple(self.pilot_callbacks):
                    loop.call_soon(callback, state)

    def _report(
        self,
        loop: asyncio.AbstractEventLoop,
        callbacks: list[FaultCallback],
        fault: tuple[str, str] | None,
    ) -> None:
        code, info = fault if fault is not None else (None, "cleared")
        if fault is None:
            log.info("EVSE %d: RAPI fault cleared", self.evse_id)
        else:
            log.warning("EVSE %d: RAPI fault %s (%s)", self.evse_id, code, info)
        for callback in tuple(callbacks):
            loop.call_soon(callback, code, info)

    # ----------------------------------------------------------------- frames in

    def _on_frame(self, frame: RapiFrame) -> None:
        if self._closing:
            return
        if frame.name in ("OK", "NK"):
            pending = self._pending
            if (
                pending is None
                or pending[1].done()
                or (frame.seq is not None and frame.seq != pending[0])
            ):
                self.stats.stray_replies += 1
                self._complain(f"reply to no command in flight: {frame.tokens} :{frame.seq}")
                return
            pending[1].set_result(frame)
            if pending[2] is not None:
                try:
                    pending[2](frame)
                except Exception:
                    log.exception("EVSE %d: RAPI reply %s not handled", self.evse_id, frame.tokens)
        elif frame.name == "AT":
            try:
                status = parse_state_notification(frame.args)
            except FrameError as exc:
                self.stats.malformed += 1
                self._complain(f"bad $AT: {exc}")
                return
            self._take_status(status)
        elif frame.name == "AB":
            self.firmware = " ".join(frame.args[1:]) or None
            postcode = frame.args[0] if frame.args else "?"
            log.warning(
                "EVSE %d: RAPI MCU restarted (post code %s, firmware %s)",
                self.evse_id,
                postcode,
                self.firmware,
            )
            self._forget_mcu_settings()
            self._wake.set()
        else:
            log.debug("EVSE %d: RAPI notification %s ignored", self.evse_id, frame.tokens)

    def _forget_mcu_settings(self) -> None:
        """The MCU lost its volatile settings (reboot) or may have (reconnect): send again."""
        self._applied_mode = None
        self._applied_amps = None
        self._applied_lock = None
        self._lock_manual = False
        self._lock_missing = False
        self._settings_flags = None
        self._cable_asked = False

    def _complain(self, message: str) -> None:
        """Log line noise: a warning now and then, the rest at debug level."""
        now = self._clock()
        if now - self._last_complaint >= _COMPLAINT_INTERVAL_S:
            self._last_complaint = now
            stats = self.stats
            log.warning(
                "EVSE %d: RAPI on %s: %s (so far: %d bad checksums, %d truncated, "
                "%d malformed, %d stray bytes, %d stray replies)",
                self.evse_id,
                self.port,
                message,
                stats.bad_checksum,
                stats.truncated,
                stats.malformed,
                stats.garbage_bytes,
                stats.stray_replies,
            )
        else:
            log.debug("EVSE %d: RAPI on %s: %s", self.evse_id, self.port, message)

    # ----------------------------------------------------------------- the port

    def _open(self) -> None:
        try:
            port = serial.Serial(
                port=self.port,
                baudrate=self.baudrate,
                timeout=0,
                write_timeout=0,
                exclusive=True,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise RapiError(
                f"EVSE {self.evse_id}: cannot open RAPI port {self.port}: {exc}"
            ) from exc
        self._serial = port
        self._fd = port.fileno()
        os.set_blocking(self._fd, False)
        self._frames.reset()
        asyncio.get_running_loop().add_reader(self._fd, self._on_readable)
        self._open_failure_logged = False

    def _reopen(self) -> None:
        try:
            self._open()
        except RapiError as exc:
            if not self._open_failure_logged:
                self._open_failure_logged = True
                log.warning("%s; retrying every %g s", exc, self.poll_interval_s)
            return
        self.stats.reconnects += 1
        log.info("EVSE %d: RAPI port %s reopened", self.evse_id, self.port)
        self._forget_mcu_settings()

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            self._port_failed(exc)
            return
        if not data:
            self._port_failed(EOFError("end of file"))
            return
        frames = self._frames.feed(data)
        if self._frames.problems:
            for problem in self._frames.problems:
                self._complain(problem)
            self._frames.problems.clear()
        for frame in frames:
            self._on_frame(frame)

    def _send(self, data: bytes) -> None:
        self._out += data
        self._flush()

    def _flush(self) -> None:
        if self._serial is None:
            return
        try:
            written = os.write(self._fd, self._out) if self._out else 0
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self._port_failed(exc)
            raise _LinkDown from exc
        del self._out[:written]
        loop = asyncio.get_running_loop()
        if self._out and not self._writing:
            loop.add_writer(self._fd, self._on_writable)
            self._writing = True
        elif not self._out and self._writing:
            loop.remove_writer(self._fd)
            self._writing = False

    def _on_writable(self) -> None:
        with contextlib.suppress(_LinkDown):
            self._flush()

    def _port_failed(self, exc: BaseException) -> None:
        if self._serial is None:
            return
        log.warning("EVSE %d: RAPI port %s lost: %s", self.evse_id, self.port, exc)
        self._drop_port()
        pending = self._pending
        if pending is not None and not pending[1].done():
            pending[1].set_exception(_LinkDown())
        self._wake.set()

    def _drop_port(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._fd)
        if self._writing:
            loop.remove_writer(self._fd)
            self._writing = False
        with contextlib.suppress(serial.SerialException, OSError):
            self._serial.close()
        self._serial = None
        self._fd = -1
        self._out.clear()
        self._frames.reset()


def _int_arg(reply: RapiFrame, index: int, base: int) -> int | None:
    try:
        return int(reply.args[index], base)
    except (IndexError, ValueError):
        return None
