"""OCPP 2.0.1 meter values end to end (J01, J02): evsed with simulated hardware (a 3-phase
meter without export register, SoC or signed data), driven over a private D-Bus, against the
test CSMS speaking ocpp2.0.1. Every setting is made with SetVariables, as a CSMS would.
Signed meter values: evsed on the wire-level simulators with a Modbus meter that signs."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from hal.interfaces import PilotState
from hal.sim.modbus_meter import (
    OCMF_SIGNING_METHOD,
    ModbusMeterServer,
    SimulatedModbusMeter,
    split_ocmf,
)
from hal.sim.pn532 import Pn532Emulator
from hal.sim.rapi_mcu import RapiMcuEmulator
from testcsms.server import TestCsms
from tests.integration.conftest import DaemonProcess
from tests.integration.conftest import write_config as write_base_config
from tests.integration.ev_script import Ev
from tests.integration.test_v201_device_model import get, set_, statuses, var
from tests.integration.test_v201_session import (
    ENERGY,
    V201,
    calls,
    event_is,
    events,
    launch,
    started_daemon,
    status_is,
)
from tests.integration.test_wire_hardware import hardware_tables

POWER = "Power.Active.Import"
CURRENT = "Current.Import"
VOLTAGE = "Voltage"
UNITS = {ENERGY: "Wh", POWER: "W", CURRENT: "A", VOLTAGE: "V"}
SAMPLED = "SampledDataCtrlr"
ALIGNED = "AlignedDataCtrlr"


def seconds(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def on_clock(timestamp: str, interval: int) -> bool:
    """Whether a timestamp falls on a multiple of `interval` (taken within half a second)."""
    offset = seconds(timestamp) % interval
    return offset < 0.5 or interval - offset < 0.5


def samples(meter_values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [sv for mv in meter_values for sv in mv["sampledValue"]]


def assert_well_formed(meter_value: dict[str, Any], context: str, measurands: set[str]) -> None:
    """One MeterValueType of this charger: the context, the measurands asked for, each with
    its unit, location Outlet and the phases of a 3-phase meter."""
    values = meter_value["sampledValue"]
    assert {v["context"] for v in values} == {context}
    assert {v["measurand"] for v in values} == measurands
    for v in values:
        assert isinstance(v["value"], float | int)
        assert v["unitOfMeasure"] == {"unit": UNITS[v["measurand"]]}
        assert v["location"] == "Outlet"
        assert "signedMeterValue" not in v  # the simulated meter signs nothing
    phases = {m: [v.get("phase") for v in values if v["measurand"] == m] for m in measurands}
    expected = {
        ENERGY: [None],
        POWER: [None, "L1", "L2", "L3"],  # the total, then each phase
        CURRENT: ["L1", "L2", "L3"],
        VOLTAGE: ["L1-N", "L2-N", "L3-N"],
    }
    for measurand, found in phases.items():
        assert found == expected[measurand], (measurand, found)


def clock_values(csms: TestCsms, evse_id: int) -> list[dict[str, Any]]:
    return [
        mv
        for p in calls(csms, "MeterValues")
        if p["evseId"] == evse_id
        for mv in p["meterValue"]
        if mv["sampledValue"][0]["context"] == "Sample.Clock"
    ]


# -- J01 outside transactions -----------------------------------------------------------------


async def test_clock_aligned_values_per_evse_while_idle(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    config = write_base_config(
        tmp_path,
        csms.url,
        dbus_address=dbus_address,
        versions=V201,
        csms_extra="external_websocket_control = true",
        evses=2,
    )
    daemon = await launch(config, tmp_path, daemons)
    await csms.wait_for(status_is("Available", 2))
    # B05 / J01: a measurand the EVSE cannot measure is Rejected, the value stays.
    refused = await set_(
        csms,
        var(ALIGNED, "Measurands", value=f"{ENERGY},Power.Reactive.Import"),
        var(ALIGNED, "Measurands", value="Temperature"),
        var(SAMPLED, "TxStartedMeasurands", value="Energy.Reactive.Import.Register"),
    )
    assert statuses(refused) == ["Rejected", "Rejected", "Rejected"]
    assert {r["attributeStatusInfo"]["reasonCode"] for r in refused} == {"InvalidValue"}
    [valid] = await get(csms, var(ALIGNED, "Measurands"))
    assert "Reactive" not in valid["attributeValue"]

    assert statuses(
        await set_(
            csms,
            var(ALIGNED, "Measurands", value=f"{ENERGY},{VOLTAGE}"),
            var(ALIGNED, "Interval", value="2"),
        )
    ) == ["Accepted", "Accepted"]
    await csms.wait_until(
        lambda: len(clock_values(csms, 1)) >= 2 and len(clock_values(csms, 2)) >= 2, timeout=10
    )
    for evse_id in (1, 2):
        for mv in clock_values(csms, evse_id):
            assert_well_formed(mv, "Sample.Clock", {ENERGY, VOLTAGE})
            assert on_clock(mv["timestamp"], 2)  # on the clock, not on the start
    # There is no main meter: nothing is ever reported for evseId 0.
    assert {p["evseId"] for p in calls(csms, "MeterValues")} == {1, 2}

    # Interval 0 stops them.
    assert statuses(await set_(csms, var(ALIGNED, "Interval", value="0"))) == ["Accepted"]
    await asyncio.sleep(0.3)
    count = len(calls(csms, "MeterValues"))
    await asyncio.sleep(2.5)
    assert len(calls(csms, "MeterValues")) == count
    assert await daemon.stop() == 0


# -- J02 inside transactions ------------------------------------------------------------------


async def test_meter_values_of_a_transaction(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    daemon = await started_daemon(csms, daemons, tmp_path, dbus_address)
    assert (
        statuses(
            await set_(
                csms,
                var(SAMPLED, "TxStartedMeasurands", value=f"{ENERGY},{VOLTAGE}"),
                var(SAMPLED, "TxUpdatedInterval", value="1"),
                var(SAMPLED, "TxUpdatedMeasurands", value=f"{ENERGY},{POWER},{CURRENT},{VOLTAGE}"),
                var(SAMPLED, "TxEndedMeasurands", value=f"{ENERGY},{CURRENT}"),
                var(SAMPLED, "TxEndedInterval", value="2"),
                var(ALIGNED, "Interval", value="2"),
                var(ALIGNED, "Measurands", value=ENERGY),
                var(ALIGNED, "TxEndedMeasurands", value=ENERGY),
                var(ALIGNED, "TxEndedInterval", value="2"),
            )
        )
        == ["Accepted"] * 9
    )
    ev = Ev(dbus_address)
    await ev.plug()
    await ev.present("TAG-MV")
    [started] = await csms.wait_for(event_is("Started"))
    await ev.ready(True)
    await csms.wait_for(event_is("Updated", "MeterValuePeriodic"), count=4)
    await csms.wait_for(event_is("Updated", "MeterValueClock"), count=2)
    await ev.ready(False)
    await ev.unplug()
    [ended] = await csms.wait_for(event_is("Ended"))

    # Started: TxStartedMeasurands, Transaction.Begin.
    [begin] = started.payload["meterValue"]
    assert_well_formed(begin, "Transaction.Begin", {ENERGY, VOLTAGE})
    evts = events(csms)
    periodic = [e for e in evts if e["triggerReason"] == "MeterValuePeriodic"]
    clock = [e for e in evts if e["triggerReason"] == "MeterValueClock"]
    for e in periodic:
        [mv] = e["meterValue"]
        assert_well_formed(mv, "Sample.Periodic", {ENERGY, POWER, CURRENT, VOLTAGE})
    for e in clock:
        [mv] = e["meterValue"]
        assert_well_formed(mv, "Sample.Clock", {ENERGY})  # AlignedDataCtrlr.Measurands
        assert on_clock(mv["timestamp"], 2)
    # While charging, energy grows and power flows.
    energy = [
        v["value"] for e in periodic for v in samples(e["meterValue"]) if v["measurand"] == ENERGY
    ]
    assert energy == sorted(energy) and energy[-1] > energy[0]
    assert any(
        v["value"] > 0
        for e in periodic
        for v in samples(e["meterValue"])
        if v["measurand"] == POWER and "phase" not in v
    )
    # Nothing went out as MeterValues during the transaction (J02: TransactionEvent only).
    during = csms.received[csms.received.index(started) : csms.received.index(ended)]
    assert not [r for r in during if r.action == "MeterValues"]

    # Ended: TxEndedMeasurands; Begin and End, periodic samples TxEndedInterval apart, and
    # the clock-aligned ones (AlignedDataCtrlr.TxEndedMeasurands).
    values = ended.payload["meterValue"]
    contexts = [mv["sampledValue"][0]["context"] for mv in values]
    assert contexts[0] == "Transaction.Begin" and contexts[-1] == "Transaction.End"
    assert "Sample.Periodic" in contexts and "Sample.Clock" in contexts
    for mv in values:
        context = mv["sampledValue"][0]["context"]
        wanted = {ENERGY} if context == "Sample.Clock" else {ENERGY, CURRENT}
        assert_well_formed(mv, context, wanted)
    times = [
        seconds(mv["timestamp"])
        for mv in values
        if mv["sampledValue"][0]["context"] == "Sample.Periodic"
    ]
    assert all(b - a >= 1.5 for a, b in itertools.pairwise(times)), times
    first = next(v for v in values[0]["sampledValue"] if v["measurand"] == ENERGY)["value"]
    last = next(v for v in values[-1]["sampledValue"] if v["measurand"] == ENERGY)["value"]
    assert last > first
    assert await daemon.stop() == 0


async def test_send_during_idle_and_no_ended_samples_by_default(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    daemon = await started_daemon(csms, daemons, tmp_path, dbus_address)
    assert (
        statuses(
            await set_(
                csms,
                var(ALIGNED, "SendDuringIdle", value="true"),
                var(ALIGNED, "Interval", value="1"),
                var(ALIGNED, "Measurands", value=ENERGY),
                var(SAMPLED, "TxEndedMeasurands", value=ENERGY),
            )
        )
        == ["Accepted"] * 4
    )
    await csms.wait_until(lambda: len(clock_values(csms, 1)) >= 1)  # idle: sent
    ev = Ev(dbus_address)
    await ev.plug()
    await ev.present("TAG-IDLE")
    [started] = await csms.wait_for(event_is("Started"))
    await ev.ready(True)
    await asyncio.sleep(3)
    await ev.ready(False)
    await ev.unplug()
    [ended] = await csms.wait_for(event_is("Ended"))
    # During the transaction: no clock-aligned values at all (SendDuringIdle).
    assert not [e for e in events(csms) if e["triggerReason"] == "MeterValueClock"]
    during = csms.received[csms.received.index(started) : csms.received.index(ended)]
    assert not [r for r in during if r.action == "MeterValues"]
    mark = len(calls(csms, "MeterValues"))
    # TxEndedInterval 0 (the default): Begin and End only.
    contexts = [mv["sampledValue"][0]["context"] for mv in ended.payload["meterValue"]]
    assert contexts == ["Transaction.Begin", "Transaction.End"]
    await csms.wait_until(lambda: len(clock_values(csms, 1)) > mark)  # idle again: sent
    assert await daemon.stop() == 0


# -- J02 signed meter values (a meter that signs, on the wire-level simulators) ---------------


def signed_tables(mcu: str, reader: str, tcp_port: int) -> str:
    """The wire-level simulators with the signing example meter over Modbus TCP."""
    options = f'map = "evsed_ocmf"\ntransport = "tcp"\nhost = "127.0.0.1"\ntcp_port = {tcp_port}'
    return hardware_tables(mcu, reader, "", meter_options=options)


def verified_energy(value: dict[str, Any], public_key_der: bytes) -> float:
    """What a CSMS does with a signed energy value: decode it, check the signature with the
    public key that came with it, and read the energy (Wh) the meter signed."""
    signed = value["signedMeterValue"]
    assert signed["signingMethod"] == OCMF_SIGNING_METHOD
    assert signed["encodingMethod"] == "OCMF"
    key_der = base64.b64decode(signed["publicKey"])
    assert key_der == public_key_der  # the meter's own key
    key = load_der_public_key(key_der)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    payload, signature = split_ocmf(base64.b64decode(signed["signedMeterData"]).decode())
    key.verify(bytes.fromhex(str(signature["SD"])), payload.encode(), ec.ECDSA(hashes.SHA256()))
    kwh = json.loads(payload)["RD"][0]["RV"]
    assert isinstance(kwh, float | int)
    return float(kwh) * 1000.0


def signed_energy(meter_values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        v for v in samples(meter_values) if v["measurand"] == ENERGY and "signedMeterValue" in v
    ]


async def physics(mcu: RapiMcuEmulator, meter: SimulatedModbusMeter, stop: asyncio.Event) -> None:
    while not stop.is_set():
        meter.set_values(current_a=mcu.charging_current_a if mcu.relay_closed else 0.0)
        meter.advance(0.1)
        await asyncio.sleep(0.1)


async def test_signed_meter_values_verify_with_the_meters_key(
    csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    mcu = RapiMcuEmulator(tmp_path / "ttyMCU", max_current_a=32, capacity_a=16)
    reader = Pn532Emulator(tmp_path / "ttyNFC")
    meter = SimulatedModbusMeter("evsed_ocmf", 1, energy_import_wh=5000.0)
    server = ModbusMeterServer(meter)
    await mcu.start()
    reader.start()
    await server.start()
    stop = asyncio.Event()
    loop_task = asyncio.create_task(physics(mcu, meter, stop))
    try:
        config = write_base_config(
            tmp_path,
            csms.url,
            dbus_address=dbus_address,
            versions=V201,
            csms_extra="external_websocket_control = true",
        )
        text = config.read_text().replace(
            "[[evse]]\nid = 1\n",
            "[[evse]]\nid = 1\n" + signed_tables(mcu.port, str(reader.port), server.tcp_port),
        )
        config.write_text(text)
        daemon = await launch(config, tmp_path, daemons)
        await csms.wait_for(status_is("Available"), timeout=15)
        # Off by default; ReadWrite with a meter that signs.
        [sign] = await get(csms, var(SAMPLED, "SignReadings"))
        assert sign["attributeValue"] == "false"
        assert (
            statuses(
                await set_(
                    csms,
                    var(SAMPLED, "SignReadings", value="true"),
                    var(SAMPLED, "TxUpdatedInterval", value="1"),
                    var(SAMPLED, "TxUpdatedMeasurands", value=f"{ENERGY},{VOLTAGE}"),
                    var(SAMPLED, "TxEndedMeasurands", value=ENERGY),
                )
            )
            == ["Accepted"] * 4
        )

        mcu.plug()
        reader.place_card("04A1B2C3D4E5F6")
        [started] = await csms.wait_for(event_is("Started"), timeout=15)
        mcu.set_state(PilotState.C)
        # Energy flows once the charger reports Charging (the relay is closed by then); the
        # periodic samples that count are the ones taken while it flows.
        [charging] = await csms.wait_for(
            lambda r: (
                r.direction == "in"
                and r.action == "TransactionEvent"
                and r.payload.get("transactionInfo", {}).get("chargingState") == "Charging"
            ),
            timeout=15,
        )
        assert mcu.relay_closed, mcu.mode
        periodic = await csms.wait_for(
            event_is("Updated", "MeterValuePeriodic"),
            count=2,
            timeout=15,
            since=next(i for i, r in enumerate(csms.received) if r is charging),
        )
        await asyncio.sleep(0.5)
        mcu.unplug()
        [ended] = await csms.wait_for(event_is("Ended"), timeout=15)

        # Transaction.Begin in Started: signed, and the signature holds the energy sent.
        [begin] = signed_energy(started.payload["meterValue"])
        assert begin["context"] == "Transaction.Begin"
        assert verified_energy(begin, meter.public_key_der) == pytest.approx(begin["value"], abs=1)
        # Periodic samples: the energy signed, the voltage not. The meter signs a snapshot once
        # per record period while energy flows, so the signed energy may be up to a period
        # behind the plain one; the driver reads the plain values, then the record, and the
        # meter may move on between the two: a second of flow is allowed each way for that.
        watts = 3 * 230.0 * 16
        behind_wh = watts * (meter.record_period_s + 1) / 3600
        ahead_wh = watts * 1 / 3600
        for event in periodic:
            [value] = signed_energy(event.payload["meterValue"])
            assert value["context"] == "Sample.Periodic"
            signed_wh = verified_energy(value, meter.public_key_der)
            assert value["value"] - behind_wh <= signed_wh <= value["value"] + ahead_wh
            assert len(samples(event.payload["meterValue"])) == 4  # energy + 3 voltages
        # Transaction.End in Ended: signed; energy flowed through the real drivers.
        end = [
            v
            for v in signed_energy(ended.payload["meterValue"])
            if v["context"] == "Transaction.End"
        ]
        assert len(end) == 1, (ended.payload, daemon.stderr()[-6000:])
        log = daemon.stderr()[-6000:]
        assert verified_energy(end[0], meter.public_key_der) > 5000.0, (mcu.mode, log)
        assert await daemon.stop() == 0
    finally:
        stop.set()
        await loop_task
        await server.stop()
        reader.stop()
        await mcu.close()
