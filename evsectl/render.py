"""evsectl's output: tables for people, JSON for programs, and decoded OCPP frames.

Property names of the D-Bus API (CamelCase) become snake_case JSON keys, so a property added to
the API later shows up in `--json` output without a change here.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

_CAMEL_RE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MATCH_MEMORY = 1000  # CALL ids remembered to name the action of their RESULT / ERROR


def printable(text: str) -> str:
    """`text` safe for a terminal: control characters (escape sequences a CSMS or a stored
    value could carry, newlines) shown as \\xNN."""
    return _CONTROL_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def snake(name: str) -> str:
    """CamelCase D-Bus name to snake_case: OfferedCurrentA -> offered_current_a."""
    return _CAMEL_RE.sub("_", name).lower()


def snake_keys(values: dict[str, Any]) -> dict[str, Any]:
    return {snake(name): value for name, value in values.items()}


def to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; no trailing blanks."""
    rows = [[printable(str(cell)) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *rows]:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return "\n".join(lines)


def _dash(text: str) -> str:
    return text if text else "-"


# --------------------------------------------------------------------------- status


def status_text(station: dict[str, Any], evses: list[dict[str, Any]]) -> str:
    """The `evsectl status` screen from snake_case station and EVSE property values."""
    firmware = str(station.get("firmware_version", ""))
    update = str(station.get("firmware_status", "Idle"))
    if update and update != "Idle":
        firmware += f" (update: {update})"
    queued = int(station.get("queued_messages", 0))
    head = [
        ("Charge point", _dash(str(station.get("charge_point_id", "")))),
        ("Vendor/model", f"{station.get('vendor', '')} / {station.get('model', '')}"),
        ("Firmware", _dash(firmware)),
        ("CSMS", _dash(str(station.get("connection_state", "")))),
        ("OCPP version", _dash(str(station.get("ocpp_version", "")))),
        ("Registration", _dash(str(station.get("registration", "")))),
        ("Queued", f"{queued} message{'' if queued == 1 else 's'}"),
    ]
    width = max(len(label) for label, _ in head)
    lines = [f"{label.ljust(width)}  {printable(value)}" for label, value in head]
    if not evses:
        return "\n".join([*lines, "", "no EVSEs"])
    rows = []
    for evse in evses:
        in_session = bool(evse.get("session_id"))
        rows.append(
            [
                str(evse.get("id", "")),
                _dash(str(evse.get("status", ""))),
                _dash(str(evse.get("error_code", ""))),
                _dash(str(evse.get("availability", ""))),
                _dash(str(evse.get("id_tag", ""))) if in_session else "-",
                _dash(str(evse.get("transaction_id", ""))),
                f"{float(evse.get('power_w', 0.0)) / 1000:.2f}",
                f"{float(evse.get('session_energy_wh', 0.0)) / 1000:.3f}" if in_session else "-",
                f"{float(evse.get('offered_current_a', 0.0)):.1f}",
            ]
        )
    headers = (
        "EVSE",
        "STATUS",
        "ERROR",
        "AVAILABILITY",
        "SESSION",
        "TRANSACTION",
        "POWER kW",
        "ENERGY kWh",
        "OFFERED A",
    )
    return "\n".join([*lines, "", table(headers, rows)])


def evse_text(evse: dict[str, Any]) -> str:
    """Every property of one EVSE, one per line (`evsectl evse N status`)."""

    def phases(values: Any, unit: str) -> str:
        items = [f"{float(v):.1f}" for v in values or []]
        return " / ".join(items) + f" {unit}" if items else "-"

    in_session = bool(evse.get("session_id"))
    pairs = [
        ("EVSE", str(evse.get("id", ""))),
        ("Status", _dash(str(evse.get("status", "")))),
        ("Error code", _dash(str(evse.get("error_code", "")))),
        ("Availability", _dash(str(evse.get("availability", "")))),
        ("Pilot state", _dash(str(evse.get("pilot_state", "")))),
        ("Session", _dash(str(evse.get("session_id", "")))),
        ("Id tag", _dash(str(evse.get("id_tag", "")))),
        ("Transaction", _dash(str(evse.get("transaction_id", "")))),
        ("Power", f"{float(evse.get('power_w', 0.0)) / 1000:.2f} kW"),
        (
            "Session energy",
            f"{float(evse.get('session_energy_wh', 0.0)) / 1000:.3f} kWh" if in_session else "-",
        ),
        ("Meter", f"{float(evse.get('energy_wh', 0.0)) / 1000:.3f} kWh"),
        ("Current", phases(evse.get("current_a"), "A")),
        ("Voltage", phases(evse.get("voltage_v"), "V")),
        ("Offered", f"{float(evse.get('offered_current_a', 0.0)):.1f} A"),
    ]
    width = max(len(label) for label, _ in pairs)
    return "\n".join(f"{label.ljust(width)}  {printable(value)}" for label, value in pairs)


# --------------------------------------------------------------------------- configuration


def configuration_text(entries: list[dict[str, Any]]) -> str:
    rows = []
    for entry in entries:
        flags = []
        if entry["readonly"]:
            flags.append("read-only")
        if entry["reboot_required"]:
            flags.append("reboot required")
        rows.append(
            [entry["key"], entry["value"] if entry["value"] != "" else '""', ", ".join(flags)]
        )
    return table(("KEY", "VALUE", "NOTES"), rows)


# --------------------------------------------------------------------------- OCPP frames

MESSAGE_TYPES = {2: "CALL", 3: "RESULT", 4: "ERROR"}


@dataclass
class Frame:
    """One decoded OCPP-J frame as `evsectl log` shows it."""

    time: float
    direction: str  # "in" (from the CSMS) | "out" (to the CSMS)
    raw: str
    type: str = "INVALID"  # CALL | RESULT | ERROR | INVALID
    message_id: str = ""
    action: str = ""  # for RESULT / ERROR: the action of the CALL answered, "" if unknown
    payload: Any = None
    error_code: str = ""
    error_description: str = ""
    error_details: Any = None

    def as_json(self, *, raw: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "time": iso_time(self.time),
            "direction": self.direction,
            "type": self.type,
        }
        if self.type != "INVALID":
            out["id"] = self.message_id
            out["action"] = self.action or None
        if self.type in ("CALL", "RESULT"):
            out["payload"] = self.payload
        elif self.type == "ERROR":
            out["error_code"] = self.error_code
            out["error_description"] = self.error_description
            out["error_details"] = self.error_details
        if raw or self.type == "INVALID":
            out["frame"] = self.raw
        return out


def iso_time(when: float) -> str:
    stamp = datetime.fromtimestamp(when, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def local_time(when: float) -> str:
    stamp = datetime.fromtimestamp(when)
    return stamp.strftime("%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}"


class FrameDecoder:
    """Decodes frames in order and names each RESULT / ERROR after the CALL it answers."""

    def __init__(self) -> None:
        self._calls: OrderedDict[tuple[str, str], str] = OrderedDict()

    def decode(self, when: float, direction: str, raw: str) -> Frame:
        frame = Frame(when, direction, raw)
        try:
            message = json.loads(raw)
        except ValueError:
            return frame
        if not (isinstance(message, list) and len(message) >= 3):
            return frame
        kind, message_id = message[0], message[1]
        if type(kind) is not int or kind not in MESSAGE_TYPES or not isinstance(message_id, str):
            return frame
        frame.message_id = message_id
        if kind == 2 and len(message) == 4 and isinstance(message[2], str):
            frame.type, frame.action, frame.payload = "CALL", message[2], message[3]
            self._calls[(direction, message_id)] = message[2]
            while len(self._calls) > _MATCH_MEMORY:
                self._calls.popitem(last=False)
        elif kind == 3 and len(message) == 3:
            frame.type, frame.payload = "RESULT", message[2]
            frame.action = self._answered(direction, message_id)
        elif kind == 4 and len(message) == 5:
            frame.type = "ERROR"
            frame.error_code, frame.error_description = str(message[2]), str(message[3])
            frame.error_details = message[4]
            frame.action = self._answered(direction, message_id)
        return frame

    def _answered(self, direction: str, message_id: str) -> str:
        caller = "out" if direction == "in" else "in"
        return self._calls.pop((caller, message_id), "")


def compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def frame_line(frame: Frame, *, raw: bool, arrows: tuple[str, str]) -> str:
    """One line: local time, arrow (out, in), type, action, compact payload (or the frame)."""
    arrow = arrows[0] if frame.direction == "out" else arrows[1]
    head = f"{local_time(frame.time)} {arrow}"
    if raw:
        return f"{head} {printable(frame.raw)}"
    if frame.type == "INVALID":
        return f"{head} INVALID {printable(frame.raw)}"
    action = printable(frame.action or "?")
    if frame.type == "ERROR":
        body = f"{printable(frame.error_code)} {compact(frame.error_description)}"
        if frame.error_details not in (None, {}):
            body += f" {compact(frame.error_details)}"
    else:
        body = compact(frame.payload)
    return f"{head} {frame.type:<6} {action:<26} {body}".rstrip()
