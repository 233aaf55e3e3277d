"""Tests of hal.meter.maps: the built-in register maps, value decoding and map validation."""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path

import pytest

from hal.meter.maps import (
    BUILTIN_DIR,
    Block,
    DataType,
    Function,
    MeterMapError,
    builtin_names,
    load_map,
    main,
    resolve_map,
)

DOC = Path(__file__).resolve().parents[3] / "docs" / "meter-maps.md"

THREE_PHASE = """
[meter]
phases = 3
[defaults]
function = "input"
type = "float32"
[registers]
voltage_l1 = { address = 0, unit = "V" }
voltage_l2 = { address = 2, unit = "V" }
voltage_l3 = { address = 4, unit = "V" }
current_l1 = { address = 6, unit = "A" }
current_l2 = { address = 8, unit = "A" }
current_l3 = { address = 10, unit = "A" }
power_l1 = { address = 12, unit = "W" }
power_l2 = { address = 14, unit = "W" }
power_l3 = { address = 16, unit = "W" }
energy_import = { address = 0x48, unit = "kWh" }
"""


def write(tmp_path: Path, text: str, name: str = "meter.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def edited(old: str, new: str) -> str:
    assert old in THREE_PHASE
    return THREE_PHASE.replace(old, new)


# -- built-in maps -----------------------------------------------------------------------------


def test_builtin_maps_are_the_documented_ones() -> None:
    assert builtin_names() == ("abb_b23", "em340", "evsed_ocmf", "sdm120", "sdm630", "sdm72")
    for name in builtin_names():
        meter_map = resolve_map(name)
        assert meter_map.name == name
        assert meter_map.source == BUILTIN_DIR / f"{name}.toml"
        assert f"`{name}`" in DOC.read_text()


def test_eastron_maps_are_float32_input_registers_high_word_first() -> None:
    for name in ("sdm630", "sdm72", "sdm120"):
        meter_map = resolve_map(name)
        for register in meter_map.registers.values():
            assert register.function is Function.INPUT
            assert register.type is DataType.FLOAT32
            assert register.word_order == "big"
        regs = meter_map.registers
        assert regs["voltage_l1"].address == 0x0000
        assert regs["current_l1"].address == 0x0006
        assert regs["power_l1"].address == 0x000C
        assert regs["frequency"].address == 0x0046
        assert (regs["energy_import"].address, regs["energy_import"].unit) == (0x0048, "kWh")
        assert (regs["energy_export"].address, regs["energy_export"].unit) == (0x004A, "kWh")
    sdm630 = resolve_map("sdm630")
    assert [sdm630.registers[f"voltage_l{p}"].address for p in (1, 2, 3)] == [0, 2, 4]
    assert [sdm630.registers[f"power_l{p}"].address for p in (1, 2, 3)] == [12, 14, 16]
    # V, I, P in one request, frequency and energies in another.
    assert sdm630.blocks == (Block(Function.INPUT, 0, 18), Block(Function.INPUT, 0x46, 6))
    assert resolve_map("sdm120").phases == 1


def test_abb_b23_map_uses_integer_holding_registers_with_resolutions() -> None:
    regs = resolve_map("abb_b23").registers
    assert all(r.function is Function.HOLDING and r.word_order == "big" for r in regs.values())
    energy = regs["energy_import"]
    assert (energy.address, energy.type, energy.scale, energy.unit) == (
        0x5000,
        DataType.UINT64,
        0.01,
        "kWh",
    )
    assert regs["energy_export"].address == 0x5004
    assert (regs["voltage_l3"].address, regs["voltage_l3"].type) == (0x5B04, DataType.UINT32)
    assert (regs["current_l1"].address, regs["current_l1"].scale) == (0x5B0C, 0.01)
    assert (regs["power_l1"].address, regs["power_l1"].type) == (0x5B16, DataType.INT32)
    assert (regs["frequency"].address, regs["frequency"].scale) == (0x5B2C, 0.01)
    assert regs["power_l2"].invalid == 0x7FFFFFFF
    # Words 0x0000 0x0000 0x0001 0xE240 = 123456 x 0.01 kWh.
    assert energy.decode([0, 0, 1, 0xE240]) == pytest.approx(1_234_560.0)
    assert energy.decode([0xFFFF] * 4) is None  # "not available"
    assert regs["power_l1"].decode([0xFFFF, 0xFF38]) == pytest.approx(-2.0)  # -200 x 0.01 W


def test_em340_map_uses_int32_least_significant_word_first() -> None:
    regs = resolve_map("em340").registers
    voltage = regs["voltage_l1"]
    assert (voltage.type, voltage.word_order, voltage.scale) == (DataType.INT32, "little", 0.1)
    assert voltage.decode([2301, 0]) == pytest.approx(230.1)
    # 100000 (0x000186A0) x 0.001 A: low word 0x86A0 first.
    assert regs["current_l2"].decode([0x86A0, 0x0001]) == pytest.approx(100.0)
    assert regs["power_l1"].decode([0xFFFF, 0xFFFF]) == pytest.approx(-0.1)
    assert (regs["frequency"].address, regs["frequency"].type) == (0x0033, DataType.INT16)
    assert (regs["energy_import"].address, regs["energy_export"].address) == (0x0034, 0x004E)
    assert regs["energy_import"].decode([12345, 0]) == pytest.approx(1_234_500.0)


def test_float32_decoding_and_encoding_round_trip() -> None:
    voltage = resolve_map("sdm630").registers["voltage_l1"]
    assert voltage.encode(230.0) == [0x4366, 0x0000]
    assert voltage.decode([0x4366, 0x0000]) == 230.0
    energy = resolve_map("sdm630").registers["energy_import"]
    assert energy.decode(energy.encode(1_234_567.0)) == pytest.approx(1_234_567.0, rel=1e-7)
    nan = voltage.decode(voltage.encode(math.nan))
    assert nan is not None and math.isnan(nan)


def test_integer_registers_refuse_values_they_cannot_hold() -> None:
    voltage = resolve_map("abb_b23").registers["voltage_l1"]
    with pytest.raises(ValueError, match="does not fit"):
        voltage.encode(-5.0)
    assert voltage.encode(math.nan) == [0xFFFF, 0xFFFF]  # the "not available" marker


# -- grouping ----------------------------------------------------------------------------------


def test_contiguous_registers_are_read_together_up_to_max_registers(tmp_path: Path) -> None:
    path = write(tmp_path, edited("phases = 3", "phases = 3\nmax_registers = 8"))
    meter_map = load_map(path)
    assert meter_map.blocks == (
        Block(Function.INPUT, 0, 8),
        Block(Function.INPUT, 8, 8),
        Block(Function.INPUT, 16, 2),
        Block(Function.INPUT, 0x48, 2),
    )


def test_a_function_change_or_a_gap_starts_another_request(tmp_path: Path) -> None:
    text = edited(
        'power_l3 = { address = 16, unit = "W" }',
        'power_l3 = { address = 16, unit = "W", function = "holding" }\n'
        'frequency = { address = 20, unit = "Hz" }',
    )
    meter_map = load_map(write(tmp_path, text))
    assert meter_map.blocks == (
        Block(Function.HOLDING, 16, 2),
        Block(Function.INPUT, 0, 16),
        Block(Function.INPUT, 20, 2),
        Block(Function.INPUT, 0x48, 2),
    )


def test_declared_blocks_are_used_as_given(tmp_path: Path) -> None:
    text = THREE_PHASE + ("[[blocks]]\nfunction = 'input'\naddress = 0\ncount = 74\n")
    assert load_map(write(tmp_path, text)).blocks == (Block(Function.INPUT, 0, 74),)


# -- validation --------------------------------------------------------------------------------

BLOCK = "\n[[blocks]]\nfunction = 'input'\naddress = {address}\ncount = {count}\n"

BAD_MAPS = [
    (
        edited(
            'voltage_l1 = { address = 0, unit = "V" }',
            'voltage_l1 = { address = 0, unit = "V", type = "float16" }',
        ),
        "registers.voltage_l1.type",
        'unknown type "float16"',
    ),
    (
        edited('current_l2 = { address = 8, unit = "A" }\n', ""),
        "registers.current_l2",
        "missing; a 3-phase map needs voltage_l1..l3",
    ),
    (
        edited('energy_import = { address = 0x48, unit = "kWh" }\n', ""),
        "registers.energy_import",
        "missing",
    ),
    (
        edited(
            'power_l1 = { address = 12, unit = "W" }',
            'power_l1 = { address = 12, unit = "W", scale = 0 }',
        ),
        "registers.power_l1.scale",
        "bad scale 0",
    ),
    (
        edited(
            'power_l1 = { address = 12, unit = "W" }',
            'power_l1 = { address = 12, unit = "W", scale = -1 }',
        ),
        "registers.power_l1.scale",
        "bad scale -1",
    ),
    (
        edited(
            'power_l1 = { address = 12, unit = "W" }',
            'power_l1 = { address = 12, unit = "W", scale = "10" }',
        ),
        "registers.power_l1.scale",
        'bad scale "10"',
    ),
    (
        edited(
            'power_l1 = { address = 12, unit = "W" }',
            'power_l1 = { address = 12, unit = "W", scale = inf }',
        ),
        "registers.power_l1.scale",
        "bad scale inf",
    ),
    (
        edited("[registers]", '[registers]\npower_total = { address = 52, unit = "W" }'),
        "registers.power_total",
        "unknown register",
    ),
    (
        edited("phases = 3", "phases = 1"),
        "registers.voltage_l2",
        "phase 2 register in a 1-phase map",
    ),
    (edited("phases = 3", "phases = 4"), "meter.phases", "found 4; expected an integer 1..3"),
    (edited("phases = 3\n", ""), "meter.phases", "missing"),
    (
        edited(
            'voltage_l1 = { address = 0, unit = "V" }', 'voltage_l1 = { address = 0, unit = "kWh" }'
        ),
        "registers.voltage_l1.unit",
        'unknown unit "kWh"; expected one of V, kV',
    ),
    (
        edited('voltage_l1 = { address = 0, unit = "V" }', 'voltage_l1 = { unit = "V" }'),
        "registers.voltage_l1.address",
        "missing",
    ),
    (
        edited(
            'voltage_l1 = { address = 0, unit = "V" }',
            'voltage_l1 = { address = 65535, unit = "V" }',
        ),
        "registers.voltage_l1.address",
        "found 65535; expected an integer 0..65534",
    ),
    (
        edited(
            'voltage_l1 = { address = 0, unit = "V" }',
            'voltage_l1 = { address = true, unit = "V" }',
        ),
        "registers.voltage_l1.address",
        "found true",
    ),
    (
        edited(
            'voltage_l2 = { address = 2, unit = "V" }', 'voltage_l2 = { address = 1, unit = "V" }'
        ),
        "registers.voltage_l2",
        "input 0x0001..0x0002 overlaps registers.voltage_l1 (input 0x0000..0x0001)",
    ),
    (
        edited(
            'voltage_l1 = { address = 0, unit = "V" }',
            'voltage_l1 = { address = 0, unit = "V", colour = 1 }',
        ),
        "registers.voltage_l1.colour",
        "unknown key",
    ),
    (
        edited(
            'voltage_l1 = { address = 0, unit = "V" }',
            'voltage_l1 = { address = 0, unit = "V", function = "coil" }',
        ),
        "registers.voltage_l1.function",
        'unknown function "coil"',
    ),
    (
        edited(
            'voltage_l1 = { address = 0, unit = "V" }',
            'voltage_l1 = { address = 0, unit = "V", word_order = "middle" }',
        ),
        "registers.voltage_l1.word_order",
        "unknown word order",
    ),
    (
        edited(
            'voltage_l1 = { address = 0, unit = "V" }',
            'voltage_l1 = { address = 0, unit = "V", invalid = 0xFFFF }',
        ),
        "registers.voltage_l1.invalid",
        "only integer types",
    ),
    (
        edited('type = "float32"\n', ""),
        "registers.voltage_l1.type",
        "missing (and [defaults] does not set it)",
    ),
    (THREE_PHASE + "\n[extra]\n", "extra", "unknown key"),
    (
        THREE_PHASE + BLOCK.format(address=0, count=18),
        "registers.energy_import",
        "not inside any [[blocks]]",
    ),
    (
        THREE_PHASE + BLOCK.format(address=0, count=18) + BLOCK.format(address=16, count=60),
        "blocks[2]",
        "overlaps blocks[1]",
    ),
    (
        THREE_PHASE + BLOCK.format(address=0, count=126),
        "blocks[1].count",
        "found 126; expected an integer 1..125",
    ),
    (
        THREE_PHASE
        + BLOCK.format(address=0, count=18)
        + BLOCK.format(address=0x48, count=2)
        + BLOCK.format(address=0x100, count=2),
        "blocks[3]",
        "holds no mapped register",
    ),
]


@pytest.mark.parametrize(("text", "entry", "problem"), BAD_MAPS)
def test_map_errors_name_the_file_and_the_entry(
    tmp_path: Path, text: str, entry: str, problem: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(MeterMapError) as caught:
        load_map(path)
    assert caught.value.file == str(path)
    assert caught.value.entry == entry
    assert str(caught.value).startswith(f"{path}: {entry}: ")
    assert problem in str(caught.value)


def test_unreadable_and_malformed_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(MeterMapError, match=re.escape(f"{tmp_path / 'none.toml'}: cannot read")):
        load_map(tmp_path / "none.toml")
    broken = write(tmp_path, "[meter\nphases = 3\n")
    with pytest.raises(MeterMapError, match=re.escape(f"{broken}: not valid TOML")):
        load_map(broken)


def test_a_map_is_a_builtin_name_or_an_absolute_path(tmp_path: Path) -> None:
    with pytest.raises(MeterMapError, match=r"not a built-in map .*sdm630.* nor an absolute path"):
        resolve_map("sdm999")
    with pytest.raises(MeterMapError, match="nor an absolute path"):
        resolve_map("maps/sdm630.toml")
    path = write(tmp_path, THREE_PHASE, name="custom.toml")
    assert resolve_map(str(path)).name == "custom"


def test_the_worked_example_in_the_docs_is_a_valid_map(tmp_path: Path) -> None:
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S)
    example = next(block for block in blocks if "ACME EM-3" in block)
    meter_map = load_map(write(tmp_path, example, name="acme_em3.toml"))
    assert meter_map.phases == 3
    assert "energy_export" not in meter_map.registers
    assert len(meter_map.blocks) == 3  # V/I/P together, frequency, energy
    current = meter_map.registers["current_l1"]
    assert current.decode([0, 16000]) == pytest.approx(16.0)  # 16000 mA
    assert meter_map.registers["voltage_l1"].decode([0xFFFF]) is None


def test_the_check_command_shows_a_map_or_its_first_mistake(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sdm630"]) == 0
    assert "2 request(s) per reading" in capsys.readouterr().out
    bad = write(tmp_path, edited("phases = 3", "phases = 0"))
    assert main([str(bad)]) == 1
    assert f"error: {bad}: meter.phases" in capsys.readouterr().out


# -- signed records ----------------------------------------------------------------------------

SIGNED = """
[signed]
length = 0x1000
data = 0x1001
max_length = 100
signing_method = "ECDSA-secp256r1-SHA256"
encoding_method = "OCMF"
"""


def test_the_signed_table_is_read_with_its_defaults(tmp_path: Path) -> None:
    meter_map = load_map(write(tmp_path, THREE_PHASE + SIGNED))
    signed = meter_map.signed
    assert signed is not None
    assert signed.function is Function.HOLDING
    assert (signed.length, signed.data, signed.max_length) == (0x1000, 0x1001, 100)
    assert signed.public_key is None and signed.public_key_length is None
    assert signed.spans() == [("length", 0x1000, 1), ("data", 0x1001, 50)]
    # The signed registers are not read with the measured values.
    assert all(block.end <= 0x1000 for block in meter_map.blocks)
    assert load_map(write(tmp_path, THREE_PHASE)).signed is None


def test_the_example_ocmf_map_signs_with_a_hex_public_key() -> None:
    signed = resolve_map("evsed_ocmf").signed
    assert signed is not None
    assert signed.encoding_method == "OCMF"
    assert signed.public_key_format == "hex"
    assert signed.public_key == 0x1401 and signed.public_key_max_length == 400


@pytest.mark.parametrize(
    ("table", "entry", "problem"),
    [
        ("max_length = 1876", "signed.max_length", "1..1875"),
        ("max_length = 0", "signed.max_length", "1..1875"),
        ("data = 65500", "signed.data", "expected an integer"),
        ("data = 0x1000", "signed.data", "overlaps signed.length"),
        ('function = "input"\ndata = 0x0040', "signed.data", "overlaps registers.energy"),
        ('signing_method = ""', "signed.signing_method", "printable ASCII"),
        ('encoding_method = "' + "x" * 51 + '"', "signed.encoding_method", "1..50"),
        ('encoding_method = "OCMF\u00e9"', "signed.encoding_method", "printable ASCII"),
        ('function = "coils"', "signed.function", "unknown function"),
        ("public_key = 0x2000", "signed.public_key_length", "missing"),
        ('public_key_format = "hex"', "signed.public_key_format", "without"),
        ('colour = "red"', "signed.colour", "unknown key"),
    ],
)
def test_bad_signed_tables_name_the_entry(
    tmp_path: Path, table: str, entry: str, problem: str
) -> None:
    keys = tuple(line.split(" = ")[0] + " = " for line in table.splitlines())
    lines = [line for line in SIGNED.splitlines() if not line.startswith(keys)]
    path = write(tmp_path, THREE_PHASE + "\n".join(lines) + "\n" + table + "\n")
    with pytest.raises(MeterMapError) as caught:
        load_map(path)
    assert caught.value.entry == entry
    assert problem in caught.value.problem


def test_a_signed_table_needs_its_keys_and_a_whole_public_key(tmp_path: Path) -> None:
    without = SIGNED.replace('encoding_method = "OCMF"\n', "")
    with pytest.raises(MeterMapError, match=r"signed.encoding_method: missing"):
        load_map(write(tmp_path, THREE_PHASE + without))
    key = SIGNED + "public_key_length = 0x2000\npublic_key = 0x2001\npublic_key_max_length = 9\n"
    signed = load_map(write(tmp_path, THREE_PHASE + key)).signed
    assert signed is not None and signed.spans()[-1] == ("public_key", 0x2001, 5)
    bad = key.replace("public_key = 0x2001", "public_key = 0x1010")
    with pytest.raises(MeterMapError, match=r"signed.public_key: overlaps signed.data"):
        load_map(write(tmp_path, THREE_PHASE + bad))
    with pytest.raises(MeterMapError, match=r"signed: found"):
        load_map(write(tmp_path, 'signed = "yes"\n' + THREE_PHASE))
