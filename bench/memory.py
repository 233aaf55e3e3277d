"""Where evsed's memory goes: import steps, the running daemon's mappings, Python allocations.

1. Import steps: one fresh interpreter imports, in order, what the daemon needs (asyncio - which
   brings ssl -, sqlite3, the websockets client, jsonschema, then all of evsed's modules, then
   the D-Bus layer) and reports VmRSS after each step. This is the floor a Python daemon built
   on these libraries cannot go below.
2. The running daemon (2 simulated EVSEs, booted against a fast CSMS, 3 s after the boot),
   with D-Bus off and on (a private dbus-daemon): VmRSS, /proc/<pid>/smaps_rollup (Rss, Pss,
   anonymous memory) and Rss per mapping (the interpreter, each shared library, [heap], anonymous
   mappings where pymalloc keeps Python objects).
3. tracemalloc over `import service.main` (+ service.dbus.server) in a fresh interpreter: the
   Python allocations it causes, grouped by top-level package.

    python -m bench.memory [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    FastCsms,
    daemon_config,
    private_bus,
    rss_kib,
    smaps_by_mapping,
    smaps_rollup,
    spread,
    start_daemon,
    write_result,
)

NAME = "memory"

STEPS = [
    ("asyncio (+ ssl, which asyncio imports)", "asyncio"),
    ("sqlite3", "sqlite3"),
    ("websockets client", "websockets.asyncio.client"),
    ("jsonschema", "jsonschema"),
    ("evsed (service.main and what it imports)", "service.main"),
    ("D-Bus layer (sdbus, service.dbus.server)", "service.dbus.server"),
]

STEP_SCRIPT = """
import gc, importlib, json, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
out = [["bare interpreter", rss(), len(sys.modules)]]
for label, module in json.loads(sys.argv[1]):
    importlib.import_module(module)
    gc.collect()
    out.append([label, rss(), len(sys.modules)])
print(json.dumps(out))
"""

TRACE_SCRIPT = """
import importlib.abc, json, sys, tracemalloc

stack = []  # [name, inclusive start, children total]
own = {}

class Measuring(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = getattr(finder, "find_spec", lambda *a: None)(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None or getattr(loader, "_measured", False):
            return spec

        def measured(module, exec_module=exec_module):
            stack.append([module.__name__, tracemalloc.get_traced_memory()[0], 0])
            try:
                exec_module(module)
            finally:
                entry = stack.pop()
                inclusive = tracemalloc.get_traced_memory()[0] - entry[1]
                own[entry[0]] = own.get(entry[0], 0) + inclusive - entry[2]
                if stack:
                    stack[-1][2] += inclusive
        try:
            loader.exec_module = measured
            loader._measured = True
        except AttributeError:
            pass
        return spec

sys.meta_path.insert(0, Measuring())
tracemalloc.start()
import service.main, service.dbus.server
total = tracemalloc.get_traced_memory()[0]
by_package = {}
for name, size in own.items():
    top = name.split(".")[0]
    if top in ("service", "hal"):
        top = ".".join(name.split(".")[:2])
    by_package[top] = by_package.get(top, 0) + size
ordered = sorted(by_package.items(), key=lambda kv: -kv[1])
print(json.dumps({"total_kib": total / 1024, "modules": len(sys.modules),
                  "top": [[k, v / 1024] for k, v in ordered[:25]]}))
"""


def import_steps() -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    done = subprocess.run(
        [sys.executable, "-c", STEP_SCRIPT, json.dumps(STEPS)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(done.stdout)
    steps = []
    previous = None
    for label, rss, modules in rows:
        steps.append(
            {
                "step": label,
                "rss_kib": rss,
                "delta_kib": 0 if previous is None else rss - previous,
                "modules": modules,
            }
        )
        previous = rss
    return steps


def traced() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", TRACE_SCRIPT], cwd=REPO, capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def running(bus: str | None) -> dict[str, Any]:
    csms = FastCsms(heartbeat_interval=3600)
    async with csms.serve():
        with tempfile.TemporaryDirectory() as tmp:
            config = daemon_config(Path(tmp), csms.url, evses=2, dbus_address=bus)
            daemon = await start_daemon(config)
            try:
                await daemon.wait_notification("READY=1")
                await csms.wait_count("BootNotification", 1)
                await asyncio.sleep(3)
                rollup = smaps_rollup(daemon.pid)
                mappings = smaps_by_mapping(daemon.pid)
                rss = rss_kib(daemon.pid)
            finally:
                await daemon.stop()
    return {
        "rss_kib": rss,
        "rollup_kib": {
            k: rollup[k]
            for k in (
                "Rss",
                "Pss",
                "Pss_Anon",
                "Pss_File",
                "Shared_Clean",
                "Private_Dirty",
                "Anonymous",
            )
            if k in rollup
        },
        "by_mapping_kib": dict(list(mappings.items())[:14]),
    }


async def run(runs: int) -> dict[str, Any]:
    report: dict[str, Any] = {"runs": runs, "load_before": os.getloadavg()}
    steps = [import_steps() for _ in range(runs)]
    report["import_steps"] = [
        {
            "step": s["step"],
            "modules": s["modules"],
            "rss_kib": spread([float(run[i]["rss_kib"]) for run in steps]),
            "delta_kib": spread([float(run[i]["delta_kib"]) for run in steps]),
        }
        for i, s in enumerate(steps[0])
    ]
    with private_bus() as bus:
        report["daemon_dbus_off"] = [await running(None) for _ in range(runs)]
        if bus is not None:
            report["daemon_dbus_on"] = [await running(bus) for _ in range(runs)]
    for key in ("daemon_dbus_off", "daemon_dbus_on"):
        if key in report:
            report[f"{key}_rss_kib"] = spread([r["rss_kib"] for r in report[key]])
    report["tracemalloc_import"] = traced()
    return report


def summary(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    floor = next(s for s in report["import_steps"] if s["step"].startswith("jsonschema"))
    floor_mib = floor["rss_kib"]["median"] / 1024
    for key, label in (("daemon_dbus_off", "D-Bus off"), ("daemon_dbus_on", "D-Bus on")):
        if f"{key}_rss_kib" in report:
            s = report[f"{key}_rss_kib"]
            rows.append(
                (
                    f"RSS after boot, 2 EVSEs idle ({label})",
                    f"{s['median'] / 1024:.1f} MiB ({s['min'] / 1024:.1f}-{s['max'] / 1024:.1f})",
                    f"libraries alone (asyncio+ssl, sqlite3, websockets, jsonschema) "
                    f"{floor_mib:.1f} MiB",
                )
            )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.memory")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 run")
    args = parser.parse_args(argv)
    report = asyncio.run(run(1 if args.quick else args.runs))
    report["quick"] = args.quick
    path = write_result(NAME, report, argv)
    for step in report["import_steps"]:
        print(
            f"  {step['rss_kib']['median'] / 1024:6.1f} MiB  "
            f"+{step['delta_kib']['median'] / 1024:5.1f}  {step['step']}"
        )
    for row in summary(report):
        print(" | ".join(row))
    print(f"-> {path.relative_to(REPO)}")
    return report


if __name__ == "__main__":
    main()
