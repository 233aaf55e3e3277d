"""A whole charging session with evsed as a process on wire-level hardware simulators.

The daemon runs its real drivers: the RAPI pilot/relay driver on a pty to the MCU emulator,
the PN532 reader driver on a pty to its emulator, and the Modbus meter driver over RTU (a pty
line) to a pymodbus SDM630. This test plays physics: the meter's current follows the MCU's
relay. Nothing of hal/sim's in-process model is involved.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from hal.interfaces import PilotState
from hal.sim.modbus_meter import ModbusMeterServer, SimulatedModbusMeter
from hal.sim.pn532 import Pn532Emulator
from hal.sim.rapi_mcu import RapiMcuEmulator
from testcsms.server import TestCsms
from tests.integration.conftest import DaemonProcess, start_daemon, write_config
from tests.integration.test_session import wait_status


def hardware_tables(mcu: str, reader: str, meter: str, *, meter_options: str = "") -> str:
    """The [evse.*] tables of wire-level simulators: a RAPI MCU on the pty `mcu`, a PN532 on
    `reader`, a Modbus meter (sdm630 over RTU on `meter`, unless `meter_options` says else)."""
    rtu = f'map = "sdm630"\ntransport = "rtu"\nport = "{meter}"\nunit_id = 1'
    meter_options = meter_options or rtu
    return f"""
[evse.meter]
backend = "modbus"
[evse.meter.options]
{meter_options}
timeout_s = 0.5
[evse.pilot]
backend = "rapi"
[evse.pilot.options]
port = "{mcu}"
[evse.contactor]
backend = "rapi"
[evse.contactor.options]
port = "{mcu}"
[evse.token_reader]
backend = "pn532"
[evse.token_reader.options]
port = "{reader}"
poll_interval_s = 0.1
"""


async def physics(mcu: RapiMcuEmulator, meter: SimulatedModbusMeter, stop: asyncio.Event) -> None:
    """The meter measures what the relay lets through: 3 x 230 V at the offered current."""
    while not stop.is_set():
        current = mcu.charging_current_a if mcu.relay_closed else 0.0
        meter.set_values(current_a=current)
        meter.advance(0.1)
        await asyncio.sleep(0.1)


async def test_session_on_wire_level_simulators(csms: TestCsms, daemons: list[DaemonProcess],
                                                tmp_path: Path) -> None:
    mcu = RapiMcuEmulator(tmp_path / "ttyMCU", max_current_a=32, capacity_a=16)
    reader = Pn532Emulator(tmp_path / "ttyNFC")
    meter = SimulatedModbusMeter("sdm630", 1, energy_import_wh=1000.0)
    (tmp_path / "rs485").mkdir()
    server = ModbusMeterServer(meter, transport="rtu", directory=tmp_path / "rs485")
    await mcu.start()
    reader.start()
    await server.start()
    stop = asyncio.Event()
    loop_task = asyncio.create_task(physics(mcu, meter, stop))
    try:
        config = write_config(tmp_path, csms.url, ocpp_extra="MeterValueSampleInterval = 1")
        text = config.read_text().replace(
            "[[evse]]\nid = 1\n",
            "[[evse]]\nid = 1\n" + hardware_tables(mcu.port, str(reader.port), server.port))
        config.write_text(text)
        daemon = await start_daemon(config, tmp_path)
        daemons.append(daemon)
        await daemon.wait_notification("READY=1")
        await wait_status(csms, 1, "Available", timeout=15)

        mcu.plug()  # state B
        await wait_status(csms, 1, "Preparing")
        reader.place_card("04A1B2C3D4E5F6")
        [start] = await csms.wait_for("StartTransaction", timeout=15)
        assert start.payload["idTag"] == "04A1B2C3D4E5F6"
        assert start.payload["meterStart"] == 1000
        mcu.set_state(PilotState.C)
        await wait_status(csms, 1, "Charging", timeout=15)
        assert mcu.relay_closed
        values = await csms.wait_for(
            lambda r: r.direction == "in" and r.message_type == 2 and r.action == "MeterValues",
            count=3, timeout=15)
        assert values[-1].payload["transactionId"] == 1
        await asyncio.sleep(1.0)
        mcu.unplug()
        [stop_tx] = await csms.wait_for("StopTransaction", timeout=15)
        assert stop_tx.payload["reason"] == "EVDisconnected"
        assert stop_tx.payload["meterStop"] > 1000  # energy flowed through the real drivers
        assert not mcu.relay_closed
        assert await daemon.stop() == 0
    finally:
        stop.set()
        await loop_task
        await server.stop()
        reader.stop()
        await mcu.close()
