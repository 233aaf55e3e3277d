"""OCPP 1.6 Core/Remote Trigger pieces: BootNotification content and TriggerMessage.

TriggerMessage answers first and then sends the requested message through the engine's
trigger lane, which is allowed even while the boot is Pending. Diagnostics and firmware status
report the true current state, given by the firmware managers (Idle when nothing runs; see
service/ocpp/v16/firmware.py). A connector that does not exist is Rejected. `trigger()` is
shared with ExtendedTriggerMessage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from service.ocpp.rpc import Call, JsonDict, OcppVersion
from service.station import metering
from service.station.model import Availability

if TYPE_CHECKING:
    from service.config import Identity
    from service.ocpp.engine import Engine
    from service.station.station import Station


def boot_payload(identity: Identity) -> JsonDict:
    payload: JsonDict = {
        "chargePointVendor": identity.vendor,
        "chargePointModel": identity.model,
    }
    optional = {
        "chargePointSerialNumber": identity.serial_number,
        "chargeBoxSerialNumber": identity.charge_box_serial_number,
        "firmwareVersion": identity.firmware_version,
        "iccid": identity.iccid,
        "imsi": identity.imsi,
        "meterType": identity.meter_type,
        "meterSerialNumber": identity.meter_serial_number,
    }
    payload.update({k: v for k, v in optional.items() if v})
    return payload


def status_payload(station: Station, connector_id: int, timestamp: str) -> JsonDict:
    if connector_id == 0:
        status = (
            "Available" if station.station_availability is Availability.OPERATIVE else "Unavailable"
        )
        return {"connectorId": 0, "errorCode": "NoError", "status": status, "timestamp": timestamp}
    state, error = station.status_of(connector_id)
    return {
        "connectorId": connector_id,
        "errorCode": error,
        "status": state.value,
        "timestamp": timestamp,
    }


def meter_payload(station: Station, connector_id: int, timestamp: str) -> JsonDict | None:
    evse = station.evses[connector_id]
    if evse.reading is None:
        return None
    measurands = [m for m in str(station.cfg.get("MeterValuesSampledData")).split(",") if m]
    values = metering.sampled_values(
        evse.reading,
        measurands or ["Energy.Active.Import.Register"],
        context="Trigger",
        offered_current_a=evse.offered_a,
        phases=evse.phases,
        signed=station.signs_readings(),
    )
    if not values:
        return None
    payload: dict[str, Any] = {
        "connectorId": connector_id,
        "meterValue": [metering.meter_value(timestamp, values)],
    }
    session = evse.session
    if session is not None and session.started and isinstance(session.transaction_id, int):
        payload["transactionId"] = session.transaction_id
    return payload


StatusSource = Callable[[], JsonDict]


def trigger(
    engine: Engine,
    station: Station | None,
    requested: str,
    connector: int | None,
    *,
    firmware_status: StatusSource | None = None,
    diagnostics_status: StatusSource | None = None,
) -> str:
    """Send the message a TriggerMessage (or ExtendedTriggerMessage) asks for; returns the
    answer's status: Accepted, Rejected or NotImplemented."""
    if (
        station is not None
        and connector is not None
        and connector != 0
        and (connector not in station.evses)
    ):
        return "Rejected"
    if requested in ("BootNotification", "Heartbeat"):
        engine.trigger(requested, {})
    elif requested == "FirmwareStatusNotification":
        engine.trigger(requested, firmware_status() if firmware_status else {"status": "Idle"})
    elif requested == "DiagnosticsStatusNotification":
        engine.trigger(
            requested, diagnostics_status() if diagnostics_status else {"status": "Idle"}
        )
    elif station is None:
        return "NotImplemented"
    elif requested == "StatusNotification":
        ids = [connector] if connector is not None else [0, *station.evses]
        for cid in ids:
            engine.trigger(requested, status_payload(station, cid, engine.timestamp()))
    elif requested == "MeterValues":
        ids = [connector] if connector else list(station.evses)
        sent = False
        for cid in ids:
            payload = meter_payload(station, cid, engine.timestamp())
            if payload is not None:
                engine.trigger(requested, payload)
                sent = True
        if not sent:
            return "Rejected"
    else:
        return "NotImplemented"
    return "Accepted"


def install(
    engine: Engine,
    station: Station | None = None,
    *,
    firmware_status: StatusSource | None = None,
    diagnostics_status: StatusSource | None = None,
) -> None:
    """Register TriggerMessage; `firmware_status` / `diagnostics_status` give the true current
    status payloads (Idle when nothing runs, or when not given)."""

    def trigger_message(call: Call) -> JsonDict:
        status = trigger(
            engine,
            station,
            call.payload["requestedMessage"],
            call.payload.get("connectorId"),
            firmware_status=firmware_status,
            diagnostics_status=diagnostics_status,
        )
        return {"status": status}

    engine.register(OcppVersion.V16, "TriggerMessage", trigger_message)
