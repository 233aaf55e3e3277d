"""What every part of the harness shares: the daemon as a process, a private D-Bus, a D-Bus
client, the state database checks and the report files.

Everything started here is a direct child of the harness and is ended by the harness; every
wait has a time limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
BUS_CONF = Path(__file__).resolve().parent / "bus.conf"
#: Directory with the sitecustomize that kills the daemon right after its N-th COMMIT.
INJECT_DIR = Path(__file__).resolve().parent / "inject"
CHARGE_POINT_ID = "CP-REL-1"
BUS_NAME = "org.evsed"
SIM_PATH = "/org/evsed/Simulator"
SIM_IFACE = "org.evsed.Simulator1"
STATION_PATH = "/org/evsed/Station"
STATION_IFACE = "org.evsed.Station1"
EVSE_IFACE = "org.evsed.Evse1"


def evse_path(evse_id: int) -> str:
    return f"/org/evsed/Evse/{evse_id}"


def write_config(
    directory: Path,
    url: str,
    *,
    dbus_address: str | None,
    evses: int = 2,
    ocpp_extra: str = "",
    csms_extra: str = "",
    synchronous: str = "full",
    call_timeout_s: int = 2,
) -> Path:
    """An evsed configuration with simulated hardware, its state under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    evse_tables = "".join(f"[[evse]]\nid = {i}\n" for i in range(1, evses + 1))
    path = directory / "evsed.toml"
    path.write_text(
        f"""
[identity]
charge_point_id = "{CHARGE_POINT_ID}"
vendor = "evsed"
model = "reliability"
firmware_version = "0.1.0"

[csms]
url = "{url}"
ocpp_versions = ["ocpp1.6"]
security_profile = 0
ping_interval_s = 3
ping_timeout_s = 3
connect_timeout_s = 3
call_timeout_s = {call_timeout_s}
backoff_min_s = 0.1
backoff_max_s = 1.0
backoff_randomization = 0.2
external_websocket_control = true
{csms_extra}

[paths]
state_directory = "{directory / "state"}"
message_log_directory = "{directory / "msglog"}"
message_log_max_bytes = 1048576
message_log_backups = 2

[queue]
sqlite_synchronous = "{synchronous}"

[logging]
level = "info"

[dbus]
enabled = {"true" if dbus_address else "false"}
bus = "{dbus_address or "system"}"
meter_poll_interval_s = 0.5

[ocpp]
TransactionMessageRetryInterval = 1
TransactionMessageAttempts = 5
{ocpp_extra}

{evse_tables}""",
        encoding="utf-8",
    )
    return path


# --------------------------------------------------------------------------- private D-Bus
@contextlib.contextmanager
def private_bus() -> Iterator[str]:
    """A dbus-daemon of our own (a direct child); yields its address."""
    process = subprocess.Popen(
        ["dbus-daemon", f"--config-file={BUS_CONF}", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        address = process.stdout.readline().strip()
        if not address:
            raise RuntimeError("dbus-daemon printed no address")
        yield address
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# --------------------------------------------------------------------------- the daemon
#: stderr lines worth counting: a name and a pattern.
_PATTERNS = {
    "traceback": re.compile(r"Traceback \(most recent call last\)"),
    "queue_drop": re.compile(r"dropping \w+"),
    "db_moved_aside": re.compile(r"corrupt|moved aside", re.IGNORECASE),
    "internal_error": re.compile(
        r"failed unexpectedly|engine failed|station failed|handler for \w+ failed|"
        r"completion callback|failed to answer"
    ),
}


@dataclass
class DaemonLog:
    """What all runs of the daemon wrote to stderr that matters to the harness."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_PATTERNS, 0))
    samples: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in _PATTERNS})
    lines: int = 0
    tracebacks: list[str] = field(default_factory=list)
    _traceback: list[str] | None = None
    _last_line: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"counts": self.counts, "samples": self.samples, "tracebacks": self.tracebacks}

    def scan(self, line: str) -> None:
        self.lines += 1
        if self._traceback is not None:
            # The lines after "Traceback": keep up to the exception line with the sample.
            self._traceback.append(line[-300:])
            if not line.startswith(" ") or len(self._traceback) > 40:
                if len(self.tracebacks) < 10:
                    self.tracebacks.append("\n".join(self._traceback))
                self._traceback = None
        if _PATTERNS["traceback"].search(line):
            self._traceback = [self._last_line[-300:], line]
        self._last_line = line
        for name, pattern in _PATTERNS.items():
            if pattern.search(line):
                self.counts[name] += 1
                if len(self.samples[name]) < 20:
                    self.samples[name].append(line[-400:])


class Daemon:
    """One evsed process (service.main) with simulated hardware; restartable."""

    def __init__(self, config: Path, log: DaemonLog | None = None) -> None:
        self.config = config
        self.log = log or DaemonLog()
        self.process: asyncio.subprocess.Process | None = None
        self.tail: deque[str] = deque(maxlen=300)
        self._notify: socket.socket | None = None
        self._notify_dir: str | None = None
        self._reader: asyncio.Task[None] | None = None
        self.notifications: list[str] = []
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self, extra_env: dict[str, str] | None = None) -> None:
        assert not self.alive
        self._close_notify()
        self._notify_dir = tempfile.mkdtemp(prefix="evrel-", dir="/tmp")
        path = os.path.join(self._notify_dir, "n")
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(path)
        self._notify.setblocking(False)
        self.notifications = []
        env = dict(os.environ)
        env.pop("JOURNAL_STREAM", None)
        env["NOTIFY_SOCKET"] = path
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra_env or {})
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service.main",
            "--config",
            str(self.config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=REPO,
        )
        self.starts += 1
        self._reader = asyncio.create_task(self._read(self.process))

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        async for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.tail.append(line)
            self.log.scan(line)

    async def wait_ready(self, timeout: float = 30) -> None:
        """Until READY=1; raises TimeoutError (or RuntimeError if the process died)."""
        assert self._notify is not None
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while "READY=1" not in self.notifications:
                if not self.alive:
                    raise RuntimeError(f"evsed exited with {self.returncode}: {self.tail_text()}")
                try:
                    data = await asyncio.wait_for(loop.sock_recv(self._notify, 4096), 0.5)
                except TimeoutError:
                    continue
                self.notifications.extend(data.decode().splitlines())

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    def tail_text(self, lines: int = 40) -> str:
        return "\n".join(list(self.tail)[-lines:])

    async def kill9(self) -> None:
        if self.alive:
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGKILL)
        await self._reap(10)
        self._close_notify()

    async def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM, then SIGKILL if it does not stop in time; returns the exit status."""
        if self.alive:
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await self._reap(timeout)
            except TimeoutError:
                await self.kill9()
        else:
            await self._reap(5)
        self._close_notify()
        return self.returncode

    async def _reap(self, timeout: float) -> None:
        if self.process is None:
            return
        async with asyncio.timeout(timeout):
            await self.process.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)
            self._reader = None

    def _close_notify(self) -> None:
        if self._notify is not None:
            self._notify.close()
            self._notify = None
        if self._notify_dir is not None:
            shutil.rmtree(self._notify_dir, ignore_errors=True)
            self._notify_dir = None


# --------------------------------------------------------------------------- D-Bus client
class DbusError(Exception):
    """A D-Bus call failed; `name` is the D-Bus error name."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


def error_name(exc: BaseException) -> str:
    name = getattr(exc, "dbus_error_name", None)
    if isinstance(name, str):
        return name
    args = getattr(exc, "args", ())
    if len(args) >= 1 and isinstance(args[0], str) and "." in args[0]:
        return args[0]
    return type(exc).__name__


class DbusClient:
    """Raw method calls on evsed's objects from a connection of the harness (sdbus)."""

    def __init__(self, address: str) -> None:
        # Imported here: the error classes register their names with sdbus, so evsed's
        # errors arrive with their names.
        import service.dbus.errors  # noqa: F401
        from service.dbus.server import open_bus

        self.bus = open_bus(address)

    def close(self) -> None:
        self.bus.close()

    async def call(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        *args: Any,
        timeout: float = 10,
    ) -> Any:
        """The reply's contents (sdbus: None, one value, or a tuple of several); raises
        DbusError (with the error name) or TimeoutError."""
        message = self.bus.new_method_call_message(BUS_NAME, path, interface, member)
        if signature:
            message.append_data(signature, *args)
        try:
            reply = await asyncio.wait_for(self.bus.call_async(message), timeout)
        except TimeoutError:
            raise
        except Exception as exc:
            raise DbusError(error_name(exc), str(exc)) from None
        return reply.get_contents()

    async def sim(self, member: str, signature: str = "", *args: Any) -> Any:
        return await self.call(SIM_PATH, SIM_IFACE, member, signature, *args)

    async def prop(self, path: str, interface: str, name: str) -> Any:
        variant = await self.call(
            path, "org.freedesktop.DBus.Properties", "Get", "ss", interface, name
        )
        return variant[1] if isinstance(variant, tuple) else variant

    async def evse_status(self, evse_id: int) -> str:
        value = await self.prop(evse_path(evse_id), EVSE_IFACE, "Status")
        return str(value)


async def wait_dbus(client: DbusClient, timeout: float = 15) -> None:
    """Until org.evsed answers (the daemon exports its objects after READY)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                await client.prop(STATION_PATH, STATION_IFACE, "ChargePointId")
                return
            except (DbusError, TimeoutError):
                await asyncio.sleep(0.1)


# --------------------------------------------------------------------------- the database
@dataclass(frozen=True)
class DbCheck:
    integrity: str
    queued_ids: tuple[str, ...]
    queued_transaction_ids: tuple[str, ...]
    open_sessions: int


def check_database(state: Path) -> DbCheck:
    """Open a copy of the stopped daemon's database (with its WAL) and check it.

    A copy, so the check cannot change what the next run of the daemon recovers from.
    """
    source = state / "evsed.db"
    if not source.exists():
        return DbCheck("missing", (), (), 0)
    with tempfile.TemporaryDirectory(prefix="evrel-db-") as tmp:
        for suffix in ("", "-wal", "-shm"):
            part = Path(str(source) + suffix)
            if part.exists():
                shutil.copyfile(part, Path(tmp) / ("evsed.db" + suffix))
        connection = sqlite3.connect(Path(tmp) / "evsed.db", timeout=5)
        try:
            integrity = "; ".join(r[0] for r in connection.execute("PRAGMA integrity_check"))
            rows = connection.execute(
                "SELECT message_id, kind FROM outbound_queue ORDER BY seq"
            ).fetchall()
            sessions = connection.execute(
                "SELECT COUNT(*) FROM sessions WHERE started = 1"
            ).fetchone()[0]
        finally:
            connection.close()
    return DbCheck(
        integrity,
        tuple(r[0] for r in rows),
        tuple(r[0] for r in rows if r[1] == "transaction"),
        int(sessions),
    )


def moved_aside(state: Path) -> list[str]:
    return sorted(p.name for p in state.glob("evsed.db.corrupt-*"))


# --------------------------------------------------------------------------- reports
def environment() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_at_end": [round(x, 2) for x in load],
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_report(part: str, data: dict[str, Any], *, quick: bool) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = RESULTS / f"reliability-{part}{'-quick' if quick else ''}-{stamp}.json"
    data = {"part": part, "quick": quick, "environment": environment(), **data}
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    return path
