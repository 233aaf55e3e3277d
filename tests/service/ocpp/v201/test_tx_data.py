"""The pure pieces of 2.0.1 transactions (service/ocpp/v201/tx_data.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from hal.interfaces import MeterReading, SignedMeterData
from service.ocpp.rpc import OcppVersion, schemas
from service.ocpp.v201.tx_data import (
    Transaction,
    ended_values,
    id_token_info,
    meter_value_v201,
    on_aligned_interval,
)
from service.station import metering
from service.station.auth import AuthStatus

ENERGY = "Energy.Active.Import.Register"


def mv(time: str, context: str, value: str = "1") -> dict[str, Any]:
    return {
        "timestamp": time,
        "sampledValue": [{"value": value, "context": context, "measurand": ENERGY, "unit": "Wh"}],
    }


def test_meter_value_conversion() -> None:
    converted = meter_value_v201(
        {
            "timestamp": "2027-01-15T08:00:00Z",
            "sampledValue": [
                {"value": "50.01", "context": "Sample.Clock", "measurand": "Frequency"},
                {"value": "nan", "measurand": "Voltage"},
                {"value": "oops"},
            ],
        }
    )
    assert converted == {
        "timestamp": "2027-01-15T08:00:00Z",
        "sampledValue": [
            {
                "value": 50.01,
                "context": "Sample.Clock",
                "measurand": "Frequency",
                "unitOfMeasure": {"unit": "Hz"},
            }
        ],
    }
    assert meter_value_v201({"timestamp": "x", "sampledValue": []}) is None


def test_id_token_info() -> None:
    info = id_token_info(
        {
            "status": "NoCredit",
            "cacheExpiryDateTime": "2027-01-15T08:00:00Z",
            "groupIdToken": {"idToken": "GROUP", "type": "Central"},
        }
    )
    assert (info.status, info.parent_id_tag) == (AuthStatus.NO_CREDIT, "GROUP")
    assert info.expiry is not None
    with pytest.raises(ValueError, match="status"):
        id_token_info({"status": "Maybe"})
    with pytest.raises(ValueError, match="cacheExpiryDateTime"):
        id_token_info({"status": "Accepted", "cacheExpiryDateTime": "soon"})


def test_ended_values_keep_begin_end_and_thin_samples() -> None:
    data = [
        mv("2027-01-15T08:00:00Z", "Transaction.Begin"),
        *(mv(f"2027-01-15T08:00:{s:02d}Z", "Sample.Periodic") for s in range(10, 60, 10)),
        mv("2027-01-15T08:01:00Z", "Sample.Clock"),
        mv("2027-01-15T08:01:05Z", "Transaction.End", "9"),
    ]

    def ended(data: list[dict[str, Any]], sampled: int, aligned: int) -> list[dict[str, Any]]:
        return ended_values(
            data,
            sampled_interval=sampled,
            aligned_interval=aligned,
            ended_measurands=[ENERGY],
            meter_stop_wh=9.0,
            timestamp="t",
        )

    none = ended(data, 0, 0)
    assert [v["sampledValue"][0]["context"] for v in none] == [
        "Transaction.Begin",
        "Transaction.End",
    ]
    thinned = ended(data, 20, 60)
    assert [v["timestamp"][-3:-1] for v in thinned] == ["00", "10", "30", "50", "00", "05"]
    # 08:01:00 is not on a 15-minute boundary: a clock-aligned value of another interval.
    fifteen = ended(data, 20, 900)
    assert [v["timestamp"][-3:-1] for v in fifteen] == ["00", "10", "30", "50", "05"]
    recovered = ended([], 0, 0)
    assert recovered == [
        {
            "timestamp": "t",
            "sampledValue": [
                {
                    "value": 9.0,
                    "context": "Transaction.End",
                    "measurand": ENERGY,
                    "location": "Outlet",
                    "unitOfMeasure": {"unit": "Wh"},
                }
            ],
        }
    ]


def test_transaction_state_round_trip() -> None:
    tx = Transaction("abc", 2, seq_no=5, id_token={"idToken": "A", "type": "Central"})
    assert Transaction.from_json(tx.to_json()) == tx
    with pytest.raises(ValueError):
        Transaction.from_json("[1, 2]")


def _unix(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("time", "interval", "on"),
    [
        ("2027-01-15T08:15:00", 900, True),
        ("2027-01-15T08:15:00.900", 900, True),
        ("2027-01-15T08:14:59.2", 900, True),
        ("2027-01-15T08:15:01.5", 900, False),
        ("2027-01-15T08:14:58", 900, False),
        ("2027-01-15T08:10:00", 900, False),
        ("2027-01-15T00:00:00", 7 * 3600, True),  # midnight starts every day's count
        ("2027-01-15T21:00:00", 7 * 3600, True),
        ("2027-01-16T04:00:00", 7 * 3600, False),  # 28 h after the 15th: not from its midnight
        ("2027-01-15T08:15:00", 0, False),
    ],
)
def test_on_aligned_interval_counts_from_midnight_utc(time: str, interval: int, on: bool) -> None:
    assert on_aligned_interval(_unix(time), interval) is on


def test_ended_values_keep_clock_values_of_their_interval_only() -> None:
    data = [
        mv("2027-01-15T08:00:00Z", "Transaction.Begin"),
        *(mv(f"2027-01-15T08:{m:02d}:00Z", "Sample.Clock") for m in range(5, 60, 5)),
        mv("2027-01-15T08:59:59.400Z", "Sample.Clock"),  # late by 0.6 s: the 09:00 value
        mv("bad time", "Sample.Clock"),  # cannot be judged: kept
        mv("2027-01-15T09:01:00Z", "Transaction.End", "9"),
    ]
    kept = ended_values(
        data,
        sampled_interval=0,
        aligned_interval=900,
        ended_measurands=[ENERGY],
        meter_stop_wh=9.0,
        timestamp="t",
    )
    clock = [v["timestamp"] for v in kept if v["sampledValue"][0]["context"] == "Sample.Clock"]
    assert clock == [
        "2027-01-15T08:15:00Z",
        "2027-01-15T08:30:00Z",
        "2027-01-15T08:45:00Z",
        "2027-01-15T08:59:59.400Z",
        "bad time",
    ]


SIGNED = SignedMeterData(
    signed_meter_data="OCMF|{}|{}",
    signing_method="ECDSA-secp256r1-SHA256",
    encoding_method="OCMF",
    public_key="QUJD",
)
READING = MeterReading(
    energy_import_wh=1234.5, voltage_v=(230.0,), current_a=(6.0,), power_w=(1380.0,), signed=SIGNED
)


def _station_value(context: str) -> dict[str, Any]:
    """A meter value as the station makes it with signing on (1.6-shaped)."""
    values = metering.sampled_values(
        READING, [ENERGY, "Voltage"], context=context, phases=1, signed=True
    )
    return metering.meter_value("2027-01-15T08:00:00Z", values)


def test_signed_data_becomes_the_signed_meter_value_of_its_twin() -> None:
    converted = meter_value_v201(_station_value("Sample.Periodic"), signed=True)
    assert converted is not None
    schemas(OcppVersion.V201).validate(
        "TransactionEvent",
        {
            "eventType": "Updated",
            "timestamp": "2027-01-15T08:00:00Z",
            "triggerReason": "MeterValuePeriodic",
            "seqNo": 1,
            "transactionInfo": {"transactionId": "t"},
            "meterValue": [converted],
        },
        response=False,
    )
    energy, voltage = converted["sampledValue"]
    assert energy["value"] == 1234.5
    assert energy["signedMeterValue"] == metering.signed_meter_value(SIGNED)
    assert "signedMeterValue" not in voltage
    # SignReadings false: the signed twin is dropped, the plain values stay.
    plain = meter_value_v201(_station_value("Sample.Periodic"))
    assert plain is not None
    assert [set(v) - {"signedMeterValue"} == set(v) for v in plain["sampledValue"]] == [True] * 2


def test_foreign_or_orphan_signed_data_is_left_out() -> None:
    value = _station_value("Transaction.End")
    samples = value["sampledValue"]
    twin = samples[1]
    garbage = dict(twin, value="OCMF|{}|{}")
    orphan = dict(twin, context="Trigger")
    converted = meter_value_v201(
        {"timestamp": value["timestamp"], "sampledValue": [samples[0], garbage, orphan, "x"]},
        signed=True,
    )
    assert converted is not None
    assert converted["sampledValue"] == [
        {
            "value": 1234.5,
            "context": "Transaction.End",
            "measurand": ENERGY,
            "location": "Outlet",
            "unitOfMeasure": {"unit": "Wh"},
        }
    ]
    only_signed = {"timestamp": "x", "sampledValue": [twin]}
    assert meter_value_v201(only_signed, signed=True) is None


def test_ended_values_keep_signatures_when_signing() -> None:
    data = [_station_value("Transaction.Begin"), _station_value("Transaction.End")]
    for signed in (True, False):
        kept = ended_values(
            data,
            sampled_interval=0,
            aligned_interval=0,
            ended_measurands=[ENERGY],
            meter_stop_wh=1234.5,
            timestamp="t",
            signed=signed,
        )
        assert len(kept) == 2
        for value in kept:
            assert ("signedMeterValue" in value["sampledValue"][0]) is signed
    stored = json.loads(json.dumps(data))  # as persisted: the signed twin survives JSON
    assert stored == data
