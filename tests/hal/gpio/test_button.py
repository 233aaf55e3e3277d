"""Tests of hal.gpio.button (the EVSE's start button) on MemoryLines.

MemoryLines stands in for the kernel's GPIO lines (levels, busy lines, edge events on an fd);
the button driver and InputWatch above it are the real code. `chip.drive` is the finger on the
button (and the pull-up / pull-down behind it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import pytest

from hal.gpio import LINES_KEY, LineRef, MemoryLines
from hal.gpio.button import DEFAULT_DEBOUNCE_S, GpioStartButton, build
from hal.gpio.contactor import build as build_contactor
from hal.gpio.lines import MemoryChip
from hal.interfaces import StartButton
from hal.registry import HardwareConfigError
from service.config import Evse, Hardware

CHIP = "/dev/gpiochip0"
NAMES = ["K1_DRIVE", "K1_FB", "START", "SPARE"]
DEBOUNCE_S = 0.05


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


@pytest.fixture
def lines() -> MemoryLines:
    memory = MemoryLines()
    memory.add_chip(CHIP, num_lines=len(NAMES), names=NAMES)
    return memory


@pytest.fixture
def chip(lines: MemoryLines) -> MemoryChip:
    return lines.chip(CHIP)


@pytest.fixture
def presses() -> list[float]:
    return []


@pytest.fixture
async def button(lines: MemoryLines, presses: list[float]) -> AsyncIterator[GpioStartButton]:
    device = GpioStartButton(
        lines, LineRef(CHIP, "START"), debounce_s=DEBOUNCE_S, check_interval_s=0.02
    )
    loop = asyncio.get_running_loop()
    device.on_press(lambda: presses.append(loop.time()))
    await device.start()
    yield device
    await device.close()


async def push(chip: MemoryChip, hold_s: float = 3 * DEBOUNCE_S, line: str = "START") -> None:
    """Press the button, hold it `hold_s`, release it and wait until the release settled."""
    chip.drive(line, True)
    await asyncio.sleep(hold_s)
    chip.drive(line, False)
    await asyncio.sleep(3 * DEBOUNCE_S)


async def test_a_press_counts_once_and_holding_does_not_repeat(
    button: GpioStartButton, chip: MemoryChip, presses: list[float]
) -> None:
    device: StartButton = button  # the hal.interfaces protocol
    assert device is button and not button.pressed
    chip.drive("START", True)
    await until(lambda: len(presses) == 1)
    assert button.pressed
    await asyncio.sleep(0.2)  # held: many poll periods, no repeat
    assert len(presses) == 1
    chip.drive("START", False)
    await until(lambda: not button.pressed)
    await asyncio.sleep(0.1)
    assert len(presses) == 1  # the release is no press
    await push(chip)
    assert len(presses) == 2


async def test_a_press_counts_after_the_debounce_time(
    button: GpioStartButton, chip: MemoryChip, presses: list[float]
) -> None:
    loop = asyncio.get_running_loop()
    pressed_at = loop.time()
    chip.drive("START", True)
    await until(lambda: bool(presses))
    assert presses[0] - pressed_at >= DEBOUNCE_S * 0.9


async def test_bounces_count_once_and_a_glitch_not_at_all(
    button: GpioStartButton, chip: MemoryChip, presses: list[float]
) -> None:
    # Contact bounce on pressing, then on releasing: one press.
    for level in (True, False, True, False, True):
        chip.drive("START", level)
        await asyncio.sleep(0.002)
    await until(lambda: len(presses) == 1)
    for level in (False, True, False, True, False):
        chip.drive("START", level)
        await asyncio.sleep(0.002)
    await asyncio.sleep(0.15)
    assert len(presses) == 1 and not button.pressed
    # A spike shorter than the debounce time (interference on the wire): no press.
    chip.drive("START", True)
    await asyncio.sleep(0.005)
    chip.drive("START", False)
    await asyncio.sleep(0.15)
    assert len(presses) == 1


async def test_callbacks_are_scheduled_not_called_inside(
    button: GpioStartButton, chip: MemoryChip
) -> None:
    order: list[str] = []
    button.on_press(lambda: order.append("first"))
    button.on_press(lambda: order.append("second"))
    chip.drive("START", True)
    await until(lambda: len(order) == 2)
    assert order == ["first", "second"]


async def test_active_low_button(lines: MemoryLines, chip: MemoryChip) -> None:
    chip.drive("START", True)  # pull-up: released
    device = GpioStartButton(lines, LineRef(CHIP, "START", active_low=True), debounce_s=0)
    presses: list[int] = []
    device.on_press(lambda: presses.append(1))
    await device.start()
    try:
        assert not device.pressed
        chip.drive("START", False)  # pressed: shorted to ground
        await until(lambda: presses == [1])
        chip.drive("START", True)
        await until(lambda: not device.pressed)
        assert presses == [1]
    finally:
        await device.close()


async def test_held_at_start_is_no_press(lines: MemoryLines, chip: MemoryChip) -> None:
    chip.drive("START", True)  # held (or stuck) while the daemon starts
    device = GpioStartButton(lines, LineRef(CHIP, "START"), debounce_s=0.01)
    presses: list[int] = []
    device.on_press(lambda: presses.append(1))
    await device.start()
    try:
        assert device.pressed
        await asyncio.sleep(0.1)
        assert presses == []
        chip.drive("START", False)
        await until(lambda: not device.pressed)
        chip.drive("START", True)
        await until(lambda: presses == [1])
    finally:
        await device.close()


async def test_a_lost_edge_event_is_caught_by_the_periodic_read(
    button: GpioStartButton, chip: MemoryChip, presses: list[float]
) -> None:
    chip.drive("START", True, event=False)
    await until(lambda: len(presses) == 1)


async def test_a_line_that_cannot_be_read_gives_no_presses_and_comes_back(
    button: GpioStartButton,
    chip: MemoryChip,
    presses: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="hal.gpio.button")
    chip.remove()  # Linux 6.1: no hang-up; the periodic read notices
    await until(lambda: not button.usable)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "START" in errors[0].getMessage() and "GPIO error" in errors[0].getMessage()
    chip.drive("START", True)  # pressed while the line is gone: nobody hears it
    await asyncio.sleep(0.1)
    assert presses == [] and not button.pressed
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1  # logged once
    chip.restore()  # back while the button is held: still no press
    await until(lambda: button.usable)
    await asyncio.sleep(0.1)
    assert presses == [] and button.pressed
    assert chip.consumer("START") == "evsed"
    chip.drive("START", False)
    await until(lambda: not button.pressed)
    await push(chip)
    assert len(presses) == 1


async def test_a_hung_up_line_is_noticed_at_once(
    button: GpioStartButton, chip: MemoryChip, presses: list[float]
) -> None:
    chip.remove(hang_up=True)
    await until(lambda: not button.usable)
    chip.restore()
    await until(lambda: button.usable)
    await push(chip)
    assert len(presses) == 1


async def test_close_releases_the_line_and_stops_retrying(
    button: GpioStartButton, chip: MemoryChip, presses: list[float]
) -> None:
    chip.remove(hang_up=True)
    await until(lambda: not button.usable)
    await button.close()
    chip.restore()
    await asyncio.sleep(0.1)
    assert chip.consumer("START") is None and not button.usable
    await button.close()  # twice is fine


def test_bad_constructor_arguments(lines: MemoryLines) -> None:
    with pytest.raises(ValueError, match="debounce_s"):
        GpioStartButton(lines, LineRef(CHIP, 2), debounce_s=-1)
    with pytest.raises(ValueError, match="check_interval_s"):
        GpioStartButton(lines, LineRef(CHIP, 2), check_interval_s=0)


# --------------------------------------------------------------------------- build / options


def evse_with(**options: object) -> tuple[Evse, Hardware]:
    hardware = Hardware(backend="gpio", options=dict(options))  # type: ignore[arg-type]
    return Evse(id=2, start_button=hardware), hardware


@pytest.fixture
def shared(lines: MemoryLines) -> dict[str, object]:
    return {LINES_KEY: lines}


async def test_build_by_name_and_by_offset(shared: dict[str, object], chip: MemoryChip) -> None:
    evse, hardware = evse_with(chip="gpiochip0", line="START", active_low=True, debounce_s=0)
    device = build(evse, hardware, shared)
    presses: list[int] = []
    device.on_press(lambda: presses.append(1))
    chip.drive("START", True)  # released (active low)
    await device.start()
    try:
        assert chip.consumer("START") == "evsed:evse2:start_button"
        chip.drive("START", False)
        await until(lambda: presses == [1])
    finally:
        await device.close()
    assert chip.consumer("START") is None
    evse, hardware = evse_with(chip=CHIP, line=3)
    device = build(evse, hardware, shared)
    await device.start()
    try:
        assert chip.consumer("SPARE") == "evsed:evse2:start_button"
        assert device._debounce_s == DEFAULT_DEBOUNCE_S
    finally:
        await device.close()


@pytest.mark.parametrize(
    ("options", "key", "found"),
    [
        ({"chip": CHIP}, "line", "missing"),
        ({"line": 2}, "chip", "missing"),
        ({"chip": CHIP, "line": 2, "pin": 2}, "pin", "unknown option of backend 'gpio'"),
        ({"chip": CHIP, "line": 2, "pin": 2}, "pin", "chip, line, active_low, debounce_s"),
        ({"chip": CHIP, "line": -1}, "line", "found -1"),
        ({"chip": CHIP, "line": True}, "line", "found true"),
        ({"chip": CHIP, "line": 2, "active_low": "yes"}, "active_low", 'found "yes"'),
        ({"chip": CHIP, "line": 2, "debounce_s": -0.1}, "debounce_s", "found -0.1"),
        ({"chip": CHIP, "line": 2, "debounce_s": 10}, "debounce_s", "<= 5"),
        ({"chip": CHIP, "line": "BUTTON"}, "line", "no line named 'BUTTON'"),
        ({"chip": CHIP, "line": 9}, "line", "line 9 is out of range"),
        ({"chip": "/dev/gpiochip7", "line": 2}, "chip", "no GPIO chip at /dev/gpiochip7"),
    ],
)
def test_bad_options(
    shared: dict[str, object], options: dict[str, object], key: str, found: str
) -> None:
    evse, hardware = evse_with(**options)
    with pytest.raises(HardwareConfigError) as caught:
        build(evse, hardware, shared)
    message = str(caught.value)
    assert message.startswith(f"EVSE 2: evse[2].start_button.options.{key}: "), message
    assert found in message, message


def test_a_line_another_device_uses_is_refused(shared: dict[str, object]) -> None:
    hardware = Hardware(backend="gpio", options={"chip": CHIP, "drive_line": 0, "feedback_line": 1})
    build_contactor(Evse(id=2, contactor=hardware), hardware, shared)
    evse, hardware = evse_with(chip=CHIP, line="K1_FB")
    with pytest.raises(HardwareConfigError) as caught:
        build(evse, hardware, shared)
    assert "evse[2].start_button.options.line" in str(caught.value)
    assert "already used by EVSE 2: evse[2].contactor.options.feedback_line" in str(caught.value)


async def test_a_busy_line_at_start_is_a_configuration_error(
    lines: MemoryLines, shared: dict[str, object]
) -> None:
    other = lines.request_input(CHIP, "START", consumer="someone-else")
    try:
        evse, hardware = evse_with(chip=CHIP, line="START")
        device = build(evse, hardware, shared)
        with pytest.raises(HardwareConfigError) as caught:
            await device.start()
        message = str(caught.value)
        assert message.startswith('EVSE 2: evse[2].start_button.options.line: found "START":')
        assert "busy" in message and "someone-else" in message
    finally:
        other.release()
