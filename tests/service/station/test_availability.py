"""ChangeAvailability survives a restart (service/station/availability.py), on the real station
and database (the rig of the 2.0.1 link tests: the station wired as the daemon wires it)."""

from __future__ import annotations

from pathlib import Path

from service.station.availability import KEY, AvailabilityMemory
from service.station.model import ConnectorStatus
from tests.service.ocpp.v201.link_rig import Rig


async def boot(path: Path) -> Rig:
    rig = Rig(path)
    memory = AvailabilityMemory(rig.db, rig.station)
    memory.restore()
    rig.station.on_change(memory.station_changed)
    await rig.start()
    rig.connect()
    return rig


async def test_inoperative_evses_stay_so_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "evsed.db"
    rig = await boot(path)
    assert rig.station.set_availability(2, False) == "Accepted"
    await rig.plug(1)
    await rig.present("TAG", 1)
    assert rig.station.set_availability(1, False) == "Scheduled"
    rig.close()  # a power cut while the change waits for the transaction

    rig = await boot(path)
    assert rig.station.status_of(1)[0] is ConnectorStatus.UNAVAILABLE
    assert rig.station.status_of(2)[0] is ConnectorStatus.UNAVAILABLE
    assert rig.station.set_availability(2, True) == "Accepted"
    rig.close()

    rig = await boot(path)
    assert rig.station.status_of(2)[0] is ConnectorStatus.AVAILABLE
    assert rig.station.status_of(1)[0] is ConnectorStatus.UNAVAILABLE
    assert rig.station.set_availability(0, False) == "Accepted"  # the whole station
    rig.close()

    rig = await boot(path)
    assert rig.station.wanted_availability(0).value == "Inoperative"
    assert all(
        rig.station.status_of(n)[0] is ConnectorStatus.UNAVAILABLE for n in rig.station.evses
    )
    rig.close()


async def test_a_garbled_record_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "evsed.db"
    rig = Rig(path)
    rig.db.execute("INSERT INTO kv (key, value) VALUES (?, ?)", (KEY, "{not json"))
    rig.close()
    rig = await boot(path)
    assert rig.station.status_of(1)[0] is ConnectorStatus.AVAILABLE
    rig.close()
