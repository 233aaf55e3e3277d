"""Local authorization of idTags: the persisted Authorization Cache and the local decision.

Version-neutral: statuses are the OCPP strings (1.6 AuthorizationStatus plus the 2.0.1
additions), times are unix seconds, and the protocol adapters translate ``idTagInfo`` /
``idTokenInfo`` to and from :class:`IdTagInfo`.

The :class:`Authorizer` answers "may this token start charging now, must we ask the CSMS, or is
it refused?" from the OCPP 1.6 rules (section 3.5, Local Authorization & Offline Behavior):

Online (the CSMS is reachable):

* not in the cache, or the cache disabled: ask the CSMS (Authorize) and wait;
* cached Accepted and ``LocalPreAuthorize``: start at once, and send an Authorize anyway to
  refresh the entry (``refresh``);
* cached Accepted without ``LocalPreAuthorize``: ask the CSMS;
* cached but not Accepted (Blocked, Invalid, Expired, expired by date, …): ask the CSMS. The
  CSMS is reachable and is the authority: a card once answered Invalid and registered since,
  or unblocked, or renewed, must not stay refused for as long as the stale entry lives.

Offline:

* cached but not Accepted (including an Accepted entry past its expiry): refused, whatever the
  settings (a token known to be bad is never let through by AllowOfflineTxForUnknownId);
* cached Accepted and ``LocalAuthorizeOffline``: accepted;
* otherwise (not in the cache, cache disabled, or the cache not usable because
  ``LocalAuthorizeOffline`` is off): accepted only with ``AllowOfflineTxForUnknownId``, flagged
  ``unknown_offline`` so a later refusal in StartTransaction.conf can be acted on; else refused.

Local Authorization List (1.6 section 3.5.3 / 2.0.1 C13, C14): when ``LocalAuthListEnabled``,
the list (service/station/local_list.py) is consulted first and a listed token is decided by its
list entry alone, never by the cache. The same rules as above apply to it, except that an
Accepted entry used online with ``LocalPreAuthorize`` needs no refresh (the CSMS keeps the list
up to date itself). Tokens on the list are not added to the cache. The group of a token (1.6
parentIdTag, 2.0.1 groupIdToken), which lets a token of the same group end a session, is the
list's when listed, else the cache's.

Cache keys compare case-insensitively (1.6 IdToken is a CiString); the entry keeps the spelling
it was last written with. A ConcurrentTx answer is not cached: it describes the transaction it
came with, not the token. The cache is capped at ``max_entries``; beyond it the entries updated
longest ago are removed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from service.station.clock import format_iso, parse_iso
from service.store.db import Database, StoreError

if TYPE_CHECKING:
    from service.station.local_list import LocalAuthList

log = logging.getLogger("evsed.auth")

# 1.6 IdToken is CiString20: up to 20 characters of printable ASCII.
ID_TAG_MAX_LENGTH = 20
# 2.0.1 IdTokenType.idToken is string[0..36]; evsed keeps tokens to printable ASCII in both.
ID_TOKEN_MAX_LENGTH = 36
# 2.0.1 IdTokenEnumType of a session nobody authorized (AuthCtrlr.Enabled false, start button):
# its idToken is the empty string.
NO_AUTHORIZATION = "NoAuthorization"
# 2.0.1 token types (IdTokenEnumType).
TOKEN_TYPES = frozenset(
    {
        "Central",
        "eMAID",
        "ISO14443",
        "ISO15693",
        "KeyCode",
        "Local",
        "MacAddress",
        NO_AUTHORIZATION,
    }
)


class AuthStatus(StrEnum):
    ACCEPTED = "Accepted"
    BLOCKED = "Blocked"
    EXPIRED = "Expired"
    INVALID = "Invalid"
    CONCURRENT_TX = "ConcurrentTx"
    # OCPP 2.0.1 additions.
    UNKNOWN = "Unknown"
    NO_CREDIT = "NoCredit"
    NOT_ALLOWED_TYPE_EVSE = "NotAllowedTypeEVSE"
    NOT_AT_THIS_LOCATION = "NotAtThisLocation"
    NOT_AT_THIS_TIME = "NotAtThisTime"


_ALL_STATUSES = frozenset(str(s) for s in AuthStatus)
_OCPP16_STATUSES = frozenset(
    {
        AuthStatus.ACCEPTED,
        AuthStatus.BLOCKED,
        AuthStatus.EXPIRED,
        AuthStatus.INVALID,
        AuthStatus.CONCURRENT_TX,
    }
)


def is_valid_id_tag(text: object, max_length: int = ID_TAG_MAX_LENGTH) -> bool:
    """True if ``text`` is a valid token: 1 to `max_length` characters of printable ASCII
    (20 for an OCPP 1.6 idTag, the default; `ID_TOKEN_MAX_LENGTH` for a 2.0.1 idToken)."""
    return (
        isinstance(text, str)
        and 1 <= len(text) <= max_length
        and all(" " <= ch <= "~" for ch in text)
    )


@dataclass(frozen=True, slots=True)
class IdTagInfo:
    """What the CSMS said about a token: status, expiry (unix seconds) and parent idTag."""

    status: AuthStatus
    expiry: float | None = None
    parent_id_tag: str | None = None

    @classmethod
    def from_ocpp16(cls, data: Mapping[str, Any]) -> IdTagInfo:
        """Read a 1.6 ``idTagInfo`` object; raises ValueError naming the bad field."""
        raw_status = data.get("status")
        if not isinstance(raw_status, str) or raw_status not in _ALL_STATUSES:
            raise ValueError(f"idTagInfo.status: unknown value {raw_status!r}")
        status = AuthStatus(raw_status)
        expiry: float | None = None
        raw_expiry = data.get("expiryDate")
        if raw_expiry is not None:
            expiry = parse_iso(raw_expiry) if isinstance(raw_expiry, str) else None
            if expiry is None:
                raise ValueError(f"idTagInfo.expiryDate: not an ISO 8601 time: {raw_expiry!r}")
        parent = data.get("parentIdTag")
        if parent is not None and not isinstance(parent, str):
            raise ValueError(f"idTagInfo.parentIdTag: not a string: {parent!r}")
        return cls(status, expiry, parent)

    def to_ocpp16(self) -> dict[str, str]:
        """The 1.6 ``idTagInfo`` object. A 2.0.1-only refusal is sent as Invalid."""
        status = self.status if self.status in _OCPP16_STATUSES else AuthStatus.INVALID
        result = {"status": str(status)}
        if self.expiry is not None:
            result["expiryDate"] = format_iso(self.expiry)
        if self.parent_id_tag is not None:
            result["parentIdTag"] = self.parent_id_tag
        return result


class AuthorizationCache:
    """The idTagInfo of tokens the CSMS answered (table ``auth_cache``), bounded in size.

    Every change is one durable commit. Errors of the store are raised as StoreError.
    """

    def __init__(self, db: Database, *, max_entries: int = 1000) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self._db = db
        self._max = max_entries
        with db.transaction():
            self._trim(keep=None)  # the cap may have been lowered since the last run

    @property
    def max_entries(self) -> int:
        return self._max

    def get(self, id_tag: str, now: float, *, lifetime_s: float = 0) -> IdTagInfo | None:
        """The cached answer for ``id_tag``, or None.

        An Accepted entry whose expiry is not after ``now`` comes back with status Expired.
        With ``lifetime_s`` > 0 an entry not written or used for that long is gone (2.0.1
        AuthCacheCtrlr.LifeTime): it is deleted and None comes back.
        """
        row = self._db.query_one(
            "SELECT status, expiry, parent_id_tag, updated_at FROM auth_cache "
            "WHERE id_tag = ? COLLATE NOCASE",
            (id_tag,),
        )
        if row is None:
            return None
        if lifetime_s > 0 and float(row["updated_at"]) + lifetime_s <= now:
            self._db.execute("DELETE FROM auth_cache WHERE id_tag = ? COLLATE NOCASE", (id_tag,))
            return None
        try:
            status = AuthStatus(row["status"])
        except ValueError:
            log.warning("ignoring cache entry of %r with unknown status %r", id_tag, row["status"])
            return None
        expiry = None if row["expiry"] is None else float(row["expiry"])
        parent = None if row["parent_id_tag"] is None else str(row["parent_id_tag"])
        if status is AuthStatus.ACCEPTED and expiry is not None and expiry <= now:
            status = AuthStatus.EXPIRED
        return IdTagInfo(status, expiry, parent)

    def put(self, id_tag: str, info: IdTagInfo, now: float) -> None:
        """Store (or replace) the entry of ``id_tag``; evict the oldest beyond the cap."""
        if not isinstance(id_tag, str) or not id_tag:
            raise ValueError(f"id_tag must be a non-empty string, not {id_tag!r}")
        with self._db.transaction():
            self._db.execute("DELETE FROM auth_cache WHERE id_tag = ? COLLATE NOCASE", (id_tag,))
            self._db.execute(
                "INSERT INTO auth_cache (id_tag, status, expiry, parent_id_tag, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (id_tag, str(info.status), info.expiry, info.parent_id_tag, float(now)),
            )
            self._trim(keep=id_tag)

    def touch(self, id_tag: str, now: float) -> None:
        """The entry was used: it lives on (LifeTime) and is evicted last (least recently
        used first)."""
        self._db.execute(
            "UPDATE auth_cache SET updated_at = ? WHERE id_tag = ? COLLATE NOCASE",
            (float(now), id_tag),
        )

    def _trim(self, keep: str | None) -> None:
        row = self._db.query_one("SELECT COUNT(*) FROM auth_cache")
        excess = (int(row[0]) if row is not None else 0) - self._max
        if excess <= 0:
            return
        # Oldest update first; among equal times, the row written first (lower rowid).
        self._db.execute(
            "DELETE FROM auth_cache WHERE rowid IN (SELECT rowid FROM auth_cache "
            "WHERE id_tag IS NOT ? ORDER BY updated_at, rowid LIMIT ?)",
            (keep, excess),
        )

    def clear(self) -> None:
        self._db.execute("DELETE FROM auth_cache")

    def __len__(self) -> int:
        row = self._db.query_one("SELECT COUNT(*) FROM auth_cache")
        return int(row[0]) if row is not None else 0


class Decision(StrEnum):
    ACCEPT = "accept"  # start now, decided locally
    ASK_CSMS = "ask_csms"  # send Authorize and wait for the answer
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class LocalVerdict:
    decision: Decision
    info: IdTagInfo | None  # the cached answer the decision rests on, if any
    reason: str  # short, for logs
    refresh: bool = False  # send an Authorize anyway, to refresh the cache
    unknown_offline: bool = False  # accepted only because of AllowOfflineTxForUnknownId
    from_list: bool = False  # ``info`` is the Local Authorization List's entry


class SupportsGet(Protocol):
    def get(self, name: str) -> object: ...


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """The configuration keys that steer local authorization (defaults: the 1.6 catalog's)."""

    authorization_cache_enabled: bool = True
    local_pre_authorize: bool = False
    local_authorize_offline: bool = True
    allow_offline_tx_for_unknown_id: bool = False
    local_auth_list_enabled: bool = True
    cache_lifetime_s: int = 0  # 0: entries live until evicted

    @classmethod
    def from_configuration(cls, cfg: SupportsGet) -> AuthSettings:
        """Read the keys from a :class:`service.station.configuration.Configuration`."""

        def flag(name: str) -> bool:
            value = cfg.get(name)
            if not isinstance(value, bool):
                raise TypeError(f"configuration key {name} is not a boolean: {value!r}")
            return value

        def number(name: str) -> int:
            value = cfg.get(name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"configuration key {name} is not an integer: {value!r}")
            return value

        return cls(
            authorization_cache_enabled=flag("AuthorizationCacheEnabled"),
            local_pre_authorize=flag("LocalPreAuthorize"),
            local_authorize_offline=flag("LocalAuthorizeOffline"),
            allow_offline_tx_for_unknown_id=flag("AllowOfflineTxForUnknownId"),
            local_auth_list_enabled=flag("LocalAuthListEnabled"),
            cache_lifetime_s=number("AuthorizationCacheLifeTime"),
        )


class Authorizer:
    """Decides locally what to do with a presented token; keeps the cache up to date.

    ``settings_provider`` is called for every decision, so a ChangeConfiguration applies to the
    next token. A failing store never stops authorization: the cache then counts as empty.
    """

    def __init__(
        self,
        cache: AuthorizationCache,
        settings_provider: Callable[[], AuthSettings],
        *,
        local_list: LocalAuthList | None = None,
    ) -> None:
        self._cache = cache
        self._settings = settings_provider
        self._list = local_list

    @property
    def cache(self) -> AuthorizationCache:
        return self._cache

    @property
    def local_list(self) -> LocalAuthList | None:
        return self._list

    def list_enabled(self) -> bool:
        """True when a Local Authorization List exists and ``LocalAuthListEnabled`` is on."""
        return self._list is not None and self._settings().local_auth_list_enabled

    def _listed(self, id_tag: str, now: float, settings: AuthSettings) -> IdTagInfo | None:
        if self._list is None or not settings.local_auth_list_enabled:
            return None
        try:
            return self._list.get(id_tag, now)
        except StoreError as exc:
            log.error("local list unreadable, treating %r as not listed: %s", id_tag, exc)
            return None

    def group_of(self, id_tag: str, now: float) -> str | None:
        """The token's group (parentIdTag / groupIdToken) as known locally: list, then cache."""
        settings = self._settings()
        listed = self._listed(id_tag, now, settings)
        if listed is not None:
            return listed.parent_id_tag
        try:
            cached = self._cache.get(id_tag, now, lifetime_s=settings.cache_lifetime_s)
        except StoreError as exc:
            log.error("authorization cache unreadable, no group for %r: %s", id_tag, exc)
            return None
        return None if cached is None else cached.parent_id_tag

    def decide(self, id_tag: str, *, online: bool, now: float) -> LocalVerdict:
        settings = self._settings()
        listed = self._listed(id_tag, now, settings)
        if listed is not None:
            return self._decide_listed(settings, listed, online=online)
        info: IdTagInfo | None = None
        if settings.authorization_cache_enabled:
            try:
                info = self._cache.get(id_tag, now, lifetime_s=settings.cache_lifetime_s)
                if info is not None:
                    self._cache.touch(id_tag, now)
            except StoreError as exc:
                log.error(
                    "authorization cache unreadable, treating %r as not cached: %s", id_tag, exc
                )
        if online:
            return self._decide_online(settings, info)
        return self._decide_offline(settings, info)

    @staticmethod
    def _decide_listed(settings: AuthSettings, info: IdTagInfo, *, online: bool) -> LocalVerdict:
        accepted = info.status is AuthStatus.ACCEPTED
        if online:
            if accepted and settings.local_pre_authorize:
                return LocalVerdict(
                    Decision.ACCEPT,
                    info,
                    "online, listed Accepted, LocalPreAuthorize",
                    from_list=True,
                )
            why = "listed Accepted, no LocalPreAuthorize" if accepted else f"listed {info.status}"
            return LocalVerdict(Decision.ASK_CSMS, info, f"online, {why}", from_list=True)
        if not accepted:
            return LocalVerdict(
                Decision.REJECT, info, f"offline, listed {info.status}", from_list=True
            )
        if settings.local_authorize_offline:
            return LocalVerdict(
                Decision.ACCEPT,
                info,
                "offline, listed Accepted, LocalAuthorizeOffline",
                from_list=True,
            )
        if settings.allow_offline_tx_for_unknown_id:
            return LocalVerdict(
                Decision.ACCEPT,
                info,
                "offline, listed Accepted but LocalAuthorizeOffline off, "
                "AllowOfflineTxForUnknownId",
                unknown_offline=True,
                from_list=True,
            )
        return LocalVerdict(
            Decision.REJECT,
            info,
            "offline, listed Accepted but LocalAuthorizeOffline off",
            from_list=True,
        )

    @staticmethod
    def _decide_online(settings: AuthSettings, info: IdTagInfo | None) -> LocalVerdict:
        if info is None:
            why = "not in cache" if settings.authorization_cache_enabled else "cache disabled"
            return LocalVerdict(Decision.ASK_CSMS, None, f"online, {why}")
        if info.status is not AuthStatus.ACCEPTED:
            return LocalVerdict(Decision.ASK_CSMS, info, f"online, cached {info.status}")
        if settings.local_pre_authorize:
            return LocalVerdict(
                Decision.ACCEPT,
                info,
                "online, cached Accepted, LocalPreAuthorize",
                refresh=True,
            )
        return LocalVerdict(
            Decision.ASK_CSMS, info, "online, cached Accepted, no LocalPreAuthorize"
        )

    @staticmethod
    def _decide_offline(settings: AuthSettings, info: IdTagInfo | None) -> LocalVerdict:
        if info is not None and info.status is not AuthStatus.ACCEPTED:
            return LocalVerdict(Decision.REJECT, info, f"offline, cached {info.status}")
        if info is not None and settings.local_authorize_offline:
            return LocalVerdict(
                Decision.ACCEPT, info, "offline, cached Accepted, LocalAuthorizeOffline"
            )
        if info is None:
            why = "not in cache" if settings.authorization_cache_enabled else "cache disabled"
        else:
            why = "cached Accepted but LocalAuthorizeOffline off"
        if settings.allow_offline_tx_for_unknown_id:
            return LocalVerdict(
                Decision.ACCEPT,
                info,
                f"offline, {why}, AllowOfflineTxForUnknownId",
                unknown_offline=True,
            )
        return LocalVerdict(Decision.REJECT, info, f"offline, {why}")

    def record(self, id_tag: str, info: IdTagInfo, now: float) -> None:
        """Remember the CSMS's answer (Authorize / StartTransaction / StopTransaction.conf).

        The CSMS's answer replaces whatever was cached. Nothing is stored while the cache is
        disabled, nor for ConcurrentTx (a fact about a transaction, not about the token), nor
        for a token on the enabled Local Authorization List (1.6 section 3.5.3).
        """
        settings = self._settings()
        if not settings.authorization_cache_enabled:
            return
        if info.status is AuthStatus.CONCURRENT_TX:
            return
        if self._listed(id_tag, now, settings) is not None:
            return
        try:
            self._cache.put(id_tag, info, now)
        except StoreError as exc:
            log.error("could not cache the answer for %r: %s", id_tag, exc)

    def clear_cache(self) -> bool:
        """ClearCache: True (Accepted) when the cache was emptied, False if the store failed."""
        try:
            self._cache.clear()
        except StoreError as exc:
            log.error("could not clear the authorization cache: %s", exc)
            return False
        return True
