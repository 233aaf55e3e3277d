"""The sans-I/O OCPP-J session: registration, the one outstanding CALL, the durable queue pump.

Events go in (`connection_opened`, `receive`, `tick`, `enqueue`, `request`); frames come out
(`take_frames`), with `next_deadline` telling the shell when to call `tick` again. No socket,
no await, no reading of the system clock: the clock and the message-id generator are injected.
The durable queue is called synchronously, which is what makes "committed before sent" a plain
statement order below rather than a protocol between threads.

Rules this module owns (see README "Delivery rules"):

* Exactly one CALL from the charger is outstanding at a time; it times out after
  `call_timeout_s`.
* Order of what is sent when the line is free: BootNotification (until Accepted), messages the
  CSMS asked for with TriggerMessage, immediate requests (Authorize, DataTransfer...), the
  durable queue in strict FIFO order, then a Heartbeat when the link has been quiet for
  HeartbeatInterval.
* While the registration is not Accepted nothing but BootNotification and triggered messages
  is sent. A Pending registration waits for the CSMS (TriggerMessage) and, under 1.6, does not
  resend BootNotification unprompted (under 2.0.1, B02, it does after the interval the CSMS
  gave); a Rejected one retries after the interval the CSMS gave. A boot
  that times out is retried after `call_timeout_s`.
* Under 2.0.1, while the registration is Rejected, every CALL of the CSMS is answered with a
  CALLERROR SecurityError except TriggerMessage(BootNotification) (B03); Pending answers all.
* A queued message keeps its message id for life: a retry after a timeout, a reconnect or a
  restart reuses it, so a late CALLRESULT is still matched and the CSMS can recognise a
  duplicate. A timeout is not an attempt (the CSMS did not process the message), except for a
  transaction message under 2.0.1 (E13.FR.01: not answered within MessageTimeout); a CALLERROR
  or an unusable CALLRESULT is. After TransactionMessageAttempts failed attempts a transaction
  message is dropped with an error log; a non-transaction message is dropped after its first
  CALLERROR. Retries wait TransactionMessageRetryInterval x attempts. Exception: a
  CALLERROR SecurityError (the CSMS does not count the charger as registered) is no attempt;
  the charger sends BootNotification again and then the message, once per connection.
* After a reconnect the queue resumes after MessageQueueResumeDelay.
* A queued message is sent only under the OCPP version it was made for. The queue has no
  version column, so `enqueue` records the version inside the stored payload under the
  reserved key VERSION_KEY (no OCPP field starts with "@"), which is removed before the
  message goes on the wire. A message of the other version reaching the head of the queue
  (the CSMS negotiated another version since it was queued) is dropped with an error log and
  a "queue-drop" event: it can never be valid on this connection, and holding it would block
  every later message. Rows without the key (queued before versions were recorded) are sent
  as they are.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal, Protocol

from service.journal import LogEvent, log_fields
from service.ocpp.rpc import (
    Call,
    CallError,
    CallResult,
    ErrorCode,
    JsonDict,
    OcppVersion,
    RpcError,
    encode_call,
    encode_error,
    encode_result,
    encode_rpc_error,
    parse_frame,
    schemas,
)
from service.station.clock import Clock, TimeKeeper, format_iso
from service.store.db import StoreError

log = logging.getLogger("evsed.ocpp")


TIME_MARKER = "@mono:"
#: Reserved key of a stored payload naming the OCPP version it was made for (see above).
VERSION_KEY = "@ocppVersion"
#: errorDescription of the SecurityError a 2.0.1 CSMS gets while the boot is Rejected (B03).
REJECTED_DESCRIPTION = "not registered: BootNotification was Rejected"


def _has_marker(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_marker(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_marker(v) for v in value)
    return isinstance(value, str) and value.startswith(TIME_MARKER)


class Registration(Enum):
    UNKNOWN = "Unknown"
    PENDING = "Pending"
    ACCEPTED = "Accepted"
    REJECTED = "Rejected"


class QueuedMessageLike(Protocol):
    @property
    def seq(self) -> int: ...
    @property
    def message_id(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def payload(self) -> JsonDict: ...
    @property
    def kind(self) -> str: ...
    @property
    def tx_ref(self) -> str | None: ...
    @property
    def attempts(self) -> int: ...


class OutboundQueue(Protocol):
    """What the engine needs of the durable queue (service.store.queue.DurableQueue)."""

    def append(
        self,
        message_id: str,
        action: str,
        payload: JsonDict,
        *,
        kind: Literal["transaction", "other"],
        tx_ref: str | None = ...,
        now: float,
    ) -> Any: ...
    def head(self) -> QueuedMessageLike | None: ...
    def remove(self, seq: int) -> bool: ...
    def record_attempt(self, seq: int, *, not_before: float) -> Any: ...
    def update_payload(self, seq: int, payload: JsonDict) -> Any: ...
    def complete(
        self, seq: int, *, tx_ref: str | None = None, csms_transaction_id: str | int | None = None
    ) -> None: ...
    def count(self, kind: Literal["transaction", "other"]) -> int: ...
    def has_pending_start(self, tx_ref: str, *, action: str = ...) -> bool: ...
    def __len__(self) -> int: ...


class Settings(Protocol):
    """Live values the engine reads on every use, so a CSMS change takes effect at once."""

    @property
    def heartbeat_interval(self) -> int: ...
    @property
    def transaction_message_attempts(self) -> int: ...
    @property
    def transaction_message_retry_interval(self) -> int: ...
    def set_heartbeat_interval(self, seconds: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a charger-initiated request ended: a result payload, a CALLERROR, or a timeout."""

    action: str
    payload: JsonDict | None = None
    error_code: str | None = None
    error_description: str = ""

    @property
    def ok(self) -> bool:
        return self.payload is not None


class Deferred:
    """Returned by a handler that answers later (e.g. a D-Bus client answers DataTransfer).

    `resolve(payload)` or `reject(code, description)` sends the answer, if the connection the
    request came on is still open; later calls are ignored.
    """

    def __init__(self) -> None:
        self._sink: Callable[[JsonDict | None, ErrorCode | None, str], None] | None = None
        self.done = False

    def _bind(self, sink: Callable[[JsonDict | None, ErrorCode | None, str], None]) -> None:
        self._sink = sink

    def resolve(self, payload: JsonDict) -> None:
        self._finish(payload, None, "")

    def reject(self, code: ErrorCode, description: str) -> None:
        self._finish(None, code, description)

    def _finish(self, payload: JsonDict | None, code: ErrorCode | None, text: str) -> None:
        if self.done:
            return
        self.done = True
        if self._sink is not None:
            self._sink(payload, code, text)


Handler = Callable[[Call], "JsonDict | Deferred"]
Done = Callable[[Outcome], None]


@dataclass(slots=True)
class _Outgoing:
    unique_id: str
    action: str
    payload: JsonDict
    source: str  # "boot" | "trigger" | "immediate" | "queue" | "heartbeat"
    seq: int | None = None
    tx_ref: str | None = None
    on_done: Done | None = None
    deadline: float = 0.0


@dataclass(slots=True)
class EngineOptions:
    call_timeout_s: float = 30.0
    message_queue_resume_delay_s: float = 0.0
    boot_retry_default_s: float = 60.0
    validate_outbound: bool = True


@dataclass(slots=True)
class _Stats:
    dropped_unmatched: int = 0
    malformed_inbound: int = 0
    timeouts: int = 0


class Engine:
    def __init__(
        self,
        *,
        queue: OutboundQueue,
        clock: Clock,
        new_id: Callable[[], str],
        settings: Settings,
        boot_payload: Callable[[OcppVersion], JsonDict],
        options: EngineOptions | None = None,
    ) -> None:
        self._queue = queue
        self._clock = clock
        self._new_id = new_id
        self._settings = settings
        self._boot_payload = boot_payload
        self.options = options or EngineOptions()
        self.time = TimeKeeper(clock)
        self.version: OcppVersion | None = None
        self.registration = Registration.UNKNOWN
        self.stats = _Stats()
        self._handlers: dict[OcppVersion, dict[str, Handler]] = {v: {} for v in OcppVersion}
        self._frames: list[str] = []
        self._inflight: _Outgoing | None = None
        self._boot_due: float | None = None  # monotonic time the next boot may go out
        self._triggered: deque[_Outgoing] = deque()
        self._immediate: deque[_Outgoing] = deque()
        self._queue_resume_at = 0.0
        self._queue_retry_at: dict[int, float] = {}
        self._last_call_sent = clock.monotonic()
        self._listeners: list[Callable[[str, Mapping[str, Any]], None]] = []
        self._dispatching = False
        self._last_version: OcppVersion | None = None
        #: The version messages are made for while no connection was made yet in this run
        #: (the last negotiated one, remembered by the station link dispatcher).
        self.fallback_version: OcppVersion | None = None
        self._generation = 0  # counts connections; answers for a closed one are dropped
        #: A SecurityError to a queued message made the charger register again on this
        #: connection (see _reregister_on_security_error).
        self._reregistered = False
        #: Called when frames were produced outside receive()/tick() (deferred answers).
        self.wakeup: Callable[[], None] | None = None
        # Identifies this process run; time markers from another run cannot be resolved.
        self.boot_id = new_id()

    # ---------------------------------------------------------------- configuration
    def register(self, version: OcppVersion, action: str, handler: Handler) -> None:
        """Answer inbound CALLs of `action` under `version` with `handler`."""
        if action not in schemas(version).actions:
            raise ValueError(f"{action} is not an OCPP {version.value} action")
        self._handlers[version][action] = handler

    def subscribe(self, listener: Callable[[str, Mapping[str, Any]], None]) -> None:
        """Receive engine events: ("registration", {...}), ("queue-drop", {...})..."""
        self._listeners.append(listener)

    def _emit(self, event: str, **data: Any) -> None:
        for listener in self._listeners:
            listener(event, data)

    # ---------------------------------------------------------------- connection events
    @property
    def connected(self) -> bool:
        return self.version is not None

    def connection_opened(self, version: OcppVersion) -> None:
        self._generation += 1
        self._reregistered = False
        self.version = version
        self._last_version = version
        now = self._clock.monotonic()
        self._queue_resume_at = now + self.options.message_queue_resume_delay_s
        self._last_call_sent = now
        # A new connection is a new chance to register (the CSMS may have restarted), except
        # that a Rejected charger honours the interval it was given.
        if self.registration is not Registration.ACCEPTED and not (
            self.registration is Registration.REJECTED and self._boot_due is not None
        ):
            self._boot_due = now
        self._pump()

    def connection_closed(self) -> None:
        if self._inflight is not None and self._inflight.source in ("immediate", "trigger"):
            self._finish(
                self._inflight,
                Outcome(
                    self._inflight.action, error_code="Offline", error_description="connection lost"
                ),
            )
        self._inflight = None
        self.version = None
        for item in list(self._immediate) + list(self._triggered):
            self._finish(
                item,
                Outcome(item.action, error_code="Offline", error_description="connection lost"),
            )
        self._immediate.clear()
        self._triggered.clear()

    # ---------------------------------------------------------------- outbound API
    @property
    def active_version(self) -> OcppVersion | None:
        """The version of the connection, else of the last one, else `fallback_version`."""
        return self.version or self._last_version or self.fallback_version

    def enqueue(
        self,
        action: str,
        payload: JsonDict,
        *,
        transaction: bool,
        tx_ref: str | None = None,
        version: OcppVersion | None = None,
        any_version: bool = False,
    ) -> str:
        """Persist a message for in-order delivery; returns its (permanent) message id.

        `version` (default `active_version`) is the OCPP version the message is made for: it
        is sent only on a connection of that version. `any_version`: the payload is valid
        under every version (checked against each), so it goes out on whichever connection
        comes next (SecurityEventNotification). Raises ValueError when the payload breaks that
        version's schema: a message the CSMS must reject is refused here, before it is stored.
        """
        version = version or self.active_version
        checked = payload
        if tx_ref is not None and payload.get("transactionId", 0) is None:
            # The placeholder the queue patches once the CSMS id is known (1.6).
            checked = {**payload, "transactionId": 0}
        if any_version:
            if self.options.validate_outbound:
                for each in OcppVersion:
                    self._check_outbound(each, action, checked)
            version = None
        elif self.options.validate_outbound and version is not None:
            self._check_outbound(version, action, checked)
        message_id = self._new_id()
        if version is not None:
            payload = {**payload, VERSION_KEY: version.value}
        self._queue.append(
            message_id,
            action,
            payload,
            kind="transaction" if transaction else "other",
            tx_ref=tx_ref,
            now=self.time.now() or 0.0,
        )
        self._pump()
        return message_id

    def request(self, action: str, payload: JsonDict, on_done: Done | None = None) -> bool:
        """Send a non-durable request now (or as soon as the line is free while connected).

        Returns False, and calls nothing, when offline or not registered: such requests are
        answered locally by the caller (e.g. authorization from the local list).
        """
        if not self.connected or self.registration is not Registration.ACCEPTED:
            return False
        if self.options.validate_outbound and self.version is not None:
            self._check_outbound(self.version, action, payload)
        self._immediate.append(
            _Outgoing(self._new_id(), action, payload, "immediate", on_done=on_done)
        )
        self._pump()
        return True

    def trigger(self, action: str, payload: JsonDict) -> None:
        """Send a message the CSMS asked for with TriggerMessage (allowed even while Pending)."""
        if action == "BootNotification":
            self._boot_due = self._clock.monotonic()
        else:
            self._triggered.append(_Outgoing(self._new_id(), action, payload, "trigger"))
        self._pump()

    def _check_outbound(self, version: OcppVersion, action: str, payload: JsonDict) -> None:
        try:
            schemas(version).validate(action, payload, response=False)
        except RpcError as exc:
            raise ValueError(
                f"{action} payload invalid for OCPP {version.value}: {exc.description}"
            ) from None

    # ---------------------------------------------------------------- inbound
    def receive(self, text: str | bytes) -> None:
        version = self.version
        if version is None:
            return
        try:
            frame = parse_frame(text)
        except RpcError as exc:
            self.stats.malformed_inbound += 1
            log.warning("malformed frame from CSMS (%s): %s", exc.code.value, exc.description)
            if exc.message_type in (None, 2):
                # Never answer a response; answer everything else, "-1" if no id was readable.
                self._frames.append(encode_rpc_error(exc, version))
            return
        if isinstance(frame, Call):
            # A handler may queue a CALL (TriggerMessage); its CALLRESULT must go first.
            self._dispatching = True
            try:
                reply = self._dispatch(version, frame)
            finally:
                self._dispatching = False
            if reply is not None:
                self._frames.append(reply)
        else:
            try:
                self._on_response(version, frame)
            except StoreError as exc:
                # The store refused the bookkeeping (disk full, I/O error). The message stays
                # queued and goes out again later with the same id; nothing is lost.
                log.error("could not record the response to %s: %s", frame.unique_id, exc)
                self._retry_head_later()
        self._pump()

    def _dispatch(self, version: OcppVersion, call: Call) -> str | None:
        fields = _fields(call.action, call.unique_id, "in", call.payload, None)
        log.info("<- %s", call.action, extra=fields)
        handler = self._handlers[version].get(call.action)
        try:
            if self._refused_while_rejected(version, call):
                raise RpcError(ErrorCode.SECURITY_ERROR, REJECTED_DESCRIPTION)
            if handler is None:
                if call.action not in schemas(version).actions:
                    raise RpcError(
                        ErrorCode.NOT_IMPLEMENTED,
                        f"{call.action} is not an OCPP {version.value} action",
                    )
                raise RpcError(
                    ErrorCode.NOT_SUPPORTED, f"{call.action} is not supported by this charger"
                )
            schemas(version).validate(call.action, call.payload, response=False)
            payload = handler(call)
            if isinstance(payload, Deferred):
                payload._bind(self._deferred_sink(version, call))
                return None
            if self.options.validate_outbound:
                schemas(version).validate(call.action, payload, response=True)
        except RpcError as exc:
            log.warning(
                "CALLERROR %s for %s: %s",
                exc.code.spelled(version),
                call.action,
                exc.description,
                extra=fields,
            )
            return encode_error(call.unique_id, exc.code, exc.description, version, exc.details)
        except Exception:
            log.exception("handler for %s failed", call.action, extra=fields)
            return encode_error(
                call.unique_id,
                ErrorCode.INTERNAL_ERROR,
                "internal error while handling the request",
                version,
            )
        return encode_result(call.unique_id, payload)

    def _refused_while_rejected(self, version: OcppVersion, call: Call) -> bool:
        """OCPP 2.0.1 B03: while the BootNotification is answered Rejected, every CALL of the
        CSMS is answered with CALLERROR SecurityError, except a TriggerMessage for
        BootNotification, which lets the CSMS have the station register again (the
        TriggerMessage handler answers it as usual). Nothing is dropped: the durable queue is
        only held (see `_next_outgoing`). Pending (B02) keeps answering everything.

        OCPP 1.6 keeps its behaviour: while Rejected its CALLs are answered as usual (1.6 4.2
        says a Rejected Charge Point does not respond at all; that is not done here)."""
        if version is not OcppVersion.V201 or self.registration is not Registration.REJECTED:
            return False
        return not (
            call.action == "TriggerMessage"
            and call.payload.get("requestedMessage") == "BootNotification"
        )

    def _on_response(self, version: OcppVersion, frame: CallResult | CallError) -> None:
        current = self._inflight
        if current is None or current.unique_id != frame.unique_id:
            self.stats.dropped_unmatched += 1
            log.warning(
                "response %s matches no request in flight; dropped",
                frame.unique_id,
                extra=log_fields(message_id=frame.unique_id, direction="in"),
            )
            return
        self._inflight = None
        if isinstance(frame, CallResult):
            try:
                schemas(version).validate(current.action, frame.payload, response=True)
            except RpcError as exc:
                log.warning(
                    "CSMS answered %s with an invalid payload: %s",
                    current.action,
                    exc.description,
                    extra=log_fields(action=current.action),
                )
                self._failed(
                    current,
                    Outcome(
                        current.action, error_code=exc.code.value, error_description=exc.description
                    ),
                )
                return
            self._succeeded(current, frame.payload)
        elif not self._reregister_on_security_error(current, frame):
            self._failed(
                current,
                Outcome(current.action, error_code=frame.code, error_description=frame.description),
            )

    def _reregister_on_security_error(self, item: _Outgoing, frame: CallError) -> bool:
        """A CALLERROR SecurityError to a queued message means the CSMS does not (or no longer)
        count this charger as registered (OCPP 2.0.1 Part 2 FR.04: "the CSMS did not accept the
        BootNotificationRequest"; e.g. it restarted and lost its state). The message was not
        processed, so it is not an attempt: register again and send it again afterwards, with
        the same id. Once per connection: a SecurityError after that new registration is a
        failure like any other, so a CSMS that refuses one message for good cannot make the
        charger boot in a loop. True when handled so."""
        if frame.code != ErrorCode.SECURITY_ERROR.value or item.source != "queue":
            return False
        if self._reregistered or item.seq is None:
            return False
        self._reregistered = True
        log.warning(
            "CSMS answered %s with SecurityError (%s): registering again before resending it",
            item.action,
            frame.description,
            extra=log_fields(action=item.action, message_id=item.unique_id),
        )
        self.registration = Registration.UNKNOWN
        self._boot_due = self._clock.monotonic()
        return True

    def _retry_head_later(self) -> None:
        head = self._queue.head()
        if head is not None:
            self._queue_retry_at[head.seq] = (
                self._clock.monotonic() + self._settings.transaction_message_retry_interval
            )

    def _deferred_sink(
        self, version: OcppVersion, call: Call
    ) -> Callable[[JsonDict | None, ErrorCode | None, str], None]:
        generation = self._generation

        def sink(payload: JsonDict | None, code: ErrorCode | None, text: str) -> None:
            if generation != self._generation or self.version is not version:
                log.info(
                    "late answer to %s %s dropped: its connection is gone",
                    call.action,
                    call.unique_id,
                )
                return
            frame: str
            if payload is not None:
                try:
                    schemas(version).validate(call.action, payload, response=True)
                    frame = encode_result(call.unique_id, payload)
                except RpcError as exc:
                    log.error("deferred answer to %s is invalid: %s", call.action, exc.description)
                    frame = encode_error(
                        call.unique_id,
                        ErrorCode.INTERNAL_ERROR,
                        "internal error while handling the request",
                        version,
                    )
            else:
                assert code is not None
                frame = encode_error(call.unique_id, code, text, version)
            self._frames.append(frame)
            self._wake()

        return sink

    def _wake(self) -> None:
        if self.wakeup is not None:
            self.wakeup()

    # ---------------------------------------------------------------- outcomes
    def _succeeded(self, item: _Outgoing, payload: JsonDict) -> None:
        if item.source == "boot":
            self._on_boot_result(payload)
        elif item.action == "Heartbeat" and isinstance(payload.get("currentTime"), str):
            self.time.set_reference_iso(payload["currentTime"])
        if item.seq is not None:
            self._queue_retry_at.pop(item.seq, None)
            csms_id = None
            if item.action == "StartTransaction" and "transactionId" in payload:
                csms_id = payload["transactionId"]
            self._queue.complete(item.seq, tx_ref=item.tx_ref, csms_transaction_id=csms_id)
            self._emit(
                "queued-result",
                action=item.action,
                tx_ref=item.tx_ref,
                payload=payload,
                request=item.payload,
            )
        self._finish(item, Outcome(item.action, payload=payload))

    def _failed(self, item: _Outgoing, outcome: Outcome) -> None:
        if item.source == "boot":
            self._boot_due = self._clock.monotonic() + self.options.boot_retry_default_s
        if item.seq is not None:
            self._queue_failed(item, outcome)
        self._finish(item, outcome)

    def _queue_failed(self, item: _Outgoing, outcome: Outcome) -> None:
        assert item.seq is not None
        head = self._queue.head()
        if head is None or head.seq != item.seq:
            return
        attempts = head.attempts + 1
        limit = self._settings.transaction_message_attempts
        fields = log_fields(
            action=item.action, message_id=item.unique_id, transaction_id=head.tx_ref
        )
        if head.kind != "transaction" or attempts >= limit:
            log.error(
                "dropping %s after %d failed attempt(s): %s %s",
                item.action,
                attempts,
                outcome.error_code,
                outcome.error_description,
                extra=fields,
            )
            self._queue.remove(item.seq)
            self._queue_retry_at.pop(item.seq, None)
            self._emit("queue-drop", action=item.action, message_id=item.unique_id)
            return
        delay = self._settings.transaction_message_retry_interval * attempts
        self._queue.record_attempt(item.seq, not_before=(self.time.now() or 0.0) + delay)
        self._queue_retry_at[item.seq] = self._clock.monotonic() + delay
        log.warning(
            "%s failed (%s), attempt %d of %d; retry in %ds",
            item.action,
            outcome.error_code,
            attempts,
            limit,
            delay,
            extra=fields,
        )

    def _finish(self, item: _Outgoing, outcome: Outcome) -> None:
        if item.on_done is not None:
            try:
                item.on_done(outcome)
            except Exception:
                log.exception("completion callback for %s failed", item.action)

    def _on_boot_result(self, payload: JsonDict) -> None:
        status = Registration(payload["status"])
        interval = int(payload["interval"])
        self.time.set_reference_iso(payload["currentTime"])
        now = self._clock.monotonic()
        self.registration = status
        if status is Registration.ACCEPTED:
            self._boot_due = None
            if interval > 0:
                self._settings.set_heartbeat_interval(interval)
            self._queue_resume_at = max(self._queue_resume_at, now)
        elif status is Registration.PENDING and self.version is OcppVersion.V201:
            # B02: the interval is the wait before the next BootNotification (a
            # TriggerMessage(BootNotification) may ask for it sooner).
            self._boot_due = now + (interval if interval > 0 else self.options.boot_retry_default_s)
        elif status is Registration.PENDING:
            self._boot_due = None  # 1.6: wait for TriggerMessage(BootNotification)
        else:
            wait = interval if interval > 0 else self.options.boot_retry_default_s
            self._boot_due = now + wait
        log.info(
            "registration %s (interval %ds)",
            status.value,
            interval,
            extra=log_fields(action="BootNotification", event=LogEvent.REGISTRATION),
        )
        self._emit("registration", status=status.value, interval=interval)

    # ---------------------------------------------------------------- time
    def tick(self) -> None:
        now = self._clock.monotonic()
        item = self._inflight
        if item is not None and now >= item.deadline:
            self._inflight = None
            self.stats.timeouts += 1
            log.warning(
                "no response to %s %s within %.0fs",
                item.action,
                item.unique_id,
                self.options.call_timeout_s,
                extra=log_fields(action=item.action, message_id=item.unique_id),
            )
            if item.source == "boot":
                self._boot_due = now + self.options.call_timeout_s
            elif item.seq is not None and self._timeout_is_attempt(item.seq):
                self._queue_failed(
                    item,
                    Outcome(item.action, error_code="Timeout", error_description="no response"),
                )
            elif item.seq is not None:
                # Not an attempt: the CSMS did not process it. Same id, later.
                self._queue_retry_at[item.seq] = (
                    now + self._settings.transaction_message_retry_interval
                )
            self._finish(
                item, Outcome(item.action, error_code="Timeout", error_description="no response")
            )
        self._pump()

    def _timeout_is_attempt(self, seq: int) -> bool:
        """OCPP 2.0.1 E13.FR.01: a transaction message the CSMS did not answer within
        MessageTimeout failed like one answered with a CALLERROR (an attempt of
        OCPPCommCtrlr.MessageAttempts). Under 1.6 a timeout is no attempt."""
        if self.version is not OcppVersion.V201:
            return False
        head = self._queue.head()
        return head is not None and head.seq == seq and head.kind == "transaction"

    def next_deadline(self) -> float | None:
        """Monotonic time at which `tick` has something to do (None: nothing scheduled)."""
        if not self.connected:
            return None
        if self._inflight is not None:
            return self._inflight.deadline
        candidates: list[float] = []
        if self._boot_due is not None and self.registration is not Registration.ACCEPTED:
            candidates.append(self._boot_due)
        if self.registration is Registration.ACCEPTED:
            head = self._queue.head()
            if head is not None:
                candidates.append(
                    max(self._queue_resume_at, self._queue_retry_at.get(head.seq, 0.0))
                )
            interval = self._settings.heartbeat_interval
            if interval > 0:
                candidates.append(self._last_call_sent + interval)
        return min(candidates) if candidates else None

    # ---------------------------------------------------------------- sending
    def take_frames(self) -> list[str]:
        frames, self._frames = self._frames, []
        return frames

    def _pump(self) -> None:
        if not self.connected or self._inflight is not None or self._dispatching:
            return
        item = self._next_outgoing()
        if item is None:
            return
        now = self._clock.monotonic()
        item.deadline = now + self.options.call_timeout_s
        self._inflight = item
        self._last_call_sent = now
        if _has_marker(item.payload) and item.seq is None:
            item.payload = self._resolve_times(item.payload) or item.payload
        self._frames.append(encode_call(item.unique_id, item.action, item.payload))
        self._wake()
        log.info(
            "-> %s",
            item.action,
            extra=_fields(item.action, item.unique_id, "out", item.payload, item.tx_ref),
        )

    def _next_outgoing(self) -> _Outgoing | None:
        assert self.version is not None
        now = self._clock.monotonic()
        if self.registration is not Registration.ACCEPTED:
            if self._boot_due is not None and now >= self._boot_due:
                self._boot_due = None
                return _Outgoing(
                    self._new_id(), "BootNotification", self._boot_payload(self.version), "boot"
                )
            if self._triggered:
                return self._triggered.popleft()
            return None
        if self._boot_due is not None and now >= self._boot_due:
            # TriggerMessage(BootNotification) while accepted.
            self._boot_due = None
            return _Outgoing(
                self._new_id(), "BootNotification", self._boot_payload(self.version), "boot"
            )
        if self._triggered:
            return self._triggered.popleft()
        if self._immediate:
            return self._immediate.popleft()
        queued = self._next_queued(now)
        if queued is not None:
            return queued
        interval = self._settings.heartbeat_interval
        if interval > 0 and now - self._last_call_sent >= interval:
            return _Outgoing(self._new_id(), "Heartbeat", {}, "heartbeat")
        return None

    def _next_queued(self, now: float) -> _Outgoing | None:
        if now < self._queue_resume_at:
            return None
        head = self._queue.head()
        if head is None or now < self._queue_retry_at.get(head.seq, 0.0):
            return None
        payload = head.payload
        made_for = payload.get(VERSION_KEY)
        if made_for is not None and self.version is not None and made_for != self.version.value:
            log.error(
                "dropping %s: it was queued for OCPP %s and this connection speaks OCPP %s",
                head.action,
                made_for,
                self.version.value,
                extra=log_fields(
                    action=head.action, message_id=head.message_id, transaction_id=head.tx_ref
                ),
            )
            self._queue.remove(head.seq)
            self._emit(
                "queue-drop", action=head.action, message_id=head.message_id, version=made_for
            )
            return self._next_queued(now)
        if _has_marker(payload):
            resolved = self._resolve_times(payload)
            if resolved is None:
                return None  # no valid time yet: hold the queue rather than send 1970
            payload = resolved
            self._queue.update_payload(head.seq, payload)  # retries carry the same times
        if "transactionId" in payload and payload["transactionId"] is None:
            # 1.6: the CSMS id of this transaction never arrived (its StartTransaction was
            # dropped). Sending -1 would corrupt the CSMS's books; drop with an error instead.
            log.error(
                "dropping %s: its transaction has no CSMS transaction id",
                head.action,
                extra=log_fields(
                    action=head.action, message_id=head.message_id, transaction_id=head.tx_ref
                ),
            )
            self._queue.remove(head.seq)
            self._emit("queue-drop", action=head.action, message_id=head.message_id)
            return self._next_queued(now)
        if VERSION_KEY in payload:
            payload = {k: v for k, v in payload.items() if k != VERSION_KEY}
        return _Outgoing(
            head.message_id, head.action, payload, "queue", seq=head.seq, tx_ref=head.tx_ref
        )

    # ---------------------------------------------------------------- helpers for adapters
    def timestamp(self) -> str:
        """The time to put in a message now: ISO 8601 UTC when a valid time is known, else a
        marker that the queue resolves to the real time once the clock is set (so nothing is
        ever stamped 1970)."""
        now = self.time.now()
        if now is not None:
            return format_iso(now)
        return f"{TIME_MARKER}{self.boot_id}:{self._clock.monotonic():.3f}"

    def _resolve_times(self, payload: JsonDict) -> JsonDict | None:
        if self.time.now() is None:
            return None

        def resolve(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: resolve(v) for k, v in value.items()}
            if isinstance(value, list):
                return [resolve(v) for v in value]
            if isinstance(value, str) and value.startswith(TIME_MARKER):
                boot_id, _, mono = value[len(TIME_MARKER) :].rpartition(":")
                moment = self.time.at_monotonic(float(mono)) if boot_id == self.boot_id else None
                if moment is None:
                    # Recorded before a restart that came before any valid time: the true
                    # time is lost. Send the earliest time we can vouch for, and say so.
                    log.warning(
                        "time of a queued message recorded before the clock was set "
                        "in an earlier run is unknown; using the send time"
                    )
                    moment = self.time.now()
                assert moment is not None
                return format_iso(moment)
            return value

        resolved: JsonDict = resolve(payload)
        return resolved

    def now_iso(self) -> str | None:
        now = self.time.now()
        return None if now is None else format_iso(now)

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    def transaction_messages_queued(
        self, tx_ref: str | None = None, *, action: str = "TransactionEvent"
    ) -> bool:
        """True while transaction messages wait in the durable queue (the one in flight
        included: it leaves the queue when answered): those of `tx_ref` (`action` only), or
        of any transaction when `tx_ref` is None (GetTransactionStatus)."""
        if tx_ref is None:
            return self._queue.count("transaction") > 0
        return self._queue.has_pending_start(tx_ref, action=action)


def _fields(
    action: str, message_id: str, direction: str, payload: JsonDict, tx_ref: str | None
) -> dict[str, object]:
    """Journal fields of one OCPP message: action, id, direction, and the EVSE / transaction
    it concerns when the payload says (1.6 connectorId / transactionId, 2.0.1 evse.id /
    transactionInfo.transactionId)."""
    evse = payload.get("connectorId")
    if evse is None and isinstance(payload.get("evse"), dict):
        evse = payload["evse"].get("id")
    if evse is None:
        evse = payload.get("evseId")
    transaction = payload.get("transactionId")
    if transaction is None and isinstance(payload.get("transactionInfo"), dict):
        transaction = payload["transactionInfo"].get("transactionId")
    if transaction is None:
        transaction = tx_ref
    return log_fields(
        action=action,
        message_id=message_id,
        direction=direction,
        evse_id=evse if isinstance(evse, int) else None,
        transaction_id=None if transaction is None else str(transaction),
    )
