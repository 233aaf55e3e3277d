"""Status LEDs on GPIO outputs: green, blue and red lines showing a connector's OCPP status.

`StatusLeds.show(status)` lights the pattern of an OCPP connector status (1.6
ChargePointStatus, plus 2.0.1's "Occupied"); "Faulted" blinks red with `blink_period_s` (one
period = on + off), driven by a loop timer. Any colour may be left out (not wired); its part of
a pattern is then not shown.

| status | LEDs |
|---|---|
| Available | green |
| Preparing, Finishing | green + blue |
| Charging, Occupied | blue |
| SuspendedEV, SuspendedEVSE | blue + red |
| Reserved | green + red |
| Unavailable | red |
| Faulted | red, blinking |

Configuration (build() checks it): `chip` (required; "/dev/gpiochip0", "gpiochip0" or the
chip's label), `green_line`, `blue_line`, `red_line` (line offset or name, at least one),
`active_low` (false: all three lines light when high), `blink_period_s` (1.0).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from hal.gpio.lines import Lines, OutputLine
from hal.gpio.options import DeviceOptions, LineRef, lines_from
from service.config import Evse, Hardware

__all__ = ["COLOURS", "DEFAULT_BLINK_PERIOD_S", "OPTIONS", "PATTERNS", "LedPattern", "StatusLeds"]

_log = logging.getLogger(__name__)

COLOURS = ("green", "blue", "red")
DEFAULT_BLINK_PERIOD_S = 1.0
OPTIONS = ("chip", "green_line", "blue_line", "red_line", "active_low", "blink_period_s")


@dataclass(frozen=True, slots=True)
class LedPattern:
    lit: frozenset[str]
    blink: bool = False


def _pattern(*lit: str, blink: bool = False) -> LedPattern:
    return LedPattern(frozenset(lit), blink)


PATTERNS: dict[str, LedPattern] = {
    "Available": _pattern("green"),
    "Preparing": _pattern("green", "blue"),
    "Finishing": _pattern("green", "blue"),
    "Charging": _pattern("blue"),
    "Occupied": _pattern("blue"),
    "SuspendedEV": _pattern("blue", "red"),
    "SuspendedEVSE": _pattern("blue", "red"),
    "Reserved": _pattern("green", "red"),
    "Unavailable": _pattern("red"),
    "Faulted": _pattern("red", blink=True),
}


class StatusLeds:
    """Up to three LED outputs showing a connector status (see the module docstring).

    `await start()` requests the lines (all off); `await close()` turns them off and releases
    them. `show()` must be called on the event loop's thread.
    """

    def __init__(
        self,
        lines: Lines,
        *,
        green: LineRef | None = None,
        blue: LineRef | None = None,
        red: LineRef | None = None,
        blink_period_s: float = DEFAULT_BLINK_PERIOD_S,
        consumer: str = "evsed",
    ) -> None:
        refs = {"green": green, "blue": blue, "red": red}
        self._refs = {colour: ref for colour, ref in refs.items() if ref is not None}
        if not self._refs:
            raise ValueError("StatusLeds needs at least one LED line")
        if not blink_period_s > 0:
            raise ValueError(f"blink_period_s must be > 0, not {blink_period_s!r}")
        self._lines = lines
        self._half_period_s = blink_period_s / 2
        self._consumer = consumer
        self._outputs: dict[str, OutputLine] = {}
        self._status: str | None = None
        self._pattern = LedPattern(frozenset())
        self._blink_on = False
        self._timer: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        """Request the lines; HardwareConfigError when one is missing or busy."""
        if self._outputs:
            return
        outputs: dict[str, OutputLine] = {}
        try:
            for colour, ref in self._refs.items():
                try:
                    outputs[colour] = self._lines.request_output(
                        ref.chip, ref.line, active_low=ref.active_low, consumer=self._consumer
                    )
                except OSError as error:
                    raise ref.error(error) from None
        except BaseException:
            for output in outputs.values():
                output.release()
            raise
        self._outputs = outputs
        if self._status is not None:
            self.show(self._status)

    async def close(self) -> None:
        self._cancel_timer()
        for output in self._outputs.values():
            try:
                output.set(False)
            except OSError as error:
                _log.warning("status LEDs: cannot turn a LED off: %s", error)
            output.release()
        self._outputs = {}

    @property
    def status(self) -> str | None:
        """The status shown last."""
        return self._status

    def lit(self) -> frozenset[str]:
        """The colours lit right now (as set on the lines)."""
        return frozenset(colour for colour, output in self._outputs.items() if output.get())

    def show(self, status: str) -> None:
        """Show `status`, an OCPP connector status; ValueError for an unknown one."""
        pattern = PATTERNS.get(status)
        if pattern is None:
            raise ValueError(
                f"unknown connector status {status!r}; expected one of {', '.join(PATTERNS)}"
            )
        self._status = status
        self._pattern = pattern
        self._cancel_timer()
        self._blink_on = True
        self._apply(pattern.lit)
        if pattern.blink and self._outputs:
            self._timer = asyncio.get_running_loop().call_later(self._half_period_s, self._toggle)

    def _toggle(self) -> None:
        self._blink_on = not self._blink_on
        self._apply(self._pattern.lit if self._blink_on else frozenset())
        self._timer = asyncio.get_running_loop().call_later(self._half_period_s, self._toggle)

    def _apply(self, lit: frozenset[str]) -> None:
        for colour, output in self._outputs.items():
            try:
                output.set(colour in lit)
            except OSError as error:
                _log.warning("status LEDs: cannot set the %s LED: %s", colour, error)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def build(evse: Evse, hardware: Hardware, shared: dict[str, object]) -> StatusLeds:
    """The status LEDs of `evse` from `hardware.options`; HardwareConfigError when wrong."""
    options = DeviceOptions(evse, hardware, "leds", OPTIONS)
    wanted = {colour: options.line(f"{colour}_line", required=False) for colour in COLOURS}
    if all(line is None for line in wanted.values()):
        raise options.error("green_line", "missing; set green_line, blue_line and/or red_line")
    active_low = options.flag("active_low", False)
    blink_period_s = options.seconds(
        "blink_period_s", DEFAULT_BLINK_PERIOD_S, minimum=0.02, maximum=60.0
    )
    lines = lines_from(shared)
    chip = options.chip(lines)
    refs = {
        colour: options.line_ref(lines, shared, chip, f"{colour}_line", line, active_low)
        for colour, line in wanted.items()
        if line is not None
    }
    return StatusLeds(
        lines,
        green=refs.get("green"),
        blue=refs.get("blue"),
        red=refs.get("red"),
        blink_period_s=blink_period_s,
        consumer=f"evsed:evse{evse.id}:leds",
    )
