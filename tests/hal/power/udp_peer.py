"""The driver side of the cross-process test: one InfyPowerGroup in its own process.

Run as `python -m tests.hal.power.udp_peer INTERFACE CHANNEL GROUP`. It prints JSON lines on
stdout ({"ready": true}, {"fault": code, "info": info} for every fault callback, the answer to
each command) and takes commands on stdin: "output V A", "enable 0|1", "state", "quit".
"""

from __future__ import annotations

import asyncio
import json
import sys

from hal.power.infypower import build
from service.config import Evse, Hardware


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def run(interface: str, channel: str, group_number: int) -> None:
    options = {
        "interface": interface,
        "channel": channel,
        "group": group_number,
        "timeout_s": 2.0,
        "poll_interval_s": 0.2,
    }
    group = build(Evse(id=1), Hardware("infypower", dict(options)), {})
    group.on_fault(lambda code, info: emit(fault=code, info=info))
    await group.start()
    emit(ready=True)
    try:
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            words = line.split()
            if not line or words[:1] == ["quit"]:
                break
            if not words:
                continue
            if words[0] == "output":
                group.set_output(float(words[1]), float(words[2]))
                emit(ok=True)
            elif words[0] == "enable":
                group.set_enabled(words[1] == "1")
                emit(ok=True)
            elif words[0] == "state":
                reading = await group.read()
                emit(
                    present=list(group.present_addresses),
                    voltage=reading.voltage_v,
                    current=reading.current_a,
                    faults=list(reading.faults),
                    malformed=group.counters.malformed,
                )
            else:
                emit(error=words[0])
    finally:
        await group.close()
        emit(closed=True)


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1], sys.argv[2], int(sys.argv[3])))
