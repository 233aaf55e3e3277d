"""Emergency stop and residual-current device (RCD) inputs on GPIO lines, debounced.

`GpioSafetyInputs` implements hal.interfaces.SafetyInputs. Each input is an edge-detecting GPIO
input watched on the event loop; a change counts once the line has held its new level for
`debounce_s`. `emergency_stop` / `rcd_tripped` are the settled logical values (an input that is
not configured reads False); `on_change` callbacks are scheduled with loop.call_soon after
either changed. Each line is also read every `check_interval_s` (default 1 s). Fail-safe: an
input whose line can no longer be read counts as active (e-stop pressed, RCD tripped) until it
can be requested again (retried every `check_interval_s`).

Configuration (build() checks it; a missing chip or line is a HardwareConfigError at build, a
busy line one at start):

- `chip`: the GPIO chip: "/dev/gpiochip0", "gpiochip0" or the chip's label; required.
- `estop_line`, `rcd_line`: line offset (integer) or line name (string); at least one.
- `estop_active_low`, `rcd_active_low` (false): the line reads low when the e-stop is pressed /
  the RCD has tripped. With the default the input is active high: wire a normally-closed e-stop
  so that a pressed button or a broken wire makes the line go high.
- `debounce_s` (0.02): how long a new level must hold before it counts.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

from hal.gpio.lines import InputLine, InputWatch, Lines
from hal.gpio.options import DeviceOptions, LineRef, lines_from
from service.config import Evse, Hardware

__all__ = ["DEFAULT_CHECK_INTERVAL_S", "DEFAULT_DEBOUNCE_S", "OPTIONS", "GpioSafetyInputs", "build"]

_log = logging.getLogger(__name__)

DEFAULT_DEBOUNCE_S = 0.02
DEFAULT_CHECK_INTERVAL_S = 1.0
OPTIONS = ("chip", "estop_line", "rcd_line", "estop_active_low", "rcd_active_low", "debounce_s")


@dataclass
class _Input:
    ref: LineRef
    line: InputLine | None = None
    watch: InputWatch | None = None
    value: bool = False
    retry: asyncio.TimerHandle | None = None


class GpioSafetyInputs:
    """hal.interfaces.SafetyInputs over up to two GPIO inputs (see the module docstring).

    `await start()` requests the lines and reads their levels; `await close()` releases them.
    """

    def __init__(
        self,
        lines: Lines,
        *,
        estop: LineRef | None = None,
        rcd: LineRef | None = None,
        debounce_s: float = DEFAULT_DEBOUNCE_S,
        check_interval_s: float = DEFAULT_CHECK_INTERVAL_S,
        consumer: str = "evsed",
    ) -> None:
        if estop is None and rcd is None:
            raise ValueError("GpioSafetyInputs needs an emergency stop or an RCD line")
        if not debounce_s >= 0:
            raise ValueError(f"debounce_s must be >= 0, not {debounce_s!r}")
        self._lines = lines
        self._estop = None if estop is None else _Input(estop)
        self._rcd = None if rcd is None else _Input(rcd)
        self._debounce_s = debounce_s
        self._check_interval_s = check_interval_s
        self._consumer = consumer
        self._callbacks: list[Callable[[], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False

    async def start(self) -> None:
        """Request the lines; HardwareConfigError when one is missing or busy."""
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        inputs = self._inputs()
        try:
            for item in inputs:
                try:
                    self._open(item)
                except OSError as error:
                    raise item.ref.error(error) from None
        except BaseException:
            for item in inputs:
                self._release(item)
            raise
        self._started = True

    async def close(self) -> None:
        self._started = False
        for item in self._inputs():
            if item.retry is not None:
                item.retry.cancel()
                item.retry = None
            self._release(item)

    def _open(self, item: _Input) -> None:
        line = self._lines.request_input(
            item.ref.chip, item.ref.line, active_low=item.ref.active_low, consumer=self._consumer
        )
        try:
            item.watch = InputWatch(
                line,
                debounce_s=self._debounce_s,
                on_change=functools.partial(self._changed, item),
                on_error=functools.partial(self._failed, item),
                poll_s=self._check_interval_s,
            )
        except BaseException:
            line.release()
            raise
        item.line = line
        item.value = item.watch.value

    @staticmethod
    def _release(item: _Input) -> None:
        if item.watch is not None:
            item.watch.close()
            item.watch = None
        if item.line is not None:
            try:
                item.line.release()
            except OSError as error:
                _log.debug("%s: release: %s", item.ref.describe(), error)
            item.line = None

    def _reopen(self, item: _Input) -> None:
        item.retry = None
        if not self._started:
            return
        before = item.value
        try:
            self._open(item)
        except OSError as error:
            _log.debug("%s: still failing: %s", item.ref.describe(), error)
            self._schedule_reopen(item)
            return
        _log.info("%s: GPIO line usable again", item.ref.describe())
        if item.value != before:
            self._notify()

    def _schedule_reopen(self, item: _Input) -> None:
        assert self._loop is not None
        item.retry = self._loop.call_later(
            self._check_interval_s, functools.partial(self._reopen, item)
        )

    @property
    def emergency_stop(self) -> bool:
        return self._estop is not None and self._estop.value

    @property
    def rcd_tripped(self) -> bool:
        return self._rcd is not None and self._rcd.value

    def on_change(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def _inputs(self) -> list[_Input]:
        return [item for item in (self._estop, self._rcd) if item is not None]

    def _changed(self, item: _Input, level: bool) -> None:
        if item.value == level:
            return
        item.value = level
        self._notify()

    def _failed(self, item: _Input, error: OSError) -> None:
        """The line cannot be read: count it as active until it can be requested again."""
        _log.error("%s: GPIO error, counted as active: %s", item.ref.describe(), error)
        self._release(item)
        self._changed(item, True)
        if self._started and item.retry is None:
            self._schedule_reopen(item)

    def _notify(self) -> None:
        loop = self._loop or asyncio.get_running_loop()
        for callback in tuple(self._callbacks):
            loop.call_soon(callback)


def build(evse: Evse, hardware: Hardware, shared: dict[str, object]) -> GpioSafetyInputs:
    """The safety inputs of `evse` from `hardware.options`; HardwareConfigError when wrong."""
    options = DeviceOptions(evse, hardware, "safety", OPTIONS)
    estop_line = options.line("estop_line", required=False)
    rcd_line = options.line("rcd_line", required=False)
    if estop_line is None and rcd_line is None:
        raise options.error("estop_line", "missing; set estop_line, rcd_line or both")
    estop_active_low = options.flag("estop_active_low", False)
    rcd_active_low = options.flag("rcd_active_low", False)
    debounce_s = options.seconds("debounce_s", DEFAULT_DEBOUNCE_S, minimum=0.0, maximum=5.0)
    lines = lines_from(shared)
    chip = options.chip(lines)
    estop = (
        None
        if estop_line is None
        else options.line_ref(lines, shared, chip, "estop_line", estop_line, estop_active_low)
    )
    rcd = (
        None
        if rcd_line is None
        else options.line_ref(lines, shared, chip, "rcd_line", rcd_line, rcd_active_low)
    )
    return GpioSafetyInputs(
        lines, estop=estop, rcd=rcd, debounce_s=debounce_s, consumer=f"evsed:evse{evse.id}:safety"
    )
