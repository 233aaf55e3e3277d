"""The OCPP message log: every frame in and out, one line each, in a size-rotated file.

Line format: `<UTC time with ms> <direction> <frame>`, direction `in`, `out` or `--` for
connection events, and an optional ` # <note>` at the end. CR and LF inside a frame are written
as `\\r` / `\\n` so one frame is always one line (OCPP-J frames never contain raw newlines; a
malformed one from the wire might).

This sits on the hot path: one `os.write` per frame on an O_APPEND descriptor, no buffering to
flush and no fsync; a disabled log (no directory) returns at the first test. Rotation follows
`logging.handlers.RotatingFileHandler`: before a line would take the file past `max_bytes` it
becomes `ocpp.log.1`, older copies shift up to `ocpp.log.<backups>`, the oldest is dropped. With
`backups=0` the file is truncated instead, so the log stays bounded. Any I/O error logs one
warning and disables the log until `reopen()`; it never raises. Not thread-safe: call it from
the event loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from service.journal import utc_timestamp

__all__ = ["LOG_NAME", "MessageLog"]

LOG_NAME = "ocpp.log"

log = logging.getLogger("evsed.msglog")

_ESCAPES = str.maketrans({"\n": "\\n", "\r": "\\r"})


class MessageLog:
    def __init__(
        self,
        directory: Path | None,
        *,
        max_bytes: int,
        backups: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0 (0: never rotate), got {max_bytes}")
        if backups < 0:
            raise ValueError(f"backups must be >= 0, got {backups}")
        self.directory = directory
        self.max_bytes = max_bytes
        self.backups = backups
        self._clock = clock
        self._fd: int | None = None
        self._size = 0
        if directory is not None:
            self._open()

    @property
    def path(self) -> Path | None:
        return None if self.directory is None else self.directory / LOG_NAME

    @property
    def enabled(self) -> bool:
        """True while lines are being written (configured and no I/O error since `reopen`)."""
        return self._fd is not None

    def write(self, direction: str, frame: str, *, note: str | None = None) -> None:
        """Append one frame (`direction` is "in" or "out")."""
        if self._fd is None:
            return
        line = f"{utc_timestamp(self._clock())} {direction} {frame.translate(_ESCAPES)}"
        if note:
            line += " # " + note.translate(_ESCAPES)
        self._append((line + "\n").encode("utf-8", "backslashreplace"))

    def event(self, text: str) -> None:
        """Append a connection event (connected, closed, backoff …) with direction `--`."""
        self.write("--", text)

    def reopen(self) -> None:
        """Close and open the file again: after an I/O error, or after external rotation."""
        self.close()
        if self.directory is not None:
            self._open()

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)

    def _open(self) -> None:
        assert self.directory is not None
        try:
            self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
            # Frames carry id tokens and passwords: not world-readable.
            fd = os.open(self.directory / LOG_NAME, flags, 0o640)
        except OSError as exc:
            self._fail(exc)
            return
        try:
            self._size = os.fstat(fd).st_size
        except OSError as exc:
            os.close(fd)
            self._fail(exc)
            return
        self._fd = fd

    def _append(self, data: bytes) -> None:
        try:
            if self.max_bytes and self._size and self._size + len(data) > self.max_bytes:
                self._rotate()
                if self._fd is None:
                    return
            assert self._fd is not None
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            self._size += len(data)
        except OSError as exc:
            self._fail(exc)

    def _rotate(self) -> None:
        assert self.directory is not None
        self.close()
        current = self.directory / LOG_NAME
        if self.backups == 0:
            os.truncate(current, 0)
        else:
            for index in range(self.backups - 1, 0, -1):
                older = self.directory / f"{LOG_NAME}.{index}"
                if older.exists():
                    os.replace(older, self.directory / f"{LOG_NAME}.{index + 1}")
            os.replace(current, self.directory / f"{LOG_NAME}.1")
        self._open()

    def _fail(self, exc: OSError) -> None:
        self.close()
        log.warning(
            "OCPP message log %s disabled until reopened: %s",
            self.path,
            exc,
        )
