"""The EV side of a charging session, version-neutral: what a driver and car do at the charger
(over the D-Bus simulator), with the protocol-specific waiting left to the caller.

`rfid_session` is the scenario the 1.6 and 2.0.1 session tests share: plug in, present a card,
the car asks for energy, charges for a while, stops asking, unplugs. The `CsmsSide` passed in
says how to see, in the CSMS's record, that the transaction started, charges and ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tests.integration.conftest import evse_property, sim


@dataclass
class Ev:
    """One simulated car at one EVSE, driven over the private bus."""

    address: str
    evse_id: int = 1

    async def plug(self) -> None:
        await sim(self.address, "Plug", "u", str(self.evse_id))

    async def unplug(self) -> None:
        await sim(self.address, "Unplug", "u", str(self.evse_id))

    async def ready(self, ready: bool = True) -> None:
        await sim(self.address, "SetEvReady", "ub", str(self.evse_id), "true" if ready else "false")

    async def present(self, id_tag: str) -> None:
        await sim(self.address, "PresentRfid", "us", str(self.evse_id), id_tag)

    async def status(self) -> str:
        return await evse_property(self.address, self.evse_id, "Status")


@dataclass
class CsmsSide:
    """How the caller waits for what the CSMS sees, in its protocol version."""

    started: Callable[[], Awaitable[object]]
    charging: Callable[[], Awaitable[object]]
    ended: Callable[[], Awaitable[object]]


async def rfid_session(ev: Ev, id_tag: str, csms: CsmsSide, *, charge_s: float = 1.5) -> None:
    await ev.plug()
    await ev.present(id_tag)
    await csms.started()
    await ev.ready(True)
    await csms.charging()
    assert "Charging" in await ev.status()
    await asyncio.sleep(charge_s)
    await ev.ready(False)
    await ev.unplug()
    await csms.ended()
