"""Pools: a pool's fixed shard count and its ring (replica count, ring version)."""

from __future__ import annotations

from asyncpg import Connection, Record

from jobpool.errors import PoolNotFound
from jobpool.models import Pool
from jobpool.store import channels
from jobpool.store.queries import QUERIES


def _pool(row: Record) -> Pool:
    return Pool(
        name=row["name"],
        shards=row["shards"],
        replicas=row["replicas"],
        ring_version=row["ring_version"],
    )


async def pool_get(conn: Connection, name: str) -> Pool:
    row = await conn.fetchrow(QUERIES["pool_get"], name)
    if row is None:
        raise PoolNotFound(
            f"pool {name!r} does not exist: create it with `jobpool pool create {name}` "
            "or by applying a JobPool"
        )
    return _pool(row)


async def pool_ensure(conn: Connection, name: str, *, shards: int, replicas: int = 1) -> Pool:
    """Create the pool if it is missing; an existing pool keeps its shards and ring."""
    row = await conn.fetchrow(QUERIES["pool_create"], name, shards, replicas)
    return _pool(row) if row is not None else await pool_get(conn, name)


async def pool_set_replicas(conn: Connection, name: str, replicas: int) -> Pool:
    """Change the ring; bumps ``ring_version`` and wakes the pool's workers if it moved."""
    async with conn.transaction():
        row = await conn.fetchrow(QUERIES["pool_set_replicas"], name, replicas)
        if row is None:
            return await pool_get(conn, name)
        await conn.execute(QUERIES["job_notify"], channels.worker_channel(name), channels.RING)
        return _pool(row)
