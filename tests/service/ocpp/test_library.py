"""service.ocpp.library: the ocpp package's enumerations without its ChargePoint runtime."""

from __future__ import annotations

import json
import subprocess
import sys

import ocpp.v16.enums
import ocpp.v201.enums

from service.ocpp import library


def values(enum_class: object) -> list[str]:
    return [str(member.value) for member in enum_class]  # type: ignore[attr-defined]


def test_values_are_the_library_values() -> None:
    library.enums.cache_clear()
    try:
        # The test process has imported the library the usual way: the same module is reused.
        assert library.enums("v16") is ocpp.v16.enums
        assert library.enums("v201") is ocpp.v201.enums
    finally:
        library.enums.cache_clear()


def test_loaded_alone_the_values_match_and_the_runtime_stays_out() -> None:
    script = (
        "import json, sys\n"
        "from service.ocpp.library import enums\n"
        "v16 = [str(m.value) for m in enums('v16').Measurand]\n"
        "v201 = [str(t.value) for t in enums('v201').ConnectorEnumType]\n"
        "print(json.dumps([v16, v201, sorted(m for m in sys.modules if m.startswith('ocpp'))]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    v16, v201, imported = json.loads(done.stdout)
    assert v16 == values(ocpp.v16.enums.Measurand)
    assert v201 == values(ocpp.v201.enums.ConnectorEnumType)
    assert imported == ["ocpp"]  # neither ocpp.v16 / ocpp.v201 nor ocpp.charge_point


def test_evsed_imports_neither_cryptography_nor_the_ocpp_runtime() -> None:
    script = (
        "import json, sys\n"
        "import service.main\n"
        "optional = ('cryptography', 'ocpp', 'sdbus', 'pymodbus', 'can', 'gpiod')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in optional)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == '["ocpp"]'
