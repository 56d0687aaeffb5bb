"""Job history retention: partitions created ahead, dropped past retention.

``job_history`` is partitioned by day of ``finished_at`` (UTC), with a DEFAULT
partition that catches a job finishing on a day nobody created a partition for, so
finishing never fails (migration 0005 says how the table is laid out and who may touch
the partitions). :func:`history_maintain` runs one pass of maintenance in the database
(``jobpool_history_maintain``): it creates the partitions of the next
:data:`HISTORY_DAYS_AHEAD` days, moves rows out of the default partition, drops the
days past the longest retention of any pool, and deletes the rows of pools that keep
less. The operator runs it on a timer, ``jobpool dev`` by itself, and
``jobpool history prune`` on demand; it is idempotent and cheap when nothing is due.

A job's status is looked up from its id's time on (:func:`history_since`): the days
before the job existed are not probed. A job missing from history whose id is older
than what the pool's retention dropped gets :class:`~jobpool.errors.JobHistoryDropped`
rather than :class:`~jobpool.errors.JobNotFound` (:func:`job_missing`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from asyncpg import Connection

from jobpool.errors import InvalidInput, JobHistoryDropped, JobNotFound
from jobpool.ids import job_id_time
from jobpool.models import JobId
from jobpool.store import rows
from jobpool.store.pools import pool_get
from jobpool.store.queries import QUERIES
from jobpool.store.rows import HistoryPartition, HistoryPass, HistoryRetention

HISTORY_DAYS_AHEAD = 3
"""Days of partitions created ahead: maintenance may stop that long before a job
finishes into the default partition."""
DEFAULT_HISTORY_RETENTION = timedelta(days=7)
MIN_HISTORY_RETENTION = timedelta(hours=1)
MAX_HISTORY_RETENTION = timedelta(days=3650)
UUID_VERSION = 7
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CLOCK_SKEW_MARGIN = timedelta(days=1)
"""How far the submitter's clock (which stamps the job's id) may run ahead of the
database's (which stamps its finish) without its history being missed."""


def check_retention(retention: object) -> timedelta:
    """``retention`` if it is a timedelta from 1 hour to 3650 days; else ``InvalidInput``."""
    if (
        not isinstance(retention, timedelta)
        or not MIN_HISTORY_RETENTION <= retention <= MAX_HISTORY_RETENTION
    ):
        raise InvalidInput(
            f"history retention must be from 1 hour to {MAX_HISTORY_RETENTION.days} days, "
            f"got {retention!r}"
        )
    return retention


def history_since(job_id: JobId) -> datetime:
    """A lower bound of the job's finish time: its id's time less the clock skew margin
    (for a UUID that is not a version 7, which no jobpool id is, the epoch: no bound)."""
    if job_id.version != UUID_VERSION:
        return EPOCH
    return job_id_time(job_id) - CLOCK_SKEW_MARGIN


async def history_maintain(
    conn: Connection, *, days_ahead: int = HISTORY_DAYS_AHEAD, at: datetime | None = None
) -> HistoryPass:
    """One maintenance pass; ``at`` (another clock) needs the schema owner's privileges."""
    if at is None:
        row = await conn.fetchrow(*QUERIES.bind("history_maintain", days_ahead=days_ahead))
    else:
        row = await conn.fetchrow(
            *QUERIES.bind("history_maintain_at", days_ahead=days_ahead, at=at)
        )
    return rows.history_pass(row)


async def history_partition_list(conn: Connection) -> list[HistoryPartition]:
    """The partitions of ``job_history``, oldest first (the default one is not listed)."""
    found = await conn.fetch(QUERIES["history_partition_list"])
    return [rows.history_partition(row) for row in found]


async def history_retention_set(conn: Connection, pool: str, retention: timedelta) -> bool:
    """Keep the pool's finished jobs for ``retention``; returns whether it changed."""
    changed = await conn.fetchval(
        *QUERIES.bind("pool_history_retention_set", pool=pool, retention=check_retention(retention))
    )
    if changed is None:
        await pool_get(conn, pool)  # PoolNotFound if missing
    return changed is not None


async def history_retention_get(conn: Connection, pool: str) -> HistoryRetention:
    await pool_get(conn, pool)  # PoolNotFound if missing
    row = await conn.fetchrow(*QUERIES.bind("pool_history_get", pool=pool))
    return rows.history_retention(row)


async def job_missing(conn: Connection, pool: str, tenant: str, job_id: JobId) -> JobNotFound:
    """The error for a job found neither unfinished nor in history."""
    row = await conn.fetchrow(*QUERIES.bind("pool_history_get", pool=pool))
    pruned_before = None if row is None else row["history_pruned_before"]
    if (
        pruned_before is not None
        and job_id.version == UUID_VERSION
        and job_id_time(job_id) < pruned_before
    ):
        return JobHistoryDropped(
            f"job {job_id} is not in the history of pool {pool!r} for tenant {tenant!r}: "
            f"jobs that ended before {pruned_before:%Y-%m-%d %H:%M:%S %Z} were dropped "
            f"(the pool keeps finished jobs for {_span(row['history_retention'])})"
        )
    return JobNotFound(f"no job {job_id} in pool {pool!r} for tenant {tenant!r}")


def _span(retention: timedelta) -> str:
    if retention % timedelta(days=1):
        hours = retention / timedelta(hours=1)
        return f"{hours:g} hour{'s' if hours != 1 else ''}"
    return f"{retention.days} day{'s' if retention.days != 1 else ''}"
