"""OCPP 2.0.1 firmware management and log upload (L01 secure / L02 non-secure firmware
update, N01 GetLog): thin translations onto service.firmware's managers, the 2.0.1 twin of
service/ocpp/v16/firmware.py.

UpdateFirmware carries the signing certificate and signature in `firmware` itself: with both
the update is the secure one (L01: the certificate is checked against the manufacturer roots
at once, the signature after the download); with neither it is the non-secure one (L02), which
is refused (Rejected, reasonCode "SignatureRequired") when manufacturer roots are configured
and the backend is "command" — the one backend that checks nothing by itself, whose local
installs need a signature then too. Only one of the two: a signature without its certificate
is InvalidCertificate (with the InvalidFirmwareSigningCertificate security event, as for any
certificate that cannot be accepted), a certificate without a signature is Rejected.

The answer follows the manager (L01.FR.24/25): a running update that has not started
installing is cancelled for the new one (AcceptedCanceled); one being installed makes the
request Rejected. With [firmware] backend = "none" UpdateFirmware is answered CALLERROR
NotSupported. A location that cannot be fetched (bad URL, unsupported scheme) is Rejected with
reasonCode "InvalidURL".

FirmwareStatusNotification {status, requestId} reports every manager state under its own 2.0.1
name (the manager's states are the 2.0.1 FirmwareStatusEnumType names); InvalidCertificate is
the request's answer, not a status, and Idle is only said to a TriggerMessage.

GetLog answers Accepted / AcceptedCanceled (a running upload was cancelled) / Rejected, with
the file name. LogStatusNotification {status, requestId} reports the upload; an upload that a
new GetLog cancels is reported AcceptedCanceled with its own requestId (before the new one's
Uploading).

TriggerMessage(FirmwareStatusNotification / LogStatusNotification) answers with the true
current state: the running update's (or upload's) status and requestId, else Idle without a
requestId.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping
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
from service.firmware.uploads import DiagnosticsManager, UploadJob, UploadRequest
from service.firmware.uploads import UploadStatus as Upload
from service.ocpp.rpc import Call, ErrorCode, JsonDict, OcppVersion, RpcError
from service.ocpp.v16.firmware import request_count, request_time

if TYPE_CHECKING:
    from service.ocpp.engine import Engine

log = logging.getLogger("evsed.ocpp.v201")

V201 = OcppVersion.V201
ORIGIN = V201.subprotocol  # "ocpp2.0.1": the manager queues under from_subprotocol(origin)
TriggerSource = Callable[[int | None], str]

# Manager state -> 2.0.1 FirmwareStatusEnumType (None: not a status notification).
STATUS: dict[FirmwareState, str | None] = {
    state: None if state in (FirmwareState.IDLE, FirmwareState.INVALID_CERTIFICATE) else state.value
    for state in FirmwareState
}


def _answer(status: str, reason: str | None = None, info: str = "") -> JsonDict:
    answer: JsonDict = {"status": status}
    if reason is not None:
        status_info: JsonDict = {"reasonCode": reason[:20]}
        if info:
            status_info["additionalInfo"] = info[:512]
        answer["statusInfo"] = status_info
    return answer


# ---------------------------------------------------------------------------- reporters
def firmware_report(job: FirmwareJob, state: FirmwareState) -> tuple[str, JsonDict] | None:
    """The notification for `job` entering `state` (the manager's reporter for 2.0.1)."""
    status = STATUS[state]
    if status is None:
        return None
    payload: JsonDict = {"status": status}
    if job.request_id is not None:
        payload["requestId"] = job.request_id
    return "FirmwareStatusNotification", payload


def upload_report(job: UploadJob, status: Upload) -> tuple[str, JsonDict] | None:
    """The notification for an upload entering `status` (the uploads' reporter for 2.0.1)."""
    if status is Upload.IDLE:
        return None
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
    payload: JsonDict = {"status": STATUS[job.state] or "Idle"}
    if job.request_id is not None:
        payload["requestId"] = job.request_id
    return payload


def log_status_payload(manager: DiagnosticsManager | None) -> JsonDict:
    """TriggerMessage(LogStatusNotification): Uploading (with its requestId) or Idle."""
    job = manager.job if manager is not None else None
    if job is None or job.status is not Upload.UPLOADING:
        return {"status": "Idle"}
    payload: JsonDict = {"status": "Uploading"}
    if job.request_id is not None:
        payload["requestId"] = job.request_id
    return payload


# ---------------------------------------------------------------------------- handlers
class FirmwareHandlers:
    """Registers the 2.0.1 UpdateFirmware and GetLog handlers, the reporters for origin
    "ocpp2.0.1" and (given `trigger_sources`, V201Remote's) the two TriggerMessage targets."""

    def __init__(
        self,
        engine: Engine,
        firmware: FirmwareManager,
        diagnostics: DiagnosticsManager,
        *,
        trigger_sources: MutableMapping[str, TriggerSource] | None = None,
    ) -> None:
        self.engine = engine
        self.firmware = firmware
        self.diagnostics = diagnostics
        firmware.reporters[ORIGIN] = firmware_report
        diagnostics.reporters[ORIGIN] = upload_report
        engine.register(V201, "UpdateFirmware", self.update_firmware)
        engine.register(V201, "GetLog", self.get_log)
        if trigger_sources is not None:
            trigger_sources["FirmwareStatusNotification"] = self.trigger_firmware_status
            trigger_sources["LogStatusNotification"] = self.trigger_log_status

    # ------------------------------------------------------------------ L01 / L02
    def _signature_required(self) -> bool:
        settings = self.firmware.settings
        return settings.manufacturer_roots is not None and settings.backend == "command"

    def _refuse_certificate(self, info: str) -> JsonDict:
        log.error("UpdateFirmware refused: %s", info)
        security = self.firmware.security
        if security is not None:
            try:
                security.record("InvalidFirmwareSigningCertificate", info, critical=False)
            except Exception:
                log.exception("recording the security event InvalidFirmwareSigningCertificate")
        return _answer("InvalidCertificate", "MissingCertificate", info)

    def update_firmware(self, call: Call) -> JsonDict:
        if self.firmware.installer is None:
            raise RpcError(
                ErrorCode.NOT_SUPPORTED,
                "UpdateFirmware: firmware updates are not configured on this charger "
                '([firmware] backend = "none")',
            )
        p = call.payload
        firmware = p["firmware"]
        location = firmware["location"]
        problem = transfer_url_problem(location)
        if problem is not None:
            log.warning("UpdateFirmware refused: firmware/location %s", problem)
            return _answer("Rejected", "InvalidURL", f"firmware/location: {problem}")
        certificate: str | None = firmware.get("signingCertificate")
        signature: str | None = firmware.get("signature")
        if certificate is None and signature is not None:
            return self._refuse_certificate("a signature without its signingCertificate")
        if certificate is not None and signature is None:
            log.warning("UpdateFirmware refused: a signingCertificate without a signature")
            return _answer("Rejected", "MissingSignature", "signingCertificate without signature")
        if certificate is None and self._signature_required():
            log.warning("UpdateFirmware refused: unsigned, and manufacturer roots are configured")
            return _answer(
                "Rejected",
                "SignatureRequired",
                "this charger installs signed firmware only (signingCertificate and signature)",
            )
        request = FirmwareRequest(
            origin=ORIGIN,
            location=location,
            retrieve_at=request_time(firmware, "retrieveDateTime", "firmware/"),
            install_at=request_time(firmware, "installDateTime", "firmware/"),
            retries=request_count(p, "retries"),
            retry_interval_s=request_count(p, "retryInterval"),
            request_id=p["requestId"],
            signing_certificate=certificate,
            signature=signature,
        )
        status = self.firmware.submit(request)
        if status is SubmitStatus.REJECTED:
            return _answer("Rejected", "InstallInProgress", "an update is being installed")
        if status is SubmitStatus.INVALID_CERTIFICATE:
            return _answer(
                status.value, "InvalidCertificate", "the signing certificate is not accepted"
            )
        return _answer(status.value)

    # ------------------------------------------------------------------ N01
    def get_log(self, call: Call) -> JsonDict:
        p = call.payload
        params = p["log"]
        location = params["remoteLocation"]
        problem = transfer_url_problem(location)
        if problem is not None:
            log.warning("GetLog refused: remoteLocation %s", problem)
            return _answer("Rejected", "InvalidURL", f"log/remoteLocation: {problem}")
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
            return _answer(
                "Rejected", "InvalidTimeWindow", "oldestTimestamp is after latestTimestamp"
            )
        old = self.diagnostics.job if self.diagnostics.active else None
        if old is not None and old.origin == ORIGIN and old.request_id is not None:
            # The cancelled upload's end, reported before the new one starts.
            self.engine.enqueue(
                "LogStatusNotification",
                {"status": "AcceptedCanceled", "requestId": old.request_id},
                transaction=False,
                version=V201,
            )
        try:
            cancelled, file_name = self.diagnostics.submit(request)
        except ValueError as exc:
            log.warning("GetLog refused: %s", exc)
            return _answer("Rejected", "InvalidValue", str(exc))
        return {"status": "AcceptedCanceled" if cancelled else "Accepted", "filename": file_name}

    # ------------------------------------------------------------------ F06 triggers
    def trigger_firmware_status(self, evse_id: int | None) -> str:
        self.engine.trigger("FirmwareStatusNotification", firmware_status_payload(self.firmware))
        return "Accepted"

    def trigger_log_status(self, evse_id: int | None) -> str:
        self.engine.trigger("LogStatusNotification", log_status_payload(self.diagnostics))
        return "Accepted"
