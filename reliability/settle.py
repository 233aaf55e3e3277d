"""Waiting for a running daemon to deliver everything it holds, and reading its queue live."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

from reliability.common import STATION_IFACE, STATION_PATH, DbusClient, DbusError


async def drained(client: DbusClient, *, timeout: float, quiet_s: float = 1.5) -> bool:
    """True once the daemon is registered and its queue has stayed empty for `quiet_s`."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    empty_since: float | None = None
    while loop.time() < end:
        try:
            queued = await client.prop(STATION_PATH, STATION_IFACE, "QueuedMessages")
            registration = await client.prop(STATION_PATH, STATION_IFACE, "Registration")
        except (DbusError, TimeoutError):
            queued, registration = -1, ""
        if queued == 0 and registration == "Accepted":
            empty_since = empty_since if empty_since is not None else loop.time()
            if loop.time() - empty_since >= quiet_s:
                return True
        else:
            empty_since = None
        await asyncio.sleep(0.2)
    return False


def live_queue_ids(state: Path) -> set[str]:
    """Message ids in the running daemon's queue (a WAL reader never blocks the writer)."""
    path = state / "evsed.db"
    if not path.exists():
        return set()
    with contextlib.suppress(sqlite3.Error):
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
        try:
            return {r[0] for r in connection.execute("SELECT message_id FROM outbound_queue")}
        finally:
            connection.close()
    return set()


async def sample_queue(state: Path, into: set[str], stop: asyncio.Event, every: float) -> None:
    """Collect every id seen in the queue until `stop` is set."""
    while not stop.is_set():
        into.update(await asyncio.to_thread(live_queue_ids, state))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
