"""The sans-I/O engine, driven by frames and a fake clock, over a real SQLite queue."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from service.ocpp.engine import Deferred, Engine, EngineOptions, Outcome, Registration
from service.ocpp.rpc import OcppVersion
from service.ocpp.v16 import core as v16_core
from service.ocpp.v201 import provisioning as v201_provisioning
from service.store.db import Database, StoreFullError
from service.store.queue import DurableQueue

T0 = 1_800_000_000.0  # 2027-01-15, a valid wall time


class FakeClock:
    def __init__(self, wall: float = T0) -> None:
        self.mono = 1000.0
        self.wall = wall

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


class Keys:
    def __init__(self) -> None:
        self.heartbeat_interval = 300
        self.transaction_message_attempts = 3
        self.transaction_message_retry_interval = 10

    def set_heartbeat_interval(self, seconds: int) -> None:
        self.heartbeat_interval = seconds


BOOT_16 = {"chargePointVendor": "evsed", "chargePointModel": "test"}
BOOT_201 = {"reason": "PowerUp", "chargingStation": {"vendorName": "evsed", "model": "test"}}


class Harness:
    def __init__(self, path: Path, *, resume_delay: float = 0.0, wall: float = T0) -> None:
        self.db = Database.open(path)
        self.queue = DurableQueue(self.db, max_other=100)
        self.clock = FakeClock(wall)
        self.keys = Keys()
        counter = itertools.count(1)
        self.engine = Engine(
            queue=self.queue,
            clock=self.clock,
            new_id=lambda: f"id-{next(counter)}",
            settings=self.keys,
            boot_payload=lambda v: dict(BOOT_16 if v is OcppVersion.V16 else BOOT_201),
            options=EngineOptions(call_timeout_s=30, message_queue_resume_delay_s=resume_delay),
        )
        v16_core.install(self.engine)

    def sent(self) -> list[list[Any]]:
        return [json.loads(f) for f in self.engine.take_frames()]

    def answer(self, unique_id: str, payload: dict[str, Any]) -> None:
        self.engine.receive(json.dumps([3, unique_id, payload]))

    def boot(self, status: str = "Accepted", interval: int = 300) -> None:
        self.engine.connection_opened(OcppVersion.V16)
        [frame] = self.sent()
        assert frame[2] == "BootNotification"
        self.answer(
            frame[1],
            {"status": status, "currentTime": "2027-01-15T08:00:00Z", "interval": interval},
        )


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path / "evsed.db")


def test_boot_accepted_sets_heartbeat_and_time(h: Harness) -> None:
    h.boot(interval=120)
    assert h.engine.registration is Registration.ACCEPTED
    assert h.keys.heartbeat_interval == 120
    assert h.sent() == []
    assert h.engine.next_deadline() == pytest.approx(h.clock.mono + 120)
    h.clock.advance(120)
    h.engine.tick()
    [hb] = h.sent()
    assert hb[2] == "Heartbeat" and hb[3] == {}


def test_nothing_but_boot_is_sent_before_accepted(h: Harness) -> None:
    h.engine.enqueue(
        "StatusNotification",
        {"connectorId": 0, "errorCode": "NoError", "status": "Available"},
        transaction=False,
    )
    h.boot(status="Pending", interval=30)
    assert h.engine.registration is Registration.PENDING
    # Pending waits for the CSMS: no unprompted resend, no queued message, no heartbeat.
    h.clock.advance(3600)
    h.engine.tick()
    assert h.sent() == []
    assert h.engine.request("Authorize", {"idTag": "A"}) is False


def test_pending_then_trigger_boot(h: Harness) -> None:
    h.boot(status="Pending", interval=30)
    h.engine.receive(
        json.dumps([2, "csms-1", "TriggerMessage", {"requestedMessage": "BootNotification"}])
    )
    result, boot = h.sent()
    assert result == [3, "csms-1", {"status": "Accepted"}]
    assert boot[2] == "BootNotification"
    h.answer(boot[1], {"status": "Accepted", "currentTime": "2027-01-15T08:00:00Z", "interval": 60})
    assert h.engine.registration is Registration.ACCEPTED


def test_rejected_waits_for_interval(h: Harness) -> None:
    h.boot(status="Rejected", interval=50)
    h.clock.advance(49)
    h.engine.tick()
    assert h.sent() == []
    h.clock.advance(1)
    h.engine.tick()
    [boot] = h.sent()
    assert boot[2] == "BootNotification"


def test_boot_timeout_is_retried(h: Harness) -> None:
    h.engine.connection_opened(OcppVersion.V16)
    [first] = h.sent()
    h.clock.advance(30)
    h.engine.tick()
    assert h.sent() == []
    h.clock.advance(30)
    h.engine.tick()
    [second] = h.sent()
    assert second[2] == "BootNotification" and second[1] != first[1]


def test_one_call_outstanding_and_fifo(h: Harness) -> None:
    h.boot()
    for i in range(3):
        h.engine.enqueue("DataTransfer", {"vendorId": "v", "data": str(i)}, transaction=True)
    [first] = h.sent()
    assert first[3]["data"] == "0"
    assert h.sent() == []  # nothing else while the first is outstanding
    h.answer(first[1], {"status": "Accepted"})
    [second] = h.sent()
    assert second[3]["data"] == "1"


def test_timeout_keeps_message_and_id(h: Harness) -> None:
    h.boot()
    h.engine.enqueue("DataTransfer", {"vendorId": "v", "data": "x"}, transaction=True)
    [frame] = h.sent()
    h.clock.advance(30)
    h.engine.tick()
    assert h.sent() == []
    h.clock.advance(10)
    h.engine.tick()
    [again] = h.sent()
    assert again[1] == frame[1]  # same id: a late answer still matches
    assert len(h.queue) == 1
    assert h.queue.head() is not None and h.queue.head().attempts == 0  # type: ignore[union-attr]


def test_callerror_counts_attempts_then_drops(h: Harness) -> None:
    h.boot()
    h.engine.enqueue("DataTransfer", {"vendorId": "v", "data": "x"}, transaction=True)
    for attempt in range(1, 4):
        [frame] = h.sent()
        h.engine.receive(json.dumps([4, frame[1], "InternalError", "boom", {}]))
        if attempt < 3:
            assert len(h.queue) == 1
            h.clock.advance(10 * attempt - 1)
            h.engine.tick()
            assert h.sent() == []
            h.clock.advance(1)
            h.engine.tick()
    assert len(h.queue) == 0


def test_start_transaction_id_patched_into_stop(h: Harness) -> None:
    h.boot()
    h.engine.enqueue(
        "StartTransaction",
        {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": "2027-01-15T08:00:00Z"},
        transaction=True,
        tx_ref="local-1",
    )
    h.engine.enqueue(
        "StopTransaction",
        {"transactionId": None, "meterStop": 10, "timestamp": "2027-01-15T09:00:00Z"},
        transaction=True,
        tx_ref="local-1",
    )
    [start] = h.sent()
    h.answer(start[1], {"transactionId": 4242, "idTagInfo": {"status": "Accepted"}})
    [stop] = h.sent()
    assert stop[2] == "StopTransaction" and stop[3]["transactionId"] == 4242


def test_stop_without_csms_id_is_never_sent_as_minus_one(h: Harness) -> None:
    h.keys.transaction_message_attempts = 1
    h.boot()
    h.engine.enqueue(
        "StartTransaction",
        {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": "2027-01-15T08:00:00Z"},
        transaction=True,
        tx_ref="local-1",
    )
    h.engine.enqueue(
        "StopTransaction",
        {"transactionId": None, "meterStop": 10, "timestamp": "2027-01-15T09:00:00Z"},
        transaction=True,
        tx_ref="local-1",
    )
    [start] = h.sent()
    h.engine.receive(json.dumps([4, start[1], "InternalError", "no", {}]))
    assert h.sent() == []
    assert len(h.queue) == 0


def test_unmatched_response_is_dropped(h: Harness) -> None:
    h.boot()
    h.answer("nobody", {"status": "Accepted"})
    assert h.sent() == []
    assert h.engine.stats.dropped_unmatched == 1


def test_resume_delay_after_reconnect(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db", resume_delay=5)
    h.boot()
    h.engine.enqueue("DataTransfer", {"vendorId": "v"}, transaction=True)
    assert h.sent() == []
    h.clock.advance(5)
    h.engine.tick()
    [frame] = h.sent()
    assert frame[2] == "DataTransfer"


def test_reconnect_does_not_reboot_and_resends_inflight(h: Harness) -> None:
    h.boot()
    h.engine.enqueue("DataTransfer", {"vendorId": "v"}, transaction=True)
    [frame] = h.sent()
    h.engine.connection_closed()
    h.engine.connection_opened(OcppVersion.V16)
    [again] = h.sent()
    assert again[2] == "DataTransfer" and again[1] == frame[1]


def test_request_outcome_and_priority_over_queue(h: Harness) -> None:
    h.boot()
    outcomes: list[Outcome] = []
    h.engine.enqueue("DataTransfer", {"vendorId": "v", "data": "q"}, transaction=True)
    assert h.engine.request("Authorize", {"idTag": "ABC"}, outcomes.append)
    [queued] = h.sent()
    h.answer(queued[1], {"status": "Accepted"})
    [authorize] = h.sent()
    assert authorize[2] == "Authorize"
    h.answer(authorize[1], {"idTagInfo": {"status": "Accepted"}})
    assert outcomes[0].ok and outcomes[0].payload == {"idTagInfo": {"status": "Accepted"}}


def test_invalid_outbound_payload_refused_before_storing(h: Harness) -> None:
    h.boot()
    with pytest.raises(ValueError, match="StatusNotification"):
        h.engine.enqueue("StatusNotification", {"connectorId": "one"}, transaction=False)
    assert len(h.queue) == 0


@pytest.mark.parametrize(
    ("frame", "code", "unique_id"),
    [
        ("not json", "FormationViolation", "-1"),
        ('{"a": 1}', "ProtocolError", "-1"),
        ("[]", "ProtocolError", "-1"),
        ('[9, "x", "Reset", {}]', "ProtocolError", "x"),
        ('[2, "x", "Reset"]', "ProtocolError", "x"),
        ('[2, 17, "Reset", {}]', "ProtocolError", "-1"),
        ('[2, "x", "Reset", []]', "FormationViolation", "x"),
        ('[2, "x", "Teleport", {}]', "NotImplemented", "x"),
        ('[2, "x", "BootNotification", {}]', "NotSupported", "x"),
        ('[2, "x", "TriggerMessage", {}]', "OccurenceConstraintViolation", "x"),
        ('[2, "x", "TriggerMessage", {"requestedMessage": 5}]', "TypeConstraintViolation", "x"),
        (
            '[2, "x", "TriggerMessage", {"requestedMessage": "Coffee"}]',
            "PropertyConstraintViolation",
            "x",
        ),
        (
            '[2, "x", "TriggerMessage", {"requestedMessage": "Heartbeat", "extra": 1}]',
            "FormationViolation",
            "x",
        ),
    ],
)
def test_malformed_inbound_v16(h: Harness, frame: str, code: str, unique_id: str) -> None:
    h.boot()
    h.engine.receive(frame)
    [reply] = h.sent()
    assert reply[0] == 4 and reply[1] == unique_id and reply[2] == code
    # and the engine carries on
    h.engine.receive(json.dumps([2, "ok", "TriggerMessage", {"requestedMessage": "Heartbeat"}]))
    result, heartbeat = h.sent()
    assert result == [3, "ok", {"status": "Accepted"}] and heartbeat[2] == "Heartbeat"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "FormatViolation"),
        ('[5, "x", "Reset", {}]', "MessageTypeNotSupported"),
        ('[2, "x"]', "RpcFrameworkError"),
        ('[2, "x", "Teleport", {}]', "NotImplemented"),
        ('[2, "x", "TriggerMessage", {}]', "OccurrenceConstraintViolation"),
    ],
)
def test_malformed_inbound_v201(h: Harness, frame: str, code: str) -> None:
    v201_provisioning.install(h.engine, registered=lambda: True)
    h.engine.connection_opened(OcppVersion.V201)
    [boot] = h.sent()
    h.answer(
        boot[1], {"status": "Accepted", "currentTime": "2027-01-15T08:00:00Z", "interval": 300}
    )
    h.engine.receive(frame)
    [reply] = h.sent()
    assert reply[0] == 4 and reply[2] == code


def test_responses_are_never_answered(h: Harness) -> None:
    h.boot()
    h.engine.receive('[3, "x"]')
    h.engine.receive('[4, "x", 5, "d", {}]')
    assert h.sent() == []


def test_time_before_valid_is_not_sent(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db", wall=3600.0)  # RTC at 1970
    assert h.engine.now_iso() is None
    h.boot()
    assert h.engine.now_iso() is not None
    assert h.engine.now_iso().startswith("2027-01-15T08:00:00")  # type: ignore[union-attr]


def test_message_recorded_before_valid_time_gets_the_true_time(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db", wall=3600.0)  # RTC at 1970, no NTP
    stamp = h.engine.timestamp()
    assert stamp.startswith("@mono:")
    h.engine.enqueue(
        "StartTransaction",
        {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": stamp},
        transaction=True,
        tx_ref="t",
    )
    h.clock.advance(90)  # the CSMS is reached 90 s later and tells the time
    h.boot()
    [start] = h.sent()
    # 08:00:00 at boot, so the transaction started 90 s before.
    assert start[3]["timestamp"] == "2027-01-15T07:58:30.000Z"
    # A retry carries the same, now stored, time.
    assert h.queue.head().payload["timestamp"] == start[3]["timestamp"]  # type: ignore[union-attr]


def test_marker_from_an_earlier_run_uses_send_time(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db", wall=3600.0)
    h.engine.enqueue(
        "StartTransaction",
        {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": "@mono:other-run:12.000"},
        transaction=True,
        tx_ref="t",
    )
    h.boot()
    [start] = h.sent()
    assert start[3]["timestamp"].startswith("2027-01-15T08:00:00")


class FullDiskQueue(DurableQueue):
    """The lowest seam: the disk refuses the write that records a processed response."""

    full = True

    def complete(
        self, seq: int, *, tx_ref: str | None = None, csms_transaction_id: str | int | None = None
    ) -> None:
        if self.full:
            raise StoreFullError("database or disk is full")
        super().complete(seq, tx_ref=tx_ref, csms_transaction_id=csms_transaction_id)


def test_store_failure_on_response_keeps_message_for_later(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    queue = FullDiskQueue(h.db, max_other=10)
    h.engine._queue = queue  # type: ignore[attr-defined]
    h.boot()
    h.engine.enqueue("DataTransfer", {"vendorId": "v"}, transaction=True)
    [frame] = h.sent()
    h.answer(frame[1], {"status": "Accepted"})  # must not raise
    assert len(queue) == 1
    queue.full = False
    h.clock.advance(10)
    h.engine.tick()
    [again] = h.sent()
    assert again[1] == frame[1]
    h.answer(again[1], {"status": "Accepted"})
    assert len(queue) == 0


def test_deferred_answer_goes_out_later_and_not_on_a_new_connection(h: Harness) -> None:
    pending: list[Deferred] = []

    def slow(call: Any) -> Any:
        deferred = Deferred()
        pending.append(deferred)
        return deferred

    h.engine.register(OcppVersion.V16, "DataTransfer", slow)
    woken: list[bool] = []
    h.engine.wakeup = lambda: woken.append(True)
    h.boot()
    h.engine.receive(json.dumps([2, "dt-1", "DataTransfer", {"vendorId": "acme"}]))
    assert h.sent() == []
    pending[0].resolve({"status": "Accepted", "data": "x"})
    assert h.sent() == [[3, "dt-1", {"status": "Accepted", "data": "x"}]]
    assert woken
    pending[0].resolve({"status": "Rejected"})  # a second answer is ignored
    assert h.sent() == []
    h.engine.receive(json.dumps([2, "dt-2", "DataTransfer", {"vendorId": "acme"}]))
    h.engine.connection_closed()
    h.engine.connection_opened(OcppVersion.V16)
    pending[1].resolve({"status": "Accepted"})
    assert all(frame[1] != "dt-2" for frame in h.sent())


# -- OCPP 2.0.1 B03: a Rejected station answers the CSMS with SecurityError ------------------

STATUS_201 = {
    "timestamp": "2027-01-15T08:00:00Z",
    "connectorStatus": "Available",
    "evseId": 1,
    "connectorId": 1,
}


def boot_201(h: Harness, status: str, interval: int = 600) -> None:
    [boot] = h.sent()
    assert boot[2] == "BootNotification"
    h.answer(
        boot[1], {"status": status, "currentTime": "2027-01-15T08:00:00Z", "interval": interval}
    )


def rejected_201(h: Harness) -> None:
    v201_provisioning.install(
        h.engine, registered=lambda: h.engine.registration is Registration.ACCEPTED
    )
    h.engine.connection_opened(OcppVersion.V201)
    boot_201(h, "Rejected")
    assert h.engine.registration is Registration.REJECTED


def call(h: Harness, unique_id: str, action: str, payload: dict[str, Any]) -> list[list[Any]]:
    h.engine.receive(json.dumps([2, unique_id, action, payload]))
    return h.sent()


REFUSED = [
    (
        "GetVariables",
        {
            "getVariableData": [
                {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}
            ]
        },
    ),
    (
        "RequestStartTransaction",
        {"idToken": {"idToken": "A", "type": "Central"}, "remoteStartId": 1},
    ),
    ("TriggerMessage", {"requestedMessage": "Heartbeat"}),
    ("TriggerMessage", {"requestedMessage": "StatusNotification"}),
    ("TriggerMessage", {}),  # malformed: still not registered first
    ("Reset", {"type": "Bogus"}),
    ("Teleport", {}),  # not an action at all
]


def test_v201_rejected_answers_every_call_with_security_error(h: Harness) -> None:
    h.engine.enqueue("StatusNotification", STATUS_201, transaction=False, version=OcppVersion.V201)
    rejected_201(h)
    for n, (action, payload) in enumerate(REFUSED):
        [reply] = call(h, f"c-{n}", action, payload)
        assert reply == [
            4,
            f"c-{n}",
            "SecurityError",
            "not registered: BootNotification was Rejected",
            {},
        ], action
    # Nothing was sent, nothing dropped: the queued message waits.
    h.clock.advance(599)
    h.engine.tick()
    assert h.sent() == []
    assert h.engine.queue_length == 1


def test_v201_rejected_trigger_boot_registers_and_releases_the_queue(h: Harness) -> None:
    h.engine.enqueue("StatusNotification", STATUS_201, transaction=False, version=OcppVersion.V201)
    rejected_201(h)
    result, boot = call(h, "t-1", "TriggerMessage", {"requestedMessage": "BootNotification"})
    assert result == [3, "t-1", {"status": "Accepted"}]
    assert boot[2] == "BootNotification"
    h.answer(
        boot[1], {"status": "Accepted", "currentTime": "2027-01-15T08:00:00Z", "interval": 300}
    )
    assert h.engine.registration is Registration.ACCEPTED
    [status] = h.sent()
    assert status[2] == "StatusNotification" and status[3] == STATUS_201
    h.answer(status[1], {})
    assert h.engine.queue_length == 0
    # Registered: the CSMS's requests are answered again.
    result, heartbeat = call(h, "t-2", "TriggerMessage", {"requestedMessage": "Heartbeat"})
    assert result == [3, "t-2", {"status": "Accepted"}] and heartbeat[2] == "Heartbeat"


def test_v201_rejected_again_and_across_reconnects_keeps_refusing(h: Harness) -> None:
    h.engine.enqueue("StatusNotification", STATUS_201, transaction=False, version=OcppVersion.V201)
    rejected_201(h)
    # The triggered boot is Rejected again: still refusing, still holding the queue.
    result, boot = call(h, "t-1", "TriggerMessage", {"requestedMessage": "BootNotification"})
    assert result[0] == 3
    h.answer(
        boot[1], {"status": "Rejected", "currentTime": "2027-01-15T08:00:00Z", "interval": 0}
    )  # 0: the charger picks its own wait
    [reply] = call(h, "c-1", "TriggerMessage", {"requestedMessage": "Heartbeat"})
    assert reply[2] == "SecurityError"
    # A reconnect before the interval is over: no boot yet, still refused.
    h.engine.connection_closed()
    h.engine.connection_opened(OcppVersion.V201)
    assert h.sent() == []
    [reply] = call(h, "c-2", "GetVariables", {"getVariableData": []})
    assert reply[2] == "SecurityError"
    # The retry after the default wait; this time Accepted.
    h.clock.advance(h.engine.options.boot_retry_default_s)
    h.engine.tick()
    boot_201(h, "Accepted", 300)
    [status] = h.sent()
    assert status[2] == "StatusNotification"


def test_v201_pending_keeps_answering(h: Harness) -> None:
    v201_provisioning.install(h.engine, registered=lambda: False)
    h.engine.connection_opened(OcppVersion.V201)
    boot_201(h, "Pending")
    result, heartbeat = call(h, "p-1", "TriggerMessage", {"requestedMessage": "Heartbeat"})
    assert result == [3, "p-1", {"status": "Accepted"}] and heartbeat[2] == "Heartbeat"


def test_v16_rejected_keeps_answering(h: Harness) -> None:
    h.boot(status="Rejected", interval=600)
    [result, *_] = call(h, "r-1", "TriggerMessage", {"requestedMessage": "Heartbeat"})
    assert result == [3, "r-1", {"status": "Accepted"}]


def test_v201_security_error_then_rejected_keeps_the_message(h: Harness) -> None:
    v201_provisioning.install(
        h.engine, registered=lambda: h.engine.registration is Registration.ACCEPTED
    )
    h.engine.connection_opened(OcppVersion.V201)
    boot_201(h, "Accepted", 300)
    h.engine.enqueue("StatusNotification", STATUS_201, transaction=False)
    [status] = h.sent()
    # The CSMS lost the registration: it refuses the message, the charger boots again...
    h.engine.receive(json.dumps([4, status[1], "SecurityError", "who are you", {}]))
    boot_201(h, "Rejected")  # ...and is Rejected this time.
    [reply] = call(h, "c-1", "TriggerMessage", {"requestedMessage": "StatusNotification"})
    assert reply[2] == "SecurityError"
    assert h.engine.queue_length == 1
    h.clock.advance(600)
    h.engine.tick()
    boot_201(h, "Accepted", 300)
    [again] = h.sent()
    assert again[1] == status[1]  # the same message, the same id
