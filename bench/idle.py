"""Idle cost: RSS and CPU of evsed while every EVSE charges, with MeterValues every second.

For 2 and for 128 simulated EVSEs: a private dbus-daemon (the Simulator1 interface plugs the
EVs in), a fast CSMS that answers every CALL at once, and evsed with D-Bus on,
MeterValueSampleInterval = 1 (Energy.Active.Import.Register and Power.Active.Import), meter
polling every second. Once booted, an EV is plugged into every EVSE and made ready, and the CSMS
starts a transaction on each with RemoteStartTransaction; when every StartTransaction has
arrived, the window starts:

* CPU: utime + stime from /proc/<pid>/stat at both ends of the window, as % of one core;
* RSS: VmRSS from /proc/<pid>/status every second (median and maximum, and at the end);
* MeterValues received by the CSMS in the window, against EVSEs x seconds (whether the
  daemon keeps up: every one is committed to SQLite with synchronous=FULL before it is sent
  and deleted when answered).

The floor, measured in the same run, is a bare websockets client connected to the same CSMS
(interpreter + asyncio + websockets): its RSS and CPU over the same window.

    python -m bench.idle [--seconds 60] [--runs 3] [--evses 2,128] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    FastCsms,
    cpu_seconds,
    daemon_config,
    fmt_spread,
    private_bus,
    rss_kib,
    simulator,
    smaps_rollup,
    spread,
    start_daemon,
    wait_bus_name,
    write_result,
)

NAME = "idle"

IDLE_CLIENT = """
import asyncio, sys
from websockets.asyncio.client import connect
async def main():
    async with connect(sys.argv[1], subprotocols=["ocpp1.6"], compression=None) as ws:
        async for message in ws:
            pass
asyncio.run(main())
"""

OCPP_KEYS = """MeterValueSampleInterval = 1
MeterValuesSampledData = ["Energy.Active.Import.Register", "Power.Active.Import"]
ConnectionTimeOut = 600
"""


async def start_sessions(csms: FastCsms, bus: str, evses: int) -> None:
    limit = asyncio.Semaphore(8)

    async def prepare(evse_id: int) -> None:
        async with limit:
            await simulator(bus, "Plug", "u", str(evse_id))
            await simulator(bus, "SetEvReady", "ub", str(evse_id), "true")

    await asyncio.gather(*(prepare(i) for i in range(1, evses + 1)))
    for evse_id in range(1, evses + 1):
        answer = await csms.call(
            "RemoteStartTransaction", {"connectorId": evse_id, "idTag": f"BENCH{evse_id}"}
        )
        if answer[2].get("status") != "Accepted":
            raise RuntimeError(f"RemoteStart on EVSE {evse_id}: {answer}")
    await csms.wait_count("StartTransaction", evses, timeout=120)


async def one(evses: int, seconds: float, bus: str) -> dict[str, Any]:
    csms = FastCsms(heartbeat_interval=300, record_payloads=False)
    async with csms.serve():
        with tempfile.TemporaryDirectory() as tmp:
            config = daemon_config(
                Path(tmp), csms.url, evses=evses, dbus_address=bus, ocpp=OCPP_KEYS
            )
            daemon = await start_daemon(
                config, stderr=sys.stderr if os.environ.get("BENCH_DEBUG") else None
            )
            floor = await asyncio.create_subprocess_exec(
                sys.executable, "-c", IDLE_CLIENT, csms.url.replace("/ocpp", "/floor"), cwd=REPO
            )
            try:
                await daemon.wait_notification("READY=1", timeout=60)
                await csms.wait_count("BootNotification", 1)
                await wait_bus_name(bus)
                setup_started = time.monotonic()
                await start_sessions(csms, bus, evses)
                setup_s = time.monotonic() - setup_started
                await asyncio.sleep(2)  # let the first samples and status changes go out
                meter_before = csms.counts.get("MeterValues", 0)
                cpu0, floor_cpu0, t0 = (
                    cpu_seconds(daemon.pid),
                    cpu_seconds(floor.pid),
                    time.monotonic(),
                )
                rss: list[float] = []
                while time.monotonic() - t0 < seconds:
                    await asyncio.sleep(1)
                    rss.append(rss_kib(daemon.pid))
                elapsed = time.monotonic() - t0
                cpu = cpu_seconds(daemon.pid) - cpu0
                floor_cpu = cpu_seconds(floor.pid) - floor_cpu0
                meter_values = csms.counts.get("MeterValues", 0) - meter_before
                rollup = smaps_rollup(daemon.pid)
                floor_rss = rss_kib(floor.pid)
            finally:
                floor.terminate()
                await floor.wait()
                await daemon.stop(timeout=60)
    return {
        "window_s": elapsed,
        "setup_s": setup_s,
        "cpu_pct": 100 * cpu / elapsed,
        "rss_end_kib": rss[-1],
        "rss_max_kib": max(rss),
        "rss_median_kib": statistics.median(rss),
        "pss_end_kib": rollup.get("Pss", float("nan")),
        "meter_values": meter_values,
        "meter_values_expected": int(evses * elapsed),
        "floor_cpu_pct": 100 * floor_cpu / elapsed,
        "floor_rss_kib": floor_rss,
    }


async def run(evse_counts: list[int], seconds: float, runs: int) -> dict[str, Any]:
    report: dict[str, Any] = {
        "window_s": seconds,
        "runs": runs,
        "load_before": os.getloadavg(),
        "ocpp_keys": OCPP_KEYS.strip().splitlines(),
    }
    with private_bus() as bus:
        if bus is None:
            report["skipped"] = "dbus-daemon is not installed: the EVs cannot be plugged in"
            return report
        for evses in evse_counts:
            samples = [await one(evses, seconds, bus) for _ in range(runs)]
            report[f"evses_{evses}"] = {
                "evses": evses,
                **{key: spread([s[key] for s in samples]) for key in samples[0]},
                "raw": samples,
            }
    return report


def summary(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for key, entry in report.items():
        if not key.startswith("evses_"):
            continue
        n = entry["evses"]
        floor_mib = entry["floor_rss_kib"]["median"] / 1024
        rss = {k: entry["rss_end_kib"][k] / 1024 for k in ("median", "min", "max")}
        rows.append(
            (
                f"idle RSS, {n} EVSEs charging",
                fmt_spread(rss, " MiB", 1),
                f"bare websockets client {floor_mib:.1f} MiB",
            )
        )
        rows.append(
            (
                f"idle CPU, {n} EVSEs charging (% of one core)",
                fmt_spread(entry["cpu_pct"], " %", 2),
                f"bare client {entry['floor_cpu_pct']['median']:.2f} %; MeterValues "
                f"{entry['meter_values']['median']:.0f} of "
                f"{entry['meter_values_expected']['median']:.0f} expected",
            )
        )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.idle")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--evses", default="2,128", help="comma-separated EVSE counts")
    parser.add_argument("--quick", action="store_true", help="a 10 s window, 1 run")
    args = parser.parse_args(argv)
    seconds, runs = (10.0, 1) if args.quick else (args.seconds, args.runs)
    counts = [int(n) for n in args.evses.split(",")]
    report = asyncio.run(run(counts, seconds, runs))
    report["quick"] = args.quick
    path = write_result(NAME, report, argv)
    for row in summary(report):
        print(" | ".join(row))
    print(f"-> {path.relative_to(REPO)}")
    return report


if __name__ == "__main__":
    main()
