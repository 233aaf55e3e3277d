"""OCPP 2.0.1 side of the station: StatusNotification, Authorize, TransactionEvent, MeterValues.

Implements `service.station.station.StationListener` (the version dispatcher,
service/ocpp/versions.py, makes it the station's listener while the connection speaks 2.0.1)
and follows the station through its change callback (`station_changed`).

A 2.0.1 transaction is this module's idea, laid over the station's session:

* The station's session *started* means the power path may close (authorized and plugged in).
  TxCtrlr.TxStartPoint decides which of four conditions opens the 2.0.1 transaction, the first
  one to become true: EVConnected (the cable), Authorized (a session is authorized),
  PowerPathClosed (the station started its transaction) or EnergyTransfer (the EVSE charges).
  TxCtrlr.TxStopPoint lists the conditions whose end ends it; a transaction with nothing left
  (no cable, no session: unplugged before any authorization, EVConnectionTimeOut without a
  cable) ends whatever TxStopPoint lists, as nothing later could end it. When the transaction
  ends on the cable (EVConnected) while the station still has a session
  (StopTxOnEVSideDisconnect false), or on the end of energy transfer (Ended ChargingStateChanged
  / StoppedByEV, chargingState EVConnected), the station's session is stopped as well (first,
  so that the Ended event carries its end meter values); when the station
  stops a session while the transaction outlives it (TxStopPoint EVConnected alone), an Updated
  event tells the CSMS and the Ended event follows at unplug with the stop reason kept.
* The transaction id is the charger's: a uuid4, unique across reboots, known at once (no
  placeholder, unlike 1.6) and written into the station's session as its `transaction_id`.
* Every TransactionEvent goes through the durable queue (tx_ref = transaction id) in the same
  SQLite commit as the transaction's state in the ``kv`` table (``ocpp201.tx.<evse>``: id,
  next seqNo, ...), so seqNo runs 0, 1, 2... without gaps or repeats across crashes, and an
  open transaction found there after a restart is ended (AbnormalCondition / PowerLoss).
* triggerReason: Started and Updated name the event that caused them (CablePluggedIn,
  Authorized, RemoteStart, ChargingStateChanged, MeterValuePeriodic, MeterValueClock,
  Trigger...); Ended maps the station's stop reason (see STOP_REASONS), or for a session that
  ended before its transaction started: EVConnectTimeout / Timeout after EVConnectionTimeOut,
  RemoteStop / Remote for a CSMS request, StopAuthorized / Local otherwise.
* `evse` goes in Started and in the first event after the EV connected (E01.FR.16).
* `offline` is set on events made while the CSMS is not reachable. The CSMS's verdict on an
  idToken in a TransactionEventResponse is handed to the station like a 1.6
  StartTransaction.conf (StopTxOnInvalidId / MaxEnergyOnInvalidId apply).
* Meter values: Started carries SampledDataCtrlr.TxStartedMeasurands (Transaction.Begin);
  the station's periodic samples (TxUpdatedInterval / TxUpdatedMeasurands, shared with 1.6)
  become Updated MeterValuePeriodic, clock-aligned ones Updated MeterValueClock (none while
  AlignedDataCtrlr.SendDuringIdle is true); Ended carries the station's transaction data
  (TxEndedMeasurands): Transaction.Begin and .End always, periodic samples only when
  SampledDataCtrlr.TxEndedInterval > 0, thinned to that spacing, clock-aligned ones only
  on multiples of AlignedDataCtrlr.TxEndedInterval. Outside a transaction the values go out
  as MeterValues. With SampledDataCtrlr.SignReadings and a meter that signs, the energy
  values carry the meter's signedMeterValue.
* Tokens: `id_token_max_length` (36) tells the station how long a token may be; a session's
  token type goes with its idToken (NoAuthorization with "" for free charging), and the
  token that stopped a transaction goes in the event that reports the stop (E07).
* E05: a de-authorized transaction that used up MaxEnergyOnInvalidId is suspended with
  triggerReason EnergyLimitReached.

StatusNotification: one per connector of an EVSE, status mapped to the 2.0.1 words
(Available, Occupied, Reserved, Unavailable, Faulted); a station change that maps to the same
word (Preparing -> Charging) is not repeated. The station-wide (1.6 connector 0) status has no
2.0.1 message: station availability shows on every connector.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from hal.interfaces import PilotState
from service.ocpp.engine import Engine, Outcome, Registration
from service.ocpp.rpc import JsonDict, OcppVersion
from service.ocpp.v201.dm_catalog import availability_state
from service.ocpp.v201.tx_data import (
    AUTHORIZED,
    CHARGING_STATES,
    DEFAULT_START,
    DEFAULT_STOP,
    ENERGY_TRANSFER,
    EV_CONNECTED,
    FINAL_STOPS,
    POWER_PATH_CLOSED,
    SAMPLE_TRIGGERS,
    STOP_REASONS,
    Transaction,
    ended_values,
    id_token_info,
    meter_value_v201,
    reading_context,
)
from service.station import metering
from service.station.auth import ID_TOKEN_MAX_LENGTH, NO_AUTHORIZATION, IdTagInfo
from service.station.model import Availability, ConnectorStatus, Session, StopReason
from service.station.station import Station
from service.store.db import Database
from service.store.overlay import KeyValueState

log = logging.getLogger("evsed.ocpp.v201")

V201 = OcppVersion.V201
TX_KEY_PREFIX = "ocpp201.tx."
DEFAULT_TOKEN_TYPE = "ISO14443"
EVENT_ID_KEY = "ocpp201.event_id"  # kv: the last NotifyEvent eventId


class DeviceSettings(Protocol):
    """What the link reads of the 2.0.1 device model (service.ocpp.v201.device_model)."""

    def get(
        self,
        component: str,
        variable: str,
        *,
        evse: int | None = None,
        connector: int | None = None,
    ) -> str | None: ...


@dataclass(frozen=True, slots=True)
class _Seen:
    """What the link last saw of an EVSE: the conditions that hold, and the session."""

    true: frozenset[str]
    session_id: str | None
    remote: bool
    deadline: float | None  # the session's EVConnectionTimeOut (monotonic)


@dataclass(frozen=True, slots=True)
class _RemoteStart:
    remote_start_id: int
    id_token: dict[str, str]


class V201StationLink:
    #: 2.0.1 IdTokenType.idToken: up to 36 characters.
    id_token_max_length = ID_TOKEN_MAX_LENGTH

    def __init__(
        self,
        engine: Engine,
        station: Station,
        db: Database,
        device_model: DeviceSettings,
        *,
        connectors: Mapping[int, Sequence[int]],
    ) -> None:
        self.engine = engine
        self.station = station
        self.db = db
        self.device_model = device_model
        self.connectors = {evse: tuple(ids) or (1,) for evse, ids in connectors.items()}
        self._kv = KeyValueState(db)
        self._txs: dict[int, Transaction] = {}
        self._stale: set[str] = set()  # transaction ids a previous run left open
        self._seen: dict[int, _Seen] = {}
        self._reported: dict[int, str] = {}
        self._remote: dict[int, _RemoteStart] = {}
        self._expected_stop: dict[int, tuple[str, str]] = {}
        self._token_types: dict[str, str] = {}
        self._lock_problem: dict[int, bool] = {}  # G05: ConnectorPlugRetentionLock.Problem
        self._load()
        engine.subscribe(self._on_engine_event)

    # ------------------------------------------------------------------ persistence
    def _load(self) -> None:
        rows = self.db.query_all(
            "SELECT key, value FROM kv WHERE key LIKE ?", (TX_KEY_PREFIX + "%",)
        )
        for row in rows:
            try:
                tx = Transaction.from_json(row["value"])
            except (ValueError, KeyError, TypeError) as exc:
                log.error("unreadable 2.0.1 transaction state %s dropped: %s", row["key"], exc)
                self._kv.delete(row["key"])
                continue
            self._txs[tx.evse_id] = tx
            self._stale.add(tx.transaction_id)

    def _save(self, tx: Transaction) -> None:
        self._kv.set(f"{TX_KEY_PREFIX}{tx.evse_id}", tx.to_json())

    def _forget(self, tx: Transaction) -> None:
        self._kv.delete(f"{TX_KEY_PREFIX}{tx.evse_id}")
        if self._txs.get(tx.evse_id) is tx:
            del self._txs[tx.evse_id]
        self._stale.discard(tx.transaction_id)
        self._expected_stop.pop(tx.evse_id, None)

    # ------------------------------------------------------------------ settings
    def _points(self, variable: str, default: frozenset[str]) -> frozenset[str]:
        value = self.device_model.get("TxCtrlr", variable)
        if value is None:
            return default
        return frozenset(item for item in value.split(",") if item)

    def start_points(self) -> frozenset[str]:
        return self._points("TxStartPoint", DEFAULT_START)

    def stop_points(self) -> frozenset[str]:
        return self._points("TxStopPoint", DEFAULT_STOP)

    def _measurands(self, component: str, variable: str) -> list[str]:
        return metering.parse_measurands(self.device_model.get(component, variable) or "")

    def _sign_readings(self) -> bool:
        """SampledDataCtrlr.SignReadings: energy values carry the meter's signature."""
        return self.device_model.get("SampledDataCtrlr", "SignReadings") == "true"

    def _int_setting(self, component: str, variable: str) -> int:
        value = self.device_model.get(component, variable)
        try:
            return int(value) if value else 0
        except ValueError:
            return 0

    # ------------------------------------------------------------------ queries for remote.py
    def transaction_of(self, evse_id: int) -> Transaction | None:
        return self._txs.get(evse_id)

    def find_transaction(self, transaction_id: str) -> Transaction | None:
        for tx in self._txs.values():
            if tx.transaction_id == transaction_id:
                return tx
        return None

    def transactions(self) -> list[Transaction]:
        return [self._txs[evse_id] for evse_id in sorted(self._txs)]

    def remember_token_type(self, id_token: str, token_type: str) -> None:
        self._token_types[id_token] = token_type

    def expect_remote_start(
        self, evse_id: int, remote_start_id: int, id_token: dict[str, str]
    ) -> None:
        """RequestStartTransaction is about to start a session on `evse_id`."""
        self._remote[evse_id] = _RemoteStart(remote_start_id, dict(id_token))
        self.remember_token_type(id_token["idToken"], id_token["type"])

    def cancel_remote_start(self, evse_id: int) -> None:
        self._remote.pop(evse_id, None)

    def expect_stop(self, evse_id: int, trigger: str, reason: str) -> None:
        """The next end of the EVSE's session or transaction has this trigger and reason."""
        self._expected_stop[evse_id] = (trigger, reason)

    def end_transaction(self, evse_id: int, trigger: str, reason: str) -> bool:
        """End the EVSE's transaction that has no session left (TxStopPoint EVConnected)."""
        tx = self._txs.get(evse_id)
        if tx is None:
            return False
        with self.db.transaction():
            self._ended(tx, trigger, reason, tx.ended_values)
        self._seen.pop(evse_id, None)
        return True

    # ------------------------------------------------------------------ StationListener
    @property
    def online(self) -> bool:
        return self.engine.connected and self.engine.registration is Registration.ACCEPTED

    def activated(self) -> None:
        """The dispatcher made this link the station's listener: look afresh."""
        self._seen.clear()
        self._reported.clear()

    def status_changed(
        self, evse_id: int, status: ConnectorStatus, error_code: str, info: str, timestamp: str
    ) -> None:
        if evse_id == 0 or evse_id not in self.connectors:
            return
        lock_problem = error_code == "ConnectorLockFailure"
        if lock_problem != self._lock_problem.get(evse_id, False):
            self._lock_problem[evse_id] = lock_problem
            self._lock_event(evse_id, lock_problem, info, timestamp)
        state = availability_state(status)
        if self._reported.get(evse_id) == state:
            return
        self._reported[evse_id] = state
        for payload in self.status_payloads(evse_id, timestamp, state=state):
            self.engine.enqueue("StatusNotification", payload, transaction=False, version=V201)

    def _lock_event(self, evse_id: int, problem: bool, info: str, timestamp: str) -> None:
        """G05: the connector lock failed (or works again). The station does not charge while
        the fault lasts (the charging controller's rules); the CSMS learns it from a
        NotifyEvent on ConnectorPlugRetentionLock.Problem, queued like a status."""
        event_id = int(self._kv.get(EVENT_ID_KEY) or "0") % 2**31 + 1
        self._kv.set(EVENT_ID_KEY, str(event_id))
        event: JsonDict = {
            "eventId": event_id,
            "timestamp": timestamp,
            "trigger": "Delta",
            "actualValue": "true" if problem else "false",
            "component": {
                "name": "ConnectorPlugRetentionLock",
                "evse": {"id": evse_id, "connectorId": self.connectors[evse_id][0]},
            },
            "variable": {"name": "Problem"},
            "eventNotificationType": "HardWiredNotification",
        }
        if problem:
            event["techInfo"] = (info or "connector lock failure")[:500]
        else:
            event["cleared"] = True
        payload: JsonDict = {"generatedAt": timestamp, "seqNo": 0, "eventData": [event]}
        self.engine.enqueue("NotifyEvent", payload, transaction=False, version=V201)

    def status_payloads(
        self,
        evse_id: int,
        timestamp: str,
        *,
        connector_id: int | None = None,
        state: str | None = None,
    ) -> list[JsonDict]:
        """StatusNotification payloads of the EVSE's connectors (or of one)."""
        if state is None:
            state = availability_state(self.station.status_of(evse_id)[0])
        ids = self.connectors[evse_id] if connector_id is None else (connector_id,)
        return [
            {
                "timestamp": timestamp,
                "connectorStatus": state,
                "evseId": evse_id,
                "connectorId": connector,
            }
            for connector in ids
        ]

    def report_all_statuses(self) -> None:
        """Queue a StatusNotification for every connector, changed or not (back online after
        more than OCPPCommCtrlr.OfflineThreshold: service/ocpp/v201/network.py)."""
        timestamp = self.engine.timestamp()
        for evse_id in self.connectors:
            if evse_id not in self.station.evses:
                continue
            state = availability_state(self.station.status_of(evse_id)[0])
            self._reported[evse_id] = state
            for payload in self.status_payloads(evse_id, timestamp, state=state):
                self.engine.enqueue("StatusNotification", payload, transaction=False, version=V201)

    def id_token(self, id_tag: str, token_type: str | None = None) -> dict[str, str]:
        """The IdTokenType of a token: its own type when the station knows it, else the one a
        CSMS request gave it, else the reader's (ISO14443)."""
        if token_type == NO_AUTHORIZATION:
            return {"idToken": "", "type": NO_AUTHORIZATION}
        kind = token_type or self._token_types.get(id_tag, DEFAULT_TOKEN_TYPE)
        return {"idToken": id_tag, "type": kind}

    def authorize(
        self,
        id_tag: str,
        done: Callable[[IdTagInfo | None], None],
        *,
        token_type: str | None = None,
    ) -> bool:
        def finished(outcome: Outcome) -> None:
            if outcome.payload is None:
                log.warning("Authorize for %s failed: %s", id_tag, outcome.error_code)
                done(None)
                return
            try:
                info = id_token_info(outcome.payload["idTokenInfo"])
            except ValueError as exc:
                log.warning("Authorize for %s: unusable answer: %s", id_tag, exc)
                done(None)
                return
            done(info)

        token = self.id_token(id_tag, token_type)
        return self.engine.request("Authorize", {"idToken": token}, finished)

    def transaction_started(self, session: Session) -> None:
        # Called before the station applies power: the state is EVConnected until the
        # change that follows says what the EV does.
        self._sync(session.evse_id, timestamp=session.start_timestamp or None, starting=True)

    def transaction_stopped(
        self,
        session: Session,
        reason: StopReason,
        meter_stop_wh: float,
        timestamp: str,
        transaction_data: list[dict[str, Any]],
    ) -> None:
        tx = self._tx_of_session(session)
        evse = self.station.evses.get(session.evse_id)
        if tx is None:
            log.info(
                "session %s stopped (%s) without a 2.0.1 transaction to end",
                session.session_id,
                reason,
            )
            if evse is not None and session.evse_id in self._seen:
                self._seen[session.evse_id] = self._observe(session.evse_id)
            return
        trigger, stopped = STOP_REASONS.get(reason, ("AbnormalCondition", "Other"))
        expected = self._expected_stop.pop(tx.evse_id, None)
        if expected is not None and reason in (
            StopReason.REMOTE,
            StopReason.LOCAL,
            StopReason.OTHER,
            StopReason.EV_DISCONNECTED,
        ):
            trigger, stopped = expected
        values = ended_values(
            transaction_data,
            sampled_interval=self._int_setting("SampledDataCtrlr", "TxEndedInterval"),
            aligned_interval=self._int_setting("AlignedDataCtrlr", "TxEndedInterval"),
            signed=self._sign_readings(),
            ended_measurands=self._measurands("SampledDataCtrlr", "TxEndedMeasurands"),
            meter_stop_wh=meter_stop_wh,
            timestamp=timestamp,
        )
        # E07 / C09: the token that stopped it (the same, or another of its group) goes in the
        # event that tells the stop.
        stop_token = (
            None
            if session.stop_id_tag is None
            else self.id_token(session.stop_id_tag, session.stop_id_token_type)
        )
        cable = evse is not None and self._cable(evse)
        outlives = (
            self.stop_points() <= {EV_CONNECTED}
            and cable
            and reason not in FINAL_STOPS
            and tx.transaction_id not in self._stale
        )
        if outlives:
            # TxStopPoint EVConnected alone: the transaction ends when the cable goes.
            tx.stopped_reason = stopped
            tx.ended_values = values
            self._event(
                tx,
                "Updated",
                trigger,
                timestamp=timestamp,
                charging_state="EVConnected",
                id_token=stop_token,
            )
        else:
            self._ended(tx, trigger, stopped, values, timestamp=timestamp, id_token=stop_token)
        if evse is not None and session.evse_id in self._seen:
            self._seen[session.evse_id] = self._observe(session.evse_id)

    def meter_values(
        self, evse_id: int, session: Session | None, meter_value: dict[str, Any]
    ) -> None:
        value = meter_value_v201(meter_value, signed=self._sign_readings())
        if value is None:
            return
        context = reading_context(meter_value)
        tx = self._txs.get(evse_id)
        if tx is not None:
            if (
                context == "Sample.Clock"
                and self.device_model.get("AlignedDataCtrlr", "SendDuringIdle") == "true"
            ):
                return
            trigger = SAMPLE_TRIGGERS.get(context, "Trigger")
            self._event(tx, "Updated", trigger, meter=[value])
            return
        self.engine.enqueue(
            "MeterValues",
            {"evseId": evse_id, "meterValue": [value]},
            transaction=False,
            version=V201,
        )

    # ------------------------------------------------------------------ start-up
    def recover(self) -> None:
        """End what a previous run left open (after `Station.start` ended its sessions)."""
        for tx in list(self._txs.values()):
            if tx.transaction_id not in self._stale:
                continue
            log.warning(
                "2.0.1 transaction %s on EVSE %d was open at the last stop: ending it (PowerLoss)",
                tx.transaction_id,
                tx.evse_id,
            )
            with self.db.transaction():
                self._ended(
                    tx,
                    "AbnormalCondition",
                    tx.stopped_reason or "PowerLoss",
                    tx.ended_values,
                    timestamp=tx.last_time or None,
                )

    # ------------------------------------------------------------------ following the station
    def station_changed(self, evse_id: int) -> None:
        """The station's change callback (forwarded by the dispatcher while 2.0.1 is active)."""
        if evse_id in self.station.evses:
            self._sync(evse_id)

    def _cable(self, evse: Any) -> bool:
        pilot: PilotState = evse.pilot
        if pilot in (PilotState.E, PilotState.F):
            return bool(evse.ev_connected)  # a pilot fault says nothing about the cable
        return pilot.plugged

    def _observe(self, evse_id: int) -> _Seen:
        evse = self.station.evses[evse_id]
        true: set[str] = set()
        if self._cable(evse):
            true.add(EV_CONNECTED)
        session = evse.session
        if session is not None and session.authorized:
            true.add(AUTHORIZED)
            if session.started:
                true.add(POWER_PATH_CLOSED)
                if self.station.status_of(evse_id)[0] is ConnectorStatus.CHARGING:
                    true.add(ENERGY_TRANSFER)
        return _Seen(
            frozenset(true),
            None if session is None else session.session_id,
            session is not None and session.remote,
            None if session is None else session.authorize_deadline,
        )

    def _charging_state(self, evse_id: int, seen: _Seen) -> str:
        if POWER_PATH_CLOSED in seen.true:
            status = self.station.status_of(evse_id)[0]
            if EV_CONNECTED in seen.true or status is not ConnectorStatus.SUSPENDED_EV:
                return CHARGING_STATES.get(status, "EVConnected")
            return "Idle"
        return "EVConnected" if EV_CONNECTED in seen.true else "Idle"

    def _sync(self, evse_id: int, *, timestamp: str | None = None, starting: bool = False) -> None:
        now = self._observe(evse_id)
        before = self._seen.get(evse_id)
        self._seen[evse_id] = now
        if before is None:
            before = _Seen(frozenset(), None, False, None)
            if not (self._txs.get(evse_id) is None and now.session_id is not None):
                # First look (start-up, or this link just became active): take the state as
                # it is. A session already here is the one being started right now.
                self._attach(evse_id)
                return
        rising = now.true - before.true
        falling = before.true - now.true
        if before.session_id is not None and before.session_id != now.session_id:
            falling |= before.true & {AUTHORIZED, POWER_PATH_CLOSED, ENERGY_TRANSFER}
            rising |= now.true & {AUTHORIZED, POWER_PATH_CLOSED, ENERGY_TRANSFER}
        tx = self._txs.get(evse_id)
        if tx is None:
            if rising & self.start_points():
                self._begin(evse_id, now, rising, timestamp)
            return
        with self.db.transaction():
            self._follow(tx, before, now, rising, falling, timestamp, starting)

    def _follow(
        self,
        tx: Transaction,
        before: _Seen,
        now: _Seen,
        rising: frozenset[str],
        falling: frozenset[str],
        timestamp: str | None,
        starting: bool,
    ) -> None:
        evse_id = tx.evse_id
        session = self.station.evses[evse_id].session
        ending = falling & self.stop_points()
        # Nothing holds any more (no cable, no session): whatever TxStopPoint lists, no later
        # change could end the transaction, so it ends now (e.g. TxStartPoint EVConnected,
        # TxStopPoint Authorized, unplugged before any authorization).
        nothing_left = not now.true and session is None
        if AUTHORIZED in falling and session is None and before.session_id == tx.session_id:
            # The session ended before (or without) a station transaction: no
            # transaction_stopped told why.
            why = self._cancel_reason(evse_id, before)
            if (
                AUTHORIZED in ending
                or ENERGY_TRANSFER in ending
                or POWER_PATH_CLOSED in ending
                or nothing_left
            ):
                self._ended(tx, why[0], why[1], tx.ended_values, timestamp=timestamp)
                return
            tx.stopped_reason = why[1]
            self._event(
                tx,
                "Updated",
                why[0],
                timestamp=timestamp,
                charging_state=self._charging_state(evse_id, now),
            )
            return
        cable_gone = EV_CONNECTED in ending or (EV_CONNECTED in falling and nothing_left)
        if cable_gone or (ENERGY_TRANSFER in ending and session is not None):
            why = (
                ("EVCommunicationLost", tx.stopped_reason or "EVDisconnected")
                if cable_gone
                else ("ChargingStateChanged", "StoppedByEV")
            )
            ours = session is not None and session.session_id == tx.session_id
            stop = StopReason.EV_DISCONNECTED if EV_CONNECTED in ending else StopReason.OTHER
            if ours and session is not None and session.started:
                # The transaction is over: so is the station's session (its power path). The
                # station stops it first, so the Ended event (transaction_stopped, with the
                # reason expected here) carries its end meter values.
                self._expected_stop[evse_id] = why
                self.station.stop_session(evse_id, stop)
            if self._txs.get(evse_id) is tx:
                self._expected_stop.pop(evse_id, None)
                self._ended(tx, why[0], why[1], tx.ended_values, timestamp=timestamp)
                if ours and self.station.evses[evse_id].session is session:
                    self.station.stop_session(evse_id, stop)  # an authorization not used yet
            return
        self._attach(evse_id)
        trigger: str | None = None
        if EV_CONNECTED in rising:
            trigger = "CablePluggedIn"
        if AUTHORIZED in rising and session is not None:
            trigger = "RemoteStart" if session.remote else "Authorized"
        if EV_CONNECTED in falling:
            trigger = "EVCommunicationLost"
        state = "EVConnected" if starting else self._charging_state(evse_id, now)
        if trigger is None and state != tx.charging_state:
            trigger = "ChargingStateChanged"
            if state == "SuspendedEVSE" and self.station.energy_limit_reached(evse_id):
                trigger = "EnergyLimitReached"  # E05: MaxEnergyOnInvalidId used up
        if trigger is not None:
            self._event(tx, "Updated", trigger, timestamp=timestamp, charging_state=state)

    def _cancel_reason(self, evse_id: int, before: _Seen) -> tuple[str, str]:
        expected = self._expected_stop.pop(evse_id, None)
        if expected is not None:
            return expected
        if before.deadline is not None and self.station.clock.monotonic() >= before.deadline:
            return ("EVConnectTimeout", "Timeout")
        evse = self.station.evses[evse_id]
        if (
            evse.availability is Availability.INOPERATIVE
            or self.station.station_availability is Availability.INOPERATIVE
        ):
            return ("AbnormalCondition", "Other")
        return ("StopAuthorized", "Local")

    def _tx_of_session(self, session: Session) -> Transaction | None:
        for tx in self._txs.values():
            if tx.session_id == session.session_id:
                return tx
        waiting = self._txs.get(session.evse_id)
        if waiting is not None and waiting.session_id is None:
            return waiting
        return None

    def _attach(self, evse_id: int) -> None:
        """Tie the EVSE's session to its transaction: the session carries the 2.0.1 id."""
        tx = self._txs.get(evse_id)
        session = self.station.evses[evse_id].session
        if tx is None or session is None or session.session_id == tx.session_id:
            return
        if tx.session_id is not None and tx.stopped_reason is None:
            return
        if tx.stopped_reason is not None:
            # A new authorization while the transaction waited for the unplug (TxStopPoint
            # EVConnected alone): the transaction goes on with it.
            tx.stopped_reason = None
            tx.id_token = None
            tx.id_token_sent = False
        tx.session_id = session.session_id
        session.transaction_id = tx.transaction_id
        self.station.sessions.save(session)
        self._save(tx)

    # ------------------------------------------------------------------ events
    def _begin(
        self, evse_id: int, now: _Seen, rising: frozenset[str], timestamp: str | None
    ) -> None:
        evse = self.station.evses[evse_id]
        session = evse.session
        if AUTHORIZED in rising and session is not None:
            trigger = "RemoteStart" if session.remote else "Authorized"
        elif EV_CONNECTED in rising:
            trigger = "CablePluggedIn"
        else:
            trigger = "ChargingStateChanged"
        tx = Transaction(transaction_id=str(uuid.uuid4()), evse_id=evse_id)
        if ENERGY_TRANSFER in now.true:
            state = "Charging"
        else:
            state = "EVConnected" if EV_CONNECTED in now.true else "Idle"
        meter: list[dict[str, Any]] = []
        measurands = self._measurands("SampledDataCtrlr", "TxStartedMeasurands")
        if evse.reading is not None and measurands:
            values = metering.sampled_values_v201(
                evse.reading,
                measurands,
                context="Transaction.Begin",
                offered_current_a=evse.offered_a,
                phases=evse.phases,
                signed=self._sign_readings(),
            )
            if values:
                meter.append(metering.meter_value(timestamp or self.engine.timestamp(), values))
        with self.db.transaction():
            self._txs[evse_id] = tx
            self._attach(evse_id)
            log.info(
                "2.0.1 transaction %s started on EVSE %d (%s)", tx.transaction_id, evse_id, trigger
            )
            self._event(
                tx, "Started", trigger, timestamp=timestamp, charging_state=state, meter=meter
            )

    def _ended(
        self,
        tx: Transaction,
        trigger: str,
        reason: str,
        values: list[dict[str, Any]],
        *,
        timestamp: str | None = None,
        id_token: dict[str, str] | None = None,
    ) -> None:
        log.info(
            "2.0.1 transaction %s on EVSE %d ended (%s, %s)",
            tx.transaction_id,
            tx.evse_id,
            trigger,
            reason,
        )
        state: str | None = None
        if trigger == "ChargingStateChanged":
            # E06 (TxStopPoint EnergyTransfer): the state the EV left the transaction in.
            evse = self.station.evses.get(tx.evse_id)
            state = "EVConnected" if evse is not None and self._cable(evse) else "Idle"
        self._event(
            tx,
            "Ended",
            trigger,
            timestamp=timestamp,
            charging_state=state,
            stopped_reason=reason,
            meter=values,
            id_token=id_token,
        )

    def _event(
        self,
        tx: Transaction,
        event_type: str,
        trigger: str,
        *,
        timestamp: str | None = None,
        charging_state: str | None = None,
        stopped_reason: str | None = None,
        meter: list[dict[str, Any]] | None = None,
        id_token: dict[str, str] | None = None,
    ) -> None:
        """Queue one TransactionEvent and persist the transaction with it (one commit).
        `id_token`: a token this event reports besides the transaction's own (the stopping
        one)."""
        evse = self.station.evses.get(tx.evse_id)
        info: dict[str, Any] = {"transactionId": tx.transaction_id}
        if charging_state is not None and (
            event_type == "Started" or charging_state != tx.charging_state
        ):
            info["chargingState"] = charging_state
            tx.charging_state = charging_state
        if stopped_reason is not None:
            info["stoppedReason"] = stopped_reason
        session = evse.session if evse is not None else None
        if session is not None and session.session_id == tx.session_id and session.authorized:
            if tx.id_token is None and (
                session.id_tag or session.id_token_type == NO_AUTHORIZATION
            ):
                tx.id_token = self.id_token(session.id_tag or "", session.id_token_type)
            pending = self._remote.get(tx.evse_id)
            if session.remote and pending is not None and tx.remote_start_id is None:
                tx.remote_start_id = pending.remote_start_id
                tx.id_token = dict(pending.id_token)
                del self._remote[tx.evse_id]
        if tx.remote_start_id is not None and not tx.remote_start_sent:
            info["remoteStartId"] = tx.remote_start_id
            tx.remote_start_sent = True
        when = timestamp or self.engine.timestamp()
        payload: JsonDict = {
            "eventType": event_type,
            "timestamp": when,
            "triggerReason": trigger,
            "seqNo": tx.seq_no,
            "transactionInfo": info,
        }
        # E01.FR.16: `evse` in the first event after the EV connected (and in Started, so the
        # CSMS always knows where the transaction is).
        plugged = evse is not None and self._cable(evse)
        if event_type == "Started" or (plugged and not tx.evse_sent_plugged):
            connector = self.connectors.get(tx.evse_id, (1,))[0]
            payload["evse"] = {"id": tx.evse_id, "connectorId": connector}
            tx.evse_sent_plugged = plugged
        if not self.online:
            payload["offline"] = True
        if tx.id_token is not None and not tx.id_token_sent:
            payload["idToken"] = dict(tx.id_token)
            tx.id_token_sent = True
        elif id_token is not None:
            payload["idToken"] = dict(id_token)
        if meter:
            payload["meterValue"] = meter
        tx.seq_no += 1
        tx.last_time = when
        with self.db.transaction():
            self.engine.enqueue(
                "TransactionEvent",
                payload,
                transaction=True,
                tx_ref=tx.transaction_id,
                version=V201,
            )
            if event_type == "Ended":
                self._forget(tx)
            else:
                self._save(tx)

    def trigger_event(self, evse_id: int) -> bool:
        """TriggerMessage(TransactionEvent): an Updated event with the values now."""
        tx = self._txs.get(evse_id)
        if tx is None:
            return False
        evse = self.station.evses[evse_id]
        meter: list[dict[str, Any]] = []
        measurands = self._measurands("SampledDataCtrlr", "TxUpdatedMeasurands")
        if evse.reading is not None and measurands:
            values = metering.sampled_values_v201(
                evse.reading,
                measurands,
                context="Trigger",
                offered_current_a=evse.offered_a,
                phases=evse.phases,
                signed=self._sign_readings(),
            )
            if values:
                meter.append(metering.meter_value(self.engine.timestamp(), values))
        seen = self._seen.get(evse_id) or self._observe(evse_id)
        self._event(
            tx,
            "Updated",
            "Trigger",
            charging_state=self._charging_state(evse_id, seen),
            meter=meter,
        )
        return True

    # ------------------------------------------------------------------ CSMS verdicts
    def _on_engine_event(self, event: str, data: Mapping[str, Any]) -> None:
        if event != "queued-result" or data.get("action") != "TransactionEvent":
            return
        request = data["request"]
        raw = data["payload"].get("idTokenInfo")
        token = request.get("idToken")
        if not isinstance(raw, dict) or not isinstance(token, dict):
            return
        try:
            info = id_token_info(raw)
        except ValueError as exc:
            log.warning("TransactionEvent answer: unusable idTokenInfo: %s", exc)
            return
        tx = self.find_transaction(str(request["transactionInfo"]["transactionId"]))
        session_id = tx.session_id if tx is not None else None
        evse = self.station.evses.get(tx.evse_id) if tx is not None else None
        if (
            tx is not None
            and session_id is not None
            and evse is not None
            and evse.session is not None
            and evse.session.session_id == session_id
        ):
            self.station.transaction_confirmed(session_id, tx.transaction_id, info)
        else:
            self.station.authorizer.record(
                str(token.get("idToken", "")), info, self.station.time.now() or 0.0
            )
