"""build_archive over real parts: a journald namespace instance fed by the daemon's own journal
handler, message logs written and rotated by MessageLog, settings loaded from TOML files, a
migrated SQLite database with queued messages, and a security log file."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import socket
import tarfile
import tomllib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from service.config import Settings, load_settings
from service.firmware.diagnostics import (
    REDACTED,
    build_archive,
    journal_command,
    journal_namespace,
    redact_toml,
    redact_toml_lines,
    toml_text,
)
from service.journal import reset_logging, setup_logging
from service.msglog import MessageLog
from service.store.db import Database
from service.store.queue import DurableQueue
from tests.service.test_journal import _read_entries, journald

__all__ = ["journald"]  # the journald namespace fixture, shared with test_journal

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(T0 + seconds, UTC)


MAIN = """
[identity]
charge_point_id = "CP-DIAG"
vendor = "Acme"
model = "Wallbox"
firmware_version = "1.2.3"

[csms]
url = "wss://csms.example:443/ocpp"
security_profile = 2
basic_auth_password = "hunter2-secret-0123"

[paths]
state_directory = "{state}"
message_log_directory = "{messages}"

[logging]
journal_socket = "{socket}"

[[evse]]
id = 1
[evse.token_reader]
backend = "sim"
[[evse.connectors]]
max_current_a = 16.0
"""

DROP_IN = """
[firmware]
backend = "command"
install_command = ["/usr/bin/install-bundle", "{bundle}"]
swupdate_public_key = "KEYFILE"
"""


class Site:
    def __init__(self, root: Path, journal_socket: str = "") -> None:
        self.root = root
        self.state = root / "state"
        self.messages = root / "messages"
        self.out = root / "out"
        for directory in (self.state, self.messages, self.out):
            directory.mkdir(parents=True, exist_ok=True)
        etc = root / "etc"
        (etc / "conf.d").mkdir(parents=True)
        (etc / "evsed.toml").write_text(
            MAIN.format(state=self.state, messages=self.messages, socket=journal_socket)
        )
        (etc / "swupdate-key.pem").write_text("not really a key\n")
        drop_in = DROP_IN.replace("KEYFILE", str(etc / "swupdate-key.pem"))
        (etc / "conf.d" / "10-firmware.toml").write_text(drop_in)
        self.settings: Settings = load_settings(etc / "evsed.toml")
        self.db = Database.open(self.state / "evsed.db")
        self.security_log = self.state / "security.log"

    def build(self, name: str = "diag.tar.gz", **kwargs: Any) -> dict[str, bytes]:
        options: dict[str, Any] = {
            "log_type": "DiagnosticsLog",
            "start": None,
            "stop": None,
            "settings": self.settings,
            "db": self.db,
            "security_log": self.security_log,
        }
        options.update(kwargs)
        path = build_archive(self.out / name, **options)
        assert path == self.out / name
        return members(path)


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        out: dict[str, bytes] = {}
        for info in tar.getmembers():
            assert info.isfile() and not info.name.startswith(("/", ".."))
            assert info.mode == 0o640
            handle = tar.extractfile(info)
            assert handle is not None
            out[info.name] = handle.read()
        return out


def manifest(files: dict[str, bytes]) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(files["manifest.json"])
    return document


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path)
    yield s
    s.db.close()


def write_message_logs(directory: Path) -> None:
    """Three generations of real message logs: ocpp.log.2 covers T0..T0+9, ocpp.log.1
    T0+100..T0+109, ocpp.log T0+200..T0+209 (each file's mtime is its last line's time)."""
    now = [T0]
    frame = '[2,"id-000","Heartbeat",{}]'
    line_size = len(f"2027-01-15T08:00:00.000Z out {frame}\n")
    log = MessageLog(directory, max_bytes=10 * line_size, backups=5, clock=lambda: now[0])
    try:
        for batch in range(3):
            for i in range(10):
                now[0] = T0 + batch * 100 + i
                log.write("out", frame.replace("000", f"{batch}{i:02d}"))
            os.utime(directory / "ocpp.log", (now[0], now[0]))
    finally:
        log.close()
    assert sorted(p.name for p in directory.iterdir()) == ["ocpp.log", "ocpp.log.1", "ocpp.log.2"]


def write_security_log(path: Path) -> None:
    lines = [
        {"timestamp": "2027-01-15T08:00:00.000Z", "type": "StartupOfTheDevice"},
        {"timestamp": "2027-01-15T08:01:50.000Z", "type": "FirmwareUpdated", "techInfo": "1.2.3"},
        {"timestamp": "2027-01-15T08:03:20.000Z", "type": "SettingSystemTime"},
    ]
    path.write_text("".join(json.dumps({**e, "critical": True}) + "\n" for e in lines))


# --------------------------------------------------------------------------- the whole archive


def test_diagnostics_archive_contents(site: Site) -> None:
    write_message_logs(site.messages)
    write_security_log(site.security_log)
    queue = DurableQueue(site.db, max_other=10)
    for i in range(2):
        queue.append(f"o{i}", "StatusNotification", {}, kind="other", now=T0)
    queue.append("t0", "StartTransaction", {}, kind="transaction", now=T0)
    site.db.execute("INSERT INTO sessions (session_id, evse_id) VALUES ('s-1', 1)")
    before = set(site.out.iterdir())

    # The daemon calls it in a worker thread: the database must not be touched across threads.
    files = asyncio.run(
        asyncio.to_thread(
            site.build, start=at(105), stop=at(150), journalctl="/nonexistent/journalctl"
        )
    )

    assert set(site.out.iterdir()) - before == {site.out / "diag.tar.gz"}  # no leftovers
    assert (site.out / "diag.tar.gz").stat().st_mode & 0o777 == 0o640
    assert sorted(files) == [
        "config/conf.d/10-firmware.toml",
        "config/evsed.toml",
        "database.txt",
        "journal-error.txt",
        "manifest.json",
        "messages/ocpp.log.1",
        "security.log",
    ]
    # messages: whole files, only those overlapping the window
    assert files["messages/ocpp.log.1"] == (site.messages / "ocpp.log.1").read_bytes()
    # security log: the window only
    assert [json.loads(line)["type"] for line in files["security.log"].splitlines()] == [
        "FirmwareUpdated"
    ]
    # database
    report = files["database.txt"].decode()
    assert "integrity_check: ok" in report
    assert f"user_version: {site.db.user_version}" in report
    assert "queued messages: other 2, transaction 1" in report
    assert "open sessions: 1" in report
    assert f"size: {(site.state / 'evsed.db').stat().st_size} bytes" in report
    # config: secrets redacted, the rest kept, valid TOML
    main = tomllib.loads(files["config/evsed.toml"].decode())
    assert main["csms"]["basic_auth_password"] == REDACTED
    assert main["csms"]["url"] == "wss://csms.example:443/ocpp"
    assert main["identity"]["charge_point_id"] == "CP-DIAG"
    assert main["evse"][0]["token_reader"]["backend"] == "sim"  # a token reader is no secret
    assert b"hunter2" not in b"".join(files.values())
    drop_in = tomllib.loads(files["config/conf.d/10-firmware.toml"].decode())
    assert drop_in["firmware"]["swupdate_public_key"] == REDACTED
    assert drop_in["firmware"]["install_command"] == ["/usr/bin/install-bundle", "{bundle}"]
    # journal: a missing journalctl is a note, not a failure
    assert b"not installed" in files["journal-error.txt"]
    document = manifest(files)
    assert document["logType"] == "DiagnosticsLog"
    assert document["chargePointId"] == "CP-DIAG" and document["firmwareVersion"] == "1.2.3"
    assert (document["start"], document["stop"]) == (
        "2027-01-15T08:01:45.000Z",
        "2027-01-15T08:02:30.000Z",
    )
    assert any("journal" in note for note in document["notes"])
    listed = {entry["name"]: entry for entry in document["files"]}
    assert set(listed) == set(files) - {"manifest.json"}
    assert listed["messages/ocpp.log.1"]["bytes"] == len(files["messages/ocpp.log.1"])


@pytest.mark.parametrize(
    ("start", "stop", "expected"),
    [
        (None, None, ["ocpp.log", "ocpp.log.1", "ocpp.log.2"]),
        (at(50), at(205), ["ocpp.log", "ocpp.log.1"]),
        (at(0), at(5), ["ocpp.log.2"]),
        (at(300), None, []),
        (None, at(-1), []),
    ],
)
def test_message_logs_overlapping_the_window(
    site: Site, start: datetime | None, stop: datetime | None, expected: list[str]
) -> None:
    write_message_logs(site.messages)
    files = site.build(start=start, stop=stop, journalctl="false")
    assert sorted(n.removeprefix("messages/") for n in files if n.startswith("messages/")) == (
        expected
    )
    if not expected:
        assert any("overlaps the window" in n for n in manifest(files)["notes"])


def test_security_log_archive_holds_only_the_security_log(site: Site) -> None:
    write_security_log(site.security_log)
    write_message_logs(site.messages)
    files = site.build(log_type="SecurityLog", start=at(0), stop=at(120))
    assert sorted(files) == ["manifest.json", "security.log"]
    assert [json.loads(line)["type"] for line in files["security.log"].splitlines()] == [
        "StartupOfTheDevice",
        "FirmwareUpdated",
    ]
    assert manifest(files)["logType"] == "SecurityLog"


def test_missing_pieces_become_notes(site: Site) -> None:
    settings = dataclasses.replace(
        site.settings,
        paths=dataclasses.replace(site.settings.paths, message_log_directory=None),
        source_files=(*site.settings.source_files, site.root / "gone.toml"),
    )
    files = site.build(settings=settings, journalctl="false")  # `false` exits with status 1
    notes = manifest(files)["notes"]
    assert b"exited with status 1" in files["journal-error.txt"]
    assert any("message log is off" in n for n in notes)
    assert any("gone.toml" in n and "cannot read" in n for n in notes)
    assert files["security.log"] == b""  # no security log yet: empty, not an error


def test_unparseable_config_is_redacted_line_by_line(site: Site) -> None:
    broken = site.root / "etc" / "conf.d" / "20-broken.toml"
    broken.write_text(
        '[csms]\nbasic_auth_password = "pw-one"\nurl = "ws://u:pw-two@host/x"\n'
        "this is not toml\n"
        'inline = { api_key = "pw-three", name = "kept" }\n'
        '#basic_auth_password = "pw-four"\n'
        'cert_key = """\npw-five\n"""\n'
        "[secrets]\nanything = 'pw-six'\n"
    )
    settings = dataclasses.replace(
        site.settings, source_files=(*site.settings.source_files, broken)
    )
    files = site.build(settings=settings, journalctl="false")
    text = files["config/conf.d/20-broken.toml"].decode()
    for secret in ("pw-one", "pw-two", "pw-three", "pw-four", "pw-five", "pw-six"):
        assert secret not in text, secret
    assert 'name = "kept"' in text and "this is not toml" in text
    assert any("20-broken.toml" in n and "line by line" in n for n in manifest(files)["notes"])


# --------------------------------------------------------------------------- bad requests


def test_bad_requests_write_nothing(site: Site) -> None:
    with pytest.raises(ValueError, match="after it stops"):
        site.build(start=at(10), stop=at(0))
    with pytest.raises(ValueError, match="unknown log type"):
        site.build(log_type="EverythingLog")
    with pytest.raises(ValueError, match="not a directory"):
        build_archive(
            site.root / "missing" / "x.tar.gz",
            log_type="DiagnosticsLog",
            start=None,
            stop=None,
            settings=site.settings,
            db=site.db,
            security_log=site.security_log,
        )
    (site.out / "dir.tar.gz").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        site.build(name="dir.tar.gz")
    assert [p.name for p in site.out.iterdir()] == ["dir.tar.gz"]
    assert not (site.root / "missing").exists()


def test_naive_window_is_utc(site: Site) -> None:
    write_security_log(site.security_log)
    files = site.build(
        log_type="SecurityLog", start=datetime(2027, 1, 15, 8, 1), stop=datetime(2027, 1, 15, 8, 4)
    )
    assert len(files["security.log"].splitlines()) == 2
    assert manifest(files)["start"] == "2027-01-15T08:01:00.000Z"


def test_unreadable_database_is_reported(site: Site) -> None:
    site.db.close()
    (site.state / "evsed.db").unlink()
    (site.state / "evsed.db").mkdir()  # the database path is not a database now
    files = site.build(journalctl="false")
    report = files["database.txt"].decode()
    assert "cannot open read-only" in report or "integrity_check: error" in report, report
    assert [p.name for p in site.out.iterdir()] == ["diag.tar.gz"]


# --------------------------------------------------------------------------- pieces


def test_journal_namespace_from_the_socket_path() -> None:
    assert journal_namespace("/run/systemd/journal.evsed/socket") == "evsed"
    assert journal_namespace("/run/systemd/journal/socket") is None
    assert journal_namespace("") is None
    assert journal_namespace("/tmp/journal.x/socket") is None


def test_journal_command(site: Site) -> None:
    argv = journal_command(site.settings, at(0), at(1.5))
    assert argv == [
        "journalctl",
        "-o",
        "json",
        "--no-pager",
        "-q",
        f"--since=@{T0:.6f}",
        f"--until=@{T0 + 1.5:.6f}",
        "SYSLOG_IDENTIFIER=evsed",
    ]


def test_redaction_rules_and_toml_round_trip() -> None:
    data = tomllib.loads(
        """
        top = "x"
        api_token = 5
        Authorization = "Bearer abc"
        [ocpp]
        AuthorizationKey = "0011"
        HeartbeatInterval = 300
        [csms]
        url = "ftp://user:pw@host/dir"
        keys = ["a", "b"]
        [secret_store]
        path = "/x"
        nested = { user = "u" }
        [[evse]]
        id = 1
        [evse.token_reader.options]
        port = "/dev/ttyS0"
        [[evse]]
        id = 2
        "with space" = 1.5
        when = 2027-01-15T08:00:00Z
        weird = "tab\\tdel\\u007f"
        """
    )
    redacted = redact_toml(data)
    assert redacted["top"] == "x"
    assert redacted["api_token"] == REDACTED and redacted["Authorization"] == REDACTED
    assert redacted["ocpp"] == {"AuthorizationKey": REDACTED, "HeartbeatInterval": 300}
    assert redacted["csms"]["url"] == f"ftp://user:{REDACTED}@host/dir"
    assert redacted["csms"]["keys"] == REDACTED
    assert redacted["secret_store"] == {"path": REDACTED, "nested": {"user": REDACTED}}
    assert redacted["evse"][0]["token_reader"]["options"]["port"] == "/dev/ttyS0"
    assert tomllib.loads(toml_text(redacted)) == redacted
    assert tomllib.loads(toml_text(data)) == data  # the writer is faithful


def test_line_redaction_keeps_structure() -> None:
    text = 'a = 1\npassword = "x"\n[t]\nb = 2\n'
    assert redact_toml_lines(text) == f'a = 1\npassword = "{REDACTED}"\n[t]\nb = 2\n'


# --------------------------------------------------------------------------- real journald


def test_journal_of_a_namespace_instance(journald: tuple[str, str], tmp_path: Path) -> None:
    name, socket_path = journald
    s = Site(tmp_path, journal_socket=socket_path)
    try:
        token = uuid.uuid4().hex
        setup_logging("info", journal_socket=socket_path)
        try:
            logging.getLogger("evsed.ocpp").warning("diagnostics probe %s", token)
        finally:
            reset_logging()
        # Another program's record in the same namespace must stay out of the archive.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(
                f"MESSAGE=other {token}\nSYSLOG_IDENTIFIER=someone-else\n".encode(), socket_path
            )
        assert _read_entries(name, token, 1), "journald did not store the record"

        now = datetime.now(UTC)
        files = s.build(start=now - timedelta(minutes=5), stop=now + timedelta(minutes=5))
        records = [json.loads(line) for line in files["journal.jsonl"].splitlines()]
        ours = [r for r in records if token in str(r.get("MESSAGE", ""))]
        assert [r["MESSAGE"] for r in ours] == [f"diagnostics probe {token}"]
        assert all(r["SYSLOG_IDENTIFIER"] == "evsed" for r in records)
        assert "journal-error.txt" not in files

        # A window in the past holds none of it.
        old = s.build(name="old.tar.gz", start=at(-10), stop=at(0))
        assert token.encode() not in old["journal.jsonl"]
    finally:
        s.db.close()


def test_a_file_that_shrinks_while_archived_is_padded(tmp_path: Path) -> None:
    from service.firmware.diagnostics import _FixedSize

    path = tmp_path / "ocpp.log"
    path.write_bytes(b"x" * 100)
    with path.open("rb", buffering=0) as handle:
        reader = _FixedSize(handle, 100)
        first = reader.read(40)
        os.truncate(path, 50)  # rotation with backups = 0 truncates under the reader
        rest = reader.read(1000)
    assert first + rest == b"x" * 50 + b"\n" * 50
    assert reader.padded == 50 and reader.read(10) == b""
