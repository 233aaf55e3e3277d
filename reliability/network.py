"""Network faults: evsed talks to the test CSMS through the fault-injecting proxy
(reliability.proxy) while random sessions run on two EVSEs. Afterwards, with the faults off:
nothing lost or duplicated (reliability.checker, with every id seen in the daemon's live queue
as the reference), the queue drains, and the connector statuses the CSMS last heard equal the
daemon's own (D-Bus Evse1.Status) — once with the sessions as they are, once after every EV is
unplugged.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from reliability.checker import check_delivery, last_status
from reliability.common import Daemon, DbusClient, DbusError, private_bus, wait_dbus, write_config
from reliability.drive import Driver
from reliability.proxy import FaultProxy
from reliability.settle import drained, sample_queue
from testcsms.server import TestCsms

OCPP_EXTRA = """AllowOfflineTxForUnknownId = true
LocalAuthorizeOffline = true
MeterValueSampleInterval = 2
MeterValuesSampledData = ["Energy.Active.Import.Register", "Power.Active.Import"]
"""


async def converged(
    client: DbusClient, csms: TestCsms, evses: int, timeout: float
) -> tuple[bool, dict[str, Any]]:
    """Wait until the CSMS's last StatusNotification per connector equals the daemon's status."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    truth: dict[int, str] = {}
    heard: dict[int, str] = {}
    while loop.time() < end:
        try:
            truth = {e: await client.evse_status(e) for e in range(1, evses + 1)}
        except (DbusError, TimeoutError):
            truth = {}
        heard = last_status(csms.received)
        if truth and all(heard.get(e) == s for e, s in truth.items()):
            return True, {"daemon": truth, "csms": {e: heard.get(e) for e in truth}}
        await asyncio.sleep(0.5)
    return False, {"daemon": truth, "csms": {e: heard.get(e) for e in truth}}


async def run(seconds: float, *, seed: int, log: Any = print) -> dict[str, Any]:
    rng = random.Random(seed)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="evrel-net-") as tmp, private_bus() as address:
        work = Path(tmp)
        async with TestCsms(heartbeat_interval=30) as csms:
            proxy = FaultProxy("127.0.0.1", csms.port, rng)
            await proxy.start()
            url = f"ws://127.0.0.1:{proxy.port}/ocpp"
            config = write_config(work, url, dbus_address=address, ocpp_extra=OCPP_EXTRA)
            daemon = Daemon(config)
            client = DbusClient(address)
            driver = Driver(client, csms, rng, link_control=False)
            expected: set[str] = set()
            stop_sampling = asyncio.Event()
            sampler = asyncio.create_task(
                sample_queue(work / "state", expected, stop_sampling, 1.0)
            )
            try:
                await daemon.start()
                await daemon.wait_ready(60)
                await wait_dbus(client, 20)
                proxy.faults_on = True
                fault_start = time.monotonic()
                end = fault_start + seconds
                next_log = fault_start + 60
                while time.monotonic() < end:
                    await asyncio.wait_for(driver.random_action(), 20)
                    await asyncio.sleep(rng.uniform(0.1, 1.0))
                    if time.monotonic() > next_log:
                        next_log += 60
                        log(
                            f"network: {time.monotonic() - fault_start:.0f}/{seconds:.0f}s, "
                            f"{sum(proxy.counts.values())} faults, {proxy.connections} connections"
                        )
                fault_seconds = time.monotonic() - fault_start
                proxy.calm()
                during, during_detail = await converged(client, csms, 2, 60)
                await driver.settle()
                emptied = await drained(client, timeout=120)
                after, after_detail = await converged(client, csms, 2, 60)
                stop_sampling.set()
                await sampler
                exit_code = await daemon.stop()
            finally:
                stop_sampling.set()
                if not sampler.done():
                    sampler.cancel()
                if daemon.alive:
                    await daemon.kill9()
                client.close()
                await proxy.stop()
            verdict = check_delivery(csms.received, expected_ids=expected)
            connections = len(csms.connections)
    ok = (
        verdict.ok
        and during
        and after
        and emptied
        and exit_code == 0
        and daemon.log.counts["traceback"] == 0
        and daemon.log.counts["queue_drop"] == 0
    )
    return {
        "ok": ok,
        "seed": seed,
        "fault_seconds": round(fault_seconds, 1),
        "duration_s": round(time.monotonic() - started, 1),
        "faults": dict(proxy.counts),
        "proxy_connections": proxy.connections,
        "connections": connections,
        "bytes": proxy.bytes,
        "statuses_converged": during and after,
        "statuses_with_sessions": {"converged": during, **during_detail},
        "statuses_after_unplug": {"converged": after, **after_detail},
        "final_queue_drained": emptied,
        "final_exit_code": exit_code,
        "actions": dict(driver.actions),
        "refused_actions": dict(driver.refused.most_common(15)),
        "delivery": verdict.as_dict(),
        "daemon_log": daemon.log.as_dict(),
    }
