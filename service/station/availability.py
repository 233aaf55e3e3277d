"""ChangeAvailability survives a restart: the station's wanted availability, kept in ``kv``.

OCPP (1.6 ChangeAvailability, 2.0.1 G03/G04) wants an Inoperative connector to stay so after a
reboot. The station keeps availability in memory; `AvailabilityMemory` writes what was asked
(station-wide as EVSE 0, then per EVSE; a change scheduled behind a transaction counts, since a
restart ends the transaction) whenever it changes, and gives it back to the station before
`Station.start`. Only Inoperative entries are stored: Operative is the default.
"""

from __future__ import annotations

import json
import logging

from service.station.model import Availability
from service.station.station import Station
from service.store.db import Database
from service.store.overlay import KeyValueState

log = logging.getLogger("evsed.station")

KEY = "station.availability"


class AvailabilityMemory:
    def __init__(self, db: Database, station: Station) -> None:
        self._kv = KeyValueState(db)
        self._station = station
        self._inoperative: set[int] = set()

    def restore(self) -> None:
        """Apply the stored availability (call before `Station.start`)."""
        raw = self._kv.get(KEY)
        if raw is None:
            return
        try:
            ids = json.loads(raw)
            if not isinstance(ids, list) or not all(isinstance(n, int) for n in ids):
                raise ValueError("not a list of EVSE ids")
        except ValueError as exc:
            log.warning("ignoring the stored availability %r: %s", raw, exc)
            return
        for evse_id in ids:
            if evse_id == 0 or evse_id in self._station.evses:
                self._station.restore_availability(evse_id, Availability.INOPERATIVE)
                self._inoperative.add(evse_id)
        if self._inoperative:
            log.info("inoperative since before the restart: %s", sorted(self._inoperative))

    def station_changed(self, evse_id: int) -> None:
        """The station's change callback: store the EVSE's wanted availability if it moved."""
        if evse_id != 0 and evse_id not in self._station.evses:
            return
        inoperative = self._station.wanted_availability(evse_id) is Availability.INOPERATIVE
        if inoperative == (evse_id in self._inoperative):
            return
        if inoperative:
            self._inoperative.add(evse_id)
        else:
            self._inoperative.discard(evse_id)
        self._kv.set(KEY, json.dumps(sorted(self._inoperative)))
