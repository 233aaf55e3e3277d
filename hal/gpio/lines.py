"""The GPIO line seam: requesting lines of a chip, reading and driving them, edges on the loop.

`Lines` is what the GPIO drivers (contactor, safety inputs, LEDs) are written against. A line is
named by its chip's path ("/dev/gpiochip0") and either its offset (int) or its name (str, as the
board's device tree or gpio-line-names labels it; a string of digits that is not a name is taken
as an offset, as libgpiod does). Values are logical: `active_low` inverts the physical level.

A chip is named by its device path ("/dev/gpiochip0"), its name under /dev ("gpiochip0") or
its label ("pinctrl-rp1", "gpio-sim.0-node0"); a label keeps naming the same chip when the
kernel numbers the chips differently (after a kernel update, or an expander that came back).

Two implementations:

- `GpiodLines`: the kernel's GPIO character device through the libgpiod v2 Python bindings
  (`gpiod` on PyPI). One line request per line; an input request detects both edges and its
  file descriptor becomes readable when the kernel has queued an edge event.
- `MemoryLines`: chips held in memory, for machines without a GPIO chip. It stands in for the
  kernel's lines, not for the drivers: outputs keep the level they are set to, inputs take the
  level the test drives (`MemoryChip.drive`, the test's pull-up / pull-down), a busy line is
  refused, and an input request's fd (a pipe) becomes readable on every edge, so the drivers'
  event path (`InputWatch`) is the same for both.

`InputWatch` watches an input on the running asyncio loop with `loop.add_reader` on the
request's fd, drains the queued edge events, and reports the line's level once it has held still
for `debounce_s` (at once when 0). It never blocks the loop.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import gpiod
from gpiod.line import Direction, Edge, Value

__all__ = [
    "GpiodLines",
    "InputLine",
    "InputWatch",
    "LineBusyError",
    "LineError",
    "LineId",
    "LineNotFoundError",
    "Lines",
    "MemoryChip",
    "MemoryLines",
    "OutputLine",
]

LineId = int | str


class LineError(OSError):
    """A GPIO chip or line cannot be used: missing, busy, or failing I/O."""


class LineNotFoundError(LineError):
    """No such chip, or no such line on the chip."""


class LineBusyError(LineError):
    """The line is already requested (by this process or another)."""


class InputLine(Protocol):
    """A requested input line with edge detection on both edges."""

    def get(self) -> bool:
        """The logical level now."""
        ...

    def fileno(self) -> int:
        """Readable while edge events are queued."""
        ...

    def drain_events(self) -> int:
        """Read and drop the queued edge events without blocking; how many there were."""
        ...

    def release(self) -> None: ...


class OutputLine(Protocol):
    """A requested output line."""

    def set(self, value: bool) -> None: ...

    def get(self) -> bool:
        """The logical level last set."""
        ...

    def release(self) -> None: ...


@runtime_checkable
class Lines(Protocol):
    """GPIO chips by path, and their lines by offset or name."""

    def check_chip(self, chip: str) -> None:
        """LineNotFoundError when there is no GPIO chip at `chip`, LineError if unusable."""
        ...

    def resolve(self, chip: str, line: LineId) -> int:
        """The offset of `line` on `chip`; LineNotFoundError when either does not exist."""
        ...

    def request_input(
        self, chip: str, line: LineId, *, active_low: bool = False, consumer: str = "evsed"
    ) -> InputLine: ...

    def request_output(
        self,
        chip: str,
        line: LineId,
        *,
        active_low: bool = False,
        value: bool = False,
        consumer: str = "evsed",
    ) -> OutputLine: ...


# ------------------------------------------------------------------------------ on the loop


class InputWatch:
    """An input line watched on the running loop; `on_change(level)` after a settled change.

    `value` is the last settled logical level. An edge (re)starts a `debounce_s` timer; when it
    fires the line is read and, if the level differs from `value`, `on_change` is called. With
    `debounce_s == 0` the line is read as soon as the edge is drained. Every `poll_s` (when
    given) the line is also read without an edge: a level that differs is handled like an edge
    (catches edges the kernel dropped), and a line that fails is noticed while nothing moves
    (Linux 6.1 does not wake a request's pollers when its chip goes away). `on_error` gets the
    OSError raised while draining or reading; the watch then stops. Callbacks are called from
    the loop's reader and timer callbacks, never from inside a method of this class.
    """

    def __init__(
        self,
        line: InputLine,
        *,
        debounce_s: float,
        on_change: Callable[[bool], None],
        on_error: Callable[[OSError], None],
        poll_s: float | None = None,
    ) -> None:
        self._line = line
        self._debounce_s = debounce_s
        self._poll_s = poll_s
        self._on_change = on_change
        self._on_error = on_error
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._poll: asyncio.TimerHandle | None = None
        self._fd = line.fileno()
        self.value = line.get()
        self._loop.add_reader(self._fd, self._readable)
        self._watching = True
        self._schedule_poll()

    def close(self) -> None:
        """Stop watching (the line itself stays requested)."""
        if self._watching:
            self._watching = False
            self._loop.remove_reader(self._fd)
        for timer in (self._timer, self._poll):
            if timer is not None:
                timer.cancel()
        self._timer = self._poll = None

    def _readable(self) -> None:
        try:
            self._line.drain_events()
        except OSError as error:
            self._fail(error)
            return
        self._edge()

    def _edge(self) -> None:
        if self._debounce_s <= 0:
            self._settle()
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self._debounce_s, self._settle)

    def _settle(self) -> None:
        self._timer = None
        if not self._watching:
            return
        try:
            level = self._line.get()
        except OSError as error:
            self._fail(error)
            return
        if level != self.value:
            self.value = level
            self._on_change(level)

    def _schedule_poll(self) -> None:
        if self._poll_s is not None and self._watching:
            self._poll = self._loop.call_later(self._poll_s, self._polled)

    def _polled(self) -> None:
        self._poll = None
        if not self._watching:
            return
        if self._timer is None:  # not while a debounce is under way
            try:
                level = self._line.get()
            except OSError as error:
                self._fail(error)
                return
            if level != self.value:
                self._edge()
        self._schedule_poll()

    def _fail(self, error: OSError) -> None:
        self.close()
        self._on_error(error)


# ------------------------------------------------------------------------------ libgpiod v2


class GpiodLines:
    """`Lines` over the kernel's GPIO character devices (libgpiod v2 Python bindings)."""

    def check_chip(self, chip: str) -> None:
        with _open_chip(chip) as handle:
            handle.get_info()

    def resolve(self, chip: str, line: LineId) -> int:
        with _open_chip(chip) as handle:
            return _offset(handle, chip, line)

    def request_input(
        self, chip: str, line: LineId, *, active_low: bool = False, consumer: str = "evsed"
    ) -> InputLine:
        settings = gpiod.LineSettings(
            direction=Direction.INPUT, edge_detection=Edge.BOTH, active_low=active_low
        )
        return _GpiodLine(*_request(chip, line, settings, consumer))

    def request_output(
        self,
        chip: str,
        line: LineId,
        *,
        active_low: bool = False,
        value: bool = False,
        consumer: str = "evsed",
    ) -> OutputLine:
        settings = gpiod.LineSettings(
            direction=Direction.OUTPUT, active_low=active_low, output_value=_value(value)
        )
        return _GpiodLine(*_request(chip, line, settings, consumer))


def _chip_path(chip: str) -> str:
    """The device path of `chip`: a path, a name under /dev ("gpiochip0"), or a chip label."""
    if "/" in chip:
        if not os.path.exists(chip):
            raise LineNotFoundError(errno.ENOENT, f"no GPIO chip at {chip} (no such file)")
        if not gpiod.is_gpiochip_device(chip):
            raise LineNotFoundError(errno.ENODEV, f"{chip} is not a GPIO chip device")
        return chip
    candidate = f"/dev/{chip}"
    if os.path.exists(candidate) and gpiod.is_gpiochip_device(candidate):
        return candidate
    found = []
    for path in sorted(str(p) for p in Path("/dev").glob("gpiochip*")):
        if not gpiod.is_gpiochip_device(path):
            continue
        try:
            with gpiod.Chip(path) as handle:
                label = handle.get_info().label
        except OSError:
            continue
        if label == chip:
            return path
        found.append(f"{path} {label!r}")
    chips = ", ".join(found) or "none"
    raise LineNotFoundError(
        errno.ENOENT, f"no GPIO chip named or labelled {chip!r} (chips: {chips})"
    )


def _open_chip(chip: str) -> gpiod.Chip:
    path = _chip_path(chip)
    try:
        return gpiod.Chip(path)
    except OSError as error:
        raise LineError(error.errno, f"cannot open {path}: {error.strerror}") from None


def _offset(handle: gpiod.Chip, chip: str, line: LineId) -> int:
    info = handle.get_info()
    about = f"label {info.label!r}, {info.num_lines} lines"
    try:
        return handle.line_offset_from_id(line)
    except ValueError:
        raise LineNotFoundError(
            errno.ENOENT,
            f"line {line!r} is out of range on {chip} ({about}, offsets 0..{info.num_lines - 1})",
        ) from None
    except OSError as error:
        if error.errno != errno.ENOENT:
            raise LineError(error.errno, f"{chip}: {error.strerror}") from None
    names = [name for n in range(info.num_lines) if (name := handle.get_line_info(n).name)]
    named = ", ".join(names[:16]) + (", ..." if len(names) > 16 else "") if names else "none"
    raise LineNotFoundError(
        errno.ENOENT, f"no line named {line!r} on {chip} ({about}; named lines: {named})"
    )


def _request(
    chip: str, line: LineId, settings: gpiod.LineSettings, consumer: str
) -> tuple[gpiod.LineRequest, int]:
    with _open_chip(chip) as handle:
        offset = _offset(handle, chip, line)
        try:
            return handle.request_lines(config={offset: settings}, consumer=consumer), offset
        except OSError as error:
            if error.errno == errno.EBUSY:
                user = handle.get_line_info(offset).consumer or "another user"
                raise LineBusyError(
                    errno.EBUSY, f"line {line!r} on {chip} is busy (requested by {user!r})"
                ) from None
            raise LineError(
                error.errno, f"cannot request line {line!r} on {chip}: {error.strerror}"
            ) from None


def _value(value: bool) -> Value:
    return Value.ACTIVE if value else Value.INACTIVE


class _GpiodLine:
    """One gpiod.LineRequest holding one line, as an InputLine or an OutputLine."""

    def __init__(self, request: gpiod.LineRequest, offset: int) -> None:
        self._request: gpiod.LineRequest | None = request
        self._offset = offset

    def _live(self) -> gpiod.LineRequest:
        if self._request is None:
            raise LineError(errno.EBADF, "the GPIO line was released")
        return self._request

    def get(self) -> bool:
        return self._live().get_value(self._offset) == Value.ACTIVE

    def set(self, value: bool) -> None:
        self._live().set_value(self._offset, _value(value))

    def fileno(self) -> int:
        return self._live().fd

    def drain_events(self) -> int:
        request = self._live()
        count = 0
        for _ in range(64):  # bounded: a hung-up fd polls readable forever
            if not request.wait_edge_events(0):
                break
            events = len(request.read_edge_events())
            if not events:
                break
            count += events
        return count

    def release(self) -> None:
        if self._request is not None:
            self._request.release()
            self._request = None


# ------------------------------------------------------------------------------ in memory


@dataclass
class _MemoryLine:
    name: str
    level: bool = False  # physical: the output's level, or what drives the input
    consumer: str | None = None
    request: _MemoryRequest | None = None


@dataclass
class _MemoryRequest:
    chip: MemoryChip
    offset: int
    active_low: bool
    output: bool
    generation: int
    pipe: tuple[int, int] | None = None  # input edge events: (read end, write end)
    released: bool = False

    def check(self) -> _MemoryLine:
        if self.released:
            raise LineError(errno.EBADF, "the GPIO line was released")
        if self.chip.removed or self.generation != self.chip.generation:
            raise LineError(errno.ENODEV, f"{self.chip.path}: no such device")
        return self.chip.lines[self.offset]

    def get(self) -> bool:
        return self.check().level != self.active_low

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        line = self.chip.lines[self.offset]
        if line.request is self:
            line.consumer = None
            line.request = None
        if self.pipe is not None:
            os.close(self.pipe[0])
            os.close(self.pipe[1])
            self.pipe = None


class _MemoryInput:
    def __init__(self, request: _MemoryRequest) -> None:
        self._request = request

    def get(self) -> bool:
        return self._request.get()

    def fileno(self) -> int:
        self._request.check()
        assert self._request.pipe is not None
        return self._request.pipe[0]

    def drain_events(self) -> int:
        self._request.check()
        assert self._request.pipe is not None
        count = 0
        while True:
            try:
                chunk = os.read(self._request.pipe[0], 256)
            except BlockingIOError:
                break
            count += len(chunk)
            if len(chunk) < 256:
                break
        return count

    def release(self) -> None:
        self._request.release()


class _MemoryOutput:
    def __init__(self, request: _MemoryRequest) -> None:
        self._request = request

    def set(self, value: bool) -> None:
        line = self._request.check()
        level = bool(value) != self._request.active_low
        if level != line.level:
            line.level = level
            self._request.chip._output_changed(self._request.offset, level)

    def get(self) -> bool:
        return self._request.get()

    def release(self) -> None:
        self._request.release()


class MemoryChip:
    """One GPIO chip in memory: `num_lines` lines, some with names.

    `level(line)` is a line's physical level (an output as driven, an input as the outside
    world drives it). `drive(line, level)` is the outside world driving an input (gpio-sim's
    pull-up / pull-down): a requested input gets an edge event when the level changes.
    `on_output(callback)` calls `callback(offset, level)` synchronously whenever a requested
    output changes its physical level: the wiring a test builds around the chip. `remove()`
    makes every request on it fail with ENODEV, as when a GPIO expander disappears, and
    `restore()` brings the chip back, to be requested anew.
    """

    def __init__(
        self, path: str, num_lines: int, names: Mapping[int, str], label: str = ""
    ) -> None:
        if num_lines <= 0:
            raise ValueError(f"a chip has at least one line, not {num_lines}")
        self.path = path
        self.label = label
        self.lines = [_MemoryLine(names.get(n, "")) for n in range(num_lines)]
        self.removed = False
        self.generation = 0
        self._output_callbacks: list[Callable[[int, bool], None]] = []

    def offset(self, line: LineId) -> int:
        """The offset of `line`; LineNotFoundError when the chip has no such line."""
        if isinstance(line, str):
            for offset, memory_line in enumerate(self.lines):
                if memory_line.name and memory_line.name == line:
                    return offset
            if not line.isdigit():
                named = ", ".join(m.name for m in self.lines if m.name) or "none"
                raise LineNotFoundError(
                    errno.ENOENT,
                    f"no line named {line!r} on {self.path} "
                    f"({len(self.lines)} lines; named lines: {named})",
                )
            line = int(line)
        if not 0 <= line < len(self.lines):
            raise LineNotFoundError(
                errno.ENOENT,
                f"line {line!r} is out of range on {self.path} (offsets 0..{len(self.lines) - 1})",
            )
        return line

    def level(self, line: LineId) -> bool:
        return self.lines[self.offset(line)].level

    def consumer(self, line: LineId) -> str | None:
        """Who requested the line; None when it is free."""
        return self.lines[self.offset(line)].consumer

    def drive(self, line: LineId, level: bool, *, event: bool = True) -> None:
        """Drive an input to `level`; `event=False` loses the edge event (a full kernel buffer)."""
        offset = self.offset(line)
        memory_line = self.lines[offset]
        request = memory_line.request
        if request is not None and request.output:
            raise ValueError(f"line {line!r} on {self.path} is an output; it cannot be driven")
        if memory_line.level == bool(level):
            return
        memory_line.level = bool(level)
        if event and request is not None and request.pipe is not None:
            os.write(request.pipe[1], b"e")

    def on_output(self, callback: Callable[[int, bool], None]) -> None:
        self._output_callbacks.append(callback)

    def remove(self, *, hang_up: bool = False) -> None:
        """The chip goes away: its requests fail from now on (ENODEV), even after restore().

        Linux 6.1 leaves the pollers of a dead request asleep (the default here); with
        `hang_up` their fds become readable, as kernels that hang up the requests do.
        """
        if self.removed:
            return
        self.removed = True
        self.generation += 1
        for line in self.lines:
            request, line.request, line.consumer = line.request, None, None
            if hang_up and request is not None and request.pipe is not None:
                os.write(request.pipe[1], b"x")

    def restore(self) -> None:
        """The chip is back (levels as they were); lines must be requested again."""
        self.removed = False

    def _output_changed(self, offset: int, level: bool) -> None:
        for callback in tuple(self._output_callbacks):
            callback(offset, level)

    def _request(
        self, line: LineId, *, output: bool, active_low: bool, consumer: str
    ) -> _MemoryRequest:
        if self.removed:
            raise LineNotFoundError(errno.ENOENT, f"no GPIO chip at {self.path}")
        offset = self.offset(line)
        memory_line = self.lines[offset]
        if memory_line.request is not None:
            raise LineBusyError(
                errno.EBUSY,
                f"line {line!r} on {self.path} is busy (requested by {memory_line.consumer!r})",
            )
        request = _MemoryRequest(self, offset, active_low, output, self.generation)
        if not output:
            read_end, write_end = os.pipe()
            os.set_blocking(read_end, False)
            os.set_blocking(write_end, False)
            request.pipe = (read_end, write_end)
        memory_line.request = request
        memory_line.consumer = consumer
        return request


class MemoryLines:
    """`Lines` over chips held in memory (see MemoryChip)."""

    def __init__(self) -> None:
        self._chips: dict[str, MemoryChip] = {}

    def add_chip(
        self,
        path: str = "/dev/gpiochip0",
        num_lines: int = 8,
        names: Mapping[int, str] | Iterable[str] = (),
        label: str = "",
    ) -> MemoryChip:
        """A new chip at `path`; `names` maps offsets to names, or lists names from offset 0."""
        by_offset = dict(names) if isinstance(names, Mapping) else dict(enumerate(names))
        chip = MemoryChip(path, num_lines, by_offset, label)
        self._chips[path] = chip
        return chip

    def chip(self, path: str) -> MemoryChip:
        return self._chip(path)

    def check_chip(self, chip: str) -> None:
        self._chip(chip)

    def resolve(self, chip: str, line: LineId) -> int:
        return self._chip(chip).offset(line)

    def request_input(
        self, chip: str, line: LineId, *, active_low: bool = False, consumer: str = "evsed"
    ) -> InputLine:
        request = self._chip(chip)._request(
            line, output=False, active_low=active_low, consumer=consumer
        )
        return _MemoryInput(request)

    def request_output(
        self,
        chip: str,
        line: LineId,
        *,
        active_low: bool = False,
        value: bool = False,
        consumer: str = "evsed",
    ) -> OutputLine:
        memory_chip = self._chip(chip)
        request = memory_chip._request(line, output=True, active_low=active_low, consumer=consumer)
        output = _MemoryOutput(request)
        output.set(value)
        return output

    def _chip(self, chip: str) -> MemoryChip:
        """By path, by name under /dev, or by label, as GpiodLines finds chips."""
        for candidate in self._chips.values():
            if candidate.removed:
                continue
            if chip in (candidate.path, candidate.label) or f"/dev/{chip}" == candidate.path:
                return candidate
        if "/" in chip:
            raise LineNotFoundError(errno.ENOENT, f"no GPIO chip at {chip} (no such file)")
        raise LineNotFoundError(errno.ENOENT, f"no GPIO chip named or labelled {chip!r}")
