"""The periodic service: enqueue the jobs of the pool's schedules at their ticks.

Every worker has one; only the holder of shard 0's lease runs it (``active``), so one
worker of the pool does the work and the others stay idle. Which one it is does not
matter for correctness: ``store.schedules.schedule_enqueue`` moves a schedule's last
tick forward with a compare-and-set in the statement that inserts the tick's job, so
two services running at once (during a lease handover) still enqueue each tick once.

Each step, ``run_once(now)``:

1. at its first active step and then every ``SYNC_INTERVAL_S``, declares the handler
   module's schedules (``@registry.periodic``) as the pool's ``code`` schedules — the
   module of the worker running the service defines them;
2. reads the pool's schedules (spec ones included) and enqueues each one's due ticks
   (``jobpool.cron.due_ticks``: the latest missed tick only, unless ``catch_up``).

Then ``step`` sleeps until the next tick of any schedule, at most ``REFRESH_S`` (a
schedule added to the spec is seen within it). The clock is injected: tests call
``run_once`` with the times they choose.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import asyncpg

from jobpool.cron import Schedule, due_ticks
from jobpool.store import pools
from jobpool.store.schedules import (
    EnqueuedTick,
    ScheduleRow,
    ScheduleSource,
    schedule_enqueue,
    schedule_list,
    schedule_sync,
)

log = logging.getLogger(__name__)

REFRESH_S = 5.0
"""Longest sleep between two reads of the schedules."""
INACTIVE_POLL_S = 1.0
"""How often a worker not holding shard 0 checks whether it took it."""
MIN_SLEEP_S = 0.01
SYNC_INTERVAL_S = 60.0
"""How often the active service declares its module's schedules again (a spec schedule
that overrode one of them and went away is back within this)."""

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class PeriodicService:
    """Enqueues the ticks of ``pool``'s schedules while ``active()`` says so."""

    def __init__(
        self,
        conns: asyncpg.Pool,
        *,
        pool: str,
        declared: Sequence[Schedule],
        active: Callable[[], bool],
        clock: Clock = utc_now,
    ) -> None:
        self._conns = conns
        self._pool = pool
        self._declared = list(declared)
        self._active = active
        self._clock = clock
        self._shards: int | None = None
        self._synced_at: datetime | None = None
        self.schedules: list[ScheduleRow] = []

    async def run_once(self, now: datetime) -> list[EnqueuedTick]:
        """Enqueue what is due at ``now``; return the ticks this call enqueued."""
        if not self._active():
            self._synced_at = None  # declare again when this worker takes over
            return []
        enqueued: list[EnqueuedTick] = []
        async with self._conns.acquire() as conn:
            if self._shards is None:
                self._shards = (await pools.pool_get(conn, self._pool)).shards
            if self._sync_due(now):
                await schedule_sync(conn, self._pool, ScheduleSource.CODE, self._declared)
                self._synced_at = now
            self.schedules = await schedule_list(conn, self._pool)
            for row in self.schedules:
                ticks = due_ticks(row.schedule, after=row.after, now=now)
                done = await schedule_enqueue(
                    conn, self._pool, row.schedule.name, ticks, shards=self._shards
                )
                for tick in done:
                    log.debug("schedule %s: tick %s enqueued", tick.schedule, tick.tick)
                enqueued += done
        return enqueued

    def _sync_due(self, now: datetime) -> bool:
        synced = self._synced_at
        return synced is None or (now - synced).total_seconds() >= SYNC_INTERVAL_S

    def delay_s(self, now: datetime) -> float:
        """How long to sleep after a step at ``now``: until the next tick of any schedule."""
        if not self._active():
            return INACTIVE_POLL_S
        delay = REFRESH_S
        for row in self.schedules:
            upcoming = row.schedule.next_tick(now)
            if upcoming is not None:
                delay = min(delay, (upcoming - now).total_seconds())
        return max(MIN_SLEEP_S, delay)

    async def step(self) -> None:
        """One iteration of the worker's loop: enqueue what is due, sleep until more is."""
        now = self._clock()
        await self.run_once(now)
        await asyncio.sleep(self.delay_s(now))
