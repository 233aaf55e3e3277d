"""Fuzzing the inbound OCPP path: frames fed to the sans-I/O engine of a daemon assembled
exactly as `service.main.Daemon` assembles it (the real 1.6 handlers of service/charger.py and
the 2.0.1 provisioning handlers), with simulated hardware, a fake clock and a real database.

Rules checked for every frame:

* the engine never raises, and nothing is logged with a traceback (a handler that raised is
  answered InternalError by the engine; the harness counts that as a finding);
* a CALL — anything that is not a CALLRESULT/CALLERROR — gets exactly one answer: a
  CALLRESULT whose payload passes the action's response schema (`service.ocpp.rpc.schemas`)
  or a CALLERROR with a code of that OCPP version, a string description of at most 255
  characters and an object as details; with the CALL's own message id when it was readable
  (1..36 characters), "-1" when the frame was not even JSON;
* a frame that is not JSON is answered FormationViolation (1.6) / FormatViolation (2.0.1);
* a CALL whose payload passes the request schema and whose action the charger handles is
  answered with a CALLRESULT;
* a CALLRESULT / CALLERROR is never answered.

Charger-initiated CALLs that come out (StatusNotification, triggered messages...) are answered
like a CSMS would, and now and then with a fuzzed response instead; the clock moves on now and
then so timeouts and heartbeats happen too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

from reliability.common import write_config
from reliability.fuzz_gen import FrameFactory, random_bytes, random_envelope_json, random_json
from service.ocpp.rpc import OcppVersion, RpcError, schemas

ERROR_CODES = {
    OcppVersion.V16: {
        "NotImplemented",
        "NotSupported",
        "InternalError",
        "ProtocolError",
        "SecurityError",
        "FormationViolation",
        "PropertyConstraintViolation",
        "OccurenceConstraintViolation",
        "TypeConstraintViolation",
        "GenericError",
    },
    OcppVersion.V201: {
        "FormatViolation",
        "GenericError",
        "InternalError",
        "MessageTypeNotSupported",
        "NotImplemented",
        "NotSupported",
        "OccurrenceConstraintViolation",
        "PropertyConstraintViolation",
        "ProtocolError",
        "RpcFrameworkError",
        "SecurityError",
        "TypeConstraintViolation",
    },
}
NOT_JSON = {OcppVersion.V16: "FormationViolation", OcppVersion.V201: "FormatViolation"}
MAX_FINDINGS = 30
RULE_CODES = {
    "OccurenceConstraintViolation",
    "OccurrenceConstraintViolation",
    "PropertyConstraintViolation",
    "NotSupported",
    "NotImplemented",
}


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259)")


class FakeClock:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = 1_795_000_000.0

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


class _Traces(logging.Handler):
    """Every log record that carries a traceback: a bug the daemon survived."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.count += 1
            if len(self.records) < MAX_FINDINGS:
                text = "".join(traceback.format_exception(*record.exc_info)[-3:])
                self.records.append(f"{record.getMessage()}: {text.strip()[-600:]}")


def _answer(version: OcppVersion, action: str, clock: FakeClock, tx: list[int]) -> dict[str, Any]:
    """What a well-behaved CSMS answers to a charger CALL."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock.wall))
    if action == "BootNotification":
        return {"status": "Accepted", "currentTime": now, "interval": 300}
    if action == "Heartbeat":
        return {"currentTime": now}
    if action in ("Authorize",):
        return {"idTagInfo": {"status": "Accepted"}}
    if action == "StartTransaction":
        tx[0] += 1
        return {"idTagInfo": {"status": "Accepted"}, "transactionId": tx[0]}
    if action == "DataTransfer":
        return {"status": "Accepted"}
    return {}


class EngineFuzzer:
    def __init__(self, rng: random.Random, work: Path) -> None:
        from service.config import load_settings
        from service.main import Daemon
        from service.store.db import Database

        class QuietDaemon(Daemon):
            resets = 0

            def _request_reset(self, kind: str) -> None:
                QuietDaemon.resets += 1

        self.rng = rng
        self.clock = FakeClock()
        config = write_config(
            work, "ws://127.0.0.1:9/ocpp", dbus_address=None, synchronous="normal"
        )
        settings = load_settings(config)
        settings.paths.state_directory.mkdir(parents=True, exist_ok=True)
        self.db = Database.open(settings.paths.state_directory / "evsed.db", synchronous="normal")
        self.daemon = QuietDaemon(settings, self.db, clock=self.clock)
        self.daemon_class = QuietDaemon
        self.engine = self.daemon.engine
        self.daemon.charger.station.start()
        self.factory = FrameFactory(rng)
        self.tx = [0]
        self.version = OcppVersion.V16
        self.inflight: tuple[str, str] | None = None
        self.counts: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.error_codes: Counter[str] = Counter()
        self.refused_valid: Counter[str] = Counter()
        self.findings: list[str] = []
        self.finding_counts: Counter[str] = Counter()

    def handled(self) -> list[str]:
        return sorted(self.engine._handlers[self.version])

    # ------------------------------------------------------------------ connection
    def connect(self, version: OcppVersion) -> None:
        if self.engine.connected:
            self.engine.connection_closed()
        self.version = version
        self.inflight = None
        self.engine.connection_opened(version)
        self._serve_outbound(self.engine.take_frames(), fuzz=False)

    def _serve_outbound(self, frames: list[str], *, fuzz: bool = True) -> None:
        """Answer charger CALLs until none is left (bounded)."""
        for _ in range(50):
            calls = [json.loads(f) for f in frames]
            calls = [c for c in calls if c[0] == 2]
            if not calls:
                return
            frames = []
            for call in calls:
                self.inflight = (call[1], call[2])
                self.counts["charger_calls"] += 1
                if fuzz and self.rng.random() < 0.15:
                    kind, text = self.factory.response(self.version, self.inflight)
                    self._feed(kind, text)
                    continue
                if self.rng.random() < 0.03:
                    continue  # never answered: it times out when the clock moves on
                answer = _answer(self.version, call[2], self.clock, self.tx)
                self.engine.receive(json.dumps([3, call[1], answer]))
                out = self.engine.take_frames()
                frames += [f for f in out if f.startswith("[2")]
                self.inflight = None

    # ------------------------------------------------------------------ one input
    def _finding(self, kind: str, text: str) -> None:
        self.finding_counts[kind] += 1
        if len(self.findings) < MAX_FINDINGS:
            self.findings.append(f"{kind}: {text[:700]}")

    def _feed(self, kind: str, text: str | bytes, action: str | None = None) -> list[str]:
        self.counts["frames"] += 1
        self.kinds[kind] += 1
        try:
            self.engine.receive(text)
        except Exception as exc:
            self._finding("exception", f"{exc!r} on {text!r:.300}")
            return []
        out = self.engine.take_frames()
        self._check(kind, text, action, out)
        return out

    def _check(self, kind: str, text: str | bytes, action: str | None, out: list[str]) -> None:
        version = self.version
        replies = []
        for frame in out:
            decoded = json.loads(frame)
            if decoded[0] in (3, 4):
                replies.append(decoded)
        try:
            message = json.loads(text, parse_constant=_not_json)
            is_json = True
        except (ValueError, UnicodeDecodeError):
            message, is_json = None, False
        if (
            isinstance(message, list)
            and message
            and not isinstance(message[0], bool)
            and message[0] in (3, 4)
        ):
            self.counts["responses"] += 1
            if replies:
                self._finding("answered-a-response", f"{text!r:.300} -> {replies}")
            self._serve_outbound(out)
            return
        self.counts["calls"] += 1
        if len(replies) != 1:
            self._finding("reply-count", f"{len(replies)} replies to {text!r:.300}: {replies}")
            self._serve_outbound(out)
            return
        reply = replies[0]
        readable_id = (
            isinstance(message, list)
            and len(message) > 1
            and isinstance(message[1], str)
            and 1 <= len(message[1]) <= 36
        )
        if not is_json and reply[1] != "-1":
            self._finding("reply-id", f"not JSON answered with id {reply[1]!r}")
        if readable_id and isinstance(message, list) and reply[1] != message[1]:
            self._finding("reply-id", f"id {message[1]!r} answered as {reply[1]!r}")
        if reply[0] == 3:
            self.counts["callresults"] += 1
            self._check_result(text, message, reply)
        else:
            self.counts["callerrors"] += 1
            self._check_error(version, text, is_json, message, reply)
        self._serve_outbound([f for f in out if f.startswith("[2")])

    def _check_result(self, text: str | bytes, message: Any, reply: list[Any]) -> None:
        if len(reply) != 3 or not isinstance(reply[2], dict):
            self._finding("bad-callresult", f"{reply}")
            return
        call_action = message[2] if isinstance(message, list) and len(message) == 4 else None
        if not isinstance(call_action, str):
            self._finding("bad-callresult", f"CALLRESULT to a non-CALL {text!r:.200}")
            return
        try:
            schemas(self.version).validate(call_action, reply[2], response=True)
        except RpcError as exc:
            self._finding("invalid-callresult", f"{call_action}: {exc.description}: {reply}")

    def _check_error(
        self, version: OcppVersion, text: str | bytes, is_json: bool, message: Any, reply: list[Any]
    ) -> None:
        ok_shape = (
            len(reply) == 5
            and isinstance(reply[2], str)
            and isinstance(reply[3], str)
            and len(reply[3]) <= 255
            and isinstance(reply[4], dict)
        )
        if not ok_shape or reply[2] not in ERROR_CODES[version]:
            self._finding("invalid-callerror", f"{reply!r:.400}")
            return
        code = reply[2]
        self.error_codes[code] += 1
        if not is_json and code != NOT_JSON[version]:
            self._finding("wrong-code", f"not JSON answered {code}")
        if code == "InternalError":
            self._finding("internal-error", f"{text!r:.400} -> {reply[3]}")
            return
        # A schema-valid CALL of a handled action must be answered with a CALLRESULT.
        if (
            isinstance(message, list)
            and len(message) == 4
            and message[0] == 2
            and not isinstance(message[0], bool)
            and isinstance(message[1], str)
            and 1 <= len(message[1]) <= 36
            and isinstance(message[2], str)
            and message[2] in self.engine._handlers[version]
            and isinstance(message[3], dict)
        ):
            try:
                schemas(version).validate(message[2], message[3], response=False)
            except RpcError:
                return
            # Refusals on rules the schema does not carry (GetConfigurationMaxKeys, 1..*
            # occurrences the OCA schema leaves out) are right; anything else is a finding.
            self.refused_valid[code] += 1
            if code not in RULE_CODES:
                self._finding("valid-call-refused", f"{text!r:.400} -> {code} {reply[3]}")

    # ------------------------------------------------------------------ the run
    def step(self) -> None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.10:
            self._feed("random-bytes", random_bytes(rng))
        elif roll < 0.20:
            self._feed("random-json", json.dumps(random_json(rng)))
        elif roll < 0.28:
            self._feed("random-envelope", random_envelope_json(rng))
        elif roll < 0.36:
            kind, text = self.factory.response(self.version, self.inflight)
            self._feed(kind, text)
        else:
            kind, text, action = self.factory.call(self.version, self.handled())
            self._feed(kind, text, action)
        if rng.random() < 0.02:
            self.clock.advance(rng.uniform(0.5, 40))
            try:
                self.engine.tick()
            except Exception as exc:
                self._finding("exception", f"tick: {exc!r}")
            self._serve_outbound(self.engine.take_frames())

    def alive(self) -> bool:
        """After everything: a plain GetConfiguration still gets its CALLRESULT."""
        self.connect(OcppVersion.V16)
        self.engine.receive(json.dumps([2, "final-check", "GetConfiguration", {}]))
        out = [json.loads(f) for f in self.engine.take_frames()]
        return any(f[0] == 3 and f[1] == "final-check" for f in out)


async def run(frames: int, *, seed: int, log: Any = print) -> dict[str, Any]:
    rng = random.Random(seed)
    traces = _Traces()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(traces)
    root.setLevel(logging.CRITICAL)  # the daemon logs every bad frame: keep the run quiet
    quiet = ("evsed", "evsed.ocpp", "evsed.ocpp.v16", "evsed.station", "evsed.charger")
    old_levels = {name: logging.getLogger(name).level for name in quiet}
    for name in quiet:
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    started = time.monotonic()
    base = "/dev/shm" if Path("/dev/shm").is_dir() else None
    try:
        with tempfile.TemporaryDirectory(prefix="evrel-fuzz-", dir=base) as tmp:
            fuzzer = EngineFuzzer(rng, Path(tmp))
            fuzzer.connect(OcppVersion.V16)
            versions_run: Counter[str] = Counter()
            for i in range(frames):
                if i % 2000 == 0 and i:
                    # One part in five under 2.0.1: its TriggerMessage and its refusals.
                    fuzzer.connect(OcppVersion.V201 if rng.random() < 0.2 else OcppVersion.V16)
                if i % 20000 == 0 and i:
                    log(f"fuzz ocpp: {i}/{frames} frames, {time.monotonic() - started:.0f}s")
                versions_run[fuzzer.version.value] += 1
                fuzzer.step()
                if i % 500 == 0:
                    await asyncio.sleep(0)  # let spawned tasks (remote start...) run
            alive = fuzzer.alive()
            fuzzer.db.close()
    finally:
        root.removeHandler(traces)
        root.setLevel(old_level)
        for name, level in old_levels.items():  # leave the process's logging as it was
            logging.getLogger(name).setLevel(level)
    finding_counts = dict(fuzzer.finding_counts)
    # A handler exception answered as InternalError also shows up in the log: count it once.
    result = {
        "frames": fuzzer.counts["frames"],
        "calls": fuzzer.counts["calls"],
        "responses": fuzzer.counts["responses"],
        "callresults": fuzzer.counts["callresults"],
        "callerrors": fuzzer.counts["callerrors"],
        "charger_calls_answered": fuzzer.counts["charger_calls"],
        "by_kind": dict(fuzzer.kinds),
        "by_version": dict(versions_run),
        "error_codes": dict(fuzzer.error_codes.most_common()),
        "schema_valid_calls_refused_by_rule": dict(fuzzer.refused_valid),
        "resets_requested": fuzzer.daemon_class.resets,
        "exceptions": finding_counts.get("exception", 0),
        "internal_errors": finding_counts.get("internal-error", 0),
        "invalid_replies": sum(
            v for k, v in finding_counts.items() if k not in ("exception", "internal-error")
        ),
        "logged_tracebacks": traces.count,
        "finding_counts": finding_counts,
        "findings": fuzzer.findings,
        "tracebacks": traces.records,
        "alive_at_end": alive,
        "duration_s": round(time.monotonic() - started, 1),
    }
    result["ok"] = (
        alive
        and result["exceptions"] == 0
        and result["internal_errors"] == 0
        and result["invalid_replies"] == 0
        and traces.count == 0
    )
    return result
