"""python -m reliability [crash|network|fuzz|soak|all|summary] [--quick] [--seed N] ...

Runs parts of the reliability harness (see reliability/README.md), writes one JSON report per
part under bench/results/reliability-<part>-<time>.json and prints a Markdown summary.
`summary` prints the summary of the newest full (or, with --quick, quick) report of each part.
Exit status 0 when every part that ran kept its promises, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from reliability.common import RESULTS, write_report
from reliability.report import markdown

PARTS = ("crash", "network", "fuzz", "soak")

# Full size and --quick size of each part.
SIZES: dict[str, tuple[float, float]] = {
    "crash": (200, 25),  # kills
    "network": (600, 60),  # seconds of faults
    "fuzz": (100_000, 10_000),  # OCPP frames (serial parsers and D-Bus scale with it)
    "soak": (1800, 120),  # seconds
}


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def run_part(part: str, size: float, seed: int) -> dict[str, Any]:
    if part == "crash":
        from reliability import crash

        return await crash.run(int(size), seed=seed, log=log)
    if part == "network":
        from reliability import network

        return await network.run(size, seed=seed, log=log)
    if part == "fuzz":
        from reliability import fuzz

        return await fuzz.run(int(size), seed=seed, log=log)
    if part == "soak":
        from reliability import soak

        return await soak.run(size, seed=seed, log=log)
    raise ValueError(part)


def newest_reports(quick: bool) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(RESULTS.glob("reliability-*.json")):
        data = json.loads(path.read_text())
        if data.get("quick") is quick and data.get("part") in PARTS:
            found[data["part"]] = data  # sorted by time: the newest wins
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability", description=__doc__)
    parser.add_argument("part", choices=(*PARTS, "all", "summary"), nargs="?", default="all")
    parser.add_argument("--quick", action="store_true", help="CI-sized run of each part")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: time)")
    parser.add_argument(
        "--size",
        type=float,
        default=None,
        help="override the size: kills (crash), seconds (network, soak), frames (fuzz)",
    )
    args = parser.parse_args(argv)
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so every part stops what it started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if args.part == "summary":
        reports = newest_reports(args.quick)
        print(markdown([reports[p] for p in PARTS if p in reports]))
        return 0
    parts = PARTS if args.part == "all" else (args.part,)
    seed = args.seed if args.seed is not None else int(time.time()) % 1_000_000
    reports = []
    for part in parts:
        size = args.size if args.size is not None else SIZES[part][1 if args.quick else 0]
        log(f"{part}: size {size:g}, seed {seed}")
        result = asyncio.run(run_part(part, size, seed))
        path = write_report(part, result, quick=args.quick)
        result = json.loads(Path(path).read_text())
        reports.append(result)
        where = path.relative_to(RESULTS.parents[1])
        log(f"{part}: {'OK' if result['ok'] else 'FAILED'} -> {where}")
    print(markdown(reports))
    return 0 if all(r["ok"] for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
