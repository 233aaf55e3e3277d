"""The OCPP 2.0.1 station link: statuses, Authorize and TransactionEvent on the real station,
engine and queue (tests/service/ocpp/v201/link_rig.py), with the test playing the CSMS."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from service.ocpp.rpc import OcppVersion
from service.station.model import StopReason
from tests.service.ocpp.v201.link_rig import ENERGY, FakeClock, Rig

MakeRig = Callable[..., Awaitable[Rig]]
TAG = "04A1B2C3"


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[MakeRig]:
    rigs: list[Rig] = []

    async def make(
        *,
        name: str = "evsed.db",
        connect: bool = True,
        clock: FakeClock | None = None,
        dm: dict[tuple[str, str], str] | None = None,
        **keys: Any,
    ) -> Rig:
        rig = Rig(tmp_path / name, keys, clock=clock)
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


def seq_nos(events: list[dict[str, Any]]) -> list[int]:
    return [e["seqNo"] for e in events]


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["eventType"], e["triggerReason"]) for e in events]


async def test_boot_reports_every_connector_with_201_statuses(make_rig: MakeRig) -> None:
    rig = await make_rig()
    assert rig.calls[0][0] == "BootNotification"
    statuses = rig.sent("StatusNotification")
    assert sorted((s["evseId"], s["connectorId"], s["connectorStatus"]) for s in statuses) == [
        (1, 1, "Available"),
        (2, 1, "Available"),
        (2, 2, "Available"),
    ]
    await rig.plug()
    assert rig.sent("StatusNotification")[-1]["connectorStatus"] == "Occupied"
    count = len(rig.sent("StatusNotification"))
    await rig.present(TAG)  # Preparing -> Charging is Occupied -> Occupied: not repeated
    await rig.read()
    assert len(rig.sent("StatusNotification")) == count
    rig.station.raise_fault(2, "HighTemperature", "hot")
    rig.flush()
    faulted = [s for s in rig.sent("StatusNotification") if s["connectorStatus"] == "Faulted"]
    assert [(s["evseId"], s["connectorId"]) for s in faulted] == [(2, 1), (2, 2)]


async def test_rfid_session_with_default_start_and_stop_points(make_rig: MakeRig) -> None:
    rig = await make_rig(
        MeterValueSampleInterval=10,
        MeterValuesSampledData=f"{ENERGY},Power.Active.Import",
        StopTxnSampledData=ENERGY,
    )
    await rig.plug()
    assert rig.events() == []  # TxStartPoint PowerPathClosed: not yet
    await rig.present(TAG)
    assert rig.sent("Authorize") == [{"idToken": {"idToken": TAG, "type": "ISO14443"}}]
    await rig.read()
    await rig.tick(10)  # one periodic sample
    await rig.tick(10)
    await rig.unplug()
    events = rig.events()
    assert summary(events) == [
        ("Started", "Authorized"),
        ("Updated", "ChargingStateChanged"),
        ("Updated", "MeterValuePeriodic"),
        ("Updated", "MeterValuePeriodic"),
        ("Ended", "EVCommunicationLost"),
    ]
    assert seq_nos(events) == [0, 1, 2, 3, 4]
    started, charging, periodic, _, ended = events
    tx_id = started["transactionInfo"]["transactionId"]
    assert uuid.UUID(tx_id).version == 4
    assert {e["transactionInfo"]["transactionId"] for e in events} == {tx_id}
    assert started["idToken"] == {"idToken": TAG, "type": "ISO14443"}
    assert started["transactionInfo"]["chargingState"] == "EVConnected"
    assert started["evse"] == {"id": 1, "connectorId": 1}
    assert [e for e in events[1:] if "evse" in e] == []  # E01.FR.16: only the first
    assert started["meterValue"][0]["sampledValue"][0]["context"] == "Transaction.Begin"
    assert started["meterValue"][0]["sampledValue"][0]["measurand"] == ENERGY
    assert "offline" not in started
    assert "idToken" not in charging
    assert charging["transactionInfo"]["chargingState"] == "Charging"
    values = periodic["meterValue"][0]["sampledValue"]
    assert {v["measurand"] for v in values} == {ENERGY, "Power.Active.Import"}
    assert all(isinstance(v["value"], float) for v in values)
    assert {v["unitOfMeasure"]["unit"] for v in values} == {"Wh", "W"}
    assert ended["transactionInfo"]["stoppedReason"] == "EVDisconnected"
    # TxEndedInterval 0: only the begin and end values.
    assert [mv["sampledValue"][0]["context"] for mv in ended["meterValue"]] == [
        "Transaction.Begin",
        "Transaction.End",
    ]
    assert (
        ended["meterValue"][1]["sampledValue"][0]["value"]
        > (ended["meterValue"][0]["sampledValue"][0]["value"])
    )
    assert rig.sent("StatusNotification")[-1]["connectorStatus"] == "Available"
    assert rig.db.query_all("SELECT key FROM kv WHERE key LIKE 'ocpp201.tx.%'") == []


async def test_start_at_ev_connected_then_authorized(make_rig: MakeRig) -> None:
    rig = await make_rig(dm={("TxCtrlr", "TxStartPoint"): "EVConnected"})
    await rig.plug(ready=False)
    [started] = rig.events()
    assert (started["eventType"], started["triggerReason"]) == ("Started", "CablePluggedIn")
    assert "idToken" not in started
    assert started["transactionInfo"]["chargingState"] == "EVConnected"
    await rig.present(TAG)
    rig.sims[1].set_ev_ready(True)
    await rig.settle()
    await rig.read()
    session = rig.station.session_of(1)
    assert session is not None
    assert session.transaction_id == started["transactionInfo"]["transactionId"]
    await rig.unplug()
    assert summary(rig.events()) == [
        ("Started", "CablePluggedIn"),
        ("Updated", "Authorized"),
        ("Updated", "ChargingStateChanged"),
        ("Updated", "ChargingStateChanged"),
        ("Ended", "EVCommunicationLost"),
    ]
    events = rig.events()
    assert events[1]["idToken"] == {"idToken": TAG, "type": "ISO14443"}
    assert [e["transactionInfo"].get("chargingState") for e in events[2:4]] == [
        "SuspendedEV",
        "Charging",
    ]
    assert seq_nos(events) == [0, 1, 2, 3, 4]


async def test_start_at_authorized_and_ev_connect_timeout(make_rig: MakeRig) -> None:
    rig = await make_rig(
        ConnectionTimeOut=30, dm={("TxCtrlr", "TxStartPoint"): "Authorized,EVConnected"}
    )
    await rig.present(TAG)
    [started] = rig.events()
    assert (started["triggerReason"], started["transactionInfo"]["chargingState"]) == (
        "Authorized",
        "Idle",
    )
    await rig.tick(31)
    assert summary(rig.events()) == [("Started", "Authorized"), ("Ended", "EVConnectTimeout")]
    assert rig.events()[-1]["transactionInfo"]["stoppedReason"] == "Timeout"
    # Authorized, then plugged in: the transaction goes on with the cable.
    await rig.present("CARD2")
    await rig.plug()
    await rig.read()
    second = rig.events()[2:]
    assert summary(second) == [
        ("Started", "Authorized"),
        ("Updated", "CablePluggedIn"),
        ("Updated", "ChargingStateChanged"),
    ]
    assert second[1]["transactionInfo"]["chargingState"] == "EVConnected"
    # `evse` in Started and again in the first event with the EV connected, then no more.
    assert ["evse" in e for e in second] == [True, True, False]
    assert seq_nos(second) == [0, 1, 2]


async def test_stop_point_ev_connected_keeps_the_transaction_until_unplug(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(StopTxnSampledData=ENERGY, dm={("TxCtrlr", "TxStopPoint"): "EVConnected"})
    await rig.plug()
    await rig.present(TAG)
    await rig.read()
    await rig.present(TAG)  # the same card again: stop
    session = rig.station.session_of(1)
    assert session is None and not rig.sims[1].snapshot().contactor_closed
    assert summary(rig.events())[-1] == ("Updated", "StopAuthorized")
    assert rig.events()[-1]["transactionInfo"]["chargingState"] == "EVConnected"
    assert rig.link.transaction_of(1) is not None
    await rig.unplug()
    ended = rig.events()[-1]
    assert (ended["eventType"], ended["triggerReason"]) == ("Ended", "EVCommunicationLost")
    assert ended["transactionInfo"]["stoppedReason"] == "Local"
    assert [mv["sampledValue"][0]["context"] for mv in ended["meterValue"]][-1] == (
        "Transaction.End"
    )


async def test_unplug_ends_transaction_and_session_when_the_station_would_keep_it(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(StopTransactionOnEVSideDisconnect=False)
    await rig.plug()
    await rig.present(TAG)
    await rig.read()
    await rig.unplug()
    assert summary(rig.events())[-1] == ("Ended", "EVCommunicationLost")
    assert rig.station.session_of(1) is None  # TxStopPoint EVConnected ended it too


async def test_offline_transaction_is_reported_in_order_after_reconnect(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(AllowOfflineTxForUnknownId=True, LocalAuthorizeOffline=True)
    rig.disconnect()
    await rig.plug()
    await rig.present("OFFLINE1")
    await rig.read()
    await rig.unplug()
    assert rig.events() == []
    assert rig.engine.transaction_messages_queued()
    rig.connect()
    events = rig.events()
    assert summary(events) == [
        ("Started", "Authorized"),
        ("Updated", "ChargingStateChanged"),
        ("Ended", "EVCommunicationLost"),
    ]
    assert [e.get("offline") for e in events] == [True, True, True]
    assert seq_nos(events) == [0, 1, 2]
    assert not rig.engine.transaction_messages_queued()


async def test_transaction_event_verdict_deauthorizes(make_rig: MakeRig) -> None:
    rig = await make_rig(StopTransactionOnInvalidId=True)
    rig.hold = {"TransactionEvent"}
    await rig.plug()
    await rig.present(TAG)
    rig.auth_status[TAG] = "Invalid"  # the CSMS changed its mind by the time it answers
    rig.hold = set()
    rig.answer_held()
    events = rig.events()
    assert summary(events)[-1] == ("Ended", "Deauthorized")
    assert events[-1]["transactionInfo"]["stoppedReason"] == "DeAuthorized"
    assert rig.station.session_of(1) is None


async def test_seq_no_survives_a_crash_and_the_transaction_ends_with_power_loss(
    make_rig: MakeRig, tmp_path: Path
) -> None:
    clock = FakeClock()
    rig = await make_rig(
        clock=clock, StopTxnSampledData=ENERGY, dm={("TxCtrlr", "TxStartPoint"): "EVConnected"}
    )
    await rig.plug()
    await rig.present(TAG)
    await rig.read()
    await rig.plug(2)  # EVSE 2: a transaction without a station session (no token yet)
    before = rig.events()
    assert seq_nos([e for e in before if rig.evse_of(e) == 1]) == [0, 1, 2]
    rig.disconnect()
    rig.db.close()  # power cut: nothing more is written

    again = await make_rig(clock=clock, connect=False, StopTxnSampledData=ENERGY)
    again.sims[1].plug()  # the EV is still there after the restart
    again.connect()
    ended = again.events()
    first = {rig.evse_of(e): e["transactionInfo"]["transactionId"] for e in before}
    evse_of = {tx_id: evse for evse, tx_id in first.items()}
    assert sorted(
        (evse_of[e["transactionInfo"]["transactionId"]], e["eventType"], e["seqNo"]) for e in ended
    ) == [(1, "Ended", 3), (2, "Ended", 1)]
    for event in ended:
        assert event["triggerReason"] == "AbnormalCondition"
        assert event["transactionInfo"]["stoppedReason"] == "PowerLoss"
    [end_of_1] = [e for e in ended if e["transactionInfo"]["transactionId"] == first[1]]
    # The last reading the station kept before the power cut.
    assert [mv["sampledValue"][0]["context"] for mv in end_of_1["meterValue"]] == [
        "Transaction.End"
    ]


async def test_meter_values_outside_a_transaction(make_rig: MakeRig) -> None:
    rig = await make_rig(MeterValuesSampledData=f"{ENERGY},Voltage")
    assert rig.station.sample_now(2)
    rig.flush()
    [values] = rig.sent("MeterValues")
    assert values["evseId"] == 2
    sampled = values["meterValue"][0]["sampledValue"]
    assert {(v["measurand"], v.get("phase")) for v in sampled} == {
        (ENERGY, None),
        ("Voltage", "L1-N"),
    }
    assert all(v["context"] == "Trigger" for v in sampled)


async def test_daemon_stop_ends_the_transaction_with_reboot(make_rig: MakeRig) -> None:
    rig = await make_rig()
    await rig.plug()
    await rig.present(TAG)
    assert rig.station.stop_all(StopReason.REBOOT) == 1
    rig.flush()
    ended = rig.events()[-1]
    assert (ended["triggerReason"], ended["transactionInfo"]["stoppedReason"]) == (
        "AbnormalCondition",
        "Reboot",
    )


async def test_the_same_station_speaks_16_when_the_csms_chooses_it(make_rig: MakeRig) -> None:
    rig = await make_rig(connect=False)
    rig.connect(OcppVersion.V16)
    assert rig.calls[0] == ("BootNotification", rig.calls[0][1])
    assert "chargePointVendor" in rig.calls[0][1]
    # The 2.0.1 statuses queued at start-up are never sent under 1.6; 1.6 ones are.
    statuses = rig.sent("StatusNotification")
    assert statuses and all("connectorId" in s and "errorCode" in s for s in statuses)
    await rig.plug()
    await rig.present(TAG)
    assert [a for a, _ in rig.calls if a in ("StartTransaction", "TransactionEvent")] == [
        "StartTransaction"
    ]


async def test_energy_transfer_start_and_stop_points(make_rig: MakeRig) -> None:
    rig = await make_rig(
        MeterValueSampleInterval=10,
        dm={
            ("TxCtrlr", "TxStartPoint"): "EnergyTransfer",
            ("TxCtrlr", "TxStopPoint"): "EnergyTransfer",
        },
    )
    await rig.plug(ready=False)
    await rig.present(TAG)
    assert rig.events() == []  # authorized and the power path closed, but no energy yet
    await rig.tick(10)
    assert rig.sent("MeterValues")  # the periodic sample goes out without a transaction
    rig.sims[1].set_ev_ready(True)
    await rig.settle()
    [started] = rig.events()
    assert (started["triggerReason"], started["transactionInfo"]["chargingState"]) == (
        "ChargingStateChanged",
        "Charging",
    )
    assert started["idToken"]["idToken"] == TAG
    rig.sims[1].set_ev_ready(False)  # the EV stops asking: the transaction ends
    await rig.settle()
    ended = rig.events()[-1]
    assert (ended["eventType"], ended["triggerReason"]) == ("Ended", "ChargingStateChanged")
    assert ended["transactionInfo"]["stoppedReason"] == "StoppedByEV"
    assert rig.station.session_of(1) is None
    assert not rig.sims[1].snapshot().contactor_closed


async def test_ended_values_follow_tx_ended_interval(make_rig: MakeRig) -> None:
    rig = await make_rig(
        MeterValueSampleInterval=10,
        StopTxnSampledData=ENERGY,
        dm={("SampledDataCtrlr", "TxEndedInterval"): "20"},
    )
    await rig.plug()
    await rig.present(TAG)
    for _ in range(6):
        await rig.tick(10)
    await rig.unplug()
    ended = rig.events()[-1]
    contexts = [mv["sampledValue"][0]["context"] for mv in ended["meterValue"]]
    assert contexts == ["Transaction.Begin"] + ["Sample.Periodic"] * 3 + ["Transaction.End"]
