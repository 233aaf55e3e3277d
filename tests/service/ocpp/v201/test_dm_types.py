"""Value checks of the device model's data types (service/ocpp/v201/dm_types.py)."""

from __future__ import annotations

import pytest

from service.ocpp.v201.dm_types import (
    AttributeSpec,
    AttributeType,
    Characteristics,
    ComponentKey,
    ConfigKey,
    DataType,
    Fixed,
    InvalidValue,
    Live,
    Mutability,
    Stored,
    VariableKey,
    normalize,
)

INT = Characteristics(DataType.INTEGER, min_limit=1, max_limit=100)
DEC = Characteristics(DataType.DECIMAL, min_limit=0, max_limit=11.5)
BOOL = Characteristics(DataType.BOOLEAN)
OPTIONS = Characteristics(DataType.OPTION_LIST, values_list=("A", "B"))
MEMBERS = Characteristics(DataType.MEMBER_LIST, max_limit=20, values_list=("A", "B", "C"))
SEQUENCE = Characteristics(DataType.SEQUENCE_LIST, values_list=("A", "B", "C"))
TEXT = Characteristics(DataType.STRING, max_limit=5)
WHEN = Characteristics(DataType.DATE_TIME)


@pytest.mark.parametrize(
    ("characteristics", "raw", "expected"),
    [
        (INT, "1", "1"),
        (INT, " +100 ", "100"),
        (DEC, "11.5", "11.5"),
        (DEC, "0", "0"),
        (BOOL, "TRUE", "true"),
        (BOOL, "false", "false"),
        (OPTIONS, "B", "B"),
        (MEMBERS, "C, A", "C,A"),
        (MEMBERS, "", ""),
        (SEQUENCE, "B,A,C", "B,A,C"),
        (TEXT, "abcde", "abcde"),
        (WHEN, "2027-01-15T08:00:00Z", "2027-01-15T08:00:00Z"),
        (WHEN, "2027-01-15T08:00:00.123+02:00", "2027-01-15T08:00:00.123+02:00"),
    ],
)
def test_valid_values_are_normalized(
    characteristics: Characteristics, raw: str, expected: str
) -> None:
    assert normalize(characteristics, raw, max_length=1000) == expected


@pytest.mark.parametrize(
    ("characteristics", "raw", "reason"),
    [
        (INT, "0", "ValueTooLow"),
        (INT, "101", "ValueTooHigh"),
        (INT, "1.5", "InvalidValue"),
        (INT, "ten", "InvalidValue"),
        (INT, "", "InvalidValue"),
        (DEC, "11.6", "ValueTooHigh"),
        (DEC, "-0.1", "ValueTooLow"),
        (DEC, "nan", "InvalidValue"),
        (DEC, "1e999", "InvalidValue"),
        (BOOL, "yes", "InvalidValue"),
        (BOOL, "1", "InvalidValue"),
        (OPTIONS, "C", "InvalidValue"),
        (OPTIONS, "a", "InvalidValue"),
        (MEMBERS, "A,D", "InvalidValue"),
        (MEMBERS, "A,A", "InvalidValue"),
        (MEMBERS, "A,,B", "InvalidValue"),
        (MEMBERS, "A,B,C,A,B,C,A,B,C,A,B", "TooLargeElement"),
        (TEXT, "abcdef", "TooLargeElement"),
        (WHEN, "yesterday", "InvalidValue"),
        (WHEN, "2027-01-15T08:00:00", "InvalidValue"),  # no zone: ambiguous
    ],
)
def test_invalid_values_name_the_reason(
    characteristics: Characteristics, raw: str, reason: str
) -> None:
    with pytest.raises(InvalidValue) as caught:
        normalize(characteristics, raw, max_length=1000)
    assert caught.value.reason == reason
    assert len(caught.value.reason) <= 20


def test_the_overall_size_limit_applies_to_every_type() -> None:
    with pytest.raises(InvalidValue) as caught:
        normalize(Characteristics(DataType.STRING), "x" * 11, max_length=10)
    assert caught.value.reason == "TooLargeElement"


def test_characteristics_in_ocpp_form() -> None:
    assert INT.to_ocpp() == {
        "dataType": "integer",
        "supportsMonitoring": False,
        "minLimit": 1,
        "maxLimit": 100,
    }
    assert MEMBERS.to_ocpp()["valuesList"] == "A,B,C"
    assert DEC.to_ocpp()["maxLimit"] == 11.5


def test_addresses_round_trip() -> None:
    data = {"name": "Connector", "instance": "x", "evse": {"id": 2, "connectorId": 1}}
    key = ComponentKey.from_ocpp(data)
    assert key == ComponentKey("Connector", "x", 2, 1)
    assert key.to_ocpp() == data
    assert ComponentKey.from_ocpp({"name": "EVSE", "evse": {"id": 1}}).connector is None
    assert VariableKey.from_ocpp(
        {"name": "ItemsPerMessage", "instance": "GetReport"}
    ).to_ocpp() == {
        "name": "ItemsPerMessage",
        "instance": "GetReport",
    }
    assert str(key) == "Connector[x]@2.1"


def test_persistent_and_constant_follow_the_source() -> None:
    def attr(source: ConfigKey | Stored | Live | Fixed) -> AttributeSpec:
        return AttributeSpec(AttributeType.ACTUAL, Mutability.READ_ONLY, source)

    assert attr(ConfigKey("HeartbeatInterval")).persistent
    assert not attr(ConfigKey("HeartbeatInterval")).constant
    assert attr(Stored("1")).persistent
    assert attr(Fixed("x")).constant and attr(Fixed("x")).persistent
    live = attr(Live(lambda ctx, c: None))
    assert not live.persistent and not live.constant
