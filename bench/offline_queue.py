"""Offline queue: persist 10,000 transaction messages while offline, then drain them.

Persist (in this process, the daemon's real enqueue path): `service.ocpp.engine.Engine` over
`service.store.queue.DurableQueue` on `service.store.db.Database`, built as service.main builds
them. The engine has been connected once (so, as in the field, every message is checked against
its OCPP 1.6 schema before it is stored) and is offline. 100 transactions started offline, each
a StartTransaction, 98 MeterValues (energy and power) and a StopTransaction, the later ones with
the placeholder transactionId the queue patches once the CSMS assigns one. Messages/s and the
per-enqueue latency (each one a committed SQLite transaction), with synchronous=FULL (what the
daemon uses) and NORMAL for comparison, and the database size. Floor: bare sqlite3 in the same
mode (WAL, same synchronous), one INSERT of the same payload text per committed transaction.

Drain: evsed as a process (1 simulated EVSE, D-Bus off) on a copy of the FULL database, against
a fast CSMS that answers every CALL at once. From the websocket opening (the CSMS side) to the
arrival of the last of the 10,000: messages/s; and checks: every message arrived, none twice, in
the stored order, with the transactionId the CSMS gave its StartTransaction. Floor: a bare
websockets client sending 10,000 prepared CALLs one at a time to the same CSMS.

    python -m bench.offline_queue [--messages 10000] [--runs 3] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    FastCsms,
    daemon_config,
    fmt_spread,
    percentile,
    spread,
    start_daemon,
    write_result,
)

NAME = "offline_queue"
PER_TRANSACTION = 100

BARE_SENDER = """
import asyncio, json, sys
from websockets.asyncio.client import connect
async def main():
    frames = json.load(open(sys.argv[2]))
    async with connect(sys.argv[1], subprotocols=["ocpp1.6"], compression=None,
                       ping_interval=None) as ws:
        for frame in frames:
            await ws.send(frame)
            await ws.recv()
asyncio.run(main())
"""


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def messages(count: int) -> list[tuple[str, dict[str, Any], str]]:
    """(action, payload, tx_ref) of `count` transaction messages, 100 per transaction."""
    out: list[tuple[str, dict[str, Any], str]] = []
    t = time.time() - count
    energy = 0
    while len(out) < count:
        tx_ref = str(uuid.uuid4())
        out.append(
            (
                "StartTransaction",
                {"connectorId": 1, "idTag": "BENCH-TAG", "meterStart": energy, "timestamp": iso(t)},
                tx_ref,
            )
        )
        for _ in range(PER_TRANSACTION - 2):
            t += 1
            energy += 3
            out.append(
                (
                    "MeterValues",
                    {
                        "connectorId": 1,
                        "transactionId": None,
                        "meterValue": [
                            {
                                "timestamp": iso(t),
                                "sampledValue": [
                                    {
                                        "value": str(energy),
                                        "context": "Sample.Periodic",
                                        "format": "Raw",
                                        "measurand": "Energy.Active.Import.Register",
                                        "location": "Outlet",
                                        "unit": "Wh",
                                    },
                                    {
                                        "value": "11040.0",
                                        "context": "Sample.Periodic",
                                        "format": "Raw",
                                        "measurand": "Power.Active.Import",
                                        "location": "Outlet",
                                        "unit": "W",
                                    },
                                ],
                            }
                        ],
                    },
                    tx_ref,
                )
            )
        t += 1
        out.append(
            (
                "StopTransaction",
                {
                    "transactionId": None,
                    "meterStop": energy,
                    "timestamp": iso(t),
                    "reason": "EVDisconnected",
                    "idTag": "BENCH-TAG",
                },
                tx_ref,
            )
        )
    return out[:count]


def db_size(directory: Path) -> dict[str, int]:
    sizes = {}
    for suffix in ("", "-wal", "-shm"):
        path = directory / f"evsed.db{suffix}"
        sizes[f"evsed.db{suffix}"] = path.stat().st_size if path.exists() else 0
    return sizes


def persist(
    directory: Path,
    synchronous: str,
    batch: list[tuple[str, dict[str, Any], str]],
) -> dict[str, Any]:
    """Enqueue `batch` through Engine + DurableQueue, as the daemon does; time it."""
    from service.config import load_settings
    from service.ocpp.engine import Engine, EngineOptions
    from service.ocpp.rpc import OcppVersion
    from service.station.clock import SystemClock
    from service.station.configuration import Configuration
    from service.store.db import Database
    from service.store.overlay import ConfigOverlay
    from service.store.queue import DurableQueue

    directory.mkdir(parents=True, exist_ok=True)
    config = daemon_config(directory, "ws://127.0.0.1:9/ocpp", evses=1)
    settings = load_settings(config)
    state = settings.paths.state_directory
    state.mkdir(parents=True, exist_ok=True)
    db = Database.open(state / "evsed.db", synchronous=synchronous)
    try:
        clock = SystemClock()
        engine = Engine(
            queue=DurableQueue(db, max_other=settings.queue.max_non_transaction_messages),
            clock=clock,
            new_id=lambda: str(uuid.uuid4()),
            settings=Configuration(settings, ConfigOverlay(db), clock=clock),
            boot_payload=lambda version: {
                "chargePointVendor": "evsed",
                "chargePointModel": "bench",
            },
            options=EngineOptions(),
        )
        engine.connection_opened(OcppVersion.V16)  # was online once: outbound validation on
        engine.take_frames()
        engine.connection_closed()
        latencies: list[float] = []
        started = time.perf_counter()
        for action, payload, tx_ref in batch:
            t0 = time.perf_counter()
            engine.enqueue(action, payload, transaction=True, tx_ref=tx_ref)
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
        queued = engine.queue_length
    finally:
        db.close()
    return {
        "messages": len(batch),
        "queued": queued,
        "seconds": elapsed,
        "per_s": len(batch) / elapsed,
        "enqueue_p50_ms": percentile(latencies, 0.5) * 1000,
        "enqueue_p99_ms": percentile(latencies, 0.99) * 1000,
        "db_bytes": db_size(state),
    }


def bare_sqlite(
    directory: Path, synchronous: str, batch: list[tuple[str, dict[str, Any], str]]
) -> dict[str, Any]:
    """The floor: one committed INSERT per message, same journal and sync mode."""
    directory.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(directory / "bare.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    conn.execute(
        "CREATE TABLE q (seq INTEGER PRIMARY KEY, message_id TEXT, action TEXT, payload TEXT)"
    )
    rows = [
        (str(uuid.uuid4()), action, json.dumps(payload, separators=(",", ":")))
        for action, payload, _ in batch
    ]
    started = time.perf_counter()
    for row in rows:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO q (message_id, action, payload) VALUES (?, ?, ?)", row)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return {"seconds": elapsed, "per_s": len(rows) / elapsed}


def stored_order(state: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(state / "evsed.db")
    try:
        return [
            (r[0], r[1])
            for r in conn.execute("SELECT message_id, action FROM outbound_queue ORDER BY seq")
        ]
    finally:
        conn.close()


async def drain(filled: Path, work: Path, expected: list[tuple[str, str]]) -> dict[str, Any]:
    """Run evsed on a copy of the filled state directory; time the drain; check it."""
    shutil.copytree(filled, work / "state")
    csms = FastCsms(heartbeat_interval=3600)
    wanted = {message_id for message_id, _ in expected}
    last_seen = asyncio.Event()
    remaining = set(wanted)

    def seen(record: Any) -> None:
        remaining.discard(record.message_id)
        if not remaining:
            last_seen.set()

    csms.on_call = seen
    async with csms.serve():
        config = daemon_config(work, csms.url, evses=1)
        daemon = await start_daemon(config)
        try:
            await asyncio.wait_for(last_seen.wait(), 600)
            last_at = time.monotonic()
        finally:
            await daemon.stop(timeout=60)
    assert csms.connected_at is not None
    elapsed = last_at - csms.connected_at
    got = [r for r in csms.received if r.message_id in wanted]
    order = [r.message_id for r in got]
    tx_of_start: dict[int, int] = {}
    wrong_tx = 0
    starts = 0
    for index, record in enumerate(got):
        transaction = index // PER_TRANSACTION
        if record.action == "StartTransaction":
            starts += 1
            tx_of_start[transaction] = starts  # FastCsms numbers its transactions 1, 2, ...
        elif record.payload.get("transactionId") != tx_of_start.get(transaction):
            wrong_tx += 1
    return {
        "seconds": elapsed,
        "per_s": len(expected) / elapsed,
        "received": len(got),
        "lost": len(wanted - set(order)),
        "duplicates": len(order) - len(set(order)),
        "in_order": order == [message_id for message_id, _ in expected],
        "wrong_transaction_id": wrong_tx,
        "csms_calls_total": len(csms.received),
    }


async def drain_floor(work: Path, count: int) -> dict[str, Any]:
    frames = [
        json.dumps([2, f"f{i}", action, payload])
        for i, (action, payload, _) in enumerate(messages(count))
    ]
    path = work / "frames.json"
    path.write_text(json.dumps(frames))
    csms = FastCsms(heartbeat_interval=3600, record_payloads=False)
    async with csms.serve():
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", BARE_SENDER, csms.url + "/BENCH", str(path), cwd=REPO
        )
        await asyncio.wait_for(process.wait(), 600)
        last = csms.received[-1].at
    assert csms.connected_at is not None
    return {"seconds": last - csms.connected_at, "per_s": count / (last - csms.connected_at)}


async def run(count: int, runs: int) -> dict[str, Any]:
    report: dict[str, Any] = {
        "messages": count,
        "runs": runs,
        "per_transaction": PER_TRANSACTION,
        "load_before": os.getloadavg(),
    }
    batch = messages(count)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMPDIR")) as tmp:
        root = Path(tmp)
        persisted: dict[str, list[dict[str, Any]]] = {"full": [], "normal": []}
        floors: dict[str, list[dict[str, Any]]] = {"full": [], "normal": []}
        for i in range(runs):
            for mode in ("full", "normal"):
                persisted[mode].append(persist(root / f"{mode}{i}", mode, batch))
                floors[mode].append(bare_sqlite(root / f"bare-{mode}{i}", mode, batch))
        for mode in ("full", "normal"):
            report[f"persist_{mode}"] = {
                key: spread([r[key] for r in persisted[mode]])
                for key in ("per_s", "seconds", "enqueue_p50_ms", "enqueue_p99_ms")
            }
            report[f"persist_{mode}"]["db_bytes"] = persisted[mode][-1]["db_bytes"]
            report[f"persist_{mode}"]["floor_bare_sqlite"] = {
                "per_s": spread([r["per_s"] for r in floors[mode]])
            }
            report[f"persist_{mode}"]["ratio_to_floor"] = (
                report[f"persist_{mode}"]["per_s"]["median"]
                / report[f"persist_{mode}"]["floor_bare_sqlite"]["per_s"]["median"]
            )
        filled = root / "full0" / "state"
        expected = stored_order(filled)
        drains = []
        for i in range(runs):
            work = root / f"drain{i}"
            work.mkdir()
            drains.append(await drain(filled, work, expected))
        report["drain"] = {
            key: spread([float(d[key]) for d in drains]) for key in ("per_s", "seconds")
        }
        report["drain"]["checks"] = [
            {
                k: d[k]
                for k in ("received", "lost", "duplicates", "in_order", "wrong_transaction_id")
            }
            for d in drains
        ]
        floor_dir = root / "floor"
        floor_dir.mkdir()
        floor = [await drain_floor(floor_dir, count) for _ in range(runs)]
        report["drain"]["floor_bare_client"] = {"per_s": spread([f["per_s"] for f in floor])}
        report["drain"]["ratio_to_floor"] = (
            report["drain"]["per_s"]["median"]
            / report["drain"]["floor_bare_client"]["per_s"]["median"]
        )
    return report


def summary(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    n = report["messages"]
    for mode in ("full", "normal"):
        entry = report[f"persist_{mode}"]
        size = sum(entry["db_bytes"].values()) / 2**20
        rows.append(
            (
                f"offline enqueue, synchronous={mode.upper()} (msg/s)",
                fmt_spread(entry["per_s"], "", 0),
                f"bare sqlite {entry['floor_bare_sqlite']['per_s']['median']:.0f}/s, "
                f"{entry['ratio_to_floor']:.2f}x floor; p99 "
                f"{entry['enqueue_p99_ms']['median']:.2f} ms; {n} msgs = {size:.1f} MiB",
            )
        )
    drain = report["drain"]
    ok = all(
        c["lost"] == 0 and c["duplicates"] == 0 and c["in_order"] and c["wrong_transaction_id"] == 0
        for c in drain["checks"]
    )
    rows.append(
        (
            "queue drain after reconnect (msg/s)",
            fmt_spread(drain["per_s"], "", 0),
            f"bare client {drain['floor_bare_client']['per_s']['median']:.0f}/s, "
            f"{drain['ratio_to_floor']:.2f}x floor; "
            + ("in order, 0 lost, 0 duplicated" if ok else "CHECKS FAILED, see JSON"),
        )
    )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.offline_queue")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2,000 messages, 1 run")
    args = parser.parse_args(argv)
    count, runs = (2000, 1) if args.quick else (args.messages, args.runs)
    report = asyncio.run(run(count, runs))
    report["quick"] = args.quick
    path = write_result(NAME, report, argv)
    for row in summary(report):
        print(" | ".join(row))
    print(f"-> {path.relative_to(REPO)}")
    return report


if __name__ == "__main__":
    main()
