"""Modbus register maps of energy meters: the TOML format, its validation and value decoding.

A map says where a meter keeps each quantity evsed reads (per-phase voltage, current and active
power, imported and exported active energy, frequency), which Modbus function reads it (input
registers, FC 04, or holding registers, FC 03), how the 16-bit registers encode the number (data
type, word order, scale) and in which unit. `docs/meter-maps.md` describes the format for
installers; built-in maps live in `hal/meter/maps/<name>.toml`.

A map may also describe a signed record the meter keeps (meters with an OCMF or similar
signature, as MID / German Eichrecht meters have), in an optional `[signed]` table:

    [signed]
    function = "holding"            # input or holding registers; default "holding"
    length = 0x1000                 # uint16 register: bytes of the record now (0: no record)
    data = 0x1001                   # first register of the record: printable ASCII, two
                                    # characters per register, the first in the high byte
    max_length = 1000               # most bytes the record registers hold (1..1875)
    signing_method = "ECDSA-secp256r1-SHA256"   # OCPP signingMethod (1..50 characters)
    encoding_method = "OCMF"        # OCPP encodingMethod (1..50 characters)
    public_key_length = 0x1400      # optional: uint16 register, characters of the public key
    public_key = 0x1401             # optional: first register of the key, ASCII like `data`
    public_key_max_length = 400     # most characters of the key (1..2500)
    public_key_format = "hex"       # how the key is written: "hex" digits or "base64"

`length` and `public_key_length` count bytes (characters), not registers; the record is
read after the measured values, in requests of at most `meter.max_registers` registers, and
the public key once. The signed registers must not overlap the measured ones. 1875 bytes is the
most a record may have: base64 encoded it fills OCPP 2.0.1's 2500 characters of
signedMeterData.

Every problem in a map file is a MeterMapError whose message names the file and the entry
(`registers.voltage_l2.type`, `blocks[2].count`...), so a bad map is fixed without reading code.
"""

from __future__ import annotations

import math
import struct
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import pairwise
from pathlib import Path

from service.config_reader import show

__all__ = [
    "BUILTIN_DIR",
    "MAX_REGISTERS_PER_REQUEST",
    "PHASE_QUANTITIES",
    "QUANTITIES",
    "Block",
    "DataType",
    "Function",
    "MeterMap",
    "MeterMapError",
    "Register",
    "SignedBlock",
    "builtin_names",
    "load_map",
    "parse_map",
    "resolve_map",
]

BUILTIN_DIR = Path(__file__).resolve().parent / "maps"

# The Modbus limit for one read of registers (FC 03 / FC 04): 125 registers.
MAX_REGISTERS_PER_REQUEST = 125

# Quantities measured per phase: `<kind>_l1`, `<kind>_l2`, `<kind>_l3`.
PHASE_QUANTITIES: tuple[str, ...] = ("voltage", "current", "power")
# Every register name a map may define.
QUANTITIES: tuple[str, ...] = (
    *(f"{kind}_l{phase}" for kind in PHASE_QUANTITIES for phase in (1, 2, 3)),
    "energy_import",
    "energy_export",
    "frequency",
)

# Units a register may be given in, per kind of quantity, with the factor to evsed's unit
# (V, A, W, Wh, Hz).
_UNITS: dict[str, dict[str, float]] = {
    "voltage": {"V": 1.0, "kV": 1000.0},
    "current": {"A": 1.0, "mA": 0.001},
    "power": {"W": 1.0, "kW": 1000.0},
    "energy": {"Wh": 1.0, "kWh": 1000.0, "MWh": 1_000_000.0},
    "frequency": {"Hz": 1.0},
}


class MeterMapError(ValueError):
    """A register map file is unreadable or invalid. str() is one line naming file and entry."""

    def __init__(self, file: str, entry: str, problem: str) -> None:
        self.file = file
        self.entry = entry
        self.problem = problem
        where = f"{file}: {entry}" if entry else file
        super().__init__(f"{where}: {problem}")


class Function(StrEnum):
    """Which Modbus read function reaches a register."""

    INPUT = "input"  # read input registers, function code 04
    HOLDING = "holding"  # read holding registers, function code 03

    @property
    def code(self) -> int:
        return 4 if self is Function.INPUT else 3


class DataType(StrEnum):
    """How consecutive 16-bit registers encode one number."""

    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"

    @property
    def words(self) -> int:
        """Registers (16-bit words) one value takes."""
        return _STRUCT[self][1]

    @property
    def is_float(self) -> bool:
        return self in (DataType.FLOAT32, DataType.FLOAT64)


_STRUCT: dict[DataType, tuple[str, int]] = {
    DataType.INT16: ("h", 1),
    DataType.UINT16: ("H", 1),
    DataType.INT32: ("i", 2),
    DataType.UINT32: ("I", 2),
    DataType.INT64: ("q", 4),
    DataType.UINT64: ("Q", 4),
    DataType.FLOAT32: ("f", 2),
    DataType.FLOAT64: ("d", 4),
}

_WORD_ORDERS = ("big", "little")


def _kind(name: str) -> str:
    """The kind of quantity of a register name: voltage_l2 -> voltage, energy_import -> energy."""
    return name.split("_", 1)[0]


@dataclass(frozen=True, slots=True)
class Register:
    """Where and how one quantity is stored.

    `scale` multiplies the raw number to give a value in `unit`; `invalid` is the raw content
    (read as an unsigned number of the register's width) by which the meter says "not
    available", if it has one.
    """

    name: str
    function: Function
    address: int
    type: DataType
    word_order: str  # "big": most significant word first; "little": least significant first
    scale: float
    unit: str
    invalid: int | None = None

    @property
    def words(self) -> int:
        return self.type.words

    @property
    def end(self) -> int:
        """One past the last register address this value occupies."""
        return self.address + self.words

    @property
    def factor(self) -> float:
        """Raw number -> evsed's unit (V, A, W, Wh, Hz)."""
        return self.scale * _UNITS[_kind(self.name)][self.unit]

    def _bytes(self, words: Sequence[int]) -> bytes:
        ordered = words if self.word_order == "big" else list(reversed(words))
        return b"".join(word.to_bytes(2, "big") for word in ordered)

    def raw(self, words: Sequence[int]) -> int:
        """The registers as one unsigned number (what `invalid` is compared with)."""
        return int.from_bytes(self._bytes(words), "big")

    def decode(self, words: Sequence[int]) -> float | None:
        """The value in evsed's unit, or None when the meter marks it as not available."""
        if len(words) != self.words:
            raise ValueError(f"{self.name}: {len(words)} registers, expected {self.words}")
        data = self._bytes(words)
        if self.invalid is not None and int.from_bytes(data, "big") == self.invalid:
            return None
        number: int | float = struct.unpack(">" + _STRUCT[self.type][0], data)[0]
        return float(number) * self.factor

    def encode(self, value: float) -> list[int]:
        """Registers holding `value` (evsed's unit); the inverse of decode (for simulators).

        NaN is encoded as NaN by float types and as `invalid` by integer types that have one.
        Raises ValueError when an integer register cannot hold the value.
        """
        code = _STRUCT[self.type][0]
        if self.type.is_float:
            number: int | float = value if not math.isfinite(value) else value / self.factor
        elif math.isnan(value) and self.invalid is not None:
            data = self.invalid.to_bytes(2 * self.words, "big")
            return self._words(data)
        else:
            if not math.isfinite(value):
                raise ValueError(f"{self.name}: {value} does not fit type {self.type}")
            number = round(value / self.factor)
        try:
            data = struct.pack(">" + code, number)
        except struct.error as exc:
            raise ValueError(f"{self.name}: {value} does not fit type {self.type}") from exc
        return self._words(data)

    def _words(self, data: bytes) -> list[int]:
        words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
        return words if self.word_order == "big" else list(reversed(words))


@dataclass(frozen=True, slots=True)
class Block:
    """A run of registers fetched with one request."""

    function: Function
    address: int
    count: int

    @property
    def end(self) -> int:
        return self.address + self.count

    def holds(self, register: Register) -> bool:
        return (
            register.function is self.function
            and self.address <= register.address
            and register.end <= self.end
        )


# The most bytes a signed record may have: base64 makes 4 characters of 3 bytes, and OCPP
# 2.0.1 SignedMeterValueType.signedMeterData holds at most 2500 characters.
MAX_SIGNED_LENGTH = 1875
# SignedMeterValueType.publicKey holds at most 2500 characters (base64).
MAX_PUBLIC_KEY_LENGTH = 2500
# SignedMeterValueType.signingMethod / encodingMethod: at most 50 characters.
MAX_METHOD_LENGTH = 50
PUBLIC_KEY_FORMATS = ("hex", "base64")


def registers_for(length: int) -> int:
    """Registers holding `length` ASCII characters (two per register)."""
    return (length + 1) // 2


@dataclass(frozen=True, slots=True)
class SignedBlock:
    """Where a meter keeps its signed record (and its public key): the `[signed]` table."""

    function: Function
    length: int  # address of the uint16 register with the record's length in bytes
    data: int  # address of the record's first register
    max_length: int  # bytes
    signing_method: str
    encoding_method: str
    public_key_length: int | None = None
    public_key: int | None = None
    public_key_max_length: int = 0  # characters
    public_key_format: str = "hex"

    def spans(self) -> list[tuple[str, int, int]]:
        """(entry name, first address, register count) of every register run it uses."""
        out = [
            ("length", self.length, 1),
            ("data", self.data, registers_for(self.max_length)),
        ]
        if self.public_key_length is not None and self.public_key is not None:
            out.append(("public_key_length", self.public_key_length, 1))
            out.append(("public_key", self.public_key, registers_for(self.public_key_max_length)))
        return out


@dataclass(frozen=True, slots=True)
class MeterMap:
    """A validated register map. `blocks` are the requests one reading takes, in order."""

    name: str
    description: str
    phases: int
    registers: Mapping[str, Register]
    blocks: tuple[Block, ...]
    max_registers: int
    source: Path
    signed: SignedBlock | None = None

    def register(self, name: str) -> Register | None:
        return self.registers.get(name)

    def phase_names(self, kind: str) -> tuple[str, ...]:
        """Register names of one per-phase quantity, L1 first: ("voltage_l1", ...)."""
        return tuple(f"{kind}_l{phase}" for phase in range(1, self.phases + 1))


# ---------------------------------------------------------------------------------------------
# Loading


def builtin_names() -> tuple[str, ...]:
    """Names of the maps shipped with evsed ("sdm630", ...), sorted."""
    return tuple(sorted(path.stem for path in BUILTIN_DIR.glob("*.toml")))


def resolve_map(spec: str) -> MeterMap:
    """The map a configuration names: a built-in name, or an absolute path to a .toml file."""
    if spec in builtin_names():
        return load_map(BUILTIN_DIR / f"{spec}.toml", name=spec)
    path = Path(spec)
    if not path.is_absolute():
        raise MeterMapError(
            spec,
            "",
            f"not a built-in map ({', '.join(builtin_names())}) nor an absolute path to a "
            ".toml map file",
        )
    return load_map(path)


def load_map(path: Path, *, name: str | None = None) -> MeterMap:
    """Read and validate one map file. Raises MeterMapError naming the file and the entry."""
    file = str(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise MeterMapError(file, "", f"cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise MeterMapError(file, "", f"not UTF-8 text ({exc.reason})") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MeterMapError(file, "", f"not valid TOML: {exc}") from exc
    return parse_map(data, path, name=name)


# ---------------------------------------------------------------------------------------------
# Validation

_TOP_KEYS = ("meter", "defaults", "registers", "blocks", "signed")
_SIGNED_KEYS = (
    "function",
    "length",
    "data",
    "max_length",
    "signing_method",
    "encoding_method",
    "public_key_length",
    "public_key",
    "public_key_max_length",
    "public_key_format",
)
_METER_KEYS = ("description", "phases", "max_registers")
_DEFAULT_KEYS = ("function", "type", "word_order", "scale")
_REGISTER_KEYS = ("address", "function", "type", "word_order", "scale", "unit", "invalid")
_BLOCK_KEYS = ("function", "address", "count")


class _Checker:
    """Validation helpers that raise MeterMapError for one file."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, entry: str, problem: str) -> MeterMapError:
        return MeterMapError(self.file, entry, problem)

    def table(self, value: object, entry: str) -> dict[str, object]:
        if not isinstance(value, dict):
            raise self.fail(entry, f"found {show(value)}; expected a table")
        return value

    def keys(self, table: Mapping[str, object], allowed: Sequence[str], entry: str) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(
                    f"{entry}.{key}" if entry else key,
                    f"unknown key; expected one of {', '.join(allowed)}",
                )

    def integer(self, value: object, entry: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(entry, f"found {show(value)}; expected an integer {low}..{high}")
        return value

    def choice(self, value: object, entry: str, choices: Sequence[str], what: str) -> str:
        if not isinstance(value, str) or value not in choices:
            raise self.fail(entry, f"{what} {show(value)}; expected one of {', '.join(choices)}")
        return value

    def scale(self, value: object, entry: str) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise self.fail(entry, f"bad scale {show(value)}; expected a number > 0")
        return float(value)


def parse_map(data: Mapping[str, object], source: Path, *, name: str | None = None) -> MeterMap:
    """Validate parsed TOML `data` read from `source` (named in errors) into a MeterMap."""
    check = _Checker(str(source))
    check.keys(data, _TOP_KEYS, "")

    meter = check.table(data.get("meter", {}), "meter")
    check.keys(meter, _METER_KEYS, "meter")
    description = meter.get("description", "")
    if not isinstance(description, str):
        raise check.fail("meter.description", f"found {show(description)}; expected a string")
    if "phases" not in meter:
        raise check.fail("meter.phases", "missing; expected 1, 2 or 3")
    phases = check.integer(meter["phases"], "meter.phases", 1, 3)
    max_registers = check.integer(
        meter.get("max_registers", MAX_REGISTERS_PER_REQUEST),
        "meter.max_registers",
        1,
        MAX_REGISTERS_PER_REQUEST,
    )

    defaults = check.table(data.get("defaults", {}), "defaults")
    check.keys(defaults, _DEFAULT_KEYS, "defaults")

    if "registers" not in data:
        raise check.fail("registers", "missing; the map must define its registers")
    tables = check.table(data["registers"], "registers")
    registers: dict[str, Register] = {}
    for reg_name, entry in tables.items():
        registers[reg_name] = _parse_register(check, reg_name, entry, defaults, phases)

    required = [*(f"{kind}_l{p}" for kind in PHASE_QUANTITIES for p in range(1, phases + 1))]
    required.append("energy_import")
    for reg_name in required:
        if reg_name not in registers:
            raise check.fail(
                f"registers.{reg_name}",
                f"missing; a {phases}-phase map needs {_describe_required(phases)}",
            )
    for register in registers.values():
        if register.words > max_registers:
            raise check.fail(
                f"registers.{register.name}.type",
                f"{register.type} takes {register.words} registers, more than "
                f"meter.max_registers ({max_registers})",
            )
    _check_overlaps(check, registers)

    if "blocks" in data:
        blocks = _parse_blocks(check, data["blocks"], registers, max_registers)
    else:
        blocks = _group(registers, max_registers)
    signed = _parse_signed(check, data["signed"], registers) if "signed" in data else None
    return MeterMap(
        name=name or source.stem,
        description=description,
        phases=phases,
        registers=registers,
        blocks=blocks,
        max_registers=max_registers,
        source=source,
        signed=signed,
    )


def _parse_signed(check: _Checker, value: object, registers: Mapping[str, Register]) -> SignedBlock:
    table = check.table(value, "signed")
    check.keys(table, _SIGNED_KEYS, "signed")
    for key in ("length", "data", "max_length", "signing_method", "encoding_method"):
        if key not in table:
            raise check.fail(f"signed.{key}", "missing")
    function = Function(
        check.choice(
            table.get("function", "holding"), "signed.function", list(Function), "unknown function"
        )
    )
    max_length = check.integer(table["max_length"], "signed.max_length", 1, MAX_SIGNED_LENGTH)
    length = check.integer(table["length"], "signed.length", 0, 65535)
    data = check.integer(table["data"], "signed.data", 0, 65536 - registers_for(max_length))
    methods: list[str] = []
    for key in ("signing_method", "encoding_method"):
        text = table[key]
        if (
            not isinstance(text, str)
            or not 1 <= len(text) <= MAX_METHOD_LENGTH
            or not text.isascii()
            or not text.isprintable()
        ):
            raise check.fail(
                f"signed.{key}",
                f"found {show(text)}; expected 1..{MAX_METHOD_LENGTH} printable ASCII characters",
            )
        methods.append(text)
    key_entries = ("public_key_length", "public_key", "public_key_max_length")
    given = [key for key in key_entries if key in table]
    key_length: int | None = None
    key_data: int | None = None
    key_max = 0
    key_format = "hex"
    if given:
        for key in key_entries:
            if key not in table:
                raise check.fail(
                    f"signed.{key}", "missing; a public key needs all of " + ", ".join(key_entries)
                )
        key_max = check.integer(
            table["public_key_max_length"],
            "signed.public_key_max_length",
            1,
            MAX_PUBLIC_KEY_LENGTH,
        )
        key_length = check.integer(table["public_key_length"], "signed.public_key_length", 0, 65535)
        key_data = check.integer(
            table["public_key"], "signed.public_key", 0, 65536 - registers_for(key_max)
        )
        key_format = check.choice(
            table.get("public_key_format", "hex"),
            "signed.public_key_format",
            PUBLIC_KEY_FORMATS,
            "unknown key format",
        )
    elif "public_key_format" in table:
        raise check.fail("signed.public_key_format", "given without signed.public_key")
    block = SignedBlock(
        function=function,
        length=length,
        data=data,
        max_length=max_length,
        signing_method=methods[0],
        encoding_method=methods[1],
        public_key_length=key_length,
        public_key=key_data,
        public_key_max_length=key_max,
        public_key_format=key_format,
    )
    spans = block.spans()
    for index, (entry, address, count) in enumerate(spans):
        for other, other_address, other_count in spans[:index]:
            if address < other_address + other_count and other_address < address + count:
                raise check.fail(f"signed.{entry}", f"overlaps signed.{other}")
        for register in registers.values():
            if (
                register.function is function
                and address < register.end
                and register.address < address + count
            ):
                raise check.fail(
                    f"signed.{entry}",
                    f"{function} {address:#06x}+{count} overlaps registers.{register.name} "
                    f"({_span(register)})",
                )
    return block


def _describe_required(phases: int) -> str:
    last = f"l{phases}"
    if phases == 1:
        return "voltage_l1, current_l1, power_l1 and energy_import"
    return f"voltage_l1..{last}, current_l1..{last}, power_l1..{last} and energy_import"


def _parse_register(
    check: _Checker,
    name: str,
    entry: object,
    defaults: Mapping[str, object],
    phases: int,
) -> Register:
    where = f"registers.{name}"
    if name not in QUANTITIES:
        raise check.fail(where, f"unknown register; expected one of {', '.join(QUANTITIES)}")
    if name[-3:-1] == "_l" and int(name[-1]) > phases:
        raise check.fail(where, f"phase {name[-1]} register in a {phases}-phase map")
    table = check.table(entry, where)
    check.keys(table, _REGISTER_KEYS, where)

    def setting(key: str) -> object:
        if key in table:
            return table[key]
        if key in defaults:
            return defaults[key]
        raise check.fail(f"{where}.{key}", "missing (and [defaults] does not set it)")

    function = Function(
        check.choice(setting("function"), f"{where}.function", list(Function), "unknown function")
    )
    data_type = DataType(
        check.choice(setting("type"), f"{where}.type", list(DataType), "unknown type")
    )
    word_order = check.choice(
        table.get("word_order", defaults.get("word_order", "big")),
        f"{where}.word_order",
        _WORD_ORDERS,
        "unknown word order",
    )
    scale = check.scale(table.get("scale", defaults.get("scale", 1)), f"{where}.scale")
    units = _UNITS[_kind(name)]
    if "unit" not in table:
        raise check.fail(f"{where}.unit", f"missing; expected one of {', '.join(units)}")
    unit = check.choice(table["unit"], f"{where}.unit", list(units), "unknown unit")
    if "address" not in table:
        raise check.fail(f"{where}.address", "missing; expected the register address 0..65535")
    address = check.integer(table["address"], f"{where}.address", 0, 65536 - data_type.words)
    invalid: int | None = None
    if "invalid" in table:
        if data_type.is_float:
            raise check.fail(
                f"{where}.invalid", "only integer types have an 'invalid' marker (floats use NaN)"
            )
        invalid = check.integer(
            table["invalid"], f"{where}.invalid", 0, (1 << (16 * data_type.words)) - 1
        )
    return Register(
        name=name,
        function=function,
        address=address,
        type=data_type,
        word_order=word_order,
        scale=scale,
        unit=unit,
        invalid=invalid,
    )


def _span(register: Register) -> str:
    return f"{register.function} {register.address:#06x}..{register.end - 1:#06x}"


def _check_overlaps(check: _Checker, registers: Mapping[str, Register]) -> None:
    ordered = sorted(registers.values(), key=lambda r: (r.function, r.address))
    for before, after in pairwise(ordered):
        if before.function is after.function and after.address < before.end:
            raise check.fail(
                f"registers.{after.name}",
                f"{_span(after)} overlaps registers.{before.name} ({_span(before)})",
            )


def _parse_blocks(
    check: _Checker,
    value: object,
    registers: Mapping[str, Register],
    max_registers: int,
) -> tuple[Block, ...]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise check.fail("blocks", f"found {show(value)}; expected an array of tables")
    blocks: list[Block] = []
    for index, item in enumerate(value):
        where = f"blocks[{index + 1}]"
        check.keys(item, _BLOCK_KEYS, where)
        for key in _BLOCK_KEYS:
            if key not in item:
                raise check.fail(f"{where}.{key}", "missing")
        function = Function(
            check.choice(item["function"], f"{where}.function", list(Function), "unknown function")
        )
        address = check.integer(item["address"], f"{where}.address", 0, 65535)
        count = check.integer(item["count"], f"{where}.count", 1, max_registers)
        if address + count > 65536:
            raise check.fail(f"{where}.count", f"{address:#06x} + {count} runs past 0xffff")
        block = Block(function, address, count)
        for other_index, other in enumerate(blocks):
            if other.function is function and address < other.end and other.address < block.end:
                raise check.fail(where, f"overlaps blocks[{other_index + 1}]")
        if not any(block.holds(register) for register in registers.values()):
            raise check.fail(where, "holds no mapped register; remove it")
        blocks.append(block)
    for register in registers.values():
        if not any(block.holds(register) for block in blocks):
            raise check.fail(
                f"registers.{register.name}",
                f"{_span(register)} is not inside any [[blocks]] entry",
            )
    return tuple(blocks)


def _group(registers: Mapping[str, Register], max_registers: int) -> tuple[Block, ...]:
    """Fewest requests without reading unmapped addresses: contiguous registers of one function
    are read together, up to `max_registers` per request."""
    blocks: list[Block] = []
    for register in sorted(registers.values(), key=lambda r: (r.function, r.address)):
        last = blocks[-1] if blocks else None
        if (
            last is not None
            and last.function is register.function
            and register.address == last.end
            and register.end - last.address <= max_registers
        ):
            blocks[-1] = Block(last.function, last.address, register.end - last.address)
        else:
            blocks.append(Block(register.function, register.address, register.words))
    return tuple(blocks)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m hal.meter.maps MAP...`: check maps (built-in names or paths) and show them."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m hal.meter.maps MAP [MAP...]  (built-in name or absolute path)")
        print(f"built-in maps: {', '.join(builtin_names())}")
        return 2
    status = 0
    for spec in args:
        try:
            meter_map = resolve_map(spec if spec in builtin_names() else str(Path(spec).resolve()))
        except MeterMapError as exc:
            print(f"error: {exc}")
            status = 1
            continue
        print(
            f"{meter_map.source}: {meter_map.description or meter_map.name}, "
            f"{meter_map.phases} phase(s), {len(meter_map.blocks)} request(s) per reading"
        )
        for block in meter_map.blocks:
            names = [r.name for r in meter_map.registers.values() if block.holds(r)]
            print(f"  {block.function} {block.address:#06x}+{block.count}: {', '.join(names)}")
        signed = meter_map.signed
        if signed is not None:
            key = "with" if signed.public_key is not None else "without"
            print(
                f"  signed record ({signed.encoding_method}, {signed.signing_method}) in "
                f"{signed.function} {signed.data:#06x}, up to {signed.max_length} bytes, "
                f"{key} public key"
            )
    return status


if __name__ == "__main__":
    raise SystemExit(main())
