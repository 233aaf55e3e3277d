"""Tests of service.firmware.transfer against real loopback HTTP(S) and FTP(S) servers."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.firmware.transfer import (
    TransferError,
    TransferErrorKind,
    TransferOptions,
    download,
    partial_path,
    redact_url,
    upload,
)
from tests.certs import CertPair, make_ca, make_leaf
from tests.servers import FtpServer, HttpServer, client_context

PAYLOAD = os.urandom(300_000)
FAST = TransferOptions(timeout_s=5.0)


@dataclass(frozen=True)
class Pki:
    ca: CertPair
    leaf: CertPair
    other_ca: CertPair

    @property
    def options(self) -> TransferOptions:
        return TransferOptions(ssl_context=client_context(self.ca), timeout_s=5.0)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory, "ca")
    return Pki(ca, make_leaf(ca, directory, "server"), make_ca(directory, "other-ca"))


@pytest.fixture
def http() -> Iterator[HttpServer]:
    with HttpServer() as server:
        yield server


@pytest.fixture
def https(pki: Pki) -> Iterator[HttpServer]:
    with HttpServer(tls=pki.leaf) as server:
        yield server


@pytest.fixture
def ftp(tmp_path: Path) -> Iterator[FtpServer]:
    with FtpServer(tmp_path / "ftp-home") as server:
        yield server


@pytest.fixture
def ftps(tmp_path: Path, pki: Pki) -> Iterator[FtpServer]:
    with FtpServer(tmp_path / "ftps-home", tls=pki.leaf) as server:
        yield server


def fail(kind: TransferErrorKind, url: str, dest: Path, options: TransferOptions) -> TransferError:
    with pytest.raises(TransferError) as info:
        download(url, dest, options)
    assert info.value.kind is kind, info.value.message
    return info.value


# --- HTTP(S) downloads ---------------------------------------------------------------------------


def test_http_download_writes_the_file_and_reports_progress(
    http: HttpServer, tmp_path: Path
) -> None:
    http.serve("/fw.bin", PAYLOAD)
    dest = tmp_path / "dl" / "fw.bin"
    seen: list[tuple[int, int | None]] = []
    size = download(http.url("/fw.bin"), dest, FAST, lambda done, total: seen.append((done, total)))
    assert size == len(PAYLOAD)
    assert dest.read_bytes() == PAYLOAD
    assert not partial_path(dest).exists()
    assert seen[0] == (0, len(PAYLOAD))
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert all(0 <= done <= len(PAYLOAD) for done, _ in seen)
    assert "Range" not in http.requests[0].headers


def test_https_download_with_the_right_trust_store(
    https: HttpServer, pki: Pki, tmp_path: Path
) -> None:
    https.serve("/fw.bin", PAYLOAD)
    assert https.url("/fw.bin").startswith("https://")
    assert download(https.url("/fw.bin"), tmp_path / "fw.bin", pki.options) == len(PAYLOAD)
    assert (tmp_path / "fw.bin").read_bytes() == PAYLOAD


def test_https_with_a_foreign_trust_store_is_a_tls_error(
    https: HttpServer, pki: Pki, tmp_path: Path
) -> None:
    https.serve("/fw.bin", PAYLOAD)
    options = TransferOptions(ssl_context=client_context(pki.other_ca), timeout_s=5.0)
    error = fail(TransferErrorKind.TLS, https.url("/fw.bin"), tmp_path / "fw.bin", options)
    assert "certificate" in error.message
    assert not (tmp_path / "fw.bin").exists()


def test_missing_file_is_not_found(http: HttpServer, tmp_path: Path) -> None:
    error = fail(TransferErrorKind.NOT_FOUND, http.url("/nothing"), tmp_path / "x", FAST)
    assert "404" in error.message


def test_server_error_status_is_a_protocol_error(http: HttpServer, tmp_path: Path) -> None:
    http.serve("/broken", b"oops", status=500)
    fail(TransferErrorKind.PROTOCOL, http.url("/broken"), tmp_path / "x", FAST)


def test_a_silent_server_times_out(http: HttpServer, tmp_path: Path) -> None:
    http.serve("/stall", PAYLOAD, stall=True)
    options = TransferOptions(timeout_s=0.3)
    fail(TransferErrorKind.TIMEOUT, http.url("/stall"), tmp_path / "x", options)


def test_a_stall_mid_body_times_out_and_the_retry_resumes(http: HttpServer, tmp_path: Path) -> None:
    http.serve("/fw.bin", PAYLOAD, stall_after=70_000, faults=1)
    dest = tmp_path / "fw.bin"
    fail(TransferErrorKind.TIMEOUT, http.url("/fw.bin"), dest, TransferOptions(timeout_s=0.3))
    assert partial_path(dest).stat().st_size == 70_000
    assert download(http.url("/fw.bin"), dest, FAST) == len(PAYLOAD)
    assert dest.read_bytes() == PAYLOAD
    assert http.requests[-1].headers["Range"] == "bytes=70000-"


def test_truncated_body_keeps_the_part_and_the_retry_resumes_with_range(
    http: HttpServer, tmp_path: Path
) -> None:
    http.serve("/fw.bin", PAYLOAD, truncate_after=100_000, faults=1)
    dest = tmp_path / "fw.bin"
    error = fail(TransferErrorKind.TRUNCATED, http.url("/fw.bin"), dest, FAST)
    assert "100000 of 300000" in error.message
    assert not dest.exists()
    assert partial_path(dest).read_bytes() == PAYLOAD[:100_000]
    assert download(http.url("/fw.bin"), dest, FAST) == len(PAYLOAD)
    assert dest.read_bytes() == PAYLOAD
    assert not partial_path(dest).exists()
    assert [r.headers.get("Range") for r in http.requests] == [None, "bytes=100000-"]


def test_truncated_https_body_is_truncated(https: HttpServer, pki: Pki, tmp_path: Path) -> None:
    https.serve("/fw.bin", PAYLOAD, truncate_after=50_000, faults=1)
    dest = tmp_path / "fw.bin"
    fail(TransferErrorKind.TRUNCATED, https.url("/fw.bin"), dest, pki.options)
    assert download(https.url("/fw.bin"), dest, pki.options) == len(PAYLOAD)
    assert dest.read_bytes() == PAYLOAD


def test_server_without_range_support_restarts_from_zero(http: HttpServer, tmp_path: Path) -> None:
    http.serve("/fw.bin", PAYLOAD, ranges=False)
    dest = tmp_path / "fw.bin"
    partial_path(dest).write_bytes(b"x" * 5000)  # a leftover the server cannot continue
    assert download(http.url("/fw.bin"), dest, FAST) == len(PAYLOAD)
    assert dest.read_bytes() == PAYLOAD
    assert http.requests[0].headers["Range"] == "bytes=5000-"


def test_a_complete_leftover_part_is_finished_without_data(
    http: HttpServer, tmp_path: Path
) -> None:
    http.serve("/fw.bin", PAYLOAD)
    dest = tmp_path / "fw.bin"
    partial_path(dest).write_bytes(PAYLOAD)
    assert download(http.url("/fw.bin"), dest, FAST) == len(PAYLOAD)
    assert dest.read_bytes() == PAYLOAD


def test_a_leftover_part_longer_than_the_file_restarts(http: HttpServer, tmp_path: Path) -> None:
    http.serve("/fw.bin", PAYLOAD[:1000])
    dest = tmp_path / "fw.bin"
    partial_path(dest).write_bytes(b"y" * 2000)
    assert download(http.url("/fw.bin"), dest, FAST) == 1000
    assert dest.read_bytes() == PAYLOAD[:1000]


def test_redirect_is_followed(http: HttpServer, tmp_path: Path) -> None:
    http.serve("/fw.bin", PAYLOAD)
    http.serve("/latest", redirect_to="/fw.bin")
    assert download(http.url("/latest"), tmp_path / "fw.bin", FAST) == len(PAYLOAD)
    assert (tmp_path / "fw.bin").read_bytes() == PAYLOAD


def test_redirect_loop_is_a_protocol_error(http: HttpServer, tmp_path: Path) -> None:
    http.serve("/loop", redirect_to="/loop")
    error = fail(TransferErrorKind.PROTOCOL, http.url("/loop"), tmp_path / "x", FAST)
    assert "redirects" in error.message


def test_announced_size_over_the_limit_is_too_large(http: HttpServer, tmp_path: Path) -> None:
    http.serve("/fw.bin", PAYLOAD)
    dest = tmp_path / "fw.bin"
    partial_path(dest).write_bytes(b"z" * 10)
    options = TransferOptions(timeout_s=5.0, max_bytes=1000)
    fail(TransferErrorKind.TOO_LARGE, http.url("/fw.bin"), dest, options)
    assert not partial_path(dest).exists()
    assert not dest.exists()


def test_unannounced_size_over_the_limit_is_too_large(http: HttpServer, tmp_path: Path) -> None:
    http.serve("/fw.bin", PAYLOAD, content_length=False)
    dest = tmp_path / "fw.bin"
    options = TransferOptions(timeout_s=5.0, max_bytes=100_000)
    fail(TransferErrorKind.TOO_LARGE, http.url("/fw.bin"), dest, options)
    assert not partial_path(dest).exists()
    # without a limit the close-delimited body is taken whole
    assert download(http.url("/fw.bin"), dest, FAST) == len(PAYLOAD)


def test_not_enough_free_space_is_disk_full_before_writing(
    http: HttpServer, tmp_path: Path
) -> None:
    http.serve("/fw.bin", PAYLOAD)
    dest = tmp_path / "fw.bin"
    options = TransferOptions(timeout_s=5.0, min_free_bytes=1 << 62)
    error = fail(TransferErrorKind.DISK_FULL, http.url("/fw.bin"), dest, options)
    assert "free" in error.message
    assert not partial_path(dest).exists()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_enospc_while_writing_is_disk_full(http: HttpServer, tmp_path: Path) -> None:
    http.serve("/fw.bin", PAYLOAD)
    dest = tmp_path / "fw.bin"
    partial_path(dest).symlink_to("/dev/full")  # every write fails with ENOSPC
    error = fail(TransferErrorKind.DISK_FULL, http.url("/fw.bin"), dest, FAST)
    assert "no space" in error.message
    assert not partial_path(dest).is_symlink()
    assert not dest.exists()


def test_refused_connection(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    fail(TransferErrorKind.REFUSED, f"http://127.0.0.1:{port}/x", tmp_path / "x", FAST)


# --- credentials ---------------------------------------------------------------------------------


def test_http_basic_credentials_from_the_url(http: HttpServer, tmp_path: Path) -> None:
    http.serve("/fw.bin", PAYLOAD, auth=("evse", "p@ss:word"))
    url = http.url("/fw.bin", user="evse", password="p%40ss%3Aword")
    assert download(url, tmp_path / "fw.bin", FAST) == len(PAYLOAD)
    assert http.requests[0].headers["Authorization"].startswith("Basic ")


def test_wrong_http_password_is_auth_and_never_shown(http: HttpServer, tmp_path: Path) -> None:
    http.serve("/fw.bin", PAYLOAD, auth=("evse", "right"))
    url = http.url("/fw.bin", user="evse", password="Wr0ngSecret")
    error = fail(TransferErrorKind.AUTH, url, tmp_path / "fw.bin", FAST)
    assert "Wr0ngSecret" not in str(error) and "Wr0ngSecret" not in repr(error)
    assert "evse:***@" in error.message


def test_redact_url() -> None:
    assert redact_url("ftp://u:secret@host:21/a") == "ftp://u:***@host:21/a"
    assert redact_url("https://host/a?b=1") == "https://host/a?b=1"
    assert redact_url("http://[::1") == "<invalid URL>"


# --- bad URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["sftp://host/fw.bin", "file:///etc/passwd", "fw.bin", "http:///nohost", "http://h:99999/x"],
)
def test_unsupported_or_invalid_urls(url: str, tmp_path: Path) -> None:
    fail(TransferErrorKind.UNSUPPORTED, url, tmp_path / "x", FAST)
    with pytest.raises(TransferError) as info:
        upload(url, Path(__file__), FAST)
    assert info.value.kind is TransferErrorKind.UNSUPPORTED


def test_unsupported_scheme_message_hides_the_password(tmp_path: Path) -> None:
    error = fail(TransferErrorKind.UNSUPPORTED, "sftp://u:Hush1234@h/x", tmp_path / "x", FAST)
    assert "Hush1234" not in error.message


# --- FTP(S) downloads ----------------------------------------------------------------------------


def test_ftp_download(ftp: FtpServer, tmp_path: Path) -> None:
    (ftp.home / "fw").mkdir()
    (ftp.home / "fw" / "image.bin").write_bytes(PAYLOAD)
    seen: list[tuple[int, int | None]] = []
    dest = tmp_path / "image.bin"
    size = download(ftp.url("/fw/image.bin"), dest, FAST, lambda d, t: seen.append((d, t)))
    assert size == len(PAYLOAD)
    assert dest.read_bytes() == PAYLOAD
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert "PASS ***" in ftp.commands


def test_ftps_download(ftps: FtpServer, pki: Pki, tmp_path: Path) -> None:
    (ftps.home / "image.bin").write_bytes(PAYLOAD)
    assert ftps.url("image.bin").startswith("ftps://")
    dest = tmp_path / "image.bin"
    assert download(ftps.url("image.bin"), dest, pki.options) == len(PAYLOAD)
    assert dest.read_bytes() == PAYLOAD
    assert "AUTH TLS" in ftps.commands and "PROT P" in ftps.commands


def test_ftps_with_a_foreign_trust_store_is_a_tls_error(
    ftps: FtpServer, pki: Pki, tmp_path: Path
) -> None:
    (ftps.home / "image.bin").write_bytes(PAYLOAD)
    options = TransferOptions(ssl_context=client_context(pki.other_ca), timeout_s=5.0)
    fail(TransferErrorKind.TLS, ftps.url("image.bin"), tmp_path / "image.bin", options)


def test_ftp_resume_uses_rest(ftp: FtpServer, tmp_path: Path) -> None:
    (ftp.home / "image.bin").write_bytes(PAYLOAD)
    dest = tmp_path / "image.bin"
    partial_path(dest).write_bytes(PAYLOAD[:123_456])
    assert download(ftp.url("image.bin"), dest, FAST) == len(PAYLOAD)
    assert dest.read_bytes() == PAYLOAD
    assert "REST 123456" in ftp.commands


def test_ftp_missing_file_is_not_found(ftp: FtpServer, tmp_path: Path) -> None:
    fail(TransferErrorKind.NOT_FOUND, ftp.url("nothing.bin"), tmp_path / "x", FAST)


def test_ftp_wrong_password_is_auth_and_never_shown(ftp: FtpServer, tmp_path: Path) -> None:
    (ftp.home / "image.bin").write_bytes(PAYLOAD)
    url = ftp.url("image.bin", password="N0tTheOne")
    error = fail(TransferErrorKind.AUTH, url, tmp_path / "x", FAST)
    assert "N0tTheOne" not in str(error)
    assert "530" in error.message


def test_ftp_size_over_the_limit_is_too_large(ftp: FtpServer, tmp_path: Path) -> None:
    (ftp.home / "image.bin").write_bytes(PAYLOAD)
    options = TransferOptions(timeout_s=5.0, max_bytes=10)
    fail(TransferErrorKind.TOO_LARGE, ftp.url("image.bin"), tmp_path / "x", options)


# --- uploads -------------------------------------------------------------------------------------


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    path = tmp_path / "diagnostics.tar.gz"
    path.write_bytes(PAYLOAD)
    return path


@pytest.mark.parametrize("method", ["PUT", "POST"])
def test_http_upload(http: HttpServer, archive: Path, method: str) -> None:
    upload(http.url("/incoming/diag.tar.gz"), archive, FAST, method=method)
    [received] = http.uploads
    assert (received.method, received.path, received.body) == (
        method,
        "/incoming/diag.tar.gz",
        PAYLOAD,
    )
    assert received.headers["Content-Length"] == str(len(PAYLOAD))


def test_https_upload_with_credentials(https: HttpServer, pki: Pki, archive: Path) -> None:
    https.serve("/up", auth=("csms", "k3y"))
    upload(https.url("/up", user="csms", password="k3y"), archive, pki.options)
    assert https.uploads[0].body == PAYLOAD


def test_http_upload_errors_are_classified(http: HttpServer, archive: Path) -> None:
    http.serve("/gone", status=404)
    http.serve("/secret", auth=("a", "b"))
    http.serve("/big", status=413)
    for path, kind in [
        ("/gone", TransferErrorKind.NOT_FOUND),
        ("/secret", TransferErrorKind.AUTH),
        ("/big", TransferErrorKind.TOO_LARGE),
    ]:
        with pytest.raises(TransferError) as info:
            upload(http.url(path), archive, FAST)
        assert info.value.kind is kind, path
    with pytest.raises(TransferError) as info:
        upload(http.url("/x"), archive, FAST, method="DELETE")
    assert info.value.kind is TransferErrorKind.UNSUPPORTED


def test_http_upload_to_a_silent_server_times_out(http: HttpServer, archive: Path) -> None:
    http.serve("/stall", stall=True)
    with pytest.raises(TransferError) as info:
        upload(http.url("/stall"), archive, TransferOptions(timeout_s=0.3))
    assert info.value.kind is TransferErrorKind.TIMEOUT


def test_upload_of_a_missing_file(http: HttpServer, tmp_path: Path) -> None:
    with pytest.raises(TransferError) as info:
        upload(http.url("/x"), tmp_path / "absent.tar.gz", FAST)
    assert info.value.kind is TransferErrorKind.NOT_FOUND
    assert "absent.tar.gz" in info.value.message


def test_upload_over_the_limit_is_too_large(http: HttpServer, archive: Path) -> None:
    with pytest.raises(TransferError) as info:
        upload(http.url("/x"), archive, TransferOptions(max_bytes=10))
    assert info.value.kind is TransferErrorKind.TOO_LARGE
    assert http.requests == []


def test_ftp_upload_to_a_directory_appends_the_file_name(ftp: FtpServer, archive: Path) -> None:
    (ftp.home / "logs").mkdir()
    upload(ftp.url("logs/"), archive, FAST)
    [received] = ftp.wait_uploads(1)
    assert received == type(received)("logs/diagnostics.tar.gz", PAYLOAD)
    assert (ftp.home / "logs" / "diagnostics.tar.gz").read_bytes() == PAYLOAD


def test_ftps_upload_to_a_file_name(ftps: FtpServer, pki: Pki, archive: Path) -> None:
    upload(ftps.url("renamed.tgz"), archive, pki.options)
    [received] = ftps.wait_uploads(1)
    assert (received.path, received.data) == ("renamed.tgz", PAYLOAD)


def test_ftp_upload_errors(ftp: FtpServer, archive: Path) -> None:
    with pytest.raises(TransferError) as info:
        upload(ftp.url("missing-dir/x.tgz"), archive, FAST)
    assert info.value.kind is TransferErrorKind.NOT_FOUND
    with pytest.raises(TransferError) as info:
        upload(ftp.url("x.tgz", password="Bad-Pass-1"), archive, FAST)
    assert info.value.kind is TransferErrorKind.AUTH
    assert "Bad-Pass-1" not in str(info.value)


def test_plain_ftp_to_a_tls_only_server_is_refused_clearly(ftps: FtpServer, tmp_path: Path) -> None:
    (ftps.home / "image.bin").write_bytes(PAYLOAD)
    url = ftps.url("image.bin").replace("ftps://", "ftp://", 1)
    error = fail(TransferErrorKind.AUTH, url, tmp_path / "x", FAST)
    assert ftps.password not in error.message


def test_default_context_is_used_for_https_when_none_given(
    https: HttpServer, tmp_path: Path
) -> None:
    # the test CA is not in the system store: verification must fail, not be skipped
    https.serve("/fw.bin", PAYLOAD)
    fail(TransferErrorKind.TLS, https.url("/fw.bin"), tmp_path / "x", FAST)


def test_an_exception_in_the_progress_callback_cancels_and_propagates(
    http: HttpServer, tmp_path: Path
) -> None:
    http.serve("/fw.bin", PAYLOAD)

    class Cancelled(Exception):
        pass

    def cancel(done: int, total: int | None) -> None:
        raise Cancelled

    dest = tmp_path / "fw.bin"
    with pytest.raises(Cancelled):
        download(http.url("/fw.bin"), dest, FAST, cancel)
    assert not dest.exists()
    assert partial_path(dest).stat().st_size < len(PAYLOAD)
