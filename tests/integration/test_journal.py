"""The daemon's journal through a real systemd-journald (a namespace instance): the fields an
operator filters on (OCPP_ACTION, EVSE_ID, TRANSACTION_ID, MESSAGE_ID...) on real records."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

from service.journal import LogEvent
from testcsms.server import TestCsms
from tests.integration.conftest import DaemonProcess, sim, start_daemon, write_config
from tests.service.test_journal import journald  # noqa: F401  (fixture)


def entries(name: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["journalctl", f"--namespace={name}", "-o", "json", "--all", "--no-pager"],
        capture_output=True, check=False, timeout=30).stdout
    found = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [e for e in found if e.get("SYSLOG_IDENTIFIER") == "evsed"]


async def test_session_records_carry_operator_fields(
        csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str,
        journald: tuple[str, str]) -> None:  # noqa: F811
    name, socket_path = journald
    config = write_config(tmp_path, csms.url, dbus_address=dbus_address)
    logging_table = f'[logging]\nlevel = "info"\njournal_socket = "{socket_path}"'
    config.write_text(config.read_text().replace('[logging]\nlevel = "debug"', logging_table))
    daemon = await start_daemon(config, tmp_path)
    daemons.append(daemon)
    await csms.wait_for("StatusNotification")
    await sim(dbus_address, "Plug", "u", "1")
    await sim(dbus_address, "PresentRfid", "us", "1", "JOURNAL-TAG")
    await csms.wait_for("StartTransaction")
    await sim(dbus_address, "Unplug", "u", "1")
    await csms.wait_for("StopTransaction")
    assert await daemon.stop() == 0

    def wanted() -> list[dict[str, Any]]:
        return entries(name)

    found: list[dict[str, Any]] = []
    for _ in range(100):
        found = wanted()
        ids = {e.get("MESSAGE_ID") for e in found}
        if LogEvent.SESSION_STOPPED.value in ids:
            break
        await asyncio.sleep(0.1)
    by_id = {e.get("MESSAGE_ID"): e for e in found if e.get("MESSAGE_ID")}
    for event in (LogEvent.STARTED, LogEvent.CONNECTED, LogEvent.REGISTRATION,
                  LogEvent.SESSION_STARTED, LogEvent.SESSION_STOPPED, LogEvent.DISCONNECTED):
        assert event.value in by_id, event
    started = by_id[LogEvent.SESSION_STARTED.value]
    assert started["EVSE_ID"] == "1" and started.get("TRANSACTION_ID")
    start_frames = [e for e in found if e.get("OCPP_ACTION") == "StartTransaction"
                    and e.get("OCPP_DIRECTION") == "out"]
    assert start_frames and start_frames[0]["EVSE_ID"] == "1"
    assert start_frames[0]["OCPP_MESSAGE_ID"]
    assert start_frames[0]["PRIORITY"] == "6"
    # journalctl's own field match, as an operator types it
    out = subprocess.run(["journalctl", f"--namespace={name}", "--no-pager", "-o", "cat",
                          "OCPP_ACTION=StopTransaction"], capture_output=True, text=True,
                         check=False, timeout=30).stdout
    assert "StopTransaction" in out
