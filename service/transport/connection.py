"""The websocket link to the CSMS: connection profiles, opening a connection, reconnecting forever.

`open_connection` makes one attempt and turns every way it can fail into a `TransportError` with
a short machine word (`reason`) and a message a technician can act on. `ConnectionManager` keeps
the link up: it reconnects with randomized exponential backoff after any failure - refused,
timeout, TLS, HTTP status, a clean close by the server, a pong timeout - and never gives up on a
transport error. It can be held down (`disconnect()`) and released (`connect()`) from outside.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidMessage,
    InvalidStatus,
    InvalidURI,
    NegotiationError,
)
from websockets.frames import CloseCode
from websockets.protocol import State
from websockets.typing import Subprotocol

from service.transport.backoff import Backoff
from service.transport.tls import (
    SECURITY_PROFILES,
    TransportConfigError,
    basic_auth_header,
    build_client_ssl_context,
)

log = logging.getLogger(__name__)

# OCPP frames are usually small, but a GetLocalList / SetChargingProfile / DataTransfer can be
# large; 4 MiB bounds memory while leaving room for them.
MAX_MESSAGE_SIZE = 4 * 1024 * 1024


def _version() -> str:
    try:
        return metadata.version("evsed")
    except metadata.PackageNotFoundError:  # running from a source tree without installing
        return "unknown"


USER_AGENT = f"evsed/{_version()}"


class FailureReason(enum.StrEnum):
    """Why an attempt failed or a connection ended (compares equal to its string value)."""

    CONFIG = "config"  # the profile or a certificate file cannot work
    REFUSED = "refused"  # nothing listens at the address
    DNS = "dns"  # host name does not resolve
    NETWORK = "network"  # other socket errors: unreachable, reset
    TIMEOUT = "timeout"  # no open websocket within connect_timeout_s
    TLS = "tls"  # certificate verification or TLS handshake failure
    HTTP_STATUS = "http-status"  # the server answered the upgrade with e.g. 401 or 404
    HANDSHAKE = "handshake"  # an invalid websocket handshake
    NO_SUBPROTOCOL = "no-subprotocol"  # the server accepted none of our OCPP versions
    CLOSED = "closed"  # an open connection was closed
    PING_TIMEOUT = "ping-timeout"  # an open connection stopped answering pings


class LinkState(enum.StrEnum):
    """States reported to `ConnectionManager`'s `on_state` callback."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    WAITING = "waiting"


class TransportError(Exception):
    """A connection attempt failed; `reason` is a `FailureReason`, str(error) says what happened."""

    def __init__(
        self, reason: FailureReason | str, message: str = "", *, status_code: int | None = None
    ) -> None:
        self.reason = FailureReason(reason)
        self.message = message or self.reason.value
        self.status_code = status_code  # the HTTP status for reason "http-status"
        super().__init__(self.message)


@dataclass(frozen=True, slots=True)
class ConnectionProfile:
    """Where and how to connect: one OCPP network connection profile.

    `url` is the CSMS base URL; the charge point id is appended as the last path segment.
    Security profiles: 0 plain ws, 1 ws + Basic auth, 2 wss + Basic auth, 3 wss + client
    certificate. A ping interval of 0 disables websocket pings (and so pong timeouts); a ping
    timeout of 0 sends pings without ever timing out. `close_timeout_s` bounds the closing
    handshake, so a peer that stopped reading cannot hold a dead connection open.
    Construction checks the parts that need no file access and raises TransportConfigError.
    """

    url: str
    charge_point_id: str
    subprotocols: tuple[str, ...] = ("ocpp2.0.1", "ocpp1.6")
    security_profile: int = 0
    basic_auth_password: str = field(default="", repr=False)
    ca_bundle: Path | None = None
    client_certificate: Path | None = None
    client_key: Path | None = None
    ping_interval_s: float = 60.0
    ping_timeout_s: float = 30.0
    connect_timeout_s: float = 30.0
    close_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.security_profile not in SECURITY_PROFILES:
            raise TransportConfigError(
                f"security profile must be one of 0, 1, 2, 3, not {self.security_profile!r}"
            )
        scheme = urllib.parse.urlsplit(self.url).scheme.lower()
        expected = "wss" if self.security_profile >= 2 else "ws"
        if scheme != expected:
            raise TransportConfigError(
                f"security profile {self.security_profile} needs a {expected}:// URL, "
                f"not {self.url!r}"
            )
        if not self.charge_point_id:
            raise TransportConfigError("the charge point id must not be empty")
        if not self.subprotocols:
            raise TransportConfigError("at least one OCPP subprotocol must be offered")
        if self.security_profile in (1, 2) and not self.basic_auth_password:
            raise TransportConfigError(
                f"security profile {self.security_profile} needs a Basic auth password"
            )
        if self.security_profile == 3 and self.client_certificate is None:
            raise TransportConfigError("security profile 3 needs a client certificate")
        for name in ("ping_interval_s", "ping_timeout_s"):
            if getattr(self, name) < 0:
                raise TransportConfigError(f"{name} must be >= 0, not {getattr(self, name)!r}")
        for name in ("connect_timeout_s", "close_timeout_s"):
            if not getattr(self, name) > 0:
                raise TransportConfigError(f"{name} must be > 0, not {getattr(self, name)!r}")

    @property
    def endpoint(self) -> str:
        """The URL to connect to: base URL + '/' + the percent-encoded charge point id."""
        return self.url.rstrip("/") + "/" + urllib.parse.quote(self.charge_point_id, safe="")


async def open_connection(profile: ConnectionProfile) -> tuple[ClientConnection, str]:
    """Open one websocket connection to `profile.endpoint`; return it and the OCPP subprotocol.

    Raises TransportError for every failure, closing anything half-open first.
    """
    try:
        ssl_context = build_client_ssl_context(
            security_profile=profile.security_profile,
            ca_bundle=profile.ca_bundle,
            client_certificate=profile.client_certificate,
            client_key=profile.client_key,
        )
    except TransportConfigError as exc:
        raise TransportError(FailureReason.CONFIG, str(exc)) from exc

    headers: dict[str, str] = {}
    # Profile 3 authenticates with the client certificate only (OCPP security whitepaper).
    if profile.security_profile in (1, 2):
        headers["Authorization"] = basic_auth_header(
            profile.charge_point_id, profile.basic_auth_password
        )

    try:
        conn = await connect(
            profile.endpoint,
            subprotocols=[Subprotocol(name) for name in profile.subprotocols],
            additional_headers=headers,
            user_agent_header=USER_AGENT,
            # OCPP peers rarely negotiate permessage-deflate; off keeps latency and CPU low.
            compression=None,
            # A charger talks to its CSMS directly; never pick up a proxy from the environment.
            proxy=None,
            open_timeout=profile.connect_timeout_s,
            ping_interval=profile.ping_interval_s or None,
            ping_timeout=(profile.ping_timeout_s or None) if profile.ping_interval_s else None,
            close_timeout=profile.close_timeout_s,
            max_size=MAX_MESSAGE_SIZE,
            ssl=ssl_context,
        )
    except Exception as exc:
        raise _classify(exc, profile) from exc

    subprotocol = conn.subprotocol
    if subprotocol is None or subprotocol not in profile.subprotocols:
        await conn.close(CloseCode.PROTOCOL_ERROR, "no OCPP subprotocol agreed")
        raise TransportError(
            FailureReason.NO_SUBPROTOCOL,
            f"the server accepted none of the offered subprotocols "
            f"({', '.join(profile.subprotocols)})",
        )
    return conn, subprotocol


_VERIFY_KINDS = {
    9: "certificate not yet valid",  # X509_V_ERR_CERT_NOT_YET_VALID
    10: "expired certificate",  # X509_V_ERR_CERT_HAS_EXPIRED
    18: "self-signed certificate",  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
    19: "unknown CA",  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
    20: "unknown CA",  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: "unknown CA",  # X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
    23: "revoked certificate",  # X509_V_ERR_CERT_REVOKED
    26: "certificate not meant for a TLS server",  # X509_V_ERR_INVALID_PURPOSE
    62: "host name mismatch",  # X509_V_ERR_HOSTNAME_MISMATCH
    64: "host name mismatch",  # X509_V_ERR_IP_ADDRESS_MISMATCH
}


def _classify(exc: Exception, profile: ConnectionProfile) -> TransportError:
    """Turn an exception from websockets' connect() into a TransportError."""
    host = urllib.parse.urlsplit(profile.url).netloc.rpartition("@")[2]
    secure = profile.security_profile >= 2
    if isinstance(exc, TransportError):
        return exc
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or exc.reason or str(exc)
        kind = _VERIFY_KINDS.get(exc.verify_code, detail)
        return TransportError(
            FailureReason.TLS,
            f"TLS certificate verify failed for {host}: {kind} ({detail})",
        )
    if isinstance(exc, ssl.SSLError):
        return TransportError(
            FailureReason.TLS, f"TLS handshake with {host} failed: {exc.reason or exc}"
        )
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        hint = {
            401: " - the charge point id or Basic auth password was rejected",
            403: " - the charge point is not allowed to connect",
            404: " - wrong URL path or unknown charge point id",
        }.get(status, "")
        return TransportError(
            FailureReason.HTTP_STATUS,
            f"{host} answered the websocket upgrade with HTTP {status} "
            f"{exc.response.reason_phrase}{hint}",
            status_code=status,
        )
    if isinstance(exc, NegotiationError) and "subprotocol" in str(exc):
        return TransportError(FailureReason.NO_SUBPROTOCOL, f"subprotocol negotiation: {exc}")
    if secure and _closed_during_handshake(exc):
        # Under TLS 1.3 the server checks the client certificate after the client considers the
        # handshake done, so a rejected (or missing) certificate shows up as the connection
        # closing before the HTTP response, not as an ssl error.
        hint = (
            "it probably rejected the client certificate"
            if profile.security_profile == 3
            else "it may require a client certificate (security profile 3)"
        )
        return TransportError(
            FailureReason.TLS,
            f"{host} closed the connection during the TLS/websocket handshake; {hint}",
        )
    if isinstance(exc, InvalidURI):
        return TransportError(FailureReason.CONFIG, f"invalid URL: {exc}")
    if isinstance(exc, InvalidHandshake):
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        return TransportError(
            FailureReason.HANDSHAKE, f"invalid handshake with {host}: {exc}{cause}"
        )
    if isinstance(exc, TimeoutError):
        return TransportError(
            FailureReason.TIMEOUT,
            f"no websocket connection to {host} within {profile.connect_timeout_s:g} s",
        )
    if isinstance(exc, ConnectionRefusedError):
        return TransportError(FailureReason.REFUSED, f"connection refused by {host}")
    if isinstance(exc, socket.gaierror):
        return TransportError(FailureReason.DNS, f"cannot resolve {host}: {exc.strerror or exc}")
    if isinstance(exc, OSError):
        return TransportError(FailureReason.NETWORK, f"{host}: {exc.strerror or exc}")
    if isinstance(exc, ValueError):  # websockets' checks of URL against the ssl argument
        return TransportError(FailureReason.CONFIG, str(exc))
    return TransportError(FailureReason.HANDSHAKE, f"{type(exc).__name__}: {exc}")


def _closed_during_handshake(exc: Exception) -> bool:
    if isinstance(exc, ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
        return True
    return isinstance(exc, InvalidMessage) and isinstance(exc.__cause__, EOFError)


def _describe_close(
    conn: ClientConnection, profile: ConnectionProfile
) -> tuple[FailureReason, str]:
    """Why a connection that was open has closed."""
    sent = conn.protocol.close_sent
    if (
        sent is not None
        and sent.code == CloseCode.INTERNAL_ERROR
        and "keepalive ping timeout" in sent.reason
    ):
        return (
            FailureReason.PING_TIMEOUT,
            f"no pong within {profile.ping_timeout_s:g} s; connection dropped",
        )
    received = conn.protocol.close_rcvd
    if received is not None and conn.protocol.close_rcvd_then_sent:
        why = f" ({received.reason})" if received.reason else ""
        return (
            FailureReason.CLOSED,
            f"the server closed the connection with code {received.code}{why}",
        )
    return FailureReason.CLOSED, str(conn.close_exc)


OnConnected = Callable[[ClientConnection, str], Awaitable[None]]
OnState = Callable[[str, str], None]
Sleep = Callable[[float], Awaitable[None]]


class ProfileChooser(Protocol):
    """Picks the profile of every attempt (OCPP 2.0.1 network profiles, B10); without one the
    manager always uses its own profile."""

    def next_profile(self) -> ConnectionProfile: ...

    def attempt_failed(self, profile: ConnectionProfile, error: TransportError) -> None: ...

    def connected(self, profile: ConnectionProfile) -> None: ...


class ConnectionManager:
    """Keep one websocket connection to the CSMS open, reconnecting with backoff until stopped.

    For every open connection `on_connected(connection, subprotocol)` is awaited; it owns the
    connection and returns (or raises ConnectionClosed / OSError) when the connection ends.
    Other exceptions from it are bugs: the connection is closed (1011) and they propagate out of
    `run()`. `on_state(state, detail)` is told every LinkState change, with a readable detail.
    """

    def __init__(
        self,
        profile: ConnectionProfile,
        backoff: Backoff,
        on_connected: OnConnected,
        on_state: OnState | None = None,
        sleep: Sleep = asyncio.sleep,
        stable_after_s: float = 30.0,
        chooser: ProfileChooser | None = None,
    ) -> None:
        self._profile = profile
        self._chooser = chooser
        self._stable_after_s = stable_after_s
        self._backoff = backoff
        self._on_connected = on_connected
        self._on_state = on_state
        self._sleep = sleep
        self._wakeup = asyncio.Event()  # set by connect() / disconnect() / stop()
        self._stopping = False
        self._paused = False
        self._skip_wait = False
        self._running = False
        self._current: ClientConnection | None = None
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def profile(self) -> ConnectionProfile:
        """The profile the next connection attempt uses."""
        return self._profile

    @property
    def current(self) -> ClientConnection | None:
        """The connection handed to on_connected, while its session runs."""
        return self._current

    @property
    def connected(self) -> bool:
        return self._current is not None and self._current.state is State.OPEN

    def mark_stable(self) -> None:
        """The open connection is known good (e.g. the CSMS accepted the boot): restart the
        backoff from its minimum for the next loss."""
        self._backoff.reset()

    def set_profile(self, profile: ConnectionProfile) -> None:
        """Use `profile` from the next connection attempt on (the open connection stays)."""
        self._profile = profile

    def connect(self) -> None:
        """Undo `disconnect()` and skip a pending backoff wait: try to connect now."""
        self._paused = False
        if self._current is None:
            self._skip_wait = True
        self._wakeup.set()

    def disconnect(self) -> None:
        """Close the connection (1000) and stay disconnected until `connect()`."""
        self._paused = True
        self._close_current(CloseCode.NORMAL_CLOSURE, "disconnected on request")
        self._wakeup.set()

    def stop(self) -> None:
        """Close the connection (1001 going away) and make `run()` return."""
        self._stopping = True
        self._close_current(CloseCode.GOING_AWAY, "charging station shutting down")
        self._wakeup.set()

    async def run(self) -> None:
        """Connect, hand the connection over, reconnect after it ends; return after `stop()`."""
        if self._running:
            raise RuntimeError("ConnectionManager.run() is already running")
        self._running = True
        try:
            while not self._stopping:
                if self._paused:
                    self._emit(LinkState.DISCONNECTED, "held down until connect() is called")
                    while self._paused and not self._stopping:
                        self._wakeup.clear()
                        await self._wakeup.wait()
                    continue
                await self._attempt()
        finally:
            self._running = False
            if self._closing:
                await asyncio.gather(*self._closing, return_exceptions=True)

    async def _attempt(self) -> None:
        if self._chooser is not None:
            self._profile = self._chooser.next_profile()
        profile = self._profile
        endpoint = profile.endpoint
        self._emit(LinkState.CONNECTING, endpoint)
        try:
            opened = await self._open_interruptibly(profile)
        except TransportError as exc:
            if self._chooser is not None:
                self._chooser.attempt_failed(profile, exc)
            await self._retry_later(f"cannot connect to {endpoint}", exc.reason, exc.message)
            return
        if opened is None:  # stop() or disconnect() came first
            return
        conn, subprotocol = opened
        self._skip_wait = False
        if self._chooser is not None:
            self._chooser.connected(profile)
        started = asyncio.get_running_loop().time()
        reason, detail = await self._session(conn, subprotocol, profile)
        # The backoff restarts only after a connection proved useful (it lasted, or the caller
        # said so with mark_stable()): a CSMS that accepts and at once closes must not be
        # hammered at the minimum delay.
        if asyncio.get_running_loop().time() - started >= self._stable_after_s:
            self._backoff.reset()
        if self._stopping:
            self._emit(LinkState.DISCONNECTED, "stopped")
        elif self._paused:
            log.info("disconnected from %s on request", endpoint)
        else:
            self._emit(LinkState.DISCONNECTED, f"{reason}: {detail}")
            await self._retry_later(f"connection to {endpoint} lost", reason, detail)

    async def _open_interruptibly(
        self, profile: ConnectionProfile
    ) -> tuple[ClientConnection, str] | None:
        """open_connection(), abandoned when stop() or disconnect() is called meanwhile."""
        task = asyncio.create_task(open_connection(profile))
        try:
            while not task.done() and not (self._stopping or self._paused):
                self._wakeup.clear()
                waiter = asyncio.create_task(self._wakeup.wait())
                try:
                    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
        except BaseException:
            task.cancel()
            raise
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
        if task.cancelled():
            return None
        if task.exception() is not None and (self._stopping or self._paused):
            return None
        conn, subprotocol = task.result()  # raises the TransportError
        if self._stopping or self._paused:
            code = CloseCode.GOING_AWAY if self._stopping else CloseCode.NORMAL_CLOSURE
            await conn.close(code)
            return None
        return conn, subprotocol

    async def _session(
        self, conn: ClientConnection, subprotocol: str, profile: ConnectionProfile
    ) -> tuple[FailureReason, str]:
        self._current = conn
        log.info("connected to %s (subprotocol %s)", profile.endpoint, subprotocol)
        self._emit(LinkState.CONNECTED, f"{profile.endpoint} ({subprotocol})")
        failure: tuple[FailureReason, str] | None = None
        close_code = CloseCode.NORMAL_CLOSURE
        try:
            await self._on_connected(conn, subprotocol)
        except ConnectionClosed:
            pass  # described from the connection below
        except OSError as exc:
            failure = (FailureReason.NETWORK, str(exc) or type(exc).__name__)
        except asyncio.CancelledError:
            close_code = CloseCode.GOING_AWAY
            raise
        except BaseException:
            close_code = CloseCode.INTERNAL_ERROR
            raise
        finally:
            self._current = None
            if conn.state is not State.CLOSED:
                if self._stopping:
                    close_code = CloseCode.GOING_AWAY
                await conn.close(close_code)
        if failure is not None:
            return failure
        return _describe_close(conn, profile)

    async def _retry_later(self, what: str, reason: FailureReason, detail: str) -> None:
        if self._stopping or self._paused:
            return
        delay = self._backoff.next_delay()
        one_line = " ".join(detail.split())
        seconds = f"{delay:.1f}" if delay >= 1 else f"{delay:.2f}"
        log.warning("%s: [%s] %s; retrying in %s s", what, reason, one_line, seconds)
        self._emit(LinkState.WAITING, f"retrying in {seconds} s after {reason}: {one_line}")
        await self._sleep_interruptibly(delay)

    async def _sleep_interruptibly(self, delay: float) -> None:
        self._wakeup.clear()
        if self._skip_wait or self._stopping or self._paused:
            self._skip_wait = False
            return
        sleeper = asyncio.ensure_future(self._sleep(delay))
        waiter = asyncio.create_task(self._wakeup.wait())
        try:
            await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waiter.cancel()
        self._skip_wait = False

    def _close_current(self, code: int, reason: str) -> None:
        conn = self._current
        if conn is None or conn.state is State.CLOSED:
            return
        task = asyncio.get_running_loop().create_task(conn.close(code, reason))
        self._closing.add(task)
        task.add_done_callback(self._closed)

    def _closed(self, task: asyncio.Task[None]) -> None:
        self._closing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("closing the connection failed", exc_info=task.exception())

    def _emit(self, state: LinkState, detail: str) -> None:
        if self._on_state is None:
            return
        try:
            self._on_state(state, detail)
        except Exception:
            log.exception("on_state callback failed for %s (%s)", state, detail)
