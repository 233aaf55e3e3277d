"""The charger assembled from the configuration: hardware, station model, protocol adapters,
meter polling, the station's timers and the D-Bus API.

main.Daemon owns the CSMS link and the OCPP engine; this module owns everything between the
engine and the hardware, and the asyncio tasks that feed the station (meter polls, timers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from hal.interfaces import EvseHardware, MeterError, PilotState
from hal.registry import HardwareConfigError, build_evse_hardware
from hal.sim.evse import FaultKind, SimulatedEvse
from service.control import LocalControl, SimulatorControl
from service.firmware.manager import INSTALL_STATES, FirmwareManager
from service.firmware.uploads import DiagnosticsManager
from service.ocpp.engine import Engine
from service.ocpp.rpc import OcppVersion
from service.ocpp.v16 import configuration as v16_configuration
from service.ocpp.v16 import core as v16_core
from service.ocpp.v16 import firmware as v16_firmware
from service.ocpp.v16 import local_list as v16_local_list
from service.ocpp.v16.remote import Remote
from service.ocpp.v16.transactions import V16StationLink
from service.ocpp.v201 import device_model as v201_device_model
from service.ocpp.v201 import dm_catalog as v201_dm_catalog
from service.ocpp.v201 import firmware as v201_firmware
from service.ocpp.v201 import reports as v201_reports
from service.ocpp.v201.link import V201StationLink
from service.ocpp.v201.local_list import LocalListHandlers
from service.ocpp.v201.remote import V201Remote
from service.ocpp.versions import VersionDispatcher
from service.security_events import LOG_NAME as SECURITY_LOG_NAME
from service.security_events import SecurityEvents
from service.station.api import ApiError, InvalidArgument, InvalidState, VendorHandler
from service.station.auth import AuthorizationCache, Authorizer, AuthSettings
from service.station.availability import AvailabilityMemory
from service.station.clock import Clock
from service.station.configuration import Configuration
from service.station.local_list import LocalAuthList
from service.station.model import ERROR_CODES
from service.station.sessions import SessionStore
from service.station.station import Station
from service.store.db import Database
from service.store.overlay import KeyValueState

if TYPE_CHECKING:
    from service.config import Settings

log = logging.getLogger("evsed.charger")
# Longest one step of the shutdown may take (closing a device, ending a task).
STOP_STEP_S = 3.0


class Charger:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        engine: Engine,
        cfg: Configuration,
        clock: Clock,
        *,
        request_reset: Callable[[str], None],
        link_state: Callable[[], str],
        websocket: Callable[[bool], None],
        wake_engine: Callable[[], None],
        on_configuration: Callable[[str], None] | None = None,
    ) -> None:
        self._on_configuration = on_configuration
        self.settings = settings
        self.engine = engine
        self._wake_engine = wake_engine
        self.hardware: dict[int, EvseHardware] = {}
        self.simulators: dict[int, SimulatedEvse] = {}
        topology: dict[int, tuple[EvseHardware, float, int]] = {}
        self._shared: dict[str, object] = {}
        for evse in settings.evses:
            hardware, sim = build_evse_hardware(evse, clock=clock.monotonic, shared=self._shared)
            self.hardware[evse.id] = hardware
            if sim is not None:
                self.simulators[evse.id] = sim
            connector = evse.connectors[0]
            topology[evse.id] = (hardware, connector.max_current_a, connector.phases)
        # The Local Authorization List: one for both OCPP versions, consulted before the cache.
        self.local_list = LocalAuthList(
            db, max_entries=lambda: int(cfg.get("LocalAuthListMaxLength"))
        )
        self.authorizer = Authorizer(
            AuthorizationCache(db),
            lambda: AuthSettings.from_configuration(cfg),
            local_list=self.local_list,
        )
        self.station = Station(
            hardware=topology,
            configuration=cfg,
            authorizer=self.authorizer,
            sessions=SessionStore(db),
            clock=clock,
            time=engine.time,
            timestamp=engine.timestamp,
        )
        # ChangeAvailability survives a restart (both OCPP versions, and D-Bus).
        self.availability = AvailabilityMemory(db, self.station)
        self.availability.restore()
        self.station.on_change(self.availability.station_changed)
        self.link = V16StationLink(engine, self.station)
        self.station.attach(self.link)
        self.vendors: dict[str, VendorHandler] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # Set by stop(): the loops end at their next turn even if a cancellation was lost
        # (Python 3.11's asyncio.wait_for, used inside pymodbus, can swallow one).
        self._stopping = False
        self._setup_firmware(settings, db, engine)
        v16_core.install(
            engine,
            self.station,
            firmware_status=lambda: v16_firmware.firmware_status_payload(self.firmware),
            diagnostics_status=lambda: v16_firmware.diagnostics_status_payload(self.diagnostics),
        )
        self.firmware_v16 = v16_firmware.FirmwareHandlers(
            engine,
            self.firmware,
            self.diagnostics,
            core_trigger=lambda requested, connector: v16_core.trigger(
                engine, self.station, requested, connector
            ),
        )
        v16_configuration.install(engine, cfg, on_change=self._config_changed)
        v16_local_list.install(engine, self.local_list, cfg)
        # The 2.0.1 device model: shared settings are the 1.6 keys above (one setting).
        self.device_model = v201_device_model.DeviceModel(
            settings,
            db,
            cfg,
            station=self.station,
            now_iso=engine.now_iso,
            config_changed=self._config_changed,
            clock=clock,
            catalog=v201_dm_catalog.catalog_for(settings),
        )
        v201_device_model.install(engine, self.device_model)
        v201_reports.install(engine, self.device_model)
        self.remote = Remote(engine, self.station, request_reset=request_reset, spawn=self._spawn)
        self.remote.vendors = self.vendors
        # OCPP 2.0.1 transactions and remote control; the station's listener is the link of
        # the version the connection negotiated (service/ocpp/versions.py).
        self.link201 = V201StationLink(
            engine,
            self.station,
            db,
            self.device_model,
            connectors={e.id: tuple(c.id for c in e.connectors) for e in settings.evses},
        )
        self.links = VersionDispatcher(
            engine,
            self.station,
            {OcppVersion.V16: self.link, OcppVersion.V201: self.link201},
            KeyValueState(db),
            preferred=OcppVersion.from_subprotocol(settings.csms.ocpp_versions[0]),
        )
        self.station.attach(self.links)
        self.remote201 = V201Remote(
            engine, self.station, self.link201, request_reset=request_reset, spawn=self._spawn
        )
        self.remote201.vendors = self.vendors
        # B12: no Reset while a firmware update installs (the reboot comes from the update).
        self.remote201.reset_refusal = lambda: (
            f"firmware update {self.firmware.state.value}"
            if self.firmware.state in INSTALL_STATES
            else None
        )
        # 1.6 likewise: a Reset (Soft or Hard) while an update installs is Rejected.
        self.remote.reset_refusal = self.remote201.reset_refusal
        self.local_list_v201 = LocalListHandlers(
            engine,
            self.local_list,
            self.device_model,
            remember_type=self.link201.remember_token_type,
        )
        # 2.0.1 UpdateFirmware / GetLog on the same managers as 1.6 (origin "ocpp2.0.1").
        self.firmware_v201 = v201_firmware.FirmwareHandlers(
            engine,
            self.firmware,
            self.diagnostics,
            trigger_sources=self.remote201.trigger_sources,
        )
        self.control = LocalControl(
            settings,
            self.station,
            engine,
            link_state,
            self.vendors,
            configuration=cfg,
            config_changed=self._config_changed,
        )
        self.control.firmware_status = lambda: self.firmware.state.value
        self.firmware.on_change(self.control.notify_station)
        self.simulator = SimulatorControl(self.simulators, websocket) if self.simulators else None
        if self.simulator is not None:
            self._bridge_faults(self.simulator)
        self._station_wake = asyncio.Event()
        self._meter_wake = asyncio.Event()
        self._dbus: Any = None
        for evse_id, hardware in self.hardware.items():
            hardware.pilot.on_change(self._pilot_callback(evse_id))
            hardware.token_reader.on_token(self._token_callback(evse_id))
            if hardware.start_button is not None:
                hardware.start_button.on_press(self._button_callback(evse_id))
            if hardware.safety is not None:
                # Emergency stop / RCD: the station stops the transaction and faults the EVSE.
                hardware.safety.on_change(self._safety_callback(evse_id))
            for source, device in (
                ("pilot", hardware.pilot),
                ("contactor", hardware.contactor),
                ("reader", hardware.token_reader),
            ):
                device.on_fault(self._fault_callback(evse_id, source))

    def _setup_firmware(self, settings: Settings, db: Database, engine: Engine) -> None:
        """Security events, firmware updates and log uploads (`charger.firmware` is what the
        D-Bus firmware interface serves)."""
        installer = None
        if settings.firmware.backend != "none":
            from service.firmware.installer import make_installer

            installer = make_installer(settings.firmware)
        state = settings.paths.state_directory
        self.security = SecurityEvents(state / SECURITY_LOG_NAME, engine)
        self.firmware = FirmwareManager(
            db=db,
            engine=engine,
            station=self.station,
            settings=settings.firmware,
            state_directory=state,
            installer=installer,
            security=self.security,
            station_call=self._input,
        )
        self.diagnostics = DiagnosticsManager(
            db=db, engine=engine, settings=settings, security_log=self.security.path
        )

    def _pilot_callback(self, evse_id: int) -> Callable[[PilotState], None]:
        def changed(state: PilotState) -> None:
            self._input(self.station.pilot_changed, evse_id, state)

        return changed

    def _safety_callback(self, evse_id: int) -> Callable[[], None]:
        def changed() -> None:
            self._input(self.station.safety_changed, evse_id)

        return changed

    def _fault_callback(self, evse_id: int, source: str) -> Callable[[str | None, str], None]:
        def fault(code: str | None, info: str) -> None:
            self._input(self.station.device_fault, evse_id, source, code, info)

        return fault

    def _token_callback(self, evse_id: int) -> Callable[[str], None]:
        def presented(id_tag: str) -> None:
            try:
                self._input(self.station.token_presented, evse_id, id_tag)
            except InvalidArgument as exc:
                log.warning("token from the reader of EVSE %d refused: %s", evse_id, exc)

        return presented

    def _button_callback(self, evse_id: int) -> Callable[[], None]:
        def pressed() -> None:
            try:
                self._input(self._start_button_pressed, evse_id)
            except InvalidArgument as exc:
                log.warning("start button of EVSE %d refused: %s", evse_id, exc)

        return pressed

    def _start_button_pressed(self, evse_id: int) -> None:
        """The EVSE's start button (C02); a press the station refuses changes nothing."""
        try:
            session_id = self.station.start_button(evse_id)
        except InvalidState as exc:
            # Authorization is on, or the session is a token's: a press is no error.
            log.info("start button of EVSE %d pressed: %s", evse_id, exc)
            return
        log.info("start button of EVSE %d pressed: session %s", evse_id, session_id)

    def _bridge_faults(self, simulator: SimulatorControl) -> None:
        """Simulated faults: pilot/evse kinds act on the simulated EV; an OCPP error code is
        a fault the hardware reports to the station (e.g. HighTemperature)."""
        sims, station = self.simulators, self.station

        def raise_fault(evse_id: int, error_code: str) -> None:
            if error_code in {k.value for k in FaultKind}:
                simulator._sim(evse_id).raise_fault(error_code)
            elif error_code in ERROR_CODES and error_code != "NoError":
                simulator._sim(evse_id)
                self._input(station.raise_fault, evse_id, error_code, "simulated")
            else:
                raise InvalidArgument(
                    f"unknown fault {error_code!r}: one of pilot, evse or an OCPP 1.6 error code"
                )

        def clear_fault(evse_id: int) -> None:
            sims_evse = simulator._sim(evse_id)
            sims_evse.clear_fault()
            self._input(station.clear_fault, evse_id)

        del sims
        simulator.raise_fault = raise_fault  # type: ignore[method-assign]
        simulator.clear_fault = clear_fault  # type: ignore[method-assign]

    # ------------------------------------------------------------------ inputs
    def _input(self, method: Callable[..., Any], *args: Any) -> Any:
        """Feed the station, then let the engine send and the timers re-plan."""
        try:
            return method(*args)
        except InvalidArgument:
            raise
        except ApiError as exc:
            # A refusal (e.g. a card at an Unavailable EVSE's reader), not a failure.
            log.warning("%s%s refused: %s", getattr(method, "__name__", method), args, exc)
            return None
        except Exception:
            log.exception("station failed on %s%s", getattr(method, "__name__", method), args)
            return None
        finally:
            self._station_wake.set()
            self._wake_engine()
            if method not in (self.station.meter_reading, self.station.tick):
                self._meter_wake.set()  # power may have changed: read the meters now

    def _config_changed(self, key: str) -> None:
        if key == "ClockAlignedDataInterval":
            self.station._next_aligned = None  # recomputed from the new interval
        if self._on_configuration is not None:
            self._on_configuration(key)
        self._station_wake.set()

    def _spawn(self, coroutine: Awaitable[None]) -> object:
        task = asyncio.ensure_future(coroutine)
        if isinstance(task, asyncio.Task):
            task.set_name(getattr(coroutine, "__qualname__", task.get_name()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ lifecycle
    def _devices(self) -> list[object]:
        """Every distinct device object (a shared MCU connection appears once per device)."""
        seen: dict[int, object] = {}
        for hw in self.hardware.values():
            for device in (
                hw.meter,
                hw.pilot,
                hw.contactor,
                hw.token_reader,
                hw.power_module,
                hw.safety,
                hw.start_button,
            ):
                if device is not None:
                    seen.setdefault(id(device), device)
        return list(seen.values())

    async def start(self) -> None:
        for device in self._devices():
            start = getattr(device, "start", None)
            if start is not None:
                try:
                    await start()
                except HardwareConfigError:
                    raise  # a line or device that does not exist: a configuration error
                except Exception as exc:
                    # A missing part is a fault on its EVSE, not a dead daemon: drivers keep
                    # retrying and report through their fault callbacks / MeterError.
                    log.error("hardware %s did not start: %s", type(device).__name__, exc)
        for evse in self.settings.evses:
            self.station.evses[evse.id].controller.dc_voltage_v = evse.dc_voltage_v
        self.station.start()
        self.links.start()  # 2.0.1 transactions a power cut left open end now
        self.firmware.start()  # continues an update a restart (or its reboot) interrupted
        self.diagnostics.start()
        self._spawn(self._meter_loop())
        self._spawn(self._station_timer())
        if self.settings.dbus.enabled:
            await self._export_dbus()
        self._wake_engine()

    async def _export_dbus(self) -> None:
        from service.dbus.server import export

        bus = self.settings.dbus.bus
        address: str | None = bus
        if bus == "system":
            address = None  # sdbus opens the system bus (DBUS_SYSTEM_BUS_ADDRESS honoured)
        elif bus == "session":
            address = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
        simulator = self.simulator if self.settings.dbus.simulator else None
        try:
            if bus == "session" and not address:
                raise RuntimeError("DBUS_SESSION_BUS_ADDRESS is not set")
            self._dbus = await export(
                self.control, simulator, bus_address=address, firmware=self.firmware
            )
        except Exception as exc:
            # The charger must charge without its local API; say so loudly and go on.
            log.error("D-Bus API not available on the %s bus: %s", bus, exc)

    async def stop(self) -> None:
        """Stop everything, each step bounded by STOP_STEP_S: a step that hangs (a device that
        does not answer, a task that will not end) is logged by name and left behind, so the
        daemon still exits (its state is in SQLite, committed as it went)."""
        self._stopping = True
        self._meter_wake.set()
        self._station_wake.set()
        await self._stop_step("firmware", self.firmware.close())
        await self._stop_step("diagnostics", self.diagnostics.close())
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            await self._stop_step(f"task {task.get_name()}", _settle(task))
        if self._dbus is not None:
            await self._stop_step("D-Bus", self._dbus.close())
        for device in self._devices():
            close = getattr(device, "close", None)
            if close is not None:
                await self._stop_step(f"device {type(device).__name__}", _call(close))

    @staticmethod
    async def _stop_step(what: str, step: Awaitable[object]) -> None:
        log.debug("stopping: %s", what)
        try:
            async with asyncio.timeout(STOP_STEP_S):
                await step
        except TimeoutError:
            log.error("stopping: %s did not finish within %.0f s; left behind", what, STOP_STEP_S)
        except Exception as exc:  # a failing close must not stop the others
            log.warning("stopping: %s failed: %s", what, exc)

    # ------------------------------------------------------------------ tasks
    async def _meter_loop(self) -> None:
        interval = self.settings.dbus.meter_poll_interval_s
        failing: set[int] = set()
        while not self._stopping:
            for evse_id, hardware in self.hardware.items():
                try:
                    reading = await hardware.meter.read()
                except MeterError as exc:
                    if evse_id not in failing:
                        failing.add(evse_id)
                        self._input(self.station.meter_failed, evse_id, str(exc))
                    continue
                failing.discard(evse_id)
                self._input(self.station.meter_reading, evse_id, reading)
            self._meter_wake.clear()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation that
            # arrives as the event is set (both happen at shutdown), and the loop never ends.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._meter_wake.wait()

    async def _station_timer(self) -> None:
        loop = asyncio.get_running_loop()
        clock_now = self.station.clock.monotonic
        while not self._stopping:
            deadline = self.station.next_deadline()
            self._station_wake.clear()
            if deadline is None:
                await self._station_wake.wait()
            else:
                delay = deadline - clock_now()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout_at(loop.time() + delay):
                            await self._station_wake.wait()
            self._input(self.station.tick)


async def _settle(task: asyncio.Task[Any]) -> None:
    """Wait for a cancelled task to end, whatever it ends with (asyncio.wait: a timeout around
    this is not mistaken for the task's own cancellation)."""
    await asyncio.wait({task})
    if not task.cancelled() and task.exception() is not None:
        log.warning("task %s ended with %r", task.get_name(), task.exception())


async def _call(close: Callable[[], object]) -> None:
    result = close()
    if asyncio.iscoroutine(result):
        await result
