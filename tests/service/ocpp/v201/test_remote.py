"""OCPP 2.0.1 requests from the CSMS (service/ocpp/v201/remote.py) on the real station, engine
and queue (tests/service/ocpp/v201/link_rig.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.service.ocpp.v201.link_rig import ENERGY, Rig

MakeRig = Callable[..., Awaitable[Rig]]
TAG = "04A1B2C3"
CENTRAL = {"idToken": "REMOTE-1", "type": "Central"}


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[MakeRig]:
    rigs: list[Rig] = []

    async def make(*, dm: dict[tuple[str, str], str] | None = None, **keys: Any) -> Rig:
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
        rig.connect()
        return rig

    yield make
    for rig in rigs:
        rig.close()


@pytest.fixture
async def rig(make_rig: MakeRig) -> Rig:
    return await make_rig()


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["eventType"], e["triggerReason"]) for e in events]


def error_code(answer: list[Any]) -> str:
    assert answer[0] == 4, answer
    return str(answer[2])


# -- F01/F02 RequestStartTransaction -----------------------------------------------------------


async def test_remote_start_before_plug_in(rig: Rig) -> None:
    answer = rig.result(
        "RequestStartTransaction", {"idToken": CENTRAL, "remoteStartId": 7, "evseId": 1}
    )
    assert answer == {"status": "Accepted"}
    assert rig.sent("Authorize") == [{"idToken": CENTRAL}]  # AuthorizeRemoteStart
    await rig.plug()
    await rig.read()
    started = rig.events()[0]
    assert (started["eventType"], started["triggerReason"]) == ("Started", "CablePluggedIn")
    assert started["transactionInfo"]["remoteStartId"] == 7
    assert started["idToken"] == CENTRAL
    assert "remoteStartId" not in rig.events()[1]["transactionInfo"]


async def test_remote_start_after_plug_in_without_authorize(make_rig: MakeRig) -> None:
    rig = await make_rig(AuthorizeRemoteTxRequests=False)
    await rig.plug(2)
    answer = rig.result("RequestStartTransaction", {"idToken": CENTRAL, "remoteStartId": 8})
    started = rig.events()[0]
    assert answer == {
        "status": "Accepted",
        "transactionId": started["transactionInfo"]["transactionId"],
    }
    assert started["evse"] == {"id": 2, "connectorId": 1}  # the plugged-in EVSE was chosen
    assert (started["triggerReason"], started["transactionInfo"]["remoteStartId"]) == (
        "RemoteStart",
        8,
    )
    assert rig.sent("Authorize") == []


async def test_remote_start_with_a_tx_profile_sets_the_limit(rig: Rig) -> None:
    profile: dict[str, Any] = {
        "id": 1,
        "stackLevel": 0,
        "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Relative",
        "chargingSchedule": [
            {
                "id": 1,
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [
                    {"startPeriod": 60, "limit": 6.0},
                    {"startPeriod": 0, "limit": 10.0},
                ],
            }
        ],
    }
    start = {"idToken": CENTRAL, "remoteStartId": 9, "evseId": 1, "chargingProfile": profile}
    assert rig.result("RequestStartTransaction", start) == {"status": "Accepted"}
    session = rig.station.session_of(1)
    assert session is not None and session.limit_a == 10.0
    default = {**profile, "chargingProfilePurpose": "TxDefaultProfile"}
    refused = rig.result(
        "RequestStartTransaction", {**start, "evseId": 2, "chargingProfile": default}
    )
    assert refused["status"] == "Rejected"
    assert refused["statusInfo"]["reasonCode"] == "InvalidProfile"
    empty = {
        **profile,
        "chargingSchedule": [{**profile["chargingSchedule"][0], "chargingSchedulePeriod": []}],
    }
    answer = rig.call("RequestStartTransaction", {**start, "evseId": 2, "chargingProfile": empty})
    assert error_code(answer) in ("OccurrenceConstraintViolation", "PropertyConstraintViolation")
    assert rig.station.session_of(2) is None


async def test_remote_start_refusals(rig: Rig) -> None:
    def start(**extra: Any) -> dict[str, Any]:
        return rig.result(
            "RequestStartTransaction", {"idToken": CENTRAL, "remoteStartId": 1, **extra}
        )

    assert start(evseId=5)["statusInfo"]["reasonCode"] == "UnknownEvse"
    # Printable ASCII only (the cache and the local list share tokens with 1.6).
    odd_token = {"idToken": "caf\u00e9", "type": "Central"}
    refused = rig.result("RequestStartTransaction", {"idToken": odd_token, "remoteStartId": 1})
    assert (refused["status"], refused["statusInfo"]["reasonCode"]) == (
        "Rejected",
        "InvalidIdToken",
    )
    # An empty idToken is only a NoAuthorization one.
    empty = {"idToken": "", "type": "Central"}
    refused = rig.result("RequestStartTransaction", {"idToken": empty, "remoteStartId": 1})
    assert refused["status"] == "Rejected"
    assert start(evseId=1) == {"status": "Accepted"}
    busy = start(evseId=1)
    assert (busy["status"], busy["statusInfo"]["reasonCode"]) == ("Rejected", "EvseBusy")
    rig.station.set_availability(2, False)
    assert start()["status"] == "Rejected"  # no EVSE left
    # Bad input: the schema's errors, nothing done.
    missing = rig.call("RequestStartTransaction", {"idToken": CENTRAL})
    assert error_code(missing) == "OccurrenceConstraintViolation"
    wrong_type = rig.call("RequestStartTransaction", {"idToken": CENTRAL, "remoteStartId": "x"})
    assert error_code(wrong_type) == "TypeConstraintViolation"
    extra = rig.call(
        "RequestStartTransaction", {"idToken": CENTRAL, "remoteStartId": 1, "bogus": 1}
    )
    assert error_code(extra) == "FormatViolation"
    bad_type = rig.call(
        "RequestStartTransaction",
        {"idToken": {"idToken": "A", "type": "Bitcoin"}, "remoteStartId": 1},
    )
    assert error_code(bad_type) == "PropertyConstraintViolation"


# -- F03 RequestStopTransaction ----------------------------------------------------------------


async def test_remote_stop(rig: Rig) -> None:
    await rig.plug()
    await rig.present(TAG)
    tx_id = rig.events()[0]["transactionInfo"]["transactionId"]
    assert rig.result("RequestStopTransaction", {"transactionId": "nope"})["status"] == "Rejected"
    assert rig.result("RequestStopTransaction", {"transactionId": tx_id}) == {"status": "Accepted"}
    ended = rig.events()[-1]
    assert (ended["eventType"], ended["triggerReason"]) == ("Ended", "RemoteStop")
    assert ended["transactionInfo"]["stoppedReason"] == "Remote"
    assert rig.station.session_of(1) is None


async def test_remote_stop_of_a_transaction_without_a_session(make_rig: MakeRig) -> None:
    rig = await make_rig(dm={("TxCtrlr", "TxStartPoint"): "EVConnected"})
    await rig.plug()
    tx_id = rig.events()[0]["transactionInfo"]["transactionId"]
    assert rig.result("RequestStopTransaction", {"transactionId": tx_id}) == {"status": "Accepted"}
    assert summary(rig.events()) == [("Started", "CablePluggedIn"), ("Ended", "RemoteStop")]
    assert rig.link.transaction_of(1) is None


async def test_remote_stop_before_the_ev_is_plugged_in(make_rig: MakeRig) -> None:
    rig = await make_rig(dm={("TxCtrlr", "TxStartPoint"): "Authorized"})
    await rig.present(TAG)
    tx_id = rig.events()[0]["transactionInfo"]["transactionId"]
    assert rig.result("RequestStopTransaction", {"transactionId": tx_id})["status"] == "Accepted"
    ended = rig.events()[-1]
    assert (ended["triggerReason"], ended["transactionInfo"]["stoppedReason"]) == (
        "RemoteStop",
        "Remote",
    )


# -- F05 UnlockConnector ------------------------------------------------------------------------


async def test_unlock_connector(rig: Rig) -> None:
    assert rig.result("UnlockConnector", {"evseId": 3, "connectorId": 1}) == {
        "status": "UnknownConnector"
    }
    assert rig.result("UnlockConnector", {"evseId": 1, "connectorId": 2}) == {
        "status": "UnknownConnector"
    }
    await rig.plug()
    await rig.present(TAG)
    assert rig.sims[1].snapshot().locked
    assert rig.result("UnlockConnector", {"evseId": 1, "connectorId": 1}) == {
        "status": "OngoingAuthorizedTransaction"
    }
    assert rig.sims[1].snapshot().locked and rig.station.has_transaction(1)
    rig.sims[2].pilot.set_locked(True)
    assert rig.result("UnlockConnector", {"evseId": 2, "connectorId": 2}) == {"status": "Unlocked"}
    assert not rig.sims[2].snapshot().locked


# -- B11/B12 Reset -----------------------------------------------------------------------------


async def test_reset_immediate_stops_transactions_then_resets(rig: Rig) -> None:
    await rig.plug()
    await rig.present(TAG)
    assert rig.result("Reset", {"type": "Immediate"}) == {"status": "Accepted"}
    ended = rig.events()[-1]
    assert (ended["eventType"], ended["triggerReason"]) == ("Ended", "ResetCommand")
    assert ended["transactionInfo"]["stoppedReason"] == "ImmediateReset"
    assert rig.resets == ["Immediate"]


async def test_reset_on_idle_waits_for_the_transaction(rig: Rig) -> None:
    assert rig.result("Reset", {"type": "OnIdle", "evseId": 9})["status"] == "Rejected"
    await rig.plug()
    await rig.present(TAG)
    assert rig.result("Reset", {"type": "OnIdle"}) == {"status": "Scheduled"}
    assert rig.resets == [] and rig.station.has_transaction(1)
    await rig.unplug()
    assert summary(rig.events())[-1] == ("Ended", "EVCommunicationLost")
    assert rig.resets == ["OnIdle"]
    assert rig.result("Reset", {"type": "OnIdle"}) == {"status": "Accepted"}  # idle: at once
    assert rig.resets == ["OnIdle", "OnIdle"]


async def test_reset_of_one_evse(rig: Rig) -> None:
    await rig.plug(1)
    await rig.present(TAG, 1)
    await rig.plug(2)
    await rig.present("CARD2", 2)
    assert rig.result("Reset", {"type": "OnIdle", "evseId": 2}) == {"status": "Scheduled"}
    assert rig.result("Reset", {"type": "Immediate", "evseId": 1}) == {"status": "Accepted"}
    ended = rig.events()[-1]
    assert (rig.evse_of(ended), ended["triggerReason"]) == (1, "ResetCommand")
    assert rig.station.has_transaction(2) and rig.resets == []
    await rig.unplug(2)
    assert rig.resets == []  # an EVSE reset does not restart the daemon
    assert not rig.sims[2].snapshot().locked


# -- G03/G04 ChangeAvailability ---------------------------------------------------------------


async def test_change_availability(rig: Rig) -> None:
    def change(status: str, evse: dict[str, int] | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"operationalStatus": status}
        if evse is not None:
            payload["evse"] = evse
        return rig.result("ChangeAvailability", payload)

    assert change("Inoperative", {"id": 2}) == {"status": "Accepted"}
    unavailable = [
        s for s in rig.sent("StatusNotification") if s["connectorStatus"] == "Unavailable"
    ]
    assert [(s["evseId"], s["connectorId"]) for s in unavailable] == [(2, 1), (2, 2)]
    assert change("Operative", {"id": 2, "connectorId": 1})["statusInfo"]["reasonCode"] == (
        "UnsupportedRequest"
    )
    assert change("Operative", {"id": 2}) == {"status": "Accepted"}
    assert change("Operative", {"id": 4})["status"] == "Rejected"
    assert change("Operative", {"id": 1, "connectorId": 3})["status"] == "Rejected"
    await rig.plug()
    await rig.present(TAG)
    assert change("Inoperative", {"id": 1, "connectorId": 1}) == {"status": "Scheduled"}
    await rig.unplug()
    assert rig.sent("StatusNotification")[-1] == {
        **rig.sent("StatusNotification")[-1],
        "evseId": 1,
        "connectorStatus": "Unavailable",
    }
    assert change("Inoperative") == {"status": "Accepted"}  # the whole station
    assert rig.station.status_of(2)[0] == "Unavailable"


# -- F06 TriggerMessage ------------------------------------------------------------------------


async def test_trigger_message(rig: Rig) -> None:
    def trigger(message: str, evse: dict[str, int] | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"requestedMessage": message}
        if evse is not None:
            payload["evse"] = evse
        return rig.result("TriggerMessage", payload)

    assert trigger("BootNotification") == {"status": "Rejected"}  # F06.FR.17
    assert trigger("Heartbeat") == {"status": "Accepted"}
    assert rig.calls[-1][0] == "Heartbeat"
    count = len(rig.sent("StatusNotification"))
    assert trigger("StatusNotification", {"id": 2}) == {"status": "Accepted"}
    assert [s["connectorId"] for s in rig.sent("StatusNotification")[count:]] == [1, 2]
    assert trigger("StatusNotification", {"id": 2, "connectorId": 2}) == {"status": "Accepted"}
    assert trigger("StatusNotification", {"id": 2, "connectorId": 7})["status"] == "Rejected"
    assert trigger("StatusNotification", {"id": 9})["status"] == "Rejected"
    assert trigger("MeterValues", {"id": 1}) == {"status": "Accepted"}
    [values] = rig.sent("MeterValues")
    assert values["evseId"] == 1
    assert values["meterValue"][0]["sampledValue"][0]["context"] == "Trigger"
    assert trigger("TransactionEvent")["status"] == "Rejected"  # none running
    await rig.plug()
    await rig.present(TAG)
    assert trigger("TransactionEvent", {"id": 1}) == {"status": "Accepted"}
    event = rig.events()[-1]
    assert (event["triggerReason"], event["seqNo"]) == ("Trigger", len(rig.events()) - 1)
    assert event["meterValue"][0]["sampledValue"][0]["context"] == "Trigger"
    assert trigger("LogStatusNotification") == {"status": "NotImplemented"}
    rig.remote.trigger_sources["LogStatusNotification"] = lambda evse: "Accepted"
    assert trigger("LogStatusNotification") == {"status": "Accepted"}
    assert error_code(rig.call("TriggerMessage", {"requestedMessage": "Coffee"})) == (
        "PropertyConstraintViolation"
    )


# -- E14, C11, P01 -----------------------------------------------------------------------------


async def test_get_transaction_status_sees_the_queue(rig: Rig) -> None:
    assert rig.result("GetTransactionStatus", {}) == {"messagesInQueue": False}
    rig.hold = {"TransactionEvent"}
    await rig.plug()
    await rig.present(TAG)
    tx_id = rig.held[0][3]["transactionInfo"]["transactionId"]
    assert rig.result("GetTransactionStatus", {"transactionId": tx_id}) == {
        "ongoingIndicator": True,
        "messagesInQueue": True,  # the Started event is in flight, unanswered
    }
    assert rig.result("GetTransactionStatus", {}) == {"messagesInQueue": True}
    assert rig.result("GetTransactionStatus", {"transactionId": "other"}) == {
        "ongoingIndicator": False,
        "messagesInQueue": False,
    }
    rig.hold = set()
    while rig.held:
        rig.answer_held()
    assert rig.result("GetTransactionStatus", {"transactionId": tx_id}) == {
        "ongoingIndicator": True,
        "messagesInQueue": False,
    }


async def test_clear_cache(rig: Rig) -> None:
    await rig.present(TAG)
    assert rig.station.authorizer.cache.get(TAG, 1e12) is not None
    assert rig.result("ClearCache", {}) == {"status": "Accepted"}
    assert len(rig.station.authorizer.cache) == 0


async def test_data_transfer_reaches_the_vendor_handler(rig: Rig) -> None:
    assert rig.result("DataTransfer", {"vendorId": "org.nobody"}) == {"status": "UnknownVendorId"}
    received: list[tuple[str, str]] = []

    async def handler(message_id: str, data: str) -> tuple[str, str]:
        received.append((message_id, data))
        return "Accepted", "ok"

    rig.remote.vendors["com.acme"] = handler
    rig.engine.receive(
        '[2,"dt-1","DataTransfer",{"vendorId":"com.acme","messageId":"Price",'
        '"data":{"eur_kwh":0.39}}]'
    )
    for _ in range(10):
        await asyncio.sleep(0)
    rig.flush()
    assert received == [("Price", '{"eur_kwh": 0.39}')]
    assert [a for a in rig.answers if a[1] == "dt-1"] == [
        [3, "dt-1", {"status": "Accepted", "data": "ok"}]
    ]


async def test_meter_values_of_trigger_use_aligned_measurands(make_rig: MakeRig) -> None:
    rig = await make_rig(MeterValuesAlignedData=f"{ENERGY},Current.Import")
    assert rig.result("TriggerMessage", {"requestedMessage": "MeterValues"}) == {
        "status": "Accepted"
    }
    per_evse = {p["evseId"]: p for p in rig.sent("MeterValues")}
    assert sorted(per_evse) == [1, 2]
    measurands = {v["measurand"] for v in per_evse[1]["meterValue"][0]["sampledValue"]}
    assert measurands == {ENERGY, "Current.Import"}
