"""The version dispatcher (service/ocpp/versions.py) and the engine's rule that a queued message
is sent only under the OCPP version it was made for."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.ocpp.engine import VERSION_KEY
from service.ocpp.rpc import OcppVersion
from service.ocpp.v16.transactions import V16StationLink
from service.ocpp.v201.link import V201StationLink
from tests.service.ocpp.v201.link_rig import Rig

STATUS_201 = {
    "timestamp": "2027-01-15T08:00:00Z",
    "connectorStatus": "Available",
    "evseId": 1,
    "connectorId": 1,
}
STATUS_16 = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path / "evsed.db")
    yield made
    made.close()


def frames(rig: Rig) -> list[list[Any]]:
    return [json.loads(f) for f in rig.engine.take_frames()]


def boot(rig: Rig, version: OcppVersion) -> None:
    rig.engine.connection_opened(version)
    [frame] = frames(rig)
    assert frame[2] == "BootNotification"
    rig.engine.receive(
        json.dumps(
            [
                3,
                frame[1],
                {"status": "Accepted", "interval": 300, "currentTime": "2027-01-15T08:00:00Z"},
            ]
        )
    )


def test_a_message_queued_for_one_version_is_never_sent_under_the_other(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    drops: list[dict[str, Any]] = []
    rig.engine.subscribe(
        lambda event, data: drops.append(dict(data)) if event == "queue-drop" else None
    )
    rig.engine.enqueue(
        "StatusNotification", STATUS_201, transaction=False, version=OcppVersion.V201
    )
    rig.engine.enqueue("StatusNotification", STATUS_16, transaction=False, version=OcppVersion.V16)
    stored = [m.payload[VERSION_KEY] for m in rig.queue.peek_all()]
    assert stored == ["2.0.1", "1.6"]
    with caplog.at_level(logging.ERROR, logger="evsed.ocpp"):
        boot(rig, OcppVersion.V16)
        [sent] = frames(rig)
    assert sent[2:] == ["StatusNotification", STATUS_16]  # the marker never goes on the wire
    assert drops == [
        {"action": "StatusNotification", "message_id": drops[0]["message_id"], "version": "2.0.1"}
    ]
    assert "queued for OCPP 2.0.1 and this connection speaks OCPP 1.6" in caplog.text


def test_a_payload_is_checked_against_the_version_it_is_made_for(rig: Rig) -> None:
    with pytest.raises(ValueError, match=r"OCPP 2\.0\.1"):
        rig.engine.enqueue(
            "StatusNotification", STATUS_16, transaction=False, version=OcppVersion.V201
        )
    assert len(rig.queue) == 0


def test_rows_without_a_version_are_sent_as_they_are(rig: Rig) -> None:
    rig.queue.append("legacy-1", "StatusNotification", dict(STATUS_16), kind="other", now=0.0)
    boot(rig, OcppVersion.V16)
    [sent] = frames(rig)
    assert sent[1:] == ["legacy-1", "StatusNotification", STATUS_16]


def test_a_version_neutral_message_goes_out_under_either_version(rig: Rig) -> None:
    event = {"type": "FirmwareUpdated", "timestamp": "2027-01-15T08:00:00Z"}
    boot(rig, OcppVersion.V16)
    frames(rig)
    rig.engine.connection_closed()
    rig.engine.enqueue("SecurityEventNotification", event, transaction=False, any_version=True)
    [stored] = [m for m in rig.queue.peek_all() if m.action == "SecurityEventNotification"]
    assert VERSION_KEY not in stored.payload
    rig.engine.connection_opened(OcppVersion.V201)
    sent: list[list[Any]] = []
    for _ in range(20):  # one CALL at a time: answer each until the event went out
        for frame in frames(rig):
            if frame[2] == "SecurityEventNotification":
                sent.append(frame)
            answer: dict[str, Any] = {}
            if frame[2] == "BootNotification":
                answer = {
                    "status": "Accepted",
                    "interval": 300,
                    "currentTime": STATUS_201["timestamp"],
                }
            rig.engine.receive(json.dumps([3, frame[1], answer]))
    assert [f[2:] for f in sent] == [["SecurityEventNotification", event]]
    # ...and it must be valid under every version to be stored at all.
    with pytest.raises(ValueError):
        rig.engine.enqueue("StatusNotification", STATUS_16, transaction=False, any_version=True)


async def test_the_dispatcher_follows_the_negotiated_version_and_remembers_it(
    tmp_path: Path,
) -> None:
    first = Rig(tmp_path / "evsed.db")
    try:
        assert first.engine.fallback_version is OcppVersion.V201  # the first configured one
        assert isinstance(first.links.current, V201StationLink)
        await first.start()
        first.connect(OcppVersion.V16)
        assert isinstance(first.links.current, V16StationLink)
        first.disconnect()
        assert isinstance(first.links.current, V16StationLink)  # offline: the last one
    finally:
        first.close()
    again = Rig(tmp_path / "evsed.db")  # a restart, still offline
    try:
        assert again.engine.fallback_version is OcppVersion.V16
        assert isinstance(again.links.current, V16StationLink)
        await again.start()
        assert {m.payload[VERSION_KEY] for m in again.queue.peek_all()} == {"1.6"}
        again.connect(OcppVersion.V201)  # the CSMS speaks 2.0.1 now: every status again
        statuses = again.sent("StatusNotification")
        assert statuses and all("connectorStatus" in s for s in statuses)
        assert {(s["evseId"], s["connectorId"]) for s in statuses} == {(1, 1), (2, 1), (2, 2)}
    finally:
        again.close()
