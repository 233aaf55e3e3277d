"""B09 SetNetworkProfile, B10 profile order and fallback, OfflineThreshold: through the engine,
with the real device model, SQLite, station and 2.0.1 link (tests/service/ocpp/v201/conftest)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
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


@pytest.fixture
def charger(tmp_path: Path) -> Iterator[Charger]:
    rig = Charger(tmp_path / "evsed.db")
    yield rig
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
    assert first.url == "ws://csms.invalid/ocpp"
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
    assert set_priority(charger, "2,0") == "RebootRequired"
    # Slot 2 has no profile: it is skipped, the charger keeps slot 0.
    assert profiles_of(charger).order == [0]


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
    b, a = "ws://b.example:9000/ocpp", "ws://csms.invalid/ocpp"
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
    dead, a = "ws://127.0.0.1:9/ocpp", "ws://csms.invalid/ocpp"
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
    state = KeyValueState(charger.db)
    state.set("ocpp201.network.slot.1", "{not json")
    state.set("ocpp201.network.slot.2", json.dumps(data("ftp://x/")))
    charger.connect()
    set_priority(charger, "1,2,0")
    profiles = profiles_of(charger)
    assert profiles.order == [0]
    assert profiles.stored(1) is None and profiles.stored(2) is None


def test_config_with_a_single_profile_keeps_retrying_it(charger: Charger) -> None:
    profiles = profiles_of(charger)
    for _ in range(7):
        profile = profiles.next_profile()
        assert profile.url == "ws://csms.invalid/ocpp"
        profiles.attempt_failed(profile, REFUSED)


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
