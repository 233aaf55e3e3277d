"""The local API of the running daemon: `StationApi` and `SimulatorApi` over the station model.

service/dbus exports these objects; everything here is non-blocking and raises the named
`ApiError`s of service.station.api so a refused call changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from hal.sim.evse import SimulatedEvse
from service.ocpp.engine import Engine, Outcome, Registration
from service.station.api import (
    ConfigurationEntry,
    EvseSnapshot,
    FrameRecord,
    InvalidArgument,
    NotAvailable,
    StationSnapshot,
    Timeout,
    UnknownEvse,
    VendorHandler,
)
from service.station.auth import ID_TOKEN_MAX_LENGTH, is_valid_id_tag
from service.station.configuration import ChangeStatus, Configuration
from service.station.keys import format_key_value
from service.station.station import Station

if TYPE_CHECKING:
    from service.config import Settings

log = logging.getLogger("evsed.control")

DATA_TRANSFER_TIMEOUT_S = 35.0
_VENDOR_ID_MAX = 255
# OCPP frames kept in memory for RecentFrames (`evsectl log`); the full history is the
# message log (service/msglog.py) and the journal.
FRAME_HISTORY = 100


class LocalControl:
    """Implements service.station.api.StationApi and FrameSource.

    `configuration` is the daemon's live OCPP configuration; `config_changed(key)` is the hook
    the OCPP ChangeConfiguration handler calls after an accepted change, called here too.
    """

    def __init__(
        self,
        settings: Settings,
        station: Station,
        engine: Engine,
        link_state: Callable[[], str],
        vendors: dict[str, VendorHandler],
        *,
        configuration: Configuration,
        config_changed: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self._model = station
        self.engine = engine
        self._link_state = link_state
        self._vendors = vendors
        self._configuration = configuration
        self._config_changed = config_changed
        self._callbacks: list[Callable[[int], None]] = []
        self._frame_callbacks: list[Callable[[str, str], None]] = []
        self._frames: deque[FrameRecord] = deque(maxlen=FRAME_HISTORY)
        #: The firmware update state for Station1.FirmwareStatus (the charger sets it).
        self.firmware_status: Callable[[], str] = lambda: "Idle"
        station.on_change(self._notify)

    def _notify(self, evse_id: int) -> None:
        for callback in self._callbacks:
            callback(evse_id)

    def notify_station(self) -> None:
        self._notify(0)

    def on_frame(self, callback: Callable[[str, str], None]) -> None:
        """`callback(direction, frame)` for every OCPP frame in ("in") and out ("out")."""
        self._frame_callbacks.append(callback)

    def frame_observed(self, direction: str, frame: str) -> None:
        self._frames.append(FrameRecord(time.time(), direction, frame))
        for callback in self._frame_callbacks:
            try:
                callback(direction, frame)
            except Exception:
                log.exception("frame observer failed")

    def recent_frames(self, limit: int) -> list[FrameRecord]:
        if limit <= 0:
            return []
        frames = list(self._frames)
        return frames[-limit:]

    # -------------------------------------------------------------- reading
    def station(self) -> StationSnapshot:
        identity = self.settings.identity
        version = self.engine.version
        return StationSnapshot(
            charge_point_id=identity.charge_point_id,
            vendor=identity.vendor,
            model=identity.model,
            firmware_version=identity.firmware_version,
            connection_state=self._link_state(),
            ocpp_version=version.value if version is not None else "",
            registration=self.engine.registration.value,
            queued_messages=self.engine.queue_length,
            firmware_status=self.firmware_status(),
        )

    def evse_ids(self) -> list[int]:
        return sorted(self._model.evses)

    def evse(self, evse_id: int) -> EvseSnapshot:
        model = self._model
        evse = model.evses.get(evse_id)
        if evse is None:
            raise UnknownEvse(f"no EVSE {evse_id}")
        status, error = model.status_of(evse_id)
        session = evse.session
        reading = evse.reading
        energy = reading.energy_import_wh if reading is not None else 0.0
        session_energy = 0.0
        if session is not None and session.started:
            session_energy = max(0.0, energy - session.meter_start_wh)
        transaction_id = ""
        if session is not None and session.started:
            transaction_id = (
                str(session.transaction_id)
                if session.transaction_id is not None
                else session.session_id
            )
        return EvseSnapshot(
            evse_id=evse_id,
            status=status.value,
            error_code=error,
            availability=evse.availability.value,
            pilot_state=evse.pilot.value,
            session_id=session.session_id if session is not None else "",
            transaction_id=transaction_id,
            id_tag=(session.id_tag or "") if session is not None else "",
            energy_wh=energy,
            session_energy_wh=session_energy,
            power_w=reading.power_total_w if reading is not None else 0.0,
            current_a=reading.current_a if reading is not None else (),
            voltage_v=reading.voltage_v if reading is not None else (),
            offered_current_a=evse.offered_a,
        )

    def on_change(self, callback: Callable[[int], None]) -> None:
        self._callbacks.append(callback)

    # -------------------------------------------------------------- commands
    def start_session(self, evse_id: int, id_tag: str) -> str:
        return self._model.local_start(evse_id, id_tag)

    def stop_session(self, evse_id: int) -> None:
        self._model.local_stop(evse_id)

    def set_availability(self, evse_id: int, operative: bool) -> str:
        self._model.evse(evse_id)
        return self._model.set_availability(evse_id, operative)

    def present_token(self, evse_id: int, id_tag: str, token_type: str | None = None) -> None:
        self._model.token_presented(evse_id, id_tag, token_type)

    def press_start_button(self, evse_id: int) -> str:
        return self._model.start_button(evse_id)

    async def data_transfer(self, vendor_id: str, message_id: str, data: str) -> tuple[str, str]:
        if not vendor_id or len(vendor_id) > _VENDOR_ID_MAX:
            raise InvalidArgument("vendorId must be 1..255 characters")
        payload: dict[str, str] = {"vendorId": vendor_id}
        if message_id:
            payload["messageId"] = message_id
        if data:
            payload["data"] = data
        loop = asyncio.get_running_loop()
        result: asyncio.Future[Outcome] = loop.create_future()

        def done(outcome: Outcome) -> None:
            if not result.done():
                result.set_result(outcome)

        try:
            sent = self.engine.request("DataTransfer", payload, done)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        if not sent:
            raise NotAvailable("the CSMS is not reachable or the charger is not registered")
        try:
            outcome = await asyncio.wait_for(result, DATA_TRANSFER_TIMEOUT_S)
        except TimeoutError:
            raise Timeout("the CSMS did not answer") from None
        if outcome.payload is None:
            if outcome.error_code in ("Timeout",):
                raise Timeout("the CSMS did not answer")
            raise NotAvailable(
                f"DataTransfer failed: {outcome.error_code} {outcome.error_description}"
            )
        return str(outcome.payload["status"]), str(outcome.payload.get("data", ""))

    def register_vendor(self, vendor_id: str, handler: VendorHandler) -> None:
        if not vendor_id or len(vendor_id) > _VENDOR_ID_MAX:
            raise InvalidArgument("vendorId must be 1..255 characters")
        self._vendors[vendor_id] = handler

    def unregister_vendor(self, vendor_id: str) -> None:
        self._vendors.pop(vendor_id, None)

    # -------------------------------------------------------------- configuration
    def get_configuration(self, keys: list[str]) -> list[ConfigurationEntry]:
        cfg = self._configuration
        if not keys:
            names = [spec.name for spec, _ in cfg.items()]
        else:
            names = list(dict.fromkeys(keys))  # once each, in the order asked
            unknown = [name for name in names if cfg.spec(name) is None]
            if unknown:
                raise InvalidArgument(
                    f"unknown configuration key{'s' if len(unknown) > 1 else ''}: "
                    + ", ".join(repr(name) for name in unknown)
                )
        entries: list[ConfigurationEntry] = []
        for name in names:
            spec = cfg.spec(name)
            assert spec is not None
            entries.append(
                ConfigurationEntry(
                    key=name,
                    value=format_key_value(cfg.get(name)),
                    readonly=spec.readonly,
                    reboot_required=spec.reboot_required,
                )
            )
        return entries

    def change_configuration(self, key: str, value: str) -> str:
        status = self._configuration.change(key, value)
        if status in (ChangeStatus.ACCEPTED, ChangeStatus.REBOOT_REQUIRED):
            log.info("configuration %s changed locally (%s)", key, status.value)
            self._config_changed(key)
        return status.value

    @property
    def registered(self) -> bool:
        return self.engine.registration is Registration.ACCEPTED


class SimulatorControl:
    """Implements service.station.api.SimulatorApi over the simulated EVSEs."""

    def __init__(
        self, simulators: dict[int, SimulatedEvse], websocket: Callable[[bool], None]
    ) -> None:
        self._sims = simulators
        self._websocket = websocket

    def _sim(self, evse_id: int) -> SimulatedEvse:
        sim = self._sims.get(evse_id)
        if sim is None:
            raise UnknownEvse(f"no simulated EVSE {evse_id}")
        return sim

    def plug(self, evse_id: int) -> None:
        self._sim(evse_id).plug()

    def unplug(self, evse_id: int) -> None:
        self._sim(evse_id).unplug()

    def set_ev_ready(self, evse_id: int, ready: bool) -> None:
        self._sim(evse_id).set_ev_ready(ready)

    def set_ev_max_current(self, evse_id: int, amps: float) -> None:
        if not 0 <= amps <= 1000:
            raise InvalidArgument("EV current must be 0..1000 A")
        self._sim(evse_id).set_ev_max_current(amps)

    def present_rfid(self, evse_id: int, id_tag: str) -> None:
        # The reader hands any card up; the station refuses what the protocol cannot carry.
        if not is_valid_id_tag(id_tag, ID_TOKEN_MAX_LENGTH):
            raise InvalidArgument(f"invalid idTag {id_tag!r}")
        self._sim(evse_id).present_rfid(id_tag)

    def press_button(self, evse_id: int) -> None:
        sim = self._sim(evse_id)
        if sim.start_button is None:
            raise NotAvailable(
                f'EVSE {evse_id} has no start button: set [evse.start_button] backend = "sim"'
            )
        sim.press_button()

    def set_safety_input(self, evse_id: int, name: str, active: bool) -> None:
        safety = self._sim(evse_id).safety
        if name == "emergency_stop":
            safety.press_emergency_stop(active)
        elif name == "rcd":
            safety.trip_rcd(active)
        else:
            raise InvalidArgument(f"unknown safety input {name!r}: emergency_stop or rcd")

    def raise_fault(self, evse_id: int, error_code: str) -> None:
        try:
            self._sim(evse_id).raise_fault(error_code)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None

    def clear_fault(self, evse_id: int) -> None:
        self._sim(evse_id).clear_fault()

    def websocket_disconnect(self) -> None:
        self._websocket(False)

    def websocket_connect(self) -> None:
        self._websocket(True)
