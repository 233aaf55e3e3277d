"""Soak: sessions every few seconds on two EVSEs against the test CSMS for a long time, with
the daemon's resident memory, open file descriptors and database size sampled every 10 s.

Each EVSE runs its own loop: plug, EV ready, card, charge 2-8 s, unplug, rest 1-3 s; the CSMS
changes a configuration key now and then. "Flat" means the least-squares slope over the run
after a warm-up fifth, projected over one hour, stays under a small bound (RSS 4 MiB/h, file
descriptors 2/h, database 4 MiB/h); start, end and max are reported as measured. The delivery
rules (reliability.checker) are checked at the end as in the other parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from reliability.checker import check_delivery
from reliability.common import Daemon, DbusClient, private_bus, wait_dbus, write_config
from reliability.drive import Driver
from reliability.settle import drained, sample_queue
from testcsms.server import TestCsms

OCPP_EXTRA = """MeterValueSampleInterval = 5
MeterValuesSampledData = ["Energy.Active.Import.Register", "Power.Active.Import"]
StopTxnSampledData = "Energy.Active.Import.Register"
"""
SAMPLE_EVERY_S = 10.0
#: Largest slope per hour still called flat.
FLAT_PER_HOUR = {"rss": 4 * 1024 * 1024, "fds": 2.0, "db": 4 * 1024 * 1024}


def measure(pid: int, state: Path) -> dict[str, float]:
    rss = 0.0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = float(line.split()[1]) * 1024
    fds = float(len(os.listdir(f"/proc/{pid}/fd")))
    db = 0.0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            db += (state / f"evsed.db{suffix}").stat().st_size
    return {"rss": rss, "fds": fds, "db": db}


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    if len(points) < 3:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 3600.0


def summarize(samples: list[dict[str, float]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    warm = len(samples) // 5
    for name in ("rss", "fds", "db"):
        values = [s[name] for s in samples]
        tail = [(s["t"], s[name]) for s in samples[warm:]]
        slope = slope_per_hour(tail)
        out[name] = {
            "start": values[0],
            "end": values[-1],
            "max": max(values),
            "min": min(values),
            "slope_per_hour": slope,
            "flat": abs(slope) <= FLAT_PER_HOUR[name],
        }
    return out


async def run(seconds: float, *, seed: int, log: Any = print) -> dict[str, Any]:
    rng = random.Random(seed)
    started = time.monotonic()
    samples: list[dict[str, float]] = []
    sessions = 0
    with tempfile.TemporaryDirectory(prefix="evrel-soak-") as tmp, private_bus() as address:
        work = Path(tmp)
        state = work / "state"
        async with TestCsms(heartbeat_interval=60) as csms:
            config = write_config(work, csms.url, dbus_address=address, ocpp_extra=OCPP_EXTRA)
            daemon = Daemon(config)
            client = DbusClient(address)
            driver = Driver(client, csms, rng, link_control=False, remote=False)
            expected: set[str] = set()
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_queue(state, expected, stop, 2.0))
            try:
                await daemon.start()
                await daemon.wait_ready(60)
                await wait_dbus(client, 20)
                await csms.wait_for("StatusNotification", timeout=20)
                t0 = time.monotonic()
                end = t0 + seconds

                async def evse_loop(evse: int) -> None:
                    nonlocal sessions
                    while time.monotonic() < end:
                        await asyncio.wait_for(
                            driver.session_cycle(evse, rng.uniform(2, 8), rng.uniform(1, 3)), 60
                        )
                        sessions += 1

                async def config_loop() -> None:
                    while time.monotonic() < end:
                        await asyncio.sleep(
                            min(rng.uniform(20, 60), max(0, end - time.monotonic()))
                        )
                        if time.monotonic() < end:
                            await driver.change_configuration()

                async def sample_loop() -> None:
                    next_log = t0 + 300
                    while time.monotonic() < end:
                        sample = measure(daemon.pid, state)
                        sample["t"] = time.monotonic() - t0
                        samples.append(sample)
                        if time.monotonic() > next_log:
                            next_log += 300
                            log(
                                f"soak: {sample['t']:.0f}/{seconds:.0f}s, {sessions} sessions, "
                                f"RSS {sample['rss'] / 2**20:.1f} MiB, {sample['fds']:.0f} fds, "
                                f"db {sample['db'] / 2**20:.2f} MiB"
                            )
                        await asyncio.sleep(SAMPLE_EVERY_S)

                await asyncio.gather(evse_loop(1), evse_loop(2), config_loop(), sample_loop())
                final_sample = measure(daemon.pid, state)
                final_sample["t"] = time.monotonic() - t0
                samples.append(final_sample)
                await driver.settle()
                emptied = await drained(client, timeout=120)
                stop.set()
                await sampler
                exit_code = await daemon.stop()
            finally:
                stop.set()
                if not sampler.done():
                    sampler.cancel()
                if daemon.alive:
                    await daemon.kill9()
                client.close()
            verdict = check_delivery(csms.received, expected_ids=expected)
    metrics = summarize(samples)
    # A slope from a few minutes says little: flatness is judged from 10 minutes on.
    judged = seconds >= 600
    ok = (
        verdict.ok
        and emptied
        and exit_code == 0
        and (not judged or all(m["flat"] for m in metrics.values()))
        and daemon.log.counts["traceback"] == 0
        and daemon.log.counts["queue_drop"] == 0
    )
    return {
        "ok": ok,
        "seed": seed,
        "duration_s": round(samples[-1]["t"], 1) if samples else 0.0,
        "wall_s": round(time.monotonic() - started, 1),
        "sessions": sessions,
        "metrics": metrics,
        "flat_bounds_per_hour": FLAT_PER_HOUR,
        "flatness_judged": judged,
        "samples": [{k: round(v, 1) for k, v in s.items()} for s in samples],
        "final_queue_drained": emptied,
        "final_exit_code": exit_code,
        "actions": dict(driver.actions),
        "refused_actions": dict(driver.refused.most_common(15)),
        "delivery": verdict.as_dict(),
        "daemon_log": daemon.log.as_dict(),
    }
