"""Tests of hal.gpio on MemoryLines: contactor supervision, safety inputs, LEDs, build options.

MemoryLines stands in for the kernel's GPIO lines (levels, busy lines, edge events on an fd);
everything above it is the real driver code. The contactor's coil and mirror contact are modelled
by `WiredContactor`, wired to the chip's output the way the real part is wired to the board.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from hal.gpio import (
    LINES_KEY,
    GpioContactor,
    GpioSafetyInputs,
    LineRef,
    MemoryLines,
    StatusLeds,
    build_contactor,
    build_leds,
    build_safety,
)
from hal.gpio.lines import InputWatch, LineBusyError, LineNotFoundError, MemoryChip
from hal.interfaces import Contactor, SafetyInputs
from hal.registry import HardwareConfigError
from service.config import Evse, Hardware

CHIP = "/dev/gpiochip0"
NAMES = ["K1_DRIVE", "K1_FB", "ESTOP", "RCD", "LED_G", "LED_B", "LED_R", "K2_DRIVE", "K2_FB"]
TIMEOUT_S = 0.05  # feedback timeout used by the tests (the default is 0.2 s)

Fault = tuple[str | None, str]


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait on the loop until `condition()` holds; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


async def settle(seconds: float = 4 * TIMEOUT_S) -> None:
    """Give timers (feedback timeout, debounce) more than enough time to fire."""
    await asyncio.sleep(seconds)


class WiredContactor:
    """The physical contactor: its mirror contact follows the coil unless welded or stuck.

    The contact follows on the next loop iteration, as a real contact follows after a few ms.
    """

    def __init__(
        self,
        chip: MemoryChip,
        drive: str = "K1_DRIVE",
        feedback: str = "K1_FB",
        *,
        drive_active_low: bool = False,
        feedback_active_low: bool = False,
    ) -> None:
        self.chip = chip
        self.drive_offset = chip.offset(drive)
        self.feedback = feedback
        self.drive_active_low = drive_active_low
        self.feedback_active_low = feedback_active_low
        self.welded = False
        self.stuck_open = False
        self.contacts_closed = False
        chip.on_output(self._output)

    def _output(self, offset: int, level: bool) -> None:
        if offset == self.drive_offset:
            asyncio.get_running_loop().call_soon(self.update)

    def update(self) -> None:
        energized = self.chip.level(self.drive_offset) != self.drive_active_low
        closed = (energized and not self.stuck_open) or self.welded
        self.contacts_closed = closed
        self.chip.drive(self.feedback, closed != self.feedback_active_low)


@pytest.fixture
def lines() -> MemoryLines:
    memory = MemoryLines()
    memory.add_chip(CHIP, num_lines=len(NAMES) + 1, names=NAMES)
    return memory


@pytest.fixture
def chip(lines: MemoryLines) -> MemoryChip:
    return lines.chip(CHIP)


@pytest.fixture
def wired(chip: MemoryChip) -> WiredContactor:
    return WiredContactor(chip)


@pytest.fixture
def faults() -> list[Fault]:
    return []


@pytest.fixture
async def contactor(
    lines: MemoryLines, wired: WiredContactor, faults: list[Fault]
) -> AsyncIterator[GpioContactor]:
    device = GpioContactor(
        lines,
        LineRef(CHIP, "K1_DRIVE"),
        LineRef(CHIP, "K1_FB"),
        feedback_timeout_s=TIMEOUT_S,
        check_interval_s=0.01,
    )
    device.on_fault(lambda code, info: faults.append((code, info)))
    await device.start()
    yield device
    await device.close()


# --------------------------------------------------------------------------- contactor


async def test_contactor_closes_and_opens_with_feedback(
    contactor: GpioContactor, chip: MemoryChip, wired: WiredContactor, faults: list[Fault]
) -> None:
    device: Contactor = contactor
    assert not device.closed
    device.set_closed(True)
    assert chip.level("K1_DRIVE") is True
    await until(lambda: device.closed)
    await settle()
    device.set_closed(False)
    assert chip.level("K1_DRIVE") is False
    await until(lambda: not device.closed)
    await settle()
    assert faults == []
    assert chip.consumer("K1_DRIVE") == chip.consumer("K1_FB") == "evsed"


async def test_welded_contactor_is_reported_and_cleared_when_it_opens(
    contactor: GpioContactor, wired: WiredContactor, faults: list[Fault]
) -> None:
    contactor.set_closed(True)
    await until(lambda: contactor.closed)
    wired.welded = True
    contactor.set_closed(False)
    await until(lambda: bool(faults))
    assert faults == [("PowerSwitchFailure", "welded")]
    assert contactor.closed  # the mirror contact still says closed
    await settle()
    assert len(faults) == 1  # reported once, not repeatedly

    wired.welded = False
    wired.update()
    await until(lambda: len(faults) == 2)
    assert faults[1][0] is None
    assert not contactor.closed
    assert contactor.fault is None


async def test_stuck_open_contactor_is_reported_and_cleared(
    contactor: GpioContactor, wired: WiredContactor, faults: list[Fault]
) -> None:
    wired.stuck_open = True
    contactor.set_closed(True)
    await until(lambda: bool(faults))
    assert faults == [("PowerSwitchFailure", "stuck open")]
    assert not contactor.closed
    contactor.set_closed(False)  # the feedback agrees with this command again
    await until(lambda: len(faults) == 2)
    assert faults[1][0] is None


async def test_late_feedback_after_the_timeout_clears_the_fault(
    contactor: GpioContactor, wired: WiredContactor, faults: list[Fault]
) -> None:
    wired.stuck_open = True
    contactor.set_closed(True)
    await until(lambda: bool(faults))
    wired.stuck_open = False
    wired.update()
    await until(lambda: len(faults) == 2)
    assert faults == [("PowerSwitchFailure", "stuck open"), (None, faults[1][1])]
    assert contactor.closed


async def test_feedback_change_without_a_command_is_a_fault(
    contactor: GpioContactor, chip: MemoryChip, wired: WiredContactor, faults: list[Fault]
) -> None:
    chip.drive("K1_FB", True)  # the contact closes by itself
    await until(lambda: bool(faults))
    assert faults == [("PowerSwitchFailure", "closed without command")]
    assert contactor.closed
    chip.drive("K1_FB", False)
    await until(lambda: len(faults) == 2)
    assert faults[1][0] is None

    contactor.set_closed(True)
    await until(lambda: contactor.closed)
    await settle()
    chip.drive("K1_FB", False)  # drops out while commanded closed
    await until(lambda: len(faults) == 3)
    assert faults[2] == ("PowerSwitchFailure", "opened without command")


async def test_feedback_already_closed_at_start_is_welded(
    lines: MemoryLines, chip: MemoryChip, faults: list[Fault]
) -> None:
    chip.drive("K1_FB", True)  # welded since before the daemon started
    device = GpioContactor(lines, LineRef(CHIP, 0), LineRef(CHIP, 1), feedback_timeout_s=TIMEOUT_S)
    device.on_fault(lambda code, info: faults.append((code, info)))
    await device.start()
    try:
        await until(lambda: bool(faults))
        assert faults == [("PowerSwitchFailure", "welded")]
    finally:
        await device.close()


async def test_active_low_drive_and_feedback(
    lines: MemoryLines, chip: MemoryChip, faults: list[Fault]
) -> None:
    chip.drive("K1_FB", True)  # active-low feedback: high = open
    wired = WiredContactor(chip, drive_active_low=True, feedback_active_low=True)
    device = GpioContactor(
        lines,
        LineRef(CHIP, "K1_DRIVE", active_low=True),
        LineRef(CHIP, "K1_FB", active_low=True),
        feedback_timeout_s=TIMEOUT_S,
    )
    device.on_fault(lambda code, info: faults.append((code, info)))
    await device.start()
    try:
        assert chip.level("K1_DRIVE") is True  # open = high on an active-low coil driver
        assert not device.closed
        device.set_closed(True)
        assert chip.level("K1_DRIVE") is False
        await until(lambda: device.closed)
        assert wired.contacts_closed
        assert chip.level("K1_FB") is False
        device.set_closed(False)
        await until(lambda: not device.closed)
        await settle()
        assert faults == []
    finally:
        await device.close()


async def test_fault_callbacks_are_not_called_from_inside_set_closed(
    contactor: GpioContactor, chip: MemoryChip, faults: list[Fault]
) -> None:
    chip.remove()
    contactor.set_closed(True)
    assert faults == []  # scheduled, not called re-entrantly
    await asyncio.sleep(0)
    assert faults and faults[0][0] == "PowerSwitchFailure"
    assert faults[0][1].startswith("GPIO error")


async def test_chip_that_disappears_and_comes_back(
    contactor: GpioContactor, chip: MemoryChip, wired: WiredContactor, faults: list[Fault]
) -> None:
    contactor.set_closed(True)
    await until(lambda: contactor.closed)
    chip.remove()  # the feedback request's fd reports the dead device
    await until(lambda: bool(faults))
    assert faults[0][0] == "PowerSwitchFailure"
    assert "GPIO error" in faults[0][1]
    contactor.set_closed(False)  # the station opens on the fault; remembered for later
    await settle()
    assert len(faults) == 1  # retries keep failing quietly

    chip.restore()
    await until(lambda: len(faults) == 2)
    assert faults[1][0] is None
    assert chip.level("K1_DRIVE") is False  # the last command was driven on reopening
    assert chip.consumer("K1_DRIVE") == "evsed"
    contactor.set_closed(True)
    await until(lambda: contactor.closed)
    await settle()
    assert len(faults) == 2


async def test_two_contactors_for_two_dc_poles(
    lines: MemoryLines, chip: MemoryChip, faults: list[Fault]
) -> None:
    plus = WiredContactor(chip, "K1_DRIVE", "K1_FB")
    minus = WiredContactor(chip, "K2_DRIVE", "K2_FB")
    poles = [
        GpioContactor(
            lines,
            LineRef(CHIP, f"{k}_DRIVE"),
            LineRef(CHIP, f"{k}_FB"),
            feedback_timeout_s=TIMEOUT_S,
        )
        for k in ("K1", "K2")
    ]
    for pole in poles:
        pole.on_fault(lambda code, info: faults.append((code, info)))
        await pole.start()
    try:
        minus.welded = True
        for pole in poles:
            pole.set_closed(True)
        await until(lambda: all(p.closed for p in poles))
        for pole in poles:
            pole.set_closed(False)
        await until(lambda: bool(faults))
        await settle()
        assert faults == [("PowerSwitchFailure", "welded")]
        assert not poles[0].closed and poles[1].closed
        assert not plus.contacts_closed
    finally:
        for pole in poles:
            await pole.close()


async def test_set_closed_before_start_is_refused(lines: MemoryLines) -> None:
    device = GpioContactor(lines, LineRef(CHIP, 0), LineRef(CHIP, 1))
    with pytest.raises(RuntimeError):
        device.set_closed(True)


async def test_close_opens_the_contactor_and_frees_the_lines(
    contactor: GpioContactor, chip: MemoryChip, wired: WiredContactor
) -> None:
    contactor.set_closed(True)
    await until(lambda: contactor.closed)
    await contactor.close()
    assert chip.level("K1_DRIVE") is False
    assert chip.consumer("K1_DRIVE") is None and chip.consumer("K1_FB") is None


# --------------------------------------------------------------------------- safety inputs


@pytest.fixture
async def safety(lines: MemoryLines) -> AsyncIterator[GpioSafetyInputs]:
    device = GpioSafetyInputs(
        lines,
        estop=LineRef(CHIP, "ESTOP"),
        rcd=LineRef(CHIP, "RCD", active_low=True),
        debounce_s=0.03,
        check_interval_s=0.01,
    )
    await device.start()
    yield device
    await device.close()


async def test_safety_inputs_read_at_start(lines: MemoryLines, chip: MemoryChip) -> None:
    chip.drive("ESTOP", True)
    chip.drive("RCD", True)  # active low: high = not tripped
    device = GpioSafetyInputs(
        lines, estop=LineRef(CHIP, "ESTOP"), rcd=LineRef(CHIP, "RCD", active_low=True)
    )
    await device.start()
    try:
        inputs: SafetyInputs = device
        assert inputs.emergency_stop is True
        assert inputs.rcd_tripped is False
    finally:
        await device.close()


async def test_safety_inputs_report_changes(safety: GpioSafetyInputs, chip: MemoryChip) -> None:
    chip.drive("RCD", True)  # not tripped (active low)
    await until(lambda: not safety.rcd_tripped)
    seen: list[tuple[bool, bool]] = []
    safety.on_change(lambda: seen.append((safety.emergency_stop, safety.rcd_tripped)))

    chip.drive("ESTOP", True)
    await until(lambda: len(seen) == 1)
    assert seen == [(True, False)]
    chip.drive("RCD", False)
    await until(lambda: len(seen) == 2)
    assert seen[1] == (True, True)
    chip.drive("ESTOP", False)
    chip.drive("RCD", True)
    await until(lambda: len(seen) == 4)
    assert seen[-1] == (False, False)


async def test_safety_inputs_debounce_bounces(safety: GpioSafetyInputs, chip: MemoryChip) -> None:
    await until(lambda: safety.rcd_tripped)  # RCD line low = tripped at start (active low)
    chip.drive("RCD", True)
    await until(lambda: not safety.rcd_tripped)
    seen: list[bool] = []
    safety.on_change(lambda: seen.append(safety.emergency_stop))

    # A bounce: high, low, high, low within the debounce time ends low: no change at all.
    for level in (True, False, True, False):
        chip.drive("ESTOP", level)
        await asyncio.sleep(0.001)
    await settle(0.15)
    assert seen == []
    assert not safety.emergency_stop

    # Bouncing that ends high counts once, after it holds still.
    for level in (True, False, True):
        chip.drive("ESTOP", level)
        await asyncio.sleep(0.001)
    await until(lambda: bool(seen))
    await settle(0.15)
    assert seen == [True]


async def test_safety_input_that_cannot_be_read_counts_as_active(
    safety: GpioSafetyInputs, chip: MemoryChip
) -> None:
    chip.drive("RCD", True)
    await until(lambda: not safety.rcd_tripped and not safety.emergency_stop)
    chip.remove(hang_up=True)  # the request fds wake up and fail
    await until(lambda: safety.emergency_stop and safety.rcd_tripped)
    chip.restore()
    await until(lambda: not safety.emergency_stop and not safety.rcd_tripped)
    assert chip.consumer("ESTOP") == "evsed"


async def test_a_lost_edge_event_is_caught_by_the_periodic_read(
    safety: GpioSafetyInputs, chip: MemoryChip
) -> None:
    chip.drive("ESTOP", True, event=False)
    await until(lambda: safety.emergency_stop)


async def test_safety_with_only_an_emergency_stop(lines: MemoryLines, chip: MemoryChip) -> None:
    device = GpioSafetyInputs(lines, estop=LineRef(CHIP, 2), debounce_s=0)
    await device.start()
    try:
        chip.drive("ESTOP", True)
        await until(lambda: device.emergency_stop)
        assert device.rcd_tripped is False
    finally:
        await device.close()


# --------------------------------------------------------------------------- LEDs


@pytest.fixture
async def leds(lines: MemoryLines) -> AsyncIterator[StatusLeds]:
    device = StatusLeds(
        lines,
        green=LineRef(CHIP, "LED_G"),
        blue=LineRef(CHIP, "LED_B"),
        red=LineRef(CHIP, "LED_R"),
        blink_period_s=0.04,
    )
    await device.start()
    yield device
    await device.close()


def lit(chip: MemoryChip) -> set[str]:
    return {
        c for c, n in (("green", "LED_G"), ("blue", "LED_B"), ("red", "LED_R")) if chip.level(n)
    }


@pytest.mark.parametrize(
    ("status", "colours"),
    [
        ("Available", {"green"}),
        ("Preparing", {"green", "blue"}),
        ("Charging", {"blue"}),
        ("SuspendedEV", {"blue", "red"}),
        ("SuspendedEVSE", {"blue", "red"}),
        ("Finishing", {"green", "blue"}),
        ("Reserved", {"green", "red"}),
        ("Unavailable", {"red"}),
        ("Occupied", {"blue"}),
    ],
)
async def test_leds_per_status(
    leds: StatusLeds, chip: MemoryChip, status: str, colours: set[str]
) -> None:
    leds.show(status)
    assert lit(chip) == colours
    await settle(0.1)
    assert lit(chip) == colours  # steady


async def test_faulted_blinks_red_and_the_next_status_stops_it(
    leds: StatusLeds, chip: MemoryChip
) -> None:
    leds.show("Faulted")
    assert lit(chip) == {"red"}
    await until(lambda: lit(chip) == set())
    await until(lambda: lit(chip) == {"red"})
    leds.show("Available")
    assert lit(chip) == {"green"}
    await settle(0.1)
    assert lit(chip) == {"green"}


async def test_leds_active_low_and_unknown_status(lines: MemoryLines, chip: MemoryChip) -> None:
    device = StatusLeds(lines, green=LineRef(CHIP, "LED_G", active_low=True))
    await device.start()
    try:
        assert chip.level("LED_G") is True  # off
        device.show("Available")
        assert chip.level("LED_G") is False  # on
        assert device.lit() == frozenset({"green"})
        with pytest.raises(ValueError, match="Bogus"):
            device.show("Bogus")
    finally:
        await device.close()
    assert chip.level("LED_G") is True


# --------------------------------------------------------------------------- InputWatch


async def test_input_watch_reports_each_settled_change(
    lines: MemoryLines, chip: MemoryChip
) -> None:
    line = lines.request_input(CHIP, "ESTOP")
    seen: list[bool] = []
    errors: list[OSError] = []
    watch = InputWatch(line, debounce_s=0, on_change=seen.append, on_error=errors.append)
    try:
        chip.drive("ESTOP", True)
        await until(lambda: seen == [True])
        chip.drive("ESTOP", False)
        await until(lambda: seen == [True, False])
        assert errors == []
    finally:
        watch.close()
        line.release()


# --------------------------------------------------------------------------- build / options


def evse_with(kind: str, **options: object) -> tuple[Evse, Hardware]:
    hardware = Hardware(backend="gpio", options=dict(options))  # type: ignore[arg-type]
    if kind == "contactor":
        return Evse(id=2, contactor=hardware), hardware
    return Evse(id=2), hardware


@pytest.fixture
def shared(lines: MemoryLines) -> dict[str, object]:
    return {LINES_KEY: lines}


async def test_build_contactor_by_name_and_offset(
    shared: dict[str, object], chip: MemoryChip, faults: list[Fault]
) -> None:
    WiredContactor(chip)
    evse, hardware = evse_with(
        "contactor",
        chip="gpiochip0",
        drive_line="K1_DRIVE",
        feedback_line=1,
        feedback_timeout_s=0.05,
    )
    device = build_contactor(evse, hardware, shared)
    device.on_fault(lambda code, info: faults.append((code, info)))
    await device.start()
    try:
        assert chip.consumer("K1_DRIVE") == "evsed:evse2:contactor"
        device.set_closed(True)
        await until(lambda: device.closed)
        assert faults == []
    finally:
        await device.close()


async def test_build_safety_and_leds(shared: dict[str, object], chip: MemoryChip) -> None:
    evse, hardware = evse_with(
        "safety", chip=CHIP, estop_line="ESTOP", rcd_line=3, rcd_active_low=True, debounce_s=0
    )
    safety = build_safety(evse, hardware, shared)
    evse, hardware = evse_with("leds", chip=CHIP, red_line="LED_R", blink_period_s=0.5)
    leds = build_leds(evse, hardware, shared)
    await safety.start()
    await leds.start()
    try:
        assert safety.rcd_tripped  # RCD low, active low
        chip.drive("RCD", True)
        await until(lambda: not safety.rcd_tripped)
        leds.show("Unavailable")
        assert chip.level("LED_R") is True
    finally:
        await safety.close()
        await leds.close()


@pytest.mark.parametrize(
    ("options", "key", "found"),
    [
        ({"chip": CHIP, "drive_line": 0}, "feedback_line", "missing"),
        ({"drive_line": 0, "feedback_line": 1}, "chip", "missing"),
        ({"chip": CHIP, "drive_line": 0, "feedback_line": 1, "pin": 3}, "pin", "unknown option"),
        ({"chip": CHIP, "drive_line": -1, "feedback_line": 1}, "drive_line", "found -1"),
        ({"chip": CHIP, "drive_line": True, "feedback_line": 1}, "drive_line", "found true"),
        ({"chip": CHIP, "drive_line": 0.5, "feedback_line": 1}, "drive_line", "found 0.5"),
        ({"chip": CHIP, "drive_line": "", "feedback_line": 1}, "drive_line", 'found ""'),
        ({"chip": 0, "drive_line": 0, "feedback_line": 1}, "chip", "found 0"),
        (
            {"chip": CHIP, "drive_line": 0, "feedback_line": 1, "active_low": "yes"},
            "active_low",
            'found "yes"',
        ),
        (
            {"chip": CHIP, "drive_line": 0, "feedback_line": 1, "feedback_timeout_s": 0},
            "feedback_timeout_s",
            "found 0",
        ),
        (
            {"chip": CHIP, "drive_line": 0, "feedback_line": 1, "feedback_timeout_s": 60},
            "feedback_timeout_s",
            "found 60",
        ),
        (
            {"chip": "/dev/gpiochip7", "drive_line": 0, "feedback_line": 1},
            "chip",
            'found "/dev/gpiochip7": no GPIO chip at /dev/gpiochip7',
        ),
        (
            {"chip": CHIP, "drive_line": "NOPE", "feedback_line": 1},
            "drive_line",
            "found \"NOPE\": no line named 'NOPE' on /dev/gpiochip0",
        ),
        (
            {"chip": CHIP, "drive_line": 0, "feedback_line": 99},
            "feedback_line",
            "found 99: line 99 is out of range",
        ),
        (
            {"chip": CHIP, "drive_line": 0, "feedback_line": "K1_DRIVE"},
            "feedback_line",
            "line 0 of /dev/gpiochip0 is already used by EVSE 2: "
            "evse[2].contactor.options.drive_line",
        ),
    ],
)
def test_bad_contactor_options(
    shared: dict[str, object], options: dict[str, object], key: str, found: str
) -> None:
    evse, hardware = evse_with("contactor", **options)
    with pytest.raises(HardwareConfigError) as caught:
        build_contactor(evse, hardware, shared)
    message = str(caught.value)
    assert message.startswith(f"EVSE 2: evse[2].contactor.options.{key}: "), message
    assert found in message, message


@pytest.mark.parametrize(
    ("options", "key", "found"),
    [
        ({"chip": CHIP}, "estop_line", "missing"),
        ({"chip": CHIP, "estop_line": 2, "debounce_s": -1}, "debounce_s", "found -1"),
        ({"chip": CHIP, "estop_line": 2, "estop_active_low": 1}, "estop_active_low", "found 1"),
        ({"chip": CHIP, "rcd_line": "RCD_X"}, "rcd_line", "no line named 'RCD_X'"),
    ],
)
def test_bad_safety_options(
    shared: dict[str, object], options: dict[str, object], key: str, found: str
) -> None:
    evse, hardware = evse_with("safety", **options)
    with pytest.raises(HardwareConfigError) as caught:
        build_safety(evse, hardware, shared)
    message = str(caught.value)
    assert message.startswith(f"EVSE 2: evse[2].safety.options.{key}: "), message
    assert found in message, message


def test_bad_led_options(shared: dict[str, object]) -> None:
    evse, hardware = evse_with("leds", chip=CHIP)
    with pytest.raises(HardwareConfigError, match=r"evse\[2\]\.leds\.options\.green_line"):
        build_leds(evse, hardware, shared)
    evse, hardware = evse_with("leds", chip=CHIP, red_line=6, blink_period_s=0)
    with pytest.raises(HardwareConfigError, match=r"blink_period_s: found 0"):
        build_leds(evse, hardware, shared)


def test_two_devices_on_one_line_are_refused(shared: dict[str, object]) -> None:
    evse, hardware = evse_with("contactor", chip=CHIP, drive_line=0, feedback_line=1)
    build_contactor(evse, hardware, shared)
    evse, hardware = evse_with("safety", chip=CHIP, estop_line="K1_FB")
    with pytest.raises(HardwareConfigError) as caught:
        build_safety(evse, hardware, shared)
    assert "evse[2].safety.options.estop_line" in str(caught.value)
    assert "already used by EVSE 2: evse[2].contactor.options.feedback_line" in str(caught.value)


async def test_busy_line_at_start_is_a_configuration_error(
    lines: MemoryLines, shared: dict[str, object]
) -> None:
    other = lines.request_input(CHIP, "K1_FB", consumer="someone-else")
    evse, hardware = evse_with("contactor", chip=CHIP, drive_line=0, feedback_line=1)
    device = build_contactor(evse, hardware, shared)
    try:
        with pytest.raises(HardwareConfigError) as caught:
            await device.start()
        message = str(caught.value)
        assert message.startswith("EVSE 2: evse[2].contactor.options.feedback_line: found 1:")
        assert "busy" in message and "someone-else" in message
        assert lines.chip(CHIP).consumer("K1_DRIVE") is None  # the drive line was given back
    finally:
        other.release()


async def test_chip_by_label(lines: MemoryLines) -> None:
    chip = lines.add_chip("/dev/gpiochip3", num_lines=4, label="pinctrl-test")
    evse, hardware = evse_with("safety", chip="pinctrl-test", estop_line=1, debounce_s=0)
    device = build_safety(evse, hardware, {LINES_KEY: lines})
    await device.start()
    try:
        assert chip.consumer(1) == "evsed:evse2:safety"
        chip.drive(1, True)
        await until(lambda: device.emergency_stop)
    finally:
        await device.close()


def test_memory_lines_behave_like_the_kernel(lines: MemoryLines, chip: MemoryChip) -> None:
    assert lines.resolve(CHIP, "RCD") == 3
    assert lines.resolve(CHIP, "4") == 4  # digits that are no name are an offset
    with pytest.raises(LineNotFoundError):
        lines.resolve(CHIP, "NOPE")
    with pytest.raises(LineNotFoundError):
        lines.resolve("/dev/gpiochip9", 0)
    out = lines.request_output(CHIP, 0, active_low=True, value=True)
    assert chip.level(0) is False and out.get() is True
    with pytest.raises(LineBusyError):
        lines.request_input(CHIP, "K1_DRIVE")
    with pytest.raises(ValueError):
        chip.drive(0, True)  # an output cannot be driven from outside
    out.release()
    lines.request_input(CHIP, 0).release()


def test_default_lines_are_the_kernels(lines: MemoryLines) -> None:
    from hal.gpio import GpiodLines
    from hal.gpio.options import lines_from

    shared: dict[str, object] = {}
    assert isinstance(lines_from(shared), GpiodLines)
    assert lines_from(shared) is shared[LINES_KEY]
    evse, hardware = evse_with(
        "contactor", chip="/dev/gpiochip-evsed-test-none", drive_line=0, feedback_line=1
    )
    with pytest.raises(HardwareConfigError, match="no GPIO chip at /dev/gpiochip-evsed-test-none"):
        build_contactor(evse, hardware, shared)
