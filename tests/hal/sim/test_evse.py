"""Tests of hal.sim.evse: the simulated EVSE's pilot, contactor, meter physics and callbacks."""

from __future__ import annotations

import asyncio

import pytest

from hal.interfaces import (
    Contactor,
    EvseHardware,
    Meter,
    MeterError,
    Pilot,
    PilotState,
    TokenReader,
)
from hal.sim import FaultKind, SimulatedEvse
from service.config import Connector


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 5000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> SimulatedEvse:
    return SimulatedEvse((Connector(max_current_a=32.0, phases=3),), clock=clock)


def record_pilot(sim: SimulatedEvse) -> list[PilotState]:
    seen: list[PilotState] = []
    sim.pilot.on_change(seen.append)
    return seen


async def charging(sim: SimulatedEvse, amps: float = 16.0) -> None:
    sim.plug()
    sim.set_ev_ready(True)
    sim.pilot.set_offered_current(amps)
    sim.contactor.set_closed(True)
    await asyncio.sleep(0)


def test_adapters_satisfy_the_protocols(sim: SimulatedEvse) -> None:
    meter: Meter = sim.meter
    pilot: Pilot = sim.pilot
    contactor: Contactor = sim.contactor
    token_reader: TokenReader = sim.token_reader
    hardware: EvseHardware = sim.hardware
    assert (hardware.meter, hardware.pilot, hardware.contactor, hardware.token_reader) == (
        meter,
        pilot,
        contactor,
        token_reader,
    )
    assert pilot.state is PilotState.A
    assert contactor.closed is False


async def test_plug_goes_to_b_and_the_callback_fires_once_after_yielding(
    sim: SimulatedEvse,
) -> None:
    seen = record_pilot(sim)
    sim.plug()
    assert sim.pilot.state is PilotState.B
    assert seen == []  # never called from inside plug()
    await asyncio.sleep(0)
    assert seen == [PilotState.B]
    sim.plug()  # the same connector again: nothing changes
    await asyncio.sleep(0)
    assert seen == [PilotState.B]


async def test_callbacks_fire_only_on_real_changes(sim: SimulatedEvse) -> None:
    seen = record_pilot(sim)
    sim.plug()
    sim.set_ev_ready(True)
    sim.set_ev_ready(True)
    sim.pilot.set_offered_current(16)
    sim.pilot.set_offered_current(0)
    sim.contactor.set_closed(True)
    sim.set_ev_max_current(10)
    await asyncio.sleep(0)
    assert seen == [PilotState.B, PilotState.C]
    sim.set_ev_ready(False)
    sim.unplug()
    sim.unplug()
    await asyncio.sleep(0)
    assert seen == [PilotState.B, PilotState.C, PilotState.B, PilotState.A]


async def test_a_callback_may_drive_the_simulator_without_reentering_itself(
    sim: SimulatedEvse,
) -> None:
    seen: list[PilotState] = []

    def daemon(state: PilotState) -> None:
        seen.append(state)
        # What a charging controller does on C: offer current and close the contactor.
        if state is PilotState.C:
            sim.pilot.set_offered_current(16)
            sim.contactor.set_closed(True)
            assert seen[-1] is PilotState.C  # no nested callback ran

    sim.pilot.on_change(daemon)
    sim.plug()
    sim.set_ev_ready(True)
    await asyncio.sleep(0)
    assert seen == [PilotState.B, PilotState.C]
    assert sim.snapshot().current_a == (16.0, 16.0, 16.0)


async def test_plugging_a_ready_ev_passes_through_b(sim: SimulatedEvse) -> None:
    seen = record_pilot(sim)
    sim.set_ev_ready(True)
    assert sim.pilot.state is PilotState.A
    sim.plug()
    await asyncio.sleep(0)
    assert seen == [PilotState.B, PilotState.C]
    assert sim.snapshot().state is PilotState.C


async def test_ready_ev_shows_c_and_d_with_ventilation(sim: SimulatedEvse) -> None:
    sim.plug()
    sim.set_ev_ready(True)
    assert sim.pilot.state is PilotState.C
    sim.set_ev_ventilation(True)
    assert sim.snapshot().state is PilotState.D
    sim.set_ev_ventilation(False)
    assert sim.snapshot().state is PilotState.C


async def test_no_current_until_contactor_closed_and_offer_at_least_6_a(
    sim: SimulatedEvse,
) -> None:
    sim.plug()
    sim.set_ev_ready(True)
    assert sim.snapshot().current_a == (0.0, 0.0, 0.0)
    sim.pilot.set_offered_current(16)
    assert sim.snapshot().current_a == (0.0, 0.0, 0.0)  # contactor still open
    sim.contactor.set_closed(True)
    assert sim.snapshot().current_a == (16.0, 16.0, 16.0)
    sim.pilot.set_offered_current(5.9)
    assert sim.snapshot().current_a == (0.0, 0.0, 0.0)
    assert sim.pilot.state is PilotState.C
    sim.pilot.set_offered_current(6)
    assert sim.snapshot().current_a == (6.0, 6.0, 6.0)
    sim.contactor.set_closed(False)
    assert sim.snapshot().current_a == (0.0, 0.0, 0.0)


async def test_ev_not_ready_draws_nothing(sim: SimulatedEvse) -> None:
    sim.plug()
    sim.pilot.set_offered_current(16)
    sim.contactor.set_closed(True)
    assert sim.pilot.state is PilotState.B
    assert sim.snapshot().current_a == (0.0, 0.0, 0.0)


async def test_current_is_the_smaller_of_ev_maximum_and_offer(sim: SimulatedEvse) -> None:
    await charging(sim, amps=32)
    assert sim.snapshot().current_a == (32.0, 32.0, 32.0)  # EV default: the connector's 32 A
    sim.set_ev_max_current(10)
    assert sim.snapshot().current_a == (10.0, 10.0, 10.0)
    sim.pilot.set_offered_current(8)
    assert sim.snapshot().current_a == (8.0, 8.0, 8.0)
    sim.set_ev_max_current(None)
    sim.pilot.set_offered_current(40)
    assert sim.snapshot().current_a == (32.0, 32.0, 32.0)


async def test_reading_per_phase_values(clock: FakeClock) -> None:
    sim = SimulatedEvse((Connector(phases=3),), voltage_v=240.0, clock=clock)
    await charging(sim, amps=10)
    reading = await sim.meter.read()
    assert reading.voltage_v == (240.0, 240.0, 240.0)
    assert reading.current_a == (10.0, 10.0, 10.0)
    assert reading.power_w == (2400.0, 2400.0, 2400.0)
    assert reading.power_total_w == 7200.0
    assert reading.frequency_hz == 50.0


async def test_single_phase_connector_and_single_phase_ev(clock: FakeClock) -> None:
    one_phase = SimulatedEvse((Connector(phases=1, max_current_a=16.0),), clock=clock)
    await charging(one_phase, amps=32)
    reading = await one_phase.meter.read()
    assert reading.current_a == (16.0,)
    assert reading.power_w == (230.0 * 16,)

    two_connectors = SimulatedEvse(
        (Connector(id=1, phases=3), Connector(id=2, phases=1)), clock=clock
    )
    two_connectors.plug(2)
    two_connectors.set_ev_ready(True)
    two_connectors.pilot.set_offered_current(16)
    two_connectors.contactor.set_closed(True)
    assert two_connectors.snapshot().current_a == (16.0, 0.0, 0.0)
    assert two_connectors.snapshot().connector_id == 2
    with pytest.raises(RuntimeError, match="connector 2"):
        two_connectors.plug(1)
    two_connectors.unplug()
    two_connectors.plug(1, phases=1)  # a one-phase EV on a three-phase socket
    assert two_connectors.snapshot().current_a == (16.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="no connector 3"):
        two_connectors.plug(3)


@pytest.mark.parametrize("reads_per_hour", [0, 1, 7, 3600])
async def test_energy_after_one_hour_at_16_a_three_phases(
    clock: FakeClock, sim: SimulatedEvse, reads_per_hour: int
) -> None:
    await charging(sim, amps=16)
    start = (await sim.meter.read()).energy_import_wh
    assert start == 0.0
    for _ in range(reads_per_hour):
        clock.advance(3600 / reads_per_hour)
        await sim.meter.read()
    if reads_per_hour == 0:
        clock.advance(3600)
    energy = (await sim.meter.read()).energy_import_wh
    assert energy == pytest.approx(16 * 3 * 230, rel=1e-9)  # 11040 Wh


async def test_energy_integrates_across_changes_of_current(clock: FakeClock) -> None:
    sim = SimulatedEvse((Connector(),), initial_energy_wh=1000.0, clock=clock)
    await charging(sim, amps=16)
    clock.advance(1800)  # half an hour at 16 A: 5520 Wh
    sim.pilot.set_offered_current(8)
    clock.advance(1800)  # half an hour at 8 A: 2760 Wh
    sim.pilot.set_offered_current(0)
    clock.advance(3600)  # nothing offered: nothing drawn
    sim.pilot.set_offered_current(16)
    sim.contactor.set_closed(False)
    clock.advance(3600)  # contactor open
    assert (await sim.meter.read()).energy_import_wh == pytest.approx(1000 + 5520 + 2760)
    assert sim.snapshot().energy_import_wh == pytest.approx(1000 + 5520 + 2760)


async def test_offered_zero_stops_current_but_state_stays_c(
    clock: FakeClock, sim: SimulatedEvse
) -> None:
    seen = record_pilot(sim)
    await charging(sim, amps=16)
    sim.pilot.set_offered_current(0)
    await asyncio.sleep(0)
    reading = await sim.meter.read()
    assert reading.current_a == (0.0, 0.0, 0.0)
    assert reading.power_total_w == 0.0
    assert sim.pilot.state is PilotState.C
    assert seen == [PilotState.B, PilotState.C]
    energy = reading.energy_import_wh
    clock.advance(600)
    assert (await sim.meter.read()).energy_import_wh == energy


async def test_unplug_while_charging(clock: FakeClock, sim: SimulatedEvse) -> None:
    seen = record_pilot(sim)
    await charging(sim)
    clock.advance(60)
    sim.unplug()
    await asyncio.sleep(0)
    assert sim.pilot.state is PilotState.A
    assert seen[-1] is PilotState.A
    reading = await sim.meter.read()
    assert reading.current_a == (0.0, 0.0, 0.0)
    assert reading.energy_import_wh == pytest.approx(16 * 3 * 230 / 60)
    assert sim.contactor.closed is True  # opening it is the daemon's job


@pytest.mark.parametrize(
    ("kind", "state"), [("pilot", PilotState.E), (FaultKind.EVSE, PilotState.F)]
)
async def test_fault_forces_e_or_f_and_stops_current(
    sim: SimulatedEvse, kind: str, state: PilotState
) -> None:
    seen = record_pilot(sim)
    await charging(sim)
    sim.raise_fault(kind)
    await asyncio.sleep(0)
    assert sim.pilot.state is state
    assert seen[-1] is state
    assert sim.snapshot().current_a == (0.0, 0.0, 0.0)
    sim.unplug()  # hidden behind the fault
    assert sim.pilot.state is state
    sim.plug()
    sim.clear_fault()
    await asyncio.sleep(0)
    assert sim.pilot.state is PilotState.C
    assert seen[-1] is PilotState.C
    assert sim.snapshot().current_a == (16.0, 16.0, 16.0)


def test_unknown_fault_kind_is_refused(sim: SimulatedEvse) -> None:
    with pytest.raises(ValueError, match="'pilot', 'evse'"):
        sim.raise_fault("smoke")
    assert sim.pilot.state is PilotState.A


async def test_meter_fail_raises_but_the_register_keeps_counting(
    clock: FakeClock, sim: SimulatedEvse
) -> None:
    await charging(sim)
    sim.meter_fail(True)
    clock.advance(3600)
    with pytest.raises(MeterError):
        await sim.meter.read()
    assert sim.snapshot().meter_failed is True
    sim.meter_fail(False)
    assert (await sim.meter.read()).energy_import_wh == pytest.approx(11040)


async def test_weld_keeps_feedback_and_current(sim: SimulatedEvse) -> None:
    await charging(sim)
    sim.weld()
    sim.contactor.set_closed(False)
    assert sim.contactor.closed is True
    assert sim.snapshot().welded is True
    assert sim.snapshot().current_a == (16.0, 16.0, 16.0)  # welded contacts still conduct
    sim.weld(False)
    assert sim.contactor.closed is False
    assert sim.snapshot().current_a == (0.0, 0.0, 0.0)


async def test_lock_is_recorded(sim: SimulatedEvse) -> None:
    sim.plug()
    sim.pilot.set_locked(True)
    assert sim.pilot.locked is True
    assert sim.snapshot().locked is True
    sim.pilot.set_locked(False)
    assert sim.pilot.locked is False


async def test_present_rfid_fires_token_callbacks_after_yielding(sim: SimulatedEvse) -> None:
    first: list[str] = []
    second: list[str] = []
    sim.token_reader.on_token(first.append)
    sim.token_reader.on_token(second.append)
    sim.present_rfid("04A2B3C4")
    assert first == []
    await asyncio.sleep(0)
    assert first == ["04A2B3C4"]
    assert second == ["04A2B3C4"]
    with pytest.raises(ValueError):
        sim.present_rfid("")


async def test_snapshot(clock: FakeClock, sim: SimulatedEvse) -> None:
    await charging(sim, amps=10)
    clock.advance(360)
    snap = sim.snapshot()
    assert snap.plugged is True
    assert snap.connector_id == 1
    assert snap.ev_ready is True
    assert snap.state is PilotState.C
    assert snap.offered_current_a == 10.0
    assert snap.contactor_closed is True
    assert snap.fault is None
    assert snap.current_a == (10.0, 10.0, 10.0)
    assert snap.power_w == 6900.0
    assert snap.energy_import_wh == pytest.approx(690.0)
    with pytest.raises(AttributeError):
        snap.plugged = False  # type: ignore[misc]


def test_bad_arguments_are_refused(sim: SimulatedEvse) -> None:
    with pytest.raises(ValueError):
        sim.pilot.set_offered_current(-1)
    with pytest.raises(ValueError):
        sim.pilot.set_offered_current(float("nan"))
    with pytest.raises(ValueError):
        sim.set_ev_max_current(-2)
    with pytest.raises(ValueError):
        sim.plug(phases=4)
    with pytest.raises(ValueError):
        SimulatedEvse((), clock=FakeClock())
    with pytest.raises(ValueError):
        SimulatedEvse(voltage_v=0)
    assert sim.snapshot().plugged is False


def test_changes_without_listeners_need_no_loop(sim: SimulatedEvse) -> None:
    sim.plug()
    sim.set_ev_ready(True)
    assert sim.pilot.state is PilotState.C


def test_listeners_need_the_running_loop(sim: SimulatedEvse) -> None:
    sim.pilot.on_change(lambda state: None)
    with pytest.raises(RuntimeError, match="event loop"):
        sim.plug()
    assert sim.pilot.state is PilotState.A  # refused before anything changed
