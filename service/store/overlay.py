"""Persisted run-time state: the CSMS's configuration overlay and small key/value facts.

:class:`ConfigOverlay` holds configuration values the CSMS changed at run time
(ChangeConfiguration / SetVariables). They are laid over the settings read from /etc/evsed,
which evsed never rewrites. :class:`KeyValueState` holds small facts that must survive a
restart: registration status, boot counter, local list version and the like. Values are
strings; callers encode anything else. Each write is one durable commit.
"""

from __future__ import annotations

from service.store.db import Database


def _check_str(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    return value


class ConfigOverlay:
    """Run-time configuration values set by the CSMS (table ``config_overlay``)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def get_all(self) -> dict[str, str]:
        rows = self._db.query_all("SELECT key, value FROM config_overlay ORDER BY key")
        return {str(row["key"]): str(row["value"]) for row in rows}

    def get(self, key: str) -> str | None:
        row = self._db.query_one("SELECT value FROM config_overlay WHERE key = ?", (key,))
        return None if row is None else str(row["value"])

    def set(self, key: str, value: str, now: float) -> None:
        """Store ``value`` for ``key``; ``now`` (unix seconds) is kept as ``updated_at``."""
        _check_str("key", key)
        _check_str("value", value)
        self._db.execute(
            "INSERT INTO config_overlay (key, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
            "updated_at = excluded.updated_at",
            (key, value, float(now)),
        )

    def delete(self, key: str) -> bool:
        """Forget ``key`` (the /etc value applies again); False if it was not set."""
        cursor = self._db.execute("DELETE FROM config_overlay WHERE key = ?", (key,))
        return cursor.rowcount > 0


class KeyValueState:
    """Small persisted facts (table ``kv``)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def get(self, key: str) -> str | None:
        row = self._db.query_one("SELECT value FROM kv WHERE key = ?", (key,))
        return None if row is None else str(row["value"])

    def set(self, key: str, value: str) -> None:
        _check_str("key", key)
        _check_str("value", value)
        self._db.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def delete(self, key: str) -> bool:
        """Forget ``key``; False if it was not set."""
        cursor = self._db.execute("DELETE FROM kv WHERE key = ?", (key,))
        return cursor.rowcount > 0
