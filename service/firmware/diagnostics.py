"""Diagnostics archives for log uploads (1.6 GetDiagnostics, 1.6 security / 2.0.1 GetLog).

`build_archive()` writes one .tar.gz for a time window [start, stop] (either end open):

    manifest.json     what is inside, the window, and notes on anything missing or cut
    journal.jsonl     evsed's journald records (`journalctl -o json SYSLOG_IDENTIFIER=evsed`)
    messages/         the OCPP message logs (ocpp.log and its rotated copies) that overlap
                      the window, whole files
    config/           the configuration files read at start, secrets redacted
    database.txt      integrity check, schema version, queue length per kind, open sessions
    security.log      the security events of the window (JSON lines)

For log type "SecurityLog" only security.log and manifest.json. Anything that cannot be
collected (journalctl missing or failing, an unreadable file) becomes a note in the manifest
(and, for the journal, a journal-error.txt member) rather than an exception: a partial archive
is worth more to the CSMS than none.

It blocks (callers use asyncio.to_thread) and writes only inside the directory of `dest`: the
archive goes to a hidden part file there and is renamed into place when complete. The database
is read through a second, read-only SQLite connection, because the daemon's connection belongs
to the event loop's thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import sqlite3
import subprocess
import tarfile
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from datetime import time as day_time
from pathlib import Path
from typing import IO, Any

from service.config import Settings
from service.msglog import LOG_NAME as MESSAGE_LOG_NAME
from service.security_events import read_security_log
from service.station.clock import parse_iso
from service.store.db import Database

__all__ = [
    "LOG_TYPES",
    "REDACTED",
    "build_archive",
    "journal_namespace",
    "redact_toml",
    "redact_toml_lines",
]

LOG_TYPES = ("DiagnosticsLog", "SecurityLog")
REDACTED = "***REDACTED***"
SECRET_WORDS = ("password", "key", "secret", "token", "authorization")
# Names that contain a secret word but hold no secret (an RFID reader is a token reader).
NOT_SECRET = frozenset({"token_reader"})
JOURNAL_TIMEOUT_S = 120.0
MAX_NOTE_CHARS = 4000
MAX_INTEGRITY_LINES = 20
ARCHIVE_MODE = 0o640  # message logs carry id tags: not world-readable

_JOURNAL_NAMESPACE = re.compile(r"^/run/systemd/journal\.([A-Za-z0-9_.:-]+)/[^/]+$")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^/\s@]*@")
_ASSIGNMENT = re.compile(r"^(?P<indent>\s*)(?P<key>[^=\[\]#]+?)\s*=\s*(?P<value>.*)$")
_HEADER = re.compile(r"^\s*\[\[?\s*(?P<name>[^\]]+?)\s*\]\]?\s*(#.*)?$")
_INLINE = re.compile(
    r"(?P<key>[A-Za-z0-9_-]+|\"[^\"]*\")\s*=\s*"
    r"(?P<value>\"(?:[^\"\\]|\\.)*\"|'[^']*'|[^,}\]\s]+)"
)


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)  # naive: UTC, as everything in OCPP


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- redaction


def _sensitive(name: str) -> bool:
    lowered = name.strip().strip("\"'").lower()
    return lowered not in NOT_SECRET and any(word in lowered for word in SECRET_WORDS)


def _scrub_url(text: str) -> str:
    """A URL's password (scheme://user:password@host) replaced, the user name kept."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{REDACTED}@", text)


def _redact_value(value: Any, secret: bool) -> Any:
    if isinstance(value, dict):
        return {k: _redact_value(v, secret or _sensitive(k)) for k, v in value.items()}
    if isinstance(value, list):
        if secret and not any(isinstance(v, dict) for v in value):
            return REDACTED
        return [_redact_value(v, secret) for v in value]
    if secret:
        return REDACTED
    if isinstance(value, str):
        return _scrub_url(value)
    return value


def redact_toml(data: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a parsed TOML document with every value under a secret-looking key (and every
    value of a table with such a name) replaced by REDACTED, and URL passwords removed."""
    return {k: _redact_value(v, _sensitive(k)) for k, v in data.items()}


def _key_parts(key: str) -> list[str]:
    return [part.strip() for part in key.split(".")]


def _unclosed(value: str) -> str | None:
    """The delimiter that ends a value continuing on later lines, or None."""
    for quote in ('"""', "'''"):
        if value.startswith(quote) and value.count(quote) == 1:
            return quote
    if value.startswith("[") and value.count("[") > value.count("]"):
        return "]"
    return None


def redact_toml_lines(text: str) -> str:
    """Best-effort redaction of a file that is not valid TOML, line by line.

    An assignment whose key (any dotted part), or whose table header, has a secret-looking
    name gets REDACTED as its value, a multi-line string or array included; secret keys in
    inline tables are redacted in place; commented-out assignments are treated the same.
    """
    out: list[str] = []
    closing: str | None = None
    table_secret = False
    for line in text.splitlines():
        if closing is not None:
            if closing in line:
                closing = None
            out.append(f"# {REDACTED} (continued)")
            continue
        body = line.lstrip()
        prefix = line[: len(line) - len(body)]
        while body.startswith("#"):
            prefix += "#"
            body = body[1:]
        comment = prefix.endswith("#")
        header = _HEADER.match(body)
        if header is not None and not comment:
            table_secret = any(_sensitive(p) for p in _key_parts(header.group("name")))
            out.append(line)
            continue
        assignment = _ASSIGNMENT.match(body)
        if assignment is not None:
            key = assignment.group("key")
            value = assignment.group("value")
            if (table_secret and not comment) or any(_sensitive(p) for p in _key_parts(key)):
                if not comment:
                    closing = _unclosed(value.strip())
                out.append(f'{prefix}{assignment.group("indent")}{key} = "{REDACTED}"')
                continue

        def inline(match: re.Match[str]) -> str:
            if _sensitive(match.group("key")):
                return f'{match.group("key")} = "{REDACTED}"'
            return match.group(0)

        out.append(_scrub_url(prefix + _INLINE.sub(inline, body)))
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


# --------------------------------------------------------------------------- TOML output


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_string(key)


def _toml_string(text: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes; TOML also forbids a raw DEL.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007F")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, datetime | date | day_time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + items + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _emit_table(path: list[str], table: Mapping[str, Any], out: list[str]) -> None:
    for key, value in table.items():
        if not isinstance(value, dict) and not _table_array(value):
            out.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in table.items():
        dotted = ".".join(_toml_key(p) for p in [*path, key])
        if isinstance(value, dict):
            out.extend(["", f"[{dotted}]"])
            _emit_table([*path, key], value, out)
        elif _table_array(value):
            for item in value:
                out.extend(["", f"[[{dotted}]]"])
                _emit_table([*path, key], item, out)


def toml_text(data: Mapping[str, Any]) -> str:
    """`data` (as tomllib returns it) written as TOML."""
    out: list[str] = []
    _emit_table([], data, out)
    return "\n".join(out).lstrip("\n") + "\n"


def _redacted_config(path: Path) -> tuple[bytes, str | None]:
    """The redacted file, and a note when it could not be parsed."""
    text = path.read_bytes().decode("utf-8", "replace")
    header = f"# {path}, secrets redacted"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        body = redact_toml_lines(text)
        note = f"config {path}: not valid TOML ({exc}); redacted line by line"
        return (f"{header} line by line (not valid TOML)\n{body}").encode(), note
    body = toml_text(redact_toml(data))
    return (f"{header}; comments and layout not kept\n{body}").encode(), None


# --------------------------------------------------------------------------- collecting


def journal_namespace(socket_path: str) -> str | None:
    """The journald namespace a native socket path belongs to (/run/systemd/journal.NAME/...),
    or None for the default journal (or a socket of no namespace)."""
    match = _JOURNAL_NAMESPACE.match(socket_path)
    return match.group(1) if match else None


def journal_command(
    settings: Settings,
    start: datetime | None,
    stop: datetime | None,
    journalctl: str = "journalctl",
) -> list[str]:
    argv = [journalctl, "-o", "json", "--no-pager", "-q"]
    namespace = journal_namespace(settings.logging.journal_socket)
    if namespace is not None:
        argv.append(f"--namespace={namespace}")
    if start is not None:
        argv.append(f"--since=@{start.timestamp():.6f}")
    if stop is not None:
        argv.append(f"--until=@{stop.timestamp():.6f}")
    argv.append("SYSLOG_IDENTIFIER=evsed")
    return argv


def _message_log_start(path: Path) -> float | None:
    """The time of a message log's first line, or None when unreadable."""
    try:
        with path.open("rb") as handle:
            first = handle.readline(200)
    except OSError:
        return None
    stamp = first.split(b" ", 1)[0].decode("ascii", "replace")
    return parse_iso(stamp) if stamp else None


def _message_logs(directory: Path) -> list[Path]:
    """ocpp.log and its rotated copies, oldest first."""
    rotated: list[tuple[int, Path]] = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return []
    current: Path | None = None
    for entry in entries:
        if entry.name == MESSAGE_LOG_NAME:
            current = entry
        elif entry.name.startswith(MESSAGE_LOG_NAME + "."):
            suffix = entry.name[len(MESSAGE_LOG_NAME) + 1 :]
            if suffix.isdigit():
                rotated.append((int(suffix), entry))
    files = [p for _, p in sorted(rotated, reverse=True)]
    if current is not None:
        files.append(current)
    return [p for p in files if p.is_file()]


def _overlaps(path: Path, start: datetime | None, stop: datetime | None) -> bool:
    """Whether the file may hold lines inside the window: its first line's time is not after
    stop, and its last write (mtime) not before start."""
    if stop is not None:
        first = _message_log_start(path)
        if first is not None and first > stop.timestamp():
            return False
    if start is not None:
        try:
            if path.stat().st_mtime < start.timestamp():
                return False
        except OSError:
            return False
    return True


def database_report(path: Path) -> str:
    """integrity_check, schema version, queue length per kind, open sessions, file sizes."""
    lines = [f"database: {path}"]
    for suffix in ("", "-wal"):
        try:
            lines.append(f"size{suffix}: {os.stat(f'{path}{suffix}').st_size} bytes")
        except OSError as exc:
            lines.append(f"size{suffix}: unknown ({exc.strerror or exc})")
    try:
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0, check_same_thread=False
        )
    except sqlite3.Error as exc:
        lines.append(f"cannot open read-only: {exc}")
        return "\n".join(lines) + "\n"
    try:

        def query(title: str, sql: str, show: Callable[[list[tuple[Any, ...]]], str]) -> None:
            try:
                rows = [tuple(r) for r in conn.execute(sql).fetchall()]
            except sqlite3.Error as exc:
                lines.append(f"{title}: error: {exc}")
                return
            lines.append(f"{title}: {show(rows)}")

        def integrity(rows: list[tuple[Any, ...]]) -> str:
            texts = [str(r[0]) for r in rows]
            shown = "; ".join(texts[:MAX_INTEGRITY_LINES])
            more = len(texts) - MAX_INTEGRITY_LINES
            return shown + (f"; ... {more} more" if more > 0 else "")

        query("integrity_check", "PRAGMA integrity_check", integrity)
        query("user_version", "PRAGMA user_version", lambda rows: str(rows[0][0]))
        query(
            "queued messages",
            "SELECT kind, COUNT(*) FROM outbound_queue GROUP BY kind ORDER BY kind",
            lambda rows: ", ".join(f"{k} {n}" for k, n in rows) or "none",
        )
        query("open sessions", "SELECT COUNT(*) FROM sessions", lambda rows: str(rows[0][0]))
    finally:
        conn.close()
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the archive


class _FixedSize(io.RawIOBase):
    """Exactly `size` bytes of an open file: a file that shrank meanwhile (truncated by
    rotation) is padded with newlines, so the tar member stays well formed."""

    def __init__(self, handle: IO[bytes], size: int) -> None:
        super().__init__()
        self._handle = handle
        self._left = size
        self.padded = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        want = self._left if size < 0 else min(size, self._left)
        data = self._handle.read(want) if want else b""
        if len(data) < want:
            self.padded += want - len(data)
            data += b"\n" * (want - len(data))
        self._left -= len(data)
        return data


@dataclass
class _Archive:
    tar: tarfile.TarFile
    mtime: float
    files: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def _info(self, name: str, size: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mtime = int(self.mtime)
        info.mode = ARCHIVE_MODE
        return info

    def add_bytes(self, name: str, data: bytes) -> None:
        self.tar.addfile(self._info(name, len(data)), io.BytesIO(data))
        self.files.append(
            {"name": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        )

    def add_manifest(self, fields: dict[str, Any]) -> None:
        manifest = {**fields, "files": self.files, "notes": self.notes}
        text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
        self.add_bytes("manifest.json", text.encode())

    def add_file(self, name: str, path: Path) -> None:
        try:
            handle = path.open("rb")
        except OSError as exc:
            self.notes.append(f"{name}: cannot read {path}: {exc.strerror or exc}")
            return
        with handle:
            size = os.fstat(handle.fileno()).st_size  # what exists now; later lines are not
            reader = _FixedSize(handle, size)
            self.tar.addfile(self._info(name, size), reader)
        entry: dict[str, Any] = {"name": name, "bytes": size, "source": str(path)}
        if reader.padded:
            entry["padded"] = reader.padded
            self.notes.append(f"{name}: {path} shrank while being read; padded")
        self.files.append(entry)


def _config_names(files: tuple[Path, ...]) -> Iterator[tuple[str, Path]]:
    """config/<name> per source file: relative to the main file's directory when below it."""
    if not files:
        return
    base = files[0].parent
    used: set[str] = set()
    for index, path in enumerate(files):
        try:
            name = path.relative_to(base).as_posix()
        except ValueError:
            name = path.name
        if name in used or name.startswith("..") or not name:
            name = f"{index}-{path.name}"
        used.add(name)
        yield f"config/{name}", path


def _add_journal(
    archive: _Archive,
    scratch: Path,
    settings: Settings,
    start: datetime | None,
    stop: datetime | None,
    journalctl: str,
) -> None:
    argv = journal_command(settings, start, stop, journalctl)
    problem: str | None = None
    stderr = b""
    try:
        with scratch.open("wb") as out:
            os.chmod(scratch, 0o600)
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.PIPE,
                timeout=JOURNAL_TIMEOUT_S,
                check=False,
            )
        stderr = result.stderr
        if result.returncode != 0:
            problem = f"journalctl exited with status {result.returncode}"
    except FileNotFoundError:
        problem = f"{journalctl} is not installed"
    except subprocess.TimeoutExpired as exc:
        problem = f"journalctl did not finish within {JOURNAL_TIMEOUT_S:g} s"
        stderr = exc.stderr or b""
    except OSError as exc:
        problem = f"cannot run journalctl: {exc.strerror or exc}"
    detail = stderr.decode("utf-8", "replace").strip()[:MAX_NOTE_CHARS]
    if problem is not None:
        text = f"{problem}\ncommand: {' '.join(argv)}\n" + (
            f"stderr:\n{detail}\n" if detail else ""
        )
        archive.add_bytes("journal-error.txt", text.encode())
        archive.notes.append(f"journal: {problem} (see journal-error.txt)")
        return
    if detail:  # e.g. "No journal files were opened due to insufficient permissions."
        archive.notes.append(f"journal: journalctl said: {detail}")
    archive.add_file("journal.jsonl", scratch)


def _add_messages(
    archive: _Archive, settings: Settings, start: datetime | None, stop: datetime | None
) -> None:
    directory = settings.paths.message_log_directory
    if directory is None:
        archive.notes.append("messages: the OCPP message log is off (paths.message_log_directory)")
        return
    files = _message_logs(directory)
    chosen = [p for p in files if _overlaps(p, start, stop)]
    if not files:
        archive.notes.append(f"messages: no message log in {directory}")
    elif not chosen:
        archive.notes.append(f"messages: no message log of {directory} overlaps the window")
    for path in chosen:
        archive.add_file(f"messages/{path.name}", path)


def _add_config(archive: _Archive, settings: Settings) -> None:
    if not settings.source_files:
        archive.notes.append("config: no configuration files recorded")
    for name, path in _config_names(settings.source_files):
        try:
            data, note = _redacted_config(path)
        except OSError as exc:
            archive.notes.append(f"{name}: cannot read {path}: {exc.strerror or exc}")
            continue
        if note is not None:
            archive.notes.append(note)
        archive.add_bytes(name, data)


def _security_lines(security_log: Path, start: datetime | None, stop: datetime | None) -> bytes:
    events = read_security_log(security_log, start, stop)
    return "".join(
        json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n" for e in events
    ).encode("utf-8", "backslashreplace")


def build_archive(
    dest: Path,
    *,
    log_type: str,
    start: datetime | None,
    stop: datetime | None,
    settings: Settings,
    db: Database,
    security_log: Path,
    journalctl: str = "journalctl",
) -> Path:
    """Write the diagnostics (or security) log archive for [start, stop] to `dest` (.tar.gz).

    Naive datetimes are UTC. Raises ValueError for an unknown log type, start after stop, or
    a `dest` whose directory does not exist; OSError when the archive itself cannot be written
    (disk full). Returns `dest`.
    """
    if log_type not in LOG_TYPES:
        raise ValueError(f"unknown log type {log_type!r}; expected one of {', '.join(LOG_TYPES)}")
    start, stop = _utc(start), _utc(stop)
    if start is not None and stop is not None and start > stop:
        raise ValueError(f"the window starts ({_iso(start)}) after it stops ({_iso(stop)})")
    directory = dest.parent
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory")
    if dest.is_dir():
        raise ValueError(f"{dest} is a directory")
    part = directory / f".{dest.name}.part"
    scratch = directory / f".{dest.name}.journal"
    created = time.time()
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, ARCHIVE_MODE)
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
                archive = _Archive(tar, created)
                if log_type == "DiagnosticsLog":
                    _add_journal(archive, scratch, settings, start, stop, journalctl)
                    _add_messages(archive, settings, start, stop)
                    _add_config(archive, settings)
                    archive.add_bytes("database.txt", database_report(db.path).encode())
                archive.add_bytes("security.log", _security_lines(security_log, start, stop))
                archive.add_manifest(
                    {
                        "format": 1,
                        "logType": log_type,
                        "chargePointId": settings.identity.charge_point_id,
                        "firmwareVersion": settings.identity.firmware_version,
                        "created": _iso(datetime.fromtimestamp(created, UTC)),
                        "start": _iso(start),
                        "stop": _iso(stop),
                    }
                )
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(part, dest)
    finally:
        for leftover in (part, scratch):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    return dest
