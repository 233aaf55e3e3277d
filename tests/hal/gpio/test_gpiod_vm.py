"""hal.gpio on the kernel's GPIO character device: a gpio-sim chip driven through libgpiod v2.

Marked `vm`: it needs gpio-sim (configfs) and root, which the VM gives
(`../shared/vm/run -- .venv/bin/pytest -m vm tests/hal/gpio -q`); anywhere else it is skipped.
Each test creates its own gpio-sim chip with named lines. The test plays the world outside the
chip: it reads the drive outputs from sysfs (`sim_gpioK/value`) and drives the inputs by writing
`pull-up` / `pull-down` to `sim_gpioK/pull`, which raises real edge events on the request fd.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import gpiod
import pytest
from gpiod.line import Direction

from hal.gpio import (
    GpiodLines,
    GpioSafetyInputs,
    LineRef,
    StatusLeds,
    build_contactor,
    build_leds,
    build_safety,
)
from hal.gpio.button import build as build_button
from hal.gpio.contactor import GpioContactor
from hal.registry import HardwareConfigError
from service.config import Evse, Hardware

pytestmark = pytest.mark.vm

CONFIGFS = Path("/sys/kernel/config/gpio-sim")
NAMES = ["K1_DRIVE", "K1_FB", "ESTOP", "RCD", "LED_G", "LED_B", "LED_R", "SPARE"]
_counter = itertools.count()

Fault = tuple[str | None, str]


def _skip_reason() -> str | None:
    if os.geteuid() != 0 or not CONFIGFS.is_dir():
        chips = [p for p in Path("/dev").glob("gpiochip*") if gpiod.is_gpiochip_device(str(p))]
        found = ", ".join(map(str, chips)) or "no GPIO chip"
        return f"no gpio-sim here (root and configfs gpio-sim needed; {found}): run in the VM"
    return None


class SimChip:
    """A gpio-sim chip made through configfs, removed on close()."""

    def __init__(self, names: list[str]) -> None:
        self.root = CONFIGFS / f"evsed-test-{os.getpid()}-{next(_counter)}"
        self.root.mkdir()
        bank = self.root / "bank0"
        bank.mkdir()
        (bank / "num_lines").write_text(str(len(names)))
        self.label = self.root.name
        (bank / "label").write_text(self.label)
        for offset, name in enumerate(names):
            line = bank / f"line{offset}"
            line.mkdir()
            (line / "name").write_text(name)
        self.names = names
        self.plug()

    def plug(self) -> None:
        """Make the chip live; the kernel may give it another number than last time."""
        (self.root / "live").write_text("1")
        self.chip_name = (self.root / "bank0" / "chip_name").read_text().strip()
        self.dev_name = (self.root / "dev_name").read_text().strip()
        self.path = f"/dev/{self.chip_name}"
        deadline = time.monotonic() + 10
        while not (os.path.exists(self.path) and gpiod.is_gpiochip_device(self.path)):
            if time.monotonic() > deadline:
                self.close()
                pytest.skip(f"gpio-sim made {self.chip_name} but {self.path} is no GPIO chip")
            time.sleep(0.01)

    def unplug(self) -> None:
        """The chip goes away, with its lines still requested (as an expander that drops off)."""
        (self.root / "live").write_text("0")

    def _sysfs(self, line: str, attribute: str) -> Path:
        offset = self.names.index(line)
        base = Path("/sys/devices/platform") / self.dev_name / self.chip_name
        return base / f"sim_gpio{offset}" / attribute

    def value(self, line: str) -> bool:
        """The physical level of a line (what an output drives)."""
        return self._sysfs(line, "value").read_text().strip() == "1"

    def pull(self, line: str, high: bool) -> None:
        """Drive an input from outside: pull-up (high) or pull-down (low)."""
        self._sysfs(line, "pull").write_text("pull-up" if high else "pull-down")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            (self.root / "live").write_text("0")
        bank = self.root / "bank0"
        for offset in range(len(self.names)):
            with contextlib.suppress(OSError):
                (bank / f"line{offset}").rmdir()
        for directory in (bank, self.root):
            with contextlib.suppress(OSError):
                directory.rmdir()


class Wiring:
    """The physical contactor around the chip: the mirror contact follows the coil output.

    A task polls the drive output in sysfs and pulls the feedback input to match, unless the
    contactor is welded (stays closed) or stuck open (stays open).
    """

    def __init__(self, chip: SimChip, drive: str = "K1_DRIVE", feedback: str = "K1_FB") -> None:
        self.chip, self.drive, self.feedback = chip, drive, feedback
        self.welded = False
        self.stuck_open = False
        self.follow = True
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        contact: bool | None = None
        while True:
            if self.follow:
                closed = (self.chip.value(self.drive) and not self.stuck_open) or self.welded
                if closed != contact:
                    self.chip.pull(self.feedback, closed)
                    contact = closed
            else:
                contact = None
            await asyncio.sleep(0.005)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


@pytest.fixture
def sim_chip() -> Iterator[SimChip]:
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    chip = SimChip(NAMES)
    try:
        yield chip
    finally:
        chip.close()


def evse_with(**options: object) -> tuple[Evse, Hardware]:
    hardware = Hardware(backend="gpio", options=dict(options))  # type: ignore[arg-type]
    return Evse(id=1, contactor=hardware), hardware


@pytest.fixture
async def wired(sim_chip: SimChip) -> AsyncIterator[Wiring]:
    wiring = Wiring(sim_chip)
    yield wiring
    await wiring.close()


@pytest.fixture
async def contactor(
    sim_chip: SimChip, wired: Wiring, faults: list[Fault]
) -> AsyncIterator[GpioContactor]:
    evse, hardware = evse_with(
        chip=sim_chip.path, drive_line="K1_DRIVE", feedback_line="K1_FB", feedback_timeout_s=0.5
    )
    device = build_contactor(evse, hardware, {})  # default: GpiodLines, the kernel's lines
    device.on_fault(lambda code, info: faults.append((code, info)))
    await device.start()
    yield device
    await device.close()


@pytest.fixture
def faults() -> list[Fault]:
    return []


async def test_contactor_follows_commands_on_a_real_chip(
    contactor: GpioContactor, sim_chip: SimChip, faults: list[Fault]
) -> None:
    with gpiod.Chip(sim_chip.path) as chip:
        info = chip.get_line_info("K1_DRIVE")
        assert info.direction == Direction.OUTPUT and info.consumer == "evsed:evse1:contactor"
    contactor.set_closed(True)
    assert sim_chip.value("K1_DRIVE")
    await until(lambda: contactor.closed)
    contactor.set_closed(False)
    assert not sim_chip.value("K1_DRIVE")
    await until(lambda: not contactor.closed)
    await asyncio.sleep(1.0)  # longer than the feedback timeout
    assert faults == []


async def test_welded_contactor_on_a_real_chip(
    contactor: GpioContactor, wired: Wiring, faults: list[Fault]
) -> None:
    contactor.set_closed(True)
    await until(lambda: contactor.closed)
    wired.welded = True
    contactor.set_closed(False)
    await until(lambda: bool(faults))
    assert faults == [("PowerSwitchFailure", "welded")]
    assert contactor.closed
    wired.welded = False
    await until(lambda: len(faults) == 2)
    assert faults[1][0] is None and not contactor.closed


async def test_stuck_open_and_spontaneous_change_on_a_real_chip(
    contactor: GpioContactor, sim_chip: SimChip, wired: Wiring, faults: list[Fault]
) -> None:
    wired.stuck_open = True
    contactor.set_closed(True)
    await until(lambda: bool(faults))
    assert faults == [("PowerSwitchFailure", "stuck open")]
    contactor.set_closed(False)
    await until(lambda: len(faults) == 2)
    assert faults[1][0] is None

    wired.follow = False
    sim_chip.pull("K1_FB", True)  # the mirror contact closes with no command
    await until(lambda: len(faults) == 3)
    assert faults[2] == ("PowerSwitchFailure", "closed without command")
    sim_chip.pull("K1_FB", False)
    await until(lambda: len(faults) == 4)
    assert faults[3][0] is None


async def test_safety_inputs_on_a_real_chip(sim_chip: SimChip) -> None:
    sim_chip.pull("RCD", True)  # active low: high = not tripped
    evse, hardware = evse_with(
        chip=sim_chip.path, estop_line="ESTOP", rcd_line="RCD", rcd_active_low=True
    )
    safety: GpioSafetyInputs = build_safety(evse, hardware, {})
    await safety.start()
    seen: list[tuple[bool, bool]] = []
    safety.on_change(lambda: seen.append((safety.emergency_stop, safety.rcd_tripped)))
    try:
        assert (safety.emergency_stop, safety.rcd_tripped) == (False, False)
        sim_chip.pull("ESTOP", True)
        await until(lambda: len(seen) == 1)
        assert seen == [(True, False)]
        sim_chip.pull("RCD", False)
        await until(lambda: len(seen) == 2)
        assert seen[1] == (True, True)
        sim_chip.pull("ESTOP", False)
        await until(lambda: len(seen) == 3)
        assert seen[2] == (False, True)
    finally:
        await safety.close()


async def test_leds_on_a_real_chip(sim_chip: SimChip) -> None:
    evse, hardware = evse_with(
        chip=sim_chip.chip_name,  # "gpiochipN" means /dev/gpiochipN
        green_line="LED_G",
        blue_line="LED_B",
        red_line="LED_R",
        blink_period_s=0.2,
    )
    leds: StatusLeds = build_leds(evse, hardware, {})
    await leds.start()
    try:
        leds.show("Charging")
        assert [sim_chip.value(n) for n in ("LED_G", "LED_B", "LED_R")] == [False, True, False]
        leds.show("Faulted")
        await until(lambda: not sim_chip.value("LED_R"))
        await until(lambda: sim_chip.value("LED_R"))
    finally:
        await leds.close()
    assert not sim_chip.value("LED_R")


async def test_missing_line_and_busy_line_on_a_real_chip(sim_chip: SimChip) -> None:
    evse, hardware = evse_with(chip=sim_chip.path, drive_line="K9", feedback_line="K1_FB")
    with pytest.raises(HardwareConfigError) as caught:
        build_contactor(evse, hardware, {})
    message = str(caught.value)
    assert message.startswith('EVSE 1: evse[1].contactor.options.drive_line: found "K9"')
    assert "K1_DRIVE" in message  # lists the chip's named lines

    evse, hardware = evse_with(chip=sim_chip.path, drive_line=0, feedback_line=len(NAMES))
    with pytest.raises(HardwareConfigError, match="out of range"):
        build_contactor(evse, hardware, {})

    other = gpiod.request_lines(sim_chip.path, {"K1_FB": None}, consumer="other-daemon")
    try:
        evse, hardware = evse_with(chip=sim_chip.path, drive_line=0, feedback_line="K1_FB")
        device = build_contactor(evse, hardware, {})
        with pytest.raises(HardwareConfigError) as caught:
            await device.start()
        assert "evse[1].contactor.options.feedback_line" in str(caught.value)
        assert "other-daemon" in str(caught.value)
        with gpiod.Chip(sim_chip.path) as chip:
            assert not chip.get_line_info("K1_DRIVE").used  # given back
    finally:
        other.release()


async def test_chip_that_goes_away_and_comes_back_under_another_number(
    sim_chip: SimChip, faults: list[Fault]
) -> None:
    lines = GpiodLines()
    device = GpioContactor(
        lines,
        LineRef(sim_chip.label, "K1_DRIVE"),  # by label: survives renumbering
        LineRef(sim_chip.label, "K1_FB"),
        check_interval_s=0.1,
        consumer="evsed-test",
    )
    device.on_fault(lambda code, info: faults.append((code, info)))
    await device.start()
    try:
        sim_chip.unplug()
        await until(lambda: bool(faults))  # noticed by the periodic read (6.1 sends no hang-up)
        assert faults[0][0] == "PowerSwitchFailure" and "GPIO error" in faults[0][1]
        device.set_closed(False)  # what the station does on the fault
        sim_chip.plug()  # often as another gpiochipN: the label still finds it
        await until(lambda: len(faults) == 2)
        assert faults[1][0] is None
        with gpiod.Chip(sim_chip.path) as chip:
            assert chip.get_line_info("K1_DRIVE").consumer == "evsed-test"
    finally:
        await device.close()


async def test_start_button_on_a_real_chip(sim_chip: SimChip) -> None:
    sim_chip.pull("SPARE", True)  # a button to ground with a pull-up: released
    hardware = Hardware(
        backend="gpio",
        options={"chip": sim_chip.path, "line": "SPARE", "active_low": True, "debounce_s": 0.02},
    )
    button = build_button(Evse(id=1, start_button=hardware), hardware, {})
    presses: list[float] = []
    button.on_press(lambda: presses.append(time.monotonic()))
    await button.start()
    try:
        with gpiod.Chip(sim_chip.path) as chip:
            assert chip.get_line_info("SPARE").consumer == "evsed:evse1:start_button"
        assert not button.pressed
        sim_chip.pull("SPARE", False)  # pressed
        await until(lambda: len(presses) == 1)
        await asyncio.sleep(0.3)  # held: no repeat
        assert len(presses) == 1
        sim_chip.pull("SPARE", True)
        await until(lambda: not button.pressed)
        sim_chip.pull("SPARE", False)
        await until(lambda: len(presses) == 2)
        sim_chip.pull("SPARE", True)
        await until(lambda: not button.pressed)
        assert len(presses) == 2
    finally:
        await button.close()
    with gpiod.Chip(sim_chip.path) as chip:
        assert not chip.get_line_info("SPARE").used


def test_missing_chip_is_a_configuration_error() -> None:
    evse, hardware = evse_with(chip="/dev/gpiochip250", drive_line=0, feedback_line=1)
    with pytest.raises(HardwareConfigError, match=r"options\.chip: found \"/dev/gpiochip250\""):
        build_contactor(evse, hardware, {})
