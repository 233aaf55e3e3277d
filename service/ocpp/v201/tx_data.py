"""The vocabulary of OCPP 2.0.1 transactions, for service/ocpp/v201/link.py: the TxStartPoint
/ TxStopPoint conditions, how station stop reasons read in TransactionEvent, idTokenInfo, meter
values in 2.0.1 shape, and `Transaction`, the state of one open transaction as kept in ``kv``.

Pure data and functions: no engine, no station, no database.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service.station import metering
from service.station.auth import AuthStatus, IdTagInfo
from service.station.clock import parse_iso
from service.station.model import ConnectorStatus, StopReason

# TxStartPoint / TxStopPoint values this link knows (the conditions it tracks).
EV_CONNECTED = "EVConnected"
AUTHORIZED = "Authorized"
POWER_PATH_CLOSED = "PowerPathClosed"
ENERGY_TRANSFER = "EnergyTransfer"
CONDITIONS = (EV_CONNECTED, AUTHORIZED, POWER_PATH_CLOSED, ENERGY_TRANSFER)
DEFAULT_START = frozenset({POWER_PATH_CLOSED})
DEFAULT_STOP = frozenset({EV_CONNECTED, AUTHORIZED})

#: Station stop reason -> (triggerReason, stoppedReason) of the Ended event.
STOP_REASONS: dict[StopReason, tuple[str, str]] = {
    StopReason.LOCAL: ("StopAuthorized", "Local"),
    StopReason.REMOTE: ("RemoteStop", "Remote"),
    StopReason.EV_DISCONNECTED: ("EVCommunicationLost", "EVDisconnected"),
    StopReason.POWER_LOSS: ("AbnormalCondition", "PowerLoss"),
    StopReason.REBOOT: ("AbnormalCondition", "Reboot"),
    StopReason.HARD_RESET: ("ResetCommand", "ImmediateReset"),
    StopReason.SOFT_RESET: ("ResetCommand", "ImmediateReset"),
    StopReason.DE_AUTHORIZED: ("Deauthorized", "DeAuthorized"),
    StopReason.EMERGENCY_STOP: ("AbnormalCondition", "EmergencyStop"),
    StopReason.UNLOCK_COMMAND: ("UnlockCommand", "Other"),
    StopReason.OTHER: ("AbnormalCondition", "Other"),
}
# Stops after which the transaction ends even when only the cable would end it.
FINAL_STOPS = frozenset(
    {
        StopReason.POWER_LOSS,
        StopReason.REBOOT,
        StopReason.HARD_RESET,
        StopReason.SOFT_RESET,
        StopReason.EMERGENCY_STOP,
        StopReason.EV_DISCONNECTED,
    }
)
CHARGING_STATES = {
    ConnectorStatus.CHARGING: "Charging",
    ConnectorStatus.SUSPENDED_EV: "SuspendedEV",
    ConnectorStatus.SUSPENDED_EVSE: "SuspendedEVSE",
    ConnectorStatus.FAULTED: "SuspendedEVSE",
}
SAMPLE_TRIGGERS = {"Sample.Periodic": "MeterValuePeriodic", "Sample.Clock": "MeterValueClock"}


def id_token_info(data: Mapping[str, Any]) -> IdTagInfo:
    """An ``idTokenInfo`` as the station's IdTagInfo; ValueError naming a bad field."""
    raw = data.get("status")
    if not isinstance(raw, str) or raw not in {str(s) for s in AuthStatus}:
        raise ValueError(f"idTokenInfo.status: unknown value {raw!r}")
    expiry: float | None = None
    raw_expiry = data.get("cacheExpiryDateTime")
    if raw_expiry is not None:
        expiry = parse_iso(raw_expiry) if isinstance(raw_expiry, str) else None
        if expiry is None:
            raise ValueError(f"idTokenInfo.cacheExpiryDateTime: not a time: {raw_expiry!r}")
    group = data.get("groupIdToken")
    parent = group.get("idToken") if isinstance(group, dict) else None
    return IdTagInfo(AuthStatus(raw), expiry, parent if isinstance(parent, str) else None)


def _same_sample(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return all(a.get(key) == b.get(key) for key in ("context", "measurand", "phase", "location"))


def meter_value_v201(value: Mapping[str, Any], *, signed: bool = False) -> dict[str, Any] | None:
    """A station (1.6-shaped) MeterValue as a 2.0.1 MeterValueType; None when empty.

    A "SignedData" sample (service.station.metering) becomes the `signedMeterValue` of the
    plain sample it follows (same measurand, context, phase and location) when `signed`
    (SampledDataCtrlr.SignReadings) is true; otherwise, or when it is not a signed value this
    charger made, or has no plain twin, it is left out.
    """
    samples: list[dict[str, Any]] = []
    for sv in value.get("sampledValue", []):
        if not isinstance(sv, Mapping):
            continue
        if sv.get("format") == metering.SIGNED_DATA:
            if not signed or not samples or not _same_sample(samples[-1], sv):
                continue
            text = sv.get("value")
            signature = metering.parse_signed_value(text) if isinstance(text, str) else None
            if signature is not None and "signedMeterValue" not in samples[-1]:
                samples[-1]["signedMeterValue"] = signature
            continue
        try:
            number = float(sv["value"])
        except (KeyError, TypeError, ValueError):
            continue
        if not math.isfinite(number):
            continue
        item: dict[str, Any] = {"value": number}
        for key in ("context", "measurand", "phase", "location"):
            if key in sv:
                item[key] = sv[key]
        unit = sv.get("unit") or ("Hz" if sv.get("measurand") == "Frequency" else None)
        if unit:
            item["unitOfMeasure"] = {"unit": unit}
        samples.append(item)
    if not samples:
        return None
    return {"timestamp": value["timestamp"], "sampledValue": samples}


ALIGNED_TOLERANCE_S = 1.0
_DAY_S = 86_400


def on_aligned_interval(moment: float, interval_s: int) -> bool:
    """Whether the unix time `moment` falls on a multiple of `interval_s` seconds counted from
    00:00:00 UTC of its day (within ALIGNED_TOLERANCE_S, either side)."""
    if interval_s <= 0:
        return False
    offset = (moment % _DAY_S) % interval_s
    return offset <= ALIGNED_TOLERANCE_S or interval_s - offset <= ALIGNED_TOLERANCE_S


def reading_context(value: Mapping[str, Any]) -> str:
    samples = value.get("sampledValue") or [{}]
    return str(samples[0].get("context", "Sample.Periodic"))


@dataclass(slots=True)
class Transaction:
    """One open 2.0.1 transaction on an EVSE, as persisted in the kv table."""

    transaction_id: str
    evse_id: int
    seq_no: int = 0  # the next event's seqNo
    session_id: str | None = None
    id_token: dict[str, str] | None = None  # {idToken, type} once authorized
    id_token_sent: bool = False
    charging_state: str = "Idle"
    remote_start_id: int | None = None
    remote_start_sent: bool = False
    stopped_reason: str | None = None  # the session ended; the transaction waits for unplug
    ended_values: list[dict[str, Any]] = field(default_factory=list)
    last_time: str = ""
    evse_sent_plugged: bool = False  # `evse` went out in an event with the EV connected

    def to_json(self) -> str:
        return json.dumps(
            {
                "transaction_id": self.transaction_id,
                "evse_id": self.evse_id,
                "seq_no": self.seq_no,
                "session_id": self.session_id,
                "id_token": self.id_token,
                "id_token_sent": self.id_token_sent,
                "charging_state": self.charging_state,
                "remote_start_id": self.remote_start_id,
                "remote_start_sent": self.remote_start_sent,
                "stopped_reason": self.stopped_reason,
                "ended_values": self.ended_values,
                "last_time": self.last_time,
                "evse_sent_plugged": self.evse_sent_plugged,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Transaction:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        token = data.get("id_token")
        return cls(
            transaction_id=str(data["transaction_id"]),
            evse_id=int(data["evse_id"]),
            seq_no=int(data["seq_no"]),
            session_id=data.get("session_id"),
            id_token=dict(token) if isinstance(token, dict) else None,
            id_token_sent=bool(data.get("id_token_sent", False)),
            charging_state=str(data.get("charging_state", "Idle")),
            remote_start_id=data.get("remote_start_id"),
            remote_start_sent=bool(data.get("remote_start_sent", False)),
            stopped_reason=data.get("stopped_reason"),
            ended_values=list(data.get("ended_values") or []),
            last_time=str(data.get("last_time", "")),
            evse_sent_plugged=bool(data.get("evse_sent_plugged", False)),
        )


def ended_values(
    transaction_data: list[dict[str, Any]],
    *,
    sampled_interval: int,
    aligned_interval: int,
    ended_measurands: list[str],
    meter_stop_wh: float,
    timestamp: str,
    signed: bool = False,
) -> list[dict[str, Any]]:
    """The Ended event's meter values from the station's transaction data (1.6-shaped):
    Transaction.Begin and .End, periodic samples only with SampledDataCtrlr.TxEndedInterval
    > 0 (thinned to that spacing), clock-aligned ones only with AlignedDataCtrlr.TxEndedInterval
    > 0 and then only those taken on a multiple of that interval from midnight UTC (clock
    aligned to it, `on_aligned_interval`; a value whose time cannot be read is kept). The
    samples come from the station's TxUpdatedInterval / AlignedDataCtrlr.Interval schedules,
    so an Ended interval shorter than those (or with those off) gives fewer values. Without an
    end value (recovered after a power cut) the last energy reading the station kept. `signed`
    keeps the meter's signatures (see meter_value_v201)."""
    values = [
        v
        for v in (meter_value_v201(item, signed=signed) for item in transaction_data)
        if v is not None
    ]
    kept: list[dict[str, Any]] = []
    last_sample: float | None = None
    for value in values:
        context = reading_context(value)
        if context == "Sample.Periodic":
            if sampled_interval <= 0:
                continue
            moment = parse_iso(str(value["timestamp"]))
            if (
                moment is not None
                and last_sample is not None
                and moment - last_sample < (sampled_interval - 0.5)
            ):
                continue
            if moment is not None:
                last_sample = moment
        elif context == "Sample.Clock":
            if aligned_interval <= 0:
                continue
            moment = parse_iso(str(value["timestamp"]))
            if moment is not None and not on_aligned_interval(moment, aligned_interval):
                continue
        kept.append(value)
    if (
        not any(reading_context(v) == "Transaction.End" for v in kept)
        and metering.ENERGY_IMPORT in ended_measurands
    ):
        kept.append(
            {
                "timestamp": timestamp,
                "sampledValue": [
                    {
                        "value": round(meter_stop_wh, 3),
                        "context": "Transaction.End",
                        "measurand": metering.ENERGY_IMPORT,
                        "location": metering.LOCATION,
                        "unitOfMeasure": {"unit": "Wh"},
                    }
                ],
            }
        )
    return kept
