"""The fuzz part: the OCPP engine in-process, the serial parsers, and the D-Bus methods of a
running daemon. Sizes: `frames` OCPP frames, frames / 5 inputs per serial parser (at least
2,000), frames / 20 D-Bus calls (at least 300, at most 5,000)."""

from __future__ import annotations

import time
from typing import Any

from reliability import fuzz_dbus, fuzz_ocpp, fuzz_serial


async def run(frames: int, *, seed: int, log: Any = print) -> dict[str, Any]:
    started = time.monotonic()
    ocpp = await fuzz_ocpp.run(frames, seed=seed, log=log)
    log(f"fuzz ocpp: {'OK' if ocpp['ok'] else 'FAILED'} ({ocpp['duration_s']} s)")
    per_parser = max(2000, frames // 5)
    serial = fuzz_serial.run(per_parser, seed=seed)
    serial_ok = all(v["unexpected"] == 0 and v["property_failures"] == 0 for v in serial.values())
    log(f"fuzz serial: {'OK' if serial_ok else 'FAILED'}")
    dbus = await fuzz_dbus.run(min(5000, max(300, frames // 20)), seed=seed, log=log)
    log(f"fuzz dbus: {'OK' if dbus['ok'] else 'FAILED'} ({dbus['duration_s']} s)")
    return {
        "ok": ocpp["ok"] and serial_ok and dbus["ok"],
        "seed": seed,
        "duration_s": round(time.monotonic() - started, 1),
        "ocpp": ocpp,
        "serial": serial,
        "dbus": dbus,
    }
