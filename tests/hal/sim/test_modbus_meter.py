"""Tests of the signing of hal.sim.modbus_meter.SimulatedModbusMeter (the serving over real
transports is tested with the driver, tests/hal/meter/test_modbus.py)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from hal.meter.maps import load_map, resolve_map
from hal.sim.modbus_meter import (
    OCMF_SIGNING_METHOD,
    SignedFault,
    SimulatedModbusMeter,
    split_ocmf,
)


def verify(meter: SimulatedModbusMeter, record: str) -> dict[str, object]:
    payload, signature = split_ocmf(record)
    assert signature["SA"] == OCMF_SIGNING_METHOD
    key = load_der_public_key(meter.public_key_der)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(bytes.fromhex(str(signature["SD"])), payload.encode(), ec.ECDSA(hashes.SHA256()))
    data = json.loads(payload)
    assert isinstance(data, dict)
    return data


def text_of(words: dict[int, int], length_at: int, data_at: int) -> bytes:
    length = words[length_at]
    raw = b"".join(words[data_at + i].to_bytes(2, "big") for i in range((length + 1) // 2))
    return raw[:length]


def test_the_record_signs_the_served_energy_and_is_made_anew_when_it_changes() -> None:
    meter = SimulatedModbusMeter("evsed_ocmf", energy_import_wh=1500.0)
    first = meter.signed_record()
    data = verify(meter, first)
    assert data["PG"] == "T1"
    assert data["RD"] == [
        {"TM": data["RD"][0]["TM"], "RV": 1.5, "RI": "1-b:1.8.0", "RU": "kWh", "ST": "G"}  # type: ignore[index]
    ]
    assert meter.signed_record() == first  # same energy: the same record
    meter.set_values(energy_import_wh=1600.0)
    second = meter.signed_record()
    assert verify(meter, second)["PG"] == "T2"
    # Another key does not verify it.
    other = SimulatedModbusMeter("evsed_ocmf")
    with pytest.raises(InvalidSignature):
        verify(other, second)


def test_a_given_key_is_used() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    meter = SimulatedModbusMeter("evsed_ocmf", signing_key=key)
    assert meter.signing_key is key
    verify(meter, meter.signed_record())


def test_the_registers_hold_length_record_and_hex_public_key() -> None:
    meter = SimulatedModbusMeter("evsed_ocmf", energy_import_wh=42.0)
    signed = meter.map.signed
    assert signed is not None and signed.public_key is not None
    assert signed.public_key_length is not None
    words = meter._signed_words()
    assert text_of(words, signed.length, signed.data).decode() == meter.signed_record()
    key_text = text_of(words, signed.public_key_length, signed.public_key)
    assert bytes.fromhex(key_text.decode()) == meter.public_key_der
    # Every register of the record area is served (zeros after the record).
    assert len(words) == 1 + 500 + 1 + 200


def test_a_base64_public_key(tmp_path: Path) -> None:
    text = resolve_map("evsed_ocmf").source.read_text()
    path = tmp_path / "b64.toml"
    path.write_text(text.replace('public_key_format = "hex"', 'public_key_format = "base64"'))
    meter = SimulatedModbusMeter(load_map(path))
    signed = meter.map.signed
    assert signed is not None and signed.public_key is not None
    assert signed.public_key_length is not None
    words = meter._signed_words()
    key_text = text_of(words, signed.public_key_length, signed.public_key)
    assert base64.b64decode(key_text) == meter.public_key_der


def test_signed_faults() -> None:
    meter = SimulatedModbusMeter("evsed_ocmf")
    signed = meter.map.signed
    assert signed is not None and signed.public_key_length is not None
    assert signed.public_key is not None
    meter.set_signed_fault(SignedFault.TOO_LONG)
    assert meter._signed_words()[signed.length] == signed.max_length + 1
    meter.set_signed_fault(SignedFault.NO_RECORD)
    assert meter._signed_words()[signed.length] == 0
    meter.set_signed_fault(SignedFault.NOT_ASCII)
    assert b"\xff" in text_of(meter._signed_words(), signed.length, signed.data)
    meter.set_signed_fault(SignedFault.BAD_PUBLIC_KEY)
    words = meter._signed_words()
    assert text_of(words, signed.public_key_length, signed.public_key) == b"not a key!"
    meter.set_signed_fault(None)
    assert text_of(meter._signed_words(), signed.length, signed.data).startswith(b"OCMF|")


def test_split_ocmf_refuses_other_text() -> None:
    for text in ("", "OCMF|{}", "XXXX|{}|{}", "OCMF|{}|[1]", "OCMF|{}|{nope"):
        with pytest.raises(ValueError):
            split_ocmf(text)


def test_plain_maps_serve_no_signed_registers() -> None:
    assert SimulatedModbusMeter("sdm630")._signed_words() == {}
