"""The test CSMS's OCPP 2.0.1 answers: an ocpp.v201.ChargePoint with a handler per CS-sent action.

Answers follow the `TestCsms` policy attributes (boot status and intervals, blocked/invalid id
tokens), read at the moment each CALL is answered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ocpp.routing import on
from ocpp.v201 import ChargePoint, call_result

if TYPE_CHECKING:
    from testcsms.server import TestCsms

_F = TypeVar("_F", bound=Callable[..., Any])


def _on(action: str) -> Callable[[_F], _F]:
    """`ocpp.routing.on`, typed."""
    return cast(Callable[[_F], _F], on(action))


class ChargePointV201(ChargePoint):  # type: ignore[misc]
    """CSMS side of one OCPP 2.0.1 connection."""

    def __init__(self, charge_point_id: str, connection: Any, csms: TestCsms) -> None:
        super().__init__(
            charge_point_id,
            connection,
            response_timeout=3600,  # TestCsms.call() applies the caller's timeout
            logger=logging.getLogger("testcsms.ocpp"),
        )
        self.csms = csms

    def _id_token_info(self, id_token: dict[str, Any]) -> dict[str, str]:
        # Payload keys arrive snake_cased: {"id_token": "...", "type": "ISO14443"}
        return {"status": self.csms.id_tag_status(id_token.get("id_token"))}

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
    def on_authorize(self, id_token: dict[str, Any], **_: Any) -> Any:
        return call_result.Authorize(id_token_info=self._id_token_info(id_token))

    @_on("TransactionEvent")
    def on_transaction_event(self, id_token: dict[str, Any] | None = None, **_: Any) -> Any:
        info = self._id_token_info(id_token) if id_token is not None else None
        return call_result.TransactionEvent(id_token_info=info)

    @_on("MeterValues")
    def on_meter_values(self, **_: Any) -> Any:
        return call_result.MeterValues()

    @_on("NotifyReport")
    def on_notify_report(self, **_: Any) -> Any:
        return call_result.NotifyReport()

    @_on("NotifyEvent")
    def on_notify_event(self, **_: Any) -> Any:
        return call_result.NotifyEvent()

    @_on("FirmwareStatusNotification")
    def on_firmware_status_notification(self, **_: Any) -> Any:
        return call_result.FirmwareStatusNotification()

    @_on("LogStatusNotification")
    def on_log_status_notification(self, **_: Any) -> Any:
        return call_result.LogStatusNotification()

    @_on("SecurityEventNotification")
    def on_security_event_notification(self, **_: Any) -> Any:
        return call_result.SecurityEventNotification()

    @_on("DataTransfer")
    def on_data_transfer(self, data: Any = None, **_: Any) -> Any:
        return call_result.DataTransfer(status="Accepted", data=data)

    @_on("SignCertificate")
    def on_sign_certificate(self, **_: Any) -> Any:
        return call_result.SignCertificate(status="Accepted")
