"""OCPP 2.0.1 functional block D: D01 SendLocalList and D02 GetLocalListVersion.

A thin translator over :class:`service.station.local_list.LocalAuthList` (the rules of full
and differential updates live there), reading its settings through the device model's
LocalAuthListCtrlr (Enabled is the 1.6 key LocalAuthListEnabled, ItemsPerMessage is
SendLocalListMaxLength, Entries' maxLimit is LocalAuthListMaxLength). What is 2.0.1's own:

* versionNumber 0 or below: Failed (D01.FR.18; 0 means "no list" in GetLocalListVersion).
* LocalAuthListCtrlr.Enabled false: SendLocalList Failed, GetLocalListVersion 0 (D02.FR.03).
* More entries than LocalAuthListCtrlr.ItemsPerMessage: CALLERROR
  OccurrenceConstraintViolation; a request over LocalAuthListCtrlr.BytesPerMessage: CALLERROR
  FormatViolation (the same answers as the DeviceDataCtrlr limits of B05/B06).
* A list that would hold more than Entries' maxLimit: Failed (statusInfo TooManyElements).
* A token twice, or an entry without idTokenInfo in a Full update: Failed (D01.FR.06).
* A Differential update whose versionNumber is not above the list's: VersionMismatch
  (D01.FR.19).

Listed tokens keep their IdTokenEnumType: ``remember_type`` (the station link's
``remember_token_type``) hears it so a transaction started by a listed token reports it.
Not implemented: idTokenInfo.evseId (a token valid only at some EVSEs), personalMessage,
language and chargingPriority of list entries are not kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from service.ocpp.engine import Engine
from service.ocpp.rpc import Call, ErrorCode, JsonDict, OcppVersion, RpcError, encode_call
from service.ocpp.v201.device_model import DeviceModel
from service.ocpp.v201.tx_data import id_token_info
from service.station.auth import IdTagInfo
from service.station.local_list import (
    ListEntry,
    LocalAuthList,
    Refusal,
    UpdateStatus,
    UpdateType,
)

log = logging.getLogger("evsed.ocpp201.local_list")

COMPONENT = "LocalAuthListCtrlr"
# statusInfo.reasonCode of a refused update (OCPP 2.0.1 Part 2 appendix 5 reason codes).
_REASON_CODES = {
    Refusal.BAD_VERSION: "InvalidValue",
    Refusal.BAD_ENTRIES: "InvalidValue",
    Refusal.TOO_MANY: "TooManyElements",
    Refusal.VERSION_MISMATCH: "InvalidValue",
    Refusal.STORE: "InternalError",
}


def _answer(status: UpdateStatus, reason: str | None = None, info: str = "") -> JsonDict:
    answer: JsonDict = {"status": str(status)}
    if reason is not None:
        status_info: JsonDict = {"reasonCode": reason}
        if info:
            status_info["additionalInfo"] = info[:512]
        answer["statusInfo"] = status_info
    return answer


def entries_from_ocpp201(items: list[Any]) -> list[ListEntry]:
    """The request's ``localAuthorizationList`` as list entries; RpcError for a bad entry."""
    entries: list[ListEntry] = []
    for index, item in enumerate(items):
        token = item.get("idToken") if isinstance(item, dict) else None
        id_token = token.get("idToken") if isinstance(token, dict) else None
        if not isinstance(id_token, str) or not id_token:
            raise RpcError(
                ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
                f"localAuthorizationList[{index}].idToken: missing or empty",
            )
        assert isinstance(token, dict)
        token_type = token.get("type")
        raw_info = item.get("idTokenInfo")
        info: IdTagInfo | None = None
        if raw_info is not None:
            try:
                info = id_token_info(raw_info)
            except (ValueError, AttributeError) as exc:
                raise RpcError(
                    ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
                    f"localAuthorizationList[{index}] ({id_token}): {exc}",
                ) from exc
        entries.append(
            ListEntry(id_token, info, token_type if isinstance(token_type, str) else None)
        )
    return entries


class LocalListHandlers:
    def __init__(
        self,
        engine: Engine,
        local_list: LocalAuthList,
        model: DeviceModel,
        *,
        remember_type: Callable[[str, str], None] | None = None,
    ) -> None:
        self._list = local_list
        self._model = model
        self._remember = remember_type
        engine.register(OcppVersion.V201, "SendLocalList", self.send_local_list)
        engine.register(OcppVersion.V201, "GetLocalListVersion", self.get_local_list_version)
        self._share_types(local_list.entries())

    def _enabled(self) -> bool:
        return self._model.get_bool(COMPONENT, "Enabled") is True

    def _share_types(self, entries: list[ListEntry]) -> None:
        if self._remember is None:
            return
        for entry in entries:
            if entry.info is not None and entry.token_type is not None:
                self._remember(entry.id_token, entry.token_type)

    def _check_size(self, call: Call, items: int) -> None:
        most = self._model.get_int(COMPONENT, "ItemsPerMessage")
        if most is not None and items > most:
            raise RpcError(
                ErrorCode.OCCURRENCE_CONSTRAINT_VIOLATION,
                f"{items} entries in one SendLocalList; {COMPONENT}.ItemsPerMessage is {most}",
            )
        most_bytes = self._model.get_int(COMPONENT, "BytesPerMessage")
        if most_bytes is not None:
            size = len(encode_call(call.unique_id, call.action, call.payload).encode("utf-8"))
            if size > most_bytes:
                raise RpcError(
                    ErrorCode.FORMAT_VIOLATION,
                    f"SendLocalList of {size} bytes; {COMPONENT}.BytesPerMessage is {most_bytes}",
                )

    def send_local_list(self, call: Call) -> JsonDict:
        payload = call.payload
        version = payload["versionNumber"]
        update_type = UpdateType(payload["updateType"])
        items: list[Any] = payload.get("localAuthorizationList") or []
        self._check_size(call, len(items))
        if not self._enabled():
            log.info("SendLocalList refused: %s.Enabled is false", COMPONENT)
            return _answer(UpdateStatus.FAILED, "Disabled", f"{COMPONENT}.Enabled is false")
        if not isinstance(version, int) or version <= 0:
            return _answer(UpdateStatus.FAILED, "InvalidValue", "versionNumber must be above 0")
        entries = entries_from_ocpp201(items)
        result = self._list.update(version, update_type, entries)
        if result.status is UpdateStatus.ACCEPTED:
            self._share_types(entries)
            return _answer(result.status)
        log.warning("SendLocalList version %s: %s (%s)", version, result.status, result.reason)
        code = _REASON_CODES.get(result.refusal, "InvalidValue") if result.refusal else None
        return _answer(result.status, code or "InvalidValue", result.reason)

    def get_local_list_version(self, call: Call) -> JsonDict:
        return {"versionNumber": self._list.version if self._enabled() else 0}
