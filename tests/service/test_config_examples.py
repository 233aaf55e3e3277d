"""The example configurations under etc/evsed/examples load (and name real backends)."""

from __future__ import annotations

from pathlib import Path

from service.config import load_settings

EXAMPLES = Path(__file__).resolve().parents[2] / "etc" / "evsed" / "examples"


def test_ac_example_loads() -> None:
    settings = load_settings(EXAMPLES / "ac-charger.toml")
    [evse] = settings.evses
    assert (evse.pilot.backend, evse.contactor.backend, evse.meter.backend,
            evse.token_reader.backend, evse.safety.backend) == (
        "rapi", "rapi", "modbus", "pn532", "gpio")


def test_dc_example_loads(tmp_path: Path) -> None:
    text = (EXAMPLES / "dc-charger.toml").read_text()
    for name in ("csms-ca.pem", "charger.pem", "charger.key"):
        (tmp_path / name).write_text("placeholder")
        text = text.replace(f"/etc/evsed/{name}", str(tmp_path / name))
    config = tmp_path / "evsed.toml"
    config.write_text(text)
    settings = load_settings(config)
    [evse] = settings.evses
    assert evse.power_module.backend == "infypower"
    assert evse.contactor.backend == "gpio"
    assert evse.dc_voltage_v == 400.0
