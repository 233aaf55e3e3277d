"""Loopback file servers for tests: an HTTP(S) server and an FTP(S) server (pyftpdlib).

Both bind to 127.0.0.1 on an ephemeral port, run in a background thread, are context managers
(the thread stops on exit even when the test failed) and build URLs with `.url(path)`.

HttpServer: what each path does is a `Resource` (bytes to serve, a status, stall, truncate,
Range support on/off, a redirect, Basic authentication); PUT and POST bodies are recorded in
`.uploads`, every request in `.requests`.

    with HttpServer(tls=leaf) as server:              # leaf: a tests.certs.CertPair
        server.serve("/fw.bin", payload, ranges=False)
        server.serve("/slow", payload, truncate_after=1000, faults=1)   # first request only
        download(server.url("/fw.bin"), ...)

FtpServer: a user with a password and a home directory; uploads are recorded in `.uploads`
(see `wait_uploads`, as pyftpdlib acknowledges a transfer just before it reports the file),
every command line (passwords hidden) in `.commands`. `tls=` makes it explicit FTPS
(AUTH TLS, TLS_FTPHandler).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import socket
import ssl
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.certs import CertPair

_STALL_LIMIT_S = 60.0
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d+)-(\d*)\s*$")


def client_context(ca: CertPair) -> ssl.SSLContext:
    """A client SSL context that trusts only `ca` (hostname checking on)."""
    return ssl.create_default_context(cafile=str(ca.cert_path))


# --- HTTP(S) ---------------------------------------------------------------------------------


@dataclass
class Resource:
    """Behaviour of one path of an HttpServer.

    status: answer this status (with `body` as the body) instead of 200. For PUT/POST, a
        status >= 300 is answered after reading the body (the upload is still recorded).
    ranges: honour `Range: bytes=N-` with 206 (False: always answer the whole body with 200).
    content_length: announce Content-Length (False: the body ends when the connection closes).
    stall: accept the request and never answer (the client times out).
    stall_after: send the headers and this many body bytes, then hang.
    truncate_after: announce the full length, send this many body bytes, then close.
    faults: how many requests get the stall/truncate behaviour (None: every request).
    redirect_to: answer 302 with this Location.
    auth: (user, password) required with HTTP Basic authentication (401 otherwise).
    """

    body: bytes = b""
    status: int = 200
    ranges: bool = True
    content_length: bool = True
    stall: bool = False
    stall_after: int | None = None
    truncate_after: int | None = None
    faults: int | None = None
    redirect_to: str | None = None
    auth: tuple[str, str] | None = None
    hits: int = 0


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    headers: dict[str, str]


@dataclass(frozen=True)
class HttpUpload:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the handler threads
    owner: HttpServer

    def process_request(self, request: Any, client_address: Any) -> None:
        self.owner.track(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.owner.untrack(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that went away, a failed handshake: recorded, not printed
        with self.owner.lock:
            self.owner.errors.append(traceback.format_exc())


class _HttpHandler(BaseHTTPRequestHandler):
    server: _HttpServer
    faulty = False  # this request gets the resource's stall/truncate behaviour
    timeout = 10.0  # a client that stops sending cannot pin a handler thread

    def setup(self) -> None:
        context = self.server.owner.tls_context
        if context is not None:
            raw = self.request
            raw.settimeout(self.timeout)
            self.request = context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            self.server.owner.track(self.request)
            self.request.do_handshake()
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if isinstance(self.request, ssl.SSLSocket):
                self.server.owner.untrack(self.request)
                self.request.close()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _resource(self, method: str) -> Resource | None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        headers = {key: value for key, value in self.headers.items()}
        with owner.lock:
            owner.requests.append(HttpRequest(method, self.path, headers))
            resource = owner.resources.get(path)
            self.faulty = False
            if resource is not None:
                resource.hits += 1
                self.faulty = resource.faults is None or resource.hits <= resource.faults
            return resource

    def _authorized(self, resource: Resource) -> bool:
        if resource.auth is None:
            return True
        expected = base64.b64encode(f"{resource.auth[0]}:{resource.auth[1]}".encode()).decode()
        if self.headers.get("Authorization", "") == f"Basic {expected}":
            return True
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="tests"')
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def _stall(self) -> None:
        self.wfile.flush()
        self.server.owner.stopping.wait(_STALL_LIMIT_S)
        self.close_connection = True

    def do_GET(self) -> None:
        resource = self._resource("GET")
        if resource is None:
            self.send_error(404)
            return
        if not self._authorized(resource):
            return
        faulty = self.faulty
        if resource.stall and faulty:
            self._stall()
            return
        if resource.redirect_to is not None:
            self.send_response(302)
            self.send_header("Location", resource.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if resource.status != 200:
            self.send_response(resource.status)
            self.send_header("Content-Length", str(len(resource.body)))
            self.end_headers()
            self.wfile.write(resource.body)
            return
        body = resource.body
        start = 0
        match = _RANGE.match(self.headers.get("Range", "")) if resource.ranges else None
        if match is not None:
            start = int(match.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if resource.content_length:
            self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if faulty and resource.stall_after is not None:
            self.wfile.write(payload[: resource.stall_after])
            self._stall()
            return
        if faulty and resource.truncate_after is not None:
            self.wfile.write(payload[: resource.truncate_after])
            self.close_connection = True
            return
        self.wfile.write(payload)

    def _receive_upload(self, method: str) -> None:
        resource = self._resource(method)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        if resource is not None and not self._authorized(resource):
            return
        if resource is not None and resource.stall:
            self._stall()
            return
        if resource is not None and resource.status != 200:
            status = resource.status
        else:
            status = 201 if method == "PUT" else 200
        owner = self.server.owner
        headers = {key: value for key, value in self.headers.items()}
        with owner.lock:
            owner.uploads.append(HttpUpload(method, self.path, headers, body, status))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PUT(self) -> None:
        self._receive_upload("PUT")

    def do_POST(self) -> None:
        self._receive_upload("POST")


class HttpServer:
    """A threaded HTTP (or HTTPS, with `tls` = a server CertPair) server on 127.0.0.1."""

    def __init__(self, *, tls: CertPair | None = None) -> None:
        self.tls_context: ssl.SSLContext | None = None
        if tls is not None:
            self.tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls_context.load_cert_chain(tls.cert_path, tls.key_path)
        self.resources: dict[str, Resource] = {}
        self.requests: list[HttpRequest] = []
        self.uploads: list[HttpUpload] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.errors: list[str] = []  # exceptions of handler threads (tracebacks)
        self._connections: set[socket.socket] = set()
        self._server = _HttpServer(("127.0.0.1", 0), _HttpHandler)
        self._server.owner = self
        self.port: int = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls_context is not None else "http"

    def url(self, path: str, *, user: str | None = None, password: str | None = None) -> str:
        """The URL of `path` on this server, with `user:password@` when given."""
        userinfo = ""
        if user is not None:
            userinfo = user + (f":{password}" if password is not None else "") + "@"
        return f"{self.scheme}://{userinfo}127.0.0.1:{self.port}/{path.lstrip('/')}"

    def serve(self, path: str, body: bytes = b"", **behaviour: Any) -> Resource:
        """Configure `path` (see Resource for the behaviour keywords); returns the Resource."""
        resource = Resource(body=body, **behaviour)
        with self.lock:
            self.resources["/" + path.lstrip("/")] = resource
        return resource

    def start(self) -> HttpServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"test-http-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def track(self, connection: socket.socket) -> None:
        with self.lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self.lock:
            self._connections.discard(connection)

    def stop(self) -> None:
        """Stop accepting, cut the open connections and join every thread."""
        self.stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(10)
            self._thread = None
        with self.lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._server.server_close()

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- FTP(S) ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FtpUpload:
    path: str  # relative to the home directory, with "/"
    data: bytes


@dataclass
class _FtpRecord:
    uploads: list[FtpUpload] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)


class FtpServer:
    """A pyftpdlib server on 127.0.0.1 in a thread: one user, a home directory, optional TLS.

    `tls` (a server CertPair) makes it explicit FTPS; `tls_required` then refuses plain
    control and data connections.
    """

    def __init__(
        self,
        home: Path,
        *,
        user: str = "evse",
        password: str = "s3cret",
        tls: CertPair | None = None,
        tls_required: bool = True,
    ) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # asyncore/asynchat on 3.11
            from pyftpdlib.authorizers import DummyAuthorizer  # type: ignore[import-untyped]
            from pyftpdlib.handlers import FTPHandler  # type: ignore[import-untyped]
            from pyftpdlib.ioloop import IOLoop  # type: ignore[import-untyped]
            from pyftpdlib.servers import FTPServer  # type: ignore[import-untyped]

        ftp_logger = logging.getLogger("pyftpdlib")
        if not ftp_logger.handlers:
            # otherwise pyftpdlib's first loop reconfigures the process's logging for itself
            ftp_logger.addHandler(logging.NullHandler())
        ftp_logger.setLevel(logging.WARNING)
        self.home = home
        self.user = user
        self.password = password
        self.tls = tls is not None
        home.mkdir(parents=True, exist_ok=True)
        authorizer = DummyAuthorizer()
        authorizer.add_user(user, password, str(home), perm="elradfmwMT")
        record = _FtpRecord()
        self._record = record
        base: Any = FTPHandler
        attributes: dict[str, Any] = {
            "authorizer": authorizer,
            "timeout": 30,
            "auth_failed_timeout": 0.05,  # pyftpdlib's default delays a failed login by 3 s
        }
        if tls is not None:
            from pyftpdlib.handlers import TLS_FTPHandler

            base = TLS_FTPHandler
            attributes.update(
                certfile=str(tls.cert_path),
                keyfile=str(tls.key_path),
                ssl_context=None,  # a fresh context per server class, not a shared one
                tls_control_required=tls_required,
                tls_data_required=tls_required,
            )

        def pre_process_command(handler: Any, line: str, cmd: str, arg: str) -> None:
            shown = "PASS ***" if cmd == "PASS" else line
            with record.changed:
                record.commands.append(shown)
            base.pre_process_command(handler, line, cmd, arg)

        def on_file_received(handler: Any, file: str) -> None:
            received = Path(file)
            upload = FtpUpload(received.relative_to(home).as_posix(), received.read_bytes())
            with record.changed:
                record.uploads.append(upload)
                record.changed.notify_all()

        attributes["pre_process_command"] = pre_process_command
        attributes["on_file_received"] = on_file_received
        handler = type("TestFtpHandler", (base,), attributes)
        self._ioloop = IOLoop()  # its own loop: pyftpdlib's default one is process-wide
        self._server = FTPServer(("127.0.0.1", 0), handler, ioloop=self._ioloop)
        self.port: int = self._server.address[1]
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def uploads(self) -> list[FtpUpload]:
        with self._record.changed:
            return list(self._record.uploads)

    @property
    def commands(self) -> list[str]:
        with self._record.changed:
            return list(self._record.commands)

    def wait_uploads(self, count: int = 1, timeout: float = 5.0) -> list[FtpUpload]:
        """Wait until `count` uploads are recorded; returns them (fewer after the timeout)."""
        deadline = time.monotonic() + timeout
        with self._record.changed:
            while len(self._record.uploads) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._record.changed.wait(left)
            return list(self._record.uploads)

    def url(self, path: str, *, user: str | None = None, password: str | None = None) -> str:
        """The URL of `path` (relative to the home directory) with this server's credentials."""
        user = self.user if user is None else user
        password = self.password if password is None else password
        scheme = "ftps" if self.tls else "ftp"
        return f"{scheme}://{user}:{password}@127.0.0.1:{self.port}/{path.lstrip('/')}"

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._server.serve_forever(timeout=0.05, blocking=False, handle_exit=False)
        finally:
            self._server.close_all()

    def start(self) -> FtpServer:
        self._thread = threading.Thread(target=self._run, name=f"test-ftp-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        else:
            self._server.close_all()

    def __enter__(self) -> FtpServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
