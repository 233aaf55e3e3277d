"""The simulated EVSE's start button (hal.sim.evse.SimStartButton) and Simulator1.PressButton's
implementation (service.control.SimulatorControl.press_button)."""

from __future__ import annotations

import asyncio

import pytest

from hal.interfaces import StartButton
from hal.sim import SimulatedEvse
from service.control import SimulatorControl
from service.station.api import NotAvailable, UnknownEvse


async def test_press_fires_every_callback_once_after_yielding() -> None:
    sim = SimulatedEvse()
    assert sim.start_button is not None and sim.hardware.start_button is sim.start_button
    button: StartButton = sim.start_button
    seen: list[str] = []
    button.on_press(lambda: seen.append("a"))
    button.on_press(lambda: seen.append("b"))
    sim.press_button()
    assert seen == []  # scheduled, never called from inside press()
    await asyncio.sleep(0)
    assert seen == ["a", "b"]
    sim.press_button()
    await asyncio.sleep(0)
    assert seen == ["a", "b", "a", "b"]


def test_press_without_listeners_or_loop_does_nothing() -> None:
    SimulatedEvse().press_button()


def test_press_with_a_listener_outside_the_loop_is_refused() -> None:
    sim = SimulatedEvse()
    assert sim.start_button is not None
    sim.start_button.on_press(lambda: None)
    with pytest.raises(RuntimeError, match="event loop"):
        sim.press_button()


def test_an_evse_without_a_button() -> None:
    sim = SimulatedEvse(start_button=False)
    assert sim.start_button is None and sim.hardware.start_button is None
    with pytest.raises(RuntimeError, match="no start button"):
        sim.press_button()


async def test_simulator_control_press_button() -> None:
    with_button, without = SimulatedEvse(), SimulatedEvse(start_button=False)
    control = SimulatorControl({1: with_button, 2: without}, lambda up: None)
    pressed: list[int] = []
    assert with_button.start_button is not None
    with_button.start_button.on_press(lambda: pressed.append(1))
    control.press_button(1)
    await asyncio.sleep(0)
    assert pressed == [1]
    with pytest.raises(NotAvailable, match=r'EVSE 2 has no start button.*backend = "sim"'):
        control.press_button(2)
    with pytest.raises(UnknownEvse):
        control.press_button(3)
