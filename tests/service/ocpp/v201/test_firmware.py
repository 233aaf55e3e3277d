"""OCPP 2.0.1 UpdateFirmware, GetLog, their TriggerMessages (service/ocpp/v201/firmware.py) and
A04 SecurityEventNotification under 2.0.1: frames through the real engine of the 2.0.1 rig
(tests/service/ocpp/v201/link_rig.py, with V201Remote for TriggerMessage) and the real
firmware / upload managers behind them, loopback HTTP servers, CommandInstaller scripts and
real signature checks."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import tarfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from service.config import DiagnosticsSettings, FirmwareSettings, Paths
from service.firmware.command import CommandInstaller
from service.firmware.manager import (
    FirmwareJob,
    FirmwareManager,
    FirmwareRequest,
    FirmwareState,
)
from service.firmware.uploads import DiagnosticsManager, UploadStatus
from service.ocpp.rpc import OcppVersion, schemas
from service.ocpp.v16 import firmware as v16_firmware
from service.ocpp.v201 import firmware as v201_firmware
from service.security_events import SecurityEvents
from service.station.clock import format_iso
from tests.certs import CertPair, make_ca, make_leaf
from tests.servers import HttpServer
from tests.service.ocpp.v201.link_rig import Rig

BUNDLE = b"evsed firmware for 2.0.1\n" * 4000


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def installer_for(tmp: Path, *, sleep: float = 0, exit_code: int = 0) -> CommandInstaller:
    install = script(
        tmp / "install.sh", f'sleep {sleep}\ncp "$1" "{tmp}/installed.bin"\nexit {exit_code}'
    )
    return CommandInstaller([str(install), "{bundle}"], None, False)


def command_settings(**kw: Any) -> FirmwareSettings:
    values: dict[str, Any] = {"backend": "command", "reboot": "none", "download_timeout_s": 3.0}
    values.update(kw)
    return FirmwareSettings(**values)


class FwRig:
    """The 2.0.1 rig with the firmware and upload managers and both front ends on it."""

    def __init__(
        self, tmp: Path, firmware: FirmwareSettings, installer: CommandInstaller | None
    ) -> None:
        self.tmp = tmp
        self.rig = Rig(tmp / "evsed.db")
        state = tmp / "state"
        state.mkdir(exist_ok=True)
        settings = dataclasses.replace(
            self.rig.settings,
            paths=Paths(state_directory=state),
            firmware=firmware,
            diagnostics=DiagnosticsSettings(upload_timeout_s=3.0),
        )
        self.engine = self.rig.engine
        self.security = SecurityEvents(state / "security.log", self.engine)
        self.manager = FirmwareManager(
            db=self.rig.db,
            engine=self.engine,
            station=self.rig.station,
            settings=firmware,
            state_directory=state,
            installer=installer,
            security=self.security,
            now=time.time,  # the certificates are made for the real date
        )
        self.diagnostics = DiagnosticsManager(
            db=self.rig.db,
            engine=self.engine,
            settings=settings,
            security_log=self.security.path,
            now=time.time,
        )
        v16_firmware.FirmwareHandlers(self.engine, self.manager, self.diagnostics)
        self.front = v201_firmware.FirmwareHandlers(
            self.engine,
            self.manager,
            self.diagnostics,
            trigger_sources=self.rig.remote.trigger_sources,
        )

    async def start(self, version: OcppVersion | None = OcppVersion.V201) -> None:
        await self.rig.start()
        if version is not None:
            self.rig.connect(version)

    def result(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        return self.rig.result(action, payload)

    def sent(self, action: str) -> list[dict[str, Any]]:
        self.rig.flush()
        return self.rig.sent(action)

    def statuses(self, action: str = "FirmwareStatusNotification") -> list[tuple[str, Any]]:
        return [(p["status"], p.get("requestId")) for p in self.sent(action)]

    def events(self) -> list[str]:
        return [p["type"] for p in self.sent("SecurityEventNotification")]

    async def until(self, condition: Callable[[], bool], timeout: float = 15) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.02)
        self.rig.flush()

    async def wait_state(self, state: FirmwareState) -> None:
        await self.until(lambda: self.manager.state is state)

    async def wait_upload(self, status: UploadStatus) -> None:
        await self.until(
            lambda: self.diagnostics.job is not None and self.diagnostics.job.status is status
        )

    async def close(self) -> None:
        await self.manager.close()
        await self.diagnostics.close()
        self.rig.close()


Factory = Callable[..., FwRig]


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Factory]:
    made: list[FwRig] = []

    def build(firmware: FirmwareSettings | None = None, *, installer: Any = "default") -> FwRig:
        chosen = installer_for(tmp_path) if installer == "default" else installer
        rig = FwRig(tmp_path, firmware or command_settings(), chosen)
        made.append(rig)
        return rig

    yield build
    for rig in made:
        await rig.close()


@pytest.fixture
def http() -> Any:
    with HttpServer() as server:
        yield server


def pki(tmp: Path) -> tuple[CertPair, CertPair]:
    ca = make_ca(tmp / "pki", "manufacturer")
    return ca, make_leaf(ca, tmp / "pki", "firmware-signer")


def sign(leaf: CertPair, data: bytes) -> str:
    return base64.b64encode(leaf.private_key.sign(data, ec.ECDSA(hashes.SHA256()))).decode()


def iso(offset: float = 0.0) -> str:
    return format_iso(time.time() + offset)


def update(
    location: str,
    request_id: int,
    *,
    leaf: CertPair | None = None,
    signature: str | None = None,
    **firmware: Any,
) -> dict[str, Any]:
    fw: dict[str, Any] = {"location": location, "retrieveDateTime": iso(), **firmware}
    if leaf is not None:
        fw["signingCertificate"] = leaf.cert_path.read_text()
    if signature is not None:
        fw["signature"] = signature
    return {"requestId": request_id, "retries": 0, "firmware": fw}


# -- L01 secure firmware update ----------------------------------------------------------------


async def test_signed_update_reaches_installed(
    make: Factory, http: HttpServer, tmp_path: Path
) -> None:
    ca, leaf = pki(tmp_path)
    http.serve("/fw.bin", BUNDLE)
    fw = make(command_settings(manufacturer_roots=ca.cert_path))
    await fw.start()
    answer = fw.result(
        "UpdateFirmware", update(http.url("/fw.bin"), 5, leaf=leaf, signature=sign(leaf, BUNDLE))
    )
    assert answer == {"status": "Accepted"}
    await fw.wait_state(FirmwareState.INSTALLED)
    assert fw.statuses() == [
        ("Downloading", 5),
        ("Downloaded", 5),
        ("SignatureVerified", 5),
        ("Installing", 5),
        ("Installed", 5),
    ]
    assert (tmp_path / "installed.bin").read_bytes() == BUNDLE
    assert fw.events() == ["FirmwareUpdated"]
    assert fw.sent("SignedFirmwareStatusNotification") == []  # the 1.6 message: never
    # the EVSEs were taken for the install and given back
    assert [p["connectorStatus"] for p in fw.sent("StatusNotification") if p["evseId"] == 1][
        -2:
    ] == ["Unavailable", "Available"]


async def test_bad_signature_wrong_and_missing_certificates(
    make: Factory, http: HttpServer, tmp_path: Path
) -> None:
    ca, leaf = pki(tmp_path)
    stranger = make_leaf(make_ca(tmp_path / "x", "other-ca"), tmp_path / "x", "impostor")
    http.serve("/fw.bin", BUNDLE)
    fw = make(command_settings(manufacturer_roots=ca.cert_path))
    await fw.start()
    # a certificate that does not chain to the manufacturer roots: refused at once
    answer = fw.result(
        "UpdateFirmware",
        update(http.url("/fw.bin"), 1, leaf=stranger, signature=sign(stranger, BUNDLE)),
    )
    assert answer["status"] == "InvalidCertificate"
    assert fw.events() == ["InvalidFirmwareSigningCertificate"]
    # a signature without a certificate cannot be checked: InvalidCertificate too
    answer = fw.result("UpdateFirmware", update(http.url("/fw.bin"), 2, signature="AA=="))
    assert answer["status"] == "InvalidCertificate"
    assert answer["statusInfo"]["reasonCode"] == "MissingCertificate"
    assert fw.events() == ["InvalidFirmwareSigningCertificate"] * 2
    # a certificate without a signature
    answer = fw.result("UpdateFirmware", update(http.url("/fw.bin"), 3, leaf=leaf))
    assert answer["status"] == "Rejected"
    assert answer["statusInfo"]["reasonCode"] == "MissingSignature"
    # unsigned, while this charger (command backend + roots) installs signed firmware only
    answer = fw.result("UpdateFirmware", update(http.url("/fw.bin"), 4))
    assert answer["status"] == "Rejected"
    assert answer["statusInfo"]["reasonCode"] == "SignatureRequired"
    assert http.requests == [] and fw.manager.job is None
    # a bad signature: downloaded, refused, not installed, a security event
    answer = fw.result(
        "UpdateFirmware",
        update(http.url("/fw.bin"), 6, leaf=leaf, signature=sign(leaf, b"not the bundle")),
    )
    assert answer == {"status": "Accepted"}
    await fw.wait_state(FirmwareState.INVALID_SIGNATURE)
    await fw.until(lambda: len(fw.events()) == 3)
    assert fw.statuses() == [("Downloading", 6), ("Downloaded", 6), ("InvalidSignature", 6)]
    assert fw.events()[-1] == "InvalidFirmwareSignature"
    assert not (tmp_path / "installed.bin").exists()


async def test_bad_requests_get_clear_answers(make: Factory, http: HttpServer) -> None:
    fw = make()
    await fw.start()
    answer = fw.result("UpdateFirmware", update("sftp://h/fw.bin", 1))
    assert answer["status"] == "Rejected" and answer["statusInfo"]["reasonCode"] == "InvalidURL"
    frame = fw.rig.call("UpdateFirmware", {**update(http.url("/fw.bin"), 2), "retries": -1})
    assert frame[0] == 4 and frame[2] == "PropertyConstraintViolation"
    frame = fw.rig.call("UpdateFirmware", {"requestId": 3, "firmware": {"location": "x"}})
    assert frame[0] == 4  # retrieveDateTime is required in 2.0.1
    answer = fw.result(
        "GetLog",
        {"logType": "DiagnosticsLog", "requestId": 1, "log": {"remoteLocation": "mailto:a@b"}},
    )
    assert answer["status"] == "Rejected" and answer["statusInfo"]["reasonCode"] == "InvalidURL"
    answer = fw.result(
        "GetLog",
        {
            "logType": "DiagnosticsLog",
            "requestId": 2,
            "log": {
                "remoteLocation": http.url("/up/"),
                "oldestTimestamp": iso(),
                "latestTimestamp": iso(-3600),
            },
        },
    )
    assert answer["status"] == "Rejected"
    assert fw.manager.job is None and fw.diagnostics.job is None
    assert fw.statuses() == [] and fw.statuses("LogStatusNotification") == []


async def test_without_backend_update_firmware_is_not_supported(make: Factory) -> None:
    fw = make(FirmwareSettings(), installer=None)
    await fw.start()
    frame = fw.rig.call("UpdateFirmware", update("http://127.0.0.1/fw.bin", 1))
    assert frame[0] == 4 and frame[2] == "NotSupported" and "backend" in frame[3]


# -- L02 non-secure update, schedules, cancel / reject -----------------------------------------


async def test_unsigned_update_with_scheduled_download_and_install(
    make: Factory, http: HttpServer, tmp_path: Path
) -> None:
    http.serve("/fw.bin", BUNDLE)
    fw = make()  # no manufacturer roots: L02 is allowed
    await fw.start()
    request = update(http.url("/fw.bin"), 11, retrieveDateTime=iso(1.2), installDateTime=iso(2.5))
    assert fw.result("UpdateFirmware", request) == {"status": "Accepted"}
    assert fw.statuses() == [("DownloadScheduled", 11)]
    assert fw.result("TriggerMessage", {"requestedMessage": "FirmwareStatusNotification"}) == {
        "status": "Accepted"
    }
    assert fw.statuses()[-1] == ("DownloadScheduled", 11)
    await fw.wait_state(FirmwareState.INSTALLED)
    assert fw.statuses() == [
        ("DownloadScheduled", 11),
        ("DownloadScheduled", 11),  # the trigger's
        ("Downloading", 11),
        ("Downloaded", 11),
        ("InstallScheduled", 11),
        ("Installing", 11),
        ("Installed", 11),
    ]
    assert (tmp_path / "installed.bin").read_bytes() == BUNDLE


async def test_running_update_is_cancelled_or_refused(
    make: Factory, http: HttpServer, tmp_path: Path
) -> None:
    http.serve("/fw.bin", BUNDLE)
    fw = make(installer=installer_for(tmp_path, sleep=1.0))
    await fw.start()
    first = update(http.url("/fw.bin"), 21, retrieveDateTime=iso(3600))
    assert fw.result("UpdateFirmware", first) == {"status": "Accepted"}
    # a scheduled update is cancelled for a new one (L01.FR.24)
    assert fw.result("UpdateFirmware", update(http.url("/fw.bin"), 22)) == {
        "status": "AcceptedCanceled"
    }
    await fw.wait_state(FirmwareState.INSTALLING)
    assert fw.result("TriggerMessage", {"requestedMessage": "FirmwareStatusNotification"}) == {
        "status": "Accepted"
    }
    assert fw.statuses()[-1] == ("Installing", 22)
    # one being installed is not (L01.FR.25)
    answer = fw.result("UpdateFirmware", update(http.url("/fw.bin"), 23))
    assert answer["status"] == "Rejected"
    assert answer["statusInfo"]["reasonCode"] == "InstallInProgress"
    await fw.wait_state(FirmwareState.INSTALLED)
    assert [s for s in fw.statuses() if s[1] == 21] == [("DownloadScheduled", 21)]
    assert fw.statuses()[-1] == ("Installed", 22)
    assert 23 not in {s[1] for s in fw.statuses()}
    fw.result("TriggerMessage", {"requestedMessage": "FirmwareStatusNotification"})
    assert fw.sent("FirmwareStatusNotification")[-1] == {"status": "Idle"}


# -- N01 GetLog --------------------------------------------------------------------------------


def archive(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


async def test_get_log_uploads_a_real_archive(make: Factory, http: HttpServer) -> None:
    fw = make()
    await fw.start()
    fw.security.record("SettingSystemTime", "an event for the security log", critical=False)
    assert fw.result("TriggerMessage", {"requestedMessage": "LogStatusNotification"}) == {
        "status": "Accepted"
    }
    assert fw.sent("LogStatusNotification") == [{"status": "Idle"}]
    answer = fw.result(
        "GetLog",
        {
            "logType": "SecurityLog",
            "requestId": 31,
            "retries": 1,
            "retryInterval": 1,
            "log": {"remoteLocation": http.url("/logs/"), "oldestTimestamp": iso(-3600)},
        },
    )
    assert answer["status"] == "Accepted"
    name = answer["filename"]
    assert "security-log" in name and name.endswith(".tar.gz")
    await fw.wait_upload(UploadStatus.UPLOADED)
    assert fw.statuses("LogStatusNotification")[1:] == [("Uploading", 31), ("Uploaded", 31)]
    [upload] = http.uploads
    assert upload.path == f"/logs/{name}"
    assert b"SettingSystemTime" in b"".join(archive(upload.body).values())


async def test_new_get_log_cancels_the_running_upload(make: Factory, http: HttpServer) -> None:
    http.serve("/slow", stall=True)
    fw = make()
    await fw.start()
    first = {
        "logType": "DiagnosticsLog",
        "requestId": 41,
        "log": {"remoteLocation": http.url("/slow")},
    }
    assert fw.result("GetLog", first)["status"] == "Accepted"
    await fw.until(lambda: fw.diagnostics.active)
    await asyncio.sleep(0.3)  # the archive is built, the upload hangs
    fw.result("TriggerMessage", {"requestedMessage": "LogStatusNotification"})
    assert fw.sent("LogStatusNotification")[-1] == {"status": "Uploading", "requestId": 41}
    second = {
        "logType": "DiagnosticsLog",
        "requestId": 42,
        "log": {"remoteLocation": http.url("/fast/")},
    }
    answer = fw.result("GetLog", second)
    assert answer["status"] == "AcceptedCanceled" and answer["filename"]
    await fw.wait_upload(UploadStatus.UPLOADED)
    assert fw.statuses("LogStatusNotification") == [
        ("Uploading", 41),
        ("Uploading", 41),  # the trigger's
        ("AcceptedCanceled", 41),
        ("Uploading", 42),
        ("Uploaded", 42),
    ]


# -- versions: 1.6 messages are not sent under 2.0.1; A04 under 2.0.1 -------------------------


async def test_messages_queued_under_16_are_not_sent_under_201(
    make: Factory, http: HttpServer, tmp_path: Path
) -> None:
    http.serve("/fw.bin", BUNDLE)
    fw = make()
    await fw.start(OcppVersion.V16)
    fw.rig.disconnect()
    # a 1.6 update runs while offline: its notifications are 1.6 messages
    fw.manager.submit(FirmwareRequest(origin="ocpp1.6", location=http.url("/fw.bin")))
    await fw.wait_state(FirmwareState.INSTALLED)
    fw.rig.connect(OcppVersion.V201)
    fw.rig.flush()
    assert fw.sent("FirmwareStatusNotification") == []
    # ...but the FirmwareUpdated event, the same message in both versions, is delivered
    assert fw.events() == ["FirmwareUpdated"]
    fw.result("TriggerMessage", {"requestedMessage": "FirmwareStatusNotification"})
    assert fw.sent("FirmwareStatusNotification") == [{"status": "Idle"}]
    # 2.0.1 messages flow
    fw.security.record("SettingSystemTime", "clock set", critical=True)
    assert fw.events() == ["FirmwareUpdated", "SettingSystemTime"]


async def test_security_events_under_201(make: Factory) -> None:
    fw = make()
    await fw.start()
    fw.security.record("StartupOfTheDevice", "x" * 400, critical=True)
    fw.security.record("ReconfigurationOfSecurityParameters", "y", critical=False)
    sent = fw.sent("SecurityEventNotification")
    assert [p["type"] for p in sent] == [
        "StartupOfTheDevice",
        "ReconfigurationOfSecurityParameters",
    ]
    assert len(sent[0]["techInfo"]) == 255 and sent[0]["timestamp"].endswith("Z")
    # a critical one made offline is kept and delivered on the next 2.0.1 connection
    fw.rig.disconnect()
    fw.security.record("MemoryExhaustion", "queued", critical=True)
    fw.security.record("InvalidMessages", "not queued", critical=False)
    fw.rig.connect(OcppVersion.V201)
    assert [p["type"] for p in fw.sent("SecurityEventNotification")][2:] == ["MemoryExhaustion"]
    assert {e["type"] for e in fw.security.read()} >= {"MemoryExhaustion", "InvalidMessages"}


def test_every_reported_state_is_valid_201() -> None:
    job = FirmwareJob(job_id="j", origin="ocpp2.0.1", location="http://h/f", request_id=7)
    reported = 0
    for state in FirmwareState:
        message = v201_firmware.firmware_report(job, state)
        if state in (FirmwareState.IDLE, FirmwareState.INVALID_CERTIFICATE):
            assert message is None
            continue
        assert message == ("FirmwareStatusNotification", {"status": state.value, "requestId": 7})
        schemas(OcppVersion.V201).validate(message[0], message[1], response=False)
        reported += 1
    assert reported == len(FirmwareState) - 2
