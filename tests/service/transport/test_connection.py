"""Tests of service.transport.connection and .tls against real websockets servers on 127.0.0.1.

Servers are websockets' own asyncio server (plain and TLS with certificates from tests.certs);
nothing in the code under test is replaced. Every test is bounded by asyncio.timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import random
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import Server, ServerConnection, basic_auth, serve
from websockets.datastructures import Headers
from websockets.frames import Close
from websockets.http11 import Request, Response

from service.transport.backoff import Backoff
from service.transport.connection import (
    MAX_MESSAGE_SIZE,
    USER_AGENT,
    ConnectionManager,
    ConnectionProfile,
    TransportError,
    open_connection,
)
from service.transport.tls import (
    TransportConfigError,
    basic_auth_header,
    build_client_ssl_context,
)
from tests.certs import CertPair, make_ca, make_leaf

Handler = Callable[[ServerConnection], Awaitable[None]]
LIMIT = 20.0  # generous bound against hangs only; nothing asserts on time


# --- helpers -------------------------------------------------------------------------------------


@dataclass
class Seen:
    """What the test server saw of each connection."""

    paths: list[str]
    headers: list[Headers]
    subprotocols: list[str | None]
    close_codes: list[int | None]

    @classmethod
    def new(cls) -> Seen:
        return cls([], [], [], [])


def recording_handler(seen: Seen, *, echo: bool = True) -> Handler:
    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        seen.paths.append(ws.request.path)
        seen.headers.append(ws.request.headers)
        seen.subprotocols.append(ws.subprotocol)
        try:
            if echo:
                async for message in ws:
                    await ws.send(message)
            else:
                await ws.wait_closed()
        finally:
            seen.close_codes.append(ws.close_code)

    return handler


@contextlib.asynccontextmanager
async def ws_server(handler: Handler, port: int = 0, **kwargs: Any) -> AsyncIterator[Server]:
    kwargs.setdefault("compression", None)
    server = await serve(handler, "127.0.0.1", port, **kwargs)
    try:
        yield server
    finally:
        server.close()
        await server.wait_closed()


def port_of(server: Server) -> int:
    port: int = next(iter(server.sockets)).getsockname()[1]
    return port


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def plain_profile(port: int, **changes: Any) -> ConnectionProfile:
    profile = ConnectionProfile(
        url=f"ws://127.0.0.1:{port}/ocpp",
        charge_point_id="CP1",
        ping_interval_s=0,
        connect_timeout_s=5,
        close_timeout_s=1,
    )
    return replace(profile, **changes)


@dataclass
class Pki:
    server_ca: CertPair
    other_ca: CertPair
    client_ca: CertPair
    server: CertPair
    expired_server: CertPair
    wrong_name_server: CertPair
    client: CertPair
    untrusted_client: CertPair


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    server_ca = make_ca(d, "server-ca")
    other_ca = make_ca(d, "other-ca")
    client_ca = make_ca(d, "client-ca")
    day = datetime.timedelta(days=1)
    return Pki(
        server_ca=server_ca,
        other_ca=other_ca,
        client_ca=client_ca,
        server=make_leaf(server_ca, d, "server"),
        expired_server=make_leaf(server_ca, d, "expired", not_before=-30 * day, not_after=-day),
        wrong_name_server=make_leaf(
            server_ca, d, "wrong-name", dns_names=("other.example",), ip_addresses=("10.9.9.9",)
        ),
        client=make_leaf(client_ca, d, "client", client=True),
        untrusted_client=make_leaf(other_ca, d, "untrusted-client", client=True),
    )


def server_tls(leaf: CertPair, client_ca: CertPair | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(leaf.cert_path, leaf.key_path)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca.cert_path)
    return context


def tls_profile(port: int, ca: CertPair, **changes: Any) -> ConnectionProfile:
    profile = ConnectionProfile(
        url=f"wss://127.0.0.1:{port}/ocpp",
        charge_point_id="CP1",
        security_profile=2,
        basic_auth_password="s3cret",
        ca_bundle=ca.cert_path,
        ping_interval_s=0,
        connect_timeout_s=5,
        close_timeout_s=1,
    )
    return replace(profile, **changes)


async def open_expecting_error(profile: ConnectionProfile) -> TransportError:
    async with asyncio.timeout(LIMIT):
        with pytest.raises(TransportError) as info:
            conn, _ = await open_connection(profile)
            await conn.close()
    return info.value


# --- profiles, headers, tls.py -------------------------------------------------------------------


def test_endpoint_appends_the_percent_encoded_charge_point_id() -> None:
    profile = ConnectionProfile(url="ws://csms.example:9000/ocpp/", charge_point_id="CP 1/ä?#")
    assert profile.endpoint == "ws://csms.example:9000/ocpp/CP%201%2F%C3%A4%3F%23"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"url": "wss://h/ocpp"}, "needs a ws:// URL"),
        ({"security_profile": 2}, "needs a wss:// URL"),
        ({"security_profile": 5}, "security profile must be"),
        ({"security_profile": 1}, "needs a Basic auth password"),
        ({"url": "wss://h/ocpp", "security_profile": 3}, "needs a client certificate"),
        ({"charge_point_id": ""}, "must not be empty"),
        ({"subprotocols": ()}, "subprotocol"),
        ({"ping_timeout_s": -1.0}, "ping_timeout_s"),
        ({"connect_timeout_s": 0.0}, "connect_timeout_s"),
        ({"close_timeout_s": 0.0}, "close_timeout_s"),
    ],
)
def test_profile_rejects_inconsistent_settings(changes: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {"url": "ws://h/ocpp", "charge_point_id": "CP1"} | changes
    with pytest.raises(TransportConfigError, match=message):
        ConnectionProfile(**fields)


def test_profile_repr_hides_the_password() -> None:
    profile = ConnectionProfile(
        url="ws://h/ocpp", charge_point_id="CP1", security_profile=1, basic_auth_password="hunter2"
    )
    assert "hunter2" not in repr(profile)


def test_basic_auth_header() -> None:
    # base64("CP1:s3cret")
    assert basic_auth_header("CP1", "s3cret") == "Basic Q1AxOnMzY3JldA=="


def test_no_ssl_context_for_plain_profiles() -> None:
    for profile in (0, 1):
        context = build_client_ssl_context(
            security_profile=profile, ca_bundle=None, client_certificate=None, client_key=None
        )
        assert context is None


def test_profile_2_context_verifies_server_and_host_name(pki: Pki) -> None:
    context = build_client_ssl_context(
        security_profile=2, ca_bundle=pki.server_ca.cert_path, client_certificate=None,
        client_key=None,
    )  # fmt: skip
    assert context is not None
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert len(context.get_ca_certs()) == 1


def test_unreadable_or_invalid_tls_files_name_the_file(pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        pki.client.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass"),
        )
    )
    missing = tmp_path / "missing.pem"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"ca_bundle": missing}, f"cannot read CA bundle {missing}"),
        ({"ca_bundle": garbage}, f"CA bundle {garbage} holds no usable PEM certificate"),
        ({"client_certificate": missing}, f"cannot read client certificate {missing}"),
        ({"client_certificate": garbage}, f"client certificate {garbage} is not a PEM"),
        ({"client_key": missing}, f"cannot read client key {missing}"),
        ({"client_key": garbage}, f"client key {garbage} is not a PEM private key"),
        ({"client_key": encrypted}, f"client key {encrypted} is encrypted"),
        ({"client_key": pki.server.key_path}, "does not match client certificate"),
    ]
    for changes, message in cases:
        settings: dict[str, Any] = {
            "security_profile": 3,
            "ca_bundle": pki.server_ca.cert_path,
            "client_certificate": pki.client.cert_path,
            "client_key": pki.client.key_path,
        } | changes
        with pytest.raises(TransportConfigError) as info:
            build_client_ssl_context(**settings)
        assert message in str(info.value)


async def test_config_error_surfaces_as_transport_error(tmp_path: Path) -> None:
    profile = tls_profile(free_port(), make_ca(tmp_path, "ca"), ca_bundle=tmp_path / "nope.pem")
    error = await open_expecting_error(profile)
    assert error.reason == "config"
    assert "nope.pem" in str(error)


# --- open_connection over plain ws ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("server_offers", "expected"),
    [
        (["ocpp1.6"], "ocpp1.6"),
        (["ocpp2.0.1"], "ocpp2.0.1"),
        (["ocpp2.0.1", "ocpp1.6"], "ocpp2.0.1"),
    ],
)
async def test_subprotocol_negotiation(server_offers: list[str], expected: str) -> None:
    seen = Seen.new()
    async with (
        asyncio.timeout(LIMIT),
        ws_server(recording_handler(seen), subprotocols=server_offers) as server,
    ):
        conn, subprotocol = await open_connection(plain_profile(port_of(server)))
        try:
            assert subprotocol == expected
            assert conn.subprotocol == expected
        finally:
            await conn.close()
    assert seen.subprotocols == [expected]


async def test_server_without_subprotocol_is_refused_with_1002() -> None:
    seen = Seen.new()
    async with ws_server(recording_handler(seen, echo=False)) as server:
        error = await open_expecting_error(plain_profile(port_of(server)))
        async with asyncio.timeout(LIMIT):
            while not seen.close_codes:
                await asyncio.sleep(0.01)
    assert error.reason == "no-subprotocol"
    assert "ocpp2.0.1, ocpp1.6" in str(error)
    assert seen.close_codes == [1002]


async def test_server_sees_path_headers_and_can_send_large_messages() -> None:
    seen = Seen.new()
    async with (
        asyncio.timeout(LIMIT),
        ws_server(recording_handler(seen), subprotocols=["ocpp1.6"], max_size=None) as server,
    ):
        profile = plain_profile(port_of(server), charge_point_id="CP 1/ä")
        conn, _ = await open_connection(profile)
        try:
            big = "x" * (2 * 1024 * 1024)  # above websockets' 1 MiB default, below our limit
            await conn.send(big)
            assert await conn.recv() == big
        finally:
            await conn.close()
    assert MAX_MESSAGE_SIZE >= 2 * 1024 * 1024
    assert seen.paths == ["/ocpp/CP%201%2F%C3%A4"]
    assert seen.headers[0]["User-Agent"] == USER_AGENT
    assert USER_AGENT.startswith("evsed/")
    assert "Authorization" not in seen.headers[0]  # profile 0
    assert "Sec-WebSocket-Extensions" not in seen.headers[0]  # compression off


async def test_profile_1_basic_auth_accepted_and_rejected() -> None:
    seen = Seen.new()
    auth = basic_auth(realm="csms", credentials=("CP1", "s3cret"))
    async with ws_server(
        recording_handler(seen), subprotocols=["ocpp1.6"], process_request=auth
    ) as server:
        good = plain_profile(port_of(server), security_profile=1, basic_auth_password="s3cret")
        async with asyncio.timeout(LIMIT):
            conn, subprotocol = await open_connection(good)
            await conn.close()
        error = await open_expecting_error(replace(good, basic_auth_password="wrong"))
    assert subprotocol == "ocpp1.6"
    assert seen.headers[0]["Authorization"] == basic_auth_header("CP1", "s3cret")
    assert error.reason == "http-status"
    assert error.status_code == 401
    assert "401" in str(error)


async def test_http_404_is_reported_with_its_status() -> None:
    def not_found(ws: ServerConnection, request: Request) -> Response:
        return ws.respond(404, "no such charge point\n")

    async with ws_server(recording_handler(Seen.new()), process_request=not_found) as server:
        error = await open_expecting_error(plain_profile(port_of(server)))
    assert (error.reason, error.status_code) == ("http-status", 404)


async def test_nothing_listening_is_refused() -> None:
    error = await open_expecting_error(plain_profile(free_port()))
    assert error.reason == "refused"
    assert "refused" in str(error)


async def test_server_that_never_answers_times_out() -> None:
    handled = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()  # accept TCP, never answer the upgrade; ends when client aborts
        finally:
            writer.close()
            await writer.wait_closed()
            handled.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        error = await open_expecting_error(plain_profile(port, connect_timeout_s=0.3))
        async with asyncio.timeout(LIMIT):
            await handled.wait()
    finally:
        server.close()
        await server.wait_closed()
    assert error.reason == "timeout"


# --- open_connection over TLS (profiles 2 and 3) -------------------------------------------------


async def test_profile_2_connects_with_the_right_ca_and_sends_basic_auth(pki: Pki) -> None:
    seen = Seen.new()
    async with ws_server(
        recording_handler(seen),
        subprotocols=["ocpp2.0.1"],
        ssl=server_tls(pki.server),
        process_request=basic_auth(credentials=("CP1", "s3cret")),
    ) as server:
        async with asyncio.timeout(LIMIT):
            conn, subprotocol = await open_connection(tls_profile(port_of(server), pki.server_ca))
            try:
                await conn.send("over tls")
                assert await conn.recv() == "over tls"
            finally:
                await conn.close()
    assert subprotocol == "ocpp2.0.1"
    assert seen.headers[0]["Authorization"] == basic_auth_header("CP1", "s3cret")


@pytest.mark.parametrize(
    ("leaf", "expected"),
    [
        ("server", ["certificate verify failed", "unknown CA"]),  # verified against other_ca
        ("expired_server", ["certificate verify failed", "expired"]),
        ("wrong_name_server", ["certificate verify failed", "host name mismatch"]),
    ],
)
async def test_profile_2_server_certificate_failures(
    pki: Pki, leaf: str, expected: list[str]
) -> None:
    trusted = pki.other_ca if leaf == "server" else pki.server_ca
    server_cert: CertPair = getattr(pki, leaf)
    async with ws_server(
        recording_handler(Seen.new()), subprotocols=["ocpp1.6"], ssl=server_tls(server_cert)
    ) as server:
        error = await open_expecting_error(tls_profile(port_of(server), trusted))
    assert error.reason == "tls"
    for words in expected:
        assert words in str(error)


async def test_profile_3_connects_with_a_client_certificate_and_no_basic_auth(pki: Pki) -> None:
    seen = Seen.new()
    peers: list[Any] = []

    async def handler(ws: ServerConnection) -> None:
        peers.append(ws.transport.get_extra_info("peercert"))
        await recording_handler(seen)(ws)

    async with ws_server(
        handler, subprotocols=["ocpp1.6"], ssl=server_tls(pki.server, client_ca=pki.client_ca)
    ) as server:
        profile = tls_profile(
            port_of(server),
            pki.server_ca,
            security_profile=3,
            basic_auth_password="",
            client_certificate=pki.client.cert_path,
            client_key=pki.client.key_path,
        )
        async with asyncio.timeout(LIMIT):
            conn, subprotocol = await open_connection(profile)
            await conn.close()
    assert subprotocol == "ocpp1.6"
    assert "Authorization" not in seen.headers[0]
    subject = dict(item[0] for item in peers[0]["subject"])
    assert subject["commonName"] == "client"


@pytest.mark.parametrize("security_profile", [2, 3])
async def test_server_refusing_the_client_certificate_is_a_tls_error(
    pki: Pki, security_profile: int
) -> None:
    async with ws_server(
        recording_handler(Seen.new()),
        subprotocols=["ocpp1.6"],
        ssl=server_tls(pki.server, client_ca=pki.client_ca),
    ) as server:
        profile = tls_profile(port_of(server), pki.server_ca)
        if security_profile == 3:  # a certificate from a CA the server does not trust
            profile = replace(
                profile,
                security_profile=3,
                client_certificate=pki.untrusted_client.cert_path,
                client_key=pki.untrusted_client.key_path,
            )
        error = await open_expecting_error(profile)
    assert error.reason == "tls"
    assert "client certificate" in str(error)


# --- ConnectionManager ---------------------------------------------------------------------------


@dataclass
class Session:
    subprotocol: str
    close_sent: Close | None
    close_rcvd: Close | None


class Recorder:
    """on_connected / on_state for a ConnectionManager, remembering everything."""

    def __init__(self) -> None:
        self.states: list[tuple[str, str]] = []
        self.sessions: list[Session] = []
        self.started = 0
        self._changed = asyncio.Event()

    def on_state(self, state: str, detail: str) -> None:
        self.states.append((state, detail))
        self._changed.set()

    async def on_connected(self, conn: ClientConnection, subprotocol: str) -> None:
        self.started += 1
        self._changed.set()
        try:
            while True:  # ConnectionClosed ends this and goes to the manager, as in production
                await conn.recv()
        finally:
            self.sessions.append(
                Session(subprotocol, conn.protocol.close_sent, conn.protocol.close_rcvd)
            )
            self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            self._changed.clear()
            await self._changed.wait()

    def count(self, state: str, containing: str = "") -> int:
        return sum(1 for s, detail in self.states if s == state and containing in detail)


@contextlib.asynccontextmanager
async def running(manager: ConnectionManager) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(manager.run())
    try:
        yield task
    finally:
        manager.stop()
        async with asyncio.timeout(LIMIT):
            await task


def small_backoff() -> Backoff:
    return Backoff(0.05, 0.2, 0.1, rng=random.Random(1))


def manager_for(profile: ConnectionProfile, recorder: Recorder, **kwargs: Any) -> ConnectionManager:
    kwargs.setdefault("backoff", small_backoff())
    return ConnectionManager(
        profile, on_connected=recorder.on_connected, on_state=recorder.on_state, **kwargs
    )


async def test_manager_retries_until_the_server_comes_up(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="service.transport.connection")
    port = free_port()
    recorder = Recorder()
    seen = Seen.new()
    manager = manager_for(plain_profile(port), recorder)
    async with asyncio.timeout(LIMIT), running(manager):
        await recorder.wait_for(lambda: recorder.count("waiting", "refused") >= 3)
        assert not manager.connected
        async with ws_server(recording_handler(seen), port=port, subprotocols=["ocpp1.6"]):
            await recorder.wait_for(lambda: recorder.started == 1)
            assert manager.connected
            assert manager.current is not None
            assert recorder.count("connected", "ocpp1.6") == 1
    assert seen.paths == ["/ocpp/CP1"]
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.getMessage().startswith("cannot connect")
    ]
    assert len(warnings) >= 3
    assert all("[refused]" in w and "\n" not in w and "retrying in" in w for w in warnings)
    assert f"ws://127.0.0.1:{port}/ocpp/CP1" in warnings[0]


async def test_manager_reconnects_after_a_clean_server_close() -> None:
    connections = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:
            await ws.close(1000, "bye")
        else:
            await ws.wait_closed()

    recorder = Recorder()
    async with asyncio.timeout(LIMIT), ws_server(handler, subprotocols=["ocpp2.0.1"]) as server:
        manager = manager_for(plain_profile(port_of(server)), recorder)
        async with running(manager):
            await recorder.wait_for(lambda: recorder.started == 2)
    first = recorder.sessions[0]
    assert first.close_rcvd is not None
    assert (first.close_rcvd.code, first.close_rcvd.reason) == (1000, "bye")
    assert recorder.count("disconnected", "closed: the server closed the connection") == 1
    assert recorder.count("connected") == 2


async def test_manager_detects_a_pong_timeout_and_reconnects() -> None:
    connections = 0
    release = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:
            # Stop reading: the client's pings are never seen, so never answered.
            ws.transport.pause_reading()
            await release.wait()
            ws.transport.resume_reading()
        else:
            release.set()
        await ws.wait_closed()

    recorder = Recorder()
    async with (
        asyncio.timeout(LIMIT),
        ws_server(handler, subprotocols=["ocpp1.6"], ping_interval=None) as server,
    ):
        profile = plain_profile(
            port_of(server), ping_interval_s=0.2, ping_timeout_s=0.2, close_timeout_s=0.5
        )
        manager = manager_for(profile, recorder)
        async with running(manager):
            await recorder.wait_for(lambda: recorder.started == 2)
            assert manager.connected
    first = recorder.sessions[0]
    assert first.close_sent is not None
    assert (first.close_sent.code, first.close_sent.reason) == (1011, "keepalive ping timeout")
    assert recorder.count("disconnected", "ping-timeout") == 1


async def test_disconnect_holds_the_link_down_until_connect() -> None:
    seen = Seen.new()
    recorder = Recorder()
    async with (
        asyncio.timeout(LIMIT),
        ws_server(recording_handler(seen, echo=False), subprotocols=["ocpp1.6"]) as server,
    ):
        manager = manager_for(plain_profile(port_of(server)), recorder)
        async with running(manager):
            await recorder.wait_for(lambda: recorder.started == 1)
            manager.disconnect()
            await recorder.wait_for(lambda: recorder.count("disconnected", "held down") == 1)
            # Many backoff periods (0.05..0.2 s) pass: still no new connection.
            await asyncio.sleep(1.0)
            assert len(seen.paths) == 1
            assert not manager.connected
            assert seen.close_codes == [1000]
            manager.connect()
            await recorder.wait_for(lambda: recorder.started == 2)
            assert manager.connected
    assert len(seen.paths) == 2


async def test_stop_closes_with_going_away_and_ends_run() -> None:
    seen = Seen.new()
    recorder = Recorder()
    async with (
        asyncio.timeout(LIMIT),
        ws_server(recording_handler(seen, echo=False), subprotocols=["ocpp1.6"]) as server,
    ):
        manager = manager_for(plain_profile(port_of(server)), recorder)
        task = asyncio.create_task(manager.run())
        await recorder.wait_for(lambda: recorder.started == 1)
        manager.stop()
        await task
        assert task.done() and task.exception() is None
        while not seen.close_codes:
            await asyncio.sleep(0.01)
    assert seen.close_codes == [1001]
    assert recorder.states[-1] == ("disconnected", "stopped")
    assert manager.current is None


async def test_stop_interrupts_a_long_backoff_wait() -> None:
    recorder = Recorder()
    manager = manager_for(
        plain_profile(free_port()), recorder, backoff=Backoff(3600.0, 3600.0, 0.0)
    )
    async with asyncio.timeout(LIMIT):
        task = asyncio.create_task(manager.run())
        await recorder.wait_for(lambda: recorder.count("waiting", "retrying in 3600.0 s") == 1)
        manager.stop()
        await task
    assert recorder.count("connecting") == 1


async def test_connect_skips_a_pending_backoff_wait() -> None:
    port = free_port()
    recorder = Recorder()
    manager = manager_for(plain_profile(port), recorder, backoff=Backoff(3600.0, 3600.0, 0.0))
    async with asyncio.timeout(LIMIT), running(manager):
        await recorder.wait_for(lambda: recorder.count("waiting") == 1)
        async with ws_server(recording_handler(Seen.new()), port=port, subprotocols=["ocpp1.6"]):
            manager.connect()
            await recorder.wait_for(lambda: recorder.started == 1)
    assert recorder.count("connecting") == 2


async def test_manager_waits_the_backoff_delays_through_the_injected_sleep() -> None:
    delays: list[float] = []

    async def fake_sleep(delay: float) -> None:
        delays.append(delay)
        await asyncio.sleep(0)

    recorder = Recorder()
    manager = manager_for(
        plain_profile(free_port()),
        recorder,
        backoff=Backoff(1.0, 8.0, 0.5, rng=random.Random(7)),
        sleep=fake_sleep,
    )
    async with asyncio.timeout(LIMIT), running(manager):
        await recorder.wait_for(lambda: len(delays) >= 6)
    expected = Backoff(1.0, 8.0, 0.5, rng=random.Random(7))
    assert delays[:6] == [expected.next_delay() for _ in range(6)]


async def test_tls_failures_keep_retrying_until_a_new_profile_works(pki: Pki) -> None:
    seen = Seen.new()
    recorder = Recorder()
    async with (
        asyncio.timeout(LIMIT),
        ws_server(
            recording_handler(seen),
            subprotocols=["ocpp2.0.1", "ocpp1.6"],
            ssl=server_tls(pki.server),
            process_request=basic_auth(credentials=("CP2", "s3cret")),
        ) as server,
    ):
        wrong_ca = tls_profile(port_of(server), pki.other_ca)
        manager = manager_for(wrong_ca, recorder)
        async with running(manager):
            await recorder.wait_for(lambda: recorder.count("waiting", "tls") >= 2)
            assert recorder.started == 0
            manager.set_profile(tls_profile(port_of(server), pki.server_ca, charge_point_id="CP2"))
            assert manager.profile.charge_point_id == "CP2"
            await recorder.wait_for(lambda: recorder.started == 1)
    assert seen.paths == ["/ocpp/CP2"]
    assert recorder.sessions[0].subprotocol == "ocpp2.0.1"


@pytest.fixture(autouse=True)
def _no_proxy_from_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # The client must connect directly even where the test machine has a proxy configured.
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("all_proxy", "http://127.0.0.1:9")
    yield


async def test_accept_then_close_at_once_keeps_growing_the_backoff() -> None:
    """A CSMS that accepts and immediately closes must not be hammered at the minimum delay."""
    delays: list[float] = []

    async def fake_sleep(delay: float) -> None:
        delays.append(delay)
        await asyncio.sleep(0)

    async def handler(ws: ServerConnection) -> None:
        await ws.close(1000, "go away")

    recorder = Recorder()
    async with asyncio.timeout(LIMIT), ws_server(handler, subprotocols=["ocpp1.6"]) as server:
        manager = manager_for(
            plain_profile(port_of(server)),
            recorder,
            backoff=Backoff(1.0, 64.0, 0.0),
            sleep=fake_sleep,
        )
        async with running(manager):
            await recorder.wait_for(lambda: len(delays) >= 5)
    assert delays[:5] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert recorder.count("connected") >= 5


async def test_mark_stable_restarts_the_backoff() -> None:
    delays: list[float] = []

    async def fake_sleep(delay: float) -> None:
        delays.append(delay)
        await asyncio.sleep(0)

    manager: ConnectionManager | None = None

    async def handler(ws: ServerConnection) -> None:
        await ws.close(1000, "go away")

    async def on_connected(conn: Any, subprotocol: str) -> None:
        assert manager is not None
        manager.mark_stable()  # as the daemon does once the CSMS accepted the boot
        await conn.wait_closed()

    async with asyncio.timeout(LIMIT), ws_server(handler, subprotocols=["ocpp1.6"]) as server:
        manager = ConnectionManager(
            plain_profile(port_of(server)),
            Backoff(1.0, 64.0, 0.0),
            on_connected=on_connected,
            sleep=fake_sleep,
        )
        task = asyncio.create_task(manager.run())
        while len(delays) < 3:
            await asyncio.sleep(0.01)
        manager.stop()
        await task
    assert delays[:3] == [1.0, 1.0, 1.0]
