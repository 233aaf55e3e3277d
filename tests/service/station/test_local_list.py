"""Tests of service.station.local_list on real SQLite files, and of how the Authorizer and the
station use the list (list before cache, offline rules, groups that may stop a session)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.station.auth import (
    AuthorizationCache,
    Authorizer,
    AuthSettings,
    AuthStatus,
    Decision,
    IdTagInfo,
)
from service.station.local_list import (
    ListEntry,
    LocalAuthList,
    Refusal,
    UpdateStatus,
    UpdateType,
)
from service.station.model import StopReason
from service.store.db import Database
from tests.service.station.test_station import MakeRig, make_rig, plug, present, settle

__all__ = ["make_rig"]  # the fixture, reused

NOW = 1_750_000_000.0
DAY = 86_400.0
FULL = UpdateType.FULL
DIFF = UpdateType.DIFFERENTIAL
ACCEPTED = IdTagInfo(AuthStatus.ACCEPTED)
BLOCKED = IdTagInfo(AuthStatus.BLOCKED)


def entry(token: str, info: IdTagInfo | None = ACCEPTED, kind: str | None = None) -> ListEntry:
    return ListEntry(token, info, kind)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    with Database.open(tmp_path / "evsed.db") as database:
        yield database


@pytest.fixture
def local(db: Database) -> LocalAuthList:
    return LocalAuthList(db, max_entries=5)


def tokens(local: LocalAuthList) -> dict[str, str]:
    return {e.id_token: str(e.info.status) for e in local.entries() if e.info is not None}


# -- the list --------------------------------------------------------------------------------


def test_no_list_is_version_zero_and_empty(local: LocalAuthList) -> None:
    assert local.version == 0
    assert len(local) == 0
    assert local.get("A", NOW) is None


def test_full_replaces_and_differential_adds_updates_and_removes(local: LocalAuthList) -> None:
    assert local.update(3, FULL, [entry("A"), entry("B"), entry("C", BLOCKED)]).status == "Accepted"
    assert (local.version, tokens(local)) == (3, {"A": "Accepted", "B": "Accepted", "C": "Blocked"})
    result = local.update(4, DIFF, [entry("A", BLOCKED), entry("B", None), entry("D")])
    assert result.status is UpdateStatus.ACCEPTED
    assert (local.version, tokens(local)) == (4, {"A": "Blocked", "C": "Blocked", "D": "Accepted"})
    # Removing a token that is not listed changes nothing but the version.
    assert local.update(5, DIFF, [entry("ZZZ", None)]).status is UpdateStatus.ACCEPTED
    assert (local.version, len(local)) == (5, 3)
    # A full update replaces everything, even with a lower version; no entries empties it.
    assert local.update(2, FULL, [entry("E")]).status is UpdateStatus.ACCEPTED
    assert (local.version, tokens(local)) == (2, {"E": "Accepted"})
    assert local.update(7, FULL, []).status is UpdateStatus.ACCEPTED
    assert (local.version, len(local)) == (7, 0)


def test_differential_must_raise_the_version(local: LocalAuthList) -> None:
    local.update(10, FULL, [entry("A")])
    for version in (9, 10):
        result = local.update(version, DIFF, [entry("B")])
        assert result.status is UpdateStatus.VERSION_MISMATCH
        assert result.refusal is Refusal.VERSION_MISMATCH
    assert (local.version, tokens(local)) == (10, {"A": "Accepted"})


@pytest.mark.parametrize(
    ("update_type", "entries", "refusal"),
    [
        (FULL, [entry("A"), entry("a")], Refusal.BAD_ENTRIES),  # case-insensitive duplicate
        (DIFF, [entry("A"), entry("A", None)], Refusal.BAD_ENTRIES),
        (FULL, [entry("A"), entry("B", None)], Refusal.BAD_ENTRIES),  # full needs every info
        (FULL, [entry("")], Refusal.BAD_ENTRIES),
        (FULL, [entry(t) for t in "ABCDEF"], Refusal.TOO_MANY),  # 6 > 5
        (DIFF, [entry(t) for t in "UVWX"], Refusal.TOO_MANY),  # 2 + 4 > 5
    ],
)
def test_a_refused_update_changes_nothing(
    local: LocalAuthList,
    update_type: UpdateType,
    entries: list[ListEntry],
    refusal: Refusal,
) -> None:
    local.update(1, FULL, [entry("P"), entry("Q")])
    result = local.update(2, update_type, entries)
    assert (result.status, result.refusal) == (UpdateStatus.FAILED, refusal)
    assert result.reason
    assert (local.version, tokens(local)) == (1, {"P": "Accepted", "Q": "Accepted"})


def test_bad_versions_fail(local: LocalAuthList) -> None:
    for version in (-1, True, "3", 2**31, 2**64 + 1):  # too large for SQLite, found by fuzzing
        for kind in (FULL, DIFF):
            result = local.update(version, kind, [])  # type: ignore[arg-type]
            assert result.refusal is Refusal.BAD_VERSION
    assert local.update(2**31 - 1, FULL, []).status is UpdateStatus.ACCEPTED


def test_the_cap_is_read_at_every_update(db: Database) -> None:
    cap = [1]
    local = LocalAuthList(db, max_entries=lambda: cap[0])
    assert local.update(1, FULL, [entry("A"), entry("B")]).status is UpdateStatus.FAILED
    cap[0] = 2
    assert local.update(1, FULL, [entry("A"), entry("B")]).status is UpdateStatus.ACCEPTED
    assert local.max_entries == 2


def test_entries_keep_expiry_group_and_type_and_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "evsed.db"
    with Database.open(path) as db:
        local = LocalAuthList(db, max_entries=10)
        info = IdTagInfo(AuthStatus.ACCEPTED, NOW + DAY, "FLEET")
        assert local.update(8, FULL, [entry("04AB", info, "ISO14443")]).status == "Accepted"
    with Database.open(path) as db:
        local = LocalAuthList(db, max_entries=10)
        assert local.version == 8
        assert local.entry("04ab") == ListEntry("04AB", info, "ISO14443")
        assert local.get("04AB", NOW) == info
        # Past its expiry an Accepted entry reads Expired.
        assert local.get("04AB", NOW + DAY) == IdTagInfo(AuthStatus.EXPIRED, NOW + DAY, "FLEET")


def test_an_unreadable_status_is_skipped(db: Database, local: LocalAuthList) -> None:
    local.update(1, FULL, [entry("A")])
    db.execute("UPDATE local_auth_list SET status = 'Bogus'")
    assert local.get("A", NOW) is None
    assert local.entries() == []


def test_a_closed_store_fails_the_update(db: Database, local: LocalAuthList) -> None:
    db.close()
    result = local.update(1, FULL, [entry("A")])
    assert (result.status, result.refusal) == (UpdateStatus.FAILED, Refusal.STORE)


# -- the Authorizer with a list -------------------------------------------------------------


class Rules:
    def __init__(self, db: Database, **settings: bool) -> None:
        self.settings = AuthSettings(**settings)
        self.cache = AuthorizationCache(db)
        self.local = LocalAuthList(db, max_entries=100)
        self.auth = Authorizer(self.cache, lambda: self.settings, local_list=self.local)


@pytest.mark.parametrize(
    ("online", "settings", "listed", "decision"),
    [
        # Online: a listed Accepted token starts at once only with LocalPreAuthorize, and the
        # list needs no refresh; otherwise the CSMS is asked.
        (True, {"local_pre_authorize": True}, ACCEPTED, Decision.ACCEPT),
        (True, {}, ACCEPTED, Decision.ASK_CSMS),
        (True, {"local_pre_authorize": True}, BLOCKED, Decision.ASK_CSMS),
        # Offline (C13): listed Accepted with LocalAuthorizeOffline starts; a listed refusal
        # is refused even with AllowOfflineTxForUnknownId.
        (False, {}, ACCEPTED, Decision.ACCEPT),
        (False, {"allow_offline_tx_for_unknown_id": True}, BLOCKED, Decision.REJECT),
        (False, {}, IdTagInfo(AuthStatus.ACCEPTED, NOW - 1.0), Decision.REJECT),  # expired
        (False, {"local_authorize_offline": False}, ACCEPTED, Decision.REJECT),
        (
            False,
            {"local_authorize_offline": False, "allow_offline_tx_for_unknown_id": True},
            ACCEPTED,
            Decision.ACCEPT,
        ),
    ],
)
def test_decisions_on_a_listed_token(
    db: Database,
    online: bool,
    settings: dict[str, bool],
    listed: IdTagInfo,
    decision: Decision,
) -> None:
    rules = Rules(db, **settings)
    rules.local.update(1, FULL, [entry("TAG", listed)])
    verdict = rules.auth.decide("TAG", online=online, now=NOW)
    assert verdict.decision is decision, verdict.reason
    assert verdict.from_list and not verdict.refresh
    assert verdict.info is not None and verdict.info.status in (listed.status, AuthStatus.EXPIRED)


def test_the_list_wins_over_the_cache_and_listed_tokens_are_not_cached(db: Database) -> None:
    rules = Rules(db)
    rules.cache.put("TAG", ACCEPTED, NOW)
    rules.local.update(1, FULL, [entry("TAG", BLOCKED)])
    verdict = rules.auth.decide("TAG", online=False, now=NOW)
    assert (verdict.decision, verdict.from_list) == (Decision.REJECT, True)
    rules.auth.record("NEW", ACCEPTED, NOW)
    rules.auth.record("tag", IdTagInfo(AuthStatus.INVALID), NOW)  # on the list: not cached
    assert rules.cache.get("NEW", NOW) == ACCEPTED
    assert rules.cache.get("TAG", NOW) == ACCEPTED  # unchanged


def test_a_disabled_list_is_not_consulted(db: Database) -> None:
    rules = Rules(db, local_auth_list_enabled=False)
    rules.local.update(1, FULL, [entry("TAG", IdTagInfo(AuthStatus.ACCEPTED, None, "G"))])
    assert not rules.auth.list_enabled()
    verdict = rules.auth.decide("TAG", online=False, now=NOW)
    assert (verdict.decision, verdict.from_list) == (Decision.REJECT, False)
    assert rules.auth.group_of("TAG", NOW) is None
    rules.auth.record("TAG", ACCEPTED, NOW)  # the list is not in use: the cache takes it
    assert rules.cache.get("TAG", NOW) == ACCEPTED


def test_group_of_reads_the_list_then_the_cache(db: Database) -> None:
    rules = Rules(db)
    rules.cache.put("A", IdTagInfo(AuthStatus.ACCEPTED, None, "CACHED"), NOW)
    rules.cache.put("B", IdTagInfo(AuthStatus.ACCEPTED, None, "CACHED"), NOW)
    rules.local.update(1, FULL, [entry("A", IdTagInfo(AuthStatus.ACCEPTED, None, "LISTED"))])
    assert rules.auth.group_of("A", NOW) == "LISTED"
    assert rules.auth.group_of("B", NOW) == "CACHED"
    assert rules.auth.group_of("C", NOW) is None


def test_an_unreadable_list_counts_as_empty(db: Database) -> None:
    rules = Rules(db)
    rules.local.update(1, FULL, [entry("TAG")])
    db.execute("DROP TABLE local_auth_list")
    verdict = rules.auth.decide("TAG", online=True, now=NOW)
    assert (verdict.decision, verdict.from_list) == (Decision.ASK_CSMS, False)


# -- the station: a token of the same group stops the session (1.6 parentIdTag, 2.0.1 C09) --


async def test_a_listed_token_of_the_same_group_stops_the_session(make_rig: MakeRig) -> None:
    rig = await make_rig(LocalPreAuthorize=True)
    local = LocalAuthList(rig.db, max_entries=100)
    rig.station.authorizer = Authorizer(
        AuthorizationCache(rig.db),
        lambda: AuthSettings.from_configuration(rig.cfg),
        local_list=local,
    )
    fleet = IdTagInfo(AuthStatus.ACCEPTED, None, "FLEET")
    other = IdTagInfo(AuthStatus.ACCEPTED, None, "OTHER")
    local.update(1, FULL, [entry("DRIVER1", fleet), entry("DRIVER2", fleet), entry("X", other)])
    await plug(rig)
    await present(rig, "DRIVER1")
    await rig.read()
    session = rig.session()
    assert session is not None and session.started and session.parent_id_tag == "FLEET"
    assert rig.listener.requests == []  # LocalPreAuthorize from the list: no Authorize
    await present(rig, "X")  # another group: ignored
    assert rig.session() is session
    await present(rig, "driver2")  # same group (tokens compare case-insensitively)
    await settle()
    assert [stop.reason for stop in rig.listener.stops] == [StopReason.LOCAL]
    assert rig.session() is None
