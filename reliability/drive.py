"""Random charging activity on the simulated EVSEs, through the daemon's D-Bus Simulator1
interface and CSMS-initiated calls (ChangeConfiguration, RemoteStart/StopTransaction).

Every action is one bounded call; a refusal (InvalidState, a CSMS call that times out because
the link is down, a daemon that was just killed) is counted and is not a failure here — the
checks are on what reaches the CSMS.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

from reliability.common import CHARGE_POINT_ID, DbusClient, DbusError
from testcsms.server import TestCsms

#: (key, candidate values) for CSMS ChangeConfiguration calls during sessions.
CONFIG_CHANGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("MeterValueSampleInterval", ("1", "2", "3", "5")),
    ("ClockAlignedDataInterval", ("0", "0", "2", "5")),
    ("HeartbeatInterval", ("5", "10", "30", "60")),
    (
        "MeterValuesSampledData",
        (
            "Energy.Active.Import.Register",
            "Energy.Active.Import.Register,Power.Active.Import",
            "Energy.Active.Import.Register,Current.Import,Voltage",
        ),
    ),
    ("StopTxnSampledData", ("", "Energy.Active.Import.Register")),
    ("ConnectionTimeOut", ("5", "30", "60")),
    ("LocalAuthorizeOffline", ("true", "false")),
    ("MinimumStatusDuration", ("0", "0", "1")),
)

TOKENS = ("CARD-A", "CARD-B", "CARD-C", "04A2B3C4")


class Driver:
    def __init__(
        self,
        client: DbusClient,
        csms: TestCsms,
        rng: random.Random,
        evses: int = 2,
        *,
        link_control: bool = True,
        remote: bool = True,
    ) -> None:
        self.client = client
        self.csms = csms
        self.rng = rng
        self.evses = evses
        self.link_control = link_control
        self.remote = remote
        self.actions: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.last = "idle"
        self.offline = False

    async def _sim(self, name: str, member: str, signature: str = "", *args: Any) -> bool:
        self.last = name
        self.actions[name] += 1
        try:
            await self.client.call(
                "/org/evsed/Simulator", "org.evsed.Simulator1", member, signature, *args, timeout=5
            )
            return True
        except (DbusError, TimeoutError) as exc:
            self.refused[f"{name}:{getattr(exc, 'name', 'Timeout')}"] += 1
            return False

    async def _csms(self, name: str, action: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        self.last = name
        self.actions[name] += 1
        try:
            return await self.csms.call(CHARGE_POINT_ID, action, payload, timeout=3)
        except Exception as exc:
            self.refused[f"{name}:{type(exc).__name__}"] += 1
            return None

    async def plug(self, evse: int) -> bool:
        return await self._sim("plug", "Plug", "u", evse)

    async def unplug(self, evse: int) -> bool:
        return await self._sim("unplug", "Unplug", "u", evse)

    async def ready(self, evse: int, ready: bool = True) -> bool:
        return await self._sim("ev-ready", "SetEvReady", "ub", evse, ready)

    async def token(self, evse: int, tag: str | None = None) -> bool:
        return await self._sim("token", "PresentRfid", "us", evse, tag or self.rng.choice(TOKENS))

    async def link(self, up: bool) -> bool:
        ok = await self._sim(
            "link-up" if up else "link-down", "WebsocketConnect" if up else "WebsocketDisconnect"
        )
        if ok:
            self.offline = not up
        return ok

    async def change_configuration(self) -> None:
        key, values = self.rng.choice(CONFIG_CHANGES)
        await self._csms(
            "change-configuration",
            "ChangeConfiguration",
            {"key": key, "value": self.rng.choice(values)},
        )

    async def remote_start(self) -> None:
        await self._csms(
            "remote-start",
            "RemoteStartTransaction",
            {"connectorId": self.rng.randint(1, self.evses), "idTag": self.rng.choice(TOKENS)},
        )

    async def remote_stop(self) -> None:
        # A recent transaction id the CSMS handed out (it may already be stopped).
        top = self.csms.next_transaction_id - 1
        if top < 1:
            return
        await self._csms(
            "remote-stop",
            "RemoteStopTransaction",
            {"transactionId": self.rng.randint(max(1, top - 3), top)},
        )

    async def random_action(self) -> None:
        rng = self.rng
        evse = rng.randint(1, self.evses)
        roll = rng.random()
        if roll < 0.20:
            await self.plug(evse)
            if rng.random() < 0.7:
                await self.ready(evse, True)
        elif roll < 0.40:
            await self.token(evse)
        elif roll < 0.55:
            await self.unplug(evse)
        elif roll < 0.62:
            await self.ready(evse, rng.random() < 0.6)
        elif roll < 0.74:
            await self.change_configuration()
        elif roll < 0.80 and self.remote:
            await self.remote_start()
        elif roll < 0.85 and self.remote:
            await self.remote_stop()
        elif roll < 0.95 and self.link_control:
            await self.link(self.offline)  # toggles: offline periods make the queue grow
        else:
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            self.last = "idle"

    async def session_cycle(self, evse: int, charge_s: float, idle_s: float) -> None:
        """One whole session: plug, EV ready, card, charge, unplug, rest."""
        await self.plug(evse)
        await self.ready(evse, True)
        await self.token(evse)
        await asyncio.sleep(charge_s)
        await self.unplug(evse)
        await asyncio.sleep(idle_s)

    async def settle(self) -> None:
        """End every session: link up, every EV unplugged."""
        if self.link_control:
            await self.link(True)
        for evse in range(1, self.evses + 1):
            await self.unplug(evse)
