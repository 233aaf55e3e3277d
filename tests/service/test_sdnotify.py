"""Tests for service.sdnotify against real AF_UNIX datagram sockets (path and abstract)."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.sdnotify import Notifier


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    # A short directory: AF_UNIX paths are limited to 108 bytes.
    with tempfile.TemporaryDirectory(prefix="evn-", dir="/tmp") as name:
        path = str(Path(name) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        try:
            yield sock
        finally:
            sock.close()


def test_messages_reach_the_socket(notify_socket: socket.socket) -> None:
    notifier = Notifier.from_env()
    assert notifier.enabled
    assert notifier.ready()
    assert notifier.status("connecting to CSMS\nretry 2")
    assert notifier.watchdog()
    assert notifier.stopping()
    assert notifier.notify(extend_timeout_usec=5_000_000, errno=0)
    notifier.close()

    received = [notify_socket.recv(4096) for _ in range(5)]
    assert received == [
        b"READY=1",
        b"STATUS=connecting to CSMS retry 2",
        b"WATCHDOG=1",
        b"STOPPING=1",
        b"EXTEND_TIMEOUT_USEC=5000000\nERRNO=0",
    ]


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"evsed-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(10)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notifier = Notifier.from_env()
        assert notifier.ready()
        assert notifier.send("STATUS=abstract")
        assert sock.recv(4096) == b"READY=1"
        assert sock.recv(4096) == b"STATUS=abstract"
    finally:
        sock.close()


def test_watchdog_interval() -> None:
    pid = str(os.getpid())
    assert Notifier.from_env({"WATCHDOG_USEC": "2000000"}).watchdog_interval() == 1.0
    env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": pid}
    assert Notifier.from_env(env).watchdog_interval() == 1.0
    other = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier.from_env(other).watchdog_interval() is None
    assert Notifier.from_env({}).watchdog_interval() is None
    assert Notifier.from_env({"WATCHDOG_USEC": "soon"}).watchdog_interval() is None


def test_no_notify_socket_is_a_no_op() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.status("x")
    assert not notifier.watchdog()
    assert not notifier.stopping()
    notifier.close()


def test_send_failure_never_raises_and_logs_once(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    with caplog.at_level(logging.DEBUG, logger="evsed.sdnotify"):
        assert not notifier.ready()
        assert not notifier.watchdog()
    failures = [r for r in caplog.records if r.name == "evsed.sdnotify"]
    assert len(failures) == 1
    assert failures[0].levelno == logging.DEBUG
    notifier.close()


def test_from_env_can_unset_the_variables() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "4000000", "PATH": "/bin"}
    notifier = Notifier.from_env(env, unset=True)
    assert notifier.enabled
    assert notifier.watchdog_interval() == 2.0
    assert env == {"PATH": "/bin"}
