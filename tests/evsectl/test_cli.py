"""evsectl end to end: the real evsed (simulated hardware) on a private D-Bus, the test CSMS,
and evsectl run as a process (`python -m evsectl --bus <address> ...`) as a user would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testcsms.server import Received, TestCsms
from tests.integration.conftest import (
    BUS_CONF,
    REPO,
    DaemonProcess,
    sim,
    start_daemon,
    write_config,
)

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        shutil.which("dbus-daemon") is None or shutil.which("busctl") is None,
        reason="needs dbus-daemon and busctl",
    ),
]

CP = "CP-IT-1"
LIMIT = 30.0  # bound against hangs only


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def evsectl(*args: str, env: dict[str, str] | None = None, user: str | None = None) -> Run:
    command = [sys.executable, "-m", "evsectl", *args]
    full_env = dict(os.environ)
    full_env.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
    full_env.update(env or {})
    if user is not None:
        # The venv's interpreter lives under /root; another user runs the system Python with
        # the venv's packages on its path.
        site = next(Path(sys.prefix, "lib").glob("python3*/site-packages"))
        command = [
            "runuser",
            "-u",
            user,
            "--",
            "env",
            f"PYTHONPATH={site}:{REPO}",
            "PYTHONDONTWRITEBYTECODE=1",
            "/usr/bin/python3",
            "-m",
            "evsectl",
            *args,
        ]
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=full_env,
        cwd=REPO,
    )
    out, err = await asyncio.wait_for(process.communicate(), LIMIT)
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


def assert_one_error_line(run: Run, code: int, *fragments: str) -> None:
    assert run.code == code, run
    lines = run.err.splitlines()
    assert len(lines) == 1, run.err
    assert lines[0].startswith("evsectl"), lines
    assert "Traceback" not in run.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def calls(csms: TestCsms, action: str) -> list[dict[str, Any]]:
    return [
        r.payload
        for r in csms.received
        if r.direction == "in" and r.message_type == 2 and r.action == action
    ]


async def wait_status(csms: TestCsms, connector: int, status: str, since: int = 0) -> None:
    def seen(r: Received) -> bool:
        return (
            r.direction == "in"
            and r.message_type == 2
            and r.action == "StatusNotification"
            and r.payload["connectorId"] == connector
            and r.payload["status"] == status
        )

    await csms.wait_for(seen, since=since)


async def started(
    csms: TestCsms,
    daemons: list[DaemonProcess],
    tmp_path: Path,
    address: str,
    *,
    evses: int = 1,
    ocpp_extra: str = "",
) -> DaemonProcess:
    config = write_config(
        tmp_path, csms.url, dbus_address=address, evses=evses, ocpp_extra=ocpp_extra
    )
    daemon = await start_daemon(config, tmp_path)
    daemons.append(daemon)
    await daemon.wait_notification("READY=1")
    for evse_id in range(1, evses + 1):
        await wait_status(csms, evse_id, "Available")
    return daemon


# --------------------------------------------------------------------------- reading


async def test_status_table_json_evse_and_firmware(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    daemon = await started(csms, daemons, tmp_path, dbus_address, evses=2)
    bus = ("--bus", dbus_address)

    run = await evsectl(*bus, "status")
    assert (run.code, run.err) == (0, ""), run
    head, table = run.out.split("\n\n")
    fields = dict(
        re.fullmatch(r"(.+?)  +(.*)", line).groups()  # type: ignore[union-attr]
        for line in head.splitlines()
    )
    assert fields["Charge point"] == CP
    assert fields["Vendor/model"] == "evsed / it-test"
    assert fields["Firmware"] == "0.1.0"
    assert fields["CSMS"] == "connected"
    assert fields["OCPP version"] == "1.6"
    assert fields["Registration"] == "Accepted"
    assert fields["Queued"] == "0 messages"
    rows = [line.split() for line in table.splitlines()]
    assert rows[0] == [
        "EVSE",
        "STATUS",
        "ERROR",
        "AVAILABILITY",
        "SESSION",
        "TRANSACTION",
        "POWER",
        "kW",
        "ENERGY",
        "kWh",
        "OFFERED",
        "A",
    ]
    assert [row[:4] for row in rows[1:]] == [
        ["1", "Available", "NoError", "Operative"],
        ["2", "Available", "NoError", "Operative"],
    ]

    # A charging session shows up in the table and in the JSON document.
    await sim(dbus_address, "Plug", "u", "2")
    await sim(dbus_address, "PresentRfid", "us", "2", "TAG-TABLE")
    [start] = await csms.wait_for("StartTransaction")
    await sim(dbus_address, "SetEvReady", "ub", "2", "true")
    await wait_status(csms, 2, "Charging")

    async def charging_row() -> list[str]:
        while True:
            run = await evsectl(*bus, "status")
            row = run.out.splitlines()[-1].split()
            if row[1] == "Charging" and float(row[6]) > 0:
                return row
            await asyncio.sleep(0.1)

    row = await asyncio.wait_for(charging_row(), LIMIT)
    assert row[:6] == ["2", "Charging", "NoError", "Operative", "TAG-TABLE", "1"]
    assert float(row[8]) > 6  # offered current, A

    document = (await evsectl(*bus, "--json", "status")).json()
    assert document["station"]["charge_point_id"] == CP
    assert document["station"]["evse_ids"] == [1, 2]
    assert document["station"]["firmware_status"] == "Idle"
    assert document["station"]["queued_messages"] >= 0
    evse2 = document["evses"][1]
    assert evse2["id"] == 2 and evse2["status"] == "Charging"
    assert evse2["id_tag"] == "TAG-TABLE" and evse2["transaction_id"] == "1"
    assert evse2["power_w"] > 0 and len(evse2["voltage_v"]) == 3
    assert set(evse2) >= {
        "error_code",
        "availability",
        "pilot_state",
        "session_id",
        "energy_wh",
        "session_energy_wh",
        "current_a",
        "offered_current_a",
    }
    # --json after the command works as well.
    assert (await evsectl("status", "--json", *bus)).json()["evses"][0]["status"] == "Available"

    one = await evsectl(*bus, "evse", "2")
    assert one.code == 0 and "Pilot state     C" in one.out and "TAG-TABLE" in one.out
    assert (await evsectl(*bus, "--json", "evse", "2", "status")).json()["pilot_state"] == "C"

    firmware = await evsectl(*bus, "firmware", "status")
    assert firmware.code == 0
    lines = dict(line.split(None, 1) for line in firmware.out.splitlines())
    assert (lines["Firmware"], lines["Update"], lines["State"]) == ("0.1.0", "Idle", "Idle")
    assert lines["Backend"] == "none" and lines["Request"] == "-"
    document = (await evsectl(*bus, "--json", "firmware")).json()
    assert document["firmware_version"] == "0.1.0" and document["status"] == "Idle"
    assert (document["state"], document["progress"], document["backend"]) == ("Idle", 0, "none")

    unknown = await evsectl(*bus, "evse", "9")
    assert_one_error_line(unknown, 1, "no EVSE 9", "1, 2")
    assert start.payload["idTag"] == "TAG-TABLE"
    assert await daemon.stop() == 0


# --------------------------------------------------------------------------- commands


async def test_evse_start_stop_enable_disable(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    daemon = await started(csms, daemons, tmp_path, dbus_address)
    bus = ("--bus", dbus_address)
    await sim(dbus_address, "Plug", "u", "1")
    await wait_status(csms, 1, "Preparing")

    run = await evsectl(*bus, "evse", "1", "start", "--id-tag", "TAG-CLI")
    assert run.code == 0 and run.err == "", run
    assert run.out.startswith("EVSE 1: session ") and "TAG-CLI" in run.out
    [auth] = await csms.wait_for("Authorize")
    assert auth.payload == {"idTag": "TAG-CLI"}
    [start] = await csms.wait_for("StartTransaction")
    assert start.payload["connectorId"] == 1 and start.payload["idTag"] == "TAG-CLI"

    busy = await evsectl(*bus, "evse", "1", "start", "--id-tag", "OTHER")
    assert_one_error_line(busy, 1, "already")

    # disable during the transaction: Scheduled, applied when it ends.
    scheduled = await evsectl(*bus, "--json", "evse", "1", "disable")
    assert scheduled.code == 0
    assert scheduled.json() == {"evse": 1, "availability": "Inoperative", "result": "Scheduled"}

    mark = len(csms.received)
    stopped = await evsectl(*bus, "evse", "1", "stop")
    assert (stopped.code, stopped.out.strip()) == (0, "EVSE 1: session stopped")
    [stop] = await csms.wait_for("StopTransaction")
    assert stop.payload["reason"] == "Local" and stop.payload["transactionId"] == 1
    await wait_status(csms, 1, "Unavailable", since=mark)

    again = await evsectl(*bus, "evse", "1", "stop")
    assert_one_error_line(again, 1, "no session")
    refused = await evsectl(*bus, "evse", "1", "start")
    assert_one_error_line(refused, 1, "Unavailable")

    mark = len(csms.received)
    enabled = await evsectl(*bus, "evse", "1", "enable")
    assert (enabled.code, enabled.out.strip()) == (0, "EVSE 1: Operative (Accepted)")
    # The EV is still plugged in after the stop: Finishing.
    await wait_status(csms, 1, "Finishing", since=mark)

    # Without --id-tag the local default token is used.
    default = await evsectl(*bus, "--json", "evse", "1", "start")
    assert default.code == 0 and default.json()["id_tag"] == "LOCAL-evsectl"
    starts = await csms.wait_for("StartTransaction", count=2)
    assert starts[1].payload["idTag"] == "LOCAL-evsectl"
    assert (await evsectl(*bus, "evse", "1", "stop")).code == 0
    await csms.wait_for("StopTransaction", count=2)

    mark = len(csms.received)
    disabled = await evsectl(*bus, "evse", "1", "disable")
    assert (disabled.code, disabled.out.strip()) == (0, "EVSE 1: Inoperative (Accepted)")
    await wait_status(csms, 1, "Unavailable", since=mark)

    bad_tag = await evsectl(*bus, "evse", "1", "start", "--id-tag", "X" * 30)
    assert_one_error_line(bad_tag, 1, "idTag")
    unknown = await evsectl(*bus, "evse", "7", "stop")
    assert_one_error_line(unknown, 1, "no EVSE 7", "has EVSE 1")
    assert len(calls(csms, "StartTransaction")) == 2
    assert await daemon.stop() == 0


async def test_config_get_and_set(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    daemon = await started(csms, daemons, tmp_path, dbus_address)
    bus = ("--bus", dbus_address)

    everything = await evsectl(*bus, "--json", "config", "get")
    entries = everything.json()
    assert everything.code == 0 and len(entries) > 30
    by_key = {e["key"]: e for e in entries}
    assert by_key["NumberOfConnectors"] == {
        "key": "NumberOfConnectors",
        "value": "1",
        "readonly": True,
        "reboot_required": False,
    }
    assert by_key["WebSocketPingInterval"]["reboot_required"] is True
    # the same keys and values the CSMS sees
    conf = await csms.call(CP, "GetConfiguration", {})
    assert {k["key"]: k["value"] for k in conf["configurationKey"]} == {
        k: e["value"] for k, e in by_key.items()
    }

    table = await evsectl(*bus, "config", "get", "HeartbeatInterval", "NumberOfConnectors")
    assert table.code == 0
    assert [line.split() for line in table.out.splitlines()] == [
        ["KEY", "VALUE", "NOTES"],
        ["HeartbeatInterval", "300"],
        ["NumberOfConnectors", "1", "read-only"],
    ]

    accepted = await evsectl(*bus, "config", "set", "HeartbeatInterval", "600")
    assert (accepted.code, accepted.out.strip()) == (0, "HeartbeatInterval = 600 (Accepted)")
    seen = await csms.call(CP, "GetConfiguration", {"key": ["HeartbeatInterval"]})
    assert seen["configurationKey"][0]["value"] == "600"

    normalized = await evsectl(
        *bus,
        "--json",
        "config",
        "set",
        "MeterValuesSampledData",
        "Energy.Active.Import.Register, Power.Active.Import",
    )
    assert normalized.code == 0
    assert normalized.json() == {
        "key": "MeterValuesSampledData",
        "status": "Accepted",
        "value": "Energy.Active.Import.Register,Power.Active.Import",
    }

    reboot = await evsectl(*bus, "config", "set", "WebSocketPingInterval", "30")
    assert reboot.code == 0 and "RebootRequired" in reboot.out

    rejected = await evsectl(*bus, "config", "set", "HeartbeatInterval", "soon")
    assert_one_error_line(rejected, 1, "Rejected", "'soon'", "HeartbeatInterval", "'600'")
    assert rejected.out == ""
    readonly = await evsectl(*bus, "config", "set", "NumberOfConnectors", "4")
    assert_one_error_line(readonly, 1, "Rejected", "read-only")
    unsupported = await evsectl(*bus, "--json", "config", "set", "NoSuchKey", "1")
    assert_one_error_line(unsupported, 1, "NotSupported", "NoSuchKey")
    assert unsupported.json() == {"key": "NoSuchKey", "value": "1", "status": "NotSupported"}
    unknown = await evsectl(*bus, "config", "get", "HeartbeatInterval", "Nope", "Nada")
    assert_one_error_line(unknown, 1, "unknown configuration keys", "'Nope'", "'Nada'")
    assert unknown.out == ""

    # Local changes persist like the CSMS's: they survive a restart.
    assert await daemon.stop() == 0
    daemon = await start_daemon(daemon.config, tmp_path)
    daemons.append(daemon)
    await daemon.wait_notification("READY=1")
    # (HeartbeatInterval is not checked: the boot's interval overrides it.)
    after = (
        await evsectl(
            *bus, "--json", "config", "get", "MeterValuesSampledData", "WebSocketPingInterval"
        )
    ).json()
    assert [(e["key"], e["value"]) for e in after] == [
        ("MeterValuesSampledData", "Energy.Active.Import.Register,Power.Active.Import"),
        ("WebSocketPingInterval", "30"),
    ]
    assert await daemon.stop() == 0


# --------------------------------------------------------------------------- log


@contextlib.asynccontextmanager
async def following(*args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "evsectl",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def read_lines(
    process: asyncio.subprocess.Process, until: str | Callable[[str], bool]
) -> list[str]:
    """Lines of stdout up to the first one containing `until` (or for which it is true)."""
    assert process.stdout is not None
    done = until if callable(until) else (lambda line: until in line)
    lines: list[str] = []
    async with asyncio.timeout(LIMIT):
        while not lines or not done(lines[-1]):
            line = await process.stdout.readline()
            assert line, f"evsectl ended; got {lines}"
            lines.append(line.decode().rstrip("\n"))
    return lines


async def test_log_follow_and_history(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    daemon = await started(csms, daemons, tmp_path, dbus_address)
    bus = ("--bus", dbus_address)

    history = await evsectl(*bus, "log", "-n", "2")
    assert history.code == 0 and history.err == ""
    first, second = history.out.splitlines()
    assert first.split()[1:4] == ["→", "CALL", "StatusNotification"]
    assert second.split()[1:] == ["←", "RESULT", "StatusNotification", "{}"]

    async with (
        following(*bus, "log", "--follow", "-n", "1") as text,
        following(*bus, "log", "-f", "-n", "1", "--json") as jsonl,
        following(*bus, "log", "-f", "-n", "1", "--raw") as raw,
    ):
        # Each prints one frame of history once it has subscribed to the live frames.
        for process in (text, jsonl, raw):
            await read_lines(process, lambda line: True)
        answer = await csms.call(CP, "TriggerMessage", {"requestedMessage": "Heartbeat"})
        assert answer == {"status": "Accepted"}
        lines = await read_lines(text, "RESULT Heartbeat")
        json_lines = await read_lines(
            jsonl, lambda line: '"RESULT"' in line and '"Heartbeat"' in line
        )
        raw_lines = await read_lines(raw, "currentTime")
        for process in (text, jsonl, raw):
            process.send_signal(signal.SIGINT if process is text else signal.SIGTERM)
        codes = [await asyncio.wait_for(p.wait(), LIMIT) for p in (text, jsonl, raw)]
        assert codes == [0, 0, 0]
        assert text.stderr is not None
        assert await text.stderr.read() == b""

    parts = [line.split(None, 4) for line in lines]
    assert [p[1:4] for p in parts] == [
        ["←", "CALL", "TriggerMessage"],
        ["→", "RESULT", "TriggerMessage"],
        ["→", "CALL", "Heartbeat"],
        ["←", "RESULT", "Heartbeat"],
    ]
    assert parts[0][4] == '{"requestedMessage":"Heartbeat"}'
    assert parts[1][4] == '{"status":"Accepted"}'
    assert json.loads(parts[3][4])["currentTime"]

    decoded = [json.loads(line) for line in json_lines]
    assert [(d["direction"], d["type"], d["action"]) for d in decoded] == [
        ("in", "CALL", "TriggerMessage"),
        ("out", "RESULT", "TriggerMessage"),
        ("out", "CALL", "Heartbeat"),
        ("in", "RESULT", "Heartbeat"),
    ]
    assert decoded[0]["payload"] == {"requestedMessage": "Heartbeat"}
    assert decoded[0]["id"] == decoded[1]["id"] != decoded[2]["id"] == decoded[3]["id"]
    assert decoded[0]["time"].endswith("Z") and "frame" not in decoded[0]

    assert len(raw_lines) == 4
    frames = [json.loads(line.split(None, 2)[2]) for line in raw_lines]
    assert [f[0] for f in frames] == [2, 3, 2, 3] and frames[0][2] == "TriggerMessage"

    # A CALLERROR and a frame that is not OCPP at all, decoded in history.
    await csms.send_raw(CP, "this is not json")
    await csms.wait_for(lambda r: r.direction == "in" and r.message_type == 4)
    shown = await evsectl(*bus, "log", "-n", "2")
    assert shown.code == 0
    bad, error = shown.out.splitlines()
    assert bad.split(None, 3)[1:] == ["←", "INVALID", "this is not json"]
    assert error.split()[1:4] == ["→", "ERROR", "?"] and "FormationViolation" in error
    as_json = [
        json.loads(line)
        for line in (await evsectl(*bus, "--json", "log", "-n", "2")).out.splitlines()
    ]
    assert as_json[0]["type"] == "INVALID" and as_json[0]["frame"] == "this is not json"
    assert as_json[1]["error_code"] == "FormationViolation"
    assert await daemon.stop() == 0


# --------------------------------------------------------------------------- failures


async def test_no_daemon_unreachable_bus_and_timeout(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    for args in (
        ("status",),
        ("config", "get"),
        ("log", "-f"),
        ("evse", "1", "stop"),
        ("firmware", "status"),
    ):
        run = await evsectl("--bus", dbus_address, *args)
        assert_one_error_line(run, 3, "evsed is not running")
    missing = f"unix:path={tmp_path}/no-such-socket"
    assert_one_error_line(await evsectl("--bus", missing, "status"), 3, "cannot connect")
    # The default is the system bus; DBUS_SYSTEM_BUS_ADDRESS is honoured.
    via_env = await evsectl("status", env={"DBUS_SYSTEM_BUS_ADDRESS": missing})
    assert_one_error_line(via_env, 3, "system bus")
    via_env = await evsectl("status", env={"DBUS_SYSTEM_BUS_ADDRESS": dbus_address})
    assert_one_error_line(via_env, 3, "evsed is not running")

    # A daemon that does not answer (stopped with SIGSTOP): exit 1 after --timeout.
    daemon = await started(csms, daemons, tmp_path, dbus_address)
    via_env = await evsectl("status", env={"DBUS_SYSTEM_BUS_ADDRESS": dbus_address})
    assert via_env.code == 0 and CP in via_env.out
    daemon.process.send_signal(signal.SIGSTOP)
    try:
        run = await evsectl("--bus", dbus_address, "--timeout", "0.5", "status")
        assert_one_error_line(run, 1, "did not answer within 0.5 s")
    finally:
        daemon.process.send_signal(signal.SIGCONT)
    assert (await evsectl("--bus", dbus_address, "status")).code == 0
    assert await daemon.stop() == 0


async def test_follow_reports_the_daemon_leaving_and_returning(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    daemon = await started(csms, daemons, tmp_path, dbus_address)
    async with following("--bus", dbus_address, "log", "-f", "-n", "1") as process:
        assert process.stdout is not None and process.stderr is not None
        await read_lines(process, "StatusNotification")  # the history line: subscribed
        assert await daemon.stop() == 0
        async with asyncio.timeout(LIMIT):
            left = await process.stderr.readline()
        assert b"evsed left the bus" in left
        daemon = await start_daemon(daemon.config, tmp_path)
        daemons.append(daemon)
        async with asyncio.timeout(LIMIT):
            back = await process.stderr.readline()
        assert b"evsed is back" in back
        await csms.wait_for_connection(CP, count=2)
        await daemon.wait_notification("READY=1")
        await csms.call(CP, "TriggerMessage", {"requestedMessage": "Heartbeat"})
        await read_lines(process, "RESULT Heartbeat")  # frames of the new daemon
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), LIMIT) == 0
    assert await daemon.stop() == 0


async def test_follow_ends_when_the_bus_goes_away(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    bus_daemon = subprocess.Popen(
        ["dbus-daemon", f"--config-file={BUS_CONF}", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert bus_daemon.stdout is not None
        address = bus_daemon.stdout.readline().strip()
        await started(csms, daemons, tmp_path, address)
        async with following("--bus", address, "log", "-f", "-n", "1") as process:
            assert process.stderr is not None
            await read_lines(process, lambda line: True)
            bus_daemon.terminate()
            bus_daemon.wait(timeout=10)
            assert await asyncio.wait_for(process.wait(), LIMIT) == 3
            errors = (await process.stderr.read()).decode().splitlines()
            assert "lost the connection" in errors[-1], errors
            assert all(line.startswith("evsectl: ") for line in errors), errors
    finally:
        if bus_daemon.poll() is None:
            bus_daemon.terminate()
            bus_daemon.wait(timeout=10)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("bogus",), "invalid choice: 'bogus'"),
        (("evse", "x", "start"), "invalid EVSE id 'x'"),
        (("evse", "0", "stop"), "invalid EVSE id '0'"),
        (("evse", "1", "launch"), "invalid choice: 'launch'"),
        (("config",), "an action is required"),
        (("config", "set", "HeartbeatInterval"), "required: VALUE"),
        (("log", "-n", "many"), "invalid number of lines"),
        (("--timeout", "0", "status"), "invalid timeout"),
        (("--bus", "nonsense", "status"), "--bus must be system, session or a D-Bus address"),
        (("completion", "fish"), "invalid choice: 'fish'"),
        (("status", "--frobnicate"), "unrecognized arguments: --frobnicate"),
    ],
)
async def test_usage_errors(args: tuple[str, ...], fragment: str) -> None:
    run = await evsectl(*args)
    assert_one_error_line(run, 2, fragment)
    assert run.out == ""


async def test_help_documents_commands_exit_codes_and_examples() -> None:
    run = await evsectl("--help")
    assert run.code == 0 and run.err == ""
    for text in (
        "status",
        "evse",
        "config",
        "log",
        "firmware",
        "completion",
        "--bus",
        "--json",
        "exit status:",
        "3  evsed is not running",
        "4  permission denied",
        "examples:",
        "evsectl evse 1 start --id-tag",
    ):
        assert text in run.out, text
    evse_help = await evsectl("evse", "--help")
    assert "LOCAL-evsectl" in evse_help.out and "Scheduled" in evse_help.out
    config_help = await evsectl("config", "--help")
    assert "RebootRequired" in config_help.out and "NotSupported" in config_help.out


# --------------------------------------------------------------------------- permissions

POLICY = REPO / "packaging" / "dbus" / "org.evsed.conf"

SYSTEM_LIKE_BUS = """<!DOCTYPE busconfig PUBLIC
 "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>
  <include>{policy}</include>
</busconfig>
"""


@pytest.fixture
def system_like_bus() -> Iterator[str]:
    """A private bus with the system bus's default policy and evsed's packaged policy; its
    socket in a directory other users can reach."""
    directory = Path(tempfile.mkdtemp(prefix="evsectl-bus-", dir="/tmp"))
    directory.chmod(0o755)
    conf = directory / "bus.conf"
    conf.write_text(SYSTEM_LIKE_BUS.format(socket=directory / "socket", policy=POLICY))
    process = subprocess.Popen(
        ["dbus-daemon", f"--config-file={conf}", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        address = process.stdout.readline().strip()
        assert address, "dbus-daemon printed no address"
        yield address
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.skipif(not POLICY.exists(), reason="needs packaging/dbus/org.evsed.conf")
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runuser") is None or not Path("/usr/bin/python3").exists(),
    reason="needs root, runuser and /usr/bin/python3 to act as another user",
)
async def test_permission_denied_by_the_bus_policy(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, system_like_bus: str
) -> None:
    daemon = await started(csms, daemons, tmp_path, system_like_bus)
    bus = ("--bus", system_like_bus)
    # Anyone may read the properties...
    status = await evsectl(*bus, "status", user="nobody")
    assert status.code == 0 and CP in status.out, status
    firmware = await evsectl(*bus, "firmware", "status", user="nobody")
    assert firmware.code == 0, firmware
    # ... but the methods are for root and evsed-operators.
    for args in (
        ("config", "get"),
        ("config", "set", "HeartbeatInterval", "60"),
        ("evse", "1", "start"),
        ("evse", "1", "disable"),
        ("log",),
        ("log", "-f"),
    ):
        run = await evsectl(*bus, *args, user="nobody")
        assert_one_error_line(run, 4, "permission denied")
    # root may.
    assert (await evsectl(*bus, "config", "get", "HeartbeatInterval")).code == 0
    conf = await csms.call(CP, "GetConfiguration", {"key": ["HeartbeatInterval"]})
    assert conf["configurationKey"][0]["value"] == "300"  # nobody's set changed nothing
    assert not calls(csms, "StartTransaction") and not calls(csms, "Authorize")
    assert await daemon.stop() == 0
