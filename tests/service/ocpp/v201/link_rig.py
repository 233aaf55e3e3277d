"""A charger for the 2.0.1 station link and remote tests, wired as service/charger.py wires it.

Real parts throughout: SQLite in tmp_path, the configuration with its overlay, the device
model, the station on simulated EVSE hardware, the sans-I/O engine over the durable queue, the
1.6 and 2.0.1 links behind the version dispatcher. Only the clock is fake. The test plays the
CSMS: `flush()` answers every CALL the charger sends (in order, one in flight at a time) with
the schema's plainest answer, and records it in `calls`.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from hal.sim import SimulatedEvse
from service.config import Connector, Csms, Evse, Identity, OcppKeyValue, Settings
from service.ocpp.engine import Engine, EngineOptions
from service.ocpp.rpc import OcppVersion
from service.ocpp.v16 import core as v16_core
from service.ocpp.v16.remote import Remote
from service.ocpp.v16.transactions import V16StationLink
from service.ocpp.v201 import device_model as dm
from service.ocpp.v201 import provisioning
from service.ocpp.v201.link import V201StationLink
from service.ocpp.v201.remote import V201Remote
from service.ocpp.versions import VersionDispatcher
from service.station.api import ApiError
from service.station.auth import AuthorizationCache, Authorizer, AuthSettings
from service.station.configuration import Configuration
from service.station.sessions import SessionStore
from service.station.station import Station
from service.store.db import Database
from service.store.overlay import ConfigOverlay, KeyValueState
from service.store.queue import DurableQueue

T0 = 1_800_000_000.0  # 2027-01-15, a valid wall time
ENERGY = "Energy.Active.Import.Register"


class FakeClock:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = T0

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


def make_settings(versions: tuple[str, ...], keys: dict[str, OcppKeyValue]) -> Settings:
    """Two EVSEs: #1 with one Type 2 socket (3 phases, 32 A), #2 with two connectors."""
    return Settings(
        identity=Identity("CP-201", "Acme", "Model-X"),
        csms=Csms(url="ws://csms.invalid/ocpp", ocpp_versions=versions),  # type: ignore[arg-type]
        evses=(
            Evse(id=1),
            Evse(
                id=2,
                connectors=(
                    Connector(id=1, type="cCCS2", max_current_a=16.0, phases=1),
                    Connector(id=2, type="sType2", max_current_a=16.0, phases=1),
                ),
            ),
        ),
        ocpp_keys=dict(keys),
    )


class Rig:
    def __init__(
        self,
        db_path: Path,
        keys: dict[str, OcppKeyValue] | None = None,
        *,
        versions: tuple[str, ...] = ("ocpp2.0.1", "ocpp1.6"),
        clock: FakeClock | None = None,
    ) -> None:
        self.clock = clock or FakeClock()
        self.settings = make_settings(versions, keys or {})
        self.db = Database.open(db_path)
        self.cfg = Configuration(self.settings, ConfigOverlay(self.db), clock=self.clock)
        self.sims = {
            evse.id: SimulatedEvse(
                evse.connectors, initial_energy_wh=1000.0, clock=self.clock.monotonic
            )
            for evse in self.settings.evses
        }
        counter = itertools.count(1)
        self.queue = DurableQueue(self.db, max_other=1000)
        self.engine = Engine(
            queue=self.queue,
            clock=self.clock,
            new_id=lambda: f"cs-{next(counter)}",
            settings=self.cfg,
            boot_payload=lambda v: (
                provisioning.boot_payload(self.settings.identity)
                if v is OcppVersion.V201
                else v16_core.boot_payload(self.settings.identity)
            ),
            options=EngineOptions(call_timeout_s=30),
        )
        provisioning.install(self.engine, registered=lambda: False)
        self.station = Station(
            hardware={
                n: (sim.hardware, e.connectors[0].max_current_a, e.connectors[0].phases)
                for (n, sim), e in zip(self.sims.items(), self.settings.evses, strict=True)
            },
            configuration=self.cfg,
            authorizer=Authorizer(
                AuthorizationCache(self.db), lambda: AuthSettings.from_configuration(self.cfg)
            ),
            sessions=SessionStore(self.db),
            clock=self.clock,
            time=self.engine.time,
            timestamp=self.engine.timestamp,
        )
        self.model = dm.DeviceModel(
            self.settings,
            self.db,
            self.cfg,
            station=self.station,
            now_iso=self.engine.now_iso,
            clock=self.clock,
        )
        dm.install(self.engine, self.model)
        v16_core.install(self.engine, self.station)
        self.resets: list[str] = []
        self.tasks: list[asyncio.Future[None]] = []
        self.link16 = V16StationLink(self.engine, self.station)
        self.remote16 = Remote(
            self.engine, self.station, request_reset=self.resets.append, spawn=self._spawn
        )
        self.link = V201StationLink(
            self.engine,
            self.station,
            self.db,
            self.model,
            connectors={e.id: tuple(c.id for c in e.connectors) for e in self.settings.evses},
        )
        self.links = VersionDispatcher(
            self.engine,
            self.station,
            {OcppVersion.V16: self.link16, OcppVersion.V201: self.link},
            KeyValueState(self.db),
            preferred=OcppVersion.from_subprotocol(versions[0]),
        )
        self.station.attach(self.links)
        self.remote = V201Remote(
            self.engine,
            self.station,
            self.link,
            request_reset=self.resets.append,
            spawn=self._spawn,
        )
        self.refused: list[ApiError] = []
        for evse_id, sim in self.sims.items():
            sim.pilot.on_change(functools.partial(self.station.pilot_changed, evse_id))
            sim.token_reader.on_token(functools.partial(self._token, evse_id))
        # Playing the CSMS.
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.auth_status: dict[str, str] = {}  # idToken -> status (default Accepted)
        self.hold: set[str] = set()  # actions left unanswered
        self.held: list[list[Any]] = []
        self._ids = itertools.count(1)
        self.answers: list[list[Any]] = []  # CALLRESULT/CALLERROR frames to the CSMS's calls

    def _spawn(self, coroutine: Awaitable[None]) -> object:
        task = asyncio.ensure_future(coroutine)
        self.tasks.append(task)
        return task

    def _token(self, evse_id: int, id_tag: str) -> None:
        try:
            self.station.token_presented(evse_id, id_tag)
        except ApiError as exc:
            self.refused.append(exc)

    # ------------------------------------------------------------------ life
    async def start(self) -> None:
        self.station.start()
        self.links.start()
        for evse_id in self.sims:
            await self.read(evse_id)

    async def read(self, evse_id: int = 1) -> None:
        self.station.meter_reading(evse_id, await self.sims[evse_id].meter.read())

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.db.close()

    # ------------------------------------------------------------------ the CSMS side
    def connect(self, version: OcppVersion = OcppVersion.V201) -> None:
        self.engine.connection_opened(version)
        self.flush()

    def disconnect(self) -> None:
        self.engine.connection_closed()

    def _answer_for(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        now = "2027-01-15T08:00:00Z"
        if action == "BootNotification":
            return {"status": "Accepted", "currentTime": now, "interval": 300}
        if action == "Heartbeat":
            return {"currentTime": now}
        if action == "Authorize":
            token = payload.get("idToken", {}).get("idToken") or payload.get("idTag")
            status = self.auth_status.get(str(token), "Accepted")
            key = "idTokenInfo" if "idToken" in payload else "idTagInfo"
            return {key: {"status": status}}
        if action == "TransactionEvent" and "idToken" in payload:
            token = payload["idToken"]["idToken"]
            return {"idTokenInfo": {"status": self.auth_status.get(token, "Accepted")}}
        if action == "StartTransaction":
            return {"transactionId": 1, "idTagInfo": {"status": "Accepted"}}
        return {}

    def flush(self) -> list[list[Any]]:
        """Answer every CALL the charger sends until it has nothing more; return the frames."""
        seen: list[list[Any]] = []
        for _ in range(1000):
            frames = [json.loads(f) for f in self.engine.take_frames()]
            if not frames:
                break
            seen += frames
            for frame in frames:
                if frame[0] != 2:
                    self.answers.append(frame)
                    continue
                self.calls.append((frame[2], frame[3]))
                if frame[2] in self.hold:
                    self.held.append(frame)
                    continue
                self.engine.receive(json.dumps([3, frame[1], self._answer_for(frame[2], frame[3])]))
        return seen

    def answer_held(self, payload: dict[str, Any] | None = None) -> None:
        frame = self.held.pop(0)
        self.engine.receive(
            json.dumps([3, frame[1], payload or self._answer_for(frame[2], frame[3])])
        )
        self.flush()

    def call(self, action: str, payload: dict[str, Any]) -> list[Any]:
        """Send a CALL to the charger; return its answer frame (CALLRESULT or CALLERROR)."""
        unique_id = f"csms-{next(self._ids)}"
        before = len(self.answers)
        self.engine.receive(json.dumps([2, unique_id, action, payload]))
        self.flush()
        mine = [a for a in self.answers[before:] if a[1] == unique_id]
        assert mine, f"no answer to {action}"
        return mine[0]

    def result(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        answer = self.call(action, payload)
        assert answer[0] == 3, answer
        result: dict[str, Any] = answer[2]
        return result

    # ------------------------------------------------------------------ EV side
    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)
        self.flush()

    async def plug(self, evse_id: int = 1, *, ready: bool = True) -> None:
        self.sims[evse_id].set_ev_ready(ready)
        self.sims[evse_id].plug()
        await self.settle()

    async def unplug(self, evse_id: int = 1) -> None:
        self.sims[evse_id].unplug()
        await self.settle()

    async def present(self, id_tag: str, evse_id: int = 1) -> None:
        self.sims[evse_id].present_rfid(id_tag)
        await self.settle()

    async def tick(self, seconds: float) -> None:
        self.clock.advance(seconds)
        for evse_id in self.sims:
            await self.read(evse_id)
        self.station.tick()
        self.engine.tick()
        self.flush()

    # ------------------------------------------------------------------ reading the record
    def sent(self, action: str) -> list[dict[str, Any]]:
        return [p for a, p in self.calls if a == action]

    def events(self) -> list[dict[str, Any]]:
        return self.sent("TransactionEvent")

    def evse_of(self, event: dict[str, Any]) -> int:
        """The EVSE of an event's transaction (`evse` is only in its first events)."""
        tx_id = event["transactionInfo"]["transactionId"]
        for e in self.events():
            if e["transactionInfo"]["transactionId"] == tx_id and "evse" in e:
                return int(e["evse"]["id"])
        raise AssertionError(f"no event of {tx_id} names its EVSE")
