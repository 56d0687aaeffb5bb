"""One LISTEN connection per client, fanned out to the coroutines waiting on jobs.

``result()`` and ``progress()`` subscribe here instead of polling. A subscriber gets
every payload of the pool's events channel (a job id, or ``*`` for a batch) and
re-reads its job when the payload may concern it. If the connection drops, every
subscriber is woken with ``*`` (so it re-reads, and misses nothing) and the next
subscription reconnects.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from asyncpg import Connection

from jobpool.store import channels

Connect = Callable[[], Awaitable[Connection]]


class EventListener:
    """Shares one LISTEN on ``channel`` between any number of subscribers."""

    def __init__(self, connect: Connect, channel: str) -> None:
        self._connect = connect
        self._channel = channel
        self._conn: Connection | None = None
        self._lock = asyncio.Lock()
        self._queues: set[asyncio.Queue[str]] = set()

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[str]]:
        """A queue of payloads, live from the moment this returns until the block ends."""
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._queues.add(queue)
        try:
            await self._ensure_listening()
            yield queue
        finally:
            self._queues.discard(queue)

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                await conn.close()

    async def _ensure_listening(self) -> None:
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return
            conn = await self._connect()
            conn.add_termination_listener(self._on_lost)
            await conn.add_listener(self._channel, self._on_notify)
            self._conn = conn

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        for queue in self._queues:
            queue.put_nowait(payload)

    def _on_lost(self, _conn: object) -> None:
        self._conn = None
        for queue in self._queues:
            queue.put_nowait(channels.ALL)
