"""The station model: every EVSE's state, its sessions and transactions, and the safety rules.

Version-neutral and sans-I/O like the OCPP engine: hardware events, meter readings, tokens and
CSMS decisions come in as method calls; the protocol adapter hears about statuses,
transactions and meter values through `StationListener`; timers are `next_deadline` / `tick`.
The hardware's non-blocking setters (contactor, PWM offer, lock) are called directly.

Safety sits here, below OCPP and D-Bus: the contactor closes only for a started, authorized
transaction with the EV in state C or D, no fault, and an offer of at least 6 A; it opens at
once on unplug, fault, stop or de-authorization. No caller can override that.

Mapping to OCPP 1.6: connector N is EVSE N (an EVSE's connectors share one pilot and meter and
are reported as one 1.6 connector).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from hal.interfaces import EvseHardware, MeterReading, PilotState
from service.journal import LogEvent, log_fields
from service.station import metering
from service.station.api import InvalidArgument, InvalidState, UnknownEvse
from service.station.auth import (
    ID_TAG_MAX_LENGTH,
    NO_AUTHORIZATION,
    TOKEN_TYPES,
    Authorizer,
    Decision,
    IdTagInfo,
    is_valid_id_tag,
)
from service.station.clock import Clock, TimeKeeper
from service.station.configuration import Configuration
from service.station.controller import MIN_OFFER_A, ChargingController, PowerInputs
from service.station.model import (
    ERROR_CODES,
    Availability,
    ConnectorStatus,
    Session,
    StopReason,
)
from service.station.sessions import SessionStore

log = logging.getLogger("evsed.station")


class StationListener(Protocol):
    """What the station tells the protocol adapter (service/ocpp/v16/... today)."""

    @property
    def online(self) -> bool: ...

    def status_changed(
        self, evse_id: int, status: ConnectorStatus, error_code: str, info: str, timestamp: str
    ) -> None: ...

    def authorize(
        self,
        id_tag: str,
        done: Callable[[IdTagInfo | None], None],
        *,
        token_type: str | None = None,
    ) -> bool:
        """Ask the CSMS; `done(None)` on failure/timeout. False when it cannot be asked.
        `token_type`: the token's 2.0.1 IdTokenEnumType (None: the reader's)."""
        ...

    def transaction_started(self, session: Session) -> None: ...

    def transaction_stopped(
        self,
        session: Session,
        reason: StopReason,
        meter_stop_wh: float,
        timestamp: str,
        transaction_data: list[dict[str, Any]],
    ) -> None: ...

    def meter_values(
        self, evse_id: int, session: Session | None, meter_value: dict[str, Any]
    ) -> None: ...


@dataclass(slots=True)
class _Evse:
    evse_id: int
    hardware: EvseHardware
    max_current_a: float
    phases: int
    pilot: PilotState = PilotState.A
    reading: MeterReading | None = None
    availability: Availability = Availability.OPERATIVE
    scheduled_availability: Availability | None = None
    # Active faults by source ("pilot", "meter", "contactor", "reader", "safety", "station"
    # for operator/test-raised ones): the connector is Faulted while any is active.
    faults: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def fault(self) -> str:
        for code, _info in self.faults.values():
            return code
        return "NoError"

    @property
    def fault_info(self) -> str:
        for _code, info in self.faults.values():
            return info
        return ""

    session: Session | None = None
    finishing: bool = False
    ev_connected: bool = False  # last known cable state (E/F do not tell)
    offered_a: float = 0.0
    reported: tuple[ConnectorStatus, str] | None = None
    candidate: tuple[ConnectorStatus, str] | None = None
    candidate_since: float = 0.0
    controller: ChargingController = field(init=False)
    last_persist: float = 0.0


class Station:
    def __init__(
        self,
        *,
        hardware: dict[int, tuple[EvseHardware, float, int]],
        configuration: Configuration,
        authorizer: Authorizer,
        sessions: SessionStore,
        clock: Clock,
        time: TimeKeeper,
        timestamp: Callable[[], str],
    ) -> None:
        """`hardware` maps EVSE id -> (devices, max current per phase, phases)."""
        self.cfg = configuration
        self.authorizer = authorizer
        self.sessions = sessions
        self.clock = clock
        self.time = time
        self.timestamp = timestamp
        self.evses = {
            evse_id: _Evse(evse_id, hw, max_a, phases)
            for evse_id, (hw, max_a, phases) in sorted(hardware.items())
        }
        for evse in self.evses.values():
            evse.controller = ChargingController(evse.hardware, clock.monotonic)
        self._cause_time: float | None = None
        self.station_availability = Availability.OPERATIVE
        self._scheduled_station: Availability | None = None
        self.listener: StationListener | None = None
        self._station_reported: ConnectorStatus | None = None
        self._next_aligned: float | None = None  # wall clock
        self._change_callbacks: list[Callable[[int], None]] = []

    # ------------------------------------------------------------------ wiring
    def attach(self, listener: StationListener) -> None:
        self.listener = listener

    def on_change(self, callback: Callable[[int], None]) -> None:
        self._change_callbacks.append(callback)

    def _changed(self, evse_id: int) -> None:
        for callback in self._change_callbacks:
            try:
                callback(evse_id)
            except Exception:
                log.exception("change callback failed")

    def evse(self, evse_id: int) -> _Evse:
        found = self.evses.get(evse_id)
        if found is None:
            raise UnknownEvse(f"no EVSE {evse_id}; this charger has {sorted(self.evses)}")
        return found

    # ------------------------------------------------------------------ start-up
    def start(self, *, recovered_reason: StopReason = StopReason.POWER_LOSS) -> None:
        """Finish what a previous run left open, then report every status."""
        for row in self.sessions.load_all():
            session = row.session
            with self.sessions.atomic():  # the StopTransaction and the row's end: one commit
                if session.started and self.listener is not None:
                    meter = (
                        row.last_meter_wh
                        if row.last_meter_wh is not None
                        else (session.meter_start_wh)
                    )
                    log.warning(
                        "transaction %s on EVSE %d was open at the last stop: "
                        "ending it with reason %s",
                        session.session_id,
                        session.evse_id,
                        recovered_reason,
                        extra=log_fields(
                            evse_id=session.evse_id, transaction_id=session.session_id
                        ),
                    )
                    self.listener.transaction_stopped(
                        session, recovered_reason, meter, row.last_time or self.timestamp(), []
                    )
                self.sessions.delete(session.session_id)
        for evse in self.evses.values():
            evse.pilot = evse.hardware.pilot.state
            evse.ev_connected = evse.pilot.plugged
            self._apply_power(evse)
        self._report_all(force=True)

    # ------------------------------------------------------------------ hardware events
    def pilot_changed(self, evse_id: int, state: PilotState) -> None:
        """The pilot changed. The change notification may be stale by the time it is handled
        (the cable moved again meanwhile): act on the device's current state, so a contactor
        is never closed for a state that has already passed."""
        self._cause_time = self.clock.monotonic()
        evse = self.evse(evse_id)
        state = evse.hardware.pilot.state
        if state is evse.pilot:
            return
        previous, evse.pilot = evse.pilot, state
        fields = log_fields(evse_id=evse_id)
        log.info("EVSE %d pilot %s -> %s", evse_id, previous, state, extra=fields)
        session = evse.session
        if state in (PilotState.E, PilotState.F):
            self.raise_fault(
                evse_id,
                "EVCommunicationError" if state is PilotState.E else "OtherError",
                f"pilot state {state}",
                source="pilot-state",
            )
        elif previous in (PilotState.E, PilotState.F):
            self.clear_fault(evse_id, source="pilot-state")
        if state in (PilotState.E, PilotState.F):
            pass  # a pilot fault says nothing about the cable: keep the session as it is
        elif not state.plugged:
            evse.finishing = False
            if session is not None and session.started and evse.ev_connected:
                if self._bool("UnlockConnectorOnEVSideDisconnect"):
                    evse.hardware.pilot.set_locked(False)
                if self._bool("StopTransactionOnEVSideDisconnect"):
                    self._stop(evse, StopReason.EV_DISCONNECTED)
        elif session is not None and session.authorized and not session.started:
            self._start_transaction(evse)
        elif (
            session is None
            and not evse.ev_connected
            and not self._bool("AuthEnabled")
            and self._usable(evse)
        ):
            # Free charging: a plugged-in EV charges without a token (NoAuthorization).
            self._authorize(evse, "", remote=False, token_type=NO_AUTHORIZATION)
        if state not in (PilotState.E, PilotState.F):
            evse.ev_connected = state.plugged
        self._apply_power(evse)
        self._report(evse)

    def meter_reading(self, evse_id: int, reading: MeterReading) -> None:
        evse = self.evse(evse_id)
        evse.reading = reading
        if "meter" in evse.faults:
            self.clear_fault(evse_id, source="meter")
        session = evse.session
        if session is not None and session.started:
            if session.deauthorized and session.max_energy_wh is not None:
                used = reading.energy_import_wh - session.meter_start_wh
                if used >= session.max_energy_wh and evse.offered_a > 0:
                    log.info(
                        "EVSE %d reached MaxEnergyOnInvalidId",
                        evse_id,
                        extra=log_fields(evse_id=evse_id),
                    )
                    self._apply_power(evse)
                    self._report(evse)  # SuspendedEVSE
            now = self.clock.monotonic()
            if now - evse.last_persist >= 15:
                evse.last_persist = now
                self.sessions.update_meter(
                    session.session_id, reading.energy_import_wh, self.timestamp()
                )
        self._changed(evse_id)

    def meter_failed(self, evse_id: int, error: str) -> None:
        evse = self.evse(evse_id)
        if "meter" not in evse.faults:
            self.raise_fault(evse_id, "PowerMeterFailure", error[:50], source="meter")

    def raise_fault(
        self, evse_id: int, error_code: str, info: str = "", *, source: str = "station"
    ) -> None:
        """A fault from `source`; the connector is Faulted until every source cleared."""
        if error_code not in ERROR_CODES or error_code == "NoError":
            raise InvalidArgument(f"unknown error code {error_code!r}")
        self._cause_time = self.clock.monotonic()
        evse = self.evse(evse_id)
        if evse.faults.get(source) == (error_code, info):
            return
        evse.faults[source] = (error_code, info)
        log.warning(
            "EVSE %d fault %s (%s) %s",
            evse_id,
            error_code,
            source,
            info,
            extra=log_fields(evse_id=evse_id, error_code=error_code, event=LogEvent.FAULT),
        )
        self._apply_power(evse)
        self._report(evse)

    def clear_fault(self, evse_id: int, *, source: str | None = None) -> None:
        """Clear the fault of `source` (None: every fault, as an operator reset does)."""
        evse = self.evse(evse_id)
        cleared = list(evse.faults) if source is None else [source]
        removed = [evse.faults.pop(name) for name in cleared if name in evse.faults]
        if not removed:
            return
        log.info(
            "EVSE %d fault %s cleared",
            evse_id,
            ", ".join(code for code, _ in removed),
            extra=log_fields(evse_id=evse_id, event=LogEvent.FAULT_CLEARED),
        )
        self._apply_power(evse)
        self._report(evse)

    def safety_changed(self, evse_id: int) -> None:
        """The EVSE's emergency-stop or RCD input changed (hal SafetyInputs)."""
        self._cause_time = self.clock.monotonic()
        evse = self.evse(evse_id)
        safety = evse.hardware.safety
        if safety is None:
            return
        if safety.emergency_stop:
            self._apply_power(evse)  # open first, then tell
            if evse.session is not None:
                self._stop(evse, StopReason.EMERGENCY_STOP)
            self.raise_fault(evse_id, "OtherError", "emergency stop", source="estop")
        else:
            self.clear_fault(evse_id, source="estop")
        if safety.rcd_tripped:
            self.raise_fault(
                evse_id, "GroundFailure", "residual current device tripped", source="rcd"
            )
        else:
            self.clear_fault(evse_id, source="rcd")

    def device_fault(self, evse_id: int, source: str, code: str | None, info: str) -> None:
        """A HAL device's fault callback: `code` None clears it."""
        if code is None:
            self.clear_fault(evse_id, source=source)
        else:
            self.raise_fault(
                evse_id, code if code in ERROR_CODES else "OtherError", info[:50], source=source
            )

    # ------------------------------------------------------------------ authorization
    @property
    def token_limit(self) -> int:
        """The longest token the protocol in use carries: 20 characters under OCPP 1.6, 36
        under 2.0.1 (the listener's `id_token_max_length`)."""
        limit = getattr(self.listener, "id_token_max_length", ID_TAG_MAX_LENGTH)
        return limit if isinstance(limit, int) and limit > 0 else ID_TAG_MAX_LENGTH

    def _check_token(self, id_tag: str, token_type: str | None, *, free: bool = False) -> None:
        """Raise InvalidArgument for a token the protocol in use cannot carry. `free`: the
        NoAuthorization type (empty token) is allowed."""
        if token_type is not None and token_type not in TOKEN_TYPES:
            raise InvalidArgument(
                f"unknown token type {token_type!r}: one of {', '.join(sorted(TOKEN_TYPES))}"
            )
        if token_type == NO_AUTHORIZATION:
            if not free:
                raise InvalidArgument("a presented token cannot be of type NoAuthorization")
            if id_tag == "":
                return
        limit = self.token_limit
        if not is_valid_id_tag(id_tag, limit):
            raise InvalidArgument(f"invalid idTag {id_tag!r}: 1 to {limit} printable characters")

    def token_presented(self, evse_id: int, id_tag: str, token_type: str | None = None) -> None:
        """A token from the EVSE's reader or a local provider (evse_id 0: any EVSE).
        `token_type`: its 2.0.1 IdTokenEnumType (None: the reader's, ISO14443)."""
        self._check_token(id_tag, token_type)
        evse = self._evse_for_token(id_tag) if evse_id == 0 else self.evse(evse_id)
        session = evse.session
        if session is not None and session.authorized:
            if session.id_tag == id_tag:
                self._stop_by_token(evse, id_tag, token_type)
                return
            if session.parent_id_tag is not None:
                group = self._parent_of(id_tag)
                if group == session.parent_id_tag:
                    self._stop_by_token(evse, id_tag, token_type)
                    return
                if group is None and self._ask_group(evse, session, id_tag, token_type):
                    return
            log.info("token %s ignored: EVSE %d is in use", id_tag, evse.evse_id)
            return
        if session is not None and session.id_tag == id_tag:
            # The same card again while its Authorize is on its way: one question is enough.
            log.info("token %s ignored: EVSE %d is already authorizing it", id_tag, evse.evse_id)
            return
        self._authorize(evse, id_tag, remote=False, token_type=token_type)

    def _stop_by_token(self, evse: _Evse, id_tag: str, token_type: str | None) -> None:
        session = evse.session
        assert session is not None
        session.stop_id_tag = id_tag
        session.stop_id_token_type = token_type
        if session.started:
            self._stop(evse, StopReason.LOCAL)
        else:
            self._cancel(evse, "token presented again")

    def _ask_group(
        self, evse: _Evse, session: Session, id_tag: str, token_type: str | None
    ) -> bool:
        """C09 / 1.6 parentIdTag: a token whose group is not known locally may belong to the
        session's group. Ask the CSMS (Authorize); its answer stops the session when the
        groups match. False when the CSMS cannot be asked now."""
        listener = self.listener
        if listener is None or not listener.online:
            return False
        session_id = session.session_id
        log.info(
            "token %s on EVSE %d: group unknown, asking the CSMS whether it may stop the session",
            id_tag,
            evse.evse_id,
        )

        def answered(info: IdTagInfo | None) -> None:
            if info is not None:
                self.authorizer.record(id_tag, info, self._wall())
            current = self._evse_of(session_id)
            if current is None or current.session is None:
                return
            group = current.session.parent_id_tag
            if info is not None and info.parent_id_tag is not None and info.parent_id_tag == group:
                self._stop_by_token(current, id_tag, token_type)
            else:
                log.info("token %s ignored: not of the group of EVSE %d", id_tag, evse.evse_id)

        return listener.authorize(id_tag, answered, token_type=token_type)

    def _parent_of(self, id_tag: str) -> str | None:
        # The group as known locally: the Local Authorization List first, then the cache.
        return self.authorizer.group_of(id_tag, self._wall())

    def _evse_for_token(self, id_tag: str) -> _Evse:
        for evse in self.evses.values():
            if evse.session is not None and evse.session.id_tag == id_tag:
                return evse
        for evse in self.evses.values():
            if evse.session is None and evse.pilot.plugged and self._usable(evse):
                return evse
        for evse in self.evses.values():
            if evse.session is None and self._usable(evse):
                return evse
        raise InvalidState("no EVSE can take a new session")

    def _usable(self, evse: _Evse) -> bool:
        return (
            evse.fault == "NoError"
            and evse.availability is Availability.OPERATIVE
            and self.station_availability is Availability.OPERATIVE
        )

    def _authorize(
        self,
        evse: _Evse,
        id_tag: str,
        *,
        remote: bool,
        limit_a: float | None = None,
        token_type: str | None = None,
    ) -> Session:
        if not self._usable(evse):
            raise InvalidState(f"EVSE {evse.evse_id} is {self._status(evse)[0]}")
        session = Session(
            session_id=str(uuid.uuid4()),
            evse_id=evse.evse_id,
            id_tag=id_tag,
            id_token_type=token_type,
            remote=remote,
            limit_a=limit_a,
        )
        session.authorize_deadline = self.clock.monotonic() + self._int("ConnectionTimeOut")
        evse.session = session
        evse.finishing = False
        if (
            (remote and not self._bool("AuthorizeRemoteTxRequests"))
            or token_type == NO_AUTHORIZATION
            or not self._bool("AuthEnabled")
        ):
            # Nobody to ask: a remote start the CSMS vouches for, a session nobody authorizes
            # (start button), or free charging (AuthEnabled / AuthCtrlr.Enabled false).
            log.info(
                "token %r on EVSE %d: accepted without authorization",
                id_tag,
                evse.evse_id,
                extra=log_fields(evse_id=evse.evse_id),
            )
            self._authorized(evse, session, None, unknown_offline=False)
            self._report(evse)
            return session
        listener = self.listener
        online = listener is not None and listener.online
        verdict = self.authorizer.decide(id_tag, online=online, now=self._wall())
        log.info(
            "token %s on EVSE %d: %s (%s)",
            id_tag,
            evse.evse_id,
            verdict.decision,
            verdict.reason,
            extra=log_fields(evse_id=evse.evse_id),
        )
        if verdict.decision is Decision.ACCEPT:
            self._authorized(evse, session, verdict.info, unknown_offline=verdict.unknown_offline)
            if verdict.refresh and listener is not None:
                listener.authorize(
                    id_tag, lambda info: self._refresh(id_tag, info), token_type=token_type
                )
        elif verdict.decision is Decision.REJECT:
            self._cancel(evse, f"token rejected ({verdict.reason})")
        else:
            assert listener is not None
            asked = listener.authorize(
                id_tag,
                lambda info: self._authorize_answer(session.session_id, id_tag, info),
                token_type=token_type,
            )
            if not asked:
                self._authorize_answer(session.session_id, id_tag, None)
        self._report(evse)
        return session

    def _refresh(self, id_tag: str, info: IdTagInfo | None) -> None:
        if info is not None:
            self.authorizer.record(id_tag, info, self._wall())

    def _authorize_answer(self, session_id: str, id_tag: str, info: IdTagInfo | None) -> None:
        # Cached even when the session that asked is gone (cancelled or replaced while the
        # answer was on its way): the answer is about the token, not the session.
        self._refresh(id_tag, info)
        evse = self._evse_of(session_id)
        if evse is None or evse.session is None:
            return
        session = evse.session
        if info is None:
            # The CSMS could not be asked after all (went offline): decide as offline.
            verdict = self.authorizer.decide(id_tag, online=False, now=self._wall())
            if verdict.decision is Decision.ACCEPT:
                self._authorized(
                    evse, session, verdict.info, unknown_offline=verdict.unknown_offline
                )
            else:
                self._cancel(evse, f"token not authorized offline ({verdict.reason})")
            self._report(evse)
            return
        if info.status == "Accepted":
            self._authorized(evse, session, info, unknown_offline=False)
        else:
            self._cancel(evse, f"token {info.status}")
        self._report(evse)

    def _authorized(
        self, evse: _Evse, session: Session, info: IdTagInfo | None, *, unknown_offline: bool
    ) -> None:
        session.authorized = True
        session.unknown_offline = unknown_offline
        if info is not None:
            session.parent_id_tag = info.parent_id_tag
        self.sessions.save(session)
        if evse.pilot.plugged:
            self._start_transaction(evse)
        self._apply_power(evse)
        self._changed(evse.evse_id)

    def _evse_of(self, session_id: str) -> _Evse | None:
        for evse in self.evses.values():
            if evse.session is not None and evse.session.session_id == session_id:
                return evse
        return None

    def _cancel(self, evse: _Evse, why: str) -> None:
        session = evse.session
        if session is None:
            return
        log.info(
            "session on EVSE %d ended before a transaction: %s",
            evse.evse_id,
            why,
            extra=log_fields(evse_id=evse.evse_id),
        )
        self.sessions.delete(session.session_id)
        evse.session = None
        self._apply_power(evse)
        self._report(evse)

    # ------------------------------------------------------------------ transactions
    def _start_transaction(self, evse: _Evse) -> None:
        session = evse.session
        assert session is not None and session.authorized and not session.started
        reading = evse.reading
        session.started = True
        session.start_timestamp = self.timestamp()
        session.meter_start_wh = reading.energy_import_wh if reading is not None else 0.0
        session.authorize_deadline = None
        interval = self._int("MeterValueSampleInterval")
        session.next_sample = self.clock.monotonic() + interval if interval > 0 else None
        collector = metering.TransactionDataCollector(phases=evse.phases)
        if reading is not None:
            collector.begin(
                session.start_timestamp,
                reading,
                self._csl("StopTxnSampledData"),
                signed=self.signs_readings(),
            )
        session.collector_state = collector.to_json()
        with self.sessions.atomic():  # the row says "started" only with its StartTransaction
            self.sessions.save(session)
            if self.listener is not None:
                self.listener.transaction_started(session)
        evse.hardware.pilot.set_locked(True)
        log.info(
            "transaction %s started on EVSE %d for %s at %.0f Wh",
            session.session_id,
            evse.evse_id,
            session.id_tag,
            session.meter_start_wh,
            extra=log_fields(
                evse_id=evse.evse_id,
                transaction_id=session.session_id,
                event=LogEvent.SESSION_STARTED,
            ),
        )

    def transaction_confirmed(
        self, session_id: str, transaction_id: int | str, info: IdTagInfo | None
    ) -> None:
        """The CSMS answered StartTransaction: its id, and its verdict on the idTag."""
        evse = self._evse_of(session_id)
        if evse is None or evse.session is None:
            return
        session = evse.session
        session.transaction_id = transaction_id
        if info is not None:
            if session.id_tag and session.id_token_type != NO_AUTHORIZATION:
                self.authorizer.record(session.id_tag, info, self._wall())
            if info.status != "Accepted" and not session.deauthorized:
                if self._bool("StopTransactionOnInvalidId"):
                    self._stop(evse, StopReason.DE_AUTHORIZED)
                    return
                session.deauthorized = True
                session.max_energy_wh = float(self._int("MaxEnergyOnInvalidId"))
                log.warning(
                    "transaction %s de-authorized (%s): charging limited to %.0f Wh",
                    session_id,
                    info.status,
                    session.max_energy_wh,
                    extra=log_fields(evse_id=evse.evse_id, transaction_id=session_id),
                )
        self.sessions.save(session)
        self._apply_power(evse)
        self._report(evse)

    def _stop(self, evse: _Evse, reason: StopReason) -> None:
        if reason in (StopReason.LOCAL, StopReason.REMOTE, StopReason.UNLOCK_COMMAND):
            self._cause_time = self.clock.monotonic()
        session = evse.session
        if session is None:
            return
        if not session.started:
            self._cancel(evse, f"stopped ({reason})")
            return
        evse.session = None
        evse.finishing = evse.pilot.plugged
        self._apply_power(evse)  # contactor opens before anything is reported
        reading = evse.reading
        meter_stop = reading.energy_import_wh if reading is not None else session.meter_start_wh
        timestamp = self.timestamp()
        collector = self._collector(evse, session)
        if reading is not None:
            collector.end(
                timestamp, reading, self._csl("StopTxnSampledData"), signed=self.signs_readings()
            )
        evse.hardware.pilot.set_locked(False)  # the driver may take the cable now
        log.info(
            "transaction %s on EVSE %d stopped (%s) at %.0f Wh",
            session.session_id,
            evse.evse_id,
            reason,
            meter_stop,
            extra=log_fields(
                evse_id=evse.evse_id,
                transaction_id=session.session_id,
                event=LogEvent.SESSION_STOPPED,
            ),
        )
        with self.sessions.atomic():  # the StopTransaction and the row's end: one commit
            if self.listener is not None:
                self.listener.transaction_stopped(
                    session, reason, meter_stop, timestamp, collector.transaction_data()
                )
            self.sessions.delete(session.session_id)
        if evse.scheduled_availability is not None:
            evse.availability = evse.scheduled_availability
            evse.scheduled_availability = None
        self._report(evse)
        self._apply_station_availability()

    # ------------------------------------------------------------------ commands
    def remote_start(
        self,
        evse_id: int | None,
        id_tag: str,
        limit_a: float | None = None,
        token_type: str | None = None,
    ) -> bool:
        try:
            self._check_token(id_tag, token_type, free=True)
        except InvalidArgument as exc:
            # The 1.6 schema lets "" and non-ASCII through; such a token could never be
            # authorized or cached (CiString20: 1-20 printable ASCII characters).
            log.warning("remote start with an unusable token rejected: %s", exc)
            return False
        if evse_id is None:
            candidates = [e for e in self.evses.values() if e.session is None and self._usable(e)]
            if not candidates:
                return False
            plugged = [e for e in candidates if e.pilot.plugged]
            evse = (plugged or candidates)[0]
        else:
            found = self.evses.get(evse_id)
            if found is None or found.session is not None or not self._usable(found):
                return False
            evse = found
        self._authorize(evse, id_tag, remote=True, limit_a=limit_a, token_type=token_type)
        return True

    def remote_stop(self, transaction_id: int | str) -> bool:
        for evse in self.evses.values():
            session = evse.session
            if (
                session is not None
                and session.started
                and (session.transaction_id == transaction_id)
            ):
                self._stop(evse, StopReason.REMOTE)
                return True
        return False

    def local_start(self, evse_id: int, id_tag: str, token_type: str | None = None) -> str:
        self._check_token(id_tag, token_type)
        evse = self.evse(evse_id)
        if evse.session is not None:
            raise InvalidState(f"EVSE {evse_id} already has a session")
        return self._authorize(evse, id_tag, remote=False, token_type=token_type).session_id

    def start_button(self, evse_id: int) -> str:
        """C02: the EVSE's start button. Without authorization (AuthEnabled / AuthCtrlr.Enabled
        false) it starts a session nobody authorized (2.0.1 idToken type NoAuthorization,
        1.6 FreeVendIdTag), and stops such a session when pressed again. Returns the session
        id. Raises InvalidState when a token is needed or the EVSE's session is a token's."""
        evse = self.evse(evse_id)
        session = evse.session
        if session is not None:
            if session.id_token_type != NO_AUTHORIZATION:
                raise InvalidState(
                    f"EVSE {evse_id} has a session of a token: present the token to stop it"
                )
            self._stop_by_token(evse, "", NO_AUTHORIZATION)
            return session.session_id
        if self._bool("AuthEnabled"):
            raise InvalidState("authorization is required (AuthEnabled): present a token")
        return self._authorize(evse, "", remote=False, token_type=NO_AUTHORIZATION).session_id

    def local_stop(self, evse_id: int) -> None:
        evse = self.evse(evse_id)
        if evse.session is None:
            raise InvalidState(f"EVSE {evse_id} has no session")
        self._stop(evse, StopReason.LOCAL)

    def stop_session(self, evse_id: int, reason: StopReason) -> bool:
        """End the EVSE's session for `reason` (a transaction is stopped, an authorization not
        yet used is cancelled); False when the EVSE has none. For protocol rules that end a
        session the station would keep (2.0.1 TxStopPoint)."""
        evse = self.evse(evse_id)
        if evse.session is None:
            return False
        self._stop(evse, reason)
        return True

    def stop_all(self, reason: StopReason) -> int:
        count = 0
        for evse in self.evses.values():
            if evse.session is not None:
                count += 1 if evse.session.started else 0
                self._stop(evse, reason)
        return count

    def set_availability(self, evse_id: int, operative: bool) -> str:
        """ChangeAvailability: "Accepted", or "Scheduled" while a transaction runs."""
        wanted = Availability.OPERATIVE if operative else Availability.INOPERATIVE
        targets = list(self.evses.values()) if evse_id == 0 else [self.evse(evse_id)]
        if evse_id == 0:
            # Connector 0 follows once no transaction is left (1.6 ChangeAvailability).
            self._scheduled_station = wanted
            self._apply_station_availability()
        scheduled = False
        for evse in targets:
            if evse.session is not None and evse.session.started:
                evse.scheduled_availability = wanted
                scheduled = True
            else:
                evse.availability = wanted
                evse.scheduled_availability = None
                if not operative and evse.session is not None:
                    self._cancel(evse, "EVSE made inoperative")
            self._apply_power(evse)
            self._report(evse)
        return "Scheduled" if scheduled else "Accepted"

    def _apply_station_availability(self) -> None:
        if self._scheduled_station is None or self.has_transaction():
            return
        self.station_availability = self._scheduled_station
        self._scheduled_station = None
        self._report_station()

    def unlock(self, evse_id: int) -> str:
        """UnlockConnector: stop the transaction (UnlockCommand) and release the lock."""
        evse = self.evses.get(evse_id)
        if evse is None:
            return "NotSupported"
        if evse.session is not None and evse.session.started:
            self._stop(evse, StopReason.UNLOCK_COMMAND)
        evse.hardware.pilot.set_locked(False)
        return "Unlocked"

    def wanted_availability(self, evse_id: int) -> Availability:
        """What ChangeAvailability last asked of the station (0) or an EVSE: a change still
        scheduled behind a transaction counts (a restart ends the transaction)."""
        if evse_id == 0:
            return self._scheduled_station or self.station_availability
        evse = self.evse(evse_id)
        return evse.scheduled_availability or evse.availability

    def restore_availability(self, evse_id: int, availability: Availability) -> None:
        """Before `start`: the availability a previous run was asked for (persisted by
        service/station/availability.py)."""
        if evse_id == 0:
            self.station_availability = availability
        elif evse_id in self.evses:
            self.evses[evse_id].availability = availability

    def energy_limit_reached(self, evse_id: int) -> bool:
        """The EVSE's transaction was de-authorized and used up MaxEnergyOnInvalidId."""
        evse = self.evse(evse_id)
        session = evse.session
        if session is None or not session.started or not session.deauthorized:
            return False
        if session.max_energy_wh is None or evse.reading is None:
            return session.max_energy_wh is not None
        used = evse.reading.energy_import_wh - session.meter_start_wh
        return used >= session.max_energy_wh

    def has_transaction(self, evse_id: int | None = None) -> bool:
        evses = self.evses.values() if evse_id is None else [self.evse(evse_id)]
        return any(e.session is not None and e.session.started for e in evses)

    def session_of(self, evse_id: int) -> Session | None:
        return self.evse(evse_id).session

    # ------------------------------------------------------------------ power and status
    def _apply_power(self, evse: _Evse) -> None:
        """Hand the EVSE's situation to its charging controller (the safety rules)."""
        session = evse.session
        started = session is not None and session.started
        authorized = session is not None and session.authorized
        limit = evse.max_current_a
        if session is not None:
            if session.limit_a is not None:
                limit = min(limit, session.limit_a)
            if session.deauthorized:
                used = (
                    evse.reading.energy_import_wh - session.meter_start_wh
                    if evse.reading is not None
                    else 0.0
                )
                if session.max_energy_wh is None or used >= session.max_energy_wh:
                    limit = 0.0
        safety = evse.hardware.safety
        decision = evse.controller.apply(
            PowerInputs(
                pilot=evse.pilot,
                transaction=started,
                authorized=authorized,
                faulted=evse.fault != "NoError",
                emergency_stop=safety is not None and safety.emergency_stop,
                limit_a=limit,
                cable_max_a=evse.hardware.pilot.cable_max_current_a,
            ),
            cause_time=self._cause_time,
        )
        evse.offered_a = decision.offer_a

    def _status(self, evse: _Evse) -> tuple[ConnectorStatus, str]:
        error = evse.fault
        if evse.faults and not (len(evse.faults) == 1 and "meter" in evse.faults):
            return ConnectorStatus.FAULTED, error
        session = evse.session
        if session is not None and session.started:
            if not evse.pilot.plugged or not evse.pilot.wants_energy:
                return ConnectorStatus.SUSPENDED_EV, error
            if evse.offered_a < MIN_OFFER_A or error != "NoError":
                return ConnectorStatus.SUSPENDED_EVSE, error
            return ConnectorStatus.CHARGING, error
        if (
            evse.availability is Availability.INOPERATIVE
            or self.station_availability is Availability.INOPERATIVE
        ):
            return ConnectorStatus.UNAVAILABLE, error
        if error != "NoError":
            return ConnectorStatus.FAULTED, error
        if evse.finishing and evse.pilot.plugged:
            return ConnectorStatus.FINISHING, error
        if session is not None or evse.pilot.plugged:
            return ConnectorStatus.PREPARING, error
        return ConnectorStatus.AVAILABLE, error

    def _report(self, evse: _Evse) -> None:
        current = self._status(evse)
        now = self.clock.monotonic()
        if current != evse.candidate:
            evse.candidate = current
            evse.candidate_since = now
        self._flush_status(evse, now)
        self._changed(evse.evse_id)

    def _flush_status(self, evse: _Evse, now: float) -> None:
        if evse.candidate is None or evse.candidate == evse.reported:
            return
        minimum = self._int("MinimumStatusDuration")
        if minimum > 0 and now - evse.candidate_since < minimum and evse.reported is not None:
            return
        evse.reported = evse.candidate
        status, error = evse.candidate
        if self.listener is not None:
            self.listener.status_changed(
                evse.evse_id, status, error, evse.fault_info, self.timestamp()
            )

    def _report_station(self, *, force: bool = False) -> None:
        status = (
            ConnectorStatus.AVAILABLE
            if self.station_availability is Availability.OPERATIVE
            else ConnectorStatus.UNAVAILABLE
        )
        if (force or status != self._station_reported) and self.listener is not None:
            self._station_reported = status
            self.listener.status_changed(0, status, "NoError", "", self.timestamp())
        self._changed(0)

    def _report_all(self, *, force: bool = False) -> None:
        self._report_station(force=force)
        for evse in self.evses.values():
            if force:
                evse.reported = None
            self._report(evse)

    def report_all(self) -> None:
        """Re-send every status (after BootNotification was accepted)."""
        self._report_all(force=True)

    def report_one(self, evse_id: int) -> bool:
        """TriggerMessage(StatusNotification): send the current status now."""
        if evse_id == 0:
            self._report_station(force=True)
            return True
        evse = self.evses.get(evse_id)
        if evse is None:
            return False
        evse.reported = None
        evse.candidate = None
        self._report(evse)
        return True

    # ------------------------------------------------------------------ meter values
    def sample_now(self, evse_id: int, context: str = "Trigger") -> bool:
        """TriggerMessage(MeterValues): send the current values of the EVSE(s)."""
        targets = (
            list(self.evses.values())
            if evse_id == 0
            else ([self.evses[evse_id]] if evse_id in self.evses else [])
        )
        if not targets:
            return False
        for evse in targets:
            self._send_sample(evse, self._csl("MeterValuesSampledData"), context)
        return True

    def _send_sample(self, evse: _Evse, measurands: list[str], context: str) -> None:
        if evse.reading is None or self.listener is None or not measurands:
            return
        values = metering.sampled_values(
            evse.reading,
            measurands,
            context=context,
            offered_current_a=evse.offered_a,
            phases=evse.phases,
            signed=self.signs_readings(),
        )
        if values:
            self.listener.meter_values(
                evse.evse_id,
                evse.session if (evse.session is not None and evse.session.started) else None,
                metering.meter_value(self.timestamp(), values),
            )

    # ------------------------------------------------------------------ timers
    def next_deadline(self) -> float | None:
        deadlines: list[float] = []
        minimum = self._int("MinimumStatusDuration")
        for evse in self.evses.values():
            session = evse.session
            if session is not None:
                if session.authorize_deadline is not None and not session.started:
                    deadlines.append(session.authorize_deadline)
                if session.started and session.next_sample is not None:
                    deadlines.append(session.next_sample)
            if minimum > 0 and evse.candidate != evse.reported:
                deadlines.append(evse.candidate_since + minimum)
        aligned = self._aligned_deadline()
        if aligned is not None:
            deadlines.append(aligned)
        return min(deadlines) if deadlines else None

    def _aligned_deadline(self) -> float | None:
        interval = self._int("ClockAlignedDataInterval")
        wall = self.time.now()
        if interval <= 0 or wall is None:
            self._next_aligned = None
            return None
        if self._next_aligned is None:
            self._next_aligned = metering.next_aligned_time(wall, interval)
        if self._next_aligned is None:
            return None
        return self.clock.monotonic() + (self._next_aligned - wall)

    def tick(self) -> None:
        now = self.clock.monotonic()
        for evse in self.evses.values():
            session = evse.session
            if (
                session is not None
                and not session.started
                and (session.authorize_deadline is not None and now >= session.authorize_deadline)
            ):
                self._cancel(evse, "ConnectionTimeOut: no EV plugged in")
                continue
            if (
                session is not None
                and session.started
                and session.next_sample is not None
                and (now >= session.next_sample)
            ):
                interval = self._int("MeterValueSampleInterval")
                session.next_sample = now + interval if interval > 0 else None
                self._send_sample(evse, self._csl("MeterValuesSampledData"), "Sample.Periodic")
                self._collect(evse, "periodic")
            self._flush_status(evse, now)
        wall = self.time.now()
        if self._next_aligned is not None and wall is not None and wall >= self._next_aligned:
            self._next_aligned = None
            for evse in self.evses.values():
                self._send_sample(evse, self._csl("MeterValuesAlignedData"), "Sample.Clock")
                self._collect(evse, "aligned")

    def _collect(self, evse: _Evse, kind: str) -> None:
        session = evse.session
        if session is None or not session.started or evse.reading is None:
            return
        collector = self._collector(evse, session)
        if kind == "periodic":
            collector.periodic(
                self.timestamp(),
                evse.reading,
                self._csl("StopTxnSampledData"),
                signed=self.signs_readings(),
            )
        else:
            collector.aligned(
                self.timestamp(),
                evse.reading,
                self._csl("StopTxnAlignedData"),
                signed=self.signs_readings(),
            )
        session.collector_state = collector.to_json()

    @staticmethod
    def _collector(evse: _Evse, session: Session) -> metering.TransactionDataCollector:
        if session.collector_state:
            try:
                return metering.TransactionDataCollector.from_json(session.collector_state)
            except ValueError:
                log.warning(
                    "transaction data of %s unreadable; starting afresh", session.session_id
                )
        return metering.TransactionDataCollector(phases=evse.phases)

    # ------------------------------------------------------------------ helpers
    def signs_readings(self) -> bool:
        """Energy values carry the meter's signature (SampledDataSignReadings / 2.0.1
        SampledDataCtrlr.SignReadings), when the meter gives one."""
        return self.cfg.get("SampledDataSignReadings") is True

    def _int(self, key: str) -> int:
        value = self.cfg.get(key)
        assert isinstance(value, int) and not isinstance(value, bool)
        return value

    def _bool(self, key: str) -> bool:
        value = self.cfg.get(key)
        assert isinstance(value, bool)
        return value

    def _csl(self, key: str) -> list[str]:
        value = self.cfg.get(key)
        return [item for item in str(value).split(",") if item]

    def _wall(self) -> float:
        now = self.time.now()
        return now if now is not None else 0.0

    def status_of(self, evse_id: int) -> tuple[ConnectorStatus, str]:
        return self._status(self.evse(evse_id))
