"""OCPP 1.6 Firmware Management and the security whitepaper's signed update, log upload and
ExtendedTriggerMessage: thin translations onto service.firmware's managers.

UpdateFirmware (plain) reports FirmwareStatusNotification with the seven 1.6 values; the
manager's finer states map onto them (InstallVerificationFailed -> InstallationFailed;
DownloadScheduled, SignatureVerified, InstallScheduled and InstallRebooting are not reported).
SignedUpdateFirmware reports every state with SignedFirmwareStatusNotification and its
requestId.

A second update request while one runs: the 1.6 UpdateFirmware.conf has no status, so a plain
request replaces an update that has not started installing (the CSMS's latest wish wins, as
SignedUpdateFirmware's AcceptedCanceled does), and is answered with a CALLERROR GenericError
while an update is being installed — it will not be carried out, and the CSMS is told so.
SignedUpdateFirmware answers AcceptedCanceled / Rejected for the same two cases.

With [firmware] backend = "none" both update requests are answered CALLERROR NotSupported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from service.firmware.manager import (
    FINAL_STATES,
    FirmwareJob,
    FirmwareManager,
    FirmwareRequest,
    FirmwareState,
    SubmitStatus,
    transfer_url_problem,
)
from service.firmware.uploads import FAILURES, DiagnosticsManager, UploadJob, UploadRequest
from service.firmware.uploads import UploadStatus as Upload
from service.ocpp.rpc import Call, ErrorCode, JsonDict, OcppVersion, RpcError
from service.station.clock import parse_iso

if TYPE_CHECKING:
    from service.ocpp.engine import Engine

log = logging.getLogger("evsed.ocpp.v16")

ORIGIN = "ocpp1.6"

# Manager state -> 1.6 FirmwareStatus for plain updates (None: not reported).
PLAIN_STATUS: dict[FirmwareState, str | None] = {
    FirmwareState.IDLE: None,
    FirmwareState.DOWNLOAD_SCHEDULED: None,
    FirmwareState.DOWNLOADING: "Downloading",
    FirmwareState.DOWNLOADED: "Downloaded",
    FirmwareState.DOWNLOAD_FAILED: "DownloadFailed",
    FirmwareState.SIGNATURE_VERIFIED: None,
    FirmwareState.INVALID_SIGNATURE: "InstallationFailed",
    FirmwareState.INVALID_CERTIFICATE: None,
    FirmwareState.INSTALL_SCHEDULED: None,
    FirmwareState.INSTALLING: "Installing",
    FirmwareState.INSTALL_REBOOTING: None,
    FirmwareState.INSTALLED: "Installed",
    FirmwareState.INSTALL_VERIFICATION_FAILED: "InstallationFailed",
    FirmwareState.INSTALLATION_FAILED: "InstallationFailed",
}
# What a trigger says for a state that is not reported by itself (the nearest 1.6 value).
_PLAIN_TRIGGER: dict[FirmwareState, str] = {
    FirmwareState.DOWNLOAD_SCHEDULED: "Idle",
    FirmwareState.SIGNATURE_VERIFIED: "Downloaded",
    FirmwareState.INSTALL_SCHEDULED: "Downloaded",
    FirmwareState.INSTALL_REBOOTING: "Installing",
}


def firmware_report(job: FirmwareJob, state: FirmwareState) -> tuple[str, JsonDict] | None:
    """The notification for `job` entering `state` (the manager's reporter for 1.6)."""
    if job.signed:
        if state in (FirmwareState.IDLE, FirmwareState.INVALID_CERTIFICATE):
            return None
        payload: JsonDict = {"status": state.value}
        if job.request_id is not None:
            payload["requestId"] = job.request_id
        return "SignedFirmwareStatusNotification", payload
    status = PLAIN_STATUS[state]
    return None if status is None else ("FirmwareStatusNotification", {"status": status})


def upload_report(job: UploadJob, status: Upload) -> tuple[str, JsonDict] | None:
    if status is Upload.IDLE:
        return None
    if job.kind == "diagnostics":
        value = "UploadFailed" if status in FAILURES else status.value
        return "DiagnosticsStatusNotification", {"status": value}
    payload: JsonDict = {"status": status.value}
    if job.request_id is not None:
        payload["requestId"] = job.request_id
    return "LogStatusNotification", payload


# ---------------------------------------------------------------------------- trigger payloads
def firmware_status_payload(manager: FirmwareManager | None) -> JsonDict:
    """TriggerMessage(FirmwareStatusNotification): the running update's status, else Idle."""
    job = manager.job if manager is not None else None
    if job is None or job.state in FINAL_STATES:
        return {"status": "Idle"}
    status = PLAIN_STATUS.get(job.state) or _PLAIN_TRIGGER.get(job.state, "Idle")
    return {"status": status}


def signed_firmware_status_payload(manager: FirmwareManager | None) -> JsonDict:
    """ExtendedTriggerMessage(FirmwareStatusNotification): SignedFirmwareStatusNotification."""
    job = manager.job if manager is not None else None
    if job is None or job.state in FINAL_STATES:
        return {"status": "Idle"}
    payload: JsonDict = {"status": job.state.value}
    if job.request_id is not None:
        payload["requestId"] = job.request_id
    return payload


def diagnostics_status_payload(manager: DiagnosticsManager | None) -> JsonDict:
    job = manager.job if manager is not None else None
    if job is not None and job.kind == "diagnostics" and job.status is Upload.UPLOADING:
        return {"status": "Uploading"}
    return {"status": "Idle"}


def log_status_payload(manager: DiagnosticsManager | None) -> JsonDict:
    job = manager.job if manager is not None else None
    if job is not None and job.kind == "log" and job.status is Upload.UPLOADING:
        payload: JsonDict = {"status": "Uploading"}
        if job.request_id is not None:
            payload["requestId"] = job.request_id
        return payload
    return {"status": "Idle"}


# ---------------------------------------------------------------------------- handlers
def request_time(payload: JsonDict, key: str, where: str = "") -> float | None:
    value = payload.get(key)
    if value is None:
        return None
    moment = parse_iso(value) if isinstance(value, str) else None
    if moment is None:
        raise RpcError(
            ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
            f"{where}{key}: {value!r} is not an RFC 3339 date-time",
        )
    return moment


def request_count(payload: JsonDict, key: str) -> int | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or value < 0:
        raise RpcError(
            ErrorCode.PROPERTY_CONSTRAINT_VIOLATION, f"{key}: {value!r} is not an integer >= 0"
        )
    return value


def _window(start: float | None, stop: float | None, keys: str) -> None:
    if start is not None and stop is not None and start > stop:
        raise RpcError(ErrorCode.PROPERTY_CONSTRAINT_VIOLATION, f"{keys}: the window ends first")


def _location(value: object, key: str) -> str:
    problem = transfer_url_problem(value) if isinstance(value, str) else "not a string"
    if problem is not None:
        raise RpcError(ErrorCode.PROPERTY_CONSTRAINT_VIOLATION, f"{key}: {problem}")
    assert isinstance(value, str)
    return value


class FirmwareHandlers:
    """Registers the 1.6 firmware, diagnostics and log handlers on the engine."""

    def __init__(
        self,
        engine: Engine,
        firmware: FirmwareManager,
        diagnostics: DiagnosticsManager,
        *,
        core_trigger: Callable[[str, int | None], str] | None = None,
    ) -> None:
        self.engine = engine
        self.firmware = firmware
        self.diagnostics = diagnostics
        self.core_trigger = core_trigger
        firmware.reporters[ORIGIN] = firmware_report
        diagnostics.reporters[ORIGIN] = upload_report
        v16 = OcppVersion.V16
        engine.register(v16, "UpdateFirmware", self.update_firmware)
        engine.register(v16, "SignedUpdateFirmware", self.signed_update_firmware)
        engine.register(v16, "GetDiagnostics", self.get_diagnostics)
        engine.register(v16, "GetLog", self.get_log)
        engine.register(v16, "ExtendedTriggerMessage", self.extended_trigger)

    def _require_backend(self, action: str) -> None:
        if self.firmware.installer is None:
            raise RpcError(
                ErrorCode.NOT_SUPPORTED,
                f"{action}: firmware updates are not configured on this charger "
                '([firmware] backend = "none")',
            )

    def update_firmware(self, call: Call) -> JsonDict:
        self._require_backend("UpdateFirmware")
        p = call.payload
        request = FirmwareRequest(
            origin=ORIGIN,
            location=_location(p["location"], "location"),
            retrieve_at=request_time(p, "retrieveDate"),
            retries=request_count(p, "retries"),
            retry_interval_s=request_count(p, "retryInterval"),
        )
        status = self.firmware.submit(request)
        if status is SubmitStatus.REJECTED:
            raise RpcError(
                ErrorCode.GENERIC_ERROR,
                "a firmware update is being installed; this request will not be carried out",
            )
        return {}

    def signed_update_firmware(self, call: Call) -> JsonDict:
        self._require_backend("SignedUpdateFirmware")
        p = call.payload
        firmware = p["firmware"]
        request = FirmwareRequest(
            origin=ORIGIN,
            location=_location(firmware["location"], "firmware/location"),
            retrieve_at=request_time(firmware, "retrieveDateTime", "firmware/"),
            install_at=request_time(firmware, "installDateTime", "firmware/"),
            retries=request_count(p, "retries"),
            retry_interval_s=request_count(p, "retryInterval"),
            request_id=p["requestId"],
            signing_certificate=firmware["signingCertificate"],
            signature=firmware["signature"],
        )
        return {"status": self.firmware.submit(request).value}

    def get_diagnostics(self, call: Call) -> JsonDict:
        p = call.payload
        request = UploadRequest(
            origin=ORIGIN,
            kind="diagnostics",
            location=_location(p["location"], "location"),
            start=request_time(p, "startTime"),
            stop=request_time(p, "stopTime"),
            retries=request_count(p, "retries"),
            retry_interval_s=request_count(p, "retryInterval"),
        )
        _window(request.start, request.stop, "startTime/stopTime")
        _, file_name = self.diagnostics.submit(request)
        return {"fileName": file_name}

    def get_log(self, call: Call) -> JsonDict:
        p = call.payload
        params = p["log"]
        location = params["remoteLocation"]
        problem = transfer_url_problem(location)
        if problem is not None:
            log.warning("GetLog refused: remoteLocation %s", problem)
            return {"status": "Rejected"}
        request = UploadRequest(
            origin=ORIGIN,
            kind="log",
            location=location,
            log_type=p["logType"],
            request_id=p["requestId"],
            start=request_time(params, "oldestTimestamp", "log/"),
            stop=request_time(params, "latestTimestamp", "log/"),
            retries=request_count(p, "retries"),
            retry_interval_s=request_count(p, "retryInterval"),
        )
        if request.start is not None and request.stop is not None and request.start > request.stop:
            log.warning("GetLog refused: oldestTimestamp is after latestTimestamp")
            return {"status": "Rejected"}
        cancelled, file_name = self.diagnostics.submit(request)
        return {"status": "AcceptedCanceled" if cancelled else "Accepted", "filename": file_name}

    def extended_trigger(self, call: Call) -> JsonDict:
        requested = call.payload["requestedMessage"]
        connector = call.payload.get("connectorId")
        if requested == "FirmwareStatusNotification":
            payload = signed_firmware_status_payload(self.firmware)
            self.engine.trigger("SignedFirmwareStatusNotification", payload)
        elif requested == "LogStatusNotification":
            self.engine.trigger("LogStatusNotification", log_status_payload(self.diagnostics))
        elif (
            requested in ("BootNotification", "Heartbeat", "MeterValues", "StatusNotification")
            and self.core_trigger is not None
        ):
            return {"status": self.core_trigger(requested, connector)}
        else:
            # SignChargePointCertificate: certificate management is not implemented.
            return {"status": "NotImplemented"}
        return {"status": "Accepted"}
