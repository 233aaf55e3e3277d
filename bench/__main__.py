"""Run every benchmark (`make bench`), write bench/results/*.json and print the Markdown summary.

    python -m bench [--quick] [--only roundtrip,startup,...]

Each benchmark also runs alone: `python -m bench.<name> [--quick]` (see bench/README.md). The
summary (also written to bench/results/summary.md) gives each figure as the median over
repeated runs with its min-max spread, the floor measured in the same run and the ratio to
it where a floor exists, and the target of issue 8 where there is one.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.common import RESULTS, machine, machine_line

ORDER = (
    "roundtrip",
    "startup",
    "idle",
    "offline_queue",
    "hwloop",
    "smart_charging",
    "firmware",
    "memory",
)

MB = 1_000_000


def _rt(probe: str, q: str) -> Callable[[dict[str, Any]], bool]:
    if q == "p50":
        return lambda r: bool(r[probe]["ratio_p50"] <= 2.5)
    return lambda r: bool(r[probe]["evsed"]["p99_ms"]["median"] < 0.5)


# figure label -> (target, check on that benchmark's report)
TARGETS: dict[str, tuple[str, Callable[[dict[str, Any]], bool]]] = {
    **{
        f"round trip {action} {q}": (
            "<= 2.5x echo" if q == "p50" else "< 0.5 ms",
            _rt(probe, q),
        )
        for probe, action in (
            ("get_configuration", "GetConfiguration"),
            ("trigger_message", "TriggerMessage"),
            ("remote_start", "RemoteStartTransaction"),
        )
        for q in ("p50", "p99")
    },
    **{
        f"startup exec -> BootNotification ({label})": (
            "< 400 ms",
            lambda r, v=variant: bool(r[v]["boot_ms"]["median"] < 400),  # type: ignore[misc]
        )
        for variant, label in (("dbus_off", "D-Bus off"), ("dbus_on", "D-Bus on"))
    },
    "idle RSS, 2 EVSEs charging": (
        "< 30 MB",
        lambda r: bool(r["evses_2"]["rss_end_kib"]["median"] * 1024 < 30 * MB),
    ),
    "idle RSS, 128 EVSEs charging": (
        "< 60 MB",
        lambda r: bool(r["evses_128"]["rss_end_kib"]["median"] * 1024 < 60 * MB),
    ),
    "idle CPU, 2 EVSEs charging (% of one core)": (
        "< 0.5 %",
        lambda r: bool(r["evses_2"]["cpu_pct"]["median"] < 0.5),
    ),
    "RSS after boot, 2 EVSEs idle (D-Bus off)": (
        "< 30 MB",
        lambda r: bool(r["daemon_dbus_off_rss_kib"]["median"] * 1024 < 30 * MB),
    ),
    "RSS after boot, 2 EVSEs idle (D-Bus on)": (
        "< 30 MB",
        lambda r: bool(r["daemon_dbus_on_rss_kib"]["median"] * 1024 < 30 * MB),
    ),
}


def table(rows: list[tuple[str, str, str, str, str]]) -> str:
    m = machine()
    lines = [
        f"| {time.strftime('%Y-%m-%d')}, {machine_line(m)}, kernel {m['kernel']} "
        "| median (min-max) | floor in the same run | target | met |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="short runs, for development")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(ORDER)}")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(ORDER)
    unknown = set(names) - set(ORDER)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    rows: list[tuple[str, str, str, str, str]] = []
    for name in names:
        print(f"\n=== bench.{name}", flush=True)
        module = importlib.import_module(f"bench.{name}")
        report = module.main(["--quick"] if args.quick else [])
        for figure, value, floor in module.summary(report):
            target, check = TARGETS.get(figure, ("", None))
            met = ""
            if check is not None:
                try:
                    met = "yes" if check(report) else "no"
                except KeyError:
                    met = ""
            rows.append((figure, value, floor, target, met))
    text = table(rows)
    if args.quick:
        text += "\n\n(--quick: short runs for development; the README figures come from a full run)"
    print("\n" + text)
    if names == list(ORDER):
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "summary.md").write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
