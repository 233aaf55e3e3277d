"""Tests for service.station.metering: sampled values, schedules, transaction data."""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

import pytest

from hal.interfaces import MeterReading, SignedMeterData
from service.ocpp.rpc import OcppVersion, RpcError, schemas
from service.station.keys import MEASURANDS
from service.station.metering import (
    TransactionDataCollector,
    format_value,
    meter_value,
    next_aligned_time,
    next_sample_time,
    parse_measurands,
    parse_signed_value,
    sampled_values,
    sampled_values_v201,
    signed_meter_value,
)

THREE_PHASE = MeterReading(
    energy_import_wh=12345.6789,
    voltage_v=(230.123, 231.0, 229.456),
    current_a=(16.004, 15.5, 15.987),
    power_w=(3680.04, 3600.0, 3650.55),
    energy_export_wh=10.5,
    frequency_hz=50.014,
)
ONE_PHASE = MeterReading(
    energy_import_wh=1000.0,
    voltage_v=(230.0,),
    current_a=(10.0,),
    power_w=(2300.0,),
)
ALL_SUPPORTED = [
    "Energy.Active.Import.Register",
    "Energy.Active.Export.Register",
    "Power.Active.Import",
    "Current.Import",
    "Voltage",
    "Current.Offered",
    "Frequency",
]
CONTEXTS = [
    "Interruption.Begin",
    "Interruption.End",
    "Other",
    "Sample.Clock",
    "Sample.Periodic",
    "Transaction.Begin",
    "Transaction.End",
    "Trigger",
]
TS = "2024-05-01T10:07:30Z"


def _unix(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def _validate_v16(values: list[dict[str, Any]]) -> None:
    schemas(OcppVersion.V16).validate(
        "MeterValues",
        {"connectorId": 1, "transactionId": 7, "meterValue": [meter_value(TS, values)]},
        response=False,
    )


def _validate_v201(values: list[dict[str, Any]]) -> None:
    schemas(OcppVersion.V201).validate(
        "MeterValues", {"evseId": 1, "meterValue": [meter_value(TS, values)]}, response=False
    )


def _triples(values: list[dict[str, Any]]) -> list[tuple[str, str | None, Any]]:
    return [(v["measurand"], v.get("phase"), v["value"]) for v in values]


# --- sampled values ---------------------------------------------------------------------------


def test_energy_import_register() -> None:
    values = sampled_values(
        THREE_PHASE, ["Energy.Active.Import.Register"], context="Sample.Periodic", phases=3
    )
    assert values == [
        {
            "value": "12345.679",
            "context": "Sample.Periodic",
            "format": "Raw",
            "measurand": "Energy.Active.Import.Register",
            "location": "Outlet",
            "unit": "Wh",
        }
    ]


def test_energy_export_only_when_the_meter_has_it() -> None:
    got = sampled_values(
        THREE_PHASE, ["Energy.Active.Export.Register"], context="Sample.Periodic", phases=3
    )
    assert _triples(got) == [("Energy.Active.Export.Register", None, "10.5")]
    assert got[0]["unit"] == "Wh"
    assert (
        sampled_values(
            ONE_PHASE, ["Energy.Active.Export.Register"], context="Sample.Periodic", phases=1
        )
        == []
    )


def test_power_three_phase_gives_total_and_per_phase() -> None:
    got = sampled_values(THREE_PHASE, ["Power.Active.Import"], context="Sample.Periodic", phases=3)
    assert _triples(got) == [
        ("Power.Active.Import", None, "10930.6"),
        ("Power.Active.Import", "L1", "3680"),
        ("Power.Active.Import", "L2", "3600"),
        ("Power.Active.Import", "L3", "3650.6"),
    ]
    assert {v["unit"] for v in got} == {"W"}


def test_power_single_phase_gives_total_only() -> None:
    got = sampled_values(ONE_PHASE, ["Power.Active.Import"], context="Sample.Periodic", phases=1)
    assert _triples(got) == [("Power.Active.Import", None, "2300")]


def test_current_and_voltage_per_phase() -> None:
    got = sampled_values(
        THREE_PHASE, ["Current.Import", "Voltage"], context="Sample.Periodic", phases=3
    )
    assert _triples(got) == [
        ("Current.Import", "L1", "16"),
        ("Current.Import", "L2", "15.5"),
        ("Current.Import", "L3", "15.99"),
        ("Voltage", "L1-N", "230.12"),
        ("Voltage", "L2-N", "231"),
        ("Voltage", "L3-N", "229.46"),
    ]
    assert [v["unit"] for v in got] == ["A"] * 3 + ["V"] * 3


def test_phases_limits_the_per_phase_values() -> None:
    got = sampled_values(
        THREE_PHASE, ["Current.Import", "Voltage"], context="Sample.Periodic", phases=1
    )
    assert _triples(got) == [("Current.Import", "L1", "16"), ("Voltage", "L1-N", "230.12")]
    # A meter wired for fewer phases than asked reports only what it has.
    got = sampled_values(ONE_PHASE, ["Current.Import"], context="Sample.Periodic", phases=3)
    assert _triples(got) == [("Current.Import", "L1", "10")]


def test_current_offered_only_when_given() -> None:
    assert sampled_values(THREE_PHASE, ["Current.Offered"], context="Trigger", phases=3) == []
    got = sampled_values(
        THREE_PHASE, ["Current.Offered"], context="Trigger", offered_current_a=13.0, phases=3
    )
    assert _triples(got) == [("Current.Offered", None, "13")]
    assert got[0]["unit"] == "A"


def test_frequency_has_no_unit_in_16_and_hz_in_201() -> None:
    got = sampled_values(THREE_PHASE, ["Frequency"], context="Sample.Periodic", phases=3)
    assert _triples(got) == [("Frequency", None, "50.01")]
    assert "unit" not in got[0]
    got201 = sampled_values_v201(THREE_PHASE, ["Frequency"], context="Sample.Periodic", phases=3)
    assert got201[0]["unitOfMeasure"] == {"unit": "Hz"}
    assert sampled_values(ONE_PHASE, ["Frequency"], context="Sample.Periodic", phases=1) == []


def test_unknown_and_unavailable_measurands_are_skipped() -> None:
    got = sampled_values(
        THREE_PHASE,
        ["SoC", "Temperature", "Energy.Reactive.Import.Register", "Bogus", "Voltage"],
        context="Sample.Periodic",
        phases=3,
    )
    assert {v["measurand"] for v in got} == {"Voltage"}
    assert sampled_values(THREE_PHASE, [], context="Sample.Periodic", phases=3) == []


def test_every_16_measurand_is_either_sampled_or_skipped_and_stays_valid() -> None:
    got = sampled_values(
        THREE_PHASE,
        sorted(MEASURANDS),
        context="Sample.Periodic",
        offered_current_a=16,
        phases=3,
    )
    assert {v["measurand"] for v in got} == set(ALL_SUPPORTED)
    _validate_v16(got)


def test_duplicate_measurands_are_sampled_once() -> None:
    got = sampled_values(
        ONE_PHASE,
        ["Energy.Active.Import.Register", "Energy.Active.Import.Register"],
        context="Sample.Periodic",
        phases=1,
    )
    assert len(got) == 1


def test_non_finite_readings_are_not_sent() -> None:
    reading = MeterReading(
        energy_import_wh=float("nan"),
        voltage_v=(float("inf"), 230.0),
        current_a=(),
        power_w=(),
    )
    got = sampled_values(
        reading,
        ["Energy.Active.Import.Register", "Voltage", "Current.Import", "Power.Active.Import"],
        context="Sample.Periodic",
        phases=2,
    )
    assert _triples(got) == [("Voltage", "L2-N", "230")]


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("reading,phases", [(THREE_PHASE, 3), (THREE_PHASE, 2), (ONE_PHASE, 1)])
def test_each_context_and_phase_count_validates_in_16_and_201(
    context: str, reading: MeterReading, phases: int
) -> None:
    v16 = sampled_values(
        reading, ALL_SUPPORTED, context=context, offered_current_a=32.0, phases=phases
    )
    v201 = sampled_values_v201(
        reading, ALL_SUPPORTED, context=context, offered_current_a=32.0, phases=phases
    )
    assert v16 and {v["context"] for v in v16} == {context}
    assert {v["location"] for v in v16} == {"Outlet"}
    assert {v["format"] for v in v16} == {"Raw"}
    assert all(isinstance(v["value"], str) for v in v16)
    _validate_v16(v16)
    _validate_v201(v201)
    # Both forms carry the same measurands, phases and (numerically) the same values.
    assert [(m, p, float(x)) for m, p, x in _triples(v16)] == _triples(v201)
    assert all(isinstance(v["value"], float) for v in v201)
    assert all("format" not in v and "unit" not in v for v in v201)


def test_v201_values_are_numbers_with_unit_of_measure() -> None:
    got = sampled_values_v201(
        THREE_PHASE,
        ["Energy.Active.Import.Register", "Current.Import"],
        context="Trigger",
        phases=3,
    )
    assert got[0] == {
        "value": 12345.679,
        "context": "Trigger",
        "measurand": "Energy.Active.Import.Register",
        "location": "Outlet",
        "unitOfMeasure": {"unit": "Wh"},
    }
    assert [v["phase"] for v in got[1:]] == ["L1", "L2", "L3"]


def test_schema_validation_catches_a_broken_value() -> None:
    values = sampled_values(ONE_PHASE, ALL_SUPPORTED, context="Sample.Periodic", phases=1)
    values[0]["value"] = 1000  # a number where 1.6 wants a string
    with pytest.raises(RpcError):
        _validate_v16(values)


def test_bad_context_or_phases_is_refused() -> None:
    with pytest.raises(ValueError, match="context"):
        sampled_values(ONE_PHASE, ALL_SUPPORTED, context="Sample.Sometimes", phases=1)
    with pytest.raises(ValueError, match="phases"):
        sampled_values_v201(ONE_PHASE, ALL_SUPPORTED, context="Trigger", phases=4)
    with pytest.raises(ValueError, match="phases"):
        sampled_values(ONE_PHASE, ALL_SUPPORTED, context="Trigger", phases=0)


def test_format_value() -> None:
    assert format_value(1234.0, 3) == "1234"
    assert format_value(1234.5000001, 3) == "1234.5"
    assert format_value(0.0004, 3) == "0"
    assert format_value(-0.0004, 3) == "0"
    assert format_value(-1.25, 1) == "-1.2"  # round half to even on the binary value
    assert format_value(230.0, 2) == "230"


def test_parse_measurands() -> None:
    assert parse_measurands("") == []
    assert parse_measurands("Energy.Active.Import.Register, Voltage") == [
        "Energy.Active.Import.Register",
        "Voltage",
    ]


def test_meter_value_shape() -> None:
    values = sampled_values(ONE_PHASE, ["Voltage"], context="Trigger", phases=1)
    assert meter_value(TS, values) == {"timestamp": TS, "sampledValue": values}


# --- schedules --------------------------------------------------------------------------------


def test_next_aligned_time_rounds_up_to_the_interval() -> None:
    now = _unix("2024-05-01T10:07:30")
    assert next_aligned_time(now, 900) == _unix("2024-05-01T10:15:00")
    assert next_aligned_time(now, 3600) == _unix("2024-05-01T11:00:00")


def test_next_aligned_time_on_a_boundary_gives_the_next_one() -> None:
    assert next_aligned_time(_unix("2024-05-01T10:15:00"), 900) == _unix("2024-05-01T10:30:00")
    assert next_aligned_time(_unix("2024-05-01T00:00:00"), 900) == _unix("2024-05-01T00:15:00")


def test_next_aligned_time_off() -> None:
    assert next_aligned_time(_unix("2024-05-01T10:07:30"), 0) is None


def test_next_aligned_time_counts_from_midnight_utc() -> None:
    # 7 h does not divide a day: boundaries 00, 07, 14, 21, then midnight again.
    assert next_aligned_time(_unix("2024-05-01T06:59:59"), 7 * 3600) == _unix("2024-05-01T07:00:00")
    assert next_aligned_time(_unix("2024-05-01T22:00:00"), 7 * 3600) == _unix("2024-05-02T00:00:00")
    assert next_aligned_time(_unix("2024-05-01T23:59:00"), 86_400) == _unix("2024-05-02T00:00:00")


def test_next_sample_time_is_relative_to_the_start() -> None:
    start = 1000.5
    assert next_sample_time(start, start, 60) == 1060.5
    assert next_sample_time(start, 1030.0, 60) == 1060.5
    assert next_sample_time(start, 1060.5, 60) == 1120.5  # on a sample time: the next one
    assert next_sample_time(start, 1200.0, 60) == 1240.5
    assert next_sample_time(start, 900.0, 60) == 1060.5  # before the start: the first sample
    assert next_sample_time(start, 1200.0, 0) is None


# --- transaction data -------------------------------------------------------------------------


def _reading(wh: float) -> MeterReading:
    return MeterReading(
        energy_import_wh=wh, voltage_v=(230.0,), current_a=(16.0,), power_w=(3680.0,)
    )


def _ts(minute: int) -> str:
    return f"2024-05-01T{10 + minute // 60:02d}:{minute % 60:02d}:00Z"


def _stop_transaction(data: list[dict[str, Any]]) -> None:
    schemas(OcppVersion.V16).validate(
        "StopTransaction",
        {
            "transactionId": 7,
            "meterStop": 2000,
            "timestamp": _ts(59),
            "reason": "Local",
            "transactionData": data,
        },
        response=False,
    )


def test_collector_orders_begin_samples_end() -> None:
    sampled = ["Energy.Active.Import.Register", "Current.Import"]
    aligned = ["Energy.Active.Import.Register"]
    collector = TransactionDataCollector(phases=1)
    collector.begin(_ts(0), _reading(1000), sampled)
    collector.periodic(_ts(1), _reading(1060), sampled)
    collector.aligned(_ts(2), _reading(1120), aligned)
    collector.periodic(_ts(3), _reading(1180), sampled)
    assert not collector.ended
    collector.end(_ts(4), _reading(1240), sampled)
    assert collector.ended
    data = collector.transaction_data()
    assert [mv["timestamp"] for mv in data] == [_ts(m) for m in range(5)]
    assert [mv["sampledValue"][0]["context"] for mv in data] == [
        "Transaction.Begin",
        "Sample.Periodic",
        "Sample.Clock",
        "Sample.Periodic",
        "Transaction.End",
    ]
    assert [len(mv["sampledValue"]) for mv in data] == [2, 2, 1, 2, 2]
    assert data[-1]["sampledValue"][0]["value"] == "1240"
    _stop_transaction(data)


def test_collector_records_nothing_without_measurands() -> None:
    collector = TransactionDataCollector(phases=1)
    collector.begin(_ts(0), _reading(1000), [])
    collector.periodic(_ts(1), _reading(1000), ["SoC"])
    collector.end(_ts(2), _reading(1000), [])
    assert collector.transaction_data() == []


def test_collector_ignores_samples_after_end() -> None:
    measurands = ["Energy.Active.Import.Register"]
    collector = TransactionDataCollector(phases=1)
    collector.begin(_ts(0), _reading(1000), measurands)
    collector.end(_ts(1), _reading(1100), measurands)
    collector.periodic(_ts(2), _reading(1200), measurands)
    collector.aligned(_ts(3), _reading(1300), measurands)
    assert [mv["timestamp"] for mv in collector.transaction_data()] == [_ts(0), _ts(1)]


def test_collector_cap_keeps_first_and_last_and_thins_evenly() -> None:
    measurands = ["Energy.Active.Import.Register"]
    collector = TransactionDataCollector(phases=1, max_meter_values=10)
    collector.begin(_ts(0), _reading(0), measurands)
    for minute in range(1, 100):
        collector.periodic(_ts(minute), _reading(minute), measurands)
        assert len(collector.transaction_data()) <= 10
    collector.end(_ts(100), _reading(100), measurands)
    data = collector.transaction_data()
    assert len(data) <= 10
    assert data[0]["timestamp"] == _ts(0)
    assert data[0]["sampledValue"][0]["context"] == "Transaction.Begin"
    assert data[-1]["timestamp"] == _ts(100)
    assert data[-1]["sampledValue"][0]["context"] == "Transaction.End"
    middle = [int(mv["sampledValue"][0]["value"]) for mv in data[1:-1]]
    assert middle == sorted(middle)
    gaps = {b - a for a, b in pairwise(middle)}
    assert len(gaps) == 1  # evenly spaced
    # The kept samples span most of the transaction, not just its start.
    assert middle[0] <= 16 and middle[-1] >= 80
    _stop_transaction(data)


def test_collector_cap_of_100_by_default() -> None:
    measurands = ["Energy.Active.Import.Register"]
    collector = TransactionDataCollector(phases=1)
    collector.begin(_ts(0), _reading(0), measurands)
    for n in range(1, 1000):
        collector.periodic(_ts(0), _reading(n), measurands)
    collector.end(_ts(0), _reading(1000), measurands)
    data = collector.transaction_data()
    assert 50 <= len(data) <= 100
    assert data[0]["sampledValue"][0]["value"] == "0"
    assert data[-1]["sampledValue"][0]["value"] == "1000"


def test_collector_refuses_a_tiny_cap() -> None:
    with pytest.raises(ValueError):
        TransactionDataCollector(phases=1, max_meter_values=2)


def test_collector_json_round_trip_continues_the_same_way() -> None:
    measurands = ["Energy.Active.Import.Register", "Voltage"]
    original = TransactionDataCollector(phases=1, max_meter_values=8)
    original.begin(_ts(0), _reading(0), measurands)
    for minute in range(1, 30):
        original.periodic(_ts(minute), _reading(minute), measurands)
    restored = TransactionDataCollector.from_json(original.to_json())
    assert restored.transaction_data() == original.transaction_data()
    assert restored.phases == 1 and restored.max_meter_values == 8
    for collector in (original, restored):
        for minute in range(30, 45):
            collector.periodic(_ts(minute), _reading(minute), measurands)
        collector.aligned(_ts(45), _reading(45), ["Energy.Active.Import.Register"])
        collector.end(_ts(46), _reading(46), measurands)
    assert restored.transaction_data() == original.transaction_data()
    assert restored.to_json() == original.to_json()


@pytest.mark.parametrize(
    "text",
    ["", "[]", '{"format": 99}', '{"format": 1}', '{"format": 1, "phases": 1}', "not json"],
)
def test_collector_from_json_refuses_foreign_text(text: str) -> None:
    with pytest.raises(ValueError):
        TransactionDataCollector.from_json(text)


# --- signed readings --------------------------------------------------------------------------

SIGNED = SignedMeterData(
    signed_meter_data='OCMF|{"RD":[{"RV":12.3457}]}|{"SA":"ECDSA-secp256r1-SHA256","SD":"AB"}',
    signing_method="ECDSA-secp256r1-SHA256",
    encoding_method="OCMF",
    public_key=base64.b64encode(b"\x30\x59key").decode(),
)
SIGNED_READING = dataclasses.replace(THREE_PHASE, signed=SIGNED)
SIGNED_V201 = {
    "signedMeterData": base64.b64encode(SIGNED.signed_meter_data.encode()).decode(),
    "signingMethod": "ECDSA-secp256r1-SHA256",
    "encodingMethod": "OCMF",
    "publicKey": SIGNED.public_key,
}


def test_signed_energy_in_201_carries_signed_meter_value() -> None:
    values = sampled_values_v201(
        SIGNED_READING, ALL_SUPPORTED, context="Transaction.Begin", phases=3, signed=True
    )
    _validate_v201(values)
    energy = [v for v in values if "signedMeterValue" in v]
    assert len(energy) == 1
    assert energy[0]["measurand"] == "Energy.Active.Import.Register"
    assert energy[0]["value"] == 12345.679
    assert energy[0]["signedMeterValue"] == SIGNED_V201
    assert base64.b64decode(SIGNED_V201["signedMeterData"]).decode() == SIGNED.signed_meter_data


def test_signed_energy_in_16_is_followed_by_its_signed_data_twin() -> None:
    values = sampled_values(
        SIGNED_READING,
        ["Energy.Active.Import.Register", "Voltage"],
        context="Sample.Periodic",
        phases=3,
        signed=True,
    )
    _validate_v16(values)
    assert [v["format"] for v in values] == ["Raw", "SignedData", "Raw", "Raw", "Raw"]
    plain, twin = values[0], values[1]
    assert {k: v for k, v in twin.items() if k not in ("value", "format")} == {
        k: v for k, v in plain.items() if k not in ("value", "format")
    }
    assert json.loads(twin["value"]) == SIGNED_V201
    assert parse_signed_value(twin["value"]) == SIGNED_V201


def test_no_signature_unless_asked_for_and_the_meter_signed() -> None:
    for reading, signed in ((SIGNED_READING, False), (THREE_PHASE, True)):
        v16 = sampled_values(reading, ALL_SUPPORTED, context="Trigger", phases=3, signed=signed)
        v201 = sampled_values_v201(
            reading, ALL_SUPPORTED, context="Trigger", phases=3, signed=signed
        )
        assert all(v["format"] == "Raw" for v in v16)
        assert all("signedMeterValue" not in v for v in v201)
    # Only the imported energy is signed: without it, nothing.
    values = sampled_values(SIGNED_READING, ["Voltage"], context="Trigger", phases=1, signed=True)
    assert [v["format"] for v in values] == ["Raw"]


def test_a_record_too_long_for_ocpp_is_not_sent() -> None:
    huge = dataclasses.replace(SIGNED, signed_meter_data="x" * 1876)
    assert signed_meter_value(huge) is None
    assert signed_meter_value(dataclasses.replace(SIGNED, signed_meter_data="x" * 1875))
    assert signed_meter_value(dataclasses.replace(SIGNED, signing_method="m" * 51)) is None
    reading = dataclasses.replace(THREE_PHASE, signed=huge)
    values = sampled_values(
        reading, ["Energy.Active.Import.Register"], context="Trigger", phases=3, signed=True
    )
    assert len(values) == 1


@pytest.mark.parametrize(
    "text",
    [
        "",
        "OCMF|{}|{}",
        "[]",
        '{"signedMeterData":"!!!","signingMethod":"a","encodingMethod":"b","publicKey":""}',
        '{"signedMeterData":"","signingMethod":"a","encodingMethod":"b","publicKey":""}',
        '{"signedMeterData":"QQ==","signingMethod":"a","encodingMethod":"b"}',
        '{"signedMeterData":"QQ==","signingMethod":"a","encodingMethod":"b","publicKey":"%"}',
        '{"signedMeterData":"QQ==","signingMethod":1,"encodingMethod":"b","publicKey":""}',
    ],
)
def test_parse_signed_value_refuses_foreign_text(text: str) -> None:
    assert parse_signed_value(text) is None


def test_collector_keeps_signed_values_when_asked() -> None:
    collector = TransactionDataCollector(phases=1)
    energy = ["Energy.Active.Import.Register"]
    reading = dataclasses.replace(_reading(1000.0), signed=SIGNED)
    collector.begin(_ts(0), reading, energy, signed=True)
    collector.periodic(_ts(1), reading, energy, signed=True)
    collector.aligned(_ts(2), reading, energy)
    collector.end(_ts(3), reading, energy, signed=True)
    data = TransactionDataCollector.from_json(collector.to_json()).transaction_data()
    _stop_transaction(data)
    formats = [[v["format"] for v in mv["sampledValue"]] for mv in data]
    assert formats == [["Raw", "SignedData"], ["Raw", "SignedData"], ["Raw"], ["Raw", "SignedData"]]
