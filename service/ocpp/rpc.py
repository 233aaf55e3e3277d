"""OCPP-J framing: parse and encode CALL / CALLRESULT / CALLERROR, validate payloads.

Sans-I/O: text in, typed frames out, and `RpcError` carrying the CALLERROR code the spec
prescribes for each class of bad input. Payloads are validated against the official OCA JSON
schemas shipped by the `ocpp` package (we read the schema files; we do not use its
ChargePoint runtime).

Error-code mapping (the same for both versions, spelled as each version spells it):

* frame is not JSON                          -> FormationViolation / FormatViolation
  (also JSON nested too deeply for the parser)
* not an array, wrong arity, id not a string -> 1.6 ProtocolError / RpcFrameworkError
* unknown MessageTypeId                      -> 1.6 ProtocolError / MessageTypeNotSupported
* payload not a JSON object                    -> FormationViolation / FormatViolation
* action unknown to the version                -> NotImplemented
* action known but not handled by the charger  -> NotSupported (decided by the dispatcher)
* schema keyword `type`                        -> TypeConstraintViolation
* `required`, `minItems`, `maxItems`           -> OccurenceConstraintViolation (1.6 spelling) /
                                                  OccurrenceConstraintViolation
* `additionalProperties`                       -> FormationViolation / FormatViolation
* `enum`, `maxLength`, `minimum`, `pattern`... -> PropertyConstraintViolation

When the message id cannot be read, the CALLERROR carries the id "-1".
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from decimal import Decimal
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any

import ocpp
from jsonschema import Draft4Validator
from jsonschema.exceptions import ValidationError, best_match

JsonDict = dict[str, Any]

MAX_ID_LENGTH = 36
UNKNOWN_ID = "-1"


class MessageType(IntEnum):
    CALL = 2
    CALLRESULT = 3
    CALLERROR = 4


class OcppVersion(StrEnum):
    V16 = "1.6"
    V201 = "2.0.1"

    @property
    def subprotocol(self) -> str:
        return "ocpp" + self.value

    @classmethod
    def from_subprotocol(cls, name: str) -> OcppVersion:
        for version in cls:
            if version.subprotocol == name:
                return version
        raise ValueError(f"unsupported OCPP subprotocol {name!r}")


class ErrorCode(StrEnum):
    """Version-neutral error classes; `spelled(version)` gives the wire code."""

    FORMAT_VIOLATION = "FormatViolation"
    PROTOCOL_ERROR = "ProtocolError"
    RPC_FRAMEWORK_ERROR = "RpcFrameworkError"
    MESSAGE_TYPE_NOT_SUPPORTED = "MessageTypeNotSupported"
    PROPERTY_CONSTRAINT_VIOLATION = "PropertyConstraintViolation"
    OCCURRENCE_CONSTRAINT_VIOLATION = "OccurrenceConstraintViolation"
    TYPE_CONSTRAINT_VIOLATION = "TypeConstraintViolation"
    NOT_IMPLEMENTED = "NotImplemented"
    NOT_SUPPORTED = "NotSupported"
    INTERNAL_ERROR = "InternalError"
    SECURITY_ERROR = "SecurityError"
    GENERIC_ERROR = "GenericError"

    def spelled(self, version: OcppVersion) -> str:
        if version is OcppVersion.V16:
            return _V16_SPELLING.get(self, self.value)
        return self.value


_V16_SPELLING = {
    ErrorCode.FORMAT_VIOLATION: "FormationViolation",
    ErrorCode.OCCURRENCE_CONSTRAINT_VIOLATION: "OccurenceConstraintViolation",
    # 1.6 has neither of these framework codes; ProtocolError is its closest.
    ErrorCode.RPC_FRAMEWORK_ERROR: "ProtocolError",
    ErrorCode.MESSAGE_TYPE_NOT_SUPPORTED: "ProtocolError",
}


class RpcError(Exception):
    """A problem that must be answered with a CALLERROR (or logged, for responses)."""

    def __init__(
        self,
        code: ErrorCode,
        description: str,
        *,
        unique_id: str | None = None,
        details: JsonDict | None = None,
        message_type: int | None = None,
    ) -> None:
        super().__init__(description)
        self.message_type = message_type
        self.code = code
        self.description = description
        self.unique_id = unique_id
        self.details = details or {}


@dataclass(frozen=True, slots=True)
class Call:
    unique_id: str
    action: str
    payload: JsonDict
    #: Bytes of the frame as it came over the wire (UTF-8); 0 for a Call not parsed from one.
    size: int = 0


@dataclass(frozen=True, slots=True)
class CallResult:
    unique_id: str
    payload: JsonDict


@dataclass(frozen=True, slots=True)
class CallError:
    unique_id: str
    code: str
    description: str
    details: JsonDict


Frame = Call | CallResult | CallError


def _dumps(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_json_default)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate (a CSMS may send "\ud800", which Python decodes as such) cannot
            # go into a UTF-8 websocket frame; escaped, the same string is valid JSON.
            text = json.dumps(value, separators=(",", ":"), default=_json_default)
    return text


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode_call(unique_id: str, action: str, payload: JsonDict) -> str:
    return _dumps([MessageType.CALL.value, unique_id, action, payload])


def encode_result(unique_id: str, payload: JsonDict) -> str:
    return _dumps([MessageType.CALLRESULT.value, unique_id, payload])


def encode_error(
    unique_id: str,
    code: ErrorCode,
    description: str,
    version: OcppVersion,
    details: JsonDict | None = None,
) -> str:
    # errorDescription is limited to 255 characters by both specs.
    return _dumps(
        [
            MessageType.CALLERROR.value,
            unique_id,
            code.spelled(version),
            description[:255],
            details or {},
        ]
    )


def encode_rpc_error(error: RpcError, version: OcppVersion) -> str:
    return encode_error(
        error.unique_id or UNKNOWN_ID, error.code, error.description, version, error.details
    )


def parse_frame(text: str | bytes) -> Frame:
    """Parse one websocket message into a frame, or raise RpcError."""
    try:
        message = json.loads(text, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RpcError(ErrorCode.FORMAT_VIOLATION, f"frame is not valid JSON: {exc}") from None
    except RecursionError:
        # Arrays or objects nested thousands deep: no OCPP message is like that.
        raise RpcError(ErrorCode.FORMAT_VIOLATION, "frame is nested too deeply") from None
    if not isinstance(message, list) or not message:
        raise RpcError(ErrorCode.RPC_FRAMEWORK_ERROR, "frame is not a non-empty JSON array")
    type_id = message[0]
    unique_id = message[1] if len(message) > 1 and isinstance(message[1], str) else None
    if type_id is True or type_id is False or type_id not in (2, 3, 4):
        raise RpcError(
            ErrorCode.MESSAGE_TYPE_NOT_SUPPORTED,
            f"MessageTypeId {type_id!r} is not 2, 3 or 4",
            unique_id=unique_id,
        )
    try:
        frame = _parse_typed(message, type_id, unique_id)
    except RpcError as exc:
        exc.message_type = type_id
        raise
    if isinstance(frame, Call):
        size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "replace"))
        return Call(frame.unique_id, frame.action, frame.payload, size)
    return frame


def _no_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (RFC 8259) and so OCPP-J do not.
    raise ValueError(f"{name} is not JSON")


def _parse_typed(message: list[Any], type_id: int, unique_id: str | None) -> Frame:
    arity = {2: 4, 3: 3, 4: 5}[type_id]
    if len(message) != arity:
        raise RpcError(
            ErrorCode.RPC_FRAMEWORK_ERROR,
            f"message type {type_id} needs {arity} elements, got {len(message)}",
            unique_id=unique_id,
        )
    if unique_id is None:
        raise RpcError(ErrorCode.RPC_FRAMEWORK_ERROR, "message id is not a string")
    if not unique_id or len(unique_id) > MAX_ID_LENGTH:
        raise RpcError(
            ErrorCode.RPC_FRAMEWORK_ERROR,
            f"message id must be 1..{MAX_ID_LENGTH} characters",
            unique_id=unique_id[:MAX_ID_LENGTH] or UNKNOWN_ID,
        )
    if type_id == 2:
        action, payload = message[2], message[3]
        if not isinstance(action, str):
            raise RpcError(
                ErrorCode.RPC_FRAMEWORK_ERROR, "action is not a string", unique_id=unique_id
            )
        if not isinstance(payload, dict):
            raise RpcError(
                ErrorCode.FORMAT_VIOLATION, "payload is not a JSON object", unique_id=unique_id
            )
        return Call(unique_id, action, payload)
    if type_id == 3:
        payload = message[2]
        if not isinstance(payload, dict):
            raise RpcError(
                ErrorCode.FORMAT_VIOLATION, "payload is not a JSON object", unique_id=unique_id
            )
        return CallResult(unique_id, payload)
    code, description, details = message[2], message[3], message[4]
    if not isinstance(code, str) or not isinstance(description, str):
        raise RpcError(
            ErrorCode.FORMAT_VIOLATION,
            "errorCode and errorDescription must be strings",
            unique_id=unique_id,
        )
    return CallError(unique_id, code, description, details if isinstance(details, dict) else {})


# ---------------------------------------------------------------------------------------------
# Schema validation

_SCHEMA_ROOT = Path(ocpp.__file__ or ".").parent
_SCHEMA_DIRS = {
    OcppVersion.V16: _SCHEMA_ROOT / "v16" / "schemas",
    OcppVersion.V201: _SCHEMA_ROOT / "v201" / "schemas",
}


@dataclass(slots=True)
class _Schema:
    validator: Draft4Validator
    decimal: bool  # schema uses multipleOf: validate with Decimal numbers, not floats


class SchemaSet:
    """The request and response schemas of one OCPP version, loaded lazily and cached."""

    def __init__(self, version: OcppVersion) -> None:
        self.version = version
        self._dir = _SCHEMA_DIRS[version]
        names = {n[:-5] for n in os.listdir(self._dir) if n.endswith(".json")}
        if version is OcppVersion.V16:
            self.actions = frozenset(n for n in names if not n.endswith("Response"))
        else:
            self.actions = frozenset(n[:-7] for n in names if n.endswith("Request"))
        self._cache: dict[tuple[str, bool], _Schema] = {}

    def _load(self, action: str, response: bool) -> _Schema:
        key = (action, response)
        schema = self._cache.get(key)
        if schema is None:
            suffix = (
                "Response" if response else ("" if self.version is OcppVersion.V16 else "Request")
            )
            path = self._dir / f"{action}{suffix}.json"
            raw = path.read_text(encoding="utf-8-sig")
            decimal = '"multipleOf"' in raw
            document = json.loads(raw, parse_float=Decimal) if decimal else json.loads(raw)
            document.pop("$schema", None)
            schema = _Schema(Draft4Validator(document), decimal)
            self._cache[key] = schema
        return schema

    def validate(
        self, action: str, payload: JsonDict, *, response: bool, unique_id: str | None = None
    ) -> None:
        """Raise RpcError with the prescribed code when `payload` breaks the schema."""
        if action not in self.actions:
            raise RpcError(
                ErrorCode.NOT_IMPLEMENTED,
                f"action {action!r} is not known in OCPP {self.version.value}",
                unique_id=unique_id,
            )
        schema = self._load(action, response)
        instance: Any = payload
        if schema.decimal:
            instance = json.loads(_dumps(payload), parse_float=Decimal)
        try:
            if schema.validator.is_valid(instance):
                return
            error = best_match(schema.validator.iter_errors(instance))
        except ArithmeticError:
            # multipleOf on a Decimal beyond the context's 28 digits (e.g. a limit of 1e300)
            # cannot be decided: such a number is out of any range OCPP means.
            raise RpcError(
                ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
                "payload: a number is too large",
                unique_id=unique_id,
            ) from None
        assert error is not None
        raise RpcError(_code_for(error), _describe(error), unique_id=unique_id)


_OCCURRENCE = {"required", "minItems", "maxItems", "minProperties", "maxProperties"}
_FORMAT = {"additionalProperties"}


def _code_for(error: ValidationError) -> ErrorCode:
    keyword = str(error.validator)
    if keyword == "type":
        return ErrorCode.TYPE_CONSTRAINT_VIOLATION
    if keyword in _OCCURRENCE:
        return ErrorCode.OCCURRENCE_CONSTRAINT_VIOLATION
    if keyword in _FORMAT:
        return ErrorCode.FORMAT_VIOLATION
    return ErrorCode.PROPERTY_CONSTRAINT_VIOLATION


def _describe(error: ValidationError) -> str:
    where = "/".join(str(p) for p in error.absolute_path) or "payload"
    return f"{where}: {error.message}"


_SCHEMAS: dict[OcppVersion, SchemaSet] = {}


def schemas(version: OcppVersion) -> SchemaSet:
    found = _SCHEMAS.get(version)
    if found is None:
        found = _SCHEMAS[version] = SchemaSet(version)
    return found
