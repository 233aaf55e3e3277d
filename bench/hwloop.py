"""Hardware loop: unplug -> contactor-open command over a real serial line, and meter polling cost.

Unplug latency. The RAPI MCU emulator (hal.sim.rapi_mcu) runs in its own process on a pty pair;
this process runs the real driver (hal.pilot.rapi: pyserial on the pty, I/O on the asyncio loop,
GS heartbeat every second) and the real safety rules (service.station.controller
.ChargingController, fed by the pilot's on_change callback: a started, authorized transaction
with a 32 A limit). Each cycle the EV is plugged in and switches to state C, the MCU closes its
relay; then the EV is unplugged. Measured inside the emulator process, from `unplug()` (which
writes `$AT 01 ...` on the line) to the arrival of the driver's relay-open command (`$FS`, the
MCU put to sleep: the controller withdrew the offer). The station's bookkeeping around the
controller (StopTransaction, status) is not in this loop; the daemon opens the contactor
before it does any of that.

Floor: the same emulator and cycles, with a bare reader on the pty instead of the driver: it
writes `$FS` the moment it reads an `$AT` that reports state A.

Meter polling cost, CPU time per read (this process's utime + stime, so the peer's work is not
counted): the Modbus driver (hal.meter.modbus, map sdm630, 3 requests per reading) against
hal.sim.modbus_meter serving Modbus TCP from another process; a bare pymodbus client reading
the same blocks (floor); and the simulated meter of hal.sim.evse.

    python -m bench.hwloop [--cycles 200] [--runs 3] [--reads 2000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, fmt_spread, percentile, spread, write_result

NAME = "hwloop"

# ----------------------------------------------------------------------------- the MCU process

MCU_PROCESS = """
import asyncio, sys, time
sys.path.insert(0, sys.argv[2])
from bench.hwloop import mcu_main
asyncio.run(mcu_main(sys.argv[1]))
"""


async def mcu_main(path: str) -> None:
    """Child process: the emulator, driven by lines on stdin; prints one line per answer."""
    from hal.interfaces import PilotState
    from hal.sim.rapi_mcu import RapiMcuEmulator

    class TimedMcu(RapiMcuEmulator):
        opened_at: float | None = None
        armed = False

        def _command(self, line: bytes) -> None:
            at = time.perf_counter()
            super()._command(line)
            if self.armed and self.commands and self.commands[-1] in ("FS", "FD"):
                self.opened_at = at
                self.armed = False

    mcu = TimedMcu(path)
    await mcu.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def until(condition: Any, limit: float = 5.0) -> bool:
        end = time.perf_counter() + limit
        while not condition():
            if time.perf_counter() > end:
                return False
            await asyncio.sleep(0.001)
        return True

    print("ready", flush=True)
    while line := (await reader.readline()).decode().strip():
        if line == "quit":
            break
        bare = line == "cycle-bare"
        if bare:
            mcu._set_mode("enabled")  # the bare floor never sends FE (nor GS)
            mcu._settling = False
        mcu.plug()
        mcu.set_state(PilotState.C)
        if not await until(lambda: mcu.relay_closed):
            print("error relay did not close", flush=True)
            continue
        await asyncio.sleep(0.05)  # let the driver see the closed relay
        mcu.opened_at = None
        mcu.armed = True
        start = time.perf_counter()
        mcu.unplug()
        if await until(lambda: mcu.opened_at is not None):
            assert mcu.opened_at is not None
            print(f"latency {(mcu.opened_at - start) * 1000:.6f}", flush=True)
        else:
            print("error no relay-open command", flush=True)
        await asyncio.sleep(0.02)
    await mcu.close()


class McuProcess:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, path: Path) -> McuProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            MCU_PROCESS,
            str(path),
            str(REPO),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=REPO,
        )
        mcu = cls(process)
        if await mcu.line() != "ready":
            raise RuntimeError("the MCU emulator did not start")
        return mcu

    async def line(self) -> str:
        assert self.process.stdout is not None
        return (await asyncio.wait_for(self.process.stdout.readline(), 30)).decode().strip()

    async def cycle(self, bare: bool) -> float | None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"cycle-bare\n" if bare else b"cycle\n")
        answer = await self.line()
        return float(answer.split()[1]) if answer.startswith("latency") else None

    async def stop(self) -> None:
        assert self.process.stdin is not None
        with contextlib.suppress(Exception):
            self.process.stdin.write(b"quit\n")
            await asyncio.wait_for(self.process.wait(), 10)
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def driver_side(port: Path) -> Any:
    """The RAPI driver and the charging controller on this loop; returns a closer."""
    from hal.interfaces import EvseHardware, PilotState
    from hal.pilot.rapi import build_contactor, build_pilot
    from hal.sim.evse import SimulatedEvse
    from service.config import Evse, Hardware
    from service.station.controller import ChargingController, PowerInputs

    options = {"port": str(port)}
    evse = Evse(id=1, pilot=Hardware("rapi", options), contactor=Hardware("rapi", options))
    shared: dict[str, object] = {}
    pilot = build_pilot(evse, evse.pilot, shared)
    contactor = build_contactor(evse, evse.contactor, shared)
    placeholder = SimulatedEvse(evse.connectors).hardware  # meter and reader: not in this loop
    hardware = EvseHardware(
        meter=placeholder.meter,
        pilot=pilot,
        contactor=contactor,
        token_reader=placeholder.token_reader,
    )
    controller = ChargingController(hardware, time.monotonic)

    def apply(state: PilotState) -> None:
        controller.apply(
            PowerInputs(
                pilot=state,
                transaction=True,
                authorized=True,
                faulted=False,
                emergency_stop=False,
                limit_a=32.0,
                cable_max_a=pilot.cable_max_current_a,
            ),
            cause_time=time.monotonic(),
        )

    pilot.on_change(apply)
    await pilot.start()
    await contactor.start()
    apply(pilot.state)

    async def close() -> None:
        await contactor.close()
        await pilot.close()

    return close


async def bare_side(port: Path) -> Any:
    """The floor: write $FS as soon as an $AT reporting state A (01) is read."""
    import tty

    from hal.pilot.rapi_protocol import encode_command

    fd = os.open(os.path.realpath(port), os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd)
    loop = asyncio.get_running_loop()
    buffer = bytearray()
    sleep = encode_command("FS")

    def readable() -> None:
        try:
            buffer.extend(os.read(fd, 1024))
        except BlockingIOError:
            return
        while b"\r" in buffer:
            line, _, rest = bytes(buffer).partition(b"\r")
            buffer[:] = rest
            if line.startswith(b"$AT 01"):
                os.write(fd, sleep)

    loop.add_reader(fd, readable)

    async def close() -> None:
        loop.remove_reader(fd)
        os.close(fd)

    return close


async def unplug_latency(cycles: int, bare: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="evsed-hw-") as tmp:
        port = Path(tmp) / "rapi"
        mcu = await McuProcess.start(port)
        close = None
        try:
            close = await (bare_side(port) if bare else driver_side(port))
            for _ in range(5):  # warm-up
                await mcu.cycle(bare)
            samples: list[float] = []
            failures = 0
            for _ in range(cycles):
                latency = await mcu.cycle(bare)
                if latency is None:
                    failures += 1
                    if failures >= 3:
                        raise RuntimeError("the unplug cycle failed 3 times: see the emulator")
                else:
                    samples.append(latency)
        finally:
            if close is not None:
                await close()
            await mcu.stop()
    return {
        "p50_ms": percentile(samples, 0.5),
        "p99_ms": percentile(samples, 0.99),
        "max_ms": max(samples),
        "samples": len(samples),
        "failures": failures,
    }


# ----------------------------------------------------------------------------- meter polling

MODBUS_SERVER = """
import asyncio, sys
sys.path.insert(0, sys.argv[1])
from hal.sim.modbus_meter import ModbusMeterServer, SimulatedModbusMeter
async def main():
    meter = SimulatedModbusMeter("sdm630", 1, voltage_v=230.0, current_a=16.0,
                                 energy_import_wh=123456.0)
    server = ModbusMeterServer(meter)
    await server.start()
    print(server.tcp_port, flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()
    await server.stop()
asyncio.run(main())
"""


def cpu_now() -> float:
    return time.process_time()  # CLOCK_PROCESS_CPUTIME_ID: user + system, fine-grained


async def timed_reads(read: Any, count: int) -> dict[str, float]:
    for _ in range(20):  # warm-up
        await read()
    cpu0, wall0 = cpu_now(), time.perf_counter()
    for _ in range(count):
        await read()
    cpu, wall = cpu_now() - cpu0, time.perf_counter() - wall0
    return {"cpu_ms_per_read": cpu / count * 1000, "wall_ms_per_read": wall / count * 1000}


async def meter_cost(reads: int) -> dict[str, Any]:
    from pymodbus.client import AsyncModbusTcpClient

    from hal.meter.maps import Function, resolve_map
    from hal.meter.modbus import build
    from hal.sim.evse import SimulatedEvse
    from service.config import Evse, Hardware

    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        MODBUS_SERVER,
        str(REPO),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    result: dict[str, Any] = {}
    try:
        assert server.stdout is not None
        port = int((await asyncio.wait_for(server.stdout.readline(), 30)).decode())
        options = {
            "map": "sdm630",
            "transport": "tcp",
            "host": "127.0.0.1",
            "tcp_port": port,
            "unit_id": 1,
        }
        evse = Evse(id=1, meter=Hardware("modbus", options))
        meter = build(evse, evse.meter, {})
        await meter.start()
        try:
            result["modbus_tcp_driver"] = await timed_reads(meter.read, reads)
        finally:
            await meter.close()
        meter_map = resolve_map("sdm630")
        client = AsyncModbusTcpClient("127.0.0.1", port=port)
        await client.connect()

        async def bare_read() -> None:
            for block in meter_map.blocks:
                read = (
                    client.read_input_registers
                    if block.function is Function.INPUT
                    else client.read_holding_registers
                )
                await read(block.address, count=block.count, device_id=1)

        try:
            result["modbus_tcp_bare_pymodbus"] = await timed_reads(bare_read, reads)
        finally:
            client.close()
        result["requests_per_reading"] = len(meter_map.blocks)
    finally:
        assert server.stdin is not None
        server.stdin.close()
        try:
            await asyncio.wait_for(server.wait(), 10)
        except TimeoutError:
            server.kill()
            await server.wait()
    sim = SimulatedEvse(Evse().connectors).hardware.meter
    result["simulated_meter"] = await timed_reads(sim.read, reads * 20)
    return result


# ----------------------------------------------------------------------------- the report


async def run(cycles: int, runs: int, reads: int) -> dict[str, Any]:
    report: dict[str, Any] = {
        "cycles_per_run": cycles,
        "runs": runs,
        "reads_per_run": reads,
        "load_before": os.getloadavg(),
    }
    raw: dict[str, list[dict[str, Any]]] = {"driver": [], "bare": []}
    for _ in range(runs):
        for kind in ("bare", "driver"):
            raw[kind].append(await unplug_latency(cycles, kind == "bare"))
    for kind, label in (("driver", "unplug_to_relay_open"), ("bare", "floor_bare_pty")):
        report[label] = {
            key: spread([r[key] for r in raw[kind]]) for key in ("p50_ms", "p99_ms", "max_ms")
        }
        report[label]["failures"] = sum(r["failures"] for r in raw[kind])
    report["unplug_to_relay_open"]["ratio_p50"] = (
        report["unplug_to_relay_open"]["p50_ms"]["median"]
        / report["floor_bare_pty"]["p50_ms"]["median"]
    )
    report["unplug_to_relay_open"]["ratio_p99"] = (
        report["unplug_to_relay_open"]["p99_ms"]["median"]
        / report["floor_bare_pty"]["p99_ms"]["median"]
    )
    meters = [await meter_cost(reads) for _ in range(runs)]
    report["meter_read"] = {
        kind: {
            key: spread([m[kind][key] for m in meters])
            for key in ("cpu_ms_per_read", "wall_ms_per_read")
        }
        for kind in ("modbus_tcp_driver", "modbus_tcp_bare_pymodbus", "simulated_meter")
    }
    report["meter_read"]["requests_per_reading"] = meters[0]["requests_per_reading"]
    report["meter_read"]["ratio_driver_to_bare_cpu"] = (
        report["meter_read"]["modbus_tcp_driver"]["cpu_ms_per_read"]["median"]
        / report["meter_read"]["modbus_tcp_bare_pymodbus"]["cpu_ms_per_read"]["median"]
    )
    report["raw"] = {"unplug": raw, "meters": meters}
    return report


def summary(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    loop = report["unplug_to_relay_open"]
    floor = report["floor_bare_pty"]
    rows = []
    for q in ("p50", "p99"):
        rows.append(
            (
                f"unplug -> relay-open command (RAPI on a pty) {q}",
                fmt_spread(loop[f"{q}_ms"], " ms", 2),
                f"bare pty reader {floor[f'{q}_ms']['median']:.2f} ms, "
                f"{loop[f'ratio_{q}']:.2f}x floor",
            )
        )
    meter = report["meter_read"]
    rows.append(
        (
            "meter read, Modbus TCP driver (CPU per read)",
            fmt_spread(meter["modbus_tcp_driver"]["cpu_ms_per_read"], " ms", 3),
            f"bare pymodbus "
            f"{meter['modbus_tcp_bare_pymodbus']['cpu_ms_per_read']['median']:.3f} ms, "
            f"{meter['ratio_driver_to_bare_cpu']:.2f}x floor "
            f"({meter['requests_per_reading']} requests)",
        )
    )
    rows.append(
        (
            "meter read, simulated meter (CPU per read)",
            fmt_spread(meter["simulated_meter"]["cpu_ms_per_read"], " ms", 4),
            "",
        )
    )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.hwloop")
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="50 cycles, 200 reads, 1 run")
    args = parser.parse_args(argv)
    cycles, runs, reads = (50, 1, 200) if args.quick else (args.cycles, args.runs, args.reads)
    report = asyncio.run(run(cycles, runs, reads))
    report["quick"] = args.quick
    path = write_result(NAME, report, argv)
    for row in summary(report):
        print(" | ".join(row))
    print(f"-> {path.relative_to(REPO)}")
    return report


if __name__ == "__main__":
    main()
