"""Pool-wide figures for the operator's status projection (read-only, no locks).

Each figure is one cheap statement served by an index that matches it:

* the oldest due queued job: one probe of ``jobs_due_idx`` per shard and lane (``4S`` probes,
  whatever the backlog), since a plain ``min(run_at)`` over the pool would read every
  queued row;
* jobs finished in a recent window: a range of ``job_history_finished_idx``;
* dead letters in a recent window: the pool's pending entries (the partial index of
  unreplayed entries keeps them few unless the DLQ is neglected).

The queue depth by state and priority is ``workers.pool_queue_counts``.
"""

from __future__ import annotations

from datetime import datetime

from asyncpg import Connection

from jobpool.errors import InvalidInput
from jobpool.store.queries import QUERIES


async def db_now(conn: Connection) -> datetime:
    """The database's clock, which stamps heartbeats: ages measured on it ignore pod skew."""
    now: datetime = await conn.fetchval(QUERIES["db_now"])
    return now


def _check_window(window_s: float) -> float:
    if not window_s > 0:
        raise InvalidInput(f"the window must be positive, got {window_s} s")
    return float(window_s)


async def pool_oldest_queued_seconds(conn: Connection, pool: str) -> float:
    """How long the oldest due (``run_at`` passed) queued job has waited; 0 when none."""
    age = await conn.fetchval(*QUERIES.bind("pool_oldest_queued_seconds", pool=pool))
    return max(0.0, float(age)) if age is not None else 0.0


async def pool_finished_count(conn: Connection, pool: str, *, window_s: float) -> int:
    """Jobs that ended succeeded or dead in the last ``window_s`` seconds."""
    return int(
        await conn.fetchval(
            *QUERIES.bind("pool_finished_count", pool=pool, window_s=_check_window(window_s))
        )
    )


async def dlq_count_recent(conn: Connection, pool: str, *, window_s: float) -> int:
    """Unreplayed dead letters of the pool written in the last ``window_s`` seconds."""
    return int(
        await conn.fetchval(
            *QUERIES.bind("dlq_count_recent", pool=pool, window_s=_check_window(window_s))
        )
    )
