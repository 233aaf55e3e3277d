"""The [evse.start_button] table: default, backends, refusals in the configuration and when the
daemon builds the hardware (hal.registry), and the daemon's exit status 78 on a bad one."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from hal.gpio import LINES_KEY, MemoryLines
from hal.gpio.button import GpioStartButton
from hal.registry import HardwareConfigError, build_evse_hardware
from service.config import EX_CONFIG, ConfigError, Evse, Hardware, load_settings
from tests.hal.test_registry import fixed_drivers  # noqa: F401  (a fixture)

BASE = """
[identity]
charge_point_id = "CP-1"
vendor = "Vendor"
model = "Model"

[csms]
url = "ws://127.0.0.1:9000/ocpp"
"""
REPO = Path(__file__).resolve().parents[2]
SIM = Hardware(backend="sim")
FIXED = Hardware(backend="fixed")


def config(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "evsed.toml"
    path.write_text(BASE + extra, encoding="utf-8")
    return path


def refused(tmp_path: Path, extra: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(config(tmp_path, extra))
    return info.value


def test_no_start_button_by_default(tmp_path: Path) -> None:
    [evse] = load_settings(config(tmp_path, "[[evse]]\n")).evses
    assert evse.start_button == Hardware(backend="none")
    hardware, sim = build_evse_hardware(evse)
    assert hardware.start_button is None
    assert sim is not None and sim.start_button is None


def test_gpio_start_button_table(tmp_path: Path) -> None:
    [evse] = load_settings(
        config(
            tmp_path,
            """
[[evse]]
[evse.start_button]
backend = "gpio"
[evse.start_button.options]
chip = "gpiochip0"
line = "START"
active_low = true
debounce_s = 0.1
""",
        )
    ).evses
    assert evse.start_button == Hardware(
        backend="gpio",
        options={"chip": "gpiochip0", "line": "START", "active_low": True, "debounce_s": 0.1},
    )


def test_simulated_start_button(tmp_path: Path) -> None:
    [evse] = load_settings(
        config(tmp_path, '[[evse]]\n[evse.start_button]\nbackend = "sim"\n')
    ).evses
    hardware, sim = build_evse_hardware(evse)
    assert sim is not None and hardware.start_button is sim.start_button is not None


@pytest.mark.parametrize(
    ("extra", "key", "found"),
    [
        ('[evse.start_button]\nbackend = "rpi"\n', "evse[1].start_button.backend", '"rpi"'),
        ("[evse.start_button]\nbackend = 1\n", "evse[1].start_button.backend", "1"),
        ('[evse.start_button]\npin = "GPIO17"\n', "evse[1].start_button.pin", "unknown key"),
        ('start_buton = { backend = "gpio" }\n', "evse[1].start_buton", "unknown key"),
    ],
)
def test_bad_table_is_refused(tmp_path: Path, extra: str, key: str, found: str) -> None:
    err = refused(tmp_path, "[[evse]]\n" + extra)
    assert err.key == key, str(err)
    assert found in err.found, str(err)
    if key.endswith(".backend"):
        assert all(name in err.expected for name in ("none", "sim", "gpio")), str(err)


def test_a_real_button_on_a_simulated_evse_is_refused() -> None:
    evse = Evse(id=2, start_button=Hardware(backend="gpio", options={"chip": "x", "line": 1}))
    with pytest.raises(HardwareConfigError, match="EVSE 2: a simulated EVSE takes no real"):
        build_evse_hardware(evse)


def test_options_of_the_simulated_button_are_refused() -> None:
    evse = Evse(id=2, start_button=Hardware(backend="sim", options={"line": 3}))
    with pytest.raises(HardwareConfigError) as caught:
        build_evse_hardware(evse)
    assert str(caught.value).startswith(
        "EVSE 2: evse[2].start_button.options.line: unknown option of backend 'sim'"
    )


@pytest.mark.usefixtures("fixed_drivers")
def test_a_simulated_button_needs_a_simulated_evse() -> None:
    evse = Evse(
        id=3,
        meter=FIXED,
        pilot=FIXED,
        contactor=FIXED,
        token_reader=FIXED,
        start_button=SIM,
    )
    with pytest.raises(HardwareConfigError, match=r"evse\[3\]\.start_button\.backend: 'sim'"):
        build_evse_hardware(evse)


@pytest.mark.usefixtures("fixed_drivers")
def test_real_evse_with_a_gpio_button() -> None:
    lines = MemoryLines()
    lines.add_chip("/dev/gpiochip0", num_lines=4, names=["A", "START"])
    options = {"chip": "/dev/gpiochip0", "line": "START"}
    evse = Evse(
        id=1,
        meter=FIXED,
        pilot=FIXED,
        contactor=FIXED,
        token_reader=FIXED,
        start_button=Hardware(backend="gpio", options=options),  # type: ignore[arg-type]
    )
    hardware, sim = build_evse_hardware(evse, shared={LINES_KEY: lines})
    assert sim is None and isinstance(hardware.start_button, GpioStartButton)
    # An unknown option is refused when the daemon builds the hardware, naming the key.
    evse = Evse(
        id=1,
        meter=FIXED,
        pilot=FIXED,
        contactor=FIXED,
        token_reader=FIXED,
        start_button=Hardware(backend="gpio", options={**options, "pull_up": True}),
    )
    with pytest.raises(HardwareConfigError) as caught:
        build_evse_hardware(evse, shared={LINES_KEY: MemoryLines()})
    message = str(caught.value)
    assert message.startswith("EVSE 1: evse[1].start_button.options.pull_up: unknown option")
    assert "expected one of chip, line, active_low, debounce_s" in message


async def test_daemon_exits_78_on_a_bad_start_button(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        f"""
[paths]
state_directory = "{tmp_path / "state"}"
[[evse]]
[evse.start_button]
backend = "sim"
[evse.start_button.options]
line = 3
""",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service.main",
        "--config",
        str(path),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        _, err = await process.communicate()
    assert process.returncode == EX_CONFIG
    assert "evse[1].start_button.options.line: unknown option" in err.decode()
