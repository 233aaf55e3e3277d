"""Process entry of evsed: config, logging, the store, sd_notify, signals, one asyncio shell.

The shell owns every socket and timer; the OCPP engine (service.ocpp.engine) is sans-I/O and is
driven from here: frames read from the websocket go into `Engine.receive`, `Engine.tick` runs at
`Engine.next_deadline`, and whatever `Engine.take_frames` returns is written, in order, by one
writer at a time.

Exit statuses: 0 clean stop, 78 (EX_CONFIG) bad configuration, 73 (EX_CANTCREAT) the state
directory cannot hold the database. systemd's start limit keeps a persistent error from
becoming a tight crash loop, and neither error path touches the stored queue.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import urllib.parse
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from hal.registry import HardwareConfigError
from service import __version__
from service.charger import Charger
from service.config import DEFAULT_CONFIG_PATH, EX_CONFIG, ConfigError, Settings, load_settings
from service.journal import LogEvent, log_fields, setup_logging
from service.msglog import MessageLog
from service.ocpp.engine import Engine, EngineOptions, Registration
from service.ocpp.rpc import OcppVersion
from service.ocpp.v201 import network as v201_network
from service.ocpp.v201 import provisioning as v201_provisioning
from service.sdnotify import Notifier
from service.station.api import NotAvailable
from service.station.clock import Clock, SystemClock
from service.station.configuration import Configuration
from service.station.model import StopReason
from service.store.db import Database, StoreError
from service.store.overlay import ConfigOverlay, KeyValueState
from service.store.queue import DurableQueue
from service.transport.backoff import Backoff
from service.transport.connection import ConnectionManager, ConnectionProfile

EX_CANTCREAT = 73
DATABASE_NAME = "evsed.db"
BOOT_REASON_KEY = "boot.reason"  # kv: why the next run starts (2.0.1 BootReasonEnumType)

log = logging.getLogger("evsed")


def connection_profile(
    settings: Settings, ping_interval_s: float | None = None
) -> ConnectionProfile:
    """The CSMS link settings; `ping_interval_s` is the live WebSocketPingInterval."""
    csms = settings.csms
    return ConnectionProfile(
        url=csms.url,
        charge_point_id=settings.identity.charge_point_id,
        subprotocols=tuple(csms.ocpp_versions),
        security_profile=csms.security_profile,
        basic_auth_password=csms.basic_auth_password,
        ca_bundle=csms.ca_bundle,
        client_certificate=csms.client_certificate,
        client_key=csms.client_key,
        ping_interval_s=float(csms.ping_interval_s if ping_interval_s is None else ping_interval_s),
        ping_timeout_s=float(csms.ping_timeout_s),
        connect_timeout_s=float(csms.connect_timeout_s),
    )


class Daemon:
    """The running charger: one engine, one connection manager, one store."""

    def __init__(self, settings: Settings, db: Database, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.db = db
        self.clock = clock or SystemClock()
        self.notifier = Notifier.from_env()
        paths = settings.paths
        self.msglog = MessageLog(
            paths.message_log_directory,
            max_bytes=paths.message_log_max_bytes,
            backups=paths.message_log_backups,
        )
        self.queue = DurableQueue(db, max_other=settings.queue.max_non_transaction_messages)
        self.configuration = Configuration(settings, ConfigOverlay(db), clock=self.clock)
        # Why this run started, for the 2.0.1 BootNotification: a Reset leaves RemoteReset
        # behind for the next run; the reboot of a firmware installation is FirmwareUpdate.
        self._kv = KeyValueState(db)
        self.boot_reason = self._kv.get(BOOT_REASON_KEY) or "PowerUp"
        self._kv.delete(BOOT_REASON_KEY)
        self.engine = Engine(
            queue=self.queue,
            clock=self.clock,
            new_id=lambda: str(uuid.uuid4()),
            settings=self.configuration,
            boot_payload=self._boot_payload,
            options=EngineOptions(
                call_timeout_s=float(settings.csms.call_timeout_s),
                message_queue_resume_delay_s=float(settings.csms.message_queue_resume_delay_s),
            ),
        )
        v201_provisioning.install(self.engine, registered=self._registered)
        self.engine.subscribe(self._on_engine_event)
        self.engine.wakeup = self.kick
        self.link_state = "disconnected"
        self.restart_requested = False
        self.charger = Charger(
            settings,
            db,
            self.engine,
            self.configuration,
            self.clock,
            request_reset=self._request_reset,
            link_state=lambda: self.link_state,
            websocket=self._websocket_control,
            wake_engine=self.kick,
            on_configuration=self.configuration_changed,
        )
        # OCPP 2.0.1 network connection profiles (B09 / B10); a 1.6-only charger has none.
        self.network: v201_network.NetworkProfiles | None = None
        if "ocpp2.0.1" in settings.csms.ocpp_versions:
            self.network = v201_network.NetworkProfiles(
                settings,
                db,
                self.charger.device_model,
                engine=self.engine,
                ping_interval_s=self._ping_interval,
            )
            v201_network.install(self.engine, self.network)
        self.offline = v201_network.OfflineMonitor(
            self.clock, self.charger.device_model, self.charger.link201.report_all_statuses
        )
        csms = settings.csms
        self.manager = ConnectionManager(
            connection_profile(settings, self._ping_interval()),
            Backoff(csms.backoff_min_s, csms.backoff_max_s, csms.backoff_randomization),
            on_connected=self._serve,
            on_state=self._on_link_state,
            chooser=self.network,
        )
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._connection: ClientConnection | None = None

    @property
    def placeholder_url(self) -> bool:
        """The shipped default points at a host under the reserved .invalid TLD, and no
        stored 2.0.1 network profile (SetNetworkProfile) gives anything else to connect to."""
        host = urllib.parse.urlsplit(self.settings.csms.url).hostname or ""
        placeholder = host == "invalid" or host.endswith(".invalid")
        return placeholder and (self.network is None or not self.network.configured)

    def _ping_interval(self) -> float:
        value = self.configuration.get("WebSocketPingInterval")
        assert isinstance(value, int)
        return float(value)

    def configuration_changed(self, key: str) -> None:
        if key == "WebSocketPingInterval":
            # Applies from the next connection (reported RebootRequired to the CSMS).
            self.manager.set_profile(connection_profile(self.settings, self._ping_interval()))

    # ------------------------------------------------------------------ boot content
    def _boot_payload(self, version: OcppVersion) -> dict[str, object]:
        if version is OcppVersion.V16:
            from service.ocpp.v16 import core as v16_core

            return v16_core.boot_payload(self.settings.identity)
        reason = "FirmwareUpdate" if self.charger.firmware.booted_for_update else self.boot_reason
        return v201_provisioning.boot_payload(self.settings.identity, reason)

    def _registered(self) -> bool:
        return self.engine.registration.value == "Accepted"

    # ------------------------------------------------------------------ status
    def _on_link_state(self, state: str, detail: str) -> None:
        self.link_state = str(state)
        self.charger.control.notify_station()
        self.msglog.event(f"{state} {detail}".strip())
        self.notifier.status(
            f"CSMS {state}{': ' + detail if detail else ''}; queued {self.engine.queue_length}"
        )

    def _on_engine_event(self, event: str, data: Mapping[str, Any]) -> None:
        if event == "registration":
            if data.get("status") == "Accepted":
                self.manager.mark_stable()
            self.charger.control.notify_station()
            self.notifier.status(f"registration {data}; queued {self.engine.queue_length}")

    # ------------------------------------------------------------------ external control
    def websocket_disconnect(self) -> bool:
        """EnableExternalWebsocketControl: drop the link and stay offline until reconnect."""
        if not self.settings.csms.external_websocket_control:
            log.warning("external websocket control is disabled; disconnect ignored")
            return False
        self.manager.disconnect()
        if self._connection is not None:
            # Offline from this moment, not from when the closing handshake ends: what the
            # station makes next is queued and marked offline (2.0.1), never sent in between.
            self.engine.connection_closed()
        return True

    def websocket_connect(self) -> bool:
        if not self.settings.csms.external_websocket_control:
            log.warning("external websocket control is disabled; connect ignored")
            return False
        self.manager.connect()
        return True

    def _websocket_control(self, connect: bool) -> None:
        ok = self.websocket_connect() if connect else self.websocket_disconnect()
        if not ok:
            raise NotAvailable(
                "external websocket control is disabled (csms.external_websocket_control)"
            )

    def _request_reset(self, kind: str) -> None:
        """Reset: the station already stopped its transactions; deliver what can be
        delivered, then stop so main() restarts the process."""
        self.restart_requested = True
        self._kv.set(BOOT_REASON_KEY, "RemoteReset")
        self._reset_task = asyncio.get_running_loop().create_task(self._reset_soon(kind))

    async def _reset_soon(self, kind: str) -> None:
        await asyncio.sleep(0.5)  # let the Reset.conf and StopTransactions go out first
        await self._drain(10.0)
        log.warning("%s reset: restarting", kind)
        self.stop()

    async def _drain(self, limit: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + limit
        while self.engine.connected and self.engine.queue_length and loop.time() < end:
            await asyncio.sleep(0.05)

    def kick(self) -> None:
        """Something outside the engine changed its state: re-evaluate deadlines and send."""
        self._wake.set()

    # ------------------------------------------------------------------ main loop
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGUSR1, self.websocket_disconnect)
        loop.add_signal_handler(signal.SIGUSR2, self.websocket_connect)
        await self.charger.start()
        tasks: list[asyncio.Task[None]] = []
        if self.placeholder_url:
            # A fresh install: wait for the operator instead of crash-looping or hammering a
            # host that cannot exist. Charging offline still works.
            log.warning(
                "csms.url is the placeholder %s: not connecting; set the CSMS URL in "
                "/etc/evsed/evsed.toml and restart",
                self.settings.csms.url,
            )
            self.link_state = "unconfigured"
        else:
            tasks.append(asyncio.create_task(self.manager.run(), name="connection"))
        interval = self.notifier.watchdog_interval()
        if interval:
            tasks.append(asyncio.create_task(self._watchdog(interval), name="watchdog"))
        self.notifier.ready()
        self.notifier.status(
            "waiting for configuration: csms.url is the placeholder"
            if self.placeholder_url
            else f"serving; queued {self.engine.queue_length}"
        )
        log.info(
            "evsed %s started as %s (%d EVSE(s), %d message(s) queued)",
            __version__,
            self.settings.identity.charge_point_id,
            len(self.settings.evses),
            self.engine.queue_length,
            extra=log_fields(event=LogEvent.STARTED),
        )
        try:
            await self._stop.wait()
        finally:
            self.notifier.stopping()
            log.info("stopping")
            if not self.restart_requested and self.charger.station.stop_all(StopReason.REBOOT):
                self.kick()
                await self._drain(3.0)
            await self.charger.stop()
            self.manager.stop()
            if tasks:
                await asyncio.wait(tasks[:1], timeout=5)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self.msglog.close()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
                loop.remove_signal_handler(sig)

    def stop(self) -> None:
        self._stop.set()

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def _serve(self, connection: ClientConnection, subprotocol: str) -> None:
        version = OcppVersion.from_subprotocol(subprotocol)
        self._connection = connection
        switched = self.network is not None and self.network.take_switched()
        if switched:
            # B10.FR.10: another network profile, maybe another CSMS: register again.
            self.engine.registration = Registration.UNKNOWN
        self.engine.connection_opened(version)
        if switched:  # ...and tell it every status (queued: they follow the boot)
            if version is OcppVersion.V201:
                self.charger.link201.report_all_statuses()
            else:
                self.charger.station.report_all()
        else:
            self.offline.connection_opened(version)
        log.info(
            "connected with OCPP %s", version.value, extra=log_fields(event=LogEvent.CONNECTED)
        )
        timer = asyncio.create_task(self._timer(connection), name="engine-timer")
        try:
            await self._flush(connection)
            async for message in connection:
                text = message if isinstance(message, str) else message.decode("utf-8", "replace")
                self.msglog.write("in", text)
                self.charger.control.frame_observed("in", text)
                try:
                    self.engine.receive(message)
                except Exception:  # a bug must cost one frame, never the daemon
                    log.exception("engine failed on an inbound frame; continuing")
                await self._flush(connection)
        except ConnectionClosed:
            pass
        finally:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
            self._connection = None
            self.engine.connection_closed()
            self.offline.connection_closed()
            log.info(
                "disconnected (close code %s)",
                connection.close_code,
                extra=log_fields(event=LogEvent.DISCONNECTED),
            )

    async def _timer(self, connection: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            deadline = self.engine.next_deadline()
            self._wake.clear()
            if deadline is None:
                await self._wake.wait()
            else:
                delay = deadline - self.clock.monotonic()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout_at(loop.time() + delay):
                            await self._wake.wait()
            try:
                self.engine.tick()
            except Exception:
                log.exception("engine failed on a timer tick; continuing")
            await self._flush(connection)

    async def _flush(self, connection: ClientConnection) -> None:
        async with self._send_lock:
            for frame in self.engine.take_frames():
                self.msglog.write("out", frame)
                self.charger.control.frame_observed("out", frame)
                try:
                    await connection.send(frame)
                except ConnectionClosed:
                    log.info(
                        "connection closed while sending; the queue keeps the message",
                        extra=log_fields(direction="out"),
                    )
                    return
        self._wake.set()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="evsed", description="EV charger daemon (OCPP)")
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG_PATH,
        help=f"main configuration file (default {DEFAULT_CONFIG_PATH}); "
        "drop-ins are read from conf.d/ beside it",
    )
    parser.add_argument(
        "--check-config", action="store_true", help="validate the configuration and exit"
    )
    parser.add_argument("--version", action="version", version=f"evsed {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"evsed: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    if args.check_config:
        print(f"evsed: configuration OK ({', '.join(map(str, settings.source_files))})")
        return 0
    setup_logging(settings.logging.level, journal_socket=settings.logging.journal_socket or None)
    # pymodbus logs every unanswered request at ERROR; the meter driver reports those itself.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    state_dir = settings.paths.state_directory
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        db = Database.open(state_dir / DATABASE_NAME, synchronous=settings.queue.sqlite_synchronous)
    except (OSError, StoreError) as exc:
        log.error("cannot open the state database in %s: %s", state_dir, exc)
        return EX_CANTCREAT
    try:
        daemon = asyncio.run(_run(settings, db))
    except HardwareConfigError as exc:
        print(f"evsed: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    finally:
        db.close()
    if daemon.restart_requested:
        # Reset: start afresh in the same process slot (systemd keeps the same unit).
        os.execv(sys.executable, [sys.executable, "-m", "service.main", *sys.argv[1:]])
    return 0


async def _run(settings: Settings, db: Database) -> Daemon:
    daemon = Daemon(settings, db)
    await daemon.run()
    return daemon


if __name__ == "__main__":
    sys.exit(main())
