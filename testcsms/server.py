"""The test CSMS server: websocket listener, per-connection sessions, recording, fault injection.

A `TestCsms` accepts OCPP-J charge points on ``/ocpp/<charge_point_id>``, negotiates
``ocpp1.6`` / ``ocpp2.0.1`` and runs an ``ocpp`` library ChargePoint (see `testcsms.v16`,
`testcsms.v201`) for each connection. Every frame in both directions is recorded as it crosses
the socket, so tests can assert on exactly what the charge point sent, and the server can be
told at run time to misbehave (never answer, answer with a CALLERROR, answer late, hang up).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import hmac
import http
import json
import logging
import ssl
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from types import ModuleType, TracebackType
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import ocpp.v16.call
import ocpp.v201.call
from ocpp.charge_point import (
    camel_to_snake_case,
    remove_nones,
    serialize_as_dict,
    snake_to_camel_case,
)
from ocpp.messages import CallError
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from testcsms.v16 import ChargePointV16
from testcsms.v201 import ChargePointV201

LOGGER = logging.getLogger("testcsms")

SUPPORTED_SUBPROTOCOLS = ("ocpp1.6", "ocpp2.0.1")
BootStatus = Literal["Accepted", "Pending", "Rejected"]
Direction = Literal["in", "out"]

#: message_type of a frame that is not a well-formed OCPP-J CALL/CALLRESULT/CALLERROR.
MALFORMED = 0


@dataclasses.dataclass(frozen=True)
class Received:
    """One frame as it crossed the socket ("in": from the charge point, "out": to it).

    ``payload`` is the CALL/CALLRESULT payload; for a CALLERROR it is
    ``{"errorCode", "errorDescription", "errorDetails"}``. ``action`` of a CALLRESULT/CALLERROR
    is the action of the CALL it answers, when known. Unparseable frames have
    ``message_type == MALFORMED`` and ``payload is None``; ``raw`` always holds the text.
    """

    charge_point_id: str
    direction: Direction
    message_type: int
    unique_id: str
    action: str | None
    payload: Any
    time: float
    raw: str


@dataclasses.dataclass
class ConnectionInfo:
    """One accepted websocket connection (also those closed for lack of a common subprotocol)."""

    charge_point_id: str
    subprotocol: str | None
    path: str
    headers: dict[str, str]  # request headers, names lower-cased
    remote: str
    opened: float
    peer_cert: dict[str, Any] | None = None
    closed: float | None = None
    close_code: int | None = None  # as received from the charge point (1006: no close frame)
    close_reason: str | None = None

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


@dataclasses.dataclass(frozen=True)
class Rejection:
    """A websocket handshake refused with an HTTP status (404 unknown path, 401 bad auth)."""

    path: str
    status: int
    headers: dict[str, str]
    time: float


Event = Received | ConnectionInfo | Rejection


class CallErrorReceived(Exception):
    """The charge point answered a CSMS-initiated CALL with a CALLERROR."""

    def __init__(self, action: str, error_code: str, description: str, details: Any) -> None:
        super().__init__(f"{action}: {error_code}: {description} {details}")
        self.action = action
        self.error_code = error_code
        self.description = description
        self.details = details


def utc_now_iso() -> str:
    """Current UTC time as ISO 8601 with milliseconds and a 'Z' suffix."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _call_of(action: str) -> Callable[[Received], bool]:
    def predicate(r: Received) -> bool:
        return r.direction == "in" and r.message_type == 2 and r.action == action

    return predicate


def _consume_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio doesn't log it as never retrieved


class _RecordingConnection:
    """The connection object handed to the ocpp ChargePoint: records every frame it carries."""

    def __init__(self, session: _Session) -> None:
        self._session = session

    async def recv(self) -> str:
        return (await self._session.recv_frame()).raw

    async def send(self, text: str) -> None:
        await self._session.send_frame(text)


class _Session:
    """One live OCPP connection: reader loop, answer worker, CSMS-initiated call bookkeeping."""

    def __init__(
        self, csms: TestCsms, ws: ServerConnection, charge_point_id: str, subprotocol: str
    ) -> None:
        self.csms = csms
        self.ws = ws
        self.charge_point_id = charge_point_id
        self.subprotocol = subprotocol
        self.call_module: ModuleType = ocpp.v16.call if subprotocol == "ocpp1.6" else ocpp.v201.call
        self.connection = _RecordingConnection(self)
        cp_class = ChargePointV16 if subprotocol == "ocpp1.6" else ChargePointV201
        self.cp: Any = cp_class(charge_point_id, self.connection, csms)
        self.closed = asyncio.Event()
        # unique id -> action, to label answers with the action they answer
        self._calls_in: dict[str, str] = {}
        self._calls_out: dict[str, str] = {}
        # unique ids of CSMS calls made through the ocpp ChargePoint, -> their answer frame
        self.pending: dict[str, Received | None] = {}
        self._answer_queue: asyncio.Queue[tuple[str, Received]] = asyncio.Queue()

    # -- frames ---------------------------------------------------------------------------

    def _record(self, direction: Direction, raw: str) -> Received:
        message_type, unique_id, action, payload = MALFORMED, "", None, None
        try:
            msg = json.loads(raw)
        except ValueError:
            msg = None
        if isinstance(msg, list) and len(msg) >= 3 and isinstance(msg[1], str):
            unique_id = msg[1]
            calls_here, calls_there = (
                (self._calls_in, self._calls_out)
                if direction == "in"
                else (self._calls_out, self._calls_in)
            )
            if msg[0] == 2 and len(msg) == 4 and isinstance(msg[2], str):
                message_type, action, payload = 2, msg[2], msg[3]
                calls_here[unique_id] = msg[2]
            elif msg[0] == 3 and len(msg) == 3:
                message_type, payload = 3, msg[2]
                action = calls_there.pop(unique_id, None)
            elif msg[0] == 4 and len(msg) == 5:
                message_type = 4
                payload = {"errorCode": msg[2], "errorDescription": msg[3], "errorDetails": msg[4]}
                action = calls_there.pop(unique_id, None)
        rec = Received(
            self.charge_point_id,
            direction,
            message_type,
            unique_id,
            action,
            payload,
            time.monotonic(),
            raw,
        )
        if direction == "in" and message_type in (3, 4) and unique_id in self.pending:
            self.pending[unique_id] = rec
        self.csms._add_event(rec)
        return rec

    async def recv_frame(self) -> Received:
        data = await self.ws.recv()
        raw = data if isinstance(data, str) else data.decode("utf-8", errors="replace")
        return self._record("in", raw)

    async def send_frame(self, text: str) -> None:
        # Recorded first: the answer to a CALL may be read before send() returns.
        self._record("out", text)
        await self.ws.send(text)

    async def close(self, code: int | None, reason: str = "") -> None:
        if code is None:
            self.ws.transport.abort()
        else:
            await self.ws.close(code, reason)

    # -- loops ----------------------------------------------------------------------------

    async def run(self) -> None:
        worker = asyncio.create_task(self._answer_worker())
        try:
            while True:
                rec = await self.recv_frame()
                await self._dispatch(rec)
        except ConnectionClosed:
            pass
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            self.closed.set()

    async def _dispatch(self, rec: Received) -> None:
        csms = self.csms
        if rec.message_type == 2:
            assert rec.action is not None
            if rec.action in csms._close_after:
                code, once = csms._close_after[rec.action]
                if once:
                    del csms._close_after[rec.action]
                LOGGER.info(
                    "%s: closing after %s (code %s)", self.charge_point_id, rec.action, code
                )
                await self.close(code, f"test CSMS closes after {rec.action}")
                return
            if csms.hold_responses or rec.action in csms.drop_actions:
                return
            # Answers go through a queue so a delayed answer doesn't stop the reader, which must
            # keep feeding CALLRESULTs to CSMS-initiated calls.
            self._answer_queue.put_nowait((rec.raw, rec))
        elif rec.message_type in (3, 4):
            if rec.unique_id in self.pending:
                await self.cp.route_message(rec.raw)
            else:
                LOGGER.warning(
                    "%s: answer matches no call in flight: %s", self.charge_point_id, rec.raw
                )
        else:
            LOGGER.warning("%s: malformed frame: %r", self.charge_point_id, rec.raw)

    async def _answer_worker(self) -> None:
        while True:
            raw, rec = await self._answer_queue.get()
            if self.csms.delay_s > 0:
                await asyncio.sleep(self.csms.delay_s)
            error_code = self.csms.error_actions.get(rec.action or "")
            try:
                if error_code is not None:
                    error = CallError(rec.unique_id, error_code, "Injected by test CSMS", {})
                    await self.send_frame(error.to_json())
                else:
                    await self.cp.route_message(raw)
            except ConnectionClosed:
                return
            except Exception:
                LOGGER.exception("%s: failed to answer %s", self.charge_point_id, raw)


class TestCsms:
    """An OCPP 1.6J / 2.0.1 CSMS for tests and demos; see the module docstring."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        subprotocols: Iterable[str] = SUPPORTED_SUBPROTOCOLS,
        ssl_context: ssl.SSLContext | None = None,
        basic_auth: dict[str, str] | None = None,
        boot_status: BootStatus = "Accepted",
        heartbeat_interval: int = 300,
        boot_interval: int = 10,
        base_path: str = "/ocpp",
        ping_interval: float | None = None,
    ) -> None:
        self.subprotocols = tuple(subprotocols)
        for sp in self.subprotocols:
            if sp not in SUPPORTED_SUBPROTOCOLS:
                raise ValueError(f"unsupported subprotocol {sp!r}")
        self.host = host
        self._requested_port = port
        self.ssl_context = ssl_context
        self.base_path = base_path.rstrip("/")
        self.ping_interval = ping_interval

        # Behaviour; all of it may be changed while the server runs.
        self.basic_auth = basic_auth
        self.boot_status: BootStatus = boot_status
        self.heartbeat_interval = heartbeat_interval
        self.boot_interval = boot_interval
        self.blocked_tags: set[str] = set()
        self.invalid_tags: set[str] = set()
        self.next_transaction_id = 1

        # Fault injection.
        self.hold_responses = False
        self.drop_actions: set[str] = set()
        self.error_actions: dict[str, str] = {}
        self.delay_s = 0.0
        self._close_after: dict[str, tuple[int | None, bool]] = {}

        # Records.
        self.received: list[Received] = []
        self.connections: list[ConnectionInfo] = []
        self.rejections: list[Rejection] = []
        #: Called synchronously with every recorded event (frame, connection open/close, reject).
        self.on_event: Callable[[Event], None] | None = None

        self._sessions: dict[str, _Session] = {}
        self._waiters: set[asyncio.Event] = set()
        self._server: Server | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("already started")
        self._server = await serve(
            self._handle,
            self.host,
            self._requested_port,
            ssl=self.ssl_context,
            subprotocols=[Subprotocol(sp) for sp in self.subprotocols],
            select_subprotocol=self._select_subprotocol,
            process_request=self._process_request,
            ping_interval=self.ping_interval,
            close_timeout=5,
        )

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        await server.wait_closed()

    async def __aenter__(self) -> TestCsms:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        """Base URL; a charge point connects to ``f"{url}/{charge_point_id}"``."""
        scheme = "wss" if self.ssl_context is not None else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{self.base_path}"

    @property
    def connected(self) -> list[str]:
        """Ids of charge points with an open OCPP session."""
        return list(self._sessions)

    # -- handshake ------------------------------------------------------------------------

    def _charge_point_id(self, path: str) -> str | None:
        prefix = self.base_path + "/"
        raw_path = urlsplit(path).path
        if not raw_path.startswith(prefix):
            return None
        rest = raw_path[len(prefix) :]
        if not rest or "/" in rest:
            return None
        return unquote(rest)

    def _select_subprotocol(
        self, connection: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        for sp in self.subprotocols:
            if sp in offered:
                return Subprotocol(sp)
        return None  # accepted without a subprotocol, then closed with 1002 by _handle

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        headers = {k.lower(): v for k, v in request.headers.raw_items()}
        cp_id = self._charge_point_id(request.path)
        if cp_id is None:
            return self._reject(connection, request, headers, http.HTTPStatus.NOT_FOUND)
        if self.basic_auth is not None and not self._authorized(cp_id, headers):
            response = self._reject(connection, request, headers, http.HTTPStatus.UNAUTHORIZED)
            response.headers["WWW-Authenticate"] = 'Basic realm="testcsms", charset="UTF-8"'
            return response
        return None

    def _authorized(self, cp_id: str, headers: dict[str, str]) -> bool:
        assert self.basic_auth is not None
        expected = self.basic_auth.get(cp_id)
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if expected is None or scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(decoded, f"{cp_id}:{expected}".encode())

    def _reject(
        self,
        connection: ServerConnection,
        request: Request,
        headers: dict[str, str],
        status: http.HTTPStatus,
    ) -> Response:
        self._add_event(Rejection(request.path, status.value, headers, time.monotonic()))
        return connection.respond(status, f"{status.value} {status.phrase}\n")

    # -- connections ----------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        cp_id = self._charge_point_id(ws.request.path)
        assert cp_id is not None  # _process_request refused every other path
        peer_cert = ws.transport.get_extra_info("peercert")
        remote = ws.remote_address
        info = ConnectionInfo(
            charge_point_id=cp_id,
            subprotocol=ws.subprotocol,
            path=ws.request.path,
            headers={k.lower(): v for k, v in ws.request.headers.raw_items()},
            remote=f"{remote[0]}:{remote[1]}" if isinstance(remote, tuple) else str(remote),
            opened=time.monotonic(),
            peer_cert=peer_cert or None,
        )
        self._add_event(info)
        session: _Session | None = None
        try:
            if ws.subprotocol is None:
                await ws.close(1002, "no common OCPP subprotocol")
                return
            session = _Session(self, ws, cp_id, ws.subprotocol)
            self._sessions[cp_id] = session  # a reconnect replaces an older session
            await session.run()
        finally:
            if session is not None and self._sessions.get(cp_id) is session:
                del self._sessions[cp_id]
            info.closed = time.monotonic()
            info.close_code = ws.close_code
            info.close_reason = ws.close_reason
            self._add_event(info)

    def _session(self, charge_point_id: str) -> _Session:
        try:
            return self._sessions[charge_point_id]
        except KeyError:
            raise ConnectionError(f"{charge_point_id!r} is not connected") from None

    async def disconnect_all(self, code: int | None = 1000, reason: str = "") -> None:
        """Close every OCPP connection (``code=None``: drop TCP without a close frame)."""
        sessions = list(self._sessions.values())
        await asyncio.gather(*(s.close(code, reason) for s in sessions), return_exceptions=True)
        await asyncio.gather(*(s.closed.wait() for s in sessions))

    async def disconnect(
        self, charge_point_id: str, code: int | None = 1000, reason: str = ""
    ) -> None:
        session = self._session(charge_point_id)
        await session.close(code, reason)
        await session.closed.wait()

    # -- fault injection ------------------------------------------------------------------

    def close_after(self, action: str, code: int | None = 1000, *, once: bool = True) -> None:
        """On receiving ``action``, close the socket instead of answering.

        ``code=None`` drops the TCP connection without a close frame. With ``once`` the rule is
        removed the first time it fires.
        """
        self._close_after[action] = (code, once)

    def clear_faults(self) -> None:
        self.hold_responses = False
        self.drop_actions.clear()
        self.error_actions.clear()
        self.delay_s = 0.0
        self._close_after.clear()

    # -- policy used by the ChargePoint handlers ------------------------------------------

    def id_tag_status(self, id_tag: str | None) -> str:
        if id_tag in self.blocked_tags:
            return "Blocked"
        if id_tag in self.invalid_tags:
            return "Invalid"
        return "Accepted"

    def allocate_transaction_id(self) -> int:
        tx_id = self.next_transaction_id
        self.next_transaction_id += 1
        return tx_id

    def current_time(self) -> str:
        return utc_now_iso()

    # -- CSMS-initiated messages ----------------------------------------------------------

    async def call(
        self,
        charge_point_id: str,
        action: str,
        payload: dict[str, Any],
        *,
        timeout: float = 10,
        validate: bool = True,
    ) -> dict[str, Any]:
        """Send a CALL through the charge point's ocpp ChargePoint; return the raw answer payload.

        Raises `CallErrorReceived` on a CALLERROR, `TimeoutError` without an answer,
        `ConnectionError` when the connection goes away first, and the ocpp library's
        validation errors when ``validate`` and the request or answer breaks the schema.
        """
        session = self._session(charge_point_id)
        cls = getattr(session.call_module, action, None)
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise ValueError(f"{action!r} is not an action of {session.subprotocol}")
        try:
            request = cls(**camel_to_snake_case(payload))
        except TypeError as exc:
            raise ValueError(f"payload does not fit {action}: {exc}") from exc
        sent = snake_to_camel_case(remove_nones(serialize_as_dict(request)))
        if sent != payload:
            LOGGER.warning(
                "%s payload changes in the ocpp library: %s -> %s", action, payload, sent
            )

        unique_id = str(uuid.uuid4())
        session.pending[unique_id] = None
        call_task = asyncio.ensure_future(
            session.cp.call(
                request, suppress=False, unique_id=unique_id, skip_schema_validation=not validate
            )
        )
        closed_task = asyncio.ensure_future(session.closed.wait())
        try:
            done, _ = await asyncio.wait(
                {call_task, closed_task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            answer = session.pending.get(unique_id)
            if answer is not None and answer.message_type == 4:
                p = answer.payload
                raise CallErrorReceived(
                    action, p["errorCode"], p["errorDescription"], p["errorDetails"]
                )
            error = call_task.exception() if call_task in done else None
            if closed_task in done or isinstance(error, ConnectionClosed):
                raise ConnectionError(f"{charge_point_id!r} disconnected before answering {action}")
            if error is not None:
                raise error  # the ocpp library's schema validation of request or answer
            if call_task in done:
                assert answer is not None
                result: dict[str, Any] = answer.payload
                return result
            raise TimeoutError(f"no answer to {action} from {charge_point_id!r} in {timeout}s")
        finally:
            closed_task.cancel()
            call_task.cancel()
            call_task.add_done_callback(_consume_result)
            session.pending.pop(unique_id, None)

    async def send_raw(self, charge_point_id: str, text: str) -> None:
        """Write ``text`` as one websocket text frame, as is (it is recorded like any frame)."""
        await self._session(charge_point_id).send_frame(text)

    # -- waiting --------------------------------------------------------------------------

    def _add_event(self, event: Event) -> None:
        if isinstance(event, Received):
            self.received.append(event)
        elif isinstance(event, Rejection):
            self.rejections.append(event)
        elif event.closed is None:
            self.connections.append(event)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                LOGGER.exception("on_event callback failed")
        for waiter in self._waiters:
            waiter.set()

    async def wait_until(self, condition: Callable[[], bool], *, timeout: float = 10) -> None:
        """Wait until ``condition()`` holds; it is re-checked after every recorded event."""
        wakeup = asyncio.Event()
        self._waiters.add(wakeup)
        try:
            async with asyncio.timeout(timeout):
                while not condition():
                    await wakeup.wait()
                    wakeup.clear()
        except TimeoutError:
            raise TimeoutError(f"condition not met within {timeout}s") from None
        finally:
            self._waiters.discard(wakeup)

    async def wait_for(
        self,
        predicate_or_action: str | Callable[[Received], bool],
        *,
        timeout: float = 10,
        count: int = 1,
        since: int = 0,
    ) -> list[Received]:
        """Wait until ``count`` recorded frames match; return the first ``count`` of them.

        A string matches CALLs of that action from a charge point. ``since`` is an index into
        `received` (e.g. ``len(csms.received)`` taken earlier) to skip older frames.
        """
        predicate: Callable[[Received], bool]
        if isinstance(predicate_or_action, str):
            action = predicate_or_action
            predicate = _call_of(action)
            what = action
        else:
            predicate = predicate_or_action
            what = getattr(predicate, "__name__", "predicate")
        found: list[Received] = []
        scanned = since

        def enough() -> bool:
            nonlocal scanned
            while scanned < len(self.received) and len(found) < count:
                if predicate(self.received[scanned]):
                    found.append(self.received[scanned])
                scanned += 1
            return len(found) >= count

        try:
            await self.wait_until(enough, timeout=timeout)
        except TimeoutError:
            raise TimeoutError(
                f"{what}: {len(found)} of {count} frames within {timeout}s; "
                f"recorded: {[(r.direction, r.action, r.message_type) for r in self.received]}"
            ) from None
        return found

    async def wait_for_connection(
        self,
        charge_point_id: str | None = None,
        *,
        timeout: float = 10,
        count: int = 1,
        since: int = 0,
    ) -> list[ConnectionInfo]:
        """Wait until ``count`` connections (of that charge point, if given) have opened."""

        def matching() -> list[ConnectionInfo]:
            return [
                c
                for c in self.connections[since:]
                if charge_point_id is None or c.charge_point_id == charge_point_id
            ]

        await self.wait_until(lambda: len(matching()) >= count, timeout=timeout)
        return matching()[:count]


__all__ = [
    "MALFORMED",
    "CallErrorReceived",
    "ConnectionInfo",
    "Received",
    "Rejection",
    "TestCsms",
    "utc_now_iso",
]
