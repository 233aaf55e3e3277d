"""Tests for service.msglog on real files: line format, order, rotation and I/O failures."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from service.msglog import MessageLog


class StepClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        value = self.now
        self.now += 0.25
        return value


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "evsed.msglog" and r.levelno == logging.WARNING]


def test_lines_in_order_with_direction(tmp_path: Path) -> None:
    directory = tmp_path / "msgs"
    mlog = MessageLog(directory, max_bytes=1 << 20, backups=3, clock=StepClock(1_700_000_000.5))
    mlog.event("connected ws://127.0.0.1:9000/cp1")
    mlog.write("out", '[2,"1","BootNotification",{}]')
    mlog.write("in", '[3,"1",{"status":"Accepted"}]', note="12 ms")
    mlog.write("in", "not json\r\nsecond line")
    mlog.close()

    lines = (directory / "ocpp.log").read_text().splitlines()
    assert lines == [
        "2023-11-14T22:13:20.500Z -- connected ws://127.0.0.1:9000/cp1",
        '2023-11-14T22:13:20.750Z out [2,"1","BootNotification",{}]',
        '2023-11-14T22:13:21.000Z in [3,"1",{"status":"Accepted"}] # 12 ms',
        "2023-11-14T22:13:21.250Z in not json\\r\\nsecond line",
    ]


def test_directory_and_file_permissions(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b"
    mlog = MessageLog(directory, max_bytes=0, backups=0)
    mlog.write("out", "[]")
    mlog.close()
    assert directory.stat().st_mode & 0o777 & ~0o750 == 0
    assert (directory / "ocpp.log").stat().st_mode & 0o777 & ~0o640 == 0


def test_disabled_log_writes_nothing(tmp_path: Path) -> None:
    mlog = MessageLog(None, max_bytes=100, backups=1)
    assert not mlog.enabled
    assert mlog.path is None
    mlog.write("in", "[]")
    mlog.event("x")
    mlog.reopen()
    mlog.close()
    assert list(tmp_path.iterdir()) == []


def test_rotation_keeps_backups(tmp_path: Path) -> None:
    mlog = MessageLog(tmp_path, max_bytes=200, backups=2, clock=lambda: 0.0)
    frames = [f'[2,"{i:04d}","Heartbeat",{{}}]' for i in range(40)]
    for frame in frames:
        mlog.write("out", frame)
    mlog.close()

    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ocpp.log", "ocpp.log.1", "ocpp.log.2"]
    kept: list[str] = []
    for name in ("ocpp.log.2", "ocpp.log.1", "ocpp.log"):
        path = tmp_path / name
        assert 0 < path.stat().st_size <= 200
        kept += [line.split(" ", 2)[2] for line in path.read_text().splitlines()]
    # The files together hold the most recent frames, in order, without gaps.
    assert kept == frames[-len(kept) :]
    assert len(kept) >= 6


def test_rotation_counts_existing_file(tmp_path: Path) -> None:
    (tmp_path / "ocpp.log").write_text("x" * 190 + "\n")
    mlog = MessageLog(tmp_path, max_bytes=200, backups=1, clock=lambda: 0.0)
    mlog.write("in", "[]")
    mlog.close()
    assert (tmp_path / "ocpp.log.1").read_text() == "x" * 190 + "\n"
    assert (tmp_path / "ocpp.log").read_text() == "1970-01-01T00:00:00.000Z in []\n"


def test_zero_backups_truncates(tmp_path: Path) -> None:
    mlog = MessageLog(tmp_path, max_bytes=120, backups=0, clock=lambda: 0.0)
    for i in range(20):
        mlog.write("out", f"frame-{i}")
    mlog.close()
    assert [p.name for p in tmp_path.iterdir()] == ["ocpp.log"]
    text = (tmp_path / "ocpp.log").read_text()
    assert len(text) <= 120
    assert text.endswith("out frame-19\n")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        MessageLog(None, max_bytes=-1, backups=0)
    with pytest.raises(ValueError):
        MessageLog(None, max_bytes=10, backups=-2)


def test_uncreatable_directory_warns_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with caplog.at_level(logging.WARNING, logger="evsed.msglog"):
        mlog = MessageLog(blocker / "msgs", max_bytes=1000, backups=1)
        mlog.write("out", "[]")
        mlog.event("connected")
    assert not mlog.enabled
    assert len(warnings_of(caplog)) == 1
    assert blocker.read_text() == "not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "ro"
    directory.mkdir(mode=0o500)
    try:
        with caplog.at_level(logging.WARNING, logger="evsed.msglog"):
            mlog = MessageLog(directory, max_bytes=1000, backups=1)
            mlog.write("in", "[]")
        assert not mlog.enabled
        assert len(warnings_of(caplog)) == 1
    finally:
        directory.chmod(0o700)


def test_disk_full_disables_until_reopen(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    (tmp_path / "ocpp.log").symlink_to("/dev/full")  # every write fails with ENOSPC
    with caplog.at_level(logging.WARNING, logger="evsed.msglog"):
        mlog = MessageLog(tmp_path, max_bytes=1000, backups=1, clock=lambda: 0.0)
        assert mlog.enabled
        mlog.write("out", "[1]")
        mlog.write("out", "[2]")
        assert not mlog.enabled
        assert len(warnings_of(caplog)) == 1

        (tmp_path / "ocpp.log").unlink()
        mlog.reopen()
        mlog.write("out", "[3]")
        mlog.close()
    assert (tmp_path / "ocpp.log").read_text() == "1970-01-01T00:00:00.000Z out [3]\n"
    assert len(warnings_of(caplog)) == 1


def test_reopen_recreates_removed_directory(tmp_path: Path) -> None:
    directory = tmp_path / "msgs"
    mlog = MessageLog(directory, max_bytes=1000, backups=1, clock=lambda: 0.0)
    mlog.write("out", "[1]")
    shutil.rmtree(directory)
    mlog.write("out", "[2]")  # lands in the unlinked file; must not raise
    mlog.reopen()
    mlog.write("out", "[3]")
    mlog.close()
    assert (directory / "ocpp.log").read_text() == "1970-01-01T00:00:00.000Z out [3]\n"
