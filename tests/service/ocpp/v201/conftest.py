"""A charger for the 2.0.1 device model tests, wired as service/charger.py wires it.

Real parts throughout: SQLite in tmp_path, the 1.6 configuration with its overlay, the station
on simulated EVSE hardware, the sans-I/O engine over the durable queue, with a fake clock.
The test plays the CSMS by feeding frames to the engine and reading what it sends.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from hal.sim import SimulatedEvse
from service.config import Connector, Csms, Evse, Identity, OcppKeyValue, Settings
from service.ocpp.engine import Engine, EngineOptions
from service.ocpp.rpc import OcppVersion
from service.ocpp.v16 import configuration as v16_configuration
from service.ocpp.v201 import device_model as dm
from service.ocpp.v201 import provisioning
from service.ocpp.v201 import reports as v201_reports
from service.station.auth import AuthorizationCache, Authorizer, AuthSettings
from service.station.clock import format_iso
from service.station.configuration import Configuration
from service.station.sessions import SessionStore
from service.station.station import Station
from service.store.db import Database
from service.store.overlay import ConfigOverlay
from service.store.queue import DurableQueue

T0 = 1_800_000_000.0  # 2027-01-15, a valid wall time


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


def make_settings(
    keys: dict[str, OcppKeyValue] | None = None, csms: Csms | None = None
) -> Settings:
    """Two EVSEs: #1 with one Type 2 socket (3 phases, 32 A), #2 with two connectors."""
    return Settings(
        identity=Identity("CP-DM", "Acme", "Model-X", serial_number="SN-42"),
        csms=csms or Csms(url="ws://csms.invalid/ocpp", call_timeout_s=25),
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
        ocpp_keys=dict(keys or {}),
    )


class Charger:
    """The pieces of service/charger.py that the device model touches."""

    def __init__(
        self,
        db_path: Path,
        keys: dict[str, OcppKeyValue] | None = None,
        *,
        csms: Csms | None = None,
    ) -> None:
        self.clock = FakeClock()
        self.settings = make_settings(keys, csms)
        self.db = Database.open(db_path)
        self.cfg = Configuration(self.settings, ConfigOverlay(self.db), clock=self.clock)
        self.sims = {
            evse.id: SimulatedEvse(
                evse.connectors, initial_energy_wh=0.0, clock=self.clock.monotonic
            )
            for evse in self.settings.evses
        }
        counter = itertools.count(1)
        self.engine = Engine(
            queue=DurableQueue(self.db, max_other=1000),
            clock=self.clock,
            new_id=lambda: f"cs-{next(counter)}",
            settings=self.cfg,
            boot_payload=lambda v: provisioning.boot_payload(self.settings.identity),
            options=EngineOptions(call_timeout_s=30),
        )
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
            timestamp=lambda: format_iso(self.clock.wall),
        )
        self.applied: list[str] = []  # what charger._config_changed would have applied
        self.model = dm.DeviceModel(
            self.settings,
            self.db,
            self.cfg,
            station=self.station,
            now_iso=self.engine.now_iso,
            config_changed=self.applied.append,
            clock=self.clock,
        )
        dm.install(self.engine, self.model)
        self.reports = v201_reports.install(self.engine, self.model)
        v16_configuration.install(self.engine, self.cfg, on_change=self.applied.append)
        self.changes: list[tuple[str, str, int | None, str]] = []
        self.model.on_change(lambda *args: self.changes.append(args))
        self._ids = itertools.count(1)
        self.rest: list[list[Any]] = []  # frames sent after the answer of the last call()

    # -- playing the CSMS
    def connect(self, version: OcppVersion = OcppVersion.V201, *, status: str = "Accepted") -> None:
        self.engine.connection_opened(version)
        frames = self.sent()
        self.rest = frames
        if frames and frames[0][2] == "BootNotification":
            [boot] = frames
            self.rest = []
            self.answer(
                boot[1], {"status": status, "currentTime": "2027-01-15T08:00:00Z", "interval": 300}
            )

    def disconnect(self) -> None:
        self.engine.connection_closed()

    def sent(self) -> list[list[Any]]:
        return [json.loads(frame) for frame in self.engine.take_frames()]

    def answer(self, unique_id: str, payload: dict[str, Any]) -> None:
        self.engine.receive(json.dumps([3, unique_id, payload]))

    def call(self, action: str, payload: dict[str, Any]) -> list[Any]:
        """Send a CALL; return the answer frame (CALLRESULT or CALLERROR), leave the rest."""
        unique_id = f"csms-{next(self._ids)}"
        self.engine.receive(json.dumps([2, unique_id, action, payload]))
        frames = self.sent()
        answer = frames[0]
        assert answer[1] == unique_id, frames
        self.rest = frames[1:]
        return answer

    def result(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        answer = self.call(action, payload)
        assert answer[0] == 3, answer
        result: dict[str, Any] = answer[2]
        return result

    def get(self, *items: dict[str, Any]) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = self.result(
            "GetVariables", {"getVariableData": list(items)}
        )["getVariableResult"]
        return results

    def set(self, *items: dict[str, Any]) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = self.result(
            "SetVariables", {"setVariableData": list(items)}
        )["setVariableResult"]
        return results

    def drain_reports(self) -> list[dict[str, Any]]:
        """Acknowledge NotifyReports one at a time (one CALL in flight); return their payloads."""
        payloads: list[dict[str, Any]] = []
        pending = list(self.rest)
        self.rest = []
        while pending:
            frame = pending.pop(0)
            if frame[0] != 2:
                continue
            assert frame[2] == "NotifyReport", frame
            payloads.append(frame[3])
            self.answer(frame[1], {})
            pending += self.sent()
        return payloads

    def close(self) -> None:
        self.db.close()


def item(
    component: str,
    variable: str,
    *,
    evse: int | None = None,
    connector: int | None = None,
    instance: str | None = None,
    attribute: str | None = None,
    value: str | None = None,
    component_instance: str | None = None,
) -> dict[str, Any]:
    comp: dict[str, Any] = {"name": component}
    if component_instance is not None:
        comp["instance"] = component_instance
    if evse is not None:
        comp["evse"] = {"id": evse} if connector is None else {"id": evse, "connectorId": connector}
    var: dict[str, Any] = {"name": variable}
    if instance is not None:
        var["instance"] = instance
    data: dict[str, Any] = {"component": comp, "variable": var}
    if attribute is not None:
        data["attributeType"] = attribute
    if value is not None:
        data["attributeValue"] = value
    return data


@pytest.fixture
def charger(tmp_path: Path) -> Any:
    rig = Charger(tmp_path / "evsed.db")
    rig.connect()
    yield rig
    rig.close()
