"""Charging sessions under OCPP 2.0.1 end to end: evsed with simulated hardware, driven over a
private D-Bus, against the test CSMS speaking ocpp2.0.1 (E, F, G, J, P, C basics)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service.dbus import BUS_NAME, STATION_PATH, StationInterface
from service.dbus.server import open_bus
from testcsms.server import CallErrorReceived, Received, TestCsms
from tests.integration.conftest import (
    DaemonProcess,
    busctl,
    evse_property,
    sim,
    start_daemon,
)
from tests.integration.conftest import write_config as write_base_config
from tests.integration.ev_script import CsmsSide, Ev, rfid_session

CP = "CP-IT-1"
V201 = '["ocpp2.0.1"]'
ENERGY = "Energy.Active.Import.Register"


def write_config(
    tmp_path: Path, csms: TestCsms, address: str, ocpp_extra: str = "", versions: str = V201
) -> Path:
    return write_base_config(
        tmp_path,
        csms.url,
        dbus_address=address,
        versions=versions,
        ocpp_extra=ocpp_extra,
        csms_extra="external_websocket_control = true",
    )


def calls(csms: TestCsms, action: str) -> list[dict[str, Any]]:
    return [
        r.payload
        for r in csms.received
        if r.direction == "in" and r.message_type == 2 and r.action == action
    ]


def distinct(csms: TestCsms, action: str) -> list[dict[str, Any]]:
    """CALLs of `action`, first copy of each message id (a resend after a reconnect)."""
    seen: dict[str, dict[str, Any]] = {}
    for r in csms.received:
        if r.direction == "in" and r.message_type == 2 and r.action == action:
            seen.setdefault(r.unique_id, r.payload)
    return list(seen.values())


def events(csms: TestCsms) -> list[dict[str, Any]]:
    return distinct(csms, "TransactionEvent")


def event_is(event_type: str, trigger: str | None = None) -> Callable[[Received], bool]:
    def match(r: Received) -> bool:
        return (
            r.direction == "in"
            and r.message_type == 2
            and r.action == "TransactionEvent"
            and r.payload["eventType"] == event_type
            and (trigger is None or r.payload["triggerReason"] == trigger)
        )

    return match


def status_is(status: str, evse_id: int = 1) -> Callable[[Received], bool]:
    def match(r: Received) -> bool:
        return (
            r.direction == "in"
            and r.message_type == 2
            and r.action == "StatusNotification"
            and r.payload.get("evseId") == evse_id
            and r.payload.get("connectorStatus") == status
        )

    return match


async def launch(config: Path, tmp_path: Path, daemons: list[DaemonProcess]) -> DaemonProcess:
    daemon = await start_daemon(config, tmp_path)
    daemons.append(daemon)
    await daemon.wait_notification("READY=1")
    return daemon


async def started_daemon(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, address: str, ocpp_extra: str = ""
) -> DaemonProcess:
    daemon = await launch(write_config(tmp_path, csms, address, ocpp_extra), tmp_path, daemons)
    await csms.wait_for(status_is("Available"))
    return daemon


async def go_offline(csms: TestCsms, address: str) -> None:
    count = len([c for c in csms.connections if c.closed is not None])
    await busctl(
        address,
        "call",
        BUS_NAME,
        "/org/evsed/Simulator",
        "org.evsed.Simulator1",
        "WebsocketDisconnect",
    )
    await csms.wait_until(
        lambda: len([c for c in csms.connections if c.closed is not None]) > count
    )
    for _ in range(100):  # ...and the daemon itself knows
        state = await busctl(
            address, "get-property", BUS_NAME, STATION_PATH, "org.evsed.Station1", "ConnectionState"
        )
        if "connected" not in state.replace("disconnected", ""):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.2)


async def go_online(csms: TestCsms, address: str) -> None:
    count = len(csms.connections)
    await busctl(
        address,
        "call",
        BUS_NAME,
        "/org/evsed/Simulator",
        "org.evsed.Simulator1",
        "WebsocketConnect",
    )
    await csms.wait_for_connection(count=count + 1)


def assert_contiguous(evts: list[dict[str, Any]]) -> None:
    by_tx: dict[str, list[int]] = {}
    for e in evts:
        by_tx.setdefault(e["transactionInfo"]["transactionId"], []).append(e["seqNo"])
    for tx_id, numbers in by_tx.items():
        assert numbers == list(range(len(numbers))), (tx_id, numbers)


# -- boot, statuses, a full RFID session ------------------------------------------------------


async def test_boot_status_and_rfid_session(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    daemon = await started_daemon(
        csms,
        daemons,
        tmp_path,
        dbus_address,
        "MeterValueSampleInterval = 1\n"
        f'MeterValuesSampledData = "{ENERGY},Power.Active.Import"\n'
        f'StopTxnSampledData = "{ENERGY}"',
    )
    assert csms.connections[-1].subprotocol == "ocpp2.0.1"
    [boot] = calls(csms, "BootNotification")
    assert boot["reason"] == "PowerUp" and boot["chargingStation"]["model"] == "it-test"
    [available] = [s for s in calls(csms, "StatusNotification")]
    assert (available["evseId"], available["connectorId"]) == (1, 1)
    ev = Ev(dbus_address)
    await ev.plug()
    await csms.wait_for(status_is("Occupied"))
    await ev.present("TAG-OK")
    [auth] = await csms.wait_for("Authorize")
    assert auth.payload == {"idToken": {"idToken": "TAG-OK", "type": "ISO14443"}}
    [started] = await csms.wait_for(event_is("Started"))
    assert started.payload["triggerReason"] == "Authorized"
    assert started.payload["idToken"]["idToken"] == "TAG-OK"
    await ev.ready(True)
    await csms.wait_for(event_is("Updated", "ChargingStateChanged"))
    await csms.wait_for(event_is("Updated", "MeterValuePeriodic"), count=2)
    tx_id = started.payload["transactionInfo"]["transactionId"]
    assert tx_id in await evse_property(dbus_address, 1, "TransactionId")
    mark = len(csms.received)
    await ev.unplug()
    [ended] = await csms.wait_for(event_is("Ended"))
    assert ended.payload["triggerReason"] == "EVCommunicationLost"
    assert ended.payload["transactionInfo"]["stoppedReason"] == "EVDisconnected"
    await csms.wait_for(status_is("Available"), since=mark)
    evts = events(csms)
    assert evts[0]["eventType"] == "Started" and evts[-1]["eventType"] == "Ended"
    assert {e["transactionInfo"]["transactionId"] for e in evts} == {tx_id}
    assert_contiguous(evts)
    states = [
        e["transactionInfo"]["chargingState"]
        for e in evts
        if e["triggerReason"] == "ChargingStateChanged"
    ]
    assert states[:2] == ["SuspendedEV", "Charging"]  # plugged in B, then the EV asked
    periodic = next(e for e in evts if e["triggerReason"] == "MeterValuePeriodic")
    assert {v["measurand"] for v in periodic["meterValue"][0]["sampledValue"]} == {
        ENERGY,
        "Power.Active.Import",
    }
    assert not any(e.get("offline") for e in evts)
    assert await daemon.stop() == 0


@pytest.mark.parametrize("version", ["ocpp1.6", "ocpp2.0.1"])
async def test_the_same_ev_script_under_both_versions(
    version: str, csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    config = write_config(tmp_path, csms, dbus_address, versions=f'["{version}"]')
    daemon = await launch(config, tmp_path, daemons)
    await csms.wait_for("StatusNotification")
    if version == "ocpp1.6":
        side = CsmsSide(
            started=lambda: csms.wait_for("StartTransaction"),
            charging=lambda: csms.wait_for(
                lambda r: (
                    r.action == "StatusNotification"
                    and r.message_type == 2
                    and r.payload.get("status") == "Charging"
                )
            ),
            ended=lambda: csms.wait_for("StopTransaction"),
        )
    else:
        side = CsmsSide(
            started=lambda: csms.wait_for(event_is("Started")),
            charging=lambda: csms.wait_for(
                lambda r: (
                    event_is("Updated", "ChargingStateChanged")(r)
                    and r.payload["transactionInfo"].get("chargingState") == "Charging"
                )
            ),
            ended=lambda: csms.wait_for(event_is("Ended")),
        )
    await rfid_session(Ev(dbus_address), "SHARED-1", side, charge_s=0.5)
    if version == "ocpp1.6":
        [stop] = calls(csms, "StopTransaction")
        assert stop["reason"] == "EVDisconnected"
        assert calls(csms, "TransactionEvent") == []
    else:
        assert events(csms)[-1]["transactionInfo"]["stoppedReason"] == "EVDisconnected"
        assert calls(csms, "StartTransaction") == []
    assert await daemon.stop() == 0


# -- F: remote control, G: availability, P: data transfer, E14, C11 -----------------------------


async def test_remote_start_and_stop(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    daemon = await started_daemon(csms, daemons, tmp_path, dbus_address)
    token = {"idToken": "REMOTE1", "type": "Central"}
    answer = await csms.call(
        CP, "RequestStartTransaction", {"idToken": token, "remoteStartId": 42, "evseId": 1}
    )
    assert answer == {"status": "Accepted"}
    [auth] = await csms.wait_for("Authorize")
    assert auth.payload == {"idToken": token}
    ev = Ev(dbus_address)
    await ev.plug()
    await ev.ready(True)
    [started] = await csms.wait_for(event_is("Started"))
    assert started.payload["transactionInfo"]["remoteStartId"] == 42
    assert started.payload["idToken"] == token
    busy = await csms.call(
        CP, "RequestStartTransaction", {"idToken": token, "remoteStartId": 43, "evseId": 1}
    )
    assert busy["status"] == "Rejected"
    tx_id = started.payload["transactionInfo"]["transactionId"]
    status = await csms.call(CP, "GetTransactionStatus", {"transactionId": tx_id})
    assert status["ongoingIndicator"] is True
    assert (await csms.call(CP, "RequestStopTransaction", {"transactionId": "nope"}))[
        "status"
    ] == "Rejected"
    assert await csms.call(CP, "RequestStopTransaction", {"transactionId": tx_id}) == {
        "status": "Accepted"
    }
    [ended] = await csms.wait_for(event_is("Ended"))
    assert (ended.payload["triggerReason"], ended.payload["transactionInfo"]["stoppedReason"]) == (
        "RemoteStop",
        "Remote",
    )
    await asyncio.sleep(0.3)
    assert await csms.call(CP, "GetTransactionStatus", {"transactionId": tx_id}) == {
        "ongoingIndicator": False,
        "messagesInQueue": False,
    }
    assert_contiguous(events(csms))
    assert await daemon.stop() == 0


async def test_availability_unlock_trigger_cache_and_data_transfer(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    daemon = await started_daemon(csms, daemons, tmp_path, dbus_address)
    assert await csms.call(
        CP,
        "ChangeAvailability",
        {"operationalStatus": "Inoperative", "evse": {"id": 1, "connectorId": 1}},
    ) == {"status": "Accepted"}
    await csms.wait_for(status_is("Unavailable"))
    mark = len(csms.received)
    assert await csms.call(CP, "ChangeAvailability", {"operationalStatus": "Operative"}) == {
        "status": "Accepted"
    }
    await csms.wait_for(status_is("Available"), since=mark)
    assert await csms.call(CP, "UnlockConnector", {"evseId": 1, "connectorId": 1}) == {
        "status": "Unlocked"
    }
    assert await csms.call(CP, "ClearCache", {}) == {"status": "Accepted"}
    mark = len(csms.received)
    assert await csms.call(CP, "TriggerMessage", {"requestedMessage": "Heartbeat"}) == {
        "status": "Accepted"
    }
    await csms.wait_for("Heartbeat", since=mark)
    assert await csms.call(CP, "TriggerMessage", {"requestedMessage": "BootNotification"}) == {
        "status": "Rejected"
    }
    assert await csms.call(
        CP,
        "TriggerMessage",
        {"requestedMessage": "StatusNotification", "evse": {"id": 1, "connectorId": 1}},
    ) == {"status": "Accepted"}
    # Availability during a transaction: Scheduled, applied when it ends.
    ev = Ev(dbus_address)
    await ev.plug()
    await ev.present("CARD1")
    await csms.wait_for(event_is("Started"))
    assert await csms.call(CP, "UnlockConnector", {"evseId": 1, "connectorId": 1}) == {
        "status": "OngoingAuthorizedTransaction"
    }
    assert await csms.call(
        CP, "ChangeAvailability", {"operationalStatus": "Inoperative", "evse": {"id": 1}}
    ) == {"status": "Scheduled"}
    assert await csms.call(
        CP, "TriggerMessage", {"requestedMessage": "TransactionEvent", "evse": {"id": 1}}
    ) == {"status": "Accepted"}
    await csms.wait_for(event_is("Updated", "Trigger"))
    mark = len(csms.received)
    await ev.unplug()
    await csms.wait_for(event_is("Ended"))
    await csms.wait_for(status_is("Unavailable"), since=mark)

    # DataTransfer both ways.
    assert await csms.call(CP, "DataTransfer", {"vendorId": "org.nobody"}) == {
        "status": "UnknownVendorId"
    }
    bus = open_bus(dbus_address)
    try:
        station = StationInterface.new_proxy(BUS_NAME, STATION_PATH, bus)
        status, data = await asyncio.wait_for(
            station.data_transfer("com.acme", "Ping", "hello"), 10
        )
        assert (status, data) == ("Accepted", "hello")
        [sent] = await csms.wait_for("DataTransfer")
        assert sent.payload == {"vendorId": "com.acme", "messageId": "Ping", "data": "hello"}
    finally:
        bus.close()
    assert await daemon.stop() == 0
    # G03/G04: the EVSE made Inoperative stays so after a restart.
    mark = len(csms.received)
    daemon = await launch(daemon.config, tmp_path, daemons)
    await csms.wait_for(status_is("Unavailable"), since=mark)
    assert await daemon.stop() == 0


async def test_lock_failure_blocks_charging_and_is_notified(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    """G05: the lock reports a failure: no charging, NotifyEvent ConnectorPlugRetentionLock
    Problem=true (and false once it works again), the connector Faulted meanwhile."""
    daemon = await started_daemon(csms, daemons, tmp_path, dbus_address)
    ev = Ev(dbus_address)
    await sim(dbus_address, "RaiseFault", "us", "1", "ConnectorLockFailure")
    [problem] = await csms.wait_for("NotifyEvent")
    [event] = problem.payload["eventData"]
    assert event["component"] == {
        "name": "ConnectorPlugRetentionLock",
        "evse": {"id": 1, "connectorId": 1},
    }
    assert (event["variable"], event["actualValue"], event["trigger"]) == (
        {"name": "Problem"},
        "true",
        "Delta",
    )
    await csms.wait_for(status_is("Faulted"))
    await ev.plug()
    await ev.present("CARD1")
    await ev.ready()
    await asyncio.sleep(1.0)
    assert await ev.status() != "Charging"
    assert not any(e["chargingState"] == "Charging" for e in map(transaction_info, events(csms)))
    await sim(dbus_address, "ClearFault", "u", "1")
    [_, cleared] = await csms.wait_for("NotifyEvent", count=2)
    [event] = cleared.payload["eventData"]
    assert (event["actualValue"], event["cleared"]) == ("false", True)
    assert event["eventId"] != problem.payload["eventData"][0]["eventId"]
    assert await daemon.stop() == 0


def transaction_info(payload: dict[str, Any]) -> dict[str, Any]:
    return {"chargingState": "", **payload.get("transactionInfo", {})}


async def test_reset_on_idle_with_a_running_transaction(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    daemon = await started_daemon(csms, daemons, tmp_path, dbus_address)
    ev = Ev(dbus_address)
    await ev.plug()
    await ev.present("CARD1")
    await csms.wait_for(event_is("Started"))
    assert await csms.call(CP, "Reset", {"type": "OnIdle", "evseId": 7}) == {
        "status": "Rejected",
        "statusInfo": {"reasonCode": "UnknownEvse", "additionalInfo": "no EVSE 7"},
    }
    assert await csms.call(CP, "Reset", {"type": "OnIdle"}) == {"status": "Scheduled"}
    await asyncio.sleep(0.5)
    assert len(calls(csms, "BootNotification")) == 1  # waits for the transaction
    await ev.unplug()
    [ended] = await csms.wait_for(event_is("Ended"))
    assert ended.payload["triggerReason"] == "EVCommunicationLost"
    boots = await csms.wait_for("BootNotification", count=2, timeout=20)  # it restarted
    assert [b.payload["reason"] for b in boots] == ["PowerUp", "RemoteReset"]
    assert daemon.process.returncode is None
    assert len(events(csms)) == len({e["seqNo"] for e in events(csms)})
    assert await daemon.stop() == 0


# -- E11/E12 offline, power cut ---------------------------------------------------------------


async def test_offline_transaction_is_reported_in_order_after_reconnect(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    daemon = await started_daemon(
        csms, daemons, tmp_path, dbus_address, "AllowOfflineTxForUnknownId = true"
    )
    await go_offline(csms, dbus_address)
    ev = Ev(dbus_address)
    await ev.plug()
    await ev.ready(True)
    await ev.present("OFFLINE1")
    for _ in range(50):
        if "Charging" in await ev.status():
            break
        await asyncio.sleep(0.1)
    assert "Charging" in await ev.status()
    await ev.unplug()
    await asyncio.sleep(0.3)
    assert events(csms) == []
    await go_online(csms, dbus_address)
    await csms.wait_for(event_is("Ended"), timeout=15)
    evts = events(csms)
    assert (evts[0]["eventType"], evts[-1]["eventType"]) == ("Started", "Ended")
    assert all(e.get("offline") is True for e in evts)
    assert_contiguous(evts)
    times = [e["timestamp"] for e in evts]
    assert times == sorted(times)
    assert await daemon.stop() == 0


async def test_kill_9_during_a_transaction_ends_it_with_power_loss(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    config = write_config(tmp_path, csms, dbus_address)
    daemon = await launch(config, tmp_path, daemons)
    await csms.wait_for(status_is("Available"))
    ev = Ev(dbus_address)
    await ev.plug()
    await ev.ready(True)
    await ev.present("CARD1")
    await csms.wait_for(event_is("Updated", "ChargingStateChanged"))
    await asyncio.sleep(0.5)
    daemon.process.send_signal(signal.SIGKILL)
    await daemon.process.wait()
    before = events(csms)
    daemon = await launch(config, tmp_path, daemons)
    [ended] = await csms.wait_for(event_is("Ended"), timeout=15)
    assert ended.payload["triggerReason"] == "AbnormalCondition"
    assert ended.payload["transactionInfo"]["stoppedReason"] == "PowerLoss"
    assert (
        ended.payload["transactionInfo"]["transactionId"]
        == (before[0]["transactionInfo"]["transactionId"])
    )
    assert ended.payload["seqNo"] == before[-1]["seqNo"] + 1
    await asyncio.sleep(0.5)
    assert len([e for e in events(csms) if e["eventType"] == "Ended"]) == 1
    assert await daemon.stop() == 0


# -- bad input ---------------------------------------------------------------------------------


async def test_bad_input_gets_the_right_answers(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    daemon = await started_daemon(csms, daemons, tmp_path, dbus_address)
    token = {"idToken": "T1", "type": "ISO14443"}
    wrong_evse = await csms.call(
        CP, "RequestStartTransaction", {"idToken": token, "remoteStartId": 1, "evseId": 9}
    )
    assert wrong_evse["status"] == "Rejected"
    assert wrong_evse["statusInfo"]["reasonCode"] == "UnknownEvse"
    assert await csms.call(CP, "UnlockConnector", {"evseId": 9, "connectorId": 1}) == {
        "status": "UnknownConnector"
    }
    assert (
        await csms.call(
            CP, "ChangeAvailability", {"operationalStatus": "Inoperative", "evse": {"id": 9}}
        )
    )["status"] == ("Rejected")
    assert (
        await csms.call(
            CP, "TriggerMessage", {"requestedMessage": "MeterValues", "evse": {"id": 9}}
        )
    )["status"] == "Rejected"
    assert (await csms.call(CP, "TriggerMessage", {"requestedMessage": "SignV2GCertificate"}))[
        "status"
    ] == "NotImplemented"
    raw = {
        "bad-1": '[2,"bad-1","RequestStartTransaction",{"idToken":{"idToken":"A"}}]',
        "bad-2": '[2,"bad-2","RequestStopTransaction",{"transactionId":"a","x":1}]',
        "bad-3": '[2,"bad-3","Reset",{"type":"Sometime"}]',
        "bad-4": '[2,"bad-4","UnlockConnector",{"evseId":"one","connectorId":1}]',
        "bad-5": '[2,"bad-5","MakeCoffee",{}]',
        "bad-6": '[2,"bad-6","RequestStartTransaction",["not","an","object"]]',
    }
    expected = {
        "bad-1": "OccurrenceConstraintViolation",
        "bad-2": "FormatViolation",
        "bad-3": "PropertyConstraintViolation",
        "bad-4": "TypeConstraintViolation",
        "bad-5": "NotImplemented",
        "bad-6": "FormatViolation",
    }
    for text in raw.values():
        await csms.send_raw(CP, text)
    await csms.send_raw(CP, "[2, not json")
    answers = await csms.wait_for(
        lambda r: r.direction == "in" and r.unique_id in expected, count=len(expected)
    )
    got = {r.unique_id: r.payload["errorCode"] for r in answers if r.message_type == 4}
    assert got == expected
    # Still serving, and nothing started.
    assert await csms.call(CP, "GetTransactionStatus", {}) == {"messagesInQueue": False}
    assert calls(csms, "TransactionEvent") == []
    [unreadable] = await csms.wait_for(
        lambda r: r.direction == "in" and r.message_type == 4 and r.unique_id == "-1"
    )
    assert unreadable.payload["errorCode"] == "FormatViolation"
    zero = await csms.call(
        CP, "RequestStartTransaction", {"idToken": token, "remoteStartId": 2, "evseId": 0}
    )
    assert zero["status"] == "Rejected"  # EVSE ids start at 1
    with pytest.raises(CallErrorReceived) as error:
        await csms.call(CP, "RequestStopTransaction", {"transactionId": "x" * 37}, validate=False)
    assert error.value.error_code == "PropertyConstraintViolation"
    assert daemon.process.returncode is None
    assert await daemon.stop() == 0
