"""TLS client contexts and Basic auth credentials for the OCPP security profiles.

Security profiles (OCPP 1.6 security whitepaper, OCPP 2.0.1 part 2 A00):

* 0 - plain ``ws://``, no authentication (not part of the standard; for labs and simulators);
* 1 - plain ``ws://`` with HTTP Basic auth;
* 2 - ``wss://`` (TLS 1.2 or newer, server certificate and host name verified) with Basic auth;
* 3 - ``wss://`` with a TLS client certificate and no Basic auth.

A context is built fresh for every connection attempt, so a renewed certificate or CA bundle on
disk is picked up by the next reconnect without a restart.
"""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

SECURITY_PROFILES = (0, 1, 2, 3)


class TransportConfigError(ValueError):
    """The transport settings cannot work: a bad profile or an unreadable/invalid file."""


def basic_auth_header(charge_point_id: str, password: str) -> str:
    """The ``Authorization`` header value for HTTP Basic auth: user is the charge point id."""
    token = base64.b64encode(f"{charge_point_id}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def build_client_ssl_context(
    *,
    security_profile: int,
    ca_bundle: Path | None,
    client_certificate: Path | None,
    client_key: Path | None,
) -> ssl.SSLContext | None:
    """The SSL context for `security_profile`, or None for the plain-websocket profiles 0 and 1.

    Profile 2 verifies the server certificate and host name against `ca_bundle` (a PEM file or a
    hashed certificate directory), or against the system trust store when it is None. Profile 3
    adds the client certificate chain (`client_key` may be None when the key is in the same file).
    Raises TransportConfigError naming the file and the problem when something cannot be used.
    """
    if security_profile not in SECURITY_PROFILES:
        raise TransportConfigError(
            f"security profile must be one of 0, 1, 2, 3, not {security_profile!r}"
        )
    if security_profile < 2:
        return None

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificate and host name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_bundle is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        _load_ca_bundle(context, ca_bundle)

    if security_profile == 3:
        if client_certificate is None:
            raise TransportConfigError("security profile 3 needs a client certificate")
        _load_client_certificate(context, client_certificate, client_key)
    return context


def _load_ca_bundle(context: ssl.SSLContext, ca_bundle: Path) -> None:
    try:
        if ca_bundle.is_dir():
            context.load_verify_locations(capath=ca_bundle)
        else:
            context.load_verify_locations(cafile=ca_bundle)
    except ssl.SSLError as exc:  # an OSError subclass: test it first
        raise TransportConfigError(
            f"CA bundle {ca_bundle} holds no usable PEM certificate ({exc.reason or exc})"
        ) from exc
    except OSError as exc:
        raise TransportConfigError(
            f"cannot read CA bundle {ca_bundle}: {exc.strerror or exc}"
        ) from exc


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TransportConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def _load_client_certificate(context: ssl.SSLContext, certificate: Path, key: Path | None) -> None:
    # Imported here, not at the top: only security profile 3 parses certificates, and
    # cryptography costs ~8 MiB of RSS (its Rust extension) and ~35 ms of startup.
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    # Parse both files first so that an error names the file at fault; OpenSSL's own messages
    # ("PEM lib") do not.
    cert_pem = _read(certificate, "client certificate")
    try:
        x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise TransportConfigError(
            f"client certificate {certificate} is not a PEM certificate"
        ) from exc
    key_path = certificate if key is None else key
    key_pem = _read(key_path, "client key")
    try:
        serialization.load_pem_private_key(key_pem, password=None)
    except TypeError as exc:  # raised for an encrypted key when no password is given
        raise TransportConfigError(
            f"client key {key_path} is encrypted; evsed needs an unencrypted key"
        ) from exc
    except ValueError as exc:
        raise TransportConfigError(f"client key {key_path} is not a PEM private key") from exc
    except Exception as exc:  # e.g. an unsupported key type
        raise TransportConfigError(f"client key {key_path} cannot be used: {exc}") from exc

    try:
        context.load_cert_chain(certificate, key, password=_refuse_password)
    except ssl.SSLError as exc:  # an OSError subclass: test it first
        if exc.reason == "KEY_VALUES_MISMATCH":
            message = f"client key {key_path} does not match client certificate {certificate}"
        else:
            message = (
                f"client certificate {certificate} / key {key_path} rejected by OpenSSL: {exc}"
            )
        raise TransportConfigError(message) from exc
    except OSError as exc:
        raise TransportConfigError(
            f"cannot read client certificate {certificate}: {exc.strerror or exc}"
        ) from exc


def _refuse_password() -> str:
    # Never let OpenSSL prompt on a terminal for a key passphrase (the daemon has none).
    raise TransportConfigError("client key is encrypted; evsed needs an unencrypted key")
