"""OCPP 2.0.1 block B pieces the runtime needs: BootNotification content, TriggerMessage.

F06.FR.17: a TriggerMessage for BootNotification after the boot was Accepted is Rejected.
The other targets are service/ocpp/v201/remote.py's (NotImplemented without a station).
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


def trigger_registration(engine: Engine, registered: Callable[[], bool], requested: str) -> str:
    """TriggerMessage for BootNotification / Heartbeat: the answer's status (F06.FR.17: a
    BootNotification after the boot was Accepted is Rejected); NotImplemented otherwise."""
    if requested == "BootNotification":
        if registered():
            return "Rejected"
        engine.trigger(requested, {})
        return "Accepted"
    if requested == "Heartbeat":
        engine.trigger(requested, {})
        return "Accepted"
    return "NotImplemented"


def install(engine: Engine, registered: Callable[[], bool]) -> None:
    """TriggerMessage for an engine without a station; the charger replaces it with the full
    one of service/ocpp/v201/remote.py, which delegates these two messages here."""

    def trigger_message(call: Call) -> JsonDict:
        return {
            "status": trigger_registration(engine, registered, call.payload["requestedMessage"])
        }

    engine.register(OcppVersion.V201, "TriggerMessage", trigger_message)
