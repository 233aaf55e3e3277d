"""The "command" firmware backend: a configured program installs the bundle.

`CommandInstaller(install_command, confirm_command, reboot_required)` runs `install_command`
(an argv, no shell; every "{bundle}" inside an argument is replaced by the bundle's path) with
stdin closed. Exit status 0 means installed; any other status, a kill by a signal, a program
that cannot be started, or running longer than `timeout_s` raises InstallError carrying the
last lines the program wrote to stderr (stdout when stderr is empty).

Progress protocol: a stdout line `PROGRESS <n>` or `PROGRESS <n> <message>` (n an integer
0..100) reports progress; every other line is only logged. Out-of-range values are clamped,
and a malformed PROGRESS line is logged like any other line.

`confirm_boot` runs `confirm_command` (if any) after the reboot: exit status 0 means the new
firmware runs and is good. Without a confirm command the boot is taken as good.

The process runs in its own session; on timeout or cancellation the whole process group gets
SIGTERM, then SIGKILL after `kill_grace_s`. `run_process` is shared with the swupdate backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from service.firmware.installer import BootCheck, InstallError, InstallResult, ProgressCallback

__all__ = [
    "BUNDLE_PLACEHOLDER",
    "CommandInstaller",
    "ProcessOutcome",
    "run_confirm_command",
    "run_process",
]

log = logging.getLogger("evsed.firmware")

BUNDLE_PLACEHOLDER = "{bundle}"
_PROGRESS = re.compile(r"^PROGRESS\s+(-?\d{1,9})(?:\s+(.*))?$")
_MAX_LINE = 4096  # characters kept of one output line
_READ_SIZE = 65536
_DRAIN_AFTER_EXIT_S = 2.0  # output still open after the program exited (a daemonised child)

LineCallback = Callable[[str, str], None]  # (stream "stdout" | "stderr", line)


@dataclass(frozen=True)
class ProcessOutcome:
    """How a program ended: its exit status (negative: killed by that signal) and the last
    lines of its stdout and stderr."""

    returncode: int
    stdout_tail: tuple[str, ...]
    stderr_tail: tuple[str, ...]

    def describe_exit(self) -> str:
        """How it ended: "exit status 3" or "killed by SIGSEGV"."""
        if self.returncode >= 0:
            return f"exit status {self.returncode}"
        try:
            name = signal.Signals(-self.returncode).name
        except ValueError:
            name = f"signal {-self.returncode}"
        return f"killed by {name}"

    def last_words(self, count: int = 3) -> str:
        """The last `count` lines of stderr (or of stdout if stderr is empty), joined by " | "."""
        lines = [line for line in self.stderr_tail if line.strip()]
        if not lines:
            lines = [line for line in self.stdout_tail if line.strip()]
        return " | ".join(line.strip() for line in lines[-count:])


def _describe_argv(argv: Sequence[str]) -> str:
    return argv[0] if argv else "(empty command)"


class _LineSplitter:
    """Splits one output stream into lines, keeps the last ones and calls `on_line`."""

    def __init__(self, name: str, tail: deque[str], on_line: LineCallback | None) -> None:
        self.name = name
        self.tail = tail
        self.on_line = on_line
        self.pending = b""

    def _emit(self, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip("\r")[:_MAX_LINE]
        self.tail.append(line)
        if self.on_line is not None:
            try:
                self.on_line(self.name, line)
            except Exception:  # a broken handler must not break the install's bookkeeping
                log.exception("firmware output handler failed")

    def feed(self, data: bytes) -> None:
        self.pending += data
        *lines, self.pending = self.pending.split(b"\n")
        for raw in lines:
            self._emit(raw)
        if len(self.pending) > _READ_SIZE:  # an endless line: keep its start, drop the rest
            self._emit(self.pending)
            self.pending = b""

    def close(self) -> None:
        if self.pending:
            self._emit(self.pending)
            self.pending = b""


class _Protocol(asyncio.SubprocessProtocol):
    """Output lines as they come; `exited` resolves when the process ends, `closed` when both
    of its output pipes are closed (asyncio's Process.wait() waits for both, which hangs
    when the program leaves a child behind that keeps the pipes open)."""

    def __init__(self, streams: Mapping[int, _LineSplitter]) -> None:
        loop = asyncio.get_running_loop()
        self.streams = streams
        self.open = set(streams)
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self.streams[fd].feed(data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self.streams[fd].close()
        self.open.discard(fd)
        if not self.open and not self.closed.done():
            self.closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


def _kill_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _stop(pid: int, exited: asyncio.Future[None], grace_s: float) -> None:
    """SIGTERM the process group, SIGKILL it after `grace_s`; return once the process ended."""
    _kill_group(pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.shield(exited), grace_s)
    except TimeoutError:
        _kill_group(pid, signal.SIGKILL)
        await exited
    else:
        _kill_group(pid, signal.SIGKILL)  # stragglers of the group


async def run_process(
    argv: Sequence[str],
    *,
    on_line: LineCallback | None = None,
    timeout_s: float | None = None,
    env: Mapping[str, str] | None = None,
    tail_lines: int = 40,
    kill_grace_s: float = 5.0,
    what: str = "command",
) -> ProcessOutcome:
    """Run `argv` (no shell, stdin closed, own session) and stream its output to `on_line`.

    Returns the outcome whatever the exit status. Raises InstallError when the program cannot
    be started or runs longer than `timeout_s` (it is killed then); on cancellation the
    program is killed and CancelledError propagates. `what` names the program in messages.
    """
    if not argv:
        raise InstallError(f"{what}: no command configured")
    stdout_tail: deque[str] = deque(maxlen=tail_lines)
    stderr_tail: deque[str] = deque(maxlen=tail_lines)
    streams = {
        1: _LineSplitter("stdout", stdout_tail, on_line),
        2: _LineSplitter("stderr", stderr_tail, on_line),
    }
    loop = asyncio.get_running_loop()
    try:
        transport, protocol = await loop.subprocess_exec(
            lambda: _Protocol(streams),
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=None if env is None else dict(env),
            start_new_session=True,
        )
    except OSError as exc:
        raise InstallError(
            f"{what}: cannot run {_describe_argv(argv)}: {exc.strerror or exc}"
        ) from exc
    pid = transport.get_pid()
    try:
        try:
            await asyncio.wait_for(asyncio.shield(protocol.exited), timeout_s)
        except TimeoutError:
            await _stop(pid, protocol.exited, kill_grace_s)
            await asyncio.wait([protocol.closed], timeout=_DRAIN_AFTER_EXIT_S)
            words = ProcessOutcome(-1, tuple(stdout_tail), tuple(stderr_tail)).last_words()
            raise InstallError(
                f"{what} {_describe_argv(argv)} did not finish within {timeout_s:g} s "
                "and was killed" + (f"; last output: {words}" if words else "")
            ) from None
        except asyncio.CancelledError:
            await asyncio.shield(_stop(pid, protocol.exited, kill_grace_s))
            raise
        # The program is gone; its output ends unless a child it left behind holds it open.
        _done, still_open = await asyncio.wait([protocol.closed], timeout=_DRAIN_AFTER_EXIT_S)
        if still_open:
            log.warning("%s %s exited but its output stays open", what, _describe_argv(argv))
    finally:
        transport.close()
        for splitter in streams.values():
            splitter.close()
    returncode = transport.get_returncode()
    assert returncode is not None
    return ProcessOutcome(returncode, tuple(stdout_tail), tuple(stderr_tail))


def _substitute(argv: Sequence[str], bundle: str | None) -> list[str]:
    if bundle is None:
        return list(argv)
    return [arg.replace(BUNDLE_PLACEHOLDER, bundle) for arg in argv]


async def run_confirm_command(
    argv: Sequence[str] | None,
    data: Mapping[str, str],
    *,
    timeout_s: float | None,
    kill_grace_s: float = 5.0,
    what: str = "confirm command",
) -> BootCheck:
    """The boot check shared by the command and swupdate backends (never raises InstallError).

    No command: ok. Otherwise ok when it exits with status 0. "{bundle}" in an argument is
    replaced by `data["bundle"]` when the install recorded it.
    """
    if not argv:
        return BootCheck(ok=True, detail="no confirm command configured; new firmware assumed good")
    command = _substitute(argv, data.get("bundle"))

    def on_line(stream: str, line: str) -> None:
        log.info("%s %s: %s", what, stream, line)

    try:
        outcome = await run_process(
            command, on_line=on_line, timeout_s=timeout_s, kill_grace_s=kill_grace_s, what=what
        )
    except InstallError as exc:
        return BootCheck(ok=False, detail=str(exc))
    words = outcome.last_words()
    if outcome.returncode == 0:
        return BootCheck(ok=True, detail=f"{what} succeeded" + (f": {words}" if words else ""))
    return BootCheck(
        ok=False,
        detail=f"{what} failed ({outcome.describe_exit()})" + (f": {words}" if words else ""),
    )


class CommandInstaller:
    """The Installer that runs a configured program (see the module docstring)."""

    name = "command"

    def __init__(
        self,
        install_command: Sequence[str],
        confirm_command: Sequence[str] | None = None,
        reboot_required: bool = True,
        *,
        timeout_s: float | None = 3600.0,
        confirm_timeout_s: float | None = 300.0,
        kill_grace_s: float = 5.0,
    ) -> None:
        if not install_command:
            raise ValueError("install_command must not be empty")
        self.install_command = tuple(install_command)
        self.confirm_command = tuple(confirm_command) if confirm_command else None
        self.reboot_required = reboot_required
        self.timeout_s = timeout_s
        self.confirm_timeout_s = confirm_timeout_s
        self.kill_grace_s = kill_grace_s

    async def install(self, bundle: Path, progress: ProgressCallback) -> InstallResult:
        if not bundle.is_file():
            raise InstallError(f"bundle {bundle} does not exist")
        argv = _substitute(self.install_command, str(bundle))
        last_percent = -1

        def on_line(stream: str, line: str) -> None:
            nonlocal last_percent
            match = _PROGRESS.match(line.strip()) if stream == "stdout" else None
            if match is None:
                log.info("install command %s: %s", stream, line)
                return
            percent = max(0, min(100, int(match.group(1))))
            message = (match.group(2) or "").strip() or f"installing ({percent} %)"
            last_percent = percent
            progress(percent, message)

        log.info("installing firmware %s with %s", bundle, argv[0])
        outcome = await run_process(
            argv,
            on_line=on_line,
            timeout_s=self.timeout_s,
            kill_grace_s=self.kill_grace_s,
            what="install command",
        )
        if outcome.returncode != 0:
            words = outcome.last_words()
            raise InstallError(
                f"install command {argv[0]} failed ({outcome.describe_exit()})"
                + (f": {words}" if words else "")
            )
        if last_percent < 100:
            progress(100, "installed")
        return InstallResult(reboot_required=self.reboot_required, data={"bundle": str(bundle)})

    async def confirm_boot(self, data: Mapping[str, str]) -> BootCheck:
        return await run_confirm_command(
            self.confirm_command,
            data,
            timeout_s=self.confirm_timeout_s,
            kill_grace_s=self.kill_grace_s,
        )
