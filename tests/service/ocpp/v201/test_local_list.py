"""OCPP 2.0.1 D01 SendLocalList / D02 GetLocalListVersion and the LocalAuthListCtrlr variables,
through the real engine on a real list in SQLite (wired as service/charger.py wires it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.config import OcppKeyValue
from service.ocpp.rpc import OcppVersion
from service.ocpp.v16 import local_list as v16_local_list
from service.ocpp.v201.local_list import LocalListHandlers
from service.station.auth import AuthorizationCache, Authorizer, AuthSettings, AuthStatus
from service.station.local_list import LocalAuthList
from tests.service.ocpp.v201.conftest import T0, Charger, item


class Rig:
    def __init__(self, db_path: Path, **keys: OcppKeyValue) -> None:
        self.charger = charger = Charger(db_path, dict(keys))
        cfg = charger.cfg
        self.local = LocalAuthList(
            charger.db, max_entries=lambda: int(cfg.get("LocalAuthListMaxLength"))
        )
        charger.station.authorizer = Authorizer(
            AuthorizationCache(charger.db),
            lambda: AuthSettings.from_configuration(cfg),
            local_list=self.local,
        )
        self.types: dict[str, str] = {}
        v16_local_list.install(charger.engine, self.local, cfg)
        LocalListHandlers(
            charger.engine, self.local, charger.model, remember_type=self.types.__setitem__
        )
        charger.connect()

    def send(
        self, version: int, update: str, entries: list[dict[str, Any]] | None = None
    ) -> list[Any]:
        payload: dict[str, Any] = {"versionNumber": version, "updateType": update}
        if entries is not None:
            payload["localAuthorizationList"] = entries
        return self.charger.call("SendLocalList", payload)

    def status(self, version: int, update: str, entries: list[dict[str, Any]] | None = None) -> str:
        frame = self.send(version, update, entries)
        assert frame[0] == 3, frame
        value: str = frame[2]["status"]
        return value

    def version(self) -> int:
        value: int = self.charger.result("GetLocalListVersion", {})["versionNumber"]
        return value

    def variable(self, name: str) -> str:
        [result] = self.charger.get(item("LocalAuthListCtrlr", name))
        assert result["attributeStatus"] == "Accepted", result
        value: str = result["attributeValue"]
        return value

    def listed(self) -> dict[str, str]:
        return {e.id_token: str(e.info.status) for e in self.local.entries() if e.info is not None}


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path / "evsed.db", SendLocalListMaxLength=3, LocalAuthListMaxLength=4)
    yield made
    made.charger.close()


def token(
    id_token: str, state: str | None = "Accepted", kind: str = "ISO14443", **info: Any
) -> dict[str, Any]:
    data: dict[str, Any] = {"idToken": {"idToken": id_token, "type": kind}}
    if state is not None:
        data["idTokenInfo"] = {"status": state, **info}
    return data


def test_d01_d02_full_differential_and_version(rig: Rig) -> None:
    assert (rig.version(), rig.variable("Entries")) == (0, "0")  # D02.FR.02
    entries = [
        token("123"),
        token(
            "124",
            cacheExpiryDateTime="2030-01-01T00:00:00Z",
            groupIdToken={"idToken": "FLEET", "type": "Central"},
        ),
        token("125", "Blocked", kind="eMAID"),
    ]
    assert rig.status(10, "Full", entries) == "Accepted"
    assert (rig.version(), rig.variable("Entries")) == (10, "3")
    info = rig.local.get("124", T0)
    assert info is not None and info.parent_id_tag == "FLEET" and info.expiry is not None
    assert rig.types == {"123": "ISO14443", "124": "ISO14443", "125": "eMAID"}
    # D01.FR.16 update and add, D01.FR.17 remove when idTokenInfo is absent.
    diff = [token("123", "Blocked"), token("126", kind="Central"), token("125", None)]
    assert rig.status(11, "Differential", diff) == "Accepted"
    assert rig.listed() == {"123": "Blocked", "124": "Accepted", "126": "Accepted"}
    assert rig.types["126"] == "Central"
    # D01.FR.05: a differential update without entries just sets the version.
    assert rig.status(12, "Differential") == "Accepted"
    # D01.FR.04: a full update without entries empties the list; a lower version is fine.
    assert rig.status(2, "Full") == "Accepted"
    assert (rig.version(), rig.variable("Entries")) == (2, "0")


def test_d01_refusals(rig: Rig) -> None:
    rig.status(5, "Full", [token("A")])
    # D01.FR.18: versionNumber 0 or below.
    for bad in (0, -3):
        frame = rig.send(bad, "Full", [token("B")])
        assert frame[2]["status"] == "Failed"
        assert frame[2]["statusInfo"]["reasonCode"] == "InvalidValue"
    # D01.FR.19: differential not above the current version.
    assert rig.status(5, "Differential", [token("B")]) == "VersionMismatch"
    # D01.FR.06: a token twice; and a full update needs every idTokenInfo.
    assert rig.status(6, "Full", [token("B"), token("b")]) == "Failed"
    assert rig.status(6, "Full", [token("B"), token("C", None)]) == "Failed"
    # The list would hold more than Entries' maxLimit (LocalAuthListMaxLength = 4).
    frame = rig.send(6, "Differential", [token("B"), token("C"), token("D")])
    assert frame[2] == {"status": "Accepted"}
    frame = rig.send(7, "Differential", [token("F")])
    assert frame[2]["status"] == "Failed"
    assert frame[2]["statusInfo"]["reasonCode"] == "TooManyElements"
    # More entries than ItemsPerMessage (SendLocalListMaxLength = 3) in one request.
    frame = rig.send(8, "Full", [token(t) for t in "WXYZ"])
    assert frame[0] == 4 and frame[2] == "OccurrenceConstraintViolation"
    # An idTokenInfo the station cannot read.
    frame = rig.send(8, "Full", [token("W", cacheExpiryDateTime="someday")])
    assert frame[0] == 4 and frame[2] == "PropertyConstraintViolation"
    assert rig.version() == 6 and set(rig.listed()) == {"A", "B", "C", "D"}


def test_bytes_per_message(tmp_path: Path) -> None:
    made = Rig(tmp_path / "evsed.db", SendLocalListMaxLength=10_000, LocalAuthListMaxLength=10_000)
    try:
        limit = int(made.variable("BytesPerMessage"))
        count = limit // 60 + 1  # each entry is more than 60 bytes on the wire
        frame = made.send(1, "Full", [token(f"TOKEN-{n:08d}") for n in range(count)])
        assert frame[0] == 4 and frame[2] == "FormatViolation"
        assert made.version() == 0
    finally:
        made.charger.close()


def test_disabled_list_fails_and_reports_version_zero(rig: Rig) -> None:
    rig.status(3, "Full", [token("A")])
    [result] = rig.charger.set(item("LocalAuthListCtrlr", "Enabled", value="false"))
    assert result["attributeStatus"] == "Accepted"
    assert rig.charger.cfg.get("LocalAuthListEnabled") is False  # one setting, two names
    assert rig.version() == 0  # D02.FR.03
    frame = rig.send(4, "Full", [token("B")])
    assert frame[2]["status"] == "Failed" and frame[2]["statusInfo"]["reasonCode"] == "Disabled"
    rig.charger.set(item("LocalAuthListCtrlr", "Enabled", value="true"))
    assert (rig.version(), rig.listed()) == (3, {"A": "Accepted"})


def test_local_auth_list_ctrlr_variables(rig: Rig) -> None:
    assert rig.variable("Available") == "true"
    assert rig.variable("Enabled") == "true"
    assert rig.variable("ItemsPerMessage") == "3"
    assert int(rig.variable("BytesPerMessage")) > 0
    rig.status(1, "Full", [token("A"), token("B")])
    [result] = rig.charger.result(
        "GetReport",
        {
            "requestId": 1,
            "componentVariable": [
                {"component": {"name": "LocalAuthListCtrlr"}, "variable": {"name": "Entries"}}
            ],
        },
    ).values()
    assert result == "Accepted"
    [page] = rig.charger.drain_reports()
    [entry] = page["reportData"]
    assert entry["variableAttribute"][0]["value"] == "2"
    assert entry["variableCharacteristics"]["maxLimit"] == 4  # LocalAuthListMaxLength
    for name in ("Entries", "ItemsPerMessage", "Available"):
        [refused] = rig.charger.set(item("LocalAuthListCtrlr", name, value="1"))
        assert refused["attributeStatus"] == "Rejected"


def test_one_list_for_both_versions(rig: Rig) -> None:
    rig.status(4, "Full", [token("A", "Blocked")])
    rig.charger.disconnect()
    rig.charger.connect(OcppVersion.V16)
    assert rig.charger.result("GetLocalListVersion", {}) == {"listVersion": 4}
    answer = rig.charger.result(
        "SendLocalList",
        {
            "listVersion": 5,
            "updateType": "Differential",
            "localAuthorizationList": [{"idTag": "B", "idTagInfo": {"status": "Accepted"}}],
        },
    )
    assert answer == {"status": "Accepted"}
    rig.charger.disconnect()
    rig.charger.connect()
    assert rig.version() == 5
    info = rig.local.get("A", T0)
    assert info is not None and info.status is AuthStatus.BLOCKED
