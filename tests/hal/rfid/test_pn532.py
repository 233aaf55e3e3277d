"""Tests of hal.rfid.pn532: the PN532 frame codec, and the driver against its emulator on a pty."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from hal.registry import HardwareConfigError
from hal.rfid.pn532 import (
    ACK_FRAME,
    ERROR_FRAME,
    NACK_FRAME,
    Ack,
    BadFrame,
    ErrorFrame,
    FirmwareVersion,
    FrameDecoder,
    InfoFrame,
    Nack,
    Pn532Error,
    Pn532ProtocolError,
    Pn532Reader,
    TargetA,
    build,
    decode_frames,
    encode_command,
    encode_frame,
    parse_firmware_version,
    parse_passive_targets_106a,
)
from hal.sim.pn532 import Pn532Emulator
from service.config import Evse, Hardware
from service.config_reader import Scalar

# Frames as the PN532 User Manual and real traffic show them.
GET_FIRMWARE_VERSION = bytes.fromhex("0000FF02FED4022A00")
SAM_CONFIGURATION = bytes.fromhex("0000FF05FBD4140114010200")
FIRMWARE_RESPONSE = bytes.fromhex("0000FF06FAD50332010607E800")
NO_TARGET = bytes.fromhex("0000FF03FDD54B00E000")
CLASSIC_UID = bytes.fromhex("DEADBEEF")
CLASSIC_TARGET = bytes.fromhex("4B010100040804") + CLASSIC_UID


# ------------------------------------------------------------------------------------ codec


def test_encode_command_frames() -> None:
    assert encode_command(0x02) == GET_FIRMWARE_VERSION
    assert encode_command(0x14, bytes([0x01, 0x14, 0x01])) == SAM_CONFIGURATION
    assert encode_frame(0xD5, bytes.fromhex("0332010607")) == FIRMWARE_RESPONSE


def test_encode_rejects_data_that_needs_an_extended_frame() -> None:
    assert len(encode_frame(0xD4, bytes(254))) == 254 + 8
    with pytest.raises(ValueError, match="extended frame"):
        encode_frame(0xD4, bytes(255))
    with pytest.raises(ValueError):
        encode_command(0x100)


def test_decode_valid_frames() -> None:
    items, rest = decode_frames(ACK_FRAME + FIRMWARE_RESPONSE + NACK_FRAME + ERROR_FRAME)
    assert items == [
        Ack(),
        InfoFrame(0xD5, bytes.fromhex("0332010607")),
        Nack(),
        ErrorFrame(),
    ]
    assert rest == b"\x00"  # the postamble: kept, as it may start the next start code
    assert parse_firmware_version(items[1].data[1:]) == FirmwareVersion(0x32, 1, 6, 7)  # type: ignore[union-attr]


def test_decode_accepts_frames_without_preamble_or_postamble() -> None:
    items, rest = decode_frames(ACK_FRAME[1:-1] + FIRMWARE_RESPONSE[1:-1] + b"\x00\x00\x00")
    assert items == [Ack(), InfoFrame(0xD5, bytes.fromhex("0332010607"))]
    assert rest == b"\x00"  # may be the first byte of a start code


def test_round_trip_of_every_length() -> None:
    for length in range(0, 255):
        data = bytes((i * 37 + length) & 0xFF for i in range(length))
        items, rest = decode_frames(encode_frame(0xD4, data))
        assert items == [InfoFrame(0xD4, data)] and rest == b"\x00"


def test_lcs_error_is_reported_and_the_next_frame_found() -> None:
    bad = bytearray(FIRMWARE_RESPONSE)
    bad[4] ^= 0x01  # LCS
    items, _ = decode_frames(bytes(bad) + ACK_FRAME)
    assert items[0] == BadFrame("lcs", bytes(bad[1:5]))
    assert items[-1] == Ack()
    assert not any(isinstance(item, InfoFrame) for item in items)


def test_dcs_error_is_reported() -> None:
    for position in range(5, len(FIRMWARE_RESPONSE) - 1):  # TFI, every data byte, DCS
        bad = bytearray(FIRMWARE_RESPONSE)
        bad[position] ^= 0x10
        items, _ = decode_frames(bytes(bad) + ACK_FRAME)
        assert [i for i in items if not (isinstance(i, BadFrame) and i.reason == "garbage")] == [
            BadFrame("dcs", bytes(bad[1:-1])),
            Ack(),
        ], position


def test_length_zero_is_rejected() -> None:
    items, _ = decode_frames(bytes.fromhex("0000FF0000") + ACK_FRAME)
    assert items[0] == BadFrame("length", bytes.fromhex("00FF0000"))
    assert items[-1] == Ack()


def test_extended_frame_is_rejected_whole() -> None:
    data = bytes([0xD5, 0x4B]) + bytes(298)  # 300 bytes: too long for a normal frame
    length = len(data)
    lcs = (-(length >> 8) - (length & 0xFF)) & 0xFF
    dcs = (-sum(data)) & 0xFF
    extended = bytes([0, 0, 0xFF, 0xFF, 0xFF, length >> 8, length & 0xFF, lcs])
    extended += data + bytes([dcs, 0])
    # 300 > 265: not even a valid extended length
    items, _ = decode_frames(extended + ACK_FRAME)
    assert items[0].reason == "length"  # type: ignore[union-attr]
    assert items[-1] == Ack()
    assert not any(isinstance(item, InfoFrame) for item in items)
    # A valid extended frame of 260 bytes.
    data = bytes([0xD5, 0x41]) + bytes(range(256)) + b"\x01\x02"
    length = len(data)
    lcs = (-(length >> 8) - (length & 0xFF)) & 0xFF
    dcs = (-sum(data)) & 0xFF
    extended = bytes([0, 0, 0xFF, 0xFF, 0xFF, length >> 8, length & 0xFF, lcs])
    extended += data + bytes([dcs, 0])
    items, rest = decode_frames(extended + ACK_FRAME)
    assert [type(item) for item in items] == [BadFrame, Ack]
    assert items[0].reason == "extended"  # type: ignore[union-attr]
    assert rest == b"\x00"


def test_truncated_frame_waits_for_the_rest() -> None:
    decoder = FrameDecoder()
    stream = ACK_FRAME + FIRMWARE_RESPONSE
    received: list[object] = []
    for byte in stream:  # one byte at a time
        received += decoder.feed(bytes([byte]))
    assert received == [Ack(), InfoFrame(0xD5, bytes.fromhex("0332010607"))]
    # Cut in the middle: nothing yet, the beginning is kept.
    items, rest = decode_frames(FIRMWARE_RESPONSE[:8])
    assert items == [] and rest == FIRMWARE_RESPONSE[1:8]
    for cut in range(1, len(FIRMWARE_RESPONSE) - 1):
        items, _ = decode_frames(FIRMWARE_RESPONSE[:cut])
        assert items == [], cut


def test_truncated_frame_followed_by_good_frames() -> None:
    stream = FIRMWARE_RESPONSE[:9] + ACK_FRAME + NO_TARGET + ACK_FRAME
    decoder = FrameDecoder()
    items = decoder.feed(stream)
    assert isinstance(items[0], BadFrame) and items[0].reason == "dcs"
    good = [item for item in items if not isinstance(item, BadFrame)]
    assert good[-1] == Ack()
    assert InfoFrame(0xD5, bytes.fromhex("4B00")) in good
    assert not any(isinstance(i, InfoFrame) and i.data[:1] == b"\x03" for i in items)
    decoder.reset()
    assert decoder.pending == b""


def test_garbage_between_frames() -> None:
    items, rest = decode_frames(b"\x13\x37" + ACK_FRAME + b"\xfe\x42\x00\x55" + NO_TARGET + b"\x99")
    assert items == [
        BadFrame("garbage", b"\x13\x37"),
        Ack(),
        BadFrame("garbage", b"\xfe\x42\x00\x55"),
        InfoFrame(0xD5, bytes.fromhex("4B00")),
        BadFrame("garbage", b"\x99"),
    ]
    assert rest == b""
    # Filler zeros and a lone 0xFF are not a frame.
    assert decode_frames(bytes(10)) == ([], b"\x00")
    assert decode_frames(b"\xff\xff\x00") == ([BadFrame("garbage", b"\xff\xff")], b"\x00")


def test_parse_targets_4_7_and_10_byte_uids() -> None:
    assert parse_passive_targets_106a(b"\x00") == ()
    (classic,) = parse_passive_targets_106a(CLASSIC_TARGET[1:])
    assert classic == TargetA(1, b"\x00\x04", 0x08, CLASSIC_UID)
    assert classic.id_tag == "DEADBEEF"
    seven = bytes.fromhex("04A2B3C4D5E680")
    (ultralight,) = parse_passive_targets_106a(bytes([1, 1, 0x00, 0x44, 0x00, 7]) + seven)
    assert ultralight.id_tag == "04A2B3C4D5E680"
    ten = bytes(range(1, 11))
    (triple,) = parse_passive_targets_106a(bytes([1, 1, 0x00, 0x84, 0x00, 10]) + ten)
    assert triple.id_tag == "0102030405060708090A"


def test_parse_targets_with_ats_and_two_targets() -> None:
    ats = bytes.fromhex("0578807002")  # TL = 5, the ATSLength byte included
    desfire = bytes([1, 0x03, 0x44, 0x20, 7]) + bytes.fromhex("04112233445566") + ats
    classic = bytes([2, 0x00, 0x04, 0x08, 4]) + CLASSIC_UID
    first, second = parse_passive_targets_106a(bytes([2]) + desfire + classic)
    assert first.ats == ats and first.id_tag == "04112233445566"
    assert second.tg == 2 and second.id_tag == "DEADBEEF"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x03",  # NbTg > 2
        b"\x01\x01\x00\x04",  # target data cut short
        bytes([1, 1, 0, 4, 8, 5]) + bytes(5),  # NFCIDLength 5
        bytes([1, 1, 0, 4, 8, 4]) + bytes(3),  # NFCID1 cut short
        bytes([1, 1, 0, 4, 8, 4]) + bytes(4) + b"\x00",  # trailing byte
        bytes([1, 1, 0, 4, 0x20, 4]) + bytes(4) + b"\x05\x78",  # ATS cut short
    ],
)
def test_parse_targets_rejects_malformed_data(payload: bytes) -> None:
    with pytest.raises(Pn532ProtocolError):
        parse_passive_targets_106a(payload)


def test_parse_firmware_version_rejects_wrong_length() -> None:
    with pytest.raises(Pn532ProtocolError):
        parse_firmware_version(b"\x32\x01")


# ------------------------------------------------------------------- driver vs emulator

WAIT_S = 10.0  # bound of every wait; tests pass long before


async def until(predicate: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(WAIT_S):
        while not predicate():
            await asyncio.sleep(0.005)
    for _ in range(3):  # let callbacks scheduled with call_soon run
        await asyncio.sleep(0)


class Harness:
    def __init__(self, reader: Pn532Reader, emulator: Pn532Emulator) -> None:
        self.reader = reader
        self.emulator = emulator
        self.tokens: list[str] = []
        self.faults: list[tuple[str | None, str]] = []
        reader.on_token(self.tokens.append)
        reader.on_fault(lambda code, info: self.faults.append((code, info)))

    @property
    def fault(self) -> str | None:
        return self.faults[-1][0] if self.faults else None

    async def polls(self, count: int = 5) -> None:
        """Wait until the emulator answered `count` more polls (with or without a card)."""
        emu = self.emulator
        target = emu.polls + emu.empty_polls + count
        await until(lambda: emu.polls + emu.empty_polls >= target, f"{count} polls")

    async def token(self, count: int) -> None:
        await until(lambda: len(self.tokens) >= count, f"{count} tokens")


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Pn532Emulator]:
    emu = Pn532Emulator(tmp_path / "ttyPN532")
    emu.start()
    yield emu
    emu.stop()


MakeHarness = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make(emulator: Pn532Emulator) -> AsyncIterator[MakeHarness]:
    readers: list[Pn532Reader] = []

    async def start(**options: float) -> Harness:
        settings: dict[str, float] = {"poll_interval_s": 0.01, "rearm_s": 30.0, "timeout_s": 1.0}
        settings.update(options)
        reader = Pn532Reader(
            emulator.port,
            poll_interval_s=settings["poll_interval_s"],
            rearm_s=settings["rearm_s"],
            timeout_s=settings["timeout_s"],
        )
        harness = Harness(reader, emulator)
        readers.append(reader)
        await reader.start()
        return harness

    yield start
    for reader in readers:
        await asyncio.wait_for(reader.close(), WAIT_S)


async def test_wakes_the_reader_and_configures_it_first(make: MakeHarness) -> None:
    h = await make()
    await h.polls(3)
    emu = h.emulator
    assert emu.wakeups == 1
    assert emu.commands[:3] == [0x14, 0x02, 0x32]  # SAMConfiguration first, then the rest
    assert h.reader.firmware == FirmwareVersion(0x32, 1, 6, 7)
    assert h.tokens == [] and h.faults == []


async def test_card_reported_once_while_it_stays(make: MakeHarness) -> None:
    h = await make()
    await h.polls(2)
    h.emulator.place_card("DEADBEEF")
    await h.token(1)
    assert h.tokens == ["DEADBEEF"]
    await h.polls(20)
    assert h.emulator.polls >= 20
    assert h.tokens == ["DEADBEEF"]


async def test_seven_and_ten_byte_uids(make: MakeHarness) -> None:
    h = await make(rearm_s=0.0)
    h.emulator.place_card("04a2b3c4d5e680")
    await h.token(1)
    h.emulator.place_card("0102030405060708090A")  # another card: reported at once
    await h.token(2)
    assert h.tokens == ["04A2B3C4D5E680", "0102030405060708090A"]


async def test_card_removed_and_placed_again_after_rearm(make: MakeHarness) -> None:
    h = await make(rearm_s=0.2)
    emu = h.emulator
    emu.place_card("04A2B3C4D5E680")
    await h.token(1)
    emu.remove_card()
    await h.polls(3)  # the driver saw it gone
    await asyncio.sleep(0.4)  # longer than rearm_s
    await h.polls(2)
    emu.place_card("04A2B3C4D5E680")
    await h.token(2)
    assert h.tokens == ["04A2B3C4D5E680"] * 2


async def test_card_lifted_briefly_is_not_reported_again(make: MakeHarness) -> None:
    h = await make(rearm_s=60.0)
    emu = h.emulator
    emu.place_card("DEADBEEF")
    await h.token(1)
    emu.remove_card()
    empty = emu.empty_polls
    await until(lambda: emu.empty_polls >= empty + 3, "empty polls")
    emu.place_card("DEADBEEF")
    seen = emu.polls
    await until(lambda: emu.polls >= seen + 10, "polls with the card")
    assert h.tokens == ["DEADBEEF"]
    emu.place_card("CAFEBABE")  # another card is no bounce
    await h.token(2)
    assert h.tokens == ["DEADBEEF", "CAFEBABE"]


async def test_silent_reader_is_a_fault_cleared_when_it_answers(make: MakeHarness) -> None:
    h = await make(timeout_s=0.3)
    emu = h.emulator
    await h.polls(2)
    emu.silent()
    await until(lambda: h.fault == "ReaderFailure", "the fault")
    assert "no ACK" in h.faults[-1][1]
    emu.place_card("DEADBEEF")
    commands = len(emu.commands)
    emu.silent(False)
    await until(lambda: h.faults[-1][0] is None, "the fault cleared")
    assert [code for code, _ in h.faults] == ["ReaderFailure", None]
    # Re-initialised after the recovery: wake-up and SAMConfiguration before polling again.
    assert emu.commands[commands] == 0x14
    await h.token(1)
    assert h.tokens == ["DEADBEEF"]


async def test_power_cycled_reader_is_woken_again(make: MakeHarness) -> None:
    h = await make(timeout_s=5.0)
    emu = h.emulator
    await h.polls(2)
    emu.power_cycle()  # asleep: the next poll is lost
    await until(lambda: emu.wakeups == 2, "a second wake-up")
    emu.place_card("CAFEBABE")
    await h.token(1)
    assert h.tokens == ["CAFEBABE"]


async def test_no_card_limit_set_so_polls_do_not_wait_forever(make: MakeHarness) -> None:
    # The emulator, like the chip, waits for a card forever unless RFConfiguration says not.
    h = await make()
    await h.polls(5)
    assert h.emulator.empty_polls >= 5 and h.faults == []


@pytest.mark.parametrize(
    "line_fault",
    ["corrupt_checksums", "send_garbage", "truncate_frames", "nack_commands"],
)
async def test_bad_traffic_is_a_fault_without_false_tokens(
    make: MakeHarness, line_fault: str
) -> None:
    h = await make(timeout_s=0.3)
    emu = h.emulator
    await h.polls(2)
    getattr(emu, line_fault)(True)
    emu.place_card("DEADBEEF")
    await until(lambda: h.fault == "ReaderFailure", "the fault")
    assert h.tokens == []
    getattr(emu, line_fault)(False)
    await until(lambda: h.fault is None, "the fault cleared")
    await h.token(1)
    assert h.tokens == ["DEADBEEF"]
    assert h.reader._task is not None and not h.reader._task.done()


async def test_garbage_between_frames_is_ignored(make: MakeHarness) -> None:
    h = await make()
    emu = h.emulator
    emu.noise()
    await h.polls(5)
    emu.place_card("04A2B3C4D5E680")
    await h.token(1)
    await h.polls(10)
    assert h.tokens == ["04A2B3C4D5E680"]
    assert h.faults == []


async def test_unsolicited_garbage_and_frames_do_not_confuse_it(make: MakeHarness) -> None:
    h = await make()
    emu = h.emulator
    await h.polls(2)
    fake = encode_frame(0xD5, CLASSIC_TARGET)  # a response to no command
    for junk in (b"\xde\xad" * 50, fake, ACK_FRAME, NACK_FRAME, ERROR_FRAME, fake[:7]):
        emu.inject(junk)
        await h.polls(2)
    assert h.tokens == []
    emu.place_card("CAFEBABE")
    await h.token(1)
    assert h.tokens == ["CAFEBABE"]


async def test_port_gone_and_back_is_a_fault_then_recovery(make: MakeHarness) -> None:
    h = await make(timeout_s=0.3)
    emu = h.emulator
    await h.polls(2)
    emu.unplug()
    await until(lambda: h.fault == "ReaderFailure", "the fault")
    emu.replug()
    emu.place_card("DEADBEEF")
    await until(lambda: h.fault is None, "the fault cleared")
    await h.token(1)
    assert h.tokens == ["DEADBEEF"]
    assert emu.wakeups == 2  # the new device was woken and configured


async def test_close_while_the_reader_is_silent(make: MakeHarness) -> None:
    h = await make()
    h.emulator.silent()
    await asyncio.sleep(0.05)
    await asyncio.wait_for(h.reader.close(), WAIT_S)
    await asyncio.wait_for(h.reader.close(), WAIT_S)  # twice is fine


async def test_start_on_a_missing_port(tmp_path: Path) -> None:
    reader = Pn532Reader(str(tmp_path / "nothing"))
    with pytest.raises(Pn532Error, match="nothing: No such file"):
        await reader.start()
    await reader.close()


async def test_port_used_by_another_process_is_refused(
    make: MakeHarness, emulator: Pn532Emulator
) -> None:
    await make()
    other = Pn532Reader(emulator.port)
    with pytest.raises(Pn532Error, match="in use"):
        await other.start()


# ------------------------------------------------------------------------------- options


def evse(options: dict[str, Scalar], evse_id: int = 2) -> Evse:
    return Evse(id=evse_id, token_reader=Hardware(backend="pn532", options=options))


def test_build_with_defaults_and_options(emulator: Pn532Emulator) -> None:
    reader = build(
        e := evse(
            {
                "port": emulator.port,
                "baudrate": 9600,
                "poll_interval_s": 1,
                "rearm_s": 0,
                "timeout_s": 2.5,
            }
        ),
        e.token_reader,
        {},
    )
    assert (reader.port, reader.baudrate) == (emulator.port, 9600)
    assert (reader.poll_interval_s, reader.rearm_s, reader.timeout_s) == (1.0, 0.0, 2.5)
    default = build(e := evse({"port": emulator.port}), e.token_reader, {})
    assert (default.baudrate, default.poll_interval_s, default.rearm_s, default.timeout_s) == (
        115200,
        0.25,
        1.0,
        2.0,
    )


@pytest.mark.parametrize(
    ("options", "option", "message"),
    [
        ({}, "port", "missing"),
        ({"port": 3}, "port", "device path"),
        ({"port": ""}, "port", "device path"),
        ({"port": "/dev/does-not-exist-pn532"}, "port", "does not exist"),
        ({"port": "PORT", "speed": 9600}, "speed", "unknown option"),
        ({"port": "PORT", "baudrate": 12345}, "baudrate", "expected one of"),
        ({"port": "PORT", "baudrate": "115200"}, "baudrate", "expected one of"),
        ({"port": "PORT", "baudrate": True}, "baudrate", "expected one of"),
        ({"port": "PORT", "poll_interval_s": 0}, "poll_interval_s", "> 0"),
        ({"port": "PORT", "poll_interval_s": "fast"}, "poll_interval_s", "number"),
        ({"port": "PORT", "rearm_s": -1}, "rearm_s", ">= 0"),
        ({"port": "PORT", "rearm_s": float("nan")}, "rearm_s", ">= 0"),
        ({"port": "PORT", "timeout_s": False}, "timeout_s", "number"),
        ({"port": "PORT", "timeout_s": 1e9}, "timeout_s", "<= 600"),
    ],
)
def test_build_rejects_bad_options(
    emulator: Pn532Emulator, options: dict[str, Scalar], option: str, message: str
) -> None:
    options = {k: (emulator.port if v == "PORT" else v) for k, v in options.items()}
    e = evse(options)
    with pytest.raises(HardwareConfigError, match=message) as caught:
        build(e, e.token_reader, {})
    assert str(caught.value).startswith(f"EVSE 2: evse[2].token_reader.options.{option}: ")


def test_build_refuses_one_port_for_two_evses(emulator: Pn532Emulator) -> None:
    shared: dict[str, object] = {}
    first = evse({"port": emulator.port}, evse_id=1)
    build(first, first.token_reader, shared)
    build(first, first.token_reader, shared)  # the same EVSE again is fine
    second = evse({"port": emulator.port}, evse_id=2)
    with pytest.raises(HardwareConfigError, match="already the token reader of EVSE 1"):
        build(second, second.token_reader, shared)


def test_constructor_validates_too() -> None:
    with pytest.raises(ValueError, match="baudrate"):
        Pn532Reader("/dev/null", baudrate=1234)
    with pytest.raises(ValueError, match="rearm_s"):
        Pn532Reader("/dev/null", rearm_s=-0.5)
