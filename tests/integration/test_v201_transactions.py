"""OCPP 2.0.1 block E (transactions) against the real daemon: evsed with simulated hardware,
driven over a private D-Bus, against the test CSMS speaking ocpp2.0.1.

The use cases the session tests (test_v201_session.py) do not already prove end to end:
TxStartPoint set by the CSMS (E01-E03, and the values this hardware cannot detect refused),
E05 an idToken the CSMS rejects in its TransactionEvent answer, E13 a TransactionEvent answered
with a CALLERROR or not answered at all (retried, then dropped with a log), E14
GetTransactionStatus while the messages are still queued, and seqNo / transaction ids across a
kill -9 with events still queued (E12)."""

from __future__ import annotations

import asyncio
import signal
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from testcsms.server import TestCsms
from tests.integration.conftest import DaemonProcess
from tests.integration.ev_script import Ev
from tests.integration.test_v201_session import (
    CP,
    assert_contiguous,
    calls,
    event_is,
    events,
    go_offline,
    go_online,
    launch,
    started_daemon,
    status_is,
    write_config,
)


async def set_variable(
    csms: TestCsms, component: str, variable: str, value: str, instance: str | None = None
) -> str:
    name: dict[str, str] = {"name": variable}
    if instance is not None:
        name["instance"] = instance
    answer = await csms.call(
        CP,
        "SetVariables",
        {
            "setVariableData": [
                {"component": {"name": component}, "variable": name, "attributeValue": value}
            ]
        },
    )
    [result] = answer["setVariableResult"]
    return str(result["attributeStatus"])


async def drained_status(csms: TestCsms, transaction_id: str) -> dict[str, Any]:
    """GetTransactionStatus once the transaction's messages left the queue (the last one is
    queued until its answer is back), or the last answer after 10 s."""
    for _ in range(50):
        status: dict[str, Any] = await csms.call(
            CP, "GetTransactionStatus", {"transactionId": transaction_id}
        )
        if not status["messagesInQueue"]:
            break
        await asyncio.sleep(0.2)
    return status


async def test_start_point_set_by_the_csms(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    """E01/E02: TxStartPoint EVConnected (set by SetVariables) starts the transaction at the
    cable; the token follows in an Updated Authorized event. ParkingBayOccupancy and DataSigned
    cannot be detected here: refused, the value stays."""
    daemon = await started_daemon(csms, daemons, tmp_path, dbus_address)
    for value in ("ParkingBayOccupancy", "DataSigned", "EVConnected,ParkingBayOccupancy"):
        assert await set_variable(csms, "TxCtrlr", "TxStartPoint", value) == "Rejected"
    assert await set_variable(csms, "TxCtrlr", "TxStartPoint", "EVConnected") == "Accepted"
    ev = Ev(dbus_address)
    await ev.plug()
    [started] = await csms.wait_for(event_is("Started"))
    assert started.payload["triggerReason"] == "CablePluggedIn"
    assert started.payload["evse"] == {"id": 1, "connectorId": 1}
    assert "idToken" not in started.payload
    await ev.present("CARD-E02")
    [authorized] = await csms.wait_for(event_is("Updated", "Authorized"))
    assert authorized.payload["idToken"] == {"idToken": "CARD-E02", "type": "ISO14443"}
    await ev.ready(True)
    await csms.wait_for(
        lambda r: (
            event_is("Updated", "ChargingStateChanged")(r)
            and r.payload["transactionInfo"].get("chargingState") == "Charging"
        )
    )
    # E15: the EV stops asking, the transaction goes on as SuspendedEV.
    await ev.ready(False)
    await csms.wait_for(
        lambda r: (
            event_is("Updated", "ChargingStateChanged")(r)
            and r.payload["transactionInfo"].get("chargingState") == "SuspendedEV"
        )
    )
    await ev.unplug()
    [ended] = await csms.wait_for(event_is("Ended"))
    assert ended.payload["transactionInfo"]["stoppedReason"] == "EVDisconnected"
    evts = events(csms)
    assert_contiguous(evts)
    assert [e for e in evts if "idToken" in e] == [authorized.payload]
    # The setting survives a restart.
    assert await daemon.stop() == 0
    mark = len(csms.received)
    daemon = await launch(daemon.config, tmp_path, daemons)
    await csms.wait_for(status_is("Available"), since=mark)
    answer = await csms.call(
        CP,
        "GetVariables",
        {
            "getVariableData": [
                {"component": {"name": "TxCtrlr"}, "variable": {"name": "TxStartPoint"}}
            ]
        },
    )
    assert answer["getVariableResult"][0]["attributeValue"] == "EVConnected"
    assert await daemon.stop() == 0


async def test_id_rejected_in_the_transaction_event_answer(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    """E05: a cached card starts at once (LocalPreAuthorize); the CSMS answers the Started
    event with Invalid; StopTxOnInvalidId true ends the transaction (Deauthorized)."""
    daemon = await started_daemon(
        csms,
        daemons,
        tmp_path,
        dbus_address,
        "LocalPreAuthorize = true\nStopTransactionOnInvalidId = true",
    )
    ev = Ev(dbus_address)
    await ev.plug()
    await ev.present("CARD-E05")  # authorized online: now in the cache
    await csms.wait_for(event_is("Started"))
    await ev.unplug()
    await csms.wait_for(event_is("Ended"))
    csms.invalid_tags.add("CARD-E05")
    mark = len(csms.received)
    await ev.plug()
    await ev.ready(True)
    await ev.present("CARD-E05")
    [ended] = await csms.wait_for(event_is("Ended"), since=mark)
    assert (ended.payload["triggerReason"], ended.payload["transactionInfo"]["stoppedReason"]) == (
        "Deauthorized",
        "DeAuthorized",
    )
    [started] = await csms.wait_for(event_is("Started"), since=mark)
    assert started.payload["idToken"]["idToken"] == "CARD-E05"
    assert "Charging" not in await ev.status()
    assert_contiguous(events(csms))
    assert await daemon.stop() == 0


async def test_transaction_event_not_accepted_is_retried_then_dropped(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    """E13: CALLERROR answers, then no answer at all (MessageTimeout 2 s here): each Started
    is sent MessageAttempts times with one message id, MessageAttemptInterval x attempts
    apart, then dropped with an error log; the events that follow still go out."""
    daemon = await started_daemon(csms, daemons, tmp_path, dbus_address)
    # Not the defaults (3 attempts; 1 s in this test's configuration).
    for variable, value in (("MessageAttempts", "2"), ("MessageAttemptInterval", "2")):
        result = await set_variable(csms, "OCPPCommCtrlr", variable, value, "TransactionEvent")
        assert result == "Accepted"
    ev = Ev(dbus_address)
    csms.error_actions["TransactionEvent"] = "InternalError"
    await ev.plug()
    await ev.present("CARD-E13")
    first, second = await csms.wait_for(event_is("Started"), count=2, timeout=20)
    assert first.unique_id == second.unique_id
    assert second.time - first.time >= 1.9  # MessageAttemptInterval x 1
    await asyncio.sleep(2.5)
    assert len([r for r in csms.received if event_is("Started")(r)]) == 2
    assert "dropping TransactionEvent after 2 failed attempt(s)" in daemon.stderr()
    csms.error_actions.clear()
    # No answer at all: a failed attempt too (2.0.1), after the 2 s MessageTimeout.
    csms.drop_actions.add("TransactionEvent")
    mark = len(csms.received)
    await ev.ready(True)
    sent = await csms.wait_for(
        lambda r: (
            event_is("Updated", "ChargingStateChanged")(r)
            and r.payload["transactionInfo"].get("chargingState") == "Charging"
        ),
        count=2,
        since=mark,
        timeout=40,
    )
    assert len({r.unique_id for r in sent}) == 1
    await asyncio.sleep(4.5)  # the second attempt times out too: dropped
    assert len([r for r in csms.received if r.unique_id == sent[0].unique_id]) == 2
    csms.drop_actions.clear()
    await ev.unplug()
    [ended] = await csms.wait_for(event_is("Ended"), timeout=30)
    assert ended.payload["seqNo"] >= 2  # the dropped ones kept their numbers
    status = await drained_status(csms, ended.payload["transactionInfo"]["transactionId"])
    assert status == {"ongoingIndicator": False, "messagesInQueue": False}
    assert daemon.process.returncode is None
    assert await daemon.stop() == 0


async def test_queued_events_survive_kill_9_and_ids_stay_unique(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    """E11/E12/E14: offline, a transaction runs and its events queue; GetTransactionStatus
    says they wait; kill -9; after the restart they go out in order with seqNo 0, 1, 2...
    (offline), the transaction is ended PowerLoss, and the next transaction has a new id."""
    config = write_config(tmp_path, csms, dbus_address, "AllowOfflineTxForUnknownId = true")
    daemon = await launch(config, tmp_path, daemons)
    await csms.wait_for(status_is("Available"))
    ev = Ev(dbus_address)
    await ev.plug()
    await ev.present("CARD-E12")
    [started] = await csms.wait_for(event_is("Started"))
    tx_id = started.payload["transactionInfo"]["transactionId"]
    assert uuid.UUID(tx_id).version == 4
    await go_offline(csms, dbus_address)
    offline_from = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    await ev.ready(True)
    for _ in range(50):
        if "Charging" in await ev.status():
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    online_events = len(events(csms))
    daemon.process.send_signal(signal.SIGKILL)
    await daemon.process.wait()
    mark = len(csms.received)
    daemon = await launch(config, tmp_path, daemons)
    [ended] = await csms.wait_for(event_is("Ended"), since=mark, timeout=20)
    assert (ended.payload["triggerReason"], ended.payload["transactionInfo"]["stoppedReason"]) == (
        "AbnormalCondition",
        "PowerLoss",
    )
    evts = events(csms)
    assert_contiguous(evts)
    assert {e["transactionInfo"]["transactionId"] for e in evts} == {tx_id}
    later = evts[online_events:]
    # Made after the link went down: marked offline. (One made just before, unanswered when
    # the link dropped, is sent again unchanged: it was made online.)
    assert later and all(
        e.get("offline") is True for e in later[:-1] if e["timestamp"] >= offline_from
    )
    assert any(e.get("offline") is True for e in later[:-1])
    assert len(calls(csms, "BootNotification")) == 2
    # A new transaction after the restart: a new id, seqNo from 0.
    await ev.unplug()
    await ev.plug()
    await ev.present("CARD-E12")
    # Distinct messages: the first Started, unanswered when the link dropped, may be resent.
    await csms.wait_until(
        lambda: len({r.unique_id for r in csms.received if event_is("Started")(r)}) >= 2,
        timeout=15,
    )
    firsts: dict[str, Any] = {}
    for r in csms.received:
        if event_is("Started")(r):
            firsts.setdefault(r.unique_id, r)
    second = list(firsts.values())[1]  # the second distinct Started message
    assert second.payload["transactionInfo"]["transactionId"] != tx_id
    assert second.payload["seqNo"] == 0
    # E14: while its events cannot be delivered, GetTransactionStatus says they wait.
    await go_offline(csms, dbus_address)
    await ev.unplug()
    for _ in range(100):  # the Ended event is made (queued) once the unplug is seen
        if "Available" in await ev.status():
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)
    csms.drop_actions.add("TransactionEvent")
    online_mark = len(csms.received)
    await go_online(csms, dbus_address)
    second_id = second.payload["transactionInfo"]["transactionId"]
    # The queue is tried (the head may be an earlier event of the second transaction, unanswered
    # when the link dropped): its messages are still waiting.
    await csms.wait_for(
        lambda r: bool(
            r.direction == "in"
            and r.action == "TransactionEvent"
            and r.payload["transactionInfo"]["transactionId"] == second_id
        ),
        since=online_mark,
        timeout=15,
    )
    status = await csms.call(CP, "GetTransactionStatus", {"transactionId": second_id})
    assert status == {"ongoingIndicator": False, "messagesInQueue": True}
    csms.drop_actions.clear()
    await csms.wait_until(
        lambda: len([e for e in events(csms) if e["eventType"] == "Ended"]) == 2, timeout=30
    )
    status = await drained_status(csms, second_id)
    assert status == {"ongoingIndicator": False, "messagesInQueue": False}
    assert_contiguous(events(csms))
    assert await daemon.stop() == 0
