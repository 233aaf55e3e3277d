"""FirmwareManager and DiagnosticsManager from real parts: SQLite, the OCPP engine and its
durable queue (a small in-test CSMS answers every CALL), the station with simulated EVSEs, the
loopback HTTP/FTP servers of tests/servers.py, CommandInstaller with shell scripts and the
real signature checks. A crash is a manager abandoned without any cleanup and a new one
built over the same database file; a stored state is also written directly in the stored
format to start a manager in any state.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import os
import tarfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from hal.sim import SimulatedEvse
from service.config import (
    Csms,
    DiagnosticsSettings,
    Evse,
    FirmwareSettings,
    Identity,
    Paths,
    Settings,
)
from service.firmware.command import CommandInstaller
from service.firmware.manager import (
    JOB_KEY,
    FirmwareBusy,
    FirmwareJob,
    FirmwareManager,
    FirmwareRequest,
    FirmwareState,
    SubmitStatus,
)
from service.firmware.uploads import DiagnosticsManager, UploadRequest, UploadStatus
from service.ocpp.engine import Engine, EngineOptions
from service.ocpp.rpc import OcppVersion
from service.ocpp.v16 import firmware as v16_firmware
from service.security_events import SecurityEvents
from service.station.auth import AuthorizationCache, Authorizer, AuthSettings
from service.station.clock import SystemClock, format_iso
from service.station.configuration import Configuration
from service.station.model import Availability
from service.station.sessions import SessionStore
from service.station.station import Station
from service.store.db import Database
from service.store.overlay import ConfigOverlay
from service.store.queue import DurableQueue
from tests.certs import CertPair, make_ca, make_leaf
from tests.servers import FtpServer, HttpServer

PAYLOAD = os.urandom(200_000)


class Keys:
    heartbeat_interval = 0
    transaction_message_attempts = 3
    transaction_message_retry_interval = 1

    def set_heartbeat_interval(self, seconds: int) -> None:
        self.heartbeat_interval = seconds


class CsmsEnd:
    """The engine's far end, in the test: answers every CALL and records it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.responses: dict[str, list[Any]] = {}

    def drain(self) -> list[tuple[str, dict[str, Any]]]:
        while True:
            frames = self.engine.take_frames()
            if not frames:
                return self.calls
            for text in frames:
                frame = json.loads(text)
                if frame[0] != 2:
                    self.responses[frame[1]] = frame
                    continue
                _, unique_id, action, payload = frame
                self.calls.append((action, payload))
                answer: dict[str, Any] = {}
                if action == "BootNotification":
                    answer = {
                        "status": "Accepted",
                        "interval": 0,
                        "currentTime": format_iso(time.time()),
                    }
                self.engine.receive(json.dumps([3, unique_id, answer]))

    def of(self, *actions: str) -> list[tuple[str, dict[str, Any]]]:
        self.drain()
        return [(a, p) for a, p in self.calls if a in actions]

    def statuses(self, action: str = "FirmwareStatusNotification") -> list[str]:
        return [p["status"] for _, p in self.of(action)]


class Rig:
    """One charger's worth of parts over the database at `tmp/evsed.db`."""

    def __init__(
        self,
        tmp: Path,
        firmware: FirmwareSettings,
        *,
        installer: Any = None,
        reboots: list[str] | None = None,
    ) -> None:
        self.tmp = tmp
        self.settings = Settings(
            identity=Identity("CP-T", "evsed", "test"),
            csms=Csms(url="ws://csms.invalid/ocpp"),
            paths=Paths(state_directory=tmp / "state"),
            evses=(Evse(id=1), Evse(id=2)),
            firmware=firmware,
            diagnostics=DiagnosticsSettings(upload_timeout_s=3.0),
        )
        (tmp / "state").mkdir(exist_ok=True)
        self.db = Database.open(tmp / "evsed.db")
        clock = SystemClock()
        counter = itertools.count(1)
        self.engine = Engine(
            queue=DurableQueue(self.db, max_other=1000),
            clock=clock,
            new_id=lambda: f"m-{time.monotonic_ns()}-{next(counter)}",
            settings=Keys(),
            boot_payload=lambda v: {"chargePointVendor": "evsed", "chargePointModel": "t"},
            options=EngineOptions(call_timeout_s=30),
        )
        self.csms = CsmsEnd(self.engine)
        cfg = Configuration(self.settings, ConfigOverlay(self.db), clock=clock)
        self.sims = {n: SimulatedEvse(Evse(id=n).connectors, clock=clock.monotonic) for n in (1, 2)}
        self.station = Station(
            hardware={n: (sim.hardware, 32.0, 3) for n, sim in self.sims.items()},
            configuration=cfg,
            authorizer=Authorizer(
                AuthorizationCache(self.db), lambda: AuthSettings.from_configuration(cfg)
            ),
            sessions=SessionStore(self.db),
            clock=clock,
            time=self.engine.time,
            timestamp=self.engine.timestamp,
        )
        self.station.start()
        self.security = SecurityEvents(tmp / "state" / "security.log", self.engine)
        self.reboots = reboots if reboots is not None else []

        async def reboot() -> None:
            self.reboots.append("reboot")

        self.manager = FirmwareManager(
            db=self.db,
            engine=self.engine,
            station=self.station,
            settings=firmware,
            state_directory=tmp / "state",
            installer=installer,
            security=self.security,
            reboot=reboot,
        )
        self.manager.reporters["ocpp1.6"] = v16_firmware.firmware_report
        self.diagnostics = DiagnosticsManager(
            db=self.db, engine=self.engine, settings=self.settings, security_log=self.security.path
        )
        self.diagnostics.reporters["ocpp1.6"] = v16_firmware.upload_report
        self.engine.connection_opened(OcppVersion.V16)
        self.csms.drain()

    def availability(self, evse_id: int) -> Availability:
        return self.station.evses[evse_id].availability

    async def wait_state(self, *states: FirmwareState, timeout: float = 15) -> None:
        async with asyncio.timeout(timeout):
            while self.manager.state not in states:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)

    def crash(self) -> None:
        """kill -9: the task stops where it is, nothing is tidied, the database is closed."""
        task = self.manager._task
        if task is not None:
            self.manager._cancel.set()
            task.cancel()
        self.db.close()


def script(tmp: Path, name: str, body: str) -> Path:
    path = tmp / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def command_settings(**kw: Any) -> FirmwareSettings:
    values: dict[str, Any] = {"backend": "command", "reboot": "none", "download_timeout_s": 3.0}
    values.update(kw)
    return FirmwareSettings(**values)


@pytest.fixture
def http() -> Iterator[HttpServer]:
    with HttpServer() as server:
        yield server


RigFactory = Callable[..., Rig]


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[RigFactory]:
    rigs: list[Rig] = []

    def make(firmware: FirmwareSettings | None = None, **kw: Any) -> Rig:
        rig = Rig(tmp_path, firmware or command_settings(), **kw)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        await rig.manager.close()
        await rig.diagnostics.close()
        if not rig.db.closed:
            rig.db.close()


def installer_for(
    tmp: Path,
    *,
    exit_code: int = 0,
    reboot: bool = False,
    confirm: str | None = None,
    sleep: float = 0,
) -> CommandInstaller:
    target = tmp / "installed.bin"
    install = script(
        tmp,
        "install.sh",
        f'sleep {sleep}\necho run >> "{tmp}/install-runs"\ncp "$1" "{target}"\nexit {exit_code}',
    )
    confirm_cmd = None
    if confirm is not None:
        confirm_cmd = [str(script(tmp, "confirm.sh", confirm))]
    return CommandInstaller([str(install), "{bundle}"], confirm_cmd, reboot)


def plain(location: str, **kw: Any) -> FirmwareRequest:
    return FirmwareRequest(origin="ocpp1.6", location=location, **kw)


# ------------------------------------------------------------------ plain updates
async def test_plain_update_without_reboot(
    make_rig: RigFactory, http: HttpServer, tmp_path: Path
) -> None:
    http.serve("/fw.bin", PAYLOAD)
    rig = make_rig(installer=installer_for(tmp_path))
    changes: list[str] = []
    rig.manager.on_change(lambda: changes.append(rig.manager.state.value))
    assert rig.manager.submit(plain(http.url("/fw.bin"))) is SubmitStatus.ACCEPTED
    await rig.wait_state(FirmwareState.INSTALLED)
    assert rig.csms.statuses() == ["Downloading", "Downloaded", "Installing", "Installed"]
    assert (tmp_path / "installed.bin").read_bytes() == PAYLOAD
    assert [p["type"] for _, p in rig.csms.of("SecurityEventNotification")] == ["FirmwareUpdated"]
    assert list((tmp_path / "state" / "firmware").iterdir()) == []  # the download is removed
    assert "Installed" in changes
    snap = rig.manager.snapshot()
    assert snap["state"] == "Installed" and snap["backend"] == "command"
    assert snap["request_id"] == -1 and snap["location"] == http.url("/fw.bin")
    # EVSEs were taken for the install and given back
    assert rig.availability(1) is Availability.OPERATIVE
    assert v16_firmware.firmware_status_payload(rig.manager) == {"status": "Idle"}


async def test_reboot_then_restart_reports_installed_once(
    make_rig: RigFactory, http: HttpServer, tmp_path: Path
) -> None:
    http.serve("/fw.bin", PAYLOAD)
    rig = make_rig(installer=installer_for(tmp_path, reboot=True, confirm="exit 0"))
    rig.manager.submit(plain(http.url("/fw.bin")))
    await rig.wait_state(FirmwareState.INSTALL_REBOOTING)
    await asyncio.sleep(0.1)
    assert rig.reboots == ["reboot"]
    assert rig.csms.statuses() == ["Downloading", "Downloaded", "Installing"]
    assert rig.availability(1) is Availability.INOPERATIVE  # still taken until the reboot
    rig.crash()
    after = make_rig(installer=installer_for(tmp_path, reboot=True, confirm="exit 0"))
    assert not after.manager.booted_for_update
    after.manager.start()
    assert after.manager.booted_for_update  # the 2.0.1 BootNotification says FirmwareUpdate
    await after.wait_state(FirmwareState.INSTALLED)
    assert after.csms.statuses() == ["Installed"]
    assert [p["type"] for _, p in after.csms.of("SecurityEventNotification")] == ["FirmwareUpdated"]
    assert after.reboots == []


async def test_boot_check_failure_is_installation_failed(
    make_rig: RigFactory, http: HttpServer, tmp_path: Path
) -> None:
    job = FirmwareJob(
        job_id="a" * 32,
        origin="ocpp1.6",
        location="http://x/fw",
        state=FirmwareState.INSTALL_REBOOTING,
        availability={"1": True, "2": False},
    )
    rig = make_rig(
        installer=installer_for(tmp_path, reboot=True, confirm="echo old slot booted >&2; exit 3")
    )
    rig.db.execute("INSERT INTO kv (key, value) VALUES (?, ?)", (JOB_KEY, job.to_json()))
    rig.manager.start()
    await rig.wait_state(FirmwareState.INSTALLATION_FAILED)
    assert rig.csms.statuses() == ["InstallationFailed"]
    assert rig.csms.of("SecurityEventNotification") == []
    assert rig.availability(1) is Availability.OPERATIVE
    assert rig.availability(2) is Availability.INOPERATIVE  # as it was before the update
    assert "not running" in rig.manager.snapshot()["last_error"]  # type: ignore[operator]


async def test_download_404_retries_then_fails(
    make_rig: RigFactory, http: HttpServer, tmp_path: Path
) -> None:
    rig = make_rig(installer=installer_for(tmp_path))
    rig.manager.submit(plain(http.url("/missing.bin"), retries=2, retry_interval_s=0))
    await rig.wait_state(FirmwareState.DOWNLOAD_FAILED)
    assert rig.csms.statuses() == ["Downloading", "DownloadFailed"]
    assert len([r for r in http.requests if r.path == "/missing.bin"]) == 3
    assert "attempt 3 of 3" in str(rig.manager.snapshot()["last_error"])
    assert not (tmp_path / "install-runs").exists()


async def test_truncated_download_resumes_on_retry(
    make_rig: RigFactory, http: HttpServer, tmp_path: Path
) -> None:
    http.serve("/fw.bin", PAYLOAD, truncate_after=50_000, faults=1)
    rig = make_rig(installer=installer_for(tmp_path))
    rig.manager.submit(plain(http.url("/fw.bin"), retries=1, retry_interval_s=0))
    await rig.wait_state(FirmwareState.INSTALLED)
    assert rig.csms.statuses() == ["Downloading", "Downloaded", "Installing", "Installed"]
    ranges = [r.headers.get("range") or r.headers.get("Range") for r in http.requests]
    assert ranges[0] is None and ranges[1] == "bytes=50000-"
    assert (tmp_path / "installed.bin").read_bytes() == PAYLOAD


async def test_too_large_fails_at_once(
    make_rig: RigFactory, http: HttpServer, tmp_path: Path
) -> None:
    http.serve("/fw.bin", PAYLOAD)
    rig = make_rig(command_settings(max_bytes=1000), installer=installer_for(tmp_path))
    rig.manager.submit(plain(http.url("/fw.bin"), retries=3, retry_interval_s=0))
    await rig.wait_state(FirmwareState.DOWNLOAD_FAILED)
    assert len(http.requests) == 1
    assert rig.csms.statuses() == ["Downloading", "DownloadFailed"]


async def test_install_failure_restores_availability(
    make_rig: RigFactory, http: HttpServer, tmp_path: Path
) -> None:
    http.serve("/fw.bin", PAYLOAD)
    rig = make_rig(installer=installer_for(tmp_path, exit_code=4, sleep=0.5))
    rig.station.set_availability(2, False)
    seen: list[tuple[str, Availability, Availability]] = []
    rig.manager.on_change(
        lambda: seen.append((rig.manager.state.value, rig.availability(1), rig.availability(2)))
    )
    rig.manager.submit(plain(http.url("/fw.bin")))
    await rig.wait_state(FirmwareState.INSTALLATION_FAILED)
    assert rig.csms.statuses() == ["Downloading", "Downloaded", "Installing", "InstallationFailed"]
    assert ("Installing", Availability.INOPERATIVE, Availability.INOPERATIVE) in seen
    assert rig.availability(1) is Availability.OPERATIVE
    assert rig.availability(2) is Availability.INOPERATIVE
    assert rig.manager.job is not None and rig.manager.job.availability is None


async def test_retrieve_date_in_the_future_waits(
    make_rig: RigFactory, http: HttpServer, tmp_path: Path
) -> None:
    http.serve("/fw.bin", PAYLOAD)
    rig = make_rig(installer=installer_for(tmp_path))
    rig.manager.submit(plain(http.url("/fw.bin"), retrieve_at=time.time() + 3.0))
    assert rig.manager.state is FirmwareState.DOWNLOAD_SCHEDULED
    assert v16_firmware.firmware_status_payload(rig.manager) == {"status": "Idle"}
    await asyncio.sleep(0.5)
    assert http.requests == []
    await rig.wait_state(FirmwareState.INSTALLED)
    assert rig.csms.statuses() == ["Downloading", "Downloaded", "Installing", "Installed"]


async def test_second_request_while_installing_is_rejected(
    make_rig: RigFactory, http: HttpServer, tmp_path: Path
) -> None:
    http.serve("/fw.bin", PAYLOAD)
    rig = make_rig(installer=installer_for(tmp_path, sleep=1.0))
    rig.manager.submit(plain(http.url("/fw.bin")))
    await rig.wait_state(FirmwareState.INSTALLING)
    assert v16_firmware.firmware_status_payload(rig.manager) == {"status": "Installing"}
    assert rig.manager.submit(plain(http.url("/other.bin"))) is SubmitStatus.REJECTED
    with pytest.raises(FirmwareBusy):
        await rig.manager.install_local(tmp_path / "install.sh")
    await rig.wait_state(FirmwareState.INSTALLED)


async def test_new_request_cancels_a_download(
    make_rig: RigFactory, http: HttpServer, tmp_path: Path
) -> None:
    http.serve("/slow.bin", PAYLOAD, stall_after=10_000)
    http.serve("/fw.bin", PAYLOAD)
    rig = make_rig(installer=installer_for(tmp_path))
    rig.manager.submit(plain(http.url("/slow.bin")))
    await rig.wait_state(FirmwareState.DOWNLOADING)
    await asyncio.sleep(0.3)
    assert rig.manager.submit(plain(http.url("/fw.bin"))) is SubmitStatus.ACCEPTED_CANCELED
    await rig.wait_state(FirmwareState.INSTALLED)
    # The cancelled update says nothing more; the new one runs its whole course.
    assert rig.csms.statuses() == [
        "Downloading",
        "Downloading",
        "Downloaded",
        "Installing",
        "Installed",
    ]
    assert (tmp_path / "installed.bin").read_bytes() == PAYLOAD


# ------------------------------------------------------------------ signed updates
def signing_material(tmp: Path) -> tuple[CertPair, CertPair]:
    ca = make_ca(tmp / "pki", "manufacturer")
    leaf = make_leaf(ca, tmp / "pki", "firmware-signer")
    return ca, leaf


def sign(leaf: CertPair, data: bytes) -> str:
    return base64.b64encode(leaf.private_key.sign(data, ec.ECDSA(hashes.SHA256()))).decode()


def signed(location: str, leaf: CertPair, signature: str, **kw: Any) -> FirmwareRequest:
    pem = leaf.cert_path.read_text()
    return FirmwareRequest(
        origin="ocpp1.6",
        location=location,
        request_id=42,
        signing_certificate=pem,
        signature=signature,
        **kw,
    )


async def test_signed_update_success(
    make_rig: RigFactory, http: HttpServer, tmp_path: Path
) -> None:
    ca, leaf = signing_material(tmp_path)
    http.serve("/fw.bin", PAYLOAD)
    rig = make_rig(
        command_settings(manufacturer_roots=ca.cert_path), installer=installer_for(tmp_path)
    )
    status = rig.manager.submit(signed(http.url("/fw.bin"), leaf, sign(leaf, PAYLOAD)))
    assert status is SubmitStatus.ACCEPTED
    await rig.wait_state(FirmwareState.INSTALLED)
    sent = rig.csms.of("SignedFirmwareStatusNotification")
    assert [p["status"] for _, p in sent] == [
        "Downloading",
        "Downloaded",
        "SignatureVerified",
        "Installing",
        "Installed",
    ]
    assert {p["requestId"] for _, p in sent} == {42}
    assert rig.csms.of("FirmwareStatusNotification") == []


async def test_bad_signature_installs_nothing(
    make_rig: RigFactory, http: HttpServer, tmp_path: Path
) -> None:
    ca, leaf = signing_material(tmp_path)
    http.serve("/fw.bin", PAYLOAD)
    rig = make_rig(
        command_settings(manufacturer_roots=ca.cert_path), installer=installer_for(tmp_path)
    )
    rig.manager.submit(signed(http.url("/fw.bin"), leaf, sign(leaf, b"something else")))
    await rig.wait_state(FirmwareState.INVALID_SIGNATURE)
    assert rig.csms.statuses("SignedFirmwareStatusNotification") == [
        "Downloading",
        "Downloaded",
        "InvalidSignature",
    ]
    assert [p["type"] for _, p in rig.csms.of("SecurityEventNotification")] == [
        "InvalidFirmwareSignature"
    ]
    assert not (tmp_path / "install-runs").exists()
    assert list((tmp_path / "state" / "firmware").iterdir()) == []
    assert rig.availability(1) is Availability.OPERATIVE


async def test_wrong_certificate_is_refused_at_once(
    make_rig: RigFactory, http: HttpServer, tmp_path: Path
) -> None:
    ca, _ = signing_material(tmp_path)
    other_ca = make_ca(tmp_path / "other", "someone-else")
    leaf = make_leaf(other_ca, tmp_path / "other", "impostor")
    http.serve("/fw.bin", PAYLOAD)
    rig = make_rig(
        command_settings(manufacturer_roots=ca.cert_path), installer=installer_for(tmp_path)
    )
    status = rig.manager.submit(signed(http.url("/fw.bin"), leaf, sign(leaf, PAYLOAD)))
    assert status is SubmitStatus.INVALID_CERTIFICATE
    assert rig.manager.job is None and http.requests == []
    assert rig.csms.of("SignedFirmwareStatusNotification") == []
    assert [p["type"] for _, p in rig.csms.of("SecurityEventNotification")] == [
        "InvalidFirmwareSigningCertificate"
    ]
    # without manufacturer roots nothing can be verified
    bare = make_rig(installer=installer_for(tmp_path))
    assert bare.manager.submit(signed(http.url("/fw.bin"), leaf, "AA==")) is (
        SubmitStatus.INVALID_CERTIFICATE
    )


async def test_install_date_in_the_future_schedules(
    make_rig: RigFactory, http: HttpServer, tmp_path: Path
) -> None:
    ca, leaf = signing_material(tmp_path)
    http.serve("/fw.bin", PAYLOAD)
    rig = make_rig(
        command_settings(manufacturer_roots=ca.cert_path), installer=installer_for(tmp_path)
    )
    rig.manager.submit(
        signed(http.url("/fw.bin"), leaf, sign(leaf, PAYLOAD), install_at=time.time() + 2.5)
    )
    await rig.wait_state(FirmwareState.INSTALL_SCHEDULED)
    assert rig.availability(1) is Availability.OPERATIVE  # not taken before the install date
    assert v16_firmware.signed_firmware_status_payload(rig.manager) == {
        "status": "InstallScheduled",
        "requestId": 42,
    }
    await rig.wait_state(FirmwareState.INSTALLED)
    assert rig.csms.statuses("SignedFirmwareStatusNotification") == [
        "Downloading",
        "Downloaded",
        "SignatureVerified",
        "InstallScheduled",
        "Installing",
        "Installed",
    ]


# ------------------------------------------------------------------ crashes
async def test_crash_while_downloading_resumes_the_part_file(
    make_rig: RigFactory, http: HttpServer, tmp_path: Path
) -> None:
    http.serve("/fw.bin", PAYLOAD, stall_after=60_000, faults=1)
    rig = make_rig(installer=installer_for(tmp_path))
    rig.manager.submit(plain(http.url("/fw.bin")))
    directory = tmp_path / "state" / "firmware"

    def part_size() -> int:
        parts = list(directory.glob("*.part"))
        return parts[0].stat().st_size if parts else 0

    async with asyncio.timeout(10):
        while part_size() < 60_000:
            await asyncio.sleep(0.02)
    before = rig.csms.statuses()
    rig.crash()
    after = make_rig(installer=installer_for(tmp_path))
    after.manager.start()
    await after.wait_state(FirmwareState.INSTALLED)
    # each status once, across the crash (what was queued but unsent goes out after it)
    assert before + after.csms.statuses() == [
        "Downloading",
        "Downloaded",
        "Installing",
        "Installed",
    ]
    assert http.requests[-1].headers.get("Range") == "bytes=60000-"
    assert (tmp_path / "installed.bin").read_bytes() == PAYLOAD


def stored(rig: Rig, job: FirmwareJob) -> None:
    rig.db.execute("INSERT INTO kv (key, value) VALUES (?, ?)", (JOB_KEY, job.to_json()))


@pytest.mark.parametrize(
    ("state", "runs", "expected", "final"),
    [
        (
            FirmwareState.DOWNLOAD_SCHEDULED,
            0,
            ["Downloading", "Downloaded", "Installing", "Installed"],
            FirmwareState.INSTALLED,
        ),
        (FirmwareState.DOWNLOADED, 0, ["Installing", "Installed"], FirmwareState.INSTALLED),
        (FirmwareState.INSTALLING, 1, ["Installed"], FirmwareState.INSTALLED),
        (FirmwareState.INSTALLING, 2, ["InstallationFailed"], FirmwareState.INSTALLATION_FAILED),
        (FirmwareState.INSTALL_REBOOTING, 1, ["Installed"], FirmwareState.INSTALLED),
    ],
)
async def test_restart_in_each_plain_state(
    make_rig: RigFactory,
    http: HttpServer,
    tmp_path: Path,
    state: FirmwareState,
    runs: int,
    expected: list[str],
    final: FirmwareState,
) -> None:
    http.serve("/fw.bin", PAYLOAD)
    rig = make_rig(installer=installer_for(tmp_path, confirm="exit 0"))
    job = FirmwareJob(
        job_id="b" * 32,
        origin="ocpp1.6",
        location=http.url("/fw.bin"),
        state=state,
        install_runs=runs,
        retrieve_at=time.time() - 5,
    )
    if state is not FirmwareState.DOWNLOAD_SCHEDULED:
        bundle = rig.manager._bundle_path(job)
        bundle.parent.mkdir(parents=True, exist_ok=True)
        bundle.write_bytes(PAYLOAD)
        job.bundle = str(bundle)
    if state in (FirmwareState.INSTALLING, FirmwareState.INSTALL_REBOOTING):
        job.availability = {"1": True, "2": True}
    stored(rig, job)
    rig.manager.start()
    await rig.wait_state(final)
    assert rig.csms.statuses() == expected
    assert rig.availability(1) is Availability.OPERATIVE
    assert list((tmp_path / "state" / "firmware").iterdir()) == []


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (FirmwareState.DOWNLOADED, ["SignatureVerified", "Installing", "Installed"]),
        (FirmwareState.SIGNATURE_VERIFIED, ["Installing", "Installed"]),
        (FirmwareState.INSTALL_SCHEDULED, ["Installing", "Installed"]),
    ],
)
async def test_restart_in_each_signed_state(
    make_rig: RigFactory, tmp_path: Path, state: FirmwareState, expected: list[str]
) -> None:
    ca, leaf = signing_material(tmp_path)
    rig = make_rig(
        command_settings(manufacturer_roots=ca.cert_path), installer=installer_for(tmp_path)
    )
    job = FirmwareJob(
        job_id="c" * 32,
        origin="ocpp1.6",
        location="http://127.0.0.1:9/fw.bin",
        signed=True,
        request_id=7,
        signing_certificate=leaf.cert_path.read_text(),
        signature=sign(leaf, PAYLOAD),
        received_at=time.time(),
        install_at=time.time() - 1,
        state=state,
    )
    bundle = rig.manager._bundle_path(job)
    bundle.parent.mkdir(parents=True, exist_ok=True)
    bundle.write_bytes(PAYLOAD)
    job.bundle = str(bundle)
    stored(rig, job)
    rig.manager.start()
    await rig.wait_state(FirmwareState.INSTALLED)
    assert rig.csms.statuses("SignedFirmwareStatusNotification") == expected
    assert (tmp_path / "installed.bin").read_bytes() == PAYLOAD


async def test_unreadable_stored_state_is_discarded(make_rig: RigFactory) -> None:
    rig = make_rig(installer=None)
    rig.db.execute("INSERT INTO kv (key, value) VALUES (?, ?)", (JOB_KEY, "{not json"))
    rig.manager.start()
    assert rig.manager.state is FirmwareState.IDLE
    assert rig.db.query_one("SELECT value FROM kv WHERE key = ?", (JOB_KEY,)) is None


# ------------------------------------------------------------------ local installs
async def test_local_install(make_rig: RigFactory, tmp_path: Path) -> None:
    bundle = tmp_path / "local.bin"
    bundle.write_bytes(PAYLOAD)
    rig = make_rig(installer=installer_for(tmp_path))
    with pytest.raises(ValueError, match="absolute"):
        await rig.manager.install_local(Path("local.bin"))
    with pytest.raises(ValueError, match="no such file"):
        await rig.manager.install_local(tmp_path / "nope.bin")
    await rig.manager.install_local(bundle)
    await rig.wait_state(FirmwareState.INSTALLED)
    assert (tmp_path / "installed.bin").read_bytes() == PAYLOAD
    assert bundle.exists()  # the operator's file is not ours to delete
    assert rig.csms.of("FirmwareStatusNotification", "SignedFirmwareStatusNotification") == []
    assert [p["type"] for _, p in rig.csms.of("SecurityEventNotification")] == ["FirmwareUpdated"]


async def test_local_install_checks_the_signature_with_roots(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    ca, leaf = signing_material(tmp_path)
    bundle = tmp_path / "local.bin"
    bundle.write_bytes(PAYLOAD)
    rig = make_rig(
        command_settings(manufacturer_roots=ca.cert_path), installer=installer_for(tmp_path)
    )
    with pytest.raises(ValueError, match=r"local\.bin\.pem"):
        await rig.manager.install_local(bundle)
    (tmp_path / "local.bin.pem").write_text(leaf.cert_path.read_text())
    (tmp_path / "local.bin.sig").write_text(sign(leaf, b"other"))
    with pytest.raises(ValueError, match="signature check failed"):
        await rig.manager.install_local(bundle)
    (tmp_path / "local.bin.sig").write_text(sign(leaf, PAYLOAD))
    await rig.manager.install_local(bundle)
    await rig.wait_state(FirmwareState.INSTALLED)


async def test_without_backend_nothing_is_accepted(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = make_rig(FirmwareSettings(), installer=None)
    assert rig.manager.snapshot()["backend"] == "none"
    with pytest.raises(ValueError, match="not configured"):
        await rig.manager.install_local(tmp_path)
    with pytest.raises(RuntimeError):
        rig.manager.submit(plain("http://127.0.0.1/fw"))


# ------------------------------------------------------------------ uploads
def archive_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return tar.getnames()


async def wait_upload(rig: Rig, *states: UploadStatus, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while rig.diagnostics.job is None or rig.diagnostics.job.status not in states:
            await asyncio.sleep(0.02)


async def test_get_diagnostics_http_put(make_rig: RigFactory, http: HttpServer) -> None:
    rig = make_rig()
    cancelled, name = rig.diagnostics.submit(
        UploadRequest(
            origin="ocpp1.6",
            kind="diagnostics",
            location=http.url("/up/"),
            start=time.time() - 3600,
            stop=time.time(),
        )
    )
    assert not cancelled and name.startswith("CP-T-diagnostics-") and name.endswith(".tar.gz")
    assert v16_firmware.diagnostics_status_payload(rig.diagnostics) == {"status": "Uploading"}
    await wait_upload(rig, UploadStatus.UPLOADED)
    assert rig.csms.statuses("DiagnosticsStatusNotification") == ["Uploading", "Uploaded"]
    [upload] = http.uploads
    assert upload.method == "PUT" and upload.path == f"/up/{name}"
    assert archive_names(upload.body)
    assert list((rig.settings.paths.state_directory / "diagnostics").iterdir()) == []
    assert v16_firmware.diagnostics_status_payload(rig.diagnostics) == {"status": "Idle"}


async def test_get_log_security_log_over_ftp(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = make_rig()
    rig.security.record("SettingSystemTime", "test event", critical=False)
    (tmp_path / "ftp" / "incoming").mkdir(parents=True)
    with FtpServer(tmp_path / "ftp") as ftp:
        _, name = rig.diagnostics.submit(
            UploadRequest(
                origin="ocpp1.6",
                kind="log",
                log_type="SecurityLog",
                request_id=5,
                location=ftp.url("/incoming", user=ftp.user, password=ftp.password),
            )
        )
        await wait_upload(rig, UploadStatus.UPLOADED)
        [upload] = ftp.wait_uploads(1)
    assert upload.path.endswith(name) and "security-log" in name
    sent = rig.csms.of("LogStatusNotification")
    assert [(p["status"], p["requestId"]) for _, p in sent] == [("Uploading", 5), ("Uploaded", 5)]
    with tarfile.open(fileobj=io.BytesIO(upload.data), mode="r:gz") as tar:
        contents = b"".join(tar.extractfile(m).read() for m in tar.getmembers() if m.isfile())  # type: ignore[union-attr]
    assert b"SettingSystemTime" in contents


async def test_upload_failure_after_retries(make_rig: RigFactory, http: HttpServer) -> None:
    http.serve("/up", status=500)
    rig = make_rig()
    rig.diagnostics.submit(
        UploadRequest(
            origin="ocpp1.6",
            kind="diagnostics",
            location=http.url("/up"),
            retries=1,
            retry_interval_s=0,
        )
    )
    await wait_upload(rig, UploadStatus.UPLOAD_FAILURE)
    assert rig.csms.statuses("DiagnosticsStatusNotification") == ["Uploading", "UploadFailed"]
    assert len(http.uploads) == 2


async def test_new_log_request_cancels_the_running_one(
    make_rig: RigFactory, http: HttpServer
) -> None:
    http.serve("/slow", stall=True)
    rig = make_rig()
    rig.diagnostics.submit(
        UploadRequest(origin="ocpp1.6", kind="log", request_id=1, location=http.url("/slow"))
    )
    await asyncio.sleep(0.3)
    cancelled, _ = rig.diagnostics.submit(
        UploadRequest(origin="ocpp1.6", kind="log", request_id=2, location=http.url("/fast/"))
    )
    assert cancelled
    await wait_upload(rig, UploadStatus.UPLOADED)
    sent = [(p["status"], p["requestId"]) for _, p in rig.csms.of("LogStatusNotification")]
    assert sent == [("Uploading", 1), ("Uploading", 2), ("Uploaded", 2)]


async def test_upload_interrupted_by_a_restart_is_sent_again(
    make_rig: RigFactory, http: HttpServer
) -> None:
    http.serve("/slow", stall=True)
    rig = make_rig()
    rig.diagnostics.submit(
        UploadRequest(origin="ocpp1.6", kind="diagnostics", location=http.url("/slow"))
    )
    await asyncio.sleep(0.5)
    before = rig.csms.statuses("DiagnosticsStatusNotification")
    rig.crash()
    http.serve("/slow")  # answers now (an upload stall ignores `faults`)
    after = make_rig()
    after.diagnostics.start()
    await wait_upload(after, UploadStatus.UPLOADED)
    assert before + after.csms.statuses("DiagnosticsStatusNotification") == [
        "Uploading",
        "Uploaded",
    ]
    assert len(http.uploads) == 1  # (the stalled one is never recorded)


def test_unsupported_location_is_refused() -> None:
    assert v16_firmware.transfer_url_problem("sftp://host/x") is not None
    assert v16_firmware.transfer_url_problem("https://host/x") is None
    assert v16_firmware.transfer_url_problem("http:///x") is not None
