"""The vocabulary of the OCPP 2.0.1 device model: addresses, attributes, characteristics, sources.

A *component* is addressed by name, optional instance, and optional EVSE / connector; a
*variable* by name and optional instance. A variable has one to four *attributes* (Actual,
Target, MinSet, MaxSet), each with a mutability and a *source* saying where its value lives:

* `ConfigKey` - a setting that OCPP 1.6 also has: the value *is* that 1.6 configuration key
  (service.station.configuration), so a change under either name is seen under the other and
  drives the same behaviour.
* `Stored` - a 2.0.1-only setting, persisted in the ``device_model_values`` table.
* `Live` - read from the running station at the moment it is asked for (status, time).
* `Fixed` - a constant of this charger or its configuration file (model, limits).
* `Unwritable` - a WriteOnly variable whose writes the charger cannot apply yet (refused).

Values travel as strings; `normalize` checks a CSMS-supplied string against the variable's
characteristics (data type, limits, values list) and returns the canonical form, or raises
`InvalidValue` with an OCPP reason code.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from service.ocpp.rpc import JsonDict

if TYPE_CHECKING:
    from service.config import Settings
    from service.station.configuration import Configuration
    from service.station.station import Station


class AttributeType(StrEnum):
    ACTUAL = "Actual"
    TARGET = "Target"
    MIN_SET = "MinSet"
    MAX_SET = "MaxSet"


class Mutability(StrEnum):
    READ_ONLY = "ReadOnly"
    WRITE_ONLY = "WriteOnly"
    READ_WRITE = "ReadWrite"

    @property
    def readable(self) -> bool:
        return self is not Mutability.WRITE_ONLY

    @property
    def writable(self) -> bool:
        return self is not Mutability.READ_ONLY


class DataType(StrEnum):
    STRING = "string"
    DECIMAL = "decimal"
    INTEGER = "integer"
    DATE_TIME = "dateTime"
    BOOLEAN = "boolean"
    OPTION_LIST = "OptionList"
    SEQUENCE_LIST = "SequenceList"
    MEMBER_LIST = "MemberList"


class Scope(StrEnum):
    """Where a component exists: once for the station, once per EVSE, once per connector."""

    STATION = "station"
    EVSE = "evse"
    CONNECTOR = "connector"


# Data types whose maxLimit is the maximum length of the (comma separated) string.
_TEXT_TYPES = frozenset(
    {
        DataType.STRING,
        DataType.OPTION_LIST,
        DataType.SEQUENCE_LIST,
        DataType.MEMBER_LIST,
    }
)
_LIST_TYPES = frozenset({DataType.SEQUENCE_LIST, DataType.MEMBER_LIST})
_INTEGER_RE = re.compile(r"[+-]?[0-9]+")
_DECIMAL_RE = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


@dataclass(frozen=True, slots=True)
class ComponentKey:
    """The address of one component: name, instance, EVSE id and connector id."""

    name: str
    instance: str | None = None
    evse: int | None = None
    connector: int | None = None

    @classmethod
    def from_ocpp(cls, data: JsonDict) -> ComponentKey:
        evse = data.get("evse")
        return cls(
            name=str(data["name"]),
            instance=data.get("instance"),
            evse=None if evse is None else int(evse["id"]),
            connector=None
            if evse is None or evse.get("connectorId") is None
            else int(evse["connectorId"]),
        )

    def to_ocpp(self) -> JsonDict:
        out: JsonDict = {"name": self.name}
        if self.instance is not None:
            out["instance"] = self.instance
        if self.evse is not None:
            evse: JsonDict = {"id": self.evse}
            if self.connector is not None:
                evse["connectorId"] = self.connector
            out["evse"] = evse
        return out

    def __str__(self) -> str:
        text = self.name + (f"[{self.instance}]" if self.instance is not None else "")
        if self.evse is not None:
            text += f"@{self.evse}" + (f".{self.connector}" if self.connector is not None else "")
        return text


@dataclass(frozen=True, slots=True)
class VariableKey:
    name: str
    instance: str | None = None

    @classmethod
    def from_ocpp(cls, data: JsonDict) -> VariableKey:
        return cls(name=str(data["name"]), instance=data.get("instance"))

    def to_ocpp(self) -> JsonDict:
        out: JsonDict = {"name": self.name}
        if self.instance is not None:
            out["instance"] = self.instance
        return out

    def __str__(self) -> str:
        return self.name + (f"[{self.instance}]" if self.instance is not None else "")


@dataclass(frozen=True, slots=True)
class Characteristics:
    """VariableCharacteristicsType. For text and list types `max_limit` is the maximum length
    of the value string, as the 2.0.1 specification defines it."""

    data_type: DataType
    unit: str | None = None
    min_limit: float | None = None
    max_limit: float | None = None
    values_list: tuple[str, ...] | None = None
    supports_monitoring: bool = False

    def to_ocpp(self) -> JsonDict:
        out: JsonDict = {
            "dataType": self.data_type.value,
            "supportsMonitoring": self.supports_monitoring,
        }
        if self.unit is not None:
            out["unit"] = self.unit
        if self.min_limit is not None:
            out["minLimit"] = _number(self.min_limit)
        if self.max_limit is not None:
            out["maxLimit"] = _number(self.max_limit)
        if self.values_list is not None:
            out["valuesList"] = ",".join(self.values_list)
        return out


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


@dataclass(slots=True)
class Context:
    """What `Live` and derived `Fixed` values read: the configuration and the running station."""

    settings: Settings
    configuration: Configuration
    station: Station | None = None
    now_iso: Callable[[], str | None] = lambda: None


Resolver = Callable[[Context, ComponentKey], "str | None"]


@dataclass(frozen=True, slots=True)
class ConfigKey:
    """The value is the OCPP 1.6 configuration key `key` (one setting, two names)."""

    key: str


@dataclass(frozen=True, slots=True)
class Stored:
    """A 2.0.1-only value persisted in the database; `default` until the CSMS sets it."""

    default: str | Callable[[Context, ComponentKey], str]


@dataclass(frozen=True, slots=True)
class Live:
    """Read from the running station when asked; None when not known (reported empty)."""

    read: Resolver


@dataclass(frozen=True, slots=True)
class Fixed:
    """A constant of the charger or of its configuration file."""

    value: str | Resolver


@dataclass(frozen=True, slots=True)
class Unwritable:
    """A WriteOnly variable whose writes the charger cannot apply yet: writes are Rejected."""

    reason: str


Source = ConfigKey | Stored | Live | Fixed | Unwritable


@dataclass(frozen=True, slots=True)
class AttributeSpec:
    type: AttributeType
    mutability: Mutability
    source: Source
    reboot_required: bool = False

    @property
    def persistent(self) -> bool:
        return isinstance(self.source, ConfigKey | Stored | Fixed)

    @property
    def constant(self) -> bool:
        return isinstance(self.source, Fixed)


@dataclass(frozen=True, slots=True)
class VariableSpec:
    """One variable of one kind of component, instantiated per `scope`."""

    component: str
    name: str
    characteristics: Characteristics | Callable[[Context, ComponentKey], Characteristics]
    attributes: tuple[AttributeSpec, ...]
    scope: Scope = Scope.STATION
    instance: str | None = None
    description: str = ""

    def attribute(self, attribute: AttributeType) -> AttributeSpec | None:
        for spec in self.attributes:
            if spec.type is attribute:
                return spec
        return None


class InvalidValue(ValueError):
    """A value that does not fit a variable; `reason` is the OCPP reasonCode (<= 20 chars)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def normalize(characteristics: Characteristics, raw: str, *, max_length: int) -> str:
    """Check `raw` against `characteristics`; return the canonical string or raise InvalidValue.

    integer: optional sign and digits; decimal: a finite number; boolean: true / false (any
    case, answered lower case); dateTime: RFC 3339; OptionList: one of the values list;
    SequenceList / MemberList: comma separated distinct members of the values list ("" is the
    empty list); text types: at most maxLimit characters. Numbers are checked against
    minLimit / maxLimit.
    """
    if len(raw) > max_length:
        raise InvalidValue("TooLargeElement", f"value longer than {max_length} characters")
    kind = characteristics.data_type
    if kind is DataType.INTEGER:
        text = raw.strip()
        if _INTEGER_RE.fullmatch(text) is None:
            raise InvalidValue("InvalidValue", f"{raw!r} is not an integer")
        number = int(text)
        _check_limits(characteristics, number)
        return str(number)
    if kind is DataType.DECIMAL:
        text = raw.strip()
        if _DECIMAL_RE.fullmatch(text) is None or not math.isfinite(float(text)):
            raise InvalidValue("InvalidValue", f"{raw!r} is not a decimal number")
        _check_limits(characteristics, float(text))
        return text
    if kind is DataType.BOOLEAN:
        lowered = raw.strip().lower()
        if lowered not in ("true", "false"):
            raise InvalidValue("InvalidValue", f"{raw!r} is not true or false")
        return lowered
    if kind is DataType.DATE_TIME:
        text = raw.strip()
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise InvalidValue("InvalidValue", f"{raw!r} is not an RFC 3339 date-time") from None
        if moment.tzinfo is None:
            raise InvalidValue("InvalidValue", f"{raw!r} has no time zone")
        return text
    if characteristics.max_limit is not None and len(raw) > characteristics.max_limit:
        raise InvalidValue(
            "TooLargeElement", f"value longer than {int(characteristics.max_limit)} characters"
        )
    allowed = characteristics.values_list
    if kind is DataType.OPTION_LIST:
        if allowed is not None and raw not in allowed:
            raise InvalidValue("InvalidValue", f"{raw!r} is not one of {', '.join(allowed)}")
        return raw
    if kind in _LIST_TYPES:
        if raw.strip() == "":
            return ""
        items = [item.strip() for item in raw.split(",")]
        if "" in items:
            raise InvalidValue("InvalidValue", f"{raw!r} has an empty item")
        if len(set(items)) != len(items):
            raise InvalidValue("InvalidValue", f"{raw!r} lists an item twice")
        if allowed is not None:
            for item in items:
                if item not in allowed:
                    raise InvalidValue(
                        "InvalidValue", f"{item!r} is not one of {', '.join(allowed)}"
                    )
        return ",".join(items)
    return raw


def _check_limits(characteristics: Characteristics, value: float) -> None:
    low, high = characteristics.min_limit, characteristics.max_limit
    if low is not None and value < low:
        raise InvalidValue("ValueTooLow", f"{_show(value)} is below the minimum {_show(low)}")
    if high is not None and value > high:
        raise InvalidValue("ValueTooHigh", f"{_show(value)} is above the maximum {_show(high)}")


def _show(value: Any) -> str:
    return str(_number(float(value)))


def is_text_type(data_type: DataType) -> bool:
    return data_type in _TEXT_TYPES
