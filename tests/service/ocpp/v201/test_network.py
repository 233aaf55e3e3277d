"""B09 SetNetworkProfile, B10 profile order and fallback, OfflineThreshold: through the engine,
with the real device model, SQLite, station and 2.0.1 link (tests/service/ocpp/v201/conftest)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from service.config import Csms
from service.ocpp.rpc import OcppVersion
from service.ocpp.v201 import network
from service.ocpp.v201.link import V201StationLink
from service.store.overlay import KeyValueState
from service.transport.connection import FailureReason, TransportError
from tests.service.ocpp.v201.conftest import Charger, item

PASSWORD = "0123456789abcdefXY"
REFUSED = TransportError(FailureReason.REFUSED, "connection refused")
A = "ws://a.example/ocpp"  # the [csms] table of the configuration file
PLACEHOLDER = "ws://csms.invalid/ocpp"  # the packaged default


@pytest.fixture
def charger(tmp_path: Path) -> Iterator[Charger]:
    rig = Charger(tmp_path / "evsed.db", csms=Csms(url=A, call_timeout_s=25))
    yield rig
    rig.close()


@pytest.fixture
def rig_of(tmp_path: Path) -> Iterator[Callable[[Csms], Charger]]:
    """Chargers with another [csms] table (closed at the end)."""
    made: list[Charger] = []

    def make(csms: Csms) -> Charger:
        made.append(Charger(tmp_path / f"evsed-{len(made)}.db", csms=csms))
        return made[-1]

    yield make
    for rig in made:
        rig.close()


def profiles_of(charger: Charger) -> network.NetworkProfiles:
    profiles = network.NetworkProfiles(
        charger.settings, charger.db, charger.model, engine=charger.engine
    )
    network.install(charger.engine, profiles)
    return profiles


def data(url: str = "ws://b.example:9000/ocpp", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ocppVersion": "OCPP20",
        "ocppTransport": "JSON",
        "ocppCsmsUrl": url,
        "messageTimeout": 30,
        "securityProfile": 0,
        "ocppInterface": "Wired0",
    }
    out.update(extra)
    return out


def set_profile(charger: Charger, slot: int, connection: dict[str, Any]) -> dict[str, Any]:
    return charger.result(
        "SetNetworkProfile", {"configurationSlot": slot, "connectionData": connection}
    )


def set_priority(charger: Charger, value: str) -> str:
    [result] = charger.set(item("OCPPCommCtrlr", "NetworkConfigurationPriority", value=value))
    return str(result["attributeStatus"])


def test_slot_zero_is_the_config_file_until_set(charger: Charger) -> None:
    profiles = profiles_of(charger)
    assert profiles.order == [0]
    first = profiles.next_profile()
    assert first.url == A
    assert first.subprotocols == ("ocpp2.0.1", "ocpp1.6")
    charger.connect()
    [value] = charger.get(item("OCPPCommCtrlr", "NetworkConfigurationPriority"))
    assert value["attributeValue"] == "0"


def test_set_network_profile_is_stored_and_used_after_a_restart(charger: Charger) -> None:
    profiles_of(charger)
    charger.connect()
    assert set_profile(charger, 1, data()) == {"status": "Accepted"}
    assert set_priority(charger, "1,0") == "RebootRequired"
    stored = KeyValueState(charger.db).get("ocpp201.network.slot.1")
    assert stored is not None and json.loads(stored)["ocppCsmsUrl"] == "ws://b.example:9000/ocpp"

    restarted = profiles_of(charger)  # what the next run reads
    assert restarted.order == [1, 0]
    first = restarted.next_profile()
    assert first.endpoint == "ws://b.example:9000/ocpp/CP-DM"
    assert first.subprotocols == ("ocpp2.0.1",)


@pytest.mark.parametrize(
    ("slot", "connection", "reason"),
    [
        (7, data(), "InvalidConfSlot"),
        (1, data(ocppTransport="SOAP"), "InvalidNetworkConf"),
        (1, data(ocppVersion="OCPP15"), "InvalidNetworkConf"),
        (1, data("http://b.example/ocpp"), "InvalidNetworkConf"),
        (1, data("ws://:80/ocpp"), "InvalidNetworkConf"),
        (1, data("ws://b.example/ocpp?x=1"), "InvalidNetworkConf"),
        (1, data("ws://b.example/ocpp", securityProfile=2), "InvalidNetworkConf"),
        (1, data("wss://b.example/ocpp", securityProfile=2), "InvalidNetworkConf"),  # no password
        (1, data("wss://b.example/ocpp", securityProfile=3), "InvalidNetworkConf"),  # no cert
        (1, data(securityProfile=4), "InvalidNetworkConf"),
        (1, data(messageTimeout=0), "InvalidNetworkConf"),
        (1, data(apn={"apn": "internet", "apnAuthentication": "AUTO"}), "InvalidNetworkConf"),
    ],
)
def test_bad_profiles_are_rejected(
    charger: Charger, slot: int, connection: dict[str, Any], reason: str
) -> None:
    profiles_of(charger)
    charger.connect()
    answer = set_profile(charger, slot, connection)
    assert answer["status"] == "Rejected"
    assert answer["statusInfo"]["reasonCode"] == reason
    assert answer["statusInfo"]["additionalInfo"]
    assert KeyValueState(charger.db).get(f"ocpp201.network.slot.{slot}") is None


def test_schema_violations_are_a_callerror(charger: Charger) -> None:
    profiles_of(charger)
    charger.connect()
    answer = charger.call("SetNetworkProfile", {"configurationSlot": 1, "connectionData": {}})
    assert answer[0] == 4
    assert KeyValueState(charger.db).get("ocpp201.network.slot.1") is None


def test_no_security_downgrade(tmp_path: Path) -> None:
    csms = Csms(url="ws://a.example/ocpp", security_profile=1, basic_auth_password=PASSWORD)
    charger = Charger(tmp_path / "evsed.db", csms=csms)
    try:
        profiles = profiles_of(charger)
        profiles.connected(profiles.next_profile())
        charger.connect()
        answer = set_profile(charger, 1, data(securityProfile=0))
        assert answer["status"] == "Rejected"
        assert answer["statusInfo"]["reasonCode"] == "NoSecurityDowngrade"
        assert set_profile(charger, 1, data(securityProfile=1)) == {"status": "Accepted"}
        # Basic auth uses the [csms] password.
        assert set_priority(charger, "1") == "RebootRequired"
        built = profiles_of(charger).next_profile()
        assert built.security_profile == 1 and built.basic_auth_password == PASSWORD
    finally:
        charger.close()


def test_priority_values_are_checked(charger: Charger) -> None:
    profiles_of(charger)
    charger.connect()
    assert set_priority(charger, "5") == "Rejected"
    assert set_priority(charger, "1,1") == "Rejected"
    assert set_priority(charger, "0") == "RebootRequired"


def test_attempts_per_profile_then_the_next_one(charger: Charger) -> None:
    profiles_of(charger)
    charger.connect()
    set_profile(charger, 1, data())
    set_priority(charger, "1,0")
    [result] = charger.set(item("OCPPCommCtrlr", "NetworkProfileConnectionAttempts", value="2"))
    assert result["attributeStatus"] == "Accepted"
    profiles = profiles_of(charger)
    tried = []
    for _ in range(5):
        profile = profiles.next_profile()
        tried.append(profile.url)
        profiles.attempt_failed(profile, REFUSED)
    b, a = "ws://b.example:9000/ocpp", A
    assert tried == [b, b, a, a, b]
    profile = profiles.next_profile()
    profiles.connected(profile)
    assert profiles.connected_slot == 1
    assert KeyValueState(charger.db).get(network.LAST_GOOD_KEY) == "1"
    assert not profiles.take_switched()  # the first connection of the run
    # Lost: the connected profile first, then on down the list.
    profiles.attempt_failed(profiles.next_profile(), REFUSED)
    profiles.attempt_failed(profiles.next_profile(), REFUSED)
    profile = profiles.next_profile()
    assert profile.url == a
    profiles.connected(profile)
    assert profiles.take_switched()  # B10.FR.10: register with the other CSMS
    assert not profiles.take_switched()


def test_fallback_to_the_last_working_profile(charger: Charger) -> None:
    """B10.FR.07: slot 0 worked; the priority now names slot 1 alone, which fails."""
    profiles = profiles_of(charger)
    profiles.connected(profiles.next_profile())  # slot 0 worked
    charger.connect()
    set_profile(charger, 1, data("ws://127.0.0.1:9/ocpp"))
    set_priority(charger, "1")
    charger.set(item("OCPPCommCtrlr", "NetworkProfileConnectionAttempts", value="1"))
    profiles = profiles_of(charger)
    assert profiles.order == [1]
    tried = []
    for _ in range(4):
        profile = profiles.next_profile()
        tried.append(profile.url)
        profiles.attempt_failed(profile, REFUSED)
    dead, a = "ws://127.0.0.1:9/ocpp", A
    assert tried == [dead, a, dead, a]


def test_message_timeout_of_the_connected_profile(charger: Charger) -> None:
    profiles_of(charger)
    charger.connect()
    set_profile(charger, 1, data(messageTimeout=7))
    set_priority(charger, "1")
    profiles = profiles_of(charger)
    profiles.connected(profiles.next_profile())
    assert charger.engine.options.call_timeout_s == 7.0


def test_unreadable_stored_profile_is_ignored(charger: Charger) -> None:
    profiles_of(charger)
    charger.connect()
    set_profile(charger, 1, data())
    set_profile(charger, 2, data())
    assert set_priority(charger, "1,2,0") == "RebootRequired"
    state = KeyValueState(charger.db)  # both damaged afterwards
    state.set("ocpp201.network.slot.1", "{not json")
    state.set("ocpp201.network.slot.2", json.dumps(data("ftp://x/")))
    profiles = profiles_of(charger)
    assert profiles.order == [0]
    assert profiles.stored(1) is None and profiles.stored(2) is None


def test_config_with_a_single_profile_keeps_retrying_it(charger: Charger) -> None:
    profiles = profiles_of(charger)
    for _ in range(7):
        profile = profiles.next_profile()
        assert profile.url == A
        profiles.attempt_failed(profile, REFUSED)


# ------------------------------------------------------------ NetworkConfigurationPriority
def priority_refusal(charger: Charger, value: str) -> dict[str, Any]:
    [result] = charger.set(item("OCPPCommCtrlr", "NetworkConfigurationPriority", value=value))
    assert result["attributeStatus"] == "Rejected", value
    return dict(result["attributeStatusInfo"])


def values_list(charger: Charger) -> str:
    entry = charger.model.find("OCPPCommCtrlr", "NetworkConfigurationPriority")
    assert entry is not None
    return ",".join(charger.model.characteristics(entry).values_list or ())


@pytest.mark.parametrize("value", ["2", "0,2", "1", "x", "1.0", "-1", "4", "0,0", "0,,1", " , "])
def test_priority_naming_a_slot_without_a_profile_is_rejected(charger: Charger, value: str) -> None:
    profiles_of(charger)
    charger.connect()
    info = priority_refusal(charger, value)
    assert info["reasonCode"] in ("InvalidValue", "TooLargeElement")
    assert info["additionalInfo"]
    assert charger.model.get("OCPPCommCtrlr", "NetworkConfigurationPriority") == "0"


def test_priority_may_name_the_slots_holding_a_profile(charger: Charger) -> None:
    profiles = profiles_of(charger)
    charger.connect()
    assert values_list(charger) == "0"
    assert profiles.usable_slots() == (0,)
    assert set_profile(charger, 2, data()) == {"status": "Accepted"}
    assert values_list(charger) == "0,2"
    assert set_priority(charger, "2,0") == "RebootRequired"
    assert set_priority(charger, "2") == "RebootRequired"
    assert priority_refusal(charger, "2,3")["reasonCode"] == "InvalidValue"
    assert profiles_of(charger).order == [2]
    # The report says which slots may be named.
    report = charger.result("GetBaseReport", {"requestId": 7, "reportBase": "FullInventory"})
    assert report["status"] == "Accepted"
    listed = [
        e
        for r in charger.drain_reports()
        for e in r.get("reportData", [])
        if e["variable"]["name"] == "NetworkConfigurationPriority"
    ]
    assert [e["variableCharacteristics"]["valuesList"] for e in listed] == ["0,2"]


def test_priority_may_not_name_a_profile_that_cannot_be_built(charger: Charger) -> None:
    """A stored profile that needs credentials the [csms] table no longer has."""
    KeyValueState(charger.db).set(
        "ocpp201.network.slot.1", json.dumps(data("wss://b.example/ocpp", securityProfile=2))
    )
    profiles = profiles_of(charger)
    charger.connect()
    assert profiles.usable_slots() == (0,)
    assert priority_refusal(charger, "1,0")["reasonCode"] == "InvalidValue"


def test_without_network_profiles_every_slot_is_listed(charger: Charger) -> None:
    """A 1.6-only charger has no NetworkProfiles: the device model keeps the static list."""
    assert values_list(charger) == "0,1,2,3"


# ---------------------------------------------------------------------------- in use
def test_security_profile_and_message_timeout_of_the_profile_in_use(
    rig_of: Callable[[Csms], Charger],
) -> None:
    csms = Csms(url=A, security_profile=1, basic_auth_password=PASSWORD, call_timeout_s=25)
    charger = rig_of(csms)
    profiles = profiles_of(charger)
    assert charger.model.get("SecurityCtrlr", "SecurityProfile") == "1"  # the [csms] table
    assert charger.model.get("OCPPCommCtrlr", "MessageTimeout") == "25"
    profiles.connected(profiles.next_profile())
    charger.connect()
    url = "wss://b.example/ocpp"
    assert set_profile(charger, 1, data(url, securityProfile=2, messageTimeout=9)) == {
        "status": "Accepted"
    }
    assert set_priority(charger, "1,0") == "RebootRequired"
    # Nothing changes before the restart.
    assert charger.model.get("SecurityCtrlr", "SecurityProfile") == "1"

    restarted = profiles_of(charger)
    assert charger.model.get("SecurityCtrlr", "SecurityProfile") == "1"  # the last connection
    restarted.connected(restarted.next_profile())
    assert restarted.connected_slot == 1
    assert charger.model.get("SecurityCtrlr", "SecurityProfile") == "2"
    assert charger.model.get("OCPPCommCtrlr", "MessageTimeout") == "9"
    assert charger.engine.options.call_timeout_s == 9.0
    [result] = charger.set(item("SecurityCtrlr", "SecurityProfile", value="3"))
    assert result["attributeStatus"] == "Rejected"  # read-only
    # Remembered: the next run reports 2 before it connects.
    profiles_of(charger)
    assert charger.model.get("SecurityCtrlr", "SecurityProfile") == "2"
    assert KeyValueState(charger.db).get(network.SECURITY_KEY) == "2"


# ---------------------------------------------------------------------------- downgrade
def secure_csms(tmp_path: Path, security_profile: int) -> Csms:
    cert = tmp_path / "client.pem"  # never opened: no connection is made here
    return Csms(
        url="wss://a.example/ocpp" if security_profile >= 2 else A,
        security_profile=security_profile,
        basic_auth_password=PASSWORD,
        client_certificate=cert,
        client_key=cert,
    )


def test_allow_security_profile_downgrade_is_a_persisted_boolean(
    charger: Charger, tmp_path: Path
) -> None:
    profiles_of(charger)
    charger.connect()
    [value] = charger.get(item("SecurityCtrlr", "AllowSecurityProfileDowngrade"))
    assert value["attributeStatus"] == "Accepted" and value["attributeValue"] == "false"
    [result] = charger.set(item("SecurityCtrlr", "AllowSecurityProfileDowngrade", value="maybe"))
    assert result["attributeStatus"] == "Rejected"
    [result] = charger.set(item("SecurityCtrlr", "AllowSecurityProfileDowngrade", value="TRUE"))
    assert result["attributeStatus"] == "Accepted"
    row = charger.db.query_one(
        "SELECT value FROM device_model_values WHERE variable = 'AllowSecurityProfileDowngrade'"
    )
    assert row is not None and row["value"] == "true"
    assert profiles_of(charger).allow_downgrade()


@pytest.mark.parametrize(
    ("current", "allow", "new", "accepted"),
    [
        (3, False, 2, False),
        (3, True, 2, True),
        (3, True, 1, False),
        (3, True, 0, False),
        (2, True, 1, False),
        (2, True, 0, False),
        (1, True, 0, False),
        (2, False, 3, True),
        (2, False, 2, True),
    ],
)
def test_set_network_profile_downgrade_rules(
    rig_of: Callable[[Csms], Charger],
    tmp_path: Path,
    current: int,
    allow: bool,
    new: int,
    accepted: bool,
) -> None:
    charger = rig_of(secure_csms(tmp_path, current))
    profiles = profiles_of(charger)
    profiles.connected(profiles.next_profile())
    charger.connect()
    if allow:
        charger.set(item("SecurityCtrlr", "AllowSecurityProfileDowngrade", value="true"))
    url = "wss://b.example/ocpp" if new >= 2 else "ws://b.example/ocpp"
    answer = set_profile(charger, 1, data(url, securityProfile=new))
    if accepted:
        assert answer == {"status": "Accepted"}
    else:
        assert answer["status"] == "Rejected"
        assert answer["statusInfo"]["reasonCode"] == "NoSecurityDowngrade"
        assert KeyValueState(charger.db).get("ocpp201.network.slot.1") is None


def test_downgrade_helper() -> None:
    assert network.downgrade_allowed(0, 3, False)
    assert not network.downgrade_allowed(3, 2, False)
    assert network.downgrade_allowed(3, 2, True)
    assert not network.downgrade_allowed(3, 1, True)
    assert not network.downgrade_allowed(1, 0, True)


def three_slots(rig_of: Callable[[Csms], Charger], tmp_path: Path) -> Charger:
    """[csms] profile 1 (slot 0); slot 1: profile 3, slot 2: profile 2; priority 1,2,0; then a
    restart that connects with slot 1 (profile 3 in use)."""
    charger = rig_of(secure_csms(tmp_path, 1))
    profiles = profiles_of(charger)
    profiles.connected(profiles.next_profile())
    charger.connect()
    assert set_profile(charger, 1, data("wss://b.example/ocpp", securityProfile=3)) == {
        "status": "Accepted"
    }
    assert set_profile(charger, 2, data("wss://c.example/ocpp", securityProfile=2)) == {
        "status": "Accepted"
    }
    assert set_priority(charger, "1,2,0") == "RebootRequired"
    charger.set(item("OCPPCommCtrlr", "NetworkProfileConnectionAttempts", value="1"))
    profiles = profiles_of(charger)
    assert profiles.order == [1, 2, 0]
    profiles.connected(profiles.next_profile())
    assert profiles.connected_slot == 1
    return charger


def test_the_chooser_never_falls_back_to_a_lower_security_profile(
    rig_of: Callable[[Csms], Charger], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    charger = three_slots(rig_of, tmp_path)
    # Also after a restart: profile 3 is remembered.
    profiles = profiles_of(charger)
    assert charger.model.get("SecurityCtrlr", "SecurityProfile") == "3"
    tried = []
    for _ in range(4):
        profile = profiles.next_profile()
        tried.append(profile.security_profile)
        profiles.attempt_failed(profile, REFUSED)
    assert tried == [3, 3, 3, 3]
    assert "security profile 2 is lower than 3" in caplog.text
    assert "security profile 1 is lower than 3" in caplog.text
    # Naming the lower slots is refused too.
    charger.connect()
    assert values_list(charger) == "1"
    assert priority_refusal(charger, "1,2")["reasonCode"] == "InvalidValue"


def test_the_chooser_may_go_from_3_to_2_when_allowed_never_to_1(
    rig_of: Callable[[Csms], Charger], tmp_path: Path
) -> None:
    charger = three_slots(rig_of, tmp_path)
    charger.connect()
    [result] = charger.set(item("SecurityCtrlr", "AllowSecurityProfileDowngrade", value="true"))
    assert result["attributeStatus"] == "Accepted"
    assert values_list(charger) == "1,2"
    profiles = profiles_of(charger)
    tried = []
    for _ in range(4):
        profile = profiles.next_profile()
        tried.append(profile.security_profile)
        profiles.attempt_failed(profile, REFUSED)
    assert tried == [3, 2, 3, 2]  # slot 0 (profile 1) never
    profile = profiles.next_profile()
    assert profile.security_profile == 3
    profiles.attempt_failed(profile, REFUSED)
    profiles.connected(profiles.next_profile())  # slot 2: profile 2 in use now
    assert charger.model.get("SecurityCtrlr", "SecurityProfile") == "2"
    assert KeyValueState(charger.db).get(network.SECURITY_KEY) == "2"


def test_a_local_change_below_the_remembered_profile_wins(
    charger: Charger, caplog: pytest.LogCaptureFixture
) -> None:
    """Only the operator (configuration file, database) can leave no allowed entry."""
    KeyValueState(charger.db).set(network.SECURITY_KEY, "3")
    profiles = profiles_of(charger)
    profile = profiles.next_profile()
    assert profile.url == A and profile.security_profile == 0
    assert "using the configured list as it is" in caplog.text
    profiles.connected(profile)
    assert KeyValueState(charger.db).get(network.SECURITY_KEY) == "0"


# ---------------------------------------------------------------------------- placeholder url
def test_a_placeholder_url_leaves_the_stored_profiles_in_use(
    rig_of: Callable[[Csms], Charger],
) -> None:
    charger = rig_of(Csms(url="ws://a.example/ocpp"))
    profiles = profiles_of(charger)
    profiles.connected(profiles.next_profile())
    charger.connect()
    set_profile(charger, 1, data())
    assert set_priority(charger, "1,0") == "RebootRequired"
    # The configuration file is reset to the packaged placeholder; the state stays.
    settings = dataclasses.replace(charger.settings, csms=Csms(url=PLACEHOLDER))
    profiles = network.NetworkProfiles(settings, charger.db, charger.model)
    assert profiles.order == [1]
    assert profiles.configured
    assert profiles.next_profile().url == "ws://b.example:9000/ocpp"


def test_placeholder_with_stored_profiles_outside_the_priority_list(
    rig_of: Callable[[Csms], Charger],
) -> None:
    """Priority "0" (the default) with a placeholder: the stored profiles are used."""
    charger = rig_of(Csms(url=PLACEHOLDER))
    state = KeyValueState(charger.db)
    state.set("ocpp201.network.slot.3", json.dumps(data("ws://c.example/ocpp")))
    state.set("ocpp201.network.slot.2", json.dumps(data()))
    profiles = profiles_of(charger)
    assert profiles.order == [2, 3] and profiles.configured
    # The last working one first.
    state.set(network.LAST_GOOD_KEY, "3")
    assert profiles_of(charger).order == [3, 2]


def test_placeholder_alone_is_not_configured(rig_of: Callable[[Csms], Charger]) -> None:
    charger = rig_of(Csms(url=PLACEHOLDER))
    profiles = profiles_of(charger)
    assert profiles.order == [0] and not profiles.configured
    assert profiles.next_profile().url == PLACEHOLDER  # what a forced attempt would use
    charger.connect()
    assert profiles.usable_slots() == ()
    assert priority_refusal(charger, "0")["reasonCode"] == "InvalidValue"


def test_a_placeholder_url_is_refused_in_set_network_profile(charger: Charger) -> None:
    profiles_of(charger)
    charger.connect()
    answer = set_profile(charger, 1, data("ws://csms.invalid/ocpp"))
    assert answer["status"] == "Rejected"
    assert answer["statusInfo"]["reasonCode"] == "InvalidNetworkConf"


# ---------------------------------------------------------------------------- OfflineThreshold
def link_of(charger: Charger) -> V201StationLink:
    return V201StationLink(
        charger.engine,
        charger.station,
        charger.db,
        charger.model,
        connectors={e.id: tuple(c.id for c in e.connectors) for e in charger.settings.evses},
    )


def statuses(frames: list[list[Any]]) -> list[tuple[int, int, str]]:
    return [
        (f[3]["evseId"], f[3]["connectorId"], f[3]["connectorStatus"])
        for f in frames
        if f[0] == 2 and f[2] == "StatusNotification"
    ]


def pump(charger: Charger) -> list[list[Any]]:
    """Acknowledge every queued CALL in turn; return them."""
    out: list[list[Any]] = []
    frames = charger.sent()
    while frames:
        frame = frames.pop(0)
        out.append(frame)
        if frame[0] == 2:
            charger.answer(frame[1], {})
            frames += charger.sent()
    return out


def test_offline_longer_than_the_threshold_reports_every_connector(charger: Charger) -> None:
    link = link_of(charger)
    monitor = network.OfflineMonitor(charger.clock, charger.model, link.report_all_statuses)
    charger.connect()
    [result] = charger.set(item("OCPPCommCtrlr", "OfflineThreshold", value="30"))
    assert result["attributeStatus"] == "Accepted"
    pump(charger)

    charger.disconnect()
    monitor.connection_closed()
    charger.clock.advance(10)
    charger.engine.connection_opened(OcppVersion.V201)
    assert not monitor.connection_opened(OcppVersion.V201)
    assert statuses(pump(charger)) == []

    charger.disconnect()
    monitor.connection_closed()
    charger.clock.advance(31)
    charger.engine.connection_opened(OcppVersion.V201)
    assert monitor.connection_opened(OcppVersion.V201)
    assert statuses(pump(charger)) == [
        (1, 1, "Available"),
        (2, 1, "Available"),
        (2, 2, "Available"),
    ]


def test_offline_threshold_only_under_201(charger: Charger) -> None:
    link = link_of(charger)
    monitor = network.OfflineMonitor(charger.clock, charger.model, link.report_all_statuses)
    assert not monitor.connection_opened(OcppVersion.V201)  # never offline in this run
    monitor.connection_closed()
    charger.clock.advance(3600)
    assert not monitor.connection_opened(OcppVersion.V16)


def test_network_profile_dataclass_is_frozen() -> None:
    profile = network.NetworkProfile(1, data())
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.slot = 2  # type: ignore[misc]
    assert profile.url == "ws://b.example:9000/ocpp"
