"""A Reset while a firmware update installs is Rejected (OCPP 1.6 Soft and Hard; 2.0.1, B12):
the real daemon against the test CSMS, the install held in "Installing" by a slow install
script (the fixtures of tests/integration/test_firmware.py)."""

from __future__ import annotations

from pathlib import Path

from testcsms.server import TestCsms, utc_now_iso
from tests.integration.conftest import DaemonProcess
from tests.integration.test_firmware import (
    BUNDLE,
    CP,
    Setup,
    boot,
    calls,
    signature,
    signing,
    statuses,
    wait_status,
)
from tests.integration.test_v201_firmware import V201, update
from tests.servers import HttpServer


async def test_v16_reset_is_rejected_while_installing(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    setup = Setup(tmp_path, install_sleep=3, reboot_required=False)
    with HttpServer() as http:
        http.serve("/fw.bin", BUNDLE)
        daemon = await boot(csms, daemons, setup.config(csms.url), tmp_path)
        answer = await csms.call(
            CP, "UpdateFirmware", {"location": http.url("/fw.bin"), "retrieveDate": utc_now_iso()}
        )
        assert answer == {}
        await wait_status(csms, "Installing")
        for kind in ("Soft", "Hard"):
            assert await csms.call(CP, "Reset", {"type": kind}) == {"status": "Rejected"}
        await wait_status(csms, "Installed")
    # The refused resets did nothing: no restart, the installation was not interrupted.
    assert len(calls(csms, "BootNotification")) == 1
    assert statuses(csms) == ["Downloading", "Downloaded", "Installing", "Installed"]
    assert setup.installed.read_bytes() == BUNDLE
    # Installed: a Reset is carried out again (the daemon restarts and boots again).
    assert await csms.call(CP, "Reset", {"type": "Soft"}) == {"status": "Accepted"}
    await csms.wait_for("BootNotification", count=2, timeout=20)
    assert await daemon.stop() == 0


async def test_v201_reset_is_rejected_while_installing(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    ca, leaf = signing(tmp_path)
    setup = Setup(
        tmp_path,
        install_sleep=3,
        reboot_required=False,
        extra=f'manufacturer_roots = "{ca.cert_path}"',
    )
    with HttpServer() as http:
        http.serve("/fw.bin", BUNDLE)
        daemon = await boot(csms, daemons, setup.config(csms.url, versions=V201), tmp_path)
        request = update(
            http.url("/fw.bin"),
            5,
            signingCertificate=leaf.cert_path.read_text(),
            signature=signature(leaf, BUNDLE),
        )
        assert await csms.call(CP, "UpdateFirmware", request) == {"status": "Accepted"}
        await wait_status(csms, "Installing")
        for kind in ("Immediate", "OnIdle"):
            answer = await csms.call(CP, "Reset", {"type": kind})
            assert answer["status"] == "Rejected"
            assert answer["statusInfo"]["reasonCode"] == "FwUpdateInProgress"
        await wait_status(csms, "Installed")
    assert len(calls(csms, "BootNotification")) == 1
    assert await daemon.stop() == 0
