"""The OCPP 1.6 firmware, diagnostics and log handlers, fed frames through the real engine
with the real managers behind them (the rig of tests/service/firmware/test_manager.py)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from service.config import FirmwareSettings
from service.firmware.manager import FirmwareState
from service.ocpp.v16 import core as v16_core
from service.ocpp.v16 import firmware as v16_firmware
from tests.servers import HttpServer
from tests.service.firmware.test_manager import Rig, command_settings, installer_for

_ids = itertools.count(1)
NOW = "2026-01-01T00:00:00Z"


def wire(rig: Rig) -> None:
    v16_core.install(
        rig.engine,
        rig.station,
        firmware_status=lambda: v16_firmware.firmware_status_payload(rig.manager),
        diagnostics_status=lambda: v16_firmware.diagnostics_status_payload(rig.diagnostics),
    )
    v16_firmware.FirmwareHandlers(
        rig.engine,
        rig.manager,
        rig.diagnostics,
        core_trigger=lambda requested, connector: v16_core.trigger(
            rig.engine, rig.station, requested, connector
        ),
    )


def call(rig: Rig, action: str, payload: dict[str, Any]) -> list[Any]:
    """Send a CALL from the CSMS; return the CALLRESULT / CALLERROR frame."""
    unique_id = f"csms-{next(_ids)}"
    rig.engine.receive(json.dumps([2, unique_id, action, payload]))
    rig.csms.drain()
    return rig.csms.responses[unique_id]


@pytest.fixture
async def rigs(tmp_path: Path) -> AsyncIterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(firmware: FirmwareSettings | None = None, **kw: Any) -> Rig:
        rig = Rig(tmp_path, firmware or command_settings(), **kw)
        wire(rig)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        await rig.manager.close()
        await rig.diagnostics.close()
        rig.db.close()


async def test_bad_requests_get_clear_errors(rigs: Callable[..., Rig], tmp_path: Path) -> None:
    rig = rigs(installer=installer_for(tmp_path))
    frame = call(rig, "UpdateFirmware", {"location": "sftp://h/fw", "retrieveDate": NOW})
    assert frame[0] == 4 and frame[2] == "PropertyConstraintViolation" and "scheme" in frame[3]
    frame = call(rig, "UpdateFirmware", {"location": "http://h/fw", "retrieveDate": "soon"})
    assert frame[0] == 4 and frame[2] in ("PropertyConstraintViolation", "FormationViolation")
    frame = call(
        rig, "UpdateFirmware", {"location": "http://h/fw", "retrieveDate": NOW, "retries": -1}
    )
    assert frame[0] == 4 and frame[2] == "PropertyConstraintViolation"
    frame = call(
        rig,
        "GetDiagnostics",
        {"location": "http://h/", "startTime": NOW, "stopTime": "2025-01-01T00:00:00Z"},
    )
    assert frame[0] == 4 and frame[2] == "PropertyConstraintViolation"
    frame = call(
        rig,
        "GetLog",
        {"logType": "DiagnosticsLog", "requestId": 1, "log": {"remoteLocation": "mailto:x@y"}},
    )
    assert frame == [3, frame[1], {"status": "Rejected"}]
    assert rig.manager.job is None and rig.diagnostics.job is None
    assert rig.csms.of("FirmwareStatusNotification", "LogStatusNotification") == []


async def test_without_backend_updates_are_not_supported(
    rigs: Callable[..., Rig],
) -> None:
    rig = rigs(FirmwareSettings(), installer=None)
    for action, payload in (
        ("UpdateFirmware", {"location": "http://h/fw", "retrieveDate": NOW}),
        (
            "SignedUpdateFirmware",
            {
                "requestId": 1,
                "firmware": {
                    "location": "http://h/fw",
                    "retrieveDateTime": NOW,
                    "signingCertificate": "x",
                    "signature": "AA==",
                },
            },
        ),
    ):
        frame = call(rig, action, payload)
        assert frame[0] == 4 and frame[2] == "NotSupported" and "backend" in frame[3]


async def test_triggers_and_signed_request_while_installing(
    rigs: Callable[..., Rig], tmp_path: Path
) -> None:
    rig = rigs(installer=installer_for(tmp_path, sleep=1.0))
    assert call(
        rig, "ExtendedTriggerMessage", {"requestedMessage": "MeterValues", "connectorId": 9}
    )[2] == {"status": "Rejected"}
    assert call(
        rig, "ExtendedTriggerMessage", {"requestedMessage": "StatusNotification", "connectorId": 1}
    )[2] == {"status": "Accepted"}
    assert [p["connectorId"] for _, p in rig.csms.of("StatusNotification")] == [1]
    with HttpServer() as http:
        http.serve("/fw.bin", b"firmware")
        assert (
            call(rig, "UpdateFirmware", {"location": http.url("/fw.bin"), "retrieveDate": NOW})[2]
            == {}
        )
        async with asyncio.timeout(10):
            while rig.manager.state is not FirmwareState.INSTALLING:
                await asyncio.sleep(0.02)
        call(rig, "TriggerMessage", {"requestedMessage": "FirmwareStatusNotification"})
        call(rig, "ExtendedTriggerMessage", {"requestedMessage": "FirmwareStatusNotification"})
        assert rig.csms.statuses()[-1] == "Installing"
        assert rig.csms.statuses("SignedFirmwareStatusNotification") == ["Installing"]
        frame = call(
            rig,
            "SignedUpdateFirmware",
            {
                "requestId": 3,
                "firmware": {
                    "location": http.url("/fw.bin"),
                    "retrieveDateTime": NOW,
                    "signingCertificate": "x",
                    "signature": "AA==",
                },
            },
        )
        assert frame[2] == {"status": "Rejected"}
        frame = call(rig, "UpdateFirmware", {"location": http.url("/fw.bin"), "retrieveDate": NOW})
        assert frame[0] == 4 and frame[2] == "GenericError"
        async with asyncio.timeout(10):
            while rig.manager.state is not FirmwareState.INSTALLED:
                await asyncio.sleep(0.02)
    call(rig, "ExtendedTriggerMessage", {"requestedMessage": "FirmwareStatusNotification"})
    assert rig.csms.statuses("SignedFirmwareStatusNotification")[-1] == "Idle"
