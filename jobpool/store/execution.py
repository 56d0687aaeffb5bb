"""The worker's side of a job: claim, progress, retry, finish.

Every statement here is fenced by the shard lease: it only touches rows running under
the caller (``owner``) with the epoch of the caller's current lease. Claims, retries
and finishes are batched, one round trip for many jobs; a finish batch NOTIFYs the
pool's events channel once, so ``result()`` waiters wake up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from asyncpg import Connection, Record

from jobpool.models import (
    ClaimedJob,
    ErrorRecord,
    Finish,
    JobId,
    Priority,
    QueueState,
    Retry,
)
from jobpool.store import channels
from jobpool.store.queries import QUERIES
from jobpool.store.rows import claimed_job


def _error_json(error: ErrorRecord | None) -> str | None:
    return None if error is None else error.model_dump_json()


def claim_spread(wanted: int, shards: int) -> int:
    """Default bound of tenants visited, and of jobs each offers, per (shard, lane):
    twice a fair share of the want (at least 2), so a claim fills up even when the
    work sits in a few shards, and its cost stays bounded by the want, not the backlog."""
    return max(2, -(-2 * wanted // max(shards, 1)))


async def job_claim_batch(
    conn: Connection,
    pool: str,
    *,
    owner: str,
    shards: Sequence[int],
    lanes: Mapping[Priority, int],
    per_shard_limit: int | None = None,
    cursors: Mapping[Priority, str] | None = None,
    tenants_per_shard: int | None = None,
) -> list[ClaimedJob]:
    """Claim due jobs from the owner's leased shards: up to ``lanes[p]`` of each lane ``p``.

    Tenants are served round-robin: a claim visits ``tenants_per_shard`` tenants per
    shard and lane, starting after ``cursors[p]`` (move it with ``rotate_cursor``), and
    each offers at most ``per_shard_limit`` jobs per shard; both default to
    ``claim_spread``, which bounds a claim's cost whatever the backlog and tenants.
    """
    wanted = {p: n for p, n in lanes.items() if n > 0}
    if not wanted or not shards:
        return []
    cursors = cursors or {}
    spread = claim_spread(max(wanted.values()), len(shards))
    rows = await conn.fetch(
        *QUERIES.bind(
            "job_claim_batch",
            pool=pool,
            owner=owner,
            shards=list(shards),
            priorities=[p.rank for p in wanted],
            wanted=list(wanted.values()),
            cursors=[cursors.get(p, "") for p in wanted],
            per_shard_limit=per_shard_limit or spread,
            tenants_per_shard=tenants_per_shard or spread,
        )
    )
    return [claimed_job(row) for row in rows]


def rotate_cursor(cursor: str, tenants: Iterable[str]) -> str:
    """The lane cursor after a claim that served ``tenants``: the last of them in the
    claim's rotation order (those after ``cursor`` first, then the wrapped-around ones)."""
    return max(tenants, key=lambda tenant: (tenant <= cursor, tenant), default=cursor)


async def job_finish_many(
    conn: Connection, pool: str, *, owner: str, finishes: Sequence[Finish]
) -> list[JobId]:
    """End attempts for good; returns the ids actually finished (the others were fenced)."""
    if not finishes:
        return []
    ids = [f.job_id for f in finishes]
    wake = str(ids[0]) if len(ids) == 1 else channels.ALL
    rows = await conn.fetch(
        *QUERIES.bind(
            "job_finish_many",
            pool=pool,
            owner=owner,
            ids=ids,
            states=[f.state.value for f in finishes],
            results=[f.result_json for f in finishes],
            reasons=[f.reason for f in finishes],
            errors=[_error_json(f.error) for f in finishes],
            channel=channels.events_channel(pool),
            wake=wake,
        )
    )
    return [JobId(row["id"]) for row in rows]


async def job_retry_many(
    conn: Connection, pool: str, *, owner: str, retries: Sequence[Retry]
) -> list[JobId]:
    """Requeue failed attempts at their backoff time; returns the ids requeued."""
    if not retries:
        return []
    rows = await conn.fetch(
        *QUERIES.bind(
            "job_retry_many",
            pool=pool,
            owner=owner,
            ids=[r.job_id for r in retries],
            run_ats=[r.run_at for r in retries],
            errors=[r.error.model_dump_json() for r in retries],
        )
    )
    return [JobId(row["id"]) for row in rows]


async def job_progress_update(
    conn: Connection,
    pool: str,
    *,
    owner: str,
    job_id: JobId,
    fraction: float | None,
    message: str | None,
) -> bool:
    """Record a running job's progress and wake its followers; False if not ours anymore."""
    row = await conn.fetchrow(
        *QUERIES.bind(
            "job_progress_update",
            pool=pool,
            owner=owner,
            id=job_id,
            progress=fraction,
            message=message,
            channel=channels.events_channel(pool),
        ),
    )
    return row is not None


async def job_release_many(
    conn: Connection, pool: str, *, owner: str, job_ids: Sequence[JobId]
) -> list[JobId]:
    """Put claimed-but-never-started jobs back in the queue, their attempt uncounted."""
    if not job_ids:
        return []
    rows = await conn.fetch(
        *QUERIES.bind("job_release_many", pool=pool, owner=owner, ids=list(job_ids))
    )
    return [JobId(row["id"]) for row in rows]


async def job_next_due(
    conn: Connection, pool: str, *, shards: Sequence[int], lanes: Iterable[Priority]
) -> datetime | None:
    """The earliest ``run_at`` of the queued jobs of ``shards`` in ``lanes`` (possibly
    already past: a job may fall due between a claim and this look-up), or None."""
    ranks = [lane.rank for lane in lanes]
    if not shards or not ranks:
        return None
    value: datetime | None = await conn.fetchval(
        *QUERIES.bind("job_next_due", pool=pool, shards=list(shards), priorities=ranks)
    )
    return value


async def job_cancels_requested(
    conn: Connection, pool: str, *, owner: str, job_ids: Sequence[JobId]
) -> list[JobId]:
    """Which of the owner's attempts ``job_ids`` were asked to cancel (the row decides)."""
    if not job_ids:
        return []
    rows = await conn.fetch(
        *QUERIES.bind("job_cancels_requested", pool=pool, owner=owner, ids=list(job_ids))
    )
    return [JobId(row["id"]) for row in rows]


QueueDepth = dict[QueueState, dict[Priority, int]]

EXACT_DEPTH_UP_TO = 100_000
"""Queued jobs up to which ``job_queue_depth_estimate`` counts them exactly."""
SAMPLED_ROWS = 50_000
"""Rows of ``jobs`` a sampled estimate reads (a few per cent of error, some
milliseconds, where counting a million queued jobs takes a large part of a second)."""


async def job_queue_depth(conn: Connection, pool: str, *, shards: Sequence[int]) -> QueueDepth:
    """Queued jobs per state (``due``, ``scheduled``) and priority lane in ``shards``
    (every state and lane present, zeros included)."""
    rows = await conn.fetch(*QUERIES.bind("job_queue_depth", pool=pool, shards=list(shards)))
    return _depth(rows)


async def job_queue_depth_estimate(
    conn: Connection, pool: str, *, shards: Sequence[int], last_total: int | None
) -> QueueDepth:
    """``job_queue_depth``, exact while the last figure (``last_total`` queued jobs; the
    table's estimated rows when there is none yet) was at most ``EXACT_DEPTH_UP_TO``;
    above, estimated from a sample of the table's pages sized to read about
    ``SAMPLED_ROWS`` rows, whatever the backlog."""
    if last_total is not None and last_total <= EXACT_DEPTH_UP_TO:
        return await job_queue_depth(conn, pool, shards=shards)
    rows_in_table = await conn.fetchval(QUERIES["jobs_row_estimate"])
    if rows_in_table <= (EXACT_DEPTH_UP_TO if last_total is None else SAMPLED_ROWS):
        return await job_queue_depth(conn, pool, shards=shards)
    percent = min(100.0, 100.0 * SAMPLED_ROWS / rows_in_table)
    rows = await conn.fetch(
        *QUERIES.bind("job_queue_depth_sampled", pool=pool, shards=list(shards), percent=percent)
    )
    return _depth(rows)


def _depth(rows: Sequence[Record]) -> QueueDepth:
    depth = {state: dict.fromkeys(Priority, 0) for state in QueueState}
    for row in rows:
        state = QueueState.DUE if row["due"] else QueueState.SCHEDULED
        depth[state][Priority.from_rank(row["priority"])] = row["queued"]
    return depth


async def jobs_ensure_statistics(conn: Connection) -> bool:
    """ANALYZE ``jobs`` if it never was (a new database whose backlog arrived before
    autovacuum's first visit): without statistics the claim plans rest on guesses.
    Returns whether it analyzed."""
    if not await conn.fetchval(QUERIES["jobs_statistics_missing"]):
        return False
    await conn.execute(QUERIES["jobs_analyze"])
    return True
