"""Periodic schedules in Postgres: their definitions, and the exactly-once enqueue of ticks.

The ``schedules`` table (migration ``0004_periodic.sql``) holds, per pool and schedule
name, the definition and the last enqueued tick. Two writers declare definitions, each
for its own ``source``: the operator from the JobPool spec (``spec``) and the worker
that runs the periodic service from its handler module (``code``); a spec schedule
overrides a code schedule of the same name. :func:`schedule_sync` makes a source's rows
exactly its list.

:func:`schedule_enqueue` is the only way a tick becomes a job: one statement moves
``last_tick`` forward with a compare-and-set and inserts the ticks' jobs, so concurrent
enqueuers (replicas, a lease handover) enqueue each tick once, and a tick whose job has
already finished is not enqueued again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from asyncpg import Connection
from pydantic import BaseModel, ConfigDict

from jobpool.cron import Schedule, tick_key
from jobpool.ids import new_job_ids
from jobpool.models import JobId
from jobpool.sharding import shard_for
from jobpool.store import channels
from jobpool.store.queries import QUERIES
from jobpool.store.rows import ScheduleRow, ScheduleSource, schedule_row

# The row models live with the other converters (rows.py); callers import them from here.
__all__ = [
    "EnqueuedTick",
    "ScheduleRow",
    "ScheduleSource",
    "schedule_enqueue",
    "schedule_list",
    "schedule_sync",
]


class EnqueuedTick(BaseModel):
    """A tick this call enqueued, and its job."""

    model_config = ConfigDict(frozen=True)

    schedule: str
    tick: datetime
    job_id: JobId


async def schedule_list(conn: Connection, pool: str) -> list[ScheduleRow]:
    """The pool's schedules, by name."""
    return [
        schedule_row(row) for row in await conn.fetch(*QUERIES.bind("schedule_list", pool=pool))
    ]


async def schedule_sync(
    conn: Connection, pool: str, source: ScheduleSource, schedules: Sequence[Schedule]
) -> None:
    """Make ``source``'s schedules of ``pool`` exactly ``schedules`` (one transaction).

    Unchanged rows are not written; a changed cron or time zone restarts the schedule
    (its past ticks never fire); a code schedule never replaces a spec one.
    """
    async with conn.transaction():
        await conn.execute(
            *QUERIES.bind(
                "schedule_upsert_many",
                pool=pool,
                source=source.value,
                names=[s.name for s in schedules],
                crons=[s.cron for s in schedules],
                timezones=[s.timezone for s in schedules],
                tenants=[s.tenant for s in schedules],
                types=[s.type for s in schedules],
                priorities=[s.priority.rank for s in schedules],
                payloads=[json.dumps(s.payload) for s in schedules],
                catch_ups=[s.catch_up for s in schedules],
            ),
        )
        await conn.execute(
            *QUERIES.bind(
                "schedule_delete_missing",
                pool=pool,
                source=source.value,
                names=[s.name for s in schedules],
            )
        )


async def schedule_enqueue(
    conn: Connection, pool: str, name: str, ticks: Sequence[datetime], *, shards: int
) -> list[EnqueuedTick]:
    """Enqueue ``ticks`` (ascending) of schedule ``name`` unless another enqueuer already
    moved past the first of them; return the ticks enqueued (all of them, or none).

    Each job is due at its tick, keyed ``periodic:<name>:<tick>`` (its dedupe key, which
    also routes it to a shard).
    """
    if not ticks:
        return []
    keys = [tick_key(name, tick) for tick in ticks]
    job_shards = [shard_for(key, shards) for key in keys]
    rows = await conn.fetch(
        *QUERIES.bind(
            "schedule_enqueue",
            pool=pool,
            name=name,
            last_tick=ticks[-1],
            first_tick=ticks[0],
            ids=new_job_ids(len(ticks)),
            shards=job_shards,
            dedupe_keys=keys,
            run_ats=list(ticks),
            channel=channels.worker_channel(pool),
            shards_woken=channels.shards_payload(job_shards),
        ),
    )
    return [EnqueuedTick(schedule=name, tick=row["run_at"], job_id=row["id"]) for row in rows]
