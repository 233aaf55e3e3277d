"""Tests of service.station.station: sessions, transactions, timers and the safety rules.

The station is built as service/charger.py builds it, from real parts: simulated EVSE hardware
on a fake clock, SQLite in tmp_path, the configuration, the authorizer and the session store.
Only the protocol adapter is replaced, by a recorder the tests answer through.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hal.sim import SimulatedEvse
from service.config import Csms, Evse, Identity, OcppKeyValue, Settings
from service.station.api import ApiError, InvalidArgument, InvalidState, UnknownEvse
from service.station.auth import (
    AuthorizationCache,
    Authorizer,
    AuthSettings,
    AuthStatus,
    IdTagInfo,
)
from service.station.clock import TimeKeeper, format_iso
from service.station.configuration import Configuration
from service.station.model import ConnectorStatus, Session, StopReason
from service.station.sessions import SessionStore
from service.station.station import Station
from service.store.db import Database
from service.store.overlay import ConfigOverlay

DAY = 86_400.0
# 100 s after midnight UTC (2025-04-22): the next 900 s boundary is 800 s away.
START_WALL = 20_200 * DAY + 100.0
ENERGY = "Energy.Active.Import.Register"
TAG = "04A1B2C3"
FULL_POWER_W = 3 * 32.0 * 230.0  # what the simulated EV draws at 32 A on three phases


class FakeClock:
    """Monotonic and wall time that move together, only when told to."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = START_WALL

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


@dataclass
class Stopped:
    session: Session
    reason: StopReason
    meter_wh: float
    timestamp: str
    data: list[dict[str, Any]]


class Recorder:
    """A StationListener that records everything; the test answers Authorize requests."""

    def __init__(self) -> None:
        self.online = True
        self.reachable = True  # authorize() returns this
        self.statuses: list[tuple[int, ConnectorStatus, str]] = []
        self.requests: list[tuple[str, Callable[[IdTagInfo | None], None]]] = []
        self.starts: list[Session] = []
        self.stops: list[Stopped] = []
        self.meter: list[tuple[int, Session | None, dict[str, Any]]] = []

    def status_changed(
        self, evse_id: int, status: ConnectorStatus, error_code: str, info: str, timestamp: str
    ) -> None:
        self.statuses.append((evse_id, status, error_code))

    def authorize(
        self,
        id_tag: str,
        done: Callable[[IdTagInfo | None], None],
        *,
        token_type: str | None = None,
    ) -> bool:
        self.requests.append((id_tag, done))
        return self.reachable

    def transaction_started(self, session: Session) -> None:
        self.starts.append(session)

    def transaction_stopped(
        self,
        session: Session,
        reason: StopReason,
        meter_stop_wh: float,
        timestamp: str,
        transaction_data: list[dict[str, Any]],
    ) -> None:
        self.stops.append(Stopped(session, reason, meter_stop_wh, timestamp, transaction_data))

    def meter_values(
        self, evse_id: int, session: Session | None, meter_value: dict[str, Any]
    ) -> None:
        self.meter.append((evse_id, session, meter_value))

    # -- for the tests
    def answer(self, status: str | None, index: int = -1) -> None:
        _, done = self.requests[index]
        done(None if status is None else IdTagInfo(AuthStatus(status)))

    def of(self, evse_id: int) -> list[ConnectorStatus]:
        return [status for evse, status, _ in self.statuses if evse == evse_id]

    def last(self, evse_id: int) -> ConnectorStatus:
        return self.of(evse_id)[-1]


class Rig:
    """One charger with two simulated EVSEs (32 A, three phases), wired like the daemon."""

    def __init__(
        self, tmp_path: Path, keys: dict[str, OcppKeyValue], db: Database | None, clock: FakeClock
    ) -> None:
        self.clock = clock
        settings = Settings(
            identity=Identity("CP1", "Acme", "Sim"),
            csms=Csms(url="ws://csms.invalid/ocpp"),
            evses=(Evse(id=1), Evse(id=2)),
            ocpp_keys=dict(keys),
        )
        self.db = db if db is not None else Database.open(tmp_path / "evsed.db")
        self.cfg = Configuration(settings, ConfigOverlay(self.db), clock=clock)
        self.sims = {
            evse.id: SimulatedEvse(evse.connectors, initial_energy_wh=1000.0, clock=clock.monotonic)
            for evse in settings.evses
        }
        self.sessions = SessionStore(self.db)
        authorizer = Authorizer(
            AuthorizationCache(self.db), lambda: AuthSettings.from_configuration(self.cfg)
        )
        self.station = Station(
            hardware={n: (sim.hardware, 32.0, 3) for n, sim in self.sims.items()},
            configuration=self.cfg,
            authorizer=authorizer,
            sessions=self.sessions,
            clock=clock,
            time=TimeKeeper(clock),
            timestamp=lambda: format_iso(clock.wall),
        )
        self.listener = Recorder()
        self.station.attach(self.listener)
        self.refused: list[ApiError] = []
        self.violations: list[str] = []
        for evse_id, sim in self.sims.items():
            self._guard_contactor(evse_id, sim)
            sim.pilot.on_change(lambda state, n=evse_id: self.station.pilot_changed(n, state))
            sim.token_reader.on_token(lambda tag, n=evse_id: self._token(n, tag))
            sim.safety.on_change(lambda n=evse_id: self.station.safety_changed(n))
            sim.contactor.on_fault(
                lambda code, info, n=evse_id: self.station.device_fault(n, "contactor", code, info)
            )

    def _guard_contactor(self, evse_id: int, sim: SimulatedEvse) -> None:
        """Record every close command the safety rules forbid; the fixture asserts none."""
        command = sim.contactor.set_closed

        def set_closed(closed: bool) -> None:
            if closed:
                session = self.station.session_of(evse_id)
                safe = (
                    session is not None
                    and session.started
                    and session.authorized
                    and sim.pilot.state.wants_energy
                    and sim.pilot.offered_current_a >= 6
                    and self.station.status_of(evse_id)[1] == "NoError"
                )
                if not safe:
                    self.violations.append(f"EVSE {evse_id} closed: {sim.snapshot()}")
            command(closed)

        sim.contactor.set_closed = set_closed  # type: ignore[method-assign]

    def _token(self, evse_id: int, id_tag: str) -> None:
        try:
            self.station.token_presented(evse_id, id_tag)
        except ApiError as exc:  # the daemon logs it; the tests look at it
            self.refused.append(exc)

    async def start(self) -> None:
        self.station.start()
        for evse_id in self.sims:
            await self.read(evse_id)

    async def read(self, evse_id: int = 1) -> None:
        """One poll of the meter, as the daemon's meter loop does it."""
        self.station.meter_reading(evse_id, await self.sims[evse_id].meter.read())

    def contactor(self, evse_id: int = 1) -> bool:
        return self.sims[evse_id].snapshot().contactor_closed

    def offered(self, evse_id: int = 1) -> float:
        return self.sims[evse_id].snapshot().offered_current_a

    def status(self, evse_id: int = 1) -> ConnectorStatus:
        return self.station.status_of(evse_id)[0]

    def session(self, evse_id: int = 1) -> Session | None:
        return self.station.session_of(evse_id)


async def settle() -> None:
    """Let the simulator's call_soon callbacks (pilot changes, tokens) run."""
    for _ in range(5):
        await asyncio.sleep(0)


MakeRig = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[MakeRig]:
    rigs: list[Rig] = []

    async def make(
        *, db: Database | None = None, clock: FakeClock | None = None, **keys: OcppKeyValue
    ) -> Rig:
        rig = Rig(tmp_path, keys, db, clock if clock is not None else FakeClock())
        rigs.append(rig)
        await rig.start()
        return rig

    yield make
    for rig in rigs:
        rig.db.close()
    assert [v for rig in rigs for v in rig.violations] == []


@pytest.fixture
async def rig(make_rig: MakeRig) -> Rig:
    return await make_rig()


async def plug(rig: Rig, evse_id: int = 1, *, ready: bool = True) -> None:
    rig.sims[evse_id].set_ev_ready(ready)
    rig.sims[evse_id].plug()
    await settle()


async def present(rig: Rig, id_tag: str = TAG, evse_id: int = 1) -> None:
    rig.sims[evse_id].present_rfid(id_tag)
    await settle()


async def charging(rig: Rig, evse_id: int = 1, id_tag: str = TAG) -> Session:
    """EV plugged in and ready, token accepted by the CSMS: the EVSE is charging."""
    await plug(rig, evse_id)
    await present(rig, id_tag, evse_id)
    rig.listener.answer("Accepted")
    await rig.read(evse_id)
    session = rig.session(evse_id)
    assert session is not None and session.started
    assert rig.status(evse_id) is ConnectorStatus.CHARGING
    assert rig.contactor(evse_id)
    return session


# -- 1. safety ------------------------------------------------------------------------------


async def test_contactor_closes_only_for_an_authorized_transaction_with_the_ev_ready(
    rig: Rig,
) -> None:
    assert not rig.contactor()  # unplugged, nothing going on
    await plug(rig, ready=True)  # plugged and ready, but nobody authorized
    assert rig.status() is ConnectorStatus.PREPARING
    assert not rig.contactor() and rig.offered() == 0
    rig.sims[1].unplug()
    await settle()

    await present(rig)  # authorized while unplugged
    rig.listener.answer("Accepted")
    session = rig.session()
    assert session is not None and session.authorized and not session.started
    assert not rig.contactor() and rig.offered() == 0

    await plug(rig, ready=False)  # the transaction starts, but the EV is in B
    assert rig.sims[1].pilot.state == "B"
    assert len(rig.listener.starts) == 1
    assert rig.status() is ConnectorStatus.SUSPENDED_EV
    assert not rig.contactor()

    rig.sims[1].set_ev_ready(True)
    await settle()
    assert rig.status() is ConnectorStatus.CHARGING
    assert rig.contactor()


async def test_contactor_never_closes_on_a_faulted_evse(rig: Rig) -> None:
    rig.sims[1].raise_fault("evse")
    await settle()
    assert rig.status() is ConnectorStatus.FAULTED
    assert rig.listener.statuses[-1] == (1, ConnectorStatus.FAULTED, "OtherError")
    await plug(rig)
    await present(rig)
    assert isinstance(rig.refused[-1], InvalidState)
    assert not rig.station.remote_start(1, TAG)
    with pytest.raises(InvalidState):
        rig.station.local_start(1, TAG)
    assert rig.session() is None
    assert rig.listener.starts == []
    assert not rig.contactor() and rig.offered() == 0


async def test_contactor_opens_on_faults_during_charging(
    rig: Rig,
) -> None:
    await charging(rig)
    rig.station.raise_fault(1, "HighTemperature", "heat sink 95 C")
    assert not rig.contactor()  # no settle: opened inside the call
    assert rig.listener.statuses[-1] == (1, ConnectorStatus.FAULTED, "HighTemperature")
    assert rig.station.has_transaction(1)
    rig.station.clear_fault(1)
    assert rig.contactor()
    assert rig.listener.last(1) is ConnectorStatus.CHARGING

    rig.sims[1].raise_fault("pilot")  # the charge controller sees state E
    await settle()
    assert not rig.contactor()
    assert rig.listener.statuses[-1] == (1, ConnectorStatus.FAULTED, "EVCommunicationError")
    # A pilot fault says nothing about the cable: the transaction survives it...
    assert rig.station.has_transaction(1)
    assert not rig.listener.stops
    rig.sims[1].clear_fault()
    await settle()
    assert rig.contactor()
    assert rig.listener.last(1) is ConnectorStatus.CHARGING
    # ...and an unplug after a fault is still an unplug.
    rig.sims[1].raise_fault("pilot")
    await settle()
    rig.sims[1].clear_fault()
    rig.sims[1].unplug()
    await settle()
    assert [stop.reason for stop in rig.listener.stops] == [StopReason.EV_DISCONNECTED]


async def test_contactor_opens_on_local_stop(rig: Rig) -> None:
    await charging(rig)
    assert rig.sims[1].pilot.locked
    rig.station.local_stop(1)
    assert not rig.contactor() and rig.offered() == 0
    assert not rig.sims[1].pilot.locked
    assert rig.listener.stops[-1].reason is StopReason.LOCAL
    assert rig.status() is ConnectorStatus.FINISHING


async def test_invalid_start_verdict_suspends_with_no_energy_allowance(make_rig: MakeRig) -> None:
    rig = await make_rig(StopTransactionOnInvalidId=False, MaxEnergyOnInvalidId=0)
    session = await charging(rig)
    rig.station.transaction_confirmed(session.session_id, 42, IdTagInfo(AuthStatus.INVALID))
    assert not rig.contactor() and rig.offered() == 0
    assert rig.status() is ConnectorStatus.SUSPENDED_EVSE
    assert rig.listener.last(1) is ConnectorStatus.SUSPENDED_EVSE
    assert rig.listener.stops == []


async def test_invalid_start_verdict_stops_with_stop_transaction_on_invalid_id(rig: Rig) -> None:
    session = await charging(rig)
    rig.station.transaction_confirmed(session.session_id, 42, IdTagInfo(AuthStatus.BLOCKED))
    assert not rig.contactor()
    assert rig.listener.stops[-1].reason is StopReason.DE_AUTHORIZED


# -- 2.-4. authorization --------------------------------------------------------------------


@pytest.mark.parametrize("token_first", [False, True], ids=["plug-then-token", "token-then-plug"])
async def test_both_orders_start_one_transaction(rig: Rig, token_first: bool) -> None:
    if token_first:
        await present(rig)
        rig.listener.answer("Accepted")
        assert rig.status() is ConnectorStatus.PREPARING
        await plug(rig)
    else:
        await plug(rig)
        assert rig.status() is ConnectorStatus.PREPARING
        await present(rig)
        assert [tag for tag, _ in rig.listener.requests] == [TAG]  # online: the CSMS is asked
        assert rig.listener.starts == [] and not rig.contactor()  # nothing before the answer
        rig.listener.answer("Accepted")
    await settle()
    assert len(rig.listener.starts) == 1
    assert rig.listener.starts[0].id_tag == TAG
    assert rig.status() is ConnectorStatus.CHARGING
    assert rig.listener.last(1) is ConnectorStatus.CHARGING
    assert rig.contactor()
    assert rig.sims[1].pilot.locked


@pytest.mark.parametrize("plugged", [True, False])
async def test_online_token_answered_blocked_is_cancelled(rig: Rig, plugged: bool) -> None:
    if plugged:
        await plug(rig)
    await present(rig)
    rig.listener.answer("Blocked")
    assert rig.session() is None
    assert rig.listener.starts == []
    assert not rig.contactor()
    expected = ConnectorStatus.PREPARING if plugged else ConnectorStatus.AVAILABLE
    assert rig.status() is expected
    assert rig.sessions.load_all() == []


@pytest.mark.parametrize("allow_unknown", [True, False])
@pytest.mark.parametrize("how", ["no-answer", "cannot-ask"])
async def test_no_answer_from_the_csms_falls_back_to_the_offline_rules(
    make_rig: MakeRig, allow_unknown: bool, how: str
) -> None:
    rig = await make_rig(AllowOfflineTxForUnknownId=allow_unknown)
    await plug(rig)
    rig.listener.reachable = how == "no-answer"
    await present(rig)
    assert len(rig.listener.requests) == 1
    if how == "no-answer":
        rig.listener.answer(None)
    if allow_unknown:
        assert len(rig.listener.starts) == 1
        assert rig.listener.starts[0].unknown_offline
        assert rig.status() is ConnectorStatus.CHARGING
    else:
        assert rig.listener.starts == []
        assert rig.session() is None
        assert rig.status() is ConnectorStatus.PREPARING


@pytest.mark.parametrize("allow_unknown", [True, False])
async def test_offline_unknown_token(make_rig: MakeRig, allow_unknown: bool) -> None:
    rig = await make_rig(AllowOfflineTxForUnknownId=allow_unknown)
    rig.listener.online = False
    await plug(rig)
    await present(rig)
    assert rig.listener.requests == []
    if allow_unknown:
        assert len(rig.listener.starts) == 1
        assert rig.listener.starts[0].unknown_offline
        assert rig.contactor()
    else:
        assert rig.listener.starts == []
        assert rig.session() is None
        assert not rig.contactor()


async def test_offline_token_accepted_before_starts_from_the_cache(rig: Rig) -> None:
    await charging(rig)
    rig.station.local_stop(1)
    rig.listener.online = False
    await present(rig)
    assert len(rig.listener.requests) == 1  # only the first, online, one
    assert len(rig.listener.starts) == 2
    assert not rig.listener.starts[1].unknown_offline


async def test_same_token_while_its_authorize_is_pending_is_ignored(rig: Rig) -> None:
    await present(rig)
    await present(rig)  # the card held to the reader again before the CSMS answered
    assert len(rig.listener.requests) == 1
    rig.listener.answer("Accepted")
    assert rig.session() is not None and rig.session().authorized  # type: ignore[union-attr]


async def test_answer_for_a_replaced_session_is_still_cached(rig: Rig) -> None:
    await present(rig)
    await present(rig, "OTHER")  # another card replaces the one being asked about
    assert [tag for tag, _ in rig.listener.requests] == [TAG, "OTHER"]
    rig.listener.answer("Accepted", index=0)  # the first answer arrives after all
    session = rig.session()
    assert session is not None and session.id_tag == "OTHER" and not session.authorized
    rig.listener.answer("Blocked", index=1)
    assert rig.session() is None
    rig.listener.online = False  # both answers were cached: offline, TAG starts, OTHER not
    await present(rig, "OTHER")
    assert rig.session() is None
    await plug(rig)
    await present(rig)
    assert len(rig.listener.starts) == 1 and rig.listener.starts[0].id_tag == TAG


# -- 5. ConnectionTimeOut -------------------------------------------------------------------


async def test_token_without_plug_times_out(make_rig: MakeRig) -> None:
    rig = await make_rig(ConnectionTimeOut=30)
    await present(rig)
    rig.listener.answer("Accepted")
    assert rig.status() is ConnectorStatus.PREPARING
    assert rig.station.next_deadline() == rig.clock.mono + 30
    rig.clock.advance(29)
    rig.station.tick()
    assert rig.session() is not None
    rig.clock.advance(1)
    rig.station.tick()
    assert rig.session() is None
    assert rig.listener.starts == []
    assert rig.status() is ConnectorStatus.AVAILABLE
    assert rig.listener.last(1) is ConnectorStatus.AVAILABLE
    assert rig.sessions.load_all() == []
    await plug(rig)  # too late
    assert rig.listener.starts == []


# -- 6. StopTransactionOnEVSideDisconnect ---------------------------------------------------


async def test_unplug_keeps_the_transaction_without_stop_on_ev_side_disconnect(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(StopTransactionOnEVSideDisconnect=False)
    await charging(rig)
    rig.sims[1].unplug()
    await settle()
    assert rig.listener.stops == []
    assert rig.station.has_transaction(1)
    assert rig.status() is ConnectorStatus.SUSPENDED_EV
    assert rig.listener.last(1) is ConnectorStatus.SUSPENDED_EV
    assert not rig.contactor()
    await plug(rig)  # the same EV comes back: charging goes on in the same transaction
    assert rig.contactor()
    assert len(rig.listener.starts) == 1
    assert rig.status() is ConnectorStatus.CHARGING


async def test_unplug_opens_at_once_and_stops_with_stop_on_ev_side_disconnect(rig: Rig) -> None:
    await charging(rig)
    rig.sims[1].unplug()
    await settle()
    assert not rig.contactor() and rig.offered() == 0
    assert [stop.reason for stop in rig.listener.stops] == [StopReason.EV_DISCONNECTED]
    assert not rig.station.has_transaction(1)
    assert not rig.sims[1].pilot.locked
    assert rig.listener.last(1) is ConnectorStatus.AVAILABLE


# -- 7. MinimumStatusDuration ---------------------------------------------------------------


async def test_minimum_status_duration_hides_short_statuses(make_rig: MakeRig) -> None:
    rig = await make_rig(MinimumStatusDuration=5)
    assert rig.listener.of(1) == [ConnectorStatus.AVAILABLE]  # the start-up report is at once
    await plug(rig, ready=False)
    assert rig.station.next_deadline() == rig.clock.mono + 5
    rig.clock.advance(2)
    rig.sims[1].unplug()  # Preparing lasted 2 s: never reported
    await settle()
    assert rig.station.next_deadline() is None
    rig.clock.advance(10)
    rig.station.tick()
    assert rig.listener.of(1) == [ConnectorStatus.AVAILABLE]

    await plug(rig, ready=False)
    deadline = rig.clock.mono + 5
    assert rig.station.next_deadline() == deadline
    rig.clock.advance(4)
    rig.station.tick()
    assert rig.listener.of(1) == [ConnectorStatus.AVAILABLE]
    rig.clock.advance(1)
    assert rig.clock.mono == deadline
    rig.station.tick()
    rig.station.tick()
    assert rig.listener.of(1) == [ConnectorStatus.AVAILABLE, ConnectorStatus.PREPARING]
    assert rig.station.next_deadline() is None


# -- 8. availability ------------------------------------------------------------------------


async def test_availability_is_scheduled_during_a_transaction_and_at_once_when_idle(
    rig: Rig,
) -> None:
    assert rig.station.set_availability(2, False) == "Accepted"
    assert rig.listener.last(2) is ConnectorStatus.UNAVAILABLE
    assert rig.station.set_availability(2, True) == "Accepted"
    assert rig.listener.last(2) is ConnectorStatus.AVAILABLE
    await charging(rig)
    assert rig.station.set_availability(1, False) == "Scheduled"
    assert rig.status() is ConnectorStatus.CHARGING
    assert rig.contactor()
    rig.station.local_stop(1)
    assert rig.status() is ConnectorStatus.UNAVAILABLE
    assert rig.listener.last(1) is ConnectorStatus.UNAVAILABLE
    await present(rig)
    assert isinstance(rig.refused[-1], InvalidState)


async def test_station_wide_availability(rig: Rig) -> None:
    assert rig.station.set_availability(0, False) == "Accepted"
    for evse_id in (0, 1, 2):
        assert rig.listener.last(evse_id) is ConnectorStatus.UNAVAILABLE
    assert not rig.station.remote_start(None, TAG)
    assert rig.station.set_availability(0, True) == "Accepted"
    for evse_id in (0, 1, 2):
        assert rig.listener.last(evse_id) is ConnectorStatus.AVAILABLE

    await charging(rig)
    assert rig.station.set_availability(0, False) == "Scheduled"
    assert rig.listener.last(2) is ConnectorStatus.UNAVAILABLE  # idle: at once
    assert rig.status(1) is ConnectorStatus.CHARGING
    assert rig.contactor(1)
    rig.station.local_stop(1)
    assert rig.listener.last(1) is ConnectorStatus.UNAVAILABLE
    assert rig.listener.last(0) is ConnectorStatus.UNAVAILABLE


# -- 9. remote start / stop -----------------------------------------------------------------


async def test_remote_start_with_a_current_limit(rig: Rig) -> None:
    await plug(rig)
    assert rig.station.remote_start(1, TAG, limit_a=10)
    assert [tag for tag, _ in rig.listener.requests] == [TAG]
    rig.listener.answer("Accepted")
    assert rig.offered() == 10
    assert rig.contactor()
    assert rig.listener.starts[0].remote
    assert rig.listener.last(1) is ConnectorStatus.CHARGING


async def test_remote_start_without_authorize_remote_tx_requests(make_rig: MakeRig) -> None:
    rig = await make_rig(AuthorizeRemoteTxRequests=False)
    await plug(rig)
    assert rig.station.remote_start(1, TAG)
    assert rig.listener.requests == []
    assert len(rig.listener.starts) == 1
    assert rig.contactor()
    assert rig.listener.last(1) is ConnectorStatus.CHARGING


async def test_remote_start_refused_on_a_busy_faulted_or_unknown_evse(rig: Rig) -> None:
    await charging(rig)
    rig.station.raise_fault(2, "GroundFailure")
    assert not rig.station.remote_start(1, "OTHER")
    assert not rig.station.remote_start(2, "OTHER")
    assert not rig.station.remote_start(9, "OTHER")
    assert not rig.station.remote_start(None, "OTHER")
    assert len(rig.listener.requests) == 1
    assert rig.session(1) is not None and rig.session(1) is rig.listener.starts[0]
    assert rig.session(2) is None


async def test_remote_stop_by_transaction_id(rig: Rig) -> None:
    session = await charging(rig)
    rig.station.transaction_confirmed(session.session_id, 42, IdTagInfo(AuthStatus.ACCEPTED))
    assert not rig.station.remote_stop(41)
    assert rig.station.has_transaction(1)
    assert rig.station.remote_stop(42)
    assert rig.listener.stops[-1].reason is StopReason.REMOTE
    assert rig.listener.stops[-1].session.transaction_id == 42
    assert not rig.contactor()
    assert not rig.station.remote_stop(42)


# -- 10. MaxEnergyOnInvalidId ---------------------------------------------------------------


async def test_max_energy_on_invalid_id_limits_the_energy(make_rig: MakeRig) -> None:
    rig = await make_rig(StopTransactionOnInvalidId=False, MaxEnergyOnInvalidId=100)
    session = await charging(rig)
    assert session.meter_start_wh == pytest.approx(1000.0)
    rig.station.transaction_confirmed(session.session_id, 7, IdTagInfo(AuthStatus.INVALID))
    assert rig.contactor() and rig.offered() == 32
    assert rig.status() is ConnectorStatus.CHARGING

    rig.clock.advance(10)  # 61 Wh at 22 kW
    await rig.read()
    assert rig.contactor() and rig.offered() == 32
    rig.clock.advance(10)  # 123 Wh: past the allowance
    await rig.read()
    assert not rig.contactor()
    assert rig.offered() == 0
    assert rig.status() is ConnectorStatus.SUSPENDED_EVSE
    assert rig.listener.last(1) is ConnectorStatus.SUSPENDED_EVSE
    assert rig.station.has_transaction(1) and rig.listener.stops == []
    energy = rig.sims[1].snapshot().energy_import_wh
    assert energy - 1000.0 == pytest.approx(FULL_POWER_W * 20 / 3600)
    rig.clock.advance(60)
    assert rig.sims[1].snapshot().energy_import_wh == energy


# -- 11. meter values -----------------------------------------------------------------------


def contexts(meter_value: dict[str, Any]) -> set[str]:
    return {value["context"] for value in meter_value["sampledValue"]}


async def test_periodic_meter_values_during_a_transaction(make_rig: MakeRig) -> None:
    rig = await make_rig(MeterValueSampleInterval=10)
    session = await charging(rig)
    assert rig.station.next_deadline() == rig.clock.mono + 10
    rig.clock.advance(10)
    await rig.read()
    rig.station.tick()
    rig.station.tick()
    assert len(rig.listener.meter) == 1
    evse_id, sampled_for, meter_value = rig.listener.meter[0]
    assert evse_id == 1 and sampled_for is session
    assert contexts(meter_value) == {"Sample.Periodic"}
    assert meter_value["timestamp"] == format_iso(rig.clock.wall)
    [value] = meter_value["sampledValue"]
    assert value["measurand"] == ENERGY
    assert float(value["value"]) == pytest.approx(1000.0 + FULL_POWER_W * 10 / 3600, abs=0.001)
    assert rig.station.next_deadline() == rig.clock.mono + 10


async def test_clock_aligned_meter_values(make_rig: MakeRig) -> None:
    rig = await make_rig(ClockAlignedDataInterval=900)
    boundary = 20_200 * DAY + 900.0
    assert rig.station.next_deadline() == rig.clock.mono + (boundary - rig.clock.wall)
    rig.clock.advance(799)
    rig.station.tick()
    assert rig.listener.meter == []
    rig.clock.advance(1)
    assert rig.clock.wall == boundary
    rig.station.tick()
    assert [evse_id for evse_id, _, _ in rig.listener.meter] == [1, 2]
    for _, session, meter_value in rig.listener.meter:
        assert session is None
        assert contexts(meter_value) == {"Sample.Clock"}
        assert meter_value["timestamp"] == format_iso(boundary)
    assert rig.station.next_deadline() == rig.clock.mono + 900


async def test_stop_transaction_data(make_rig: MakeRig) -> None:
    rig = await make_rig(MeterValueSampleInterval=10, StopTxnSampledData=ENERGY)
    await charging(rig)
    rig.clock.advance(10)
    await rig.read()
    rig.station.tick()
    rig.clock.advance(5)
    await rig.read()
    rig.station.local_stop(1)
    stop = rig.listener.stops[-1]
    assert [contexts(mv) for mv in stop.data] == [
        {"Transaction.Begin"},
        {"Sample.Periodic"},
        {"Transaction.End"},
    ]
    assert float(stop.data[0]["sampledValue"][0]["value"]) == pytest.approx(1000.0)
    assert float(stop.data[-1]["sampledValue"][0]["value"]) == pytest.approx(stop.meter_wh)
    assert stop.meter_wh == pytest.approx(1000.0 + FULL_POWER_W * 15 / 3600)


# -- 12. restart ----------------------------------------------------------------------------


async def test_restart_ends_an_open_transaction_with_power_loss(make_rig: MakeRig) -> None:
    rig = await make_rig()
    session = await charging(rig)  # its first reading is persisted
    rig.station.transaction_confirmed(session.session_id, 42, IdTagInfo(AuthStatus.ACCEPTED))
    rig.clock.advance(20)
    await rig.read()  # persisted: 15 s passed since the last persist
    persisted_wh = rig.sims[1].snapshot().energy_import_wh
    persisted_at = format_iso(rig.clock.wall)
    rig.clock.advance(5)
    await rig.read()  # not persisted: only 5 s
    assert rig.sims[1].snapshot().energy_import_wh > persisted_wh
    assert rig.listener.stops == []

    after = await make_rig(db=rig.db, clock=rig.clock)
    [stop] = after.listener.stops
    assert stop.reason is StopReason.POWER_LOSS
    assert stop.session.session_id == session.session_id
    assert stop.session.transaction_id == 42
    assert stop.session.id_tag == TAG
    assert stop.meter_wh == pytest.approx(persisted_wh)
    assert stop.timestamp == persisted_at
    assert after.sessions.load_all() == []
    assert after.session(1) is None
    assert after.listener.last(1) is ConnectorStatus.AVAILABLE


# -- 13. tokens and local commands ----------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "X" * 21, "bad\ttag", "caf\u00e9"])
async def test_invalid_id_tag_raises(rig: Rig, bad: str) -> None:
    with pytest.raises(InvalidArgument):
        rig.station.token_presented(1, bad)
    with pytest.raises(InvalidArgument):
        rig.station.local_start(1, bad)
    assert rig.session() is None
    assert rig.listener.requests == []


async def test_local_start_on_a_busy_evse_and_unknown_evses(rig: Rig) -> None:
    session_id = rig.station.local_start(1, TAG)
    session = rig.session()
    assert session is not None and session.session_id == session_id
    with pytest.raises(InvalidState):
        rig.station.local_start(1, "OTHER")
    with pytest.raises(InvalidState):
        rig.station.local_stop(2)
    calls: list[Callable[[], object]] = [
        lambda: rig.station.local_start(9, TAG),
        lambda: rig.station.local_stop(9),
        lambda: rig.station.token_presented(9, TAG),
        lambda: rig.station.set_availability(9, False),
        lambda: rig.station.raise_fault(9, "OtherError"),
        lambda: rig.station.status_of(9),
    ]
    for call in calls:
        with pytest.raises(UnknownEvse):
            call()


async def test_the_same_token_stops_and_another_is_ignored(rig: Rig) -> None:
    session = await charging(rig)
    await present(rig, "STRANGER")
    assert rig.session() is session
    assert len(rig.listener.requests) == 1
    assert rig.listener.stops == []
    await present(rig, TAG)
    assert [stop.reason for stop in rig.listener.stops] == [StopReason.LOCAL]
    assert rig.session() is None
    assert not rig.contactor()


async def test_group_token_unknown_locally_is_asked_and_stops_with_its_own_tag(rig: Rig) -> None:
    """C09 / 1.6 parentIdTag: a token whose group is not known locally is authorized with the
    CSMS; the same group stops the session, and the stop names the stopping token."""
    await plug(rig)
    await present(rig, TAG)
    _, done = rig.listener.requests[-1]
    done(IdTagInfo(AuthStatus.ACCEPTED, None, "FLEET"))
    await rig.read()
    session = rig.session()
    assert session is not None and session.started and session.parent_id_tag == "FLEET"
    await present(rig, "OUTSIDER")
    assert rig.listener.requests[-1][0] == "OUTSIDER"  # asked, not ignored blindly
    rig.listener.requests[-1][1](IdTagInfo(AuthStatus.ACCEPTED, None, "OTHERS"))
    assert rig.session() is session and rig.listener.stops == []
    await present(rig, "COLLEAGUE")
    rig.listener.requests[-1][1](IdTagInfo(AuthStatus.ACCEPTED, None, "FLEET"))
    [stop] = rig.listener.stops
    assert stop.reason is StopReason.LOCAL and stop.session.stop_id_tag == "COLLEAGUE"
    # The answers were cached: the colleague's group is known locally now.
    assert rig.station.authorizer.group_of("COLLEAGUE", rig.clock.wall) == "FLEET"


async def test_group_token_offline_is_ignored(rig: Rig) -> None:
    await plug(rig)
    await present(rig, TAG)
    rig.listener.requests[-1][1](IdTagInfo(AuthStatus.ACCEPTED, None, "FLEET"))
    asked = len(rig.listener.requests)
    rig.listener.online = False
    await present(rig, "COLLEAGUE")  # cannot be asked: not of the group as far as is known
    assert len(rig.listener.requests) == asked
    assert rig.listener.stops == [] and rig.session() is not None


async def test_token_length_follows_the_protocol_in_use(rig: Rig) -> None:
    long_token = "E" * 36
    with pytest.raises(InvalidArgument, match="1 to 20"):
        rig.station.token_presented(1, long_token)  # the recorder speaks 1.6 (no limit given)
    rig.listener.id_token_max_length = 36  # type: ignore[attr-defined]
    rig.station.token_presented(1, long_token, "eMAID")
    session = rig.session()
    assert session is not None
    assert (session.id_tag, session.id_token_type) == (long_token, "eMAID")
    assert rig.listener.requests[-1][0] == long_token
    for bad, kind in (("E" * 37, None), ("caf\u00e9", None), ("", None), ("X", "Bogus")):
        with pytest.raises(InvalidArgument):
            rig.station.token_presented(2, bad, kind)
    with pytest.raises(InvalidArgument, match="NoAuthorization"):
        rig.station.token_presented(2, "", "NoAuthorization")
    assert rig.session(2) is None


async def test_start_button_needs_authorization_off(make_rig: MakeRig) -> None:
    rig = await make_rig()
    with pytest.raises(InvalidState, match="AuthEnabled"):
        rig.station.start_button(1)
    assert rig.session() is None


async def test_free_charging_starts_at_plug_in_and_the_button_stops_it(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(AuthEnabled=False)
    await plug(rig)
    await rig.read()
    session = rig.session()
    assert session is not None and session.started and session.authorized
    assert (session.id_tag, session.id_token_type) == ("", "NoAuthorization")
    assert rig.listener.requests == []  # nobody asked
    assert rig.contactor()
    # A card is taken without asking either, but this EVSE is busy with the free session.
    with pytest.raises(InvalidState, match="already has a session"):
        rig.station.local_start(1, TAG)
    rig.station.start_button(1)  # pressed again: stops it
    [stop] = rig.listener.stops
    assert stop.reason is StopReason.LOCAL and stop.session.stop_id_token_type == "NoAuthorization"
    assert not rig.contactor()
    # The cable still in: no new session until it is plugged in again or the button pressed.
    assert rig.session() is None
    session_id = rig.station.start_button(1)
    again = rig.session()
    assert again is not None and again.session_id == session_id and again.started


async def test_free_charging_takes_tokens_without_asking(make_rig: MakeRig) -> None:
    rig = await make_rig(AuthEnabled=False)
    await present(rig, TAG, evse_id=2)
    await plug(rig, 2)
    session = rig.session(2)
    assert session is not None and session.started and session.id_tag == TAG
    assert rig.listener.requests == []


# -- 14. unlock -----------------------------------------------------------------------------


async def test_unlock_stops_the_transaction_and_releases_the_lock(rig: Rig) -> None:
    await charging(rig)
    assert rig.sims[1].pilot.locked
    assert rig.station.unlock(1) == "Unlocked"
    assert [stop.reason for stop in rig.listener.stops] == [StopReason.UNLOCK_COMMAND]
    assert not rig.sims[1].pilot.locked
    assert not rig.contactor()
    assert rig.station.unlock(9) == "NotSupported"


async def test_welded_contactor_is_reported_and_keeps_the_evse_faulted(rig: Rig) -> None:
    await charging(rig)
    rig.sims[1].weld()
    rig.station.local_stop(1)
    await settle()
    assert rig.listener.statuses[-1] == (1, ConnectorStatus.FAULTED, "PowerSwitchFailure")
    with pytest.raises(InvalidState):
        rig.station.local_start(1, TAG)
    rig.sims[1].weld(False)  # repaired: the device clears its fault
    await settle()
    assert rig.listener.last(1) is not ConnectorStatus.FAULTED


async def test_emergency_stop_and_rcd(rig: Rig) -> None:
    await charging(rig)
    rig.sims[1].safety.press_emergency_stop()
    await settle()
    assert not rig.contactor()
    assert [stop.reason for stop in rig.listener.stops] == [StopReason.EMERGENCY_STOP]
    assert rig.listener.statuses[-1][1:] == (ConnectorStatus.FAULTED, "OtherError")
    with pytest.raises(InvalidState):
        rig.station.local_start(1, TAG)
    rig.sims[1].safety.press_emergency_stop(False)
    await settle()
    assert rig.listener.last(1) is not ConnectorStatus.FAULTED
    rig.sims[1].safety.trip_rcd()
    await settle()
    assert rig.listener.statuses[-1][1:] == (ConnectorStatus.FAULTED, "GroundFailure")
    rig.sims[1].safety.trip_rcd(False)
    await settle()
    assert rig.listener.last(1) is not ConnectorStatus.FAULTED
