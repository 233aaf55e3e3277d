"""Network connection profiles through the real daemon (B09, B10) and OfflineThreshold: evsed
against two test CSMSs on loopback, migrating from A to B with SetNetworkProfile +
NetworkConfigurationPriority + Reset, falling back to A when the new profile is dead, keeping
the profiles across restarts, and reporting every status after a long outage."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from testcsms.server import Received, TestCsms
from tests.certs import make_ca, make_leaf
from tests.integration.conftest import DaemonProcess, start_daemon, write_config
from tests.integration.test_security import server_context

CP = "CP-IT-1"
V201 = '["ocpp2.0.1"]'


@pytest.fixture
async def csms_b() -> AsyncIterator[TestCsms]:
    server = TestCsms(heartbeat_interval=300)
    async with server:
        yield server


def dead_url() -> str:
    """A loopback port nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"ws://127.0.0.1:{port}/ocpp"


def connection_data(url: str, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "ocppVersion": "OCPP20",
        "ocppTransport": "JSON",
        "ocppCsmsUrl": url,
        "messageTimeout": 5,
        "securityProfile": 0,
        "ocppInterface": "Wired0",
    }
    data.update(extra)
    return data


async def set_profile(csms: TestCsms, slot: int, data: dict[str, Any]) -> dict[str, Any]:
    return await csms.call(
        CP, "SetNetworkProfile", {"configurationSlot": slot, "connectionData": data}
    )


async def set_variable(csms: TestCsms, variable: str, value: str) -> str:
    answer = await csms.call(
        CP,
        "SetVariables",
        {
            "setVariableData": [
                {
                    "component": {"name": "OCPPCommCtrlr"},
                    "variable": {"name": variable},
                    "attributeValue": value,
                }
            ]
        },
    )
    return str(answer["setVariableResult"][0]["attributeStatus"])


async def start(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, csms_extra: str = ""
) -> DaemonProcess:
    config = write_config(tmp_path, csms.url, versions=V201, csms_extra=csms_extra)
    since = len(csms.received)
    daemon = await start_daemon(config, tmp_path)
    daemons.append(daemon)
    await daemon.wait_notification("READY=1")
    await csms.wait_for("BootNotification", since=since)
    return daemon


def boots(csms: TestCsms) -> int:
    return sum(
        1
        for r in csms.received
        if r.direction == "in" and r.message_type == 2 and r.action == "BootNotification"
    )


async def test_migrate_to_a_new_csms_and_keep_it_across_restarts(
    csms: TestCsms, csms_b: TestCsms, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    daemon = await start(csms, daemons, tmp_path)
    # Bad profiles are refused and change nothing.
    for slot, data, reason in (
        (9, connection_data(csms_b.url), "InvalidConfSlot"),
        (1, connection_data(csms_b.url, ocppTransport="SOAP"), "InvalidNetworkConf"),
        (1, connection_data("http://127.0.0.1:1/x"), "InvalidNetworkConf"),
        (
            1,
            connection_data(csms_b.url.replace("ws:", "wss:"), securityProfile=2),
            "InvalidNetworkConf",
        ),
    ):
        answer = await set_profile(csms, slot, data)
        assert answer["status"] == "Rejected", (slot, data)
        assert answer["statusInfo"]["reasonCode"] == reason
    assert await set_variable(csms, "NetworkConfigurationPriority", "4") == "Rejected"

    assert await set_profile(csms, 1, connection_data(csms_b.url)) == {"status": "Accepted"}
    assert await set_variable(csms, "NetworkConfigurationPriority", "1,0") == "RebootRequired"
    a_boots = boots(csms)
    assert await csms.call(CP, "Reset", {"type": "Immediate"}) == {"status": "Accepted"}
    [boot] = await csms_b.wait_for("BootNotification", timeout=20)
    assert boot.payload["chargingStation"]["model"] == "it-test"
    await csms_b.wait_for(_status("Available"))
    assert boots(csms) == a_boots  # A saw no new registration
    assert daemon.process.returncode is None  # the same process, re-executed

    # A plain restart: still slot 1 first, so B again.
    assert await daemon.stop() == 0
    since_b = len(csms_b.received)
    restarted = await start_daemon(daemon.config, tmp_path)
    daemons.append(restarted)
    await csms_b.wait_for("BootNotification", since=since_b, timeout=20)
    await csms_b.wait_for(_status("Available"), since=since_b)
    await asyncio.sleep(0.3)  # its answer reaches the daemon
    assert boots(csms) == a_boots
    [result] = (
        await csms_b.call(
            CP,
            "GetVariables",
            {
                "getVariableData": [
                    {
                        "component": {"name": "OCPPCommCtrlr"},
                        "variable": {"name": "NetworkConfigurationPriority"},
                    }
                ]
            },
        )
    )["getVariableResult"]
    assert result["attributeValue"] == "1,0"

    # B goes away while connected: after the attempts on slot 1 the daemon moves on to slot 0
    # (A) and registers there anew (B10.FR.03, B10.FR.10), without a restart.
    since = len(csms.received)
    await csms_b.stop()
    await csms.wait_for("BootNotification", since=since, timeout=20)
    [status] = await csms.wait_for(_status("Available"), since=since)
    answered_by_b = {r.unique_id for r in csms_b.received if r.action == "StatusNotification"}
    assert status.unique_id not in answered_by_b  # a new report, not a resend
    assert "network profile slot 1 failed 3 times: trying slot 0" in restarted.stderr()


async def test_a_dead_profile_falls_back_to_the_working_one(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    daemon = await start(csms, daemons, tmp_path)
    assert await set_profile(csms, 2, connection_data(dead_url())) == {"status": "Accepted"}
    assert await set_variable(csms, "NetworkProfileConnectionAttempts", "2") == "Accepted"
    assert await set_variable(csms, "NetworkConfigurationPriority", "2,0") == "RebootRequired"
    since = len(csms.received)
    assert await csms.call(CP, "Reset", {"type": "Immediate"}) == {"status": "Accepted"}
    await csms.wait_for("BootNotification", since=since, timeout=20)
    log = daemon.stderr()
    assert "network profile slot 2 failed 2 times: trying slot 0" in log
    assert log.count("connection refused") >= 2

    # Only the dead slot in the list: the last working profile (slot 0) is the fallback.
    assert await set_variable(csms, "NetworkConfigurationPriority", "2") == "RebootRequired"
    since = len(csms.received)
    assert await csms.call(CP, "Reset", {"type": "Immediate"}) == {"status": "Accepted"}
    await csms.wait_for("BootNotification", since=since, timeout=20)
    assert "falling back to slot 0, the last one that worked" in daemon.stderr()


def _status(status: str) -> Callable[[Received], bool]:
    def match(r: Received) -> bool:
        return (
            r.direction == "in"
            and r.message_type == 2
            and r.action == "StatusNotification"
            and r.payload.get("connectorStatus") == status
        )

    return match


async def _outage(csms: TestCsms, daemon: DaemonProcess, seconds: float) -> int:
    """Drop the link for `seconds` (external websocket control); return the frame mark after
    the reconnect."""
    closed = len([c for c in csms.connections if c.closed is not None])
    daemon.process.send_signal(signal.SIGUSR1)
    await csms.wait_until(
        lambda: len([c for c in csms.connections if c.closed is not None]) > closed
    )
    await asyncio.sleep(seconds)
    count = len(csms.connections)
    mark = len(csms.received)
    daemon.process.send_signal(signal.SIGUSR2)
    await csms.wait_for_connection(count=count + 1)
    return mark


async def test_statuses_after_an_outage_longer_than_offline_threshold(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    daemon = await start(csms, daemons, tmp_path, "external_websocket_control = true")
    await csms.wait_for(_status("Available"))
    assert await set_variable(csms, "OfflineThreshold", "60") == "Accepted"
    mark = await _outage(csms, daemon, 0.5)
    await asyncio.sleep(1.0)
    assert not any(_status("Available")(r) for r in csms.received[mark:])

    assert await set_variable(csms, "OfflineThreshold", "1") == "Accepted"
    mark = await _outage(csms, daemon, 1.5)
    [status] = await csms.wait_for(_status("Available"), since=mark)
    assert status.payload["evseId"] == 1 and status.payload["connectorId"] == 1


# ---------------------------------------------------------------------------- variables
PASSWORD = "it-secret-0123456789"
PLACEHOLDER = "ws://csms.invalid/ocpp"


@pytest.fixture
async def auth_csms() -> AsyncIterator[TestCsms]:
    server = TestCsms(heartbeat_interval=300, basic_auth={CP: PASSWORD})
    async with server:
        yield server


@pytest.fixture
async def auth_csms_b() -> AsyncIterator[TestCsms]:
    server = TestCsms(heartbeat_interval=300, basic_auth={CP: PASSWORD})
    async with server:
        yield server


async def get_variables(csms: TestCsms, *names: tuple[str, dict[str, str]]) -> list[str]:
    answer = await csms.call(
        CP,
        "GetVariables",
        {
            "getVariableData": [
                {"component": {"name": component}, "variable": variable}
                for component, variable in names
            ]
        },
    )
    results = answer["getVariableResult"]
    assert all(r["attributeStatus"] == "Accepted" for r in results), results
    return [str(r.get("attributeValue")) for r in results]


async def set_one(csms: TestCsms, component: str, variable: str, value: str) -> dict[str, Any]:
    answer = await csms.call(
        CP,
        "SetVariables",
        {
            "setVariableData": [
                {
                    "component": {"name": component},
                    "variable": {"name": variable},
                    "attributeValue": value,
                }
            ]
        },
    )
    return dict(answer["setVariableResult"][0])


IN_USE = (
    ("SecurityCtrlr", {"name": "SecurityProfile"}),
    ("OCPPCommCtrlr", {"name": "MessageTimeout", "instance": "Default"}),
    ("SecurityCtrlr", {"name": "AllowSecurityProfileDowngrade"}),
    ("OCPPCommCtrlr", {"name": "NetworkConfigurationPriority"}),
)


async def test_priority_security_profile_and_downgrade_on_the_wire(
    auth_csms: TestCsms,
    auth_csms_b: TestCsms,
    daemons: list[DaemonProcess],
    tmp_path: Path,
) -> None:
    """Security profile 1 (Basic auth) against A; a profile for B in slot 1; the variables
    report the profile in use before and after the move; no downgrade to 0, even allowed."""
    config = write_config(
        tmp_path,
        auth_csms.url,
        versions=V201,
        security_profile=1,
        csms_extra=f'basic_auth_password = "{PASSWORD}"',
    )
    daemon = await start_daemon(config, tmp_path)
    daemons.append(daemon)
    await auth_csms.wait_for("BootNotification", timeout=20)
    assert await get_variables(auth_csms, *IN_USE) == ["1", "2", "false", "0"]

    # A priority naming an empty, unknown or repeated slot is refused at once.
    for value in ("1", "1,0", "0,0", "a", "7"):
        result = await set_one(auth_csms, "OCPPCommCtrlr", "NetworkConfigurationPriority", value)
        assert result["attributeStatus"] == "Rejected", value
        assert result["attributeStatusInfo"]["reasonCode"] == "InvalidValue"

    # No downgrade to profile 0, and AllowSecurityProfileDowngrade does not change that.
    plain = connection_data(auth_csms_b.url, securityProfile=0)
    for allow in ("false", "true"):
        result = await set_one(auth_csms, "SecurityCtrlr", "AllowSecurityProfileDowngrade", allow)
        assert result["attributeStatus"] == "Accepted"
        answer = await set_profile(auth_csms, 1, plain)
        assert answer["status"] == "Rejected"
        assert answer["statusInfo"]["reasonCode"] == "NoSecurityDowngrade"

    secured = connection_data(auth_csms_b.url, securityProfile=1, messageTimeout=7)
    assert await set_profile(auth_csms, 1, secured) == {"status": "Accepted"}
    assert await set_variable(auth_csms, "NetworkConfigurationPriority", "1,0") == "RebootRequired"
    assert await csms_call_reset(auth_csms) == {"status": "Accepted"}
    await auth_csms_b.wait_for("BootNotification", timeout=20)
    await auth_csms_b.wait_for(_status("Available"))
    # B's profile is in use; AllowSecurityProfileDowngrade survived the restart.
    assert await get_variables(auth_csms_b, *IN_USE) == ["1", "7", "true", "1,0"]
    assert "connected with network profile slot 1 (security profile 1)" in daemon.stderr()


async def csms_call_reset(csms: TestCsms) -> dict[str, Any]:
    return dict(await csms.call(CP, "Reset", {"type": "Immediate"}))


async def test_a_placeholder_url_does_not_block_stored_profiles(
    csms: TestCsms, csms_b: TestCsms, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    """The configuration file goes back to the packaged placeholder (a reinstall); the state
    directory keeps B's profile: the daemon connects to B instead of waiting."""
    daemon = await start(csms, daemons, tmp_path)
    assert await set_profile(csms, 1, connection_data(csms_b.url)) == {"status": "Accepted"}
    assert await set_variable(csms, "NetworkConfigurationPriority", "1,0") == "RebootRequired"
    assert await daemon.stop() == 0

    config = write_config(tmp_path, PLACEHOLDER, versions=V201)
    restarted = await start_daemon(config, tmp_path)
    daemons.append(restarted)
    await restarted.wait_notification("READY=1")
    assert "not connecting; set the CSMS URL" not in restarted.stderr()
    [boot] = await csms_b.wait_for("BootNotification", timeout=20)
    assert boot.payload["chargingStation"]["model"] == "it-test"
    assert "slot 0 is in the priority list but the [csms] url is the placeholder" in (
        restarted.stderr()
    )
    assert "csms.invalid" not in "".join(
        line for line in restarted.stderr_lines if "connect" in line and "cannot" in line
    )


async def test_downgrade_from_3_to_2_over_real_tls(
    daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    """Security profile 3 (TLS with a client certificate) against A. A profile 2 (TLS with
    Basic auth) for B is refused while AllowSecurityProfileDowngrade is false, accepted once it
    is true (profile 1 stays refused); after the move the charger runs profile 2 against B and
    reports it."""
    ca = make_ca(tmp_path, "csms-ca")
    server = make_leaf(ca, tmp_path, "csms")
    client_ca = make_ca(tmp_path, "cp-ca")
    client = make_leaf(client_ca, tmp_path, CP, client=True)
    a = TestCsms(heartbeat_interval=300, ssl_context=server_context(server, client_ca))
    b = TestCsms(
        heartbeat_interval=300, ssl_context=server_context(server), basic_auth={CP: PASSWORD}
    )
    async with a, b:
        assert a.url.startswith("wss://") and b.url.startswith("wss://")
        credentials = "\n".join(
            [
                f'ca_bundle = "{ca.cert_path}"',
                f'basic_auth_password = "{PASSWORD}"',
                f'client_certificate = "{client.cert_path}"',
                f'client_key = "{client.key_path}"',
            ]
        )
        config = write_config(
            tmp_path, a.url, versions=V201, security_profile=3, csms_extra=credentials
        )
        daemon = await start_daemon(config, tmp_path)
        daemons.append(daemon)
        await a.wait_for("BootNotification", timeout=20)
        assert a.connections[0].peer_cert is not None  # the client certificate was shown
        assert await get_variables(a, *IN_USE) == ["3", "2", "false", "0"]

        basic = connection_data(b.url, securityProfile=2, messageTimeout=9)
        answer = await set_profile(a, 1, basic)
        assert answer["status"] == "Rejected"
        assert answer["statusInfo"]["reasonCode"] == "NoSecurityDowngrade"
        result = await set_one(a, "SecurityCtrlr", "AllowSecurityProfileDowngrade", "true")
        assert result["attributeStatus"] == "Accepted"
        weaker = connection_data(b.url.replace("wss://", "ws://"), securityProfile=1)
        answer = await set_profile(a, 2, weaker)
        assert answer["status"] == "Rejected"
        assert answer["statusInfo"]["reasonCode"] == "NoSecurityDowngrade"
        assert await set_profile(a, 1, basic) == {"status": "Accepted"}

        assert await set_variable(a, "NetworkConfigurationPriority", "1,0") == "RebootRequired"
        assert await csms_call_reset(a) == {"status": "Accepted"}
        await b.wait_for("BootNotification", timeout=20)
        assert b.connections[0].authorization is not None  # Basic auth over TLS
        assert b.connections[0].peer_cert is None  # no client certificate under profile 2
        assert await get_variables(b, *IN_USE) == ["2", "9", "true", "1,0"]
        assert "connected with network profile slot 1 (security profile 2)" in daemon.stderr()
        assert await daemon.stop() == 0
