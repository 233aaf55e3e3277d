"""Persistence of open sessions, so a power cut can be answered after the restart.

A row exists from authorization to the end of the session; `started` marks a transaction. The
last meter reading is refreshed while charging (at most every 15 s and at every periodic
sample), which is what a StopTransaction with reason PowerLoss reports after a restart.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from dataclasses import dataclass

from service.station.model import Session
from service.store.db import Database


@dataclass(frozen=True, slots=True)
class StoredSession:
    session: Session
    last_meter_wh: float | None
    last_time: str | None


class SessionStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def atomic(self) -> AbstractContextManager[None]:
        """One commit for a change of a session row and the transaction messages queued with
        it (the queue lives in the same database): a power cut between the two would
        otherwise lose the StartTransaction or send a second StopTransaction."""
        return self._db.transaction()

    def save(self, session: Session) -> None:
        with self._db.transaction():
            self._db.execute(
                "INSERT INTO sessions (session_id, evse_id, id_tag, started, meter_start_wh, "
                "start_time, data) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(session_id) DO UPDATE SET id_tag = excluded.id_tag, "
                "started = excluded.started, meter_start_wh = excluded.meter_start_wh, "
                "start_time = excluded.start_time, data = excluded.data",
                (
                    session.session_id,
                    session.evse_id,
                    session.id_tag,
                    int(session.started),
                    session.meter_start_wh,
                    session.start_timestamp,
                    json.dumps(session.to_data()),
                ),
            )

    def update_meter(self, session_id: str, energy_wh: float, timestamp: str) -> None:
        with self._db.transaction():
            self._db.execute(
                "UPDATE sessions SET last_meter_wh = ?, last_time = ? WHERE session_id = ?",
                (energy_wh, timestamp, session_id),
            )

    def delete(self, session_id: str) -> None:
        with self._db.transaction():
            self._db.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))

    def load_all(self) -> list[StoredSession]:
        rows = self._db.query_all(
            "SELECT session_id, evse_id, id_tag, started, meter_start_wh, start_time, "
            "last_meter_wh, last_time, data FROM sessions ORDER BY rowid"
        )
        result = []
        for row in rows:
            data = json.loads(row["data"] or "{}")
            session = Session(
                session_id=row["session_id"],
                evse_id=int(row["evse_id"]),
                id_tag=row["id_tag"],
                started=bool(row["started"]),
                meter_start_wh=float(row["meter_start_wh"] or 0.0),
                start_timestamp=row["start_time"] or "",
                parent_id_tag=data.get("parent_id_tag"),
                id_token_type=_text(data.get("id_token_type")),
                authorized=bool(data.get("authorized", False)),
                remote=bool(data.get("remote", False)),
                transaction_id=data.get("transaction_id"),
            )
            last = row["last_meter_wh"]
            result.append(
                StoredSession(session, None if last is None else float(last), row["last_time"])
            )
        return result


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
