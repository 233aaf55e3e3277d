"""OCPP 1.6 GetConfiguration and ChangeConfiguration over the station's configuration keys.

Read-only keys are reported readonly and refused (Rejected); unknown keys are reported in
unknownKey (Get) or NotSupported (Change); malformed values are Rejected with the reason
logged; keys whose change needs a restart answer RebootRequired. A GetConfiguration naming
more keys than GetConfigurationMaxKeys is refused with OccurenceConstraintViolation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from service.ocpp.engine import Engine
from service.ocpp.rpc import Call, ErrorCode, JsonDict, OcppVersion, RpcError
from service.station.configuration import ChangeStatus, Configuration
from service.station.keys import format_key_value


def install(
    engine: Engine, cfg: Configuration, on_change: Callable[[str], None] | None = None
) -> None:
    def get_configuration(call: Call) -> JsonDict:
        requested: list[str] = call.payload.get("key") or []
        limit = cfg.get("GetConfigurationMaxKeys")
        assert isinstance(limit, int)
        if len(requested) > limit:
            raise RpcError(
                ErrorCode.OCCURRENCE_CONSTRAINT_VIOLATION,
                f"{len(requested)} keys requested; GetConfigurationMaxKeys is {limit}",
            )
        known: list[dict[str, Any]] = []
        unknown: list[str] = []
        names = requested or [spec.name for spec, _ in cfg.items()]
        for name in names:
            spec = cfg.spec(name)
            if spec is None:
                unknown.append(name)
                continue
            known.append(
                {
                    "key": name,
                    "readonly": spec.readonly,
                    "value": format_key_value(cfg.get(name))[:500],
                }
            )
        payload: JsonDict = {"configurationKey": known}
        if unknown:
            payload["unknownKey"] = unknown
        return payload

    def change_configuration(call: Call) -> JsonDict:
        key, value = call.payload["key"], call.payload["value"]
        status = cfg.change(key, value)
        if status in (ChangeStatus.ACCEPTED, ChangeStatus.REBOOT_REQUIRED) and on_change:
            on_change(key)
        return {"status": status.value}

    engine.register(OcppVersion.V16, "GetConfiguration", get_configuration)
    engine.register(OcppVersion.V16, "ChangeConfiguration", change_configuration)
