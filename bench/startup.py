"""Startup: from exec to READY=1 (sd_notify) and to the BootNotification on the wire.

Each run starts `python -m service.main` (2 simulated EVSEs, an existing state database: a
warm-up run creates it and fills the page cache) with its own NOTIFY_SOCKET and a bare
websockets server as the CSMS, and records, from just before the exec:

* `ready_ms`: the READY=1 datagram arrived on the notify socket;
* `boot_ms`: the BootNotification frame arrived at the CSMS.

Both with D-Bus off and with D-Bus on (a private dbus-daemon; production runs it on the system
bus). The floor is a bare Python websockets client started the same way that connects and
sends a BootNotification frame (interpreter + asyncio + websockets, nothing of evsed).

Then `python -X importtime -m service.main --check-config --config ...` (the same imports as
a real start, then exit) gives the top 10 cumulative import costs (median over the runs).

    python -m bench.startup [--runs 10] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    FastCsms,
    daemon_config,
    fmt_spread,
    private_bus,
    spread,
    start_daemon,
    write_result,
)

NAME = "startup"

BARE_CLIENT = """
import asyncio, json, sys
from websockets.asyncio.client import connect
async def main():
    async with connect(sys.argv[1], subprotocols=["ocpp1.6"], compression=None) as ws:
        await ws.send(json.dumps([2, "1", "BootNotification",
                                  {"chargePointVendor": "x", "chargePointModel": "y"}]))
        await ws.recv()
asyncio.run(main())
"""


async def one_daemon(directory: Path, bus: str | None) -> dict[str, float]:
    csms = FastCsms()
    async with csms.serve():
        config = daemon_config(directory, csms.url, evses=2, dbus_address=bus)
        daemon = await start_daemon(config)
        try:
            ready = await daemon.wait_notification("READY=1")
            await csms.wait_count("BootNotification", 1, timeout=30)
            boot = next(r.at for r in csms.received if r.action == "BootNotification")
        finally:
            await daemon.stop()
    return {
        "ready_ms": (ready - daemon.started_at) * 1000,
        "boot_ms": (boot - daemon.started_at) * 1000,
    }


async def one_floor() -> dict[str, float]:
    csms = FastCsms()
    async with csms.serve():
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", BARE_CLIENT, csms.url + "/BENCH", cwd=REPO
        )
        try:
            await csms.wait_count("BootNotification", 1, timeout=30)
        finally:
            await asyncio.wait_for(process.wait(), 30)
    return {"boot_ms": (csms.received[0].at - started) * 1000}


def importtime(config: Path, runs: int) -> dict[str, Any]:
    """Median self/cumulative import time (µs) per module over `runs` --check-config starts."""
    seen: dict[str, list[tuple[int, int]]] = {}
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    for _ in range(runs):
        done = subprocess.run(
            [
                sys.executable,
                "-X",
                "importtime",
                "-m",
                "service.main",
                "--check-config",
                "--config",
                str(config),
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        for line in done.stderr.splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            _, self_us, cumulative_us, name = (
                part.strip() for part in line.replace("import time:", "|").split("|")
            )
            seen.setdefault(name.strip(), []).append((int(self_us), int(cumulative_us)))
    medians = {
        name: {
            "self_ms": statistics.median(s for s, _ in values) / 1000,
            "cumulative_ms": statistics.median(c for _, c in values) / 1000,
        }
        for name, values in seen.items()
    }
    ordered = sorted(medians.items(), key=lambda item: -item[1]["cumulative_ms"])
    return {
        "runs": runs,
        "modules_imported": len(medians),
        "total_self_ms": sum(v["self_ms"] for v in medians.values()),
        "top_cumulative": [{"module": name, **values} for name, values in ordered[:30]],
    }


async def run(runs: int) -> dict[str, Any]:
    report: dict[str, Any] = {"runs": runs, "evses": 2, "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp, private_bus() as bus:
        variants: dict[str, str | None] = {"dbus_off": None}
        if bus is not None:
            variants["dbus_on"] = bus
        for variant, address in variants.items():
            directory = Path(tmp) / variant
            directory.mkdir()
            await one_daemon(directory, address)  # warm-up: creates the database
            samples = [await one_daemon(directory, address) for _ in range(runs)]
            report[variant] = {
                key: spread([s[key] for s in samples]) for key in ("ready_ms", "boot_ms")
            }
            report[variant]["raw"] = samples
        await one_floor()
        floor = [await one_floor() for _ in range(runs)]
        report["floor_bare_client"] = {"boot_ms": spread([s["boot_ms"] for s in floor])}
        report["ratio_boot_dbus_off"] = (
            report["dbus_off"]["boot_ms"]["median"]
            / report["floor_bare_client"]["boot_ms"]["median"]
        )
        config = daemon_config(Path(tmp) / "dbus_off", "ws://127.0.0.1:9/ocpp", evses=2)
        report["importtime"] = importtime(config, max(3, runs // 2))
    return report


def summary(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    floor = report["floor_bare_client"]["boot_ms"]["median"]
    rows = []
    for variant, label in (("dbus_off", "D-Bus off"), ("dbus_on", "D-Bus on")):
        if variant not in report:
            continue
        rows.append(
            (
                f"startup exec -> READY=1 ({label})",
                fmt_spread(report[variant]["ready_ms"], " ms", 0),
                "",
            )
        )
        rows.append(
            (
                f"startup exec -> BootNotification ({label})",
                fmt_spread(report[variant]["boot_ms"], " ms", 0),
                f"bare client {floor:.0f} ms, "
                f"{report[variant]['boot_ms']['median'] / floor:.2f}x floor",
            )
        )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.startup")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="3 runs")
    args = parser.parse_args(argv)
    report = asyncio.run(run(3 if args.quick else args.runs))
    report["quick"] = args.quick
    path = write_result(NAME, report, argv)
    for row in summary(report):
        print(" | ".join(row))
    print("import time, top 10 cumulative (ms):")
    for entry in report["importtime"]["top_cumulative"][:10]:
        print(f"  {entry['cumulative_ms']:8.1f}  {entry['module']}")
    print(f"-> {path.relative_to(REPO)}")
    return report


if __name__ == "__main__":
    main()
