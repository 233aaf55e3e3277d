"""Checking the [evse.<kind>.options] of the GPIO drivers, and the lines they name, at build time.

`DeviceOptions` validates one device's option table (unknown option, wrong type, out of range)
and turns every problem into a `hal.registry.HardwareConfigError` that names the EVSE, the
option's key and what was found. It also checks that the chip exists and that each named line is
on it, and records which lines the daemon's devices have claimed, in the per-daemon `shared`
dict, so two devices configured on one line are refused at build time.

`shared["gpio.lines"]` may hold the `Lines` implementation the daemon's GPIO devices use; when
absent, a `GpiodLines` (the kernel's character devices) is put there. Tests put a `MemoryLines`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

from hal.gpio.lines import GpiodLines, LineError, LineId, Lines
from hal.registry import HardwareConfigError
from service.config import Evse, Hardware
from service.config_reader import Scalar, show

__all__ = ["LINES_KEY", "DeviceOptions", "LineRef", "lines_from"]

LINES_KEY = "gpio.lines"
_CLAIMS_KEY = "gpio.claims"


def lines_from(shared: dict[str, object]) -> Lines:
    """The daemon's `Lines` (shared[LINES_KEY]), a GpiodLines unless one was put there."""
    lines = shared.get(LINES_KEY)
    if lines is None:
        lines = shared[LINES_KEY] = GpiodLines()
    if not isinstance(lines, Lines):
        raise TypeError(f"shared[{LINES_KEY!r}] is not a hal.gpio.lines.Lines: {lines!r}")
    return lines


@dataclass(frozen=True, slots=True)
class LineRef:
    """One line a device uses, with the configuration key that named it (for errors)."""

    chip: str
    line: LineId
    active_low: bool = False
    key: str = ""
    owner: str = ""  # "EVSE 1": who is configured with it

    def describe(self) -> str:
        return f"{self.owner}: {self.key}" if self.owner and self.key else self.key or "line"

    def error(self, error: OSError) -> HardwareConfigError:
        reason = error.strerror or str(error)
        return HardwareConfigError(f"{self.describe()}: found {show(self.line)}: {reason}")


class DeviceOptions:
    """The options of one GPIO device of an EVSE; each accessor checks and raises."""

    def __init__(self, evse: Evse, hardware: Hardware, kind: str, known: Iterable[str]) -> None:
        self.evse_id = evse.id
        self.owner = f"EVSE {evse.id}"
        self.prefix = f"evse[{evse.id}].{kind}.options"
        self._options: dict[str, Scalar] = dict(hardware.options)
        expected = tuple(known)
        for name in self._options:
            if name not in expected:
                raise self.error(
                    name,
                    f"unknown option of backend {hardware.backend!r}; "
                    f"expected one of {', '.join(expected)}",
                )

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}"

    def error(self, name: str, message: str) -> HardwareConfigError:
        return HardwareConfigError(f"{self.owner}: {self.key(name)}: {message}")

    def _wrong(self, name: str, value: Scalar, expected: str) -> HardwareConfigError:
        return self.error(name, f"found {show(value)}; expected {expected}")

    def has(self, name: str) -> bool:
        return name in self._options

    def chip(self, lines: Lines, name: str = "chip") -> str:
        """The chip (device path, name under /dev, or label), checked to exist now."""
        value = self._options.get(name)
        expected = 'a GPIO chip: "/dev/gpiochip0", "gpiochip0" or its label'
        if value is None:
            raise self.error(name, f"missing; expected {expected}")
        if not isinstance(value, str) or not value.strip():
            raise self._wrong(name, value, expected)
        try:
            lines.check_chip(value)
        except LineError as error:
            raise self.error(name, f"found {show(value)}: {error.strerror}") from None
        return value

    def line(self, name: str, *, required: bool) -> LineId | None:
        """A line offset (integer >= 0) or line name (non-empty string); None when absent."""
        value = self._options.get(name)
        if value is None:
            if required:
                raise self.error(name, "missing; expected a line offset (integer) or line name")
            return None
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise self._wrong(name, value, "a line offset (integer >= 0) or a line name (string)")
        if isinstance(value, int) and value < 0:
            raise self._wrong(name, value, "a line offset (integer >= 0) or a line name (string)")
        if isinstance(value, str) and not value.strip():
            raise self._wrong(name, value, "a line offset (integer >= 0) or a line name (string)")
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self._options.get(name, default)
        if not isinstance(value, bool):
            raise self._wrong(name, value, "true or false")
        return value

    def seconds(self, name: str, default: float, *, minimum: float, maximum: float) -> float:
        """A duration in seconds, minimum <= value <= maximum (integers accepted)."""
        value = self._options.get(name, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not minimum <= value <= maximum
        ):
            raise self._wrong(name, value, f"a number of seconds >= {minimum:g} and <= {maximum:g}")
        return float(value)

    def line_ref(
        self,
        lines: Lines,
        shared: dict[str, object],
        chip: str,
        name: str,
        line: LineId,
        active_low: bool,
    ) -> LineRef:
        """`line` checked to exist on `chip` and claimed for this option in `shared`."""
        ref = LineRef(chip, line, active_low, self.key(name), self.owner)
        try:
            offset = lines.resolve(chip, line)
        except LineError as error:
            raise ref.error(error) from None
        claims = shared.setdefault(_CLAIMS_KEY, {})
        assert isinstance(claims, dict)
        where = (os.path.realpath(chip), offset)
        holder = claims.get(where)
        if holder is not None:
            raise self.error(
                name,
                f"found {show(line)}: line {offset} of {chip} is already used by {holder}",
            )
        claims[where] = ref.describe()
        return ref
