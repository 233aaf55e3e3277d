"""The shipped D-Bus policy (packaging/dbus/org.evsed.conf) enforced by a real dbus-daemon.

The bus is a private dbus-daemon started as a direct child of the test. Its configuration is
Debian's own /usr/share/dbus-1/system.conf (`<type>system</type>`, the default-deny policy)
with only the daemon-process settings (user, fork, pidfile, syslog, service helper), the
listen address and the include directories replaced: the one include directory holds the
shipped policy file, unchanged. The service behind `org.evsed` is the real evsed
(`python -m service.main`) with a simulated EVSE; its CSMS URL is the placeholder, so it does
not connect, except in the signal test, which runs the test CSMS on loopback. Clients are the
system's busctl, dbus-send and gdbus run as other users with `runuser`.

The daemon runs as root: the project's interpreter lives under /root (mode 0700), which user
evsed cannot reach. The policy lets root own the name (evsed run by hand for debugging), so
the shipped file needs no change; the rule that lets user evsed own it is checked with a
RequestName sent as evsed.

Accounts: the test needs root. User evsed and group evsed-operators are created when missing
and removed afterwards, together with a temporary member of evsed-operators. An exclusive
lock file keeps two test runs on this machine from creating and deleting them under each
other. They exist before each bus starts, since dbus-daemon resolves the names in the policy
when it reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from service.dbus import BUS_NAME, STATION_INTERFACE, STATION_PATH, StationInterface
from service.dbus.server import open_bus
from testcsms.server import TestCsms
from tests.integration.conftest import DaemonProcess, start_daemon, write_config

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "packaging" / "dbus" / "org.evsed.conf"
SYSTEM_CONF = Path("/usr/share/dbus-1/system.conf")
PLACEHOLDER_URL = "ws://csms.invalid:9000/ocpp"  # evsed does not connect to this one
OPERATORS = "evsed-operators"
DAEMON_USER = "evsed"
LIMIT = 15.0  # bound on every wait and command, against hangs only
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="creates users and runs clients as them: root"),
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in ("dbus-daemon", "busctl", "dbus-send", "runuser"))
        or not SYSTEM_CONF.is_file(),
        reason="needs dbus-daemon, busctl, dbus-send, runuser and the system bus configuration",
    ),
]

# Every method of the API's interfaces changes something or reveals OCPP traffic; the policy
# leaves all of them to root and evsed-operators. These must at least be there.
OPERATOR_METHODS = {
    "org.evsed.Station1": {
        "PresentToken", "DataTransfer", "RegisterVendor", "UnregisterVendor",
        "AnswerDataTransfer",
    },
    "org.evsed.Evse1": {"StartSession", "StopSession", "SetAvailability"},
    "org.evsed.Simulator1": {
        "Plug", "Unplug", "SetEvReady", "SetEvMaxCurrent", "PresentRfid", "RaiseFault",
        "ClearFault", "WebsocketDisconnect", "WebsocketConnect",
    },
}
OBJECTS = {
    "org.evsed.Station1": "/org/evsed/Station",
    "org.evsed.Evse1": "/org/evsed/Evse/1",
    "org.evsed.Simulator1": "/org/evsed/Simulator",
}


# ------------------------------------------------------------------------------ accounts


@dataclass
class Accounts:
    operator: str  # a temporary member of evsed-operators


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=LIMIT, env=ENV)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


@contextlib.contextmanager
def _accounts_lock() -> Iterator[None]:
    with open("/tmp/evsed-test-accounts.lock", "w") as lock:  # shared by all test runs
        deadline = time.monotonic() + 60
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError("another test run holds the accounts lock") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def accounts() -> Iterator[Accounts]:
    users: list[str] = []
    groups: list[str] = []
    with _accounts_lock():
        try:
            if not _group_exists(OPERATORS):
                _run("groupadd", "--system", OPERATORS)
                groups.append(OPERATORS)
            if not _user_exists(DAEMON_USER):
                _run("useradd", "--system", "--user-group", "--no-create-home",
                     "--home-dir", "/var/lib/evsed", "--shell", "/usr/sbin/nologin", DAEMON_USER)
                users.append(DAEMON_USER)
            operator = f"evsed-t{os.getpid()}"
            _run("useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
                 "/nonexistent", "--shell", "/usr/sbin/nologin", "-G", OPERATORS, operator)
            users.append(operator)
            yield Accounts(operator)
        finally:
            for user in reversed(users):
                subprocess.run(["userdel", user], capture_output=True, timeout=LIMIT, env=ENV)
            for group in groups:
                subprocess.run(["groupdel", group], capture_output=True, timeout=LIMIT, env=ENV)


# ------------------------------------------------------------------------------ the bus


def bus_config(directory: Path) -> Path:
    """Debian's system.conf, listening in `directory`, including only the shipped policy."""
    policy_dir = directory / "system.d"
    policy_dir.mkdir()
    shutil.copy(POLICY, policy_dir / POLICY.name)
    tree = ET.parse(SYSTEM_CONF)
    root = tree.getroot()
    assert root.findtext("type") == "system"
    dropped = {"user", "fork", "pidfile", "syslog", "servicehelper", "listen",
               "standard_system_servicedirs", "include", "includedir"}
    for element in list(root):
        if element.tag in dropped:
            root.remove(element)
    ET.SubElement(root, "listen").text = f"unix:dir={directory}"
    ET.SubElement(root, "includedir").text = str(policy_dir)
    path = directory / "bus.conf"
    tree.write(path, encoding="unicode")
    return path


@contextlib.contextmanager
def system_bus() -> Iterator[str]:
    """A system-like dbus-daemon as a direct child; yields its address."""
    # A directory others can enter: clients run as nobody and as the operator.
    directory = Path(tempfile.mkdtemp(prefix="evsed-bus-", dir="/tmp"))
    directory.chmod(0o755)
    process = subprocess.Popen(
        ["dbus-daemon", f"--config-file={bus_config(directory)}", "--nofork",
         "--print-address=1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV)
    try:
        assert process.stdout is not None
        address = process.stdout.readline().strip()
        assert address, "dbus-daemon printed no address"
        yield address
    finally:
        process.terminate()
        try:
            process.wait(timeout=LIMIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=LIMIT)
        shutil.rmtree(directory, ignore_errors=True)


# ------------------------------------------------------------------------------ clients


def run_as(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """`argv` run as `user` (root: directly), with a clean environment."""
    command = list(argv) if user == "root" else ["runuser", "-u", user, "--", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=LIMIT, env=ENV)


def busctl(user: str, address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_as(user, "busctl", f"--address={address}", *args)


def dbus_send(user: str, address: str, path: str, interface: str, method: str,
              *args: str) -> subprocess.CompletedProcess[str]:
    """dbus-send prints the D-Bus error name and message, which busctl does not."""
    return run_as(user, "dbus-send", f"--bus={address}", "--print-reply", f"--dest={BUS_NAME}",
                  path, f"{interface}.{method}", *args)


def refused_by_bus(result: subprocess.CompletedProcess[str]) -> bool:
    """dbus-daemon itself refused the call for its policy (the service never saw it)."""
    return (result.returncode != 0
            and "org.freedesktop.DBus.Error.AccessDenied: Rejected send message" in result.stderr)


def get_property(user: str, address: str, path: str, interface: str, name: str) -> str:
    result = busctl(user, address, "get-property", BUS_NAME, path, interface, name)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


# ------------------------------------------------------------------------------ evsed


@dataclass
class Station:
    address: str
    operator: str


def _wait_ready(notify: socket.socket, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or process.poll() is not None:
            raise AssertionError(f"evsed did not become ready:\n{log.read_text()[-3000:]}")
        notify.settimeout(min(remaining, 1.0))
        try:
            data = notify.recv(4096)
        except TimeoutError:
            continue
        if "READY=1" in data.decode().splitlines():
            return


@pytest.fixture(scope="module")
def station(accounts: Accounts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Station]:
    """evsed with one simulated EVSE, owning org.evsed on a bus with the shipped policy."""
    work = tmp_path_factory.mktemp("policy")
    sock_dir = Path(tempfile.mkdtemp(prefix="evsed-n-", dir="/tmp"))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sock_dir / "notify"))
    with system_bus() as address:
        config = write_config(work, PLACEHOLDER_URL, dbus_address=address)
        log = work / "evsed.log"
        env = {**os.environ, "NOTIFY_SOCKET": str(sock_dir / "notify")}
        env.pop("JOURNAL_STREAM", None)
        with open(log, "wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "service.main", "--config", str(config)],
                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log_file)
        try:
            _wait_ready(notify, process, log)
            yield Station(address, accounts.operator)
        finally:
            process.terminate()
            try:
                process.wait(timeout=LIMIT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=LIMIT)
            notify.close()
            shutil.rmtree(sock_dir, ignore_errors=True)


def introspected_methods(address: str) -> dict[str, set[str]]:
    """The methods of org.evsed.* interfaces the running daemon exports, by interface."""
    methods: dict[str, set[str]] = {}
    for interface, path in OBJECTS.items():
        result = busctl("root", address, "introspect", "--xml-interface", BUS_NAME, path)
        assert result.returncode == 0, result.stderr
        for node in ET.fromstring(result.stdout).iter("interface"):
            if node.get("name") == interface:
                methods[interface] = {m.get("name", "") for m in node.iter("method")}
    return methods


# ------------------------------------------------------------------------------ tests


def test_only_evsed_and_root_may_own_the_name(accounts: Accounts) -> None:
    request = ["call", "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
               "RequestName", "su", BUS_NAME, "0"]
    with system_bus() as address:
        for user in ("nobody", accounts.operator):
            result = busctl(user, address, *request)
            assert result.returncode != 0
            assert "Access denied" in result.stderr, result.stderr
        for user in (DAEMON_USER, "root"):
            # 1 = DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER (busctl's connection then ends).
            result = busctl(user, address, *request)
            assert result.returncode == 0, result.stderr
            assert result.stdout.strip() == "u 1"


def test_everyone_may_read(station: Station) -> None:
    address = station.address
    for user in ("nobody", station.operator, "root"):
        assert get_property(user, address, "/org/evsed/Station", "org.evsed.Station1",
                            "EvseIds") == "au 1 1"
        assert get_property(user, address, "/org/evsed/Evse/1", "org.evsed.Evse1",
                            "Status") == 's "Available"'
        get_all = busctl(user, address, "call", BUS_NAME, "/org/evsed/Evse/1",
                         "org.freedesktop.DBus.Properties", "GetAll", "s", "org.evsed.Evse1")
        assert get_all.returncode == 0, get_all.stderr
        assert '"PilotState" s "A"' in get_all.stdout
        introspect = busctl(user, address, "introspect", BUS_NAME, "/org/evsed/Evse/1")
        assert introspect.returncode == 0, introspect.stderr
        assert ".StartSession" in introspect.stdout
        ping = busctl(user, address, "call", BUS_NAME, "/org/evsed/Station",
                      "org.freedesktop.DBus.Peer", "Ping")
        assert ping.returncode == 0, ping.stderr


def test_nobody_may_not_set_properties(station: Station) -> None:
    # Every property is read-only anyway; the bus refuses Set before evsed sees it.
    for user in ("nobody", station.operator):
        result = dbus_send(user, station.address, "/org/evsed/Station",
                           "org.freedesktop.DBus.Properties", "Set",
                           "string:org.evsed.Station1", "string:Vendor", "variant:string:x")
        assert refused_by_bus(result), result.stderr
    result = dbus_send("root", station.address, "/org/evsed/Station",
                       "org.freedesktop.DBus.Properties", "Set",
                       "string:org.evsed.Station1", "string:Vendor", "variant:string:x")
    assert not refused_by_bus(result) and result.returncode != 0  # evsed: not writable


def test_every_api_method_is_for_operators_and_root_only(station: Station) -> None:
    exported = introspected_methods(station.address)
    for interface, required in OPERATOR_METHODS.items():
        assert required <= exported.get(interface, set()), (interface, exported)
    for interface, methods in exported.items():
        path = OBJECTS[interface]
        for method in sorted(methods):
            denied = dbus_send("nobody", station.address, path, interface, method)
            assert refused_by_bus(denied), (interface, method, denied.stderr)
            # Without arguments a method that takes some fails in evsed's bus library with
            # InvalidArgs; one without (StopSession, WebsocketConnect...) answers that it has
            # nothing to do. Either way the call went through the bus, and neither the bus
            # nor sd-bus in evsed (which refuses methods not marked unprivileged to callers
            # without CAP_SYS_ADMIN) turned it away.
            for user in (station.operator, "root"):
                allowed = dbus_send(user, station.address, path, interface, method)
                assert "AccessDenied" not in allowed.stderr, (user, interface, method,
                                                              allowed.stderr)


def test_a_refused_call_changes_nothing_and_an_operator_is_served(station: Station) -> None:
    address, evse = station.address, "/org/evsed/Evse/1"
    denied = busctl("nobody", address, "call", BUS_NAME, evse, "org.evsed.Evse1",
                    "StartSession", "s", "04A2B3C4")
    assert denied.returncode != 0
    assert "Access denied" in denied.stderr, denied.stderr
    denied = busctl("nobody", address, "call", BUS_NAME, "/org/evsed/Simulator",
                    "org.evsed.Simulator1", "Plug", "u", "1")
    assert "Access denied" in denied.stderr, denied.stderr
    assert get_property("nobody", address, evse, "org.evsed.Evse1", "SessionId") == 's ""'
    assert get_property("nobody", address, evse, "org.evsed.Evse1", "PilotState") == 's "A"'

    # The operator starts a session: evsed answers with its id (offline, the unknown token is
    # then rejected by the authorization rules, which is evsed's business, not the bus's).
    started = busctl(station.operator, address, "call", BUS_NAME, evse, "org.evsed.Evse1",
                     "StartSession", "s", "04A2B3C4")
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith('s "') and len(started.stdout.strip()) > 4

    plugged = busctl(station.operator, address, "call", BUS_NAME, "/org/evsed/Simulator",
                     "org.evsed.Simulator1", "Plug", "u", "1")
    assert plugged.returncode == 0, plugged.stderr
    assert get_property("nobody", address, evse, "org.evsed.Evse1", "PilotState") == 's "B"'
    unplugged = busctl("root", address, "call", BUS_NAME, "/org/evsed/Simulator",
                       "org.evsed.Simulator1", "Unplug", "u", "1")
    assert unplugged.returncode == 0, unplugged.stderr
    availability = busctl("root", address, "call", BUS_NAME, evse, "org.evsed.Evse1",
                          "SetAvailability", "b", "true")
    assert availability.returncode == 0, availability.stderr
    assert availability.stdout.strip() == 's "Accepted"'


# ------------------------------------------------------------------------------ signals


@dataclass
class Monitor:
    """`gdbus monitor` of org.evsed's signals, run as one user; lines collected as they come."""

    process: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    async def wait_for(self, predicate: Callable[[str], bool]) -> None:
        async with asyncio.timeout(LIMIT):
            while not any(predicate(line) for line in self.lines):
                await asyncio.sleep(0.05)

    def count(self, text: str) -> int:
        return sum(1 for line in self.lines if text in line)


@contextlib.asynccontextmanager
async def monitor(user: str, address: str) -> AsyncIterator[Monitor]:
    # gdbus writes through stdio: line buffering makes every signal readable at once.
    process = await asyncio.create_subprocess_exec(
        "runuser", "-u", user, "--", "stdbuf", "-oL", "gdbus", "monitor",
        "--address", address, "--dest", BUS_NAME,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=ENV)
    mon = Monitor(process)

    async def read() -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            mon.lines.append(raw.decode(errors="replace").rstrip())

    mon.reader = asyncio.create_task(read())
    try:
        await mon.wait_for(lambda line: "is owned by" in line)
        yield mon
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(LIMIT):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
        mon.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await mon.reader


@pytest.fixture
async def csms() -> AsyncIterator[TestCsms]:
    server = TestCsms(heartbeat_interval=300)
    async with server:
        yield server


@pytest.mark.skipif(shutil.which("gdbus") is None or shutil.which("stdbuf") is None,
                    reason="needs gdbus (libglib2.0-bin) and stdbuf")
async def test_signals_reach_everyone_but_vendor_requests_only_operators(
        accounts: Accounts, csms: TestCsms, tmp_path: Path) -> None:
    """Status signals are public; DataTransferRequest carries vendor payloads for handlers.

    Signals from one sender reach a receiver in order, so a monitor that has seen a signal
    sent after the DataTransferRequest, but not the request, was refused it by the policy.
    """
    with system_bus() as address:
        config = write_config(tmp_path, csms.url, dbus_address=address)
        daemon: DaemonProcess = await start_daemon(config, tmp_path)
        bus = open_bus(address)
        try:
            await daemon.wait_notification("READY=1")
            await csms.wait_for("StatusNotification")
            async with monitor("nobody", address) as public, \
                    monitor(accounts.operator, address) as operator:
                sim = ("call", BUS_NAME, "/org/evsed/Simulator", "org.evsed.Simulator1")
                assert busctl("root", address, *sim, "Plug", "u", "1").returncode == 0
                for mon in (public, operator):
                    await mon.wait_for(lambda line: "StatusChanged ('Preparing'" in line)

                # root registers as the handler of a vendor; the CSMS sends it a request.
                station = StationInterface.new_proxy(BUS_NAME, STATION_PATH, bus)
                requests: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
                slot = await bus.match_signal_async(
                    BUS_NAME, STATION_PATH, STATION_INTERFACE, "DataTransferRequest",
                    lambda message: requests.put_nowait(message.get_contents()))
                await asyncio.wait_for(station.register_vendor("com.acme"), LIMIT)
                answer = asyncio.ensure_future(csms.call(
                    "CP-IT-1", "DataTransfer",
                    {"vendorId": "com.acme", "messageId": "SetPrice", "data": "0.39"}))
                request_id, *_ = await asyncio.wait_for(requests.get(), LIMIT)
                await asyncio.wait_for(
                    station.answer_data_transfer(request_id, "Accepted", ""), LIMIT)
                assert (await asyncio.wait_for(answer, LIMIT))["status"] == "Accepted"
                slot.close()

                assert busctl("root", address, *sim, "Unplug", "u", "1").returncode == 0
                for mon in (public, operator):
                    await mon.wait_for(lambda line: "StatusChanged ('Available'" in line)
                assert operator.count(".DataTransferRequest (") == 1
                assert public.count(".DataTransferRequest (") == 0
                assert public.count(".OcppFrame (") == 0
                assert public.count("PropertiesChanged") >= 2
        finally:
            bus.close()
            await daemon.stop()
            daemon.notify.close()
