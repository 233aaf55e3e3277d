"""The OCPP 2.0.1 device model of this charger, and B05 SetVariables / B06 GetVariables.

`DeviceModel` instantiates the catalog (service/ocpp/v201/dm_catalog.py) for the configured
EVSEs and connectors and answers for every attribute of every variable: settings shared with
OCPP 1.6 are read from and written to the 1.6 configuration (one setting, two names), 2.0.1-only
settings live in the ``device_model_values`` table, statuses are read live from the station.

For the rest of the daemon (the 2.0.1 station link):

* ``get(component, variable, *, evse=None, connector=None, attribute="Actual")`` -> str | None,
  plus `get_int`, `get_bool`, `get_list`. A variable with an instance (MessageAttempts
  [TransactionEvent]) is found by its name alone when the name is unambiguous.
* ``on_change(callback)``: ``callback(component, variable, evse, value)`` after the Actual value
  of a writable variable changed, by SetVariables or - for shared settings - by 1.6
  ChangeConfiguration, D-Bus or the BootNotification interval.

Protocol rules (OCPP 2.0.1 Part 2, B05 / B06):

* One result per requested item, in the order asked, echoing component, variable and
  attributeType (Actual when absent).
* Unknown component name, or a component that does not exist at the given instance / EVSE /
  connector -> UnknownComponent; unknown variable (or a variable that needs an instance asked
  without one) -> UnknownVariable; an attribute the variable does not have ->
  NotSupportedAttributeType; reading a WriteOnly or writing a ReadOnly attribute -> Rejected;
  a value outside the characteristics (type, limits, values list, size) -> Rejected with a
  reasonCode; a change that applies after a restart -> RebootRequired.
* More items than DeviceDataCtrlr.ItemsPerMessage[GetVariables|SetVariables] -> CALLERROR
  OccurrenceConstraintViolation; a request longer than BytesPerMessage -> CALLERROR
  FormatViolation (B05/B06: the charger MAY answer so; it does, and processes nothing).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.ocpp.rpc import (
    Call,
    ErrorCode,
    JsonDict,
    OcppVersion,
    RpcError,
    encode_call,
)
from service.ocpp.v201.dm_catalog import (
    BYTES_PER_MESSAGE,
    CATALOG,
    CONFIGURATION_VALUE_SIZE,
    ITEMS_PER_MESSAGE,
    REPORTING_VALUE_SIZE,
)
from service.ocpp.v201.dm_types import (
    AttributeSpec,
    AttributeType,
    Characteristics,
    ComponentKey,
    ConfigKey,
    Context,
    Fixed,
    InvalidValue,
    Live,
    Scope,
    Stored,
    Unwritable,
    VariableKey,
    VariableSpec,
    normalize,
)
from service.station.clock import Clock, SystemClock
from service.station.configuration import ChangeStatus
from service.station.keys import OCPP_KEY_CATALOG, parse_key_value
from service.store.db import StoreError

if TYPE_CHECKING:
    from service.config import Settings
    from service.ocpp.engine import Engine
    from service.station.configuration import Configuration
    from service.station.station import Station
    from service.store.db import Database

log = logging.getLogger("evsed.ocpp.device_model")

ChangeCallback = Callable[[str, str, "int | None", str], None]


@dataclass(frozen=True, slots=True)
class Entry:
    """One variable of one component instance."""

    component: ComponentKey
    variable: VariableKey
    spec: VariableSpec


@dataclass(frozen=True, slots=True)
class _Refusal:
    status: str
    reason: str
    info: str


class DeviceModel:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        configuration: Configuration,
        *,
        station: Station | None = None,
        now_iso: Callable[[], str | None] | None = None,
        config_changed: Callable[[str], None] | None = None,
        clock: Clock | None = None,
        catalog: tuple[VariableSpec, ...] = CATALOG,
    ) -> None:
        """`config_changed(key)` is called after SetVariables changed a shared 1.6 key, like
        after a 1.6 ChangeConfiguration, so the change has the same effects."""
        self._ctx = Context(settings, configuration, station, now_iso or (lambda: None))
        self._db = db
        self._cfg = configuration
        self._clock = clock or SystemClock()
        self._config_changed = config_changed
        self._callbacks: list[ChangeCallback] = []
        self._entries: dict[tuple[ComponentKey, VariableKey], Entry] = {}
        self._by_name: dict[tuple[ComponentKey, str], list[Entry]] = {}
        self._components: dict[ComponentKey, None] = {}  # ordered set
        self._component_names: set[str] = set()
        self._by_key: dict[str, list[Entry]] = {}
        self._stored: dict[tuple[ComponentKey, VariableKey, AttributeType], str] = {}
        for spec in catalog:
            for component in self._instances(spec):
                self._add(Entry(component, VariableKey(spec.name, spec.instance), spec))
        self._load()
        configuration.subscribe(self._key_changed)

    # ------------------------------------------------------------------ construction
    def _instances(self, spec: VariableSpec) -> list[ComponentKey]:
        evses = self._ctx.settings.evses
        if spec.scope is Scope.STATION:
            return [ComponentKey(spec.component)]
        if spec.scope is Scope.EVSE:
            return [ComponentKey(spec.component, evse=evse.id) for evse in evses]
        return [
            ComponentKey(spec.component, evse=evse.id, connector=connector.id)
            for evse in evses
            for connector in evse.connectors
        ]

    def _add(self, entry: Entry) -> None:
        self._entries[(entry.component, entry.variable)] = entry
        self._by_name.setdefault((entry.component, entry.variable.name), []).append(entry)
        self._components[entry.component] = None
        self._component_names.add(entry.component.name)
        for attribute in entry.spec.attributes:
            if isinstance(attribute.source, ConfigKey):
                self._by_key.setdefault(attribute.source.key, []).append(entry)

    def _load(self) -> None:
        rows = self._db.query_all(
            "SELECT component, component_instance, evse_id, connector_id, variable, "
            "variable_instance, attribute, value FROM device_model_values"
        )
        for row in rows:
            component = ComponentKey(
                row["component"],
                row["component_instance"] or None,
                row["evse_id"] or None,
                row["connector_id"] or None,
            )
            variable = VariableKey(row["variable"], row["variable_instance"] or None)
            entry = self._entries.get((component, variable))
            attribute = AttributeType(row["attribute"])  # the table's CHECK allows only these
            spec = None if entry is None else entry.spec.attribute(attribute)
            if entry is None or spec is None or not isinstance(spec.source, Stored):
                log.warning(
                    "ignoring stored device model value of %s %s %s: not a stored variable",
                    component,
                    variable,
                    row["attribute"],
                )
                continue
            try:
                value = normalize(
                    self.characteristics(entry),
                    str(row["value"]),
                    max_length=CONFIGURATION_VALUE_SIZE,
                )
            except InvalidValue as exc:
                log.warning("ignoring stored value of %s %s: %s", component, variable, exc)
                continue
            self._stored[(component, variable, attribute)] = value

    @property
    def station(self) -> Station | None:
        return self._ctx.station

    @station.setter
    def station(self, station: Station | None) -> None:
        self._ctx.station = station

    # ------------------------------------------------------------------ reading
    def entries(self) -> Iterator[Entry]:
        """Every variable of every component instance, in catalog order."""
        return iter(self._entries.values())

    def components(self) -> list[ComponentKey]:
        return list(self._components)

    def characteristics(self, entry: Entry) -> Characteristics:
        chars = entry.spec.characteristics
        return chars if isinstance(chars, Characteristics) else chars(self._ctx, entry.component)

    def read(self, entry: Entry, attribute: AttributeSpec) -> str | None:
        """The current value of one attribute, whatever its mutability (None: not known)."""
        source = attribute.source
        component = entry.component
        if isinstance(source, ConfigKey):
            return self._cfg.get_str(source.key)
        if isinstance(source, Stored):
            stored = self._stored.get((component, entry.variable, attribute.type))
            if stored is not None:
                return stored
            default = source.default
            return default if isinstance(default, str) else default(self._ctx, component)
        if isinstance(source, Live | Fixed):
            reader = source.read if isinstance(source, Live) else source.value
            if isinstance(reader, str):
                return reader
            try:
                return reader(self._ctx, component)
            except Exception:  # a status read must never break a report
                log.exception("reading %s %s failed", component, entry.variable)
                return None
        return None  # Unwritable: nothing to read

    def find(
        self,
        component: str,
        variable: str,
        *,
        evse: int | None = None,
        connector: int | None = None,
        instance: str | None = None,
        component_instance: str | None = None,
    ) -> Entry | None:
        """The entry of a variable for the daemon's own use; the variable instance may be left
        out when the name alone is unambiguous."""
        key = ComponentKey(component, component_instance, evse, connector)
        entry = self._entries.get((key, VariableKey(variable, instance)))
        if entry is None and instance is None:
            candidates = self._by_name.get((key, variable), [])
            if len(candidates) == 1:
                entry = candidates[0]
        return entry

    def get(
        self,
        component: str,
        variable: str,
        *,
        evse: int | None = None,
        connector: int | None = None,
        attribute: str = "Actual",
        instance: str | None = None,
    ) -> str | None:
        entry = self.find(component, variable, evse=evse, connector=connector, instance=instance)
        if entry is None:
            return None
        spec = entry.spec.attribute(AttributeType(attribute))
        return None if spec is None else self.read(entry, spec)

    def get_int(
        self,
        component: str,
        variable: str,
        *,
        evse: int | None = None,
        connector: int | None = None,
        instance: str | None = None,
    ) -> int | None:
        value = self.get(component, variable, evse=evse, connector=connector, instance=instance)
        try:
            return None if value is None or value == "" else int(value)
        except ValueError:
            return None

    def get_bool(self, component: str, variable: str, *, evse: int | None = None) -> bool | None:
        value = self.get(component, variable, evse=evse)
        return None if value not in ("true", "false") else value == "true"

    def get_list(self, component: str, variable: str, *, evse: int | None = None) -> list[str]:
        value = self.get(component, variable, evse=evse)
        return [item for item in (value or "").split(",") if item]

    def on_change(self, callback: ChangeCallback) -> None:
        self._callbacks.append(callback)

    def limit(self, variable: str, instance: str) -> int:
        """A DeviceDataCtrlr size (ItemsPerMessage / BytesPerMessage of an instance)."""
        value = self.get_int("DeviceDataCtrlr", variable, instance=instance)
        default = ITEMS_PER_MESSAGE if variable == "ItemsPerMessage" else BYTES_PER_MESSAGE
        return default if value is None else value

    def reporting_value_size(self) -> int:
        value = self.get_int("DeviceDataCtrlr", "ReportingValueSize")
        return min(REPORTING_VALUE_SIZE, value or REPORTING_VALUE_SIZE)

    # ------------------------------------------------------------------ change events
    def _emit(self, entry: Entry, value: str) -> None:
        for callback in self._callbacks:
            try:
                callback(entry.component.name, entry.variable.name, entry.component.evse, value)
            except Exception:
                log.exception("device model change callback failed on %s", entry.variable)

    def _key_changed(self, key: str) -> None:
        for entry in self._by_key.get(key, []):
            self._emit(entry, self._cfg.get_str(key))

    # ------------------------------------------------------------------ B06 / B05
    def _locate(self, component: ComponentKey, variable: VariableKey) -> Entry | _Refusal:
        if component.name not in self._component_names:
            return _Refusal("UnknownComponent", "NotFound", f"no component {component.name}")
        if component not in self._components:
            evse_ids = {evse.id for evse in self._ctx.settings.evses}
            if component.evse is not None and component.evse not in evse_ids:
                info = f"no EVSE {component.evse}; EVSEs are {sorted(evse_ids)}"
                return _Refusal("UnknownComponent", "UnknownEvse", info)
            if component.connector is not None:
                info = f"no {component.name} at connector {component.evse}.{component.connector}"
                return _Refusal("UnknownComponent", "UnknownConnectorId", info)
            return _Refusal("UnknownComponent", "NotFound", f"no component {component}")
        entry = self._entries.get((component, variable))
        if entry is None:
            return _Refusal("UnknownVariable", "NotFound", f"{component} has no {variable}")
        return entry

    @staticmethod
    def _result(data: JsonDict, attribute: AttributeType, status: str) -> JsonDict:
        return {
            "attributeType": attribute.value,
            "attributeStatus": status,
            "component": data["component"],
            "variable": data["variable"],
        }

    @staticmethod
    def _refused(result: JsonDict, refusal: _Refusal) -> JsonDict:
        result["attributeStatus"] = refusal.status
        result["attributeStatusInfo"] = {
            "reasonCode": refusal.reason[:20],
            "additionalInfo": refusal.info[:512],
        }
        return result

    def get_variable(self, data: JsonDict) -> JsonDict:
        """One GetVariableResult for one GetVariableData."""
        attribute = AttributeType(data.get("attributeType", "Actual"))
        result = self._result(data, attribute, "Accepted")
        found = self._locate(
            ComponentKey.from_ocpp(data["component"]), VariableKey.from_ocpp(data["variable"])
        )
        if isinstance(found, _Refusal):
            return self._refused(result, found)
        spec = found.spec.attribute(attribute)
        if spec is None:
            return self._refused(
                result,
                _Refusal(
                    "NotSupportedAttributeType",
                    "UnsupportedParam",
                    f"{found.variable} has no {attribute.value} attribute",
                ),
            )
        if not spec.mutability.readable:
            return self._refused(
                result, _Refusal("Rejected", "WriteOnly", f"{found.variable} is write-only")
            )
        value = self.read(found, spec)
        # B06.FR.13: a supported attribute without a value is answered with an empty string.
        result["attributeValue"] = (value or "")[: self.reporting_value_size()]
        return result

    def set_variable(self, data: JsonDict) -> JsonDict:
        """One SetVariableResult for one SetVariableData (the value is applied at once)."""
        attribute = AttributeType(data.get("attributeType", "Actual"))
        result = self._result(data, attribute, "Accepted")
        found = self._locate(
            ComponentKey.from_ocpp(data["component"]), VariableKey.from_ocpp(data["variable"])
        )
        if isinstance(found, _Refusal):
            return self._refused(result, found)
        spec = found.spec.attribute(attribute)
        if spec is None:
            return self._refused(
                result,
                _Refusal(
                    "NotSupportedAttributeType",
                    "UnsupportedParam",
                    f"{found.variable} has no {attribute.value} attribute",
                ),
            )
        outcome = self._write(found, spec, str(data["attributeValue"]))
        if isinstance(outcome, _Refusal):
            log.info(
                "SetVariables %s %s %s=%r refused: %s",
                found.component,
                found.variable,
                attribute.value,
                data["attributeValue"],
                outcome.info,
            )
            return self._refused(result, outcome)
        result["attributeStatus"] = outcome
        return result

    def _write(self, entry: Entry, spec: AttributeSpec, raw: str) -> str | _Refusal:
        source = spec.source
        if not spec.mutability.writable or isinstance(source, Live | Fixed):
            return _Refusal("Rejected", "ReadOnly", f"{entry.variable} is read-only")
        if isinstance(source, Unwritable):
            return _Refusal("Rejected", "UnsupportedParam", source.reason)
        if not raw.isascii():
            try:
                raw.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate ("\ud800" in the JSON)
                return _Refusal("Rejected", "InvalidValue", "value is not valid Unicode text")
        size = self.get_int("DeviceDataCtrlr", "ConfigurationValueSize")
        try:
            value = normalize(
                self.characteristics(entry),
                raw,
                max_length=min(CONFIGURATION_VALUE_SIZE, size or CONFIGURATION_VALUE_SIZE),
            )
        except InvalidValue as exc:
            return _Refusal("Rejected", exc.reason, str(exc))
        if isinstance(source, ConfigKey):
            return self._write_key(source.key, value)
        assert isinstance(source, Stored)
        return self._write_stored(entry, spec, value)

    def _write_key(self, key: str, value: str) -> str | _Refusal:
        try:
            parse_key_value(OCPP_KEY_CATALOG[key], value)
        except ValueError as exc:
            return _Refusal("Rejected", "InvalidValue", str(exc))
        try:
            status = self._cfg.change(key, value)
        except StoreError as exc:
            return _Refusal("Rejected", "InternalError", f"could not store the value: {exc}")
        if status not in (ChangeStatus.ACCEPTED, ChangeStatus.REBOOT_REQUIRED):
            return _Refusal("Rejected", "InvalidValue", f"{key} refused {value!r}")
        if self._config_changed is not None:
            try:
                self._config_changed(key)
            except Exception:
                log.exception("applying the change of %s failed", key)
        return status.value

    def _write_stored(self, entry: Entry, spec: AttributeSpec, value: str) -> str | _Refusal:
        component, variable = entry.component, entry.variable
        before = self.read(entry, spec)
        try:
            self._db.execute(
                "INSERT INTO device_model_values (component, component_instance, evse_id, "
                "connector_id, variable, variable_instance, attribute, value, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (component, component_instance, "
                "evse_id, connector_id, variable, variable_instance, attribute) "
                "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                (
                    component.name,
                    component.instance or "",
                    component.evse or 0,
                    component.connector or 0,
                    variable.name,
                    variable.instance or "",
                    spec.type.value,
                    value,
                    self._clock.time(),
                ),
            )
        except StoreError as exc:
            return _Refusal("Rejected", "InternalError", f"could not store the value: {exc}")
        self._stored[(component, variable, spec.type)] = value
        log.info("device model %s %s %s set to %r", component, variable, spec.type.value, value)
        if spec.type is AttributeType.ACTUAL and before != value:
            self._emit(entry, value)
        return "RebootRequired" if spec.reboot_required else "Accepted"

    # ------------------------------------------------------------------ message limits
    def check_request(self, call: Call, instance: str, items: int) -> None:
        """Raise the CALLERROR B05/B06/B08 allow for a request over DeviceDataCtrlr's sizes."""
        most = self.limit("ItemsPerMessage", instance)
        if items > most:
            raise RpcError(
                ErrorCode.OCCURRENCE_CONSTRAINT_VIOLATION,
                f"{items} items in one {call.action}; ItemsPerMessage[{instance}] is {most}",
            )
        # The frame as it came over the wire; re-encoded when it did not (a Call made locally).
        size = call.size or len(
            encode_call(call.unique_id, call.action, call.payload).encode("utf-8")
        )
        most_bytes = self.limit("BytesPerMessage", instance)
        if size > most_bytes:
            raise RpcError(
                ErrorCode.FORMAT_VIOLATION,
                f"{call.action} of {size} bytes; BytesPerMessage[{instance}] is {most_bytes}",
            )


def install(engine: Engine, model: DeviceModel) -> None:
    """Answer GetVariables and SetVariables under OCPP 2.0.1."""

    def get_variables(call: Call) -> JsonDict:
        items: list[JsonDict] = call.payload["getVariableData"]
        model.check_request(call, "GetVariables", len(items))
        return {"getVariableResult": [model.get_variable(item) for item in items]}

    def set_variables(call: Call) -> JsonDict:
        items: list[JsonDict] = call.payload["setVariableData"]
        model.check_request(call, "SetVariables", len(items))
        return {"setVariableResult": [model.set_variable(item) for item in items]}

    engine.register(OcppVersion.V201, "GetVariables", get_variables)
    engine.register(OcppVersion.V201, "SetVariables", set_variables)
