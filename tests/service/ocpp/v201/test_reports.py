"""B07 GetBaseReport and B08 GetReport: answers, then paged NotifyReports through the engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from service.ocpp.rpc import Call
from service.ocpp.v201.reports import SUMMARY_VARIABLES
from tests.service.ocpp.v201.conftest import Charger

Report = list[dict[str, Any]]


def base_report(
    charger: Charger, base: str, request_id: int = 7
) -> tuple[str, list[dict[str, Any]]]:
    answer = charger.result("GetBaseReport", {"requestId": request_id, "reportBase": base})
    return answer["status"], charger.drain_reports()


def report(
    charger: Charger,
    *,
    variables: list[dict[str, Any]] | None = None,
    criteria: list[str] | None = None,
    request_id: int = 9,
) -> tuple[str, list[dict[str, Any]]]:
    payload: dict[str, Any] = {"requestId": request_id}
    if variables is not None:
        payload["componentVariable"] = variables
    if criteria is not None:
        payload["componentCriteria"] = criteria
    answer = charger.result("GetReport", payload)
    return answer["status"], charger.drain_reports()


def data(pages: list[dict[str, Any]]) -> Report:
    return [entry for page in pages for entry in page["reportData"]]


def names(entries: Report) -> set[tuple[str, int | None, str, str | None]]:
    return {
        (
            e["component"]["name"],
            e["component"].get("evse", {}).get("id"),
            e["variable"]["name"],
            e["variable"].get("instance"),
        )
        for e in entries
    }


def find(entries: Report, component: str, variable: str, evse: int | None = None) -> dict[str, Any]:
    for e in entries:
        if (
            e["component"]["name"] == component
            and e["variable"]["name"] == variable
            and e["component"].get("evse", {}).get("id") == evse
        ):
            return e
    raise AssertionError(f"{component}.{variable} not reported")


def test_full_inventory_is_paged(charger: Charger) -> None:
    status, pages = base_report(charger, "FullInventory", request_id=41)
    assert status == "Accepted"
    total = len(list(charger.model.entries()))
    assert len(pages) == -(-total // 32) > 1
    assert [p["seqNo"] for p in pages] == list(range(len(pages)))
    assert [p["tbc"] for p in pages] == [True] * (len(pages) - 1) + [False]
    assert {p["requestId"] for p in pages} == {41}
    assert len({p["generatedAt"] for p in pages}) == 1
    assert all(len(p["reportData"]) <= 32 for p in pages)
    entries = data(pages)
    addresses = {json.dumps([e["component"], e["variable"]], sort_keys=True) for e in entries}
    assert len(entries) == total == len(addresses)


def test_every_page_fits_bytes_per_message(charger: Charger) -> None:
    charger.set(
        {
            "component": {"name": "SecurityCtrlr"},
            "variable": {"name": "OrganizationName"},
            "attributeValue": "o" * 50,
        }
    )
    unique_id = "x" * 36
    _, pages = base_report(charger, "FullInventory")
    for page in pages:
        frame = json.dumps([2, unique_id, "NotifyReport", page], separators=(",", ":"))
        assert len(frame.encode()) <= 16384


def test_report_content(charger: Charger) -> None:
    _, pages = base_report(charger, "FullInventory")
    entries = data(pages)
    heartbeat = find(entries, "OCPPCommCtrlr", "HeartbeatInterval")
    assert heartbeat["variableAttribute"] == [
        {
            "type": "Actual",
            "mutability": "ReadWrite",
            "persistent": True,
            "constant": False,
            "value": "300",
        }
    ]
    assert heartbeat["variableCharacteristics"] == {
        "dataType": "integer",
        "supportsMonitoring": False,
        "unit": "s",
        "minLimit": 1,
        "maxLimit": 86400,
    }
    password = find(entries, "SecurityCtrlr", "BasicAuthPassword")
    assert password["variableAttribute"] == [
        {
            "type": "WriteOnly" and "Actual",
            "mutability": "WriteOnly",
            "persistent": False,
            "constant": False,
        }
    ]
    power = find(entries, "EVSE", "Power", evse=1)
    assert [a["type"] for a in power["variableAttribute"]] == ["Actual", "MaxSet"]
    assert power["variableAttribute"][1]["value"] == "22080"
    assert power["variableCharacteristics"]["maxLimit"] == 22080
    model = find(entries, "ChargingStation", "Model")
    assert model["variableAttribute"][0]["constant"] is True
    state = find(entries, "EVSE", "AvailabilityState", evse=2)
    assert state["variableAttribute"][0]["persistent"] is False
    assert state["variableCharacteristics"]["valuesList"] == (
        "Available,Occupied,Reserved,Unavailable,Faulted"
    )
    connector = [e for e in entries if e["component"]["name"] == "Connector"]
    assert {json.dumps(e["component"]["evse"], sort_keys=True) for e in connector} == {
        '{"connectorId": 1, "id": 1}',
        '{"connectorId": 1, "id": 2}',
        '{"connectorId": 2, "id": 2}',
    }


def test_configuration_inventory_lists_what_the_csms_can_set(charger: Charger) -> None:
    status, pages = base_report(charger, "ConfigurationInventory")
    entries = data(pages)
    assert status == "Accepted"
    reported = names(entries)
    assert ("OCPPCommCtrlr", None, "HeartbeatInterval", None) in reported
    assert ("TxCtrlr", None, "TxStartPoint", None) in reported
    assert ("SecurityCtrlr", None, "BasicAuthPassword", None) in reported
    assert ("SecurityCtrlr", None, "SecurityProfile", None) not in reported
    assert all(a["mutability"] != "ReadOnly" for e in entries for a in e["variableAttribute"])


def test_summary_inventory_says_how_the_station_is(charger: Charger) -> None:
    status, pages = base_report(charger, "SummaryInventory")
    entries = data(pages)
    assert status == "Accepted" and len(pages) == 1
    assert {e["variable"]["name"] for e in entries} <= SUMMARY_VARIABLES
    assert ("EVSE", 2, "AvailabilityState", None) in names(entries)
    assert ("ChargingStation", None, "Problem", None) in names(entries)


def test_an_unknown_report_base(charger: Charger) -> None:
    # The schema refuses it before any handler runs...
    answer = charger.call("GetBaseReport", {"requestId": 1, "reportBase": "EverythingElse"})
    assert answer[0] == 4 and answer[2] == "PropertyConstraintViolation"
    # ...and the handler itself answers NotSupported for a base it does not know.
    call = Call("u-1", "GetBaseReport", {"requestId": 1, "reportBase": "EverythingElse"})
    assert charger.reports.get_base_report(call) == {"status": "NotSupported"}
    assert charger.engine.queue_length == 0


def test_get_report_by_component_and_variable(charger: Charger) -> None:
    status, pages = report(
        charger,
        variables=[
            {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}},
            {"component": {"name": "EVSE", "evse": {"id": 2}}},
            {"component": {"name": "DeviceDataCtrlr"}, "variable": {"name": "ItemsPerMessage"}},
            {
                "component": {"name": "Connector", "evse": {"id": 2, "connectorId": 2}},
                "variable": {"name": "ConnectorType"},
            },
        ],
    )
    assert status == "Accepted"
    reported = names(data(pages))
    assert ("OCPPCommCtrlr", None, "HeartbeatInterval", None) in reported
    assert {r for r in reported if r[0] == "EVSE"} == {
        ("EVSE", 2, name, None)
        for name in ("AvailabilityState", "Available", "Power", "Problem", "SupplyPhases")
    }
    assert {r[3] for r in reported if r[0] == "DeviceDataCtrlr"} == {
        "GetReport",
        "GetVariables",
        "SetVariables",
    }
    assert ("Connector", 2, "ConnectorType", None) in reported
    assert len(reported) == 1 + 5 + 3 + 1


def test_get_report_by_criteria(charger: Charger) -> None:
    assert report(charger, criteria=["Problem"]) == ("EmptyResultSet", [])
    assert report(charger, criteria=["Active"]) == ("EmptyResultSet", [])
    charger.station.raise_fault(1, "HighTemperature", "too hot")
    status, pages = report(charger, criteria=["Problem"])
    assert status == "Accepted"
    components = {
        (e["component"]["name"], e["component"].get("evse", {}).get("id")) for e in data(pages)
    }
    assert components == {("ChargingStation", None), ("EVSE", 1), ("Connector", 1)}
    _, pages = report(charger, criteria=["Enabled"])
    enabled = {e["component"]["name"] for e in data(pages)}
    assert enabled == {"AuthCtrlr", "AuthCacheCtrlr", "LocalAuthListCtrlr"}
    charger.set(
        {
            "component": {"name": "AuthCacheCtrlr"},
            "variable": {"name": "Enabled"},
            "attributeValue": "false",
        }
    )
    _, pages = report(charger, criteria=["Enabled", "Problem"])
    assert {e["component"]["name"] for e in data(pages)} == {
        "AuthCtrlr",
        "LocalAuthListCtrlr",
        "ChargingStation",
        "EVSE",
        "Connector",
    }


def test_criteria_and_filters_together(charger: Charger) -> None:
    reservations = [{"component": {"name": "ReservationCtrlr"}}]
    assert report(charger, variables=reservations, criteria=["Available"]) == (
        "EmptyResultSet",
        [],
    )
    status, pages = report(
        charger,
        variables=[{"component": {"name": "EVSE"}, "variable": {"name": "Power"}}],
        criteria=["Available"],
    )
    assert status == "Accepted"
    assert names(data(pages)) == {("EVSE", 1, "Power", None), ("EVSE", 2, "Power", None)}


def test_nothing_selected_is_an_empty_result_set(charger: Charger) -> None:
    assert report(charger, variables=[{"component": {"name": "NoSuchCtrlr"}}]) == (
        "EmptyResultSet",
        [],
    )
    assert report(charger, variables=[{"component": {"name": "EVSE", "evse": {"id": 5}}}]) == (
        "EmptyResultSet",
        [],
    )
    assert charger.engine.queue_length == 0


def test_too_many_component_variables(charger: Charger) -> None:
    many = [{"component": {"name": "EVSE", "evse": {"id": 1}}}] * 33
    answer = charger.call("GetReport", {"requestId": 3, "componentVariable": many})
    assert answer[0] == 4 and answer[2] == "OccurrenceConstraintViolation"
    assert charger.engine.queue_length == 0


def test_reports_are_durable_once_registered(charger: Charger) -> None:
    charger.result("GetBaseReport", {"requestId": 5, "reportBase": "FullInventory"})
    pages = -(-len(list(charger.model.entries())) // 32)  # ceil
    assert charger.engine.queue_length == pages  # committed before the first goes out
    [first] = charger.rest
    assert first[2] == "NotifyReport" and first[3]["seqNo"] == 0
    charger.disconnect()  # the link drops before the report is through
    charger.connect()
    assert charger.rest[0][1] == first[1]  # the same page, the same message id
    assert [p["seqNo"] for p in charger.drain_reports()] == list(range(pages))
    assert charger.engine.queue_length == 0


def test_reports_while_pending_go_out_as_requested_messages(tmp_path: Path) -> None:
    rig = Charger(tmp_path / "evsed.db")
    try:
        rig.connect(status="Pending")
        status, pages = base_report(rig, "SummaryInventory", request_id=12)
        assert status == "Accepted"
        assert pages and pages[-1]["tbc"] is False and pages[0]["requestId"] == 12
        assert rig.engine.queue_length == 0
    finally:
        rig.close()
