"""The Markdown summary of reliability reports (one table row per part)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _delivery(d: dict[str, Any]) -> tuple[str, str]:
    lost = d.get("lost", 0)
    dup = d.get("duplicates", 0)
    other = (
        d.get("order_violations", 0)
        + d.get("bad_transaction_ids", 0)
        + d.get("never_stopped", 0)
        + d.get("content_changed", 0)
    )
    text = (
        f"{d.get('transactions', 0)} transactions, "
        f"{d.get('distinct_transaction_messages', 0)} transaction messages "
        f"({d.get('resends', 0)} same-id resends)"
    )
    return text, f"{lost} lost, {dup} duplicated, {other} out of order / bad id / unstopped"


def _row(r: dict[str, Any]) -> list[str]:
    part = r["part"]
    verdict = "**pass**" if r.get("ok") else "**FAIL**"
    if part == "crash":
        text, losses = _delivery(r["delivery"])
        ran = (
            f"{r['kills']} `kill -9`s ({r['duration_s']:.0f} s); "
            f"{r['integrity_checks']} integrity checks, "
            f"{len(r['integrity_failures'])} failed, "
            f"{len(r['databases_moved_aside'])} databases moved aside"
        )
        return ["crash consistency", ran, text, losses, verdict]
    if part == "network":
        text, losses = _delivery(r["delivery"])
        counts = r["faults"]
        kinds = ("drop", "close", "stall", "delay", "cut", "blackhole", "refuse")
        faults = sum(counts.get(k, 0) for k in kinds)
        conv = "converged" if r["statuses_converged"] else "NOT converged"
        ran = (
            f"{r['fault_seconds']:.0f} s of faults through the proxy: {faults} faults "
            f"({', '.join(f'{k} {counts[k]}' for k in kinds if counts.get(k))}; "
            f"{counts.get('cut-up', 0) + counts.get('cut-down', 0)} frames cut mid-way, "
            f"{counts.get('refused-connection', 0)} connections refused, "
            f"{counts.get('blackholed-connection', 0)} blackholed); "
            f"{r['connections']} websocket connections; statuses {conv}"
        )
        if r.get("nftables"):
            nft = r["nftables"]
            ran += f"; nftables: {nft.get('summary', nft.get('skipped', ''))}"
        return ["network faults", ran, text, losses, verdict]
    if part == "fuzz":
        o = r["ocpp"]
        s = r["serial"]
        d = r["dbus"]
        ran = (
            f"OCPP engine: {o['frames']:,} frames ({o['calls']:,} CALLs answered: "
            f"{o['callresults']:,} CALLRESULT, {o['callerrors']:,} CALLERROR; "
            f"{o['invalid_replies']} invalid replies, {o['internal_errors']} InternalError, "
            f"{o['exceptions']} exceptions); serial parsers: "
            + ", ".join(f"{k} {v['inputs']:,}" for k, v in s.items())
            + f" ({sum(v['unexpected'] for v in s.values())} unexpected exceptions); "
            f"D-Bus: {d['calls']:,} calls ({d['unnamed_errors']} without an org.evsed error, "
            f"{d['generic_failures']} generic Failed, "
            f"daemon {'up' if d['daemon_alive'] else 'DOWN'})"
        )
        total = o["frames"] + sum(v["inputs"] for v in s.values()) + d["calls"]
        return ["fuzzing", ran, f"{total:,} inputs", "—", verdict]
    if part == "soak":
        text, losses = _delivery(r["delivery"])
        m = r["metrics"]

        def span(name: str, unit: str, scale: float = 1.0) -> str:
            x = m[name]
            flat = "flat" if x["flat"] else "GROWING"
            if not r.get("flatness_judged", True):
                flat += " (not judged: short run)"
            return (
                f"{name} {x['start'] / scale:.1f}→{x['end'] / scale:.1f} "
                f"(max {x['max'] / scale:.1f}) {unit}, {x['slope_per_hour'] / scale:+.2f} {unit}/h "
                f"{flat}"
            )

        ran = (
            f"{r['duration_s'] / 60:.0f} min, {r['sessions']} sessions on 2 EVSEs, "
            f"{len(r['samples'])} samples: "
            + "; ".join(
                [
                    span("rss", "MiB", 1024 * 1024),
                    span("fds", "fds"),
                    span("db", "MiB", 1024 * 1024),
                ]
            )
        )
        return ["soak", ran, text, losses, verdict]
    return [part, "", "", "", verdict]


def markdown(reports: Sequence[dict[str, Any]]) -> str:
    if not reports:
        return "(no reliability reports)"
    first = reports[0]["environment"]
    head = (
        f"Reliability harness (`python -m reliability`), {first['date_utc'][:10]}, "
        f"{first['cpus']} cores, Python {first['python']}:\n\n"
        "| part | what ran | exercised | messages lost / duplicated | result |\n"
        "|---|---|---|---|---|\n"
    )
    rows = ["| " + " | ".join(_row(r)) + " |" for r in reports]
    return head + "\n".join(rows) + "\n"
