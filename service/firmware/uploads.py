"""Log uploads for the CSMS (1.6 GetDiagnostics, 1.6 security / 2.0.1 GetLog): build the
archive, upload it with retries, report every step.

One upload runs at a time; a new request cancels the running one (GetLog answers
AcceptedCanceled). The job is a JSON row in the `kv` table, stored in the same SQLite
transaction that queues its status notification, so each status goes out exactly once. After a
restart an unfinished upload is built and sent again (Uploading is not reported twice).

Where the file goes: an FTP(S) location names a directory (1.6 GetDiagnostics), so the file
name is appended to it; an HTTP(S) location that ends with "/" gets the file name appended too;
any other HTTP(S) location is the upload endpoint itself (PUT or POST per [diagnostics]).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from service.firmware.jobs import (
    DEFAULT_RETRIES,
    DEFAULT_RETRY_INTERVAL_S,
    ssl_context_for,
    transfer_url_problem,
)
from service.journal import log_fields
from service.ocpp.rpc import JsonDict, OcppVersion

if TYPE_CHECKING:
    from service.config import Settings
    from service.ocpp.engine import Engine
    from service.store.db import Database

log = logging.getLogger("evsed.diagnostics")

JOB_KEY = "diagnostics.job"
LOG_TYPES = ("DiagnosticsLog", "SecurityLog")


class UploadStatus(StrEnum):
    """Upload states (the UploadLogStatusEnumType names; the first four failures are final)."""

    IDLE = "Idle"
    UPLOADING = "Uploading"
    UPLOADED = "Uploaded"
    UPLOAD_FAILURE = "UploadFailure"
    BAD_MESSAGE = "BadMessage"
    NOT_SUPPORTED = "NotSupportedOperation"
    PERMISSION_DENIED = "PermissionDenied"


FAILURES = frozenset(
    {
        UploadStatus.UPLOAD_FAILURE,
        UploadStatus.BAD_MESSAGE,
        UploadStatus.NOT_SUPPORTED,
        UploadStatus.PERMISSION_DENIED,
    }
)


@dataclass(frozen=True, slots=True)
class UploadRequest:
    origin: str  # "ocpp1.6" | "ocpp2.0.1"
    kind: str  # "diagnostics" (1.6 GetDiagnostics) | "log" (GetLog)
    location: str
    log_type: str = "DiagnosticsLog"
    request_id: int | None = None
    start: float | None = None  # unix seconds
    stop: float | None = None
    retries: int | None = None
    retry_interval_s: int | None = None


@dataclass(slots=True)
class UploadJob:
    job_id: str
    origin: str
    kind: str
    location: str
    file_name: str
    log_type: str = "DiagnosticsLog"
    request_id: int | None = None
    start: float | None = None
    stop: float | None = None
    retries: int = DEFAULT_RETRIES
    retry_interval_s: int = DEFAULT_RETRY_INTERVAL_S
    status: UploadStatus = UploadStatus.IDLE
    attempts: int = 0
    last_error: str = ""

    def to_json(self) -> str:
        data = asdict(self)
        data["status"] = self.status.value
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> UploadJob:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        values = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        values["status"] = UploadStatus(values.get("status", "Idle"))
        return cls(**values)


UploadReporter = Callable[[UploadJob, UploadStatus], "tuple[str, JsonDict] | None"]
ArchiveBuilder = Callable[..., Path]


class _Superseded(Exception):
    pass


def upload_url(location: str, file_name: str) -> str:
    """Where the file goes (see the module docstring)."""
    parts = urlsplit(location)
    directory = location.endswith("/") or parts.scheme.lower() in ("ftp", "ftps")
    if not directory:
        return location
    base = location if location.endswith("/") else location + "/"
    return base + quote(file_name)


class DiagnosticsManager:
    def __init__(
        self,
        *,
        db: Database,
        engine: Engine,
        settings: Settings,
        security_log: Path,
        builder: ArchiveBuilder | None = None,
        now: Callable[[], float | None] | None = None,
    ) -> None:
        self._db = db
        self._engine = engine
        self.settings = settings
        self.security_log = security_log
        self.directory = settings.paths.state_directory / "diagnostics"
        self._builder = builder
        self._now = now or engine.time.now
        self.reporters: dict[str, UploadReporter] = {}
        self._job: UploadJob | None = None
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ public API
    @property
    def job(self) -> UploadJob | None:
        return self._job

    @property
    def active(self) -> bool:
        return self._job is not None and self._job.status is UploadStatus.UPLOADING

    def on_change(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def snapshot(self) -> dict[str, object]:
        job = self._job
        return {
            "state": job.status.value if job is not None else "Idle",
            "kind": job.kind if job is not None else "",
            "file_name": job.file_name if job is not None else "",
            "last_error": job.last_error if job is not None else "",
            "request_id": job.request_id if job and job.request_id is not None else -1,
        }

    def submit(self, request: UploadRequest) -> tuple[bool, str]:
        """Start an upload; returns (a running upload was cancelled, the file name)."""
        if request.log_type not in LOG_TYPES:
            raise ValueError(f"log type {request.log_type!r} is not one of {LOG_TYPES}")
        problem = transfer_url_problem(request.location)
        if problem is not None:
            raise ValueError(f"location: {problem}")
        cancelled = self.active
        if cancelled:
            assert self._job is not None
            log.warning(
                "upload of %s cancelled by a new request", self._job.file_name, extra=log_fields()
            )
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
        moment = datetime.fromtimestamp(self._now() or 0.0, UTC).strftime("%Y%m%dT%H%M%SZ")
        what = "security-log" if request.log_type == "SecurityLog" else "diagnostics"
        cp_id = self.settings.identity.charge_point_id
        safe_cp = "".join(c if c.isalnum() or c in "._-" else "_" for c in cp_id)
        job = UploadJob(
            job_id=uuid.uuid4().hex,
            origin=request.origin,
            kind=request.kind,
            location=request.location,
            file_name=f"{safe_cp}-{what}-{moment}.tar.gz",
            log_type=request.log_type,
            request_id=request.request_id,
            start=request.start,
            stop=request.stop,
            retries=DEFAULT_RETRIES if request.retries is None else max(0, request.retries),
            retry_interval_s=(
                DEFAULT_RETRY_INTERVAL_S
                if request.retry_interval_s is None
                else max(0, request.retry_interval_s)
            ),
        )
        self._job = job
        self._transition(job, UploadStatus.UPLOADING)
        self._run(job)
        return cancelled, job.file_name

    def start(self) -> None:
        """Continue an upload a restart interrupted (call once the engine exists)."""
        row = self._db.query_one("SELECT value FROM kv WHERE key = ?", (JOB_KEY,))
        self._cleanup(keep=None)
        if row is None:
            return
        try:
            job = UploadJob.from_json(row[0])
        except (ValueError, TypeError, KeyError) as exc:
            log.error("stored upload state is unreadable (%s); discarded", exc)
            self._db.execute("DELETE FROM kv WHERE key = ?", (JOB_KEY,))
            return
        self._job = job
        if job.status is UploadStatus.UPLOADING:
            log.warning("resuming the upload of %s after a restart", job.file_name)
            self._run(job)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ------------------------------------------------------------------ internals
    def _transition(self, job: UploadJob, status: UploadStatus, error: str = "") -> None:
        if self._job is not job:
            raise _Superseded
        job.status = status
        if error:
            job.last_error = error
        reporter = self.reporters.get(job.origin)
        message = reporter(job, status) if reporter is not None else None
        with self._db.transaction():
            self._db.execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (JOB_KEY, job.to_json()),
            )
            if message is not None:
                try:
                    self._engine.enqueue(
                        message[0],
                        message[1],
                        transaction=False,
                        version=OcppVersion.from_subprotocol(job.origin),
                    )
                except ValueError as exc:
                    log.error("cannot report upload status %s: %s", status.value, exc)
        log.log(
            logging.ERROR if error else logging.INFO,
            "%s upload %s %s%s",
            job.log_type,
            job.file_name,
            status.value,
            f": {error}" if error else "",
        )
        for callback in list(self._listeners):
            try:
                callback()
            except Exception:
                log.exception("upload change listener failed")

    def _run(self, job: UploadJob) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._drive(job), name=f"upload-{job.job_id[:8]}"
        )

    def _options(self) -> Any:
        from service.firmware.transfer import TransferOptions

        return TransferOptions(
            ssl_context=ssl_context_for(self.settings.firmware.trust_store),
            timeout_s=self.settings.diagnostics.upload_timeout_s,
        )

    def _build(self, job: UploadJob, path: Path) -> Path:
        builder = self._builder
        if builder is None:
            from service.firmware.diagnostics import build_archive

            builder = build_archive
        self.directory.mkdir(parents=True, exist_ok=True)
        return builder(
            path,
            log_type=job.log_type,
            start=None if job.start is None else datetime.fromtimestamp(job.start, UTC),
            stop=None if job.stop is None else datetime.fromtimestamp(job.stop, UTC),
            settings=self.settings,
            db=self._db,
            security_log=self.security_log,
        )

    async def _drive(self, job: UploadJob) -> None:
        from service.firmware.transfer import TransferError, TransferErrorKind, upload

        path = self.directory / job.file_name
        built = path
        try:
            try:
                built = await asyncio.to_thread(self._build, job, path)
            except Exception as exc:
                log.exception("building %s failed", job.file_name)
                self._transition(job, UploadStatus.UPLOAD_FAILURE, f"archive: {exc}")
                return
            try:
                options = self._options()
            except OSError as exc:
                self._transition(job, UploadStatus.UPLOAD_FAILURE, f"trust store: {exc}")
                return
            url = upload_url(job.location, built.name)
            method = self.settings.diagnostics.http_method
            while True:
                try:
                    await asyncio.to_thread(upload, url, built, options, method=method)
                except TransferError as exc:
                    if self._job is not job:
                        return
                    job.attempts += 1
                    final = exc.kind in (TransferErrorKind.UNSUPPORTED, TransferErrorKind.AUTH)
                    if final or job.attempts > job.retries:
                        status = {
                            TransferErrorKind.AUTH: UploadStatus.PERMISSION_DENIED,
                            TransferErrorKind.UNSUPPORTED: UploadStatus.NOT_SUPPORTED,
                        }.get(exc.kind, UploadStatus.UPLOAD_FAILURE)
                        self._transition(
                            job,
                            status,
                            f"{exc.message} (attempt {job.attempts} of {job.retries + 1})",
                        )
                        return
                    job.last_error = exc.message
                    log.warning(
                        "upload attempt %d of %d failed: %s; next in %ds",
                        job.attempts,
                        job.retries + 1,
                        exc.message,
                        job.retry_interval_s,
                    )
                    await asyncio.sleep(job.retry_interval_s)
                    continue
                self._transition(job, UploadStatus.UPLOADED)
                return
        except _Superseded:
            return
        finally:
            for leftover in {path, built}:
                with contextlib.suppress(OSError):
                    leftover.unlink()

    def _cleanup(self, keep: UploadJob | None) -> None:
        if not self.directory.is_dir():
            return
        for entry in self.directory.iterdir():
            if keep is not None and entry.name == keep.file_name:
                continue
            with contextlib.suppress(OSError):
                if entry.is_file():
                    entry.unlink()
