"""Tenant round-robin within a priority lane (docs/architecture.md, "Scheduling").

A tenant that floods a lane with 10,000 jobs must not delay another tenant's 10 jobs
of the same priority beyond a few claim batches: the claim serves tenants in rounds
(every tenant's oldest job, then every tenant's second oldest, ...).
"""

from __future__ import annotations

import asyncpg

from jobpool import Client
from jobpool.models import Pool, Priority
from jobpool.store import execution, leases

OWNER = "0:fairness"
BATCH = 16


async def _take_all(conn: asyncpg.Connection, pool: Pool) -> list[int]:
    taken = await leases.lease_take(
        conn, pool.name, owner=OWNER, ordinal=0, shards=range(pool.shards), ttl_s=60
    )
    return sorted(taken)


async def _claim(
    conn: asyncpg.Connection, pool: Pool, shards: list[int], cursor: str = ""
) -> list[str]:
    claimed = await execution.job_claim_batch(
        conn,
        pool.name,
        owner=OWNER,
        shards=shards,
        lanes={Priority.NORMAL: BATCH},
        cursors={Priority.NORMAL: cursor},
    )
    return [job.tenant for job in claimed]


async def test_a_flood_does_not_delay_another_tenants_jobs(
    dsn: str, conn: asyncpg.Connection, pool: Pool
) -> None:
    async with Client(dsn, pool=pool.name, tenant="flood") as flood:
        for _ in range(2):
            await flood.submit("work", [{"i": i} for i in range(5_000)])
    async with Client(dsn, pool=pool.name, tenant="small") as small:
        await small.submit("work", [{"i": i} for i in range(10)])
    shards = await _take_all(conn, pool)

    first = await _claim(conn, pool, shards)
    second = await _claim(conn, pool, shards)

    assert len(first) == len(second) == BATCH
    assert first.count("small") + second.count("small") == 10
    assert first.count("small") >= BATCH // 2 - 1  # rounds interleave the two tenants


async def test_the_cursor_rotates_claims_through_all_busy_tenants(
    dsn: str, conn: asyncpg.Connection, pool: Pool
) -> None:
    """A claim visits a bounded number of tenants per shard (here 2 of 4); the cursor
    moves past the tenants served, so consecutive claims share the lane equally."""
    for tenant in ("a", "b", "c", "d"):
        async with Client(dsn, pool=pool.name, tenant=tenant) as client:
            await client.submit("work", [{"i": i} for i in range(200)])
    shards = await _take_all(conn, pool)

    served: list[str] = []
    cursor = ""
    for _ in range(4):
        tenants = await _claim(conn, pool, shards, cursor)
        cursor = execution.rotate_cursor(cursor, tenants)
        served += tenants

    assert {tenant: served.count(tenant) for tenant in "abcd"} == dict.fromkeys("abcd", 16)


def test_rotate_cursor_follows_the_claims_rotation_order() -> None:
    assert execution.rotate_cursor("", ["a", "b"]) == "b"
    assert execution.rotate_cursor("b", ["c", "d"]) == "d"
    assert execution.rotate_cursor("c", ["d", "a"]) == "a"  # wrapped around past the end
    assert execution.rotate_cursor("c", []) == "c"


async def test_a_lone_tenant_gets_the_whole_batch(
    dsn: str, conn: asyncpg.Connection, pool: Pool
) -> None:
    async with Client(dsn, pool=pool.name, tenant="alone") as client:
        await client.submit("work", [{"i": i} for i in range(100)])
    shards = await _take_all(conn, pool)

    assert await _claim(conn, pool, shards) == ["alone"] * BATCH
