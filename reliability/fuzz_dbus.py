"""Fuzzing the daemon's D-Bus methods over a real (private) bus.

A running evsed (two simulated EVSEs, the test CSMS) gets a few thousand method calls on
org.evsed.Station1, Evse1 and Simulator1 with random strings, integers, doubles and booleans —
and now and then the wrong signature. Every call must return, or fail with a named
`org.evsed.Error.*` (or the bus library's `org.freedesktop.DBus.Error.InvalidArgs` for a wrong
signature); `org.evsed.Error.Failed` with the generic "internal error" message means an
exception escaped the daemon's code and is counted as a finding. The daemon must stay up,
still answer at the end, and stop cleanly.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reliability.common import (
    EVSE_IFACE,
    SIM_IFACE,
    SIM_PATH,
    STATION_IFACE,
    STATION_PATH,
    Daemon,
    DbusClient,
    DbusError,
    evse_path,
    private_bus,
    wait_dbus,
    write_config,
)
from testcsms.server import TestCsms

GENERIC = "internal error in evsed"
KEYS = (
    "HeartbeatInterval",
    "MeterValueSampleInterval",
    "MeterValuesSampledData",
    "ConnectionTimeOut",
    "LocalAuthorizeOffline",
    "NumberOfConnectors",
    "WebSocketPingInterval",
    "GetConfigurationMaxKeys",
    "StopTxnSampledData",
    "ClockAlignedDataInterval",
    "MinimumStatusDuration",
    "UnknownKeyX",
)


def _string(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.2:
        return rng.choice(KEYS)
    if roll < 0.35:
        return rng.choice(
            [
                "",
                " ",
                "1",
                "-1",
                "0",
                "true",
                "FALSE",
                "1e3",
                "99999999999999999999",
                "Energy.Active.Import.Register,Foo",
                "Accepted",
                "com.acme",
            ]
        )
    if roll < 0.5:
        return "x" * rng.choice([20, 21, 255, 256, 500, 501, 4096, 100_000])
    alphabet = "abcXYZ019 _-.,:;/\\\"'{}[]äöü€☃😀\u202e\t\n"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))


def _uint(rng: random.Random) -> int:
    return rng.choice([0, 1, 2, 3, 255, 2**31 - 1, 2**31, 2**32 - 1, rng.getrandbits(32)])


def _double(rng: random.Random) -> float:
    return rng.choice(
        [
            float("nan"),
            float("inf"),
            -float("inf"),
            -1.0,
            0.0,
            5e-324,
            6.0,
            16.0,
            32.0,
            80.0,
            1e308,
            rng.uniform(-1e6, 1e6),
        ]
    )


def _evse_path(rng: random.Random) -> str:
    return evse_path(rng.choice([1, 1, 2, 2, 0, 3]))


Method = tuple[Callable[[random.Random], str], str, str, str, Callable[[random.Random], list[Any]]]

METHODS: list[Method] = [
    (lambda r: STATION_PATH, STATION_IFACE, "PresentToken", "us", lambda r: [_uint(r), _string(r)]),
    (
        lambda r: STATION_PATH,
        STATION_IFACE,
        "DataTransfer",
        "sss",
        lambda r: [_string(r), _string(r), _string(r)],
    ),
    (lambda r: STATION_PATH, STATION_IFACE, "RegisterVendor", "s", lambda r: [_string(r)]),
    (lambda r: STATION_PATH, STATION_IFACE, "UnregisterVendor", "s", lambda r: [_string(r)]),
    (
        lambda r: STATION_PATH,
        STATION_IFACE,
        "AnswerDataTransfer",
        "sss",
        lambda r: [_string(r), _string(r), _string(r)],
    ),
    (
        lambda r: STATION_PATH,
        STATION_IFACE,
        "GetConfiguration",
        "as",
        lambda r: [[_string(r) for _ in range(r.choice([0, 1, 3, 60]))]],
    ),
    (
        lambda r: STATION_PATH,
        STATION_IFACE,
        "ChangeConfiguration",
        "ss",
        lambda r: [_string(r), _string(r)],
    ),
    (lambda r: STATION_PATH, STATION_IFACE, "RecentFrames", "u", lambda r: [_uint(r)]),
    (_evse_path, EVSE_IFACE, "StartSession", "s", lambda r: [_string(r)]),
    (_evse_path, EVSE_IFACE, "StopSession", "", lambda r: []),
    (_evse_path, EVSE_IFACE, "SetAvailability", "b", lambda r: [r.random() < 0.5]),
    (lambda r: SIM_PATH, SIM_IFACE, "Plug", "u", lambda r: [_uint(r)]),
    (lambda r: SIM_PATH, SIM_IFACE, "Unplug", "u", lambda r: [_uint(r)]),
    (lambda r: SIM_PATH, SIM_IFACE, "SetEvReady", "ub", lambda r: [_uint(r), r.random() < 0.5]),
    (lambda r: SIM_PATH, SIM_IFACE, "SetEvMaxCurrent", "ud", lambda r: [_uint(r), _double(r)]),
    (lambda r: SIM_PATH, SIM_IFACE, "PresentRfid", "us", lambda r: [_uint(r), _string(r)]),
    (lambda r: SIM_PATH, SIM_IFACE, "RaiseFault", "us", lambda r: [_uint(r), _string(r)]),
    (lambda r: SIM_PATH, SIM_IFACE, "ClearFault", "u", lambda r: [_uint(r)]),
    (lambda r: SIM_PATH, SIM_IFACE, "WebsocketDisconnect", "", lambda r: []),
    (lambda r: SIM_PATH, SIM_IFACE, "WebsocketConnect", "", lambda r: []),
]
WRONG = {
    "u": ("s", ["1"]),
    "s": ("u", [1]),
    "b": ("s", ["true"]),
    "d": ("s", ["1.0"]),
    "as": ("s", ["x"]),
    "": ("s", ["extra"]),
    "ss": ("u", [1]),
    "sss": ("ss", ["a", "b"]),
    "us": ("su", ["1", 1]),
    "ub": ("uu", [1, 1]),
    "ud": ("us", [1, "x"]),
}
BUS_LEVEL_OK = {
    "org.freedesktop.DBus.Error.InvalidArgs",  # wrong signature, refused by sdbus
    "org.freedesktop.DBus.Error.UnknownObject",  # /org/evsed/Evse/0 and /3 do not exist
    "org.freedesktop.DBus.Error.UnknownMethod",
}


async def run(calls: int, *, seed: int, log: Any = print) -> dict[str, Any]:
    rng = random.Random(f"{seed}-dbus")
    outcomes: Counter[str] = Counter()
    by_method: Counter[str] = Counter()
    findings: list[str] = []
    unnamed = generic = client_rejected = 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="evrel-dbus-") as tmp, private_bus() as address:
        async with TestCsms(heartbeat_interval=60) as csms:
            config = write_config(Path(tmp), csms.url, dbus_address=address)
            daemon = Daemon(config)
            client = DbusClient(address)
            try:
                await daemon.start()
                await daemon.wait_ready(60)
                await wait_dbus(client, 20)
                await csms.wait_for("StatusNotification", timeout=20)
                for i in range(calls):
                    path_of, iface, member, signature, args_of = rng.choice(METHODS)
                    if member == "WebsocketDisconnect" and rng.random() < 0.8:
                        continue  # keep the link up most of the time
                    path, args = path_of(rng), args_of(rng)
                    if rng.random() < 0.08:
                        signature, args = WRONG[signature]
                    by_method[member] += 1
                    try:
                        await client.call(path, iface, member, signature, *args, timeout=15)
                        outcomes["returned"] += 1
                    except DbusError as exc:
                        name = exc.name
                        if name.startswith("org.evsed.Error."):
                            outcomes[name.removeprefix("org.evsed.Error.")] += 1
                            if name == "org.evsed.Error.Failed" and GENERIC in exc.message:
                                generic += 1
                                if len(findings) < 20:
                                    findings.append(f"{member}{tuple(args)!r:.200}: generic Failed")
                        elif name in BUS_LEVEL_OK:
                            outcomes[name] += 1
                        elif "append" in exc.message.lower() or name in (
                            "TypeError",
                            "ValueError",
                            "SdBusLibraryError",
                        ):
                            client_rejected += 1  # our own library refused to build it
                        else:
                            unnamed += 1
                            outcomes[name] += 1
                            if len(findings) < 20:
                                findings.append(f"{member}{tuple(args)!r:.200}: {exc!s:.200}")
                    except TimeoutError:
                        unnamed += 1
                        outcomes["no answer in 15 s"] += 1
                        findings.append(f"{member}{tuple(args)!r:.200}: no answer")
                    if not daemon.alive:
                        findings.append(f"daemon died after {member}: {daemon.tail_text(20)}")
                        break
                    if (i + 1) % 1000 == 0:
                        log(f"fuzz dbus: {i + 1}/{calls} calls")
                with contextlib.suppress(DbusError, TimeoutError):
                    await client.call(SIM_PATH, SIM_IFACE, "WebsocketConnect", timeout=10)
                alive = daemon.alive
                answers = False
                if alive:
                    keys = await client.call(
                        STATION_PATH, STATION_IFACE, "GetConfiguration", "as", [], timeout=10
                    )
                    answers = bool(keys)
                exit_code = await daemon.stop()
            finally:
                if daemon.alive:
                    await daemon.kill9()
                client.close()
    ok = (
        alive
        and answers
        and exit_code == 0
        and unnamed == 0
        and generic == 0
        and daemon.log.counts["traceback"] == 0
    )
    return {
        "ok": ok,
        "calls": sum(by_method.values()),
        "by_method": dict(by_method.most_common()),
        "outcomes": dict(outcomes.most_common()),
        "unnamed_errors": unnamed,
        "generic_failures": generic,
        "client_rejected": client_rejected,
        "daemon_alive": alive,
        "answers_at_end": answers,
        "exit_code": exit_code,
        "daemon_log": daemon.log.as_dict(),
        "findings": findings,
        "duration_s": round(time.monotonic() - started, 1),
    }
