"""The HAL backend registry: which driver builds each device of an EVSE, by its configured name.

Each device kind has a dict of drivers, name -> factory(evse, hardware) -> device; a real driver
is added with one line, e.g. `METER_DRIVERS["modbus"] = hal.meter.modbus.build` (and its name
in service.config.KNOWN_BACKENDS). The backend "sim" is not in those dicts: it is one
SimulatedEvse driving all four devices of an EVSE together, so an EVSE is either all "sim" or
not "sim" at all.

The "sim" backend's options may be set in any of the EVSE's four [evse.<kind>.options] tables
(they configure the one simulator): `voltage_v` (per phase, default 230), `initial_energy_wh`
(the meter's register at start, default 0) and `ev_max_current_a` (what the simulated EV draws
per phase, default the connector's max_current_a). Integers are accepted for these numbers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from hal.interfaces import Contactor, EvseHardware, Meter, Pilot, TokenReader
from hal.sim import DEFAULT_VOLTAGE_V, SimulatedEvse
from service.config import Evse, Hardware
from service.config_reader import Scalar, show

__all__ = [
    "CONTACTOR_DRIVERS",
    "DEVICE_KINDS",
    "METER_DRIVERS",
    "PILOT_DRIVERS",
    "SIM_BACKEND",
    "TOKEN_READER_DRIVERS",
    "HardwareConfigError",
    "build_evse_hardware",
    "known_backends",
]

SIM_BACKEND = "sim"
DEVICE_KINDS: tuple[str, ...] = ("meter", "pilot", "contactor", "token_reader")

MeterDriver = Callable[[Evse, Hardware], Meter]
PilotDriver = Callable[[Evse, Hardware], Pilot]
ContactorDriver = Callable[[Evse, Hardware], Contactor]
TokenReaderDriver = Callable[[Evse, Hardware], TokenReader]

# Real drivers, by backend name. None yet (issue 4).
METER_DRIVERS: dict[str, MeterDriver] = {}
PILOT_DRIVERS: dict[str, PilotDriver] = {}
CONTACTOR_DRIVERS: dict[str, ContactorDriver] = {}
TOKEN_READER_DRIVERS: dict[str, TokenReaderDriver] = {}


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


def _drivers() -> dict[str, Mapping[str, object]]:
    return {
        "meter": METER_DRIVERS,
        "pilot": PILOT_DRIVERS,
        "contactor": CONTACTOR_DRIVERS,
        "token_reader": TOKEN_READER_DRIVERS,
    }


def known_backends() -> dict[str, frozenset[str]]:
    """Backend names per device kind, "sim" included (what service.config should accept)."""
    return {kind: frozenset({SIM_BACKEND, *names}) for kind, names in _drivers().items()}


def _device(evse: Evse, kind: str) -> Hardware:
    hardware = getattr(evse, kind)
    assert isinstance(hardware, Hardware)
    return hardware


def build_evse_hardware(
    evse: Evse, *, clock: Callable[[], float] = time.monotonic
) -> tuple[EvseHardware, SimulatedEvse | None]:
    """The devices of `evse`, and the simulator behind them when its backends are "sim".

    `clock` (monotonic seconds) is handed to the simulator. Raises HardwareConfigError.
    """
    known = known_backends()
    for kind in DEVICE_KINDS:
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
        )
        return sim.hardware, sim
    hardware = EvseHardware(
        meter=METER_DRIVERS[evse.meter.backend](evse, evse.meter),
        pilot=PILOT_DRIVERS[evse.pilot.backend](evse, evse.pilot),
        contactor=CONTACTOR_DRIVERS[evse.contactor.backend](evse, evse.contactor),
        token_reader=TOKEN_READER_DRIVERS[evse.token_reader.backend](evse, evse.token_reader),
    )
    return hardware, None


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
