"""The catalog of OCPP configuration keys the station knows, and parsing of their values.

Each key is described by a `KeySpec`: its value type, default, allowed range or members, whether
the CSMS may change it, and whether a change takes effect only after a reboot. The catalog holds
every key of the OCPP 1.6 Core profile, with the accessibility the 1.6 specification gives it.

Values travel over OCPP as strings. `parse_key_value` turns a CSMS-supplied string into the typed
value (or raises `ValueError` saying what is wrong), and `format_key_value` turns a typed value
back into the string OCPP sends. A "csl" (comma separated list) value is kept as one normalized
string, items joined by "," without spaces.

Keys whose value comes from elsewhere (`derived_from`) are not set through the [ocpp] table of
the configuration file: NumberOfConnectors follows the [[evse]] topology, WebSocketPingInterval
starts from csms.ping_interval_s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from service.ocpp.library import enums as ocpp_enums

KeyType = Literal["int", "bool", "str", "csl"]
KeyValue = str | int | bool

# ChangeConfiguration.req's value is CiString500.
MAX_VALUE_LENGTH = 500

MEASURANDS: frozenset[str] = frozenset(str(m.value) for m in ocpp_enums("v16").Measurand)
FEATURE_PROFILES: frozenset[str] = frozenset(
    {
        "Core",
        "FirmwareManagement",
        "LocalAuthListManagement",
        "Reservation",
        "SmartCharging",
        "RemoteTrigger",
    }
)
PHASE_ROTATIONS: frozenset[str] = frozenset(
    {"NotApplicable", "Unknown", "RST", "RTS", "SRT", "STR", "TRS", "TSR"}
)

_INT_RE = re.compile(r"[+-]?[0-9]+")
# ConnectorPhaseRotation items are "<connectorId>.<rotation>", e.g. "0.RST,1.RTS".
_PHASE_ROTATION_ITEM_RE = re.compile(r"(0|[1-9][0-9]{0,2})\.([A-Za-z]+)")


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One OCPP configuration key: type, default and the constraints on its value."""

    name: str
    type: KeyType
    default: KeyValue
    readonly: bool = False
    reboot_required: bool = False
    minimum: int | None = None
    maximum: int | None = None
    values: frozenset[str] | None = None
    max_items: int | None = None
    unit: str = ""
    derived_from: str | None = None
    # str keys: length bounds; a bounded str key takes printable ASCII only (an idTag).
    min_length: int | None = None
    max_length: int | None = None


def _int(
    name: str,
    default: int,
    minimum: int,
    maximum: int,
    unit: str,
    *,
    readonly: bool = False,
    derived_from: str | None = None,
    reboot_required: bool = False,
) -> KeySpec:
    return KeySpec(
        name,
        "int",
        default,
        readonly=readonly,
        reboot_required=reboot_required,
        minimum=minimum,
        maximum=maximum,
        unit=unit,
        derived_from=derived_from,
    )


def _bool(name: str, default: bool, unit: str) -> KeySpec:
    return KeySpec(name, "bool", default, unit=unit)


def _csl(
    name: str,
    default: str,
    values: frozenset[str],
    max_items: int,
    unit: str,
    *,
    readonly: bool = False,
) -> KeySpec:
    return KeySpec(
        name,
        "csl",
        default,
        readonly=readonly,
        values=values,
        max_items=max_items,
        unit=unit,
    )


_MEASURANDS_MAX = len(MEASURANDS)
_INT32_MAX = 2**31 - 1
_DAY_S = 86_400

_SPECS: tuple[KeySpec, ...] = (
    _bool(
        "AllowOfflineTxForUnknownId",
        False,
        "start a transaction offline for an idTag that is not known locally",
    ),
    _bool(
        "AuthEnabled",
        True,
        "evsed: authorize tokens before charging; false = free charging (2.0.1 AuthCtrlr.Enabled)",
    ),
    _bool("AuthorizationCacheEnabled", True, "keep an authorization cache of seen idTags"),
    _int(
        "AuthorizationCacheLifeTime",
        0,
        0,
        _INT32_MAX,
        "evsed: seconds a cache entry lives after its last use; 0 = until evicted "
        "(2.0.1 AuthCacheCtrlr.LifeTime)",
    ),
    _bool(
        "AuthorizeRemoteTxRequests",
        True,
        "authorize the idTag of RemoteStartTransaction before starting",
    ),
    _int("BlinkRepeat", 0, 0, 1000, "times the light blinks when asked to"),
    _int(
        "ClockAlignedDataInterval",
        0,
        0,
        _DAY_S,
        "seconds between clock-aligned meter values; 0 = none",
    ),
    _int(
        "ConnectionTimeOut",
        60,
        1,
        _DAY_S,
        "seconds after plug-in (or authorization) to wait for the other before giving up",
    ),
    _csl(
        "ConnectorPhaseRotation",
        "0.Unknown",
        PHASE_ROTATIONS,
        50,
        "items '<connectorId>.<rotation>', rotation in RST, RTS, SRT, STR, TRS, TSR, "
        "NotApplicable, Unknown",
    ),
    _int(
        "ConnectorPhaseRotationMaxLength",
        50,
        1,
        50,
        "maximum items in ConnectorPhaseRotation",
        readonly=True,
    ),
    KeySpec(
        "FreeVendIdTag",
        "str",
        "FreeCharging",
        min_length=1,
        max_length=20,
        unit="evsed: the 1.6 idTag of a session nobody authorized (AuthEnabled false)",
    ),
    _int(
        "GetConfigurationMaxKeys",
        50,
        1,
        1000,
        "maximum keys in one GetConfiguration.req",
        readonly=True,
    ),
    _int("HeartbeatInterval", 300, 1, _DAY_S, "seconds of silence before a Heartbeat"),
    _int("LightIntensity", 100, 0, 100, "percent"),
    # LocalAuthListManagement profile (service/station/local_list.py).
    _bool(
        "LocalAuthListEnabled",
        True,
        "use the Local Authorization List the CSMS sends (an empty list changes nothing)",
    ),
    _int(
        "LocalAuthListMaxLength",
        10_000,
        1,
        1_000_000,
        "maximum entries in the Local Authorization List",
        readonly=True,
    ),
    _bool("LocalAuthorizeOffline", True, "authorize known idTags locally while offline"),
    _bool("LocalPreAuthorize", False, "start at once for locally known idTags while online"),
    _int(
        "MaxEnergyOnInvalidId",
        0,
        0,
        _INT32_MAX,
        "Wh delivered after the CSMS reported the idTag invalid",
    ),
    _csl(
        "MeterValuesAlignedData",
        "Energy.Active.Import.Register",
        MEASURANDS,
        _MEASURANDS_MAX,
        "measurands in clock-aligned MeterValues",
    ),
    _int(
        "MeterValuesAlignedDataMaxLength",
        _MEASURANDS_MAX,
        1,
        _MEASURANDS_MAX,
        "maximum items in MeterValuesAlignedData",
        readonly=True,
    ),
    _csl(
        "MeterValuesSampledData",
        "Energy.Active.Import.Register",
        MEASURANDS,
        _MEASURANDS_MAX,
        "measurands in sampled MeterValues during a transaction",
    ),
    _int(
        "MeterValuesSampledDataMaxLength",
        _MEASURANDS_MAX,
        1,
        _MEASURANDS_MAX,
        "maximum items in MeterValuesSampledData",
        readonly=True,
    ),
    _int(
        "MeterValueSampleInterval",
        60,
        0,
        _DAY_S,
        "seconds between sampled meter values in a transaction; 0 = none",
    ),
    _int(
        "MinimumStatusDuration",
        0,
        0,
        3600,
        "seconds a status must hold before StatusNotification is sent",
    ),
    _int(
        "NumberOfConnectors",
        1,
        1,
        1280,
        "number of connectors",
        readonly=True,
        derived_from="the [[evse]] topology",
    ),
    _int("ResetRetries", 3, 0, 100, "times to retry a failed reset"),
    _int(
        "SendLocalListMaxLength",
        100,
        1,
        10_000,
        "maximum entries in one SendLocalList.req",
        readonly=True,
    ),
    _bool(
        "StopTransactionOnEVSideDisconnect",
        True,
        "stop the transaction when the cable is unplugged at the EV",
    ),
    _bool(
        "StopTransactionOnInvalidId",
        True,
        "stop the transaction when the CSMS rejects its idTag",
    ),
    _csl(
        "StopTxnAlignedData",
        "",
        MEASURANDS,
        _MEASURANDS_MAX,
        "clock-aligned measurands in StopTransaction.req transactionData",
    ),
    _int(
        "StopTxnAlignedDataMaxLength",
        _MEASURANDS_MAX,
        1,
        _MEASURANDS_MAX,
        "maximum items in StopTxnAlignedData",
        readonly=True,
    ),
    _csl(
        "StopTxnSampledData",
        "",
        MEASURANDS,
        _MEASURANDS_MAX,
        "sampled measurands in StopTransaction.req transactionData",
    ),
    _int(
        "StopTxnSampledDataMaxLength",
        _MEASURANDS_MAX,
        1,
        _MEASURANDS_MAX,
        "maximum items in StopTxnSampledData",
        readonly=True,
    ),
    _bool(
        "SampledDataSignReadings",
        False,
        "evsed: send the meter's signed energy readings too (format SignedData); only meters "
        "that sign (a register map with [signed]) have them (2.0.1 SampledDataCtrlr.SignReadings)",
    ),
    _csl(
        "SupportedFeatureProfiles",
        # what is implemented; grows with each profile
        "Core,FirmwareManagement,LocalAuthListManagement,RemoteTrigger",
        FEATURE_PROFILES,
        len(FEATURE_PROFILES),
        "feature profiles this charge point implements",
        readonly=True,
    ),
    _int(
        "SupportedFeatureProfilesMaxLength",
        len(FEATURE_PROFILES),
        1,
        len(FEATURE_PROFILES),
        "maximum items in SupportedFeatureProfiles",
        readonly=True,
    ),
    _int(
        "TransactionMessageAttempts",
        3,
        1,
        100,
        "tries of a transaction message the CSMS failed to process, the first included",
    ),
    _int(
        "TransactionMessageRetryInterval",
        60,
        1,
        _DAY_S,
        "seconds before a retry; the n-th retry waits n times this",
    ),
    _bool(
        "UnlockConnectorOnEVSideDisconnect",
        True,
        "unlock the connector when the cable is unplugged at the EV",
    ),
    _int(
        "WebSocketPingInterval",
        30,
        0,
        3600,
        "seconds between websocket pings; 0 = off (applies from the next connection)",
        derived_from="csms.ping_interval_s",
        reboot_required=True,
    ),
)

OCPP_KEY_CATALOG: dict[str, KeySpec] = {spec.name: spec for spec in _SPECS}


def _check_range(spec: KeySpec, value: int) -> int:
    if spec.minimum is not None and value < spec.minimum:
        raise ValueError(f"{spec.name}: {value} is below the minimum {spec.minimum}")
    if spec.maximum is not None and value > spec.maximum:
        raise ValueError(f"{spec.name}: {value} is above the maximum {spec.maximum}")
    return value


def _check_csl_item(spec: KeySpec, item: str) -> None:
    if spec.name == "ConnectorPhaseRotation":
        match = _PHASE_ROTATION_ITEM_RE.fullmatch(item)
        if match is None or match.group(2) not in PHASE_ROTATIONS:
            raise ValueError(
                f"{spec.name}: item {item!r} is not '<connectorId>.<rotation>' with rotation "
                f"one of {', '.join(sorted(PHASE_ROTATIONS))}"
            )
        return
    if spec.values is not None and item not in spec.values:
        raise ValueError(f"{spec.name}: {item!r} is not one of {', '.join(sorted(spec.values))}")


def parse_key_value(spec: KeySpec, raw: str) -> KeyValue:
    """Validate the string `raw` for `spec` and return the typed value.

    int keys give an int, bool keys a bool ("true"/"false", any case), str keys the string,
    csl keys the list normalized to "a,b,c" (spaces around items removed, "" is the empty list).
    Raises ValueError with a message naming the key and the problem. Read-only-ness is not
    checked here: refusing a change to a read-only key is the caller's decision.
    """
    if len(raw) > MAX_VALUE_LENGTH:
        raise ValueError(f"{spec.name}: value longer than {MAX_VALUE_LENGTH} characters")
    if spec.type == "int":
        text = raw.strip()
        if _INT_RE.fullmatch(text) is None:
            raise ValueError(f"{spec.name}: {raw!r} is not an integer")
        return _check_range(spec, int(text))
    if spec.type == "bool":
        lowered = raw.strip().lower()
        if lowered == "true":
            return True
        if lowered == "false":
            return False
        raise ValueError(f"{spec.name}: {raw!r} is not 'true' or 'false'")
    if spec.type == "csl":
        if raw.strip() == "":
            return ""
        items = [item.strip() for item in raw.split(",")]
        if "" in items:
            raise ValueError(f"{spec.name}: {raw!r} has an empty item")
        for item in items:
            _check_csl_item(spec, item)
        if len(set(items)) != len(items):
            raise ValueError(f"{spec.name}: {raw!r} lists an item twice")
        if spec.max_items is not None and len(items) > spec.max_items:
            raise ValueError(
                f"{spec.name}: {len(items)} items, at most {spec.max_items} are allowed"
            )
        return ",".join(items)
    if spec.values is not None and raw not in spec.values:
        raise ValueError(f"{spec.name}: {raw!r} is not one of {', '.join(sorted(spec.values))}")
    if spec.max_length is not None or spec.min_length is not None:
        low, high = spec.min_length or 0, spec.max_length or MAX_VALUE_LENGTH
        if not low <= len(raw) <= high or not all(" " <= ch <= "~" for ch in raw):
            raise ValueError(f"{spec.name}: {raw!r} is not {low} to {high} printable characters")
    return raw


def describe_key(spec: KeySpec) -> str:
    """What a valid value of `spec` looks like, in words (for error messages)."""
    if spec.type == "int":
        return f"an integer from {spec.minimum} to {spec.maximum} ({spec.unit})"
    if spec.type == "bool":
        return "true or false"
    if spec.type == "csl":
        if spec.name == "ConnectorPhaseRotation":
            members = spec.unit
        else:
            members = ", ".join(sorted(spec.values or ()))
        return f"a comma separated list of up to {spec.max_items} distinct items from: {members}"
    if spec.values is not None:
        return "one of " + ", ".join(sorted(spec.values))
    return f"a string of at most {MAX_VALUE_LENGTH} characters"


def format_key_value(value: KeyValue) -> str:
    """The OCPP string form of a typed key value: booleans as "true"/"false"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _self_check() -> None:
    # Every default must pass its own spec; a typo here would otherwise surface at runtime.
    for spec in _SPECS:
        if parse_key_value(spec, format_key_value(spec.default)) != spec.default:
            raise AssertionError(f"catalog default of {spec.name} does not round-trip")


_self_check()
