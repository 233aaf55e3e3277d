"""service.charger.Charger shutdown: every step is bounded and the loops end even when a
cancellation is lost.

Python 3.11's asyncio.wait_for (used inside pymodbus for every request) returns the result and
drops a cancellation that arrives just as the answer does. The meter loop then went on forever
and `evsed` never exited on SIGTERM (seen on the wire-level integration test under load). The
simulated meter here loses one cancellation the same way: the lowest seam, as the race itself
cannot be timed in a test."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from hal.interfaces import MeterReading
from service.config import load_settings
from service.main import Daemon
from service.store.db import Database
from tests.integration.conftest import write_config


class LosesACancellation:
    """Wraps a meter's read(): the first cancellation it sees is swallowed (the answer "won")."""

    def __init__(self, read: object) -> None:
        self._read = read
        self.lost = 0
        self.reading = asyncio.Event()  # a read is in progress

    async def __call__(self) -> MeterReading:
        reading: MeterReading = await self._read()  # type: ignore[operator]
        self.reading.set()
        try:
            await asyncio.sleep(0.2)  # the bus answers
        except asyncio.CancelledError:
            if self.lost:
                raise
            self.lost += 1  # as wait_for does when the response is already there
        finally:
            self.reading.clear()
        return reading


async def test_stop_ends_the_loops_even_when_a_cancellation_is_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = write_config(tmp_path, "ws://127.0.0.1:9/ocpp")  # never connected here
    settings = load_settings(config)
    settings.paths.state_directory.mkdir(parents=True, exist_ok=True)
    with Database.open(settings.paths.state_directory / "evsed.db") as db:
        daemon = Daemon(settings, db)
        charger = daemon.charger
        meter = charger.hardware[1].meter
        lossy = LosesACancellation(meter.read)
        meter.read = lossy  # type: ignore[method-assign]
        await charger.start()
        caplog.set_level(logging.DEBUG, logger="evsed.charger")
        async with asyncio.timeout(5):
            await lossy.reading.wait()
            await charger.stop()  # cancels the meter loop in the middle of a read
        assert lossy.lost == 1
        assert "did not finish" not in caplog.text
        assert not charger._tasks
        daemon.msglog.close()
