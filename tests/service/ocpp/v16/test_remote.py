"""OCPP 1.6 Reset (service/ocpp/v16/remote.py) on the real station, engine and queue
(tests/service/ocpp/v201/link_rig.py, connected under 1.6): refused while a firmware update
installs, carried out otherwise."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.ocpp.rpc import OcppVersion
from tests.service.ocpp.v201.link_rig import Rig


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path / "evsed.db", versions=("ocpp1.6",))
    await rig.start()
    rig.connect(OcppVersion.V16)
    yield rig
    rig.close()


@pytest.mark.parametrize("kind", ["Soft", "Hard"])
async def test_reset_rejected_while_firmware_installs(rig: Rig, kind: str) -> None:
    installing = True
    rig.remote16.reset_refusal = lambda: "firmware update Installing" if installing else None
    await rig.plug()
    await rig.present("TAG-1")
    assert rig.sent("StartTransaction")
    assert rig.result("Reset", {"type": kind}) == {"status": "Rejected"}
    # Nothing was done: no restart asked for, the transaction goes on.
    assert rig.resets == []
    assert rig.station.has_transaction()
    assert rig.sent("StopTransaction") == []
    # Once the installation is over, the same request is carried out.
    installing = False
    assert rig.result("Reset", {"type": kind}) == {"status": "Accepted"}
    assert rig.resets == [kind]
    [stop] = rig.sent("StopTransaction")
    assert stop["reason"] == ("HardReset" if kind == "Hard" else "SoftReset")


async def test_reset_accepted_without_a_refusal_hook(rig: Rig) -> None:
    assert rig.result("Reset", {"type": "Soft"}) == {"status": "Accepted"}
    assert rig.resets == ["Soft"]


async def test_reset_refusal_that_fails_is_an_internal_error_not_a_crash(rig: Rig) -> None:
    def broken() -> str | None:
        raise RuntimeError("firmware state unreadable")

    rig.remote16.reset_refusal = broken
    answer = rig.call("Reset", {"type": "Hard"})
    assert answer[0] == 4 and answer[2] == "InternalError"
    assert rig.resets == []


async def test_bad_reset_request_is_refused_and_nothing_happens(rig: Rig) -> None:
    answer = rig.call("Reset", {"type": "Warm"})
    assert answer[0] == 4 and answer[2] == "PropertyConstraintViolation"
    answer = rig.call("Reset", {})
    assert answer[0] == 4 and answer[2] == "OccurenceConstraintViolation"
    assert rig.resets == []
