"""Emergency stop and RCD reach the station in the real daemon: a simulated EVSE whose
[evse.safety] is "sim", the inputs set over D-Bus (Simulator1.SetSafetyInput), against the test
CSMS speaking 1.6. The transaction stops with reason EmergencyStop, the contactor opens, the
EVSE is Faulted while the input lasts and Available again after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from testcsms.server import Received, TestCsms
from tests.integration.conftest import (
    BusctlError,
    DaemonProcess,
    sim,
    start_daemon,
    write_config,
)
from tests.integration.ev_script import Ev


def status(value: str, error: str | None = None) -> Any:
    def match(r: Received) -> bool:
        return (
            r.direction == "in"
            and r.message_type == 2
            and r.action == "StatusNotification"
            and r.payload.get("connectorId") == 1
            and r.payload.get("status") == value
            and (error is None or r.payload.get("errorCode") == error)
        )

    return match


async def test_emergency_stop_and_rcd_stop_charging(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    config = write_config(tmp_path, csms.url, dbus_address=dbus_address)
    with config.open("a", encoding="utf-8") as file:
        file.write('[evse.safety]\nbackend = "sim"\n')
    daemon = await start_daemon(config, tmp_path)
    daemons.append(daemon)
    await daemon.wait_notification("READY=1")
    await csms.wait_for("StatusNotification")
    ev = Ev(dbus_address)
    await ev.plug()
    await ev.present("CARD-ESTOP")
    await ev.ready(True)
    await csms.wait_for(status("Charging"))
    mark = len(csms.received)
    await sim(dbus_address, "SetSafetyInput", "usb", "1", "emergency_stop", "true")
    [stop] = await csms.wait_for("StopTransaction", since=mark)
    assert stop.payload["reason"] == "EmergencyStop"
    await csms.wait_for(status("Faulted", "OtherError"), since=mark)
    mark = len(csms.received)
    await sim(dbus_address, "SetSafetyInput", "usb", "1", "emergency_stop", "false")
    await csms.wait_for(status("Finishing"), since=mark)  # the cable is still in
    mark = len(csms.received)
    await sim(dbus_address, "SetSafetyInput", "usb", "1", "rcd", "true")
    await csms.wait_for(status("Faulted", "GroundFailure"), since=mark)
    await sim(dbus_address, "SetSafetyInput", "usb", "1", "rcd", "false")
    await ev.unplug()
    await csms.wait_for(status("Available"), since=mark)
    with pytest.raises(BusctlError, match="unknown safety input"):
        await sim(dbus_address, "SetSafetyInput", "usb", "1", "door", "true")
    assert await daemon.stop() == 0
