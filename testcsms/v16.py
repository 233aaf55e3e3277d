"""The test CSMS's OCPP 1.6J answers: an ocpp.v16.ChargePoint with a handler per CP-sent action.

Answers follow the `TestCsms` policy attributes (boot status and intervals, blocked/invalid id
tags, transaction ids), read at the moment each CALL is answered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ocpp.routing import on
from ocpp.v16 import ChargePoint, call_result

if TYPE_CHECKING:
    from testcsms.server import TestCsms

_F = TypeVar("_F", bound=Callable[..., Any])


def _on(action: str) -> Callable[[_F], _F]:
    """`ocpp.routing.on`, typed."""
    return cast(Callable[[_F], _F], on(action))


class ChargePointV16(ChargePoint):  # type: ignore[misc]
    """Central-system side of one OCPP 1.6J connection."""

    def __init__(self, charge_point_id: str, connection: Any, csms: TestCsms) -> None:
        super().__init__(
            charge_point_id,
            connection,
            response_timeout=3600,  # TestCsms.call() applies the caller's timeout
            logger=logging.getLogger("testcsms.ocpp"),
        )
        self.csms = csms

    def _id_tag_info(self, id_tag: str | None) -> dict[str, str]:
        return {"status": self.csms.id_tag_status(id_tag)}

    @_on("BootNotification")
    def on_boot_notification(self, **_: Any) -> Any:
        status = self.csms.boot_status
        interval = self.csms.heartbeat_interval if status == "Accepted" else self.csms.boot_interval
        return call_result.BootNotification(
            current_time=self.csms.current_time(), interval=interval, status=status
        )

    @_on("Heartbeat")
    def on_heartbeat(self, **_: Any) -> Any:
        return call_result.Heartbeat(current_time=self.csms.current_time())

    @_on("StatusNotification")
    def on_status_notification(self, **_: Any) -> Any:
        return call_result.StatusNotification()

    @_on("Authorize")
    def on_authorize(self, id_tag: str, **_: Any) -> Any:
        return call_result.Authorize(id_tag_info=self._id_tag_info(id_tag))

    @_on("StartTransaction")
    def on_start_transaction(self, id_tag: str, **_: Any) -> Any:
        return call_result.StartTransaction(
            transaction_id=self.csms.allocate_transaction_id(),
            id_tag_info=self._id_tag_info(id_tag),
        )

    @_on("StopTransaction")
    def on_stop_transaction(self, id_tag: str | None = None, **_: Any) -> Any:
        info = self._id_tag_info(id_tag) if id_tag is not None else None
        return call_result.StopTransaction(id_tag_info=info)

    @_on("MeterValues")
    def on_meter_values(self, **_: Any) -> Any:
        return call_result.MeterValues()

    @_on("DataTransfer")
    def on_data_transfer(self, data: str | None = None, **_: Any) -> Any:
        return call_result.DataTransfer(status="Accepted", data=data)

    @_on("FirmwareStatusNotification")
    def on_firmware_status_notification(self, **_: Any) -> Any:
        return call_result.FirmwareStatusNotification()

    @_on("DiagnosticsStatusNotification")
    def on_diagnostics_status_notification(self, **_: Any) -> Any:
        return call_result.DiagnosticsStatusNotification()

    @_on("SecurityEventNotification")
    def on_security_event_notification(self, **_: Any) -> Any:
        return call_result.SecurityEventNotification()

    @_on("SignedFirmwareStatusNotification")
    def on_signed_firmware_status_notification(self, **_: Any) -> Any:
        return call_result.SignedFirmwareStatusNotification()

    @_on("LogStatusNotification")
    def on_log_status_notification(self, **_: Any) -> Any:
        return call_result.LogStatusNotification()

    @_on("SignCertificate")
    def on_sign_certificate(self, **_: Any) -> Any:
        return call_result.SignCertificate(status="Accepted")
