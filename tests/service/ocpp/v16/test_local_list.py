"""OCPP 1.6 SendLocalList / GetLocalListVersion through the real engine, on a real list in
SQLite (the charger of the device model tests, with the list wired as service/charger.py does)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.config import OcppKeyValue
from service.ocpp.rpc import OcppVersion
from service.ocpp.v16 import local_list as v16_local_list
from service.station.auth import AuthorizationCache, Authorizer, AuthSettings, AuthStatus
from service.station.local_list import LocalAuthList
from tests.service.ocpp.v201.conftest import Charger

T0 = 1_800_000_000.0


def make(db_path: Path, **keys: OcppKeyValue) -> tuple[Charger, LocalAuthList]:
    charger = Charger(db_path, dict(keys))
    cfg = charger.cfg
    local = LocalAuthList(charger.db, max_entries=lambda: int(cfg.get("LocalAuthListMaxLength")))
    charger.station.authorizer = Authorizer(
        AuthorizationCache(charger.db),
        lambda: AuthSettings.from_configuration(cfg),
        local_list=local,
    )
    v16_local_list.install(charger.engine, local, cfg)
    charger.connect(OcppVersion.V16)
    return charger, local


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Charger, LocalAuthList]]:
    charger, local = make(tmp_path / "evsed.db", SendLocalListMaxLength=3, LocalAuthListMaxLength=4)
    yield charger, local
    charger.close()


def send(
    charger: Charger, version: int, update: str, entries: list[dict[str, Any]] | None = None
) -> list[Any]:
    payload: dict[str, Any] = {"listVersion": version, "updateType": update}
    if entries is not None:
        payload["localAuthorizationList"] = entries
    return charger.call("SendLocalList", payload)


def status(frame: list[Any]) -> str:
    assert frame[0] == 3, frame
    value: str = frame[2]["status"]
    return value


def tag(id_tag: str, state: str | None = "Accepted", **info: str) -> dict[str, Any]:
    data: dict[str, Any] = {"idTag": id_tag}
    if state is not None:
        data["idTagInfo"] = {"status": state, **info}
    return data


def version(charger: Charger) -> int:
    value: int = charger.result("GetLocalListVersion", {})["listVersion"]
    return value


def listed(local: LocalAuthList) -> dict[str, str]:
    return {e.id_token: str(e.info.status) for e in local.entries() if e.info is not None}


def test_full_then_differential_then_version(rig: tuple[Charger, LocalAuthList]) -> None:
    charger, local = rig
    assert version(charger) == 0  # no list installed yet
    entries = [tag("A"), tag("B", expiryDate="2030-01-01T00:00:00Z", parentIdTag="FLEET")]
    assert status(send(charger, 1, "Full", entries)) == "Accepted"
    assert version(charger) == 1
    info = local.get("B", T0)
    assert info is not None and info.parent_id_tag == "FLEET" and info.expiry is not None
    assert status(send(charger, 2, "Differential", [tag("A", None), tag("C", "Blocked")])) == (
        "Accepted"
    )
    assert version(charger) == 2
    assert listed(local) == {"B": "Accepted", "C": "Blocked"}
    # Full with no list empties it and sets the version.
    assert status(send(charger, 5, "Full")) == "Accepted"
    assert (version(charger), len(local)) == (5, 0)


def test_a_differential_update_must_raise_the_version(rig: tuple[Charger, LocalAuthList]) -> None:
    charger, local = rig
    send(charger, 4, "Full", [tag("A")])
    assert status(send(charger, 4, "Differential", [tag("B")])) == "VersionMismatch"
    assert status(send(charger, 3, "Differential", [tag("B")])) == "VersionMismatch"
    assert (version(charger), listed(local)) == (4, {"A": "Accepted"})


def test_too_long_lists_fail_and_change_nothing(rig: tuple[Charger, LocalAuthList]) -> None:
    charger, local = rig
    send(charger, 1, "Full", [tag("A"), tag("B")])
    # More than SendLocalListMaxLength (3) in one request.
    assert status(send(charger, 2, "Full", [tag(t) for t in "CDEF"])) == "Failed"
    # The list would hold 5 > LocalAuthListMaxLength (4).
    assert status(send(charger, 2, "Differential", [tag(t) for t in "CDE"])) == "Failed"
    assert (version(charger), listed(local)) == (1, {"A": "Accepted", "B": "Accepted"})
    # Up to the limit is fine.
    assert status(send(charger, 2, "Differential", [tag(t) for t in "CD"])) == "Accepted"
    assert len(local) == 4


def test_bad_lists(rig: tuple[Charger, LocalAuthList]) -> None:
    charger, local = rig
    assert status(send(charger, 1, "Full", [tag("A"), tag("a")])) == "Failed"  # twice
    assert status(send(charger, 1, "Full", [tag("A"), tag("B", None)])) == "Failed"  # no info
    assert status(send(charger, -1, "Full", [tag("A")])) == "Failed"
    frame = send(charger, 1, "Full", [tag("A", expiryDate="next tuesday")])
    assert frame[0] == 4 and frame[2] == "PropertyConstraintViolation" and "A" in frame[3]
    frame = charger.call("SendLocalList", {"listVersion": 1})  # no updateType
    assert frame[0] == 4 and frame[2] in ("FormationViolation", "OccurenceConstraintViolation")
    frame = send(charger, 1, "Full", [tag("X" * 21)])  # CiString20
    assert frame[0] == 4
    assert (version(charger), len(local)) == (0, 0)


def test_disabled_list_is_not_supported_but_keeps_its_version(
    rig: tuple[Charger, LocalAuthList],
) -> None:
    charger, local = rig
    send(charger, 3, "Full", [tag("A")])
    assert charger.result(
        "ChangeConfiguration", {"key": "LocalAuthListEnabled", "value": "false"}
    ) == {"status": "Accepted"}
    assert status(send(charger, 4, "Full", [tag("B")])) == "NotSupported"
    assert (version(charger), listed(local)) == (3, {"A": "Accepted"})
    assert not charger.station.authorizer.list_enabled()


def test_keys_and_feature_profile(rig: tuple[Charger, LocalAuthList]) -> None:
    charger, _ = rig
    keys = charger.result(
        "GetConfiguration",
        {
            "key": [
                "LocalAuthListEnabled",
                "LocalAuthListMaxLength",
                "SendLocalListMaxLength",
                "SupportedFeatureProfiles",
            ]
        },
    )["configurationKey"]
    assert {k["key"]: (k["value"], k["readonly"]) for k in keys} == {
        "LocalAuthListEnabled": ("true", False),
        "LocalAuthListMaxLength": ("4", True),
        "SendLocalListMaxLength": ("3", True),
        "SupportedFeatureProfiles": (
            "Core,FirmwareManagement,LocalAuthListManagement,RemoteTrigger",
            True,
        ),
    }
    assert charger.result(
        "ChangeConfiguration", {"key": "LocalAuthListMaxLength", "value": "9"}
    ) == {"status": "Rejected"}


def test_the_list_survives_a_restart(tmp_path: Path) -> None:
    charger, _ = make(tmp_path / "evsed.db")
    try:
        send(charger, 7, "Full", [tag("A", "Blocked")])
    finally:
        charger.close()
    charger, local = make(tmp_path / "evsed.db")
    try:
        assert version(charger) == 7
        info = local.get("a", T0)
        assert info is not None and info.status is AuthStatus.BLOCKED
    finally:
        charger.close()
