"""Tests of the test CSMS, driven by a plain websockets client that plays the charge point."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import json
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from testcsms import MALFORMED, CallErrorReceived, Received, TestCsms
from tests.certs import make_ca, make_leaf

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0

_P = ParamSpec("_P")
_R = TypeVar("_R")


def bounded(
    seconds: float = 30.0,
) -> Callable[[Callable[_P, Awaitable[_R]]], Callable[_P, Awaitable[_R]]]:
    """Fail a test that takes longer than ``seconds`` instead of hanging the run."""

    def decorator(fn: Callable[_P, Awaitable[_R]]) -> Callable[_P, Awaitable[_R]]:
        @functools.wraps(fn)
        async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            async with asyncio.timeout(seconds):
                return await fn(*args, **kwargs)

        return wrapper

    return decorator


@pytest.fixture
async def csms() -> AsyncIterator[TestCsms]:
    async with TestCsms() as server:
        yield server


async def open_cp(
    csms: TestCsms,
    cp_id: str = "CP-1",
    subprotocols: Sequence[str] = ("ocpp1.6",),
    **kwargs: Any,
) -> ClientConnection:
    return await connect(
        f"{csms.url}/{cp_id}",
        subprotocols=[Subprotocol(s) for s in subprotocols],
        open_timeout=TIMEOUT,
        **kwargs,
    )


async def recv_json(ws: ClientConnection) -> Any:
    async with asyncio.timeout(TIMEOUT):
        return json.loads(await ws.recv())


async def rpc(ws: ClientConnection, uid: str, action: str, payload: dict[str, Any]) -> Any:
    await ws.send(json.dumps([2, uid, action, payload]))
    return await recv_json(ws)


BOOT16 = {"chargePointVendor": "Acme", "chargePointModel": "Wallbox"}
BOOT201 = {"reason": "PowerUp", "chargingStation": {"model": "Wallbox", "vendorName": "Acme"}}


def assert_utc_now(stamp: str) -> None:
    assert stamp.endswith("Z")
    parsed = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert abs(parsed - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)


# -- boot and basic answers -----------------------------------------------------------------


@bounded()
async def test_v16_boot_accepted_with_heartbeat_interval(csms: TestCsms) -> None:
    csms.heartbeat_interval = 42
    async with await open_cp(csms) as ws:
        answer = await rpc(ws, "b1", "BootNotification", BOOT16)
    assert answer[:2] == [3, "b1"]
    assert answer[2]["status"] == "Accepted"
    assert answer[2]["interval"] == 42
    assert_utc_now(answer[2]["currentTime"])

    call, result = csms.received[:2]
    assert (call.direction, call.message_type, call.action) == ("in", 2, "BootNotification")
    assert call.charge_point_id == "CP-1" and call.payload == BOOT16
    assert (result.direction, result.message_type, result.action) == ("out", 3, "BootNotification")
    assert result.unique_id == "b1" and result.payload == answer[2]
    assert csms.connections[0].subprotocol == "ocpp1.6"


@bounded()
async def test_v16_boot_pending_uses_boot_interval() -> None:
    async with TestCsms(boot_status="Pending", boot_interval=7) as csms, await open_cp(csms) as ws:
        answer = await rpc(ws, "b1", "BootNotification", BOOT16)
        assert answer[2]["status"] == "Pending" and answer[2]["interval"] == 7
        csms.boot_status = "Accepted"
        answer = await rpc(ws, "b2", "BootNotification", BOOT16)
        assert answer[2]["status"] == "Accepted" and answer[2]["interval"] == 300


@bounded()
async def test_v201_boot_and_heartbeat(csms: TestCsms) -> None:
    csms.heartbeat_interval = 60
    async with await open_cp(csms, "CS-201", ["ocpp2.0.1"]) as ws:
        assert ws.subprotocol == "ocpp2.0.1"
        boot = await rpc(ws, "b1", "BootNotification", BOOT201)
        heartbeat = await rpc(ws, "h1", "Heartbeat", {})
    assert boot[2]["status"] == "Accepted" and boot[2]["interval"] == 60
    assert_utc_now(boot[2]["currentTime"])
    assert heartbeat[:2] == [3, "h1"]
    assert_utc_now(heartbeat[2]["currentTime"])


@bounded()
async def test_v16_authorize_and_transactions(csms: TestCsms) -> None:
    csms.blocked_tags.add("BAD")
    csms.invalid_tags.add("WHO")
    async with await open_cp(csms) as ws:
        ok = await rpc(ws, "a1", "Authorize", {"idTag": "GOOD"})
        blocked = await rpc(ws, "a2", "Authorize", {"idTag": "BAD"})
        invalid = await rpc(ws, "a3", "Authorize", {"idTag": "WHO"})
        start = {
            "connectorId": 1,
            "idTag": "GOOD",
            "meterStart": 0,
            "timestamp": "2024-01-01T00:00:00Z",
        }
        first = await rpc(ws, "s1", "StartTransaction", start)
        second = await rpc(ws, "s2", "StartTransaction", start)
        stop = {"transactionId": 1, "meterStop": 10, "timestamp": "2024-01-01T01:00:00Z"}
        stopped = await rpc(ws, "t1", "StopTransaction", stop)
        data = await rpc(ws, "d1", "DataTransfer", {"vendorId": "acme", "data": "ping"})
    assert ok[2] == {"idTagInfo": {"status": "Accepted"}}
    assert blocked[2] == {"idTagInfo": {"status": "Blocked"}}
    assert invalid[2] == {"idTagInfo": {"status": "Invalid"}}
    assert first[2] == {"transactionId": 1, "idTagInfo": {"status": "Accepted"}}
    assert second[2]["transactionId"] == 2
    assert stopped == [3, "t1", {}]
    assert data[2] == {"status": "Accepted", "data": "ping"}


@bounded()
async def test_v201_authorize_and_transaction_event(csms: TestCsms) -> None:
    csms.blocked_tags.add("BAD")
    token = {"idToken": "GOOD", "type": "ISO14443"}
    event = {
        "eventType": "Started",
        "timestamp": "2024-01-01T00:00:00Z",
        "triggerReason": "Authorized",
        "seqNo": 0,
        "transactionInfo": {"transactionId": "tx-1"},
    }
    async with await open_cp(csms, "CS-201", ["ocpp2.0.1"]) as ws:
        ok = await rpc(ws, "a1", "Authorize", {"idToken": token})
        blocked = await rpc(ws, "a2", "Authorize", {"idToken": {**token, "idToken": "BAD"}})
        with_token = await rpc(ws, "e1", "TransactionEvent", {**event, "idToken": token})
        without_token = await rpc(ws, "e2", "TransactionEvent", {**event, "seqNo": 1})
    assert ok[2] == {"idTokenInfo": {"status": "Accepted"}}
    assert blocked[2] == {"idTokenInfo": {"status": "Blocked"}}
    assert with_token[2] == {"idTokenInfo": {"status": "Accepted"}}
    assert without_token == [3, "e2", {}]


@bounded()
async def test_schema_invalid_call_gets_callerror(csms: TestCsms) -> None:
    async with await open_cp(csms) as ws:
        answer = await rpc(ws, "b1", "BootNotification", {"chargePointVendor": "Acme"})
    assert answer[0] == 4 and answer[1] == "b1"
    assert answer[2] == "ProtocolError"  # the required chargePointModel is missing


# -- handshake ------------------------------------------------------------------------------


@bounded()
async def test_subprotocol_negotiation_follows_server_preference() -> None:
    async with TestCsms(subprotocols=("ocpp2.0.1", "ocpp1.6")) as csms:
        async with await open_cp(csms, "A", ["ocpp1.6", "ocpp2.0.1"]) as ws:
            assert ws.subprotocol == "ocpp2.0.1"
        async with await open_cp(csms, "B", ["ocpp1.6"]) as ws:
            assert ws.subprotocol == "ocpp1.6"
            answer = await rpc(ws, "b1", "BootNotification", BOOT16)
            assert answer[2]["status"] == "Accepted"  # answered by the 1.6 ChargePoint
    async with TestCsms() as csms, await open_cp(csms, "C", ["ocpp2.0.1", "ocpp1.6"]) as ws:
        assert ws.subprotocol == "ocpp1.6"
    assert [c.subprotocol for c in csms.connections] == ["ocpp1.6"]


@bounded()
async def test_no_common_subprotocol_closes_with_1002(csms: TestCsms) -> None:
    ws = await open_cp(csms, "CP-X", ["ocpp2.1"])
    assert ws.subprotocol is None
    with pytest.raises(ConnectionClosed) as closed:
        await recv_json(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1002
    await csms.wait_until(lambda: csms.connections[0].closed is not None, timeout=TIMEOUT)
    assert csms.connections[0].subprotocol is None


@bounded()
async def test_basic_auth() -> None:
    def basic(user: str, password: str) -> dict[str, str]:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async with TestCsms(basic_auth={"CP-1": "s3cret"}) as csms:
        for headers in ({}, basic("CP-1", "wrong"), basic("CP-2", "s3cret")):
            with pytest.raises(InvalidStatus) as refused:
                await open_cp(csms, additional_headers=headers)
            assert refused.value.response.status_code == 401
            assert "Basic" in refused.value.response.headers["WWW-Authenticate"]
        # The user name must be the charge point id in the path.
        with pytest.raises(InvalidStatus):
            await open_cp(csms, "CP-2", additional_headers=basic("CP-1", "s3cret"))
        assert [r.status for r in csms.rejections] == [401] * 4
        assert csms.connections == []

        async with await open_cp(csms, additional_headers=basic("CP-1", "s3cret")) as ws:
            answer = await rpc(ws, "b1", "BootNotification", BOOT16)
        assert answer[2]["status"] == "Accepted"
        assert csms.connections[0].authorization == basic("CP-1", "s3cret")["Authorization"]


@bounded()
async def test_unknown_path_gets_404_and_ids_are_percent_decoded(csms: TestCsms) -> None:
    base = csms.url.removesuffix("/ocpp")
    for path in ("/other/CP-1", "/ocpp/", "/ocpp/a/b", "/"):
        with pytest.raises(InvalidStatus) as refused:
            await connect(base + path, subprotocols=[Subprotocol("ocpp1.6")])
        assert refused.value.response.status_code == 404
    assert [r.path for r in csms.rejections] == ["/other/CP-1", "/ocpp/", "/ocpp/a/b", "/"]

    async with await open_cp(csms, "CP%201") as ws:
        await rpc(ws, "b1", "BootNotification", BOOT16)
    assert csms.connections[0].charge_point_id == "CP 1"
    assert csms.received[0].charge_point_id == "CP 1"


@bounded()
async def test_tls_with_client_certificate(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "ca")
    server_cert = make_leaf(ca, tmp_path, "csms")
    client_cert = make_leaf(ca, tmp_path, "CP-1", client=True)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(server_cert.cert_path, server_cert.key_path)
    server_ctx.load_verify_locations(ca.cert_path)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=str(ca.cert_path))
    client_ctx.load_cert_chain(client_cert.cert_path, client_cert.key_path)

    async with TestCsms(ssl_context=server_ctx) as csms:
        assert csms.url.startswith("wss://127.0.0.1:")
        async with await open_cp(csms, ssl=client_ctx) as ws:
            answer = await rpc(ws, "b1", "BootNotification", BOOT16)
    assert answer[2]["status"] == "Accepted"
    peer = csms.connections[0].peer_cert
    assert peer is not None
    assert (("commonName", "CP-1"),) in peer["subject"]


# -- fault injection ------------------------------------------------------------------------


@bounded()
async def test_drop_actions_never_answers(csms: TestCsms) -> None:
    csms.drop_actions.add("Heartbeat")
    async with await open_cp(csms) as ws:
        await ws.send(json.dumps([2, "h1", "Heartbeat", {}]))
        # Answers leave in order, so the next answer we see proves h1 got none.
        status = {"connectorId": 0, "errorCode": "NoError", "status": "Available"}
        answer = await rpc(ws, "s1", "StatusNotification", status)
        assert answer == [3, "s1", {}]
        await csms.wait_for("Heartbeat", timeout=TIMEOUT)
        csms.drop_actions.clear()
        answer = await rpc(ws, "h2", "Heartbeat", {})
        assert answer[1] == "h2"
    assert not [r for r in csms.received if r.direction == "out" and r.unique_id == "h1"]


@bounded()
async def test_hold_responses_answers_nothing(csms: TestCsms) -> None:
    async with await open_cp(csms) as ws:
        csms.hold_responses = True
        await ws.send(json.dumps([2, "b1", "BootNotification", BOOT16]))
        await ws.send(json.dumps([2, "h1", "Heartbeat", {}]))
        await csms.wait_for("Heartbeat", timeout=TIMEOUT)
        csms.hold_responses = False
        answer = await rpc(ws, "h2", "Heartbeat", {})
        assert answer[1] == "h2"
    assert [r.unique_id for r in csms.received if r.direction == "out"] == ["h2"]


@bounded()
async def test_error_actions_answer_callerror(csms: TestCsms) -> None:
    csms.error_actions["Authorize"] = "InternalError"
    async with await open_cp(csms) as ws:
        answer = await rpc(ws, "a1", "Authorize", {"idTag": "GOOD"})
        boot = await rpc(ws, "b1", "BootNotification", BOOT16)
    assert answer[:3] == [4, "a1", "InternalError"] and answer[4] == {}
    assert boot[0] == 3
    error = [r for r in csms.received if r.message_type == 4]
    assert error[0].action == "Authorize" and error[0].payload["errorCode"] == "InternalError"


@bounded()
async def test_close_after_closes_before_answering(csms: TestCsms) -> None:
    csms.close_after("BootNotification", 4001)
    async with await open_cp(csms) as ws:
        await ws.send(json.dumps([2, "b1", "BootNotification", BOOT16]))
        with pytest.raises(ConnectionClosed) as closed:
            await recv_json(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
    await csms.wait_until(lambda: csms.connections[0].closed is not None, timeout=TIMEOUT)
    assert [r.direction for r in csms.received] == ["in"]
    # The rule fires once: a reconnecting charge point is answered.
    async with await open_cp(csms) as ws:
        answer = await rpc(ws, "b2", "BootNotification", BOOT16)
    assert answer[2]["status"] == "Accepted"


@bounded()
async def test_delayed_answers_do_not_block_csms_calls(csms: TestCsms) -> None:
    csms.delay_s = 3600.0  # the Heartbeat answer will not come during this test
    async with await open_cp(csms) as ws:
        await ws.send(json.dumps([2, "h1", "Heartbeat", {}]))
        await csms.wait_for("Heartbeat", timeout=TIMEOUT)
        call = asyncio.create_task(csms.call("CP-1", "GetConfiguration", {}, timeout=TIMEOUT))
        request = await recv_json(ws)
        assert request[2] == "GetConfiguration"
        await ws.send(json.dumps([3, request[1], {"configurationKey": []}]))
        assert await call == {"configurationKey": []}


@bounded()
async def test_disconnect_all(csms: TestCsms) -> None:
    async with await open_cp(csms, "A") as a, await open_cp(csms, "B") as b:
        await csms.wait_for_connection(count=2, timeout=TIMEOUT)
        assert sorted(csms.connected) == ["A", "B"]
        await csms.disconnect_all(1012)
        for ws in (a, b):
            with pytest.raises(ConnectionClosed) as closed:
                await recv_json(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    assert csms.connected == []
    assert all(c.closed is not None for c in csms.connections)


# -- CSMS-initiated calls and raw frames ----------------------------------------------------


@bounded()
async def test_call_returns_the_raw_callresult(csms: TestCsms) -> None:
    configuration = {
        "configurationKey": [{"key": "HeartbeatInterval", "readonly": False, "value": "300"}],
        "unknownKey": ["Nope"],
    }
    async with await open_cp(csms) as ws:
        await csms.wait_for_connection("CP-1", timeout=TIMEOUT)
        call = asyncio.create_task(
            csms.call("CP-1", "GetConfiguration", {"key": ["HeartbeatInterval", "Nope"]})
        )
        request = await recv_json(ws)
        assert request[0] == 2 and request[2] == "GetConfiguration"
        assert request[3] == {"key": ["HeartbeatInterval", "Nope"]}
        await ws.send(json.dumps([3, request[1], configuration]))
        assert await call == configuration

        # A CALLERROR answer raises with its code.
        call = asyncio.create_task(csms.call("CP-1", "ClearCache", {}))
        request = await recv_json(ws)
        await ws.send(json.dumps([4, request[1], "NotSupported", "no cache", {}]))
        with pytest.raises(CallErrorReceived) as error:
            await call
        assert error.value.error_code == "NotSupported"

    answers = [r for r in csms.received if r.direction == "in" and r.message_type == 3]
    assert answers[0].action == "GetConfiguration" and answers[0].payload == configuration


@bounded()
async def test_call_v201_with_nested_payload(csms: TestCsms) -> None:
    payload = {
        "getVariableData": [
            {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}
        ]
    }
    result = {
        "getVariableResult": [
            {
                "attributeStatus": "Accepted",
                "attributeValue": "300",
                "component": {"name": "OCPPCommCtrlr"},
                "variable": {"name": "HeartbeatInterval"},
            }
        ]
    }
    async with await open_cp(csms, "CS-201", ["ocpp2.0.1"]) as ws:
        await csms.wait_for_connection(timeout=TIMEOUT)
        call = asyncio.create_task(csms.call("CS-201", "GetVariables", payload))
        request = await recv_json(ws)
        assert request[2:] == ["GetVariables", payload]
        await ws.send(json.dumps([3, request[1], result]))
        assert await call == result


@bounded()
async def test_call_errors(csms: TestCsms) -> None:
    with pytest.raises(ConnectionError):
        await csms.call("nobody", "GetConfiguration", {})
    async with await open_cp(csms) as ws:
        await csms.wait_for_connection(timeout=TIMEOUT)
        with pytest.raises(ValueError, match="not an action"):
            await csms.call("CP-1", "NoSuchAction", {})
        with pytest.raises(ValueError, match="does not fit"):
            await csms.call("CP-1", "GetConfiguration", {"bogus": 1})
        with pytest.raises(TimeoutError):
            await csms.call("CP-1", "GetConfiguration", {}, timeout=0.2)
        # The charge point hangs up while a call is in flight.
        call = asyncio.create_task(csms.call("CP-1", "GetConfiguration", {}))
        await recv_json(ws)
        await ws.close()
        with pytest.raises(ConnectionError):
            await call


@bounded()
async def test_send_raw_and_malformed_frames(csms: TestCsms) -> None:
    async with await open_cp(csms) as ws:
        await csms.wait_for_connection(timeout=TIMEOUT)
        await csms.send_raw("CP-1", '[2,"x1","Reset",{"type":')
        async with asyncio.timeout(TIMEOUT):
            assert await ws.recv() == '[2,"x1","Reset",{"type":'
        await ws.send("this is not json")
        answer = await rpc(ws, "b1", "BootNotification", BOOT16)  # still served
        assert answer[2]["status"] == "Accepted"
    out, bad_in = csms.received[0], csms.received[1]
    assert (out.direction, out.message_type, out.payload) == ("out", MALFORMED, None)
    assert (bad_in.direction, bad_in.message_type, bad_in.raw) == (
        "in",
        MALFORMED,
        "this is not json",
    )


# -- waiting --------------------------------------------------------------------------------


@bounded()
async def test_wait_for(csms: TestCsms) -> None:
    status = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}
    async with await open_cp(csms) as ws:
        waiter = asyncio.create_task(csms.wait_for("StatusNotification", count=2))
        await rpc(ws, "b1", "BootNotification", BOOT16)
        await rpc(ws, "s1", "StatusNotification", status)
        assert not waiter.done()
        await rpc(ws, "s2", "StatusNotification", {**status, "status": "Preparing"})
        found = await waiter
        assert [r.unique_id for r in found] == ["s1", "s2"]

        def boot_answer(r: Received) -> bool:
            return r.direction == "out" and r.action == "BootNotification"

        (answer,) = await csms.wait_for(boot_answer)
        assert answer.message_type == 3 and answer.unique_id == "b1"

        mark = len(csms.received)
        later = asyncio.create_task(csms.wait_for("StatusNotification", since=mark))
        await rpc(ws, "s3", "StatusNotification", status)
        assert [r.unique_id for r in await later] == ["s3"]

    with pytest.raises(TimeoutError, match="Heartbeat: 0 of 1"):
        await csms.wait_for("Heartbeat", timeout=0.2)


# -- command line ---------------------------------------------------------------------------


def _start_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "testcsms", "--host", "127.0.0.1", "--port", "0", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def _readline(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(TIMEOUT):
        return await asyncio.to_thread(proc.stdout.readline)


@bounded(60)
async def test_cli_prints_frames_and_stops_on_sigterm() -> None:
    proc = _start_cli("--heartbeat-interval", "77", "--duration", "120")
    try:
        first = await _readline(proc)
        assert first.startswith("testcsms listening on ws://127.0.0.1:")
        url = first.split()[3].removesuffix("/<charge")
        base = url[: url.index("/ocpp")] + "/ocpp"
        async with await connect(f"{base}/CP-7", subprotocols=[Subprotocol("ocpp1.6")]) as ws:
            answer = await rpc(ws, "b1", "BootNotification", BOOT16)
        assert answer[2]["interval"] == 77
        lines = [await _readline(proc) for _ in range(3)]
        assert "CP-7 connected from 127.0.0.1:" in lines[0]
        assert "CP-7 -> BootNotification {" in lines[1]
        assert '"chargePointVendor":"Acme"' in lines[1]
        assert "CP-7 <- BootNotification CALLRESULT {" in lines[2]
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(proc.communicate, timeout=TIMEOUT)
        assert proc.returncode == 0, err
        assert "testcsms stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@bounded(60)
async def test_cli_stops_after_duration() -> None:
    proc = _start_cli("--duration", "0.5")
    try:
        out, err = await asyncio.to_thread(proc.communicate, timeout=TIMEOUT * 3)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.splitlines()[0].startswith("testcsms listening on ")
    assert out.splitlines()[-1] == "testcsms stopped"
