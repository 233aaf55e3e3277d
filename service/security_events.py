"""Security events: the persistent security log and SecurityEventNotification to the CSMS.

Every event is first appended to the security log, a JSON-lines file (`security.log` in the
state directory) that GetLog(SecurityLog) uploads, then reported to the CSMS with
SecurityEventNotification {type, timestamp, techInfo}: the action and payload are the same in
OCPP 1.6 (security whitepaper) and 2.0.1.

* A critical event goes through the engine's durable queue (`enqueue(..., transaction=False)`),
  so it survives offline periods and restarts; its timestamp may be the engine's time marker,
  which the queue resolves once a valid time is known.
* A non-critical event is sent with `engine.request` when online and registered; otherwise it
  is only logged to the file (OCPP: non-critical events need not be queued).

Log lines: {"timestamp", "type", "techInfo", "critical"}, one JSON object each, UTC timestamps
(the engine's time when valid, else the system clock, which may be wrong before NTP). The file
is rotated by size like the message log: `security.log` -> `.1` -> `.2`, the oldest dropped.
Recording never raises for I/O trouble: a file or queue failure is logged and the rest still
happens. Not thread-safe for writing: call `record` from the event loop. Reading
(`read_security_log`) may run in any thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from service.ocpp.engine import Outcome
from service.station.clock import format_iso, parse_iso

__all__ = [
    "ACTION",
    "DEFAULT_BACKUPS",
    "DEFAULT_MAX_BYTES",
    "LOG_NAME",
    "SecurityEvents",
    "read_security_log",
    "security_log_files",
]

log = logging.getLogger("evsed.security")

ACTION = "SecurityEventNotification"
LOG_NAME = "security.log"
DEFAULT_MAX_BYTES = 1024 * 1024
DEFAULT_BACKUPS = 2
MAX_TYPE_LENGTH = 50  # SecurityEventNotification.type: string[0..50] in both versions
MAX_TECH_INFO_LENGTH = 255  # techInfo: string[0..255] in both versions
MAX_LOGGED_TECH_INFO = 4096  # the file keeps more detail than the message, but bounded


class SecurityEngine(Protocol):
    """What SecurityEvents needs of service.ocpp.engine.Engine."""

    def timestamp(self) -> str: ...
    def now_iso(self) -> str | None: ...
    def enqueue(
        self,
        action: str,
        payload: dict[str, Any],
        *,
        transaction: bool,
        tx_ref: str | None = ...,
        any_version: bool = ...,
    ) -> str: ...
    def request(
        self,
        action: str,
        payload: dict[str, Any],
        on_done: Callable[[Outcome], None] | None = ...,
    ) -> bool: ...


def security_log_files(path: Path, backups: int = DEFAULT_BACKUPS) -> list[Path]:
    """The log and its rotated copies that exist, oldest first."""
    candidates = [path.with_name(f"{path.name}.{i}") for i in range(backups, 0, -1)] + [path]
    return [p for p in candidates if p.is_file()]


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)  # naive: UTC, as everything in OCPP


def _lines(path: Path) -> Iterator[bytes]:
    try:
        with path.open("rb") as handle:
            yield from handle
    except FileNotFoundError:
        return  # rotated away between listing and opening


def read_security_log(
    path: Path,
    start: datetime | None = None,
    stop: datetime | None = None,
    *,
    backups: int = DEFAULT_BACKUPS,
) -> list[dict[str, Any]]:
    """The events logged in [start, stop] (either end open when None), oldest first.

    Reads the rotated copies too. A line that is not a JSON object with a parseable
    timestamp is skipped with a warning (a torn last line after a power cut, say), except that
    with no window at all every JSON object is returned. Raises ValueError when start > stop.
    """
    start, stop = _aware(start), _aware(stop)
    if start is not None and stop is not None and start > stop:
        raise ValueError(f"start {start.isoformat()} is after stop {stop.isoformat()}")
    low = start.timestamp() if start is not None else None
    high = stop.timestamp() if stop is not None else None
    events: list[dict[str, Any]] = []
    skipped = 0
    for file in security_log_files(path, backups):
        for raw in _lines(file):
            if not raw.strip():
                continue
            try:
                event = json.loads(raw)
            except ValueError:
                skipped += 1
                continue
            if not isinstance(event, dict):
                skipped += 1
                continue
            if low is None and high is None:
                events.append(event)
                continue
            stamp = event.get("timestamp")
            when = parse_iso(stamp) if isinstance(stamp, str) else None
            if when is None:
                skipped += 1
                continue
            if (low is None or when >= low) and (high is None or when <= high):
                events.append(event)
    if skipped:
        log.warning("security log %s: skipped %d unreadable line(s)", path, skipped)
    return events


class SecurityEvents:
    """Records security events: to the security log file, and to the CSMS."""

    def __init__(
        self,
        path: Path,
        engine: SecurityEngine,
        clock: Callable[[], float] = time.time,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        backups: int = DEFAULT_BACKUPS,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
        if backups < 0:
            raise ValueError(f"backups must be >= 0, got {backups}")
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._engine = engine
        self._clock = clock

    # ------------------------------------------------------------------ recording

    def record(self, type: str, tech_info: str = "", *, critical: bool = True) -> None:
        """Log the event and send it (critical: durably queued; else: now, if online).

        `type` is the OCPP security event type (1..50 characters, e.g. "FirmwareUpdated",
        "InvalidFirmwareSignature"); a bad one is a programming error and raises ValueError.
        `tech_info` is free text; the message carries its first 255 characters.
        """
        if not type or len(type) > MAX_TYPE_LENGTH:
            raise ValueError(f"security event type must be 1..{MAX_TYPE_LENGTH} characters")
        line = {
            "timestamp": self._engine.now_iso() or format_iso(self._clock()),
            "type": type,
            "techInfo": tech_info[:MAX_LOGGED_TECH_INFO],
            "critical": critical,
        }
        self._append(line)
        payload: dict[str, Any] = {"type": type, "timestamp": self._engine.timestamp()}
        if tech_info:
            payload["techInfo"] = tech_info[:MAX_TECH_INFO_LENGTH]
        if critical:
            self._enqueue(payload)
        else:
            self._send(payload)

    def _enqueue(self, payload: dict[str, Any]) -> None:
        try:
            self._engine.enqueue(ACTION, payload, transaction=False, any_version=True)
        except Exception as exc:  # a full disk or a schema problem must not stop the caller
            log.error("security event %s not queued for the CSMS: %s", payload["type"], exc)

    def _send(self, payload: dict[str, Any]) -> None:
        event_type = payload["type"]

        def done(outcome: Outcome) -> None:
            if not outcome.ok:
                log.info(
                    "security event %s not delivered: %s %s",
                    event_type,
                    outcome.error_code,
                    outcome.error_description,
                )

        try:
            sent = self._engine.request(ACTION, payload, done)
        except Exception as exc:
            log.error("security event %s not sent: %s", event_type, exc)
            return
        if not sent:
            log.info("security event %s not sent (offline); kept in the security log", event_type)

    def _append(self, line: dict[str, Any]) -> None:
        data = (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode(
            "utf-8", "backslashreplace"
        )
        try:
            self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                size = self.path.stat().st_size
                if size and size + len(data) > self.max_bytes:
                    self._rotate()
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
            fd = os.open(self.path, flags, 0o640)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)  # rare events, and the point of this file is that they stay
            finally:
                os.close(fd)
        except OSError as exc:
            log.error("security log %s: cannot record %s: %s", self.path, line["type"], exc)

    def _rotate(self) -> None:
        if self.backups == 0:
            os.truncate(self.path, 0)
            return
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))

    # ------------------------------------------------------------------ reading

    def read(
        self, start: datetime | None = None, stop: datetime | None = None
    ) -> list[dict[str, Any]]:
        """The logged events in [start, stop], oldest first (see `read_security_log`)."""
        return read_security_log(self.path, start, stop, backups=self.backups)
