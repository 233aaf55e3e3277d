"""Firmware updates and log uploads end to end (OCPP 1.6): the real daemon against the test
CSMS, firmware served by a loopback HTTP server, the command backend with shell scripts.

The one thing that cannot run here is the machine's reboot: the configured reboot command
is a script that records the request, and the test then kills the daemon (SIGKILL, as a
reboot would) and starts it again.
"""

from __future__ import annotations

import asyncio
import base64
import io
import shutil
import signal
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from testcsms.server import CallErrorReceived, Received, TestCsms, utc_now_iso
from tests.certs import CertPair, make_ca, make_leaf
from tests.integration.conftest import (
    BusctlError,
    DaemonProcess,
    busctl,
    eventually,
    sim,
    start_daemon,
    write_config,
)
from tests.servers import FtpServer, HttpServer
from tests.service.firmware import rauc_fixtures

CP = "CP-IT-1"
BUNDLE = b"evsed firmware 2.0\n" * 20_000


def calls(csms: TestCsms, action: str) -> list[dict[str, Any]]:
    """The CALLs of `action` the charger sent, each once: a message resent after a restart
    keeps its id (the charger cannot know whether the CSMS saw it before the kill)."""
    seen: set[str] = set()
    found = []
    for r in csms.received:
        new = r.unique_id not in seen
        if r.direction == "in" and r.message_type == 2 and r.action == action and new:
            seen.add(r.unique_id)
            found.append(r.payload)
    return found


def statuses(csms: TestCsms, action: str = "FirmwareStatusNotification") -> list[str]:
    return [p["status"] for p in calls(csms, action)]


async def wait_status(
    csms: TestCsms, status: str, action: str = "FirmwareStatusNotification", timeout: float = 20
) -> None:
    def seen(r: Received) -> bool:
        return (
            r.direction == "in"
            and r.message_type == 2
            and r.action == action
            and r.payload.get("status") == status
        )

    await csms.wait_for(seen, timeout=timeout)


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


class Setup:
    """Scripts and config of one test: install copies the bundle, reboot leaves a marker."""

    def __init__(
        self,
        tmp: Path,
        *,
        install_exit: int = 0,
        install_sleep: float = 0,
        reboot_required: bool = True,
        extra: str = "",
    ) -> None:
        self.tmp = tmp
        self.installed = tmp / "installed.bin"
        self.marker = tmp / "reboot-requested"
        install = script(
            tmp / "install.sh",
            f'sleep {install_sleep}\ncp "$1" "{self.installed}"\nexit {install_exit}',
        )
        confirm = script(tmp / "confirm.sh", f'test -f "{self.installed}"')
        reboot = script(tmp / "reboot.sh", f'echo reboot >> "{self.marker}"')
        self.firmware = f"""
[firmware]
backend = "command"
install_command = ["{install}", "{{bundle}}"]
confirm_command = ["{confirm}"]
reboot_required = {"true" if reboot_required else "false"}
reboot = "command"
reboot_command = ["{reboot}"]
download_timeout_s = 3
{extra}
"""

    def config(self, url: str, **kw: Any) -> Path:
        return write_config(self.tmp, url, top=self.firmware, **kw)


async def boot(
    csms: TestCsms, daemons: list[DaemonProcess], config: Path, tmp: Path, *, since: int = 0
) -> DaemonProcess:
    daemon = await start_daemon(config, tmp)
    daemons.append(daemon)
    await daemon.wait_notification("READY=1")
    await csms.wait_for("StatusNotification", since=since)  # the boot was Accepted
    return daemon


async def test_plain_update_reboot_and_installed_after_restart(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    setup = Setup(tmp_path)
    config = setup.config(csms.url)
    with HttpServer() as http:
        http.serve("/fw.bin", BUNDLE)
        daemon = await boot(csms, daemons, config, tmp_path)
        answer = await csms.call(
            CP,
            "UpdateFirmware",
            {
                "location": http.url("/fw.bin"),
                "retrieveDate": utc_now_iso(),
                "retries": 1,
                "retryInterval": 1,
            },
        )
        assert answer == {}
        await wait_status(csms, "Installing")
        await eventually(setup.marker.exists, timeout=15)
    assert setup.installed.read_bytes() == BUNDLE
    # The reboot: the machine goes away without a word.
    await daemon.stop(signal.SIGKILL)
    assert statuses(csms) == ["Downloading", "Downloaded", "Installing"]
    since = len(csms.received)
    await boot(csms, daemons, config, tmp_path, since=since)
    await wait_status(csms, "Installed")
    events = await csms.wait_for("SecurityEventNotification")
    assert events[0].payload["type"] == "FirmwareUpdated"
    assert statuses(csms) == ["Downloading", "Downloaded", "Installing", "Installed"]
    assert setup.marker.read_text() == "reboot\n"
    # TriggerMessage now: nothing runs
    assert await csms.call(
        CP, "TriggerMessage", {"requestedMessage": "FirmwareStatusNotification"}
    ) == {"status": "Accepted"}
    await eventually(lambda: statuses(csms)[-1] == "Idle")


async def test_install_failure_restores_availability(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    setup = Setup(tmp_path, install_exit=3, install_sleep=0.5)
    with HttpServer() as http:
        http.serve("/fw.bin", BUNDLE)
        await boot(csms, daemons, setup.config(csms.url, evses=2), tmp_path)
        await csms.call(CP, "ChangeAvailability", {"connectorId": 2, "type": "Inoperative"})
        await csms.call(
            CP, "UpdateFirmware", {"location": http.url("/fw.bin"), "retrieveDate": utc_now_iso()}
        )
        await wait_status(csms, "InstallationFailed")
    assert statuses(csms) == ["Downloading", "Downloaded", "Installing", "InstallationFailed"]

    def connector(n: int) -> list[str]:
        return [p["status"] for p in calls(csms, "StatusNotification") if p["connectorId"] == n]

    await eventually(lambda: connector(1)[-1] == "Available")
    assert "Unavailable" in connector(1)  # taken while installing
    assert connector(2)[-1] == "Unavailable"  # was Inoperative before: stays so


async def test_download_404_with_retries(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    setup = Setup(tmp_path)
    with HttpServer() as http:
        await boot(csms, daemons, setup.config(csms.url), tmp_path)
        await csms.call(
            CP,
            "UpdateFirmware",
            {
                "location": http.url("/nope.bin"),
                "retrieveDate": utc_now_iso(),
                "retries": 2,
                "retryInterval": 1,
            },
        )
        await wait_status(csms, "DownloadFailed")
        assert len([r for r in http.requests if r.path == "/nope.bin"]) == 3
    assert statuses(csms) == ["Downloading", "DownloadFailed"]
    assert not setup.installed.exists()


def signing(tmp: Path) -> tuple[CertPair, CertPair]:
    ca = make_ca(tmp / "pki", "manufacturer")
    return ca, make_leaf(ca, tmp / "pki", "signer")


def signature(leaf: CertPair, data: bytes) -> str:
    return base64.b64encode(leaf.private_key.sign(data, ec.ECDSA(hashes.SHA256()))).decode()


def signed_request(url: str, leaf: CertPair, sig: str, request_id: int) -> dict[str, Any]:
    return {
        "requestId": request_id,
        "retries": 0,
        "firmware": {
            "location": url,
            "retrieveDateTime": utc_now_iso(),
            "signingCertificate": leaf.cert_path.read_text(),
            "signature": sig,
        },
    }


async def test_signed_update_success_bad_signature_and_wrong_certificate(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    ca, leaf = signing(tmp_path)
    stranger = make_leaf(make_ca(tmp_path / "x", "other-ca"), tmp_path / "x", "impostor")
    setup = Setup(tmp_path, reboot_required=False, extra=f'manufacturer_roots = "{ca.cert_path}"')
    with HttpServer() as http:
        http.serve("/fw.bin", BUNDLE)
        await boot(csms, daemons, setup.config(csms.url), tmp_path)
        # wrong certificate: refused at once, nothing downloaded
        answer = await csms.call(
            CP,
            "SignedUpdateFirmware",
            signed_request(http.url("/fw.bin"), stranger, signature(stranger, BUNDLE), 1),
        )
        assert answer == {"status": "InvalidCertificate"}
        [event] = await csms.wait_for("SecurityEventNotification")
        assert event.payload["type"] == "InvalidFirmwareSigningCertificate"
        assert http.requests == []
        # bad signature: downloaded, refused, not installed
        answer = await csms.call(
            CP,
            "SignedUpdateFirmware",
            signed_request(http.url("/fw.bin"), leaf, signature(leaf, b"not the bundle"), 2),
        )
        assert answer == {"status": "Accepted"}
        await wait_status(csms, "InvalidSignature", "SignedFirmwareStatusNotification")
        events = await csms.wait_for("SecurityEventNotification", count=2)
        assert events[1].payload["type"] == "InvalidFirmwareSignature"
        assert not setup.installed.exists()
        # good one
        answer = await csms.call(
            CP,
            "SignedUpdateFirmware",
            signed_request(http.url("/fw.bin"), leaf, signature(leaf, BUNDLE), 3),
        )
        assert answer == {"status": "Accepted"}
        await wait_status(csms, "Installed", "SignedFirmwareStatusNotification")
    sent = [
        (p["status"], p.get("requestId")) for p in calls(csms, "SignedFirmwareStatusNotification")
    ]
    assert sent == [
        ("Downloading", 2),
        ("Downloaded", 2),
        ("InvalidSignature", 2),
        ("Downloading", 3),
        ("Downloaded", 3),
        ("SignatureVerified", 3),
        ("Installing", 3),
        ("Installed", 3),
    ]
    assert setup.installed.read_bytes() == BUNDLE
    assert calls(csms, "FirmwareStatusNotification") == []


async def test_crash_while_downloading_resumes(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    setup = Setup(tmp_path, reboot_required=False)
    config = setup.config(csms.url)
    firmware_dir = tmp_path / "state" / "firmware"
    with HttpServer() as http:
        http.serve("/fw.bin", BUNDLE, stall_after=100_000, faults=1)
        daemon = await boot(csms, daemons, config, tmp_path)
        await csms.call(
            CP, "UpdateFirmware", {"location": http.url("/fw.bin"), "retrieveDate": utc_now_iso()}
        )
        await wait_status(csms, "Downloading")

        def part_size() -> int:
            parts = list(firmware_dir.glob("*.part"))
            return parts[0].stat().st_size if parts else 0

        await eventually(lambda: part_size() >= 100_000)
        await daemon.stop(signal.SIGKILL)
        since = len(csms.received)
        await boot(csms, daemons, config, tmp_path, since=since)
        await wait_status(csms, "Installed")
        assert http.requests[-1].headers.get("Range") == "bytes=100000-"
    assert statuses(csms) == ["Downloading", "Downloaded", "Installing", "Installed"]
    assert setup.installed.read_bytes() == BUNDLE


async def test_triggers_answer_the_true_state(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    setup = Setup(tmp_path, install_sleep=2, reboot_required=False)
    with HttpServer() as http:
        http.serve("/fw.bin", BUNDLE)
        await boot(csms, daemons, setup.config(csms.url), tmp_path)
        for requested, action in (
            ("FirmwareStatusNotification", "FirmwareStatusNotification"),
            ("DiagnosticsStatusNotification", "DiagnosticsStatusNotification"),
        ):
            assert await csms.call(CP, "TriggerMessage", {"requestedMessage": requested}) == {
                "status": "Accepted"
            }
            await wait_status(csms, "Idle", action)
        ext = await csms.call(
            CP, "ExtendedTriggerMessage", {"requestedMessage": "FirmwareStatusNotification"}
        )
        assert ext == {"status": "Accepted"}
        await wait_status(csms, "Idle", "SignedFirmwareStatusNotification")
        assert await csms.call(
            CP, "ExtendedTriggerMessage", {"requestedMessage": "LogStatusNotification"}
        ) == {"status": "Accepted"}
        await wait_status(csms, "Idle", "LogStatusNotification")
        assert await csms.call(
            CP, "ExtendedTriggerMessage", {"requestedMessage": "SignChargePointCertificate"}
        ) == {"status": "NotImplemented"}
        assert await csms.call(CP, "ExtendedTriggerMessage", {"requestedMessage": "Heartbeat"}) == {
            "status": "Accepted"
        }
        await csms.wait_for("Heartbeat")
        await csms.call(
            CP, "UpdateFirmware", {"location": http.url("/fw.bin"), "retrieveDate": utc_now_iso()}
        )
        await wait_status(csms, "Installing")
        await csms.call(CP, "TriggerMessage", {"requestedMessage": "FirmwareStatusNotification"})
        await eventually(
            lambda: statuses(csms)[-1] == "Installing" and statuses(csms).count("Installing") == 2
        )
        # an update being installed cannot be replaced
        with pytest.raises(CallErrorReceived) as refused:
            await csms.call(
                CP,
                "UpdateFirmware",
                {"location": http.url("/fw.bin"), "retrieveDate": utc_now_iso()},
            )
        assert refused.value.error_code == "GenericError"
        await wait_status(csms, "Installed")


async def test_update_refused_without_backend(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    await boot(csms, daemons, write_config(tmp_path, csms.url), tmp_path)
    with pytest.raises(CallErrorReceived) as refused:
        await csms.call(
            CP,
            "UpdateFirmware",
            {"location": "http://127.0.0.1/fw.bin", "retrieveDate": utc_now_iso()},
        )
    assert refused.value.error_code == "NotSupported"
    with pytest.raises(CallErrorReceived) as bad:
        await csms.call(CP, "GetDiagnostics", {"location": "sftp://127.0.0.1/x"})
    assert bad.value.error_code == "PropertyConstraintViolation"


def archive(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


async def test_get_diagnostics_http_and_get_log_ftp(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    await boot(csms, daemons, write_config(tmp_path, csms.url), tmp_path)
    with HttpServer() as http:
        answer = await csms.call(
            CP, "GetDiagnostics", {"location": http.url("/diag/"), "retries": 1, "retryInterval": 1}
        )
        name = answer["fileName"]
        assert name.endswith(".tar.gz")
        await wait_status(csms, "Uploaded", "DiagnosticsStatusNotification")
        [upload] = http.uploads
    assert statuses(csms, "DiagnosticsStatusNotification") == ["Uploading", "Uploaded"]
    assert upload.path == f"/diag/{name}"
    files = archive(upload.body)
    assert any("config" in n for n in files), files.keys()
    assert b"CP-IT-1" in b"".join(files.values())  # the message log / config mention us
    (tmp_path / "ftp" / "logs").mkdir(parents=True)
    with FtpServer(tmp_path / "ftp") as ftp:
        answer = await csms.call(
            CP,
            "GetLog",
            {
                "logType": "SecurityLog",
                "requestId": 9,
                "log": {"remoteLocation": ftp.url("/logs/", user=ftp.user, password=ftp.password)},
            },
        )
        assert answer["status"] == "Accepted"
        await wait_status(csms, "Uploaded", "LogStatusNotification")
        [stored] = ftp.wait_uploads(1)
    assert stored.path.endswith(answer["filename"])
    assert "security.log" in archive(stored.data)
    assert [(p["status"], p["requestId"]) for p in calls(csms, "LogStatusNotification")] == [
        ("Uploading", 9),
        ("Uploaded", 9),
    ]


async def test_install_waits_for_the_transaction(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    setup = Setup(tmp_path, reboot_required=False)
    config = setup.config(csms.url, dbus_address=dbus_address, evses=2)
    with HttpServer() as http:
        http.serve("/fw.bin", BUNDLE)
        await boot(csms, daemons, config, tmp_path)
        await sim(dbus_address, "Plug", "u", "1")
        await sim(dbus_address, "PresentRfid", "us", "1", "TAG-OK")
        await csms.wait_for("StartTransaction")
        await csms.call(
            CP, "UpdateFirmware", {"location": http.url("/fw.bin"), "retrieveDate": utc_now_iso()}
        )
        await wait_status(csms, "Downloaded")
        await asyncio.sleep(1.0)
        assert "Installing" not in statuses(csms)

        def last(n: int) -> str:
            return [
                p["status"] for p in calls(csms, "StatusNotification") if p["connectorId"] == n
            ][-1]

        await eventually(lambda: last(2) == "Unavailable")  # the idle EVSE is taken at once
        await sim(dbus_address, "Unplug", "u", "1")
        await csms.wait_for("StopTransaction")
        await wait_status(csms, "Installed")
        await eventually(lambda: last(1) == "Available" and last(2) == "Available")
    assert statuses(csms) == ["Downloading", "Downloaded", "Installing", "Installed"]


async def test_local_install_over_dbus(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    setup = Setup(tmp_path, reboot_required=False)
    bundle = tmp_path / "operator-bundle.bin"
    bundle.write_bytes(BUNDLE)
    await boot(csms, daemons, setup.config(csms.url, dbus_address=dbus_address), tmp_path)

    async def prop(interface: str, name: str) -> str:
        return await busctl(
            dbus_address, "get-property", "org.evsed", "/org/evsed/Station", interface, name
        )

    assert await prop("org.evsed.Station1", "FirmwareStatus") == 's "Idle"'
    await busctl(
        dbus_address,
        "call",
        "org.evsed",
        "/org/evsed/Station",
        "org.evsed.Firmware1",
        "InstallFile",
        "s",
        str(bundle),
    )
    await csms.wait_for("SecurityEventNotification")
    assert setup.installed.read_bytes() == BUNDLE
    assert await prop("org.evsed.Station1", "FirmwareStatus") == 's "Installed"'
    assert await prop("org.evsed.Firmware1", "State") == 's "Installed"'
    assert calls(csms, "FirmwareStatusNotification") == []  # a local install is not the CSMS's
    with pytest.raises(BusctlError):
        await busctl(
            dbus_address,
            "call",
            "org.evsed",
            "/org/evsed/Station",
            "org.evsed.Firmware1",
            "InstallFile",
            "s",
            "relative/path.bin",
        )


# --- RAUC end to end ------------------------------------------------------------------------
RAUC_MISSING = rauc_fixtures.missing()


@pytest.mark.skipif(RAUC_MISSING is not None, reason=RAUC_MISSING or "")
async def test_rauc_update_through_the_daemon(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    bus = rauc_fixtures.PrivateSystemBus(tmp_path / "bus")
    address = bus.start()
    rauc = rauc_fixtures.RaucSystem(tmp_path / "rauc", address)
    try:
        rauc.start("A")
        bundle = rauc.build_bundle(b"new root filesystem\n" * 4096)
        marker = tmp_path / "reboot-requested"
        reboot = script(tmp_path / "reboot.sh", f'echo reboot >> "{marker}"')
        firmware = f"""
[firmware]
backend = "rauc"
rauc_bus = "{address}"
reboot = "command"
reboot_command = ["{reboot}"]
"""
        config = write_config(tmp_path, csms.url, top=firmware)
        with HttpServer() as http:
            http.serve("/update.raucb", bundle.read_bytes())
            daemon = await boot(csms, daemons, config, tmp_path)
            await csms.call(
                CP,
                "UpdateFirmware",
                {"location": http.url("/update.raucb"), "retrieveDate": utc_now_iso()},
            )
            await eventually(marker.exists, timeout=60)
        assert rauc.boot_state()["primary"] == "B"
        await daemon.stop(signal.SIGKILL)
        assert rauc.reboot() == "B"  # the machine comes back on the new slot
        await boot(csms, daemons, config, tmp_path, since=len(csms.received))
        await wait_status(csms, "Installed", timeout=30)
        assert statuses(csms) == ["Downloading", "Downloaded", "Installing", "Installed"]
        events = await csms.wait_for("SecurityEventNotification")
        assert events[0].payload["type"] == "FirmwareUpdated"
        assert rauc.boot_state()["states"]["B"] == "good"
    finally:
        rauc.stop()
        bus.stop()


# --- swupdate end to end --------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("swupdate") is None, reason="swupdate is not installed")
async def test_swupdate_update_through_the_daemon(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    from tests.service.firmware.test_swupdate import (
        ROOTFS,
        VERSION_FILE,
        Target,
        build_swu,
        make_signer,
        sw_description,
    )

    signer = make_signer(tmp_path / "keys", "firmware signer")
    device = tmp_path / "device"
    (device / "etc").mkdir(parents=True)
    target = Target(device / "slot-b.img", device / "etc" / "version")
    target.slot.write_bytes(bytes(1024 * 1024))
    swu = build_swu(tmp_path / "swu", signer, sw_description(target))
    firmware = f"""
[firmware]
backend = "swupdate"
swupdate_command = ["swupdate", "-H", "evse:1.0"]
swupdate_public_key = "{signer.cert}"
reboot_required = false
"""
    # swupdate's sockets live in its work directory under the state directory: AF_UNIX paths
    # are limited to 108 bytes, and pytest's tmp_path is long.
    short = Path(tempfile.mkdtemp(prefix="evsed-sw-", dir="/tmp"))
    try:
        with HttpServer() as http:
            http.serve("/update.swu", swu.read_bytes())
            await boot(csms, daemons, write_config(short, csms.url, top=firmware), tmp_path)
            await csms.call(
                CP,
                "UpdateFirmware",
                {"location": http.url("/update.swu"), "retrieveDate": utc_now_iso()},
            )
            await eventually(lambda: len(statuses(csms)) >= 4, timeout=60)
        log = daemons[-1].stderr()[-2000:]
        assert statuses(csms) == ["Downloading", "Downloaded", "Installing", "Installed"], log
    finally:
        await daemons[-1].stop()
        shutil.rmtree(short, ignore_errors=True)
    assert target.slot.read_bytes()[: len(ROOTFS)] == ROOTFS
    assert target.file.read_bytes() == VERSION_FILE
