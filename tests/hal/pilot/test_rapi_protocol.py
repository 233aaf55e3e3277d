"""Tests of hal.pilot.rapi_protocol: RAPI frames, checksums, sequence ids, the byte-stream
reader's handling of noise, and what MCU states mean for the pilot state."""

from __future__ import annotations

import pytest

from hal.interfaces import PilotState
from hal.pilot.rapi_protocol import (
    FrameError,
    FrameReader,
    McuStatus,
    RapiStats,
    decode_frame,
    encode_command,
    mcu_fault,
    pilot_state_of,
    xor_checksum,
)


def test_encode_command_xor_checksum_and_sequence_id() -> None:
    # The spec's own example: "$GS^30".
    assert encode_command("GS") == b"$GS^30\r"
    frame = encode_command("SC", ["16", "V"], seq=0x1A)
    assert frame.startswith(b"$SC 16 V :1A^")
    assert decode_frame(frame[:-1]).tokens == ("SC", "16", "V")
    assert decode_frame(frame[:-1]).seq == 0x1A
    with pytest.raises(ValueError):
        encode_command("SC", ["1 6"])
    with pytest.raises(ValueError):
        encode_command("GS", seq=0)


def test_decode_accepts_additive_checksum() -> None:
    # The spec's examples: "$FE*AF", "$FD*AE".
    assert decode_frame(b"$FE*AF").tokens == ("FE",)
    assert decode_frame(b"$FD*AE").tokens == ("FD",)


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"$GS^31", "checksum"),
        (b"$FE*AE", "checksum"),
        (b"$GS", "malformed"),  # no checksum
        (b"$GS^3", "malformed"),
        (b"$GS^ZZ", "malformed"),
        (b"$\xff\xfe^00", "malformed"),
        (b"$OK 01 :G1^%02X" % xor_checksum(b"$OK 01 :G1"), "malformed"),  # bad sequence id
        (b"$O^%02X" % xor_checksum(b"$O"), "malformed"),  # no two-letter name
    ],
)
def test_decode_rejects(raw: bytes, kind: str) -> None:
    with pytest.raises(FrameError) as error:
        decode_frame(raw)
    assert error.value.kind == kind


def test_frame_reader_counts_noise() -> None:
    stats = RapiStats()
    reader = FrameReader(stats)
    good = encode_command("OK", ["01"], seq=5)
    frames = reader.feed(b"\x00junk" + good[:4] + good + b"$GS^31\r" + b"\n" + good[:3])
    frames += reader.feed(good[3:])
    assert [f.tokens for f in frames] == [("OK", "01"), ("OK", "01")]
    assert stats.garbage_bytes == 5
    assert stats.truncated == 1
    assert stats.bad_checksum == 1
    assert stats.frames == 2
    assert reader.feed(b"$" + b"A" * 100 + b"\r") == []
    assert stats.malformed == 1


def test_mcu_states_map_to_pilot_states() -> None:
    assert pilot_state_of(McuStatus(0x01, 0x01, 0)) is PilotState.A
    assert pilot_state_of(McuStatus(0x03, 0x03, 0x0140)) is PilotState.C
    assert pilot_state_of(McuStatus(0xFE, 0x03, 0x0100)) is PilotState.C  # asleep, EV ready
    assert pilot_state_of(McuStatus(0xFF, 0x00, 0x0100)) is PilotState.B  # disabled, plugged
    assert pilot_state_of(McuStatus(0xFF, 0x00, 0x0000)) is PilotState.A
    for fault in (0x00, 0x05, 0x06, 0x07, 0x08, 0x0A, 0x11, 0x42):
        assert pilot_state_of(McuStatus(fault, 0x02, 0x0100)) is PilotState.F


def test_pilot_state_while_asleep_depends_on_what_is_known() -> None:
    asleep_c = McuStatus(0xFE, 0x03, 0x0100)
    assert pilot_state_of(asleep_c, pilot_known=True) is PilotState.C
    assert pilot_state_of(asleep_c, pilot_known=False) is PilotState.B
    assert pilot_state_of(McuStatus(0xFE, 0x01, 0x0100)) is PilotState.B  # plugged, field stale


@pytest.mark.parametrize(
    ("state", "code"),
    [
        (0x05, "EVCommunicationError"),
        (0x06, "GroundFailure"),
        (0x07, "GroundFailure"),
        (0x08, "PowerSwitchFailure"),
        (0x09, "GroundFailure"),
        (0x0A, "HighTemperature"),
        (0x0B, "OverCurrentFailure"),
        (0x0E, "PowerSwitchFailure"),
        (0x0F, "OtherError"),
        (0x11, "InternalError"),
        (0x42, "InternalError"),
    ],
)
def test_mcu_fault_codes(state: int, code: str) -> None:
    fault = mcu_fault(state)
    assert fault is not None and fault[0] == code


@pytest.mark.parametrize("state", [0x00, 0x01, 0x02, 0x03, 0x04, 0xFE, 0xFF])
def test_no_fault(state: int) -> None:
    assert mcu_fault(state) is None
