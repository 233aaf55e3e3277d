"""Sessions across offline periods, restarts and resets: evsed with simulated hardware over a
private D-Bus, against the test CSMS."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from testcsms.server import Received, TestCsms
from tests.integration.conftest import (
    DaemonProcess,
    busctl,
    evse_property,
    sim,
    start_daemon,
    write_config,
)
from tests.integration.test_session import calls, wait_status

CP = "CP-IT-1"


def config_for(tmp_path: Path, csms: TestCsms, address: str, ocpp_extra: str = "") -> Path:
    return write_config(tmp_path, csms.url, dbus_address=address, ocpp_extra=ocpp_extra,
                        csms_extra="external_websocket_control = true")


async def launch(config: Path, tmp_path: Path, daemons: list[DaemonProcess]) -> DaemonProcess:
    daemon = await start_daemon(config, tmp_path)
    daemons.append(daemon)
    await daemon.wait_notification("READY=1")
    return daemon


async def go_offline(csms: TestCsms, address: str) -> None:
    count = len([c for c in csms.connections if c.closed is not None])
    await sim(address, "WebsocketDisconnect")
    await csms.wait_until(lambda: len([c for c in csms.connections
                                       if c.closed is not None]) > count)
    # ...and the daemon itself knows it is offline (under load this can lag the CSMS side).
    for _ in range(100):
        state = await busctl(address, "get-property", "org.evsed", "/org/evsed/Station",
                             "org.evsed.Station1", "ConnectionState")
        if "connected" not in state.replace("disconnected", ""):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.2)


async def go_online(csms: TestCsms, address: str) -> None:
    count = len(csms.connections)
    await sim(address, "WebsocketConnect")
    await csms.wait_for_connection(count=count + 1)


async def wait_evse_status(address: str, status: str, evse_id: int = 1) -> None:
    for _ in range(100):
        if status in await evse_property(address, evse_id, "Status"):
            return
        await asyncio.sleep(0.05)
    assert status in await evse_property(address, evse_id, "Status")


def distinct(csms: TestCsms, action: str) -> list[Received]:
    """CALLs of `action`, first copy of each message id."""
    seen: dict[str, Received] = {}
    for r in csms.received:
        if r.direction == "in" and r.message_type == 2 and r.action == action:
            seen.setdefault(r.unique_id, r)
    return list(seen.values())


def payloads(csms: TestCsms, action: str) -> list[dict[str, Any]]:
    return calls(csms, action)


async def test_start_offline_stop_online_and_stop_offline(
        csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str) -> None:
    config = config_for(tmp_path, csms, dbus_address, "AllowOfflineTxForUnknownId = true")
    daemon = await launch(config, tmp_path, daemons)
    await csms.wait_for("StatusNotification")  # sent only once the boot was Accepted
    await go_offline(csms, dbus_address)
    await sim(dbus_address, "Plug", "u", "1")
    await sim(dbus_address, "SetEvReady", "ub", "1", "true")
    await sim(dbus_address, "PresentRfid", "us", "1", "NEWCARD")
    for _ in range(50):  # the transaction starts offline: the EV charges without the CSMS
        if "Charging" in await evse_property(dbus_address, 1, "Status"):
            break
        await asyncio.sleep(0.1)
    assert "Charging" in await evse_property(dbus_address, 1, "Status")
    assert not payloads(csms, "StartTransaction")
    await go_online(csms, dbus_address)
    [start] = await csms.wait_for("StartTransaction")
    assert start.payload["idTag"] == "NEWCARD"
    await sim(dbus_address, "Unplug", "u", "1")
    [stop] = await csms.wait_for("StopTransaction")
    assert stop.payload["transactionId"] == 1  # the CSMS's id, never -1

    # A second session stopped while offline: Start and Stop queue up, in order, and the
    # Stop carries the id the CSMS gives the Start after the reconnect.
    await go_offline(csms, dbus_address)
    await sim(dbus_address, "Plug", "u", "1")
    await sim(dbus_address, "PresentRfid", "us", "1", "NEWCARD")
    await asyncio.sleep(0.5)
    await sim(dbus_address, "Unplug", "u", "1")
    await asyncio.sleep(0.3)
    await go_online(csms, dbus_address)
    # (a message in flight when the link was cut is sent again with the same id: count ids)
    await csms.wait_until(lambda: len(distinct(csms, "StopTransaction")) == 2)
    stops = distinct(csms, "StopTransaction")
    starts = distinct(csms, "StartTransaction")
    assert stops[1].payload["transactionId"] == 2
    assert starts[1].time < stops[1].time
    assert await daemon.stop() == 0


async def test_stop_offline_then_reboot(csms: TestCsms, daemons: list[DaemonProcess],
                                        tmp_path: Path, dbus_address: str) -> None:
    config = config_for(tmp_path, csms, dbus_address)
    daemon = await launch(config, tmp_path, daemons)
    await csms.wait_for("StatusNotification")  # sent only once the boot was Accepted
    await sim(dbus_address, "Plug", "u", "1")
    await sim(dbus_address, "PresentRfid", "us", "1", "CARD1")
    [start] = await csms.wait_for("StartTransaction")
    await asyncio.sleep(0.3)  # the StartTransaction.conf is processed
    await go_offline(csms, dbus_address)
    await sim(dbus_address, "Unplug", "u", "1")
    await asyncio.sleep(0.3)
    daemon.process.send_signal(signal.SIGKILL)  # power cut while the Stop is queued
    await daemon.process.wait()
    daemon = await launch(config, tmp_path, daemons)
    [stop] = await csms.wait_for("StopTransaction", timeout=15)
    assert stop.payload["reason"] == "EVDisconnected"
    assert stop.payload["transactionId"] == 1
    await asyncio.sleep(0.5)
    assert len(distinct(csms, "StopTransaction")) == 1  # no PowerLoss duplicate
    assert start.payload["idTag"] == "CARD1"
    assert await daemon.stop() == 0


async def test_power_cut_during_transaction_ends_it_with_power_loss(
        csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str) -> None:
    config = config_for(tmp_path, csms, dbus_address)
    daemon = await launch(config, tmp_path, daemons)
    await csms.wait_for("StatusNotification")  # sent only once the boot was Accepted
    await sim(dbus_address, "Plug", "u", "1")
    await sim(dbus_address, "SetEvReady", "ub", "1", "true")
    await sim(dbus_address, "PresentRfid", "us", "1", "CARD1")
    await csms.wait_for("StartTransaction")
    await wait_status(csms, 1, "Charging")
    await asyncio.sleep(0.5)
    daemon.process.send_signal(signal.SIGKILL)
    await daemon.process.wait()
    daemon = await launch(config, tmp_path, daemons)
    [stop] = await csms.wait_for("StopTransaction", timeout=15)
    assert stop.payload["reason"] == "PowerLoss"
    assert stop.payload["transactionId"] == 1
    assert await daemon.stop() == 0


async def test_offline_authorization_uses_cache_and_settings(
        csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str) -> None:
    csms.blocked_tags = {"BLOCKED"}
    config = config_for(tmp_path, csms, dbus_address,
                        "LocalAuthorizeOffline = true\nAllowOfflineTxForUnknownId = false")
    daemon = await launch(config, tmp_path, daemons)
    await csms.wait_for("StatusNotification")  # sent only once the boot was Accepted
    # Online: both cards are answered by the CSMS and cached.
    await sim(dbus_address, "PresentRfid", "us", "1", "KNOWN")
    await csms.wait_for("Authorize")
    await wait_evse_status(dbus_address, "Preparing")  # the answer was taken: authorized
    await sim(dbus_address, "PresentRfid", "us", "1", "KNOWN")  # cancels the waiting session
    await wait_evse_status(dbus_address, "Available")
    await sim(dbus_address, "PresentRfid", "us", "1", "BLOCKED")
    await csms.wait_for("Authorize", count=2)
    await asyncio.sleep(0.3)
    await go_offline(csms, dbus_address)
    await sim(dbus_address, "Plug", "u", "1")
    for tag in ("STRANGER", "BLOCKED"):  # unknown and blocked: refused offline
        await sim(dbus_address, "PresentRfid", "us", "1", tag)
        for _ in range(60):  # refused at once offline; a loaded machine may take a moment
            await asyncio.sleep(0.1)
            if (await evse_property(dbus_address, 1, "SessionId")).endswith('""'):
                break
        assert (await evse_property(dbus_address, 1, "SessionId")).endswith('""'), (
            tag, daemon.stderr()[-6000:])
        assert not [r for r in csms.received if r.action == "StartTransaction"], tag
    await sim(dbus_address, "PresentRfid", "us", "1", "KNOWN")  # cached Accepted: starts
    for _ in range(50):
        if "KNOWN" in await evse_property(dbus_address, 1, "IdTag"):
            break
        await asyncio.sleep(0.1)
    assert "KNOWN" in await evse_property(dbus_address, 1, "IdTag"), daemon.stderr()[-8000:]
    assert (await evse_property(dbus_address, 1, "TransactionId")) != 's ""'
    await go_online(csms, dbus_address)
    [start] = await csms.wait_for("StartTransaction")
    assert start.payload["idTag"] == "KNOWN"
    assert [p["idTag"] for p in payloads(csms, "Authorize")] == ["KNOWN", "BLOCKED"]
    assert await daemon.stop() == 0


async def test_invalid_id_in_start_transaction_conf_stops_it(
        csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str) -> None:
    csms.invalid_tags = {"FORGED"}
    config = config_for(tmp_path, csms, dbus_address, "AllowOfflineTxForUnknownId = true")
    daemon = await launch(config, tmp_path, daemons)
    await csms.wait_for("StatusNotification")  # sent only once the boot was Accepted
    await go_offline(csms, dbus_address)
    await sim(dbus_address, "Plug", "u", "1")
    await sim(dbus_address, "SetEvReady", "ub", "1", "true")
    await sim(dbus_address, "PresentRfid", "us", "1", "FORGED")
    await asyncio.sleep(0.5)
    await go_online(csms, dbus_address)
    await csms.wait_for("StartTransaction")
    [stop] = await csms.wait_for("StopTransaction")
    assert stop.payload["reason"] == "DeAuthorized"
    assert stop.payload["transactionId"] == 1
    assert await daemon.stop() == 0


async def test_soft_reset_during_transaction(csms: TestCsms, daemons: list[DaemonProcess],
                                             tmp_path: Path, dbus_address: str) -> None:
    config = config_for(tmp_path, csms, dbus_address)
    daemon = await launch(config, tmp_path, daemons)
    await csms.wait_for("StatusNotification")  # sent only once the boot was Accepted
    await sim(dbus_address, "Plug", "u", "1")
    await sim(dbus_address, "PresentRfid", "us", "1", "CARD1")
    await csms.wait_for("StartTransaction")
    await asyncio.sleep(0.3)
    assert await csms.call(CP, "Reset", {"type": "Soft"}) == {"status": "Accepted"}
    [stop] = await csms.wait_for("StopTransaction")
    assert stop.payload["reason"] == "SoftReset"
    boots = await csms.wait_for("BootNotification", count=2, timeout=20)
    assert len(boots) == 2  # the process restarted and registered again
    await asyncio.sleep(0.5)
    assert len(distinct(csms, "StopTransaction")) == 1
    assert daemon.process.returncode is None  # same process slot (exec), still running
    assert await daemon.stop() == 0


async def test_unlock_connector_during_transaction(
        csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str) -> None:
    daemon = await launch(config_for(tmp_path, csms, dbus_address), tmp_path, daemons)
    await csms.wait_for("StatusNotification")  # sent only once the boot was Accepted
    await sim(dbus_address, "Plug", "u", "1")
    await sim(dbus_address, "PresentRfid", "us", "1", "CARD1")
    await csms.wait_for("StartTransaction")
    assert await csms.call(CP, "UnlockConnector", {"connectorId": 1}) == {"status": "Unlocked"}
    [stop] = await csms.wait_for("StopTransaction")
    assert stop.payload["reason"] == "UnlockCommand"
    assert await daemon.stop() == 0


async def test_connection_timeout_cancels_an_unplugged_authorization(
        csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str) -> None:
    config = config_for(tmp_path, csms, dbus_address, "ConnectionTimeOut = 1")
    daemon = await launch(config, tmp_path, daemons)
    await csms.wait_for("StatusNotification")  # sent only once the boot was Accepted
    await wait_status(csms, 1, "Available")
    mark = len(csms.received)
    await sim(dbus_address, "PresentRfid", "us", "1", "CARD1")
    await wait_status(csms, 1, "Preparing", since=mark)
    await wait_status(csms, 1, "Available", since=mark, timeout=10)
    await sim(dbus_address, "Plug", "u", "1")
    await asyncio.sleep(0.5)
    assert not payloads(csms, "StartTransaction")
    assert await daemon.stop() == 0
