"""An OpenEVSE-style charge-controller MCU speaking RAPI on the far end of a pty pair, with an EV.

`RapiMcuEmulator(path)` creates a pseudo-terminal pair with os.openpty(), keeps the master side
(raw reads and writes on its fd, on the asyncio loop) and publishes the slave device under the
symlink `path`, which the driver opens with pyserial like any serial port. The emulator holds
the slave open too (so the pty lives while the driver reopens it) and sets it raw.
`disconnect()` closes the pair and removes the link (the port disappears: the driver's reads
fail); `reconnect()` makes a new pair behind the same path.

The MCU model follows the OpenEVSE firmware where evsed can see it:

- The EV (plug() with its proximity-pilot resistor, set_state B/C/D, a shorted pilot = state E,
  a missing diode) sets the pilot voltage; the MCU classifies it with
  hal.pilot.iec61851.state_from_pilot_voltage. With the PWM on, a negative half that does not
  reach -12 V (short, no diode) fails the diode check (EVSE state 05).
- Modes: enabled (FE, at boot), sleeping (FS), disabled (FD). Like the firmware, the MCU
  measures the pilot state only while enabled: asleep it reports the state it last measured
  (and keeps the EV-connected flag current), disabled it reports both as they were. Just
  enabled, it reports state 00 ("unknown", never in $AT) until it has measured again, here
  until the next GS has been answered.
  The relay closes only while the MCU is enabled, offers >= 6 A (SC clamps to 6 A ..
  max_current_a anyway) and the EV is in C or D, with no fault. (A real OpenEVSE charges in
  D only with its vent-required check off, then treating D as C.) A welded relay that should
  be open is a stuck relay (state 08).
- Injected faults: GFI (06), no ground (07), GFI self-test (09), over temperature (0A), over
  current (0B): relay open, pilot at -12 V, until clear_fault().
- What the pilot shows the EV: `pilot_duty_pct`, from hal.pilot.iec61851.duty_cycle_from_current
  with the PP cable rating applied when PP auto-ampacity is on; 100 % for a steady +12 V
  (state A, sleeping), 0 % for a steady -12 V (faults, disabled).
- Commands: FE FS FD FR, SC, S5 (Mennekes lock), GS GE GC GG G0 G5 GV GF; anything else $NK.
  Frames with a wrong checksum get $NK (as the firmware does); `$AT` is sent after every change
  of (state, pilot state, capacity, flags), `$AB` at boot.
- Line faults for tests: set_silent() (answers nothing), set_reply_fault() (replies become
  garbage, truncated, or carry a bad checksum), send_raw(), lock jam (feedback never moves).

All methods must be called on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from enum import StrEnum
from pathlib import Path

from hal.interfaces import PilotState
from hal.pilot.iec61851 import (
    NOT_AVAILABLE_DUTY_PCT,
    cable_rating_from_pp_resistor,
    duty_cycle_from_current,
    pilot_voltage,
    state_from_pilot_voltage,
)

__all__ = ["McuFault", "RapiMcuEmulator", "ReplyFault"]

RAPI_VERSION = "5.0.1"
_BUFFER_BYTES = 32  # ESRAPI_BUFLEN: a longer command is dropped
_MIN_CURRENT_A = 6

# EVSE states and flags, as the firmware numbers them (J1772EvseController.h).
_STATE_CODE = {PilotState.A: 0x01, PilotState.B: 0x02, PilotState.C: 0x03, PilotState.D: 0x04}
_DIODE_CHECK_FAILED = 0x05
_STUCK_RELAY = 0x08
_SLEEPING = 0xFE
_DISABLED = 0xFF
_VF_HARD_FAULT = 0x0002
_VF_NOGND_TRIPPED = 0x0020
_VF_CHARGING_ON = 0x0040
_VF_GFI_TRIPPED = 0x0080
_VF_EV_CONNECTED = 0x0100
_VF_MENNEKES_MANUAL = 0x8000
_F_L2 = 0x0001
_F_PP_AUTO_AMPACITY = 0x0040


class McuFault(StrEnum):
    """Faults the MCU detects itself; each is an EVSE state code."""

    GFI = "gfi"
    NO_GROUND = "no_ground"
    GFI_SELF_TEST = "gfi_self_test"
    OVER_TEMPERATURE = "over_temperature"
    OVER_CURRENT = "over_current"

    @property
    def code(self) -> int:
        return {
            McuFault.GFI: 0x06,
            McuFault.NO_GROUND: 0x07,
            McuFault.GFI_SELF_TEST: 0x09,
            McuFault.OVER_TEMPERATURE: 0x0A,
            McuFault.OVER_CURRENT: 0x0B,
        }[self]


class ReplyFault(StrEnum):
    """How replies get damaged on the line."""

    GARBAGE = "garbage"  # noise bytes and a frame that is no RAPI
    TRUNCATED = "truncated"  # the first half of the reply, no CR
    BAD_CHECKSUM = "bad_checksum"


def _xor(data: bytes) -> int:
    result = 0
    for byte in data:
        result ^= byte
    return result


class RapiMcuEmulator:
    """The MCU and its EV. `max_current_a`: the hardware maximum (SC clamps to it);
    `capacity_a`: the stored current capacity at boot; `pp_auto_ampacity`: limit the offer to
    the plugged cable's PP rating (and report it in GC); `lock_fitted`: the firmware drives a
    Mennekes lock (S5/G5), else it answers those with $NK."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_current_a: int = 32,
        capacity_a: int = 16,
        pp_auto_ampacity: bool = True,
        firmware: str = "8.2.3.EMU",
        voltage_v: float = 230.0,
        lock_fitted: bool = True,
    ) -> None:
        if not _MIN_CURRENT_A <= capacity_a <= max_current_a <= 80:
            raise ValueError("expected 6 <= capacity_a <= max_current_a <= 80")
        self.path = Path(path)
        self.max_current_a = max_current_a
        self.pp_auto_ampacity = pp_auto_ampacity
        self.firmware = firmware
        self.voltage_v = voltage_v
        self.lock_fitted = lock_fitted  # False: firmware without MENNEKES_LOCK (S5/G5 -> $NK)
        self._stored_capacity = capacity_a
        self._master = -1
        self._slave = -1
        self._input = bytearray()
        self._in_command = False
        # MCU
        self.mode = "enabled"
        self.capacity_a = capacity_a
        self.fault: McuFault | None = None
        self.welded = False
        self.lock_manual = False
        self.locked = False
        self.lock_jammed = False
        self._vflags_sticky = 0
        # Asleep or disabled the firmware stops updating its pilot state (the EV-connected
        # flag it keeps updating while asleep; disabled, the pilot is at -12 V: neither).
        self._frozen_pilot_code = 0x01
        self._frozen_connected = False
        self._settling = False  # just enabled: "unknown" until the next GS has been answered
        # EV
        self.plugged = False
        self.ev_state = PilotState.B
        self.pilot_shorted = False
        self.diode_missing = False
        self.pp_ohms: float | None = None
        # Line
        self.silent = False
        self.reply_fault: ReplyFault | None = None
        self.commands: list[str] = []  # every command received with a valid frame, as text
        self.checksum_errors = 0
        self._last_notified: tuple[int, int, int, int] | None = None

    # ----------------------------------------------------------------- the pty

    @property
    def port(self) -> str:
        return str(self.path)

    @property
    def connected(self) -> bool:
        return self._master >= 0

    async def start(self) -> None:
        """Create the pty and the link to it; the MCU boots ($AB)."""
        self._open_pty()
        self._boot()

    async def close(self) -> None:
        self.disconnect()

    def disconnect(self) -> None:
        """Close the pty pair and remove the link: the serial port is gone."""
        if self._master < 0:
            return
        asyncio.get_running_loop().remove_reader(self._master)
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._master = self._slave = -1
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def reconnect(self) -> None:
        """A new pty pair behind the same path (the MCU kept running meanwhile)."""
        if self._master < 0:
            self._open_pty()
            self._last_notified = None
            self._notify()

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        temporary = self.path.with_name(self.path.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        temporary.symlink_to(os.ttyname(slave))
        os.replace(temporary, self.path)
        self._input.clear()
        asyncio.get_running_loop().add_reader(master, self._on_readable)

    def _write(self, data: bytes) -> None:
        if self._master < 0 or self.silent:
            return
        # Like a UART nobody listens to: what does not fit is lost.
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._master, data)

    def send_raw(self, data: bytes) -> None:
        """Put `data` on the line as it is (noise, half frames, bad checksums...)."""
        self._write(data)

    # ----------------------------------------------------------------- the EV

    def plug(self, pp_ohms: float | None = 220.0) -> None:
        """Plug the EV in with a cable whose PP resistor is `pp_ohms` (220 Ohm: 32 A); the EV
        shows state B first."""
        self.plugged = True
        self.pp_ohms = pp_ohms
        self.ev_state = PilotState.B
        self._changed()

    def unplug(self) -> None:
        self.plugged = False
        self.pp_ohms = None
        self.pilot_shorted = False
        self._changed()

    def set_state(self, state: PilotState | str) -> None:
        """What the plugged EV asks for: B (not ready), C (charge), D (charge, ventilation)."""
        wanted = PilotState(state)
        if wanted not in (PilotState.B, PilotState.C, PilotState.D):
            raise ValueError(f"an EV shows B, C or D, not {wanted}; use set_pilot_short for E")
        self.ev_state = wanted
        self._changed()

    def set_pilot_short(self, shorted: bool = True) -> None:
        """The EV (or cable) shorts the pilot to earth: 0 V, state E."""
        self.pilot_shorted = shorted
        self._changed()

    def set_diode_missing(self, missing: bool = True) -> None:
        self.diode_missing = missing
        self._changed()

    # ----------------------------------------------------------------- MCU faults

    def raise_fault(self, fault: McuFault | str) -> None:
        self.fault = McuFault(fault)
        if self.fault is McuFault.GFI:
            self._vflags_sticky |= _VF_GFI_TRIPPED
        if self.fault is McuFault.NO_GROUND:
            self._vflags_sticky |= _VF_NOGND_TRIPPED
        self._changed()

    def clear_fault(self) -> None:
        self.fault = None
        self._changed()

    def weld_relay(self, welded: bool = True) -> None:
        self.welded = welded
        self._changed()

    def jam_lock(self, jammed: bool = True) -> None:
        """The lock actuator stops moving: G5 keeps reporting where it is."""
        self.lock_jammed = jammed

    def set_silent(self, silent: bool = True) -> None:
        """Stop answering (and notifying) entirely, like a hung MCU; False resumes."""
        self.silent = silent
        if not silent:
            self._notify()

    def set_reply_fault(self, fault: ReplyFault | str | None) -> None:
        self.reply_fault = None if fault is None else ReplyFault(fault)

    def reboot(self) -> None:
        """Restart: volatile settings are lost, the MCU comes up enabled, sends $AB."""
        self.capacity_a = self._stored_capacity
        self._set_mode("enabled")
        self.lock_manual = False
        self._boot()

    def _boot(self) -> None:
        self._last_notified = None
        self._async_frame(f"AB 00 {self.firmware}")
        self._notify()

    # ----------------------------------------------------------------- the physics

    @property
    def pilot_state(self) -> PilotState:
        """The state the MCU measures (E for a shorted pilot)."""
        if not self.plugged:
            return PilotState.A
        volts = 0.0 if self.pilot_shorted else pilot_voltage(self.ev_state)
        state = state_from_pilot_voltage(volts)
        return PilotState.E if state is None else state

    @property
    def cable_rating_a(self) -> float | None:
        if not self.plugged or self.pp_ohms is None:
            return None
        return cable_rating_from_pp_resistor(self.pp_ohms)

    @property
    def effective_current_a(self) -> int:
        """The current the PWM offers: the capacity, limited by the cable with PP auto."""
        rating = self.cable_rating_a if self.pp_auto_ampacity else None
        return self.capacity_a if rating is None else min(self.capacity_a, int(rating))

    def _relay_wanted(self, state: PilotState) -> bool:
        return (
            self.mode == "enabled"
            and self.fault is None
            and state in (PilotState.C, PilotState.D)
            and self.capacity_a >= _MIN_CURRENT_A
            and not self._diode_check_fails(state)
        )

    def _diode_check_fails(self, state: PilotState) -> bool:
        # The negative half reaches -12 V only through the EV's diode; checked with PWM on.
        return (
            self.mode == "enabled"
            and self.plugged
            and (self.pilot_shorted or self.diode_missing or state is PilotState.E)
        )

    @property
    def relay_commanded(self) -> bool:
        return self._relay_wanted(self.pilot_state)

    @property
    def relay_closed(self) -> bool:
        """The contacts: closed when commanded, or welded."""
        return self.relay_commanded or self.welded

    @property
    def evse_state(self) -> int:
        state = self.pilot_state
        if self.fault is not None:
            return self.fault.code
        if self.welded and not self._relay_wanted(state):
            return _STUCK_RELAY
        if self.mode == "sleeping":
            return _SLEEPING
        if self.mode == "disabled":
            return _DISABLED
        if self._settling:
            return 0x00
        if self._diode_check_fails(state):
            return _DIODE_CHECK_FAILED
        return _STATE_CODE.get(state, 0x00)

    @property
    def pilot_code(self) -> int:
        """The pilot state the MCU reports: measured while enabled, else frozen."""
        if self.mode != "enabled":
            return self._frozen_pilot_code
        return _STATE_CODE.get(self.pilot_state, 0x00)

    @property
    def ev_connected(self) -> bool:
        return self._frozen_connected if self.mode == "disabled" else self.plugged

    @property
    def vflags(self) -> int:
        flags = self._vflags_sticky
        if self.ev_connected:
            flags |= _VF_EV_CONNECTED
        if self.relay_commanded:
            flags |= _VF_CHARGING_ON
        if self.evse_state == _DIODE_CHECK_FAILED:
            flags |= _VF_HARD_FAULT
        if self.lock_manual:
            flags |= _VF_MENNEKES_MANUAL
        return flags

    @property
    def pilot_duty_pct(self) -> float:
        """What the pilot shows: PWM duty, 100 for a steady +12 V, 0 for a steady -12 V."""
        state = self.evse_state
        if state == _DIODE_CHECK_FAILED or state in (0x02, 0x03, 0x04):
            return duty_cycle_from_current(self.effective_current_a)
        if state in (0x00, 0x01, _SLEEPING):  # "unknown" just after FE: still a steady +12 V
            return NOT_AVAILABLE_DUTY_PCT
        return 0.0

    @property
    def charging_current_a(self) -> float:
        return float(self.effective_current_a) if self.relay_commanded else 0.0

    def _changed(self) -> None:
        if self.lock_manual is False and not self.lock_jammed:
            self.locked = self.plugged  # automatic mode: locked while an EV is connected
        if not self._in_command:
            self._notify()

    def _notify(self) -> None:
        snapshot = (self.evse_state, self.pilot_code, self.capacity_a, self.vflags)
        if snapshot[0] == 0x00:
            return  # the firmware never notifies the "unknown" state
        if snapshot != self._last_notified and not self.silent and self._master >= 0:
            self._last_notified = snapshot
            evse, pilot, amps, flags = snapshot
            self._async_frame(f"AT {evse:02x} {pilot:02x} {amps} {flags:04x}")

    def _async_frame(self, text: str) -> None:
        body = ("$" + text).encode("ascii")
        self._write(body + f"^{_xor(body):02X}\r".encode("ascii"))

    # ----------------------------------------------------------------- RAPI in

    def _on_readable(self) -> None:
        try:
            data = os.read(self._master, 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # EIO while no one has the slave open: nothing to read
        if self.silent:
            return
        for byte in data:
            if byte == 0x24:  # "$"
                self._input[:] = b"$"
            elif not self._input:
                continue
            elif byte == 0x0D:
                line, self._input[:] = bytes(self._input), b""
                self._command(line)
            elif len(self._input) >= _BUFFER_BYTES:
                self._input.clear()
            else:
                self._input.append(byte)

    def _command(self, line: bytes) -> None:
        text = line.decode("ascii", errors="replace")
        body = self._check(text)
        if body is None:
            self.checksum_errors += 1
            self._reply(False, "", None)  # as the firmware: $NK, without the sequence id
            return
        tokens = body[1:].split(" ")
        seq = None
        if len(tokens) > 1 and tokens[-1].startswith(":"):
            with contextlib.suppress(ValueError):
                seq = int(tokens[-1][1:3], 16)
            tokens.pop()
        self.commands.append(" ".join(tokens))
        self._in_command = True
        try:
            ok, answer = self._execute(tokens[0], tokens[1:])
        finally:
            self._in_command = False
        self._reply(ok, answer, seq or None)
        self._changed()

    @staticmethod
    def _check(text: str) -> str | None:
        """The frame without its checksum, or None when the checksum is wrong (the firmware
        accepts XOR `^`, additive `*` and, for testing, no checksum)."""
        for mark in ("^", "*"):
            at = text.find(mark)
            if at < 0:
                continue
            body, given = text[:at], text[at + 1 : at + 3]
            raw = body.encode("ascii", errors="replace")
            expected = _xor(raw) if mark == "^" else sum(raw) & 0xFF
            try:
                good = int(given, 16) == expected
            except ValueError:
                good = False
            return body if good else None
        return text

    def _execute(self, name: str, args: list[str]) -> tuple[bool, str]:
        if name == "GS":
            answer = f"{self.evse_state:02x} 0 {self.pilot_code:02x} {self.vflags:04x}"
            self._settling = False
            return True, answer
        if name == "GE":
            flags = _F_L2 | (_F_PP_AUTO_AMPACITY if self.pp_auto_ampacity else 0)
            return True, f"{self.capacity_a} {flags:04x}"
        if name == "GC":
            rating = self.cable_rating_a if self.pp_auto_ampacity else None
            cmax = self.max_current_a if rating is None else min(self.max_current_a, int(rating))
            return True, f"{_MIN_CURRENT_A} {self.max_current_a} {self.capacity_a} {cmax}"
        if name == "GG":
            return True, f"{int(self.charging_current_a * 1000)} {int(self.voltage_v * 1000)}"
        if name == "G0":
            return True, "1" if self.plugged else "0"
        if name in ("G5", "S5") and not self.lock_fitted:
            return False, ""
        if name == "G5":
            return True, f"{int(self.locked)} {'M' if self.lock_manual else 'A'}"
        if name == "GV":
            return True, f"{self.firmware} {RAPI_VERSION}"
        if name == "GF":
            return True, "0 0 0"
        if name in ("FE", "FS", "FD"):
            self._set_mode({"FE": "enabled", "FS": "sleeping", "FD": "disabled"}[name])
            return True, ""
        if name == "FR":
            self.reboot()
            return True, ""
        if name == "SC" and len(args) in (1, 2):
            return self._set_current(args)
        if name == "S5" and len(args) == 1:
            return self._lock_command(args[0])
        return False, ""

    def _set_mode(self, mode: str) -> None:
        if self.mode == "enabled" and mode != "enabled":
            self._frozen_pilot_code = self.pilot_code
        if mode == "disabled" and self.mode != "disabled":
            self._frozen_connected = self.plugged
        if mode == "enabled" and self.mode != "enabled":
            self._settling = True
        self.mode = mode

    def _set_current(self, args: list[str]) -> tuple[bool, str]:
        try:
            asked = int(args[0])
        except ValueError:
            return False, str(self.capacity_a)
        amps = max(_MIN_CURRENT_A, min(asked, self.max_current_a))
        self.capacity_a = amps
        if len(args) == 1:
            self._stored_capacity = amps  # without V the firmware saves it to EEPROM
        return amps == asked, str(amps)

    def _lock_command(self, arg: str) -> tuple[bool, str]:
        if arg == "M":
            self.lock_manual = True
        elif arg == "A":
            self.lock_manual = False
        elif arg in ("0", "1"):
            if not self.lock_jammed:
                self.locked = arg == "1"
        else:
            return False, ""
        return True, ""

    def _reply(self, ok: bool, answer: str, seq: int | None) -> None:
        text = "$OK" if ok else "$NK"
        if answer:
            text += " " + answer
        if seq:
            text += f" :{seq:02X}"
        body = text.encode("ascii")
        frame = body + f"^{_xor(body):02X}\r".encode("ascii")
        fault = self.reply_fault
        if fault is ReplyFault.GARBAGE:
            frame = b"\xfe\x00noise\x07$?!\xff\r"
        elif fault is ReplyFault.TRUNCATED:
            frame = frame[: len(frame) // 2]
        elif fault is ReplyFault.BAD_CHECKSUM:
            frame = body + f"^{_xor(body) ^ 0x5A:02X}\r".encode("ascii")
        self._write(frame)
