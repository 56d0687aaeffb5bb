"""Pools: a pool's fixed shard count, its ring (replica count, ring version) and its
pause (see ``jobpool.store.pause``)."""

from __future__ import annotations

from asyncpg import Connection

from jobpool.errors import InvalidInput, PoolNotFound
from jobpool.models import Pool, check_pool_name
from jobpool.store import channels, rows
from jobpool.store.queries import QUERIES

MAX_SHARDS = 4096


def pool_not_found(name: str) -> PoolNotFound:
    return PoolNotFound(
        f"pool {name!r} does not exist: create it with `jobpool pool create {name}` "
        "or by applying a JobPool"
    )


async def pool_get(conn: Connection, name: str) -> Pool:
    row = await conn.fetchrow(*QUERIES.bind("pool_get", name=name))
    if row is None:
        raise pool_not_found(name)
    return rows.pool(row)


async def pool_ensure(conn: Connection, name: str, *, shards: int, replicas: int = 1) -> Pool:
    """Create the pool if it is missing; an existing pool keeps its shards and ring."""
    check_pool_name(name)
    if not 1 <= shards <= MAX_SHARDS:
        raise InvalidInput(f"shards must be between 1 and {MAX_SHARDS}, got {shards}")
    if replicas < 0:
        raise InvalidInput(f"replicas must be >= 0, got {replicas}")
    row = await conn.fetchrow(
        *QUERIES.bind("pool_create", name=name, shards=shards, replicas=replicas)
    )
    return rows.pool(row) if row is not None else await pool_get(conn, name)


async def pool_set_replicas(conn: Connection, name: str, replicas: int) -> Pool:
    """Change the ring; bumps ``ring_version`` and wakes the pool's workers if it moved."""
    if replicas < 0:
        raise InvalidInput(f"replicas must be >= 0, got {replicas}")
    async with conn.transaction():
        row = await conn.fetchrow(*QUERIES.bind("pool_set_replicas", name=name, replicas=replicas))
        if row is None:
            return await pool_get(conn, name)
        await conn.execute(
            *QUERIES.bind(
                "job_notify", channel=channels.worker_channel(name), payload=channels.RING
            )
        )
        return rows.pool(row)
