"""The 2.0.1 device model through the real daemon: GetVariables / SetVariables (B05, B06),
GetBaseReport / GetReport with paged NotifyReports (B07, B08), bad input, and the settings
1.6 and 2.0.1 share, across a reconnect under the other version and across a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from testcsms.server import CallErrorReceived, Received, TestCsms
from tests.integration.conftest import DaemonProcess, start_daemon, write_config

CP = "CP-IT-1"
V201 = '["ocpp2.0.1"]'


def var(
    component: str,
    variable: str,
    *,
    evse: int | None = None,
    connector: int | None = None,
    instance: str | None = None,
    attribute: str | None = None,
    value: str | None = None,
) -> dict[str, Any]:
    comp: dict[str, Any] = {"name": component}
    if evse is not None:
        comp["evse"] = {"id": evse} if connector is None else {"id": evse, "connectorId": connector}
    variable_: dict[str, Any] = {"name": variable}
    if instance is not None:
        variable_["instance"] = instance
    data: dict[str, Any] = {"component": comp, "variable": variable_}
    if attribute is not None:
        data["attributeType"] = attribute
    if value is not None:
        data["attributeValue"] = value
    return data


async def get(csms: TestCsms, *items: dict[str, Any]) -> list[dict[str, Any]]:
    answer = await csms.call(CP, "GetVariables", {"getVariableData": list(items)})
    results: list[dict[str, Any]] = answer["getVariableResult"]
    return results


async def set_(csms: TestCsms, *items: dict[str, Any]) -> list[dict[str, Any]]:
    answer = await csms.call(CP, "SetVariables", {"setVariableData": list(items)})
    results: list[dict[str, Any]] = answer["setVariableResult"]
    return results


def statuses(results: list[dict[str, Any]]) -> list[str]:
    return [r["attributeStatus"] for r in results]


async def start(
    csms: TestCsms,
    daemons: list[DaemonProcess],
    tmp_path: Path,
    versions: str = V201,
    evses: int = 1,
) -> DaemonProcess:
    config = write_config(tmp_path, csms.url, versions=versions, evses=evses)
    since = len(csms.received)
    daemon = await start_daemon(config, tmp_path)
    daemons.append(daemon)
    await daemon.wait_notification("READY=1")
    await csms.wait_for("BootNotification", since=since)
    return daemon


def _notify_report(request_id: int) -> Any:
    def match(r: Received) -> bool:
        return (
            r.direction == "in"
            and r.message_type == 2
            and r.action == "NotifyReport"
            and r.payload.get("requestId") == request_id
        )

    return match


async def collect_report(csms: TestCsms, request_id: int, since: int) -> list[dict[str, Any]]:
    """Every NotifyReport of one report, once its last page (tbc false) has arrived."""
    match = _notify_report(request_id)
    await csms.wait_until(
        lambda: any(match(r) and not r.payload.get("tbc", False) for r in csms.received[since:])
    )
    return [r.payload for r in csms.received[since:] if match(r)]


def report_data(pages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for page in pages for entry in page["reportData"]]


async def test_get_and_set_variables(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    daemon = await start(csms, daemons, tmp_path, evses=2)
    results = await get(
        csms,
        var("OCPPCommCtrlr", "HeartbeatInterval"),
        var("OCPPCommCtrlr", "MessageAttempts", instance="TransactionEvent"),
        var("ChargingStation", "Model"),
        var("EVSE", "AvailabilityState", evse=2),
        var("Connector", "ConnectorType", evse=1, connector=1),
        var("EVSE", "Power", evse=1, attribute="MaxSet"),
        var("SecurityCtrlr", "Identity"),
        var("NoSuchCtrlr", "Enabled"),
        var("EVSE", "AvailabilityState", evse=3),  # only EVSEs 1 and 2 exist
        var("OCPPCommCtrlr", "NoSuchVariable"),
        var("OCPPCommCtrlr", "HeartbeatInterval", attribute="Target"),
        var("SecurityCtrlr", "BasicAuthPassword"),
    )
    assert statuses(results) == ["Accepted"] * 7 + [
        "UnknownComponent",
        "UnknownComponent",
        "UnknownVariable",
        "NotSupportedAttributeType",
        "Rejected",
    ]
    assert [r["attributeValue"] for r in results[:7]] == [
        "300",
        "3",
        "it-test",
        "Available",
        "cType2",
        "22080",
        CP,
    ]
    assert results[8]["attributeStatusInfo"]["reasonCode"] == "UnknownEvse"

    results = await set_(
        csms,
        var("OCPPCommCtrlr", "HeartbeatInterval", value="1"),
        var("OCPPCommCtrlr", "WebSocketPingInterval", value="7"),
        var("TxCtrlr", "TxStartPoint", value="EVConnected"),
        var("OCPPCommCtrlr", "HeartbeatInterval", value="-5"),  # out of range
        var("OCPPCommCtrlr", "HeartbeatInterval", value="often"),  # wrong type
        var("SecurityCtrlr", "SecurityProfile", value="1"),  # read-only
        var("EVSE", "Power", evse=9, value="1"),  # wrong EVSE
        var("TxCtrlr", "TxStartPoint", attribute="MinSet", value="EVConnected"),
        var("NoSuchCtrlr", "X", value="1"),
    )
    assert statuses(results) == [
        "Accepted",
        "RebootRequired",
        "Accepted",
        "Rejected",
        "Rejected",
        "Rejected",
        "UnknownComponent",
        "NotSupportedAttributeType",
        "UnknownComponent",
    ]
    assert [r["component"]["name"] for r in results] == [
        "OCPPCommCtrlr",
        "OCPPCommCtrlr",
        "TxCtrlr",
        "OCPPCommCtrlr",
        "OCPPCommCtrlr",
        "SecurityCtrlr",
        "EVSE",
        "TxCtrlr",
        "NoSuchCtrlr",
    ]
    # The new heartbeat interval drives the engine at once: heartbeats every second.
    since = len(csms.received)
    await csms.wait_for("Heartbeat", since=since, count=2, timeout=6)
    results = await get(
        csms, var("TxCtrlr", "TxStartPoint"), var("OCPPCommCtrlr", "WebSocketPingInterval")
    )
    assert [r["attributeValue"] for r in results] == ["EVConnected", "7"]

    # Oversized requests: the CALLERRORs B05 / B06 allow, and nothing applied.
    with pytest.raises(CallErrorReceived) as caught:
        await get(csms, *[var("OCPPCommCtrlr", "HeartbeatInterval")] * 33)
    assert caught.value.error_code == "OccurrenceConstraintViolation"
    with pytest.raises(CallErrorReceived) as caught:
        await set_(csms, *[var("SecurityCtrlr", "OrganizationName", value="z" * 1000)] * 17)
    assert caught.value.error_code == "FormatViolation"
    [result] = await get(csms, var("SecurityCtrlr", "OrganizationName"))
    assert result["attributeValue"] == "evsed"  # [identity] vendor, unchanged
    # A request the schema refuses never reaches the device model.
    with pytest.raises(CallErrorReceived) as caught:
        await csms.call(
            CP,
            "SetVariables",
            {
                "setVariableData": [
                    {
                        "component": {"name": "TxCtrlr"},
                        "variable": {"name": "TxStartPoint"},
                        "attributeValue": 5,
                    }
                ]
            },
            validate=False,
        )
    assert caught.value.error_code == "TypeConstraintViolation"
    assert await daemon.stop() == 0


async def test_base_reports(csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path) -> None:
    daemon = await start(csms, daemons, tmp_path, evses=2)
    since = len(csms.received)
    answer = await csms.call(CP, "GetBaseReport", {"requestId": 101, "reportBase": "FullInventory"})
    assert answer == {"status": "Accepted"}
    pages = await collect_report(csms, 101, since)
    assert len(pages) > 1
    assert [p["seqNo"] for p in pages] == list(range(len(pages)))
    assert [p["tbc"] for p in pages] == [True] * (len(pages) - 1) + [False]
    assert all(len(p["reportData"]) <= 32 for p in pages)
    entries = report_data(pages)
    components = {
        (e["component"]["name"], e["component"].get("evse", {}).get("id")) for e in entries
    }
    assert {
        ("EVSE", 1),
        ("EVSE", 2),
        ("Connector", 1),
        ("Connector", 2),
        ("TxCtrlr", None),
        ("OCPPCommCtrlr", None),
        ("DeviceDataCtrlr", None),
    } <= components
    [heartbeat] = [e for e in entries if e["variable"]["name"] == "HeartbeatInterval"]
    assert heartbeat["variableAttribute"][0]["value"] == "300"
    [password] = [e for e in entries if e["variable"]["name"] == "BasicAuthPassword"]
    assert "value" not in password["variableAttribute"][0]

    since = len(csms.received)
    answer = await csms.call(
        CP, "GetBaseReport", {"requestId": 102, "reportBase": "ConfigurationInventory"}
    )
    assert answer == {"status": "Accepted"}
    entries = report_data(await collect_report(csms, 102, since))
    assert all(a["mutability"] != "ReadOnly" for e in entries for a in e["variableAttribute"])
    assert "TxStartPoint" in {e["variable"]["name"] for e in entries}

    since = len(csms.received)
    answer = await csms.call(
        CP, "GetBaseReport", {"requestId": 103, "reportBase": "SummaryInventory"}
    )
    assert answer == {"status": "Accepted"}
    entries = report_data(await collect_report(csms, 103, since))
    assert {e["variable"]["name"] for e in entries} >= {"AvailabilityState", "Problem"}

    with pytest.raises(CallErrorReceived) as caught:
        await csms.call(
            CP, "GetBaseReport", {"requestId": 104, "reportBase": "Everything"}, validate=False
        )
    assert caught.value.error_code == "PropertyConstraintViolation"
    assert await daemon.stop() == 0


async def test_custom_reports(csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path) -> None:
    daemon = await start(csms, daemons, tmp_path, evses=2)
    since = len(csms.received)
    answer = await csms.call(
        CP,
        "GetReport",
        {
            "requestId": 201,
            "componentVariable": [
                {"component": {"name": "EVSE", "evse": {"id": 2}}, "variable": {"name": "Power"}},
                {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}},
            ],
        },
    )
    assert answer == {"status": "Accepted"}
    [page] = await collect_report(csms, 201, since)
    assert page["tbc"] is False and page["seqNo"] == 0
    assert [(e["component"], e["variable"]["name"]) for e in page["reportData"]] == [
        ({"name": "OCPPCommCtrlr"}, "HeartbeatInterval"),
        ({"name": "EVSE", "evse": {"id": 2}}, "Power"),
    ]

    since = len(csms.received)
    answer = await csms.call(CP, "GetReport", {"requestId": 202, "componentCriteria": ["Enabled"]})
    assert answer == {"status": "Accepted"}
    entries = report_data(await collect_report(csms, 202, since))
    assert {e["component"]["name"] for e in entries} == {
        "AuthCtrlr",
        "AuthCacheCtrlr",
        "LocalAuthListCtrlr",
    }

    for request in (
        {"requestId": 203, "componentCriteria": ["Problem"]},
        {"requestId": 204, "componentVariable": [{"component": {"name": "NoSuchCtrlr"}}]},
        {
            "requestId": 205,
            "componentVariable": [{"component": {"name": "EVSE", "evse": {"id": 7}}}],
        },
    ):
        assert await csms.call(CP, "GetReport", request) == {"status": "EmptyResultSet"}
    with pytest.raises(CallErrorReceived) as caught:
        await csms.call(
            CP,
            "GetReport",
            {"requestId": 206, "componentVariable": [{"component": {"name": "EVSE"}}] * 33},
        )
    assert caught.value.error_code == "OccurrenceConstraintViolation"
    assert not [r for r in csms.received if _notify_report(203)(r) or _notify_report(206)(r)]
    assert await daemon.stop() == 0


async def test_shared_settings_across_versions_and_restarts(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    # The charger offers both versions; the CSMS decides which one each connection speaks.
    csms.subprotocols = ("ocpp1.6",)
    daemon = await start(csms, daemons, tmp_path, versions='["ocpp2.0.1", "ocpp1.6"]')
    assert csms.connections[-1].subprotocol == "ocpp1.6"
    assert await csms.call(
        CP, "ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "77"}
    ) == {"status": "Accepted"}

    csms.subprotocols = ("ocpp2.0.1",)
    since = len(csms.connections)
    await csms.disconnect_all()
    await csms.wait_for_connection(CP, since=since)
    assert csms.connections[-1].subprotocol == "ocpp2.0.1"
    [result] = await get(csms, var("SampledDataCtrlr", "TxUpdatedInterval"))
    assert result["attributeValue"] == "77"
    assert statuses(
        await set_(
            csms,
            var("TxCtrlr", "StopTxOnInvalidId", value="false"),
            var("TxCtrlr", "TxStopPoint", value="EVConnected"),
        )
    ) == ["Accepted", "Accepted"]

    # A restart keeps both kinds of value: the shared one and the 2.0.1-only one.
    assert await daemon.stop() == 0
    csms.subprotocols = ("ocpp1.6",)
    daemon = await start(csms, daemons, tmp_path, versions='["ocpp2.0.1", "ocpp1.6"]')
    answer = await csms.call(
        CP, "GetConfiguration", {"key": ["StopTransactionOnInvalidId", "MeterValueSampleInterval"]}
    )
    assert {k["key"]: k["value"] for k in answer["configurationKey"]} == {
        "StopTransactionOnInvalidId": "false",
        "MeterValueSampleInterval": "77",
    }

    csms.subprotocols = ("ocpp2.0.1",)
    since = len(csms.connections)
    await csms.disconnect_all()
    await csms.wait_for_connection(CP, since=since)
    results = await get(csms, var("TxCtrlr", "TxStopPoint"), var("TxCtrlr", "StopTxOnInvalidId"))
    assert [r["attributeValue"] for r in results] == ["EVConnected", "false"]
    assert await daemon.stop() == 0
