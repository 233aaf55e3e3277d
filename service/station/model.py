"""Version-neutral vocabulary of the station: statuses, stop reasons, sessions.

The values are the OCPP strings (1.6 and 2.0.1 share them, or the 2.0.1 adapter maps them), so
the adapters translate shapes, not words.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class ConnectorStatus(StrEnum):
    AVAILABLE = "Available"
    PREPARING = "Preparing"
    CHARGING = "Charging"
    SUSPENDED_EV = "SuspendedEV"
    SUSPENDED_EVSE = "SuspendedEVSE"
    FINISHING = "Finishing"
    RESERVED = "Reserved"
    UNAVAILABLE = "Unavailable"
    FAULTED = "Faulted"


class Availability(StrEnum):
    OPERATIVE = "Operative"
    INOPERATIVE = "Inoperative"


class StopReason(StrEnum):
    LOCAL = "Local"
    REMOTE = "Remote"
    EV_DISCONNECTED = "EVDisconnected"
    POWER_LOSS = "PowerLoss"
    REBOOT = "Reboot"
    HARD_RESET = "HardReset"
    SOFT_RESET = "SoftReset"
    DE_AUTHORIZED = "DeAuthorized"
    EMERGENCY_STOP = "EmergencyStop"
    UNLOCK_COMMAND = "UnlockCommand"
    OTHER = "Other"


# OCPP 1.6 ChargePointErrorCode values (2.0.1 reports faults through other means).
ERROR_CODES = frozenset(
    {
        "ConnectorLockFailure",
        "EVCommunicationError",
        "GroundFailure",
        "HighTemperature",
        "InternalError",
        "LocalListConflict",
        "NoError",
        "OtherError",
        "OverCurrentFailure",
        "OverVoltage",
        "PowerMeterFailure",
        "PowerSwitchFailure",
        "ReaderFailure",
        "ResetFailure",
        "UnderVoltage",
        "WeakSignal",
    }
)


@dataclass(slots=True)
class Session:
    """One use of an EVSE, from authorization or plug-in to its end.

    `session_id` is the charger's own reference (the queue's tx_ref); `transaction_id` the
    CSMS's once known (1.6 int). A session becomes a transaction when `started`.
    """

    session_id: str
    evse_id: int
    id_tag: str | None = None
    # 2.0.1 IdTokenEnumType of `id_tag` (None: the version's default for a reader token);
    # NO_AUTHORIZATION with id_tag "" for a session nobody authorized (free charging).
    id_token_type: str | None = None
    parent_id_tag: str | None = None
    # The token that stopped the session, when one did (it may be another of the group).
    stop_id_tag: str | None = None
    stop_id_token_type: str | None = None
    authorized: bool = False
    remote: bool = False
    started: bool = False
    start_timestamp: str = ""
    meter_start_wh: float = 0.0
    transaction_id: int | str | None = None
    deauthorized: bool = False
    max_energy_wh: float | None = None
    limit_a: float | None = None
    unknown_offline: bool = False
    authorize_deadline: float | None = None  # monotonic: ConnectionTimeOut
    next_sample: float | None = None  # monotonic: MeterValueSampleInterval
    collector_state: str = ""  # metering.TransactionDataCollector JSON

    def to_data(self) -> dict[str, Any]:
        return {
            "parent_id_tag": self.parent_id_tag,
            "id_token_type": self.id_token_type,
            "authorized": self.authorized,
            "remote": self.remote,
            "deauthorized": self.deauthorized,
            "max_energy_wh": self.max_energy_wh,
            "limit_a": self.limit_a,
            "unknown_offline": self.unknown_offline,
            "transaction_id": self.transaction_id,
        }
