"""evsectl's command line: the argument parser, the commands, and the exit statuses.

Every error ends in one line on stderr ("evsectl: ...") and a documented exit status; nothing
here lets a traceback through.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

from evsectl.client import (
    BUS_NAME,
    DBUS_NAME,
    DBUS_PATH,
    EVSE_INTERFACE,
    EXIT_NO_DAEMON,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    STATION_INTERFACE,
    STATION_PATH,
    BusSpec,
    Client,
    CliError,
    evse_path,
)
from evsectl.render import (
    FrameDecoder,
    configuration_text,
    evse_text,
    frame_line,
    printable,
    snake_keys,
    status_text,
    to_json,
)

PROG = "evsectl"
DEFAULT_ID_TAG = "LOCAL-evsectl"
DEFAULT_TIMEOUT_S = 10.0
HISTORY_LINES = 20  # `log` without --follow
FOLLOW_HISTORY_LINES = 10  # `log --follow` shows these first, like journalctl -f
# Frames of history read (not all shown) so a RESULT shown first is named after its CALL.
HISTORY_CONTEXT = 200
BUS_CHECK_INTERVAL_S = 2.0  # `log --follow` notices a bus that went away within this
FIRMWARE_INTERFACE = "org.evsed.Firmware1"  # on STATION_PATH; absent in older daemons
# D-Bus errors that mean "this evsed has no such interface": fall back, do not fail.
_ABSENT = (".UnknownInterface", ".UnknownObject", ".UnknownProperty", ".UnknownMethod")

DESCRIPTION = """\
Control and inspect evsed, the EV charger daemon, over its D-Bus API (org.evsed).

Read commands (status, evse N status, config get, firmware status, log) accept --json;
`log --follow` then writes one JSON object per line."""

EPILOG = f"""\
examples:
  evsectl status                          the charger and every EVSE at a glance
  evsectl --json status                   the same as JSON (every D-Bus property)
  evsectl evse 1 start --id-tag 04A2B3C4  authorize a token on EVSE 1 (local start)
  evsectl evse 1 stop                     stop the session on EVSE 1 (reason Local)
  evsectl evse 2 disable                  make EVSE 2 Inoperative (after its transaction)
  evsectl config get HeartbeatInterval    one OCPP configuration key (none: all keys)
  evsectl config set HeartbeatInterval 600
  evsectl log --follow                    the OCPP exchange with the CSMS, live
  evsectl firmware status
  evsectl firmware install /var/lib/evsed/update.raucb   install a bundle (root only)
  evsectl --bus unix:path=/tmp/test-bus status
  source <(evsectl completion bash)       tab completion for this shell

exit status:
  0  success
  1  evsed refused the request (org.evsed.Error.*, or a configuration change Rejected /
     NotSupported), or the call failed (no answer within --timeout)
  2  usage error (unknown command, bad argument)
  3  evsed is not running (no owner of {BUS_NAME}) or the bus cannot be reached
  4  permission denied by the D-Bus policy (run as root or as a member of the allowed group)

The bus is the system bus unless --bus says otherwise; DBUS_SYSTEM_BUS_ADDRESS is honoured.
The D-Bus API itself is described in docs/dbus-api.md of evsed's source."""


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")


def _evse_id(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid EVSE id {text!r}: a positive integer")
    return value


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 600:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: seconds, 0 < t <= 600")
    return value


def _lines(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = -1
    if not 0 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"invalid number of lines {text!r}: 0..10000")
    return value


def _common(defaults: bool) -> Parser:
    """The global options, accepted before and after the command."""
    parent = Parser(add_help=False)
    suppress = argparse.SUPPRESS
    group = parent.add_argument_group("global options")
    group.add_argument(
        "--bus",
        metavar="BUS",
        default="system" if defaults else suppress,
        help="system (default), session, or a D-Bus address such as unix:path=/run/x",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=False if defaults else suppress,
        help="machine-readable output (JSON)",
    )
    group.add_argument(
        "--timeout",
        type=_timeout,
        metavar="SECONDS",
        default=DEFAULT_TIMEOUT_S if defaults else suppress,
        help=f"how long to wait for evsed's answer (default {DEFAULT_TIMEOUT_S:g})",
    )
    return parent


def build_parser() -> Parser:
    formatter = argparse.RawDescriptionHelpFormatter
    common = _common(defaults=False)
    parser = Parser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=formatter,
        parents=[_common(defaults=True)],
    )
    parser.add_argument("--version", action="store_true", help="print evsectl's version")
    commands = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND", parser_class=Parser
    )

    def command(name: str, help_text: str, epilog: str = "", **kwargs: Any) -> Parser:
        sub: Parser = commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=epilog,
            formatter_class=formatter,
            parents=[common],
            **kwargs,
        )
        return sub

    command(
        "status",
        "show the charger (identity, CSMS link, queue) and one row per EVSE",
        "columns: EVSE id, OCPP status, error code, availability, session (id tag), "
        "transaction id,\nactive power, energy of the session, current offered to the EV.\n\n"
        "example:\n  evsectl status\n  evsectl --json status",
    )

    evse = command(
        "evse",
        "show or control one EVSE",
        f"""\
actions:
  status                  every property of the EVSE (the default)
  start [--id-tag TAG]    authorize TAG on the EVSE as a local start; without --id-tag the
                          token is {DEFAULT_ID_TAG!r}. It is authorized like a card (Authorize to
                          the CSMS, cache, offline rules), so the CSMS must accept it; the
                          transaction starts once an EV is plugged in.
  stop                    stop the session (OCPP reason Local)
  button                  press the EVSE's start button: with authorization off (key
                          AuthEnabled false) it starts a session without a token, and a
                          second press stops it
  enable / disable        make the EVSE Operative / Inoperative (like ChangeAvailability);
                          during a transaction the change is Scheduled for its end

examples:
  evsectl evse 1
  evsectl evse 1 start --id-tag 04A2B3C4
  evsectl evse 1 stop
  evsectl evse 2 disable""",
    )
    evse.add_argument("evse_id", type=_evse_id, metavar="N", help="EVSE id (1, 2, ...)")
    actions = evse.add_subparsers(
        title="actions", dest="action", metavar="ACTION", parser_class=Parser
    )
    actions.add_parser("status", help="every property of the EVSE", parents=[common])
    start = actions.add_parser(
        "start", help="authorize a token and start a session", parents=[common]
    )
    start.add_argument(
        "--id-tag",
        metavar="TAG",
        default=DEFAULT_ID_TAG,
        help=f"the token (1-20 printable ASCII characters, 36 under OCPP 2.0.1; default "
        f"{DEFAULT_ID_TAG!r})",
    )
    actions.add_parser("stop", help="stop the session (reason Local)", parents=[common])
    actions.add_parser("button", help="press the start button", parents=[common])
    actions.add_parser("enable", help="make the EVSE Operative", parents=[common])
    actions.add_parser("disable", help="make the EVSE Inoperative", parents=[common])

    config = command(
        "config",
        "read and change OCPP configuration keys",
        """\
The keys are the charger's OCPP configuration (the ones GetConfiguration reports to the CSMS).
`set` follows the rules of OCPP ChangeConfiguration:
  Accepted        stored and in effect (exit 0)
  RebootRequired  stored; takes effect when evsed restarts (exit 0)
  Rejected        read-only key or a value the key does not accept (exit 1)
  NotSupported    unknown key (exit 1)
Changed values are kept in evsed's database, like changes made by the CSMS.

examples:
  evsectl config get
  evsectl config get HeartbeatInterval MeterValueSampleInterval
  evsectl config set MeterValuesSampledData Energy.Active.Import.Register,Power.Active.Import""",
    )
    config_actions = config.add_subparsers(
        title="actions", dest="action", metavar="ACTION", parser_class=Parser
    )
    get = config_actions.add_parser(
        "get", help="show keys (all of them without KEY)", parents=[common]
    )
    get.add_argument("keys", nargs="*", metavar="KEY", help="configuration key")
    set_ = config_actions.add_parser("set", help="change one key", parents=[common])
    set_.add_argument("key", metavar="KEY")
    set_.add_argument("value", metavar="VALUE", help='the new value as OCPP sends it ("" for none)')

    log = command(
        "log",
        "show the OCPP frames exchanged with the CSMS",
        f"""\
One line per frame: local time, direction (→ sent to the CSMS, ← received from it),
message type (CALL, RESULT, ERROR), action (a RESULT or ERROR is named after its CALL) and
the payload. Without --follow the last {HISTORY_LINES} frames evsed keeps in memory are shown
(-n); the full history is in the journal (journalctl -u evsed) and in evsed's message log
directory. With --json every frame is one JSON object per line.

examples:
  evsectl log
  evsectl log --follow
  evsectl log -f -n 0 --json | jq .""",
    )
    log.add_argument("-f", "--follow", action="store_true", help="keep printing new frames")
    log.add_argument(
        "-n",
        "--lines",
        type=_lines,
        metavar="N",
        help=f"frames of history to show first (default {HISTORY_LINES}, "
        f"{FOLLOW_HISTORY_LINES} with --follow)",
    )
    log.add_argument(
        "--raw",
        action="store_true",
        help="the frame text instead of the decoded fields (control characters escaped; "
        "with --json an exact 'frame' field)",
    )
    log.add_argument(
        "--full", action="store_true", help="do not cut long lines to the terminal's width"
    )

    firmware = command(
        "firmware",
        "firmware update state, and installing a firmware file",
        """\
actions:
  status        the running version and the update state; with a daemon that has firmware
                updates also the current update: state, progress, OCPP request id (- for a
                local install), location, installer backend and the last error
  install FILE  install a firmware bundle that is already on this charger (no download). It
                returns once evsed has taken the file; follow the install with `status`.
                Only root may install (the bus policy and evsed both check). evsed runs as
                its own user: that user must be able to read FILE (/root is not readable).

examples:
  evsectl firmware status
  evsectl --json firmware
  evsectl firmware install /var/lib/evsed/update.raucb""",
    )
    firmware_actions = firmware.add_subparsers(
        title="actions", dest="action", metavar="ACTION", parser_class=Parser
    )
    firmware_actions.add_parser("status", help="version and update state", parents=[common])
    install = firmware_actions.add_parser(
        "install", help="install a firmware file on this charger (root only)", parents=[common]
    )
    install.add_argument("file", metavar="FILE", help="the firmware bundle (a local file)")

    completion = command(
        "completion",
        "print a shell completion script",
        "examples:\n  source <(evsectl completion bash)     # in ~/.bashrc\n"
        "  source <(evsectl completion zsh)      # in ~/.zshrc",
    )
    completion.add_argument("shell", choices=("bash", "zsh"), metavar="SHELL", help="bash or zsh")
    return parser


# --------------------------------------------------------------------------- output


class Output:
    def __init__(self, stdout: TextIO, stderr: TextIO) -> None:
        self.stdout = stdout
        self.stderr = stderr

    def print(self, text: str = "") -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def json(self, value: Any) -> None:
        self.print(to_json(value))

    def note(self, text: str) -> None:
        self.stderr.write(f"{PROG}: {text}\n")
        self.stderr.flush()


# --------------------------------------------------------------------------- commands


def cmd_status(client: Client, args: argparse.Namespace, out: Output) -> int:
    station = snake_keys(client.properties(STATION_PATH, STATION_INTERFACE))
    evses = []
    for evse_id in station.get("evse_ids", []):
        evses.append(snake_keys(client.properties(evse_path(evse_id), EVSE_INTERFACE)))
    if args.json:
        out.json({"station": station, "evses": evses})
    else:
        out.print(status_text(station, evses))
    return EXIT_OK


def _evse_call(client: Client, evse_id: int, call: Callable[[], Any]) -> Any:
    """`call()`, with an unknown EVSE (no such object) reported by name."""
    try:
        return call()
    except CliError as error:
        if error.dbus_name.endswith((".UnknownObject", ".UnknownInterface")):
            try:
                ids = client.property(STATION_PATH, STATION_INTERFACE, "EvseIds")
            except CliError:
                ids = []
            known = ", ".join(str(i) for i in ids) or "none"
            raise CliError(f"no EVSE {evse_id} (this charger has EVSE {known})") from None
        raise


def cmd_evse(client: Client, args: argparse.Namespace, out: Output) -> int:
    evse_id: int = args.evse_id
    path = evse_path(evse_id)
    action = args.action or "status"
    if action == "status":
        values = _evse_call(client, evse_id, lambda: client.properties(path, EVSE_INTERFACE))
        evse = snake_keys(values)
        out.json(evse) if args.json else out.print(evse_text(evse))
        return EXIT_OK
    if action == "start":
        id_tag: str = args.id_tag
        (session_id,) = _evse_call(
            client, evse_id, lambda: client.call(path, EVSE_INTERFACE, "StartSession", "s", id_tag)
        )
        if args.json:
            out.json({"evse": evse_id, "session_id": session_id, "id_tag": id_tag})
        else:
            out.print(
                f"EVSE {evse_id}: session {session_id} for id tag {printable(id_tag)} "
                "(authorization and the EV decide when charging starts)"
            )
        return EXIT_OK
    if action == "button":
        (pressed,) = _evse_call(
            client, evse_id, lambda: client.call(path, EVSE_INTERFACE, "PressStartButton")
        )
        if args.json:
            out.json({"evse": evse_id, "session_id": pressed})
        else:
            out.print(f"EVSE {evse_id}: start button pressed (session {pressed})")
        return EXIT_OK
    if action == "stop":
        _evse_call(client, evse_id, lambda: client.call(path, EVSE_INTERFACE, "StopSession"))
        if args.json:
            out.json({"evse": evse_id, "stopped": True})
        else:
            out.print(f"EVSE {evse_id}: session stopped")
        return EXIT_OK
    operative = action == "enable"
    (result,) = _evse_call(
        client,
        evse_id,
        lambda: client.call(path, EVSE_INTERFACE, "SetAvailability", "b", operative),
    )
    wanted = "Operative" if operative else "Inoperative"
    if args.json:
        out.json({"evse": evse_id, "availability": wanted, "result": result})
    elif result == "Scheduled":
        out.print(f"EVSE {evse_id}: {wanted} when the running transaction ends (Scheduled)")
    else:
        out.print(f"EVSE {evse_id}: {wanted} ({result})")
    return EXIT_OK


def _configuration(client: Client, keys: Sequence[str]) -> list[dict[str, Any]]:
    (entries,) = client.call(STATION_PATH, STATION_INTERFACE, "GetConfiguration", "as", list(keys))
    return [
        {"key": key, "value": value, "readonly": readonly, "reboot_required": reboot}
        for key, value, readonly, reboot in entries
    ]


def cmd_config(client: Client, args: argparse.Namespace, out: Output) -> int:
    if args.action == "get":
        entries = _configuration(client, args.keys)
        out.json(entries) if args.json else out.print(configuration_text(entries))
        return EXIT_OK
    key: str = args.key
    value: str = args.value
    (status,) = client.call(
        STATION_PATH, STATION_INTERFACE, "ChangeConfiguration", "ss", key, value
    )
    current = value
    readonly = False
    if status in ("Accepted", "RebootRequired", "Rejected"):
        try:
            [entry] = _configuration(client, [key])
            current, readonly = entry["value"], entry["readonly"]
        except (CliError, ValueError):
            pass
    if args.json:
        out.json({"key": key, "value": current, "status": status})
    elif status == "Accepted":
        out.print(f"{printable(key)} = {printable(current)} (Accepted)")
    elif status == "RebootRequired":
        out.print(
            f"{printable(key)} = {printable(current)} (RebootRequired: takes effect when "
            "evsed restarts)"
        )
    if status in ("Accepted", "RebootRequired"):
        return EXIT_OK
    if status == "NotSupported":
        raise CliError(f"NotSupported: unknown configuration key {printable(repr(key))}")
    if status == "Rejected" and readonly:
        raise CliError(f"Rejected: {printable(key)} is read-only")
    if status == "Rejected":
        raise CliError(
            f"Rejected: {printable(repr(value))} is not a valid value for {printable(key)}"
            f" (it stays {printable(repr(current))})"
        )
    raise CliError(f"{printable(key)}: {printable(status)}")


def _firmware_update(client: Client) -> dict[str, Any] | None:
    """org.evsed.Firmware1's properties (snake_case), None when the daemon has no such
    interface (an older evsed, or one started without firmware updates)."""
    try:
        return snake_keys(client.properties(STATION_PATH, FIRMWARE_INTERFACE))
    except CliError as error:
        if error.dbus_name.endswith(_ABSENT):
            return None
        raise


def _firmware_lines(update: dict[str, Any]) -> list[tuple[str, str]]:
    request_id = update.get("request_id", -1)
    rows = [
        ("State", str(update.get("state", ""))),
        ("Progress", f"{update.get('progress', 0)} %"),
        ("Request", "-" if request_id == -1 else str(request_id)),
        ("Location", str(update.get("location", "")) or "-"),
        ("Backend", str(update.get("backend", "")) or "-"),
    ]
    if update.get("last_error"):
        rows.append(("Error", str(update["last_error"])))
    return rows


def cmd_firmware(client: Client, args: argparse.Namespace, out: Output) -> int:
    if args.action == "install":
        return _firmware_install(client, args, out)
    version = client.property(STATION_PATH, STATION_INTERFACE, "FirmwareVersion")
    status = client.property(STATION_PATH, STATION_INTERFACE, "FirmwareStatus")
    update = _firmware_update(client)
    if args.json:
        out.json({"firmware_version": version, "status": status, **(update or {})})
        return EXIT_OK
    rows = [("Firmware", str(version)), ("Update", str(status))]
    rows += _firmware_lines(update) if update is not None else []
    out.print("\n".join(f"{label:<10}{printable(value)}" for label, value in rows))
    return EXIT_OK


def _firmware_install(client: Client, args: argparse.Namespace, out: Output) -> int:
    given: str = args.file
    path = os.path.abspath(given)  # evsed runs elsewhere: it needs an absolute path
    if not os.path.isfile(path):
        raise CliError(f"{printable(given)}: no such file", EXIT_USAGE)
    client.call(STATION_PATH, FIRMWARE_INTERFACE, "InstallFile", "s", path)
    update = _firmware_update(client) or {}
    state = str(update.get("state", ""))
    if args.json:
        out.json({"file": path, **update})
    else:
        out.print(
            f"{printable(path)}: taken by evsed (state {printable(state or 'unknown')}); "
            "follow it with `evsectl firmware status`"
        )
    return EXIT_OK


class FramePrinter:
    def __init__(self, args: argparse.Namespace, out: Output) -> None:
        self.decoder = FrameDecoder()
        self.out = out
        self.json = bool(args.json)
        self.raw = bool(args.raw)
        encoding = getattr(out.stdout, "encoding", None) or "ascii"
        try:
            "→←".encode(encoding)
            self.arrows = ("→", "←")
        except (UnicodeEncodeError, LookupError):
            self.arrows = ("->", "<-")
        self.width = 0
        if not args.full and out.stdout.isatty():
            self.width = shutil.get_terminal_size().columns

    def history(self, frames: Sequence[tuple[float, str, str]], limit: int) -> None:
        """Print the last `limit` of `frames`; the older ones only teach the decoder."""
        shown = len(frames) - limit
        for index, (when, direction, raw) in enumerate(frames):
            if index >= shown:
                self.emit(when, direction, raw)
            else:
                self.decoder.decode(when, direction, raw)

    def emit(self, when: float, direction: str, raw: str) -> None:
        frame = self.decoder.decode(when, direction, raw)
        if self.json:
            self.out.print(json.dumps(frame.as_json(raw=self.raw), ensure_ascii=False))
            return
        line = frame_line(frame, raw=self.raw, arrows=self.arrows)
        if self.width and len(line) > self.width:
            line = line[: max(1, self.width - 1)] + "…"
        self.out.print(line)


def cmd_log(client: Client, args: argparse.Namespace, out: Output) -> int:
    printer = FramePrinter(args, out)
    if not args.follow:
        limit = HISTORY_LINES if args.lines is None else args.lines
        (frames,) = client.call(
            STATION_PATH, STATION_INTERFACE, "RecentFrames", "u", max(limit, HISTORY_CONTEXT)
        )
        printer.history(frames, limit)
        return EXIT_OK
    limit = FOLLOW_HISTORY_LINES if args.lines is None else args.lines
    return asyncio.run(_follow(client, limit, printer, out))


async def _follow(client: Client, limit: int, printer: FramePrinter, out: Output) -> int:
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[int] = loop.create_future()
    early: list[tuple[float, str, str]] = []
    live = False

    def finish(code: int) -> None:
        if not stop.done():
            stop.set_result(code)

    def on_frame(message: Any) -> None:
        try:
            direction, raw = message.get_contents()
            record = (time.time(), str(direction), str(raw))
            if live:
                printer.emit(*record)
            else:
                early.append(record)
        except BrokenPipeError:
            finish(EXIT_OK)

    def on_owner(message: Any) -> None:
        name, _old, new = message.get_contents()
        if name != BUS_NAME:
            return
        if new:
            out.note("evsed is back on the bus")
        else:
            out.note("evsed left the bus; waiting for it to return (Ctrl-C to stop)")

    def on_loop_error(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # An error processing the bus connection lands here: one line, then stop.
        exc = context.get("exception")
        out.note(f"lost the connection to {client.bus_spec.label}: {exc or context['message']}")
        finish(EXIT_NO_DAEMON)

    async def watch_bus() -> None:
        # sd-bus reports a vanished bus only to the next call: ask the bus daemon regularly.
        while True:
            await asyncio.sleep(BUS_CHECK_INTERVAL_S)
            try:
                await asyncio.wait_for(client.check_bus(), client.timeout_s)
            except CliError as error:
                out.note(error.message)
                finish(error.code)
                return
            except TimeoutError:
                out.note(f"{client.bus_spec.label} does not answer")
                finish(EXIT_NO_DAEMON)
                return

    loop.set_exception_handler(on_loop_error)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, finish, EXIT_OK)
    try:
        frame_slot = await client.bus.match_signal_async(
            BUS_NAME, STATION_PATH, STATION_INTERFACE, "OcppFrame", on_frame
        )
        owner_slot = await client.bus.match_signal_async(
            DBUS_NAME, DBUS_PATH, DBUS_NAME, "NameOwnerChanged", on_owner
        )
    except Exception as exc:
        raise client.translate(exc, "subscribing to OcppFrame") from None
    try:
        # Also tells whether evsed runs and lets us in. Signals that arrive before the answer
        # were emitted before it: they are in the history and are not printed twice.
        (history,) = await client.call_async(
            STATION_PATH, STATION_INTERFACE, "RecentFrames", "u", max(limit, HISTORY_CONTEXT)
        )
        seen = {(direction, raw) for _when, direction, raw in history}
        printer.history(history, limit)
        for when, direction, raw in early:
            if (direction, raw) not in seen:
                printer.emit(when, direction, raw)
        early.clear()
        live = True
        watcher = asyncio.create_task(watch_bus())
        try:
            return await stop
        finally:
            watcher.cancel()
    except BrokenPipeError:
        return EXIT_OK
    finally:
        frame_slot.close()
        owner_slot.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


COMMANDS: dict[str, Callable[[Client, argparse.Namespace, Output], int]] = {
    "status": cmd_status,
    "evse": cmd_evse,
    "config": cmd_config,
    "log": cmd_log,
    "firmware": cmd_firmware,
}


# --------------------------------------------------------------------------- main


def _complete_words(argv: list[str], out: Output) -> int:
    """`evsectl [--bus B] __complete evse-ids|config-keys`: words for the shell completion.
    Silent and successful whatever happens: a completion must never print errors."""
    bus = "system"
    for i, word in enumerate(argv):
        if word == "--bus" and i + 1 < len(argv):
            bus = argv[i + 1]
        elif word.startswith("--bus="):
            bus = word.split("=", 1)[1]
    kind = argv[-1] if argv else ""
    try:
        client = Client(BusSpec(bus), 2.0)
        if kind == "evse-ids":
            ids = client.property(STATION_PATH, STATION_INTERFACE, "EvseIds")
            out.print("\n".join(str(i) for i in ids))
        elif kind == "config-keys":
            out.print("\n".join(entry["key"] for entry in _configuration(client, [])))
    except Exception:
        pass
    return EXIT_OK


def _bus_spec(text: str) -> BusSpec:
    if text in ("system", "session") or (":" in text and "=" in text):
        return BusSpec(text)
    raise UsageError(
        f"{PROG}: --bus must be system, session or a D-Bus address such as "
        f"unix:path=/run/dbus/system_bus_socket, not {text!r}"
    )


def run(argv: Sequence[str], stdout: TextIO, stderr: TextIO) -> int:
    out = Output(stdout, stderr)
    argv = list(argv)
    if "__complete" in argv:
        return _complete_words(argv, out)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.version:
            from importlib.metadata import PackageNotFoundError, version

            try:
                out.print(f"{PROG} {version('evsed')}")
            except PackageNotFoundError:
                out.print(f"{PROG} (version unknown: not installed as a package)")
            return EXIT_OK
        command = args.command or "status"
        if command == "completion":
            from evsectl.completion import script

            out.print(script(parser, args.shell))
            return EXIT_OK
        if command == "config" and args.action is None:
            raise UsageError(f"{PROG} config: an action is required: get or set")
        if command == "firmware":
            args.action = args.action or "status"
        bus = _bus_spec(args.bus)
    except UsageError as exc:
        out.stderr.write(f"{exc}\n")
        return EXIT_USAGE
    try:
        client = Client(bus, args.timeout)
        try:
            return COMMANDS[command](client, args, out)
        finally:
            client.close()
    except CliError as error:
        out.note(error.message)
        return error.code
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `evsectl log -f | head` ends quietly
    try:
        return run(sys.argv[1:] if argv is None else argv, sys.stdout, sys.stderr)
    except Exception as exc:  # a bug: still one line, never a traceback
        sys.stderr.write(f"{PROG}: internal error: {type(exc).__name__}: {exc}\n")
        if os.environ.get("EVSECTL_DEBUG"):
            raise
        return EXIT_REFUSED
