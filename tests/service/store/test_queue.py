"""Tests of service.store.queue on real SQLite files, including kill -9 of a real process."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.store.db import Database, StoreError, StoreFullError
from service.store.queue import DurableQueue, MessageKind, QueuedMessage

REPO_ROOT = Path(__file__).resolve().parents[3]
NOW = 1_700_000_000.0


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "evsed.db"


@pytest.fixture
def db(db_path: Path) -> Iterator[Database]:
    database = Database.open(db_path)
    try:
        yield database
    finally:
        database.close()


def _ids(messages: list[QueuedMessage]) -> list[str]:
    return [m.message_id for m in messages]


def _drain(queue: DurableQueue) -> list[QueuedMessage]:
    drained: list[QueuedMessage] = []
    while (message := queue.head()) is not None:
        drained.append(message)
        assert queue.remove(message.seq)
    return drained


# -- basic behaviour -----------------------------------------------------------------------


def test_append_returns_what_was_stored(db: Database) -> None:
    queue = DurableQueue(db, max_other=10)
    payload = {"connectorId": 1, "meterStart": 0, "idTag": "ABC"}
    message = queue.append(
        "id-1",
        "StartTransaction",
        payload,
        kind="transaction",
        tx_ref="local-1",
        now=NOW,
        stamp_mono=12.5,
        boot_id="boot-a",
    )
    assert message is not None
    assert message == queue.head()
    assert message.payload == payload
    assert (message.kind, message.tx_ref, message.attempts, message.not_before) == (
        "transaction",
        "local-1",
        0,
        0.0,
    )
    assert (message.created_at, message.stamp_mono, message.boot_id) == (NOW, 12.5, "boot-a")
    assert len(queue) == 1


def test_fifo_order_is_strict_across_kinds(db: Database) -> None:
    queue = DurableQueue(db, max_other=100)
    expected = []
    for i in range(10):
        kind: MessageKind = "transaction" if i % 3 == 0 else "other"
        queue.append(f"m{i}", "DataTransfer", {"i": i}, kind=kind, now=NOW + i)
        expected.append(f"m{i}")
    assert _ids(queue.peek_all()) == expected
    assert queue.count("transaction") == 4
    assert queue.count("other") == 6
    assert _ids(_drain(queue)) == expected
    assert len(queue) == 0
    assert queue.head() is None


def test_head_with_now_waits_for_a_message_not_due_and_never_skips_it(db: Database) -> None:
    queue = DurableQueue(db, max_other=10)
    first = queue.append("a", "StatusNotification", {}, kind="other", now=NOW)
    queue.append("b", "StatusNotification", {}, kind="other", now=NOW)
    assert first is not None
    retried = queue.record_attempt(first.seq, not_before=NOW + 60)
    assert (retried.attempts, retried.not_before) == (1, NOW + 60)
    assert queue.head(NOW) is None  # "b" is due but must not overtake "a"
    assert len(queue) == 2
    head = queue.head()
    assert head is not None and head.message_id == "a"
    head = queue.head(NOW + 60)
    assert head is not None and head.message_id == "a"


def test_record_attempt_persists_and_missing_seq_raises(db_path: Path) -> None:
    with Database.open(db_path) as db:
        queue = DurableQueue(db, max_other=10)
        message = queue.append("a", "StopTransaction", {}, kind="transaction", now=NOW)
        assert message is not None
        queue.record_attempt(message.seq, not_before=NOW + 5)
        queue.record_attempt(message.seq, not_before=NOW + 15)
        with pytest.raises(KeyError):
            queue.record_attempt(message.seq + 1000, not_before=NOW)
    with Database.open(db_path) as db:
        head = DurableQueue(db, max_other=10).head()
        assert head is not None
        assert (head.attempts, head.not_before) == (2, NOW + 15)


def test_remove_of_missing_seq_is_a_noop(db: Database) -> None:
    queue = DurableQueue(db, max_other=10)
    message = queue.append("a", "Heartbeat", {}, kind="other", now=NOW)
    assert message is not None
    assert queue.remove(message.seq) is True
    assert queue.remove(message.seq) is False


def test_duplicate_message_id_is_refused_and_queue_unchanged(db: Database) -> None:
    queue = DurableQueue(db, max_other=10)
    queue.append("same", "Heartbeat", {}, kind="other", now=NOW)
    with pytest.raises(StoreError, match="UNIQUE"):
        queue.append("same", "Heartbeat", {"x": 1}, kind="other", now=NOW)
    assert _ids(queue.peek_all()) == ["same"]
    assert queue.peek_all()[0].payload == {}


def test_invalid_arguments_store_nothing(db: Database) -> None:
    queue = DurableQueue(db, max_other=10)
    with pytest.raises(ValueError, match="kind"):
        queue.append("a", "Heartbeat", {}, kind="bogus", now=NOW)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        queue.append("b", "MeterValues", {"v": float("nan")}, kind="other", now=NOW)
    with pytest.raises(ValueError, match="max_other"):
        DurableQueue(db, max_other=-1)
    assert len(queue) == 0


def test_update_payload_replaces_and_get_reads(db: Database) -> None:
    queue = DurableQueue(db, max_other=10)
    message = queue.append(
        "a", "StatusNotification", {"timestamp": "1970-01-01T00:00:05Z"}, kind="other", now=NOW
    )
    assert message is not None
    fixed = queue.update_payload(message.seq, {"timestamp": "2023-11-14T22:13:25Z"})
    assert fixed.payload == {"timestamp": "2023-11-14T22:13:25Z"}
    assert queue.get(message.seq) == fixed
    with pytest.raises(KeyError):
        queue.update_payload(message.seq + 1, {})


# -- the cap on "other" messages -----------------------------------------------------------


def test_cap_drops_oldest_other_and_never_transaction(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    queue = DurableQueue(db, max_other=3)
    queue.append("t1", "StartTransaction", {}, kind="transaction", now=NOW)
    queue.append("o1", "StatusNotification", {}, kind="other", now=NOW)
    queue.append("o2", "StatusNotification", {}, kind="other", now=NOW)
    queue.append("t2", "MeterValues", {}, kind="transaction", now=NOW)
    queue.append("o3", "StatusNotification", {}, kind="other", now=NOW)
    assert queue.last_dropped == 0
    for i in range(5):
        queue.append(f"t-extra-{i}", "MeterValues", {}, kind="transaction", now=NOW)
        assert queue.last_dropped == 0
    with caplog.at_level(logging.WARNING, logger="service.store.queue"):
        queue.append("o4", "StatusNotification", {}, kind="other", now=NOW)
    assert queue.last_dropped == 1
    assert "StatusNotification(o1)" in caplog.text
    ids = _ids(queue.peek_all())
    assert ids == ["t1", "o2", "t2", "o3", *[f"t-extra-{i}" for i in range(5)], "o4"]
    assert queue.count("other") == 3
    assert queue.count("transaction") == 7

    # A lower cap after a restart trims on the next "other" append, oldest first.
    smaller = DurableQueue(db, max_other=1)
    smaller.append("o5", "StatusNotification", {}, kind="other", now=NOW)
    assert smaller.last_dropped == 3
    ids = _ids(smaller.peek_all())
    assert [i for i in ids if i.startswith("o")] == ["o5"]
    assert [i for i in ids if i.startswith("t")] == ["t1", "t2"] + [
        f"t-extra-{i}" for i in range(5)
    ]


def test_max_other_zero_stores_no_other_messages(db: Database) -> None:
    queue = DurableQueue(db, max_other=0)
    assert queue.append("o1", "StatusNotification", {}, kind="other", now=NOW) is None
    stored = queue.append("t1", "StopTransaction", {}, kind="transaction", now=NOW)
    assert stored is not None
    assert _ids(queue.peek_all()) == ["t1"]


# -- CSMS transaction ids ------------------------------------------------------------------


def test_set_csms_transaction_id_patches_placeholders_and_persists(db_path: Path) -> None:
    with Database.open(db_path) as db:
        queue = DurableQueue(db, max_other=10)
        queue.append(
            "s", "StartTransaction", {"connectorId": 1}, kind="transaction", tx_ref="A", now=NOW
        )
        queue.append(
            "mv",
            "MeterValues",
            {"connectorId": 1, "transactionId": None},
            kind="transaction",
            tx_ref="A",
            now=NOW,
        )
        queue.append(
            "other-tx",
            "StopTransaction",
            {"transactionId": None},
            kind="transaction",
            tx_ref="B",
            now=NOW,
        )
        queue.append(
            "stop",
            "StopTransaction",
            {"transactionId": None, "meterStop": 7},
            kind="transaction",
            tx_ref="A",
            now=NOW,
        )
        assert queue.csms_transaction_id("A") is None
        assert queue.set_csms_transaction_id("A", 4711) == 2
        assert queue.csms_transaction_id("A") == 4711
        by_id = {m.message_id: m.payload for m in queue.peek_all()}
        assert by_id["s"] == {"connectorId": 1}
        assert by_id["mv"] == {"connectorId": 1, "transactionId": 4711}
        assert by_id["stop"] == {"transactionId": 4711, "meterStop": 7}
        assert by_id["other-tx"] == {"transactionId": None}
        # Known id: a later placeholder is patched on the way in; the caller's dict is not.
        late: dict[str, Any] = {"transactionId": None, "meterValue": []}
        stored = queue.append("mv2", "MeterValues", late, kind="transaction", tx_ref="A", now=NOW)
        assert stored is not None and stored.payload["transactionId"] == 4711
        assert late["transactionId"] is None
        queue.set_csms_transaction_id("B", "tx-b")
    with Database.open(db_path) as db:
        queue = DurableQueue(db, max_other=10)
        assert queue.csms_transaction_id("A") == 4711
        assert queue.csms_transaction_id("B") == "tx-b"
        assert queue.csms_transaction_id("C") is None
        by_id = {m.message_id: m.payload for m in queue.peek_all()}
        assert by_id["mv2"]["transactionId"] == 4711
        assert by_id["other-tx"] == {"transactionId": "tx-b"}
        with pytest.raises(TypeError):
            queue.set_csms_transaction_id("C", True)


def test_placeholder_never_reaches_head_before_its_start(db: Database) -> None:
    queue = DurableQueue(db, max_other=10)
    queue.append("startA", "StartTransaction", {}, kind="transaction", tx_ref="A", now=NOW)
    queue.append(
        "mvA", "MeterValues", {"transactionId": None}, kind="transaction", tx_ref="A", now=NOW
    )
    queue.append("status", "StatusNotification", {}, kind="other", now=NOW)
    queue.append("startB", "StartTransaction", {}, kind="transaction", tx_ref="B", now=NOW)
    queue.append(
        "stopA", "StopTransaction", {"transactionId": None}, kind="transaction", tx_ref="A", now=NOW
    )
    queue.append(
        "stopB", "StopTransaction", {"transactionId": None}, kind="transaction", tx_ref="B", now=NOW
    )
    answers = {"A": 101}  # B's StartTransaction is never answered: the engine gives up on it.
    seen: list[tuple[str, object]] = []
    while (head := queue.head()) is not None:
        earlier = [m for m in queue.peek_all() if m.seq < head.seq]
        assert earlier == []
        if head.tx_ref is not None and head.payload.get("transactionId", 0) is None:
            assert not queue.has_pending_start(head.tx_ref)
        seen.append((head.message_id, head.payload.get("transactionId")))
        if head.action == "StartTransaction":
            assert head.tx_ref is not None
            assert queue.has_pending_start(head.tx_ref)
            with db.transaction():
                if head.tx_ref in answers:
                    queue.set_csms_transaction_id(head.tx_ref, answers[head.tx_ref])
                queue.remove(head.seq)
        else:
            queue.remove(head.seq)
    assert seen == [
        ("startA", None),
        ("mvA", 101),
        ("status", None),
        ("startB", None),
        ("stopA", 101),
        ("stopB", None),  # the caller decides what to do with an id that never came
    ]


def test_answering_start_is_atomic_with_outer_transaction(db: Database) -> None:
    queue = DurableQueue(db, max_other=10)
    start = queue.append("s", "StartTransaction", {}, kind="transaction", tx_ref="A", now=NOW)
    queue.append(
        "stop", "StopTransaction", {"transactionId": None}, kind="transaction", tx_ref="A", now=NOW
    )
    assert start is not None
    with pytest.raises(RuntimeError), db.transaction():
        queue.set_csms_transaction_id("A", 5)
        queue.remove(start.seq)
        raise RuntimeError("crash before commit")
    assert queue.csms_transaction_id("A") is None
    assert _ids(queue.peek_all()) == ["s", "stop"]
    assert queue.peek_all()[1].payload == {"transactionId": None}


def test_forget_transaction(db: Database) -> None:
    queue = DurableQueue(db, max_other=10)
    queue.append(
        "stop", "StopTransaction", {"transactionId": None}, kind="transaction", tx_ref="A", now=NOW
    )
    queue.set_csms_transaction_id("A", 9)
    with pytest.raises(StoreError, match="still has queued"):
        queue.forget_transaction("A")
    _drain(queue)
    assert queue.forget_transaction("A") is True
    assert queue.forget_transaction("A") is False
    assert queue.csms_transaction_id("A") is None


# -- disk full -----------------------------------------------------------------------------


def test_full_database_raises_store_full_and_keeps_rows(db: Database) -> None:
    queue = DurableQueue(db, max_other=10_000)
    for i in range(5):
        queue.append(f"keep-{i}", "MeterValues", {"i": i}, kind="transaction", now=NOW)
    before = queue.peek_all()
    row = db.query_one("PRAGMA page_count")
    assert row is not None
    db.execute(f"PRAGMA max_page_count = {int(row[0]) + 4}")
    big = {"blob": "x" * 3000}
    appended = 0
    with pytest.raises(StoreFullError):
        for i in range(1000):
            queue.append(f"big-{i}", "DataTransfer", big, kind="transaction", now=NOW)
            appended += 1
    assert appended < 1000
    assert not db.in_transaction
    after = queue.peek_all()
    assert after[: len(before)] == before
    assert len(after) == len(before) + appended
    assert f"big-{appended}" not in _ids(after)

    # Still usable: removing rows frees pages for new appends.
    for message in after[len(before) :]:
        assert queue.remove(message.seq)
    stored = queue.append("after-full", "DataTransfer", big, kind="transaction", now=NOW)
    assert stored is not None
    assert _ids(queue.peek_all()) == [*_ids(before), "after-full"]


# -- volume --------------------------------------------------------------------------------


def test_two_thousand_messages_drain_in_order(db: Database) -> None:
    queue = DurableQueue(db, max_other=5000)
    expected = []
    for i in range(2000):
        kind: MessageKind = "transaction" if i % 2 else "other"
        tx_ref = "T" if kind == "transaction" else None
        payload = {"i": i, "transactionId": None} if tx_ref else {"i": i}
        queue.append(f"m{i:04d}", "MeterValues", payload, kind=kind, tx_ref=tx_ref, now=NOW)
        expected.append(f"m{i:04d}")
    assert len(queue) == 2000
    assert queue.set_csms_transaction_id("T", 77) == 1000
    drained = _drain(queue)
    assert _ids(drained) == expected
    assert [m.payload["i"] for m in drained] == list(range(2000))
    assert all(m.payload["transactionId"] == 77 for m in drained if m.kind == "transaction")
    seqs = [m.seq for m in drained]
    assert seqs == sorted(seqs) and len(set(seqs)) == 2000


# -- durability across kill -9 -------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from service.store.db import Database
    from service.store.queue import DurableQueue

    path, count, mode = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    db = Database.open(path)
    queue = DurableQueue(db, max_other=10_000)
    for i in range(count):
        queue.append(
            f"m{i}", "MeterValues", {"i": i, "transactionId": None},
            kind="transaction" if i % 2 else "other", tx_ref="T", now=1.7e9 + i,
        )
    if mode == "remove-some":
        for message in queue.peek_all()[:3]:
            queue.remove(message.seq)
    if mode == "uncommitted":
        with db.transaction():
            queue.append("never", "StopTransaction", {}, kind="transaction", now=1.7e9)
            queue.remove(queue.peek_all()[0].seq)
            os.kill(os.getpid(), 9)
    os.kill(os.getpid(), 9)
    """
)


def _run_and_kill(db_path: Path, count: int, mode: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(db_path), str(count), mode],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == -9, result.stderr.decode()
    # The connection was never closed: its WAL is still there to be recovered.
    assert db_path.with_name(db_path.name + "-wal").exists()


def test_appended_messages_survive_kill_9(db_path: Path) -> None:
    count = 50
    _run_and_kill(db_path, count, "append")
    with Database.open(db_path) as db:
        messages = DurableQueue(db, max_other=10_000).peek_all()
    assert _ids(messages) == [f"m{i}" for i in range(count)]
    assert [m.payload for m in messages] == [{"i": i, "transactionId": None} for i in range(count)]
    assert [m.seq for m in messages] == sorted(m.seq for m in messages)


def test_removed_messages_stay_removed_after_kill_9(db_path: Path) -> None:
    _run_and_kill(db_path, 10, "remove-some")
    with Database.open(db_path) as db:
        messages = DurableQueue(db, max_other=10_000).peek_all()
    assert _ids(messages) == [f"m{i}" for i in range(3, 10)]


def test_uncommitted_work_vanishes_whole_after_kill_9(db_path: Path) -> None:
    _run_and_kill(db_path, 10, "uncommitted")
    with Database.open(db_path) as db:
        queue = DurableQueue(db, max_other=10_000)
        messages = queue.peek_all()
        assert _ids(messages) == [f"m{i}" for i in range(10)]
        # Reopened after the crash, the queue keeps working and seqs keep rising.
        stored = queue.append("next", "Heartbeat", {}, kind="other", now=NOW)
        assert stored is not None and stored.seq > messages[-1].seq
