"""OCPP 1.6 LocalAuthListManagement: SendLocalList and GetLocalListVersion.

A thin translator over :class:`service.station.local_list.LocalAuthList` (the rules of full
and differential updates live there). What is 1.6's own:

* ``LocalAuthListEnabled`` false: SendLocalList answers NotSupported (the list is not in use);
  GetLocalListVersion still reports the stored version (the profile is supported, so never -1).
* More entries in one request than ``SendLocalListMaxLength``, or a list that would grow past
  ``LocalAuthListMaxLength``: Failed, nothing changes.
* A differential update whose listVersion is not above the list's: VersionMismatch.
* An entry the station cannot read (an expiryDate that is no time): CALLERROR
  PropertyConstraintViolation naming the entry, nothing changes.
* GetLocalListVersion: 0 while no list was ever installed.
"""

from __future__ import annotations

import logging
from typing import Any

from service.ocpp.engine import Engine
from service.ocpp.rpc import Call, ErrorCode, JsonDict, OcppVersion, RpcError
from service.station.auth import IdTagInfo, SupportsGet
from service.station.local_list import ListEntry, LocalAuthList, UpdateStatus, UpdateType

log = logging.getLogger("evsed.ocpp16.local_list")


def entries_from_ocpp16(items: list[Any]) -> list[ListEntry]:
    """The request's ``localAuthorizationList`` as list entries; RpcError for a bad entry."""
    entries: list[ListEntry] = []
    for index, item in enumerate(items):
        id_tag = item.get("idTag") if isinstance(item, dict) else None
        if not isinstance(id_tag, str) or not id_tag:
            raise RpcError(
                ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
                f"localAuthorizationList[{index}].idTag: missing or empty",
            )
        raw_info = item.get("idTagInfo")
        info: IdTagInfo | None = None
        if raw_info is not None:
            try:
                info = IdTagInfo.from_ocpp16(raw_info)
            except (ValueError, AttributeError) as exc:
                raise RpcError(
                    ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
                    f"localAuthorizationList[{index}] ({id_tag}): {exc}",
                ) from exc
        entries.append(ListEntry(id_tag, info))
    return entries


def install(engine: Engine, local_list: LocalAuthList, cfg: SupportsGet) -> None:
    """Register the 1.6 handlers. ``cfg`` is the station's Configuration (``get(name)``)."""

    def send_local_list(call: Call) -> JsonDict:
        payload = call.payload
        version = payload["listVersion"]
        update_type = UpdateType(payload["updateType"])
        items: list[Any] = payload.get("localAuthorizationList") or []
        if cfg.get("LocalAuthListEnabled") is not True:
            log.info("SendLocalList refused: LocalAuthListEnabled is false")
            return {"status": "NotSupported"}
        most = cfg.get("SendLocalListMaxLength")
        if isinstance(most, int) and len(items) > most:
            log.warning(
                "SendLocalList refused: %d entries, SendLocalListMaxLength is %d", len(items), most
            )
            return {"status": str(UpdateStatus.FAILED)}
        entries = entries_from_ocpp16(items)
        result = local_list.update(version, update_type, entries)
        if result.status is not UpdateStatus.ACCEPTED:
            log.warning("SendLocalList version %s: %s (%s)", version, result.status, result.reason)
        return {"status": str(result.status)}

    def get_local_list_version(call: Call) -> JsonDict:
        return {"listVersion": local_list.version}

    engine.register(OcppVersion.V16, "SendLocalList", send_local_list)
    engine.register(OcppVersion.V16, "GetLocalListVersion", get_local_list_version)
