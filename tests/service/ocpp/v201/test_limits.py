"""OCPP 2.0.1 hostile input and message limits, on the sans-I/O engine with the device model.

Every class of malformed frame gets the CALLERROR code OCPP-J 2.0.1 gives it (spelled the 2.0.1
way), the engine carries on afterwards, responses are never answered, and a CSMS CALLERROR to a
queued message never loses a transaction message. DeviceDataCtrlr.ItemsPerMessage /
BytesPerMessage are enforced at exactly the values the device model reports (B05.FR / B06.FR /
B08.FR: OccurrenceConstraintViolation resp. FormatViolation, nothing applied), measured on the
frame as it came over the wire.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.ocpp.engine import VERSION_KEY
from service.ocpp.rpc import OcppVersion
from tests.service.ocpp.v201.conftest import Charger, item

HEARTBEAT = item("OCPPCommCtrlr", "HeartbeatInterval")


def receive(charger: Charger, frame: str) -> list[list[Any]]:
    charger.engine.receive(frame)
    return charger.sent()


def carries_on(charger: Charger) -> None:
    """A valid request after the bad one is answered normally."""
    [result] = charger.get(HEARTBEAT)
    assert result["attributeStatus"] == "Accepted" and result["attributeValue"] == "300"


# ------------------------------------------------------------------ malformed frames
DEEP = "[" * 100_000 + "]" * 100_000
GET = '{"getVariableData": [{"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "X"}}]}'


@pytest.mark.parametrize(
    ("frame", "code", "unique_id"),
    [
        # frame level: the message id cannot be read -> "-1"
        ("not json", "FormatViolation", "-1"),
        ("[2, 'x', 'Reset', {}]", "FormatViolation", "-1"),
        ('[2, "x", "GetVariables", {"a": NaN}]', "FormatViolation", "-1"),
        (DEEP, "FormatViolation", "-1"),
        ('{"a": 1}', "RpcFrameworkError", "-1"),
        ('"[2, \\"x\\", \\"Reset\\", {}]"', "RpcFrameworkError", "-1"),
        ("[]", "RpcFrameworkError", "-1"),
        ("17", "RpcFrameworkError", "-1"),
        # message type id
        ('[5, "x", "Reset", {}]', "MessageTypeNotSupported", "x"),
        ('["2", "x", "Reset", {}]', "MessageTypeNotSupported", "x"),
        ('[true, "x", "Reset", {}]', "MessageTypeNotSupported", "x"),
        ('[2.5, "x", "Reset", {}]', "MessageTypeNotSupported", "x"),
        # element count, message id, action
        ('[2, "x", "GetVariables"]', "RpcFrameworkError", "x"),
        ('[2, "x", "GetVariables", {}, {}]', "RpcFrameworkError", "x"),
        ('[2, 17, "GetVariables", {}]', "RpcFrameworkError", "-1"),
        ('[2, null, "GetVariables", {}]', "RpcFrameworkError", "-1"),
        ('[2, "", "GetVariables", {}]', "RpcFrameworkError", "-1"),
        ('[2, "x", 5, {}]', "RpcFrameworkError", "x"),
        ('[2, "x", "GetVariables", []]', "FormatViolation", "x"),
        ('[2, "x", "GetVariables", "payload"]', "FormatViolation", "x"),
        # action
        ('[2, "x", "Teleport", {}]', "NotImplemented", "x"),
        ('[2, "x", "RemoteStartTransaction", {"idTag": "A"}]', "NotImplemented", "x"),  # 1.6
        ('[2, "x", "GetVariable", {}]', "NotImplemented", "x"),
        ('[2, "x", "BootNotification", {}]', "NotSupported", "x"),  # the CS sends it
        # payload against the 2.0.1 schema
        ('[2, "x", "GetVariables", {}]', "OccurrenceConstraintViolation", "x"),
        ('[2, "x", "GetVariables", {"getVariableData": []}]', "OccurrenceConstraintViolation", "x"),
        (
            '[2, "x", "GetVariables", {"getVariableData": [{"component": {"name": "A"}}]}]',
            "OccurrenceConstraintViolation",
            "x",
        ),
        ('[2, "x", "GetVariables", {"getVariableData": "all"}]', "TypeConstraintViolation", "x"),
        (
            '[2, "x", "GetVariables", {"getVariableData": [{"component": {"name": 5}, '
            '"variable": {"name": "A"}}]}]',
            "TypeConstraintViolation",
            "x",
        ),
        (
            '[2, "x", "GetVariables", {"getVariableData": [{"component": {"name": "A", '
            '"evse": {"id": "1"}}, "variable": {"name": "A"}}]}]',
            "TypeConstraintViolation",
            "x",
        ),
        (
            '[2, "x", "GetVariables", {"getVariableData": [{"component": {"name": "A"}, '
            '"variable": {"name": "A"}, "attributeType": "Current"}]}]',
            "PropertyConstraintViolation",
            "x",
        ),
        (
            '[2, "x", "GetVariables", {"getVariableData": [{"component": {"name": "'
            + "A" * 51
            + '"}, "variable": {"name": "A"}}]}]',
            "PropertyConstraintViolation",
            "x",
        ),
        ('[2, "x", "GetVariables", ' + GET[:-1] + ', "extra": 1}]', "FormatViolation", "x"),
        (
            '[2, "x", "GetBaseReport", {"requestId": 1.5, "reportBase": "FullInventory"}]',
            "TypeConstraintViolation",
            "x",
        ),
    ],
)
def test_malformed_frames_get_the_2_0_1_callerror(
    charger: Charger, frame: str, code: str, unique_id: str
) -> None:
    [reply] = receive(charger, frame)
    assert reply[0] == 4
    assert reply[1] == unique_id
    assert reply[2] == code
    assert isinstance(reply[3], str) and len(reply[3]) <= 255
    assert reply[4] == {}
    carries_on(charger)


def test_a_message_id_too_long_is_answered_with_its_first_36_characters(
    charger: Charger,
) -> None:
    [reply] = receive(charger, json.dumps([2, "i" * 40, "GetVariables", json.loads(GET)]))
    assert reply[:3] == [4, "i" * 36, "RpcFrameworkError"]
    carries_on(charger)


def test_the_1_6_spellings_are_never_used_under_2_0_1(charger: Charger) -> None:
    replies = receive(charger, "{") + receive(charger, '[2, "y", "GetVariables", {}]')
    assert [r[2] for r in replies] == ["FormatViolation", "OccurrenceConstraintViolation"]


def test_nesting_deep_but_parseable_is_answered(charger: Charger) -> None:
    data = "[" * 900 + "]" * 900
    frame = f'[2, "d", "DataTransfer", {{"vendorId": "v", "data": {data}}}]'
    [reply] = receive(charger, frame)
    assert reply[0] == 4 and reply[1] == "d" and reply[2] == "NotSupported"
    carries_on(charger)


def test_responses_are_never_answered(charger: Charger) -> None:
    for frame in (
        '[3, "nobody"]',
        '[3, "nobody", {}, 1]',
        '[3, "nobody", []]',
        '[4, "nobody", 5, "d", {}]',
        '[4, "nobody", "GenericError"]',
        "[3, 17, {}]",
    ):
        assert receive(charger, frame) == []
    assert charger.engine.stats.malformed_inbound == 6


# ------------------------------------------------------------------ responses to our calls
def status_notification(evse: int = 1) -> dict[str, Any]:
    return {
        "timestamp": "2027-01-15T08:00:00.000Z",
        "connectorStatus": "Available",
        "evseId": evse,
        "connectorId": 1,
    }


def transaction_event(seq: int) -> dict[str, Any]:
    return {
        "eventType": "Updated",
        "timestamp": "2027-01-15T08:00:00.000Z",
        "triggerReason": "MeterValuePeriodic",
        "seqNo": seq,
        "transactionInfo": {"transactionId": "tx-1"},
    }


def test_a_result_for_an_unknown_id_is_dropped_and_the_call_in_flight_stays(
    charger: Charger,
) -> None:
    charger.engine.enqueue("StatusNotification", status_notification(), transaction=False)
    [call] = charger.sent()
    assert call[2] == "StatusNotification"
    assert receive(charger, json.dumps([3, "not-" + call[1], {}])) == []
    assert receive(charger, json.dumps([4, "not-" + call[1], "GenericError", "", {}])) == []
    assert charger.engine.stats.dropped_unmatched == 2
    assert charger.engine.queue_length == 1
    assert receive(charger, json.dumps([3, call[1], {}])) == []
    assert charger.engine.queue_length == 0


def test_a_malformed_answer_to_a_queued_message_leaves_it_queued(charger: Charger) -> None:
    charger.engine.enqueue("StatusNotification", status_notification(), transaction=False)
    [call] = charger.sent()
    assert receive(charger, f'[3, "{call[1]}"]') == []  # not answered, not matched
    assert charger.engine.queue_length == 1
    charger.clock.advance(31)  # the call times out: not an attempt, the same id again later
    charger.engine.tick()
    charger.clock.advance(charger.cfg.transaction_message_retry_interval)
    charger.engine.tick()
    [again] = charger.sent()
    assert again[1] == call[1] and again[3] == call[3]
    assert VERSION_KEY not in again[3]


def test_a_callerror_to_a_transaction_message_is_retried_with_the_same_id(
    charger: Charger,
) -> None:
    engine = charger.engine
    attempts = charger.cfg.transaction_message_attempts
    assert attempts >= 2
    engine.enqueue("TransactionEvent", transaction_event(1), transaction=True, tx_ref="tx-1")
    engine.enqueue("StatusNotification", status_notification(), transaction=False)
    [call] = charger.sent()
    receive(charger, json.dumps([4, call[1], "InternalError", "CSMS database down", {}]))
    assert engine.queue_length == 2  # kept, and it still blocks what follows (order)
    charger.clock.advance(charger.cfg.transaction_message_retry_interval)
    engine.tick()
    [again] = charger.sent()
    assert again[1:] == call[1:]
    # An answer that breaks the response schema counts as a failed attempt too.
    receive(charger, json.dumps([3, again[1], {"totalCost": "free"}]))
    assert engine.queue_length == 2
    charger.clock.advance(2 * charger.cfg.transaction_message_retry_interval)
    engine.tick()
    [third] = charger.sent()
    assert third[1] == call[1]
    [status] = receive(charger, json.dumps([3, third[1], {}]))
    assert status[2] == "StatusNotification"


def test_a_callerror_to_another_message_drops_only_that_message(charger: Charger) -> None:
    engine = charger.engine
    drops: list[Any] = []
    engine.subscribe(lambda event, data: drops.append(data) if event == "queue-drop" else None)
    engine.enqueue("StatusNotification", status_notification(1), transaction=False)
    engine.enqueue("StatusNotification", status_notification(2), transaction=False)
    [first] = charger.sent()
    [second] = receive(charger, json.dumps([4, first[1], "FormatViolation", "no", {}]))
    assert second[3]["evseId"] == 2
    assert [d["message_id"] for d in drops] == [first[1]]
    receive(charger, json.dumps([3, second[1], {}]))
    assert engine.queue_length == 0


# ------------------------------------------------------------------ DeviceDataCtrlr limits
def reported(charger: Charger, variable: str, instance: str) -> int:
    [result] = charger.get(item("DeviceDataCtrlr", variable, instance=instance))
    assert result["attributeStatus"] == "Accepted"
    return int(result["attributeValue"])


def padded_call(unique_id: str, action: str, payload: dict[str, Any], size: int) -> str:
    """A CALL frame of exactly `size` bytes: JSON with spaces before its closing bracket."""
    frame = json.dumps([2, unique_id, action, payload], separators=(",", ":"))
    assert len(frame.encode()) <= size
    return frame[:-1] + " " * (size - len(frame.encode())) + "]"


@pytest.mark.parametrize(
    ("action", "key", "entry"),
    [
        ("GetVariables", "getVariableData", HEARTBEAT),
        ("SetVariables", "setVariableData", item("TxCtrlr", "EVConnectionTimeOut", value="90")),
    ],
)
def test_items_per_message_is_enforced_at_the_reported_value(
    charger: Charger, action: str, key: str, entry: dict[str, Any]
) -> None:
    most = reported(charger, "ItemsPerMessage", action)
    answer = charger.call(action, {key: [entry] * most})
    assert answer[0] == 3 and len(answer[2][key.replace("Data", "Result")]) == most
    answer = charger.call(action, {key: [entry] * (most + 1)})
    assert answer[0] == 4 and answer[2] == "OccurrenceConstraintViolation"
    assert f"ItemsPerMessage[{action}] is {most}" in answer[3]


@pytest.mark.parametrize(
    ("action", "payload"),
    [
        ("GetVariables", {"getVariableData": [HEARTBEAT]}),
        ("SetVariables", {"setVariableData": [item("TxCtrlr", "EVConnectionTimeOut", value="91")]}),
        ("GetReport", {"requestId": 5, "componentVariable": [{"component": {"name": "TxCtrlr"}}]}),
    ],
)
def test_bytes_per_message_is_enforced_on_the_frame_as_received(
    charger: Charger, action: str, payload: dict[str, Any]
) -> None:
    most = reported(charger, "BytesPerMessage", action)
    [reply] = receive(charger, padded_call("over", action, payload, most + 1))
    assert reply[:3] == [4, "over", "FormatViolation"]
    assert f"BytesPerMessage[{action}] is {most}" in reply[3]
    assert charger.model.get("TxCtrlr", "EVConnectionTimeOut") != "91"  # nothing applied
    assert charger.engine.queue_length == 0  # no report started
    [reply, *rest] = receive(charger, padded_call("fits", action, payload, most))
    assert reply[:2] == [3, "fits"]
    if action == "SetVariables":
        assert charger.model.get("TxCtrlr", "EVConnectionTimeOut") == "91"
    if action == "GetReport":
        assert reply[2] == {"status": "Accepted"} and rest[0][2] == "NotifyReport"


def test_get_report_component_variables_are_limited_by_items_per_message(
    charger: Charger,
) -> None:
    most = reported(charger, "ItemsPerMessage", "GetReport")
    selector = {"component": {"name": "TxCtrlr"}}
    answer = charger.call("GetReport", {"requestId": 1, "componentVariable": [selector] * most})
    assert answer[0] == 3 and answer[2]["status"] == "Accepted"
    charger.drain_reports()
    answer = charger.call(
        "GetReport", {"requestId": 2, "componentVariable": [selector] * (most + 1)}
    )
    assert answer[0] == 4 and answer[2] == "OccurrenceConstraintViolation"
    assert charger.rest == []  # no NotifyReport for a refused request


def test_the_limits_cannot_be_changed_by_the_csms(charger: Charger) -> None:
    results = charger.set(
        item("DeviceDataCtrlr", "ItemsPerMessage", instance="GetVariables", value="1000"),
        item("DeviceDataCtrlr", "BytesPerMessage", instance="SetVariables", value="1"),
    )
    assert [(r["attributeStatus"], r["attributeStatusInfo"]["reasonCode"]) for r in results] == [
        ("Rejected", "ReadOnly"),
        ("Rejected", "ReadOnly"),
    ]
    assert charger.model.limit("ItemsPerMessage", "GetVariables") == reported(
        charger, "ItemsPerMessage", "GetVariables"
    )


# ------------------------------------------------------------------ SetVariables statuses
def outcome(result: dict[str, Any]) -> tuple[str, str | None]:
    info = result.get("attributeStatusInfo")
    return result["attributeStatus"], None if info is None else info["reasonCode"]


def test_set_variables_addressing_errors(charger: Charger) -> None:
    results = charger.set(
        item("EVSE", "AvailabilityState", evse=0, value="x"),
        item("EVSE", "AvailabilityState", evse=-1, value="x"),
        item("EVSE", "AvailabilityState", value="x"),  # an EVSE variable without an EVSE
        item("Connector", "ConnectorType", evse=1, connector=9, value="x"),
        item("Connector", "ConnectorType", evse=1, value="x"),
        item("OCPPCommCtrlr", "MessageAttempts", instance="Nothing", value="3"),
        item("OCPPCommCtrlr", "HeartbeatInterval", instance="Extra", value="30"),
        item("OCPPCommCtrlr", "HeartbeatInterval", component_instance="Other", value="30"),
        item("ocppcommctrlr", "HeartbeatInterval", value="30"),
    )
    assert [outcome(r) for r in results] == [
        ("UnknownComponent", "UnknownEvse"),
        ("UnknownComponent", "UnknownEvse"),
        ("UnknownComponent", "NotFound"),
        ("UnknownComponent", "UnknownConnectorId"),
        ("UnknownComponent", "NotFound"),
        ("UnknownVariable", "NotFound"),
        ("UnknownVariable", "NotFound"),
        ("UnknownComponent", "NotFound"),
        ("UnknownComponent", "NotFound"),
    ]
    assert charger.cfg.get("HeartbeatInterval") == 300
    assert charger.changes == []


def test_set_variables_values_outside_the_characteristics(charger: Charger) -> None:
    results = charger.set(
        item("OCPPCommCtrlr", "HeartbeatInterval", value="-5"),
        item("OCPPCommCtrlr", "HeartbeatInterval", value="1e3"),
        item("OCPPCommCtrlr", "HeartbeatInterval", value="30.5"),
        item("OCPPCommCtrlr", "HeartbeatInterval", value=""),
        item("OCPPCommCtrlr", "HeartbeatInterval", value="9" * 40),
        item("AuthCtrlr", "LocalPreAuthorize", value="ja"),
        item("TxCtrlr", "TxStartPoint", value="Authorized,Bogus"),
        item("TxCtrlr", "TxStartPoint", value="EVConnected,,Authorized"),
        item("TxCtrlr", "StopTxOnInvalidId", value="1"),
        item("ChargingStation", "Model", value="Other"),
        item("SecurityCtrlr", "OrganizationName", value="x" * 51),
    )
    assert [r["attributeStatus"] for r in results] == ["Rejected"] * len(results)
    reasons = [outcome(r)[1] for r in results]
    assert reasons[0] == "ValueTooLow"
    assert reasons[4] == "ValueTooHigh"
    assert reasons[9] == "ReadOnly"
    assert reasons[10] == "TooLargeElement"
    assert set(reasons[1:4] + reasons[5:9]) == {"InvalidValue"}
    assert charger.cfg.get("HeartbeatInterval") == 300
    assert charger.changes == []


def test_get_variables_of_a_1_6_only_version_are_not_reachable_under_1_6(
    charger: Charger,
) -> None:
    """The 2.0.1 device model is not answered on a 1.6 connection (NotImplemented there)."""
    charger.disconnect()
    charger.connect(OcppVersion.V16)
    [reply] = receive(charger, json.dumps([2, "v16", "GetVariables", json.loads(GET)]))
    assert reply[:3] == [4, "v16", "NotImplemented"]
    [reply] = receive(charger, "not json")
    assert reply[2] == "FormationViolation"


def boot_answer(charger: Charger, frame: list[Any]) -> list[list[Any]]:
    assert frame[2] == "BootNotification"
    payload = {"status": "Accepted", "currentTime": "2027-01-15T08:00:00Z", "interval": 300}
    return receive(charger, json.dumps([3, frame[1], payload]))


def test_a_security_error_makes_the_charger_register_again_and_resend(charger: Charger) -> None:
    """FR.04: SecurityError = the CSMS did not accept the registration. No attempt, no loss."""
    engine = charger.engine
    engine.enqueue("StatusNotification", status_notification(1), transaction=False)
    engine.enqueue("TransactionEvent", transaction_event(1), transaction=True, tx_ref="tx-1")
    [call] = charger.sent()
    [boot] = receive(charger, json.dumps([4, call[1], "SecurityError", "who are you?", {}]))
    assert engine.registration.value == "Unknown" and engine.queue_length == 2
    assert engine.request("Authorize", {"idToken": {"idToken": "A", "type": "Local"}}) is False
    [again] = boot_answer(charger, boot)
    assert again[1:] == call[1:]
    # Once per connection: a second SecurityError is an ordinary failure (no boot loop).
    [event] = receive(charger, json.dumps([4, again[1], "SecurityError", "still no", {}]))
    assert event[2] == "TransactionEvent"
    receive(charger, json.dumps([4, event[1], "SecurityError", "no", {}]))
    assert engine.registration.value == "Accepted" and engine.queue_length == 1
    charger.clock.advance(charger.cfg.transaction_message_retry_interval)
    engine.tick()
    [retried] = charger.sent()
    assert retried[1] == event[1]
    receive(charger, json.dumps([3, retried[1], {}]))
    assert engine.queue_length == 0


def test_a_security_error_after_a_reconnect_registers_again(charger: Charger) -> None:
    engine = charger.engine
    engine.enqueue("StatusNotification", status_notification(1), transaction=False)
    [call] = charger.sent()
    [boot] = receive(charger, json.dumps([4, call[1], "SecurityError", "", {}]))
    charger.disconnect()
    engine.connection_opened(OcppVersion.V201)
    [boot] = charger.sent()
    [again] = boot_answer(charger, boot)
    assert again[1] == call[1]
    [boot] = receive(charger, json.dumps([4, again[1], "SecurityError", "", {}]))
    [third] = boot_answer(charger, boot)
    receive(charger, json.dumps([3, third[1], {}]))
    assert engine.queue_length == 0


def test_a_security_error_to_a_direct_request_is_only_a_failure(charger: Charger) -> None:
    outcomes: list[Any] = []
    token = {"idToken": {"idToken": "A", "type": "Local"}}
    assert charger.engine.request("Authorize", token, outcomes.append)
    [call] = charger.sent()
    assert receive(charger, json.dumps([4, call[1], "SecurityError", "", {}])) == []
    assert outcomes[0].error_code == "SecurityError"
    assert charger.engine.registration.value == "Accepted"


# ------------------------------------------------------------------ text that is not UTF-8
def test_lone_surrogates_are_answered_in_a_frame_that_can_be_sent(charger: Charger) -> None:
    """JSON may carry "\\ud800"; Python decodes it to a lone surrogate that UTF-8 cannot encode.
    The answer echoes it escaped (the same JSON string), so the websocket can send it."""
    frame = (
        '[2, "sur", "GetVariables", {"getVariableData": [{"component": {"name": "A\\ud800"}, '
        '"variable": {"name": "B"}}]}]'
    )
    charger.engine.receive(frame)
    [text] = charger.engine.take_frames()
    text.encode("utf-8")  # what websockets does with a text frame
    reply = json.loads(text)
    assert reply[2]["getVariableResult"][0]["component"]["name"] == "A\ud800"
    assert reply[2]["getVariableResult"][0]["attributeStatus"] == "UnknownComponent"


@pytest.mark.parametrize(
    ("component", "variable"),
    [("SecurityCtrlr", "OrganizationName"), ("OCPPCommCtrlr", "HeartbeatInterval")],
)
def test_a_lone_surrogate_value_is_refused_not_stored(
    charger: Charger, component: str, variable: str
) -> None:
    payload = {"setVariableData": [item(component, variable, value="x\ud800")]}
    charger.engine.receive(json.dumps([2, "sur", "SetVariables", payload]))
    [text] = charger.engine.take_frames()
    reply = json.loads(text.encode("utf-8"))
    assert reply[0] == 3, reply
    [result] = reply[2]["setVariableResult"]
    assert result["attributeStatus"] == "Rejected"
    assert charger.model.get(component, variable) != "x\ud800"
    carries_on(charger)
