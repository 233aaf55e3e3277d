"""Run `evsed` as a real process against the project's test CSMS on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from testcsms.server import TestCsms

REPO = Path(__file__).resolve().parents[2]


def write_config(directory: Path, url: str, *, charge_point_id: str = "CP-IT-1",
                 csms_extra: str = "", ocpp_extra: str = "", top: str = "",
                 versions: str = '["ocpp1.6"]', security_profile: int = 0,
                 dbus_address: str | None = None, evses: int = 1) -> Path:
    evse_tables = "".join(f"[[evse]]\nid = {i}\n" for i in range(1, evses + 1))
    state = directory / "state"
    logs = directory / "msglog"
    path = directory / "evsed.toml"
    path.write_text(
        f"""{top}
[identity]
charge_point_id = "{charge_point_id}"
vendor = "evsed"
model = "it-test"
firmware_version = "0.1.0"

[csms]
url = "{url}"
ocpp_versions = {versions}
security_profile = {security_profile}
ping_interval_s = 5
call_timeout_s = 2
backoff_min_s = 0.1
backoff_max_s = 0.5
backoff_randomization = 0.2
{csms_extra}

[paths]
state_directory = "{state}"
message_log_directory = "{logs}"

[logging]
level = "debug"

[dbus]
enabled = {"true" if dbus_address else "false"}
bus = "{dbus_address or "system"}"
meter_poll_interval_s = 0.2

[ocpp]
TransactionMessageRetryInterval = 1
{ocpp_extra}

{evse_tables}""",
        encoding="utf-8",
    )
    return path


async def eventually(condition: Callable[[], bool], *, timeout: float = 10) -> None:
    """Poll a condition that no CSMS event signals (e.g. the daemon's database)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


@dataclass
class DaemonProcess:
    config: Path
    process: asyncio.subprocess.Process
    notify: socket.socket
    stderr_lines: list[str] = field(default_factory=list)
    notifications: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    async def wait_notification(self, prefix: str, timeout: float = 15) -> str:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                for note in self.notifications:
                    if note.startswith(prefix):
                        return note
                data = await loop.sock_recv(self.notify, 4096)
                self.notifications.extend(data.decode().splitlines())

    async def wait_notifications(self, prefix: str, count: int, timeout: float = 15) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while sum(1 for n in self.notifications if n.startswith(prefix)) < count:
                data = await loop.sock_recv(self.notify, 4096)
                self.notifications.extend(data.decode().splitlines())

    def stderr(self) -> str:
        return "\n".join(self.stderr_lines)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
        try:
            async with asyncio.timeout(timeout):
                code = await self.process.wait()
        except TimeoutError:
            tail = "\n".join(self.stderr_lines[-40:])
            message = f"evsed did not stop within {timeout} s; its log ends:\n{tail}"
            raise AssertionError(message) from None
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)
        return code


async def start_daemon(config: Path, tmp: Path, *, extra_env: dict[str, str] | None = None,
                       ) -> DaemonProcess:
    # AF_UNIX paths are limited to 108 bytes: keep the socket in a short private directory.
    sock_path = Path(tempfile.mkdtemp(prefix="evsed-n-", dir="/tmp")) / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sock_path))
    notify.setblocking(False)
    env = dict(os.environ)
    env.pop("JOURNAL_STREAM", None)
    env["NOTIFY_SOCKET"] = str(sock_path)
    env.update(extra_env or {})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.main", "--config", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env, cwd=REPO,
    )
    daemon = DaemonProcess(config, process, notify)

    async def read_stderr() -> None:
        assert process.stderr is not None
        async for line in process.stderr:
            daemon.stderr_lines.append(line.decode(errors="replace").rstrip())

    daemon._reader = asyncio.create_task(read_stderr())
    return daemon


@pytest.fixture
async def csms() -> AsyncIterator[TestCsms]:
    server = TestCsms(heartbeat_interval=300)
    async with server:
        yield server


@pytest.fixture
async def daemons() -> AsyncIterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        if daemon.process.returncode is None:
            daemon.process.kill()
            await daemon.process.wait()
        daemon.notify.close()


BUS_CONF = REPO / "tests" / "service" / "dbus" / "bus.conf"


@pytest.fixture
def dbus_address() -> Iterator[str]:
    """A private dbus-daemon, a direct child of the test process."""
    process = subprocess.Popen(
        ["dbus-daemon", f"--config-file={BUS_CONF}", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        address = process.stdout.readline().strip()
        assert address, "dbus-daemon printed no address"
        yield address
    finally:
        process.terminate()
        process.wait(timeout=10)


async def busctl(address: str, *args: str) -> str:
    """Call busctl against the private bus; raise with its stderr when it fails."""
    process = await asyncio.create_subprocess_exec(
        "busctl", f"--address={address}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    if process.returncode != 0:
        raise BusctlError(err.decode().strip())
    return out.decode().strip()


class BusctlError(Exception):
    pass


async def sim(address: str, method: str, signature: str = "", *args: str) -> str:
    call = ["call", "org.evsed", "/org/evsed/Simulator", "org.evsed.Simulator1", method]
    if signature:
        call += [signature, *args]
    return await busctl(address, *call)


async def evse_call(address: str, evse_id: int, method: str, signature: str = "",
                    *args: str) -> str:
    call = ["call", "org.evsed", f"/org/evsed/Evse/{evse_id}", "org.evsed.Evse1", method]
    if signature:
        call += [signature, *args]
    return await busctl(address, *call)


async def evse_property(address: str, evse_id: int, name: str) -> str:
    return await busctl(address, "get-property", "org.evsed", f"/org/evsed/Evse/{evse_id}",
                        "org.evsed.Evse1", name)
