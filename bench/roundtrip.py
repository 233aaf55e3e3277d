"""Round trip of a CSMS CALL answered by evsed, against a bare websockets echo floor.

One run measures both, from the same CSMS-side code, each peer in its own process:

* floor: a minimal websockets client that echoes every frame back (no parsing at all);
* evsed: the real daemon (`python -m service.main`), answering TriggerMessage CALLs, each
  parsed, schema-validated, dispatched, answered and schema-validated on the way out.

    python -m bench.roundtrip [--calls 2000] [--runs 5]

Prints and returns medians of p50/p99 over runs with their spread, and the ratio to the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

REPO = Path(__file__).resolve().parents[1]

ECHO_CLIENT = """
import asyncio, sys
from websockets.asyncio.client import connect
async def main():
    async with connect(sys.argv[1], subprotocols=["ocpp1.6"], compression=None) as ws:
        async for message in ws:
            await ws.send(message)
asyncio.run(main())
"""

CONFIG = """
[identity]
charge_point_id = "BENCH"
vendor = "evsed"
model = "bench"
[csms]
url = "{url}"
ocpp_versions = ["ocpp1.6"]
ping_interval_s = 0
[paths]
state_directory = "{state}"
[logging]
level = "warning"
[[evse]]
id = 1
"""

PROBE = {"requestedMessage": "DiagnosticsStatusNotification"}


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def measure(peer: str, calls: int) -> dict[str, float]:
    ready: asyncio.Future[ServerConnection] = asyncio.get_running_loop().create_future()
    finished = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        if peer == "evsed":
            boot = json.loads(await ws.recv())
            await ws.send(json.dumps([3, boot[1], {
                "status": "Accepted", "interval": 3600,
                "currentTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]))
        ready.set_result(ws)
        await finished.wait()

    async with serve(handler, "127.0.0.1", 0, subprotocols=["ocpp1.6"],
                     compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}/ocpp"
        with tempfile.TemporaryDirectory() as tmp:
            if peer == "echo":
                argv = [sys.executable, "-c", ECHO_CLIENT, url + "/BENCH"]
            else:
                config = Path(tmp) / "evsed.toml"
                config.write_text(CONFIG.format(url=url, state=Path(tmp) / "state"))
                argv = [sys.executable, "-m", "service.main", "--config", str(config)]
            env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
            process = await asyncio.create_subprocess_exec(*argv, cwd=REPO, env=env)
            try:
                ws = await asyncio.wait_for(ready, 30)
                samples: list[float] = []
                for i in range(calls + 200):  # the first 200 warm up
                    frame = json.dumps([2, f"b{i}", "TriggerMessage", PROBE])
                    start = time.perf_counter()
                    await ws.send(frame)
                    reply = await ws.recv()
                    elapsed = time.perf_counter() - start
                    assert f'"b{i}"' in str(reply), reply
                    if i >= 200:
                        samples.append(elapsed * 1000)
                rss_kib = _rss_kib(process.pid)
            finally:
                finished.set()
                process.terminate()
                await process.wait()
    return {"p50_ms": percentile(samples, 0.5), "p99_ms": percentile(samples, 0.99),
            "rss_kib": rss_kib}


def _rss_kib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def summarize(runs: list[dict[str, float]], key: str) -> dict[str, float]:
    values = [r[key] for r in runs]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


async def run(calls: int, runs: int) -> dict[str, Any]:
    results: dict[str, list[dict[str, float]]] = {"echo": [], "evsed": []}
    for _ in range(runs):
        for peer in ("echo", "evsed"):  # interleaved, so drift hits both alike
            results[peer].append(await measure(peer, calls))
    report: dict[str, Any] = {"calls_per_run": calls, "runs": runs}
    for peer, samples in results.items():
        report[peer] = {k: summarize(samples, k) for k in ("p50_ms", "p99_ms", "rss_kib")}
    report["ratio_p50"] = report["evsed"]["p50_ms"]["median"] / report["echo"]["p50_ms"]["median"]
    report["ratio_p99"] = report["evsed"]["p99_ms"]["median"] / report["echo"]["p99_ms"]["median"]
    report["bench_process_maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.roundtrip")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    report = asyncio.run(run(args.calls, args.runs))
    report["date"] = time.strftime("%Y-%m-%d")
    report["machine"] = f"{os.cpu_count()} cores, {sys.platform}, Python {sys.version.split()[0]}"
    report["command"] = "make bench (python -m bench.roundtrip)"
    out = REPO / "bench" / "results" / "roundtrip.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
