"""Tests of service.station.auth on real SQLite files: cache, expiry, eviction, local decisions."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config import Csms, Identity, Settings
from service.ocpp.rpc import OcppVersion, RpcError, schemas
from service.station.auth import (
    AuthorizationCache,
    Authorizer,
    AuthSettings,
    AuthStatus,
    Decision,
    IdTagInfo,
    LocalVerdict,
    is_valid_id_tag,
)
from service.station.clock import SystemClock, parse_iso
from service.station.configuration import ChangeStatus, Configuration
from service.store.db import Database
from service.store.overlay import ConfigOverlay

NOW = 1_750_000_000.0
DAY = 86_400.0
TAG = "04A1B2C3D4"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    with Database.open(tmp_path / "evsed.db") as database:
        yield database


# -- the decision table ---------------------------------------------------------------------

# What is in the cache for TAG when the token is presented.
CACHED: dict[str, IdTagInfo | None] = {
    "accepted": IdTagInfo(AuthStatus.ACCEPTED, NOW + DAY, "PARENT"),
    "accepted_no_expiry": IdTagInfo(AuthStatus.ACCEPTED),
    "blocked": IdTagInfo(AuthStatus.BLOCKED),
    "invalid": IdTagInfo(AuthStatus.INVALID),
    "expired_status": IdTagInfo(AuthStatus.EXPIRED),
    "expired_by_date": IdTagInfo(AuthStatus.ACCEPTED, NOW - 1.0),
    "absent": None,
}

ALL_SETTINGS = [
    AuthSettings(
        authorization_cache_enabled=cache,
        local_pre_authorize=pre,
        local_authorize_offline=offline,
        allow_offline_tx_for_unknown_id=unknown,
    )
    for cache, pre, offline, unknown in itertools.product([True, False], repeat=4)
]


def _expected(online: bool, cached: str, s: AuthSettings) -> tuple[Decision, bool, bool]:
    """(decision, refresh, unknown_offline) by the OCPP 1.6 section 3.5 rules."""
    seen = cached if s.authorization_cache_enabled else "absent"
    good = seen in ("accepted", "accepted_no_expiry")
    bad = seen not in ("absent", "accepted", "accepted_no_expiry")
    if online:
        # Only a valid cached token with LocalPreAuthorize starts without the CSMS; anything
        # else (absent, or cached but not valid) is asked, since the CSMS may have changed it.
        if good and s.local_pre_authorize:
            return Decision.ACCEPT, True, False
        return Decision.ASK_CSMS, False, False
    if bad:
        return Decision.REJECT, False, False
    if good and s.local_authorize_offline:
        return Decision.ACCEPT, False, False
    if s.allow_offline_tx_for_unknown_id:
        return Decision.ACCEPT, False, True
    return Decision.REJECT, False, False


@pytest.mark.parametrize("settings", ALL_SETTINGS, ids=lambda s: _settings_id(s))
@pytest.mark.parametrize("cached", list(CACHED))
@pytest.mark.parametrize("online", [True, False], ids=["online", "offline"])
def test_decision_table(db: Database, online: bool, cached: str, settings: AuthSettings) -> None:
    cache = AuthorizationCache(db)
    info = CACHED[cached]
    if info is not None:
        cache.put(TAG, info, NOW - 60.0)
    verdict = Authorizer(cache, lambda: settings).decide(TAG, online=online, now=NOW)

    decision, refresh, unknown = _expected(online, cached, settings)
    assert (verdict.decision, verdict.refresh, verdict.unknown_offline) == (
        decision,
        refresh,
        unknown,
    ), verdict.reason
    assert verdict.reason
    if info is None or not settings.authorization_cache_enabled:
        assert verdict.info is None
    else:
        assert verdict.info is not None
        expected_status = AuthStatus.EXPIRED if cached == "expired_by_date" else info.status
        assert verdict.info.status is expected_status
        assert verdict.info.expiry == info.expiry
    # Deciding never changes the cache.
    assert len(cache) == (0 if info is None else 1)


def _settings_id(s: AuthSettings) -> str:
    parts = [
        ("cache", s.authorization_cache_enabled),
        ("pre", s.local_pre_authorize),
        ("offl", s.local_authorize_offline),
        ("unk", s.allow_offline_tx_for_unknown_id),
    ]
    return "-".join(name if on else f"no{name}" for name, on in parts)


def test_decisions_spelled_out(db: Database) -> None:
    """A few rows of the table written out by hand, as an operator would read them."""
    cache = AuthorizationCache(db)
    cache.put("GOOD", IdTagInfo(AuthStatus.ACCEPTED, NOW + DAY), NOW)
    cache.put("BAD", IdTagInfo(AuthStatus.BLOCKED), NOW)
    defaults = AuthSettings()  # cache on, no pre-authorize, offline on, unknown off
    auth = Authorizer(cache, lambda: defaults)

    assert auth.decide("GOOD", online=True, now=NOW).decision is Decision.ASK_CSMS
    assert auth.decide("GOOD", online=False, now=NOW).decision is Decision.ACCEPT
    assert auth.decide("BAD", online=False, now=NOW).decision is Decision.REJECT
    assert auth.decide("NEW", online=False, now=NOW).decision is Decision.REJECT
    # A day later the entry has passed its expiry: refused offline, asked online.
    later = NOW + DAY + 1
    expired = auth.decide("GOOD", online=False, now=later)
    assert expired.decision is Decision.REJECT
    assert expired.info is not None and expired.info.status is AuthStatus.EXPIRED
    assert auth.decide("GOOD", online=True, now=later).decision is Decision.ASK_CSMS

    generous = AuthSettings(local_pre_authorize=True, allow_offline_tx_for_unknown_id=True)
    auth = Authorizer(cache, lambda: generous)
    assert auth.decide("GOOD", online=True, now=NOW) == LocalVerdict(
        Decision.ACCEPT,
        IdTagInfo(AuthStatus.ACCEPTED, NOW + DAY),
        "online, cached Accepted, LocalPreAuthorize",
        refresh=True,
    )
    unknown = auth.decide("NEW", online=False, now=NOW)
    assert (unknown.decision, unknown.unknown_offline) == (Decision.ACCEPT, True)
    # AllowOfflineTxForUnknownId never lets a token known to be bad through.
    assert auth.decide("BAD", online=False, now=NOW).decision is Decision.REJECT


# -- the cache ------------------------------------------------------------------------------


def test_expiry_boundary_and_non_accepted_entries(db: Database) -> None:
    cache = AuthorizationCache(db)
    cache.put("A", IdTagInfo(AuthStatus.ACCEPTED, NOW + 10.0, "P"), NOW)
    cache.put("B", IdTagInfo(AuthStatus.BLOCKED, NOW - DAY), NOW)
    assert cache.get("A", NOW + 9.999) == IdTagInfo(AuthStatus.ACCEPTED, NOW + 10.0, "P")
    assert cache.get("A", NOW + 10.0) == IdTagInfo(AuthStatus.EXPIRED, NOW + 10.0, "P")
    assert cache.get("B", NOW) == IdTagInfo(AuthStatus.BLOCKED, NOW - DAY)
    assert cache.get("C", NOW) is None
    # Reading an expired entry does not rewrite it: the stored status is still Accepted.
    row = db.query_one("SELECT status FROM auth_cache WHERE id_tag = 'A'")
    assert row is not None and row["status"] == "Accepted"


def test_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "evsed.db"
    with Database.open(path) as db:
        cache = AuthorizationCache(db)
        cache.put(TAG, IdTagInfo(AuthStatus.ACCEPTED, NOW + DAY, "FLEET1"), NOW)
        cache.put("OTHER", IdTagInfo(AuthStatus.INVALID), NOW)
        cache.put("2.0.1", IdTagInfo(AuthStatus.NOT_AT_THIS_TIME), NOW)
    with Database.open(path) as db:
        cache = AuthorizationCache(db)
        assert len(cache) == 3
        assert cache.get(TAG, NOW) == IdTagInfo(AuthStatus.ACCEPTED, NOW + DAY, "FLEET1")
        assert cache.get("OTHER", NOW) == IdTagInfo(AuthStatus.INVALID)
        assert cache.get("2.0.1", NOW) == IdTagInfo(AuthStatus.NOT_AT_THIS_TIME)
        verdict = Authorizer(cache, AuthSettings).decide(TAG, online=False, now=NOW)
        assert verdict.decision is Decision.ACCEPT


def test_lookup_is_case_insensitive_and_one_entry_per_token(db: Database) -> None:
    cache = AuthorizationCache(db)
    cache.put("04a1b2", IdTagInfo(AuthStatus.ACCEPTED), NOW)
    assert cache.get("04A1B2", NOW) == IdTagInfo(AuthStatus.ACCEPTED)
    cache.put("04A1B2", IdTagInfo(AuthStatus.BLOCKED), NOW + 1)
    assert len(cache) == 1
    assert cache.get("04a1b2", NOW) == IdTagInfo(AuthStatus.BLOCKED)
    rows = db.query_all("SELECT id_tag FROM auth_cache")
    assert [r["id_tag"] for r in rows] == ["04A1B2"]


def test_eviction_removes_least_recently_updated(db: Database) -> None:
    cache = AuthorizationCache(db, max_entries=3)
    for i, tag in enumerate(["A", "B", "C"]):
        cache.put(tag, IdTagInfo(AuthStatus.ACCEPTED), NOW + i)
    cache.put("D", IdTagInfo(AuthStatus.ACCEPTED), NOW + 3)
    assert len(cache) == 3
    assert cache.get("A", NOW) is None
    # Updating B makes C the oldest: the next new token pushes C out, not B.
    cache.put("B", IdTagInfo(AuthStatus.BLOCKED), NOW + 4)
    cache.put("E", IdTagInfo(AuthStatus.ACCEPTED), NOW + 5)
    assert {t for t in "ABCDE" if cache.get(t, NOW) is not None} == {"B", "D", "E"}
    assert cache.get("B", NOW) == IdTagInfo(AuthStatus.BLOCKED)


def test_lifetime_counts_from_the_last_use_and_use_protects_from_eviction(db: Database) -> None:
    """2.0.1 AuthCacheCtrlr.LifeTime (AuthorizationCacheLifeTime) and Policy LRU."""
    cache = AuthorizationCache(db, max_entries=2)
    auth = Authorizer(cache, lambda: AuthSettings(cache_lifetime_s=100))
    cache.put("A", IdTagInfo(AuthStatus.ACCEPTED), NOW)
    cache.put("B", IdTagInfo(AuthStatus.ACCEPTED), NOW + 1)
    # Used at NOW + 90: lives until NOW + 190, and B is now the least recently used.
    assert auth.decide("A", online=False, now=NOW + 90).decision is Decision.ACCEPT
    cache.put("C", IdTagInfo(AuthStatus.ACCEPTED), NOW + 91)
    assert cache.get("B", NOW + 91) is None and cache.get("A", NOW + 91) is not None
    assert auth.decide("A", online=False, now=NOW + 189).decision is Decision.ACCEPT
    # Not used for LifeTime: gone (offline and unknown: rejected by default).
    assert auth.decide("C", online=False, now=NOW + 191).decision is Decision.REJECT
    assert cache.get("C", NOW + 191) is None and len(cache) == 1
    # 0 = no lifetime.
    forever = Authorizer(cache, lambda: AuthSettings(cache_lifetime_s=0))
    assert forever.decide("A", online=False, now=NOW + 10 * DAY).decision is Decision.ACCEPT


def test_eviction_with_equal_times_and_a_backward_clock(db: Database) -> None:
    cache = AuthorizationCache(db, max_entries=2)
    cache.put("A", IdTagInfo(AuthStatus.ACCEPTED), NOW)
    cache.put("B", IdTagInfo(AuthStatus.ACCEPTED), NOW)
    cache.put("C", IdTagInfo(AuthStatus.ACCEPTED), NOW)  # same time: the first written goes
    assert sorted(r["id_tag"] for r in db.query_all("SELECT id_tag FROM auth_cache")) == [
        "B",
        "C",
    ]
    # The entry just written stays even if the clock went back before the others' times.
    cache.put("D", IdTagInfo(AuthStatus.ACCEPTED), NOW - DAY)
    assert cache.get("D", NOW) == IdTagInfo(AuthStatus.ACCEPTED)
    assert len(cache) == 2


def test_lowered_cap_trims_at_open(tmp_path: Path) -> None:
    path = tmp_path / "evsed.db"
    with Database.open(path) as db:
        cache = AuthorizationCache(db, max_entries=10)
        for i in range(10):
            cache.put(f"T{i}", IdTagInfo(AuthStatus.ACCEPTED), NOW + i)
        assert len(cache) == 10
    with Database.open(path) as db:
        cache = AuthorizationCache(db, max_entries=4)
        assert len(cache) == 4
        assert [t for t in (f"T{i}" for i in range(10)) if cache.get(t, NOW)] == [
            "T6",
            "T7",
            "T8",
            "T9",
        ]
    with Database.open(tmp_path / "other.db") as db, pytest.raises(ValueError, match="max_entries"):
        AuthorizationCache(db, max_entries=0)


def test_clear_empties_the_cache_durably(tmp_path: Path) -> None:
    path = tmp_path / "evsed.db"
    with Database.open(path) as db:
        cache = AuthorizationCache(db)
        for tag in ("A", "B", "C"):
            cache.put(tag, IdTagInfo(AuthStatus.ACCEPTED), NOW)
        auth = Authorizer(cache, AuthSettings)
        assert auth.clear_cache() is True
        assert len(cache) == 0
        assert auth.decide("A", online=False, now=NOW).decision is Decision.REJECT
        # Clearing an empty cache, or while the cache is disabled, is still Accepted.
        disabled = Authorizer(cache, lambda: AuthSettings(authorization_cache_enabled=False))
        assert disabled.clear_cache() is True
    with Database.open(path) as db:
        assert len(AuthorizationCache(db)) == 0


def test_unknown_status_in_the_table_counts_as_absent(db: Database) -> None:
    db.execute(
        "INSERT INTO auth_cache (id_tag, status, expiry, parent_id_tag, updated_at) "
        "VALUES ('X', 'FromTheFuture', NULL, NULL, ?)",
        (NOW,),
    )
    cache = AuthorizationCache(db)
    assert cache.get("X", NOW) is None
    verdict = Authorizer(cache, AuthSettings).decide("X", online=True, now=NOW)
    assert verdict.decision is Decision.ASK_CSMS


def test_put_refuses_an_empty_tag(db: Database) -> None:
    cache = AuthorizationCache(db)
    with pytest.raises(ValueError, match="id_tag"):
        cache.put("", IdTagInfo(AuthStatus.ACCEPTED), NOW)
    assert len(cache) == 0


# -- recording CSMS answers -----------------------------------------------------------------


def test_record_csms_answer_wins_and_respects_cache_setting(db: Database) -> None:
    cache = AuthorizationCache(db)
    settings = AuthSettings(local_pre_authorize=True)
    auth = Authorizer(cache, lambda: settings)

    auth.record(TAG, IdTagInfo(AuthStatus.ACCEPTED, NOW + DAY), NOW)
    assert auth.decide(TAG, online=True, now=NOW).decision is Decision.ACCEPT
    # The CSMS blocks the card (e.g. in StartTransaction.conf): the cache follows at once.
    auth.record(TAG, IdTagInfo(AuthStatus.BLOCKED), NOW + 1)
    assert cache.get(TAG, NOW) == IdTagInfo(AuthStatus.BLOCKED)
    assert auth.decide(TAG, online=False, now=NOW).decision is Decision.REJECT
    # ... and unblocks it: Accepted again.
    auth.record(TAG, IdTagInfo(AuthStatus.ACCEPTED), NOW + 2)
    assert auth.decide(TAG, online=False, now=NOW).decision is Decision.ACCEPT

    # ConcurrentTx describes the transaction, not the token: the entry is left as it was.
    auth.record(TAG, IdTagInfo(AuthStatus.CONCURRENT_TX), NOW + 3)
    assert cache.get(TAG, NOW) == IdTagInfo(AuthStatus.ACCEPTED)
    auth.record("BUSY", IdTagInfo(AuthStatus.CONCURRENT_TX), NOW + 3)
    assert cache.get("BUSY", NOW) is None

    settings = AuthSettings(authorization_cache_enabled=False)
    auth.record("NEW", IdTagInfo(AuthStatus.ACCEPTED), NOW + 4)
    assert cache.get("NEW", NOW) is None
    assert len(cache) == 1


def test_disabled_cache_is_not_consulted_but_kept(db: Database) -> None:
    cache = AuthorizationCache(db)
    cache.put(TAG, IdTagInfo(AuthStatus.ACCEPTED), NOW)
    auth = Authorizer(cache, lambda: AuthSettings(authorization_cache_enabled=False))
    verdict = auth.decide(TAG, online=False, now=NOW)
    assert (verdict.decision, verdict.info) == (Decision.REJECT, None)
    assert len(cache) == 1


def test_store_failure_does_not_stop_authorization(tmp_path: Path) -> None:
    db = Database.open(tmp_path / "evsed.db")
    cache = AuthorizationCache(db)
    cache.put(TAG, IdTagInfo(AuthStatus.ACCEPTED), NOW)
    auth = Authorizer(cache, lambda: AuthSettings(allow_offline_tx_for_unknown_id=True))
    db.close()
    online = auth.decide(TAG, online=True, now=NOW)
    assert (online.decision, online.info) == (Decision.ASK_CSMS, None)
    offline = auth.decide(TAG, online=False, now=NOW)
    assert (offline.decision, offline.unknown_offline) == (Decision.ACCEPT, True)
    auth.record(TAG, IdTagInfo(AuthStatus.BLOCKED), NOW)  # logged, not raised
    assert auth.clear_cache() is False  # ClearCache.conf Rejected


# -- configuration --------------------------------------------------------------------------


def _configuration(db: Database) -> Configuration:
    settings = Settings(identity=Identity("CP1", "Vendor", "Model"), csms=Csms("ws://127.0.0.1:9"))
    return Configuration(settings, ConfigOverlay(db), clock=SystemClock())


def test_settings_from_configuration_and_change_takes_effect_at_once(db: Database) -> None:
    cfg = _configuration(db)
    assert AuthSettings.from_configuration(cfg) == AuthSettings()  # the catalog's defaults
    cache = AuthorizationCache(db)
    cache.put(TAG, IdTagInfo(AuthStatus.ACCEPTED), NOW)
    auth = Authorizer(cache, lambda: AuthSettings.from_configuration(cfg))

    assert auth.decide(TAG, online=True, now=NOW).decision is Decision.ASK_CSMS
    assert cfg.change("LocalPreAuthorize", "true") is ChangeStatus.ACCEPTED
    assert auth.decide(TAG, online=True, now=NOW).decision is Decision.ACCEPT

    assert auth.decide("NEW", online=False, now=NOW).decision is Decision.REJECT
    assert cfg.change("AllowOfflineTxForUnknownId", "True") is ChangeStatus.ACCEPTED
    assert auth.decide("NEW", online=False, now=NOW).unknown_offline is True

    assert cfg.change("LocalAuthorizeOffline", "false") is ChangeStatus.ACCEPTED
    assert cfg.change("AuthorizationCacheEnabled", "false") is ChangeStatus.ACCEPTED
    assert AuthSettings.from_configuration(cfg) == AuthSettings(
        authorization_cache_enabled=False,
        local_pre_authorize=True,
        local_authorize_offline=False,
        allow_offline_tx_for_unknown_id=True,
    )
    # The cache is no longer consulted: the known token is now "unknown" offline.
    verdict = auth.decide(TAG, online=False, now=NOW)
    assert (verdict.decision, verdict.info, verdict.unknown_offline) == (
        Decision.ACCEPT,
        None,
        True,
    )


def test_settings_from_configuration_refuses_a_non_boolean(db: Database) -> None:
    class Wrong:
        def get(self, name: str) -> object:
            return "false"

    with pytest.raises(TypeError, match="AuthorizationCacheEnabled"):
        AuthSettings.from_configuration(Wrong())


# -- idTagInfo and idTag --------------------------------------------------------------------


def test_id_tag_info_round_trip_through_ocpp16() -> None:
    wire = {"status": "Accepted", "expiryDate": "2025-06-15T12:30:45.123Z", "parentIdTag": "FLEET"}
    info = IdTagInfo.from_ocpp16(wire)
    assert info == IdTagInfo(AuthStatus.ACCEPTED, parse_iso("2025-06-15T12:30:45.123Z"), "FLEET")
    assert info.expiry == pytest.approx(1749990645.123)
    assert info.to_ocpp16() == wire
    assert IdTagInfo.from_ocpp16(info.to_ocpp16()) == info

    minimal = IdTagInfo.from_ocpp16({"status": "Blocked"})
    assert minimal == IdTagInfo(AuthStatus.BLOCKED)
    assert minimal.to_ocpp16() == {"status": "Blocked"}

    # Other spellings of the time are read; the answer is always written in UTC with a Z.
    offset = IdTagInfo.from_ocpp16(
        {"status": "Accepted", "expiryDate": "2025-06-15T14:30:45+02:00"}
    )
    assert offset.to_ocpp16()["expiryDate"] == "2025-06-15T12:30:45.000Z"


def test_to_ocpp16_is_schema_valid_and_downgrades_201_statuses() -> None:
    v16 = schemas(OcppVersion.V16)
    for status in AuthStatus:
        wire = IdTagInfo(status, NOW, "PARENT").to_ocpp16()
        v16.validate("Authorize", {"idTagInfo": wire}, response=True)
        v16.validate("StartTransaction", {"idTagInfo": wire, "transactionId": 1}, response=True)
        in_16 = status in {"Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx"}
        assert wire["status"] == (status if in_16 else "Invalid")
    # The check above is real: a 2.0.1 status on the wire would be refused by the schema.
    with pytest.raises(RpcError):
        v16.validate("Authorize", {"idTagInfo": {"status": "NoCredit"}}, response=True)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, "status"),
        ({"status": "accepted"}, "status"),
        ({"status": "Accepted", "expiryDate": "tomorrow"}, "expiryDate"),
        ({"status": "Accepted", "expiryDate": 1750000000}, "expiryDate"),
        ({"status": "Accepted", "parentIdTag": 7}, "parentIdTag"),
    ],
)
def test_from_ocpp16_rejects_bad_fields(data: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        IdTagInfo.from_ocpp16(data)


def test_is_valid_id_tag() -> None:
    assert is_valid_id_tag("A")
    assert is_valid_id_tag("04A1B2C3D4E5F6")
    assert is_valid_id_tag("x" * 20)
    assert is_valid_id_tag("card #1 ~ ok")
    assert not is_valid_id_tag("")
    assert not is_valid_id_tag("x" * 21)
    assert not is_valid_id_tag("tab\there")
    assert not is_valid_id_tag("line\n")
    assert not is_valid_id_tag("caf\u00e9")
    assert not is_valid_id_tag("\x7f")
    assert not is_valid_id_tag(None)
    assert not is_valid_id_tag(1234)
