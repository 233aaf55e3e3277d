"""Local vendor handlers for inbound DataTransfer: D-Bus clients that answer for a vendor id.

A client calls `RegisterVendor(vendor_id)`; its unique bus name becomes the handler's owner and
the station API gets a handler for that vendor. When the CSMS sends a DataTransfer for it, the
broker emits `DataTransferRequest(request_id, vendor_id, message_id, data)` and waits for the
owner's `AnswerDataTransfer(request_id, status, data)`. No answer within the timeout, the owner
leaving the bus or unregistering, or the service closing all answer `("Rejected", "")`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from service.station.api import (
    DataTransferAnswer,
    InvalidArgument,
    InvalidState,
    NotAvailable,
    StationApi,
    VendorHandler,
)

__all__ = ["ANSWER_STATUSES", "DEFAULT_VENDOR_TIMEOUT_S", "REJECTED", "VendorBroker"]

log = logging.getLogger("evsed.dbus")

DEFAULT_VENDOR_TIMEOUT_S = 10.0
ANSWER_STATUSES = frozenset({"Accepted", "Rejected", "UnknownMessageId", "UnknownVendorId"})
REJECTED: DataTransferAnswer = ("Rejected", "")
MAX_VENDOR_ID_LENGTH = 255  # OCPP vendorId is CiString255

# emit(request_id, vendor_id, message_id, data): sends the DataTransferRequest signal
EmitRequest = Callable[[str, str, str, str], None]


@dataclass(slots=True)
class _Pending:
    owner: str
    vendor_id: str
    future: asyncio.Future[DataTransferAnswer]


class VendorBroker:
    """Vendor id -> owning bus client, and the requests waiting for that client's answer."""

    def __init__(self, api: StationApi, emit: EmitRequest, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError(f"vendor answer timeout must be > 0, got {timeout_s}")
        self._api = api
        self._emit = emit
        self._timeout_s = timeout_s
        self._owners: dict[str, str] = {}
        self._pending: dict[str, _Pending] = {}
        self._closed = False

    def owners(self) -> dict[str, str]:
        """vendor id -> unique bus name of the client answering for it."""
        return dict(self._owners)

    def register(self, vendor_id: str, owner: str) -> None:
        if self._closed:
            raise NotAvailable("the D-Bus service is shutting down")
        if not vendor_id or len(vendor_id) > MAX_VENDOR_ID_LENGTH:
            raise InvalidArgument(f"vendor id must be 1..{MAX_VENDOR_ID_LENGTH} characters")
        current = self._owners.get(vendor_id)
        if current == owner:
            return
        if current is not None:
            raise InvalidState(f"vendor {vendor_id!r} is registered by another client")
        self._api.register_vendor(vendor_id, self._make_handler(vendor_id))
        self._owners[vendor_id] = owner
        log.info("vendor %r registered by %s", vendor_id, owner)

    def unregister(self, vendor_id: str, caller: str) -> None:
        current = self._owners.get(vendor_id)
        if current is None:
            raise InvalidArgument(f"vendor {vendor_id!r} is not registered")
        if current != caller:
            raise InvalidState(f"vendor {vendor_id!r} is registered by another client")
        self._drop(vendor_id)

    def answer(self, request_id: str, status: str, data: str, caller: str) -> None:
        pending = self._pending.get(request_id)
        if pending is None or pending.owner != caller:
            raise InvalidArgument(f"no pending DataTransferRequest {request_id!r} for this client")
        if status not in ANSWER_STATUSES:
            raise InvalidArgument(f"status must be one of {', '.join(sorted(ANSWER_STATUSES))}")
        if not pending.future.done():
            pending.future.set_result((status, data))

    def owner_left(self, name: str) -> None:
        """The client `name` left the bus: its registrations and pending requests end."""
        for vendor_id, owner in list(self._owners.items()):
            if owner == name:
                log.info("vendor %r: client %s left the bus, unregistering", vendor_id, name)
                self._drop_quietly(vendor_id)

    def close(self) -> None:
        self._closed = True
        for vendor_id in list(self._owners):
            self._drop_quietly(vendor_id)
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_result(REJECTED)

    def _drop(self, vendor_id: str) -> None:
        self._owners.pop(vendor_id, None)
        for pending in self._pending.values():
            if pending.vendor_id == vendor_id and not pending.future.done():
                pending.future.set_result(REJECTED)
        self._api.unregister_vendor(vendor_id)
        log.info("vendor %r unregistered", vendor_id)

    def _drop_quietly(self, vendor_id: str) -> None:
        try:
            self._drop(vendor_id)
        except Exception:
            log.exception("unregistering vendor %r failed", vendor_id)

    def _make_handler(self, vendor_id: str) -> VendorHandler:
        async def handler(message_id: str, data: str) -> DataTransferAnswer:
            return await self._ask(vendor_id, message_id, data)

        return handler

    async def _ask(self, vendor_id: str, message_id: str, data: str) -> DataTransferAnswer:
        owner = self._owners.get(vendor_id)
        if owner is None or self._closed:
            return REJECTED
        request_id = uuid.uuid4().hex
        future: asyncio.Future[DataTransferAnswer] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = _Pending(owner, vendor_id, future)
        try:
            try:
                self._emit(request_id, vendor_id, message_id, data)
            except Exception:
                log.exception("emitting DataTransferRequest for vendor %r failed", vendor_id)
                return REJECTED
            try:
                return await asyncio.wait_for(future, self._timeout_s)
            except TimeoutError:
                log.warning(
                    "vendor %r (%s) did not answer DataTransfer %r within %.1f s: Rejected",
                    vendor_id,
                    owner,
                    message_id,
                    self._timeout_s,
                )
                return REJECTED
        finally:
            self._pending.pop(request_id, None)
