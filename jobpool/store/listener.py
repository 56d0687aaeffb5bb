"""One LISTEN connection fanned out to any number of subscribers.

The client's ``result()`` and ``progress()`` subscribe to the pool's events channel
instead of polling; the worker subscribes to its pool's worker channel. A subscriber
gets every payload of the channel and decides whether it concerns it. If the
connection drops, every subscriber is woken with ``*`` (so it re-reads its state), the
listener reconnects in the background with backoff, and wakes everyone with ``*``
once more when it listens again: nothing sent meanwhile is missed for good.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from asyncpg import Connection

from jobpool.errors import JobpoolError
from jobpool.store import channels
from jobpool.store.connect import UNREACHABLE

log = logging.getLogger(__name__)

Connect = Callable[[], Awaitable[Connection]]


RECONNECT_BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


class EventListener:
    """Shares one LISTEN on ``channel`` between any number of subscribers."""

    def __init__(self, connect: Connect, channel: str) -> None:
        self._connect = connect
        self._channel = channel
        self._conn: Connection | None = None
        self._lock = asyncio.Lock()
        self._queues: set[asyncio.Queue[str]] = set()
        self._reconnecting: asyncio.Task[None] | None = None
        self._closed = False

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[str]]:
        """A queue of payloads, live from the moment this returns until the block ends."""
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._queues.add(queue)
        try:
            await self.listen()
            yield queue
        finally:
            self._queues.discard(queue)

    async def close(self) -> None:
        self._closed = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        async with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                await conn.close()

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def listen(self) -> None:
        """Make sure the LISTEN connection is up."""
        async with self._lock:
            if self.listening:
                return
            conn = await self._connect()
            conn.add_termination_listener(self._on_lost)
            await conn.add_listener(self._channel, self._on_notify)
            self._conn = conn
            self._closed = False

    def _broadcast(self, payload: str) -> None:
        for queue in self._queues:
            queue.put_nowait(payload)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self._broadcast(payload)

    def _on_lost(self, _conn: object) -> None:
        self._conn = None
        if self._closed:
            return
        self._broadcast(channels.ALL)
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        """Re-LISTEN with backoff, then wake everyone: notifications may have been missed."""
        for attempt in itertools.count():
            if not self._queues or self._closed:
                return
            try:
                await self.listen()
            except (JobpoolError, *UNREACHABLE) as exc:
                delay = RECONNECT_BACKOFF_S[min(attempt, len(RECONNECT_BACKOFF_S) - 1)]
                log.warning("LISTEN %s lost, reconnecting in %.2f s: %s", self._channel, delay, exc)
                await asyncio.sleep(delay)
            else:
                log.info("LISTEN %s re-established", self._channel)
                self._broadcast(channels.ALL)
                return
