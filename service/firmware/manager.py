"""The firmware update state machine: download, verify, wait, install, reboot, confirm.

One `FirmwareManager` owns at most one update ("job") at a time. The job — the whole request
and where it stands — is a JSON row in the `kv` table, written at every transition in the same
SQLite transaction that queues the status notification for it (`Engine.enqueue`). A crash or
power cut at any instruction therefore leaves either the old state with nothing queued or the
new state with its notification queued: each status is reported exactly once, and `start()`
after a restart continues from the stored state:

    DownloadScheduled  wait for retrieveDate, then download
    Downloading        download again; the `.part` file left behind is resumed
    Downloaded         (signed) verify the signature; then install
    SignatureVerified  install (after installDate, once no transaction runs)
    InstallScheduled   same
    Installing         the install was cut short: run it again (installers are idempotent),
                       once; interrupted a second time it ends InstallationFailed
    InstallRebooting   the reboot happened: ask the installer whether the new firmware runs
                       (`Installer.confirm_boot`) -> Installed + the FirmwareUpdated security
                       event, or InstallationFailed

The manager is version-neutral. What goes on the wire is decided by a reporter registered per
origin (`reporters["ocpp1.6"]`, see service/ocpp/v16/firmware.py); a local install from D-Bus
(origin "local") reports nothing to the CSMS except the FirmwareUpdated security event.

Installation waits until no transaction is active: meanwhile every EVSE is made Unavailable
(idle ones at once, busy ones when their transaction ends — the station's own "Scheduled"
availability), their previous availability is stored in the job, and it is given back after
the install (success or failure) or when the job is cancelled.

`DiagnosticsManager` (service/firmware/uploads.py) is the log-upload counterpart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import ssl
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.firmware.jobs import (
    CLOCK_SLACK_S,
    DEFAULT_RETRIES,
    DEFAULT_RETRY_INTERVAL_S,
    FINAL_STATES,
    INSTALL_STATES,
    JOB_KEY,
    TRANSFER_SCHEMES,
    FirmwareBusy,
    FirmwareJob,
    FirmwareRequest,
    FirmwareState,
    Reboot,
    Reporter,
    SecuritySink,
    SubmitStatus,
    Superseded,
    iso_or_now,
    logind_reboot,
    make_reboot,
    safe_file_name,
    shown_location,
    ssl_context_for,
    transfer_url_problem,
)
from service.journal import LogEvent, log_fields
from service.ocpp.rpc import JsonDict, OcppVersion
from service.station.model import Availability

if TYPE_CHECKING:
    from cryptography import x509

    from service.config import FirmwareSettings
    from service.firmware.installer import Installer
    from service.ocpp.engine import Engine
    from service.station.station import Station
    from service.store.db import Database

__all__ = [
    "CLOCK_SLACK_S",
    "DEFAULT_RETRIES",
    "DEFAULT_RETRY_INTERVAL_S",
    "FINAL_STATES",
    "INSTALL_STATES",
    "JOB_KEY",
    "TRANSFER_SCHEMES",
    "FirmwareBusy",
    "FirmwareJob",
    "FirmwareManager",
    "FirmwareRequest",
    "FirmwareState",
    "Reboot",
    "Reporter",
    "SecuritySink",
    "SubmitStatus",
    "logind_reboot",
    "make_reboot",
    "safe_file_name",
    "ssl_context_for",
    "transfer_url_problem",
]

log = logging.getLogger("evsed.firmware")

_WAIT_SLICE_S = 30.0  # wall-clock waits re-read the clock this often (it may be set meanwhile)
_IDLE_POLL_S = 5.0
_MAX_INSTALL_RUNS = 2
_CANCEL_WAIT_S = 2.0


# ---------------------------------------------------------------------------- the manager
class FirmwareManager:
    def __init__(
        self,
        *,
        db: Database,
        engine: Engine,
        station: Station,
        settings: FirmwareSettings,
        state_directory: Path,
        installer: Installer | None,
        security: SecuritySink | None = None,
        reboot: Reboot | None = None,
        station_call: Callable[..., Any] | None = None,
        now: Callable[[], float | None] | None = None,
    ) -> None:
        self._db = db
        self._engine = engine
        self._station = station
        self.settings = settings
        self.directory = state_directory / "firmware"
        self.installer = installer
        self.security = security
        self._reboot = reboot or make_reboot(settings)
        # Feeding the station through the charger's _input wakes the engine and the timers.
        self._station_call: Callable[..., Any] = station_call or (lambda fn, *a: fn(*a))
        self._now = now or engine.time.now
        self.reporters: dict[str, Reporter] = {}
        self._job: FirmwareJob | None = None
        self._task: asyncio.Task[None] | None = None
        self._resumed: FirmwareState | None = None  # the state a restart found the job in
        #: This run started after the reboot of an installation (BootNotification reason).
        self.booted_for_update = False
        self._cancel = threading.Event()  # tells a download thread to give up
        self._listeners: list[Callable[[], None]] = []
        self._station_changed = asyncio.Event()
        self._ssl: ssl.SSLContext | None = None
        station.on_change(lambda _evse_id: self._station_changed.set())

    # ------------------------------------------------------------------ public API
    @property
    def job(self) -> FirmwareJob | None:
        return self._job

    @property
    def active(self) -> bool:
        return self._job is not None and self._job.state not in FINAL_STATES

    @property
    def state(self) -> FirmwareState:
        return FirmwareState.IDLE if self._job is None else self._job.state

    def snapshot(self) -> dict[str, object]:
        """The D-Bus view: state, progress (0..100), last_error, request_id (-1: none),
        location, backend ("none" when updates are off)."""
        job = self._job
        return {
            "state": self.state.value,
            "progress": job.progress if job is not None else 0,
            "last_error": job.last_error if job is not None else "",
            "request_id": job.request_id if job is not None and job.request_id is not None else -1,
            "location": shown_location(job.location) if job is not None else "",
            "backend": self.settings.backend if self.installer is not None else "none",
        }

    def on_change(self, callback: Callable[[], None]) -> None:
        """`callback()` after every change of `snapshot()` (state, progress, error)."""
        self._listeners.append(callback)

    def start(self) -> None:
        """Load the stored job and continue it (call once the station has started)."""
        row = self._db.query_one("SELECT value FROM kv WHERE key = ?", (JOB_KEY,))
        if row is None:
            self._cleanup(keep=None)
            return
        try:
            job = FirmwareJob.from_json(row[0])
        except (ValueError, TypeError, KeyError) as exc:
            log.error("stored firmware update state is unreadable (%s); discarded", exc)
            self._db.execute("DELETE FROM kv WHERE key = ?", (JOB_KEY,))
            self._cleanup(keep=None)
            return
        self._job = job
        self._cleanup(keep=job)
        if job.state in FINAL_STATES:
            return
        self.booted_for_update = job.state is FirmwareState.INSTALL_REBOOTING
        self._resumed = job.state
        log.warning(
            "resuming the firmware update from %s after a restart (%s)",
            job.state.value,
            shown_location(job.location),
            extra=log_fields(event=LogEvent.FIRMWARE),
        )
        self._run(job)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            self._cancel.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def submit(self, request: FirmwareRequest) -> SubmitStatus:
        """Take a new update request: persist it and start working on it.

        A running update that has not started installing is cancelled (AcceptedCanceled, its
        EVSEs given back); one that is installing makes the request Rejected. A signed request
        whose certificate does not chain to the manufacturer roots is InvalidCertificate (with
        the InvalidFirmwareSigningCertificate security event) and changes nothing.
        """
        if self.installer is None:
            raise RuntimeError("firmware updates are not configured ([firmware] backend)")
        current = self._job
        if current is not None and current.state in INSTALL_STATES:
            log.warning(
                "firmware update request refused: the update from %s is %s",
                shown_location(current.location),
                current.state.value,
                extra=log_fields(event=LogEvent.FIRMWARE),
            )
            return SubmitStatus.REJECTED
        received = self._now() or 0.0
        if request.signing_certificate is not None:
            problem = self._certificate_problem(request.signing_certificate, received)
            if problem is not None:
                log.error(
                    "signed firmware update refused: %s",
                    problem,
                    extra=log_fields(event=LogEvent.FIRMWARE),
                )
                self._security_event("InvalidFirmwareSigningCertificate", problem)
                return SubmitStatus.INVALID_CERTIFICATE
        cancelled = self.active
        job = FirmwareJob(
            job_id=uuid.uuid4().hex,
            origin=request.origin,
            location=request.location,
            signed=request.signing_certificate is not None,
            request_id=request.request_id,
            retrieve_at=request.retrieve_at,
            install_at=request.install_at,
            retries=DEFAULT_RETRIES if request.retries is None else max(0, request.retries),
            retry_interval_s=(
                DEFAULT_RETRY_INTERVAL_S
                if request.retry_interval_s is None
                else max(0, request.retry_interval_s)
            ),
            signing_certificate=request.signing_certificate or "",
            signature=request.signature or "",
            received_at=received,
        )
        self._replace(job)
        due = request.retrieve_at is None or received + CLOCK_SLACK_S >= request.retrieve_at
        first = FirmwareState.DOWNLOADING if due else FirmwareState.DOWNLOAD_SCHEDULED
        self._transition(job, first)
        log.info(
            "firmware update accepted: %s, download %s%s",
            shown_location(job.location),
            iso_or_now(job.retrieve_at),
            " (signed)" if job.signed else "",
            extra=log_fields(event=LogEvent.FIRMWARE),
        )
        self._run(job)
        return SubmitStatus.ACCEPTED_CANCELED if cancelled else SubmitStatus.ACCEPTED

    async def install_local(self, path: Path) -> None:
        """Install a bundle that is already on this machine (operator, over D-Bus).

        No download; no signature check unless manufacturer roots are configured and the
        backend is "command" (RAUC and swupdate verify bundles themselves): then the signing
        certificate and the base64 signature must lie beside the bundle as `<bundle>.pem` and
        `<bundle>.sig`. Returns once the install is under way (follow it with `snapshot()`).
        Raises FirmwareBusy when an update is in progress, ValueError for a bad request.
        """
        if self.installer is None:
            raise ValueError("firmware updates are not configured ([firmware] backend = none)")
        if self.active:
            assert self._job is not None
            raise FirmwareBusy(
                f"a firmware update is in progress ({self._job.state.value}, "
                f"{shown_location(self._job.location)})"
            )
        if not path.is_absolute():
            raise ValueError(f"{path}: give an absolute path")
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
        verified = False
        if self.settings.manufacturer_roots is not None and self.settings.backend == "command":
            await self._verify_local(path)
            verified = True
        if self.active:  # a CSMS request arrived while the signature was checked
            raise FirmwareBusy("a firmware update was requested by the CSMS meanwhile")
        job = FirmwareJob(
            job_id=uuid.uuid4().hex,
            origin="local",
            location=str(path),
            bundle=str(path),
            owns_bundle=False,
            received_at=self._now() or 0.0,
        )
        self._replace(job)
        state = FirmwareState.SIGNATURE_VERIFIED if verified else FirmwareState.DOWNLOADED
        self._transition(job, state)
        log.info("local firmware install of %s", path, extra=log_fields(event=LogEvent.FIRMWARE))
        self._run(job)

    # ------------------------------------------------------------------ persistence
    def _save(self, job: FirmwareJob) -> None:
        self._db.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (JOB_KEY, job.to_json()),
        )

    def _transition(
        self,
        job: FirmwareJob,
        state: FirmwareState,
        *,
        error: str = "",
        security: tuple[str, str, bool] | None = None,
    ) -> None:
        """Enter `state`: store the job and queue its notification in one commit."""
        if self._job is not job:
            raise Superseded
        job.state = state
        if error:
            job.last_error = error
        if state in (FirmwareState.DOWNLOADING, FirmwareState.INSTALLING):
            job.progress = 0
        message: tuple[str, JsonDict] | None = None
        reporter = self.reporters.get(job.origin)
        if reporter is not None:
            message = reporter(job, state)
        with self._db.transaction():
            self._save(job)
            if message is not None:
                try:
                    self._engine.enqueue(
                        message[0],
                        message[1],
                        transaction=False,
                        version=OcppVersion.from_subprotocol(job.origin),
                    )
                except ValueError as exc:
                    log.error("cannot report firmware status %s: %s", state.value, exc)
            if security is not None:
                self._security_event(*security[:2], critical=security[2])
        level = logging.ERROR if error else logging.INFO
        log.log(
            level,
            "firmware update %s%s",
            state.value,
            f": {error}" if error else "",
            extra=log_fields(event=LogEvent.FIRMWARE),
        )
        self._notify()

    def _security_event(self, kind: str, info: str, critical: bool = False) -> None:
        if self.security is None:
            log.warning("security event %s (%s): no security log configured", kind, info)
            return
        try:
            self.security.record(kind, info, critical=critical)
        except Exception:
            log.exception("recording the security event %s failed", kind)

    def _notify(self) -> None:
        for callback in list(self._listeners):
            try:
                callback()
            except Exception:
                log.exception("firmware change listener failed")

    def _set_progress(self, job: FirmwareJob, percent: int) -> None:
        percent = max(0, min(100, percent))
        if self._job is job and percent != job.progress:
            job.progress = percent
            self._notify()

    # ------------------------------------------------------------------ job control
    def _replace(self, job: FirmwareJob) -> None:
        """Make `job` the current one; a running one is stopped and its EVSEs given back."""
        old, task = self._job, self._task
        self._job = job
        self._task = None
        self._resumed = None
        if task is not None and not task.done():
            self._cancel.set()
            task.cancel()
        self._cancel = threading.Event()
        if old is not None and old.state not in FINAL_STATES:
            log.warning(
                "firmware update from %s cancelled in state %s by a new request",
                shown_location(old.location),
                old.state.value,
                extra=log_fields(event=LogEvent.FIRMWARE),
            )
            if old.availability is not None:
                self._give_back(old)
        if old is not None and old.owns_bundle:
            # the old thread may still write its part file: removing names is safe on POSIX
            self._remove_files(old)

    def _run(self, job: FirmwareJob) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._drive(job), name=f"firmware-{job.job_id[:8]}"
        )

    async def _drive(self, job: FirmwareJob) -> None:
        try:
            while self._job is job and job.state not in FINAL_STATES:
                if not await self._step(job):
                    return
        except (Superseded, asyncio.CancelledError):
            return
        except Exception as exc:
            log.exception("firmware update failed in state %s", job.state.value)
            if self._job is job and job.state not in FINAL_STATES:
                failed = (
                    FirmwareState.DOWNLOAD_FAILED
                    if job.state in (FirmwareState.DOWNLOAD_SCHEDULED, FirmwareState.DOWNLOADING)
                    else FirmwareState.INSTALLATION_FAILED
                )
                with contextlib.suppress(Exception):
                    self._finish(job, failed, error=f"internal error: {exc}")

    async def _step(self, job: FirmwareJob) -> bool:
        """Advance the job by one state; False: stop driving (a reboot is on its way)."""
        state = job.state
        if state is FirmwareState.DOWNLOAD_SCHEDULED:
            await self._wait_until(job.retrieve_at)
            self._transition(job, FirmwareState.DOWNLOADING)
        elif state is FirmwareState.DOWNLOADING:
            await self._download(job)
        elif state is FirmwareState.DOWNLOADED and job.signed:
            await self._verify(job)
        elif state in (FirmwareState.DOWNLOADED, FirmwareState.SIGNATURE_VERIFIED):
            now = self._now()
            if (
                job.install_at is not None
                and now is not None
                and now + CLOCK_SLACK_S < job.install_at
            ):
                self._transition(job, FirmwareState.INSTALL_SCHEDULED)
            else:
                await self._wait_for_idle(job)
                self._transition(job, FirmwareState.INSTALLING)
        elif state is FirmwareState.INSTALL_SCHEDULED:
            await self._wait_until(job.install_at)
            await self._wait_for_idle(job)
            self._transition(job, FirmwareState.INSTALLING)
        elif state is FirmwareState.INSTALLING:
            return await self._install(job)
        elif state is FirmwareState.INSTALL_REBOOTING:
            if self._resumed is not FirmwareState.INSTALL_REBOOTING:
                return False  # asked for the reboot in this run: nothing to do until it comes
            await self._confirm(job)
        return True

    async def _wait_until(self, moment: float | None) -> None:
        while moment is not None:
            now = self._now()
            if now is None or now + CLOCK_SLACK_S >= moment:
                return
            await asyncio.sleep(min(moment - now, _WAIT_SLICE_S))

    # ------------------------------------------------------------------ download
    def _bundle_path(self, job: FirmwareJob) -> Path:
        return self.directory / f"{job.job_id[:12]}-{safe_file_name(job.location, 'firmware')}"

    def _transfer_options(self) -> Any:
        from service.firmware.transfer import TransferOptions

        if self._ssl is None:
            self._ssl = ssl_context_for(self.settings.trust_store)
        return TransferOptions(
            ssl_context=self._ssl,
            timeout_s=self.settings.download_timeout_s,
            max_bytes=self.settings.max_bytes,
            min_free_bytes=self.settings.min_free_bytes,
        )

    async def _download(self, job: FirmwareJob) -> None:
        from service.firmware.transfer import TransferError, TransferErrorKind, download

        dest = self._bundle_path(job)
        problem = transfer_url_problem(job.location)
        if problem is not None:
            self._finish(job, FirmwareState.DOWNLOAD_FAILED, error=f"location: {problem}")
            return
        try:
            options = self._transfer_options()
        except (OSError, ssl.SSLError) as exc:
            self._finish(job, FirmwareState.DOWNLOAD_FAILED, error=f"trust store: {exc}")
            return
        loop = asyncio.get_running_loop()
        cancel = self._cancel

        def progress(done: int, total: int | None) -> None:
            if cancel.is_set():
                raise Superseded
            if total:
                loop.call_soon_threadsafe(self._set_progress, job, done * 100 // total)

        while True:
            worker = asyncio.ensure_future(
                asyncio.to_thread(download, job.location, dest, options, progress)
            )
            try:
                size = await asyncio.shield(worker)
            except asyncio.CancelledError:
                cancel.set()
                with contextlib.suppress(BaseException):
                    # The thread stops at its next chunk (the progress callback raises);
                    # a stalled one only at its timeout: do not hold the caller that long.
                    await asyncio.wait_for(worker, _CANCEL_WAIT_S)
                raise
            except TransferError as exc:
                if self._job is not job:
                    raise Superseded from None
                job.attempts += 1
                final = exc.kind in (TransferErrorKind.UNSUPPORTED, TransferErrorKind.TOO_LARGE)
                if final or job.attempts > job.retries:
                    self._finish(
                        job,
                        FirmwareState.DOWNLOAD_FAILED,
                        error=f"{exc.message} (attempt {job.attempts} of {job.retries + 1})",
                    )
                    return
                job.last_error = exc.message
                self._save(job)  # the attempt counts after a restart too
                self._notify()
                log.warning(
                    "firmware download attempt %d of %d failed: %s; next in %ds",
                    job.attempts,
                    job.retries + 1,
                    exc.message,
                    job.retry_interval_s,
                    extra=log_fields(event=LogEvent.FIRMWARE),
                )
                await asyncio.sleep(job.retry_interval_s)
                continue
            if self._job is not job:
                raise Superseded
            job.bundle = str(dest)
            job.progress = 100
            log.info("firmware downloaded: %d bytes to %s", size, dest)
            self._transition(job, FirmwareState.DOWNLOADED)
            return

    # ------------------------------------------------------------------ verification
    def _roots(self) -> Sequence[x509.Certificate]:
        from service.firmware.verify import load_roots

        if self.settings.manufacturer_roots is None:
            raise ValueError("no manufacturer root certificates are configured")
        return load_roots(self.settings.manufacturer_roots)

    def _certificate_problem(self, pem: str, when: float) -> str | None:
        from service.firmware.verify import VerificationError, verify_signing_certificate

        try:
            verify_signing_certificate(pem, self._roots(), datetime.fromtimestamp(when, UTC))
        except (VerificationError, ValueError, OSError) as exc:
            return f"signing certificate not accepted: {exc}"
        return None

    async def _verify(self, job: FirmwareJob) -> None:
        from service.firmware.verify import (
            VerificationError,
            verify_file_signature,
            verify_signing_certificate,
        )

        def check() -> None:
            when = datetime.fromtimestamp(job.received_at, UTC)
            certificate = verify_signing_certificate(job.signing_certificate, self._roots(), when)
            verify_file_signature(certificate, job.signature, Path(job.bundle))

        try:
            await asyncio.to_thread(check)
        except (VerificationError, ValueError, OSError) as exc:
            self._finish(
                job,
                FirmwareState.INVALID_SIGNATURE,
                error=f"signature check failed: {exc}",
                security=("InvalidFirmwareSignature", str(exc)[:255], False),
            )
            return
        self._transition(job, FirmwareState.SIGNATURE_VERIFIED)

    async def _verify_local(self, path: Path) -> None:
        from service.firmware.verify import (
            VerificationError,
            verify_file_signature,
            verify_signing_certificate,
        )

        pem_path = path.with_name(path.name + ".pem")
        sig_path = path.with_name(path.name + ".sig")
        for needed in (pem_path, sig_path):
            if not needed.is_file():
                raise ValueError(
                    f"{needed}: missing (manufacturer roots are configured, so a local bundle "
                    "needs its signing certificate <bundle>.pem and signature <bundle>.sig)"
                )

        def check() -> None:
            pem = pem_path.read_text(encoding="utf-8")
            signature = sig_path.read_text(encoding="ascii").strip()
            certificate = verify_signing_certificate(
                pem, self._roots(), datetime.fromtimestamp(self._now() or 0.0, UTC)
            )
            verify_file_signature(certificate, signature, path)

        try:
            await asyncio.to_thread(check)
        except (VerificationError, ValueError, OSError, UnicodeError) as exc:
            raise ValueError(f"{path}: signature check failed: {exc}") from None

    # ------------------------------------------------------------------ installation
    def _operative(self, evse_id: int) -> bool:
        evse = self._station.evses[evse_id]
        wanted = evse.scheduled_availability or evse.availability
        return wanted is Availability.OPERATIVE

    async def _wait_for_idle(self, job: FirmwareJob) -> None:
        """Make every EVSE Unavailable (busy ones once their transaction ends) and wait until
        no transaction runs. The previous availability is stored before anything changes."""
        if job.availability is None:
            job.availability = {str(n): self._operative(n) for n in self._station.evses}
            self._save(job)
        for evse_id in self._station.evses:
            evse = self._station.evses[evse_id]
            if (evse.scheduled_availability or evse.availability) is Availability.OPERATIVE:
                self._station_call(self._station.set_availability, evse_id, False)
        announced = False
        while self._station.has_transaction():
            if not announced:
                announced = True
                log.info(
                    "firmware install waits for the running transaction(s) to end",
                    extra=log_fields(event=LogEvent.FIRMWARE),
                )
            self._station_changed.clear()
            with contextlib.suppress(TimeoutError):  # not wait_for: see charger._meter_loop
                async with asyncio.timeout(_IDLE_POLL_S):
                    await self._station_changed.wait()
            if self._job is not job:
                raise Superseded

    def _give_back(self, job: FirmwareJob) -> None:
        taken, job.availability = job.availability, None
        for key, operative in (taken or {}).items():
            evse_id = int(key)
            if evse_id in self._station.evses:
                try:
                    self._station_call(self._station.set_availability, evse_id, operative)
                except Exception:
                    log.exception("restoring the availability of EVSE %d failed", evse_id)

    def _finish(
        self,
        job: FirmwareJob,
        state: FirmwareState,
        *,
        error: str = "",
        security: tuple[str, str, bool] | None = None,
    ) -> None:
        """Enter a final state: EVSEs back to what they were, the downloaded file removed."""
        if self._job is not job:
            raise Superseded
        if job.availability is not None:
            self._give_back(job)
        self._remove_files(job)
        self._transition(job, state, error=error, security=security)

    async def _install(self, job: FirmwareJob) -> bool:
        from service.firmware.installer import InstallError

        installer = self.installer
        if installer is None:
            self._finish(
                job, FirmwareState.INSTALLATION_FAILED, error="no firmware backend configured"
            )
            return True
        bundle = Path(job.bundle)
        if self._resumed is FirmwareState.INSTALLING:
            self._resumed = None
            log.warning(
                "the firmware install was interrupted (run %d); %s",
                job.install_runs,
                "giving up" if job.install_runs >= _MAX_INSTALL_RUNS else "running it again",
                extra=log_fields(event=LogEvent.FIRMWARE),
            )
            if job.install_runs >= _MAX_INSTALL_RUNS:
                self._finish(
                    job,
                    FirmwareState.INSTALLATION_FAILED,
                    error=f"install interrupted {job.install_runs} times",
                )
                return True
            if job.availability is not None:
                await self._wait_for_idle(job)  # after a restart EVSEs came back Operative
        if not bundle.is_file():
            self._finish(job, FirmwareState.INSTALLATION_FAILED, error=f"{bundle}: file is gone")
            return True
        job.install_runs += 1
        self._save(job)
        loop = asyncio.get_running_loop()

        def progress(percent: int, message: str) -> None:
            loop.call_soon_threadsafe(self._set_progress, job, percent)

        try:
            result = await installer.install(bundle, progress)
        except InstallError as exc:
            verification = bool(getattr(exc, "verification", False))
            state = (
                FirmwareState.INSTALL_VERIFICATION_FAILED
                if verification
                else FirmwareState.INSTALLATION_FAILED
            )
            self._finish(job, state, error=f"{installer.name}: {exc}")
            return True
        if self._job is not job:
            raise Superseded
        job.install_data = dict(result.data)
        job.progress = 100
        where = shown_location(job.location)
        if not result.reboot_required:
            self._finish(
                job,
                FirmwareState.INSTALLED,
                security=("FirmwareUpdated", f"{installer.name}: {where}", True),
            )
            return True
        self._transition(job, FirmwareState.INSTALL_REBOOTING)
        try:
            await self._reboot()
        except Exception as exc:
            self._finish(
                job,
                FirmwareState.INSTALLATION_FAILED,
                error=f"the reboot that activates the new firmware failed: {exc}",
            )
            return True
        log.warning(
            "firmware installed; reboot requested", extra=log_fields(event=LogEvent.FIRMWARE)
        )
        return False

    async def _confirm(self, job: FirmwareJob) -> None:
        self._resumed = None
        installer = self.installer
        if installer is None:
            self._finish(
                job, FirmwareState.INSTALLATION_FAILED, error="no firmware backend configured"
            )
            return
        try:
            check = await installer.confirm_boot(job.install_data)
        except Exception as exc:
            log.exception("confirming the new firmware failed")
            self._finish(job, FirmwareState.INSTALLATION_FAILED, error=f"boot check: {exc}")
            return
        if check.ok:
            self._finish(
                job,
                FirmwareState.INSTALLED,
                security=("FirmwareUpdated", f"{installer.name}: {check.detail}"[:255], True),
            )
        else:
            self._finish(
                job,
                FirmwareState.INSTALLATION_FAILED,
                error=f"the new firmware is not running: {check.detail}",
            )

    # ------------------------------------------------------------------ files
    def _remove_files(self, job: FirmwareJob) -> None:
        if not job.owns_bundle:
            return
        dest = self._bundle_path(job)
        for path in (dest, dest.with_name(dest.name + ".part")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _cleanup(self, keep: FirmwareJob | None) -> None:
        """Remove files of earlier updates from the firmware directory."""
        if not self.directory.is_dir():
            return
        prefix = keep.job_id[:12] + "-" if keep is not None else None
        for entry in self.directory.iterdir():
            if prefix is not None and entry.name.startswith(prefix):
                continue
            with contextlib.suppress(OSError):
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
