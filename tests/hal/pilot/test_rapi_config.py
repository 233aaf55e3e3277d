"""Tests of the RAPI driver's configuration: options checked with the EVSE and key named, one
link shared by the pilot and the contactor of an MCU."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hal.pilot.rapi import build, build_contactor, build_pilot
from hal.registry import HardwareConfigError
from service.config import Evse, Hardware
from service.config_reader import Scalar


@pytest.fixture
def mcu_path(tmp_path: Path) -> Iterator[str]:
    """A serial port that exists (a pty nobody answers on)."""
    master, slave = os.openpty()
    path = tmp_path / "tty"
    path.symlink_to(os.ttyname(slave))
    yield str(path)
    os.close(master)
    os.close(slave)


def test_build_shares_one_link(mcu_path: str) -> None:
    evse = Evse(
        id=1,
        pilot=Hardware("rapi", {"port": mcu_path, "poll_interval_s": 0.5, "timeout_s": 2}),
        contactor=Hardware("rapi", {"port": mcu_path}),
    )
    shared: dict[str, object] = {}
    pilot = build_pilot(evse, evse.pilot, shared)
    contactor = build_contactor(evse, evse.contactor, shared)
    assert pilot.link is contactor.link
    assert build(evse, evse.pilot, shared) is pilot
    assert list(shared) == ["rapi:" + os.path.realpath(mcu_path)]
    link = pilot.link
    assert (link.baudrate, link.poll_interval_s, link.timeout_s) == (115200, 0.5, 2.0)


def test_defaults(mcu_path: str) -> None:
    evse = Evse(id=3, pilot=Hardware("rapi", {"port": mcu_path}))
    link = build_pilot(evse, evse.pilot, {}).link
    assert (link.baudrate, link.poll_interval_s, link.timeout_s) == (115200, 1.0, 3.0)
    assert link.lock_enabled


@pytest.mark.parametrize(
    ("options", "key", "message"),
    [
        ({}, "port", "missing"),
        ({"port": ""}, "port", "expected a device path"),
        ({"port": 5}, "port", "expected a device path"),
        ({"port": "/dev/does-not-exist"}, "port", "does not exist"),
        ({"speed": 9600}, "speed", "unknown option"),
        ({"baudrate": "fast"}, "baudrate", "expected an integer"),
        ({"baudrate": True}, "baudrate", "expected an integer"),
        ({"baudrate": 0}, "baudrate", "expected an integer"),
        ({"poll_interval_s": -1}, "poll_interval_s", "expected seconds"),
        ({"poll_interval_s": "1"}, "poll_interval_s", "expected seconds"),
        ({"timeout_s": float("nan")}, "timeout_s", "expected seconds"),
        ({"timeout_s": 0.5, "poll_interval_s": 1}, "timeout_s", "not longer than"),
        ({"poll_interval_s": 3}, "poll_interval_s", "not longer than"),
        ({"lock": "yes"}, "lock", "expected true or false"),
    ],
)
def test_bad_options(mcu_path: str, options: dict[str, Scalar], key: str, message: str) -> None:
    if "port" not in options and key != "port":
        options = {"port": mcu_path, **options}
    evse = Evse(id=7, pilot=Hardware("rapi", options))
    with pytest.raises(HardwareConfigError) as error:
        build_pilot(evse, evse.pilot, {})
    text = str(error.value)
    assert text.startswith(f"EVSE 7: evse[7].pilot.options.{key}: ")
    assert message in text


def test_contactor_takes_no_lock_option(mcu_path: str) -> None:
    evse = Evse(id=2, contactor=Hardware("rapi", {"port": mcu_path, "lock": False}))
    with pytest.raises(HardwareConfigError, match=r"evse\[2\]\.contactor\.options\.lock"):
        build_contactor(evse, evse.contactor, {})


def test_devices_on_one_port_must_agree(mcu_path: str) -> None:
    evse = Evse(
        id=1,
        pilot=Hardware("rapi", {"port": mcu_path, "baudrate": 9600}),
        contactor=Hardware("rapi", {"port": mcu_path, "baudrate": 57600}),
    )
    shared: dict[str, object] = {}
    build_pilot(evse, evse.pilot, shared)
    with pytest.raises(HardwareConfigError, match="baudrate: found 57600"):
        build_contactor(evse, evse.contactor, shared)


def test_options_set_on_either_device(mcu_path: str) -> None:
    """The contactor may come first and the pilot set what it left out (or the reverse)."""
    evse = Evse(
        id=1,
        pilot=Hardware("rapi", {"port": mcu_path, "poll_interval_s": 0.2, "timeout_s": 1}),
        contactor=Hardware("rapi", {"port": mcu_path, "baudrate": 9600}),
    )
    shared: dict[str, object] = {}
    link = build_contactor(evse, evse.contactor, shared).link
    assert build_pilot(evse, evse.pilot, shared).link is link
    assert (link.baudrate, link.poll_interval_s, link.timeout_s) == (9600, 0.2, 1.0)


def test_combined_options_checked(mcu_path: str) -> None:
    evse = Evse(
        id=1,
        pilot=Hardware("rapi", {"port": mcu_path, "timeout_s": 2}),
        contactor=Hardware("rapi", {"port": mcu_path, "poll_interval_s": 5}),
    )
    shared: dict[str, object] = {}
    build_pilot(evse, evse.pilot, shared)
    with pytest.raises(HardwareConfigError, match=r"contactor\.options\.poll_interval_s: "):
        build_contactor(evse, evse.contactor, shared)


def test_one_mcu_per_evse(mcu_path: str) -> None:
    shared: dict[str, object] = {}
    first = Evse(id=1, pilot=Hardware("rapi", {"port": mcu_path}))
    second = Evse(id=2, contactor=Hardware("rapi", {"port": mcu_path}))
    build_pilot(first, first.pilot, shared)
    with pytest.raises(HardwareConfigError, match="RAPI MCU of EVSE 1"):
        build_contactor(second, second.contactor, shared)
