"""Tokens end to end, both versions: 2.0.1 idTokens up to 36 characters with their type
(C01, E07 with the stopping token), free charging without authorization (C02 start button,
AuthCtrlr.Enabled / AuthEnabled false), over the private D-Bus against the test CSMS."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.dbus import BUS_NAME, STATION_PATH
from testcsms.server import TestCsms
from tests.integration.conftest import BusctlError, DaemonProcess, busctl, evse_call
from tests.integration.ev_script import Ev
from tests.integration.test_v201_session import (
    CP,
    calls,
    event_is,
    launch,
    started_daemon,
    status_is,
    write_config,
)

EMAID = "NL-EVS-C12345678-X-0123456789ABCDEF"  # 35 characters: too long for 1.6


async def present_id_token(address: str, token: str, kind: str) -> None:
    await busctl(
        address,
        "call",
        BUS_NAME,
        STATION_PATH,
        "org.evsed.Station1",
        "PresentIdToken",
        "uss",
        "1",
        token,
        kind,
    )


async def test_long_typed_token_and_the_token_that_stops(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    daemon = await started_daemon(csms, daemons, tmp_path, dbus_address)
    ev = Ev(dbus_address)
    await ev.plug()
    await present_id_token(dbus_address, EMAID, "eMAID")
    [auth] = await csms.wait_for("Authorize")
    assert auth.payload == {"idToken": {"idToken": EMAID, "type": "eMAID"}}
    [started] = await csms.wait_for(event_is("Started"))
    assert started.payload["idToken"] == {"idToken": EMAID, "type": "eMAID"}
    # Bad input: a token too long even for 2.0.1, an unknown type, NoAuthorization presented.
    for token, kind in (("E" * 37, "eMAID"), ("CARD", "Bogus"), ("", "NoAuthorization")):
        with pytest.raises(BusctlError, match=r"invalid|unknown token type|NoAuthorization"):
            await present_id_token(dbus_address, token, kind)
    # E07: the same token stops it; the Ended event names it.
    await present_id_token(dbus_address, EMAID, "eMAID")
    [ended] = await csms.wait_for(event_is("Ended"))
    assert ended.payload["triggerReason"] == "StopAuthorized"
    assert ended.payload["transactionInfo"]["stoppedReason"] == "Local"
    assert ended.payload["idToken"] == {"idToken": EMAID, "type": "eMAID"}
    assert await daemon.stop() == 0


async def test_free_charging_with_the_start_button_under_201(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    daemon = await started_daemon(csms, daemons, tmp_path, dbus_address)
    with pytest.raises(BusctlError, match="authorization is required"):
        await evse_call(dbus_address, 1, "PressStartButton")  # authorization is on
    answer = await csms.call(
        CP,
        "SetVariables",
        {
            "setVariableData": [
                {
                    "component": {"name": "AuthCtrlr"},
                    "variable": {"name": "Enabled"},
                    "attributeValue": "false",
                }
            ]
        },
    )
    assert answer["setVariableResult"][0]["attributeStatus"] == "Accepted"
    ev = Ev(dbus_address)
    await ev.plug()  # charges at once: nobody to ask
    [started] = await csms.wait_for(event_is("Started"))
    assert started.payload["idToken"] == {"idToken": "", "type": "NoAuthorization"}
    assert calls(csms, "Authorize") == []
    await ev.ready(True)
    await csms.wait_for(status_is("Occupied"))
    await evse_call(dbus_address, 1, "PressStartButton")  # pressed again: stop
    [ended] = await csms.wait_for(event_is("Ended"))
    assert ended.payload["triggerReason"] == "StopAuthorized"
    assert ended.payload["idToken"] == {"idToken": "", "type": "NoAuthorization"}
    # The setting is one station setting, persisted: GetVariables reads it back.
    got = await csms.call(
        CP,
        "GetVariables",
        {
            "getVariableData": [
                {"component": {"name": "AuthCtrlr"}, "variable": {"name": "Enabled"}}
            ]
        },
    )
    assert got["getVariableResult"][0]["attributeValue"] == "false"
    assert await daemon.stop() == 0


async def test_free_charging_under_16_uses_the_free_vend_tag(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    config = write_config(
        tmp_path,
        csms,
        dbus_address,
        'AuthEnabled = false\nFreeVendIdTag = "FREE-1"',
        versions='["ocpp1.6"]',
    )
    daemon = await launch(config, tmp_path, daemons)
    await csms.wait_for("StatusNotification")
    # 1.6 carries 20 characters: the 2.0.1 token is refused while 1.6 speaks.
    with pytest.raises(BusctlError, match=r"invalid|unknown token type|NoAuthorization"):
        await present_id_token(dbus_address, EMAID, "eMAID")
    ev = Ev(dbus_address)
    await ev.plug()
    [start] = await csms.wait_for("StartTransaction")
    assert start.payload["idTag"] == "FREE-1"
    assert calls(csms, "Authorize") == []
    await evse_call(dbus_address, 1, "PressStartButton")
    [stop] = await csms.wait_for("StopTransaction")
    assert (stop.payload["idTag"], stop.payload["reason"]) == ("FREE-1", "Local")
    assert await daemon.stop() == 0
