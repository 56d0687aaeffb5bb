"""Shard leases: who may claim from and complete jobs of a shard, fenced by an epoch.

A worker takes the leases of the shards the ring gives its ordinal, renews them with
its heartbeat and releases them after draining. Taking a lease bumps its epoch; every
claim and completion joins ``shard_leases`` on (owner, epoch), so a worker that lost a
shard can no longer write to its jobs. Attempts left ``running`` in a freshly taken
shard belong to a previous owner and are requeued in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from asyncpg import Connection

from jobpool.models import ShardId
from jobpool.store import channels, rows
from jobpool.store.queries import QUERIES
from jobpool.store.rows import LeaseRecord

LEASE_HISTORY_KEPT_S = 7 * 24 * 3600.0
"""How long a shard's lease history is kept (its takes prune what is older)."""


class Orphans(NamedTuple):
    """Shards free or expired past the grace period, and the pool's live ordinals."""

    shards: list[ShardId]
    live: list[int]


async def lease_take(
    conn: Connection,
    pool: str,
    *,
    owner: str,
    ordinal: int,
    shards: Sequence[int],
    ttl_s: float,
    supersede: bool = False,
    adopt: bool = False,
) -> dict[ShardId, int]:
    """Take what can be taken of ``shards``; returns ``{shard: epoch}`` of those taken.

    ``supersede`` (a worker's first take after it starts) also takes the live leases
    of an earlier incarnation of the same ordinal. ``adopt`` records the take as an
    adoption of orphans (shards of an ordinal that is missing) in the lease history.
    """
    if not shards:  # the steady state of every heartbeat: no round trips for nothing
        return {}
    async with conn.transaction():
        rows = await conn.fetch(
            *QUERIES.bind(
                "lease_take",
                pool=pool,
                owner=owner,
                ordinal=ordinal,
                shards=list(shards),
                ttl_s=ttl_s,
                supersede=supersede,
                adopt=adopt,
                history_kept_s=LEASE_HISTORY_KEPT_S,
            ),
        )
        taken = {ShardId(row["shard"]): row["epoch"] for row in rows}
        if taken:
            await conn.execute(*QUERIES.bind("job_requeue_orphans", pool=pool, shards=list(taken)))
        return taken


async def lease_holders(
    conn: Connection, pool: str, shards: Sequence[int]
) -> dict[ShardId, tuple[str, int]]:
    """Who holds ``shards`` now: ``{shard: (owner, ordinal)}`` for the held ones."""
    rows = await conn.fetch(*QUERIES.bind("lease_holders", pool=pool, shards=list(shards)))
    return {ShardId(row["shard"]): (row["owner"], row["ordinal"]) for row in rows}


async def lease_renew(
    conn: Connection, pool: str, *, owner: str, shards: Sequence[int], ttl_s: float
) -> dict[ShardId, int]:
    """Extend the leases still held; a shard missing from the result was lost."""
    if not shards:
        return {}
    rows = await conn.fetch(
        *QUERIES.bind("lease_renew", pool=pool, owner=owner, ttl_s=ttl_s, shards=list(shards))
    )
    return {ShardId(row["shard"]): row["epoch"] for row in rows}


async def lease_release(
    conn: Connection, pool: str, *, owner: str, shards: Sequence[int]
) -> list[ShardId]:
    """Give shards up (after draining them); their next owner is woken to take them."""
    if not shards:
        return []
    rows = await conn.fetch(
        *QUERIES.bind(
            "lease_release",
            pool=pool,
            owner=owner,
            shards=list(shards),
            channel=channels.worker_channel(pool),
            payload=channels.RELEASED,
        )
    )
    return [ShardId(row["shard"]) for row in rows]


async def lease_orphans(conn: Connection, pool: str, *, grace_s: float, live_s: float) -> Orphans:
    """Shards free or expired for ``grace_s`` or more, and the ordinals that heartbeated
    within ``live_s``: whether and by whom orphans are adopted is the caller's choice."""
    row = await conn.fetchrow(
        *QUERIES.bind("lease_orphans", pool=pool, grace_s=grace_s, live_s=live_s)
    )
    return Orphans([ShardId(s) for s in row["orphans"]], list(row["live"]))


class LeaseHealth(NamedTuple):
    """Shards nobody took within the grace period, and shards held by adoption."""

    orphaned: list[ShardId]
    adopted: list[ShardId]


async def lease_health(conn: Connection, pool: str, *, grace_s: float) -> LeaseHealth:
    """Which shards of ``pool`` lack their ring owner: free or expired for ``grace_s`` or
    more, or adopted by another ordinal (the operator's ``OrdinalsMissing``)."""
    rows = await conn.fetch(*QUERIES.bind("lease_health", pool=pool, grace_s=grace_s))
    return LeaseHealth(
        orphaned=[ShardId(row["shard"]) for row in rows if row["orphaned"]],
        adopted=[ShardId(row["shard"]) for row in rows if row["adopted"]],
    )


async def lease_history_list(
    conn: Connection, pool: str, shards: Sequence[int]
) -> list[LeaseRecord]:
    """Every kept holding of ``shards``, oldest first: who held them, when, and why."""
    found = await conn.fetch(*QUERIES.bind("lease_history_list", pool=pool, shards=list(shards)))
    return [rows.lease_record(row) for row in found]
