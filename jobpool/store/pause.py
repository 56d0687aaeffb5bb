"""Pausing a pool or some of its job types; parking the jobs of paused types.

Design (migration 0007 holds the SQL side):

* The pause lives in the pool's row (``pools.paused``, ``pools.paused_types``). A
  change takes the pool's pause lock, writes the row, moves the parked jobs of the
  types no longer paused back to the queue, and NOTIFYs the pool's worker channel with
  ``ring`` (workers re-read the pool's row), all in one transaction.
* Types are never filtered in the claim (a paused type's backlog would be scanned by
  every claim). A worker parks the jobs of paused types it claimed
  (:func:`job_park_many`): they move to the state ``paused``, outside the claim index,
  their attempt uncounted, so each is claimed at most once per pause.
* Parking holds the pause lock shared and re-reads the pause under it: a job is parked
  only under a pause still in force, and every resume sees the jobs parked before it.
* Pausing needs ``jobpool_operator`` (or the owner): clients and workers cannot.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
from asyncpg import Connection
from pydantic import BaseModel, ConfigDict

from jobpool.errors import AccessDenied, InvalidInput
from jobpool.models import JobId, PoolPause, check_job_type
from jobpool.store import channels
from jobpool.store.pools import pool_not_found
from jobpool.store.queries import QUERIES
from jobpool.store.rows import pool_pause

MAX_PAUSED_TYPES = 256
"""Most job types one pool may have paused at once (a CHECK of ``pools`` too)."""


class PauseChange(BaseModel):
    """A pool's pause after a change, and how many parked jobs it sent back to the queue."""

    model_config = ConfigDict(frozen=True)

    pause: PoolPause
    unparked: int


async def pool_pause_change(
    conn: Connection,
    pool: str,
    *,
    paused: bool | None = None,
    types: Sequence[str] | None = None,
    add: Sequence[str] = (),
    remove: Sequence[str] = (),
) -> PauseChange:
    """Change the pool's pause: ``paused`` (None: unchanged); the paused types become
    ``types`` (None: the current ones) plus ``add``, less ``remove``. Parked jobs of the
    types no longer paused are queued again; the pool's workers are woken."""
    for job_type in [*(types or ()), *add, *remove]:
        check_job_type(job_type)
    try:
        async with conn.transaction():
            row = await _update(conn, pool, paused, types, add, remove)
            unparked = await conn.fetchval(*QUERIES.bind("job_unpark", pool=pool))
            await conn.execute(
                *QUERIES.bind(
                    "job_notify", channel=channels.worker_channel(pool), payload=channels.RING
                )
            )
    except asyncpg.InsufficientPrivilegeError:
        raise AccessDenied(
            "the database role may not pause or resume pools: it needs jobpool_operator "
            "(`jobpool grant ROLE operator`)"
        ) from None
    return PauseChange(pause=pool_pause(row), unparked=unparked)


async def _update(
    conn: Connection,
    pool: str,
    paused: bool | None,
    types: Sequence[str] | None,
    add: Sequence[str],
    remove: Sequence[str],
) -> asyncpg.Record:
    """Take the pool's pause lock and write its row; the row's new pause."""
    await conn.execute(*QUERIES.bind("pool_pause_lock", pool=pool))
    try:
        row = await conn.fetchrow(
            *QUERIES.bind(
                "pool_pause_update",
                pool=pool,
                paused=paused,
                types=None if types is None else list(types),
                add=list(add),
                remove=list(remove),
            ),
        )
    except asyncpg.CheckViolationError:
        raise InvalidInput(
            f"pool {pool!r} may have at most {MAX_PAUSED_TYPES} job types paused"
        ) from None
    if row is None:
        raise pool_not_found(pool)
    return row


async def job_park_many(
    conn: Connection, pool: str, *, owner: str, job_ids: Sequence[JobId]
) -> list[JobId]:
    """Park the owner's claimed, never started ``job_ids`` whose type is paused now;
    returns those parked (the others: their type was resumed meanwhile, or a cancel
    was requested — the worker keeps them)."""
    if not job_ids:
        return []
    rows = await conn.fetch(
        *QUERIES.bind("job_park_many", pool=pool, owner=owner, ids=list(job_ids))
    )
    return [JobId(row["id"]) for row in rows]


async def job_parked_counts(conn: Connection, pool: str) -> dict[str, int]:
    """Parked jobs of the pool per job type (types with none are absent)."""
    rows = await conn.fetch(*QUERIES.bind("job_parked_counts", pool=pool))
    return {row["type"]: row["jobs"] for row in rows}
