"""Tests of the RAPI driver (hal.pilot.rapi) against the MCU emulator (hal.sim.rapi_mcu) on a
real pty pair: states, offer, relay, faults, a silent MCU, line noise, a port that goes away."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import serial

from hal.interfaces import Contactor, Pilot, PilotState
from hal.pilot.rapi import (
    RapiContactor,
    RapiError,
    RapiPilot,
    build_contactor,
    build_pilot,
)
from hal.pilot.rapi_protocol import (
    RapiFrame,
    decode_frame,
    encode_command,
)
from hal.sim.rapi_mcu import McuFault, RapiMcuEmulator, ReplyFault
from service.config import Evse, Hardware
from service.config_reader import Scalar

POLL_S = 0.05
TIMEOUT_S = 1.0
WAIT_S = 10.0  # bound on every wait; never a timing assertion

Fault = tuple[str | None, str]


async def until(condition: Callable[[], object], what: str) -> None:
    """Wait (bounded) until `condition()` is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass
class Seen:
    """Everything the devices called back with, in order."""

    states: list[PilotState] = field(default_factory=list)
    pilot_faults: list[Fault] = field(default_factory=list)
    contactor_faults: list[Fault] = field(default_factory=list)

    @property
    def pilot_fault(self) -> str | None:
        return self.pilot_faults[-1][0] if self.pilot_faults else None

    @property
    def contactor_fault(self) -> str | None:
        return self.contactor_faults[-1][0] if self.contactor_faults else None


@dataclass
class Rig:
    mcu: RapiMcuEmulator
    pilot: RapiPilot
    contactor: RapiContactor
    seen: Seen

    def state(self) -> PilotState:
        return self.pilot.state

    async def polls(self, count: int = 3) -> None:
        """Let `count` more heartbeats pass (the driver has seen the MCU's latest state)."""
        target = self.pilot.stats.heartbeats + count
        await until(lambda: self.pilot.stats.heartbeats >= target, f"{count} heartbeats")


def make_evse(port: str, **options: Scalar) -> Evse:
    pilot: dict[str, Scalar] = {
        "port": port,
        "poll_interval_s": POLL_S,
        "timeout_s": TIMEOUT_S,
        **options,
    }
    return Evse(
        id=1,
        pilot=Hardware("rapi", pilot),
        contactor=Hardware("rapi", {"port": port}),
    )


@pytest.fixture
async def mcu(tmp_path: Path) -> AsyncIterator[RapiMcuEmulator]:
    emulator = RapiMcuEmulator(tmp_path / "ttyRAPI", max_current_a=32, capacity_a=10)
    await emulator.start()
    yield emulator
    await emulator.close()


@pytest.fixture
async def rig(mcu: RapiMcuEmulator) -> AsyncIterator[Rig]:
    evse = make_evse(mcu.port)
    shared: dict[str, object] = {}
    pilot = build_pilot(evse, evse.pilot, shared)
    contactor = build_contactor(evse, evse.contactor, shared)
    seen = Seen()
    pilot.on_change(seen.states.append)
    pilot.on_fault(lambda code, info: seen.pilot_faults.append((code, info)))
    contactor.on_fault(lambda code, info: seen.contactor_faults.append((code, info)))
    await pilot.start()
    await contactor.start()
    try:
        yield Rig(mcu, pilot, contactor, seen)
    finally:
        await contactor.close()
        await pilot.close()


# ----------------------------------------------------------------- the emulator, raw


async def test_emulator_speaks_rapi_like_the_firmware(mcu: RapiMcuEmulator) -> None:
    """Raw frames on the pty: checksums of both kinds, sequence ids echoed, $NK for a bad
    checksum (without the id, as the firmware), unknown commands refused."""
    port = serial.Serial(mcu.port, 115200, timeout=2)
    try:

        async def ask(frame: bytes) -> bytes:
            port.reset_input_buffer()
            port.write(frame)
            while True:
                line: bytes = await asyncio.to_thread(port.read_until, b"\r")
                assert line.endswith(b"\r"), f"no answer to {frame!r}"
                if not line.startswith(b"$AT"):
                    return line

        assert (await ask(b"$GS^30\r")).startswith(b"$OK 01 0 01 ")
        reply = await ask(encode_command("GV", seq=0x42))
        assert decode_frame(reply[:-1]).seq == 0x42
        assert decode_frame(reply[:-1]).args[0] == "8.2.3.EMU"
        assert (await ask(b"$FS*BD\r")).startswith(b"$OK^")  # additive checksum
        assert mcu.mode == "sleeping"
        reply = await ask(b"$FE :07^00\r")  # wrong checksum
        assert decode_frame(reply[:-1]) == RapiFrame(("NK",))
        assert mcu.checksum_errors == 1 and mcu.mode == "sleeping"
        assert decode_frame((await ask(encode_command("ZZ", seq=9)))[:-1]).tokens == ("NK",)
        reply = await ask(encode_command("SC", ["99"], seq=1))  # clamped to the maximum
        assert decode_frame(reply[:-1]).tokens == ("NK", "32")
    finally:
        port.close()


# ----------------------------------------------------------------- against the emulator


async def test_devices_satisfy_the_protocols(rig: Rig) -> None:
    pilot: Pilot = rig.pilot
    contactor: Contactor = rig.contactor
    assert pilot.state is PilotState.A  # the first answer sets it, without an on_change
    assert not contactor.closed
    assert pilot.cable_max_current_a is None
    assert rig.seen.states == []
    assert rig.seen.pilot_faults == []


async def test_plug_and_charge_transitions_once_each(rig: Rig) -> None:
    rig.pilot.set_offered_current(16)
    await until(lambda: rig.mcu.mode == "enabled", "enabled")
    rig.mcu.plug(pp_ohms=220.0)
    await until(lambda: rig.pilot.state is PilotState.B, "state B")
    rig.mcu.set_state("C")
    await until(lambda: rig.pilot.state is PilotState.C, "state C")
    await rig.polls()
    assert rig.seen.states == [PilotState.B, PilotState.C]
    rig.mcu.unplug()
    await until(lambda: rig.pilot.state is PilotState.A, "state A")
    await rig.polls()
    assert rig.seen.states == [PilotState.B, PilotState.C, PilotState.A]


async def test_asleep_the_mcu_sees_only_the_plug(rig: Rig) -> None:
    """Without an offer the MCU sleeps and, like the firmware, tracks only whether an EV is
    connected: plugged shows B until an offer lets it measure again."""
    assert rig.mcu.mode == "sleeping"  # nothing offered since start
    rig.mcu.plug()
    rig.mcu.set_state("C")
    await until(lambda: rig.pilot.state is PilotState.B, "plugged")
    await rig.polls()
    assert rig.state() is PilotState.B
    rig.pilot.set_offered_current(16)
    await until(lambda: rig.pilot.state is PilotState.C, "measured C")
    rig.pilot.set_offered_current(0)  # asleep again: the EV stays where it was last seen
    await until(lambda: rig.mcu.mode == "sleeping", "asleep")
    await rig.polls()
    assert rig.state() is PilotState.C
    rig.mcu.unplug()
    await until(lambda: rig.pilot.state is PilotState.A, "unplugged")
    rig.mcu.plug()
    rig.mcu.set_state("C")
    await until(lambda: rig.pilot.state is PilotState.B, "plugged again: readiness unknown")
    await rig.polls()
    assert rig.seen.states == [
        PilotState.B,
        PilotState.C,
        PilotState.A,
        PilotState.B,
    ]


class PlugsRightAfterAnswering(RapiMcuEmulator):
    """Plugs the EV in right after answering the next GS: the old state's answer and the new
    state's $AT reach the driver back to back, usually in one read."""

    plug_after_gs = False

    def _reply(self, ok: bool, answer: str, seq: int | None) -> None:
        super()._reply(ok, answer, seq)
        if self.plug_after_gs and self.commands[-1] == "GS":
            self.plug_after_gs = False
            self.plug()


async def test_an_answer_never_overtakes_a_later_notification(tmp_path: Path) -> None:
    mcu = PlugsRightAfterAnswering(tmp_path / "ttyRAPI")
    await mcu.start()
    evse = make_evse(mcu.port)
    pilot = build_pilot(evse, evse.pilot, {})
    states: list[PilotState] = []
    pilot.on_change(states.append)
    try:
        await pilot.start()
        for _ in range(5):
            mcu.plug_after_gs = True
            await until(lambda: pilot.state is PilotState.B, "plugged")
            mcu.unplug()
            await until(lambda: pilot.state is PilotState.A, "unplugged")
        assert states == [PilotState.B, PilotState.A] * 5
    finally:
        await pilot.close()
        await mcu.close()


async def test_offer_sets_current_and_duty_cycle(rig: Rig) -> None:
    rig.mcu.plug()
    rig.pilot.set_offered_current(16)
    await until(lambda: rig.mcu.capacity_a == 16 and rig.mcu.mode == "enabled", "SC 16 + FE")
    assert "SC 16 V" in rig.mcu.commands  # volatile: no EEPROM write
    # Once it has measured B again (just enabled, it shows a steady +12 V for a moment):
    await until(lambda: rig.mcu.pilot_duty_pct == pytest.approx(26.7, abs=0.05), "26.7 %")
    await until(lambda: rig.pilot.offered_current_a == 16.0, "offer reported")
    # Fractions are rounded down, never up; 0 (or < 6 A) puts the MCU to sleep.
    rig.pilot.set_offered_current(20.9)
    await until(lambda: rig.mcu.capacity_a == 20, "SC 20")
    rig.pilot.set_offered_current(0)
    await until(lambda: rig.mcu.mode == "sleeping", "FS")
    assert rig.mcu.pilot_duty_pct == 100.0  # steady +12 V: not available
    await rig.polls()
    assert rig.pilot.offered_current_a == 0.0
    assert rig.state() is PilotState.B  # the EV stays where it is
    with pytest.raises(ValueError):
        rig.pilot.set_offered_current(-1)
    with pytest.raises(ValueError):
        rig.pilot.set_offered_current(float("nan"))


async def test_offer_above_the_mcu_maximum_is_clamped(rig: Rig) -> None:
    rig.pilot.set_offered_current(300)  # never wraps around in RAPI's one-byte argument
    await until(lambda: "SC 80 V" in rig.mcu.commands, "SC 80")
    await until(lambda: rig.pilot.stats.naks >= 1, "NK with the clamped value")
    assert rig.mcu.capacity_a == 32
    await rig.polls()
    assert rig.seen.pilot_faults == []


async def test_pp_cable_rating(rig: Rig) -> None:
    rig.mcu.plug(pp_ohms=680.0)
    await until(lambda: rig.pilot.cable_max_current_a == 20.0, "PP rating 20 A")
    rig.mcu.unplug()
    await until(lambda: rig.pilot.state is PilotState.A, "unplugged")
    assert rig.pilot.cable_max_current_a is None
    rig.mcu.plug(pp_ohms=1500.0)
    await until(lambda: rig.pilot.cable_max_current_a == 13.0, "PP rating 13 A")


async def test_contactor_closes_only_enabled_and_in_c(rig: Rig) -> None:
    mcu, pilot, contactor = rig.mcu, rig.pilot, rig.contactor
    mcu.plug()
    await until(lambda: pilot.state is PilotState.B, "B")
    contactor.set_closed(True)  # no offer: the MCU sleeps, nothing closes
    await rig.polls()
    assert not mcu.relay_closed and not contactor.closed
    pilot.set_offered_current(16)  # offer in B: PWM on, relay still open
    await until(lambda: mcu.mode == "enabled", "enabled")
    await rig.polls()
    assert not mcu.relay_closed and not contactor.closed
    mcu.set_state("C")
    await until(lambda: contactor.closed, "relay closed in C")
    assert mcu.relay_closed
    mcu.set_state("B")  # the EV pauses: the MCU opens the relay itself
    await until(lambda: not contactor.closed, "relay open in B")
    mcu.set_state("D")
    await until(lambda: contactor.closed, "relay closed in D")
    contactor.set_closed(False)
    await until(lambda: not contactor.closed, "relay open on command")
    assert mcu.mode == "sleeping" and not mcu.relay_closed
    await rig.polls()
    assert pilot.state is PilotState.D  # the EV still asks
    contactor.set_closed(True)
    await until(lambda: contactor.closed, "closed again")
    assert rig.seen.contactor_faults == []


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (McuFault.GFI, "GroundFailure"),
        (McuFault.NO_GROUND, "GroundFailure"),
        (McuFault.GFI_SELF_TEST, "GroundFailure"),
        (McuFault.OVER_TEMPERATURE, "HighTemperature"),
        (McuFault.OVER_CURRENT, "OverCurrentFailure"),
    ],
)
async def test_mcu_faults(rig: Rig, fault: McuFault, code: str) -> None:
    rig.mcu.plug()
    rig.pilot.set_offered_current(16)
    rig.mcu.set_state("C")
    await until(lambda: rig.contactor.closed, "charging")
    rig.mcu.raise_fault(fault)
    await until(lambda: rig.seen.pilot_fault == code, code)
    await until(lambda: rig.pilot.state is PilotState.F, "F")
    assert not rig.contactor.closed
    assert rig.seen.contactor_faults == []
    rig.mcu.clear_fault()
    await until(lambda: rig.pilot.state is PilotState.C, "C again")
    await until(lambda: rig.seen.pilot_faults[-1] == (None, "cleared"), "fault cleared")
    assert [c for c, _ in rig.seen.pilot_faults] == [code, None]
    assert rig.seen.states == [PilotState.B, PilotState.C, PilotState.F, PilotState.C]


@pytest.mark.parametrize("how", ["short", "no diode"])
async def test_diode_check_failure(rig: Rig, how: str) -> None:
    rig.mcu.plug()
    rig.pilot.set_offered_current(16)
    await until(lambda: rig.pilot.state is PilotState.B, "B")
    if how == "short":
        rig.mcu.set_pilot_short()  # state E at the pilot
    else:
        rig.mcu.set_diode_missing()
    await until(lambda: rig.pilot.state is PilotState.F, "F")
    assert rig.seen.pilot_faults[-1] == ("EVCommunicationError", "diode check failed")
    if how == "short":
        rig.mcu.set_pilot_short(False)
    else:
        rig.mcu.set_diode_missing(False)
    await until(lambda: rig.pilot.state is PilotState.B, "B again")
    await until(lambda: rig.seen.pilot_fault is None, "cleared")


async def test_stuck_relay(rig: Rig) -> None:
    rig.mcu.plug()
    rig.pilot.set_offered_current(16)
    rig.mcu.set_state("C")
    await until(lambda: rig.contactor.closed, "charging")
    rig.mcu.weld_relay()
    rig.contactor.set_closed(False)  # the MCU opens, the contacts stay shut
    await until(lambda: rig.seen.contactor_fault == "PowerSwitchFailure", "contactor fault")
    assert rig.seen.contactor_faults[-1] == ("PowerSwitchFailure", "stuck relay")
    assert rig.seen.pilot_fault == "PowerSwitchFailure"
    assert rig.state() is PilotState.F
    assert rig.contactor.closed  # feedback: welded shut
    rig.mcu.weld_relay(False)
    await until(lambda: rig.seen.contactor_fault is None, "repaired")
    await until(lambda: rig.seen.pilot_fault is None, "pilot fault cleared")
    assert not rig.contactor.closed


async def test_lock_with_feedback(rig: Rig) -> None:
    rig.mcu.plug()
    await until(lambda: "S5 M" in rig.mcu.commands, "manual lock mode from the start")
    await rig.polls()
    assert not rig.mcu.locked  # the MCU's automatic mode would have locked on plug-in
    assert not rig.pilot.locked
    rig.pilot.set_locked(True)
    await until(lambda: rig.pilot.locked, "locked")
    assert rig.mcu.lock_manual and rig.mcu.locked
    assert "S5 1" in rig.mcu.commands
    rig.mcu.jam_lock()
    rig.pilot.set_locked(False)
    await until(lambda: rig.seen.pilot_fault == "ConnectorLockFailure", "lock failure")
    assert rig.seen.pilot_faults[-1][1] == "lock did not release"
    assert rig.pilot.locked  # feedback tells the truth
    rig.mcu.jam_lock(False)  # the driver retries every poll
    await until(lambda: not rig.pilot.locked, "released")
    await until(lambda: rig.seen.pilot_fault is None, "lock failure cleared")
    assert rig.seen.states == [PilotState.B]  # a lock problem is not a pilot state


async def test_mcu_without_lock(tmp_path: Path) -> None:
    mcu = RapiMcuEmulator(tmp_path / "ttyRAPI", lock_fitted=False)
    await mcu.start()
    evse = make_evse(mcu.port)
    pilot = build_pilot(evse, evse.pilot, {})
    faults: list[Fault] = []
    pilot.on_fault(lambda code, info: faults.append((code, info)))
    try:
        await pilot.start()
        pilot.set_locked(True)
        await until(lambda: faults == [("ConnectorLockFailure", "MCU has no lock control")], "")
        assert not pilot.locked
    finally:
        await pilot.close()
        await mcu.close()


async def test_tethered_cable_without_lock(tmp_path: Path) -> None:
    mcu = RapiMcuEmulator(tmp_path / "ttyRAPI", lock_fitted=False)
    await mcu.start()
    evse = make_evse(mcu.port, lock=False)
    pilot = build_pilot(evse, evse.pilot, {})
    faults: list[Fault] = []
    pilot.on_fault(lambda code, info: faults.append((code, info)))
    try:
        await pilot.start()
        pilot.set_locked(True)
        assert pilot.locked  # nothing to move: the wish is the position
        target = pilot.stats.heartbeats + 3
        await until(lambda: pilot.stats.heartbeats >= target, "polls")
        assert faults == []
        assert not [c for c in mcu.commands if c.startswith(("S5", "G5"))]
    finally:
        await pilot.close()
        await mcu.close()


async def test_silent_mcu_then_recovery(rig: Rig) -> None:
    rig.pilot.set_offered_current(16)
    rig.mcu.plug()
    rig.mcu.set_state("C")
    await until(lambda: rig.pilot.state is PilotState.C, "C")
    rig.mcu.set_silent()
    await until(lambda: rig.seen.pilot_fault == "EVCommunicationError", "MCU silent")
    assert rig.seen.pilot_faults[-1] == ("EVCommunicationError", "MCU not answering")
    assert rig.state() is PilotState.F
    assert rig.pilot.stats.timeouts >= 1
    rig.mcu.set_state("B")  # changed while silent: the first answer tells
    rig.mcu.set_silent(False)
    await until(lambda: rig.seen.pilot_fault is None, "recovered")
    assert rig.state() is PilotState.B
    assert rig.seen.states == [PilotState.B, PilotState.C, PilotState.F, PilotState.B]


@pytest.mark.parametrize("damage", list(ReplyFault))
async def test_damaged_replies_count_then_fault_then_recover(rig: Rig, damage: ReplyFault) -> None:
    stats = rig.pilot.stats
    rig.mcu.set_reply_fault(damage)
    await until(lambda: rig.seen.pilot_fault == "EVCommunicationError", "no valid answer")
    rig.mcu.set_reply_fault(None)
    await until(lambda: rig.seen.pilot_fault is None, "valid answers again")
    assert rig.state() is PilotState.A
    counted = {
        ReplyFault.GARBAGE: stats.garbage_bytes + stats.malformed,
        ReplyFault.TRUNCATED: stats.truncated,
        ReplyFault.BAD_CHECKSUM: stats.bad_checksum,
    }[damage]
    assert counted >= 1


async def test_line_noise_between_valid_frames_is_ignored(rig: Rig) -> None:
    stats = rig.pilot.stats
    rig.mcu.send_raw(b"\x00\xff\xfe noise \x07")
    rig.mcu.send_raw(b"$AT 03 03 16 0140^00\r")  # a state change with a wrong checksum
    rig.mcu.send_raw(b"$AT 03 03")  # cut off by the next frame
    rig.mcu.send_raw(b"$OK 02 0 02 0100 :7F^00\r")
    rig.mcu.send_raw(encode_command("OK", ["01", "0", "01", "0000"], seq=0x7E))  # answers nothing
    rig.mcu.send_raw(encode_command("AT", ["zz", "01", "16", "0000"]))  # bad values
    rig.mcu.plug()
    await until(lambda: rig.pilot.state is PilotState.B, "B")
    await rig.polls()
    assert stats.garbage_bytes >= 10
    assert stats.bad_checksum >= 2
    assert stats.truncated >= 1
    assert stats.stray_replies >= 1
    assert stats.malformed >= 1
    assert rig.seen.states == [PilotState.B]  # the damaged $AT 03 changed nothing
    assert rig.seen.pilot_faults == []


async def test_mcu_reboot_gets_settings_again(rig: Rig) -> None:
    rig.pilot.set_offered_current(16)
    rig.pilot.set_locked(True)
    await until(lambda: rig.mcu.capacity_a == 16 and rig.mcu.lock_manual, "applied")
    rig.mcu.set_silent()  # it hangs, then restarts with its stored settings
    await until(lambda: rig.seen.pilot_fault == "EVCommunicationError", "silent")
    rig.mcu.set_silent(False)
    rig.mcu.reboot()
    assert rig.mcu.capacity_a == 10 and not rig.mcu.lock_manual
    await until(
        lambda: rig.mcu.capacity_a == 16 and rig.mcu.lock_manual and rig.mcu.locked,
        "applied again",
    )
    await until(lambda: rig.seen.pilot_fault is None, "answers again")
    assert rig.pilot.link.firmware == "8.2.3.EMU"


async def test_port_closed_and_reopened(rig: Rig) -> None:
    rig.pilot.set_offered_current(16)
    await until(lambda: rig.mcu.capacity_a == 16 and rig.mcu.mode == "enabled", "enabled")
    rig.contactor.set_closed(False)  # the offer stands, but the MCU sleeps
    await until(lambda: rig.mcu.mode == "sleeping", "asleep")
    await rig.polls()
    rig.mcu.disconnect()
    assert not os.path.exists(rig.mcu.port)
    await until(lambda: not rig.pilot.link.connected, "port dropped")
    await until(lambda: rig.seen.pilot_fault == "EVCommunicationError", "silent")
    assert rig.state() is PilotState.F
    rig.contactor.set_closed(True)  # asked while the port is gone: FE once it is back
    rig.mcu.plug()  # and an EV came
    rig.mcu.reconnect()
    await until(lambda: rig.seen.pilot_fault is None, "back")
    await until(lambda: rig.mcu.capacity_a == 16 and rig.mcu.mode == "enabled", "applied")
    await until(lambda: rig.pilot.state is PilotState.B, "B")
    await rig.polls()
    assert rig.pilot.stats.reconnects == 1
    # Just enabled, the MCU reports "unknown" once; the stale status from before the outage
    # (asleep, no EV) must not show through as A.
    assert rig.seen.states == [PilotState.F, PilotState.B]


async def test_silent_from_the_start(tmp_path: Path) -> None:
    mcu = RapiMcuEmulator(tmp_path / "ttyRAPI")
    await mcu.start()
    mcu.set_silent()
    evse = make_evse(mcu.port)
    pilot = build_pilot(evse, evse.pilot, {})
    faults: list[Fault] = []
    pilot.on_fault(lambda code, info: faults.append((code, info)))
    try:
        await pilot.start()
        assert pilot.state is PilotState.F
        await until(lambda: faults == [("EVCommunicationError", "MCU not answering")], "fault")
        mcu.set_silent(False)
        await until(lambda: pilot.state is PilotState.A, "answers")
        await until(lambda: faults[-1][0] is None, "cleared")
    finally:
        await pilot.close()
        await mcu.close()


async def test_port_missing_at_start(tmp_path: Path) -> None:
    """A clear error at start, and the driver keeps trying: the MCU counts as silent until
    its port appears."""
    mcu = RapiMcuEmulator(tmp_path / "ttyRAPI")
    await mcu.start()
    evse = make_evse(mcu.port)
    pilot = build_pilot(evse, evse.pilot, {})
    faults: list[Fault] = []
    pilot.on_fault(lambda code, info: faults.append((code, info)))
    mcu.disconnect()
    try:
        with pytest.raises(RapiError, match="cannot open RAPI port"):
            await pilot.start()
        assert pilot.state is PilotState.F
        await until(lambda: faults == [("EVCommunicationError", "MCU not answering")], "fault")
        mcu.reconnect()
        await until(lambda: faults[-1] == (None, "cleared"), "port found")
        await until(lambda: pilot.state is PilotState.A, "state A")
    finally:
        await pilot.close()
        await mcu.close()
    assert not pilot.link.running


async def test_close_puts_the_mcu_to_sleep(mcu: RapiMcuEmulator) -> None:
    evse = make_evse(mcu.port)
    shared: dict[str, object] = {}
    pilot = build_pilot(evse, evse.pilot, shared)
    contactor = build_contactor(evse, evse.contactor, shared)
    await pilot.start()
    await contactor.start()
    pilot.set_offered_current(16)
    await until(lambda: mcu.mode == "enabled" and mcu.capacity_a == 16, "enabled")
    await pilot.close()
    assert pilot.link.running  # the contactor still uses the link
    await contactor.close()
    assert not pilot.link.running
    await until(lambda: mcu.mode == "sleeping", "asleep")
