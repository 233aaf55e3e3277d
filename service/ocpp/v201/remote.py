"""OCPP 2.0.1 requests from the CSMS that act on the station: F01-F03 Request{Start,Stop}
Transaction, F05 UnlockConnector, F06 TriggerMessage, B11/B12 Reset, G03/G04
ChangeAvailability, E14 GetTransactionStatus, C11 ClearCache and P01 DataTransfer.

Each handler does the work before it answers Accepted; what the station refuses is Rejected
(with a statusInfo reasonCode saying why). Notes on what "the work" is here:

* RequestStartTransaction: a chargingProfile must be a TxProfile without transactionId; its
  first schedule's first period becomes the session's current limit (as 1.6 RemoteStart does;
  A, or W at the nominal voltage). The remoteStartId goes out in the transaction's next
  TransactionEvent. Without evseId the charger picks an EVSE (a plugged-in one first). An
  idToken of 1 to 36 printable ASCII characters is taken (evsed keeps tokens printable, as
  its cache and local list share them with 1.6), or an empty one of type NoAuthorization
  (started without authorization); anything else is Rejected (InvalidIdToken).
* UnlockConnector: OngoingAuthorizedTransaction while an authorized session runs (F05.FR.02);
  otherwise the lock is released (Unlocked). UnknownConnector for an EVSE or connector that
  does not exist.
* Reset Immediate stops the transactions (ResetCommand / ImmediateReset) and restarts the
  daemon; OnIdle does so at once when nothing runs, else answers Scheduled and resets when the
  last transaction ended. With evseId only that EVSE is reset: its transaction ends and its lock
  is released (one EVSE's hardware has no restart of its own); a scheduled EVSE reset waits for
  that EVSE. While a firmware update installs (`reset_refusal`) a Reset is Rejected
  (FwUpdateInProgress).
* ChangeAvailability: the station, an EVSE, or a connector (an EVSE's connectors share one
  state, so a connector of a multi-connector EVSE is Rejected); Scheduled while in use.
* TriggerMessage: BootNotification and Heartbeat (service/ocpp/v201/provisioning.py),
  StatusNotification, MeterValues (AlignedDataCtrlr.Measurands, context Trigger) and
  TransactionEvent (through the queue, so its seqNo stays in order); other messages are
  answered by a `trigger_sources` entry when a module registered one, else NotImplemented.
* DataTransfer is answered by the vendor handlers the D-Bus clients registered (shared with
  1.6); 2.0.1 data that is not a string reaches them as JSON text.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from service.ocpp.engine import Deferred, Engine, Registration
from service.ocpp.rpc import Call, JsonDict, OcppVersion
from service.ocpp.v16.remote import VendorHandler, tx_profile_limit_a, vendor_answer
from service.ocpp.v201 import provisioning
from service.ocpp.v201.link import V201StationLink
from service.station import metering
from service.station.auth import ID_TOKEN_MAX_LENGTH, NO_AUTHORIZATION, is_valid_id_tag
from service.station.model import StopReason
from service.station.station import Station

log = logging.getLogger("evsed.ocpp.v201")

V201 = OcppVersion.V201
TriggerSource = Callable[[int | None], str]


def _status(status: str, reason: str | None = None, info: str = "") -> JsonDict:
    answer: JsonDict = {"status": status}
    if reason is not None:
        status_info: JsonDict = {"reasonCode": reason}
        if info:
            status_info["additionalInfo"] = info[:512]
        answer["statusInfo"] = status_info
    return answer


class V201Remote:
    def __init__(
        self,
        engine: Engine,
        station: Station,
        link: V201StationLink,
        *,
        request_reset: Callable[[str], None],
        spawn: Callable[[Awaitable[None]], object],
    ) -> None:
        self.engine = engine
        self.station = station
        self.link = link
        self.request_reset = request_reset
        self.spawn = spawn
        self.vendors: dict[str, VendorHandler] = {}
        #: Extra TriggerMessage targets (e.g. FirmwareStatusNotification): requested message
        #: -> function(evse id or None) returning the answer's status.
        self.trigger_sources: dict[str, TriggerSource] = {}
        #: Why a Reset must be Rejected now (a firmware update is installing), or None; the
        #: assembler sets it (service/charger.py) from the firmware manager's state.
        self.reset_refusal: Callable[[], str | None] = lambda: None
        self._pending_reset: tuple[str, int | None] | None = None
        station.on_change(self._check_pending_reset)
        for action, handler in (
            ("RequestStartTransaction", self.request_start),
            ("RequestStopTransaction", self.request_stop),
            ("UnlockConnector", self.unlock),
            ("Reset", self.reset),
            ("ChangeAvailability", self.change_availability),
            ("TriggerMessage", self.trigger_message),
            ("GetTransactionStatus", self.get_transaction_status),
            ("ClearCache", self.clear_cache),
            ("DataTransfer", self.data_transfer),
        ):
            engine.register(V201, action, handler)

    # ------------------------------------------------------------------ F01/F02 start
    def request_start(self, call: Call) -> JsonDict:
        p = call.payload
        token: dict[str, str] = {"idToken": p["idToken"]["idToken"], "type": p["idToken"]["type"]}
        remote_start_id: int = p["remoteStartId"]
        evse_id: int | None = p.get("evseId")
        if evse_id is not None and evse_id not in self.station.evses:
            return _status("Rejected", "UnknownEvse", f"no EVSE {evse_id}")
        free = token["type"] == NO_AUTHORIZATION and token["idToken"] == ""
        if not free and not is_valid_id_tag(token["idToken"], ID_TOKEN_MAX_LENGTH):
            return _status(
                "Rejected",
                "InvalidIdToken",
                f"idToken must be 1 to {ID_TOKEN_MAX_LENGTH} printable ASCII characters",
            )
        limit: float | None = None
        profile = p.get("chargingProfile")
        if profile is not None:
            if profile.get("chargingProfilePurpose") != "TxProfile" or "transactionId" in profile:
                return _status(
                    "Rejected", "InvalidProfile", "only a TxProfile without transactionId"
                )
            phases = self.station.evses[evse_id].phases if evse_id is not None else 3
            first_schedule = profile["chargingSchedule"][0]
            limit = tx_profile_limit_a(
                {"chargingProfilePurpose": "TxProfile", "chargingSchedule": first_schedule},
                phases,
            )
        for candidate in self._candidates(evse_id):
            self.link.expect_remote_start(candidate, remote_start_id, token)
            if self.station.remote_start(candidate, token["idToken"], limit, token["type"]):
                answer = _status("Accepted")
                tx = self.link.transaction_of(candidate)
                if tx is not None:
                    answer["transactionId"] = tx.transaction_id
                return answer
            self.link.cancel_remote_start(candidate)
        return _status("Rejected", "NoEvseAvailable" if evse_id is None else "EvseBusy")

    def _candidates(self, evse_id: int | None) -> list[int]:
        if evse_id is not None:
            return [evse_id]
        idle = [e for e in self.station.evses.values() if e.session is None]
        return [e.evse_id for e in sorted(idle, key=lambda e: (not e.pilot.plugged, e.evse_id))]

    # ------------------------------------------------------------------ F03 stop
    def request_stop(self, call: Call) -> JsonDict:
        tx = self.link.find_transaction(call.payload["transactionId"])
        if tx is None:
            return _status("Rejected", "UnknownTransaction")
        self.link.expect_stop(tx.evse_id, "RemoteStop", "Remote")
        if not self.station.stop_session(tx.evse_id, StopReason.REMOTE):
            # No session (the transaction started at EVConnected, or outlives its session).
            self.link.end_transaction(tx.evse_id, "RemoteStop", "Remote")
        return _status("Accepted")

    # ------------------------------------------------------------------ F05 unlock
    def unlock(self, call: Call) -> JsonDict:
        evse_id: int = call.payload["evseId"]
        connector: int = call.payload["connectorId"]
        if evse_id not in self.station.evses or connector not in self.link.connectors[evse_id]:
            return _status("UnknownConnector")
        session = self.station.session_of(evse_id)
        if session is not None and (session.authorized or session.started):
            return _status("OngoingAuthorizedTransaction")
        return _status(self.station.unlock(evse_id))

    # ------------------------------------------------------------------ B11/B12 reset
    def reset(self, call: Call) -> JsonDict:
        kind: str = call.payload["type"]
        evse_id: int | None = call.payload.get("evseId")
        if evse_id is not None and evse_id not in self.station.evses:
            return _status("Rejected", "UnknownEvse", f"no EVSE {evse_id}")
        refusal = self.reset_refusal()
        if refusal is not None:
            log.warning("Reset %s rejected: %s", kind, refusal)
            return _status("Rejected", "FwUpdateInProgress", refusal)
        if kind == "OnIdle" and self._busy(evse_id):
            self._pending_reset = (kind, evse_id)
            log.warning(
                "Reset OnIdle%s scheduled: waiting for the transaction(s) to end",
                "" if evse_id is None else f" of EVSE {evse_id}",
            )
            return _status("Scheduled")
        self._do_reset(kind, evse_id)
        return _status("Accepted")

    def _busy(self, evse_id: int | None) -> bool:
        if evse_id is None:
            return self.station.has_transaction() or bool(self.link.transactions())
        return (
            self.station.has_transaction(evse_id) or self.link.transaction_of(evse_id) is not None
        )

    def _do_reset(self, kind: str, evse_id: int | None) -> None:
        if evse_id is None:
            stopped = self.station.stop_all(StopReason.HARD_RESET)
            for tx in self.link.transactions():
                self.link.end_transaction(tx.evse_id, "ResetCommand", "ImmediateReset")
            log.warning("%s reset requested by the CSMS; %d transaction(s) stopped", kind, stopped)
            self.request_reset(kind)
            return
        self.station.stop_session(evse_id, StopReason.HARD_RESET)
        self.link.end_transaction(evse_id, "ResetCommand", "ImmediateReset")
        self.station.unlock(evse_id)
        for payload in self.link.status_payloads(evse_id, self.engine.timestamp()):
            self.engine.enqueue("StatusNotification", payload, transaction=False, version=V201)
        log.warning("%s reset of EVSE %d requested by the CSMS: done", kind, evse_id)

    def _check_pending_reset(self, evse_id: int) -> None:
        pending = self._pending_reset
        if pending is None or self._busy(pending[1]):
            return
        self._pending_reset = None
        self._do_reset(*pending)

    # ------------------------------------------------------------------ G03/G04 availability
    def change_availability(self, call: Call) -> JsonDict:
        operative = call.payload["operationalStatus"] == "Operative"
        evse = call.payload.get("evse")
        if evse is None or evse["id"] == 0:
            if evse is not None and evse.get("connectorId") is not None:
                return _status("Rejected", "UnknownConnector")
            return _status(self.station.set_availability(0, operative))
        evse_id: int = evse["id"]
        if evse_id not in self.station.evses:
            return _status("Rejected", "UnknownEvse", f"no EVSE {evse_id}")
        connector = evse.get("connectorId")
        connectors = self.link.connectors[evse_id]
        if connector is not None and connector not in connectors:
            return _status("Rejected", "UnknownConnector")
        if connector is not None and len(connectors) > 1:
            return _status(
                "Rejected",
                "UnsupportedRequest",
                "the connectors of an EVSE share its availability",
            )
        return _status(self.station.set_availability(evse_id, operative))

    # ------------------------------------------------------------------ F06 trigger
    def trigger_message(self, call: Call) -> JsonDict:
        requested: str = call.payload["requestedMessage"]
        evse = call.payload.get("evse")
        evse_id: int | None = None if evse is None else evse["id"]
        connector: int | None = None if evse is None else evse.get("connectorId")
        if evse_id is not None and evse_id not in self.station.evses:
            return _status("Rejected", "UnknownEvse")
        if (
            evse_id is not None
            and connector is not None
            and connector not in self.link.connectors[evse_id]
        ):
            return _status("Rejected", "UnknownConnector")
        if requested in ("BootNotification", "Heartbeat"):
            registered = self.engine.registration is Registration.ACCEPTED
            return _status(
                provisioning.trigger_registration(self.engine, lambda: registered, requested)
            )
        if requested == "StatusNotification":
            ids = [evse_id] if evse_id is not None else list(self.station.evses)
            for n in ids:
                for payload in self.link.status_payloads(
                    n, self.engine.timestamp(), connector_id=connector
                ):
                    self.engine.trigger(requested, payload)
            return _status("Accepted")
        if requested == "MeterValues":
            ids = [evse_id] if evse_id is not None else list(self.station.evses)
            payloads = [p for p in (self._meter_payload(n) for n in ids) if p is not None]
            if not payloads:
                return _status("Rejected", "NoMeterValues", "no meter reading yet")
            for payload in payloads:
                self.engine.trigger(requested, payload)
            return _status("Accepted")
        if requested == "TransactionEvent":
            ids = [evse_id] if evse_id is not None else list(self.station.evses)
            sent = [n for n in ids if self.link.trigger_event(n)]
            return _status("Accepted") if sent else _status("Rejected", "NoTransaction")
        source = self.trigger_sources.get(requested)
        if source is not None:
            return _status(source(evse_id))
        return _status("NotImplemented")

    def _meter_payload(self, evse_id: int) -> JsonDict | None:
        evse = self.station.evses[evse_id]
        if evse.reading is None:
            return None
        measurands = metering.parse_measurands(
            self.link.device_model.get("AlignedDataCtrlr", "Measurands") or ""
        ) or [metering.ENERGY_IMPORT]
        values = metering.sampled_values_v201(
            evse.reading,
            measurands,
            context="Trigger",
            offered_current_a=evse.offered_a,
            phases=evse.phases,
            signed=self.station.signs_readings(),
        )
        if not values:
            return None
        return {
            "evseId": evse_id,
            "meterValue": [metering.meter_value(self.engine.timestamp(), values)],
        }

    # ------------------------------------------------------------------ E14, C11
    def get_transaction_status(self, call: Call) -> JsonDict:
        transaction_id = call.payload.get("transactionId")
        if transaction_id is None:
            return {"messagesInQueue": self.engine.transaction_messages_queued()}
        return {
            "ongoingIndicator": self.link.find_transaction(transaction_id) is not None,
            "messagesInQueue": self.engine.transaction_messages_queued(transaction_id),
        }

    def clear_cache(self, call: Call) -> JsonDict:
        cleared = self.station.authorizer.clear_cache()
        return _status("Accepted" if cleared else "Rejected")

    # ------------------------------------------------------------------ P01/P02
    def data_transfer(self, call: Call) -> JsonDict | Deferred:
        vendor: str = call.payload["vendorId"]
        handler = self.vendors.get(vendor)
        if handler is None:
            return _status("UnknownVendorId")
        message_id: str = call.payload.get("messageId", "")
        raw: Any = call.payload.get("data")
        data = raw if isinstance(raw, str) else ("" if raw is None else json.dumps(raw))
        return vendor_answer(vendor, handler, message_id, data, self.spawn)
