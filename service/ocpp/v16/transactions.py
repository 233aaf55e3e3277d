"""OCPP 1.6 side of the station: StatusNotification, Authorize, Start/StopTransaction, MeterValues.

Implements `service.station.station.StationListener`. Transaction messages go through the
durable queue with the session id as `tx_ref`; a StopTransaction or MeterValues whose
StartTransaction has not been answered yet carries the placeholder transactionId (None) that
the queue replaces with the CSMS's id. StartTransaction.conf and StopTransaction.conf verdicts
on the idTag flow back into the station and the authorization cache.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from service.ocpp.engine import Engine, Outcome, Registration
from service.station.auth import ID_TAG_MAX_LENGTH, NO_AUTHORIZATION, IdTagInfo
from service.station.model import ConnectorStatus, Session, StopReason
from service.station.station import Station

log = logging.getLogger("evsed.ocpp.v16")


class V16StationLink:
    #: 1.6 idTag is CiString20 (the station refuses longer tokens while 1.6 speaks).
    id_token_max_length = ID_TAG_MAX_LENGTH

    def __init__(self, engine: Engine, station: Station) -> None:
        self.engine = engine
        self.station = station
        engine.subscribe(self._on_engine_event)

    # ------------------------------------------------------------------ StationListener
    @property
    def online(self) -> bool:
        return self.engine.connected and self.engine.registration is Registration.ACCEPTED

    def status_changed(
        self, evse_id: int, status: ConnectorStatus, error_code: str, info: str, timestamp: str
    ) -> None:
        payload: dict[str, Any] = {
            "connectorId": evse_id,
            "errorCode": error_code,
            "status": status.value,
            "timestamp": timestamp,
        }
        if info:
            payload["info"] = info[:50]
        self.engine.enqueue("StatusNotification", payload, transaction=False)

    def authorize(
        self,
        id_tag: str,
        done: Callable[[IdTagInfo | None], None],
        *,
        token_type: str | None = None,  # no token types in 1.6
    ) -> bool:
        def finished(outcome: Outcome) -> None:
            if outcome.payload is None:
                log.warning("Authorize for %s failed: %s", id_tag, outcome.error_code)
                done(None)
            else:
                done(IdTagInfo.from_ocpp16(outcome.payload["idTagInfo"]))

        return self.engine.request("Authorize", {"idTag": id_tag}, finished)

    def _id_tag(self, id_tag: str | None, token_type: str | None) -> str:
        """The 1.6 idTag of a token: a session nobody authorized (free charging, start button)
        goes out under the FreeVendIdTag key's value, as 1.6 has no token-less transaction."""
        if token_type == NO_AUTHORIZATION or not id_tag:
            value = self.station.cfg.get("FreeVendIdTag")
            return value if isinstance(value, str) and value else "FreeCharging"
        return id_tag

    def transaction_started(self, session: Session) -> None:
        self.engine.enqueue(
            "StartTransaction",
            {
                "connectorId": session.evse_id,
                "idTag": self._id_tag(session.id_tag, session.id_token_type),
                "meterStart": round(session.meter_start_wh),
                "timestamp": session.start_timestamp,
            },
            transaction=True,
            tx_ref=session.session_id,
        )

    def transaction_stopped(
        self,
        session: Session,
        reason: StopReason,
        meter_stop_wh: float,
        timestamp: str,
        transaction_data: list[dict[str, Any]],
    ) -> None:
        payload: dict[str, Any] = {
            "transactionId": session.transaction_id
            if isinstance(session.transaction_id, int)
            else None,
            "meterStop": round(meter_stop_wh),
            "timestamp": timestamp,
            "reason": reason.value,
        }
        if session.stop_id_tag is not None:
            # The token that stopped it (the same, or another of its group).
            payload["idTag"] = self._id_tag(session.stop_id_tag, session.stop_id_token_type)
        elif session.id_tag or session.id_token_type == NO_AUTHORIZATION:
            payload["idTag"] = self._id_tag(session.id_tag, session.id_token_type)
        if transaction_data:
            payload["transactionData"] = transaction_data
        self.engine.enqueue("StopTransaction", payload, transaction=True, tx_ref=session.session_id)

    def meter_values(
        self, evse_id: int, session: Session | None, meter_value: dict[str, Any]
    ) -> None:
        payload: dict[str, Any] = {"connectorId": evse_id, "meterValue": [meter_value]}
        if session is None:
            self.engine.enqueue("MeterValues", payload, transaction=False)
            return
        payload["transactionId"] = (
            session.transaction_id if isinstance(session.transaction_id, int) else None
        )
        self.engine.enqueue("MeterValues", payload, transaction=True, tx_ref=session.session_id)

    # ------------------------------------------------------------------ CSMS verdicts
    def _on_engine_event(self, event: str, data: Mapping[str, Any]) -> None:
        if event != "queued-result":
            return
        payload = data["payload"]
        tx_ref = data.get("tx_ref")
        if data["action"] == "StartTransaction" and tx_ref:
            info = IdTagInfo.from_ocpp16(payload["idTagInfo"])
            self.station.transaction_confirmed(tx_ref, payload["transactionId"], info)
        elif data["action"] == "StopTransaction" and "idTagInfo" in payload:
            id_tag = data["request"].get("idTag")
            if id_tag:
                self.station.authorizer.record(
                    id_tag,
                    IdTagInfo.from_ocpp16(payload["idTagInfo"]),
                    self.station.time.now() or 0.0,
                )
