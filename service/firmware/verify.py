"""Checks of signed firmware: the signing certificate against the manufacturer's roots, and the
signature over the downloaded file.

`load_roots(path)` reads the trusted manufacturer root certificates from a PEM file or from a
directory of PEM files (*.pem, *.crt, *.cer; files that hold no certificate are skipped with a
warning).

`verify_signing_certificate(pem, roots, now)` accepts the signing certificate as OCPP sends
it: a PEM leaf, optionally followed by intermediate CA certificates. It builds the chain
leaf -> intermediates -> one of `roots` by issuer name and signature
(`Certificate.verify_directly_issued_by`), then checks every certificate of the chain for
its validity period at `now`, every issuer for basicConstraints CA=true (and its path length
limit, and keyCertSign when it has a keyUsage extension), and the leaf, when it has a
keyUsage extension, for digitalSignature. A leaf that is itself one of the roots is trusted
as it is (after the same period and usage checks). It returns the leaf.

`verify_file_signature(certificate, signature_b64, path)` checks a base64 signature over the
file with the certificate's public key: RSA PKCS#1 v1.5 with SHA-256, or ECDSA with SHA-256
(DER signature; a raw r||s signature of the curve's size is accepted too). The file is hashed
in chunks, never read whole.

Every rejection, including garbage input (bad PEM, bad base64, empty values), raises
`VerificationError` with `status` "InvalidCertificate" or "InvalidSignature" and a one-line
message. Only failing to read the firmware file or the roots (OSError) is not a
VerificationError.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

__all__ = [
    "INVALID_CERTIFICATE",
    "INVALID_SIGNATURE",
    "VerificationError",
    "load_roots",
    "verify_file_signature",
    "verify_signing_certificate",
]

log = logging.getLogger("evsed.firmware")

INVALID_CERTIFICATE: Final = "InvalidCertificate"
INVALID_SIGNATURE: Final = "InvalidSignature"

_ROOT_SUFFIXES = (".pem", ".crt", ".cer")
_MAX_CHAIN = 8  # intermediates followed at most
_CHUNK = 1024 * 1024
_E = TypeVar("_E", bound=x509.ExtensionType)


class VerificationError(Exception):
    """A signed-firmware check failed. `status` is "InvalidCertificate" or "InvalidSignature"
    (the OCPP status to report); `str(exc)` is the reason."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def _certificate_error(message: str) -> VerificationError:
    return VerificationError(INVALID_CERTIFICATE, message)


def _signature_error(message: str) -> VerificationError:
    return VerificationError(INVALID_SIGNATURE, message)


def _name(certificate: x509.Certificate) -> str:
    try:
        return certificate.subject.rfc4514_string() or "(empty subject)"
    except ValueError:
        return "(unreadable subject)"


def _parse_pem(data: bytes, where: str) -> list[x509.Certificate]:
    """All certificates of a PEM text; VerificationError when there is none or one is broken."""
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise _certificate_error(f"{where}: no PEM certificate found")
    try:
        return x509.load_pem_x509_certificates(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _certificate_error(f"{where}: not a valid PEM certificate ({exc})") from exc


def load_roots(path: Path) -> list[x509.Certificate]:
    """The manufacturer root certificates in a PEM file or a directory of PEM files.

    Raises VerificationError (InvalidCertificate) when `path` holds no usable certificate and
    OSError when it cannot be read.
    """
    if path.is_dir():
        roots: list[x509.Certificate] = []
        for entry in sorted(path.iterdir()):
            if entry.suffix.lower() not in _ROOT_SUFFIXES or not entry.is_file():
                continue
            try:
                roots += _parse_pem(entry.read_bytes(), str(entry))
            except VerificationError as exc:
                log.warning("manufacturer root certificates: skipping %s", exc)
        if not roots:
            raise _certificate_error(
                f"{path}: no manufacturer root certificate found "
                f"(looked for PEM files named *{', *'.join(_ROOT_SUFFIXES)})"
            )
        return roots
    return _parse_pem(path.read_bytes(), str(path))


def _check_period(certificate: x509.Certificate, now: datetime, role: str) -> None:
    if now < certificate.not_valid_before_utc:
        raise _certificate_error(
            f"{role} {_name(certificate)} is not valid before "
            f"{certificate.not_valid_before_utc.isoformat()}"
        )
    if now > certificate.not_valid_after_utc:
        raise _certificate_error(
            f"{role} {_name(certificate)} expired at {certificate.not_valid_after_utc.isoformat()}"
        )


def _extension(certificate: x509.Certificate, kind: type[_E]) -> _E | None:
    try:
        return certificate.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:  # a malformed extension
        raise _certificate_error(f"{_name(certificate)}: unreadable extensions ({exc})") from exc


def _check_issuer(issuer: x509.Certificate, cas_below: int, role: str) -> None:
    """`issuer` signs a chain with `cas_below` intermediate CAs under it."""
    constraints = _extension(issuer, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        raise _certificate_error(f"{role} {_name(issuer)} is not a CA (basicConstraints)")
    if constraints.path_length is not None and cas_below > constraints.path_length:
        raise _certificate_error(
            f"{role} {_name(issuer)} allows {constraints.path_length} intermediate CA(s) "
            f"below it, the chain has {cas_below}"
        )
    usage = _extension(issuer, x509.KeyUsage)
    if usage is not None and not usage.key_cert_sign:
        raise _certificate_error(f"{role} {_name(issuer)} may not sign certificates (keyUsage)")


def _issued_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    if child.issuer != issuer.subject:
        return False
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _check_key_type(certificate: x509.Certificate) -> None:
    try:
        key = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _certificate_error(f"{_name(certificate)}: unreadable public key ({exc})") from exc
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise _certificate_error(
            f"{_name(certificate)}: {type(key).__name__} keys are not supported for firmware "
            "signatures (RSA or ECDSA only)"
        )


def verify_signing_certificate(
    pem: str, roots: Sequence[x509.Certificate], now: datetime
) -> x509.Certificate:
    """Check the firmware signing certificate (PEM leaf + optional intermediates) against
    `roots` at `now` (a naive `now` is taken as UTC); return the leaf certificate."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    if not isinstance(pem, str) or not pem.strip():
        raise _certificate_error("the signing certificate is empty")
    certificates = _parse_pem(pem.encode("utf-8", errors="replace"), "signing certificate")
    leaf, pool = certificates[0], list(certificates[1:])
    if not roots:
        raise _certificate_error("no manufacturer root certificates to check against")

    usage = _extension(leaf, x509.KeyUsage)
    if usage is not None and not usage.digital_signature:
        raise _certificate_error(
            f"signing certificate {_name(leaf)} may not make signatures (keyUsage lacks "
            "digitalSignature)"
        )
    _check_key_type(leaf)

    chain = [leaf]  # leaf, intermediates..., root
    anchor: x509.Certificate | None = None
    if any(leaf == root for root in roots):
        anchor = leaf
    while anchor is None:
        current = chain[-1]
        anchor = next((root for root in roots if _issued_by(current, root)), None)
        if anchor is not None:
            chain.append(anchor)
            break
        if len(chain) > _MAX_CHAIN:
            raise _certificate_error(f"the certificate chain is longer than {_MAX_CHAIN}")
        parent = next((c for c in pool if _issued_by(current, c)), None)
        if parent is None:
            raise _certificate_error(
                f"{_name(current)} is not issued by a manufacturer root certificate"
                + (" or by an intermediate sent with it" if pool else "")
                + f" (issuer {current.issuer.rfc4514_string()})"
            )
        pool.remove(parent)
        chain.append(parent)

    for position, certificate in enumerate(chain):
        if position == 0:
            role = "signing certificate"
        elif certificate is anchor:
            role = "root certificate"
        else:
            role = "intermediate certificate"
        _check_period(certificate, now, role)
        if position > 0:
            _check_issuer(certificate, position - 1, role)
    return leaf


def _file_digest(path: Path) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.finalize()


def _decode_signature(signature_b64: str) -> bytes:
    if not isinstance(signature_b64, str):
        raise _signature_error("the signature is not a string")
    text = "".join(signature_b64.split())
    if not text:
        raise _signature_error("the signature is empty")
    try:
        signature = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _signature_error(f"the signature is not valid base64 ({exc})") from exc
    if not signature:
        raise _signature_error("the signature is empty")
    return signature


def verify_file_signature(certificate: x509.Certificate, signature_b64: str, path: Path) -> None:
    """Check the base64 `signature_b64` over the file at `path` with the key of `certificate`.

    Raises VerificationError (InvalidSignature; InvalidCertificate for an unsupported key) and
    OSError when the file cannot be read.
    """
    signature = _decode_signature(signature_b64)
    _check_key_type(certificate)
    key = certificate.public_key()
    digest = _file_digest(path)
    prehashed = Prehashed(hashes.SHA256())
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, digest, padding.PKCS1v15(), prehashed)
            return
        assert isinstance(key, ec.EllipticCurvePublicKey)
        try:
            key.verify(signature, digest, ec.ECDSA(prehashed))
            return
        except InvalidSignature:
            size = (key.curve.key_size + 7) // 8
            if len(signature) != 2 * size:
                raise
        # raw r || s, as some signing tools produce
        r = int.from_bytes(signature[:size], "big")
        s = int.from_bytes(signature[size:], "big")
        key.verify(encode_dss_signature(r, s), digest, ec.ECDSA(prehashed))
    except InvalidSignature:
        raise _signature_error(
            f"the signature does not match {path.name} (signing certificate {_name(certificate)})"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _signature_error(f"the signature cannot be checked ({exc})") from exc
