"""Process logging: the root handler, journald's native protocol, and readable stderr lines.

Under systemd with stderr connected to the journal (`JOURNAL_STREAM` names stderr's device and
inode), records go to journald as native-protocol datagrams so that structured OCPP fields
(`OCPP_ACTION=`, `EVSE_ID=` …) can be filtered with `journalctl OCPP_ACTION=BootNotification`.
Anywhere else they are one readable line each on stderr.

Callers attach structured fields with `extra=log_fields(...)`:

    log.info("sent", extra=log_fields(action="BootNotification", message_id=mid))

Entries too large for one datagram (EMSGSIZE) are passed as a sealed memfd, the same way
libsystemd's `sd_journal_send` does, so nothing is truncated. A record that cannot be delivered
to journald at all is written to stderr instead (with one warning per outage): logging must
never crash or stall the daemon.
"""

from __future__ import annotations

import array
import errno
import fcntl
import logging
import os
import socket
import sys
import time
from collections.abc import Mapping
from enum import StrEnum
from typing import TextIO

__all__ = [
    "DEFAULT_JOURNAL_SOCKET",
    "JournalHandler",
    "TextFormatter",
    "encode_field",
    "journal_stream_matches",
    "log_fields",
    "reset_logging",
    "setup_logging",
    "should_use_journal",
    "syslog_priority",
    "utc_timestamp",
]

DEFAULT_JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_IDENTIFIER = "evsed"

# LogRecord attribute (set through `extra=`) -> journal field name. Order is the order of the
# bracketed suffix on stderr lines.
STRUCTURED_FIELDS: Mapping[str, str] = {
    "ocpp_action": "OCPP_ACTION",
    "ocpp_message_id": "OCPP_MESSAGE_ID",
    "ocpp_direction": "OCPP_DIRECTION",
    "evse_id": "EVSE_ID",
    "connector_id": "CONNECTOR_ID",
    "transaction_id": "TRANSACTION_ID",
    "error_code": "ERROR_CODE",
    "event_id": "MESSAGE_ID",
}


class LogEvent(StrEnum):
    """journald MESSAGE_IDs of the events operators search for (`journalctl MESSAGE_ID=...`).

    Fixed forever once released; README lists them.
    """

    STARTED = "d1e26bf36c584a8696699daabbb9a821"  # daemon started
    CONNECTED = "ee163e6b3a664bdf9963dec7d583b185"  # websocket to the CSMS open
    DISCONNECTED = "3d5ed35faeae47f7ae51cfe0c2804a54"  # websocket closed or lost
    REGISTRATION = "fc9ef897694c4e63b68bef31ccc08fe2"  # BootNotification answered
    SESSION_STARTED = "8d16902cf9474e239388dc2782b697e3"  # transaction started
    SESSION_STOPPED = "a4f32b3374544f35815f99bd42109e46"  # transaction stopped
    FAULT = "734e75e2599b47598bbcc6cc9920176a"  # connector fault raised
    FAULT_CLEARED = "48347dce9cb34dd0acc1444bc30d2523"  # connector fault cleared
    FIRMWARE = "6d4567e8be174d339cfc9d5dc33d50e0"  # firmware update step


_LEVELS: Mapping[str, int] = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
}

# A hung journald must not stall the event loop for long; past this the record goes to stderr.
_SEND_TIMEOUT = 1.0


def log_fields(
    *,
    action: str | None = None,
    message_id: str | None = None,
    evse_id: int | None = None,
    transaction_id: str | None = None,
    connector_id: int | None = None,
    direction: str | None = None,
    error_code: str | None = None,
    event: LogEvent | None = None,
) -> dict[str, object]:
    """The `extra=` dict for a log call; only the fields given are present."""
    values: dict[str, object | None] = {
        "error_code": error_code,
        "event_id": event.value if event is not None else None,
        "ocpp_action": action,
        "ocpp_message_id": message_id,
        "ocpp_direction": direction,
        "evse_id": evse_id,
        "connector_id": connector_id,
        "transaction_id": transaction_id,
    }
    return {key: value for key, value in values.items() if value is not None}


def utc_timestamp(seconds: float) -> str:
    """`2026-11-23T17:40:01.123Z` for a POSIX time (millisecond precision, truncated)."""
    whole = int(seconds)
    millis = int((seconds - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def syslog_priority(levelno: int) -> int:
    """Syslog priority (0 emerg … 7 debug) for a logging level number."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def journal_stream_matches(value: str | None, fd: int = 2) -> bool:
    """Whether a `JOURNAL_STREAM` value ("DEV:INO") names the file open on `fd`.

    systemd sets the variable for a service whose stdout/stderr go to the journal; comparing it
    with the descriptor tells whether stderr is still that stream (it is not once redirected).
    """
    if not value:
        return False
    dev_text, sep, ino_text = value.partition(":")
    if not sep:
        return False
    try:
        dev, ino = int(dev_text), int(ino_text)
        st = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return st.st_dev == dev and st.st_ino == ino


def should_use_journal(environ: Mapping[str, str] | None = None, *, stderr_fd: int = 2) -> bool:
    """Whether to log through journald: stderr is the journal stream systemd gave us."""
    env = os.environ if environ is None else environ
    return journal_stream_matches(env.get("JOURNAL_STREAM"), stderr_fd)


def encode_field(name: str, value: str | bytes) -> bytes:
    """One field in journald's native protocol.

    Values with a newline use the binary-safe form: NAME, newline, 64-bit little-endian length,
    the raw bytes, newline. Others are `NAME=value` and a newline.
    """
    data = value if isinstance(value, bytes) else value.encode("utf-8", "backslashreplace")
    key = name.encode("ascii")
    if b"\n" in data:
        return key + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
    return key + b"=" + data + b"\n"


def _structured(record: logging.LogRecord) -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = []
    for attr in STRUCTURED_FIELDS:
        value = record.__dict__.get(attr)
        if value is not None:
            found.append((attr, value))
    return found


class TextFormatter(logging.Formatter):
    """`2026-11-23T17:40:01.123Z INFO  evsed.transport: text [ocpp_action=X evse_id=1]`."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        extras = [f for f in _structured(record) if f[0] != "event_id"]
        if extras:
            message += " [" + " ".join(f"{key}={value}" for key, value in extras) + "]"
        line = f"{utc_timestamp(record.created)} {record.levelname:<5} {record.name}: {message}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JournalHandler(logging.Handler):
    """Writes records to journald's native socket; never raises from `emit`.

    The socket is unconnected and each entry is sent with `sendto`, so a journald restart needs
    no reconnect. Failures put the record on the fallback stream (stderr by default) and print
    one warning there until a send succeeds again.
    """

    def __init__(
        self,
        socket_path: str = DEFAULT_JOURNAL_SOCKET,
        *,
        identifier: str = SYSLOG_IDENTIFIER,
        fallback: TextIO | None = None,
        level: int = logging.NOTSET,
    ) -> None:
        super().__init__(level)
        self.socket_path = socket_path
        self.identifier = identifier
        self._fallback = fallback
        self._fallback_formatter = TextFormatter()
        self._failing = False
        self._sock: socket.socket | None = None

    def _socket(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.settimeout(_SEND_TIMEOUT)
            self._sock = sock
        return self._sock

    def encode(self, record: logging.LogRecord) -> bytes:
        """The whole native-protocol entry for one record."""
        parts = [
            encode_field("MESSAGE", self.format(record)),
            encode_field("PRIORITY", str(syslog_priority(record.levelno))),
            encode_field("SYSLOG_IDENTIFIER", self.identifier),
            encode_field("CODE_FILE", record.pathname),
            encode_field("CODE_LINE", str(record.lineno)),
            encode_field("CODE_FUNC", record.funcName or ""),
            encode_field("LOGGER", record.name),
            encode_field("THREAD_NAME", record.threadName or ""),
        ]
        for attr, value in _structured(record):
            parts.append(encode_field(STRUCTURED_FIELDS[attr], str(value)))
        return b"".join(parts)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._send(self.encode(record))
        except Exception as exc:  # a logging failure must never reach the caller
            self._fall_back(record, exc)
        else:
            self._failing = False

    def _send(self, data: bytes) -> None:
        sock = self._socket()
        try:
            sock.sendto(data, self.socket_path)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_memfd(sock, data)

    def _send_memfd(self, sock: socket.socket, data: bytes) -> None:
        # journald maps a sealed memfd directly; an unsealed one it would reject.
        fd = os.memfd_create("evsed-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())]
            sock.sendmsg([], rights, 0, self.socket_path)
        finally:
            os.close(fd)

    def _fall_back(self, record: logging.LogRecord, exc: BaseException) -> None:
        stream = self._fallback if self._fallback is not None else sys.stderr
        try:
            if not self._failing:
                self._failing = True
                stream.write(
                    f"{utc_timestamp(time.time())} WARNING evsed.journal: cannot write to "
                    f"journal socket {self.socket_path} ({exc!r}); logging to stderr\n"
                )
            stream.write(self._fallback_formatter.format(record) + "\n")
            stream.flush()
        except Exception:
            pass  # nowhere left to report to

    def close(self) -> None:
        self.acquire()
        try:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
        finally:
            self.release()
        super().close()


_installed: list[logging.Handler] = []


def reset_logging() -> None:
    """Remove and close the handlers `setup_logging` installed (tests, re-configuration)."""
    root = logging.getLogger()
    while _installed:
        handler = _installed.pop()
        root.removeHandler(handler)
        handler.close()


def setup_logging(
    level: str,
    *,
    journal_socket: str | None = None,
    stream: TextIO | None = None,
) -> None:
    """Configure the root logger once; calling again replaces what the previous call installed.

    `level` is a logging level name (case-insensitive). Logs go to journald when `journal_socket`
    is given or stderr is systemd's journal stream, else to `stream` (default: the current
    `sys.stderr`, looked up at call time so redirections are honoured) as readable lines.
    """
    levelno = _LEVELS.get(level.strip().upper())
    if levelno is None:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(_LEVELS)}")
    reset_logging()
    handler: logging.Handler
    if journal_socket is not None:
        handler = JournalHandler(journal_socket, fallback=stream)
    elif should_use_journal():
        handler = JournalHandler(DEFAULT_JOURNAL_SOCKET, fallback=stream)
    else:
        handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(levelno)
    evsed = logging.getLogger("evsed")
    evsed.setLevel(levelno)
    evsed.propagate = True
    _installed.append(handler)
