"""Round trip of a CSMS CALL answered by evsed over loopback, against a bare websockets echo floor.

One run measures both peers from the same CSMS-side code, each in its own process:

* floor: a minimal websockets client that sends every frame back unchanged (no parsing at all);
* evsed: the real daemon (`python -m service.main`, 1 simulated EVSE, D-Bus off, log level
  warning), where every CALL is parsed, schema-validated, dispatched, answered and the answer
  schema-validated on the way out.

Three probes, each `--calls` timed CALLs after 200 warm-up calls, one at a time (the next CALL
is sent when the previous answer arrived):

* `get_configuration`: GetConfiguration for one key (HeartbeatInterval);
* `trigger_message`: TriggerMessage(DiagnosticsStatusNotification), answered Accepted; evsed
  then sends the DiagnosticsStatusNotification it was asked for, which the CSMS answers
  outside the timed interval (so nothing accumulates in evsed's triggered-message queue);
* `remote_start`: RemoteStartTransaction on connector 1, which a session started before the
  measurement keeps busy (authorized, waiting for the EV; ConnectionTimeOut = 1 day), so each
  probe is decided by the station and answered Rejected without changing any state.

The floor echoes the very same frames. Runs alternate echo / evsed so drift hits both alike;
the report gives, per probe, the median over runs of each run's p50 and p99 with min/max, and
the ratio of evsed's to the floor's medians.

    python -m bench.roundtrip [--calls 2000] [--runs 5] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    daemon_config,
    fmt_spread,
    now_iso,
    percentile,
    rss_kib,
    spread,
    write_result,
)

NAME = "roundtrip"
WARMUP = 200

ECHO_CLIENT = """
import asyncio, sys
from websockets.asyncio.client import connect
async def main():
    async with connect(sys.argv[1], subprotocols=["ocpp1.6"], compression=None,
                       ping_interval=None) as ws:
        async for message in ws:
            await ws.send(message)
asyncio.run(main())
"""

PROBES: dict[str, tuple[str, dict[str, Any]]] = {
    "get_configuration": ("GetConfiguration", {"key": ["HeartbeatInterval"]}),
    "trigger_message": ("TriggerMessage", {"requestedMessage": "DiagnosticsStatusNotification"}),
    "remote_start": ("RemoteStartTransaction", {"connectorId": 1, "idTag": "BENCH-BUSY"}),
}
EXPECTED = {
    "get_configuration": '"HeartbeatInterval"',
    "trigger_message": '"Accepted"',
    "remote_start": '"Rejected"',
}


class Peer:
    """The CSMS end of one connection: sends CALLs, answers whatever the charger sends."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.answered = 0

    async def answer_call(self, frame: list[Any]) -> None:
        action = frame[2]
        payload: dict[str, Any] = {}
        if action == "BootNotification":
            payload = {"status": "Accepted", "interval": 86400, "currentTime": now_iso()}
        elif action == "Authorize":
            payload = {"idTagInfo": {"status": "Accepted"}}
        elif action == "Heartbeat":
            payload = {"currentTime": now_iso()}
        await self.ws.send(json.dumps([3, frame[1], payload]))
        self.answered += 1

    async def call(self, message_id: str, action: str, payload: dict[str, Any]) -> str:
        """Send one CALL and return the text of its answer (charger CALLs are answered)."""
        await self.ws.send(json.dumps([2, message_id, action, payload]))
        return await self.reply_to(message_id)

    async def reply_to(self, message_id: str) -> str:
        while True:
            text = str(await self.ws.recv())
            frame = json.loads(text)
            if frame[1] == message_id:
                return text
            if frame[0] == 2:
                await self.answer_call(frame)

    async def drain(self, quiet_s: float = 0.3) -> None:
        """Answer the charger's CALLs until it has been silent for `quiet_s`."""
        while True:
            try:
                text = await asyncio.wait_for(self.ws.recv(), quiet_s)
            except TimeoutError:
                return
            frame = json.loads(text)
            if frame[0] == 2:
                await self.answer_call(frame)


async def measure_probe(peer: Peer, probe: str, calls: int, evsed: bool) -> dict[str, float]:
    action, payload = PROBES[probe]
    follow_up = evsed and probe == "trigger_message"
    samples: list[float] = []
    interleaved = 0
    for i in range(calls + WARMUP):
        message_id = f"{probe[:2]}{i}"
        frame = json.dumps([2, message_id, action, payload])
        start = time.perf_counter()
        await peer.ws.send(frame)
        while True:
            text = str(await peer.ws.recv())
            if f'"{message_id}"' in text:
                break
            reply = json.loads(text)
            if reply[0] == 2:  # not expected inside the timed interval; answered, counted
                interleaved += 1
                await peer.answer_call(reply)
        elapsed = time.perf_counter() - start
        if evsed and EXPECTED[probe] not in text:
            raise RuntimeError(f"{probe}: unexpected answer {text}")
        if i >= WARMUP:
            samples.append(elapsed * 1000)
        if follow_up:  # the DiagnosticsStatusNotification evsed was asked for
            request = json.loads(str(await peer.ws.recv()))
            await peer.answer_call(request)
    return {
        "p50_ms": percentile(samples, 0.5),
        "p99_ms": percentile(samples, 0.99),
        "mean_ms": sum(samples) / len(samples),
        "charger_calls_inside_timing": interleaved,
    }


async def measure(peer_kind: str, calls: int) -> dict[str, Any]:
    from websockets.asyncio.server import ServerConnection, serve

    ready: asyncio.Future[ServerConnection] = asyncio.get_running_loop().create_future()
    finished = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        ready.set_result(ws)
        await finished.wait()

    async with serve(
        handler, "127.0.0.1", 0, subprotocols=["ocpp1.6"], compression=None, ping_interval=None
    ) as server:
        port = server.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}/ocpp"
        with tempfile.TemporaryDirectory() as tmp:
            if peer_kind == "echo":
                argv = [sys.executable, "-c", ECHO_CLIENT, url + "/BENCH"]
            else:
                config = daemon_config(
                    Path(tmp),
                    url,
                    evses=1,
                    ocpp="ConnectionTimeOut = 86400\nHeartbeatInterval = 86400",
                )
                argv = [sys.executable, "-m", "service.main", "--config", str(config)]
            env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
            process = await asyncio.create_subprocess_exec(*argv, cwd=REPO, env=env)
            try:
                ws = await asyncio.wait_for(ready, 30)
                peer = Peer(ws)
                if peer_kind == "evsed":
                    await peer.drain()  # BootNotification, StatusNotifications
                    busy = await peer.call(
                        "busy", "RemoteStartTransaction", {"connectorId": 1, "idTag": "BENCH-HOLD"}
                    )
                    if '"Accepted"' not in busy:
                        raise RuntimeError(f"could not occupy connector 1: {busy}")
                    await peer.drain()  # Authorize, StatusNotification(Preparing)
                result: dict[str, Any] = {}
                for probe in PROBES:
                    result[probe] = await measure_probe(peer, probe, calls, peer_kind == "evsed")
                result["rss_kib"] = rss_kib(process.pid)
            finally:
                finished.set()
                process.terminate()
                await process.wait()
    return result


async def run(calls: int, runs: int) -> dict[str, Any]:
    results: dict[str, list[dict[str, Any]]] = {"echo": [], "evsed": []}
    for _ in range(runs):
        for peer in ("echo", "evsed"):  # interleaved, so drift hits both alike
            results[peer].append(await measure(peer, calls))
    report: dict[str, Any] = {
        "calls_per_probe": calls,
        "warmup_calls": WARMUP,
        "runs": runs,
        "load_before": os.getloadavg(),
    }
    for probe in PROBES:
        entry: dict[str, Any] = {"action": PROBES[probe][0], "payload": PROBES[probe][1]}
        for peer in ("echo", "evsed"):
            entry[peer] = {
                key: spread([r[probe][key] for r in results[peer]])
                for key in ("p50_ms", "p99_ms", "mean_ms")
            }
        entry["ratio_p50"] = entry["evsed"]["p50_ms"]["median"] / entry["echo"]["p50_ms"]["median"]
        entry["ratio_p99"] = entry["evsed"]["p99_ms"]["median"] / entry["echo"]["p99_ms"]["median"]
        report[probe] = entry
    report["rss_kib"] = {peer: spread([r["rss_kib"] for r in results[peer]]) for peer in results}
    report["runs_raw"] = results
    return report


def summary(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, value, floor / ratio) rows for the Markdown table."""
    rows = []
    for probe in PROBES:
        entry = report[probe]
        for q in ("p50", "p99"):
            rows.append(
                (
                    f"round trip {entry['action']} {q}",
                    fmt_spread(entry["evsed"][f"{q}_ms"], " ms"),
                    f"echo {entry['echo'][f'{q}_ms']['median']:.3f} ms, "
                    f"{entry[f'ratio_{q}']:.2f}x floor",
                )
            )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.roundtrip")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="500 calls, 2 runs")
    args = parser.parse_args(argv)
    calls, runs = (500, 2) if args.quick else (args.calls, args.runs)
    report = asyncio.run(run(calls, runs))
    report["quick"] = args.quick
    path = write_result(NAME, report, argv)
    for row in summary(report):
        print(" | ".join(row))
    print(f"-> {path.relative_to(REPO)}")
    return report


if __name__ == "__main__":
    main()
