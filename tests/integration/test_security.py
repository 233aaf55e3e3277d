"""Security profiles through the real daemon: Basic auth, wss with CA checks, client certs."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

from testcsms.server import TestCsms
from tests.certs import CertPair, make_ca, make_leaf
from tests.integration.conftest import DaemonProcess, eventually, start_daemon, write_config

PASSWORD = "0123456789abcdef-secret"


def server_context(leaf: CertPair, client_ca: CertPair | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(leaf.cert_path, leaf.key_path)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca.cert_path)
    return context


def tls_config(tmp: Path, url: str, profile: int, ca: CertPair,
               client: CertPair | None = None) -> Path:
    lines = [f'ca_bundle = "{ca.cert_path}"']
    if profile in (1, 2):
        lines.append(f'basic_auth_password = "{PASSWORD}"')
    if client is not None:
        lines += [f'client_certificate = "{client.cert_path}"',
                  f'client_key = "{client.key_path}"']
    return write_config(tmp, url, csms_extra="\n".join(lines), security_profile=profile)


async def test_profile_1_basic_auth(daemons: list[DaemonProcess], tmp_path: Path) -> None:
    async with TestCsms(basic_auth={"CP-IT-1": PASSWORD}) as csms:
        config = write_config(tmp_path, csms.url, security_profile=1,
                              csms_extra=f'basic_auth_password = "{PASSWORD}"')
        daemon = await start_daemon(config, tmp_path)
        daemons.append(daemon)
        await csms.wait_for("BootNotification")
        assert csms.connections[0].authorization is not None
        assert await daemon.stop() == 0


async def test_profile_1_wrong_password_is_refused_and_retried(
        daemons: list[DaemonProcess], tmp_path: Path) -> None:
    async with TestCsms(basic_auth={"CP-IT-1": "another-password-entirely"}) as csms:
        config = write_config(tmp_path, csms.url, security_profile=1,
                              csms_extra=f'basic_auth_password = "{PASSWORD}"')
        daemon = await start_daemon(config, tmp_path)
        daemons.append(daemon)
        await csms.wait_until(lambda: len(csms.rejections) >= 2)
        assert {r.status for r in csms.rejections} == {401}
        assert daemon.process.returncode is None
        assert await daemon.stop() == 0
        assert "401" in daemon.stderr()


async def test_profile_2_and_3_connect(daemons: list[DaemonProcess], tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "csms-ca")
    server = make_leaf(ca, tmp_path, "csms")
    client_ca = make_ca(tmp_path, "cp-ca")
    client = make_leaf(client_ca, tmp_path, "CP-IT-1", client=True)
    async with TestCsms(ssl_context=server_context(server),
                        basic_auth={"CP-IT-1": PASSWORD}) as csms:
        assert csms.url.startswith("wss://")
        daemon = await start_daemon(tls_config(tmp_path, csms.url, 2, ca), tmp_path)
        daemons.append(daemon)
        await csms.wait_for("BootNotification")
        assert csms.connections[0].authorization is not None
        assert await daemon.stop() == 0
    async with TestCsms(ssl_context=server_context(server, client_ca)) as csms:
        daemon = await start_daemon(tls_config(tmp_path, csms.url, 3, ca, client), tmp_path)
        daemons.append(daemon)
        await csms.wait_for("BootNotification")
        assert csms.connections[0].authorization is None
        assert csms.connections[0].peer_cert is not None
        assert await daemon.stop() == 0


async def test_tls_failures_are_refused_logged_and_retried(daemons: list[DaemonProcess],
                                                           tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "csms-ca")
    wrong_ca = make_ca(tmp_path, "wrong-ca")
    day = datetime.timedelta(days=1)
    cases = {
        "unable to get local issuer": (make_leaf(ca, tmp_path, "ok"), wrong_ca),
        "expired": (make_leaf(ca, tmp_path, "old", not_before=-30 * day, not_after=-day), ca),
        "mismatch": (make_leaf(ca, tmp_path, "elsewhere", dns_names=("other.example",),
                               ip_addresses=("10.9.9.9",)), ca),
    }
    for expected, (leaf, trusted) in cases.items():
        async with TestCsms(ssl_context=server_context(leaf)) as csms:
            run_dir = tmp_path / expected.replace(" ", "-")
            run_dir.mkdir()
            daemon = await start_daemon(tls_config(run_dir, csms.url, 2, trusted), run_dir)
            daemons.append(daemon)
            await eventually(lambda d=daemon: d.stderr().count("[tls]") >= 2, timeout=15)
            assert expected in daemon.stderr().lower(), daemon.stderr()
            assert not [r for r in csms.received if r.action == "BootNotification"]
            assert await daemon.stop() == 0
