"""RaucInstaller against the real rauc 1.8 service on a private system-type D-Bus.

The slots are image files, the bootloader is RAUC's `custom` backend keeping its state in a JSON
file, and a reboot is a restart of the service with --override-boot-slot (rauc_fixtures.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.firmware.installer import InstallError
from service.firmware.rauc import RaucInstaller
from tests.certs import make_ca
from tests.service.firmware.rauc_fixtures import (
    COMPATIBLE,
    PrivateSystemBus,
    RaucSystem,
    make_signer,
    missing,
    tamper,
)

pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")

EMPTY_SLOT = b"\0" * 1024 * 1024


@pytest.fixture
def system_bus(tmp_path: Path) -> Iterator[str]:
    bus = PrivateSystemBus(tmp_path / "bus")
    address = bus.start()
    yield address
    bus.stop()


@pytest.fixture
def rauc_system(tmp_path: Path, system_bus: str) -> Iterator[RaucSystem]:
    system = RaucSystem(tmp_path / "rauc", system_bus)
    yield system
    system.stop()


@pytest.fixture
def rauc(rauc_system: RaucSystem) -> RaucSystem:
    """The RAUC service running, booted from slot A."""
    rauc_system.start("A")
    return rauc_system


@pytest.fixture
def installer(system_bus: str) -> RaucInstaller:
    return RaucInstaller(bus=system_bus, timeout_s=60, call_timeout_s=10, poll_interval_s=0.2)


class Progress:
    def __init__(self) -> None:
        self.reports: list[tuple[int, str]] = []

    def __call__(self, percent: int, message: str) -> None:
        self.reports.append((percent, message))


async def test_install_writes_the_inactive_slot(rauc: RaucSystem, installer: RaucInstaller) -> None:
    payload = os.urandom(300_000)
    bundle = rauc.build_bundle(payload, version="2.1.0")
    progress = Progress()

    result = await installer.install(bundle, progress)

    image_b = rauc.images["B"].read_bytes()
    assert image_b[: len(payload)] == payload
    assert rauc.images["A"].read_bytes() == EMPTY_SLOT
    assert result.reboot_required
    assert result.data == {
        "backend": "rauc",
        "bundle": str(bundle),
        "previous_bootname": "A",
        "previous_slot": "rootfs.0",
        "target_slot": "rootfs.1",
        "target_bootname": "B",
        "bundle_compatible": COMPATIBLE,
        "bundle_version": "2.1.0",
    }
    # RAUC's own steps came through, in order, ending at 100 %
    percents = [percent for percent, _ in progress.reports]
    assert percents == sorted(percents)
    assert percents[-1] == 100
    assert any("Installing" in message for _, message in progress.reports), progress.reports
    # the custom bootloader now starts B first, still untested (bad until confirmed)
    state = rauc.boot_state()
    assert state["primary"] == "B"
    assert state["states"] == {"A": "good", "B": "bad"}


async def test_a_failing_progress_callback_does_not_break_the_install(
    rauc: RaucSystem, installer: RaucInstaller
) -> None:
    def broken(percent: int, message: str) -> None:
        raise RuntimeError("callback bug")

    payload = os.urandom(10_000)
    result = await installer.install(rauc.build_bundle(payload), broken)

    assert result.data["target_bootname"] == "B"
    assert rauc.images["B"].read_bytes()[: len(payload)] == payload


async def test_a_tampered_bundle_is_rejected(
    rauc: RaucSystem, installer: RaucInstaller, tmp_path: Path
) -> None:
    bundle = tamper(rauc.build_bundle(os.urandom(100_000)), tmp_path / "tampered.raucb")

    with pytest.raises(InstallError) as info:
        await installer.install(bundle, Progress())

    assert "signature verification failed" in str(info.value)
    assert info.value.verification
    assert rauc.images["B"].read_bytes() == EMPTY_SLOT
    assert rauc.boot_state()["primary"] == "A"


async def test_a_bundle_signed_outside_the_keyring_is_rejected(
    rauc: RaucSystem, installer: RaucInstaller, tmp_path: Path
) -> None:
    stranger = make_signer(make_ca(tmp_path / "other", "other-ca"), tmp_path / "other", "other")
    bundle = rauc.build_bundle(os.urandom(10_000), signer=stranger)

    with pytest.raises(InstallError) as info:
        await installer.install(bundle, Progress())

    assert "signature verification failed" in str(info.value)
    assert info.value.verification
    assert rauc.images["B"].read_bytes() == EMPTY_SLOT


async def test_a_bundle_for_another_board_is_rejected(
    rauc: RaucSystem, installer: RaucInstaller
) -> None:
    bundle = rauc.build_bundle(os.urandom(10_000), compatible="another-board")

    with pytest.raises(InstallError) as info:
        await installer.install(bundle, Progress())

    message = str(info.value)
    assert "Compatible mismatch" in message and "another-board" in message
    assert not info.value.verification
    assert rauc.images["B"].read_bytes() == EMPTY_SLOT
    assert rauc.boot_state()["primary"] == "A"


async def test_without_signals_polling_still_sees_the_end(
    rauc: RaucSystem, installer: RaucInstaller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Completed and PropertiesChanged lost (no match rules): Operation/LastError decide."""

    async def no_signals(*args: object) -> list[object]:
        return []

    monkeypatch.setattr(RaucInstaller, "_subscribe", no_signals)
    payload = os.urandom(20_000)
    progress = Progress()

    result = await installer.install(rauc.build_bundle(payload), progress)
    with pytest.raises(InstallError, match="Compatible mismatch"):
        await installer.install(rauc.build_bundle(payload, compatible="x"), Progress())

    assert result.data["target_slot"] == "rootfs.1"
    assert rauc.images["B"].read_bytes()[: len(payload)] == payload
    assert progress.reports[-1][0] == 100


async def test_a_missing_bundle_is_an_install_error(
    rauc: RaucSystem, installer: RaucInstaller, tmp_path: Path
) -> None:
    with pytest.raises(InstallError, match="does not exist"):
        await installer.install(tmp_path / "nothing.raucb", Progress())


async def test_confirm_boot_after_booting_the_new_slot_marks_it_good(
    rauc: RaucSystem, system_bus: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the production default: the system bus, found through DBUS_SYSTEM_BUS_ADDRESS
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", system_bus)
    installer = RaucInstaller(poll_interval_s=0.2)
    result = await installer.install(
        rauc.build_bundle(os.urandom(50_000), version="3.0"), Progress()
    )

    assert rauc.reboot() == "B"
    check = await RaucInstaller().confirm_boot(result.data)

    assert check.ok, check.detail
    assert "rootfs.1" in check.detail and "3.0" in check.detail
    state = rauc.boot_state()
    assert state["states"]["B"] == "good"
    assert state["calls"][-1] == "set-state B good"
    assert state["primary"] == "B"


async def test_confirm_boot_after_a_rollback_is_not_ok(
    rauc: RaucSystem, installer: RaucInstaller
) -> None:
    result = await installer.install(rauc.build_bundle(os.urandom(50_000)), Progress())

    rauc.reboot("A")  # the bootloader gave up on B
    check = await installer.confirm_boot(result.data)

    assert not check.ok
    assert "rolled back" in check.detail and "rootfs.0" in check.detail
    assert rauc.boot_state()["states"]["B"] == "bad"  # nothing marked


async def test_confirm_boot_without_a_record_is_not_ok(
    rauc: RaucSystem, installer: RaucInstaller
) -> None:
    check = await installer.confirm_boot({})

    assert not check.ok
    assert "no record" in check.detail


async def test_rauc_not_running_is_a_clear_error(
    rauc_system: RaucSystem, installer: RaucInstaller
) -> None:
    bundle = rauc_system.build_bundle(os.urandom(10_000))
    started = time.monotonic()

    with pytest.raises(InstallError, match=r"RAUC service .* is not running"):
        await installer.install(bundle, Progress())
    check = await installer.confirm_boot({"target_bootname": "B", "target_slot": "rootfs.1"})

    assert time.monotonic() - started < 5
    assert not check.ok
    assert "not running" in check.detail


async def test_an_unreachable_bus_is_a_clear_error(tmp_path: Path) -> None:
    installer = RaucInstaller(bus=f"unix:path={tmp_path}/no-bus", call_timeout_s=5)
    bundle = tmp_path / "b.raucb"
    bundle.write_bytes(b"x")

    with pytest.raises(InstallError) as info:
        await installer.install(bundle, Progress())
    check = await installer.confirm_boot({"target_bootname": "B"})

    assert "no-bus" in str(info.value) or "connect" in str(info.value)
    assert not check.ok
