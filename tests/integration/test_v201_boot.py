"""OCPP 2.0.1 registration, heartbeat and reset end to end (B01-B04, B11, B12): evsed with
simulated hardware, driven over a private D-Bus, against the test CSMS speaking ocpp2.0.1."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from testcsms.server import CallErrorReceived, Received, TestCsms
from tests.integration.conftest import DaemonProcess, eventually
from tests.integration.ev_script import Ev
from tests.integration.test_firmware import BUNDLE, Setup, boot, signature, signing, wait_status
from tests.integration.test_v201_device_model import get, set_, statuses, var
from tests.integration.test_v201_firmware import V201, update
from tests.integration.test_v201_session import (
    CP,
    assert_contiguous,
    calls,
    event_is,
    events,
    go_offline,
    go_online,
    launch,
    started_daemon,
    status_is,
    write_config,
)
from tests.servers import HttpServer

COMM = "OCPPCommCtrlr"


def outgoing_calls(csms: TestCsms, since: int = 0) -> list[str]:
    """The actions of the CALLs the charger sent from `since` (an index into received)."""
    return [
        str(r.action) for r in csms.received[since:] if r.direction == "in" and r.message_type == 2
    ]


def answered(action: str) -> Callable[[Received], bool]:
    def match(r: Received) -> bool:
        return r.direction == "out" and r.message_type == 3 and r.action == action

    return match


# -- B01 accepted, B04 heartbeat and offline idle -----------------------------------------------


async def test_accepted_heartbeats_and_offline_idle(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    csms.heartbeat_interval = 2  # BootNotificationResponse.interval
    daemon = await started_daemon(csms, daemons, tmp_path, dbus_address)
    [boot] = calls(csms, "BootNotification")
    assert boot["reason"] == "PowerUp"
    actions = outgoing_calls(csms)
    assert actions[0] == "BootNotification" and actions[1] == "StatusNotification"
    # B01.FR.04: the interval of the answer is the heartbeat interval.
    [value] = await get(csms, var(COMM, "HeartbeatInterval"))
    assert value["attributeValue"] == "2"
    mark = len(csms.received)
    started = time.monotonic()
    await csms.wait_for("Heartbeat", count=2, since=mark, timeout=8)
    assert time.monotonic() - started >= 3  # about 2 s apart, not faster
    # B04: SetVariables HeartbeatInterval applies at once; WebSocketPingInterval is kept.
    assert statuses(
        await set_(
            csms,
            var(COMM, "HeartbeatInterval", value="1"),
            var(COMM, "WebSocketPingInterval", value="3"),
        )
    ) == ["Accepted", "RebootRequired"]
    mark = len(csms.received)
    await csms.wait_for("Heartbeat", count=3, since=mark, timeout=5)
    [ping] = await get(csms, var(COMM, "WebSocketPingInterval"))
    assert ping["attributeValue"] == "3"

    # B04 offline while idle: a status change made offline is reported after the reconnect.
    await go_offline(csms, dbus_address)
    ev = Ev(dbus_address)
    await ev.plug()
    await asyncio.sleep(0.5)
    mark = len(csms.received)
    await go_online(csms, dbus_address)
    await csms.wait_for(status_is("Occupied"), since=mark)
    await ev.unplug()
    await csms.wait_for(status_is("Available"), since=mark)
    assert await daemon.stop() == 0


# -- B02 pending ------------------------------------------------------------------------------


async def test_pending_answers_the_csms_holds_the_rest_and_boots_again(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    csms.boot_status = "Pending"
    csms.boot_interval = 3
    daemon = await launch(write_config(tmp_path, csms, dbus_address), tmp_path, daemons)
    await csms.wait_for(answered("BootNotification"))
    pending_since = time.monotonic()
    ev = Ev(dbus_address)
    await ev.plug()  # a status change while Pending: held
    # B02.FR.01: the CSMS may read and change the configuration and ask for a report.
    [value] = await get(csms, var(COMM, "HeartbeatInterval"))
    assert value["attributeStatus"] == "Accepted"
    assert statuses(await set_(csms, var(COMM, "HeartbeatInterval", value="100"))) == ["Accepted"]
    report = await csms.call(
        CP, "GetBaseReport", {"requestId": 7, "reportBase": "SummaryInventory"}
    )
    assert report == {"status": "Accepted"}
    notify = await csms.wait_for("NotifyReport")  # triggered by GetBaseReport: allowed
    assert notify[0].payload["requestId"] == 7
    # The next BootNotification waits for the interval; nothing else is sent meanwhile.
    await csms.wait_for(answered("BootNotification"), count=2, timeout=10)
    assert time.monotonic() - pending_since >= 2.5
    assert set(outgoing_calls(csms)) == {"BootNotification", "NotifyReport"}  # status held
    csms.boot_status = "Accepted"
    await csms.wait_for("BootNotification", count=3, timeout=10)
    await csms.wait_for(status_is("Occupied"))  # released once Accepted
    assert [b["reason"] for b in calls(csms, "BootNotification")] == ["PowerUp"] * 3
    [value] = await get(csms, var(COMM, "HeartbeatInterval"))
    assert value["attributeValue"] == str(csms.heartbeat_interval)  # the Accepted interval
    await ev.unplug()
    assert await daemon.stop() == 0


# -- B03 rejected -----------------------------------------------------------------------------


async def test_rejected_sends_nothing_but_boot_and_charges_locally(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    csms.boot_status = "Rejected"
    csms.boot_interval = 2
    config = write_config(tmp_path, csms, dbus_address, "AllowOfflineTxForUnknownId = true")
    daemon = await launch(config, tmp_path, daemons)
    await csms.wait_for(answered("BootNotification"))
    rejected_at = time.monotonic()
    ev = Ev(dbus_address)
    await ev.plug()
    await ev.present("TAG-LOCAL")
    await ev.ready(True)
    for _ in range(100):  # the station charges on its own settings (offline authorization)
        if "Charging" in await ev.status():
            break
        await asyncio.sleep(0.1)
    assert "Charging" in await ev.status()
    await csms.wait_for(answered("BootNotification"), count=2, timeout=10)
    assert time.monotonic() - rejected_at >= 1.5  # the interval was honoured
    assert set(outgoing_calls(csms)) == {"BootNotification"}
    csms.boot_status = "Accepted"
    await csms.wait_for(answered("BootNotification"), count=3, timeout=10)
    [started] = await csms.wait_for(event_is("Started"))
    assert started.payload["offline"] is True  # made while not registered
    assert started.payload["idToken"]["idToken"] == "TAG-LOCAL"
    await csms.wait_for(status_is("Occupied"))
    await ev.ready(False)
    await ev.unplug()
    await csms.wait_for(event_is("Ended"))
    assert_contiguous(events(csms))
    assert await daemon.stop() == 0


async def test_rejected_refuses_the_csms_until_a_triggered_boot_is_accepted(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    csms.boot_status = "Rejected"
    csms.boot_interval = 300  # no unprompted retry within the test
    daemon = await launch(write_config(tmp_path, csms, dbus_address), tmp_path, daemons)
    await csms.wait_for(answered("BootNotification"))
    ev = Ev(dbus_address)
    await ev.plug()  # a status change while Rejected: held, not lost
    # B03: every request of the CSMS is refused with SecurityError while Rejected...
    for action, payload in (
        ("GetVariables", {"getVariableData": [var(COMM, "HeartbeatInterval")]}),
        (
            "RequestStartTransaction",
            {"idToken": {"idToken": "REMOTE-1", "type": "Central"}, "remoteStartId": 1},
        ),
        ("TriggerMessage", {"requestedMessage": "StatusNotification"}),
    ):
        with pytest.raises(CallErrorReceived) as refused:
            await csms.call(CP, action, payload)
        assert refused.value.error_code == "SecurityError", action
        assert "Rejected" in refused.value.description
    await asyncio.sleep(0.5)
    assert set(outgoing_calls(csms)) == {"BootNotification"}
    assert daemon.process.returncode is None
    # ...except TriggerMessage(BootNotification): the CSMS lets the station register again.
    csms.boot_status = "Accepted"
    assert await csms.call(CP, "TriggerMessage", {"requestedMessage": "BootNotification"}) == {
        "status": "Accepted"
    }
    await csms.wait_for(answered("BootNotification"), count=2)
    await csms.wait_for(status_is("Occupied"))  # the held status change goes out now
    [value] = await get(csms, var(COMM, "HeartbeatInterval"))
    assert value["attributeStatus"] == "Accepted"
    # Registered: a further boot trigger is Rejected (F06.FR.17), not a SecurityError.
    assert await csms.call(CP, "TriggerMessage", {"requestedMessage": "BootNotification"}) == {
        "status": "Rejected"
    }
    mark = len(csms.received)
    await ev.unplug()
    await csms.wait_for(status_is("Available"), since=mark)
    assert [b["reason"] for b in calls(csms, "BootNotification")] == ["PowerUp"] * 2
    assert await daemon.stop() == 0


# -- B11 reset without a transaction ----------------------------------------------------------


async def test_reset_without_a_transaction(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    daemon = await started_daemon(csms, daemons, tmp_path, dbus_address)
    # An EVSE reset: that EVSE only, the station keeps running.
    mark = len(csms.received)
    assert await csms.call(CP, "Reset", {"type": "Immediate", "evseId": 1}) == {
        "status": "Accepted"
    }
    await csms.wait_for(status_is("Available"), since=mark)
    await asyncio.sleep(0.5)
    assert len(calls(csms, "BootNotification")) == 1
    # OnIdle while idle: at once; the next BootNotification says RemoteReset.
    assert await csms.call(CP, "Reset", {"type": "OnIdle"}) == {"status": "Accepted"}
    await csms.wait_for("BootNotification", count=2, timeout=20)
    await csms.wait_for(status_is("Available"), since=mark + 1)
    assert await csms.call(CP, "Reset", {"type": "Immediate"}, timeout=15) == {"status": "Accepted"}
    boots = await csms.wait_for("BootNotification", count=3, timeout=20)
    assert [b.payload["reason"] for b in boots] == ["PowerUp", "RemoteReset", "RemoteReset"]
    assert daemon.process.returncode is None
    assert await daemon.stop() == 0


# -- B12 reset with a transaction -------------------------------------------------------------


async def test_reset_with_a_transaction(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    daemon = await started_daemon(csms, daemons, tmp_path, dbus_address)
    ev = Ev(dbus_address)
    await ev.plug()
    await ev.present("TAG-RESET")
    await csms.wait_for(event_is("Started"))
    await ev.ready(True)
    await csms.wait_for(event_is("Updated", "ChargingStateChanged"), count=2)
    # OnIdle for the EVSE: Scheduled, done when its transaction ends, no restart.
    assert await csms.call(CP, "Reset", {"type": "OnIdle", "evseId": 1}) == {"status": "Scheduled"}
    await ev.ready(False)
    await ev.unplug()
    [first_end] = await csms.wait_for(event_is("Ended"))
    assert first_end.payload["transactionInfo"]["stoppedReason"] == "EVDisconnected"
    await asyncio.sleep(0.5)
    assert len(calls(csms, "BootNotification")) == 1
    # Immediate with a transaction: it ends (ResetCommand / ImmediateReset), then the restart.
    await ev.plug()
    await ev.present("TAG-RESET")
    await csms.wait_for(event_is("Started"), count=2)
    assert await csms.call(CP, "Reset", {"type": "Immediate"}) == {"status": "Accepted"}
    [_, ended] = await csms.wait_for(event_is("Ended"), count=2, timeout=15)
    assert ended.payload["triggerReason"] == "ResetCommand"
    assert ended.payload["transactionInfo"]["stoppedReason"] == "ImmediateReset"
    boots = await csms.wait_for("BootNotification", count=2, timeout=20)
    assert boots[1].payload["reason"] == "RemoteReset"
    assert_contiguous(events(csms))
    await ev.unplug()
    assert await daemon.stop() == 0


# -- BootNotification reason after a firmware installation's reboot ---------------------------


async def test_boot_reason_after_a_firmware_reboot(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    ca, leaf = signing(tmp_path)
    setup = Setup(tmp_path, install_sleep=0.5, extra=f'manufacturer_roots = "{ca.cert_path}"')
    config = setup.config(csms.url, versions=V201)
    with HttpServer() as http:
        http.serve("/fw.bin", BUNDLE)
        daemon = await boot(csms, daemons, config, tmp_path)
        request = update(
            http.url("/fw.bin"),
            3,
            signingCertificate=leaf.cert_path.read_text(),
            signature=signature(leaf, BUNDLE),
        )
        assert await csms.call(CP, "UpdateFirmware", request) == {"status": "Accepted"}
        await wait_status(csms, "InstallRebooting")
        await eventually(setup.marker.exists, timeout=15)
    await daemon.stop(signal.SIGKILL)  # the reboot
    since = len(csms.received)
    daemon = await boot(csms, daemons, config, tmp_path, since=since)
    await wait_status(csms, "Installed")
    assert [b["reason"] for b in calls(csms, "BootNotification")] == ["PowerUp", "FirmwareUpdate"]
    assert await daemon.stop() == 0
