"""OCPP 1.6 Core profile pieces the runtime needs: BootNotification content, TriggerMessage.

TriggerMessage answers NotImplemented (the status the spec defines for that) for messages the
charger cannot produce yet, rather than accepting and doing nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.ocpp.rpc import Call, JsonDict, OcppVersion

if TYPE_CHECKING:
    from service.config import Identity
    from service.ocpp.engine import Engine

# TriggerMessage targets this module can honour; the station adds the others it supports.
_SELF_TRIGGERED = {"BootNotification", "Heartbeat"}


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


def install(engine: Engine) -> None:
    def trigger_message(call: Call) -> JsonDict:
        requested = call.payload["requestedMessage"]
        if requested not in _SELF_TRIGGERED:
            return {"status": "NotImplemented"}
        # Answer first, then send: the engine queues the triggered CALL behind this CALLRESULT.
        engine.trigger(requested, {})
        return {"status": "Accepted"}

    engine.register(OcppVersion.V16, "TriggerMessage", trigger_message)
