"""Loaded by the daemon only when the crash harness puts this directory on PYTHONPATH.

With EVREL_KILL_AT_COMMIT=N the process sends itself SIGKILL right after its N-th SQLite
COMMIT: a power cut exactly between two commits, the moment a crash-consistency bug needs.
Every connection the daemon opens counts. Without the variable nothing changes.
"""

from __future__ import annotations

import os
import signal
import sqlite3

_left = int(os.environ.get("EVREL_KILL_AT_COMMIT", "0") or 0)

if _left > 0:
    _connect = sqlite3.connect

    class _Connection(sqlite3.Connection):
        def execute(self, sql: str, *args: object) -> sqlite3.Cursor:  # type: ignore[override]
            global _left
            cursor = super().execute(sql, *args)  # type: ignore[arg-type]
            if sql.lstrip()[:6].upper() == "COMMIT":
                _left -= 1
                if _left == 0:
                    os.kill(os.getpid(), signal.SIGKILL)
            return cursor

    def connect(*args: object, **kwargs: object) -> sqlite3.Connection:
        kwargs.setdefault("factory", _Connection)
        return _connect(*args, **kwargs)  # type: ignore[arg-type]

    sqlite3.connect = connect  # type: ignore[assignment]
