"""The durable outbound queue: OCPP CALLs committed to SQLite before they are sent.

Contract with the engine:

* :meth:`DurableQueue.append` commits before it returns; only then may the message go on the
  websocket. :meth:`DurableQueue.remove` is called once its CALLRESULT/CALLERROR is processed.
  A crash at any point therefore loses nothing, and resends only the head message, with the
  same message id, which the CSMS can recognise.
* Order is strict FIFO by ``seq`` across both kinds. :meth:`head` never skips a message that is
  not due yet (``not_before`` in the future); it reports "nothing due" instead.
* Kinds: ``"transaction"`` messages (StartTransaction, StopTransaction, transaction MeterValues,
  TransactionEvent) are never dropped by the queue. ``"other"`` messages (StatusNotification,
  non-transaction MeterValues, …) are capped at ``max_other``: appending one more drops the
  *oldest* ``"other"`` rows in the same transaction (they are the stalest news) and sets
  :attr:`DurableQueue.last_dropped`; a WARNING names them. With ``max_other == 0`` ``"other"``
  messages are not stored at all and :meth:`append` returns ``None`` for them.
  A dropped message may have been in flight; :meth:`remove` of a missing seq is a no-op.
* OCPP 1.6 transaction ids: a StopTransaction / MeterValues for a transaction whose
  StartTransaction has not been answered yet is enqueued with ``payload["transactionId"] =
  None`` (the placeholder) and a ``tx_ref`` (the charger's local reference).
  :meth:`set_csms_transaction_id` records the id the CSMS assigned and, in the same commit,
  patches it into every queued message of that ``tx_ref`` still holding the placeholder; later
  appends are patched on the way in. With strict FIFO a placeholder can only reach the head
  after its StartTransaction left the queue; if it was dropped unanswered the engine decides
  (see :meth:`has_pending_start`).
* Grouping: every method runs in its own transaction, which nests as a savepoint inside
  ``db.transaction()``. Answering a StartTransaction should be one commit::

      with db.transaction():
          queue.set_csms_transaction_id(tx_ref, result["transactionId"])
          queue.remove(start.seq)
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

from service.store.db import Database, StoreError

log = logging.getLogger(__name__)

MessageKind = Literal["transaction", "other"]
KINDS: tuple[MessageKind, ...] = ("transaction", "other")

TRANSACTION_ID_KEY = "transactionId"
START_TRANSACTION_ACTION = "StartTransaction"

_COLUMNS = (
    "seq, message_id, action, payload, kind, tx_ref, attempts, not_before, "
    "created_at, stamp_mono, boot_id"
)
_INSERT = (
    "INSERT INTO outbound_queue (message_id, action, payload, kind, tx_ref, not_before, "
    "created_at, stamp_mono, boot_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """One queued CALL as stored. ``payload`` is a fresh dict decoded from the row."""

    seq: int
    message_id: str
    action: str
    payload: dict[str, Any]
    kind: MessageKind
    tx_ref: str | None
    attempts: int
    not_before: float
    created_at: float = 0.0
    stamp_mono: float | None = None
    boot_id: str | None = None


def _encode(payload: dict[str, Any]) -> str:
    if not isinstance(payload, dict):
        raise TypeError(f"payload must be a dict, not {type(payload).__name__}")
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _decode(seq: int, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise StoreError(f"queued message seq {seq} has an unreadable payload: {exc}") from exc
    if not isinstance(value, dict):
        raise StoreError(f"queued message seq {seq} payload is not a JSON object")
    return value


def _check_kind(kind: object) -> MessageKind:
    if kind == "transaction":
        return "transaction"
    if kind == "other":
        return "other"
    raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")


def _check_time(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of unix seconds, not {value!r}")
    return float(value)


def _check_csms_id(value: object) -> str | int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError(f"CSMS transaction id must be str or int, not {value!r}")
    return value


def _row_to_message(row: Any) -> QueuedMessage:
    seq = int(row["seq"])
    return QueuedMessage(
        seq=seq,
        message_id=row["message_id"],
        action=row["action"],
        payload=_decode(seq, row["payload"]),
        kind=_check_kind(row["kind"]),
        tx_ref=row["tx_ref"],
        attempts=int(row["attempts"]),
        not_before=float(row["not_before"]),
        created_at=float(row["created_at"]),
        stamp_mono=None if row["stamp_mono"] is None else float(row["stamp_mono"]),
        boot_id=row["boot_id"],
    )


class DurableQueue:
    """FIFO of outbound CALLs in ``outbound_queue``; see the module docstring for the rules."""

    def __init__(self, db: Database, *, max_other: int) -> None:
        if isinstance(max_other, bool) or not isinstance(max_other, int) or max_other < 0:
            raise ValueError(f"max_other must be an int >= 0, not {max_other!r}")
        self._db = db
        self._max_other = max_other
        self.last_dropped = 0
        """How many ``"other"`` messages the latest :meth:`append` dropped to stay in the cap."""

    @property
    def max_other(self) -> int:
        return self._max_other

    # -- writing ----------------------------------------------------------------------------

    def append(
        self,
        message_id: str,
        action: str,
        payload: dict[str, Any],
        *,
        kind: MessageKind,
        tx_ref: str | None = None,
        now: float,
        stamp_mono: float | None = None,
        boot_id: str | None = None,
    ) -> QueuedMessage | None:
        """Store a CALL at the tail and commit; return it as stored.

        Returns ``None`` (and stores nothing) only for ``kind="other"`` when ``max_other`` is
        0. ``now`` is wall-clock unix seconds (``created_at``). The caller's dict is not
        modified; the returned message carries the payload as stored (possibly patched).
        Raises StoreFullError when the disk is full (nothing is stored), StoreError on a
        duplicate ``message_id``.
        """
        kind = _check_kind(kind)
        created_at = _check_time("now", now)
        self.last_dropped = 0
        if kind == "other" and self._max_other == 0:
            log.debug("not queueing %s %s: max_other is 0", action, message_id)
            return None
        dropped: list[Any] = []
        with self._db.transaction():
            if (
                tx_ref is not None
                and TRANSACTION_ID_KEY in payload
                and payload[TRANSACTION_ID_KEY] is None
            ):
                known = self.csms_transaction_id(tx_ref)
                if known is not None:
                    payload = {**payload, TRANSACTION_ID_KEY: known}
            text = _encode(payload)
            if kind == "other":
                dropped = self._make_room_for_other()
            cursor = self._db.execute(
                _INSERT,
                (
                    message_id,
                    action,
                    text,
                    kind,
                    tx_ref,
                    0.0,
                    created_at,
                    stamp_mono,
                    boot_id,
                ),
            )
            seq = cursor.lastrowid
        assert seq is not None
        if dropped:
            self.last_dropped = len(dropped)
            log.warning(
                "outbound queue holds max_other=%d non-transaction messages: dropped the %d "
                "oldest: %s",
                self._max_other,
                len(dropped),
                ", ".join(f"{r['action']}({r['message_id']})" for r in dropped),
            )
        return QueuedMessage(
            seq=seq,
            message_id=message_id,
            action=action,
            payload=_decode(seq, text),
            kind=kind,
            tx_ref=tx_ref,
            attempts=0,
            not_before=0.0,
            created_at=created_at,
            stamp_mono=stamp_mono,
            boot_id=boot_id,
        )

    def _make_room_for_other(self) -> list[Any]:
        row = self._db.query_one("SELECT COUNT(*) FROM outbound_queue WHERE kind = 'other'")
        excess = (int(row[0]) if row is not None else 0) + 1 - self._max_other
        if excess <= 0:
            return []
        victims = self._db.query_all(
            "SELECT seq, message_id, action FROM outbound_queue WHERE kind = 'other' "
            "ORDER BY seq LIMIT ?",
            (excess,),
        )
        self._db.execute(
            "DELETE FROM outbound_queue WHERE kind = 'other' AND seq <= ?",
            (int(victims[-1]["seq"]),),
        )
        return victims

    def remove(self, seq: int) -> bool:
        """Delete a message once its response is processed; False if it was already gone."""
        with self._db.transaction():
            cursor = self._db.execute("DELETE FROM outbound_queue WHERE seq = ?", (seq,))
        return cursor.rowcount > 0

    def complete(
        self,
        seq: int,
        *,
        tx_ref: str | None = None,
        csms_transaction_id: str | int | None = None,
    ) -> None:
        """The response to message `seq` was processed: remove it, in one commit with the
        CSMS transaction id it carried (a StartTransaction's), so a crash can neither lose
        the id nor resend a StartTransaction whose id is already known."""
        with self._db.transaction():
            if tx_ref is not None and csms_transaction_id is not None:
                self.set_csms_transaction_id(tx_ref, csms_transaction_id)
            self.remove(seq)

    def record_attempt(self, seq: int, *, not_before: float) -> QueuedMessage:
        """Count one more send attempt and set when the next may start (unix seconds).

        Raises KeyError if no message has this seq (it was removed or dropped).
        """
        when = _check_time("not_before", not_before)
        with self._db.transaction():
            cursor = self._db.execute(
                "UPDATE outbound_queue SET attempts = attempts + 1, not_before = ? WHERE seq = ?",
                (when, seq),
            )
            if cursor.rowcount == 0:
                raise KeyError(f"no queued message with seq {seq}")
            message = self._get(seq)
        assert message is not None
        return message

    def update_payload(self, seq: int, payload: dict[str, Any]) -> QueuedMessage:
        """Replace a queued message's payload, e.g. to correct a timestamp taken before the
        clock was set (see ``stamp_mono``/``boot_id``). Raises KeyError if seq is gone."""
        text = _encode(payload)
        with self._db.transaction():
            cursor = self._db.execute(
                "UPDATE outbound_queue SET payload = ? WHERE seq = ?", (text, seq)
            )
            if cursor.rowcount == 0:
                raise KeyError(f"no queued message with seq {seq}")
            message = self._get(seq)
        assert message is not None
        return message

    # -- CSMS transaction ids (OCPP 1.6) ----------------------------------------------------

    def set_csms_transaction_id(self, tx_ref: str, csms_tx_id: str | int) -> int:
        """Remember the CSMS id of ``tx_ref`` and patch it into queued placeholders.

        Returns how many queued messages were patched. Only a ``transactionId`` that is
        ``None`` is replaced; all of it is one commit.
        """
        value = _check_csms_id(csms_tx_id)
        encoded = json.dumps(value)
        with self._db.transaction():
            previous = self.csms_transaction_id(tx_ref)
            if previous is not None and previous != value:
                log.warning(
                    "transaction %s: CSMS id changes from %r to %r", tx_ref, previous, value
                )
            self._db.execute(
                "INSERT INTO tx_ids (tx_ref, csms_tx_id) VALUES (?, ?) "
                "ON CONFLICT (tx_ref) DO UPDATE SET csms_tx_id = excluded.csms_tx_id",
                (tx_ref, encoded),
            )
            updates: list[tuple[str, int]] = []
            for row in self._db.query_all(
                "SELECT seq, payload FROM outbound_queue WHERE tx_ref = ? ORDER BY seq",
                (tx_ref,),
            ):
                seq = int(row["seq"])
                payload = _decode(seq, row["payload"])
                if TRANSACTION_ID_KEY in payload and payload[TRANSACTION_ID_KEY] is None:
                    payload[TRANSACTION_ID_KEY] = value
                    updates.append((_encode(payload), seq))
            if updates:
                self._db.executemany("UPDATE outbound_queue SET payload = ? WHERE seq = ?", updates)
        return len(updates)

    def csms_transaction_id(self, tx_ref: str) -> str | int | None:
        """The id the CSMS assigned to ``tx_ref``, or None while unknown."""
        row = self._db.query_one("SELECT csms_tx_id FROM tx_ids WHERE tx_ref = ?", (tx_ref,))
        if row is None or row["csms_tx_id"] is None:
            return None
        value = json.loads(row["csms_tx_id"])
        return _check_csms_id(value)

    def forget_transaction(self, tx_ref: str) -> bool:
        """Drop the id mapping of a finished transaction; False if there was none.

        Refuses (StoreError) while messages of ``tx_ref`` are still queued: they may need it.
        """
        with self._db.transaction():
            if self._db.query_one(
                "SELECT 1 FROM outbound_queue WHERE tx_ref = ? LIMIT 1", (tx_ref,)
            ):
                raise StoreError(f"transaction {tx_ref} still has queued messages")
            cursor = self._db.execute("DELETE FROM tx_ids WHERE tx_ref = ?", (tx_ref,))
        return cursor.rowcount > 0

    def has_pending_start(self, tx_ref: str, *, action: str = START_TRANSACTION_ACTION) -> bool:
        """True while a StartTransaction (``action``) of ``tx_ref`` is still queued."""
        row = self._db.query_one(
            "SELECT 1 FROM outbound_queue WHERE tx_ref = ? AND action = ? LIMIT 1",
            (tx_ref, action),
        )
        return row is not None

    # -- reading ----------------------------------------------------------------------------

    def head(self, now: float | None = None) -> QueuedMessage | None:
        """The lowest-seq message, or None if the queue is empty.

        With ``now`` (unix seconds), also None while the head is not due (``not_before >
        now``): later messages never overtake it. Use ``len()`` to tell the two apart.
        """
        row = self._db.query_one(f"SELECT {_COLUMNS} FROM outbound_queue ORDER BY seq LIMIT 1")
        if row is None:
            return None
        message = _row_to_message(row)
        if now is not None and message.not_before > now:
            return None
        return message

    def peek_all(self) -> list[QueuedMessage]:
        """Every queued message in send order."""
        rows = self._db.query_all(f"SELECT {_COLUMNS} FROM outbound_queue ORDER BY seq")
        return [_row_to_message(row) for row in rows]

    def get(self, seq: int) -> QueuedMessage | None:
        """The message with this seq, or None if it is gone."""
        return self._get(seq)

    def _get(self, seq: int) -> QueuedMessage | None:
        row = self._db.query_one(f"SELECT {_COLUMNS} FROM outbound_queue WHERE seq = ?", (seq,))
        return None if row is None else _row_to_message(row)

    def count(self, kind: MessageKind) -> int:
        kind = _check_kind(kind)
        row = self._db.query_one("SELECT COUNT(*) FROM outbound_queue WHERE kind = ?", (kind,))
        return int(row[0]) if row is not None else 0

    def __len__(self) -> int:
        row = self._db.query_one("SELECT COUNT(*) FROM outbound_queue")
        return int(row[0]) if row is not None else 0
