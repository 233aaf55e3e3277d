"""File transfer for firmware downloads and diagnostics uploads: HTTP(S) and FTP(S), blocking.

`download()` fetches a URL into `dest` through `dest` + ".part": a leftover part file is
continued (HTTP `Range`, FTP `REST`) when the server allows it, the announced size is checked
against `max_bytes` and the free space of the destination filesystem before anything is written,
and the finished file is fsynced and renamed into place atomically. `upload()` sends a file with
HTTP(S) PUT/POST or FTP(S) STOR.

Both functions block (callers run them with `asyncio.to_thread`) and raise only `TransferError`,
whose `kind` tells what went wrong. Credentials may be given in the URL (`user:pass@host`); they
are used for HTTP Basic authentication and the FTP login and never appear in error messages.

FTPS is explicit FTPS (`AUTH TLS`, then `PROT P` for the data connections). HTTPS and FTPS
verify the server against `TransferOptions.ssl_context` (the system trust store when None).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import ftplib
import http.client
import os
import re
import shutil
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum, auto
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

ProgressCallback = Callable[[int, int | None], None]

_CHUNK = 64 * 1024
_MAX_REDIRECTS = 5
_PROGRESS_INTERVAL_S = 0.25
_SPACE_CHECK_EVERY = 4 * 1024 * 1024
_HTTP_SCHEMES = ("http", "https")
_FTP_SCHEMES = ("ftp", "ftps")
_REDIRECTS = (301, 302, 303, 307, 308)
# Characters kept as they are in an HTTP request target; everything else is percent-encoded.
_HTTP_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.IGNORECASE)


class TransferErrorKind(StrEnum):
    """Why a transfer failed."""

    NOT_FOUND = auto()  # HTTP 404/410, FTP 550 (or a missing local source file for upload)
    TIMEOUT = auto()  # no answer / no data within timeout_s
    TRUNCATED = auto()  # the connection ended early; a download's .part is kept for a resume
    DISK_FULL = auto()  # not enough free space, or the local file cannot be written
    TOO_LARGE = auto()  # bigger than max_bytes (or HTTP 413 on upload)
    REFUSED = auto()  # cannot connect (refused, unreachable, unknown host, FTP 421)
    TLS = auto()  # handshake or certificate verification failed
    AUTH = auto()  # HTTP 401/403/407, FTP 530/532
    PROTOCOL = auto()  # anything else the server did wrong (unexpected status, bad headers)
    UNSUPPORTED = auto()  # URL scheme (or method) not supported, or an invalid URL


class TransferError(Exception):
    """A failed transfer; `kind` classifies it, `message` explains it (without passwords)."""

    def __init__(self, kind: TransferErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __repr__(self) -> str:
        return f"TransferError({self.kind.name}, {self.message!r})"


@dataclass(frozen=True)
class TransferOptions:
    """Settings of one transfer.

    `timeout_s` bounds every network operation (connect, each read or write), not the whole
    transfer. `max_bytes` caps a download's size (and an upload's). A download is refused with
    DISK_FULL unless `min_free_bytes` stay free on the destination filesystem after it.
    """

    ssl_context: ssl.SSLContext | None = None
    timeout_s: float = 30.0
    max_bytes: int | None = None
    min_free_bytes: int = 0


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int | None
    path: str  # HTTP: the request target (percent-encoded); FTP: the decoded path
    user: str | None
    password: str | None
    shown: str  # the URL for messages, password replaced by ***

    @property
    def origin(self) -> tuple[str, str, int | None]:
        return (self.scheme, self.host.lower(), self.port)


def redact_url(url: str) -> str:
    """`url` with the password (if any) replaced by `***`, for logs and messages."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<invalid URL>"
    if password is None:
        return url
    hostport = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{hostport}"))


def partial_path(dest: Path) -> Path:
    """The file a download into `dest` is written to before the final rename.

    A leftover one is resumed by the next `download()` to `dest`: a caller that reuses `dest` for
    another URL must delete it first.
    """
    return dest.with_name(dest.name + ".part")


def download(
    url: str,
    dest: Path,
    options: TransferOptions,
    progress: ProgressCallback | None = None,
) -> int:
    """Download `url` into `dest` and return its size in bytes.

    `progress(bytes_done, total_or_None)` is called on this thread, at most about four times a
    second plus once at the end; an exception it raises aborts the download (keeping the part
    file) and propagates unchanged, so a caller can cancel that way. A TRUNCATED or TIMEOUT
    failure keeps the part file so that the next call resumes; TOO_LARGE and DISK_FULL remove
    it.
    """
    target = _parse(url)
    part = partial_path(dest)
    reporter = _Progress(progress)
    try:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _local_error(exc, dest.parent) from exc
        if target.scheme in _HTTP_SCHEMES:
            size = _http_download(target, part, options, reporter)
        else:
            size = _ftp_download(target, part, options, reporter)
        _finish(part, dest, size)
        reporter(size, size, force=True)
        return size
    except TransferError as exc:
        if exc.kind in (TransferErrorKind.TOO_LARGE, TransferErrorKind.DISK_FULL):
            _discard(part)
        raise
    except _ProgressAbort as abort:
        raise abort.error from None
    except Exception as exc:  # a defect or an exotic failure: still a clear TransferError
        raise TransferError(
            TransferErrorKind.PROTOCOL,
            f"download of {target.shown} failed: {_scrub(_describe(exc), target)}",
        ) from exc


def upload(url: str, source: Path, options: TransferOptions, *, method: str = "PUT") -> None:
    """Upload the file `source` to `url`.

    HTTP(S): `method` (PUT or POST) with the file as the raw body; any 2xx answer is success.
    FTP(S): STOR to the URL's path; a URL ending with "/" gets `source.name` appended.
    """
    target = _parse(url)
    try:
        size = source.stat().st_size
    except OSError as exc:
        raise TransferError(
            TransferErrorKind.NOT_FOUND, f"cannot read {source}: {exc.strerror or exc}"
        ) from exc
    if options.max_bytes is not None and size > options.max_bytes:
        raise TransferError(
            TransferErrorKind.TOO_LARGE,
            f"{source} has {size} bytes, more than the limit of {options.max_bytes}",
        )
    try:
        if target.scheme in _HTTP_SCHEMES:
            verb = method.upper()
            if verb not in ("PUT", "POST"):
                raise TransferError(
                    TransferErrorKind.UNSUPPORTED, f"HTTP upload method {method!r} not supported"
                )
            _http_upload(target, source, size, options, verb)
        else:
            _ftp_upload(target, source, options)
    except TransferError:
        raise
    except Exception as exc:
        raise TransferError(
            TransferErrorKind.PROTOCOL,
            f"upload to {target.shown} failed: {_scrub(_describe(exc), target)}",
        ) from exc


# --- URLs and errors ---------------------------------------------------------------------------


def _parse(url: str) -> _Target:
    shown = redact_url(url)
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise TransferError(TransferErrorKind.UNSUPPORTED, f"invalid URL {shown}") from exc
    scheme = parts.scheme.lower()
    if scheme not in _HTTP_SCHEMES + _FTP_SCHEMES:
        raise TransferError(
            TransferErrorKind.UNSUPPORTED,
            f"URL scheme {scheme or '(none)'!r} not supported in {shown}"
            " (http, https, ftp and ftps are)",
        )
    if not parts.hostname:
        raise TransferError(TransferErrorKind.UNSUPPORTED, f"URL {shown} has no host")
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if scheme in _HTTP_SCHEMES:
        path = quote(parts.path or "/", safe=_HTTP_SAFE)
        if parts.query:
            path += "?" + quote(parts.query, safe=_HTTP_SAFE)
    else:
        # RFC 1738: the path is relative to the login directory; "%2F" makes it absolute.
        path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
        if any(ch in path for ch in "\r\n\0"):
            raise TransferError(
                TransferErrorKind.UNSUPPORTED, f"invalid characters in the path of {shown}"
            )
    return _Target(scheme, parts.hostname, port, path, user, password, shown)


def _scrub(text: str, target: _Target) -> str:
    """Remove the password from a message built from foreign text (a safety net)."""
    if target.password:
        text = text.replace(target.password, "***")
        text = text.replace(quote(target.password, safe=""), "***")
    return text


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _clip(text: str, limit: int = 200) -> str:
    """Foreign text (server replies) made printable and short for a message."""
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + "..."


def _network_error(exc: BaseException, target: _Target, *, transferring: bool) -> TransferError:
    """Classify an exception raised by the network side of a transfer.

    `transferring`: the data was already flowing, so a dropped connection means TRUNCATED.
    """
    if isinstance(exc, TransferError):
        return exc
    detail = _scrub(_clip(_describe(exc)), target)
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or detail
        return TransferError(
            TransferErrorKind.TLS, f"certificate of {target.shown} not trusted: {reason}"
        )
    if isinstance(exc, TimeoutError):
        return TransferError(
            TransferErrorKind.TIMEOUT, f"{target.shown}: no answer within the timeout ({detail})"
        )
    if isinstance(exc, ssl.SSLError):
        if transferring:
            return TransferError(
                TransferErrorKind.TRUNCATED, f"{target.shown}: TLS connection broken ({detail})"
            )
        return TransferError(
            TransferErrorKind.TLS, f"TLS handshake with {target.shown} failed: {detail}"
        )
    if isinstance(exc, ftplib.Error):
        return _ftp_error(exc, target)
    if isinstance(exc, http.client.IncompleteRead):
        return TransferError(
            TransferErrorKind.TRUNCATED, f"{target.shown}: the body ended early ({detail})"
        )
    if isinstance(exc, ConnectionRefusedError):
        return TransferError(TransferErrorKind.REFUSED, f"{target.shown}: connection refused")
    if isinstance(exc, socket.gaierror):
        return TransferError(
            TransferErrorKind.REFUSED, f"{target.shown}: cannot resolve the host ({detail})"
        )
    if isinstance(exc, ConnectionError | EOFError):
        if transferring:
            return TransferError(
                TransferErrorKind.TRUNCATED, f"{target.shown}: connection lost ({detail})"
            )
        return TransferError(
            TransferErrorKind.PROTOCOL, f"{target.shown}: connection closed without a reply"
        )
    if isinstance(exc, http.client.HTTPException):
        return TransferError(TransferErrorKind.PROTOCOL, f"{target.shown}: bad reply ({detail})")
    if isinstance(exc, OSError):
        if transferring:
            return TransferError(
                TransferErrorKind.TRUNCATED, f"{target.shown}: connection lost ({detail})"
            )
        return TransferError(
            TransferErrorKind.REFUSED, f"cannot connect to {target.shown}: {detail}"
        )
    return TransferError(TransferErrorKind.PROTOCOL, f"{target.shown}: {detail}")


def _local_error(exc: OSError, path: Path) -> TransferError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TransferError(TransferErrorKind.DISK_FULL, f"no space left for {path}")
    return TransferError(
        TransferErrorKind.DISK_FULL, f"cannot write {path}: {exc.strerror or _describe(exc)}"
    )


# --- the local side of a download ---------------------------------------------------------------


class _Progress:
    def __init__(self, callback: ProgressCallback | None) -> None:
        self._callback = callback
        self._last = 0.0

    def __call__(self, done: int, total: int | None, *, force: bool = False) -> None:
        if self._callback is None:
            return
        now = time.monotonic()
        if force or now - self._last >= _PROGRESS_INTERVAL_S:
            self._last = now
            try:
                self._callback(done, total)
            except Exception as exc:
                raise _ProgressAbort(exc) from exc


class _ProgressAbort(BaseException):
    """Carries an exception of the progress callback past the network error handlers."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


def _part_size(part: Path) -> int:
    try:
        return part.stat().st_size if part.is_file() else 0
    except OSError:
        return 0


def _discard(part: Path) -> None:
    with contextlib.suppress(OSError):
        part.unlink(missing_ok=True)


def _free_bytes(directory: Path) -> int:
    try:
        return shutil.disk_usage(directory).free
    except OSError as exc:
        raise _local_error(exc, directory) from exc


def _check_size(
    total: int | None, offset: int, directory: Path, options: TransferOptions, target: _Target
) -> None:
    """Refuse before writing when the announced size exceeds the limit or the free space."""
    if total is not None and options.max_bytes is not None and total > options.max_bytes:
        raise TransferError(
            TransferErrorKind.TOO_LARGE,
            f"{target.shown} has {total} bytes, more than the limit of {options.max_bytes}",
        )
    need = max(total - offset, 0) if total is not None else 0
    free = _free_bytes(directory)
    if free - need < options.min_free_bytes:
        raise TransferError(
            TransferErrorKind.DISK_FULL,
            f"{target.shown}: {need} more bytes needed and {options.min_free_bytes} to keep free,"
            f" but only {free} free in {directory}",
        )


def _receive(
    read: Callable[[int], bytes],
    part: Path,
    offset: int,
    total: int | None,
    options: TransferOptions,
    progress: _Progress,
    target: _Target,
) -> int:
    """Append what `read` yields to `part` (from `offset`); return the part's final size."""
    _check_size(total, offset, part.parent, options, target)
    done = offset
    try:
        fh = part.open("ab" if offset else "wb")
    except OSError as exc:
        raise _local_error(exc, part) from exc
    with fh:
        progress(done, total, force=True)
        unchecked = 0
        while True:
            try:
                chunk = read(_CHUNK)
            except Exception as exc:
                raise _network_error(exc, target, transferring=True) from exc
            if not chunk:
                break
            done += len(chunk)
            if options.max_bytes is not None and done > options.max_bytes:
                raise TransferError(
                    TransferErrorKind.TOO_LARGE,
                    f"{target.shown} sent more than the limit of {options.max_bytes} bytes",
                )
            if total is None:
                unchecked += len(chunk)
                if unchecked >= _SPACE_CHECK_EVERY:
                    unchecked = 0
                    _check_size(None, 0, part.parent, options, target)
            try:
                fh.write(chunk)
            except OSError as exc:
                raise _local_error(exc, part) from exc
            progress(done, total)
        try:
            fh.flush()
        except OSError as exc:
            raise _local_error(exc, part) from exc
    if total is not None and done < total:
        raise TransferError(
            TransferErrorKind.TRUNCATED,
            f"{target.shown}: received {done} of {total} bytes (kept for a resume)",
        )
    if total is not None and done > total:
        _discard(part)
        raise TransferError(
            TransferErrorKind.PROTOCOL,
            f"{target.shown}: received {done} bytes but {total} were announced",
        )
    return done


def _finish(part: Path, dest: Path, size: int) -> None:
    """fsync the part file, rename it to `dest` and fsync the directory."""
    try:
        actual = part.stat().st_size
        if actual != size:
            raise TransferError(
                TransferErrorKind.PROTOCOL, f"{part} has {actual} bytes, expected {size}"
            )
        fd = os.open(part, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(part, dest)
        dir_fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise _local_error(exc, dest) from exc


# --- HTTP(S) -----------------------------------------------------------------------------------


def _http_connection(target: _Target, options: TransferOptions) -> http.client.HTTPConnection:
    if target.scheme == "https":
        context = options.ssl_context or ssl.create_default_context()
        return http.client.HTTPSConnection(
            target.host, target.port, timeout=options.timeout_s, context=context, blocksize=_CHUNK
        )
    return http.client.HTTPConnection(
        target.host, target.port, timeout=options.timeout_s, blocksize=_CHUNK
    )


def _http_headers(target: _Target) -> dict[str, str]:
    headers = {"User-Agent": "evsed", "Accept-Encoding": "identity"}
    if target.user is not None:
        token = f"{target.user}:{target.password or ''}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(token).decode("ascii")
    return headers


def _http_status_error(status: int, reason: str, target: _Target) -> TransferError:
    text = f"{target.shown}: HTTP {status} {_clip(reason, 80)}".rstrip()
    if status in (404, 410):
        return TransferError(TransferErrorKind.NOT_FOUND, text)
    if status in (401, 403, 407):
        return TransferError(TransferErrorKind.AUTH, text)
    if status == 413:
        return TransferError(TransferErrorKind.TOO_LARGE, text)
    return TransferError(TransferErrorKind.PROTOCOL, text)


def _redirect(target: _Target, location: str | None) -> _Target:
    if not location:
        raise TransferError(
            TransferErrorKind.PROTOCOL, f"{target.shown}: redirect without a Location"
        )
    port = f":{target.port}" if target.port is not None else ""
    host = f"[{target.host}]" if ":" in target.host else target.host
    base = f"{target.scheme}://{host}{port}{target.path}"
    try:
        new = _parse(urljoin(base, location.strip()))
    except TransferError as exc:
        raise TransferError(
            TransferErrorKind.PROTOCOL, f"{target.shown}: bad redirect ({exc.message})"
        ) from exc
    if new.scheme not in _HTTP_SCHEMES:
        raise TransferError(
            TransferErrorKind.PROTOCOL, f"{target.shown}: redirect to {new.shown} not followed"
        )
    if target.scheme == "https" and new.scheme == "http":
        raise TransferError(
            TransferErrorKind.PROTOCOL,
            f"{target.shown}: redirect from https to plain http ({new.shown}) refused",
        )
    if new.user is None and new.origin == target.origin:
        # the same server: keep the credentials of the original URL
        return _Target(
            new.scheme, new.host, new.port, new.path, target.user, target.password, new.shown
        )
    return new


def _http_download(
    target: _Target, part: Path, options: TransferOptions, progress: _Progress
) -> int:
    restarted = False
    redirects = 0
    while True:
        offset = _part_size(part)
        conn = _http_connection(target, options)
        try:
            headers = _http_headers(target)
            if offset:
                headers["Range"] = f"bytes={offset}-"
            try:
                conn.request("GET", target.path, headers=headers)
                response = conn.getresponse()
            except Exception as exc:
                raise _network_error(exc, target, transferring=False) from exc
            status = response.status
            if status in _REDIRECTS:
                redirects += 1
                if redirects > _MAX_REDIRECTS:
                    raise TransferError(
                        TransferErrorKind.PROTOCOL, f"{target.shown}: too many redirects"
                    )
                target = _redirect(target, response.getheader("Location"))
                continue
            if status == 416 and offset:
                match = _UNSATISFIED_RANGE.match(response.getheader("Content-Range") or "")
                if match and int(match.group(1)) == offset:
                    return offset  # the part file already holds the whole file
                if restarted:
                    raise _http_status_error(status, response.reason, target)
                _discard(part)
                restarted = True
                continue
            if not 200 <= status < 300:
                raise _http_status_error(status, response.reason, target)
            total: int | None
            if status == 206:
                match = _CONTENT_RANGE.match(response.getheader("Content-Range") or "")
                if match is None or int(match.group(1)) != offset:
                    # not the range asked for: start again from zero, once
                    if restarted:
                        raise TransferError(
                            TransferErrorKind.PROTOCOL,
                            f"{target.shown}: unexpected partial reply"
                            f" {_clip(response.getheader('Content-Range') or '(no range)', 80)}",
                        )
                    _discard(part)
                    restarted = True
                    continue
                end = int(match.group(2))
                total = int(match.group(3)) if match.group(3) != "*" else end + 1
                if end + 1 != total or (
                    response.length is not None and response.length != total - offset
                ):
                    raise TransferError(
                        TransferErrorKind.PROTOCOL,
                        f"{target.shown}: inconsistent partial reply"
                        f" {_clip(response.getheader('Content-Range') or '', 80)}",
                    )
            else:
                offset = 0  # a full reply: the server ignored the range, start from zero
                total = response.length
            return _receive(response.read1, part, offset, total, options, progress, target)
        finally:
            conn.close()


def _http_upload(
    target: _Target, source: Path, size: int, options: TransferOptions, method: str
) -> None:
    conn = _http_connection(target, options)
    try:
        headers = _http_headers(target)
        headers["Content-Type"] = "application/octet-stream"
        headers["Content-Length"] = str(size)
        try:
            body = source.open("rb")
        except OSError as exc:
            raise TransferError(
                TransferErrorKind.NOT_FOUND, f"cannot read {source}: {exc.strerror or exc}"
            ) from exc
        with body:
            try:
                conn.request(method, target.path, body=_LocalReader(body, source), headers=headers)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server may have answered (e.g. 401 or 413) before taking the body
            except Exception as exc:
                raise _network_error(exc, target, transferring=False) from exc
        try:
            response = conn.getresponse()
            response.read(_CHUNK)
        except Exception as exc:
            raise _network_error(exc, target, transferring=True) from exc
        if not 200 <= response.status < 300:
            raise _http_status_error(response.status, response.reason, target)
    finally:
        conn.close()


class _LocalReader:
    """A file for http.client's body that reports local read errors as TransferError."""

    def __init__(self, fh: BinaryIO, path: Path) -> None:
        self._fh = fh
        self._path = path

    def read(self, size: int = -1) -> bytes:
        try:
            return self._fh.read(size)
        except OSError as exc:
            raise TransferError(
                TransferErrorKind.NOT_FOUND, f"cannot read {self._path}: {exc.strerror or exc}"
            ) from exc


# --- FTP(S) ------------------------------------------------------------------------------------


def _ftp_error(exc: ftplib.Error, target: _Target) -> TransferError:
    reply = _scrub(_clip(str(exc)), target)
    code = reply[:3]
    text = f"{target.shown}: FTP {reply}"
    if code in ("530", "532", "331", "332"):
        return TransferError(TransferErrorKind.AUTH, text)
    if code == "550":
        return TransferError(TransferErrorKind.NOT_FOUND, text)
    if code == "421":
        return TransferError(TransferErrorKind.REFUSED, text)
    return TransferError(TransferErrorKind.PROTOCOL, text)


def _ftp_connect(target: _Target, options: TransferOptions) -> ftplib.FTP:
    ftp: ftplib.FTP
    if target.scheme == "ftps":
        context = options.ssl_context or ssl.create_default_context()
        ftp = ftplib.FTP_TLS(context=context, timeout=options.timeout_s)
    else:
        ftp = ftplib.FTP(timeout=options.timeout_s)
    try:
        ftp.connect(target.host, target.port or 21)
        if isinstance(ftp, ftplib.FTP_TLS):
            try:
                ftp.auth()
            except ftplib.Error as exc:
                raise TransferError(
                    TransferErrorKind.TLS,
                    f"{target.shown}: server refused AUTH TLS ({_scrub(_clip(str(exc)), target)})",
                ) from exc
        try:
            ftp.login(target.user or "", target.password or "")
        except ftplib.error_perm as exc:
            # any permanent refusal of the login (530, or e.g. "550 TLS required")
            raise TransferError(
                TransferErrorKind.AUTH,
                f"{target.shown}: login refused ({_scrub(_clip(str(exc)), target)})",
            ) from exc
        if isinstance(ftp, ftplib.FTP_TLS):
            ftp.prot_p()
        ftp.voidcmd("TYPE I")
    except BaseException:
        ftp.close()
        raise
    return ftp


def _ftp_close(ftp: ftplib.FTP) -> None:
    with contextlib.suppress(Exception):
        ftp.quit()
    ftp.close()


def _ftp_size(ftp: ftplib.FTP, target: _Target) -> int | None:
    try:
        return ftp.size(target.path)
    except ftplib.error_perm as exc:
        if str(exc).startswith("550"):
            raise
        return None  # SIZE not supported
    except ValueError:
        return None  # an unparsable SIZE reply


def _ftp_download(
    target: _Target, part: Path, options: TransferOptions, progress: _Progress
) -> int:
    ftp: ftplib.FTP | None = None
    try:
        ftp = _ftp_connect(target, options)
        total = _ftp_size(ftp, target)
        offset = _part_size(part)
        if offset and total is not None:
            if offset == total:
                return offset  # the part file already holds the whole file
            if offset > total:
                _discard(part)
                offset = 0
        try:
            conn = ftp.transfercmd(f"RETR {target.path}", offset or None)
        except ftplib.error_perm as exc:
            if not offset or str(exc).startswith("550"):
                raise
            # REST not supported: start again from zero
            _discard(part)
            offset = 0
            conn = ftp.transfercmd(f"RETR {target.path}")
        with conn:
            done = _receive(conn.recv, part, offset, total, options, progress, target)
            if isinstance(conn, ssl.SSLSocket):
                # all bytes are in; the server's reply below decides about success
                with contextlib.suppress(OSError, ValueError):
                    conn.unwrap()
        try:
            ftp.voidresp()
        except ftplib.Error as exc:
            raise TransferError(
                TransferErrorKind.TRUNCATED,
                f"{target.shown}: transfer failed after {done} bytes"
                f" ({_scrub(_clip(str(exc)), target)}; kept for a resume)",
            ) from exc
        return done
    except TransferError:
        raise
    except Exception as exc:
        raise _network_error(exc, target, transferring=False) from exc
    finally:
        if ftp is not None:
            _ftp_close(ftp)


def _ftp_upload(target: _Target, source: Path, options: TransferOptions) -> None:
    path = target.path
    if not path or path.endswith("/"):
        path += source.name
    try:
        body = source.open("rb")
    except OSError as exc:
        raise TransferError(
            TransferErrorKind.NOT_FOUND, f"cannot read {source}: {exc.strerror or exc}"
        ) from exc
    ftp: ftplib.FTP | None = None
    started = False
    try:
        with body:
            ftp = _ftp_connect(target, options)
            started = True
            ftp.storbinary(f"STOR {path}", _LocalReader(body, source), blocksize=_CHUNK)
    except TransferError:
        raise
    except ftplib.Error as exc:
        raise _ftp_error(exc, target) from exc
    except Exception as exc:
        raise _network_error(exc, target, transferring=started) from exc
    finally:
        if ftp is not None:
            _ftp_close(ftp)
