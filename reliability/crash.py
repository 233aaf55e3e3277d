"""Crash consistency: `kill -9` of the daemon at random moments of random sessions, restart,
and check that the CSMS heard every transaction message once, in order, with its transaction
id, and that the database opens cleanly after every kill.

One cycle: start evsed (two simulated EVSEs, a private D-Bus, the test CSMS on loopback), drive
random activity (plug, EV ready, card, unplug, link down/up so the queue grows and drains,
ChangeConfiguration, RemoteStart/Stop from the CSMS), then SIGKILL: in a tenth of the cycles at
a random moment of start-up (before READY, while the previous run's sessions are being
recovered), in half of them at a random moment of the activity, and in the other 40 % the
daemon kills itself with SIGKILL right after its N-th SQLite COMMIT (N random, 1-80; see
reliability/inject/sitecustomize.py): exactly between two commits, where a crash-consistency
bug lives. After each kill a copy of the database (with its WAL) passes PRAGMA integrity_check,
and the queued message ids are noted: each must reach the CSMS in the end. After the last
cycle the daemon runs to completion: every EV unplugged, the queue drained, a clean stop.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from reliability.checker import check_delivery
from reliability.common import (
    INJECT_DIR,
    Daemon,
    DbusClient,
    check_database,
    moved_aside,
    private_bus,
    wait_dbus,
    write_config,
)
from reliability.drive import Driver
from reliability.settle import drained
from testcsms.server import TestCsms

OCPP_EXTRA = """AllowOfflineTxForUnknownId = true
LocalAuthorizeOffline = true
MeterValueSampleInterval = 1
MeterValuesSampledData = ["Energy.Active.Import.Register", "Power.Active.Import"]
StopTxnSampledData = "Energy.Active.Import.Register"
"""


async def run(kills: int, *, seed: int, log: Any = print) -> dict[str, Any]:
    rng = random.Random(seed)
    started = time.monotonic()
    integrity_failures: list[str] = []
    phases: Counter[str] = Counter()
    expected: set[str] = set()
    ready_times: list[float] = []
    startup_failures: list[str] = []
    self_killed = 0
    with tempfile.TemporaryDirectory(prefix="evrel-crash-") as tmp, private_bus() as address:
        work = Path(tmp)
        state = work / "state"
        async with TestCsms(heartbeat_interval=30) as csms:
            config = write_config(work, csms.url, dbus_address=address, ocpp_extra=OCPP_EXTRA)
            client = DbusClient(address)
            daemon = Daemon(config)
            driver = Driver(client, csms, rng)
            try:
                for k in range(kills):
                    csms.delay_s = rng.choice((0.0, 0.0, 0.02, 0.1))
                    spawned = time.monotonic()
                    mode = rng.choices(("startup", "random", "commit"), weights=(1, 5, 4))[0]
                    env: dict[str, str] = {}
                    if mode == "commit":
                        # The daemon kills itself right after its N-th COMMIT (inject/).
                        path = os.pathsep.join(
                            p for p in (str(INJECT_DIR), os.environ.get("PYTHONPATH")) if p
                        )
                        env = {"PYTHONPATH": path, "EVREL_KILL_AT_COMMIT": str(rng.randint(1, 80))}
                    await daemon.start(env)
                    if mode == "startup":
                        # During start-up: recovering the previous run's sessions, connecting.
                        await asyncio.sleep(rng.uniform(0.0, 1.5))
                        phase = "startup" if "READY=1" not in daemon.notifications else "boot"
                    else:
                        try:
                            await daemon.wait_ready(60)
                            ready_times.append(time.monotonic() - spawned)
                            await wait_dbus(client, 20)
                        except (TimeoutError, RuntimeError) as exc:
                            if daemon.alive or mode != "commit":
                                startup_failures.append(f"kill {k}: {exc!r} {daemon.tail_text(15)}")
                        driver.offline = False
                        # The simulated EVs do not survive the kill: most cycles begin a
                        # session or two, so kills land in transactions.
                        for evse in (1, 2):
                            if daemon.alive and rng.random() < 0.6:
                                await driver.plug(evse)
                                await driver.ready(evse, rng.random() < 0.8)
                                await driver.token(evse)
                        end = time.monotonic() + rng.uniform(0.1, 3.0)
                        while time.monotonic() < end and daemon.alive:
                            await asyncio.wait_for(driver.random_action(), 10)
                            await asyncio.sleep(rng.uniform(0.0, 0.3))
                        phase = driver.last
                    if mode == "commit" and not daemon.alive:
                        phase = f"after a COMMIT ({driver.last})"
                        self_killed += 1
                    phases[phase] += 1
                    await daemon.kill9()
                    if daemon.returncode != -signal.SIGKILL:
                        startup_failures.append(f"kill {k}: exit status {daemon.returncode}")
                    check = check_database(state)
                    if check.integrity != "ok":
                        integrity_failures.append(f"kill {k}: {check.integrity}")
                    expected.update(check.queued_ids)
                    if (k + 1) % 25 == 0:
                        log(
                            f"crash: {k + 1}/{kills} kills, {len(csms.received)} frames, "
                            f"{time.monotonic() - started:.0f}s"
                        )
                # The end: a run that is not killed delivers everything.
                csms.delay_s = 0.0
                await daemon.start()
                await daemon.wait_ready(60)
                await wait_dbus(client, 20)
                await driver.settle()
                emptied = await drained(client, timeout=120)
                exit_code = await daemon.stop()
            finally:
                if daemon.alive:
                    await daemon.kill9()
                client.close()
            final = check_database(state)
            verdict = check_delivery(csms.received, expected_ids=expected)
            moved = moved_aside(state)
    ok = (
        verdict.ok
        and not integrity_failures
        and not moved
        and emptied
        and exit_code == 0
        and final.integrity == "ok"
        and not final.queued_ids
        and final.open_sessions == 0
        and daemon.log.counts["traceback"] == 0
        and daemon.log.counts["queue_drop"] == 0
    )
    return {
        "ok": ok,
        "seed": seed,
        "kills": kills,
        "daemon_starts": daemon.starts,
        "duration_s": round(time.monotonic() - started, 1),
        "kills_right_after_a_commit": self_killed,
        "kill_moments": dict(phases.most_common()),
        "integrity_checks": kills + 1,
        "integrity_failures": integrity_failures,
        "databases_moved_aside": moved,
        "final_queue_drained": emptied,
        "final_exit_code": exit_code,
        "final_queue_left": len(final.queued_ids),
        "final_open_sessions": final.open_sessions,
        "ready_time_s_median": sorted(ready_times)[len(ready_times) // 2] if ready_times else None,
        "startup_failures": startup_failures[:10],
        "actions": dict(driver.actions),
        "refused_actions": dict(driver.refused.most_common(15)),
        "delivery": verdict.as_dict(),
        "daemon_log": daemon.log.as_dict(),
    }
