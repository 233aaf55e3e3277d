"""What every benchmark shares: statistics, the result files, the machine, a fast CSMS, the
daemon as a process (configuration, sd_notify socket, /proc readings) and a private D-Bus.

Figures are never asserted: a benchmark measures, writes `bench/results/<name>.json` and
returns its report; `bench.__main__` prints the Markdown summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
BUS_CONF = REPO / "testcsms" / "demo-bus.conf"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

# ----------------------------------------------------------------------------- statistics


def percentile(samples: list[float], fraction: float) -> float:
    """The nearest-rank percentile (no interpolation): a value that was measured."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def spread(values: list[float]) -> dict[str, float]:
    """Median of repeated runs with its spread: min, max and the quartiles."""
    if not values:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    ordered = sorted(values)
    q1, q3 = (
        (ordered[0], ordered[-1])
        if len(ordered) < 4
        else tuple(statistics.quantiles(ordered, n=4, method="inclusive")[i] for i in (0, 2))
    )
    return {
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "q1": q1,
        "q3": q3,
        "n": len(ordered),
    }


def fmt_spread(s: dict[str, Any], unit: str = "", digits: int = 3) -> str:
    """`median (min-max)` for the Markdown table."""
    if s.get("median") is None:
        return "n/a"
    return f"{s['median']:.{digits}f}{unit} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


# ----------------------------------------------------------------------------- the machine


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    distro = ""
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                distro = line.split("=", 1)[1].strip('"')
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": sys.version.split()[0],
        "kernel": platform.release(),
        "os": distro,
    }


def machine_line(m: dict[str, Any]) -> str:
    return f"{m['cores']} cores, {m['os'] or sys.platform}, Python {m['python']}"


def write_result(name: str, report: dict[str, Any], argv: list[str]) -> Path:
    """Stamp `report` with date, machine and command, and write bench/results/<name>.json."""
    report = {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "command": " ".join(["python", "-m", f"bench.{name}", *argv]),
        **report,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- /proc


def rss_kib(pid: int) -> float:
    """Resident set size (VmRSS) in KiB, NaN when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (fields 14 and 15 of /proc/<pid>/stat), in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def smaps_by_mapping(pid: int) -> dict[str, int]:
    """Rss (KiB) per mapping name from /proc/<pid>/smaps: libraries, [heap], anonymous."""
    totals: dict[str, int] = {}
    name = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(None, 5)
        if len(head) >= 5 and "-" in head[0] and not head[0].endswith(":"):
            name = head[5].strip() if len(head) == 6 else "[anon]"
            if name.startswith("/"):
                name = Path(name).name
        elif line.startswith("Rss:"):
            totals[name] = totals.get(name, 0) + int(line.split()[1])
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def smaps_rollup(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[-1] == "kB":
            values[key] = int(parts[0])
    return values


# ----------------------------------------------------------------------------- a fast CSMS


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Received:
    at: float  # time.monotonic() when the frame was read
    message_id: str
    action: str
    payload: dict[str, Any]


@dataclass
class FastCsms:
    """A bare OCPP 1.6 CSMS on 127.0.0.1 that answers every CALL at once.

    It records every CALL it receives (`received`), the time the websocket opened
    (`connected_at`) and can send CALLs itself (`call`). `on_call` sees each CALL before it is
    answered. Nothing here validates schemas: it is the cheapest peer that keeps a charger
    going.
    """

    heartbeat_interval: int = 3600
    record_payloads: bool = True
    received: list[Received] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    connected_at: float | None = None
    on_call: Callable[[Received], None] | None = None
    _ws: Any = None
    _pending: dict[str, asyncio.Future[Any]] = field(default_factory=dict)
    _next_tx: int = 0
    _connected: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    def answer(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        if action == "BootNotification":
            return {
                "status": "Accepted",
                "interval": self.heartbeat_interval,
                "currentTime": now_iso(),
            }
        if action == "Heartbeat":
            return {"currentTime": now_iso()}
        if action == "StartTransaction":
            self._next_tx += 1
            return {"idTagInfo": {"status": "Accepted"}, "transactionId": self._next_tx}
        if action in ("StopTransaction", "Authorize"):
            return {"idTagInfo": {"status": "Accepted"}}
        if action == "DataTransfer":
            return {"status": "Accepted"}
        return {}

    async def _handler(self, ws: Any) -> None:
        if ws.request.path.endswith("/floor"):  # a floor process: connected, never answered
            with contextlib.suppress(Exception):
                async for _ in ws:
                    pass
            return
        self._ws = ws
        self.connected_at = time.monotonic()
        self._connected.set()
        try:
            async for message in ws:
                at = time.monotonic()
                frame = json.loads(message)
                if frame[0] == 2:
                    _, message_id, action, payload = frame
                    record = Received(
                        at, message_id, action, payload if self.record_payloads else {}
                    )
                    self.received.append(record)
                    self.counts[action] = self.counts.get(action, 0) + 1
                    if self.on_call is not None:
                        self.on_call(record)
                    await ws.send(json.dumps([3, message_id, self.answer(action, payload)]))
                else:
                    future = self._pending.pop(frame[1], None)
                    if future is not None and not future.done():
                        future.set_result(frame)
        except Exception:  # the daemon went away: the benchmark notices by itself
            pass
        finally:
            self._ws = None
            self._connected.clear()

    async def call(self, action: str, payload: dict[str, Any], timeout: float = 10) -> Any:
        """Send a CALL to the charger and return its answer frame."""
        message_id = f"csms-{time.monotonic_ns()}"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        await self._ws.send(json.dumps([2, message_id, action, payload]))
        return await asyncio.wait_for(future, timeout)

    async def wait_connected(self, timeout: float = 30) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def wait_count(self, action: str, count: int, timeout: float = 60) -> None:
        async with asyncio.timeout(timeout):
            while self.counts.get(action, 0) < count:
                await asyncio.sleep(0.01)

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[FastCsms]:
        from websockets.asyncio.server import serve

        async with serve(
            self._handler,
            "127.0.0.1",
            0,
            subprotocols=["ocpp1.6"],
            compression=None,
            ping_interval=None,
            max_size=None,
        ) as server:
            port = server.sockets[0].getsockname()[1]
            self.url = f"ws://127.0.0.1:{port}/ocpp"
            yield self


# ----------------------------------------------------------------------------- the daemon


def evse_tables(count: int) -> str:
    return "".join(f"[[evse]]\nid = {i}\n" for i in range(1, count + 1))


def daemon_config(
    directory: Path,
    url: str,
    *,
    evses: int = 2,
    dbus_address: str | None = None,
    ocpp: str = "",
    extra: str = "",
    charge_point_id: str = "BENCH",
) -> Path:
    """A production-like configuration (level warning, no frame log) on simulated hardware."""
    path = directory / "evsed.toml"
    dbus = f'enabled = true\nbus = "{dbus_address}"' if dbus_address else "enabled = false"
    path.write_text(
        f"""[identity]
charge_point_id = "{charge_point_id}"
vendor = "evsed"
model = "bench"
[csms]
url = "{url}"
ocpp_versions = ["ocpp1.6"]
ping_interval_s = 0
backoff_min_s = 0.1
backoff_max_s = 1.0
[paths]
state_directory = "{directory / "state"}"
[logging]
level = "warning"
[dbus]
{dbus}
{extra}
[ocpp]
{ocpp}
{evse_tables(evses)}""",
        encoding="utf-8",
    )
    return path


@dataclass
class Daemon:
    process: asyncio.subprocess.Process
    notify: socket.socket | None
    started_at: float  # time.monotonic() just before the exec
    notifications: list[tuple[float, str]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def wait_notification(self, prefix: str, timeout: float = 30) -> float:
        """The time.monotonic() at which a notification starting with `prefix` arrived."""
        assert self.notify is not None
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                for at, note in self.notifications:
                    if note.startswith(prefix):
                        return at
                data = await loop.sock_recv(self.notify, 4096)
                at = time.monotonic()
                self.notifications.extend((at, n) for n in data.decode().splitlines())

    async def stop(self, timeout: float = 20) -> int:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
        try:
            async with asyncio.timeout(timeout):
                code = await self.process.wait()
        except TimeoutError:
            self.process.kill()
            code = await self.process.wait()
        if self.notify is not None:
            self.notify.close()
        return code


async def start_daemon(
    config: Path, *, notify: bool = True, stderr: Any = None, args: tuple[str, ...] = ()
) -> Daemon:
    """`python -m service.main --config <config>` with its own sd_notify socket."""
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
    sock = None
    if notify:
        # AF_UNIX paths are limited to 108 bytes: a short private directory.
        path = Path(tempfile.mkdtemp(prefix="evsed-bench-", dir="/tmp")) / "notify"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        sock.setblocking(False)
        env["NOTIFY_SOCKET"] = str(path)
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service.main",
        "--config",
        str(config),
        *args,
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL if stderr is None else stderr,
    )
    return Daemon(process, sock, started)


# ----------------------------------------------------------------------------- private D-Bus


@contextlib.contextmanager
def private_bus() -> Iterator[str | None]:
    """A private dbus-daemon for the run (its address), or None when dbus-daemon is missing."""
    if shutil.which("dbus-daemon") is None:
        yield None
        return
    process = subprocess.Popen(
        ["dbus-daemon", f"--config-file={BUS_CONF}", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        address = process.stdout.readline().strip()
        yield address or None
    finally:
        process.terminate()
        process.wait(timeout=10)


async def busctl(address: str, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "busctl",
        f"--address={address}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"busctl {' '.join(args)}: {err.decode().strip()}")
    return out.decode().strip()


async def simulator(address: str, method: str, signature: str = "", *args: str) -> None:
    call = ["call", "org.evsed", "/org/evsed/Simulator", "org.evsed.Simulator1", method]
    await busctl(address, *(call + ([signature, *args] if signature else [])))


async def wait_bus_name(address: str, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while "org.evsed" not in await busctl(address, "list", "--acquired"):
            await asyncio.sleep(0.1)
