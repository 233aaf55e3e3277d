"""The table of every OCPP 2.0.1 component variable this charger has, and where each value lives.

Names follow OCPP 2.0.1 Part 2 appendix 3 (the `ocpp` library's ControllerComponentName /
*VariableName enums carry the same lists). Rules of this table:

* A setting 1.6 also has is `shared(...)`: its value is the 1.6 configuration key, with the
  limits of that key (service/station/keys.py), so ChangeConfiguration and SetVariables change
  one setting and both drive the same behaviour.
* A 2.0.1-only setting is `Stored`; its consumer reads it through `DeviceModel.get` and hears
  changes through `DeviceModel.on_change` (TxCtrlr.TxStartPoint / TxStopPoint, the Tx* meter
  value settings, OfflineThreshold: the 2.0.1 station link).
* Where the charger has no behaviour behind a variable the specification lets the CSMS change
  (time source, authorization on/off, features not implemented:
  reservations, smart charging), the variable is ReadOnly with the value that is
  true of this charger, rather than accepting a write that would change nothing. Optional
  variables of features the charger does not have (AuthCtrlr.MasterPassGroupId, the
  AuthCacheCtrlr's LifeTime / Policy / Storage) are left out: asked for, they are unknown.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from hal.meter.maps import MeterMapError, resolve_map
from service.config import Settings
from service.ocpp.library import enums as ocpp_enums
from service.ocpp.v201.dm_types import (
    AttributeSpec,
    AttributeType,
    Characteristics,
    ComponentKey,
    ConfigKey,
    Context,
    DataType,
    Fixed,
    Live,
    Mutability,
    Resolver,
    Scope,
    Source,
    Stored,
    Unwritable,
    VariableSpec,
)
from service.station import metering
from service.station.keys import MAX_VALUE_LENGTH, MEASURANDS, OCPP_KEY_CATALOG
from service.station.model import Availability, ConnectorStatus
from service.store.db import StoreError

RO = Mutability.READ_ONLY
RW = Mutability.READ_WRITE
WO = Mutability.WRITE_ONLY
ACTUAL = AttributeType.ACTUAL

NOMINAL_AC_VOLTAGE_V = 230.0

# Sizes of DeviceDataCtrlr (what this charger accepts in one message).
ITEMS_PER_MESSAGE = 32
BYTES_PER_MESSAGE = 16384
CONFIGURATION_VALUE_SIZE = 1000  # SetVariableData.attributeValue is at most 1000 characters
REPORTING_VALUE_SIZE = 2500  # GetVariableResult.attributeValue / VariableAttribute.value
LOCAL_LIST_BYTES_PER_MESSAGE = 65536  # LocalAuthListCtrlr.BytesPerMessage (SendLocalList)

# Measurands both versions know (a shared list must be valid under either name) and that this
# charger can measure (service/station/metering.py MEASURABLE): any other is Rejected (J01/J02).
MEASURANDS_201: tuple[str, ...] = tuple(
    str(m.value)
    for m in ocpp_enums("v201").MeasurandEnumType
    if str(m.value) in MEASURANDS and str(m.value) in metering.MEASURABLE
)
AVAILABILITY_STATES = ("Available", "Occupied", "Reserved", "Unavailable", "Faulted")
TX_POINTS = ("EVConnected", "Authorized", "PowerPathClosed", "EnergyTransfer")
TIME_SOURCES = ("Heartbeat", "NTP", "GPS", "RealTimeClock", "MobileNetwork", "RadioTimeTransmitter")
FILE_TRANSFER_PROTOCOLS = ("FTP", "FTPS", "HTTP", "HTTPS")
# SetNetworkProfile configuration slots (OCPPCommCtrlr.NetworkConfigurationPriority values).
NETWORK_SLOTS: tuple[int, ...] = (0, 1, 2, 3)


class NetworkState(Protocol):
    """The network connection profiles of a running charger, as the device model reports them
    (service/ocpp/v201/network.py NetworkProfiles)."""

    def usable_slots(self) -> tuple[int, ...]: ...

    def security_profile_in_use(self) -> int: ...

    def message_timeout_in_use(self) -> int: ...


# Each running charger's network profiles, by its Station (NetworkProfiles registers itself;
# both sides weak). Without one the [csms] table of the configuration file answers.
NETWORK_STATES: weakref.WeakKeyDictionary[object, Callable[[], NetworkState | None]] = (
    weakref.WeakKeyDictionary()
)

_OCCUPIED = frozenset(
    {
        ConnectorStatus.PREPARING,
        ConnectorStatus.CHARGING,
        ConnectorStatus.SUSPENDED_EV,
        ConnectorStatus.SUSPENDED_EVSE,
        ConnectorStatus.FINISHING,
    }
)


def availability_state(status: ConnectorStatus) -> str:
    """The 2.0.1 ConnectorStatusEnumType of a station status."""
    if status in _OCCUPIED:
        return "Occupied"
    return str(status.value)  # Available, Reserved, Unavailable, Faulted: same word


# ---------------------------------------------------------------------------- live readers
def _evse_status(ctx: Context, component: ComponentKey) -> ConnectorStatus | None:
    if ctx.station is None or component.evse not in ctx.station.evses:
        return None
    assert component.evse is not None
    return ctx.station.status_of(component.evse)[0]


def _evse_availability(ctx: Context, component: ComponentKey) -> str | None:
    status = _evse_status(ctx, component)
    return None if status is None else availability_state(status)


def _evse_problem(ctx: Context, component: ComponentKey) -> str | None:
    status = _evse_status(ctx, component)
    return None if status is None else _bool(status is ConnectorStatus.FAULTED)


def _station_availability(ctx: Context, component: ComponentKey) -> str | None:
    station = ctx.station
    if station is None:
        return None
    if station.station_availability is Availability.INOPERATIVE:
        return "Unavailable"
    statuses = [station.status_of(evse_id)[0] for evse_id in station.evses]
    if statuses and all(s is ConnectorStatus.FAULTED for s in statuses):
        return "Faulted"
    return "Available"


def _station_problem(ctx: Context, component: ComponentKey) -> str | None:
    station = ctx.station
    if station is None:
        return None
    return _bool(any(station.status_of(n)[0] is ConnectorStatus.FAULTED for n in station.evses))


def _evse_power(ctx: Context, component: ComponentKey) -> str | None:
    station = ctx.station
    if station is None or component.evse not in station.evses:
        return None
    assert component.evse is not None
    reading = station.evses[component.evse].reading
    return None if reading is None else _decimal(reading.power_total_w)


def _evse_max_power_w(ctx: Context, component: ComponentKey) -> float:
    for evse in ctx.settings.evses:
        if evse.id == component.evse:
            connector = evse.connectors[0]
            if evse.dc_voltage_v > 0:
                return evse.dc_voltage_v * connector.max_current_a
            return NOMINAL_AC_VOLTAGE_V * connector.phases * connector.max_current_a
    return 0.0


def _evse_phases(ctx: Context, component: ComponentKey) -> str:
    for evse in ctx.settings.evses:
        if evse.id == component.evse:
            return "0" if evse.dc_voltage_v > 0 else str(evse.connectors[0].phases)
    return "0"


def _station_phases(ctx: Context, component: ComponentKey) -> str:
    phases = [
        0 if e.dc_voltage_v > 0 else c.phases for e in ctx.settings.evses for c in e.connectors
    ]
    return str(max(phases, default=0))


def _connector_field(ctx: Context, component: ComponentKey, field: str) -> str:
    for evse in ctx.settings.evses:
        if evse.id == component.evse:
            for connector in evse.connectors:
                if connector.id == component.connector:
                    if field == "phases" and evse.dc_voltage_v > 0:
                        return "0"
                    return str(getattr(connector, field))
    return ""


def _certificate_entries(ctx: Context, component: ComponentKey) -> str:
    """Certificates the charger holds: the CSMS CA bundle and its own client certificate."""
    count = 0
    csms = ctx.settings.csms
    for path in (csms.ca_bundle, csms.client_certificate):
        if path is None:
            continue
        try:
            count += Path(path).read_bytes().count(b"-----BEGIN CERTIFICATE-----")
        except OSError:
            continue
    return str(count)


def _backoff_repeat_times(ctx: Context, component: ComponentKey) -> str:
    csms = ctx.settings.csms
    if csms.backoff_min_s <= 0 or csms.backoff_max_s <= csms.backoff_min_s:
        return "0"
    return str(math.ceil(math.log2(csms.backoff_max_s / csms.backoff_min_s)))


def _network(ctx: Context) -> NetworkState | None:
    ref = None if ctx.station is None else NETWORK_STATES.get(ctx.station)
    return None if ref is None else ref()


def _network_priority(ctx: Context, component: ComponentKey) -> Characteristics:
    """valuesList: the slots holding a profile the charger may connect with."""
    network = _network(ctx)
    slots = NETWORK_SLOTS if network is None else network.usable_slots()
    return Characteristics(
        DataType.SEQUENCE_LIST,
        max_limit=MAX_VALUE_LENGTH,
        values_list=tuple(str(slot) for slot in slots),
    )


def _security_profile(ctx: Context, component: ComponentKey) -> str:
    network = _network(ctx)
    if network is None:
        return str(ctx.settings.csms.security_profile)
    return str(network.security_profile_in_use())


def _message_timeout(ctx: Context, component: ComponentKey) -> str:
    network = _network(ctx)
    if network is None:
        return str(ctx.settings.csms.call_timeout_s)
    return str(network.message_timeout_in_use())


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _decimal(value: float) -> str:
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


# ---------------------------------------------------------------------------- table helpers
def _one(
    component: str,
    name: str,
    characteristics: Characteristics,
    source: Source,
    *,
    mutability: Mutability = RO,
    instance: str | None = None,
    scope: Scope = Scope.STATION,
    reboot_required: bool = False,
    description: str = "",
) -> VariableSpec:
    return VariableSpec(
        component=component,
        name=name,
        characteristics=characteristics,
        attributes=(AttributeSpec(ACTUAL, mutability, source, reboot_required),),
        scope=scope,
        instance=instance,
        description=description,
    )


def _fixed_bool(
    component: str, name: str, value: bool, *, scope: Scope = Scope.STATION
) -> VariableSpec:
    return _one(
        component, name, Characteristics(DataType.BOOLEAN), Fixed(_bool(value)), scope=scope
    )


def _int(
    unit: str | None = None, low: float | None = None, high: float | None = None
) -> Characteristics:
    return Characteristics(DataType.INTEGER, unit=unit, min_limit=low, max_limit=high)


def _text(max_length: int) -> Characteristics:
    return Characteristics(DataType.STRING, max_limit=max_length)


def _members(values: tuple[str, ...], kind: DataType = DataType.MEMBER_LIST) -> Characteristics:
    return Characteristics(kind, max_limit=MAX_VALUE_LENGTH, values_list=values)


def shared(
    component: str,
    name: str,
    key: str,
    *,
    instance: str | None = None,
    unit: str | None = None,
    description: str = "",
) -> VariableSpec:
    """A variable whose value is the 1.6 configuration key `key`, with that key's limits."""
    spec = OCPP_KEY_CATALOG[key]
    characteristics: Characteristics
    if spec.type == "int":
        characteristics = _int(unit, spec.minimum, spec.maximum)
    elif spec.type == "bool":
        characteristics = Characteristics(DataType.BOOLEAN)
    elif spec.type == "csl":
        values = spec.values or frozenset()
        ordered = tuple(m for m in MEASURANDS_201 if m in values) or tuple(sorted(values))
        characteristics = _members(ordered)
    else:
        characteristics = _text(MAX_VALUE_LENGTH)
    return _one(
        component,
        name,
        characteristics,
        ConfigKey(key),
        mutability=RO if spec.readonly else RW,
        instance=instance,
        reboot_required=spec.reboot_required,
        description=description or f"the OCPP 1.6 key {key}",
    )


def _stored(
    component: str,
    name: str,
    characteristics: Characteristics,
    default: str | Callable[[Context, ComponentKey], str],
    description: str,
    *,
    instance: str | None = None,
) -> VariableSpec:
    return _one(
        component,
        name,
        characteristics,
        Stored(default),
        mutability=RW,
        instance=instance,
        description=description,
    )


def _fixed(
    component: str,
    name: str,
    characteristics: Characteristics,
    value: str | Resolver,
    description: str = "",
    *,
    instance: str | None = None,
    scope: Scope = Scope.STATION,
) -> VariableSpec:
    return _one(
        component,
        name,
        characteristics,
        Fixed(value),
        instance=instance,
        scope=scope,
        description=description,
    )


def _live(
    component: str,
    name: str,
    characteristics: Characteristics,
    read: Resolver,
    *,
    scope: Scope = Scope.STATION,
    description: str = "",
) -> VariableSpec:
    return _one(
        component,
        name,
        characteristics,
        Live(read),
        scope=scope,
        description=description,
    )


_AVAILABILITY = Characteristics(DataType.OPTION_LIST, values_list=AVAILABILITY_STATES)
_BOOL = Characteristics(DataType.BOOLEAN)


def _device_data() -> list[VariableSpec]:
    specs: list[VariableSpec] = []
    for instance in ("GetReport", "GetVariables", "SetVariables"):
        specs.append(
            _fixed(
                "DeviceDataCtrlr",
                "ItemsPerMessage",
                _int(None, 1, ITEMS_PER_MESSAGE),
                str(ITEMS_PER_MESSAGE),
                f"most items in one {instance} request (and per NotifyReport for GetReport)",
                instance=instance,
            )
        )
        specs.append(
            _fixed(
                "DeviceDataCtrlr",
                "BytesPerMessage",
                _int("B", 1, BYTES_PER_MESSAGE),
                str(BYTES_PER_MESSAGE),
                f"most bytes in one {instance} request (and per NotifyReport for GetReport)",
                instance=instance,
            )
        )
    specs += [
        _fixed(
            "DeviceDataCtrlr",
            "ConfigurationValueSize",
            _int(None, 1, CONFIGURATION_VALUE_SIZE),
            str(CONFIGURATION_VALUE_SIZE),
        ),
        _fixed(
            "DeviceDataCtrlr",
            "ReportingValueSize",
            _int(None, 1, REPORTING_VALUE_SIZE),
            str(REPORTING_VALUE_SIZE),
        ),
        _fixed(
            "DeviceDataCtrlr",
            "ValueSize",
            _int(None, 1, REPORTING_VALUE_SIZE),
            str(REPORTING_VALUE_SIZE),
        ),
    ]
    return specs


def _local_list_entries(ctx: Context, component: ComponentKey) -> str | None:
    """How many tokens the Local Authorization List holds (service/station/local_list.py)."""
    station = ctx.station
    local_list = None if station is None else station.authorizer.local_list
    if local_list is None:
        return None
    try:
        return str(len(local_list))
    except StoreError:
        return None


def _local_list_capacity(ctx: Context, component: ComponentKey) -> Characteristics:
    most = ctx.configuration.get("LocalAuthListMaxLength")
    return _int(None, 0, most if isinstance(most, int) else None)


def _local_auth_list() -> list[VariableSpec]:
    """D01/D02 and C13-C15: the list is one for both versions, its settings the 1.6 keys."""
    ctrlr = "LocalAuthListCtrlr"
    return [
        _fixed_bool(ctrlr, "Available", True),
        shared(ctrlr, "Enabled", "LocalAuthListEnabled"),
        VariableSpec(
            component=ctrlr,
            name="Entries",
            characteristics=_local_list_capacity,
            attributes=(AttributeSpec(ACTUAL, RO, Live(_local_list_entries)),),
            description="tokens in the list; maxLimit: the most it holds "
            "(the 1.6 key LocalAuthListMaxLength)",
        ),
        shared(
            ctrlr,
            "ItemsPerMessage",
            "SendLocalListMaxLength",
            description="most entries in one SendLocalList (the 1.6 key SendLocalListMaxLength)",
        ),
        _fixed(
            ctrlr,
            "BytesPerMessage",
            _int("B", 1, LOCAL_LIST_BYTES_PER_MESSAGE),
            str(LOCAL_LIST_BYTES_PER_MESSAGE),
            "most bytes in one SendLocalList",
        ),
    ]


def _build() -> tuple[VariableSpec, ...]:
    comm = "OCPPCommCtrlr"
    specs: list[VariableSpec] = [
        # ---------------------------------------------------------------- OCPPCommCtrlr
        _fixed(
            comm,
            "FileTransferProtocols",
            _members(FILE_TRANSFER_PROTOCOLS),
            ",".join(FILE_TRANSFER_PROTOCOLS),
            "protocols of firmware and log transfers",
        ),
        shared(comm, "HeartbeatInterval", "HeartbeatInterval", unit="s"),
        _one(
            comm,
            "MessageTimeout",
            _int("s", 1, 600),
            Live(_message_timeout),
            instance="Default",
            description="messageTimeout of the network profile in use "
            "([csms] call_timeout_s for the configuration file's)",
        ),
        shared(
            comm,
            "MessageAttemptInterval",
            "TransactionMessageRetryInterval",
            instance="TransactionEvent",
            unit="s",
        ),
        shared(comm, "MessageAttempts", "TransactionMessageAttempts", instance="TransactionEvent"),
        shared(comm, "MinimumStatusDuration", "MinimumStatusDuration", unit="s"),
        VariableSpec(
            component=comm,
            name="NetworkConfigurationPriority",
            characteristics=_network_priority,
            attributes=(AttributeSpec(ACTUAL, RW, Stored("0"), reboot_required=True),),
            description="network profile slots to try, in order, from the next restart "
            "(service/ocpp/v201/network.py); slot 0 is the [csms] table until set; "
            "valuesList: the slots holding a profile the charger may connect with",
        ),
        _stored(
            comm,
            "NetworkProfileConnectionAttempts",
            _int(None, 1, 100),
            "3",
            "connection attempts per network profile before the next one is tried",
        ),
        _stored(
            comm,
            "OfflineThreshold",
            _int("s", 0, 86_400),
            "60",
            "offline longer than this: all statuses are sent again after reconnecting",
        ),
        shared(comm, "ResetRetries", "ResetRetries"),
        _fixed(
            comm,
            "RetryBackOffRandomRange",
            _int("s", 0, None),
            lambda ctx, c: str(
                math.ceil(ctx.settings.csms.backoff_max_s * ctx.settings.csms.backoff_randomization)
            ),
            "from [csms] backoff_max_s x backoff_randomization",
        ),
        _fixed(
            comm,
            "RetryBackOffRepeatTimes",
            _int(None, 0, None),
            _backoff_repeat_times,
            "doublings from [csms] backoff_min_s to backoff_max_s",
        ),
        _fixed(
            comm,
            "RetryBackOffWaitMinimum",
            _int("s", 0, None),
            lambda ctx, c: str(math.ceil(ctx.settings.csms.backoff_min_s)),
            "from [csms] backoff_min_s",
        ),
        shared(comm, "UnlockOnEVSideDisconnect", "UnlockConnectorOnEVSideDisconnect"),
        shared(comm, "WebSocketPingInterval", "WebSocketPingInterval", unit="s"),
        # ---------------------------------------------------------------- SecurityCtrlr
        _stored(
            "SecurityCtrlr",
            "AllowSecurityProfileDowngrade",
            _BOOL,
            "false",
            "true: SetNetworkProfile and the fallback may go from security profile 3 to 2 "
            "(never lower)",
        ),
        _one(
            "SecurityCtrlr",
            "BasicAuthPassword",
            _text(40),
            Unwritable(
                "set in [csms] basic_auth_password; changing it over OCPP (A01) is not implemented"
            ),
            mutability=WO,
        ),
        _live(
            "SecurityCtrlr",
            "CertificateEntries",
            _int(None, 0, None),
            _certificate_entries,
            description="certificates in [csms] ca_bundle and client_certificate",
        ),
        _fixed(
            "SecurityCtrlr",
            "Identity",
            _text(48),
            lambda ctx, c: ctx.settings.identity.charge_point_id,
            "[identity] charge_point_id",
        ),
        _stored(
            "SecurityCtrlr",
            "OrganizationName",
            _text(50),
            lambda ctx, c: ctx.settings.identity.vendor,
            "organization of the charger's certificates; [identity] vendor until set",
        ),
        _one(
            "SecurityCtrlr",
            "SecurityProfile",
            _int(None, 0, 3),
            Live(_security_profile),
            description="security profile of the network profile in use ([csms] "
            "security_profile for the configuration file's)",
        ),
        # ---------------------------------------------------------------- AuthCtrlr
        shared("AuthCtrlr", "Enabled", "AuthEnabled"),
        shared("AuthCtrlr", "AuthorizeRemoteStart", "AuthorizeRemoteTxRequests"),
        shared("AuthCtrlr", "LocalAuthorizeOffline", "LocalAuthorizeOffline"),
        shared("AuthCtrlr", "LocalPreAuthorize", "LocalPreAuthorize"),
        shared("AuthCtrlr", "OfflineTxForUnknownIdEnabled", "AllowOfflineTxForUnknownId"),
        # ---------------------------------------------------------------- AuthCacheCtrlr
        _fixed_bool("AuthCacheCtrlr", "Available", True),
        shared("AuthCacheCtrlr", "Enabled", "AuthorizationCacheEnabled"),
        shared("AuthCacheCtrlr", "LifeTime", "AuthorizationCacheLifeTime", unit="s"),
        _fixed(
            "AuthCacheCtrlr",
            "Policy",
            Characteristics(DataType.OPTION_LIST, values_list=("LRU",)),
            "LRU",
            "the least recently written or used entry goes first when the cache is full",
        ),
        # ---------------------------------------------------------------- LocalAuthListCtrlr
        *_local_auth_list(),
        # ------------------------------------------- features this charger does not have yet
        _fixed_bool("ReservationCtrlr", "Available", False),
        _fixed_bool("ReservationCtrlr", "Enabled", False),
        _fixed_bool("SmartChargingCtrlr", "Available", False),
        _fixed_bool("SmartChargingCtrlr", "Enabled", False),
        # ---------------------------------------------------------------- TxCtrlr
        shared("TxCtrlr", "EVConnectionTimeOut", "ConnectionTimeOut", unit="s"),
        shared("TxCtrlr", "MaxEnergyOnInvalidId", "MaxEnergyOnInvalidId", unit="Wh"),
        shared("TxCtrlr", "StopTxOnEVSideDisconnect", "StopTransactionOnEVSideDisconnect"),
        shared("TxCtrlr", "StopTxOnInvalidId", "StopTransactionOnInvalidId"),
        _stored(
            "TxCtrlr",
            "TxStartPoint",
            _members(TX_POINTS),
            "PowerPathClosed",
            "events that start a transaction (the 2.0.1 station link reads it)",
        ),
        _stored(
            "TxCtrlr",
            "TxStopPoint",
            _members(TX_POINTS),
            "EVConnected,Authorized",
            "conditions whose end stops a transaction (the 2.0.1 station link reads it)",
        ),
        # ---------------------------------------------------------------- SampledDataCtrlr
        _fixed_bool("SampledDataCtrlr", "SignReadings", False),
        _stored(
            "SampledDataCtrlr",
            "TxEndedInterval",
            _int("s", 0, 86_400),
            "0",
            "seconds between samples reported in TransactionEvent Ended; 0 = none",
        ),
        shared("SampledDataCtrlr", "TxEndedMeasurands", "StopTxnSampledData"),
        _stored(
            "SampledDataCtrlr",
            "TxStartedMeasurands",
            _members(MEASURANDS_201),
            "Energy.Active.Import.Register",
            "measurands in TransactionEvent Started",
        ),
        shared("SampledDataCtrlr", "TxUpdatedInterval", "MeterValueSampleInterval", unit="s"),
        shared("SampledDataCtrlr", "TxUpdatedMeasurands", "MeterValuesSampledData"),
        # ---------------------------------------------------------------- AlignedDataCtrlr
        shared("AlignedDataCtrlr", "Interval", "ClockAlignedDataInterval", unit="s"),
        shared("AlignedDataCtrlr", "Measurands", "MeterValuesAlignedData"),
        _stored(
            "AlignedDataCtrlr",
            "SendDuringIdle",
            _BOOL,
            "false",
            "true: aligned meter values only while no transaction runs",
        ),
        _stored(
            "AlignedDataCtrlr",
            "TxEndedInterval",
            _int("s", 0, 86_400),
            "0",
            "seconds between clock-aligned values reported in TransactionEvent Ended; 0 = none",
        ),
        shared("AlignedDataCtrlr", "TxEndedMeasurands", "StopTxnAlignedData"),
        # ---------------------------------------------------------------- DeviceDataCtrlr
        *_device_data(),
        # ---------------------------------------------------------------- ClockCtrlr
        _live(
            "ClockCtrlr",
            "DateTime",
            Characteristics(DataType.DATE_TIME),
            lambda ctx, c: ctx.now_iso(),
            description="the charger's time (unknown until a valid time was learnt)",
        ),
        _fixed(
            "ClockCtrlr",
            "TimeSource",
            Characteristics(
                DataType.SEQUENCE_LIST, max_limit=MAX_VALUE_LENGTH, values_list=TIME_SOURCES
            ),
            "Heartbeat,RealTimeClock",
            "the CSMS's time (boot, heartbeat) first, then the system clock",
        ),
        # ---------------------------------------------------------------- ChargingStation
        _live("ChargingStation", "AvailabilityState", _AVAILABILITY, _station_availability),
        _fixed_bool("ChargingStation", "Available", True),
        _fixed("ChargingStation", "Model", _text(20), lambda ctx, c: ctx.settings.identity.model),
        _live("ChargingStation", "Problem", _BOOL, _station_problem),
        _fixed(
            "ChargingStation",
            "SerialNumber",
            _text(25),
            lambda ctx, c: ctx.settings.identity.serial_number,
        ),
        _fixed("ChargingStation", "SupplyPhases", _int(None, 0, 3), _station_phases),
        _fixed(
            "ChargingStation",
            "VendorName",
            _text(20),
            lambda ctx, c: ctx.settings.identity.vendor,
        ),
        # ---------------------------------------------------------------- EVSE
        _live("EVSE", "AvailabilityState", _AVAILABILITY, _evse_availability, scope=Scope.EVSE),
        _fixed_bool("EVSE", "Available", True, scope=Scope.EVSE),
        VariableSpec(
            component="EVSE",
            name="Power",
            characteristics=lambda ctx, c: Characteristics(
                DataType.DECIMAL, unit="W", min_limit=0, max_limit=_evse_max_power_w(ctx, c)
            ),
            attributes=(
                AttributeSpec(ACTUAL, RO, Live(_evse_power)),
                AttributeSpec(
                    AttributeType.MAX_SET,
                    RO,
                    Fixed(lambda ctx, c: _decimal(_evse_max_power_w(ctx, c))),
                ),
            ),
            scope=Scope.EVSE,
            description="active power now; MaxSet: the configured maximum (nominal voltage)",
        ),
        _live("EVSE", "Problem", _BOOL, _evse_problem, scope=Scope.EVSE),
        _fixed("EVSE", "SupplyPhases", _int(None, 0, 3), _evse_phases, scope=Scope.EVSE),
        # ---------------------------------------------------------------- Connector
        _live(
            "Connector",
            "AvailabilityState",
            _AVAILABILITY,
            _evse_availability,
            scope=Scope.CONNECTOR,
            description="the connectors of an EVSE share its state",
        ),
        _fixed_bool("Connector", "Available", True, scope=Scope.CONNECTOR),
        _fixed(
            "Connector",
            "ConnectorType",
            _text(20),
            lambda ctx, c: _connector_field(ctx, c, "type"),
            scope=Scope.CONNECTOR,
        ),
        _live("Connector", "Problem", _BOOL, _evse_problem, scope=Scope.CONNECTOR),
        _fixed(
            "Connector",
            "SupplyPhases",
            _int(None, 0, 3),
            lambda ctx, c: _connector_field(ctx, c, "phases"),
            scope=Scope.CONNECTOR,
        ),
    ]
    return tuple(specs)


CATALOG: tuple[VariableSpec, ...] = _build()


def _self_check(catalog: tuple[VariableSpec, ...]) -> None:
    seen: set[tuple[str, str, str | None]] = set()
    for spec in catalog:
        key = (spec.component, spec.name, spec.instance)
        if key in seen:
            raise AssertionError(f"{key} is in the device model catalog twice")
        seen.add(key)
        for attribute in spec.attributes:
            if isinstance(attribute.source, ConfigKey) and attribute.source.key not in (
                OCPP_KEY_CATALOG
            ):
                raise AssertionError(f"{key} is bound to the unknown key {attribute.source.key}")


_self_check(CATALOG)


# ---------------------------------------------------------------------------- signed readings
SIGNED_READINGS_KEY = "SampledDataSignReadings"


def meter_signs(settings: Settings) -> bool:
    """Whether a configured meter signs its readings: a "modbus" meter whose register map has
    a [signed] table (hal.meter.maps)."""
    for evse in settings.evses:
        if evse.meter.backend != "modbus":
            continue
        spec = evse.meter.options.get("map")
        if not isinstance(spec, str):
            continue
        try:
            if resolve_map(spec).signed is not None:
                return True
        except MeterMapError:
            continue  # the meter's driver reports its bad map
    return False


def catalog_for(
    settings: Settings, catalog: tuple[VariableSpec, ...] = CATALOG
) -> tuple[VariableSpec, ...]:
    """`catalog` for this configuration: with a meter that signs, SampledDataCtrlr.SignReadings
    is ReadWrite, shared with the 1.6 key SampledDataSignReadings; otherwise it stays the fixed
    false of CATALOG (a write is Rejected: there is nothing to sign with)."""
    if not meter_signs(settings):
        return catalog
    sign = shared(
        "SampledDataCtrlr",
        "SignReadings",
        SIGNED_READINGS_KEY,
        description="signed Energy.Active.Import.Register values from the meter",
    )
    return tuple(
        sign if (spec.component, spec.name) == ("SampledDataCtrlr", "SignReadings") else spec
        for spec in catalog
    )
