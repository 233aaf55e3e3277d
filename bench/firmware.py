"""Firmware path: download throughput, signature verification throughput, and memory.

Download: evsed's `service.firmware.transfer.download` (the code the firmware manager runs in
its worker thread: .part file, size and free-space checks, fsync, atomic rename) fetches a
file of --size MiB from a local HTTP server (the standard library's ThreadingHTTPServer on
127.0.0.1, serving from the same file system). Floor: a bare `urllib.request.urlopen` +
`shutil.copyfileobj` into a file with one fsync, from the same server, in the same run.
Memory: the peak of Python allocations (tracemalloc) during evsed's download, to show the file
is streamed, never held.

Verification: `service.firmware.verify.verify_file_signature` (RSA-2048 PKCS#1 v1.5, SHA-256,
streamed) over the same file. Floor: bare `hashlib.sha256` over the file in 1 MiB reads plus
one prehashed signature check.

    python -m bench.firmware [--size 256] [--runs 5] [--quick]
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import http.server
import os
import shutil
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from cryptography.x509.oid import NameOID

from bench.common import fmt_spread, spread, write_result
from service.firmware.transfer import TransferOptions, download
from service.firmware.verify import verify_file_signature

NAME = "firmware"
MIB = 2**20


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _bare_download(url: str, dest: Path) -> int:
    with urllib.request.urlopen(url) as response, dest.open("wb") as out:
        shutil.copyfileobj(response, out, MIB)
        out.flush()
        os.fsync(out.fileno())
        return out.tell()


def _bare_verify(key: rsa.RSAPublicKey, signature: bytes, path: Path) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MIB):
            digest.update(chunk)
    key.verify(signature, digest.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))


def _certificate(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench firmware signer")])
    now = time.time()
    start = datetime.fromtimestamp(now, UTC) - timedelta(days=1)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.firmware")
    parser.add_argument("--size", type=int, default=256, help="file size in MiB")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="32 MiB, 2 runs")
    args = parser.parse_args(argv)
    size_mib, runs = (32, 2) if args.quick else (args.size, args.runs)

    # Under /var/tmp, not /tmp: the charger writes firmware to disk, not to a tmpfs.
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="evsed-bench-fw-") as tmp:
        root = Path(tmp)
        served = root / "www"
        served.mkdir()
        bundle = served / "bundle.bin"
        with bundle.open("wb") as f:
            for _ in range(size_mib):
                f.write(os.urandom(MIB))
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        certificate = _certificate(key)
        digest = hashlib.sha256(bundle.read_bytes()).digest()
        signature = key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        signature_b64 = base64.b64encode(signature).decode()

        handler = functools.partial(_Quiet, directory=str(served))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.server_address[1]}/bundle.bin"
        options = TransferOptions(timeout_s=60.0)
        evsed_s: list[float] = []
        bare_s: list[float] = []
        peaks: list[float] = []
        verify_s: list[float] = []
        bare_verify_s: list[float] = []
        try:
            for i in range(runs):
                # Alternate the order so that neither side always gets the warmer cache.
                dest = root / f"evsed-{i}.bin"
                floor_dest = root / f"bare-{i}.bin"

                def ours(dest: Path = dest) -> None:
                    assert download(url, dest, options) == size_mib * MIB

                def bare(dest: Path = floor_dest) -> None:
                    assert _bare_download(url, dest) == size_mib * MIB

                for which in ("ours", "bare") if i % 2 == 0 else ("bare", "ours"):
                    if which == "ours":
                        tracemalloc.start()
                        evsed_s.append(_timed(ours))
                        peaks.append(tracemalloc.get_traced_memory()[1] / 1024)
                        tracemalloc.stop()
                    else:
                        bare_s.append(_timed(bare))
                dest.unlink()
                floor_dest.unlink()
                verify_s.append(
                    _timed(lambda: verify_file_signature(certificate, signature_b64, bundle))
                )
                bare_verify_s.append(
                    _timed(lambda: _bare_verify(key.public_key(), signature, bundle))
                )
        finally:
            server.shutdown()
            server.server_close()

    def rate(seconds: list[float]) -> list[float]:
        return [size_mib / s for s in seconds]

    report: dict[str, Any] = {
        "size_mib": size_mib,
        "runs": runs,
        "download_mib_s": {"evsed": spread(rate(evsed_s)), "bare_urllib": spread(rate(bare_s))},
        "download_peak_python_heap_kib": spread(peaks),
        "verify_mib_s": {
            "evsed": spread(rate(verify_s)),
            "bare_hashlib": spread(rate(bare_verify_s)),
        },
    }
    d = report["download_mib_s"]
    v = report["verify_mib_s"]
    report["download_ratio_to_floor"] = d["evsed"]["median"] / d["bare_urllib"]["median"]
    report["verify_ratio_to_floor"] = v["evsed"]["median"] / v["bare_hashlib"]["median"]
    path = write_result(NAME, report, argv)
    for figure, value, floor in summary(report):
        print(f"{figure}: {value} [{floor}]")
    print(f"wrote {path}")
    return report


def summary(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    d = report["download_mib_s"]
    v = report["verify_mib_s"]
    return [
        (
            f"firmware download over HTTP, {report['size_mib']} MiB (MiB/s)",
            fmt_spread(d["evsed"], "", 0),
            f"bare urllib {d['bare_urllib']['median']:.0f} MiB/s, "
            f"{report['download_ratio_to_floor']:.2f}x floor; peak Python heap "
            f"{report['download_peak_python_heap_kib']['median']:.0f} KiB",
        ),
        (
            "firmware signature check, RSA-2048 SHA-256 (MiB/s)",
            fmt_spread(v["evsed"], "", 0),
            f"bare hashlib {v['bare_hashlib']['median']:.0f} MiB/s, "
            f"{report['verify_ratio_to_floor']:.2f}x floor",
        ),
    ]


if __name__ == "__main__":
    main()
