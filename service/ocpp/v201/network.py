"""OCPP 2.0.1 network connection profiles (B09, B10) and OCPPCommCtrlr.OfflineThreshold.

Profiles: configuration slots `NETWORK_SLOTS` (the valuesList of
OCPPCommCtrlr.NetworkConfigurationPriority). A SetNetworkProfile profile is kept in the ``kv``
table (``ocpp201.network.slot.<n>``: its connectionData as JSON); slot 0 without a stored
profile is the [csms] table of the configuration file. Every profile uses the credentials of
the [csms] table (Basic auth password, CA bundle, client certificate) for its security profile.

SetNetworkProfile (B09) answers:

* Rejected / InvalidConfSlot: the slot is not one of NETWORK_SLOTS (B09.FR.05);
* Rejected / NoSecurityDowngrade: its securityProfile is lower than SecurityCtrlr.SecurityProfile,
  the one in use (B09.FR.04), unless SecurityCtrlr.AllowSecurityProfileDowngrade is true and it
  goes from 3 to 2: never to 1 or 0 from 2 or 3, never from 1 to 0 (`downgrade_allowed`);
* Rejected / InvalidNetworkConf (B09.FR.02): ocppTransport not JSON; an ocppVersion the
  charger is not configured to speak (OCPP20 -> "ocpp2.0.1", OCPP16 -> "ocpp1.6"); a URL that
  is not ws:// or wss:// with a host (wss:// for security profiles 2 and 3, as the transport
  requires); a host under the reserved .invalid TLD (the packaged placeholder); a security
  profile whose credentials the [csms] table lacks; an apn or vpn (this charger cannot set up
  a cellular link or a VPN); a messageTimeout outside 1..600 s;
* Failed: the profile could not be stored (B09.FR.03); Accepted otherwise (B09.FR.01).
  ocppInterface is stored and reported but not acted on: the charger has one network stack.

Connecting (B10), as `ProfileChooser` of service/transport/connection.py: the slot order and the
profiles are read once, at start-up (a SetVariables of NetworkConfigurationPriority answers
RebootRequired; a new profile applies from the next restart too). The first entry is tried
first (B10.FR.04), each entry NetworkProfileConnectionAttempts times (read live) before the
next one (B10.FR.03), also after a connection is lost, starting with the profile that was
connected. When every entry failed, the profile of the last successful connection (kept in
``ocpp201.network.last_good``) is tried if it is not in the list (B10.FR.07), then the list
starts over (B10.FR.08): the charger never stops trying. Slots without a profile are skipped,
and so is slot 0 while it is the packaged placeholder URL of the [csms] table (a host under
.invalid): then the stored profiles are used (`configured` tells the daemon whether there is
anything to connect to at all). With no usable entry in the list, the last working profile,
else the stored slots in slot order, are tried.

No downgrade (A00 / B09 / B10): the security profile of every connection is remembered
(``ocpp201.network.security_profile``, also across restarts); an entry with a lower profile is
skipped unless `downgrade_allowed`. Should no entry of the list be allowed at start-up, which
only a local change can cause (the configuration file, the database), the operator's choice
wins: a warning is logged and the list is used.

The device model reads this object (dm_catalog.NETWORK_STATES, by the Station): the valuesList
of NetworkConfigurationPriority is `usable_slots()`, so SetVariables naming a slot without a
profile, or with one the charger may not connect with, is Rejected / InvalidValue at once;
SecurityCtrlr.SecurityProfile and OCPPCommCtrlr.MessageTimeout[Default] are those of the
profile in use (the one connected in this run, else the one connected last, else the first to
try).
A connection made with another profile than the previous one of this run must register again
(B10.FR.10): `take_switched()` tells the daemon. The profile's messageTimeout becomes the
engine's CALL timeout while it is connected.

OfflineThreshold (B04 / G01): `OfflineMonitor` measures each outage; back online under OCPP
2.0.1 after more than OCPPCommCtrlr.OfflineThreshold seconds, every connector's status is
queued again. After a shorter outage only the changes go out: the ones the durable queue kept.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from service.ocpp.rpc import Call, JsonDict, OcppVersion
from service.ocpp.v201.dm_catalog import NETWORK_SLOTS, NETWORK_STATES
from service.store.db import StoreError
from service.store.overlay import KeyValueState
from service.transport.connection import ConnectionProfile, TransportError
from service.transport.tls import TransportConfigError

if TYPE_CHECKING:
    from service.config import Settings
    from service.ocpp.engine import Engine
    from service.station.clock import Clock
    from service.store.db import Database

log = logging.getLogger("evsed.ocpp.network")

SLOT_KEY_PREFIX = "ocpp201.network.slot."
LAST_GOOD_KEY = "ocpp201.network.last_good"
SECURITY_KEY = "ocpp201.network.security_profile"
COMM = "OCPPCommCtrlr"
SECURITY = "SecurityCtrlr"
DEFAULT_ATTEMPTS = 3
MAX_MESSAGE_TIMEOUT_S = 600
SUBPROTOCOLS = {"OCPP16": "ocpp1.6", "OCPP20": "ocpp2.0.1"}


class DeviceSettings(Protocol):
    """What is read of the device model (service.ocpp.v201.device_model.DeviceModel)."""

    def get(self, component: str, variable: str) -> str | None: ...


@dataclass(frozen=True, slots=True)
class NetworkProfile:
    """One configuration slot's NetworkConnectionProfile (`data` is its connectionData)."""

    slot: int
    data: JsonDict
    default: bool = False  # slot 0 made from the [csms] table

    @property
    def url(self) -> str:
        return str(self.data["ocppCsmsUrl"]).rstrip("/")

    @property
    def security_profile(self) -> int:
        return int(self.data["securityProfile"])

    @property
    def message_timeout(self) -> int:
        return int(self.data["messageTimeout"])


class Refused(Exception):
    """A SetNetworkProfile answered Rejected: `reason` is the statusInfo reasonCode."""

    def __init__(self, reason: str, info: str) -> None:
        super().__init__(info)
        self.reason = reason
        self.info = info


def _check_url(url: str, security_profile: int) -> None:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Refused("InvalidNetworkConf", f"ocppCsmsUrl {url!r} is not a URL: {exc}") from None
    if parts.scheme not in ("ws", "wss"):
        raise Refused("InvalidNetworkConf", f"ocppCsmsUrl {url!r} is not a ws:// or wss:// URL")
    if not parts.hostname or (port is not None and port <= 0):
        raise Refused("InvalidNetworkConf", f"ocppCsmsUrl {url!r} has no valid host and port")
    if parts.query or parts.fragment:
        raise Refused("InvalidNetworkConf", f"ocppCsmsUrl {url!r} has a query or fragment")
    if security_profile >= 2 and parts.scheme != "wss":
        raise Refused(
            "InvalidNetworkConf", f"security profile {security_profile} needs a wss:// URL"
        )


def is_placeholder(url: str) -> bool:
    """The packaged default [csms] url points at a host under the reserved .invalid TLD."""
    try:
        host = urllib.parse.urlsplit(url).hostname or ""
    except ValueError:
        return False
    return host == "invalid" or host.endswith(".invalid")


def downgrade_allowed(current: int, new: int, allow: bool) -> bool:
    """May the charger go from security profile `current` to `new`? Up or level always; down
    only from 3 to 2, and only with SecurityCtrlr.AllowSecurityProfileDowngrade (`allow`)."""
    return new >= current or (allow and current == 3 and new == 2)


class NetworkProfiles:
    """The slots, SetNetworkProfile, and the choice of the profile of every connection attempt."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        device_model: DeviceSettings,
        *,
        engine: Engine | None = None,
        ping_interval_s: Callable[[], float] | None = None,
    ) -> None:
        """`device_model` answers get(component, variable) (service.ocpp.v201.device_model);
        when it has a `station` (DeviceModel does), this object answers its network variables.
        `ping_interval_s` is the live WebSocketPingInterval."""
        self._settings = settings
        self._kv = KeyValueState(db)
        self._dm = device_model
        self._engine = engine
        self._ping = ping_interval_s or (lambda: float(settings.csms.ping_interval_s))
        # The security profile of the last connection: no later one may be lower.
        self._floor: int | None = self._stored_floor()
        # What this run connects with: read once (changes apply after a restart).
        self.order: list[int] = []
        self._profiles: dict[int, NetworkProfile] = {}
        for slot in self.priority():
            profile = self._usable(slot, "is in the priority list but")
            if profile is not None:
                self._profiles[slot] = profile
                self.order.append(slot)
        if not self.order:
            self._pick_when_the_list_is_empty()
        last = self.last_good()
        if last is not None and last not in self._profiles:
            profile = self.profile(last)
            if profile is not None and not (profile.default and is_placeholder(profile.url)):
                self._profiles[last] = profile
        self._index = 0
        self._failures = 0
        self._fallback = False
        self._trying = self.order[0]
        self._connected: int | None = None  # the slot of the last connection of this run
        self._switched = False
        station = getattr(device_model, "station", None)
        if station is not None:
            NETWORK_STATES[station] = weakref.ref(self)
        log.info("network profiles in order: %s", ", ".join(str(slot) for slot in self.order))
        if not self.configured:
            log.warning("no network profile to connect with: [csms] url is the placeholder")

    def _usable(self, slot: int, what: str) -> NetworkProfile | None:
        """The profile of a slot if this charger can connect with it (logged when not)."""
        profile = self.profile(slot)
        if profile is None:
            log.warning("network profile slot %d %s empty", slot, what)
            return None
        if profile.default and is_placeholder(profile.url):
            log.warning(
                "network profile slot %d %s the [csms] url is the placeholder %s: skipped",
                slot,
                what,
                profile.url,
            )
            return None
        try:
            self.build(profile)
        except TransportConfigError as exc:
            log.error("network profile slot %d cannot be used: %s", slot, exc)
            return None
        return profile

    def _pick_when_the_list_is_empty(self) -> None:
        """No entry of the priority list can be used: the last working profile, else every
        stored one in slot order, else slot 0 as it is (maybe the placeholder)."""
        last = self.last_good()
        candidates = ([last] if last is not None else []) + [
            slot for slot in NETWORK_SLOTS if slot != last and self.stored(slot) is not None
        ]
        for slot in candidates:
            profile = self._usable(slot, "(not in the priority list) is")
            if profile is not None:
                self._profiles[slot] = profile
                self.order.append(slot)
        if self.order:
            log.warning(
                "no usable network profile in NetworkConfigurationPriority: using slot(s) %s",
                ", ".join(str(slot) for slot in self.order),
            )
            return
        self.order = [0]
        self._profiles[0] = self.profile(0) or self.default_profile()

    # ------------------------------------------------------------------ slots
    def default_profile(self) -> NetworkProfile:
        """Slot 0 from the [csms] table (offered with every configured OCPP version)."""
        csms = self._settings.csms
        data: JsonDict = {
            "ocppVersion": "OCPP20" if csms.ocpp_versions[0] == "ocpp2.0.1" else "OCPP16",
            "ocppTransport": "JSON",
            "ocppCsmsUrl": csms.url,
            "messageTimeout": csms.call_timeout_s,
            "securityProfile": csms.security_profile,
            "ocppInterface": "Wired0",
        }
        return NetworkProfile(0, data, default=True)

    def stored(self, slot: int) -> NetworkProfile | None:
        raw = self._kv.get(f"{SLOT_KEY_PREFIX}{slot}")
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not an object")
            profile = NetworkProfile(slot, data)
            _check_url(profile.url, profile.security_profile)
            _ = profile.message_timeout
        except (ValueError, KeyError, TypeError, Refused) as exc:
            log.error("ignoring the unreadable network profile of slot %d: %s", slot, exc)
            return None
        return profile

    def profile(self, slot: int) -> NetworkProfile | None:
        """The profile of a slot: the stored one, else for slot 0 the [csms] table."""
        stored = self.stored(slot)
        if stored is None and slot == 0:
            return self.default_profile()
        return stored

    def priority(self) -> list[int]:
        """OCPPCommCtrlr.NetworkConfigurationPriority as slot numbers ("" counts as "0")."""
        value = self._dm.get(COMM, "NetworkConfigurationPriority") or ""
        slots: list[int] = []
        for item in value.split(","):
            item = item.strip()
            if item.isdigit() and int(item) in NETWORK_SLOTS and int(item) not in slots:
                slots.append(int(item))
        return slots or [0]

    def attempts(self) -> int:
        value = self._dm.get(COMM, "NetworkProfileConnectionAttempts")
        try:
            return max(1, int(value)) if value else DEFAULT_ATTEMPTS
        except ValueError:
            return DEFAULT_ATTEMPTS

    def allow_downgrade(self) -> bool:
        """SecurityCtrlr.AllowSecurityProfileDowngrade, read live."""
        return (self._dm.get(SECURITY, "AllowSecurityProfileDowngrade") or "").lower() == "true"

    def last_good(self) -> int | None:
        value = self._kv.get(LAST_GOOD_KEY)
        return int(value) if value is not None and value.isdigit() else None

    def _stored_floor(self) -> int | None:
        value = self._kv.get(SECURITY_KEY)
        if value is not None and value in ("0", "1", "2", "3"):
            return int(value)
        last = self.last_good()  # a state from before the security profile was remembered
        profile = None if last is None else self.profile(last)
        return None if profile is None else profile.security_profile

    def build(self, profile: NetworkProfile) -> ConnectionProfile:
        """The transport profile; raises TransportConfigError when it cannot work."""
        csms = self._settings.csms
        if profile.default:
            subprotocols: tuple[str, ...] = tuple(csms.ocpp_versions)
        else:
            subprotocols = (SUBPROTOCOLS[str(profile.data["ocppVersion"])],)
        return ConnectionProfile(
            url=profile.url,
            charge_point_id=self._settings.identity.charge_point_id,
            subprotocols=subprotocols,
            security_profile=profile.security_profile,
            basic_auth_password=csms.basic_auth_password,
            ca_bundle=csms.ca_bundle,
            client_certificate=csms.client_certificate,
            client_key=csms.client_key,
            ping_interval_s=float(self._ping()),
            ping_timeout_s=float(csms.ping_timeout_s),
            connect_timeout_s=float(csms.connect_timeout_s),
        )

    @property
    def configured(self) -> bool:
        """False when the only thing to connect to is the placeholder url of the [csms] table:
        the daemon then waits for configuration instead of connecting."""
        return any(not is_placeholder(self._profiles[slot].url) for slot in self.order)

    @property
    def active_security_profile(self) -> int:
        """SecurityCtrlr.SecurityProfile: the security profile of this run's connection, else
        of the last connection (remembered across restarts), else of the first profile to try."""
        if self._connected is not None:
            return self._profiles[self._connected].security_profile
        if self._floor is not None:
            return self._floor
        return self._profiles[self.order[0]].security_profile

    @property
    def active_message_timeout(self) -> int:
        """OCPPCommCtrlr.MessageTimeout[Default]: of this run's connection, else of the first
        profile to try (the engine's CALL timeout follows the connected profile)."""
        slot = self._connected if self._connected is not None else self.order[0]
        return self._profiles[slot].message_timeout

    @property
    def connected_slot(self) -> int | None:
        return self._connected

    def may_use(self, security_profile: int) -> bool:
        """No downgrade from the security profile in use (see `downgrade_allowed`)."""
        if self._floor is None:
            return True
        return downgrade_allowed(self._floor, security_profile, self.allow_downgrade())

    # ------------------------------------------------------------------ device model
    def usable_slots(self) -> tuple[int, ...]:
        """The slots NetworkConfigurationPriority may name: holding a profile (slot 0: also
        the [csms] table unless it is the placeholder) that this charger can build and may
        connect with without a security downgrade."""
        slots: list[int] = []
        active = self.active_security_profile
        allow = self.allow_downgrade()
        for slot in NETWORK_SLOTS:
            profile = self.profile(slot)
            if profile is None or (profile.default and is_placeholder(profile.url)):
                continue
            if not downgrade_allowed(active, profile.security_profile, allow):
                continue
            try:
                self.build(profile)
            except TransportConfigError:
                continue
            slots.append(slot)
        return tuple(slots)

    def security_profile_in_use(self) -> int:
        return self.active_security_profile

    def message_timeout_in_use(self) -> int:
        return self.active_message_timeout

    # ------------------------------------------------------------------ B09
    def validate(self, slot: int, data: JsonDict) -> NetworkProfile:
        """The profile a SetNetworkProfile asks for; raises Refused."""
        if slot not in NETWORK_SLOTS:
            slots = ", ".join(str(s) for s in NETWORK_SLOTS)
            raise Refused("InvalidConfSlot", f"configuration slot {slot} is not one of {slots}")
        if data.get("ocppTransport") != "JSON":
            raise Refused("InvalidNetworkConf", "only the JSON transport is supported")
        version = str(data.get("ocppVersion"))
        subprotocol = SUBPROTOCOLS.get(version)
        if subprotocol is None or subprotocol not in self._settings.csms.ocpp_versions:
            spoken = ", ".join(self._settings.csms.ocpp_versions)
            raise Refused("InvalidNetworkConf", f"ocppVersion {version} is not spoken ({spoken})")
        for field in ("apn", "vpn"):
            if field in data:
                raise Refused(
                    "InvalidNetworkConf", f"{field} is not supported: the charger cannot set it up"
                )
        timeout = data.get("messageTimeout")
        if not isinstance(timeout, int) or not 1 <= timeout <= MAX_MESSAGE_TIMEOUT_S:
            raise Refused(
                "InvalidNetworkConf", f"messageTimeout must be 1..{MAX_MESSAGE_TIMEOUT_S} s"
            )
        security = data.get("securityProfile")
        if not isinstance(security, int) or not 0 <= security <= 3:
            raise Refused("InvalidNetworkConf", "securityProfile must be 0, 1, 2 or 3")
        active = self.active_security_profile
        allow = self.allow_downgrade()
        if not downgrade_allowed(active, security, allow):
            why = (
                "AllowSecurityProfileDowngrade allows 3 to 2 only"
                if allow
                else "SecurityCtrlr.AllowSecurityProfileDowngrade is false"
            )
            raise Refused(
                "NoSecurityDowngrade",
                f"security profile {security} is lower than the active profile {active}: {why}",
            )
        url = str(data.get("ocppCsmsUrl", "")).rstrip("/")
        _check_url(url, security)
        if is_placeholder(url):
            raise Refused("InvalidNetworkConf", f"ocppCsmsUrl {url!r} is under .invalid")
        profile = NetworkProfile(slot, dict(data))
        try:
            self.build(profile)
        except TransportConfigError as exc:
            raise Refused("InvalidNetworkConf", str(exc)) from None
        return profile

    def set_network_profile(self, payload: JsonDict) -> JsonDict:
        slot = int(payload["configurationSlot"])
        try:
            profile = self.validate(slot, payload["connectionData"])
        except Refused as exc:
            log.warning("SetNetworkProfile slot %d rejected: %s", slot, exc.info)
            return {
                "status": "Rejected",
                "statusInfo": {"reasonCode": exc.reason[:20], "additionalInfo": exc.info[:512]},
            }
        try:
            self._kv.set(f"{SLOT_KEY_PREFIX}{slot}", json.dumps(profile.data, sort_keys=True))
        except StoreError as exc:
            log.error("SetNetworkProfile slot %d could not be stored: %s", slot, exc)
            return {
                "status": "Failed",
                "statusInfo": {"reasonCode": "InternalError", "additionalInfo": str(exc)[:512]},
            }
        log.info(
            "network profile slot %d set to %s (security profile %d); applies after a restart",
            slot,
            profile.url,
            profile.security_profile,
        )
        return {"status": "Accepted"}

    # ------------------------------------------------------------------ B10: ProfileChooser
    def _choice(self) -> int:
        slot = self.last_good() if self._fallback else self.order[self._index]
        if slot is None or slot not in self._profiles:  # the fallback vanished
            self._fallback = False
            self._index = 0
            slot = self.order[0]
        return slot

    def next_profile(self) -> ConnectionProfile:
        # Entries the charger may not use (a security downgrade) are passed over; at most
        # every entry plus the fallback, twice round.
        for _ in range(2 * len(self.order) + 2):
            slot = self._choice()
            self._trying = slot
            profile = self._profiles[slot]
            if self.may_use(profile.security_profile):
                return self.build(profile)
            log.warning(
                "network profile slot %d: security profile %d is lower than %d, the one in use "
                "(SecurityCtrlr.AllowSecurityProfileDowngrade allows 3 to 2 only): skipped",
                slot,
                profile.security_profile,
                self._floor,
            )
            self._failures = 0
            self._move_on("may not be used")
        # Only a local change (configuration file, database) leads here: the operator wins.
        log.warning(
            "no network profile with security profile %s or higher: using the configured "
            "list as it is",
            self._floor,
        )
        self._floor = None
        self._fallback = False
        self._index = 0
        self._trying = self.order[0]
        return self.build(self._profiles[self._trying])

    def attempt_failed(self, profile: ConnectionProfile, error: TransportError) -> None:
        self._failures += 1
        attempts = self.attempts()
        if self._failures < attempts:
            return
        self._failures = 0
        self._move_on(f"failed {attempts} times")

    def _move_on(self, why: str) -> None:
        """The entry being tried is done with: the next one, the fallback, or the list anew."""
        if len(self.order) == 1 and not self._fallback:
            last = self.last_good()
            if last is None or last == self.order[0] or last not in self._profiles:
                return  # one profile: keep trying it
        failed = self._trying
        if self._fallback:
            self._fallback = False
            self._index = 0
            log.warning(
                "network profile slot %d (last working) %s: trying the list again from slot %d",
                failed,
                why,
                self.order[0],
            )
            return
        self._index += 1
        if self._index >= len(self.order):
            self._index = 0
            last = self.last_good()
            if last is not None and last not in self.order and last in self._profiles:
                self._fallback = True  # B10.FR.07
                log.warning(
                    "every network profile failed: falling back to slot %d, the last one "
                    "that worked",
                    last,
                )
                return
        log.warning(
            "network profile slot %d %s: trying slot %d",
            failed,
            why,
            self.order[self._index],
        )

    def connected(self, profile: ConnectionProfile) -> None:
        slot = self._trying
        self._failures = 0
        self._switched = self._connected is not None and self._connected != slot
        self._connected = slot
        security = self._profiles[slot].security_profile
        try:
            if self.last_good() != slot:
                self._kv.set(LAST_GOOD_KEY, str(slot))
            if self._floor != security or self._kv.get(SECURITY_KEY) != str(security):
                self._kv.set(SECURITY_KEY, str(security))
        except StoreError as exc:
            log.error("could not remember network profile slot %d: %s", slot, exc)
        self._floor = security
        if self._engine is not None:
            self._engine.options.call_timeout_s = float(self._profiles[slot].message_timeout)
        log.info("connected with network profile slot %d (security profile %d)", slot, security)

    def take_switched(self) -> bool:
        """True once after a connection made with another profile than the one before it in
        this run: the charger must send a BootNotification again (B10.FR.10)."""
        switched, self._switched = self._switched, False
        return switched


def install(engine: Engine, profiles: NetworkProfiles) -> None:
    """Answer SetNetworkProfile under OCPP 2.0.1."""

    def set_network_profile(call: Call) -> JsonDict:
        return profiles.set_network_profile(call.payload)

    engine.register(OcppVersion.V201, "SetNetworkProfile", set_network_profile)


class OfflineMonitor:
    """Statuses after an outage longer than OCPPCommCtrlr.OfflineThreshold (B04 / G01)."""

    def __init__(
        self,
        clock: Clock,
        device_model: DeviceSettings,
        report_all: Callable[[], None],
    ) -> None:
        """`report_all` queues a StatusNotification of every connector (the 2.0.1 link's
        report_all_statuses)."""
        self._clock = clock
        self._dm = device_model
        self._report_all = report_all
        self._offline_since: float | None = None

    def threshold_s(self) -> int:
        value = self._dm.get(COMM, "OfflineThreshold")
        try:
            return int(value) if value else 0
        except ValueError:
            return 0

    def connection_closed(self) -> None:
        self._offline_since = self._clock.monotonic()

    def connection_opened(self, version: OcppVersion) -> bool:
        """Report every status if the outage that ends now was longer than the threshold."""
        since, self._offline_since = self._offline_since, None
        if since is None or version is not OcppVersion.V201:
            return False
        offline = self._clock.monotonic() - since
        threshold = self.threshold_s()
        if offline <= threshold:
            return False
        log.info(
            "offline %.0f s, more than OfflineThreshold %d s: reporting every connector status",
            offline,
            threshold,
        )
        try:
            self._report_all()
        except Exception:
            log.exception("reporting every status after the outage failed")
            return False
        return True
