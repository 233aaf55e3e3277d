"""evsectl's decoding and rendering of OCPP frames and tables (pure functions, real inputs)."""

from __future__ import annotations

import json

from evsectl.client import BUS_NAME, EVSE_INTERFACE, STATION_INTERFACE, STATION_PATH, evse_path
from evsectl.render import (
    FrameDecoder,
    configuration_text,
    frame_line,
    printable,
    snake,
    status_text,
    table,
)
from service.dbus import BUS_NAME as SERVICE_BUS_NAME
from service.dbus import EVSE_INTERFACE as SERVICE_EVSE_INTERFACE
from service.dbus import STATION_INTERFACE as SERVICE_STATION_INTERFACE
from service.dbus import STATION_PATH as SERVICE_STATION_PATH
from service.dbus import evse_path as service_evse_path

ARROWS = ("→", "←")


def test_client_names_match_the_service() -> None:
    # evsectl does not import the daemon; its copies of the names must agree.
    assert (BUS_NAME, STATION_PATH, STATION_INTERFACE, EVSE_INTERFACE, evse_path(3)) == (
        SERVICE_BUS_NAME,
        SERVICE_STATION_PATH,
        SERVICE_STATION_INTERFACE,
        SERVICE_EVSE_INTERFACE,
        service_evse_path(3),
    )


def test_results_and_errors_are_named_after_their_call() -> None:
    decoder = FrameDecoder()
    frames = [
        ("out", '[2,"a1","Heartbeat",{}]'),
        ("in", '[2,"a1","Reset",{"type":"Soft"}]'),  # same id, other direction
        ("in", '[3,"a1",{"currentTime":"2026-01-01T00:00:00Z"}]'),
        ("out", '[4,"a1","NotSupported","no",{}]'),
        ("in", '[3,"a1",{}]'),  # answered already: unknown now
        ("in", '[3,"zz",{}]'),
    ]
    decoded = [decoder.decode(1.0, d, raw) for d, raw in frames]
    assert [(f.type, f.action) for f in decoded] == [
        ("CALL", "Heartbeat"),
        ("CALL", "Reset"),
        ("RESULT", "Heartbeat"),
        ("ERROR", "Reset"),
        ("RESULT", ""),
        ("RESULT", ""),
    ]
    assert decoded[3].error_code == "NotSupported" and decoded[3].error_description == "no"
    line = frame_line(decoded[3], raw=False, arrows=ARROWS)
    assert line.split()[1:] == ["→", "ERROR", "Reset", "NotSupported", '"no"']
    unknown = frame_line(decoded[5], raw=False, arrows=ARROWS)
    assert unknown.split()[1:] == ["←", "RESULT", "?", "{}"]


def test_anything_that_is_not_an_ocpp_frame_is_invalid() -> None:
    decoder = FrameDecoder()
    for raw in (
        "",
        "not json",
        "{}",
        "[]",
        "[2]",
        '[2,"x"]',
        '[5,"x",{}]',
        '[2,7,"A",{}]',
        '[true,"x",{}]',
        '[2,"x",{},{}]',
        '[3,"x",{},1]',
        '[4,"x","E"]',
        '[2.0,"x",{}]',
    ):
        frame = decoder.decode(0.0, "in", raw)
        assert frame.type == "INVALID", raw
        assert frame.as_json(raw=False)["frame"] == raw
    line = frame_line(decoder.decode(0.0, "in", "x\x1b[2Jy\n"), raw=False, arrows=ARROWS)
    assert line.endswith("INVALID x\\x1b[2Jy\\x0a")


def test_control_characters_never_reach_the_terminal() -> None:
    decoder = FrameDecoder()
    hostile = json.dumps([2, "i", "Data\x1b]0;owned\x07", {"v": "\x1b[31m"}])
    line = frame_line(decoder.decode(0.0, "in", hostile), raw=False, arrows=ARROWS)
    assert "\x1b" not in line and "\x07" not in line
    raw_line = frame_line(decoder.decode(0.0, "in", hostile), raw=True, arrows=ARROWS)
    assert "\x1b" not in raw_line
    assert printable("ok\tnot\x7f") == "ok\\x09not\\x7f"
    rendered = table(("A",), [["evil\x1b[2J"]])
    assert "\x1b" not in rendered


def test_json_of_a_frame() -> None:
    decoder = FrameDecoder()
    decoder.decode(0.0, "out", '[2,"7","Authorize",{"idTag":"T"}]')
    frame = decoder.decode(1795457026.5, "in", '[3,"7",{"idTagInfo":{"status":"Accepted"}}]')
    assert frame.as_json(raw=False) == {
        "time": "2026-11-23T18:03:46.500Z",
        "direction": "in",
        "type": "RESULT",
        "id": "7",
        "action": "Authorize",
        "payload": {"idTagInfo": {"status": "Accepted"}},
    }
    assert frame.as_json(raw=True)["frame"] == '[3,"7",{"idTagInfo":{"status":"Accepted"}}]'


def test_names_tables_and_status() -> None:
    assert [
        snake(n)
        for n in (
            "ChargePointId",
            "EvseIds",
            "Id",
            "PowerW",
            "SessionEnergyWh",
            "OfferedCurrentA",
            "OcppVersion",
        )
    ] == [
        "charge_point_id",
        "evse_ids",
        "id",
        "power_w",
        "session_energy_wh",
        "offered_current_a",
        "ocpp_version",
    ]
    assert table(("K", "VALUE"), [["a", "1"], ["long-key", ""]]).splitlines() == [
        "K         VALUE",
        "a         1",
        "long-key",
    ]
    text = configuration_text(
        [{"key": "A", "value": "", "readonly": True, "reboot_required": True}]
    )
    assert text.splitlines()[1].split(None, 2) == ["A", '""', "read-only, reboot required"]
    station = {
        "charge_point_id": "CP",
        "vendor": "V",
        "model": "M",
        "firmware_version": "1",
        "firmware_status": "Downloading",
        "connection_state": "waiting",
        "ocpp_version": "",
        "registration": "Unknown",
        "queued_messages": 1,
    }
    screen = status_text(station, [])
    assert "1 (update: Downloading)" in screen and "OCPP version  -" in screen
    assert "Queued        1 message\n" in screen and screen.endswith("no EVSEs")
