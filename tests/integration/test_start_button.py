"""The EVSE's start button as hardware (OCPP 2.0.1 C02 under 1.6): the real daemon with a
simulated EVSE whose [evse.start_button] is "sim", pressed over D-Bus (Simulator1.PressButton),
against the test CSMS on loopback.

With AuthEnabled false a press starts a session nobody authorized (1.6: the FreeVendIdTag) and
the next press stops it (reason Local). With authorization on a press changes nothing: the
daemon logs it and keeps running."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from testcsms.server import TestCsms
from tests.integration.conftest import (
    BusctlError,
    DaemonProcess,
    evse_property,
    sim,
    start_daemon,
    write_config,
)
from tests.integration.ev_script import Ev
from tests.integration.test_v201_session import calls

FREE_TAG = "FREE-BUTTON"


def config_with_button(
    tmp_path: Path, csms: TestCsms, address: str, ocpp_extra: str = "", evses: int = 1
) -> Path:
    """The integration config, with a simulated start button on the last EVSE."""
    path = write_config(
        tmp_path,
        csms.url,
        dbus_address=address,
        versions='["ocpp1.6"]',
        ocpp_extra=ocpp_extra,
        evses=evses,
    )
    with path.open("a", encoding="utf-8") as file:
        file.write('[evse.start_button]\nbackend = "sim"\n')
    return path


async def launch(config: Path, tmp_path: Path, daemons: list[DaemonProcess]) -> DaemonProcess:
    daemon = await start_daemon(config, tmp_path)
    daemons.append(daemon)
    await daemon.wait_notification("READY=1")
    return daemon


async def press(address: str, evse_id: int = 1) -> None:
    await sim(address, "PressButton", "u", str(evse_id))


async def session_id(address: str, evse_id: int = 1) -> str:
    answer = await evse_property(address, evse_id, "SessionId")  # 's "..."'
    return answer.removeprefix("s ").strip('"')


async def test_button_starts_and_stops_a_free_session(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    config = config_with_button(
        tmp_path, csms, dbus_address, f'AuthEnabled = false\nFreeVendIdTag = "{FREE_TAG}"'
    )
    daemon = await launch(config, tmp_path, daemons)
    await csms.wait_for("StatusNotification")
    assert await session_id(dbus_address) == ""
    await press(dbus_address)  # before the EV: the session waits for the plug
    async with asyncio.timeout(10):
        while not await session_id(dbus_address):
            await asyncio.sleep(0.05)
    ev = Ev(dbus_address)
    await ev.plug()
    await ev.ready(True)
    [start] = await csms.wait_for("StartTransaction")
    assert start.payload["idTag"] == FREE_TAG
    assert start.payload["connectorId"] == 1
    assert calls(csms, "Authorize") == []
    await csms.wait_for(
        lambda r: r.action == "StatusNotification" and r.payload.get("status") == "Charging"
    )
    await press(dbus_address)  # pressed again: stop
    [stop] = await csms.wait_for("StopTransaction")
    assert (stop.payload["idTag"], stop.payload["reason"]) == (FREE_TAG, "Local")
    assert len(calls(csms, "StartTransaction")) == 1
    assert "Traceback" not in daemon.stderr()
    assert await daemon.stop() == 0


async def test_button_does_nothing_while_authorization_is_on(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    # Two EVSEs; the button is on EVSE 2 only. AuthEnabled is on (the default).
    config = config_with_button(tmp_path, csms, dbus_address, evses=2)
    daemon = await launch(config, tmp_path, daemons)
    await csms.wait_for(
        lambda r: r.action == "StatusNotification" and r.payload.get("connectorId") == 2
    )
    with pytest.raises(BusctlError, match="no start button"):
        await press(dbus_address, 1)
    ev = Ev(dbus_address, evse_id=2)
    await ev.plug()
    await ev.ready(True)
    before = len(csms.received)
    for _ in range(3):
        await press(dbus_address, 2)  # answered at once: the station hears it after
    async with asyncio.timeout(10):
        while "authorization is required" not in daemon.stderr():
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    # Nothing changed: no session, nothing sent, the daemon runs and answers on the bus.
    assert await session_id(dbus_address, 2) == ""
    sent = [r.action for r in csms.received[before:] if r.direction == "in"]
    assert not {"Authorize", "StartTransaction", "StopTransaction"} & set(sent), sent
    assert daemon.process.returncode is None
    log = daemon.stderr()
    refusals = [line for line in log.splitlines() if "start button of EVSE 2 pressed" in line]
    assert len(refusals) == 3, log
    assert all(
        " INFO  evsed.charger: " in line and "authorization is required" in line
        for line in refusals
    ), refusals
    assert "Traceback" not in log
    assert await daemon.stop() == 0
