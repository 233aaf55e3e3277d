"""The 2.0.1 device model and B05 SetVariables / B06 GetVariables, through the engine."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from hal.interfaces import MeterReading
from service.config import Csms
from service.ocpp.rpc import OcppVersion
from service.ocpp.v201.device_model import DeviceModel
from service.ocpp.v201.dm_catalog import CATALOG
from service.ocpp.v201.dm_types import (
    AttributeSpec,
    AttributeType,
    Characteristics,
    DataType,
    Fixed,
    Mutability,
    Scope,
    Stored,
    VariableSpec,
)
from service.station.auth import AuthSettings
from tests.certs import make_ca, make_leaf
from tests.service.ocpp.v201.conftest import Charger, item

# Variables OCPP 2.0.1 Part 2 appendix 3 requires of a charger with these functions.
REQUIRED = [
    ("OCPPCommCtrlr", "FileTransferProtocols", None),
    ("OCPPCommCtrlr", "HeartbeatInterval", None),
    ("OCPPCommCtrlr", "MessageTimeout", "Default"),
    ("OCPPCommCtrlr", "MessageAttemptInterval", "TransactionEvent"),
    ("OCPPCommCtrlr", "MessageAttempts", "TransactionEvent"),
    ("OCPPCommCtrlr", "NetworkConfigurationPriority", None),
    ("OCPPCommCtrlr", "NetworkProfileConnectionAttempts", None),
    ("OCPPCommCtrlr", "OfflineThreshold", None),
    ("OCPPCommCtrlr", "ResetRetries", None),
    ("OCPPCommCtrlr", "RetryBackOffRandomRange", None),
    ("OCPPCommCtrlr", "RetryBackOffRepeatTimes", None),
    ("OCPPCommCtrlr", "RetryBackOffWaitMinimum", None),
    ("OCPPCommCtrlr", "UnlockOnEVSideDisconnect", None),
    ("OCPPCommCtrlr", "WebSocketPingInterval", None),
    ("SecurityCtrlr", "CertificateEntries", None),
    ("SecurityCtrlr", "OrganizationName", None),
    ("SecurityCtrlr", "SecurityProfile", None),
    ("SecurityCtrlr", "Identity", None),
    ("AuthCtrlr", "AuthorizeRemoteStart", None),
    ("AuthCtrlr", "LocalAuthorizeOffline", None),
    ("AuthCtrlr", "LocalPreAuthorize", None),
    ("AuthCacheCtrlr", "Enabled", None),
    ("LocalAuthListCtrlr", "Enabled", None),
    ("TxCtrlr", "EVConnectionTimeOut", None),
    ("TxCtrlr", "StopTxOnEVSideDisconnect", None),
    ("TxCtrlr", "StopTxOnInvalidId", None),
    ("TxCtrlr", "TxStartPoint", None),
    ("TxCtrlr", "TxStopPoint", None),
    ("SampledDataCtrlr", "TxEndedMeasurands", None),
    ("SampledDataCtrlr", "TxEndedInterval", None),
    ("SampledDataCtrlr", "TxStartedMeasurands", None),
    ("SampledDataCtrlr", "TxUpdatedMeasurands", None),
    ("SampledDataCtrlr", "TxUpdatedInterval", None),
    ("AlignedDataCtrlr", "Interval", None),
    ("AlignedDataCtrlr", "Measurands", None),
    ("AlignedDataCtrlr", "TxEndedInterval", None),
    ("AlignedDataCtrlr", "TxEndedMeasurands", None),
    ("DeviceDataCtrlr", "ItemsPerMessage", "GetReport"),
    ("DeviceDataCtrlr", "ItemsPerMessage", "GetVariables"),
    ("DeviceDataCtrlr", "ItemsPerMessage", "SetVariables"),
    ("DeviceDataCtrlr", "BytesPerMessage", "GetReport"),
    ("DeviceDataCtrlr", "BytesPerMessage", "GetVariables"),
    ("DeviceDataCtrlr", "BytesPerMessage", "SetVariables"),
    ("ClockCtrlr", "DateTime", None),
    ("ClockCtrlr", "TimeSource", None),
    ("ChargingStation", "AvailabilityState", None),
    ("ChargingStation", "Available", None),
    ("ChargingStation", "Model", None),
    ("ChargingStation", "VendorName", None),
    ("ChargingStation", "SupplyPhases", None),
    ("EVSE", "AvailabilityState", None),
    ("EVSE", "Available", None),
    ("EVSE", "Power", None),
    ("EVSE", "SupplyPhases", None),
    ("Connector", "AvailabilityState", None),
    ("Connector", "Available", None),
    ("Connector", "ConnectorType", None),
    ("Connector", "SupplyPhases", None),
]


def value(result: dict[str, Any]) -> str:
    assert result["attributeStatus"] == "Accepted", result
    text: str = result["attributeValue"]
    return text


def status(result: dict[str, Any]) -> tuple[str, str | None]:
    info = result.get("attributeStatusInfo") or {}
    return result["attributeStatus"], info.get("reasonCode")


# ------------------------------------------------------------------ the model
def test_catalog_has_the_required_variables() -> None:
    names = {(spec.component, spec.name, spec.instance) for spec in CATALOG}
    missing = [entry for entry in REQUIRED if entry not in names]
    assert missing == []


def test_components_are_instantiated_per_evse_and_connector(charger: Charger) -> None:
    evses = {c.evse for c in charger.model.components() if c.name == "EVSE"}
    connectors = {
        (c.evse, c.connector) for c in charger.model.components() if c.name == "Connector"
    }
    assert evses == {1, 2}
    assert connectors == {(1, 1), (2, 1), (2, 2)}
    assert {c.evse for c in charger.model.components() if c.name == "TxCtrlr"} == {None}


def test_get_variables_reads_every_kind_of_source(charger: Charger) -> None:
    charger.station.meter_reading(
        1, MeterReading(1234.0, (230.0,) * 3, (10.0,) * 3, (2300.0, 2300.0, 2300.5))
    )
    results = charger.get(
        item("OCPPCommCtrlr", "HeartbeatInterval"),  # a shared 1.6 key
        item("TxCtrlr", "TxStartPoint"),  # stored, 2.0.1 only: its default
        item("OCPPCommCtrlr", "MessageTimeout", instance="Default"),  # from [csms]
        item("ChargingStation", "Model"),
        item("ChargingStation", "SerialNumber"),
        item("SecurityCtrlr", "Identity"),
        item("Connector", "ConnectorType", evse=2, connector=2),
        item("EVSE", "SupplyPhases", evse=2),
        item("EVSE", "Power", evse=1),
        item("EVSE", "Power", evse=1, attribute="MaxSet"),
        item("EVSE", "Power", evse=2, attribute="MaxSet"),
        item("EVSE", "AvailabilityState", evse=1),
        item("ClockCtrlr", "DateTime"),
        item("DeviceDataCtrlr", "ItemsPerMessage", instance="SetVariables"),
        item("SampledDataCtrlr", "TxUpdatedMeasurands"),
    )
    assert [value(r) for r in results] == [
        "300",
        "PowerPathClosed",
        "25",
        "Model-X",
        "SN-42",
        "CP-DM",
        "sType2",
        "1",
        "6900.5",
        "22080",  # 230 V x 3 x 32 A
        "3680",  # 230 V x 1 x 16 A
        "Available",
        "2027-01-15T08:00:00.000Z",
        "32",
        "Energy.Active.Import.Register",
    ]
    # Every result echoes what was asked, with the attribute type (Actual when absent).
    assert results[0]["component"] == {"name": "OCPPCommCtrlr"}
    assert results[0]["attributeType"] == "Actual"
    assert results[6]["component"] == {"name": "Connector", "evse": {"id": 2, "connectorId": 2}}
    assert results[9]["attributeType"] == "MaxSet"


def test_a_supported_attribute_without_a_value_is_an_empty_string(charger: Charger) -> None:
    # No meter reading yet: the power is not known (B06.FR.13).
    [result] = charger.get(item("EVSE", "Power", evse=2))
    assert value(result) == ""


def test_get_variables_statuses(charger: Charger) -> None:
    results = charger.get(
        item("NoSuchCtrlr", "Enabled"),
        item("EVSE", "AvailabilityState", evse=9),
        item("Connector", "AvailabilityState", evse=1, connector=2),
        item("TxCtrlr", "TxStartPoint", evse=1),  # a station-wide controller at an EVSE
        item("OCPPCommCtrlr", "NoSuchVariable"),
        item("OCPPCommCtrlr", "MessageAttempts"),  # needs its instance (B06.FR.15)
        item("OCPPCommCtrlr", "MessageAttempts", instance="Other"),
        item("OCPPCommCtrlr", "HeartbeatInterval", attribute="Target"),
        item("EVSE", "Power", evse=1, attribute="MinSet"),
        item("SecurityCtrlr", "BasicAuthPassword"),  # write-only
        item("OCPPCommCtrlr", "MessageAttempts", instance="TransactionEvent"),
    )
    assert [status(r) for r in results] == [
        ("UnknownComponent", "NotFound"),
        ("UnknownComponent", "UnknownEvse"),
        ("UnknownComponent", "UnknownConnectorId"),
        ("UnknownComponent", "NotFound"),
        ("UnknownVariable", "NotFound"),
        ("UnknownVariable", "NotFound"),
        ("UnknownVariable", "NotFound"),
        ("NotSupportedAttributeType", "UnsupportedParam"),
        ("NotSupportedAttributeType", "UnsupportedParam"),
        ("Rejected", "WriteOnly"),
        ("Accepted", None),
    ]
    assert all("attributeValue" not in r for r in results[:-1])
    assert results[-1]["attributeValue"] == "3"


def test_status_variables_are_read_live_from_the_station(charger: Charger) -> None:
    def states() -> list[str]:
        return [
            value(r)
            for r in charger.get(
                item("ChargingStation", "AvailabilityState"),
                item("EVSE", "AvailabilityState", evse=1),
                item("EVSE", "AvailabilityState", evse=2),
                item("Connector", "AvailabilityState", evse=2, connector=2),
                item("ChargingStation", "Problem"),
                item("EVSE", "Problem", evse=1),
            )
        ]

    assert states() == ["Available", "Available", "Available", "Available", "false", "false"]
    charger.sims[2].plug()
    charger.station.pilot_changed(2, charger.sims[2].pilot.state)
    assert states() == ["Available", "Available", "Occupied", "Occupied", "false", "false"]
    charger.station.set_availability(1, False)
    assert states()[:2] == ["Available", "Unavailable"]
    charger.station.raise_fault(1, "HighTemperature", "too hot")
    assert states()[4:] == ["true", "true"]
    assert charger.model.get("EVSE", "AvailabilityState", evse=1) == "Faulted"
    charger.station.set_availability(0, False)
    assert states()[0] == "Unavailable"


def test_certificate_entries_count_the_configured_certificates(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "ca")
    leaf = make_leaf(ca, tmp_path, "cp", client=True)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(ca.cert_path.read_bytes() * 2)  # two CAs in one bundle
    csms = Csms(
        url="wss://csms.invalid/ocpp",
        security_profile=3,
        ca_bundle=bundle,
        client_certificate=leaf.cert_path,
        client_key=leaf.key_path,
    )
    rig = Charger(tmp_path / "evsed.db", csms=csms)
    try:
        assert rig.model.get("SecurityCtrlr", "CertificateEntries") == "3"
        assert rig.model.get("SecurityCtrlr", "SecurityProfile") == "3"
        bundle.unlink()  # an unreadable file counts nothing and breaks nothing
        assert rig.model.get("SecurityCtrlr", "CertificateEntries") == "1"
    finally:
        rig.close()


def test_accessor_for_the_station_link(charger: Charger) -> None:
    model = charger.model
    assert model.get("OCPPCommCtrlr", "MessageAttempts") == "3"  # instance found by name
    assert model.get_int("OCPPCommCtrlr", "MessageAttemptInterval") == 60
    assert model.get_bool("TxCtrlr", "StopTxOnInvalidId") is True
    assert model.get_list("TxCtrlr", "TxStopPoint") == ["EVConnected", "Authorized"]
    assert model.get("EVSE", "AvailabilityState", evse=2) == "Available"
    assert model.get("EVSE", "Power", evse=1, attribute="MaxSet") == "22080"
    assert model.get("EVSE", "Power", evse=1, attribute="Target") is None
    assert model.get("NoSuchCtrlr", "X") is None
    assert model.get("DeviceDataCtrlr", "ItemsPerMessage") is None  # ambiguous: 3 instances
    assert model.get_int("DeviceDataCtrlr", "ItemsPerMessage", instance="GetReport") == 32


# ------------------------------------------------------------------ SetVariables
def test_set_variables_statuses_in_the_order_asked(charger: Charger) -> None:
    results = charger.set(
        item("SampledDataCtrlr", "TxUpdatedInterval", value="120"),
        item("OCPPCommCtrlr", "WebSocketPingInterval", value="10"),
        item("NoSuchCtrlr", "Enabled", value="true"),
        item("EVSE", "AvailabilityState", evse=7, value="Available"),
        item("TxCtrlr", "NoSuchVariable", value="1"),
        item("OCPPCommCtrlr", "HeartbeatInterval", attribute="MaxSet", value="10"),
        item("SecurityCtrlr", "SecurityProfile", value="2"),  # read-only
        item("EVSE", "Power", evse=1, attribute="MaxSet", value="1000"),  # read-only attribute
        item("ChargingStation", "AvailabilityState", value="Unavailable"),  # live, read-only
        item("SecurityCtrlr", "BasicAuthPassword", value="a-new-password-1234"),
        item("OCPPCommCtrlr", "HeartbeatInterval", value="0"),
        item("OCPPCommCtrlr", "HeartbeatInterval", value="86401"),
        item("OCPPCommCtrlr", "HeartbeatInterval", value="sixty"),
        item("AuthCtrlr", "LocalPreAuthorize", value="yes"),
        item("SampledDataCtrlr", "TxUpdatedMeasurands", value="Temperature"),  # 1.6 only
        item("SampledDataCtrlr", "TxUpdatedMeasurands", value="Voltage,Voltage"),
        item("TxCtrlr", "TxStartPoint", value="ParkingBayOccupancy"),  # no bay sensor
        item("SecurityCtrlr", "OrganizationName", value="x" * 51),
        item("TxCtrlr", "TxStartPoint", value="EVConnected,Authorized"),
    )
    assert [status(r) for r in results] == [
        ("Accepted", None),
        ("RebootRequired", None),
        ("UnknownComponent", "NotFound"),
        ("UnknownComponent", "UnknownEvse"),
        ("UnknownVariable", "NotFound"),
        ("NotSupportedAttributeType", "UnsupportedParam"),
        ("Rejected", "ReadOnly"),
        ("Rejected", "ReadOnly"),
        ("Rejected", "ReadOnly"),
        ("Rejected", "UnsupportedParam"),
        ("Rejected", "ValueTooLow"),
        ("Rejected", "ValueTooHigh"),
        ("Rejected", "InvalidValue"),
        ("Rejected", "InvalidValue"),
        ("Rejected", "InvalidValue"),
        ("Rejected", "InvalidValue"),
        ("Rejected", "InvalidValue"),
        ("Rejected", "TooLargeElement"),
        ("Accepted", None),
    ]
    assert [r["variable"]["name"] for r in results][:3] == [
        "TxUpdatedInterval",
        "WebSocketPingInterval",
        "Enabled",
    ]
    assert results[5]["attributeType"] == "MaxSet"
    # Accepted values were applied; refused ones changed nothing.
    cfg = charger.cfg
    assert cfg.get("MeterValueSampleInterval") == 120
    assert cfg.get("WebSocketPingInterval") == 10
    assert cfg.get("HeartbeatInterval") == 300
    assert cfg.get("LocalPreAuthorize") is False
    assert cfg.get("MeterValuesSampledData") == "Energy.Active.Import.Register"
    assert charger.model.get("TxCtrlr", "TxStartPoint") == "EVConnected,Authorized"
    assert charger.model.get("SecurityCtrlr", "OrganizationName") == "Acme"  # [identity] vendor
    # The same effects as a 1.6 ChangeConfiguration: the charger applied both keys.
    assert charger.applied == ["MeterValueSampleInterval", "WebSocketPingInterval"]
    assert charger.changes == [
        ("SampledDataCtrlr", "TxUpdatedInterval", None, "120"),
        ("OCPPCommCtrlr", "WebSocketPingInterval", None, "10"),
        ("TxCtrlr", "TxStartPoint", None, "EVConnected,Authorized"),
    ]


def test_setting_a_value_again_changes_nothing(charger: Charger) -> None:
    charger.set(item("OCPPCommCtrlr", "OfflineThreshold", value="120"))
    charger.set(item("OCPPCommCtrlr", "OfflineThreshold", value="120"))
    assert charger.changes == [("OCPPCommCtrlr", "OfflineThreshold", None, "120")]
    [result] = charger.get(item("OCPPCommCtrlr", "OfflineThreshold"))
    assert value(result) == "120"


def test_values_are_normalized_before_they_are_stored(charger: Charger) -> None:
    results = charger.set(
        item("AuthCtrlr", "LocalPreAuthorize", value="TRUE"),
        item("SampledDataCtrlr", "TxStartedMeasurands", value="Voltage, SoC"),
    )
    assert [status(r) for r in results] == [("Accepted", None), ("Accepted", None)]
    assert charger.cfg.get("LocalPreAuthorize") is True
    assert charger.model.get("SampledDataCtrlr", "TxStartedMeasurands") == "Voltage,SoC"


def test_a_shared_setting_drives_the_same_behaviour(charger: Charger) -> None:
    assert AuthSettings.from_configuration(charger.cfg).local_pre_authorize is False
    charger.set(item("AuthCtrlr", "LocalPreAuthorize", value="true"))
    assert AuthSettings.from_configuration(charger.cfg).local_pre_authorize is True
    charger.set(item("OCPPCommCtrlr", "MessageAttempts", instance="TransactionEvent", value="7"))
    assert charger.engine._settings.transaction_message_attempts == 7


def test_values_survive_a_restart(tmp_path: Path) -> None:
    rig = Charger(tmp_path / "evsed.db")
    rig.connect()
    rig.set(
        item("TxCtrlr", "TxStopPoint", value="EnergyTransfer"),
        item("AlignedDataCtrlr", "SendDuringIdle", value="true"),
        item("AlignedDataCtrlr", "Interval", value="900"),
    )
    rig.close()
    again = Charger(tmp_path / "evsed.db")
    again.connect()
    try:
        results = again.get(
            item("TxCtrlr", "TxStopPoint"),
            item("AlignedDataCtrlr", "SendDuringIdle"),
            item("AlignedDataCtrlr", "Interval"),
            item("TxCtrlr", "TxStartPoint"),
        )
        assert [value(r) for r in results] == ["EnergyTransfer", "true", "900", "PowerPathClosed"]
        assert again.cfg.get("ClockAlignedDataInterval") == 900
    finally:
        again.close()


def test_a_stored_value_that_no_longer_fits_is_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Charger(tmp_path / "evsed.db")
    for variable, stored in (("TxStartPoint", "Teleportation"), ("Gone", "1")):
        rig.db.execute(
            "INSERT INTO device_model_values (component, variable, value, updated_at) "
            "VALUES ('TxCtrlr', ?, ?, 0)",
            (variable, stored),
        )
    rig.close()
    with caplog.at_level(logging.WARNING, "evsed.ocpp.device_model"):
        again = Charger(tmp_path / "evsed.db")
    try:
        assert again.model.get("TxCtrlr", "TxStartPoint") == "PowerPathClosed"
        assert "Teleportation" in caplog.text and "Gone" in caplog.text
    finally:
        again.close()


# ------------------------------------------------------------------ one setting, two names
def test_a_1_6_change_is_seen_under_2_0_1_after_reconnecting(tmp_path: Path) -> None:
    rig = Charger(tmp_path / "evsed.db")
    try:
        rig.connect(OcppVersion.V16)
        answer = rig.result(
            "ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "77"}
        )
        assert answer == {"status": "Accepted"}
        assert rig.changes == [("SampledDataCtrlr", "TxUpdatedInterval", None, "77")]
        rig.disconnect()
        rig.connect(OcppVersion.V201)
        [result] = rig.get(item("SampledDataCtrlr", "TxUpdatedInterval"))
        assert value(result) == "77"
        # ...and back: a 2.0.1 change answered by 1.6 GetConfiguration.
        rig.set(item("TxCtrlr", "StopTxOnInvalidId", value="false"))
        rig.disconnect()
        rig.connect(OcppVersion.V16)
        keys = rig.result("GetConfiguration", {"key": ["StopTransactionOnInvalidId"]})
        assert keys["configurationKey"] == [
            {"key": "StopTransactionOnInvalidId", "readonly": False, "value": "false"}
        ]
    finally:
        rig.close()


def test_the_boot_interval_is_reported_as_a_change(charger: Charger) -> None:
    charger.cfg.set_heartbeat_interval(120)  # what an accepted BootNotification does
    assert charger.changes == [("OCPPCommCtrlr", "HeartbeatInterval", None, "120")]
    [result] = charger.get(item("OCPPCommCtrlr", "HeartbeatInterval"))
    assert value(result) == "120"


# ------------------------------------------------------------------ message limits
def test_too_many_items_is_an_occurrence_constraint_violation(charger: Charger) -> None:
    many = [item("OCPPCommCtrlr", "HeartbeatInterval")] * 33
    answer = charger.call("GetVariables", {"getVariableData": many})
    assert answer[0] == 4 and answer[2] == "OccurrenceConstraintViolation"
    sets = [item("SampledDataCtrlr", "TxUpdatedInterval", value="30")] * 33
    answer = charger.call("SetVariables", {"setVariableData": sets})
    assert answer[0] == 4 and answer[2] == "OccurrenceConstraintViolation"
    assert charger.cfg.get("MeterValueSampleInterval") == 60  # nothing was applied
    # The limit itself is fine.
    assert len(charger.get(*many[:32])) == 32


def test_too_many_bytes_is_a_format_violation(charger: Charger) -> None:
    sets = [item("SecurityCtrlr", "OrganizationName", value="y" * 1000)] * 17
    answer = charger.call("SetVariables", {"setVariableData": sets})
    assert answer[0] == 4 and answer[2] == "FormatViolation"
    assert "BytesPerMessage" in answer[3]


def test_a_schema_breaking_request_is_refused_by_the_engine(charger: Charger) -> None:
    answer = charger.call(
        "SetVariables",
        {"setVariableData": [item("TxCtrlr", "TxStartPoint", value="x", attribute="Minimum")]},
    )
    assert answer[0] == 4 and answer[2] == "PropertyConstraintViolation"
    answer = charger.call("GetVariables", {"getVariableData": []})
    assert answer[0] == 4 and answer[2] == "OccurrenceConstraintViolation"


# ------------------------------------------------------------------ every attribute type
def _limits_catalog() -> tuple[VariableSpec, ...]:
    """A variable with all four attributes, as a vendor component might have."""
    chars = Characteristics(DataType.INTEGER, unit="A", min_limit=0, max_limit=32)
    return (
        VariableSpec(
            component="VendorLimiter",
            name="Current",
            characteristics=chars,
            attributes=(
                AttributeSpec(AttributeType.ACTUAL, Mutability.READ_ONLY, Fixed("16")),
                AttributeSpec(AttributeType.TARGET, Mutability.READ_WRITE, Stored("16")),
                AttributeSpec(AttributeType.MIN_SET, Mutability.READ_WRITE, Stored("6")),
                AttributeSpec(
                    AttributeType.MAX_SET, Mutability.READ_WRITE, Stored("32"), reboot_required=True
                ),
            ),
            scope=Scope.EVSE,
        ),
    )


def test_target_min_set_and_max_set(tmp_path: Path) -> None:
    rig = Charger(tmp_path / "evsed.db")
    model = DeviceModel(rig.settings, rig.db, rig.cfg, clock=rig.clock, catalog=_limits_catalog())
    changes: list[Any] = []
    model.on_change(lambda *args: changes.append(args))

    def set_(attribute: str, new: str) -> tuple[str, str | None]:
        return status(
            model.set_variable(
                item("VendorLimiter", "Current", evse=2, attribute=attribute, value=new)
            )
        )

    try:
        assert set_("Target", "20") == ("Accepted", None)
        assert set_("MinSet", "8") == ("Accepted", None)
        assert set_("MaxSet", "24") == ("RebootRequired", None)
        assert set_("MaxSet", "33") == ("Rejected", "ValueTooHigh")
        assert set_("Actual", "10") == ("Rejected", "ReadOnly")
        assert changes == []  # only Actual values are announced
        again = DeviceModel(rig.settings, rig.db, rig.cfg, catalog=_limits_catalog())
        values = [
            value(again.get_variable(item("VendorLimiter", "Current", evse=n, attribute=a)))
            for n, a in ((2, "Actual"), (2, "Target"), (2, "MinSet"), (2, "MaxSet"), (1, "MaxSet"))
        ]
        assert values == ["16", "20", "8", "24", "32"]  # EVSE 1 keeps its default
        rows = rig.db.query_all("SELECT evse_id, attribute FROM device_model_values ORDER BY 2")
        assert [(r[0], r[1]) for r in rows] == [(2, "MaxSet"), (2, "MinSet"), (2, "Target")]
    finally:
        rig.close()
