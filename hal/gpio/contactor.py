"""The contactor on GPIO: a drive output for the coil, a mirror-contact input for feedback.

`GpioContactor` implements hal.interfaces.Contactor. `set_closed(c)` drives the output; the
mirror contact must follow within `feedback_timeout_s`, otherwise a fault is reported with
`("PowerSwitchFailure", "welded")` (still closed after an open command) or
`("PowerSwitchFailure", "stuck open")` (did not close). A feedback change that no command asked
for is a fault too: "closed without command" / "opened without command". The fault is cleared,
`(None, ...)`, as soon as the feedback agrees with the command again. `closed` is the feedback.
The feedback line is also read every `check_interval_s` (default 1 s), so a chip that went
away is noticed while nothing moves. A failing GPIO read or write is reported as
PowerSwitchFailure with the error as info; the lines are then requested again every
`check_interval_s` (the output at the last command) and supervision resumes when they are back.
Fault callbacks are scheduled with loop.call_soon, never called from inside a method.

A DC EVSE with a contactor per pole uses two GpioContactor instances.

Configuration ([evse.contactor] backend = "gpio", build() checks it; a missing chip or line is a
HardwareConfigError at build, a busy line one at start):

- `chip`: the GPIO chip: "/dev/gpiochip0", "gpiochip0" or the chip's label; required.
- `drive_line`: the coil output, line offset (integer) or line name (string); required.
- `feedback_line`: the mirror-contact input on the same chip; required.
- `active_low` (false): the drive output is active-low (low closes the contactor).
- `feedback_active_low` (false): the feedback input reads low when the contactor is closed.
- `feedback_timeout_s` (0.2): how long the feedback may take to follow a command.
"""

from __future__ import annotations

import asyncio
import logging

from hal.gpio.lines import InputLine, InputWatch, Lines, OutputLine
from hal.gpio.options import DeviceOptions, LineRef, lines_from
from hal.interfaces import FaultCallback
from service.config import Evse, Hardware

__all__ = [
    "DEFAULT_CHECK_INTERVAL_S",
    "DEFAULT_FEEDBACK_TIMEOUT_S",
    "FAULT_CODE",
    "OPTIONS",
    "GpioContactor",
    "build",
]

_log = logging.getLogger(__name__)

DEFAULT_FEEDBACK_TIMEOUT_S = 0.2
DEFAULT_CHECK_INTERVAL_S = 1.0
FAULT_CODE = "PowerSwitchFailure"
OPTIONS = (
    "chip",
    "drive_line",
    "feedback_line",
    "active_low",
    "feedback_active_low",
    "feedback_timeout_s",
)


class _LineFailure(Exception):
    def __init__(self, ref: LineRef, error: OSError) -> None:
        super().__init__(ref, error)
        self.ref = ref
        self.error = error


class GpioContactor:
    """hal.interfaces.Contactor over a drive output and a mirror-contact feedback input.

    `await start()` requests both lines (the output starts open) and starts supervising;
    `await close()` opens the contactor and releases them. Use it on the event loop's thread.
    """

    def __init__(
        self,
        lines: Lines,
        drive: LineRef,
        feedback: LineRef,
        *,
        feedback_timeout_s: float = DEFAULT_FEEDBACK_TIMEOUT_S,
        check_interval_s: float = DEFAULT_CHECK_INTERVAL_S,
        consumer: str = "evsed",
    ) -> None:
        if not feedback_timeout_s > 0:
            raise ValueError(f"feedback_timeout_s must be > 0, not {feedback_timeout_s!r}")
        self._lines = lines
        self._drive_ref = drive
        self._feedback_ref = feedback
        self._timeout_s = feedback_timeout_s
        self._check_interval_s = check_interval_s
        self._retry: asyncio.TimerHandle | None = None
        self._started = False
        self._consumer = consumer
        self._drive: OutputLine | None = None
        self._feedback_line: InputLine | None = None
        self._watch: InputWatch | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._commanded = False
        self._feedback = False
        self._fault: str | None = None
        self._fault_callbacks: list[FaultCallback] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Request the lines; HardwareConfigError when one is missing or busy."""
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        self._commanded = False
        try:
            self._open_lines()
        except _LineFailure as failure:
            raise failure.ref.error(failure.error) from None
        self._started = True
        # Starting drives the coil open: supervise it like any open command.
        self._follow()

    async def close(self) -> None:
        """Open the contactor and release both lines."""
        self._started = False
        self._cancel_timer()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._drive is not None:
            try:
                self._drive.set(False)
            except OSError as error:
                _log.warning("%s: cannot open the contactor: %s", self._drive_ref.describe(), error)
        self._release_lines()

    def _open_lines(self) -> None:
        """Request both lines, the output at the commanded level, and watch the feedback."""
        try:
            drive = self._lines.request_output(
                self._drive_ref.chip,
                self._drive_ref.line,
                active_low=self._drive_ref.active_low,
                value=self._commanded,
                consumer=self._consumer,
            )
        except OSError as error:
            raise _LineFailure(self._drive_ref, error) from None
        try:
            feedback = self._lines.request_input(
                self._feedback_ref.chip,
                self._feedback_ref.line,
                active_low=self._feedback_ref.active_low,
                consumer=self._consumer,
            )
            watch = InputWatch(
                feedback,
                debounce_s=0,
                on_change=self._feedback_changed,
                on_error=self._io_error,
                poll_s=self._check_interval_s,
            )
        except OSError as error:
            drive.release()
            raise _LineFailure(self._feedback_ref, error) from None
        self._drive, self._feedback_line, self._watch = drive, feedback, watch
        self._feedback = watch.value

    def _release_lines(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        for line in (self._drive, self._feedback_line):
            if line is not None:
                try:
                    line.release()
                except OSError as error:
                    _log.debug("%s: release: %s", self._drive_ref.describe(), error)
        self._drive = self._feedback_line = None

    def _reopen(self) -> None:
        """After a GPIO error: request the lines again; on success supervise the command."""
        self._retry = None
        if not self._started:
            return
        self._release_lines()
        try:
            self._open_lines()
        except _LineFailure as failure:
            _log.debug("%s: still failing: %s", failure.ref.describe(), failure.error)
            assert self._loop is not None
            self._retry = self._loop.call_later(self._check_interval_s, self._reopen)
            return
        _log.info("%s: GPIO lines usable again", self._drive_ref.describe())
        self._follow()

    # ------------------------------------------------------------------ Contactor

    def set_closed(self, closed: bool) -> None:
        if not self._started:
            raise RuntimeError("GpioContactor.set_closed() before start()")
        self._commanded = bool(closed)
        if self._drive is None:
            return  # the lines failed; _reopen() drives the command when they are back
        try:
            self._drive.set(self._commanded)
        except OSError as error:
            self._io_error(error)
            return
        self._follow()

    @property
    def closed(self) -> bool:
        """The mirror contact: True when the contactor reports closed."""
        return self._feedback

    @property
    def commanded(self) -> bool:
        """What the drive output was last told."""
        return self._commanded

    @property
    def fault(self) -> str | None:
        """The info of the PowerSwitchFailure being reported, None when healthy."""
        return self._fault

    def on_fault(self, callback: FaultCallback) -> None:
        self._fault_callbacks.append(callback)

    # ------------------------------------------------------------------ supervision

    def _follow(self) -> None:
        """After a command: agree now, or give the feedback `feedback_timeout_s` to follow."""
        self._cancel_timer()
        if self._feedback == self._commanded:
            self._agrees()
            return
        assert self._loop is not None
        self._timer = self._loop.call_later(self._timeout_s, self._deadline)

    def _feedback_changed(self, level: bool) -> None:
        self._feedback = level
        if level == self._commanded:
            self._cancel_timer()
            self._agrees()
        elif self._timer is None:
            # No command is under way: the contactor moved by itself.
            self._raise("closed without command" if level else "opened without command")

    def _deadline(self) -> None:
        self._timer = None
        if self._feedback != self._commanded:
            self._raise("welded" if self._feedback else "stuck open")

    def _agrees(self) -> None:
        if self._fault is not None:
            self._fault = None
            self._report(None, "contactor feedback agrees with the command")

    def _io_error(self, error: OSError) -> None:
        """A GPIO read or write failed: fault, drop the lines, retry every `check_interval_s`."""
        _log.error("%s: GPIO error: %s", self._drive_ref.describe(), error)
        self._cancel_timer()
        self._release_lines()
        self._raise(f"GPIO error: {error.strerror or error}")
        if self._retry is None and self._started:
            assert self._loop is not None
            self._retry = self._loop.call_later(self._check_interval_s, self._reopen)

    def _raise(self, info: str) -> None:
        if self._fault == info:
            return
        self._fault = info
        self._report(FAULT_CODE, info)

    def _report(self, code: str | None, info: str) -> None:
        if not self._fault_callbacks:
            return
        loop = self._loop or asyncio.get_running_loop()
        for callback in tuple(self._fault_callbacks):
            loop.call_soon(callback, code, info)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def build(evse: Evse, hardware: Hardware, shared: dict[str, object]) -> GpioContactor:
    """The GPIO contactor of `evse` from `hardware.options`; HardwareConfigError when wrong."""
    options = DeviceOptions(evse, hardware, "contactor", OPTIONS)
    drive_line = options.line("drive_line", required=True)
    feedback_line = options.line("feedback_line", required=True)
    assert drive_line is not None and feedback_line is not None
    active_low = options.flag("active_low", False)
    feedback_active_low = options.flag("feedback_active_low", False)
    timeout_s = options.seconds(
        "feedback_timeout_s", DEFAULT_FEEDBACK_TIMEOUT_S, minimum=0.001, maximum=10.0
    )
    lines = lines_from(shared)
    chip = options.chip(lines)
    drive = options.line_ref(lines, shared, chip, "drive_line", drive_line, active_low)
    feedback = options.line_ref(
        lines, shared, chip, "feedback_line", feedback_line, feedback_active_low
    )
    return GpioContactor(
        lines,
        drive,
        feedback,
        feedback_timeout_s=timeout_s,
        consumer=f"evsed:evse{evse.id}:contactor",
    )
