"""Charging sessions end to end: evsed with simulated hardware, driven over a private D-Bus,
against the test CSMS (OCPP 1.6 Core)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from testcsms.server import Received, TestCsms
from tests.integration.conftest import (
    BusctlError,
    DaemonProcess,
    busctl,
    evse_call,
    evse_property,
    sim,
    start_daemon,
    write_config,
)

CP = "CP-IT-1"


def calls(csms: TestCsms, action: str) -> list[dict[str, Any]]:
    return [r.payload for r in csms.received
            if r.direction == "in" and r.message_type == 2 and r.action == action]


def statuses(csms: TestCsms, connector: int) -> list[str]:
    return [p["status"] for p in calls(csms, "StatusNotification")
            if p["connectorId"] == connector]


async def wait_status(csms: TestCsms, connector: int, status: str, timeout: float = 10,
                      since: int = 0) -> None:
    def seen(r: Received) -> bool:
        return (r.direction == "in" and r.message_type == 2
                and r.action == "StatusNotification"
                and r.payload["connectorId"] == connector and r.payload["status"] == status)

    await csms.wait_for(seen, timeout=timeout, since=since)


async def started(csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, address: str,
                  *, ocpp_extra: str = "", evses: int = 1) -> DaemonProcess:
    config = write_config(tmp_path, csms.url, dbus_address=address, evses=evses,
                          ocpp_extra=ocpp_extra)
    daemon = await start_daemon(config, tmp_path)
    daemons.append(daemon)
    await daemon.wait_notification("READY=1")
    await csms.wait_for("StatusNotification")  # sent only once the boot was Accepted
    await wait_status(csms, 1, "Available")
    return daemon


async def test_full_session_rfid_plug_charge_unplug(
        csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str) -> None:
    daemon = await started(csms, daemons, tmp_path, dbus_address,
                           ocpp_extra="MeterValueSampleInterval = 1\n"
                                      'MeterValuesSampledData = "Energy.Active.Import.Register,'
                                      'Power.Active.Import,Current.Import"\n'
                                      'StopTxnSampledData = "Energy.Active.Import.Register"')
    assert statuses(csms, 0)[-1] == "Available"
    await sim(dbus_address, "Plug", "u", "1")
    await wait_status(csms, 1, "Preparing")
    await sim(dbus_address, "PresentRfid", "us", "1", "TAG-OK")
    [auth] = await csms.wait_for("Authorize")
    assert auth.payload == {"idTag": "TAG-OK"}
    [start] = await csms.wait_for("StartTransaction")
    assert start.payload["connectorId"] == 1 and start.payload["idTag"] == "TAG-OK"
    await sim(dbus_address, "SetEvReady", "ub", "1", "true")
    await wait_status(csms, 1, "Charging")
    assert "Charging" in await evse_property(dbus_address, 1, "Status")
    values = await csms.wait_for(
        lambda r: r.direction == "in" and r.action == "MeterValues" and r.message_type == 2,
        count=2, timeout=10)
    sample = values[-1].payload
    assert sample["transactionId"] == 1
    measurands = {v.get("measurand") for v in sample["meterValue"][0]["sampledValue"]}
    assert {"Energy.Active.Import.Register", "Power.Active.Import",
            "Current.Import"} <= measurands
    await asyncio.sleep(1.5)
    mark = len(csms.received)
    await sim(dbus_address, "Unplug", "u", "1")
    [stop] = await csms.wait_for("StopTransaction")
    assert stop.payload["reason"] == "EVDisconnected"
    assert stop.payload["transactionId"] == 1
    assert stop.payload["meterStop"] > start.payload["meterStart"]
    contexts = [v["sampledValue"][0]["context"] for v in stop.payload["transactionData"]]
    assert contexts[0] == "Transaction.Begin" and contexts[-1] == "Transaction.End"
    await wait_status(csms, 1, "Available", since=mark)
    order = statuses(csms, 1)
    assert order.index("Preparing") < order.index("Charging") < len(order) - 1
    assert order[-1] == "Available"
    assert await daemon.stop() == 0


async def test_remote_start_stop_and_local_stop_over_dbus(
        csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str) -> None:
    daemon = await started(csms, daemons, tmp_path, dbus_address)
    result = await csms.call(CP, "RemoteStartTransaction", {"idTag": "REMOTE1",
                                                            "connectorId": 1})
    assert result == {"status": "Accepted"}
    await csms.wait_for("Authorize")  # AuthorizeRemoteTxRequests defaults to true
    await sim(dbus_address, "Plug", "u", "1")
    await sim(dbus_address, "SetEvReady", "ub", "1", "true")
    [start] = await csms.wait_for("StartTransaction")
    await wait_status(csms, 1, "Charging")
    # A second remote start on the busy connector is refused.
    busy = await csms.call(CP, "RemoteStartTransaction", {"idTag": "OTHER", "connectorId": 1})
    assert busy == {"status": "Rejected"}
    unknown = await csms.call(CP, "RemoteStopTransaction", {"transactionId": 999})
    assert unknown == {"status": "Rejected"}
    stop = await csms.call(CP, "RemoteStopTransaction", {"transactionId": 1})
    assert stop == {"status": "Accepted"}
    [stopped] = await csms.wait_for("StopTransaction")
    assert stopped.payload["reason"] == "Remote"
    await wait_status(csms, 1, "Finishing")
    # Local start and stop through the EVSE interface.
    reply = await evse_call(dbus_address, 1, "StartSession", "s", "LOCAL1")
    assert reply.startswith("s ")
    await csms.wait_for("StartTransaction", count=2)
    await evse_call(dbus_address, 1, "StopSession")
    stops = await csms.wait_for("StopTransaction", count=2)
    assert stops[1].payload["reason"] == "Local"
    assert start.payload["idTag"] == "REMOTE1"
    assert await daemon.stop() == 0


async def test_dbus_bad_input_is_refused_with_named_errors(
        csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str) -> None:
    daemon = await started(csms, daemons, tmp_path, dbus_address)
    with pytest.raises(BusctlError, match=r"Object does not exist|Unknown object|UnknownObject"):
        await evse_call(dbus_address, 7, "StartSession", "s", "X")
    with pytest.raises(BusctlError, match=r"UnknownEvse|no simulated EVSE"):
        await sim(dbus_address, "Plug", "u", "9")
    with pytest.raises(BusctlError, match="nvalid"):
        await evse_call(dbus_address, 1, "StartSession", "i", "5")
    with pytest.raises(BusctlError, match="idTag"):
        await evse_call(dbus_address, 1, "StartSession", "s", "X" * 30)
    with pytest.raises(BusctlError, match="no session"):
        await evse_call(dbus_address, 1, "StopSession")
    await sim(dbus_address, "RaiseFault", "us", "1", "HighTemperature")
    await wait_status(csms, 1, "Faulted")
    with pytest.raises(BusctlError, match="Faulted"):
        await evse_call(dbus_address, 1, "StartSession", "s", "TAG")
    refused = await csms.call(CP, "RemoteStartTransaction", {"idTag": "T", "connectorId": 1})
    assert refused == {"status": "Rejected"}
    mark = len(csms.received)
    await sim(dbus_address, "ClearFault", "u", "1")
    await wait_status(csms, 1, "Available", since=mark)
    assert not calls(csms, "StartTransaction")
    assert await daemon.stop() == 0


async def test_configuration_and_availability(csms: TestCsms, daemons: list[DaemonProcess],
                                              tmp_path: Path, dbus_address: str) -> None:
    daemon = await started(csms, daemons, tmp_path, dbus_address)
    conf = await csms.call(CP, "GetConfiguration", {"key": ["HeartbeatInterval", "Nope",
                                                            "NumberOfConnectors"]})
    assert {k["key"]: k["value"] for k in conf["configurationKey"]} == {
        "HeartbeatInterval": "300", "NumberOfConnectors": "1"}
    assert conf["unknownKey"] == ["Nope"]
    readonly = {k["key"]: k["readonly"] for k in conf["configurationKey"]}
    assert readonly == {"HeartbeatInterval": False, "NumberOfConnectors": True}
    everything = await csms.call(CP, "GetConfiguration", {})
    assert len(everything["configurationKey"]) > 30
    cases = [("HeartbeatInterval", "17", "Accepted"), ("HeartbeatInterval", "soon", "Rejected"),
             ("NumberOfConnectors", "3", "Rejected"), ("NoSuchKey", "1", "NotSupported"),
             ("MeterValuesSampledData", "Bogus.Measurand", "Rejected"),
             ("WebSocketPingInterval", "10", "RebootRequired")]
    for key, value, expected in cases:
        answer = await csms.call(CP, "ChangeConfiguration", {"key": key, "value": value})
        assert answer == {"status": expected}, (key, value)
    again = await csms.call(CP, "GetConfiguration", {"key": ["HeartbeatInterval"]})
    assert again["configurationKey"][0]["value"] == "17"
    # Availability: Unavailable now when idle, Scheduled during a transaction.
    assert await csms.call(CP, "ChangeAvailability", {"connectorId": 1,
                                                      "type": "Inoperative"}) == {
        "status": "Accepted"}
    await wait_status(csms, 1, "Unavailable")
    mark = len(csms.received)
    assert await csms.call(CP, "ChangeAvailability", {"connectorId": 1,
                                                      "type": "Operative"}) == {
        "status": "Accepted"}
    await wait_status(csms, 1, "Available", timeout=5, since=mark)
    assert await csms.call(CP, "ChangeAvailability", {"connectorId": 5,
                                                      "type": "Operative"}) == {
        "status": "Rejected"}
    await sim(dbus_address, "Plug", "u", "1")
    await sim(dbus_address, "PresentRfid", "us", "1", "TAG")
    await csms.wait_for("StartTransaction")
    assert await csms.call(CP, "ChangeAvailability", {"connectorId": 1,
                                                      "type": "Inoperative"}) == {
        "status": "Scheduled"}
    mark = len(csms.received)
    await sim(dbus_address, "Unplug", "u", "1")
    await csms.wait_for("StopTransaction")
    await wait_status(csms, 1, "Unavailable", since=mark)
    # TriggerMessage for every message it names, and for a connector that does not exist.
    for message in ("StatusNotification", "Heartbeat", "BootNotification", "MeterValues",
                    "DiagnosticsStatusNotification", "FirmwareStatusNotification"):
        answer = await csms.call(CP, "TriggerMessage", {"requestedMessage": message,
                                                        "connectorId": 1})
        assert answer == {"status": "Accepted"}, message
    await csms.wait_for("DiagnosticsStatusNotification")
    missing = await csms.call(CP, "TriggerMessage", {"requestedMessage": "StatusNotification",
                                                     "connectorId": 4})
    assert missing == {"status": "Rejected"}
    assert await csms.call(CP, "ClearCache", {}) == {"status": "Accepted"}
    assert await csms.call(CP, "UnlockConnector", {"connectorId": 3}) == {
        "status": "NotSupported"}
    assert await daemon.stop() == 0


async def test_128_evses(csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path,
                         dbus_address: str) -> None:
    config = write_config(tmp_path, csms.url, dbus_address=dbus_address, evses=128)
    daemon = await start_daemon(config, tmp_path)
    daemons.append(daemon)
    await daemon.wait_notification("READY=1", timeout=30)
    await csms.wait_for("StatusNotification", count=129, timeout=60)
    assert sorted({p["connectorId"] for p in calls(csms, "StatusNotification")}) == list(
        range(129))
    await sim(dbus_address, "Plug", "u", "128")
    await sim(dbus_address, "PresentRfid", "us", "128", "TAG")
    [start] = await csms.wait_for("StartTransaction", timeout=20)
    assert start.payload["connectorId"] == 128
    conf = await csms.call(CP, "GetConfiguration", {"key": ["NumberOfConnectors",
                                                            "SupportedFeatureProfiles"]})
    assert {k["key"]: k["value"] for k in conf["configurationKey"]} == {
        "NumberOfConnectors": "128",
        "SupportedFeatureProfiles":
            "Core,FirmwareManagement,LocalAuthListManagement,RemoteTrigger"}
    assert await daemon.stop() == 0


async def test_local_token_provider_and_availability_over_dbus(
        csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str) -> None:
    daemon = await started(csms, daemons, tmp_path, dbus_address, evses=2)
    station = ["call", "org.evsed", "/org/evsed/Station", "org.evsed.Station1"]

    assert (await evse_call(dbus_address, 1, "SetAvailability", "b", "false")) == 's "Accepted"'
    await wait_status(csms, 1, "Unavailable")
    await sim(dbus_address, "Plug", "u", "2")
    # A payment terminal presents a token for "any EVSE": the plugged, operative one gets it.
    await busctl(dbus_address, *station, "PresentToken", "us", "0", "PAYTERM-42")
    [start] = await csms.wait_for("StartTransaction")
    assert start.payload == {**start.payload, "connectorId": 2, "idTag": "PAYTERM-42"}
    assert (await evse_call(dbus_address, 2, "SetAvailability", "b", "false")) == (
        's "Scheduled"')
    assert '"Accepted"' in await evse_call(dbus_address, 1, "SetAvailability", "b", "true")
    assert await daemon.stop() == 0
