"""A real RAUC service for tests: a private system-type bus, rauc 1.8 and signed bundles.

Everything lives under one directory (a test's tmp_path):

- `PrivateSystemBus` runs dbus-daemon with a `<type>system</type>` configuration whose default
  policy is as strict as a system bus, plus a policy directory holding RAUC's rules (Debian's
  file when the rauc-service package is installed, otherwise an equivalent written here) and any
  extra policy files a test passes (for example packaging/dbus/evsed-rauc.conf).
- `RaucSystem` writes a RAUC system.conf with two raw slots (rootfs.0 / rootfs.1, bootnames A / B)
  backed by image files, `bootloader=custom` with a backend script that keeps the boot state
  (primary slot, good/bad per slot) in a JSON file, and a keyring holding a test CA. It starts
  `rauc service` on any bus address (`start(boot_slot)`), and `reboot()` simulates a reboot by
  restarting the service with `--override-boot-slot` set to the bootloader's primary slot.
- `RaucSystem.build_bundle()` makes `format=plain` bundles with `rauc bundle --cert --key`,
  signed by a code-signing certificate under the test CA (or any other `Signer`).

All processes are direct children (`subprocess.Popen`) ended with terminate() + wait().
Needs root (RAUC loop-mounts bundles), dbus-daemon, busctl, rauc and mksquashfs; `missing()`
says what is absent so a test module can skip cleanly.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.certs import CertPair, make_ca

__all__ = [
    "COMPATIBLE",
    "RAUC_BUS_NAME",
    "PrivateSystemBus",
    "RaucSystem",
    "Signer",
    "make_signer",
    "missing",
    "tamper",
]

RAUC_BUS_NAME = "de.pengutronix.rauc"
COMPATIBLE = "evsed-test-board"
DEBIAN_RAUC_POLICY = Path("/usr/share/dbus-1/system.d/de.pengutronix.rauc.conf")
START_TIMEOUT_S = 10.0

_DOCTYPE = (
    '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"\n'
    ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
)

# A system bus: nobody owns names or calls methods unless a policy file says so.
_BUS_CONF = """{doctype}<busconfig>
  <type>system</type>
  <listen>unix:tmpdir=/tmp</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <includedir>{policy_dir}</includedir>
</busconfig>
"""

# Used when Debian's rauc-service policy is not installed: root owns and calls RAUC, nobody else.
_RAUC_POLICY = """{doctype}<busconfig>
  <policy user="root">
    <allow own="{name}"/>
    <allow send_destination="{name}"/>
  </policy>
</busconfig>
"""

# The custom bootloader backend (RAUC's `bootloader=custom`): get-primary, set-primary SLOT,
# get-state SLOT, set-state SLOT good|bad. Every call is also appended to "calls".
_BACKEND = """#!{python} -I
import json, os, sys

STATE = {state!r}


def load():
    with open(STATE) as f:
        return json.load(f)


def save(state):
    tmp = STATE + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1)
    os.replace(tmp, STATE)


args = sys.argv[1:]
state = load()
state["calls"].append(" ".join(args))
if args[:1] == ["get-primary"] and len(args) == 1:
    print(state["primary"])
elif args[:1] == ["set-primary"] and len(args) == 2 and args[1] in state["states"]:
    state["primary"] = args[1]
elif args[:1] == ["get-state"] and len(args) == 2 and args[1] in state["states"]:
    print(state["states"][args[1]])
elif (args[:1] == ["set-state"] and len(args) == 3 and args[1] in state["states"]
      and args[2] in ("good", "bad")):
    state["states"][args[1]] = args[2]
else:
    save(state)
    print("unsupported: " + " ".join(args), file=sys.stderr)
    sys.exit(1)
save(state)
"""


def missing() -> str | None:
    """Why the RAUC tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "RAUC needs root to loop-mount bundles"
    for tool in ("dbus-daemon", "busctl", "rauc", "mksquashfs"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


@dataclass(frozen=True, slots=True)
class Signer:
    """A bundle signing certificate and key (PEM files)."""

    cert_path: Path
    key_path: Path


def make_signer(ca: CertPair, directory: Path, name: str) -> Signer:
    """A code-signing certificate under `ca` (RAUC's keyring uses check-purpose=codesign)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "evsed tests"),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]
            )
        )
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca.private_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{name}.crt"
    key_path = directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Signer(cert_path, key_path)


def tamper(bundle: Path, dest: Path) -> Path:
    """A copy of `bundle` with bytes of its payload changed (the signature no longer matches)."""
    data = bytearray(bundle.read_bytes())
    for offset in range(1024, 1040):
        data[offset] ^= 0xFF
    dest.write_bytes(bytes(data))
    return dest


def _terminate(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class PrivateSystemBus:
    """A dbus-daemon of type system with its own policy directory; `address` once started."""

    def __init__(self, directory: Path, extra_policies: Sequence[Path] = ()) -> None:
        self.directory = directory
        self.policy_dir = directory / "system.d"
        self.extra_policies = tuple(extra_policies)
        self.address = ""
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> str:
        self.policy_dir.mkdir(parents=True, exist_ok=True)
        if DEBIAN_RAUC_POLICY.is_file():
            shutil.copy(DEBIAN_RAUC_POLICY, self.policy_dir / DEBIAN_RAUC_POLICY.name)
        else:
            (self.policy_dir / DEBIAN_RAUC_POLICY.name).write_text(
                _RAUC_POLICY.format(doctype=_DOCTYPE, name=RAUC_BUS_NAME)
            )
        for policy in self.extra_policies:
            shutil.copy(policy, self.policy_dir / policy.name)
        config = self.directory / "bus.conf"
        config.write_text(_BUS_CONF.format(doctype=_DOCTYPE, policy_dir=self.policy_dir))
        self._proc = subprocess.Popen(
            ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self._proc.stdout is not None
        address = self._proc.stdout.readline().strip()
        if not address:
            self.stop()
            raise RuntimeError("dbus-daemon printed no address")
        self.address = address
        return address

    def stop(self) -> None:
        if self._proc is not None:
            _terminate(self._proc)
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None


class RaucSystem:
    """A RAUC installation under `directory`, serving on the bus at `bus_address`.

    `images` maps bootname ("A", "B") to the slot's image file; `state_path` is the custom
    bootloader's JSON state: {"primary": "A", "states": {"A": "good", "B": "good"}, "calls": []}.
    """

    BOOTNAMES = {"rootfs.0": "A", "rootfs.1": "B"}

    def __init__(self, directory: Path, bus_address: str, *, compatible: str = COMPATIBLE) -> None:
        self.directory = directory
        self.bus_address = bus_address
        self.compatible = compatible
        self.mount_dir = directory / "mnt"
        self.state_path = directory / "bootstate.json"
        self.backend_path = directory / "bootloader-backend"
        self.config_path = directory / "system.conf"
        self.log_path = directory / "rauc.log"
        self.images = {boot: directory / f"{slot}.img" for slot, boot in self.BOOTNAMES.items()}
        self.ca = make_ca(directory / "pki", "rauc-test-ca")
        self.signer = make_signer(self.ca, directory / "pki", "rauc-test-signer")
        self.boot_slot: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._bundles = 0
        self._setup()

    def _setup(self) -> None:
        self.mount_dir.mkdir(parents=True, exist_ok=True)
        (self.directory / "data").mkdir(exist_ok=True)
        for image in self.images.values():
            image.write_bytes(b"\0" * 1024 * 1024)
        self.state_path.write_text(
            json.dumps({"primary": "A", "states": {"A": "good", "B": "good"}, "calls": []})
        )
        self.backend_path.write_text(
            _BACKEND.format(python=sys.executable, state=str(self.state_path))
        )
        self.backend_path.chmod(0o755)
        slots = "".join(
            f"\n[slot.{slot}]\ndevice={self.images[boot]}\ntype=raw\nbootname={boot}\n"
            for slot, boot in self.BOOTNAMES.items()
        )
        self.config_path.write_text(
            "[system]\n"
            f"compatible={self.compatible}\n"
            "bootloader=custom\n"
            f"data-directory={self.directory / 'data'}\n"
            "bundle-formats=plain\n"
            "\n[handlers]\n"
            f"bootloader-custom-backend={self.backend_path}\n"
            "\n[keyring]\n"
            f"path={self.ca.cert_path}\n"
            "check-purpose=codesign\n" + slots
        )

    # --- the service -------------------------------------------------------------------------

    def start(self, boot_slot: str = "A") -> None:
        """Start `rauc service` as if the system had booted the slot with bootname `boot_slot`."""
        if self._proc is not None:
            raise RuntimeError("the RAUC service is already running")
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=self.bus_address)
        with self.log_path.open("ab") as log:
            log.write(f"--- start, booted {boot_slot}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                [
                    "rauc",
                    f"--conf={self.config_path}",
                    f"--mount={self.mount_dir}",
                    "service",
                    f"--override-boot-slot={boot_slot}",
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.boot_slot = boot_slot
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._name_owned():
            if self._proc.poll() is not None:
                self._proc = None
                raise RuntimeError(f"rauc service exited at start:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rauc service did not own {RAUC_BUS_NAME}:\n{self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._proc is not None:
            _terminate(self._proc)
            self._proc = None

    def reboot(self, boot_slot: str | None = None) -> str:
        """Restart the service as after a reboot into `boot_slot` (default: the primary slot).

        Returns the bootname now booted.
        """
        self.stop()
        booted = boot_slot if boot_slot is not None else str(self.boot_state()["primary"])
        self.start(booted)
        return booted

    def _name_owned(self) -> bool:
        result = subprocess.run(
            [
                "busctl",
                f"--address={self.bus_address}",
                "call",
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "NameHasOwner",
                "s",
                RAUC_BUS_NAME,
            ],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        return result.stdout.strip() == "b true"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def boot_state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(self.state_path.read_text())
        return state

    # --- bundles -----------------------------------------------------------------------------

    def build_bundle(
        self,
        payload: bytes,
        *,
        version: str = "2.0.0",
        compatible: str | None = None,
        signer: Signer | None = None,
        name: str | None = None,
    ) -> Path:
        """A plain bundle with one rootfs image holding `payload`, signed by `signer`."""
        self._bundles += 1
        work = self.directory / "bundles" / f"b{self._bundles}"
        content = work / "content"
        content.mkdir(parents=True)
        (content / "rootfs.img").write_bytes(payload)
        (content / "manifest.raucm").write_text(
            "[update]\n"
            f"compatible={compatible if compatible is not None else self.compatible}\n"
            f"version={version}\n"
            "\n[bundle]\nformat=plain\n"
            "\n[image.rootfs]\nfilename=rootfs.img\n"
        )
        signer = signer if signer is not None else self.signer
        bundle = work / (name or f"update-{version}.raucb")
        subprocess.run(
            [
                "rauc",
                "bundle",
                f"--cert={signer.cert_path}",
                f"--key={signer.key_path}",
                str(content),
                str(bundle),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        return bundle
