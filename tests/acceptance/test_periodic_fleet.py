"""Periodic jobs with real worker processes, in real time: three workers run a
per-second schedule; the one enqueueing (the holder of shard 0) is killed with SIGKILL
and another takes over. Every tick from the first to the last has exactly one job."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import asyncpg
from acceptance_kit import POOL, SHARDS, Fleet, ring_owners, wait_for, wait_for_owners
from periodic_handlers import SCHEDULE

from jobpool.sharding import ordinal_for
from jobpool.store.pools import pool_ensure, pool_set_replicas

APP = "tests.acceptance.periodic_handlers:registry"
REPLICAS = 3
TICKS_BEFORE = 4
TICKS_AFTER = 4
FIGURES = logging.getLogger("tests.figures")


async def tick_jobs(conn: asyncpg.Connection) -> dict[datetime, int]:
    """Jobs of the schedule, finished or not, counted by tick."""
    rows = await conn.fetch(
        "SELECT run_at, count(*) AS jobs FROM ("
        " SELECT run_at, dedupe_key FROM jobs UNION ALL"
        " SELECT run_at, dedupe_key FROM job_history"
        ") j WHERE dedupe_key LIKE $1 GROUP BY run_at",
        f"periodic:{SCHEDULE}:%",
    )
    return {row["run_at"]: row["jobs"] for row in rows}


async def test_one_job_per_tick_across_replicas_and_a_crash_of_the_enqueuer(
    conn: asyncpg.Connection, fleet: Fleet
) -> None:
    await pool_ensure(conn, POOL, shards=SHARDS)
    await pool_set_replicas(conn, POOL, REPLICAS)
    procs = [fleet.start(ordinal, app=APP) for ordinal in range(REPLICAS)]
    await wait_for_owners(conn, ring_owners(procs, REPLICAS), what="the ring's leases")

    async def ticks_at_least(count: int) -> dict[datetime, int] | None:
        found = await tick_jobs(conn)
        return found if len(found) >= count else None

    before = await wait_for(
        lambda: ticks_at_least(TICKS_BEFORE), what=f"{TICKS_BEFORE} ticks", timeout=60
    )
    enqueuer = procs[ordinal_for(0, REPLICAS)]
    await enqueuer.kill9()
    killed_at = max(before)
    after = await wait_for(
        lambda: ticks_at_least(len(before) + TICKS_AFTER + 1),
        what=f"{TICKS_AFTER} more ticks after the kill",
        timeout=90,
    )

    taken_over = await conn.fetchval(
        "SELECT ordinal FROM shard_leases WHERE pool = $1 AND shard = 0", POOL
    )
    assert taken_over != enqueuer.ordinal
    first, last = min(after), max(after)
    seconds = int((last - first).total_seconds())
    every_tick = [first + timedelta(seconds=s) for s in range(seconds + 1)]
    assert sorted(after) == every_tick, "a tick without a job"
    assert set(after.values()) == {1}, "a tick with two jobs"
    assert last > killed_at
    FIGURES.info(
        "periodic: %d ticks, one job each, through a SIGKILL of the enqueuer (ordinal %d; "
        "ordinal %d took over)",
        len(after),
        enqueuer.ordinal,
        taken_over,
    )
