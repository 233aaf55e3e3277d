"""Hostile and bad input under OCPP 2.0.1, against the real daemon and the test CSMS.

Every class of malformed frame is answered with the CALLERROR OCPP-J 2.0.1 prescribes (never a
response, "-1" when the message id cannot be read); DeviceDataCtrlr ItemsPerMessage /
BytesPerMessage are enforced at exactly the values GetVariables reports, on the frame as sent;
a frame over the websocket limit costs the connection, never a queued message; a CALLERROR to a
queued message never loses a transaction message, and SecurityError makes the charger register
again. idTokens: the station keeps 1.6 idTags (1 to 20 printable ASCII characters), so longer
2.0.1 tokens are refused with a reason rather than half-handled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from testcsms.server import Event, Received, TestCsms
from tests.integration.conftest import DaemonProcess, start_daemon, write_config
from tests.integration.ev_script import Ev

CP = "CP-IT-1"
V201 = '["ocpp2.0.1"]'


async def start(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str | None = None
) -> DaemonProcess:
    config = write_config(
        tmp_path,
        csms.url,
        versions=V201,
        dbus_address=dbus_address,
        csms_extra="external_websocket_control = true" if dbus_address else "",
    )
    since = len(csms.received)
    daemon = await start_daemon(config, tmp_path)
    daemons.append(daemon)
    await daemon.wait_notification("READY=1")
    await csms.wait_for("BootNotification", since=since)
    # Registered: what follows is queued (durable), not sent as while the boot was open.
    await csms.wait_for("StatusNotification", since=since)
    return daemon


def from_cp(r: Received) -> bool:
    return r.direction == "in"


def calls_of(csms: TestCsms, action: str, since: int = 0) -> list[Received]:
    return [
        r
        for r in csms.received[since:]
        if from_cp(r) and r.message_type == 2 and r.action == action
    ]


async def reply_to(csms: TestCsms, unique_id: str, since: int) -> Received:
    [reply] = await csms.wait_for(
        lambda r: from_cp(r) and r.unique_id == unique_id and r.message_type in (3, 4),
        since=since,
    )
    return reply


async def variable(csms: TestCsms, component: str, name: str, instance: str | None = None) -> str:
    wanted: dict[str, Any] = {"name": name}
    if instance is not None:
        wanted["instance"] = instance
    answer = await csms.call(
        CP,
        "GetVariables",
        {"getVariableData": [{"component": {"name": component}, "variable": wanted}]},
    )
    [result] = answer["getVariableResult"]
    assert result["attributeStatus"] == "Accepted", result
    value: str = result["attributeValue"]
    return value


def alive(daemon: DaemonProcess) -> None:
    assert daemon.process.returncode is None
    assert "Traceback" not in daemon.stderr(), daemon.stderr()


GET_ONE = {
    "getVariableData": [
        {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}
    ]
}
MALFORMED: list[tuple[str, str, str]] = [
    # (frame, message id of the answer, error code)
    ("not json", "-1", "FormatViolation"),
    ("[" * 50_000 + "]" * 50_000, "-1", "FormatViolation"),
    ('{"messageTypeId": 2}', "-1", "RpcFrameworkError"),
    ("[]", "-1", "RpcFrameworkError"),
    ('[2, 17, "GetVariables", {}]', "-1", "RpcFrameworkError"),
    ('[7, "m-type", "GetVariables", {}]', "m-type", "MessageTypeNotSupported"),
    ('[2, "m-count", "GetVariables"]', "m-count", "RpcFrameworkError"),
    ('[2, "m-count5", "GetVariables", {}, {}]', "m-count5", "RpcFrameworkError"),
    ('[2, "m-action", 12, {}]', "m-action", "RpcFrameworkError"),
    ('[2, "m-array", "GetVariables", []]', "m-array", "FormatViolation"),
    ('[2, "m-unknown", "Teleport", {}]', "m-unknown", "NotImplemented"),
    ('[2, "m-16", "GetConfiguration", {}]', "m-16", "NotImplemented"),
    ('[2, "m-cs", "Heartbeat", {}]', "m-cs", "NotSupported"),
    ('[2, "m-req", "GetVariables", {}]', "m-req", "OccurrenceConstraintViolation"),
    (
        '[2, "m-min", "GetVariables", {"getVariableData": []}]',
        "m-min",
        "OccurrenceConstraintViolation",
    ),
    (
        '[2, "m-type2", "GetVariables", {"getVariableData": {}}]',
        "m-type2",
        "TypeConstraintViolation",
    ),
    (
        '[2, "m-enum", "GetBaseReport", {"requestId": 1, "reportBase": "All"}]',
        "m-enum",
        "PropertyConstraintViolation",
    ),
    (
        '[2, "m-extra", "GetVariables", ' + json.dumps({**GET_ONE, "more": True}) + "]",
        "m-extra",
        "FormatViolation",
    ),
]


async def test_every_malformed_frame_class_is_answered_and_the_daemon_carries_on(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    daemon = await start(csms, daemons, tmp_path)
    for frame, unique_id, code in MALFORMED:
        since = len(csms.received)
        if frame.startswith("[" * 100):
            # TestCsms's recorder parses what it sends and cannot parse this: send it unrecorded.
            await csms._session(CP).ws.send(frame)
        else:
            await csms.send_raw(CP, frame)
        reply = await reply_to(csms, unique_id, since)
        assert reply.message_type == 4, (frame[:60], reply.raw)
        assert reply.payload["errorCode"] == code, (frame[:60], reply.raw)
        assert reply.payload["errorDetails"] == {}
    # Responses are never answered, whatever they look like.
    since = len(csms.received)
    for frame in (
        '[3, "no-such-call", {}]',
        '[4, "no-such-call", "GenericError", "", {}]',
        '[3, "short"]',
        '[4, "bad-error", 42, null, 7]',
    ):
        await csms.send_raw(CP, frame)
    assert await variable(csms, "OCPPCommCtrlr", "HeartbeatInterval") == "300"
    answered = {"no-such-call", "short", "bad-error"}
    assert [r.raw for r in csms.received[since:] if from_cp(r) and r.unique_id in answered] == []
    alive(daemon)
    assert await daemon.stop() == 0


def padded(unique_id: str, action: str, payload: dict[str, Any], size: int) -> str:
    """A CALL of exactly `size` bytes (UTF-8): compact JSON, then spaces before the last `]`."""
    text = json.dumps([2, unique_id, action, payload], separators=(",", ":"))
    assert len(text.encode()) <= size
    return text[:-1] + " " * (size - len(text.encode())) + "]"


async def test_message_limits_are_the_reported_ones(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    daemon = await start(csms, daemons, tmp_path)
    timeout = {"component": {"name": "TxCtrlr"}, "variable": {"name": "EVConnectionTimeOut"}}
    requests = {
        "GetVariables": lambda value: GET_ONE,
        "SetVariables": lambda value: {"setVariableData": [{**timeout, "attributeValue": value}]},
        "GetReport": lambda value: {
            "requestId": int(value),
            "componentVariable": [{"component": {"name": "TxCtrlr"}}],
        },
    }
    for action, request in requests.items():
        most = int(await variable(csms, "DeviceDataCtrlr", "BytesPerMessage", action))
        since = len(csms.received)
        await csms.send_raw(CP, padded(f"{action}-over", action, request("92"), most + 1))
        over = await reply_to(csms, f"{action}-over", since)
        assert over.message_type == 4 and over.payload["errorCode"] == "FormatViolation"
        assert f"BytesPerMessage[{action}] is {most}" in over.payload["errorDescription"]
        assert await variable(csms, "TxCtrlr", "EVConnectionTimeOut") != "92"
        assert calls_of(csms, "NotifyReport", since) == []
        await csms.send_raw(CP, padded(f"{action}-fits", action, request("91"), most))
        fits = await reply_to(csms, f"{action}-fits", since)
        assert fits.message_type == 3, fits.raw
    assert await variable(csms, "TxCtrlr", "EVConnectionTimeOut") == "91"
    await csms.wait_for(lambda r: from_cp(r) and r.action == "NotifyReport")

    for action, key, entry in (
        ("GetVariables", "getVariableData", GET_ONE["getVariableData"][0]),
        ("SetVariables", "setVariableData", {**timeout, "attributeValue": "93"}),
        ("GetReport", "componentVariable", {"component": {"name": "TxCtrlr"}}),
    ):
        most = int(await variable(csms, "DeviceDataCtrlr", "ItemsPerMessage", action))
        extra = {"requestId": 77} if action == "GetReport" else {}
        since = len(csms.received)
        await csms.send_raw(
            CP, json.dumps([2, "items-over", action, {key: [entry] * (most + 1), **extra}])
        )
        over = await reply_to(csms, "items-over", since)
        assert over.payload["errorCode"] == "OccurrenceConstraintViolation"
        await csms.send_raw(
            CP, json.dumps([2, "items-fits", action, {key: [entry] * most, **extra}])
        )
        fits = await reply_to(csms, "items-fits", since)
        assert fits.message_type == 3, fits.raw
    alive(daemon)
    assert await daemon.stop() == 0


async def full_report(csms: TestCsms, request_id: int) -> list[Received]:
    """Every NotifyReport of a report once its last page arrived, first copy of each page."""

    def page(r: Received) -> bool:
        return (
            from_cp(r)
            and r.message_type == 2
            and r.action == "NotifyReport"
            and r.payload["requestId"] == request_id
        )

    await csms.wait_until(
        lambda: any(page(r) and not r.payload.get("tbc", False) for r in csms.received),
        timeout=20,
    )
    pages: dict[int, Received] = {}
    for r in csms.received:
        if page(r):
            pages.setdefault(r.payload["seqNo"], r)
    assert sorted(pages) == list(range(len(pages)))
    return [pages[n] for n in sorted(pages)]


async def test_an_oversized_frame_costs_the_connection_not_the_queue(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    daemon = await start(csms, daemons, tmp_path)
    csms.drop_actions.add("NotifyReport")  # the first page stays in flight, unanswered
    since = len(csms.received)
    answer = await csms.call(CP, "GetBaseReport", {"requestId": 8, "reportBase": "FullInventory"})
    assert answer == {"status": "Accepted"}
    [first] = await csms.wait_for("NotifyReport", since=since)
    connections = len(csms.connections)
    huge = json.dumps([2, "huge", "DataTransfer", {"vendorId": "x", "data": "x" * (5 << 20)}])
    await csms.send_raw(CP, huge)
    await csms.wait_until(lambda: csms.connections[connections - 1].closed is not None)
    assert csms.connections[connections - 1].close_code == 1009  # message too big
    csms.drop_actions.clear()
    await csms.wait_for_connection(CP, since=connections)
    pages = await full_report(csms, 8)
    assert len(pages) > 1 and pages[0].unique_id == first.unique_id
    assert len(calls_of(csms, "BootNotification")) == 1  # a reconnect, not a new registration
    alive(daemon)
    assert await daemon.stop() == 0


async def test_a_security_error_to_a_queued_message_means_register_again(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    daemon = await start(csms, daemons, tmp_path)
    csms.error_actions["NotifyReport"] = "SecurityError"

    def once(event: Event) -> None:  # the CSMS "forgot" the charger for one answer
        if isinstance(event, Received) and event.direction == "out" and event.message_type == 4:
            csms.error_actions.clear()

    csms.on_event = once
    since = len(csms.received)
    answer = await csms.call(
        CP, "GetBaseReport", {"requestId": 9, "reportBase": "SummaryInventory"}
    )
    assert answer == {"status": "Accepted"}
    [first] = await csms.wait_for("NotifyReport", since=since)
    [boot] = await csms.wait_for("BootNotification", since=since)
    [again] = await csms.wait_for(
        lambda r: from_cp(r) and r.message_type == 2 and r.unique_id == first.unique_id,
        since=csms.received.index(boot),
    )
    assert again.payload == first.payload
    [accepted] = await csms.wait_for(
        lambda r: r.direction == "out" and r.message_type == 3 and r.unique_id == first.unique_id
    )
    [refused] = [r for r in csms.received[since:] if r.direction == "out" and r.message_type == 4]
    assert refused.unique_id == first.unique_id
    assert refused.payload["errorCode"] == "SecurityError"
    order = [csms.received.index(r) for r in (first, refused, boot, again, accepted)]
    assert order == sorted(order)
    pages = await full_report(csms, 9)
    assert pages[0].unique_id == first.unique_id
    assert len(calls_of(csms, "BootNotification", since)) == 1
    alive(daemon)
    assert await daemon.stop() == 0


async def test_id_tokens_and_a_callerror_to_a_transaction_event(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    daemon = await start(csms, daemons, tmp_path, dbus_address)
    # 2.0.1 allows 36 characters (taken) and an empty idToken only of type NoAuthorization;
    # evsed keeps tokens to printable ASCII (its cache and list serve both versions): these are
    # refused with a reason (not accepted and then lost).
    for token in (
        {"idToken": "", "type": "ISO15693"},
        {"idToken": "k\u00e9y", "type": "KeyCode"},
        {"idToken": "tab\there", "type": "Local"},
    ):
        answer = await csms.call(
            CP, "RequestStartTransaction", {"idToken": token, "remoteStartId": 1, "evseId": 1}
        )
        assert answer["status"] == "Rejected", token
        assert answer["statusInfo"]["reasonCode"] == "InvalidIdToken"
    # A CALLERROR to the first TransactionEvent: retried with the same id, nothing lost.
    csms.error_actions["TransactionEvent"] = "InternalError"

    def once(event: Event) -> None:
        if isinstance(event, Received) and event.direction == "out" and event.message_type == 4:
            csms.error_actions.clear()

    csms.on_event = once
    since = len(csms.received)
    token = {"idToken": "E" * 36, "type": "eMAID"}  # longer than 1.6 could carry
    answer = await csms.call(
        CP, "RequestStartTransaction", {"idToken": token, "remoteStartId": 5, "evseId": 1}
    )
    assert answer["status"] == "Accepted"
    ev = Ev(dbus_address)
    await ev.plug()
    await ev.ready(True)

    def started(r: Received) -> bool:
        return (
            from_cp(r)
            and r.message_type == 2
            and r.action == "TransactionEvent"
            and r.payload["eventType"] == "Started"
        )

    first, again = await csms.wait_for(started, since=since, count=2, timeout=15)
    assert again.unique_id == first.unique_id and again.payload == first.payload
    assert first.payload["idToken"] == token
    await ev.unplug()
    await csms.wait_for(
        lambda r: (
            started(r) is False
            and from_cp(r)
            and r.action == "TransactionEvent"
            and r.message_type == 2
            and r.payload["eventType"] == "Ended"
        ),
        since=since,
        timeout=15,
    )
    seq = sorted({r.payload["seqNo"] for r in calls_of(csms, "TransactionEvent", since)})
    assert seq == list(range(seq[0], seq[0] + len(seq)))
    alive(daemon)
    assert await daemon.stop() == 0


async def test_a_lone_surrogate_is_answered_and_costs_nothing(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    """ "\\ud800" is valid JSON but no valid UTF-8: the answer must still be sendable."""
    daemon = await start(csms, daemons, tmp_path)
    connections = len(csms.connections)
    since = len(csms.received)
    name = {"component": {"name": "A\\ud800"}, "variable": {"name": "B"}}
    text = json.dumps({"getVariableData": [name]}).replace("\\\\", "\\")
    await csms.send_raw(CP, f'[2, "sur-get", "GetVariables", {text}]')
    reply = await reply_to(csms, "sur-get", since)
    [result] = reply.payload["getVariableResult"]
    assert result["component"]["name"] == "A\ud800"
    assert result["attributeStatus"] == "UnknownComponent"
    value = {"component": {"name": "SecurityCtrlr"}, "variable": {"name": "OrganizationName"}}
    await csms.send_raw(
        CP,
        '[2, "sur-set", "SetVariables", {"setVariableData": [{'
        + json.dumps(value)[1:-1]
        + ', "attributeValue": "x\\ud800"}]}]',
    )
    reply = await reply_to(csms, "sur-set", since)
    [result] = reply.payload["setVariableResult"]
    assert result["attributeStatus"] == "Rejected"
    assert len(csms.connections) == connections  # the connection stayed up
    alive(daemon)
    assert await daemon.stop() == 0
