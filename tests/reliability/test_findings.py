"""Regressions for what the reliability harness's fuzzer found in the inbound OCPP path,
through the daemon's own engine and handlers (reliability.fuzz_ocpp.EngineFuzzer)."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pytest

from reliability.fuzz_ocpp import EngineFuzzer
from service.ocpp.rpc import ErrorCode, OcppVersion, RpcError, parse_frame, schemas


@pytest.fixture
def fuzzer(tmp_path: Path) -> EngineFuzzer:
    engine = EngineFuzzer(random.Random(1), tmp_path)
    engine.connect(OcppVersion.V16)
    return engine


def answer(fuzzer: EngineFuzzer, action: str, payload: dict[str, Any]) -> list[Any]:
    fuzzer.engine.receive(json.dumps([2, "m1", action, payload]))
    replies = [json.loads(f) for f in fuzzer.engine.take_frames()]
    [reply] = [r for r in replies if r[0] in (3, 4) and r[1] == "m1"]
    return reply


def profile(periods: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "chargingProfileId": 1,
        "stackLevel": 0,
        "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Absolute",
        "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": periods},
    }


def test_remote_start_with_no_schedule_period_is_an_occurrence_violation(
    fuzzer: EngineFuzzer,
) -> None:
    # The OCA schema has no minItems here; 1.6 says 1..*. It used to raise IndexError.
    reply = answer(
        fuzzer, "RemoteStartTransaction", {"idTag": "T1", "chargingProfile": profile([])}
    )
    assert reply[:3] == [4, "m1", "OccurenceConstraintViolation"]


def test_remote_start_with_a_huge_limit_is_a_property_violation(fuzzer: EngineFuzzer) -> None:
    # multipleOf 0.1 on 1e300 overflowed decimal's 28 digits: InternalError before.
    big = profile([{"startPeriod": 0, "limit": 1e300}])
    reply = answer(fuzzer, "RemoteStartTransaction", {"idTag": "T1", "chargingProfile": big})
    assert reply[:3] == [4, "m1", "PropertyConstraintViolation"]


@pytest.mark.parametrize("id_tag", ["", "äöü", "tab\there"])
def test_remote_start_with_an_invalid_id_tag_is_rejected(fuzzer: EngineFuzzer, id_tag: str) -> None:
    # Schema-valid, but no CiString20 (1-20 printable ASCII): it could never be authorized
    # or cached; the Authorize answer used to fail in the authorization cache.
    reply = answer(fuzzer, "RemoteStartTransaction", {"connectorId": 1, "idTag": id_tag})
    assert reply == [3, "m1", {"status": "Rejected"}]
    assert not [f for f in fuzzer.engine.take_frames() if '"Authorize"' in f]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(constant: str) -> None:
    with pytest.raises(RpcError) as info:
        parse_frame(f'[2, "m1", "Heartbeat", {{"x": {constant}}}]')
    assert info.value.code is ErrorCode.FORMAT_VIOLATION


def test_huge_number_under_multiple_of_is_refused_not_raised() -> None:
    big = {"idTag": "T1", "chargingProfile": profile([{"startPeriod": 0, "limit": 10**40}])}
    with pytest.raises(RpcError) as info:
        schemas(OcppVersion.V16).validate("RemoteStartTransaction", big, response=False)
    assert info.value.code is ErrorCode.PROPERTY_CONSTRAINT_VIOLATION


class PowerCut(BaseException):
    """The process dies here (raised where a kill -9 would land)."""


def queued(fuzzer: EngineFuzzer, action: str) -> list[Any]:
    rows = fuzzer.db.query_all(
        "SELECT message_id, payload FROM outbound_queue WHERE action = ? ORDER BY seq", (action,)
    )
    return [json.loads(r["payload"]) for r in rows]


async def test_power_cut_between_stop_and_session_end_sends_one_stop(tmp_path: Path) -> None:
    # Found by `python -m reliability crash` killing right after a COMMIT: the queued
    # StopTransaction and the removal of the session row were two commits, so a power cut
    # between them made the next start queue a second (PowerLoss) StopTransaction.
    first = EngineFuzzer(random.Random(1), tmp_path)
    first.connect(OcppVersion.V16)
    station = first.daemon.charger.station
    station.remote_start(1, "CARD1")
    first._serve_outbound(first.engine.take_frames(), fuzz=False)
    first.daemon.charger.simulators[1].plug()
    for _ in range(100):  # the simulated pilot reports through the event loop
        await asyncio.sleep(0.01)
        first._serve_outbound(first.engine.take_frames(), fuzz=False)
        session = station.session_of(1)
        if session is not None and session.started:
            break
    assert session is not None and session.started
    first.engine.connection_closed()  # offline: the StopTransaction stays queued

    def cut(session_id: str) -> None:
        raise PowerCut

    station.sessions.delete = cut  # type: ignore[method-assign]
    with pytest.raises(PowerCut):
        station.local_stop(1)
    first.db.close()

    second = EngineFuzzer(random.Random(2), tmp_path)  # the restart recovers the session
    stops = queued(second, "StopTransaction")
    assert len(stops) == 1, stops
    assert stops[0]["reason"] == "PowerLoss"
    second.db.close()
