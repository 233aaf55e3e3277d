"""Tests of hal.registry: building an EVSE's hardware from its configured backends."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from hal import registry
from hal.interfaces import MeterReading, PilotState
from hal.registry import HardwareConfigError, build_evse_hardware, known_backends
from service.config import KNOWN_BACKENDS, Connector, Evse, Hardware, load_settings
from service.config_reader import Scalar

SIMULATION_FILE = Path(__file__).resolve().parents[2] / "etc" / "evsed" / "simulation.toml"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# Minimal real drivers of another backend, registered the way a real driver is.
class FixedMeter:
    def __init__(self, evse: Evse, hardware: Hardware, shared: dict[str, object]) -> None:
        self.evse = evse
        self.options = hardware.options

    async def read(self) -> MeterReading:
        return MeterReading(0.0, (230.0,), (0.0,), (0.0,))


class FixedPilot:
    def __init__(self, evse: Evse, hardware: Hardware, shared: dict[str, object]) -> None:
        self.evse = evse

    @property
    def state(self) -> PilotState:
        return PilotState.A

    def on_change(self, callback: Callable[[PilotState], None]) -> None:
        pass

    def set_offered_current(self, amps: float) -> None:
        pass

    def set_locked(self, locked: bool) -> None:
        pass


class FixedContactor:
    def __init__(self, evse: Evse, hardware: Hardware, shared: dict[str, object]) -> None:
        self.evse = evse

    def set_closed(self, closed: bool) -> None:
        pass

    @property
    def closed(self) -> bool:
        return False


class FixedTokenReader:
    def __init__(self, evse: Evse, hardware: Hardware, shared: dict[str, object]) -> None:
        self.evse = evse

    def on_token(self, callback: Callable[[str], None]) -> None:
        pass


@pytest.fixture
def fixed_drivers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.METER_DRIVERS, "fixed", FixedMeter)
    monkeypatch.setitem(registry.PILOT_DRIVERS, "fixed", FixedPilot)
    monkeypatch.setitem(registry.CONTACTOR_DRIVERS, "fixed", FixedContactor)
    monkeypatch.setitem(registry.TOKEN_READER_DRIVERS, "fixed", FixedTokenReader)


def sim_evse(evse_id: int = 2, **options: dict[str, Scalar]) -> Evse:
    """An all-sim EVSE with the given options per device kind."""

    def sim(kind: str) -> Hardware:
        return Hardware(backend="sim", options=options.get(kind, {}))

    return Evse(
        id=evse_id,
        meter=sim("meter"),
        pilot=sim("pilot"),
        contactor=sim("contactor"),
        token_reader=sim("token_reader"),
    )


async def test_all_sim_devices_share_one_simulator() -> None:
    clock = FakeClock()
    hardware, sim = build_evse_hardware(Evse(), clock=clock)
    assert sim is not None
    assert hardware is sim.hardware
    assert (hardware.meter, hardware.pilot, hardware.contactor, hardware.token_reader) == (
        sim.meter,
        sim.pilot,
        sim.contactor,
        sim.token_reader,
    )
    # One physical model: the pilot, contactor and meter all see the same EV.
    sim.plug()
    sim.set_ev_ready(True)
    hardware.pilot.set_offered_current(16)
    hardware.contactor.set_closed(True)
    assert hardware.pilot.state is PilotState.C
    clock.now += 3600
    reading = await hardware.meter.read()
    assert reading.current_a == (16.0, 16.0, 16.0)
    assert reading.energy_import_wh == pytest.approx(11040)


def test_each_evse_gets_its_own_simulator() -> None:
    _, first = build_evse_hardware(Evse(id=1))
    _, second = build_evse_hardware(Evse(id=2))
    assert first is not None and second is not None
    first.plug()
    assert first.pilot.state is PilotState.B
    assert second.pilot.state is PilotState.A


async def test_sim_options_from_any_device_table() -> None:
    evse = Evse(
        id=1,
        meter=Hardware(options={"voltage_v": 240, "initial_energy_wh": 1500.5}),
        pilot=Hardware(options={"ev_max_current_a": 10.0}),
        contactor=Hardware(options={"voltage_v": 240.0}),  # the same value twice is fine
        connectors=(Connector(phases=1),),
    )
    hardware, sim = build_evse_hardware(evse)
    assert sim is not None
    sim.plug()
    sim.set_ev_ready(True)
    hardware.pilot.set_offered_current(32)
    hardware.contactor.set_closed(True)
    reading = await hardware.meter.read()
    assert reading.voltage_v == (240.0,)
    assert reading.current_a == (10.0,)
    assert reading.energy_import_wh >= 1500.5


def test_the_simulation_profile_builds() -> None:
    settings = load_settings(SIMULATION_FILE)
    sims = [build_evse_hardware(evse)[1] for evse in settings.evses]
    assert len(sims) == len(settings.evses) >= 1
    assert all(sim is not None for sim in sims)


def test_unknown_backend_names_evse_and_device() -> None:
    evse = Evse(id=2, contactor=Hardware(backend="modbus"))
    with pytest.raises(HardwareConfigError) as caught:
        build_evse_hardware(evse)
    message = str(caught.value)
    assert "EVSE 2" in message
    assert "evse[2].contactor.backend" in message
    assert "'modbus'" in message
    assert isinstance(caught.value, ValueError)


@pytest.mark.usefixtures("fixed_drivers")
def test_mixing_sim_and_real_backends_is_refused() -> None:
    evse = Evse(id=3, meter=Hardware(backend="fixed"))
    with pytest.raises(HardwareConfigError) as caught:
        build_evse_hardware(evse)
    message = str(caught.value)
    assert "EVSE 3" in message
    assert "meter = 'fixed'" in message
    assert "pilot, contactor, token_reader use backend 'sim'" in message


@pytest.mark.usefixtures("fixed_drivers")
def test_registered_drivers_build_the_devices() -> None:
    fixed = Hardware(backend="fixed", options={"port": "/dev/ttyS1"})
    evse = Evse(id=4, meter=fixed, pilot=fixed, contactor=fixed, token_reader=fixed)
    hardware, sim = build_evse_hardware(evse)
    assert sim is None
    assert isinstance(hardware.meter, FixedMeter)
    assert hardware.meter.evse is evse
    assert hardware.meter.options == {"port": "/dev/ttyS1"}
    assert isinstance(hardware.pilot, FixedPilot)
    assert isinstance(hardware.contactor, FixedContactor)
    assert isinstance(hardware.token_reader, FixedTokenReader)
    assert asyncio.run(hardware.meter.read()).voltage_v == (230.0,)
    assert "fixed" in known_backends()["meter"]


@pytest.mark.parametrize(
    ("options", "key", "fragment"),
    [
        ({"meter": {"volts": 230}}, "evse[2].meter.options.volts", "unknown option"),
        ({"meter": {"voltage_v": "230"}}, "evse[2].meter.options.voltage_v", 'found "230"'),
        ({"meter": {"voltage_v": True}}, "evse[2].meter.options.voltage_v", "found true"),
        ({"meter": {"voltage_v": 0}}, "evse[2].meter.options.voltage_v", "a number > 0"),
        (
            {"pilot": {"initial_energy_wh": -1.0}},
            "evse[2].pilot.options.initial_energy_wh",
            "a number >= 0",
        ),
        (
            {"token_reader": {"ev_max_current_a": float("nan")}},
            "evse[2].token_reader.options.ev_max_current_a",
            "found nan",
        ),
        (
            {"meter": {"voltage_v": 230}, "pilot": {"voltage_v": 240}},
            "evse[2].pilot.options.voltage_v",
            "evse[2].meter.options.voltage_v is 230",
        ),
    ],
)
def test_bad_sim_options_are_refused(
    options: dict[str, dict[str, Scalar]], key: str, fragment: str
) -> None:
    with pytest.raises(HardwareConfigError) as caught:
        build_evse_hardware(sim_evse(2, **options))
    message = str(caught.value)
    assert message.startswith(f"EVSE 2: {key}:")
    assert fragment in message


def test_config_accepts_exactly_the_registered_backends() -> None:
    assert known_backends() == KNOWN_BACKENDS
