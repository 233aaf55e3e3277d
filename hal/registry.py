"""The HAL backend registry: which driver builds each device of an EVSE, by its configured name.

`DRIVERS` maps device kind -> backend name -> "module:function"; the module is imported only
when a configuration uses it (a charger without CAN never imports python-can). A factory is
`build(evse, hardware, shared) -> device`; `shared` is one dict per daemon in which drivers
keep connections that several devices use (one RS-485 bus for several meters, the pilot and
relay of one MCU). Adding a driver is one line here and its name in
service.config.KNOWN_BACKENDS (a test keeps both in step).

The backend "sim" is not in `DRIVERS`: it is one SimulatedEvse driving the four core devices
of an EVSE together (with its simulated emergency stop / RCD), so an EVSE's core devices are
either all "sim" or not "sim" at all. The optional kinds (power_module, safety, start_button)
accept "none"; safety and start_button accept "sim" with a simulated EVSE only (its simulated
emergency stop / RCD; its simulated start button, pressed with SimulatedEvse.press_button()).

The "sim" backend's options may be set in any of the EVSE's four [evse.<kind>.options] tables
(they configure the one simulator): `voltage_v` (per phase, default 230), `initial_energy_wh`
(the meter's register at start, default 0) and `ev_max_current_a` (what the simulated EV draws
per phase, default the connector's max_current_a). Integers are accepted for these numbers.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hal.interfaces import EvseHardware
from hal.sim import DEFAULT_VOLTAGE_V, SimulatedEvse
from service.config import Evse, Hardware
from service.config_reader import Scalar, show

__all__ = [
    "CONTACTOR_DRIVERS",
    "DEVICE_KINDS",
    "DRIVERS",
    "METER_DRIVERS",
    "PILOT_DRIVERS",
    "SIM_BACKEND",
    "TOKEN_READER_DRIVERS",
    "HardwareConfigError",
    "build_evse_hardware",
    "known_backends",
]

SIM_BACKEND = "sim"
NONE_BACKEND = "none"
DEVICE_KINDS: tuple[str, ...] = ("meter", "pilot", "contactor", "token_reader")
OPTIONAL_KINDS: tuple[str, ...] = ("power_module", "safety", "start_button")
# Optional kinds a SimulatedEvse provides (backend "sim").
_SIMULATED_OPTIONAL: tuple[str, ...] = ("safety", "start_button")

DRIVERS: dict[str, dict[str, str]] = {
    "meter": {"modbus": "hal.meter.modbus:build"},
    "pilot": {"rapi": "hal.pilot.rapi:build_pilot"},
    "contactor": {"rapi": "hal.pilot.rapi:build_contactor", "gpio": "hal.gpio.contactor:build"},
    "token_reader": {"pn532": "hal.rfid.pn532:build"},
    "power_module": {"infypower": "hal.power.infypower:build"},
    "safety": {"gpio": "hal.gpio.safety:build"},
    "start_button": {"gpio": "hal.gpio.button:build"},
}

Factory = Callable[[Evse, Hardware, dict[str, object]], object]

# Kept for callers/tests that register a driver object directly (name -> factory).
METER_DRIVERS: dict[str, Factory] = {}
PILOT_DRIVERS: dict[str, Factory] = {}
CONTACTOR_DRIVERS: dict[str, Factory] = {}
TOKEN_READER_DRIVERS: dict[str, Factory] = {}
_DIRECT: dict[str, dict[str, Factory]] = {
    "meter": METER_DRIVERS,
    "pilot": PILOT_DRIVERS,
    "contactor": CONTACTOR_DRIVERS,
    "token_reader": TOKEN_READER_DRIVERS,
}


class HardwareConfigError(ValueError):
    """An EVSE's hardware configuration names no driver, mixes the simulator with real
    drivers, or gives a backend options it does not take. The message names the EVSE and key."""


@dataclass(frozen=True, slots=True)
class _NumberOption:
    minimum: float
    maximum: float
    above_minimum: bool = False

    def accepts(self, value: Scalar) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not math.isfinite(value) or value > self.maximum:
            return False
        return value > self.minimum if self.above_minimum else value >= self.minimum

    def describe(self) -> str:
        low = ">" if self.above_minimum else ">="
        return f"a number {low} {self.minimum:g} and <= {self.maximum:g}"


_SIM_OPTIONS: dict[str, _NumberOption] = {
    "voltage_v": _NumberOption(0, 1000, above_minimum=True),
    "initial_energy_wh": _NumberOption(0, 1e12),
    "ev_max_current_a": _NumberOption(0, 1000),
}


def known_backends() -> dict[str, frozenset[str]]:
    """Backend names per device kind (what service.config should accept)."""
    names: dict[str, frozenset[str]] = {}
    for kind in (*DEVICE_KINDS, *OPTIONAL_KINDS):
        extra = {SIM_BACKEND} if kind in (*DEVICE_KINDS, *_SIMULATED_OPTIONAL) else set()
        if kind in OPTIONAL_KINDS:
            extra.add(NONE_BACKEND)
        names[kind] = frozenset({*extra, *DRIVERS.get(kind, {}), *_DIRECT.get(kind, {})})
    return names


def _factory(kind: str, backend: str) -> Factory:
    direct = _DIRECT.get(kind, {}).get(backend)
    if direct is not None:
        return direct
    module_name, _, function = DRIVERS[kind][backend].partition(":")
    module = importlib.import_module(module_name)
    factory: Factory = getattr(module, function)
    return factory


def _device(evse: Evse, kind: str) -> Hardware:
    hardware = getattr(evse, kind)
    assert isinstance(hardware, Hardware)
    return hardware


def build_evse_hardware(
    evse: Evse,
    *,
    clock: Callable[[], float] = time.monotonic,
    shared: dict[str, object] | None = None,
) -> tuple[EvseHardware, SimulatedEvse | None]:
    """The devices of `evse`, and the simulator behind them when its backends are "sim".

    `clock` (monotonic seconds) is handed to the simulator; `shared` is the daemon-wide dict
    drivers share connections through. Raises HardwareConfigError.
    """
    if shared is None:
        shared = {}
    known = known_backends()
    for kind in (*DEVICE_KINDS, *OPTIONAL_KINDS):
        backend = _device(evse, kind).backend
        if backend not in known[kind]:
            raise HardwareConfigError(
                f"EVSE {evse.id}: {_key(evse, kind)}.backend: unknown backend {backend!r}; "
                f"expected one of {', '.join(sorted(known[kind]))}"
            )
    simulated = [kind for kind in DEVICE_KINDS if _device(evse, kind).backend == SIM_BACKEND]
    if simulated and len(simulated) != len(DEVICE_KINDS):
        real = ", ".join(
            f"{kind} = {_device(evse, kind).backend!r}"
            for kind in DEVICE_KINDS
            if kind not in simulated
        )
        raise HardwareConfigError(
            f"EVSE {evse.id}: {', '.join(simulated)} use backend {SIM_BACKEND!r} but {real}; "
            f"the simulator drives all four devices of an EVSE or none of them"
        )
    if simulated:
        options = _sim_options(evse)
        sim = SimulatedEvse(
            evse.connectors,
            voltage_v=options.get("voltage_v", DEFAULT_VOLTAGE_V),
            initial_energy_wh=options.get("initial_energy_wh", 0.0),
            ev_max_current_a=options.get("ev_max_current_a"),
            clock=clock,
            start_button=_device(evse, "start_button").backend == SIM_BACKEND,
        )
        if any(
            _device(evse, kind).backend not in (SIM_BACKEND, NONE_BACKEND)
            for kind in _SIMULATED_OPTIONAL
        ) or (_device(evse, "power_module").backend != NONE_BACKEND):
            raise HardwareConfigError(
                f"EVSE {evse.id}: a simulated EVSE takes no real power_module, safety or "
                f"start_button device"
            )
        for kind in _SIMULATED_OPTIONAL:
            hardware = _device(evse, kind)
            if hardware.backend == SIM_BACKEND and hardware.options:
                name = next(iter(hardware.options))
                raise HardwareConfigError(
                    f"EVSE {evse.id}: {_key(evse, kind)}.options.{name}: unknown option of "
                    f"backend {SIM_BACKEND!r}; the simulated {kind} takes no options"
                )
        return sim.hardware, sim

    def build(kind: str) -> Any:
        hardware = _device(evse, kind)
        return _factory(kind, hardware.backend)(evse, hardware, shared)

    for kind in _SIMULATED_OPTIONAL:
        if _device(evse, kind).backend == SIM_BACKEND:
            raise HardwareConfigError(
                f"EVSE {evse.id}: {_key(evse, kind)}.backend: 'sim' needs simulated devices"
            )
    optional = {
        kind: build(kind) if _device(evse, kind).backend != NONE_BACKEND else None
        for kind in OPTIONAL_KINDS
    }
    devices = EvseHardware(
        meter=build("meter"),
        pilot=build("pilot"),
        contactor=build("contactor"),
        token_reader=build("token_reader"),
        power_module=optional["power_module"],
        safety=optional["safety"],
        start_button=optional["start_button"],
    )
    return devices, None


def _key(evse: Evse, kind: str) -> str:
    return f"evse[{evse.id}].{kind}"


def _sim_options(evse: Evse) -> dict[str, float]:
    """The simulator's options, gathered from all four devices' option tables and checked."""
    values: dict[str, float] = {}
    set_in: dict[str, str] = {}
    for kind in DEVICE_KINDS:
        for name, value in _device(evse, kind).options.items():
            key = f"{_key(evse, kind)}.options.{name}"
            spec = _SIM_OPTIONS.get(name)
            if spec is None:
                raise HardwareConfigError(
                    f"EVSE {evse.id}: {key}: unknown option of backend {SIM_BACKEND!r}; "
                    f"expected one of {', '.join(_SIM_OPTIONS)}"
                )
            if not spec.accepts(value):
                raise HardwareConfigError(
                    f"EVSE {evse.id}: {key}: found {show(value)}; expected {spec.describe()}"
                )
            number = float(value)
            if name in values and values[name] != number:
                raise HardwareConfigError(
                    f"EVSE {evse.id}: {key}: found {show(value)}, but {set_in[name]} is "
                    f"{values[name]:g}; the four devices share one simulator, so set it once"
                )
            values[name] = number
            set_in[name] = key
    return values
