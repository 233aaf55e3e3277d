"""evsed as a process: boot, heartbeat, reconnects, bad frames, signals, config errors."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
from pathlib import Path

from testcsms.server import TestCsms
from tests.integration.conftest import DaemonProcess, start_daemon, write_config


async def launch(daemons: list[DaemonProcess], config: Path, tmp: Path) -> DaemonProcess:
    daemon = await start_daemon(config, tmp)
    daemons.append(daemon)
    await daemon.wait_notification("READY=1")
    return daemon


async def boot_answered(csms: TestCsms) -> None:
    await csms.wait_for(lambda r: r.direction == "out" and r.message_type == 3
                        and r.action == "BootNotification")


async def test_boot_heartbeat_and_clean_stop(csms: TestCsms, daemons: list[DaemonProcess],
                                             tmp_path: Path) -> None:
    csms.heartbeat_interval = 1
    config = write_config(tmp_path, csms.url)
    before = config.read_bytes()
    daemon = await launch(daemons, config, tmp_path)
    [boot] = await csms.wait_for("BootNotification")
    assert boot.payload["chargePointVendor"] == "evsed"
    assert boot.payload["chargePointModel"] == "it-test"
    await csms.wait_for("Heartbeat", count=2, timeout=10)
    assert csms.connections[0].subprotocol == "ocpp1.6"
    assert csms.connections[0].path == "/ocpp/CP-IT-1"

    assert await daemon.stop() == 0
    await csms.wait_until(lambda: csms.connections[0].closed is not None)
    assert csms.connections[0].close_code == 1001
    await daemon.wait_notification("STOPPING=1", timeout=2)
    # The interval the CSMS gave is persisted as an overlay; /etc is never rewritten.
    assert config.read_bytes() == before
    db = sqlite3.connect(tmp_path / "state" / "evsed.db")
    assert db.execute("SELECT value FROM config_overlay WHERE key='HeartbeatInterval'"
                      ).fetchone() == ("1",)
    db.close()
    # Every frame went to the message log.
    log = (tmp_path / "msglog" / "ocpp.log").read_text()
    assert '"BootNotification"' in log and '"Heartbeat"' in log


async def test_ocpp201_negotiated(daemons: list[DaemonProcess], tmp_path: Path) -> None:
    async with TestCsms(subprotocols=("ocpp2.0.1", "ocpp1.6")) as csms:
        config = write_config(tmp_path, csms.url, versions='["ocpp2.0.1", "ocpp1.6"]')
        daemon = await launch(daemons, config, tmp_path)
        [boot] = await csms.wait_for("BootNotification")
        assert boot.payload["reason"] == "PowerUp"
        assert boot.payload["chargingStation"]["vendorName"] == "evsed"
        assert csms.connections[0].subprotocol == "ocpp2.0.1"
        await boot_answered(csms)
        result = await csms.call("CP-IT-1", "TriggerMessage",
                                 {"requestedMessage": "BootNotification"})
        assert result == {"status": "Rejected"}  # F06.FR.17: already accepted
        assert await daemon.stop() == 0


async def test_server_close_and_drop_lead_to_reconnect(csms: TestCsms,
                                                       daemons: list[DaemonProcess],
                                                       tmp_path: Path) -> None:
    daemon = await launch(daemons, write_config(tmp_path, csms.url), tmp_path)
    await boot_answered(csms)
    await csms.disconnect_all(code=1000)  # a clean close by the server
    await csms.wait_for_connection(count=2)
    await csms.disconnect_all(code=1011)
    await csms.wait_for_connection(count=3)
    # Registered once per process: reconnects do not resend BootNotification.
    await asyncio.sleep(0.5)
    assert len([r for r in csms.received if r.action == "BootNotification"
                and r.direction == "in" and r.message_type == 2]) == 1
    result = await csms.call("CP-IT-1", "TriggerMessage", {"requestedMessage": "Heartbeat"})
    assert result == {"status": "Accepted"}
    await csms.wait_for("Heartbeat")
    assert await daemon.stop() == 0


async def test_malformed_frames_answered_and_daemon_carries_on(
        csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path) -> None:
    daemon = await launch(daemons, write_config(tmp_path, csms.url), tmp_path)
    await csms.wait_for("BootNotification")
    cases = {
        "garbage{": ("-1", "FormationViolation"),
        '[2, "m1", "Reset"]': ("m1", "ProtocolError"),
        '[2, "m2", "Teleport", {}]': ("m2", "NotImplemented"),
        '[2, "m3", "TriggerMessage", {"requestedMessage": 1}]': ("m3",
                                                                 "TypeConstraintViolation"),
        '[2, "m4", "TriggerMessage", {}]': ("m4", "OccurenceConstraintViolation"),
        '[2, "m5", "TriggerMessage", {"requestedMessage": "Coffee"}]':
            ("m5", "PropertyConstraintViolation"),
        '[3, "nobody", {}]': None,  # a response matching nothing: logged and dropped
    }
    for frame in cases:
        mark = len(csms.received)
        await csms.send_raw("CP-IT-1", frame)
        expected = cases[frame]
        if expected is None:
            continue
        unique_id, code = expected
        [reply] = await csms.wait_for(
            lambda r: r.direction == "in" and r.message_type == 4, since=mark)
        assert (reply.unique_id, reply.payload["errorCode"]) == (unique_id, code), frame
    result = await csms.call("CP-IT-1", "TriggerMessage", {"requestedMessage": "Heartbeat"})
    assert result == {"status": "Accepted"}
    assert "matches no request in flight" in daemon.stderr()
    assert await daemon.stop() == 0


async def test_bad_config_exits_78_with_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, "ws://127.0.0.1:1/ocpp", csms_extra="connect_timeout_s = -4")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.main", "--config", str(config),
        stderr=asyncio.subprocess.PIPE)
    _, err = await process.communicate()
    assert process.returncode == 78
    text = err.decode().strip()
    assert len(text.splitlines()) == 1
    assert str(config) in text and "connect_timeout_s" in text and "-4" in text


async def test_half_written_config_exits_78(tmp_path: Path) -> None:
    config = write_config(tmp_path, "ws://127.0.0.1:1/ocpp")
    config.write_bytes(config.read_bytes()[:200])
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.main", "--config", str(config),
        stderr=asyncio.subprocess.PIPE)
    _, err = await process.communicate()
    assert process.returncode == 78
    assert str(config) in err.decode()


async def test_unusable_state_directory_exits_73_cleanly(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")
    config = write_config(tmp_path, "ws://127.0.0.1:1/ocpp")
    text = config.read_text().replace(str(tmp_path / "state"), str(blocker / "state"))
    config.write_text(text)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.main", "--config", str(config),
        stderr=asyncio.subprocess.PIPE)
    _, err = await process.communicate()
    assert process.returncode == 73
    assert "state" in err.decode() and str(blocker) in err.decode()
    assert blocker.read_text().startswith("a file")


async def test_external_websocket_control(csms: TestCsms, daemons: list[DaemonProcess],
                                          tmp_path: Path) -> None:
    config = write_config(tmp_path, csms.url, csms_extra="external_websocket_control = true")
    daemon = await launch(daemons, config, tmp_path)
    await csms.wait_for("BootNotification")
    daemon.process.send_signal(signal.SIGUSR1)  # local API: disconnect
    await csms.wait_until(lambda: csms.connections[0].closed is not None)
    await asyncio.sleep(1.0)  # well past the backoff: it must stay down
    assert len(csms.connections) == 1
    daemon.process.send_signal(signal.SIGUSR2)  # local API: connect
    await csms.wait_for_connection(count=2)
    assert await daemon.stop() == 0


def _payloads(csms: TestCsms, action: str) -> list[dict[str, object]]:
    return [r.payload for r in csms.received
            if r.direction == "in" and r.message_type == 2 and r.action == action]


async def test_ws_url_and_json_log_are_readable(csms: TestCsms, daemons: list[DaemonProcess],
                                                tmp_path: Path) -> None:
    daemon = await launch(daemons, write_config(tmp_path, csms.url), tmp_path)
    await csms.wait_for("BootNotification")
    assert await daemon.stop() == 0
    for line in (tmp_path / "msglog" / "ocpp.log").read_text().splitlines():
        parts = line.split(" ", 2)
        if parts[1] in ("in", "out"):
            json.loads(parts[2])


async def test_watchdog_pings_at_half_the_interval(csms: TestCsms, daemons: list[DaemonProcess],
                                                   tmp_path: Path) -> None:
    daemon = await start_daemon(write_config(tmp_path, csms.url), tmp_path,
                                extra_env={"WATCHDOG_USEC": "400000"})
    daemons.append(daemon)
    await daemon.wait_notification("READY=1")
    await daemon.wait_notifications("WATCHDOG=1", 4)  # every 0.2 s while the loop runs
    status = await daemon.wait_notification("STATUS=")
    assert "queued" in status or "serving" in status
    assert await daemon.stop() == 0


async def test_placeholder_url_waits_for_configuration(daemons: list[DaemonProcess],
                                                       tmp_path: Path) -> None:
    config = write_config(tmp_path, "ws://csms.invalid:9000/ocpp")
    daemon = await start_daemon(config, tmp_path)
    daemons.append(daemon)
    await daemon.wait_notification("READY=1")
    status = await daemon.wait_notification("STATUS=waiting for configuration")
    assert "placeholder" in status
    await asyncio.sleep(0.5)
    assert "csms.url is the placeholder" in daemon.stderr()
    assert "retrying" not in daemon.stderr()
    assert await daemon.stop() == 0


async def test_missing_serial_port_is_a_clear_configuration_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, "ws://127.0.0.1:1/ocpp")
    config.write_text(config.read_text().replace("[[evse]]\nid = 1\n", """[[evse]]
id = 1
[evse.pilot]
backend = "rapi"
[evse.pilot.options]
port = "/dev/ttyNOSUCH0"
[evse.contactor]
backend = "rapi"
[evse.contactor.options]
port = "/dev/ttyNOSUCH0"
[evse.meter]
backend = "modbus"
[evse.meter.options]
map = "sdm630"
transport = "tcp"
host = "127.0.0.1"
[evse.token_reader]
backend = "pn532"
[evse.token_reader.options]
port = "/dev/ttyNOSUCH1"
"""))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.main", "--config", str(config),
        stderr=asyncio.subprocess.PIPE)
    _, err = await process.communicate()
    assert process.returncode == 78
    text = err.decode()
    assert "/dev/ttyNOSUCH" in text and "evse[1]" in text
