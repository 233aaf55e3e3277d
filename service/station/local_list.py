"""The Local Authorization List: tokens and their info as the CSMS sent them, with a version.

One list for both OCPP versions (1.6 LocalAuthListManagement, 2.0.1 functional block D): the
protocol adapters (service/ocpp/v16/local_list.py, service/ocpp/v201/local_list.py) translate
SendLocalList and GetLocalListVersion; the :class:`service.station.auth.Authorizer` consults
the list before the Authorization Cache.

Rules kept here, common to both versions:

* A *full* update replaces the whole list (no entries: the list is emptied) and sets the
  version; every entry must carry its info.
* A *differential* update adds or replaces the entries that carry info and removes those that
  do not; its version must be above the list's, else VersionMismatch and nothing changes.
* A token may appear once per update (tokens compare case-insensitively, as both versions
  define them), and the list never holds more than ``max_entries``: an update that would
  break either rule fails as a whole.
* An update is one database transaction: the entries and the version change together or not
  at all, and both survive a restart.

The version is 0 while no list was ever installed.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from service.station.auth import AuthStatus, IdTagInfo
from service.store.db import Database, StoreError

log = logging.getLogger("evsed.local_list")


class UpdateType(StrEnum):
    FULL = "Full"
    DIFFERENTIAL = "Differential"


#: OCPP integers are 32-bit signed: a larger list version is refused (Failed).
MAX_VERSION = 2**31 - 1


class UpdateStatus(StrEnum):
    ACCEPTED = "Accepted"
    FAILED = "Failed"
    VERSION_MISMATCH = "VersionMismatch"


@dataclass(frozen=True, slots=True)
class ListEntry:
    """One token of an update: ``info`` None (differential only) removes the token."""

    id_token: str
    info: IdTagInfo | None
    token_type: str | None = None  # the 2.0.1 IdTokenEnumType; None from 1.6


class Refusal(StrEnum):
    """Why an update was not accepted (adapters map it to their reason codes)."""

    BAD_VERSION = "BadVersion"
    BAD_ENTRIES = "BadEntries"  # a token twice, or no info in a full update
    TOO_MANY = "TooMany"  # the list would exceed max_entries
    VERSION_MISMATCH = "VersionMismatch"
    STORE = "Store"


@dataclass(frozen=True, slots=True)
class UpdateResult:
    status: UpdateStatus
    reason: str = ""  # why it was not accepted, for logs and statusInfo
    refusal: Refusal | None = None


class _TooMany(Exception):
    """Raised inside the update's transaction to roll it back."""


class LocalAuthList:
    """The persisted list (tables ``local_auth_list`` and ``local_auth_list_version``).

    ``max_entries`` is the cap (a number, or a function read at every update so a changed
    configuration applies). Reads raise StoreError when the store fails; updates answer Failed.
    """

    def __init__(self, db: Database, *, max_entries: int | Callable[[], int]) -> None:
        self._db = db
        self._max = max_entries

    @property
    def max_entries(self) -> int:
        return self._max() if callable(self._max) else self._max

    @property
    def version(self) -> int:
        row = self._db.query_one("SELECT version FROM local_auth_list_version WHERE id = 1")
        return 0 if row is None else int(row["version"])

    def __len__(self) -> int:
        row = self._db.query_one("SELECT COUNT(*) FROM local_auth_list")
        return int(row[0]) if row is not None else 0

    def entry(self, id_token: str) -> ListEntry | None:
        """The stored entry of ``id_token`` (its info as sent, expiry not applied), or None."""
        row = self._db.query_one(
            "SELECT id_token, token_type, status, expiry, group_id FROM local_auth_list "
            "WHERE id_token = ?",
            (id_token,),
        )
        return None if row is None else _entry(row)

    def get(self, id_token: str, now: float) -> IdTagInfo | None:
        """The list's info for ``id_token``, or None if it is not listed.

        An Accepted entry whose expiry is not after ``now`` comes back with status Expired.
        """
        found = self.entry(id_token)
        if found is None or found.info is None:
            return None
        info = found.info
        if info.status is AuthStatus.ACCEPTED and info.expiry is not None and info.expiry <= now:
            return IdTagInfo(AuthStatus.EXPIRED, info.expiry, info.parent_id_tag)
        return info

    def entries(self) -> list[ListEntry]:
        rows = self._db.query_all(
            "SELECT id_token, token_type, status, expiry, group_id FROM local_auth_list "
            "ORDER BY id_token"
        )
        return [e for e in (_entry(row) for row in rows) if e is not None]

    def update(
        self, version: int, update_type: UpdateType, entries: Sequence[ListEntry]
    ) -> UpdateResult:
        """Apply a SendLocalList (see the module's rules); never raises for bad input."""
        if (
            isinstance(version, bool)
            or not isinstance(version, int)
            or not 0 <= version <= MAX_VERSION
        ):
            return UpdateResult(
                UpdateStatus.FAILED,
                f"version {version!r} is not a number 0..{MAX_VERSION}",
                Refusal.BAD_VERSION,
            )
        problem = _check_entries(update_type, entries)
        if problem is not None:
            return UpdateResult(UpdateStatus.FAILED, problem, Refusal.BAD_ENTRIES)
        cap = self.max_entries
        try:
            with self._db.transaction():
                if update_type is UpdateType.DIFFERENTIAL:
                    current = self.version
                    if version <= current:
                        return UpdateResult(
                            UpdateStatus.VERSION_MISMATCH,
                            f"differential version {version} is not above the list's {current}",
                            Refusal.VERSION_MISMATCH,
                        )
                else:
                    self._db.execute("DELETE FROM local_auth_list")
                self._apply(entries)
                size = len(self)
                if size > cap:
                    raise _TooMany(f"the list would hold {size} entries, at most {cap} fit")
                self._db.execute(
                    "INSERT INTO local_auth_list_version (id, version) VALUES (1, ?) "
                    "ON CONFLICT (id) DO UPDATE SET version = excluded.version",
                    (version,),
                )
        except _TooMany as exc:
            return UpdateResult(UpdateStatus.FAILED, str(exc), Refusal.TOO_MANY)
        except StoreError as exc:
            log.error("local authorization list update failed: %s", exc)
            return UpdateResult(UpdateStatus.FAILED, f"store error: {exc}", Refusal.STORE)
        log.info(
            "local authorization list: %s update to version %d, %d entries sent, %d listed",
            update_type,
            version,
            len(entries),
            size,
        )
        return UpdateResult(UpdateStatus.ACCEPTED)

    def _apply(self, entries: Iterable[ListEntry]) -> None:
        for item in entries:
            self._db.execute("DELETE FROM local_auth_list WHERE id_token = ?", (item.id_token,))
            info = item.info
            if info is None:
                continue
            self._db.execute(
                "INSERT INTO local_auth_list (id_token, token_type, status, expiry, group_id) "
                "VALUES (?, ?, ?, ?, ?)",
                (item.id_token, item.token_type, str(info.status), info.expiry, info.parent_id_tag),
            )


def _check_entries(update_type: UpdateType, entries: Sequence[ListEntry]) -> str | None:
    seen: set[str] = set()
    for item in entries:
        if not isinstance(item.id_token, str) or not item.id_token:
            return f"an entry has no token: {item.id_token!r}"
        folded = item.id_token.lower()
        if folded in seen:
            return f"token {item.id_token!r} is listed twice"
        seen.add(folded)
        if item.info is None and update_type is UpdateType.FULL:
            return f"token {item.id_token!r} has no info in a full update"
    return None


def _entry(row: sqlite3.Row) -> ListEntry | None:
    get = row.__getitem__
    try:
        status = AuthStatus(get("status"))
    except ValueError:
        log.warning("ignoring list entry %r with unknown status %r", get("id_token"), get("status"))
        return None
    expiry = None if get("expiry") is None else float(get("expiry"))
    group = None if get("group_id") is None else str(get("group_id"))
    token_type = None if get("token_type") is None else str(get("token_type"))
    return ListEntry(str(get("id_token")), IdTagInfo(status, expiry, group), token_type)
