"""The parts of the `ocpp` package evsed reads without importing its ChargePoint runtime.

evsed uses the `ocpp` package for its data, not for its code: the official JSON schemas
(service.ocpp.rpc reads the files) and the enumerations of allowed values (service.config,
service.station.keys). Importing `ocpp.v16.enums` the usual way first runs
`ocpp/v16/__init__.py`, which imports the library's ChargePoint runtime - its call and
call_result dataclasses and their machinery - that evsed never uses: about 4 MiB of resident
memory and 100 ms of startup. `enums()` executes the enums module file alone instead; it
imports nothing but the standard `enum` module, so the values are exactly the library's.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import ocpp

__all__ = ["PACKAGE_DIR", "enums"]

PACKAGE_DIR = Path(ocpp.__file__ or ".").parent


@functools.cache
def enums(version: str) -> ModuleType:
    """The module `ocpp.<version>.enums` ("v16", "v201"), loaded without its package."""
    name = f"ocpp.{version}.enums"
    imported = sys.modules.get(name)
    if imported is not None:  # something else already paid for the whole package
        return imported
    path = PACKAGE_DIR / version / "enums.py"
    spec = importlib.util.spec_from_file_location(f"_evsed_ocpp_{version}_enums", path)
    if spec is None or spec.loader is None or not path.is_file():
        return importlib.import_module(name)  # a layout we do not know: the usual way
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
