"""service/firmware/jobs.py: the stored job format, URL checks and the reboot requests (the
logind call against a stand-in login1 service on a private D-Bus; the command for real)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sdbus import DbusInterfaceCommonAsync, dbus_method_async

from service.config import FirmwareSettings
from service.dbus.server import open_bus
from service.firmware.jobs import (
    FirmwareJob,
    FirmwareState,
    logind_reboot,
    make_reboot,
    safe_file_name,
    shown_location,
    transfer_url_problem,
)

BUS_CONF = Path(__file__).resolve().parents[2] / "service" / "dbus" / "bus.conf"


@pytest.fixture
def dbus_address() -> Iterator[str]:
    """A private, permissive dbus-daemon (a child of the test process)."""
    process = subprocess.Popen(
        ["dbus-daemon", f"--config-file={BUS_CONF}", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        address = process.stdout.readline().strip()
        assert address, "dbus-daemon printed no address"
        yield address
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


class FakeLogin1(DbusInterfaceCommonAsync, interface_name="org.freedesktop.login1.Manager"):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[bool] = []

    @dbus_method_async("b", method_name="Reboot")
    async def reboot(self, interactive: bool) -> None:
        self.calls.append(interactive)


async def test_logind_reboot_calls_login1(dbus_address: str) -> None:
    bus = open_bus(dbus_address)
    login1 = FakeLogin1()
    login1.export_to_dbus("/org/freedesktop/login1", bus)
    await bus.request_name_async("org.freedesktop.login1", 0)
    try:
        await logind_reboot(dbus_address)
        assert login1.calls == [False]
    finally:
        bus.close()


async def test_logind_reboot_fails_loudly_without_login1(dbus_address: str) -> None:
    with pytest.raises(Exception, match="login1"):
        await logind_reboot(dbus_address)


async def test_reboot_command(tmp_path: Path) -> None:
    marker = tmp_path / "rebooted"
    ok = tmp_path / "reboot.sh"
    ok.write_text(f'#!/bin/sh\necho "$1" > "{marker}"\n')
    ok.chmod(0o755)
    await make_reboot(FirmwareSettings(reboot="command", reboot_command=(str(ok), "now")))()
    assert marker.read_text() == "now\n"
    bad = tmp_path / "fail.sh"
    bad.write_text("#!/bin/sh\necho not allowed >&2\nexit 5\n")
    bad.chmod(0o755)
    with pytest.raises(RuntimeError, match="exited with 5: not allowed"):
        await make_reboot(FirmwareSettings(reboot="command", reboot_command=(str(bad),)))()
    await make_reboot(FirmwareSettings(reboot="none"))()  # logs, does nothing


def test_job_round_trip_and_unknown_keys() -> None:
    job = FirmwareJob(
        job_id="x",
        origin="ocpp1.6",
        location="ftp://u:p@h/f.bin",
        state=FirmwareState.INSTALL_SCHEDULED,
        availability={"1": True},
    )
    text = job.to_json()
    assert FirmwareJob.from_json(text) == job
    # a field added by a later version is ignored, a missing one takes its default
    assert FirmwareJob.from_json(text[:-1] + ',"future":1}') == job
    with pytest.raises(ValueError):
        FirmwareJob.from_json("[]")
    with pytest.raises(ValueError):
        FirmwareJob.from_json('{"job_id":"x","origin":"o","location":"l","state":"Bogus"}')


def test_url_helpers() -> None:
    assert transfer_url_problem("ftps://h/x") is None
    assert "scheme" in (transfer_url_problem("file:///etc/passwd") or "")
    assert "Port" in (transfer_url_problem("http://h:99999/x") or "")
    assert safe_file_name("http://h/a/b/fw%20v2.raucb?x=1", "d") == "fw_v2.raucb"
    assert safe_file_name("http://h/", "firmware") == "firmware"
    assert safe_file_name("http://h/..", "firmware") == "firmware"
    assert shown_location("ftp://user:secret@h/x") == "ftp://user:***@h/x"
