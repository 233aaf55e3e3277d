"""The durable queue through the real daemon: kill -9, a silent CSMS, offline transactions."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from service.store.db import Database
from service.store.queue import DurableQueue
from testcsms.server import Received, TestCsms
from tests.integration.conftest import DaemonProcess, eventually, start_daemon, write_config

TS = "2027-01-15T08:00:00.000Z"


def seed_offline_transaction(state: Path, meter_values: int) -> list[str]:
    """Queue what a charger that ran a whole session offline holds: Start, N MeterValues, Stop.

    The later messages carry the transactionId placeholder; the daemon must patch in the id
    the CSMS assigns to the StartTransaction.
    """
    state.mkdir(parents=True, exist_ok=True)
    db = Database.open(state / "evsed.db")
    queue = DurableQueue(db, max_other=1000)
    ids = ["start-1"]
    queue.append("start-1", "StartTransaction",
                 {"connectorId": 1, "idTag": "TAG1", "meterStart": 0, "timestamp": TS},
                 kind="transaction", tx_ref="tx-1", now=0)
    for i in range(meter_values):
        mid = f"mv-{i}"
        ids.append(mid)
        queue.append(mid, "MeterValues",
                     {"connectorId": 1, "transactionId": None,
                      "meterValue": [{"timestamp": TS, "sampledValue": [{"value": str(i)}]}]},
                     kind="transaction", tx_ref="tx-1", now=0)
    ids.append("stop-1")
    queue.append("stop-1", "StopTransaction",
                 {"transactionId": None, "meterStop": meter_values, "timestamp": TS,
                  "reason": "EVDisconnected"}, kind="transaction", tx_ref="tx-1", now=0)
    db.close()
    return ids


def calls(csms: TestCsms) -> list[Received]:
    return [r for r in csms.received if r.direction == "in" and r.message_type == 2
            and r.action in ("StartTransaction", "MeterValues", "StopTransaction")]


def queued_count(state: Path, kind: str | None = None) -> int:
    db = Database.open(state / "evsed.db")
    try:
        queue = DurableQueue(db, max_other=1000)
        return len(queue) if kind is None else queue.count("transaction")
    finally:
        db.close()


async def test_kill9_during_drain_delivers_everything_in_order(
        csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path) -> None:
    ids = seed_offline_transaction(tmp_path / "state", meter_values=30)
    csms.delay_s = 0.05  # a slow CSMS, so the kill lands mid-drain
    config = write_config(tmp_path, csms.url)
    for round_ in range(3):
        daemon = await start_daemon(config, tmp_path)
        daemons.append(daemon)
        await daemon.wait_notification("READY=1")
        target = min(len(ids), 8 * (round_ + 1))
        await csms.wait_until(lambda t=target: len({r.unique_id for r in calls(csms)}) >= t,
                              timeout=30)
        daemon.process.send_signal(signal.SIGKILL)
        await daemon.process.wait()
    daemon = await start_daemon(config, tmp_path)
    daemons.append(daemon)
    await csms.wait_until(lambda: "stop-1" in {r.unique_id for r in calls(csms)}, timeout=30)
    await eventually(lambda: queued_count(tmp_path / "state") == 0)
    assert await daemon.stop() == 0

    received = calls(csms)
    first_seen: list[str] = []
    for r in received:
        if r.unique_id not in first_seen:
            first_seen.append(r.unique_id)
    assert first_seen == ids  # all of them, in order
    # A message is repeated only if it was on the wire, unanswered, when the daemon died; the
    # repeat carries the same id, so the CSMS can tell. Nothing else is sent twice.
    repeats = len(received) - len(ids)
    assert repeats <= 4
    # Never a StopTransaction / MeterValues with a placeholder or -1 id.
    start_ids = {r.unique_id: r for r in received if r.action == "StartTransaction"}
    assert start_ids
    for r in received:
        if r.action in ("MeterValues", "StopTransaction"):
            assert isinstance(r.payload["transactionId"], int)
            assert r.payload["transactionId"] >= 1


async def test_silent_csms_timeout_retries_same_id_and_keeps_order(
        csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path) -> None:
    ids = seed_offline_transaction(tmp_path / "state", meter_values=2)
    csms.drop_actions = {"StartTransaction"}  # receives, never answers
    daemon = await start_daemon(write_config(tmp_path, csms.url), tmp_path)
    daemons.append(daemon)
    starts = await csms.wait_for("StartTransaction", count=2, timeout=15)
    assert {s.unique_id for s in starts} == {"start-1"}  # the retry keeps its id
    assert not [r for r in calls(csms) if r.action != "StartTransaction"]  # order kept
    csms.drop_actions = set()
    await csms.wait_for("StopTransaction", timeout=15)
    first_seen: list[str] = []
    for r in calls(csms):
        if r.unique_id not in first_seen:
            first_seen.append(r.unique_id)
    assert first_seen == ids
    assert await daemon.stop() == 0


async def test_csms_closing_mid_transaction_loses_nothing(
        csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path) -> None:
    ids = seed_offline_transaction(tmp_path / "state", meter_values=3)
    csms.close_after("MeterValues", code=1000)  # close right after the first MeterValues
    daemon = await start_daemon(write_config(tmp_path, csms.url), tmp_path)
    daemons.append(daemon)
    await csms.wait_for("StopTransaction", timeout=20)
    assert len(csms.connections) >= 2
    seen: list[str] = []
    for r in calls(csms):
        if r.unique_id not in seen:
            seen.append(r.unique_id)
    assert seen == ids
    await eventually(lambda: queued_count(tmp_path / "state") == 0)
    assert await daemon.stop() == 0


async def test_callerror_exhausts_transaction_message_attempts(
        csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path) -> None:
    seed_offline_transaction(tmp_path / "state", meter_values=1)
    csms.error_actions = {"MeterValues": "InternalError"}
    config = write_config(tmp_path, csms.url, ocpp_extra="TransactionMessageAttempts = 2")
    daemon = await start_daemon(config, tmp_path)
    daemons.append(daemon)
    stop = await csms.wait_for("StopTransaction", timeout=20)
    meter_values: list[Any] = [r for r in calls(csms) if r.action == "MeterValues"]
    assert len(meter_values) == 2 and meter_values[0].unique_id == meter_values[1].unique_id
    assert stop[0].payload["transactionId"] >= 1
    assert "dropping MeterValues after 2 failed attempt(s)" in daemon.stderr()
    assert await daemon.stop() == 0


async def test_queue_survives_restart_while_offline(daemons: list[DaemonProcess],
                                                    tmp_path: Path) -> None:
    ids = seed_offline_transaction(tmp_path / "state", meter_values=2)
    # Nothing listens on this port: the daemon runs offline and keeps retrying.
    async with TestCsms() as probe:
        url = probe.url
    config = write_config(tmp_path, url)
    daemon = await start_daemon(config, tmp_path)
    daemons.append(daemon)
    await daemon.wait_notification("READY=1")
    await asyncio.sleep(1.0)
    assert "refused" in daemon.stderr().lower() or "connect" in daemon.stderr().lower()
    assert await daemon.stop() == 0
    assert queued_count(tmp_path / "state", "transaction") == len(ids)
