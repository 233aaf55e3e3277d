"""Which OCPP version the station speaks: the listener that forwards to the 1.6 or 2.0.1 link.

The station has one listener. `VersionDispatcher` is it, and forwards every call to the link of
the *active* version: the version the connection negotiated, else (offline) the last one this
process connected with, else the last one any run registered with (kept in the ``kv`` table,
``ocpp.version``), else the first configured one. The engine uses the same choice
(`Engine.fallback_version`) for what it queues, and never sends a queued message under another
version than the one it was made for (service/ocpp/engine.py).

A link that becomes current is activated (it forgets what it saw and reported), and when a
registration is accepted under another version than the statuses were reported under, the
station reports every status again, so the CSMS of the new version learns every connector's
state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from service.ocpp.engine import Engine
from service.ocpp.rpc import OcppVersion
from service.station.auth import IdTagInfo
from service.station.model import ConnectorStatus, Session, StopReason
from service.station.station import Station, StationListener
from service.store.overlay import KeyValueState

log = logging.getLogger("evsed.ocpp")

VERSION_KEY = "ocpp.version"


class VersionDispatcher:
    def __init__(
        self,
        engine: Engine,
        station: Station,
        links: Mapping[OcppVersion, StationListener],
        state: KeyValueState,
        *,
        preferred: OcppVersion,
    ) -> None:
        if preferred not in links:
            raise ValueError(f"no station link for the preferred OCPP version {preferred.value}")
        self.engine = engine
        self.station = station
        self.links = dict(links)
        self.preferred = preferred
        self._state = state
        stored = state.get(VERSION_KEY)
        remembered: OcppVersion | None = None
        if stored is not None:
            try:
                remembered = OcppVersion(stored)
            except ValueError:
                log.warning("ignoring the stored OCPP version %r", stored)
        if remembered not in self.links:
            remembered = None
        engine.fallback_version = remembered or preferred
        self._active = self.version  # the version the statuses were last reported under
        self._routed = self.version  # the version whose link got the last call
        engine.subscribe(self._on_engine_event)
        station.on_change(self._station_changed)

    # ------------------------------------------------------------------ choice
    @property
    def version(self) -> OcppVersion:
        active = self.engine.active_version
        return active if active is not None and active in self.links else self.preferred

    @property
    def current(self) -> StationListener:
        version = self.version
        link = self.links[version]
        if version is not self._routed:
            self._routed = version
            activated = getattr(link, "activated", None)
            if callable(activated):
                activated()  # what it saw while another version spoke is stale
        return link

    def _hook(self, name: str) -> Callable[..., Any] | None:
        hook = getattr(self.current, name, None)
        return hook if callable(hook) else None

    def start(self) -> None:
        """After `Station.start`: let every link finish what a previous run left open."""
        for link in self.links.values():
            recover = getattr(link, "recover", None)
            if callable(recover):
                recover()

    def _on_engine_event(self, event: str, data: Mapping[str, Any]) -> None:
        if event != "registration" or data.get("status") != "Accepted":
            return
        version = self.engine.version
        if version is None or version not in self.links:
            return
        if self._state.get(VERSION_KEY) != version.value:
            self._state.set(VERSION_KEY, version.value)
        if version is not self._active:
            log.warning(
                "now speaking OCPP %s (was %s): reporting every status again",
                version.value,
                self._active.value,
            )
            self._active = version
            self.station.report_all()

    def _station_changed(self, evse_id: int) -> None:
        hook = self._hook("station_changed")
        if hook is not None:
            hook(evse_id)

    # ------------------------------------------------------------------ StationListener
    @property
    def online(self) -> bool:
        return self.current.online

    def status_changed(
        self, evse_id: int, status: ConnectorStatus, error_code: str, info: str, timestamp: str
    ) -> None:
        self.current.status_changed(evse_id, status, error_code, info, timestamp)

    @property
    def id_token_max_length(self) -> int:
        """The longest token the active version carries (1.6: 20, 2.0.1: 36)."""
        limit = getattr(self.current, "id_token_max_length", 20)
        return limit if isinstance(limit, int) else 20

    def authorize(
        self,
        id_tag: str,
        done: Callable[[IdTagInfo | None], None],
        *,
        token_type: str | None = None,
    ) -> bool:
        return self.current.authorize(id_tag, done, token_type=token_type)

    def transaction_started(self, session: Session) -> None:
        self.current.transaction_started(session)

    def transaction_stopped(
        self,
        session: Session,
        reason: StopReason,
        meter_stop_wh: float,
        timestamp: str,
        transaction_data: list[dict[str, Any]],
    ) -> None:
        self.current.transaction_stopped(
            session, reason, meter_stop_wh, timestamp, transaction_data
        )

    def meter_values(
        self, evse_id: int, session: Session | None, meter_value: dict[str, Any]
    ) -> None:
        self.current.meter_values(evse_id, session, meter_value)
