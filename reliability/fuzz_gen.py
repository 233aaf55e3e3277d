"""Seeded generators of OCPP-J input: random bytes, random JSON, and CALLs built from the
official OCA JSON schemas (valid ones, then mutated where the schema draws its lines).

The schemas are the ones the daemon validates with (`service.ocpp.rpc.schemas`): the
generator reads the same files, so "valid" here means what the daemon must accept.
"""

from __future__ import annotations

import json
import random
import string
from typing import Any

from service.ocpp.rpc import OcppVersion, schemas

JsonValue = Any

_UNICODE = "äöüßé€☃😀\u200b\u202e\ufeff\x7f"
_PRINTABLE = string.ascii_letters + string.digits + " -_.:/#@"


def _schema_doc(version: OcppVersion, action: str, response: bool) -> dict[str, Any]:
    # The same files SchemaSet reads (it caches validators, not documents).
    s = schemas(version)
    suffix = "Response" if response else ("" if version is OcppVersion.V16 else "Request")
    raw = (s._dir / f"{action}{suffix}.json").read_text(encoding="utf-8-sig")
    doc: dict[str, Any] = json.loads(raw)
    return doc


class SchemaCache:
    def __init__(self) -> None:
        self._docs: dict[tuple[OcppVersion, str, bool], dict[str, Any]] = {}

    def get(self, version: OcppVersion, action: str, response: bool = False) -> dict[str, Any]:
        key = (version, action, response)
        if key not in self._docs:
            self._docs[key] = _schema_doc(version, action, response)
        return self._docs[key]


def random_string(rng: random.Random, n: int | None = None, *, unicode: bool = False) -> str:
    n = rng.randint(0, 24) if n is None else n
    alphabet = _PRINTABLE + (_UNICODE if unicode else "")
    return "".join(rng.choice(alphabet) for _ in range(n))


def random_timestamp(rng: random.Random) -> str:
    return (
        f"{rng.randint(2020, 2030):04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
        f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
        + rng.choice(("Z", ".123Z", "+01:00", ".5+05:30"))
    )


def random_scalar(rng: random.Random) -> JsonValue:
    return rng.choice(
        [
            None,
            True,
            False,
            0,
            -1,
            1,
            2,
            rng.randint(-(2**70), 2**70),
            rng.uniform(-1e6, 1e6),
            0.1,
            -0.0,
            1e308,
            "",
            "0",
            "Accepted",
            random_string(rng),
            random_string(rng, rng.randint(0, 600), unicode=True),
            random_timestamp(rng),
        ]
    )


def random_json(rng: random.Random, depth: int = 0) -> JsonValue:
    roll = rng.random()
    if depth >= 4 or roll < 0.45:
        return random_scalar(rng)
    if roll < 0.75:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return {
        random_string(rng, rng.randint(0, 12)): random_json(rng, depth + 1)
        for _ in range(rng.randint(0, 5))
    }


def random_bytes(rng: random.Random) -> str | bytes:
    n = rng.randint(0, 300)
    roll = rng.random()
    if roll < 0.4:
        return bytes(rng.getrandbits(8) for _ in range(n))
    if roll < 0.7:
        return "".join(chr(rng.randint(1, 0x2FFF)) for _ in range(n))
    # Almost-JSON: brackets, quotes, commas and digits in random order.
    return "".join(rng.choice('[]{}",:0123456789 truefalsnul-.eE\\') for _ in range(n))


def random_envelope_json(rng: random.Random) -> str:
    """JSON shaped roughly like an OCPP-J frame: an array with a type id and some elements."""
    type_id = rng.choice([2, 2, 3, 4, 0, 1, 5, -2, 2.0, "2", True, None, 2**64])
    items: list[Any] = [type_id]
    for _ in range(rng.randint(0, 5)):
        items.append(rng.choice([random_string(rng), random_json(rng), {}, [], None]))
    text = json.dumps(items)
    if rng.random() < 0.1:
        text = text.replace("null", rng.choice(["NaN", "Infinity", "-Infinity"]), 1)
    return text


# ----------------------------------------------------------------------- schema-aware values
class Generator:
    """Valid payloads from a JSON schema (draft 4 subset used by the OCPP schemas)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def value(self, schema: dict[str, Any], root: dict[str, Any], depth: int = 0) -> JsonValue:
        rng = self.rng
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            return self.value(root["definitions"][name], root, depth)
        if "enum" in schema:
            return rng.choice(schema["enum"])
        kind = schema.get("type", "object")
        if isinstance(kind, list):
            kind = rng.choice(kind)
        if kind == "object":
            out: dict[str, Any] = {}
            props: dict[str, Any] = schema.get("properties", {})
            required = set(schema.get("required", []))
            for name, sub in props.items():
                if name in required or (depth < 5 and rng.random() < 0.5):
                    out[name] = self.value(sub, root, depth + 1)
            return out
        if kind == "array":
            low = schema.get("minItems", 0)
            high = min(schema.get("maxItems", low + 3), low + 3)
            if depth >= 6:
                high = low
            return [
                self.value(schema.get("items", {}), root, depth + 1)
                for _ in range(rng.randint(low, max(low, high)))
            ]
        if kind == "string":
            if schema.get("format") == "date-time":
                return random_timestamp(rng)
            limit = schema.get("maxLength", 30)
            return random_string(rng, rng.randint(1 if limit else 0, min(limit, 20)))
        if kind == "integer":
            low = schema.get("minimum", 0)
            high = schema.get("maximum", low + rng.choice((3, 100, 100000)))
            return rng.randint(int(low), int(high))
        if kind == "number":
            low = schema.get("minimum", 0)
            high = schema.get("maximum", low + 1000)
            value = rng.uniform(float(low), float(high))
            step = schema.get("multipleOf")
            return round(value, 1) if step else round(value, rng.choice((0, 1, 3)))
        if kind == "boolean":
            return rng.random() < 0.5
        return random_scalar(rng)


# ----------------------------------------------------------------------------- mutations
def _paths(value: JsonValue, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*prefix, i))
    return found


def _get(value: JsonValue, path: tuple[Any, ...]) -> JsonValue:
    for step in path:
        value = value[step]
    return value


def _bad_value(rng: random.Random, old: JsonValue) -> JsonValue:
    """A value that breaks the schema where `old` stood (type, range, length, enum...)."""
    if isinstance(old, bool):
        return rng.choice(["true", 1, None, 0])
    if isinstance(old, int):
        return rng.choice(
            [
                old + 1,
                old - 1,
                -1,
                -(2**31) - 1,
                2**31,
                2**63,
                2**64 + 1,
                10**30,
                1.5,
                str(old),
                None,
                True,
                -0.0,
                float("nan") if rng.random() < 0.2 else 0.25,
            ]
        )
    if isinstance(old, float):
        return rng.choice([-1.0, 1e300, -1e300, 0.05, 0.123456789, "1.0", None, 10**20, -5])
    if isinstance(old, str):
        return rng.choice(
            [
                "",
                old + "x" * rng.choice((1, 20, 500, 5000)),
                old.lower(),
                old.upper(),
                random_string(rng, rng.randint(1, 60), unicode=True),
                "2026-13-45T99:99:99Z",
                "not a date",
                "\x00",
                1,
                None,
                [],
                {},
            ]
        )
    if isinstance(old, list):
        return rng.choice([[], [None], old * rng.choice((2, 50)), {}, "list", None])
    if isinstance(old, dict):
        return rng.choice([[], "object", None, 5, {"unexpected": 1}])
    return random_json(rng)


def mutate(rng: random.Random, payload: dict[str, Any], count: int) -> dict[str, Any]:
    payload = json.loads(json.dumps(payload))
    for _ in range(count):
        paths = _paths(payload)
        path = rng.choice(paths)
        roll = rng.random()
        if not path:
            target = payload
        else:
            parent = _get(payload, path[:-1])
            key = path[-1]
        if not path or roll < 0.15:
            # Add a property nobody defined (additionalProperties: false).
            target = payload if not path else _get(payload, path)
            if isinstance(target, dict):
                target[random_string(rng, rng.randint(1, 10))] = random_json(rng)
            continue
        if roll < 0.4:
            if isinstance(parent, dict):
                del parent[key]
            else:
                parent.pop(key)
            continue
        parent[key] = _bad_value(rng, parent[key])
    return payload


# --------------------------------------------------------------------------- whole frames
_ID_CHARS = string.ascii_letters + string.digits + "-"


def message_id(rng: random.Random) -> str:
    return "".join(rng.choice(_ID_CHARS) for _ in range(rng.randint(1, 36)))


def bad_message_id(rng: random.Random) -> Any:
    return rng.choice(["", "x" * 37, "x" * 1000, 5, None, [], {}, True, "é" * 10, "\u0000"])


class FrameFactory:
    """Inbound frames for one engine, with what the engine must do about each."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.gen = Generator(rng)
        self.docs = SchemaCache()
        self.actions = {v: sorted(schemas(v).actions) for v in OcppVersion}

    def call(self, version: OcppVersion, handled: list[str]) -> tuple[str, str, str]:
        """(kind, text, action): a CALL from the schemas, valid or mutated."""
        rng = self.rng
        # Mostly the actions the charger handles, so handlers run; the rest must be refused.
        action = (
            rng.choice(handled)
            if handled and rng.random() < 0.75
            else rng.choice(self.actions[version])
        )
        doc = self.docs.get(version, action)
        payload = self.gen.value(doc, doc)
        kind = "valid-call"
        roll = rng.random()
        if roll < 0.55:
            payload = mutate(rng, payload, rng.randint(1, 3))
            kind = "mutated-call"
        frame: list[Any] = [2, message_id(rng), action, payload]
        if rng.random() < 0.08:
            kind = "mutated-envelope"
            which = rng.randint(0, 5)
            if which == 0:
                frame[1] = bad_message_id(rng)
            elif which == 1:
                frame[2] = rng.choice([action.lower(), action + "X", "", 5, None, "Fuzz"])
            elif which == 2:
                frame.append(random_json(rng))
            elif which == 3:
                frame.pop()
            elif which == 4:
                frame[3] = rng.choice([[], None, "payload", 1, [payload]])
            else:
                frame[0] = rng.choice([0, 1, 5, "2", 2.5, None, True])
        return kind, json.dumps(frame, ensure_ascii=rng.random() < 0.5), action

    def response(self, version: OcppVersion, inflight: tuple[str, str] | None) -> tuple[str, str]:
        """(kind, text): a CALLRESULT/CALLERROR, for the CALL in flight or for nothing."""
        rng = self.rng
        if inflight is not None and rng.random() < 0.7:
            unique_id, action = inflight
        else:
            unique_id = message_id(rng)
            action = rng.choice(self.actions[version])
        if rng.random() < 0.6:
            doc = self.docs.get(version, action, response=True)
            payload = self.gen.value(doc, doc)
            if rng.random() < 0.6:
                payload = mutate(rng, payload, rng.randint(1, 3))
            return "callresult", json.dumps([3, unique_id, payload])
        code = rng.choice(["InternalError", "NotSupported", "GenericError", "Weird", "", 5])
        details = rng.choice([{}, {"a": 1}, None, [], "x"])
        return "callerror", json.dumps([4, unique_id, code, random_string(rng), details])
