"""Firmware updates (L01/L02), log upload (N01) and security events (A04) under OCPP 2.0.1 end
to end: the real daemon against the test CSMS speaking ocpp2.0.1, firmware served and logs
received by a loopback HTTP server, the command backend with shell scripts (the helpers of
tests/integration/test_firmware.py, the 1.6 twin of this file).

The one thing that cannot run here is the machine's reboot: the configured reboot command is a
script that records the request, and the test then kills the daemon (SIGKILL, as a reboot
would) and starts it again.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from testcsms.server import Received, TestCsms, utc_now_iso
from tests.certs import make_ca, make_leaf
from tests.integration.conftest import DaemonProcess, eventually
from tests.integration.test_firmware import (
    BUNDLE,
    Setup,
    archive,
    boot,
    calls,
    signature,
    signing,
    wait_status,
)
from tests.servers import HttpServer

CP = "CP-IT-1"
V201 = '["ocpp2.0.1"]'


def notifications(
    csms: TestCsms, action: str = "FirmwareStatusNotification", since: int = 0
) -> list[tuple[str, Any]]:
    """(status, requestId) of the CALLs of `action`, each message once."""
    seen: set[str] = set()
    found = []
    for r in csms.received[since:]:
        new = r.unique_id not in seen
        if r.direction == "in" and r.message_type == 2 and r.action == action and new:
            seen.add(r.unique_id)
            found.append((r.payload["status"], r.payload.get("requestId")))
    return found


def events(csms: TestCsms) -> list[str]:
    return [p["type"] for p in calls(csms, "SecurityEventNotification")]


def update(url: str, request_id: int, **firmware: Any) -> dict[str, Any]:
    return {
        "requestId": request_id,
        "retries": 0,
        "firmware": {"location": url, "retrieveDateTime": utc_now_iso(), **firmware},
    }


async def test_signed_update_with_reboot_reaches_installed(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    ca, leaf = signing(tmp_path)
    setup = Setup(tmp_path, install_sleep=1.5, extra=f'manufacturer_roots = "{ca.cert_path}"')
    config = setup.config(csms.url, versions=V201)
    with HttpServer() as http:
        http.serve("/fw.bin", BUNDLE)
        daemon = await boot(csms, daemons, config, tmp_path)
        assert csms.connections[-1].subprotocol == "ocpp2.0.1"
        # nothing runs: Idle, without a requestId
        trigger = {"requestedMessage": "FirmwareStatusNotification"}
        assert await csms.call(CP, "TriggerMessage", trigger) == {"status": "Accepted"}
        [idle] = await csms.wait_for("FirmwareStatusNotification")
        assert idle.payload == {"status": "Idle"}
        request = update(
            http.url("/fw.bin"),
            7,
            signingCertificate=leaf.cert_path.read_text(),
            signature=signature(leaf, BUNDLE),
        )
        assert await csms.call(CP, "UpdateFirmware", request) == {"status": "Accepted"}
        await wait_status(csms, "Installing")
        # the true state while installing
        assert await csms.call(CP, "TriggerMessage", trigger) == {"status": "Accepted"}
        await eventually(lambda: notifications(csms).count(("Installing", 7)) == 2)
        await wait_status(csms, "InstallRebooting")
        await eventually(setup.marker.exists, timeout=15)
    assert setup.installed.read_bytes() == BUNDLE
    # The reboot: the machine goes away without a word.
    await daemon.stop(signal.SIGKILL)
    since = len(csms.received)
    await boot(csms, daemons, config, tmp_path, since=since)
    await wait_status(csms, "Installed")
    await eventually(lambda: "FirmwareUpdated" in events(csms))
    assert notifications(csms) == [
        ("Idle", None),
        ("Downloading", 7),
        ("Downloaded", 7),
        ("SignatureVerified", 7),
        ("Installing", 7),
        ("Installing", 7),  # the trigger's
        ("InstallRebooting", 7),
        ("Installed", 7),
    ]
    assert calls(csms, "SignedFirmwareStatusNotification") == []
    assert await csms.call(CP, "TriggerMessage", trigger) == {"status": "Accepted"}
    await eventually(lambda: notifications(csms)[-1] == ("Idle", None))


async def test_refused_updates_bad_signature_and_get_log(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    ca, leaf = signing(tmp_path)
    stranger = make_leaf(make_ca(tmp_path / "x", "other-ca"), tmp_path / "x", "impostor")
    setup = Setup(tmp_path, reboot_required=False, extra=f'manufacturer_roots = "{ca.cert_path}"')
    with HttpServer() as http:
        http.serve("/fw.bin", BUNDLE)
        await boot(csms, daemons, setup.config(csms.url, versions=V201), tmp_path)
        # a certificate from elsewhere: refused at once, nothing downloaded, a security event
        request = update(
            http.url("/fw.bin"),
            1,
            signingCertificate=stranger.cert_path.read_text(),
            signature=signature(stranger, BUNDLE),
        )
        answer = await csms.call(CP, "UpdateFirmware", request)
        assert answer["status"] == "InvalidCertificate"
        await eventually(lambda: events(csms) == ["InvalidFirmwareSigningCertificate"])
        # unsigned firmware on a charger with manufacturer roots and the command backend
        answer = await csms.call(CP, "UpdateFirmware", update(http.url("/fw.bin"), 2))
        assert answer["status"] == "Rejected"
        assert answer["statusInfo"]["reasonCode"] == "SignatureRequired"
        assert http.requests == []
        # a bad signature: downloaded, refused, not installed, a security event
        request = update(
            http.url("/fw.bin"),
            3,
            signingCertificate=leaf.cert_path.read_text(),
            signature=signature(leaf, b"not the bundle"),
        )
        assert await csms.call(CP, "UpdateFirmware", request) == {"status": "Accepted"}
        await wait_status(csms, "InvalidSignature")
        await eventually(lambda: events(csms)[-1:] == ["InvalidFirmwareSignature"])
        assert notifications(csms) == [
            ("Downloading", 3),
            ("Downloaded", 3),
            ("InvalidSignature", 3),
        ]
        assert not setup.installed.exists()
        # GetLog: the security log (with those events) reaches the HTTP server
        answer = await csms.call(
            CP,
            "GetLog",
            {
                "logType": "SecurityLog",
                "requestId": 12,
                "retries": 1,
                "retryInterval": 1,
                "log": {"remoteLocation": http.url("/logs/")},
            },
        )
        assert answer["status"] == "Accepted"
        name = answer["filename"]
        await wait_status(csms, "Uploaded", "LogStatusNotification")
        [upload] = http.uploads
    assert upload.path == f"/logs/{name}"
    contents = b"".join(archive(upload.body).values())
    assert b"InvalidFirmwareSignature" in contents
    assert b"InvalidFirmwareSigningCertificate" in contents
    assert notifications(csms, "LogStatusNotification") == [("Uploading", 12), ("Uploaded", 12)]
    assert await csms.call(CP, "TriggerMessage", {"requestedMessage": "LogStatusNotification"}) == {
        "status": "Accepted"
    }
    await eventually(lambda: notifications(csms, "LogStatusNotification")[-1] == ("Idle", None))


async def test_messages_queued_under_16_are_not_sent_under_201(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    setup = Setup(tmp_path, install_sleep=1, reboot_required=False)
    csms.subprotocols = ("ocpp1.6",)
    config = setup.config(csms.url, versions='["ocpp2.0.1", "ocpp1.6"]')
    with HttpServer() as http:
        # the first download hangs (3 s timeout), the retry resumes it
        http.serve("/fw.bin", BUNDLE, stall_after=50_000, faults=1)
        daemon = await boot(csms, daemons, config, tmp_path)
        assert csms.connections[-1].subprotocol == "ocpp1.6"
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
        await wait_status(csms, "Downloading")
        # the CSMS now speaks 2.0.1 only
        csms.subprotocols = ("ocpp2.0.1",)
        since_connection = len(csms.connections)
        await csms.disconnect_all()
        [connection] = await csms.wait_for_connection(CP, since=since_connection)
        assert connection.subprotocol == "ocpp2.0.1"
        since = len(csms.received)
        await eventually(setup.installed.exists, timeout=20)
        # Downloaded, Installing, Installed: 1.6 messages, dropped rather than sent
        await eventually(
            lambda: daemon.stderr().count("dropping FirmwareStatusNotification") >= 3, timeout=10
        )

        def new_calls(action: str) -> list[Received]:
            return [
                r
                for r in csms.received[since:]
                if r.direction == "in" and r.message_type == 2 and r.action == action
            ]

        assert new_calls("FirmwareStatusNotification") == []
        # the FirmwareUpdated event was made on the 2.0.1 connection: sent under 2.0.1 (A04)
        await eventually(
            lambda: (
                [r.payload["type"] for r in new_calls("SecurityEventNotification")]
                == ["FirmwareUpdated"]
            )
        )
        # the true state now: the 1.6 update is over
        assert await csms.call(
            CP, "TriggerMessage", {"requestedMessage": "FirmwareStatusNotification"}
        ) == {"status": "Accepted"}
        await eventually(lambda: len(new_calls("FirmwareStatusNotification")) == 1)
        assert new_calls("FirmwareStatusNotification")[0].payload == {"status": "Idle"}
    assert notifications(csms) == [("Downloading", None), ("Idle", None)]
    assert setup.installed.read_bytes() == BUNDLE
