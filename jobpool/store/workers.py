"""Worker rows (heartbeats, owned shards, counters) and pool-wide figures."""

from __future__ import annotations

from collections.abc import Sequence

from asyncpg import Connection

from jobpool.models import JobState, Priority
from jobpool.store import rows
from jobpool.store.queries import QUERIES
from jobpool.store.rows import WorkerCounters, WorkerRow

LIVE_HEARTBEAT_S = 30.0
"""Twice the workers' default lease TTL: a row with an older heartbeat is a dead worker's
(what the CLI and ``jobpool dev`` call live; the operator judges by the spec's TTL)."""


async def worker_heartbeat(
    conn: Connection,
    pool: str,
    *,
    ordinal: int,
    incarnation: str,
    shards: Sequence[int],
    counters: WorkerCounters,
) -> None:
    await conn.execute(
        *QUERIES.bind(
            "worker_heartbeat",
            pool=pool,
            ordinal=ordinal,
            incarnation=incarnation,
            shards=sorted(shards),
            running=counters.running,
            succeeded=counters.succeeded,
            failed=counters.failed,
        ),
    )


async def worker_remove(conn: Connection, pool: str, *, ordinal: int, incarnation: str) -> None:
    await conn.execute(
        *QUERIES.bind("worker_remove", pool=pool, ordinal=ordinal, incarnation=incarnation)
    )


async def worker_list(conn: Connection, pool: str) -> list[WorkerRow]:
    found = await conn.fetch(*QUERIES.bind("worker_list", pool=pool))
    return [rows.worker_row(row) for row in found]


async def pool_queue_counts(conn: Connection, pool: str) -> dict[JobState, dict[Priority, int]]:
    """Unfinished jobs of the pool by state and priority: ``queued`` counts due jobs only
    (``run_at`` passed), not those delayed or backing off before a retry; ``paused``
    counts the jobs parked while their type is paused."""
    states = (JobState.QUEUED, JobState.WAITING, JobState.PAUSED, JobState.RUNNING)
    counts = {state: dict.fromkeys(Priority, 0) for state in states}
    for row in await conn.fetch(*QUERIES.bind("pool_queue_counts", pool=pool)):
        counts[JobState(row["state"])][Priority.from_rank(row["priority"])] = row["jobs"]
    return counts
