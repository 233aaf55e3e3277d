"""The EVSE's start button (OCPP 2.0.1 C02) on a GPIO input, debounced.

`GpioStartButton` implements hal.interfaces.StartButton. The input is an edge-detecting GPIO
line watched on the event loop (hal.gpio.lines.InputWatch); a level counts once the line has
held it for `debounce_s`, so a press must last at least that long. A press is the settled
logical value going from released to pressed: every `on_press` callback is scheduled once with
loop.call_soon. Holding the button does not repeat; releasing it reports nothing. The line is
also read every `check_interval_s` (default 1 s), which catches a lost edge and a line that
stopped answering.

A line that cannot be read is logged as an error; the button then gives no presses, and the
line is requested again every `check_interval_s` until it answers. The level read when the
line comes back (or at start) is not a press: a button held down meanwhile, or stuck, starts
nothing; it counts again after it has been released.

Configuration (build() checks it; a missing chip or line is a HardwareConfigError at build, a
busy line one at start):

- `chip`: the GPIO chip: "/dev/gpiochip0", "gpiochip0" or the chip's label; required.
- `line`: line offset (integer) or line name (string); required.
- `active_low` (false): the line reads low while the button is pressed (a button to ground
  with a pull-up). With the default, pressed = high.
- `debounce_s` (0.05): how long a new level must hold before it counts (0 .. 5).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from hal.gpio.lines import InputLine, InputWatch, Lines
from hal.gpio.options import DeviceOptions, LineRef, lines_from
from service.config import Evse, Hardware

__all__ = [
    "DEFAULT_CHECK_INTERVAL_S",
    "DEFAULT_DEBOUNCE_S",
    "OPTIONS",
    "GpioStartButton",
    "build",
]

_log = logging.getLogger(__name__)

DEFAULT_DEBOUNCE_S = 0.05
DEFAULT_CHECK_INTERVAL_S = 1.0
OPTIONS = ("chip", "line", "active_low", "debounce_s")


class GpioStartButton:
    """hal.interfaces.StartButton over one GPIO input (see the module docstring).

    `await start()` requests the line and reads its level; `await close()` releases it.
    """

    def __init__(
        self,
        lines: Lines,
        ref: LineRef,
        *,
        debounce_s: float = DEFAULT_DEBOUNCE_S,
        check_interval_s: float = DEFAULT_CHECK_INTERVAL_S,
        consumer: str = "evsed",
    ) -> None:
        if not debounce_s >= 0:
            raise ValueError(f"debounce_s must be >= 0, not {debounce_s!r}")
        if not check_interval_s > 0:
            raise ValueError(f"check_interval_s must be > 0, not {check_interval_s!r}")
        self._lines = lines
        self._ref = ref
        self._debounce_s = debounce_s
        self._check_interval_s = check_interval_s
        self._consumer = consumer
        # For the log: the configuration key when built from one, else the chip and line.
        self._name = ref.describe() if ref.key else f"{ref.chip} line {ref.line!r}"
        self._callbacks: list[Callable[[], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._line: InputLine | None = None
        self._watch: InputWatch | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._pressed = False
        self._started = False

    @property
    def pressed(self) -> bool:
        """The settled level: True while the button is held (False while the line fails)."""
        return self._pressed and self._watch is not None

    @property
    def usable(self) -> bool:
        """Whether the line is requested and answering."""
        return self._watch is not None

    def on_press(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    async def start(self) -> None:
        """Request the line; HardwareConfigError when it is missing or busy."""
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        try:
            self._open()
        except OSError as error:
            self._release()
            raise self._ref.error(error) from None
        self._started = True

    async def close(self) -> None:
        self._started = False
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._release()

    def _open(self) -> None:
        line = self._lines.request_input(
            self._ref.chip, self._ref.line, active_low=self._ref.active_low, consumer=self._consumer
        )
        try:
            watch = InputWatch(
                line,
                debounce_s=self._debounce_s,
                on_change=self._changed,
                on_error=self._failed,
                poll_s=self._check_interval_s,
            )
        except BaseException:
            line.release()
            raise
        self._line = line
        self._watch = watch
        # The level found now is where presses count from, not a press itself.
        self._pressed = watch.value

    def _release(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if self._line is not None:
            try:
                self._line.release()
            except OSError as error:
                _log.debug("start button %s: release: %s", self._name, error)
            self._line = None

    def _changed(self, level: bool) -> None:
        was = self._pressed
        self._pressed = level
        if level and not was:
            self._notify()

    def _failed(self, error: OSError) -> None:
        """The line cannot be read: no presses until it can be requested again."""
        _log.error("start button %s: GPIO error, presses ignored: %s", self._name, error)
        self._release()
        if self._started and self._retry is None:
            self._schedule_reopen()

    def _schedule_reopen(self) -> None:
        assert self._loop is not None
        self._retry = self._loop.call_later(self._check_interval_s, self._reopen)

    def _reopen(self) -> None:
        self._retry = None
        if not self._started:
            return
        try:
            self._open()
        except OSError as error:
            _log.debug("start button %s: still failing: %s", self._name, error)
            self._schedule_reopen()
            return
        _log.info("start button %s: GPIO line usable again", self._name)

    def _notify(self) -> None:
        loop = self._loop or asyncio.get_running_loop()
        for callback in tuple(self._callbacks):
            loop.call_soon(callback)


def build(evse: Evse, hardware: Hardware, shared: dict[str, object]) -> GpioStartButton:
    """The start button of `evse` from `hardware.options`; HardwareConfigError when wrong."""
    options = DeviceOptions(evse, hardware, "start_button", OPTIONS)
    line = options.line("line", required=True)
    assert line is not None
    active_low = options.flag("active_low", False)
    debounce_s = options.seconds("debounce_s", DEFAULT_DEBOUNCE_S, minimum=0.0, maximum=5.0)
    lines = lines_from(shared)
    chip = options.chip(lines)
    ref = options.line_ref(lines, shared, chip, "line", line, active_low)
    return GpioStartButton(
        lines, ref, debounce_s=debounce_s, consumer=f"evsed:evse{evse.id}:start_button"
    )
