"""Command line of the test CSMS: run it standalone and print one line per frame and connection.

    python -m testcsms --host 127.0.0.1 --port 9000 [--boot-status Accepted]
                       [--heartbeat-interval N] [--duration S] [--basic-auth ID:PASSWORD]

The first line names the URL (useful with ``--port 0``). It stops on SIGINT/SIGTERM or after
``--duration`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import ssl
import sys
from datetime import datetime
from typing import Any

from testcsms.server import SUPPORTED_SUBPROTOCOLS, ConnectionInfo, Event, Received, TestCsms


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def format_event(event: Event) -> str:
    """One readable line (without time stamp) for a recorded event."""
    if isinstance(event, Received):
        arrow = "->" if event.direction == "in" else "<-"
        head = f"{event.charge_point_id} {arrow}"
        action = event.action or f"[{event.unique_id}]"
        if event.message_type == 2:
            return f"{head} {action} {_json(event.payload)}"
        if event.message_type == 3:
            return f"{head} {action} CALLRESULT {_json(event.payload)}"
        if event.message_type == 4:
            p = event.payload
            return (
                f"{head} {action} CALLERROR {p['errorCode']} "
                f"{_json(p['errorDescription'])} {_json(p['errorDetails'])}"
            )
        return f"{head} MALFORMED {event.raw!r}"
    if isinstance(event, ConnectionInfo):
        if event.closed is None:
            return (
                f"{event.charge_point_id} connected from {event.remote} "
                f"({event.subprotocol or 'no common subprotocol'})"
            )
        return f"{event.charge_point_id} disconnected (code {event.close_code})"
    return f"rejected {event.path}: HTTP {event.status}"


def _print_event(event: Event) -> None:
    stamp = datetime.now().strftime("%H:%M:%S.%f")[:-3]
    print(f"{stamp} {format_event(event)}", flush=True)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m testcsms", description="OCPP 1.6J / 2.0.1 test CSMS"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000, help="0 picks a free port")
    parser.add_argument(
        "--boot-status", choices=("Accepted", "Pending", "Rejected"), default="Accepted"
    )
    parser.add_argument("--heartbeat-interval", type=int, default=300, metavar="S")
    parser.add_argument(
        "--boot-interval", type=int, default=10, metavar="S", help="interval when not Accepted"
    )
    parser.add_argument(
        "--subprotocol",
        action="append",
        choices=SUPPORTED_SUBPROTOCOLS,
        help="offer only these, in this order of preference (repeatable)",
    )
    parser.add_argument(
        "--basic-auth",
        action="append",
        metavar="ID:PASSWORD",
        help="require HTTP Basic auth; repeat for several charge points",
    )
    parser.add_argument("--tls-cert", help="serve wss:// with this PEM certificate chain")
    parser.add_argument("--tls-key", help="private key of --tls-cert")
    parser.add_argument("--tls-client-ca", help="require client certificates from this CA")
    parser.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    args = parser.parse_args(argv)
    if args.basic_auth:
        for item in args.basic_auth:
            if ":" not in item:
                parser.error(f"--basic-auth {item!r}: expected ID:PASSWORD")
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        parser.error("--tls-client-ca needs --tls-cert")
    return args


def _ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.tls_cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.tls_cert, args.tls_key)
    if args.tls_client_ca:
        context.load_verify_locations(args.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def _run(args: argparse.Namespace) -> None:
    basic_auth = None
    if args.basic_auth:
        basic_auth = dict(item.split(":", 1) for item in args.basic_auth)
    csms = TestCsms(
        args.host,
        args.port,
        subprotocols=args.subprotocol or SUPPORTED_SUBPROTOCOLS,
        ssl_context=_ssl_context(args),
        basic_auth=basic_auth,
        boot_status=args.boot_status,
        heartbeat_interval=args.heartbeat_interval,
        boot_interval=args.boot_interval,
    )
    csms.on_event = _print_event
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with csms:
        print(
            f"testcsms listening on {csms.url}/<charge point id> "
            f"(subprotocols: {', '.join(csms.subprotocols)})",
            flush=True,
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.duration):
                await stop.wait()
    print("testcsms stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        asyncio.run(_run(args))
    except OSError as exc:
        print(f"testcsms: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
