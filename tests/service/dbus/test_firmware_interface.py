"""org.evsed.Firmware1 on a real private dbus-daemon: properties, PropertiesChanged, InstallFile
and its errors, and the privilege check, with a small real firmware manager written for the test
(the daemon's FirmwareManager is a separate component with its own tests).

The manager here keeps the protocol's promises for real: `install_local` checks the file, starts
an "install" that reads the bundle in chunks (progress from the bytes read) and ends Installed,
or InstallationFailed when the bundle is not what it should be; a second request while one runs
is refused with FirmwareBusy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sdbus import SdBus

from service.dbus.errors import InvalidArgumentError, InvalidStateError
from service.dbus.interfaces import FIRMWARE_INTERFACE, FirmwareInterface, public_location
from service.dbus.server import BUS_NAME, STATION_PATH, DbusService, export
from tests.service.dbus.test_api import (
    FakeApi,
    bus_address,
    busctl,
    client,
    next_item,
    raw_call,
    subscribe,
)

__all__ = ["bus_address"]  # the private dbus-daemon fixture, shared with test_api

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        shutil.which("dbus-daemon") is None or shutil.which("busctl") is None,
        reason="needs dbus-daemon and busctl",
    ),
]

LIMIT = 15.0
PROPERTIES = "org.freedesktop.DBus.Properties"
BAD_BUNDLE = b"not a bundle"


class FirmwareBusy(Exception):
    """Same name as service.firmware.manager.FirmwareBusy, which Firmware1 maps by name."""


class LocalFirmwareManager:
    """A FirmwareManagerLike that really reads the bundle it is given."""

    FINAL = ("Idle", "Installed", "InstallationFailed")

    def __init__(self, chunk: int = 4096, pause: float = 0.0) -> None:
        self.values: dict[str, object] = {
            "state": "Idle",
            "progress": 0,
            "last_error": "",
            "request_id": -1,
            "location": "",
            "backend": "command",
        }
        self.callbacks: list[Callable[[], None]] = []
        self.digests: list[str] = []
        self.chunk = chunk
        self.pause = pause
        self.fail_with: Exception | None = None
        self.task: asyncio.Task[None] | None = None
        self.snapshot_broken = False

    def snapshot(self) -> dict[str, object]:
        if self.snapshot_broken:
            raise RuntimeError("snapshot failed")
        return dict(self.values)

    def on_change(self, callback: Callable[[], None]) -> None:
        self.callbacks.append(callback)

    def change(self, **values: object) -> None:
        self.values.update(values)
        for callback in self.callbacks:
            callback()

    async def install_local(self, path: Path) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        if self.values["state"] not in self.FINAL:
            raise FirmwareBusy(f"a firmware update is in progress ({self.values['state']})")
        if not path.is_absolute():
            raise ValueError(f"{path}: give an absolute path")
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
        self.change(state="Installing", progress=0, last_error="", location=str(path))
        self.task = asyncio.get_running_loop().create_task(self._install(path))

    async def _install(self, path: Path) -> None:
        size = path.stat().st_size
        digest = hashlib.sha256()
        done = 0
        with path.open("rb") as handle:
            while block := handle.read(self.chunk):
                digest.update(block)
                done += len(block)
                self.change(progress=done * 100 // max(size, 1))
                await asyncio.sleep(self.pause)
        self.digests.append(digest.hexdigest())
        if path.read_bytes() == BAD_BUNDLE:
            self.change(state="InstallationFailed", last_error="not a bundle")
        else:
            self.change(state="Installed", progress=100)


@pytest.fixture
def manager() -> LocalFirmwareManager:
    return LocalFirmwareManager()


@pytest.fixture
async def service(bus_address: str, manager: LocalFirmwareManager) -> AsyncIterator[DbusService]:
    svc = await asyncio.wait_for(
        export(FakeApi(), None, bus_address=bus_address, firmware=manager), LIMIT
    )
    try:
        yield svc
    finally:
        await asyncio.wait_for(svc.close(), LIMIT)


@contextlib.asynccontextmanager
async def proxy(address: str) -> AsyncIterator[tuple[SdBus, FirmwareInterface]]:
    with client(address) as bus:
        yield bus, FirmwareInterface.new_proxy(BUS_NAME, STATION_PATH, bus)


async def install(bus: SdBus, path: str) -> Any:
    return await raw_call(bus, STATION_PATH, FIRMWARE_INTERFACE, "InstallFile", "s", path)


def bundle(tmp_path: Path, content: bytes = b"\x00firmware" * 5000) -> Path:
    path = tmp_path / "update.bin"
    path.write_bytes(content)
    return path


# --------------------------------------------------------------------------- properties


async def test_properties_and_introspection(service: DbusService, bus_address: str) -> None:
    async with proxy(bus_address) as (_bus, firmware):
        assert await asyncio.wait_for(firmware.properties_get_all_dict(), LIMIT) == {
            "state": "Idle",
            "progress": 0,
            "last_error": "",
            "request_id": -1,
            "location": "",
            "backend": "command",
        }
    rc, out = await busctl(bus_address, "introspect", BUS_NAME, STATION_PATH)
    assert rc == 0
    assert "org.evsed.Station1" in out and FIRMWARE_INTERFACE in out
    for member in ("State", "Progress", "LastError", "RequestId", "Location", "Backend"):
        assert f".{member} " in out, member
    assert ".InstallFile " in out
    rc, out = await busctl(
        bus_address, "get-property", BUS_NAME, STATION_PATH, FIRMWARE_INTERFACE, "RequestId"
    )
    assert (rc, out.strip()) == (0, "i -1")


async def test_values_are_sanitised(
    service: DbusService, bus_address: str, manager: LocalFirmwareManager
) -> None:
    manager.change(
        state="Downloading",
        request_id=2**40,  # beyond int32: shown as none
        progress="a lot",  # not an int: 0
        location="ftp://fw:s3cret@files.example/fw.bin",
        last_error="nul\x00inside",
    )
    async with proxy(bus_address) as (_bus, firmware):
        values = await asyncio.wait_for(firmware.properties_get_all_dict(), LIMIT)
    assert values["state"] == "Downloading"
    assert values["request_id"] == -1 and values["progress"] == 0
    assert values["location"] == "ftp://fw@files.example/fw.bin"
    assert values["last_error"] == "nul\ufffdinside"
    assert public_location("https://u:p@h:8443/x?y=1") == "https://u@h:8443/x?y=1"
    assert public_location("https://:p@h/x") == "https://h/x"
    assert public_location("/var/lib/evsed/fw.bin") == "/var/lib/evsed/fw.bin"


async def test_a_failing_snapshot_keeps_the_last_values(
    service: DbusService, bus_address: str, manager: LocalFirmwareManager
) -> None:
    manager.change(state="Downloading", request_id=7)
    manager.snapshot_broken = True
    manager.change(state="Downloaded")  # the refresh fails and is logged, nothing raises
    async with proxy(bus_address) as (_bus, firmware):
        assert await asyncio.wait_for(firmware.request_id.get_async(), LIMIT) == 7
        assert await asyncio.wait_for(firmware.state.get_async(), LIMIT) == "Downloading"


# --------------------------------------------------------------------------- InstallFile


async def test_install_file_emits_progress_until_installed(
    service: DbusService, bus_address: str, manager: LocalFirmwareManager, tmp_path: Path
) -> None:
    path = bundle(tmp_path)
    with client(bus_address) as bus:
        slot, queue = await subscribe(bus, STATION_PATH, PROPERTIES, "PropertiesChanged")
        try:
            assert await install(bus, str(path)) is None
            seen: list[dict[str, Any]] = []
            while not seen or seen[-1].get("State") != ("s", "Installed"):
                interface, changed, _invalidated = await next_item(queue)
                assert interface == FIRMWARE_INTERFACE
                seen.append(changed)
        finally:
            slot.close()
    assert seen[0]["State"] == ("s", "Installing")
    assert seen[0]["Location"] == ("s", str(path))
    progress = [c["Progress"][1] for c in seen if "Progress" in c]
    assert progress == sorted(progress) and progress[-1] == 100 and len(progress) > 3
    assert manager.digests == [hashlib.sha256(path.read_bytes()).hexdigest()]
    async with proxy(bus_address) as (_bus, firmware):
        assert await asyncio.wait_for(firmware.state.get_async(), LIMIT) == "Installed"


async def test_install_file_errors(
    service: DbusService, bus_address: str, manager: LocalFirmwareManager, tmp_path: Path
) -> None:
    async with proxy(bus_address) as (_bus, firmware):
        with pytest.raises(InvalidArgumentError, match="absolute path"):
            await asyncio.wait_for(firmware.install_file("relative/update.bin"), LIMIT)
        with pytest.raises(InvalidArgumentError, match="no such file"):
            await asyncio.wait_for(firmware.install_file(str(tmp_path / "missing.bin")), LIMIT)
        # busy: a slow install is running
        manager.pause = 0.05
        path = bundle(tmp_path)
        await asyncio.wait_for(firmware.install_file(str(path)), LIMIT)
        with pytest.raises(InvalidStateError, match="in progress"):
            await asyncio.wait_for(firmware.install_file(str(path)), LIMIT)
        assert manager.task is not None
        manager.pause = 0.0
        await asyncio.wait_for(manager.task, LIMIT)
        # a bundle that fails to install reports it in LastError
        bad = tmp_path / "bad.bin"
        bad.write_bytes(BAD_BUNDLE)
        await asyncio.wait_for(firmware.install_file(str(bad)), LIMIT)
        await asyncio.wait_for(manager.task, LIMIT)
        assert await asyncio.wait_for(firmware.last_error.get_async(), LIMIT) == "not a bundle"
        # anything else the manager raises is a bug: a generic Failed, the service lives on
        manager.fail_with = RuntimeError("internal detail")
        rc, out = await busctl(
            bus_address, "call", BUS_NAME, STATION_PATH, FIRMWARE_INTERFACE, "InstallFile",
            "s", str(path),
        )  # fmt: skip
        assert rc != 0 and "internal error in evsed" in out and "internal detail" not in out
        manager.fail_with = None
        assert await asyncio.wait_for(firmware.state.get_async(), LIMIT) == "InstallationFailed"


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runuser") is None, reason="needs root and runuser"
)
async def test_install_file_needs_a_privileged_caller(
    service: DbusService, bus_address: str, manager: LocalFirmwareManager, tmp_path: Path
) -> None:
    """The test bus lets anyone call anything; sd-bus still refuses InstallFile to a caller
    without CAP_SYS_ADMIN, while reading the properties stays open."""
    path = bundle(tmp_path)

    async def as_nobody(*args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            "runuser", "-u", "nobody", "--", "busctl", f"--address={bus_address}", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(process.communicate(), LIMIT)
        assert process.returncode is not None
        return process.returncode, out.decode()

    rc, out = await as_nobody(
        "call", BUS_NAME, STATION_PATH, FIRMWARE_INTERFACE, "InstallFile", "s", str(path)
    )
    assert rc != 0 and ("Access denied" in out or "not permitted" in out), out
    assert manager.values["state"] == "Idle" and manager.digests == []
    rc, out = await as_nobody("get-property", BUS_NAME, STATION_PATH, FIRMWARE_INTERFACE, "State")
    assert (rc, out.strip()) == (0, 's "Idle"')


# --------------------------------------------------------------------------- export


async def test_without_a_manager_there_is_no_firmware_interface(bus_address: str) -> None:
    svc = await asyncio.wait_for(export(FakeApi(), None, bus_address=bus_address), LIMIT)
    try:
        rc, out = await busctl(bus_address, "introspect", BUS_NAME, STATION_PATH)
        assert rc == 0 and "org.evsed.Station1" in out and FIRMWARE_INTERFACE not in out
        svc.on_firmware_change()  # nothing exported: a no-op
    finally:
        await asyncio.wait_for(svc.close(), LIMIT)


async def test_changes_after_close_are_ignored(
    bus_address: str, manager: LocalFirmwareManager
) -> None:
    svc = await asyncio.wait_for(
        export(FakeApi(), None, bus_address=bus_address, firmware=manager), LIMIT
    )
    await asyncio.wait_for(svc.close(), LIMIT)
    manager.change(state="Downloading")  # the callback is still registered; it does nothing
    rc, out = await busctl(bus_address, "list")
    assert rc == 0 and BUS_NAME not in out
