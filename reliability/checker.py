"""The delivery rules, checked on what the test CSMS recorded.

For the transaction messages of OCPP 1.6 (StartTransaction, transaction MeterValues,
StopTransaction) the CSMS must see:

* every message exactly once as a distinct message id; a copy with the *same* id is a resend
  (README "Resend rule") and is counted, not failed, as long as it carries the same content;
* per transaction, StartTransaction before its MeterValues before its StopTransaction;
* every StopTransaction / transaction MeterValues with a transactionId the CSMS gave to a
  StartTransaction (never null, -1 or an unknown id);
* every StartTransaction followed by exactly one StopTransaction;
* nothing the daemon committed to its queue missing (ids taken from database snapshots).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from testcsms.server import Received

TX_ACTIONS = ("StartTransaction", "MeterValues", "StopTransaction")
MAX_DETAILS = 25


@dataclass
class Verdict:
    transactions: int = 0
    stopped_transactions: int = 0
    distinct_transaction_messages: int = 0
    transaction_frames: int = 0  # every copy
    resends: int = 0  # copies with an id seen before (the resend rule)
    distinct_calls: int = 0  # every charger-initiated CALL id, all actions
    expected_ids: int = 0  # ids found committed in the daemon's queue at some point
    lost: int = 0
    duplicates: int = 0  # the same message under two ids, or a second Stop
    order_violations: int = 0
    bad_transaction_ids: int = 0
    never_stopped: int = 0
    content_changed: int = 0
    details: list[str] = field(default_factory=list)

    def fail(self, kind: str, text: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.details) < MAX_DETAILS:
            self.details.append(f"{kind}: {text}")

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.duplicates
            or self.order_violations
            or self.bad_transaction_ids
            or self.never_stopped
            or self.content_changed
        )

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def check_delivery(
    received: Sequence[Received],
    *,
    expected_ids: Iterable[str] = (),
    open_transactions_allowed: bool = False,
) -> Verdict:
    """Check the rules above on everything the CSMS recorded (both directions)."""
    v = Verdict()
    first: dict[str, int] = {}  # message id -> index of its first copy
    content: dict[str, str] = {}
    copies: Counter[str] = Counter()
    tx_calls: list[tuple[int, Received]] = []
    all_call_ids: set[str] = set()
    start_of_txid: dict[int, str] = {}  # CSMS transactionId -> StartTransaction message id
    for index, r in enumerate(received):
        if r.direction == "in" and r.message_type == 2:
            all_call_ids.add(r.unique_id)
            if r.action not in TX_ACTIONS:
                continue
            if r.action == "MeterValues" and "transactionId" not in (r.payload or {}):
                continue  # a MeterValues outside any transaction
            copies[r.unique_id] += 1
            text = _canon([r.action, r.payload])
            if r.unique_id in first:
                if content[r.unique_id] != text:
                    v.fail(
                        "content_changed",
                        f"{r.action} {r.unique_id} resent with other content: {r.payload}",
                    )
                continue
            first[r.unique_id] = index
            content[r.unique_id] = text
            tx_calls.append((index, r))
        elif r.direction == "out" and r.message_type == 3 and r.action == "StartTransaction":
            tx_id = (r.payload or {}).get("transactionId")
            if isinstance(tx_id, int):
                start_of_txid[tx_id] = r.unique_id
    v.distinct_calls = len(all_call_ids)
    v.transaction_frames = sum(copies.values())
    v.distinct_transaction_messages = len(first)
    v.resends = v.transaction_frames - len(first)

    starts = [r for _, r in tx_calls if r.action == "StartTransaction"]
    v.transactions = len(starts)
    meters: dict[str, list[int]] = defaultdict(list)
    stops: dict[str, list[int]] = defaultdict(list)
    start_keys: dict[str, str] = {}
    meter_keys: dict[str, str] = {}
    for index, r in tx_calls:
        payload = r.payload or {}
        if r.action == "StartTransaction":
            key = _canon(payload)
            if key in start_keys:
                v.fail("duplicates", f"StartTransaction {r.unique_id} repeats {start_keys[key]}")
            start_keys[key] = r.unique_id
            continue
        tx_id = payload.get("transactionId")
        owner = start_of_txid.get(tx_id) if isinstance(tx_id, int) else None
        if owner is None or isinstance(tx_id, bool):
            v.fail("bad_transaction_ids", f"{r.action} {r.unique_id} transactionId={tx_id!r}")
            continue
        if r.action == "MeterValues":
            key = _canon([owner, payload.get("connectorId"), payload.get("meterValue")])
            if key in meter_keys:
                v.fail("duplicates", f"MeterValues {r.unique_id} repeats {meter_keys[key]}")
            meter_keys[key] = r.unique_id
            meters[owner].append(index)
        else:
            stops[owner].append(index)

    for start in starts:
        begin = first[start.unique_id]
        mine_stops = stops.get(start.unique_id, [])
        if len(mine_stops) > 1:
            v.fail(
                "duplicates",
                f"{len(mine_stops)} distinct StopTransactions for the transaction of "
                f"StartTransaction {start.unique_id}: "
                + ", ".join(_describe(received[i]) for i in mine_stops),
            )
        if not mine_stops:
            if not open_transactions_allowed:
                v.fail("never_stopped", f"StartTransaction {start.unique_id} {start.payload}")
            continue
        v.stopped_transactions += 1
        end = min(mine_stops)
        for i in meters.get(start.unique_id, []):
            if not begin < i < end:
                v.fail("order_violations", f"MeterValues {received[i].unique_id} outside its tx")
        if end < begin:
            v.fail("order_violations", f"StopTransaction before StartTransaction {start.unique_id}")

    expected = set(expected_ids)
    v.expected_ids = len(expected)
    for missing in sorted(expected - all_call_ids):
        v.fail("lost", f"message {missing} was committed by the daemon, never seen by the CSMS")
    return v


def _describe(r: Received) -> str:
    p = r.payload or {}
    return f"{r.unique_id}(reason={p.get('reason')}, txid={p.get('transactionId')})"


def last_status(received: Sequence[Received]) -> dict[int, str]:
    """The status the CSMS last heard for each connector (in arrival order)."""
    status: dict[int, str] = {}
    for r in received:
        if r.direction == "in" and r.message_type == 2 and r.action == "StatusNotification":
            payload = r.payload or {}
            connector = payload.get("connectorId")
            if isinstance(connector, int):
                status[connector] = str(payload.get("status"))
    return status
