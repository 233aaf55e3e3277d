"""Live OCPP configuration values: catalog defaults < config file < run-time overlay.

Values the CSMS (or the CSMS's BootNotification interval) changes at run time are written to
the overlay table in the state directory's database, never to /etc. At start the overlay is
applied over the configuration file; an overlay value that no longer parses (a key retyped by
an upgrade) is dropped with a warning rather than stopping the charger.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING

from service.station.clock import Clock
from service.station.keys import (
    OCPP_KEY_CATALOG,
    KeySpec,
    KeyValue,
    format_key_value,
    parse_key_value,
)

if TYPE_CHECKING:
    from service.config import Settings
    from service.store.overlay import ConfigOverlay

log = logging.getLogger("evsed.config")


class ChangeStatus(StrEnum):
    ACCEPTED = "Accepted"
    REJECTED = "Rejected"
    REBOOT_REQUIRED = "RebootRequired"
    NOT_SUPPORTED = "NotSupported"


class Configuration:
    def __init__(self, settings: Settings, overlay: ConfigOverlay, *, clock: Clock) -> None:
        self._overlay = overlay
        self._clock = clock
        self._listeners: list[Callable[[str], None]] = []
        self._values: dict[str, KeyValue] = {n: s.default for n, s in OCPP_KEY_CATALOG.items()}
        self._values["NumberOfConnectors"] = sum(len(e.connectors) for e in settings.evses)
        self._values["WebSocketPingInterval"] = settings.csms.ping_interval_s
        for name, value in settings.ocpp_keys.items():
            if isinstance(value, float):  # a TOML float for an integer key: config validated it
                value = int(value)
            self._values[name] = value
        for name, raw in overlay.get_all().items():
            spec = OCPP_KEY_CATALOG.get(name)
            if spec is None or spec.readonly:
                log.warning("ignoring stored value for unknown or read-only key %s", name)
                continue
            try:
                self._values[name] = parse_key_value(spec, raw)
            except ValueError as exc:
                log.warning("ignoring stored value for %s: %s", name, exc)

    def spec(self, name: str) -> KeySpec | None:
        return OCPP_KEY_CATALOG.get(name)

    def get(self, name: str) -> KeyValue:
        return self._values[name]

    def get_str(self, name: str) -> str:
        return format_key_value(self._values[name])

    def items(self) -> list[tuple[KeySpec, KeyValue]]:
        return [(OCPP_KEY_CATALOG[n], v) for n, v in self._values.items()]

    def change(self, name: str, raw: str) -> ChangeStatus:
        """Apply a CSMS ChangeConfiguration; persist it in the overlay when accepted."""
        spec = OCPP_KEY_CATALOG.get(name)
        if spec is None:
            return ChangeStatus.NOT_SUPPORTED
        if spec.readonly:
            return ChangeStatus.REJECTED
        try:
            value = parse_key_value(spec, raw)
        except ValueError as exc:
            log.info("rejected %s=%r: %s", name, raw, exc)
            return ChangeStatus.REJECTED
        self._store(spec, value)
        return ChangeStatus.REBOOT_REQUIRED if spec.reboot_required else ChangeStatus.ACCEPTED

    def subscribe(self, listener: Callable[[str], None]) -> None:
        """Call `listener(key)` after every stored change, whoever made it (1.6
        ChangeConfiguration, 2.0.1 SetVariables, D-Bus, the BootNotification interval)."""
        self._listeners.append(listener)

    def _store(self, spec: KeySpec, value: KeyValue) -> None:
        self._overlay.set(spec.name, format_key_value(value), self._clock.time())
        changed = self._values.get(spec.name) != value
        self._values[spec.name] = value
        if changed:
            for listener in self._listeners:
                try:
                    listener(spec.name)
                except Exception:
                    log.exception("configuration listener failed on %s", spec.name)

    # -- typed accessors the engine reads (service.ocpp.engine.Settings protocol) --
    def _int(self, name: str) -> int:
        value = self._values[name]
        assert isinstance(value, int)
        return value

    @property
    def heartbeat_interval(self) -> int:
        return self._int("HeartbeatInterval")

    @property
    def transaction_message_attempts(self) -> int:
        return self._int("TransactionMessageAttempts")

    @property
    def transaction_message_retry_interval(self) -> int:
        return self._int("TransactionMessageRetryInterval")

    def set_heartbeat_interval(self, seconds: int) -> None:
        spec = OCPP_KEY_CATALOG["HeartbeatInterval"]
        if spec.minimum is not None:
            seconds = max(spec.minimum, seconds)
        if spec.maximum is not None:
            seconds = min(spec.maximum, seconds)
        if self._values["HeartbeatInterval"] != seconds:
            self._store(spec, seconds)
