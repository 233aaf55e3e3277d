"""OCPP 2.0.1 block E (transactions) use case by use case, on the real station, engine, queue
and device model (tests/service/ocpp/v201/link_rig.py), the test playing the CSMS.

E01-E03 as a matrix of TxStartPoint x the order of cable and token; E05-E10 the stop options;
E11/E12 connection loss; E13 retries of a TransactionEvent the CSMS does not accept; E14
GetTransactionStatus; E15 the end of charging."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from service.ocpp.rpc import OcppVersion
from service.station.auth import AuthStatus, IdTagInfo
from tests.service.ocpp.v201.link_rig import ENERGY, Rig

MakeRig = Callable[..., Awaitable[Rig]]
TAG = "04A1B2C3"


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[MakeRig]:
    rigs: list[Rig] = []

    async def make(
        *, dm: dict[tuple[str, str], str] | None = None, connect: bool = True, **keys: Any
    ) -> Rig:
        rig = Rig(tmp_path / f"evsed-{len(rigs)}.db", keys)
        rigs.append(rig)
        for (component, variable), value in (dm or {}).items():
            result = rig.model.set_variable(
                {
                    "component": {"name": component},
                    "variable": {"name": variable},
                    "attributeValue": value,
                }
            )
            assert result["attributeStatus"] == "Accepted", result
        await rig.start()
        if connect:
            rig.connect()
        return rig

    yield make
    for rig in rigs:
        rig.close()


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["eventType"], e["triggerReason"]) for e in events]


def assert_well_formed(events: list[dict[str, Any]]) -> None:
    """One transaction: Started first, Ended (if any) last, seqNo 0, 1, 2..., one id."""
    assert events, "no TransactionEvent"
    assert events[0]["eventType"] == "Started"
    assert [e["eventType"] for e in events[1:-1]] == ["Updated"] * (len(events) - 2)
    assert [e["seqNo"] for e in events] == list(range(len(events)))
    assert len({e["transactionInfo"]["transactionId"] for e in events}) == 1
    assert "evse" in events[0]
    # The idToken goes once per authorization: the one that started it, and the one that
    # stopped it (triggerReason StopAuthorized).
    authorizing = [e for e in events if "idToken" in e and e["triggerReason"] != "StopAuthorized"]
    assert len(authorizing) <= 1


# -- E01-E03: TxStartPoint x cable first (E02) / token first (E03) ----------------------------

# (start point, cable first?) -> (Started trigger, chargingState in Started, index of the event
# carrying the idToken or None, events before unplug)
START_MATRIX: dict[tuple[str, bool], tuple[str, str, int | None]] = {
    ("EVConnected", True): ("CablePluggedIn", "EVConnected", 1),
    ("EVConnected", False): ("CablePluggedIn", "EVConnected", 0),
    ("Authorized", True): ("Authorized", "EVConnected", 0),
    ("Authorized", False): ("Authorized", "Idle", 0),
    ("PowerPathClosed", True): ("Authorized", "EVConnected", 0),
    ("PowerPathClosed", False): ("CablePluggedIn", "EVConnected", 0),
    ("EnergyTransfer", True): ("ChargingStateChanged", "Charging", 0),
    ("EnergyTransfer", False): ("ChargingStateChanged", "Charging", 0),
}


@pytest.mark.parametrize(
    ("start_point", "cable_first"),
    list(START_MATRIX),
    ids=[f"{p}-{'cable' if c else 'token'}-first" for p, c in START_MATRIX],
)
async def test_start_points(make_rig: MakeRig, start_point: str, cable_first: bool) -> None:
    rig = await make_rig(StopTxnSampledData=ENERGY, dm={("TxCtrlr", "TxStartPoint"): start_point})
    if cable_first:
        await rig.plug(ready=False)
        await rig.present(TAG)
    else:
        await rig.present(TAG)
        await rig.plug(ready=False)
    rig.sims[1].set_ev_ready(True)
    await rig.settle()
    await rig.read()
    assert rig.sims[1].snapshot().contactor_closed
    await rig.unplug()
    events = rig.events()
    assert_well_formed(events)
    trigger, state, token_at = START_MATRIX[(start_point, cable_first)]
    started = events[0]
    assert (started["triggerReason"], started["transactionInfo"]["chargingState"]) == (
        trigger,
        state,
    )
    assert started["evse"] == {"id": 1, "connectorId": 1}
    with_token = [i for i, e in enumerate(events) if "idToken" in e]
    assert with_token == ([] if token_at is None else [token_at])
    assert events[with_token[0]]["idToken"] == {"idToken": TAG, "type": "ISO14443"}
    if token_at:
        assert events[token_at]["triggerReason"] == "Authorized"
    # Once charging, the state says so; Ended at unplug (default TxStopPoint).
    assert any(e["transactionInfo"].get("chargingState") == "Charging" for e in events)
    ended = events[-1]
    assert (ended["eventType"], ended["triggerReason"]) == ("Ended", "EVCommunicationLost")
    assert ended["transactionInfo"]["stoppedReason"] == "EVDisconnected"
    assert ended["meterValue"][-1]["sampledValue"][0]["context"] == "Transaction.End"
    # `evse` in Started, and again only when Started was made without the cable.
    with_evse = [i for i, e in enumerate(events) if "evse" in e]
    assert with_evse == ([0] if state != "Idle" else [0, 1])
    assert not any(e.get("offline") for e in events)
    assert rig.link.transactions() == []


@pytest.mark.parametrize("value", ["ParkingBayOccupancy", "DataSigned", "Nonsense"])
async def test_start_and_stop_points_this_hardware_cannot_detect_are_rejected(
    make_rig: MakeRig, value: str
) -> None:
    rig = await make_rig()
    for variable in ("TxStartPoint", "TxStopPoint"):
        [result] = rig.result(
            "SetVariables",
            {
                "setVariableData": [
                    {
                        "component": {"name": "TxCtrlr"},
                        "variable": {"name": variable},
                        "attributeValue": f"EVConnected,{value}",
                    }
                ]
            },
        )["setVariableResult"]
        assert result["attributeStatus"] == "Rejected", result
    [got, stop] = rig.result(
        "GetVariables",
        {
            "getVariableData": [
                {"component": {"name": "TxCtrlr"}, "variable": {"name": "TxStartPoint"}},
                {"component": {"name": "TxCtrlr"}, "variable": {"name": "TxStopPoint"}},
            ]
        },
    )["getVariableResult"]
    assert (got["attributeValue"], stop["attributeValue"]) == (
        "PowerPathClosed",
        "EVConnected,Authorized",
    )


# -- E06 stop options, E07 local stop, E09/E10 cable, F03 remote ---------------------------------


async def test_stop_point_authorized_local_stop_by_the_same_token(make_rig: MakeRig) -> None:
    rig = await make_rig(StopTxnSampledData=ENERGY, dm={("TxCtrlr", "TxStopPoint"): "Authorized"})
    await rig.plug()
    await rig.present(TAG)
    await rig.read()
    await rig.present(TAG)
    ended = rig.events()[-1]
    assert (ended["eventType"], ended["triggerReason"]) == ("Ended", "StopAuthorized")
    assert ended["transactionInfo"]["stoppedReason"] == "Local"
    assert ended["meterValue"][-1]["sampledValue"][0]["context"] == "Transaction.End"
    count = len(rig.events())
    await rig.unplug()
    assert len(rig.events()) == count  # the cable goes after the transaction
    assert_well_formed(rig.events())


async def test_local_stop_by_another_token_of_the_same_group(make_rig: MakeRig) -> None:
    rig = await make_rig()
    answer = rig._answer_for

    def with_group(action: str, payload: dict[str, Any]) -> dict[str, Any]:
        result = answer(action, payload)
        if action == "Authorize":
            token = payload["idToken"]["idToken"]
            group = "OUTSIDERS" if token == "STRANGER" else "FLEET"
            result["idTokenInfo"]["groupIdToken"] = {"idToken": group, "type": "Central"}
        return result

    rig._answer_for = with_group  # type: ignore[method-assign]
    rig.station.authorizer.record("OTHER1", IdTagInfo(AuthStatus.ACCEPTED, None, "FLEET"), 0.0)
    await rig.plug()
    await rig.present(TAG)
    await rig.present("STRANGER")  # not of the group (the CSMS says so): ignored
    await rig.read()
    assert rig.events()[-1]["eventType"] != "Ended"
    await rig.present("OTHER1")  # of the group, known locally (cache)
    ended = rig.events()[-1]
    assert (ended["eventType"], ended["triggerReason"]) == ("Ended", "StopAuthorized")
    assert ended["transactionInfo"]["stoppedReason"] == "Local"
    # E07: the Ended event names the token that stopped it.
    assert ended["idToken"]["idToken"] == "OTHER1"
    assert_well_formed(rig.events())


async def test_local_stop_by_a_token_whose_group_only_the_csms_knows(make_rig: MakeRig) -> None:
    """C09.FR.03: a token not known locally is authorized with the CSMS to learn its group;
    the same group as the transaction's stops it."""
    rig = await make_rig()
    answer = rig._answer_for
    asked: list[str] = []

    def with_group(action: str, payload: dict[str, Any]) -> dict[str, Any]:
        result = answer(action, payload)
        if action == "Authorize":
            asked.append(payload["idToken"]["idToken"])
            result["idTokenInfo"]["groupIdToken"] = {"idToken": "FLEET", "type": "Central"}
        return result

    rig._answer_for = with_group  # type: ignore[method-assign]
    await rig.plug()
    await rig.present(TAG)
    await rig.read()
    assert rig.station.authorizer.group_of("NEWCARD", 0.0) is None
    await rig.present("NEWCARD")
    await rig.read()
    assert asked[-1] == "NEWCARD"
    ended = rig.events()[-1]
    assert (ended["eventType"], ended["triggerReason"]) == ("Ended", "StopAuthorized")
    assert ended["idToken"]["idToken"] == "NEWCARD"
    assert_well_formed(rig.events())


async def test_remote_stop_with_stop_point_power_path_closed(make_rig: MakeRig) -> None:
    rig = await make_rig(dm={("TxCtrlr", "TxStopPoint"): "PowerPathClosed"})
    await rig.plug()
    await rig.present(TAG)
    tx_id = rig.events()[0]["transactionInfo"]["transactionId"]
    assert rig.result("RequestStopTransaction", {"transactionId": tx_id}) == {"status": "Accepted"}
    ended = rig.events()[-1]
    assert (ended["triggerReason"], ended["transactionInfo"]["stoppedReason"]) == (
        "RemoteStop",
        "Remote",
    )
    assert rig.result("RequestStopTransaction", {"transactionId": tx_id})["status"] == "Rejected"
    assert_well_formed(rig.events())


async def test_ev_side_disconnect_stops_the_transaction_e09(make_rig: MakeRig) -> None:
    """TxStopPoint without EVConnected, StopTxOnEVSideDisconnect true: the cable ends it."""
    rig = await make_rig(
        StopTransactionOnEVSideDisconnect=True, dm={("TxCtrlr", "TxStopPoint"): "Authorized"}
    )
    await rig.plug()
    await rig.present(TAG)
    await rig.unplug()
    ended = rig.events()[-1]
    assert (ended["eventType"], ended["triggerReason"]) == ("Ended", "EVCommunicationLost")
    assert ended["transactionInfo"]["stoppedReason"] == "EVDisconnected"
    assert_well_formed(rig.events())


async def test_ev_side_disconnect_suspends_the_transaction_e10(make_rig: MakeRig) -> None:
    """TxStopPoint Authorized, StopTxOnEVSideDisconnect false: the transaction is suspended
    (Updated EVCommunicationLost) and charging resumes when the EV is back."""
    rig = await make_rig(
        StopTransactionOnEVSideDisconnect=False, dm={("TxCtrlr", "TxStopPoint"): "Authorized"}
    )
    await rig.plug()
    await rig.present(TAG)
    await rig.read()
    await rig.unplug()
    lost = rig.events()[-1]
    assert (lost["eventType"], lost["triggerReason"]) == ("Updated", "EVCommunicationLost")
    assert lost["transactionInfo"]["chargingState"] != "Charging"
    assert rig.link.transaction_of(1) is not None
    await rig.plug()
    await rig.read()
    back = [e for e in rig.events() if e["seqNo"] > lost["seqNo"]]
    assert back[0]["triggerReason"] == "CablePluggedIn"
    assert any(e["transactionInfo"].get("chargingState") == "Charging" for e in back)
    assert rig.sims[1].snapshot().contactor_closed
    await rig.present(TAG)
    assert summary(rig.events())[-1] == ("Ended", "StopAuthorized")
    assert_well_formed(rig.events())


async def test_energy_transfer_stop_point_e06(make_rig: MakeRig) -> None:
    """TxStopPoint EnergyTransfer: the EV stops asking, the transaction ends (StoppedByEV),
    with chargingState EVConnected and its end meter value."""
    rig = await make_rig(
        StopTxnSampledData=ENERGY, dm={("TxCtrlr", "TxStopPoint"): "EnergyTransfer"}
    )
    await rig.plug()
    await rig.present(TAG)
    await rig.read()
    await rig.tick(5)
    rig.sims[1].set_ev_ready(False)
    await rig.settle()
    ended = rig.events()[-1]
    assert (ended["eventType"], ended["triggerReason"]) == ("Ended", "ChargingStateChanged")
    assert ended["transactionInfo"]["stoppedReason"] == "StoppedByEV"
    assert ended["transactionInfo"]["chargingState"] == "EVConnected"
    assert [mv["sampledValue"][0]["context"] for mv in ended["meterValue"]] == [
        "Transaction.Begin",
        "Transaction.End",
    ]
    assert rig.station.session_of(1) is None
    assert_well_formed(rig.events())


@pytest.mark.parametrize("stop_point", ["Authorized", "PowerPathClosed", "EnergyTransfer"])
async def test_cable_gone_before_any_authorization_ends_the_transaction(
    make_rig: MakeRig, stop_point: str
) -> None:
    """TxStartPoint EVConnected, a TxStopPoint without it: unplugged before a token came,
    nothing is left that could end the transaction later; it ends at once."""
    rig = await make_rig(
        dm={("TxCtrlr", "TxStartPoint"): "EVConnected", ("TxCtrlr", "TxStopPoint"): stop_point}
    )
    await rig.plug()
    await rig.unplug()
    assert summary(rig.events()) == [
        ("Started", "CablePluggedIn"),
        ("Ended", "EVCommunicationLost"),
    ]
    assert rig.events()[-1]["transactionInfo"]["stoppedReason"] == "EVDisconnected"
    assert rig.link.transactions() == []
    await rig.plug()  # the next EV: a new transaction
    assert len({e["transactionInfo"]["transactionId"] for e in rig.events()}) == 2


async def test_ev_connect_timeout_without_cable_ends_the_transaction(make_rig: MakeRig) -> None:
    """TxStartPoint Authorized, TxStopPoint EVConnected (TC_E_05): the cable never came; after
    EVConnectionTimeOut the transaction ends (EVConnectTimeout / Timeout)."""
    rig = await make_rig(
        ConnectionTimeOut=30,
        dm={("TxCtrlr", "TxStartPoint"): "Authorized", ("TxCtrlr", "TxStopPoint"): "EVConnected"},
    )
    await rig.present(TAG)
    await rig.tick(31)
    assert summary(rig.events()) == [("Started", "Authorized"), ("Ended", "EVConnectTimeout")]
    assert rig.events()[-1]["transactionInfo"]["stoppedReason"] == "Timeout"
    assert rig.link.transactions() == []


# -- E05 id not accepted by the CSMS --------------------------------------------------------------


async def test_invalid_id_with_stop_tx_on_invalid_id_false_limits_energy(
    make_rig: MakeRig,
) -> None:
    """StopTxOnInvalidId false: the transaction goes on, up to MaxEnergyOnInvalidId, then the
    EVSE suspends (Updated EnergyLimitReached, SuspendedEVSE); the driver still ends it."""
    rig = await make_rig(StopTransactionOnInvalidId=False, MaxEnergyOnInvalidId=50)
    rig.auth_status["BADCARD"] = "Accepted"
    rig.hold = {"TransactionEvent"}
    await rig.plug()
    await rig.present("BADCARD")
    rig.auth_status["BADCARD"] = "Invalid"  # the CSMS's verdict in the TransactionEvent answer
    rig.hold = set()
    rig.answer_held()
    assert rig.station.session_of(1) is not None
    for _ in range(40):
        await rig.tick(10)
        if any(e["transactionInfo"].get("chargingState") == "SuspendedEVSE" for e in rig.events()):
            break
    suspended = [
        e for e in rig.events() if e["transactionInfo"].get("chargingState") == "SuspendedEVSE"
    ]
    assert suspended and suspended[0]["triggerReason"] == "EnergyLimitReached"
    assert not rig.sims[1].snapshot().contactor_closed
    assert rig.link.transaction_of(1) is not None
    await rig.unplug()
    assert summary(rig.events())[-1] == ("Ended", "EVCommunicationLost")
    assert_well_formed(rig.events())


async def test_invalid_id_with_stop_tx_on_invalid_id_true_deauthorizes(make_rig: MakeRig) -> None:
    rig = await make_rig(StopTransactionOnInvalidId=True)
    rig.hold = {"TransactionEvent"}
    await rig.plug()
    await rig.present(TAG)
    rig.auth_status[TAG] = "Blocked"
    rig.hold = set()
    rig.answer_held()
    ended = rig.events()[-1]
    assert (ended["triggerReason"], ended["transactionInfo"]["stoppedReason"]) == (
        "Deauthorized",
        "DeAuthorized",
    )
    assert not rig.sims[1].snapshot().contactor_closed
    assert_well_formed(rig.events())


# -- E04/E11/E12 offline ------------------------------------------------------------------------


async def test_connection_lost_during_a_transaction_e11(make_rig: MakeRig) -> None:
    rig = await make_rig(MeterValueSampleInterval=10)
    await rig.plug()
    await rig.present(TAG)
    online = len(rig.events())
    rig.disconnect()
    await rig.tick(10)
    await rig.tick(10)
    await rig.unplug()
    assert len(rig.events()) == online  # nothing sent while offline...
    rig.connect()
    events = rig.events()
    assert_well_formed(events)  # ...all of it afterwards, in order, without gaps
    assert [bool(e.get("offline")) for e in events] == [False] * online + [True] * (
        len(events) - online
    )
    assert summary(events)[-1] == ("Ended", "EVCommunicationLost")
    times = [e["timestamp"] for e in events]
    assert times == sorted(times)


async def test_offline_start_rejected_by_the_csms_once_online_e04(make_rig: MakeRig) -> None:
    """E04: started offline for an unknown card (AllowOfflineTxForUnknownId); back online the
    CSMS answers the Started event with Invalid: StopTxOnInvalidId ends the transaction."""
    rig = await make_rig(
        AllowOfflineTxForUnknownId=True, LocalAuthorizeOffline=True, StopTransactionOnInvalidId=True
    )
    rig.disconnect()
    await rig.plug()
    await rig.present("UNKNOWN1")
    await rig.read()
    assert rig.sims[1].snapshot().contactor_closed
    rig.auth_status["UNKNOWN1"] = "Invalid"
    rig.connect()
    events = rig.events()
    assert events[0]["offline"] is True and events[0]["idToken"]["idToken"] == "UNKNOWN1"
    ended = events[-1]
    assert (ended["triggerReason"], ended["transactionInfo"]["stoppedReason"]) == (
        "Deauthorized",
        "DeAuthorized",
    )
    assert "offline" not in ended
    assert not rig.sims[1].snapshot().contactor_closed
    assert_well_formed(events)


# -- E13 transaction message not accepted ---------------------------------------------------------


def _held_ids(rig: Rig) -> list[str]:
    return [frame[1] for frame in rig.held]


async def test_unanswered_transaction_event_is_retried_then_dropped_e13(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(TransactionMessageAttempts=3, TransactionMessageRetryInterval=5)
    rig.hold = {"TransactionEvent"}
    await rig.plug()
    await rig.present(TAG)
    assert len(rig.held) == 1
    started_id = rig.held[0][1]
    await rig.tick(31)  # MessageTimeout (30 s here): attempt 1 failed, retry in 5 s
    assert len(rig.held) == 1
    await rig.tick(4)
    assert len(rig.held) == 1  # not yet
    await rig.tick(1.5)
    assert _held_ids(rig) == [started_id] * 2  # the same message, the same id
    await rig.tick(31)  # attempt 2 failed: retry in 2 x 5 s
    await rig.tick(9)
    assert len(rig.held) == 2
    await rig.tick(1.5)
    assert _held_ids(rig) == [started_id] * 3
    await rig.tick(31)  # attempt 3 of 3 failed: dropped; the next event goes out
    ids = _held_ids(rig)
    assert ids[:3] == [started_id] * 3 and len(ids) == 4 and ids[3] != started_id
    assert rig.held[3][3]["seqNo"] == 1
    rig.hold = set()
    del rig.held[:3]  # the attempts of the dropped message stay unanswered
    rig.answer_held()
    await rig.unplug()
    assert rig.events()[-1]["eventType"] == "Ended"
    assert not rig.engine.transaction_messages_queued()


async def test_transaction_event_answered_with_callerror_is_retried_e13(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(TransactionMessageAttempts=3, TransactionMessageRetryInterval=2)
    rig.hold = {"TransactionEvent"}
    await rig.plug()
    await rig.present(TAG)
    first = rig.held.pop(0)
    rig.engine.receive(json.dumps([4, first[1], "InternalError", "try later", {}]))
    rig.flush()
    assert rig.held == []
    await rig.tick(2.5)
    [again] = rig.held
    assert (again[1], again[3]) == (first[1], first[3])
    rig.hold = set()
    rig.answer_held()  # accepted on the second attempt: the transaction goes on
    await rig.unplug()
    assert summary(rig.events())[-1] == ("Ended", "EVCommunicationLost")
    assert not rig.engine.transaction_messages_queued()


async def test_a_timeout_is_no_attempt_under_16(make_rig: MakeRig) -> None:
    rig = await make_rig(
        connect=False, TransactionMessageAttempts=1, TransactionMessageRetryInterval=1
    )
    rig.connect(OcppVersion.V16)
    rig.hold = {"StartTransaction"}
    await rig.plug()
    await rig.present(TAG)
    for _ in range(3):
        await rig.tick(31)
        await rig.tick(1.5)
    assert len(rig.held) >= 3 and len({frame[1] for frame in rig.held}) == 1
    assert rig.engine.transaction_messages_queued()  # never dropped for timeouts


# -- E14 GetTransactionStatus, E15 end of charging ---------------------------------------------


async def test_get_transaction_status_e14(make_rig: MakeRig) -> None:
    rig = await make_rig()
    assert rig.result("GetTransactionStatus", {"transactionId": "unknown"}) == {
        "ongoingIndicator": False,
        "messagesInQueue": False,
    }
    await rig.plug()
    await rig.present(TAG)
    tx_id = rig.events()[0]["transactionInfo"]["transactionId"]
    assert rig.result("GetTransactionStatus", {"transactionId": tx_id}) == {
        "ongoingIndicator": True,
        "messagesInQueue": False,
    }
    rig.hold = {"TransactionEvent"}
    await rig.unplug()  # the Ended event waits for its answer
    assert rig.result("GetTransactionStatus", {"transactionId": tx_id}) == {
        "ongoingIndicator": False,
        "messagesInQueue": True,
    }
    assert rig.result("GetTransactionStatus", {}) == {"messagesInQueue": True}
    rig.hold = set()
    rig.answer_held()
    assert rig.result("GetTransactionStatus", {"transactionId": tx_id}) == {
        "ongoingIndicator": False,
        "messagesInQueue": False,
    }
    assert rig.result("GetTransactionStatus", {}) == {"messagesInQueue": False}


async def test_end_of_charging_e15(make_rig: MakeRig) -> None:
    rig = await make_rig()
    await rig.plug()
    await rig.present(TAG)
    await rig.read()
    assert rig.events()[-1]["transactionInfo"]["chargingState"] == "Charging"
    rig.sims[1].set_ev_ready(False)  # the battery is full: the EV stops asking
    await rig.settle()
    update = rig.events()[-1]
    assert (update["eventType"], update["triggerReason"]) == ("Updated", "ChargingStateChanged")
    assert update["transactionInfo"]["chargingState"] == "SuspendedEV"
    assert rig.link.transaction_of(1) is not None  # the transaction goes on until unplug
    await rig.unplug()
    assert summary(rig.events())[-1] == ("Ended", "EVCommunicationLost")
    assert_well_formed(rig.events())
