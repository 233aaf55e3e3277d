"""The reliability harness at CI size (reliability/README.md): crash consistency with 15
`kill -9`, fuzzing with 5,000 OCPP frames, 2,000 inputs per serial parser and 300 D-Bus calls,
and 30 s of network faults. Fixed seeds, so a failure can be replayed with
`python -m reliability <part> --seed <seed> --size <size>`."""

from __future__ import annotations

import json
from typing import Any

from reliability import crash, fuzz_dbus, fuzz_ocpp, fuzz_serial, network

SEED = 20261123


def explain(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=1, default=str)[:8000]


async def test_crash_consistency_15_kills() -> None:
    result = await crash.run(15, seed=SEED)
    assert result["ok"], explain(result)
    assert result["integrity_checks"] == 16 and not result["integrity_failures"]
    delivery = result["delivery"]
    assert delivery["lost"] == delivery["duplicates"] == 0


async def test_fuzz_ocpp_engine_5000_frames() -> None:
    result = await fuzz_ocpp.run(5000, seed=SEED)
    assert result["ok"], explain(result)
    assert result["frames"] >= 5000 and result["calls"] > 4000


def test_fuzz_serial_parsers_2000_each() -> None:
    results = fuzz_serial.run(2000, seed=SEED)
    for name, result in results.items():
        assert "skipped" not in result, (name, result)
        assert result["inputs"] == 2000
        assert result["unexpected"] == 0 and result["property_failures"] == 0, (name, result)


async def test_fuzz_dbus_300_calls() -> None:
    result = await fuzz_dbus.run(300, seed=SEED)
    assert result["ok"], explain(result)


async def test_network_faults_30s() -> None:
    result = await network.run(30, seed=SEED)
    assert result["ok"], explain(result)
    assert sum(result["faults"].values()) >= 3
