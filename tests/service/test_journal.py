"""Tests for service.journal: native protocol on real sockets, a real journald, stderr lines.

The journald tests start an isolated namespace instance (`systemd-journald NAME`) as a child
process and read entries back with `journalctl --namespace`; they skip where the binary is
missing or we are not root. The native-protocol tests bind their own datagram socket and run
everywhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import linecache
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.journal import (
    JournalHandler,
    TextFormatter,
    encode_field,
    journal_stream_matches,
    log_fields,
    reset_logging,
    setup_logging,
    should_use_journal,
    syslog_priority,
    utc_timestamp,
)

JOURNALD = Path("/lib/systemd/systemd-journald")


def parse_native(data: bytes) -> dict[str, bytes]:
    """Decode one journald native-protocol entry (both field forms) into name -> raw value."""
    fields: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        newline = data.index(b"\n", pos)
        line = data[pos:newline]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            fields[name.decode("ascii")] = value
            pos = newline + 1
        else:
            size = int.from_bytes(data[newline + 1 : newline + 9], "little")
            start = newline + 9
            fields[line.decode("ascii")] = data[start : start + size]
            assert data[start + size : start + size + 1] == b"\n", "binary field not terminated"
            pos = start + size + 1
    return fields


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="evj-", dir="/tmp") as name:
        yield Path(name)


@pytest.fixture
def receiver(short_dir: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(short_dir / "journal.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    yield sock, path
    sock.close()


@pytest.fixture
def clean_logging() -> Iterator[None]:
    root = logging.getLogger()
    evsed = logging.getLogger("evsed")
    saved = (root.level, evsed.level)
    yield
    reset_logging()
    root.setLevel(saved[0])
    evsed.setLevel(saved[1])


@contextlib.contextmanager
def attached_logger(name: str, handler: logging.Handler) -> Iterator[logging.Logger]:
    """A logger that sends only to `handler` (closed afterwards)."""
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        handler.close()


def receive_entry(sock: socket.socket) -> tuple[bytes, dict[str, bytes]]:
    data = sock.recv(1 << 20)
    return data, parse_native(data)


# --- pure pieces -------------------------------------------------------------------------------


def test_log_fields_only_given_keys() -> None:
    assert log_fields() == {}
    assert log_fields(action="Heartbeat", evse_id=0) == {"ocpp_action": "Heartbeat", "evse_id": 0}
    assert log_fields(message_id="m1", transaction_id="t1", connector_id=2, direction="in") == {
        "ocpp_message_id": "m1",
        "transaction_id": "t1",
        "connector_id": 2,
        "ocpp_direction": "in",
    }


def test_encode_field_simple_and_binary_safe() -> None:
    assert encode_field("PRIORITY", "6") == b"PRIORITY=6\n"
    encoded = encode_field("MESSAGE", "a\nb=c")
    assert encoded == b"MESSAGE\n" + (5).to_bytes(8, "little") + b"a\nb=c\n"
    assert parse_native(encoded + encode_field("X", b"\x00\xff")) == {
        "MESSAGE": b"a\nb=c",
        "X": b"\x00\xff",
    }


def test_syslog_priority_mapping() -> None:
    got = [syslog_priority(level) for level in (10, 20, 30, 40, 50, 5)]
    assert got == [7, 6, 4, 3, 2, 7]


def test_utc_timestamp_has_milliseconds() -> None:
    assert utc_timestamp(1_700_000_000.5) == "2023-11-14T22:13:20.500Z"
    assert utc_timestamp(0.0) == "1970-01-01T00:00:00.000Z"


# --- JOURNAL_STREAM decision -------------------------------------------------------------------


def test_journal_stream_decision_uses_device_and_inode(tmp_path: Path) -> None:
    with open(tmp_path / "fake-stderr", "w") as fake:
        fd = fake.fileno()
        st = os.fstat(fd)
        matching = f"{st.st_dev}:{st.st_ino}"
        other = f"{st.st_dev}:{st.st_ino + 1}"
        assert journal_stream_matches(matching, fd)
        assert not journal_stream_matches(other, fd)
        assert not journal_stream_matches("garbage", fd)
        assert not journal_stream_matches(None, fd)
        assert should_use_journal({"JOURNAL_STREAM": matching}, stderr_fd=fd)
        assert not should_use_journal({"JOURNAL_STREAM": other}, stderr_fd=fd)
        assert not should_use_journal({}, stderr_fd=fd)


# --- native protocol on our own socket ---------------------------------------------------------


def test_handler_writes_native_fields(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    with attached_logger("evsed.test.native", JournalHandler(path)) as log:
        log.info(
            "sent %s",
            "BootNotification",
            extra=log_fields(
                action="BootNotification",
                message_id="m-1",
                evse_id=1,
                transaction_id="tx-9",
                connector_id=2,
                direction="out",
            ),
        )
        log.warning("plain")

    _, fields = receive_entry(sock)
    assert fields["MESSAGE"] == b"sent BootNotification"
    assert fields["PRIORITY"] == b"6"
    assert fields["SYSLOG_IDENTIFIER"] == b"evsed"
    assert fields["CODE_FILE"].decode() == __file__
    assert "log.info(" in linecache.getline(__file__, int(fields["CODE_LINE"]))
    assert fields["CODE_FUNC"] == b"test_handler_writes_native_fields"
    assert fields["LOGGER"] == b"evsed.test.native"
    assert fields["THREAD_NAME"] == b"MainThread"
    assert fields["OCPP_ACTION"] == b"BootNotification"
    assert fields["OCPP_MESSAGE_ID"] == b"m-1"
    assert fields["EVSE_ID"] == b"1"
    assert fields["TRANSACTION_ID"] == b"tx-9"
    assert fields["CONNECTOR_ID"] == b"2"
    assert fields["OCPP_DIRECTION"] == b"out"

    _, plain = receive_entry(sock)
    assert plain["MESSAGE"] == b"plain"
    assert plain["PRIORITY"] == b"4"
    assert not {"OCPP_ACTION", "EVSE_ID", "TRANSACTION_ID"} & plain.keys()


def test_multiline_message_and_traceback_are_binary_safe(
    receiver: tuple[socket.socket, str],
) -> None:
    sock, path = receiver
    with attached_logger("evsed.test.multiline", JournalHandler(path)) as log:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("first line\nsecond line")

    raw, fields = receive_entry(sock)
    assert raw.startswith(b"MESSAGE\n")  # the length-prefixed form, not MESSAGE=
    message = fields["MESSAGE"].decode()
    assert message.startswith("first line\nsecond line\nTraceback (most recent call last):")
    assert "RuntimeError: boom" in message
    assert fields["PRIORITY"] == b"3"


def test_oversized_entry_goes_through_sealed_memfd(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    big = "x" * (1 << 20)  # far above the default datagram limit (EMSGSIZE)
    with attached_logger("evsed.test.big", JournalHandler(path)) as log:
        log.info(big, extra=log_fields(evse_id=3))

    data, fds, _flags, _addr = socket.recv_fds(sock, 4096, 1)
    assert data == b""
    assert len(fds) == 1
    fd = fds[0]
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        for seal in (fcntl.F_SEAL_SHRINK, fcntl.F_SEAL_GROW, fcntl.F_SEAL_WRITE):
            assert seals & seal
        size = os.fstat(fd).st_size
        content = os.pread(fd, size, 0)
    finally:
        os.close(fd)
    fields = parse_native(content)
    assert fields["MESSAGE"] == big.encode()
    assert fields["EVSE_ID"] == b"3"


def test_unreachable_socket_falls_back_to_stream_and_recovers(short_dir: Path) -> None:
    missing = str(short_dir / "later.sock")
    fallback = io.StringIO()
    handler = JournalHandler(missing, fallback=fallback)
    with attached_logger("evsed.test.fallback", handler) as log:
        log.info("one", extra=log_fields(action="Heartbeat"))
        log.error("two")
        text = fallback.getvalue()
        assert text.count("cannot write to journal socket") == 1
        assert re.search(r"INFO  evsed\.test\.fallback: one \[ocpp_action=Heartbeat\]$", text, re.M)
        assert re.search(r"ERROR evsed\.test\.fallback: two$", text, re.M)

        # Once the socket exists, entries go to it again.
        late = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        late.bind(missing)
        late.settimeout(10)
        try:
            log.info("three")
            assert parse_native(late.recv(65536))["MESSAGE"] == b"three"
        finally:
            late.close()
        assert "three" not in fallback.getvalue()

        # A new outage warns again.
        os.unlink(missing)
        log.info("four")
        assert fallback.getvalue().count("cannot write to journal socket") == 2


# --- setup_logging ------------------------------------------------------------------------------


def test_setup_logging_stderr_lines(clean_logging: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    stream = io.StringIO()
    setup_logging("info", stream=stream)
    log = logging.getLogger("evsed.transport")
    log.info(
        "connected to %s",
        "ws://127.0.0.1:9000/cp1",
        extra=log_fields(action="BootNotification", evse_id=1),
    )
    log.debug("hidden at info level")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    pattern = (
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO  evsed\.transport: "
        r"connected to ws://127\.0\.0\.1:9000/cp1 \[ocpp_action=BootNotification evse_id=1\]"
    )
    assert re.fullmatch(pattern, lines[0])


def test_setup_logging_is_idempotent(clean_logging: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    first, second = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    before = list(root.handlers)
    setup_logging("debug", stream=first)
    setup_logging("WARNING", stream=second)
    added = [h for h in root.handlers if h not in before]
    assert len(added) == 1
    logging.getLogger("evsed.x").warning("only once")
    logging.getLogger("evsed.x").info("filtered")
    assert first.getvalue() == ""
    assert second.getvalue().count("only once") == 1
    assert "filtered" not in second.getvalue()
    assert logging.getLogger("evsed").getEffectiveLevel() == logging.WARNING


def test_setup_logging_rejects_unknown_level(clean_logging: None) -> None:
    with pytest.raises(ValueError, match="verbose"):
        setup_logging("verbose")


def test_setup_logging_with_journal_socket(
    clean_logging: None, receiver: tuple[socket.socket, str]
) -> None:
    sock, path = receiver
    setup_logging("debug", journal_socket=path)
    logging.getLogger("evsed.store").debug("queued", extra=log_fields(transaction_id="t-5"))
    _, fields = receive_entry(sock)
    assert fields["MESSAGE"] == b"queued"
    assert fields["PRIORITY"] == b"7"
    assert fields["TRANSACTION_ID"] == b"t-5"
    assert fields["LOGGER"] == b"evsed.store"


def test_text_formatter_appends_traceback() -> None:
    record = logging.LogRecord("evsed.a", logging.ERROR, __file__, 1, "bad", None, None)
    try:
        raise ValueError("why")
    except ValueError:
        record.exc_info = sys.exc_info()
    text = TextFormatter().format(record)
    assert text.splitlines()[0].endswith("ERROR evsed.a: bad")
    assert "ValueError: why" in text


# --- a real journald -----------------------------------------------------------------------------


def _journal_dirs(name: str) -> list[Path]:
    try:
        machine_id = Path("/etc/machine-id").read_text().strip()
    except OSError:
        machine_id = ""
    dirs = [Path(f"/run/systemd/journal.{name}")]
    if machine_id:
        dirs += [
            Path(f"/var/log/journal/{machine_id}.{name}"),
            Path(f"/run/log/journal/{machine_id}.{name}"),
        ]
    return dirs


@pytest.fixture
def journald() -> Iterator[tuple[str, str]]:
    if not JOURNALD.exists() or shutil.which("journalctl") is None:
        pytest.skip("systemd-journald / journalctl not installed")
    if os.geteuid() != 0:
        pytest.skip("a journald namespace instance needs root")
    name = f"evsedtest{uuid.uuid4().hex[:10]}"
    socket_path = f"/run/systemd/journal.{name}/socket"
    proc = subprocess.Popen(
        [str(JOURNALD), name], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 15
        while not os.path.exists(socket_path):
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                pytest.skip(f"systemd-journald did not start: {err.strip()}")
            if time.monotonic() > deadline:
                pytest.fail("journald namespace socket did not appear")
            time.sleep(0.05)
        yield name, socket_path
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()
        for directory in _journal_dirs(name):
            shutil.rmtree(directory, ignore_errors=True)


def _read_entries(name: str, token: str, count: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 20
    while True:
        out = subprocess.run(
            ["journalctl", f"--namespace={name}", "-o", "json", "--all", "--no-pager"],
            capture_output=True,
            check=False,
            timeout=30,
        ).stdout
        entries = [json.loads(line) for line in out.splitlines() if line.strip()]
        ours = [
            e
            for e in entries
            if e.get("SYSLOG_IDENTIFIER") == "evsed" and token in str(e.get("MESSAGE", ""))
        ]
        if len(ours) >= count or time.monotonic() > deadline:
            return ours
        time.sleep(0.2)


def test_real_journald_receives_fields(journald: tuple[str, str], clean_logging: None) -> None:
    name, socket_path = journald
    token = uuid.uuid4().hex
    setup_logging("debug", journal_socket=socket_path)
    log = logging.getLogger("evsed.ocpp")
    log.info(
        "boot %s",
        token,
        extra=log_fields(action="BootNotification", evse_id=1, message_id="mid-1"),
    )
    log.warning("multi %s\nsecond line\n\tthird", token)
    big = token + "-" + "y" * 300_000
    log.info(big)

    entries = _read_entries(name, token, 3)
    assert len(entries) == 3, entries
    boot, multi, large = sorted(entries, key=lambda e: int(str(e["__MONOTONIC_TIMESTAMP"])))

    assert boot["MESSAGE"] == f"boot {token}"
    assert boot["PRIORITY"] == "6"
    assert boot["OCPP_ACTION"] == "BootNotification"
    assert boot["EVSE_ID"] == "1"
    assert boot["OCPP_MESSAGE_ID"] == "mid-1"
    assert boot["LOGGER"] == "evsed.ocpp"
    assert boot["CODE_FUNC"] == "test_real_journald_receives_fields"
    assert boot["_TRANSPORT"] == "journal"
    assert "TRANSACTION_ID" not in boot

    assert multi["MESSAGE"] == f"multi {token}\nsecond line\n\tthird"
    assert multi["PRIORITY"] == "4"

    assert large["MESSAGE"] == big  # sent through the memfd path, not truncated
