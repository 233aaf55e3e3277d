"""Signed-firmware checks with real certificates (root -> intermediate -> leaf) made with
`cryptography`, and signatures made by `cryptography` and by the openssl command line."""

from __future__ import annotations

import base64
import datetime
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from service.firmware.verify import (
    VerificationError,
    load_roots,
    verify_file_signature,
    verify_signing_certificate,
)

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    key: PrivateKey

    @property
    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()


def _usage(*, sign_certs: bool, digital_signature: bool = True) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=sign_certs,
        crl_sign=sign_certs,
        encipher_only=False,
        decipher_only=False,
    )


def issue(
    name: str,
    issuer: Issued | None,
    *,
    key: PrivateKey | None = None,
    ca: bool | None = False,
    path_length: int | None = None,
    not_before: datetime.timedelta = -DAY,
    not_after: datetime.timedelta = 30 * DAY,
    key_usage: x509.KeyUsage | None = None,
) -> Issued:
    """A certificate for `name` signed by `issuer` (self-signed when None). `ca=None` leaves
    basicConstraints out."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW + not_before)
        .not_valid_after(NOW + not_after)
    )
    if ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
    usage = key_usage if key_usage is not None else _usage(sign_certs=bool(ca))
    builder = builder.add_extension(usage, critical=True)
    signer = issuer.key if issuer else key
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return Issued(builder.sign(signer, algorithm), key)


@pytest.fixture(scope="module")
def root() -> Issued:
    return issue("Manufacturer Root", None, ca=True)


@pytest.fixture(scope="module")
def intermediate(root: Issued) -> Issued:
    return issue("Firmware CA", root, ca=True, path_length=0)


@pytest.fixture(scope="module")
def ec_leaf(intermediate: Issued) -> Issued:
    return issue("Firmware Signer EC", intermediate)


@pytest.fixture(scope="module")
def rsa_leaf(intermediate: Issued) -> Issued:
    return issue(
        "Firmware Signer RSA",
        intermediate,
        key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


@pytest.fixture
def firmware(tmp_path: Path) -> Path:
    path = tmp_path / "firmware.bin"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # several hashing chunks
    return path


def sign(key: PrivateKey, data: bytes) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        raw = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        raw = key.sign(data, ec.ECDSA(hashes.SHA256()))
    else:
        raw = key.sign(data)
    return base64.b64encode(raw).decode()


def expect(status: str, call: object, *args: object) -> VerificationError:
    assert callable(call)
    with pytest.raises(VerificationError) as caught:
        call(*args)
    assert caught.value.status == status
    assert str(caught.value)
    return caught.value


# --- the signing certificate ------------------------------------------------------------------


def test_chain_with_intermediate_is_accepted(
    root: Issued, intermediate: Issued, ec_leaf: Issued
) -> None:
    leaf = verify_signing_certificate(ec_leaf.pem + intermediate.pem, [root.certificate], NOW)
    assert leaf == ec_leaf.certificate


def test_leaf_directly_under_a_root_and_naive_now(root: Issued) -> None:
    leaf = issue("Direct Signer", root)
    other_root = issue("Other Root", None, ca=True)
    naive_now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    roots = [other_root.certificate, root.certificate]
    assert verify_signing_certificate(leaf.pem, roots, naive_now) == leaf.certificate


def test_intermediates_in_any_order(root: Issued) -> None:
    upper = issue("Upper CA", root, ca=True)
    lower = issue("Lower CA", upper, ca=True)
    leaf = issue("Deep Signer", lower)
    pem = leaf.pem + upper.pem + lower.pem
    assert verify_signing_certificate(pem, [root.certificate], NOW) == leaf.certificate


def test_wrong_root_is_refused(intermediate: Issued, ec_leaf: Issued) -> None:
    other = issue("Someone Else", None, ca=True)
    error = expect(
        "InvalidCertificate",
        verify_signing_certificate,
        ec_leaf.pem + intermediate.pem,
        [other.certificate],
        NOW,
    )
    assert "not issued by a manufacturer root" in str(error)


def test_missing_intermediate_is_refused(root: Issued, ec_leaf: Issued) -> None:
    expect("InvalidCertificate", verify_signing_certificate, ec_leaf.pem, [root.certificate], NOW)


def test_forged_issuer_name_is_refused(root: Issued, intermediate: Issued) -> None:
    """Same issuer name as the real intermediate, but signed by another key."""
    impostor = Issued(intermediate.certificate, ec.generate_private_key(ec.SECP256R1()))
    leaf = issue("Forged Signer", impostor)
    expect(
        "InvalidCertificate",
        verify_signing_certificate,
        leaf.pem + intermediate.pem,
        [root.certificate],
        NOW,
    )


def test_expired_leaf_is_refused(root: Issued, intermediate: Issued) -> None:
    leaf = issue("Old Signer", intermediate, not_before=-60 * DAY, not_after=-DAY)
    error = expect(
        "InvalidCertificate",
        verify_signing_certificate,
        leaf.pem + intermediate.pem,
        [root.certificate],
        NOW,
    )
    assert "expired" in str(error)


def test_validity_is_checked_at_the_given_time(
    root: Issued, intermediate: Issued, ec_leaf: Issued
) -> None:
    pem = ec_leaf.pem + intermediate.pem
    expect("InvalidCertificate", verify_signing_certificate, pem, [root.certificate], NOW - 5 * DAY)
    expect(
        "InvalidCertificate", verify_signing_certificate, pem, [root.certificate], NOW + 99 * DAY
    )


def test_expired_intermediate_is_refused(root: Issued) -> None:
    old_ca = issue("Old CA", root, ca=True, not_before=-60 * DAY, not_after=-DAY)
    leaf = issue("Signer", old_ca)
    error = expect(
        "InvalidCertificate",
        verify_signing_certificate,
        leaf.pem + old_ca.pem,
        [root.certificate],
        NOW,
    )
    assert "intermediate" in str(error)


@pytest.mark.parametrize("ca", [False, None], ids=["ca-false", "no-basic-constraints"])
def test_intermediate_that_is_no_ca_is_refused(root: Issued, ca: bool | None) -> None:
    not_ca = issue("Not A CA", root, ca=ca, key_usage=_usage(sign_certs=True))
    leaf = issue("Signer", not_ca)
    error = expect(
        "InvalidCertificate",
        verify_signing_certificate,
        leaf.pem + not_ca.pem,
        [root.certificate],
        NOW,
    )
    assert "not a CA" in str(error)


def test_path_length_is_enforced(root: Issued, intermediate: Issued) -> None:
    """`intermediate` has pathLen 0: it may not sign another CA."""
    sub_ca = issue("Sub CA", intermediate, ca=True)
    leaf = issue("Signer", sub_ca)
    expect(
        "InvalidCertificate",
        verify_signing_certificate,
        leaf.pem + sub_ca.pem + intermediate.pem,
        [root.certificate],
        NOW,
    )


def test_leaf_without_digital_signature_usage_is_refused(
    root: Issued, intermediate: Issued
) -> None:
    leaf = issue(
        "Encryption Only",
        intermediate,
        key_usage=_usage(sign_certs=False, digital_signature=False),
    )
    error = expect(
        "InvalidCertificate",
        verify_signing_certificate,
        leaf.pem + intermediate.pem,
        [root.certificate],
        NOW,
    )
    assert "digitalSignature" in str(error)


def test_trusted_self_signed_signer_and_unsupported_key(root: Issued) -> None:
    own = issue("Self Signer", None, ca=False)
    assert verify_signing_certificate(own.pem, [own.certificate], NOW) == own.certificate
    ed_leaf = issue("Ed25519 Signer", root, key=ed25519.Ed25519PrivateKey.generate())
    error = expect(
        "InvalidCertificate", verify_signing_certificate, ed_leaf.pem, [root.certificate], NOW
    )
    assert "not supported" in str(error)


@pytest.mark.parametrize(
    "pem",
    [
        "",
        "   \n",
        "garbage",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all !!!\n-----END CERTIFICATE-----\n",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "-----BEGIN CERTIFICATE-----\n\u00e9\u00e9\u00e9\n-----END CERTIFICATE-----\n",
        "-----BEGIN CERTIFICATE-----\n",
    ],
)
def test_garbage_certificate_is_invalid_certificate(root: Issued, pem: str) -> None:
    expect("InvalidCertificate", verify_signing_certificate, pem, [root.certificate], NOW)


def test_no_roots_is_invalid_certificate(ec_leaf: Issued) -> None:
    expect("InvalidCertificate", verify_signing_certificate, ec_leaf.pem, [], NOW)


# --- roots --------------------------------------------------------------------------------------


def test_load_roots_from_file_and_directory(tmp_path: Path, root: Issued) -> None:
    other = issue("Second Root", None, ca=True)
    bundle = tmp_path / "roots.pem"
    bundle.write_text(root.pem + other.pem)
    assert load_roots(bundle) == [root.certificate, other.certificate]

    directory = tmp_path / "roots"
    directory.mkdir()
    (directory / "a.pem").write_text(root.pem)
    (directory / "b.crt").write_text(other.pem)
    (directory / "broken.pem").write_text("not a certificate")
    (directory / "README").write_text("ignored")
    assert load_roots(directory) == [root.certificate, other.certificate]


def test_load_roots_without_certificates(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    expect("InvalidCertificate", load_roots, empty)
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"\x00\xffjunk")
    expect("InvalidCertificate", load_roots, junk)
    with pytest.raises(OSError):
        load_roots(tmp_path / "missing.pem")


# --- the signature ------------------------------------------------------------------------------


def test_good_ecdsa_and_rsa_signatures(firmware: Path, ec_leaf: Issued, rsa_leaf: Issued) -> None:
    data = firmware.read_bytes()
    verify_file_signature(ec_leaf.certificate, sign(ec_leaf.key, data), firmware)
    verify_file_signature(rsa_leaf.certificate, sign(rsa_leaf.key, data), firmware)


def test_signature_with_line_breaks_and_raw_ecdsa(firmware: Path, ec_leaf: Issued) -> None:
    data = firmware.read_bytes()
    signature = sign(ec_leaf.key, data)
    wrapped = "\n".join(signature[i : i + 20] for i in range(0, len(signature), 20)) + "\n"
    verify_file_signature(ec_leaf.certificate, wrapped, firmware)
    r, s = decode_dss_signature(base64.b64decode(signature))
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    verify_file_signature(ec_leaf.certificate, base64.b64encode(raw).decode(), firmware)


def test_signature_made_with_openssl(tmp_path: Path, firmware: Path, rsa_leaf: Issued) -> None:
    key_file = tmp_path / "signer.key"
    assert isinstance(rsa_leaf.key, rsa.RSAPrivateKey)
    key_file.write_bytes(
        rsa_leaf.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    raw = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", str(key_file), str(firmware)],
        check=True,
        capture_output=True,
    ).stdout
    verify_file_signature(rsa_leaf.certificate, base64.b64encode(raw).decode(), firmware)


@pytest.mark.parametrize("which", ["ec", "rsa"])
def test_tampered_file_is_refused(
    firmware: Path, ec_leaf: Issued, rsa_leaf: Issued, which: str
) -> None:
    signer = ec_leaf if which == "ec" else rsa_leaf
    signature = sign(signer.key, firmware.read_bytes())
    with firmware.open("r+b") as stream:
        stream.seek(2 * 1024 * 1024)
        byte = stream.read(1)
        stream.seek(2 * 1024 * 1024)
        stream.write(bytes([byte[0] ^ 1]))
    error = expect(
        "InvalidSignature", verify_file_signature, signer.certificate, signature, firmware
    )
    assert "does not match" in str(error)


def test_signature_by_another_key_is_refused(
    firmware: Path, ec_leaf: Issued, rsa_leaf: Issued
) -> None:
    data = firmware.read_bytes()
    stranger = ec.generate_private_key(ec.SECP256R1())
    expect(
        "InvalidSignature",
        verify_file_signature,
        ec_leaf.certificate,
        sign(stranger, data),
        firmware,
    )
    # an ECDSA signature checked with an RSA certificate
    expect(
        "InvalidSignature",
        verify_file_signature,
        rsa_leaf.certificate,
        sign(ec_leaf.key, data),
        firmware,
    )


@pytest.mark.parametrize(
    "signature",
    [
        "",
        "  \n",
        "!!!!",
        "abc",
        "YWJj=",
        base64.b64encode(os.urandom(64)).decode(),
        "\u00e9t\u00e9",
        "AA==",
    ],
)
def test_garbage_signature_is_invalid_signature(
    firmware: Path, ec_leaf: Issued, rsa_leaf: Issued, signature: str
) -> None:
    for signer in (ec_leaf, rsa_leaf):
        expect("InvalidSignature", verify_file_signature, signer.certificate, signature, firmware)


def test_missing_firmware_file_is_an_os_error(ec_leaf: Issued, tmp_path: Path) -> None:
    with pytest.raises(OSError):
        verify_file_signature(ec_leaf.certificate, sign(ec_leaf.key, b"x"), tmp_path / "nope.bin")
