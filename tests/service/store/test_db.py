"""Tests of service.store.db on real SQLite files: pragmas, migrations, corruption, bad paths."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from service.store.db import Database, StoreError
from service.store.migrations import LATEST_VERSION, MIGRATIONS, check_migrations
from service.store.overlay import KeyValueState


def _pragma(db: Database, name: str) -> object:
    row = db.query_one(f"PRAGMA {name}")
    assert row is not None
    return row[0]


def _listing(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


@contextmanager
def _immutable(path: Path) -> Iterator[None]:
    """chattr +i: refuses writes even to root (a realistic read-only case for a root daemon)."""
    result = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"chattr +i not possible here: {result.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_open_sets_wal_and_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "evsed.db"
    with Database.open(path) as db:
        assert _pragma(db, "journal_mode") == "wal"
        assert _pragma(db, "synchronous") == 2  # FULL
        assert _pragma(db, "foreign_keys") == 1
        assert _pragma(db, "busy_timeout") == 5000
        assert db.user_version == LATEST_VERSION
        tables = {r[0] for r in db.query_all("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"outbound_queue", "tx_ids", "config_overlay", "kv"} <= tables
    # WAL is a property of the file: a plain connection sees it too.
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        raw.close()


def test_synchronous_normal_and_bad_value(tmp_path: Path) -> None:
    with Database.open(tmp_path / "evsed.db", synchronous="normal") as db:
        assert _pragma(db, "synchronous") == 1
    with pytest.raises(ValueError, match="synchronous"):
        Database.open(tmp_path / "evsed.db", synchronous="off")


def test_new_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "evsed.db"
    Database.open(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_migrations_are_idempotent_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "evsed.db"
    with Database.open(path) as db:
        KeyValueState(db).set("boot_count", "1")
        schema = db.query_all("SELECT type, name, sql FROM sqlite_master ORDER BY name")
    for _ in range(3):
        with Database.open(path) as db:
            assert db.user_version == LATEST_VERSION
            again = db.query_all("SELECT type, name, sql FROM sqlite_master ORDER BY name")
            assert [tuple(r) for r in again] == [tuple(r) for r in schema]
            assert KeyValueState(db).get("boot_count") == "1"


def test_migration_list_is_numbered_from_one() -> None:
    check_migrations(MIGRATIONS)
    with pytest.raises(ValueError, match="expected 2"):
        check_migrations([(1, "SELECT 1"), (3, "SELECT 1")])


def test_newer_user_version_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "evsed.db"
    Database.open(path).close()
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    raw.close()
    before = _listing(tmp_path)
    with pytest.raises(StoreError, match="newer") as info:
        Database.open(path)
    assert str(path) in str(info.value)
    assert _listing(tmp_path) == before
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_garbage_file_is_moved_aside_and_fresh_db_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "evsed.db"
    garbage = b"this is not sqlite at all " * 400
    path.write_bytes(garbage)
    (tmp_path / "evsed.db-wal").write_bytes(b"stale wal bytes")
    with caplog.at_level(logging.ERROR, logger="service.store.db"):
        db = Database.open(path)
    try:
        moved = sorted(tmp_path.glob("evsed.db.corrupt-*"))
        main = [p for p in moved if not p.name.endswith("-wal")]
        wal = [p for p in moved if p.name.endswith("-wal")]
        assert len(main) == 1 and len(wal) == 1
        assert main[0].read_bytes() == garbage
        assert wal[0].name == main[0].name + "-wal"
        assert wal[0].read_bytes() == b"stale wal bytes"
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert errors and str(main[0]) in errors[0].getMessage()
        kv = KeyValueState(db)
        kv.set("registration", "Accepted")
        assert kv.get("registration") == "Accepted"
        assert db.user_version == LATEST_VERSION
    finally:
        db.close()


def test_damaged_page_is_detected_and_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "evsed.db"
    with Database.open(path) as db:
        kv = KeyValueState(db)
        for i in range(400):
            kv.set(f"key-{i:04d}", "v" * 120)
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    assert len(data) >= 8 * page_size
    # Keep the header page valid so SQLite gets past "not a database" to the b-tree check.
    data[4 * page_size : len(data) - page_size] = b"\xa5" * (len(data) - 5 * page_size)
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR, logger="service.store.db"):
        db = Database.open(path)
    try:
        moved = [
            p for p in tmp_path.glob("evsed.db.corrupt-*") if not p.name.endswith(("-wal", "-shm"))
        ]
        assert len(moved) == 1
        assert moved[0].read_bytes() == bytes(data)
        assert any(str(moved[0]) in r.getMessage() for r in caplog.records)
        assert {p.name for p in tmp_path.iterdir() if p.name.startswith("evsed.db-")} <= {
            "evsed.db-wal",
            "evsed.db-shm",
        }
        assert KeyValueState(db).get("key-0001") is None
    finally:
        db.close()


def test_missing_directory_raises_without_creating(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "evsed.db"
    with pytest.raises(StoreError, match="does not exist") as info:
        Database.open(path)
    assert str(path) in str(info.value)
    assert not (tmp_path / "absent").exists()


def test_parent_is_a_file_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    with pytest.raises(StoreError, match="not a directory") as info:
        Database.open(blocker / "evsed.db")
    assert str(blocker / "evsed.db") in str(info.value)
    assert blocker.read_text() == "a file where the state directory should be"


def test_database_path_is_a_directory_raises(tmp_path: Path) -> None:
    path = tmp_path / "evsed.db"
    path.mkdir()
    (path / "keep").write_text("x")
    with pytest.raises(StoreError, match="is a directory") as info:
        Database.open(path)
    assert str(path) in str(info.value)
    assert (path / "keep").read_text() == "x"
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_immutable_database_file_raises_and_moves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "evsed.db"
    with Database.open(path) as db:
        KeyValueState(db).set("k", "v")
    before = _listing(tmp_path)
    with _immutable(path):
        with pytest.raises(StoreError, match="not writable") as info:
            Database.open(path)
        assert str(path) in str(info.value)
        assert "readonly" in str(info.value)
    assert _listing(tmp_path)[path.name] == before[path.name]
    assert not list(tmp_path.glob("*.corrupt-*"))
    with Database.open(path) as db:
        assert KeyValueState(db).get("k") == "v"


def test_immutable_state_directory_raises_and_moves_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    existing = state / "evsed.db"
    with Database.open(existing) as db:
        KeyValueState(db).set("k", "v")
    before = _listing(state)
    with _immutable(state):
        # An existing database: SQLite cannot create its -wal/-shm beside it.
        with pytest.raises(StoreError) as info:
            Database.open(existing)
        assert str(existing) in str(info.value)
        # A new database: the file itself cannot be created.
        with pytest.raises(StoreError, match="not permitted") as info:
            Database.open(state / "other.db")
        assert str(state / "other.db") in str(info.value)
        assert _listing(state) == before


def test_transaction_commits_and_rolls_back(tmp_path: Path) -> None:
    with Database.open(tmp_path / "evsed.db") as db:
        kv = KeyValueState(db)
        with db.transaction():
            kv.set("a", "1")
            assert db.in_transaction
        assert not db.in_transaction
        with pytest.raises(RuntimeError), db.transaction():
            kv.set("b", "2")
            raise RuntimeError("boom")
        assert kv.get("a") == "1"
        assert kv.get("b") is None


def test_nested_transaction_is_a_savepoint(tmp_path: Path) -> None:
    with Database.open(tmp_path / "evsed.db") as db:
        kv = KeyValueState(db)
        with db.transaction():
            kv.set("outer", "1")
            with pytest.raises(RuntimeError), db.transaction():
                kv.set("inner", "1")
                raise RuntimeError("inner fails")
            with db.transaction():
                kv.set("inner2", "1")
        assert kv.get("outer") == "1"
        assert kv.get("inner") is None
        assert kv.get("inner2") == "1"
        with pytest.raises(RuntimeError), db.transaction():
            kv.set("gone", "1")
            with db.transaction():
                kv.set("gone-too", "1")
            raise RuntimeError("outer fails after inner released")
        assert kv.get("gone") is None
        assert kv.get("gone-too") is None


def test_closed_database_raises_store_error(tmp_path: Path) -> None:
    db = Database.open(tmp_path / "evsed.db")
    db.close()
    db.close()
    assert db.closed
    with pytest.raises(StoreError, match="closed"):
        db.execute("SELECT 1")


def test_second_connection_waits_instead_of_database_locked(tmp_path: Path) -> None:
    path = tmp_path / "evsed.db"
    with Database.open(path) as first, Database.open(path) as second:
        KeyValueState(first).set("x", "1")
        assert KeyValueState(second).get("x") == "1"
        KeyValueState(second).set("x", "2")
        assert KeyValueState(first).get("x") == "2"


def test_file_mode_untouched_when_it_exists(tmp_path: Path) -> None:
    path = tmp_path / "evsed.db"
    Database.open(path).close()
    os.chmod(path, 0o640)
    Database.open(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
