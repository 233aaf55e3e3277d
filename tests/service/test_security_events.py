"""SecurityEvents over the real engine, durable queue and SQLite database: the security log
file (rotation, windows, bad lines, I/O errors) and SecurityEventNotification delivery in 1.6
and 2.0.1 (critical ones durable across offline periods and restarts)."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from service.ocpp.engine import Engine, EngineOptions
from service.ocpp.rpc import OcppVersion
from service.security_events import (
    ACTION,
    SecurityEvents,
    read_security_log,
    security_log_files,
)
from service.store.db import Database
from service.store.queue import DurableQueue

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z, a valid wall time
BOOT_TIME = "2027-01-15T08:00:00Z"


class FakeClock:
    def __init__(self, wall: float) -> None:
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
    heartbeat_interval = 0
    transaction_message_attempts = 3
    transaction_message_retry_interval = 10

    def set_heartbeat_interval(self, seconds: int) -> None:
        pass


class Station:
    """A real engine on a real database, and SecurityEvents on top, as the daemon builds them."""

    def __init__(self, tmp_path: Path, *, wall: float = T0, **options: Any) -> None:
        self.db = Database.open(tmp_path / "evsed.db")
        self.queue = DurableQueue(self.db, max_other=100)
        self.clock = FakeClock(wall)
        self.engine = Engine(
            queue=self.queue,
            clock=self.clock,
            new_id=lambda: uuid.uuid4().hex,
            settings=Keys(),
            boot_payload=lambda v: (
                {"chargePointVendor": "evsed", "chargePointModel": "t"}
                if v is OcppVersion.V16
                else {"reason": "PowerUp", "chargingStation": {"vendorName": "e", "model": "t"}}
            ),
            options=EngineOptions(call_timeout_s=30),
        )
        self.log_path = tmp_path / "state" / "security.log"
        self.events = SecurityEvents(self.log_path, self.engine, self.clock.time, **options)

    def sent(self) -> list[list[Any]]:
        return [json.loads(f) for f in self.engine.take_frames()]

    def answer(self, unique_id: str, payload: dict[str, Any]) -> None:
        self.engine.receive(json.dumps([3, unique_id, payload]))

    def boot(self, version: OcppVersion = OcppVersion.V16) -> None:
        self.engine.connection_opened(version)
        frames = self.sent()
        assert frames[0][2] == "BootNotification"
        self.answer(frames[0][1], {"status": "Accepted", "currentTime": BOOT_TIME, "interval": 300})

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def close(self) -> None:
        self.db.close()


@pytest.fixture
def station(tmp_path: Path) -> Any:
    s = Station(tmp_path)
    yield s
    s.close()


@pytest.mark.parametrize("version", [OcppVersion.V16, OcppVersion.V201])
def test_critical_event_is_queued_offline_and_sent_after_registration(
    tmp_path: Path, version: OcppVersion
) -> None:
    s = Station(tmp_path)
    try:
        s.events.record("FirmwareUpdated", "installed 1.2.3 from slot B")
        assert len(s.queue) == 1  # durable before anything is online
        [line] = s.lines()
        assert line == {
            "timestamp": "2027-01-15T08:00:00.000Z",
            "type": "FirmwareUpdated",
            "techInfo": "installed 1.2.3 from slot B",
            "critical": True,
        }
        s.boot(version)
        [frame] = s.sent()
        assert frame[0] == 2 and frame[2] == ACTION
        assert frame[3] == {
            "type": "FirmwareUpdated",
            "timestamp": "2027-01-15T08:00:00.000Z",
            "techInfo": "installed 1.2.3 from slot B",
        }
        s.answer(frame[1], {})
        assert len(s.queue) == 0
    finally:
        s.close()


def test_critical_event_survives_a_restart(tmp_path: Path) -> None:
    first = Station(tmp_path)
    first.events.record("SettingSystemTime", "")
    first.close()
    second = Station(tmp_path, wall=T0 + 60)
    try:
        assert len(second.queue) == 1
        second.boot()
        [frame] = second.sent()
        assert frame[2] == ACTION
        assert frame[3] == {"type": "SettingSystemTime", "timestamp": "2027-01-15T08:00:00.000Z"}
        second.answer(frame[1], {})
        assert len(second.queue) == 0
        # Both runs append to the same file.
        second.events.record("StartupOfTheDevice", critical=False)
        assert [e["type"] for e in second.events.read()] == [
            "SettingSystemTime",
            "StartupOfTheDevice",
        ]
    finally:
        second.close()


def test_non_critical_event_is_sent_online_and_only_logged_offline(station: Station) -> None:
    station.events.record("ReconfigurationOfSecurityParameters", "offline", critical=False)
    assert len(station.queue) == 0
    assert station.sent() == []
    station.boot()
    assert station.sent() == []  # the offline one is not resent
    station.events.record("ReconfigurationOfSecurityParameters", "online", critical=False)
    [frame] = station.sent()
    assert frame[2] == ACTION and frame[3]["techInfo"] == "online"
    assert len(station.queue) == 0
    station.answer(frame[1], {})
    assert [(e["techInfo"], e["critical"]) for e in station.events.read()] == [
        ("offline", False),
        ("online", False),
    ]


def test_non_critical_event_error_answer_is_only_logged(
    station: Station, caplog: pytest.LogCaptureFixture
) -> None:
    station.boot()
    station.events.record("InvalidCsmsCertificate", "bad chain", critical=False)
    [frame] = station.sent()
    with caplog.at_level(logging.INFO, logger="evsed.security"):
        station.engine.receive(json.dumps([4, frame[1], "InternalError", "boom", {}]))
    assert "not delivered" in caplog.text
    assert len(station.queue) == 0


def test_tech_info_is_cut_to_255_in_the_message_and_omitted_when_empty(station: Station) -> None:
    long = "x" * 300 + "y" * 5000
    station.events.record("TamperDetectionActivated", long)
    station.events.record("TamperDetectionActivated", "")
    station.boot()
    [first] = station.sent()
    assert first[3]["techInfo"] == "x" * 255
    station.answer(first[1], {})
    [second] = station.sent()
    assert "techInfo" not in second[3]
    logged = station.lines()
    assert len(logged[0]["techInfo"]) == 4096  # the file keeps more, but bounded
    assert logged[1]["techInfo"] == ""


def test_time_marker_before_a_valid_time_is_resolved_when_sent(tmp_path: Path) -> None:
    s = Station(tmp_path, wall=0.0)  # RTC at 1970, no CSMS time yet
    try:
        s.events.record("StartupOfTheDevice")
        [line] = s.lines()
        assert line["timestamp"].startswith("1970-01-01T")  # the file says what the RTC said
        s.clock.advance(5)
        s.boot()  # the CSMS's currentTime makes the time valid
        [frame] = s.sent()
        # recorded 5 s before the boot answer set the time to BOOT_TIME
        assert frame[3]["timestamp"] == "2027-01-15T07:59:55.000Z"
    finally:
        s.close()


def test_bad_type_is_a_programming_error(station: Station) -> None:
    with pytest.raises(ValueError, match=r"1\.\.50"):
        station.events.record("")
    with pytest.raises(ValueError, match=r"1\.\.50"):
        station.events.record("T" * 51)
    assert not station.log_path.exists() and len(station.queue) == 0


def test_rotation_keeps_two_backups(tmp_path: Path) -> None:
    s = Station(tmp_path, max_bytes=400)
    try:
        for i in range(40):
            s.events.record("SecurityLogWasCleared", f"event {i:02d}", critical=False)
        files = security_log_files(s.log_path)
        assert [f.name for f in files] == ["security.log.2", "security.log.1", "security.log"]
        assert not s.log_path.with_name("security.log.3").exists()
        assert all(f.stat().st_size <= 400 for f in files)
        kept = [e["techInfo"] for e in s.events.read()]
        assert kept[-1] == "event 39"
        assert kept == sorted(kept)  # oldest first across the files
        expected = [f"event {i:02d}" for i in range(40 - len(kept), 40)]
        assert kept == expected  # nothing lost or duplicated inside what is kept
        assert (s.log_path.stat().st_mode & 0o777) == 0o640
    finally:
        s.close()


def test_rotation_without_backups_truncates(tmp_path: Path) -> None:
    s = Station(tmp_path, max_bytes=300, backups=0)
    try:
        for i in range(20):
            s.events.record("SecurityLogWasCleared", f"event {i:02d}", critical=False)
        assert security_log_files(s.log_path, 0) == [s.log_path]
        assert s.log_path.stat().st_size <= 300
        assert s.events.read()[-1]["techInfo"] == "event 19"
    finally:
        s.close()


def test_read_window_and_bad_lines(station: Station, caplog: pytest.LogCaptureFixture) -> None:
    for i in range(5):
        station.events.record("InvalidMessages", str(i), critical=False)
        station.clock.advance(60)
    with station.log_path.open("a") as handle:
        handle.write('{"type": "torn", "timesta\n')  # torn line after a power cut
        handle.write("[1, 2]\n")
        handle.write('{"type": "NoTime"}\n')
    begin = datetime.fromtimestamp(T0, UTC)
    with caplog.at_level(logging.WARNING, logger="evsed.security"):
        window = station.events.read(begin + timedelta(seconds=60), begin + timedelta(seconds=180))
    assert [e["techInfo"] for e in window] == ["1", "2", "3"]
    assert "skipped 3 unreadable line(s)" in caplog.text
    # naive datetimes are UTC; open ends
    naive = datetime(2027, 1, 15, 8, 3)
    assert [e["techInfo"] for e in station.events.read(naive, None)] == ["3", "4"]
    assert [e["techInfo"] for e in station.events.read(None, naive)] == ["0", "1", "2", "3"]
    # no window: every JSON object, even without a time
    assert len(station.events.read()) == 6
    with pytest.raises(ValueError, match="after stop"):
        station.events.read(begin + timedelta(seconds=1), begin)
    assert read_security_log(station.log_path.with_name("missing.log")) == []


def test_unwritable_log_still_sends(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = Station(tmp_path)
    try:
        s.log_path.parent.write_text("a file where the state directory should be")
        with caplog.at_level(logging.ERROR, logger="evsed.security"):
            s.events.record("FirmwareUpdated", "x")
        assert "cannot record FirmwareUpdated" in caplog.text
        assert len(s.queue) == 1  # the CSMS still hears of it
    finally:
        s.close()


def test_queue_failure_does_not_raise(station: Station, caplog: pytest.LogCaptureFixture) -> None:
    station.db.close()  # the store is gone (e.g. closed during shutdown)
    with caplog.at_level(logging.ERROR, logger="evsed.security"):
        station.events.record("FirmwareUpdated", "x")
    assert "not queued for the CSMS" in caplog.text
    assert station.lines()[0]["type"] == "FirmwareUpdated"  # still in the file


def test_constructor_checks_limits(tmp_path: Path, station: Station) -> None:
    with pytest.raises(ValueError):
        SecurityEvents(tmp_path / "s.log", station.engine, max_bytes=0)
    with pytest.raises(ValueError):
        SecurityEvents(tmp_path / "s.log", station.engine, backups=-1)
