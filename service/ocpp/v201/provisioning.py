"""OCPP 2.0.1 block B pieces the runtime needs: BootNotification content, TriggerMessage.

F06.FR.17: a TriggerMessage for BootNotification after the boot was Accepted is Rejected.
Targets the charger cannot produce yet are answered NotImplemented.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from service.ocpp.rpc import Call, JsonDict, OcppVersion

if TYPE_CHECKING:
    from service.config import Identity
    from service.ocpp.engine import Engine


def boot_payload(identity: Identity, reason: str = "PowerUp") -> JsonDict:
    station: JsonDict = {"model": identity.model, "vendorName": identity.vendor}
    if identity.serial_number:
        station["serialNumber"] = identity.serial_number
    if identity.firmware_version:
        station["firmwareVersion"] = identity.firmware_version
    modem = {k: v for k, v in (("iccid", identity.iccid), ("imsi", identity.imsi)) if v}
    if modem:
        station["modem"] = modem
    return {"reason": reason, "chargingStation": station}


def install(engine: Engine, registered: Callable[[], bool]) -> None:
    def trigger_message(call: Call) -> JsonDict:
        requested = call.payload["requestedMessage"]
        if requested == "BootNotification":
            if registered():
                return {"status": "Rejected"}
            engine.trigger(requested, {})
            return {"status": "Accepted"}
        if requested == "Heartbeat":
            engine.trigger(requested, {})
            return {"status": "Accepted"}
        return {"status": "NotImplemented"}

    engine.register(OcppVersion.V201, "TriggerMessage", trigger_message)
