"""The evsed SQLite connection: opening, pragmas, migrations, corruption recovery, transactions.

Why the stdlib ``sqlite3`` and not ``sqlite-utils``: the store's whole job is durability, so it
needs exact control of when a transaction starts and ends (``BEGIN IMMEDIATE`` … ``COMMIT``
around each queue operation, savepoints when the engine groups operations) and of the pragmas
(WAL, ``synchronous``, ``busy_timeout``, ``quick_check``, ``user_version``). sqlite-utils is
built for convenient table creation and bulk inserts and wraps transactions its own way; for a
handful of fixed statements it would add a dependency and hide exactly what has to be visible.

Rules this module keeps:

* The connection is in autocommit mode (``isolation_level=None``); every multi-statement change
  goes through :meth:`Database.transaction`. A single statement outside it is its own
  transaction. With ``synchronous=FULL`` in WAL mode a commit is on disk when it returns.
* A corrupt database file never blocks the charger: :meth:`Database.open` moves it (and its
  ``-wal``/``-shm``/``-journal``) aside to ``<name>.corrupt-<UTC timestamp>`` for forensics,
  logs an ERROR naming the new path, and starts a fresh database.
* Any other failure (missing directory, a path that is a directory, read-only or immutable file
  or directory, permission denied, disk full) raises :class:`StoreError` naming the path and the
  cause, and touches nothing.
* ``SQLITE_FULL`` (disk full, or ``PRAGMA max_page_count`` reached) raises
  :class:`StoreFullError`; the failed transaction is rolled back and earlier rows stay intact.

A :class:`Database` belongs to the thread that opened it (sqlite3's ``check_same_thread``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.store.migrations import LATEST_VERSION, MIGRATIONS

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000

# Primary SQLite result codes (stable C API values); an extended code keeps them in its low byte.
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_NOTADB = 26

_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}
_SIDE_FILES = ("-wal", "-shm", "-journal")
_SQLITE_HEADER = b"SQLite format 3\x00"


class StoreError(Exception):
    """The store cannot do what was asked; the message names the path or operation and why."""


class StoreFullError(StoreError):
    """A write failed with SQLITE_FULL: the disk (or ``max_page_count``) is full."""


class StoreCorruptError(StoreError):
    """SQLite reports the database file as corrupt or not a database.

    :meth:`Database.open` recovers from this by moving the file aside; met at run time, the
    caller should close the database and open it again.
    """


class _MovedAside(Exception):
    """Internal: a corrupt database was renamed to ``moved`` (main file first)."""

    def __init__(self, moved: list[Path], reason: str) -> None:
        super().__init__(reason)
        self.moved = moved
        self.reason = reason


def _translate(exc: sqlite3.Error, what: str) -> StoreError:
    code = getattr(exc, "sqlite_errorcode", None)
    name = getattr(exc, "sqlite_errorname", None)
    message = f"{what}: {exc}" + (f" ({name})" if name else "")
    primary = code & 0xFF if isinstance(code, int) else None
    if primary == _SQLITE_FULL:
        return StoreFullError(message)
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return StoreCorruptError(message)
    return StoreError(message)


@contextlib.contextmanager
def _sqlite_errors(what: str) -> Iterator[None]:
    """Turn SQLite's runtime errors into StoreError; leave API misuse (bugs) as they are."""
    try:
        yield
    except (sqlite3.ProgrammingError, sqlite3.InterfaceError):
        raise
    except sqlite3.Error as exc:
        raise _translate(exc, what) from exc


def _fsync_directory(directory: Path) -> None:
    """Make a create or rename in ``directory`` survive a power cut."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _prepare_location(path: Path) -> None:
    """Create the file if missing; reject with a clear StoreError what SQLite would fail
    on vaguely (missing directory, a parent that is a file, a path that is a directory)."""
    parent = path.parent
    try:
        parent_stat = os.stat(parent)
    except FileNotFoundError:
        raise StoreError(
            f"cannot open database {path}: state directory {parent} does not exist"
        ) from None
    except NotADirectoryError:
        raise StoreError(
            f"cannot open database {path}: a component of {parent} is a file, not a directory"
        ) from None
    except OSError as exc:
        raise StoreError(f"cannot open database {path}: {parent}: {exc.strerror}") from exc
    if not stat.S_ISDIR(parent_stat.st_mode):
        raise StoreError(f"cannot open database {path}: {parent} is not a directory")
    try:
        file_stat = os.stat(path)
    except FileNotFoundError:
        _create_private_file(path)
        return
    except OSError as exc:
        raise StoreError(f"cannot open database {path}: {exc.strerror}") from exc
    if stat.S_ISDIR(file_stat.st_mode):
        raise StoreError(f"cannot open database {path}: it is a directory, not a database file")
    if not stat.S_ISREG(file_stat.st_mode):
        raise StoreError(f"cannot open database {path}: it is not a regular file")


def _create_private_file(path: Path) -> None:
    # The overlay may hold credentials the CSMS set (e.g. AuthorizationKey): keep the file, and
    # the -wal/-shm SQLite creates with the same mode, private to the daemon's user.
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreError(f"cannot create database {path}: {exc.strerror}") from exc
    os.close(fd)
    _fsync_directory(path.parent)


def _foreign_header(path: Path) -> str | None:
    """Why a non-empty file is certainly not SQLite, or None if it may be (or is empty)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise StoreError(f"cannot open database {path}: {exc.strerror}") from exc
    if head and head != _SQLITE_HEADER:
        return "the file does not start with the SQLite header"
    return None


def _move_aside(path: Path) -> list[Path]:
    """Rename ``path`` and its side files to ``<name>.corrupt-<UTC timestamp>[-wal…]``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = f"{path.name}.corrupt-{stamp}"
    counter = 1
    while any(path.with_name(base + s).exists() for s in ("", *_SIDE_FILES)):
        counter += 1
        base = f"{path.name}.corrupt-{stamp}-{counter}"
    moved: list[Path] = []
    for suffix in ("", *_SIDE_FILES):
        source = path.with_name(path.name + suffix)
        if not source.exists():
            continue
        target = path.with_name(base + suffix)
        try:
            os.rename(source, target)
        except OSError as exc:
            raise StoreError(
                f"database {path} is corrupt and could not be moved aside to {target}: "
                f"{exc.strerror}"
            ) from exc
        moved.append(target)
    _fsync_directory(path.parent)
    return moved


def _split_statements(script: str) -> list[str]:
    """Split a migration into statements (``executescript`` would commit our transaction)."""
    statements: list[str] = []
    buffer = ""
    for piece in script.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            if buffer.strip(" \t\r\n;"):
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip(" \t\r\n;"):
        raise ValueError(f"incomplete SQL statement in migration: {buffer.strip()[:80]!r}")
    return statements


class Database:
    """One open SQLite database in WAL mode, migrated to :data:`LATEST_VERSION`."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        # Use Database.open(); this only wraps an already configured connection.
        self._conn: sqlite3.Connection | None = connection
        self._path = path
        self._depth = 0

    @classmethod
    def open(cls, path: Path, *, synchronous: str = "full") -> Database:
        """Open (creating if needed) the database at ``path`` and migrate it.

        ``synchronous`` is ``"full"`` (a commit survives a power cut) or ``"normal"`` (a commit
        survives a crash; the last commits may be lost on a power cut, WAL keeps the file sane).
        """
        mode = _SYNCHRONOUS.get(synchronous.lower())
        if mode is None:
            raise ValueError(f"synchronous must be 'full' or 'normal', not {synchronous!r}")
        path = Path(path)
        _prepare_location(path)
        reason = _foreign_header(path)
        if reason is not None:
            # Not SQLite at all: move it before SQLite touches it (closing a connection would
            # delete a -wal beside it, which forensics may want).
            moved = _move_aside(path)
        else:
            try:
                return cls._open_checked(path, mode)
            except _MovedAside as aside:
                moved, reason = aside.moved, aside.reason
        log.error(
            "database %s is corrupt (%s); moved it aside to %s and started a fresh database",
            path,
            reason,
            ", ".join(str(p) for p in moved),
        )
        _create_private_file(path)
        try:
            return cls._open_checked(path, mode)
        except _MovedAside as aside:
            raise StoreError(
                f"fresh database {path} is reported corrupt too ({aside.reason}); "
                f"moved it to {aside.moved[0] if aside.moved else '?'}"
            ) from aside

    @classmethod
    def _open_checked(cls, path: Path, synchronous: str) -> Database:
        conn: sqlite3.Connection | None = None
        try:
            with _sqlite_errors(f"cannot open database {path}"):
                conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
                conn.row_factory = sqlite3.Row
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check")]
                if problems != ["ok"]:
                    raise StoreCorruptError(f"quick_check: {'; '.join(problems[:5])}")
                journal = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
                if journal.lower() != "wal":
                    raise StoreError(
                        f"cannot open database {path}: journal_mode stayed {journal!r}, "
                        "WAL could not be enabled"
                    )
                conn.execute(f"PRAGMA synchronous = {synchronous}")
                conn.execute("PRAGMA foreign_keys = ON")
                if conn.execute("PRAGMA foreign_keys").fetchone()[0] != 1:
                    raise StoreError(f"cannot open database {path}: foreign_keys stayed off")
            db = cls(conn, path)
            db._migrate()
            db._probe_writable()
            return db
        except StoreCorruptError as exc:
            # Rename while the connection is still open: closing it first would let SQLite
            # delete the -wal that belongs to the corrupt file.
            try:
                moved = _move_aside(path)
            finally:
                if conn is not None:
                    conn.close()
            raise _MovedAside(moved, str(exc)) from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise

    def _migrate(self) -> None:
        version = self.user_version
        if version > LATEST_VERSION:
            raise StoreError(
                f"database {self._path} has schema version {version}, newer than this evsed "
                f"knows ({LATEST_VERSION}); refusing to use it (was evsed downgraded?)"
            )
        for target, script in MIGRATIONS:
            if target <= version:
                continue
            statements = _split_statements(script)
            with self.transaction():
                # Re-read under the write lock: another process may have migrated meanwhile.
                if self.user_version >= target:
                    continue
                for statement in statements:
                    self.execute(statement)
                self.execute(f"PRAGMA user_version = {int(target)}")
            log.info("database %s migrated to schema version %d", self._path, target)

    def _probe_writable(self) -> None:
        # A read-only or immutable file still opens and reads fine; find out now, not at the
        # first queued message. Rewriting user_version is a real write of page 1.
        try:
            with self.transaction():
                self.execute(f"PRAGMA user_version = {self.user_version}")
        except StoreError as exc:
            cause = exc.__cause__
            detail = (
                f"{cause} ({getattr(cause, 'sqlite_errorname', '?')})"
                if isinstance(cause, sqlite3.Error)
                else str(exc)
            )
            raise type(exc)(f"database {self._path} is not writable: {detail}") from exc

    # -- properties -------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def closed(self) -> bool:
        return self._conn is None

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    @property
    def user_version(self) -> int:
        row = self.query_one("PRAGMA user_version")
        return int(row[0]) if row is not None else 0

    # -- statements -------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"database {self._path} is closed")
        return self._conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """Run one statement (prepared and cached by sqlite3); errors become StoreError."""
        conn = self._connection()
        with _sqlite_errors(f"database {self._path}"):
            return conn.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        """Run one statement for each row; returns the number of rows changed."""
        conn = self._connection()
        with _sqlite_errors(f"database {self._path}"):
            return conn.executemany(sql, rows).rowcount

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        conn = self._connection()
        with _sqlite_errors(f"database {self._path}"):
            row: sqlite3.Row | None = conn.execute(sql, params).fetchone()
            return row

    def query_all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        conn = self._connection()
        with _sqlite_errors(f"database {self._path}"):
            rows: list[sqlite3.Row] = conn.execute(sql, params).fetchall()
            return rows

    # -- transactions -----------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``; rolled back if the block raises.

        Nested use makes a savepoint, so the engine can group store operations (set the CSMS
        transaction id *and* remove the answered StartTransaction) into one atomic commit.
        The outermost block's COMMIT is the durability point.
        """
        conn = self._connection()
        depth = self._depth
        savepoint = f"evsed_sp{depth}"
        with _sqlite_errors(f"database {self._path}: cannot begin a transaction"):
            conn.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT {savepoint}")
        self._depth = depth + 1
        try:
            yield
        except BaseException:
            self._depth = depth
            self._rollback(conn, depth, savepoint)
            raise
        self._depth = depth
        if not conn.in_transaction:
            # SQLite itself rolls the whole transaction back after some errors (SQLITE_FULL,
            # SQLITE_IOERR…); if the block swallowed such an error, nothing is left to commit.
            raise StoreError(
                f"database {self._path}: the transaction was rolled back by SQLite after an "
                "error inside it; nothing was committed"
            )
        try:
            conn.execute("COMMIT" if depth == 0 else f"RELEASE {savepoint}")
        except sqlite3.Error as exc:
            self._rollback(conn, depth, savepoint)
            if isinstance(exc, sqlite3.ProgrammingError | sqlite3.InterfaceError):
                raise
            raise _translate(exc, f"database {self._path}: commit failed") from exc

    def _rollback(self, conn: sqlite3.Connection, depth: int, savepoint: str) -> None:
        if not conn.in_transaction:
            return
        try:
            if depth == 0:
                conn.execute("ROLLBACK")
            else:
                conn.execute(f"ROLLBACK TO {savepoint}")
                conn.execute(f"RELEASE {savepoint}")
        except sqlite3.Error as exc:
            log.error("database %s: rollback failed: %s", self._path, exc)

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (an open transaction is rolled back). Safe to call twice."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        return f"<Database {self._path} {state}>"
