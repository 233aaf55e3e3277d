"""OCPP 1.6 requests from the CSMS that act on the station: remote start/stop, availability,
unlock, reset, clear cache, data transfer.

Each handler does the work before it answers Accepted; what the station refuses is Rejected.
Reset stops every transaction with reason SoftReset / HardReset (queued durably first) and then
asks the daemon to restart the process (`request_reset`); a Hard reset on a real charger is a
reboot, which this daemon delegates to the same restart for now. While a firmware update
installs (`reset_refusal`, as for 2.0.1) a Reset of either type is Rejected and nothing is
stopped: the update ends with its own reboot.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from service.ocpp.engine import Deferred, Engine
from service.ocpp.rpc import Call, ErrorCode, JsonDict, OcppVersion, RpcError
from service.station.model import StopReason
from service.station.station import Station

log = logging.getLogger("evsed.ocpp.v16")


def vendor_answer(
    vendor: str,
    handler: VendorHandler,
    message_id: str,
    data: str,
    spawn: Callable[[Awaitable[None]], object],
) -> Deferred:
    """DataTransfer from the CSMS, both versions: the D-Bus client that registered `vendor`
    answers (status, data); a handler that fails answers Rejected."""
    deferred = Deferred()

    async def answer() -> None:
        try:
            status, reply = await handler(message_id, data)
        except Exception:
            log.exception("vendor handler for %s failed", vendor)
            status, reply = "Rejected", ""
        payload: JsonDict = {"status": status}
        if reply:
            payload["data"] = reply
        deferred.resolve(payload)

    spawn(answer())
    return deferred


NOMINAL_VOLTAGE_V = 230.0

VendorHandler = Callable[[str, str], Awaitable[tuple[str, str]]]


def tx_profile_limit_a(profile: dict[str, Any], phases: int) -> float | None:
    """The current limit a TxProfile sets now: its first period (in A, or W converted at the
    nominal voltage over the EVSE's phases). None when the profile is not a TxProfile."""
    if profile.get("chargingProfilePurpose") != "TxProfile":
        return None
    schedule = profile["chargingSchedule"]
    periods = sorted(schedule["chargingSchedulePeriod"], key=lambda p: p["startPeriod"])
    if not periods:
        # 1.6 gives chargingSchedulePeriod 1..* occurrences; the OCA schema has no minItems.
        raise RpcError(
            ErrorCode.OCCURRENCE_CONSTRAINT_VIOLATION,
            "chargingProfile/chargingSchedule/chargingSchedulePeriod: at least one period",
        )
    limit = float(Decimal(str(periods[0]["limit"])))
    if schedule["chargingRateUnit"] == "W":
        used_phases = periods[0].get("numberPhases", phases)
        limit = limit / (NOMINAL_VOLTAGE_V * max(1, used_phases))
    return limit


class Remote:
    def __init__(
        self,
        engine: Engine,
        station: Station,
        *,
        request_reset: Callable[[str], None],
        spawn: Callable[[Awaitable[None]], object],
    ) -> None:
        self.engine = engine
        self.station = station
        self.request_reset = request_reset
        self.spawn = spawn
        self.vendors: dict[str, VendorHandler] = {}
        #: Why a Reset must be Rejected now (a firmware update is installing), or None; the
        #: assembler sets it (service/charger.py) from the firmware manager's state.
        self.reset_refusal: Callable[[], str | None] = lambda: None
        v16 = OcppVersion.V16
        engine.register(v16, "RemoteStartTransaction", self.remote_start)
        engine.register(v16, "RemoteStopTransaction", self.remote_stop)
        engine.register(v16, "ChangeAvailability", self.change_availability)
        engine.register(v16, "UnlockConnector", self.unlock)
        engine.register(v16, "Reset", self.reset)
        engine.register(v16, "ClearCache", self.clear_cache)
        engine.register(v16, "DataTransfer", self.data_transfer)

    def remote_start(self, call: Call) -> JsonDict:
        p = call.payload
        connector = p.get("connectorId")
        if connector is not None and connector not in self.station.evses:
            return {"status": "Rejected"}
        limit = None
        if "chargingProfile" in p:
            phases = self.station.evses[connector].phases if connector else 3
            limit = tx_profile_limit_a(p["chargingProfile"], phases)
            if limit is None:
                return {"status": "Rejected"}  # only a TxProfile may come with RemoteStart
        accepted = self.station.remote_start(connector, p["idTag"], limit)
        return {"status": "Accepted" if accepted else "Rejected"}

    def remote_stop(self, call: Call) -> JsonDict:
        stopped = self.station.remote_stop(call.payload["transactionId"])
        return {"status": "Accepted" if stopped else "Rejected"}

    def change_availability(self, call: Call) -> JsonDict:
        connector = call.payload["connectorId"]
        if connector != 0 and connector not in self.station.evses:
            return {"status": "Rejected"}
        operative = call.payload["type"] == "Operative"
        return {"status": self.station.set_availability(connector, operative)}

    def unlock(self, call: Call) -> JsonDict:
        connector = call.payload["connectorId"]
        if connector == 0 or connector not in self.station.evses:
            return {"status": "NotSupported"}
        return {"status": self.station.unlock(connector)}

    def reset(self, call: Call) -> JsonDict:
        kind = call.payload["type"]
        refusal = self.reset_refusal()
        if refusal is not None:
            log.warning("%s reset requested by the CSMS rejected: %s", kind, refusal)
            return {"status": "Rejected"}
        reason = StopReason.HARD_RESET if kind == "Hard" else StopReason.SOFT_RESET
        stopped = self.station.stop_all(reason)
        log.warning("%s reset requested by the CSMS; %d transaction(s) stopped", kind, stopped)
        self.request_reset(kind)
        return {"status": "Accepted"}

    def clear_cache(self, call: Call) -> JsonDict:
        cleared = self.station.authorizer.clear_cache()
        return {"status": "Accepted" if cleared else "Rejected"}

    def data_transfer(self, call: Call) -> JsonDict | Deferred:
        vendor = call.payload["vendorId"]
        handler = self.vendors.get(vendor)
        if handler is None:
            return {"status": "UnknownVendorId"}
        message_id = call.payload.get("messageId", "")
        data = call.payload.get("data", "")
        return vendor_answer(vendor, handler, message_id, data, self.spawn)
