"""Batched writes of attempt outcomes.

Handlers hand their outcomes to ``add`` and move on; one writer task turns everything
that accumulated into one ``job_finish_many`` and one ``job_retry_many`` round trip.
When no other attempt is running, an outcome is written at once. While others run,
their outcomes are on their way: the writer waits for them up to ``LINGER_S`` (or until
a batch is full) — under load a write then carries a hundred outcomes rather than a
few dozen, which halves the round trips and the commits per job, at the price of at
most ``LINGER_S`` before a finished job shows as finished. No per-job round trip.

A write that fails (the database is down) loses nothing: the batch goes back in front
and ``step`` raises, so the worker's loop runner backs off as for every other loop
(growing delays, one line per retry); the first failure of a streak is logged once
with its traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable

import asyncpg

from jobpool.models import Finish, JobId, Retry, ShardId
from jobpool.store import execution
from jobpool.worker.executor import Outcome

log = logging.getLogger(__name__)

OnWritten = Callable[[list[Outcome], set[JobId]], None]
"""Called after each write with the batch and the ids the database accepted."""

LINGER_S = 0.01
"""Longest wait for the outcomes of the attempts still running to join a write."""


class Completer:
    def __init__(
        self,
        conns: asyncpg.Pool,
        *,
        pool: str,
        owner: str,
        batch: int,
        on_written: OnWritten,
        running: Callable[[], int],
    ) -> None:
        self._conns = conns
        self._running = running  # attempts still running, whose outcomes may join a write
        self._pool = pool
        self._owner = owner
        self._batch = batch
        self._on_written = on_written
        self._pending: list[tuple[Outcome, ShardId]] = []
        self._unwritten: Counter[ShardId] = Counter()
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()  # a batch's worth came while the writer waited
        self._idle = asyncio.Event()
        self._idle.set()
        self._failing = False

    def add(self, outcome: Outcome, *, shard: ShardId) -> None:
        self._pending.append((outcome, shard))
        self._unwritten[shard] += 1
        self._idle.clear()
        self._arrived.set()
        if len(self._pending) >= self._batch:
            self._full.set()

    def unwritten(self, shard: ShardId) -> int:
        """Outcomes of ``shard`` not written yet: its lease must be kept until they are."""
        return self._unwritten[shard]

    async def step(self) -> None:
        """Wait for outcomes, then write one batch. A failed write raises after putting
        its batch back: the caller's loop backs off and calls again."""
        await self._arrived.wait()
        if len(self._pending) < self._batch and self._running():
            self._full.clear()  # set again by the add that fills a batch
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LINGER_S):
                    await self._full.wait()
        await self.run_once()

    async def run_once(self) -> None:
        batch, self._pending = self._pending[: self._batch], self._pending[self._batch :]
        if not self._pending:
            self._arrived.clear()
        if not batch:
            self._idle.set()
            return
        outcomes = [outcome for outcome, _ in batch]
        try:
            accepted = await self._write(outcomes)
        except Exception:  # whatever went wrong, the outcomes must not be lost
            self._pending[:0] = batch
            self._arrived.set()
            if not self._failing:  # the first failure of a streak: its traceback, once
                log.exception("writing %d outcomes failed; retrying with backoff", len(batch))
            self._failing = True
            raise
        self._failing = False
        self._unwritten.subtract(shard for _, shard in batch)
        self._on_written(outcomes, accepted)
        if not self._pending:
            self._idle.set()

    async def drained(self) -> None:
        """Wait until every outcome added so far is written."""
        await self._idle.wait()

    async def _write(self, batch: list[Outcome]) -> set[JobId]:
        finishes = [o for o in batch if isinstance(o, Finish)]
        retries = [o for o in batch if isinstance(o, Retry)]
        async with self._conns.acquire() as conn:
            done = await execution.job_finish_many(
                conn, self._pool, owner=self._owner, finishes=finishes
            )
            requeued = await execution.job_retry_many(
                conn, self._pool, owner=self._owner, retries=retries
            )
        return set(done) | set(requeued)
