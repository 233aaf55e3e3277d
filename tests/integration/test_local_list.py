"""The Local Authorization List end to end: the real daemon with simulated hardware over a
private D-Bus, against the test CSMS, under OCPP 1.6 (LocalAuthListManagement) and 2.0.1 (D01,
D02, C13): updates, versions, limits, offline authorization from the list, and a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from testcsms.server import CallErrorReceived, TestCsms
from tests.integration.conftest import DaemonProcess, start_daemon
from tests.integration.conftest import write_config as write_base_config
from tests.integration.ev_script import Ev
from tests.integration.test_v201_session import calls, go_offline, go_online

CP = "CP-IT-1"
V16 = '["ocpp1.6"]'
V201 = '["ocpp2.0.1"]'


def config(tmp_path: Path, csms: TestCsms, address: str, versions: str) -> Path:
    return write_base_config(
        tmp_path,
        csms.url,
        dbus_address=address,
        versions=versions,
        # Only the list may let a token through offline: no cache, no unknown ids.
        ocpp_extra="AuthorizationCacheEnabled = false\nAllowOfflineTxForUnknownId = false",
        csms_extra="external_websocket_control = true",
    )


async def launch(path: Path, tmp_path: Path, daemons: list[DaemonProcess]) -> DaemonProcess:
    daemon = await start_daemon(path, tmp_path)
    daemons.append(daemon)
    await daemon.wait_notification("READY=1")
    return daemon


async def wait_charging(ev: Ev, id_tag: str) -> None:
    for _ in range(50):
        if "Charging" in await ev.status():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{id_tag}: no charging session, status {await ev.status()}")


async def assert_refused(ev: Ev) -> None:
    await asyncio.sleep(0.5)
    assert "Charging" not in await ev.status()


def tag16(id_tag: str, status: str | None = "Accepted", **info: str) -> dict[str, Any]:
    data: dict[str, Any] = {"idTag": id_tag}
    if status is not None:
        data["idTagInfo"] = {"status": status, **info}
    return data


def token201(id_token: str, status: str | None = "Accepted") -> dict[str, Any]:
    data: dict[str, Any] = {"idToken": {"idToken": id_token, "type": "ISO14443"}}
    if status is not None:
        data["idTokenInfo"] = {"status": status}
    return data


async def test_ocpp16_local_list(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    path = config(tmp_path, csms, dbus_address, V16)
    daemon = await launch(path, tmp_path, daemons)
    await csms.wait_for("StatusNotification")
    assert await csms.call(CP, "GetLocalListVersion", {}) == {"listVersion": 0}
    full = {
        "listVersion": 1,
        "updateType": "Full",
        "localAuthorizationList": [tag16("LISTED1"), tag16("GONE"), tag16("BLOCKED1", "Blocked")],
    }
    assert await csms.call(CP, "SendLocalList", full) == {"status": "Accepted"}
    diff = {
        "listVersion": 2,
        "updateType": "Differential",
        "localAuthorizationList": [tag16("GONE", None), tag16("LISTED2", parentIdTag="FLEET")],
    }
    assert await csms.call(CP, "SendLocalList", diff) == {"status": "Accepted"}
    assert await csms.call(CP, "GetLocalListVersion", {}) == {"listVersion": 2}
    stale = {**diff, "listVersion": 2}
    assert await csms.call(CP, "SendLocalList", stale) == {"status": "VersionMismatch"}
    # More than SendLocalListMaxLength (100) in one request: Failed, nothing changes.
    too_long = {
        "listVersion": 3,
        "updateType": "Full",
        "localAuthorizationList": [tag16(f"T{n:04d}") for n in range(101)],
    }
    assert await csms.call(CP, "SendLocalList", too_long) == {"status": "Failed"}
    assert await csms.call(CP, "GetLocalListVersion", {}) == {"listVersion": 2}

    # The list survives a restart; offline, a listed token charges with no CSMS round trip.
    assert await daemon.stop() == 0
    since = len(csms.received)
    daemon = await launch(path, tmp_path, daemons)
    await csms.wait_for("StatusNotification", since=since)
    assert await csms.call(CP, "GetLocalListVersion", {}) == {"listVersion": 2}
    await go_offline(csms, dbus_address)
    ev = Ev(dbus_address)
    await ev.plug()
    await ev.ready(True)
    for refused in ("BLOCKED1", "GONE", "STRANGER"):
        await ev.present(refused)
        await assert_refused(ev)
    await ev.present("LISTED2")
    await wait_charging(ev, "LISTED2")
    await go_online(csms, dbus_address)
    [start] = await csms.wait_for("StartTransaction", timeout=15)
    assert start.payload["idTag"] == "LISTED2"
    assert calls(csms, "Authorize") == []
    assert await daemon.stop() == 0


async def test_ocpp201_local_list(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    path = config(tmp_path, csms, dbus_address, V201)
    daemon = await launch(path, tmp_path, daemons)
    await csms.wait_for("StatusNotification")
    assert await csms.call(CP, "GetLocalListVersion", {}) == {"versionNumber": 0}
    full = {
        "versionNumber": 10,
        "updateType": "Full",
        "localAuthorizationList": [token201("LISTED1"), token201("GONE")],
    }
    assert await csms.call(CP, "SendLocalList", full) == {"status": "Accepted"}
    diff = {
        "versionNumber": 11,
        "updateType": "Differential",
        "localAuthorizationList": [token201("GONE", None), token201("LISTED2")],
    }
    assert await csms.call(CP, "SendLocalList", diff) == {"status": "Accepted"}
    assert await csms.call(CP, "GetLocalListVersion", {}) == {"versionNumber": 11}
    answer = await csms.call(CP, "SendLocalList", {**diff, "versionNumber": 11})
    assert answer["status"] == "VersionMismatch"
    answer = await csms.call(CP, "SendLocalList", {**full, "versionNumber": 0})
    assert answer["status"] == "Failed"
    entries = await csms.call(
        CP,
        "GetVariables",
        {
            "getVariableData": [
                {"component": {"name": "LocalAuthListCtrlr"}, "variable": {"name": "Entries"}}
            ]
        },
    )
    assert entries["getVariableResult"][0]["attributeValue"] == "2"
    # More than LocalAuthListCtrlr.ItemsPerMessage (100) entries: OccurrenceConstraintViolation.
    too_long = {
        "versionNumber": 12,
        "updateType": "Full",
        "localAuthorizationList": [token201(f"T{n:04d}") for n in range(101)],
    }
    with pytest.raises(CallErrorReceived) as caught:
        await csms.call(CP, "SendLocalList", too_long)
    assert caught.value.error_code == "OccurrenceConstraintViolation"
    assert await csms.call(CP, "GetLocalListVersion", {}) == {"versionNumber": 11}

    assert await daemon.stop() == 0
    since = len(csms.received)
    daemon = await launch(path, tmp_path, daemons)
    await csms.wait_for("StatusNotification", since=since)
    assert await csms.call(CP, "GetLocalListVersion", {}) == {"versionNumber": 11}
    await go_offline(csms, dbus_address)
    ev = Ev(dbus_address)
    await ev.plug()
    await ev.ready(True)
    for refused in ("GONE", "STRANGER"):
        await ev.present(refused)
        await assert_refused(ev)
    await ev.present("LISTED1")
    await wait_charging(ev, "LISTED1")
    await go_online(csms, dbus_address)
    started = await csms.wait_for(
        lambda r: (
            r.direction == "in"
            and r.message_type == 2
            and r.action == "TransactionEvent"
            and r.payload["eventType"] == "Started"
        ),
        timeout=15,
    )
    assert started[0].payload["idToken"] == {"idToken": "LISTED1", "type": "ISO14443"}
    assert calls(csms, "Authorize") == []
    assert await daemon.stop() == 0
