"""The pure pieces of 2.0.1 transactions (service/ocpp/v201/tx_data.py)."""

from __future__ import annotations

from typing import Any

import pytest

from service.ocpp.v201.tx_data import (
    Transaction,
    ended_values,
    id_token_info,
    meter_value_v201,
)
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
    thinned = ended(data, 20, 900)
    assert [v["timestamp"][-3:-1] for v in thinned] == ["00", "10", "30", "50", "00", "05"]
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
