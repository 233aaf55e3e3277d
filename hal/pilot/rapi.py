"""The OpenEVSE RAPI driver: a charge-controller MCU on a serial port as a hal Pilot and Contactor.

An OpenEVSE-compatible MCU generates the IEC 61851 pilot, measures the EV's state, drives the
relay and runs its own safety checks (GFI, ground, stuck relay, temperature, diode check).
evsed talks to it with RAPI (see hal.pilot.rapi_protocol) over one serial connection, which
`RapiPilot` and `RapiContactor` share: the first device built for a port creates a `RapiLink`
in the daemon's `shared` dict under "rapi:<real path of the port>" (the ("rapi", port) key as
a string, as `shared` takes), the second one joins it.

Behaviour:

- Heartbeat: `GS` every `poll_interval_s`; while no valid GS answer came for `timeout_s` the
  pilot reports fault EVCommunicationError "MCU not answering" and state F; the first valid
  answer afterwards restores the measured state and clears the fault. `$AT` notifications
  update the state between polls; `$AB` (the MCU rebooted) makes the driver re-send its
  settings. A port that fails (read error, hang-up) is closed and reopened every poll
  interval until it is back (a pty re-created behind the same path, a USB adapter replugged).
- Offer: `set_offered_current(a)` with a >= 6 A sends `SC a V` (volatile, no EEPROM wear;
  whole amperes rounded down, at most 80; the MCU may clamp it further) and `FE` (enable:
  the MCU outputs the PWM); below 6 A it sends `FS` (sleep: steady +12 V, relay open). Asleep,
  the firmware measures only whether an EV is connected, so the pilot then shows A, or the
  state last measured while the EV stayed plugged, or B for an EV plugged in meanwhile; the
  next offer lets the MCU measure (and C appear). Right after FE the firmware reports
  "unknown" for a moment: the last state is kept (unknown for `timeout_s` counts as F).
- Relay: the MCU closes it by itself when it is enabled, offers >= 6 A and the EV is in C/D,
  the way a real OpenEVSE works; evsed cannot close it in any other case.
  `RapiContactor.set_closed(False)` puts the MCU to sleep (relay opens), `set_closed(True)`
  enables it again if an offer stands; a new offer of >= 6 A also enables it. `closed` is the
  MCU's relay flag (ECVF_CHARGING_ON), or True while it reports a stuck (welded) relay.
- Lock (option `lock`, default true): a Mennekes lock, put in manual mode from the start
  (`S5 M`: evsed decides, not the MCU on plug-in), moved with `S5 1/0`, feedback from `G5`,
  polled with GS. A lock whose feedback disagrees with the command gives ConnectorLockFailure
  (retried every poll; cleared when the feedback agrees); so does set_locked on an MCU that
  refuses S5 (firmware without MENNEKES_LOCK).
- Cable rating: when the MCU has PP auto-ampacity (GE flag), `GC`'s configured maximum is the
  PP-limited current while an EV is plugged; otherwise `cable_max_current_a` is None.
- Faults: the pilot reports one fault at a time (the station keeps one per device), the most
  important first: MCU silent, an MCU fault state (see rapi_protocol.mcu_fault), the lock.
  The contactor reports PowerSwitchFailure for a stuck relay or a relay that did not close.

Options ([evse.pilot.options] / [evse.contactor.options], backend "rapi"; both devices
configure the one link: set an option on either, and where both set it they must agree):

- `port` (required): the MCU's serial device, e.g. "/dev/ttyUSB0"; must exist at build time.
- `baudrate` (integer, default 115200, as the OpenEVSE firmware's SERIAL_BAUD).
- `poll_interval_s` (seconds, default 1): how often GS is sent.
- `timeout_s` (seconds, default 3, more than poll_interval_s): no valid GS answer for this
  long -> EVCommunicationError "MCU not answering", state F.
- `lock` (pilot only, boolean, default true): the MCU drives a Mennekes connector lock. False
  for a tethered cable: set_locked is then only recorded and `locked` mirrors it.

The link itself (port, poll loop, I/O on the asyncio loop) is hal.pilot.rapi_link. Commands
carry sequence ids, so the MCU must speak RAPI 3.0.0 or later.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import hal.registry  # HardwareConfigError, looked up late: hal.registry imports the drivers
from hal.interfaces import FaultCallback, PilotState
from hal.pilot.rapi_link import (
    DEFAULT_BAUDRATE,
    DEFAULT_POLL_INTERVAL_S,
    DEFAULT_TIMEOUT_S,
    RapiError,
    RapiLink,
)
from hal.pilot.rapi_protocol import EVSE_STATE_A, EVSE_STATE_D, RapiStats
from service.config import Evse, Hardware
from service.config_reader import Scalar, show

__all__ = [
    "RapiContactor",
    "RapiError",
    "RapiLink",
    "RapiPilot",
    "build",
    "build_contactor",
    "build_pilot",
]


class RapiPilot:
    """hal.interfaces.Pilot of a RAPI MCU (control pilot, proximity pilot, connector lock)."""

    def __init__(self, link: RapiLink) -> None:
        self.link = link
        self._started = False

    async def start(self) -> None:
        """Start the shared link. RapiError if the port cannot be opened; the link then keeps
        trying (and reports the MCU silent) until close()."""
        if not self._started:
            self._started = True
            await self.link.start()

    async def close(self) -> None:
        """Leave the link; the last device to leave closes it (the MCU is put to sleep)."""
        if self._started:
            self._started = False
            await self.link.close()

    @property
    def state(self) -> PilotState:
        return self.link.state

    @property
    def stats(self) -> RapiStats:
        return self.link.stats

    @property
    def offered_current_a(self) -> float:
        """What the MCU offers now (its current capacity while enabled), else 0."""
        link = self.link
        status = link.status
        if status is None or link.capacity_a is None:
            return 0.0
        if not EVSE_STATE_A <= status.evse_state <= EVSE_STATE_D:
            return 0.0
        return float(link.capacity_a)

    def on_change(self, callback: Callable[[PilotState], None]) -> None:
        """Call `callback(new_state)` via loop.call_soon after every change of `state`."""
        self.link.pilot_callbacks.append(callback)

    def set_offered_current(self, amps: float) -> None:
        """Offer `amps` (whole amperes, at most 80); below 6 A the MCU sleeps (no offer)."""
        self.link.set_offer(amps)

    def set_locked(self, locked: bool) -> None:
        self.link.set_lock(locked)

    @property
    def locked(self) -> bool:
        return bool(self.link.lock_feedback)

    @property
    def cable_max_current_a(self) -> float | None:
        return self.link.cable_max_current_a

    def on_fault(self, callback: FaultCallback) -> None:
        self.link.pilot_fault_callbacks.append(callback)


class RapiContactor:
    """hal.interfaces.Contactor of a RAPI MCU: the MCU's own relay (see the module doc)."""

    def __init__(self, link: RapiLink) -> None:
        self.link = link
        self._started = False

    async def start(self) -> None:
        """Start the shared link. RapiError if the port cannot be opened; the link then keeps
        trying (and reports the MCU silent) until close()."""
        if not self._started:
            self._started = True
            await self.link.start()

    async def close(self) -> None:
        """Leave the link; the last device to leave closes it (the MCU is put to sleep)."""
        if self._started:
            self._started = False
            await self.link.close()

    def set_closed(self, closed: bool) -> None:
        self.link.set_contactor(closed)

    @property
    def closed(self) -> bool:
        return self.link.relay_closed

    def on_fault(self, callback: FaultCallback) -> None:
        self.link.contactor_fault_callbacks.append(callback)


# ----------------------------------------------------------------- configuration

_LINK_OPTIONS = ("port", "baudrate", "poll_interval_s", "timeout_s")
_PILOT_OPTIONS = (*_LINK_OPTIONS, "lock")


def _option_error(
    evse: Evse, kind: str, name: str, message: str
) -> hal.registry.HardwareConfigError:
    return hal.registry.HardwareConfigError(
        f"EVSE {evse.id}: evse[{evse.id}].{kind}.options.{name}: {message}"
    )


def _link_settings(
    evse: Evse, kind: str, options: dict[str, Scalar], allowed: tuple[str, ...]
) -> dict[str, Scalar]:
    """The options `kind` sets, checked (the ones it leaves out are not in the result)."""
    for name in options:
        if name not in allowed:
            raise _option_error(
                evse,
                kind,
                name,
                f"unknown option of backend 'rapi'; expected one of {', '.join(allowed)}",
            )
    settings: dict[str, Scalar] = {}
    port = options.get("port")
    if port is None:
        raise _option_error(evse, kind, "port", "missing; expected the MCU's serial device path")
    if not isinstance(port, str) or not port.strip():
        raise _option_error(evse, kind, "port", f"found {show(port)}; expected a device path")
    settings["port"] = port
    if "baudrate" in options:
        baud = options["baudrate"]
        if isinstance(baud, bool) or not isinstance(baud, int) or not 300 <= baud <= 4_000_000:
            raise _option_error(
                evse, kind, "baudrate", f"found {show(baud)}; expected an integer 300-4000000"
            )
        settings["baudrate"] = baud
    for name, low, high in (("poll_interval_s", 0.01, 60.0), ("timeout_s", 0.05, 600.0)):
        if name in options:
            value = options[name]
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or not low <= value <= high
            ):
                raise _option_error(
                    evse, kind, name, f"found {show(value)}; expected seconds {low:g}-{high:g}"
                )
            settings[name] = float(value)
    if "lock" in options:
        lock = options["lock"]
        if not isinstance(lock, bool):
            raise _option_error(evse, kind, "lock", f"found {show(lock)}; expected true or false")
        settings["lock"] = lock
    _check_timeout(evse, kind, settings)
    return settings


def _check_timeout(evse: Evse, kind: str, settings: dict[str, Scalar]) -> None:
    poll = float(settings.get("poll_interval_s", DEFAULT_POLL_INTERVAL_S))
    timeout = float(settings.get("timeout_s", DEFAULT_TIMEOUT_S))
    if timeout <= poll:
        raise _option_error(
            evse,
            kind,
            "timeout_s" if "timeout_s" in settings else "poll_interval_s",
            f"timeout_s {timeout:g} s is not longer than poll_interval_s {poll:g} s; "
            f"the MCU would look silent between two polls",
        )


def _shared_link(evse: Evse, kind: str, hardware: Hardware, shared: dict[str, object]) -> RapiLink:
    allowed = _PILOT_OPTIONS if kind == "pilot" else _LINK_OPTIONS
    settings = _link_settings(evse, kind, dict(hardware.options), allowed)
    port = str(settings["port"])
    key = "rapi:" + os.path.realpath(port)  # ("rapi", port), as the str key `shared` takes
    existing = shared.get(key)
    if isinstance(existing, RapiLink):
        if existing.evse_id != evse.id:
            raise _option_error(
                evse,
                kind,
                "port",
                f"{port} is the RAPI MCU of EVSE {existing.evse_id}; one MCU drives one EVSE",
            )
        link = existing
    else:
        if not os.path.exists(port):
            raise _option_error(evse, kind, "port", f"{port} does not exist")
        link = RapiLink(evse_id=evse.id, port=port)
    # Both devices configure the one link: an option set on both must agree.
    merged: dict[str, Scalar] = dict(link.options)
    for name, value in settings.items():
        if name != "port" and name in merged and merged[name] != value:
            raise _option_error(
                evse,
                kind,
                name,
                f"found {show(value)}, but the other device on {port} has "
                f"{show(merged[name])}; set it the same (or once)",
            )
        merged[name] = value
    _check_timeout(evse, kind, merged)
    link.configure(
        baudrate=int(merged.get("baudrate", DEFAULT_BAUDRATE)),
        poll_interval_s=float(merged.get("poll_interval_s", DEFAULT_POLL_INTERVAL_S)),
        timeout_s=float(merged.get("timeout_s", DEFAULT_TIMEOUT_S)),
        lock=bool(merged.get("lock", True)),
    )
    link.options = dict(merged)
    shared[key] = link
    return link


def build_pilot(evse: Evse, hardware: Hardware, shared: dict[str, object]) -> RapiPilot:
    """The pilot of `evse` from [evse.pilot] backend = "rapi". Raises HardwareConfigError."""
    link = _shared_link(evse, "pilot", hardware, shared)
    if link.pilot_device is None:
        link.pilot_device = RapiPilot(link)
    return link.pilot_device


def build_contactor(evse: Evse, hardware: Hardware, shared: dict[str, object]) -> RapiContactor:
    """The contactor of `evse` from [evse.contactor] backend = "rapi" (the MCU's relay)."""
    link = _shared_link(evse, "contactor", hardware, shared)
    if link.contactor_device is None:
        link.contactor_device = RapiContactor(link)
    return link.contactor_device


build = build_pilot
