"""`evsectl firmware status|install` run as a process against org.evsed.Firmware1 on a private
D-Bus. The service side is the real D-Bus layer (service.dbus.export) with the small real
firmware manager of tests/service/dbus/test_firmware_interface.py behind Firmware1, since the
daemon's own manager is wired in separately; the packaged bus policy is enforced by a real
dbus-daemon in the permission test."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from service.dbus.server import DbusService, export
from tests.evsectl.test_cli import POLICY, assert_one_error_line, evsectl, system_like_bus
from tests.integration.conftest import REPO
from tests.service.dbus.test_api import FakeApi
from tests.service.dbus.test_firmware_interface import LocalFirmwareManager

__all__ = ["system_like_bus"]  # the fixture of test_cli, used here too

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        shutil.which("dbus-daemon") is None or shutil.which("busctl") is None,
        reason="needs dbus-daemon and busctl",
    ),
]

LIMIT = 30.0


@pytest.fixture
def manager() -> LocalFirmwareManager:
    return LocalFirmwareManager()


@pytest.fixture
async def service(dbus_address: str, manager: LocalFirmwareManager) -> AsyncIterator[DbusService]:
    svc = await asyncio.wait_for(
        export(FakeApi(), None, bus_address=dbus_address, firmware=manager), LIMIT
    )
    try:
        yield svc
    finally:
        await asyncio.wait_for(svc.close(), LIMIT)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users can read (pytest's tmp_path is private to root)."""
    directory = Path(tempfile.mkdtemp(prefix="evsectl-fw-", dir="/tmp"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def bundle(directory: Path, name: str = "update.bin") -> Path:
    path = directory / name
    path.write_bytes(b"firmware image " * 1000)
    path.chmod(0o644)
    return path


async def test_status_shows_the_update(
    service: DbusService, dbus_address: str, manager: LocalFirmwareManager
) -> None:
    bus = ("--bus", dbus_address)
    run = await evsectl(*bus, "firmware", "status")
    assert (run.code, run.err) == (0, "")
    assert run.out.splitlines() == [
        "Firmware  1.2.3",
        "Update    Idle",
        "State     Idle",
        "Progress  0 %",
        "Request   -",
        "Location  -",
        "Backend   command",
    ]
    manager.change(
        state="Downloading",
        progress=42,
        request_id=17,
        location="https://fw:pw@files.example/fw.bin",
        last_error="retrying after a timeout\x1b[31m",
    )
    run = await evsectl(*bus, "firmware")  # status is the default action
    lines = run.out.splitlines()
    assert lines[2:] == [
        "State     Downloading",
        "Progress  42 %",
        "Request   17",
        "Location  https://fw@files.example/fw.bin",
        "Backend   command",
        "Error     retrying after a timeout\\x1b[31m",
    ]
    document = (await evsectl(*bus, "--json", "firmware", "status")).json()
    assert document == {
        "firmware_version": "1.2.3",
        "status": "Idle",
        "state": "Downloading",
        "progress": 42,
        "last_error": "retrying after a timeout\x1b[31m",
        "request_id": 17,
        "location": "https://fw@files.example/fw.bin",
        "backend": "command",
    }


async def test_status_without_the_firmware_interface(dbus_address: str) -> None:
    svc = await asyncio.wait_for(export(FakeApi(), None, bus_address=dbus_address), LIMIT)
    try:
        bus = ("--bus", dbus_address)
        run = await evsectl(*bus, "firmware", "status")
        assert (run.code, run.out.split()) == (0, ["Firmware", "1.2.3", "Update", "Idle"])
        assert (await evsectl(*bus, "--json", "firmware")).json() == {
            "firmware_version": "1.2.3",
            "status": "Idle",
        }
        missing = await evsectl(*bus, "firmware", "install", str(POLICY))
        assert_one_error_line(missing, 1, "InstallFile", "not provided by the running evsed")
    finally:
        await asyncio.wait_for(svc.close(), LIMIT)


async def test_install(
    service: DbusService, dbus_address: str, manager: LocalFirmwareManager, tmp_path: Path
) -> None:
    bus = ("--bus", dbus_address)
    path = bundle(tmp_path)
    manager.pause = 0.2  # the install takes about a second: evsectl sees it running
    # A relative FILE is resolved where evsectl runs (the helper runs it in the repository).
    run = await evsectl(*bus, "firmware", "install", os.path.relpath(path, REPO))
    assert (run.code, run.err) == (0, ""), run
    assert f"{path}: taken by evsed (state Installing)" in run.out
    assert manager.task is not None
    await asyncio.wait_for(manager.task, LIMIT)
    assert manager.values["state"] == "Installed" and manager.values["location"] == str(path)
    run = await evsectl(*bus, "firmware", "status")
    assert "State     Installed" in run.out and "Progress  100 %" in run.out

    as_json = await evsectl(*bus, "--json", "firmware", "install", str(path))
    assert as_json.code == 0
    assert as_json.json()["file"] == str(path) and as_json.json()["state"] == "Installing"
    await asyncio.wait_for(manager.task, LIMIT)


async def test_install_refusals(
    service: DbusService, dbus_address: str, manager: LocalFirmwareManager, tmp_path: Path
) -> None:
    bus = ("--bus", dbus_address)
    missing = await evsectl(*bus, "firmware", "install", str(tmp_path / "nope.bin"))
    assert_one_error_line(missing, 2, "nope.bin: no such file")
    assert manager.values["state"] == "Idle"
    usage = await evsectl(*bus, "firmware", "install")
    assert_one_error_line(usage, 2, "FILE")

    manager.pause = 0.2  # a slow install keeps the manager busy
    path = bundle(tmp_path)
    assert (await evsectl(*bus, "firmware", "install", str(path))).code == 0
    busy = await evsectl(*bus, "firmware", "install", str(path))
    assert_one_error_line(busy, 1, "a firmware update is in progress")
    manager.pause = 0.0
    assert manager.task is not None
    await asyncio.wait_for(manager.task, LIMIT)


async def test_help_documents_install() -> None:
    run = await evsectl("firmware", "--help")
    assert run.code == 0
    for text in ("install FILE", "root", "evsectl firmware install /var/lib/evsed/"):
        assert text in run.out, text


@pytest.mark.skipif(not POLICY.exists(), reason="needs packaging/dbus/org.evsed.conf")
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runuser") is None or not Path("/usr/bin/python3").exists(),
    reason="needs root, runuser and /usr/bin/python3 to act as another user",
)
async def test_packaged_policy_reads_for_all_install_for_root(
    system_like_bus: str, manager: LocalFirmwareManager, shared_dir: Path
) -> None:
    svc = await asyncio.wait_for(
        export(FakeApi(), None, bus_address=system_like_bus, firmware=manager), LIMIT
    )
    try:
        bus = ("--bus", system_like_bus)
        path = bundle(shared_dir)
        status = await evsectl(*bus, "firmware", "status", user="nobody")
        assert status.code == 0 and "State     Idle" in status.out, status
        denied = await evsectl(*bus, "firmware", "install", str(path), user="nobody")
        assert_one_error_line(denied, 4, "permission denied")
        assert manager.values["state"] == "Idle"
        allowed = await evsectl(*bus, "firmware", "install", str(path))
        assert allowed.code == 0, allowed
        assert manager.task is not None
        await asyncio.wait_for(manager.task, LIMIT)
        assert manager.values["state"] == "Installed"
    finally:
        await asyncio.wait_for(svc.close(), LIMIT)
