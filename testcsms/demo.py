"""The README demo: a test CSMS and a real `evsed` process talking OCPP on loopback.

    python -m testcsms.demo [--state DIR] [--version ocpp1.6|ocpp2.0.1]

It copies etc/evsed/simulation.toml with a drop-in that points the state and message-log
directories into DIR (default ./demo-state), starts the CSMS on a free port and evsed against
it, and walks through what the runtime does: registration, heartbeat, a CSMS request, a
malformed frame answered with the right CALLERROR, a dropped link and the reconnect, then a
clean stop. Every frame is printed as the CSMS sees it. It stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
from pathlib import Path

from testcsms.__main__ import _print_event
from testcsms.server import TestCsms

REPO = Path(__file__).resolve().parents[1]


def say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def prepare(state: Path, url: str, version: str) -> Path:
    etc = state / "etc"
    (etc / "conf.d").mkdir(parents=True, exist_ok=True)
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
level = "info"
""",
        encoding="utf-8",
    )
    return config


async def run(state: Path, version: str) -> int:
    async with TestCsms(heartbeat_interval=2, subprotocols=(version,)) as csms:
        csms.on_event = _print_event
        config = prepare(state, csms.url, version)
        say(f"starting evsed --config {config} against {csms.url}")
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        daemon = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service.main", "--config", str(config), cwd=REPO, env=env
        )
        try:
            await csms.wait_for("BootNotification", timeout=15)
            say("registered; waiting for a heartbeat (the CSMS asked for one every 2 s)")
            await csms.wait_for("Heartbeat", timeout=15)
            cp = "SIM-0001"
            say("the CSMS asks for a Heartbeat with TriggerMessage")
            await csms.call(cp, "TriggerMessage", {"requestedMessage": "Heartbeat"})
            await asyncio.sleep(0.3)
            say("the CSMS sends a malformed frame and an unknown action")
            await csms.send_raw(cp, '[2, "bad-1", "TriggerMessage", {"requestedMessage": 7}]')
            await csms.send_raw(cp, '[2, "bad-2", "Teleport", {}]')
            await asyncio.sleep(0.5)
            say("the CSMS drops the link; evsed reconnects with backoff, without re-booting")
            mark = len(csms.connections)
            await csms.disconnect_all(code=1011)
            await csms.wait_for_connection(count=1, since=mark, timeout=15)
            await csms.call(cp, "TriggerMessage", {"requestedMessage": "Heartbeat"})
            await asyncio.sleep(0.3)
            say("SIGTERM: evsed closes the websocket with 1001 and exits")
            daemon.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(daemon.wait(), 15)
            await asyncio.sleep(0.2)
            say(f"evsed exited with status {code}; its frame log is {state / 'log' / 'ocpp.log'}")
            return code
        finally:
            if daemon.returncode is None:
                daemon.kill()
                await daemon.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testcsms.demo")
    parser.add_argument("--state", type=Path, default=Path("demo-state"))
    parser.add_argument("--version", choices=("ocpp1.6", "ocpp2.0.1"), default="ocpp1.6")
    args = parser.parse_args(argv)
    return asyncio.run(run(args.state, args.version))


if __name__ == "__main__":
    sys.exit(main())
