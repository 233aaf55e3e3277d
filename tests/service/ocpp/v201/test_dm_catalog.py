"""SampledDataCtrlr.SignReadings in the device model catalog (service/ocpp/v201/dm_catalog.py):
ReadWrite, shared with the 1.6 key SampledDataSignReadings, only with a meter that signs."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.config import Evse, Hardware, Settings
from service.ocpp.v201.device_model import DeviceModel
from service.ocpp.v201.dm_catalog import CATALOG, catalog_for, meter_signs
from service.ocpp.v201.dm_types import ConfigKey, Fixed, Mutability
from service.station.configuration import Configuration
from service.store.db import Database
from service.store.overlay import ConfigOverlay
from tests.service.ocpp.v201.conftest import FakeClock, make_settings


def settings_with(*maps: str, backend: str = "modbus") -> Settings:
    options: list[dict[str, Any]] = [
        {"map": name, "transport": "tcp", "host": "127.0.0.1"} for name in maps
    ]
    return dataclasses.replace(
        make_settings(),
        evses=tuple(Evse(id=n, meter=Hardware(backend, opts)) for n, opts in enumerate(options, 1)),
    )


def sign_readings(catalog: tuple[Any, ...]) -> Any:
    (spec,) = [s for s in catalog if (s.component, s.name) == ("SampledDataCtrlr", "SignReadings")]
    return spec


def test_only_a_modbus_meter_with_a_signed_map_signs(tmp_path: Path) -> None:
    assert meter_signs(settings_with("evsed_ocmf"))
    assert meter_signs(settings_with("sdm630", "evsed_ocmf"))
    assert not meter_signs(settings_with("sdm630"))
    assert not meter_signs(settings_with("evsed_ocmf", backend="sim"))
    assert not meter_signs(settings_with("/nonexistent/map.toml"))
    assert not meter_signs(settings_with(str(tmp_path / "bad.toml")))
    assert not meter_signs(make_settings())


def test_the_catalog_entry_follows_the_meter() -> None:
    plain = catalog_for(settings_with("sdm630"))
    assert plain is CATALOG
    attribute = sign_readings(plain).attributes[0]
    assert attribute.mutability is Mutability.READ_ONLY and attribute.source == Fixed("false")
    signing = catalog_for(settings_with("evsed_ocmf"))
    attribute = sign_readings(signing).attributes[0]
    assert attribute.mutability is Mutability.READ_WRITE
    assert attribute.source == ConfigKey("SampledDataSignReadings")
    assert len(signing) == len(CATALOG)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database.open(tmp_path / "evsed.db")
    yield database
    database.close()


def request(value: str) -> dict[str, Any]:
    return {
        "component": {"name": "SampledDataCtrlr"},
        "variable": {"name": "SignReadings"},
        "attributeValue": value,
    }


def test_set_variables_with_and_without_a_signing_meter(db: Database) -> None:
    for maps, status, final in (
        (("evsed_ocmf",), "Accepted", "true"),
        (("sdm630",), "Rejected", "false"),
    ):
        settings = settings_with(*maps)
        cfg = Configuration(settings, ConfigOverlay(db), clock=FakeClock())
        model = DeviceModel(settings, db, cfg, catalog=catalog_for(settings))
        result = model.set_variable(request("true"))
        assert result["attributeStatus"] == status
        assert model.get("SampledDataCtrlr", "SignReadings") == final
    # The signing model wrote the shared 1.6 key (kept in the overlay).
    assert ConfigOverlay(db).get_all()["SampledDataSignReadings"] == "true"
