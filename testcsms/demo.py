"""The README demo: a whole charging session, as it happens, on loopback.

    python -m testcsms.demo [--state DIR] [--version ocpp1.6]

It starts a private dbus-daemon, the project's test CSMS on a free port, and a real `evsed`
process with etc/evsed/simulation.toml (a drop-in points state, logs and the bus into DIR,
default ./demo-state). Then it plays the driver and the EV through evsed's D-Bus simulator
interface: plug in, present a card, charge, unplug; then a CSMS-started session on EVSE 2,
stopped by the CSMS. Every OCPP frame is printed as the CSMS sees it, and the EVSE's status,
power and energy as evsed reports them over D-Bus. It stops by itself with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from testcsms.__main__ import format_event
from testcsms.server import Event, Received, TestCsms

REPO = Path(__file__).resolve().parents[1]
BUS_CONF = Path(__file__).with_name("demo-bus.conf")
CP = "SIM-0001"


def say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def show(event: Event) -> None:
    if (
        isinstance(event, Received)
        and event.message_type == 3
        and event.action in ("StatusNotification", "MeterValues", "Heartbeat")
    ):
        return  # their answers are empty acknowledgements: keep the output readable
    print(f"    csms | {format_event(event)}", flush=True)


def prepare(state: Path, url: str, version: str, bus: str) -> Path:
    etc = state / "etc"
    if state.exists():
        shutil.rmtree(state)
    (etc / "conf.d").mkdir(parents=True)
    config = etc / "evsed.toml"
    shutil.copyfile(REPO / "etc" / "evsed" / "simulation.toml", config)
    (etc / "conf.d" / "50-demo.toml").write_text(
        f"""# written by the demo
[csms]
url = "{url}"
ocpp_versions = ["{version}"]
call_timeout_s = 5
backoff_min_s = 0.5
backoff_max_s = 2.0

[paths]
state_directory = "{(state / "lib").resolve()}"
message_log_directory = "{(state / "log").resolve()}"

[logging]
level = "warning"

[dbus]
bus = "{bus}"
meter_poll_interval_s = 0.5

[ocpp]
MeterValueSampleInterval = 3
""",
        encoding="utf-8",
    )
    return config


class Bus:
    def __init__(self, address: str) -> None:
        self.address = address

    async def run(self, *args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            "busctl",
            f"--address={self.address}",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"busctl {' '.join(args)}: {err.decode().strip()}")
        return out.decode().strip()

    async def sim(self, method: str, signature: str = "", *args: str) -> None:
        call = ["call", "org.evsed", "/org/evsed/Simulator", "org.evsed.Simulator1", method]
        await self.run(*(call + ([signature, *args] if signature else [])))

    async def evse(self, evse_id: int, name: str) -> str:
        text = await self.run(
            "get-property", "org.evsed", f"/org/evsed/Evse/{evse_id}", "org.evsed.Evse1", name
        )
        return text.split(" ", 1)[1].strip('"')

    async def wait_status(self, evse_id: int, status: str, timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            while await self.evse(evse_id, "Status") != status:
                await asyncio.sleep(0.2)

    async def report(self, evse_id: int) -> None:
        await asyncio.sleep(0.3)  # one meter poll, so power reflects the last change
        status = await self.evse(evse_id, "Status")
        power = float(await self.evse(evse_id, "PowerW"))
        energy = float(await self.evse(evse_id, "SessionEnergyWh"))
        offered = float(await self.evse(evse_id, "OfferedCurrentA"))
        print(
            f"  evse {evse_id} | {status:<13} offered {offered:4.1f} A   "
            f"power {power / 1000:5.2f} kW   session energy {energy:6.1f} Wh",
            flush=True,
        )


def start_bus() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        ["dbus-daemon", f"--config-file={BUS_CONF}", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    address = process.stdout.readline().strip()
    if not address:
        process.kill()
        raise RuntimeError("dbus-daemon did not start")
    return process, address


async def run(state: Path, version: str) -> int:
    bus_process, address = start_bus()
    bus = Bus(address)
    daemon: asyncio.subprocess.Process | None = None
    try:
        async with TestCsms(heartbeat_interval=60, subprotocols=(version,)) as csms:
            csms.on_event = show
            config = prepare(state, csms.url, version, address)
            say(f"starting evsed --config {config}")
            env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
            daemon = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "service.main", "--config", str(config), cwd=REPO, env=env
            )
            await csms.wait_for("StatusNotification", timeout=20)
            await bus.wait_status(1, "Available")
            await bus.report(1)

            say("the driver plugs the EV into EVSE 1")
            await bus.sim("Plug", "u", "1")
            await bus.wait_status(1, "Preparing")
            await bus.report(1)

            say("the driver presents card DEMO-CARD-1 at EVSE 1")
            await bus.sim("PresentRfid", "us", "1", "DEMO-CARD-1")
            await csms.wait_for("StartTransaction", timeout=20)
            await bus.sim("SetEvReady", "ub", "1", "true")
            await bus.wait_status(1, "Charging")

            say("charging: evsed sends MeterValues every 3 s")
            for _ in range(8):
                await asyncio.sleep(1)
                await bus.report(1)

            say("the EV is full and the driver unplugs")
            await bus.sim("SetEvReady", "ub", "1", "false")
            await bus.wait_status(1, "SuspendedEV")
            await bus.report(1)
            await bus.sim("Unplug", "u", "1")
            await csms.wait_for("StopTransaction", timeout=20)
            await bus.wait_status(1, "Available")
            await bus.report(1)

            say("the CSMS starts a session on EVSE 2 (RemoteStartTransaction) and stops it")
            await bus.sim("Plug", "u", "2")
            await bus.sim("SetEvReady", "ub", "2", "true")
            await csms.call(CP, "RemoteStartTransaction", {"idTag": "APP-USER-7", "connectorId": 2})
            [start] = await csms.wait_for(
                lambda r: (
                    r.direction == "in"
                    and r.action == "StartTransaction"
                    and r.message_type == 2
                    and r.payload["connectorId"] == 2
                ),
                timeout=20,
            )
            await bus.wait_status(2, "Charging")
            for _ in range(3):
                await asyncio.sleep(1)
                await bus.report(2)
            result = [
                r
                for r in csms.received
                if r.direction == "out" and r.message_type == 3 and r.unique_id == start.unique_id
            ]
            transaction_id = result[0].payload["transactionId"]
            await csms.call(CP, "RemoteStopTransaction", {"transactionId": transaction_id})
            await bus.wait_status(2, "Finishing")
            await bus.report(2)
            await bus.sim("Unplug", "u", "2")
            await bus.wait_status(2, "Available")

            say("SIGTERM: evsed stops cleanly")
            daemon.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(daemon.wait(), 20)
            await asyncio.sleep(0.2)
            say(f"evsed exited with status {code}; frame log: {state / 'log' / 'ocpp.log'}")
            return code
    finally:
        if daemon is not None and daemon.returncode is None:
            daemon.kill()
            await daemon.wait()
        bus_process.terminate()
        bus_process.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testcsms.demo")
    parser.add_argument("--state", type=Path, default=Path("demo-state"))
    parser.add_argument("--version", choices=("ocpp1.6",), default="ocpp1.6")
    args = parser.parse_args(argv)
    return asyncio.run(run(args.state, args.version))


if __name__ == "__main__":
    sys.exit(main())
