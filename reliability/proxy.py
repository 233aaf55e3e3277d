"""A fault-injecting TCP proxy (asyncio) for the link between evsed and the CSMS.

Listens on 127.0.0.1, forwards each connection to the target, and while `faults` is on, a
controller picks random faults for the live connections and for new ones:

* drop      — abort both sides (RST), mid-conversation;
* close     — close both sides cleanly (FIN);
* stall     — stop forwarding for 1-8 s (both ways), then go on (ping/call timeouts fire);
* delay     — hold every chunk 50-800 ms for a while (order kept);
* cut       — forward only the first part of the next chunk in one direction, then abort:
              a websocket frame cut mid-way;
* blackhole — accept new connections for a while, forward nothing, then drop them;
* refuse    — close new connections at once for a while.

`calm()` turns faults off; what is in flight continues normally.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter


class _Link:
    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.client = client
        self.server = server
        self.resume = asyncio.Event()
        self.resume.set()
        self.delay = 0.0
        self.cut: dict[str, bool] = {"up": False, "down": False}
        self.closed = asyncio.Event()

    def abort(self) -> None:
        for _, writer in (self.client, self.server):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self.closed.set()

    def close(self) -> None:
        for _, writer in (self.client, self.server):
            with contextlib.suppress(Exception):
                writer.close()
        self.closed.set()


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, rng: random.Random) -> None:
        self.target = (target_host, target_port)
        self.rng = rng
        self.faults_on = False
        self.counts: Counter[str] = Counter()
        self.connections = 0
        self.bytes = {"up": 0, "down": 0}
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        self._controller: asyncio.Task[None] | None = None
        self._refuse_until = 0.0
        self._blackhole_until = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self._controller = asyncio.create_task(self._control())

    async def stop(self) -> None:
        if self._controller is not None:
            self._controller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._controller
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for link in list(self._links):
            link.abort()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    def calm(self) -> None:
        """No more faults; links stalled or delayed go back to normal."""
        self.faults_on = False
        self._refuse_until = self._blackhole_until = 0.0
        for link in self._links:
            link.delay = 0.0
            link.cut = {"up": False, "down": False}
            link.resume.set()

    def drop_all(self) -> None:
        for link in list(self._links):
            link.abort()

    # ------------------------------------------------------------------ connections
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        self.connections += 1
        if self.faults_on and loop.time() < self._refuse_until:
            self.counts["refused-connection"] += 1
            writer.transport.abort()
            return
        try:
            server = await asyncio.wait_for(asyncio.open_connection(*self.target), 5)
        except (OSError, TimeoutError):
            writer.transport.abort()
            return
        link = _Link((reader, writer), server)
        self._links.add(link)
        if self.faults_on and loop.time() < self._blackhole_until:
            self.counts["blackholed-connection"] += 1
            link.resume.clear()
            self._spawn(self._later(self._blackhole_until - loop.time(), link.abort))
        up = self._spawn(self._pump(link, reader, server[1], "up"))
        down = self._spawn(self._pump(link, server[0], writer, "down"))
        try:
            await link.closed.wait()
        finally:
            link.abort()
            self._links.discard(link)
            for task in (up, down):
                task.cancel()

    def _spawn(self, coroutine: object) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _later(self, delay: float, action: object) -> None:
        await asyncio.sleep(max(0.0, delay))
        action()  # type: ignore[operator]

    async def _pump(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, way: str
    ) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    link.close()
                    return
                await link.resume.wait()
                if link.delay:
                    await asyncio.sleep(link.delay)
                if link.cut[way] and len(data) > 1:
                    link.cut[way] = False
                    writer.write(data[: self.rng.randint(1, len(data) - 1)])
                    with contextlib.suppress(Exception):
                        await writer.drain()
                    self.counts[f"cut-{way}"] += 1
                    link.abort()
                    return
                writer.write(data)
                self.bytes[way] += len(data)
                await writer.drain()
        except (ConnectionError, OSError):
            link.abort()
        except asyncio.CancelledError:
            raise

    # ------------------------------------------------------------------ faults
    async def _control(self) -> None:
        loop = asyncio.get_running_loop()
        rng = self.rng
        while True:
            await asyncio.sleep(rng.uniform(1.0, 6.0))
            if not self.faults_on:
                continue
            fault = rng.choices(
                ("drop", "close", "stall", "delay", "cut", "blackhole", "refuse", "none"),
                weights=(3, 1, 2, 2, 3, 1, 1, 2),
            )[0]
            links = list(self._links)
            if fault == "none":
                continue
            if fault in ("blackhole", "refuse"):
                until = loop.time() + rng.uniform(1.0, 6.0)
                if fault == "blackhole":
                    self._blackhole_until = until
                else:
                    self._refuse_until = until
                self.counts[fault] += 1
                if fault == "refuse":
                    for link in links:  # make the daemon come back to a refusing proxy
                        link.abort()
                continue
            if not links:
                continue
            link = rng.choice(links)
            self.counts[fault] += 1
            if fault == "drop":
                link.abort()
            elif fault == "close":
                link.close()
            elif fault == "stall":
                link.resume.clear()
                self._spawn(self._later(rng.uniform(1.0, 8.0), link.resume.set))
            elif fault == "delay":
                link.delay = rng.uniform(0.05, 0.8)
                self._spawn(self._later(rng.uniform(2.0, 10.0), lambda lk=link: _undelay(lk)))
            elif fault == "cut":
                link.cut[rng.choice(("up", "down"))] = True


def _undelay(link: _Link) -> None:
    link.delay = 0.0
