"""OCPP 2.0.1 B07 GetBaseReport and B08 GetReport: the device model as paged NotifyReports.

The request is answered first (Accepted, EmptyResultSet or NotSupported); the report follows as
NotifyReport messages with the request's requestId, one generatedAt, seqNo 0, 1, 2... and tbc
true on every page but the last. A page holds at most DeviceDataCtrlr.ItemsPerMessage[GetReport]
reportData entries and stays within BytesPerMessage[GetReport]. Once registered, pages go
through the durable queue (engine.enqueue, non-transaction); while the registration is still
Pending (B02: the CSMS may ask for reports then) they go out as CSMS-requested messages.

Report bases: FullInventory is every variable with all its attributes; ConfigurationInventory
the variables the CSMS can set, with their writable attributes; SummaryInventory the variables
that say how the station is doing (availability, problems). A WriteOnly attribute is reported
without its value.

GetReport selects by componentVariable (a component name, and optionally its instance, EVSE,
connector, a variable name and instance: what is left out matches anything) and by
componentCriteria (a component qualifies when its Active / Available / Enabled / Problem
variable is true). With both, a variable must pass both. Nothing selected -> EmptyResultSet.
More componentVariable entries than ItemsPerMessage[GetReport] -> CALLERROR
OccurrenceConstraintViolation; a request over BytesPerMessage[GetReport] -> FormatViolation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from service.ocpp.engine import TIME_MARKER
from service.ocpp.rpc import Call, JsonDict, OcppVersion, RpcError, encode_call, schemas
from service.ocpp.v201.dm_types import AttributeType, ComponentKey, VariableKey

if TYPE_CHECKING:
    from service.ocpp.engine import Engine
    from service.ocpp.v201.device_model import DeviceModel, Entry

log = logging.getLogger("evsed.ocpp.reports")

SUMMARY_VARIABLES = frozenset(
    {"AvailabilityState", "Available", "Enabled", "Active", "Problem", "Tripped", "Overload"}
)
REPORT_BASES = ("ConfigurationInventory", "FullInventory", "SummaryInventory")
_PLACEHOLDER_ID = "x" * 36  # message ids are at most 36 characters


class Reports:
    def __init__(self, engine: Engine, model: DeviceModel) -> None:
        self._engine = engine
        self._model = model

    # ------------------------------------------------------------------ content
    def report_data(self, entry: Entry, *, writable_only: bool = False) -> JsonDict | None:
        """The ReportDataType of one variable (None when no attribute qualifies)."""
        size = self._model.reporting_value_size()
        attributes: list[JsonDict] = []
        for spec in entry.spec.attributes:
            if writable_only and not spec.mutability.writable:
                continue
            item: JsonDict = {
                "type": spec.type.value,
                "mutability": spec.mutability.value,
                "persistent": spec.persistent,
                "constant": spec.constant,
            }
            if spec.mutability.readable:
                value = self._model.read(entry, spec)
                if value is not None:
                    item["value"] = value[:size]
            attributes.append(item)
        if not attributes:
            return None
        return {
            "component": entry.component.to_ocpp(),
            "variable": entry.variable.to_ocpp(),
            "variableAttribute": attributes,
            "variableCharacteristics": self._model.characteristics(entry).to_ocpp(),
        }

    def _collect(self, entries: Iterable[Entry], *, writable_only: bool = False) -> list[JsonDict]:
        data: list[JsonDict] = []
        for entry in entries:
            item = self.report_data(entry, writable_only=writable_only)
            if item is not None:
                data.append(item)
        return data

    def base_report(self, base: str) -> list[JsonDict] | None:
        """The reportData of a report base; None for a base this charger does not know."""
        entries = list(self._model.entries())
        if base == "FullInventory":
            return self._collect(entries)
        if base == "ConfigurationInventory":
            return self._collect(entries, writable_only=True)
        if base == "SummaryInventory":
            return self._collect(e for e in entries if e.variable.name in SUMMARY_VARIABLES)
        return None

    def custom_report(self, filters: list[JsonDict], criteria: list[str]) -> list[JsonDict]:
        qualified = self._qualified_components(criteria)
        selected = [
            entry
            for entry in self._model.entries()
            if (qualified is None or entry.component in qualified)
            and (not filters or any(_matches(f, entry.component, entry.variable) for f in filters))
        ]
        return self._collect(selected)

    def _qualified_components(self, criteria: list[str]) -> set[ComponentKey] | None:
        if not criteria:
            return None
        qualified: set[ComponentKey] = set()
        for component in self._model.components():
            for criterion in criteria:
                entry = self._model.find(
                    component.name,
                    criterion,
                    evse=component.evse,
                    connector=component.connector,
                    component_instance=component.instance,
                    instance=None,
                )
                if entry is None or entry.variable.instance is not None:
                    continue
                spec = entry.spec.attribute(AttributeType.ACTUAL)
                readable = spec is not None and spec.mutability.readable
                if readable and spec is not None and self._model.read(entry, spec) == "true":
                    qualified.add(component)
                    break
        return qualified

    # ------------------------------------------------------------------ sending
    def pages(self, request_id: int, data: list[JsonDict], generated_at: str) -> list[JsonDict]:
        """Split reportData into NotifyReport payloads within the DeviceDataCtrlr sizes."""
        most_items = max(1, self._model.limit("ItemsPerMessage", "GetReport"))
        most_bytes = self._model.limit("BytesPerMessage", "GetReport")
        skeleton = {
            "requestId": request_id,
            "generatedAt": generated_at,
            "tbc": False,
            "seqNo": 2**31 - 1,
            "reportData": [],
        }
        base = len(encode_call(_PLACEHOLDER_ID, "NotifyReport", skeleton).encode("utf-8"))
        chunks: list[list[JsonDict]] = []
        current: list[JsonDict] = []
        size = base
        for item in data:
            item_size = len(_dumps(item).encode("utf-8")) + 1  # the separating comma
            if current and (len(current) >= most_items or size + item_size > most_bytes):
                chunks.append(current)
                current, size = [], base
            current.append(item)
            size += item_size
        if current:
            chunks.append(current)
        return [
            {
                "requestId": request_id,
                "generatedAt": generated_at,
                "tbc": number < len(chunks) - 1,
                "seqNo": number,
                "reportData": chunk,
            }
            for number, chunk in enumerate(chunks)
        ]

    def send(self, request_id: int, data: list[JsonDict]) -> bool:
        """Queue the report's NotifyReports (they follow the answer the handler returns).

        Every page is checked against the NotifyReport schema first: a report that could not
        be sent whole is not started (False).
        """
        pages = self.pages(request_id, data, self._engine.timestamp())
        try:
            for payload in pages:
                schemas(OcppVersion.V201).validate(
                    "NotifyReport", _checkable(payload), response=False
                )
        except RpcError as exc:
            log.error("report %d not sent: %s", request_id, exc.description)
            return False
        registered = self._engine.registration.value == "Accepted"
        for payload in pages:
            if registered:
                self._engine.enqueue("NotifyReport", payload, transaction=False)
            else:
                self._engine.trigger("NotifyReport", payload)
        log.info(
            "report %d: %d variable(s) in %d NotifyReport(s)", request_id, len(data), len(pages)
        )
        return True

    # ------------------------------------------------------------------ handlers
    def get_base_report(self, call: Call) -> JsonDict:
        base = call.payload["reportBase"]
        data = self.base_report(base)
        if data is None:
            return {"status": "NotSupported"}
        if not data:
            return {"status": "EmptyResultSet"}
        if not self.send(int(call.payload["requestId"]), data):
            return {"status": "Rejected"}
        return {"status": "Accepted"}

    def get_report(self, call: Call) -> JsonDict:
        filters: list[JsonDict] = call.payload.get("componentVariable") or []
        criteria: list[str] = call.payload.get("componentCriteria") or []
        self._model.check_request(call, "GetReport", len(filters))
        data = self.custom_report(filters, criteria)
        if not data:
            return {"status": "EmptyResultSet"}
        if not self.send(int(call.payload["requestId"]), data):
            return {"status": "Rejected"}
        return {"status": "Accepted"}


def _checkable(payload: JsonDict) -> JsonDict:
    """The payload as the queue will send it: a time marker stands for a valid time."""
    if str(payload["generatedAt"]).startswith(TIME_MARKER):
        return {**payload, "generatedAt": "2025-01-01T00:00:00.000Z"}
    return payload


def _matches(selector: JsonDict, component: ComponentKey, variable: VariableKey) -> bool:
    """Does a ComponentVariableType select this variable? Absent fields match anything."""
    wanted = selector["component"]
    if wanted["name"] != component.name:
        return False
    if "instance" in wanted and wanted["instance"] != component.instance:
        return False
    evse = wanted.get("evse")
    if evse is not None:
        if evse["id"] != component.evse:
            return False
        if "connectorId" in evse and evse["connectorId"] != component.connector:
            return False
    wanted_variable = selector.get("variable")
    if wanted_variable is not None:
        if wanted_variable["name"] != variable.name:
            return False
        if "instance" in wanted_variable and wanted_variable["instance"] != variable.instance:
            return False
    return True


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def install(engine: Engine, model: DeviceModel) -> Reports:
    """Answer GetBaseReport and GetReport under OCPP 2.0.1."""
    reports = Reports(engine, model)
    engine.register(OcppVersion.V201, "GetBaseReport", reports.get_base_report)
    engine.register(OcppVersion.V201, "GetReport", reports.get_report)
    return reports
