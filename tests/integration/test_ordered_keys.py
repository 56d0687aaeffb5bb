"""Ordered keys: jobs that share a key run one at a time, in submit order (FIFO per key).

At the store: only a key's head is ``queued`` or ``running``, the others ``waiting``; a
retrying head keeps its successors waiting; a head that ends (succeeded, dead, cancelled)
lets the next one go, whoever ended it; concurrent submitters of one key never make two
heads. With real workers: no two jobs of a key overlap and they start in submit order,
through retries, a dead letter and a ring change; unkeyed jobs are not held.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from worker_runtime_helpers import POOL, SHARDS, result_of, running_worker

from jobpool import Client, Context, JobState, Permanent
from jobpool.errors import KeyedEnqueueIsolation
from jobpool.models import ErrorRecord, Finish, Priority, Retry
from jobpool.sharding import ordinal_for, shard_for
from jobpool.store import execution
from jobpool.store.leases import lease_take
from jobpool.store.pools import pool_set_replicas
from jobpool.worker import Registry, RetryPolicy

OWNER = "0:test"
BOUND = 20.0


async def _states(conn: asyncpg.Connection, jobs: list[Any]) -> list[str | None]:
    rows = await conn.fetch(
        "SELECT id, state FROM jobs WHERE id = ANY($1::uuid[])", [j.id for j in jobs]
    )
    found = {row["id"]: row["state"] for row in rows}
    return [found.get(j.id) for j in jobs]


async def _claim(conn: asyncpg.Connection, shard: int) -> list[Any]:
    lanes = dict.fromkeys(Priority, 100)
    return await execution.job_claim_batch(conn, POOL, owner=OWNER, shards=[shard], lanes=lanes)


def _error(attempt: int) -> ErrorRecord:
    return ErrorRecord(attempt=attempt, error_type="Boom", message="boom", at=datetime.now(UTC))


async def test_only_the_head_of_a_key_is_queued_and_each_ending_releases_the_next(
    client: Client, conn: asyncpg.Connection
) -> None:
    jobs = await client.submit("send", [{"n": i} for i in range(4)], key="order-7")
    loose = await client.submit("send", {"n": "unkeyed"})
    assert [j.state for j in jobs] == ["queued", "waiting", "waiting", "waiting"]
    assert (await client.status(jobs[1].id)).state is JobState.WAITING
    shard = jobs[0].shard
    await lease_take(conn, POOL, owner=OWNER, ordinal=0, shards=[shard], ttl_s=60)

    # Only the head (and any unkeyed job of the shard) can be claimed.
    claimed = {job.id for job in await _claim(conn, shard)}
    assert jobs[0].id in claimed
    assert not claimed & {j.id for j in jobs[1:]}
    assert loose.shard != shard or loose.id in claimed

    # A retrying head stays the head: its successors keep waiting.
    retry = Retry(job_id=jobs[0].id, run_at=datetime.now(UTC), error=_error(1))
    await execution.job_retry_many(conn, POOL, owner=OWNER, retries=[retry])
    assert await _states(conn, jobs) == ["queued", "waiting", "waiting", "waiting"]

    # Succeeded, dead, cancelled: each ending lets exactly the next job go.
    [head] = [j for j in await _claim(conn, shard) if j.id == jobs[0].id]
    done = Finish(job_id=head.id, state=JobState.SUCCEEDED, result_json="1")
    await execution.job_finish_many(conn, POOL, owner=OWNER, finishes=[done])
    assert await _states(conn, jobs) == [None, "queued", "waiting", "waiting"]

    [second] = [j for j in await _claim(conn, shard) if j.id == jobs[1].id]
    dead = Finish(job_id=second.id, state=JobState.DEAD, reason="Permanent", error=_error(1))
    await execution.job_finish_many(conn, POOL, owner=OWNER, finishes=[dead])
    assert await _states(conn, jobs) == [None, None, "queued", "waiting"]

    await client.cancel(jobs[2].id)  # a queued head, cancelled by its client
    assert await _states(conn, jobs) == [None, None, None, "queued"]


async def test_a_waiting_job_is_cancelled_at_once_and_holds_nobody(
    client: Client, conn: asyncpg.Connection
) -> None:
    jobs = await client.submit("send", [{"n": i} for i in range(3)], key="k")
    await client.cancel(jobs[1].id)
    assert (await client.status(jobs[1].id)).state is JobState.CANCELLED
    assert await _states(conn, jobs) == ["queued", None, "waiting"]


async def test_keys_are_per_tenant(dsn: str, client: Client, conn: asyncpg.Connection) -> None:
    mine = await client.submit("send", {}, key="shared-name")
    async with Client(dsn, pool=POOL, tenant="other") as other:
        theirs = await other.submit("send", {}, key="shared-name")
    assert (mine.state, theirs.state) == ("queued", "queued")


async def test_concurrent_submitters_of_one_key_make_one_head(
    dsn: str, client: Client, conn: asyncpg.Connection
) -> None:
    async def submit_some(n: int) -> list[Any]:
        async with Client(dsn, pool=POOL, tenant="acme") as jp:
            jobs = []
            for i in range(5):
                jobs += await jp.submit("send", [{"c": n, "i": i}] * 2, key="hot")
            return jobs

    batches = await asyncio.gather(*(submit_some(n) for n in range(6)))
    jobs = [job for batch in batches for job in batch]
    states = await _states(conn, jobs)
    assert states.count("queued") == 1, states
    assert states.count("waiting") == len(jobs) - 1


async def test_keyed_enqueue_in_a_repeatable_read_transaction_is_refused(
    dsn: str, client: Client
) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction(isolation="repeatable_read"):
            with pytest.raises(KeyedEnqueueIsolation, match="READ COMMITTED"):
                await client.enqueue(conn, "send", {}, key="k")
        async with conn.transaction(isolation="repeatable_read"):
            job = await client.enqueue(conn, "send", {})  # unkeyed jobs are not concerned
        assert job.state is JobState.QUEUED
    finally:
        await conn.close()


async def test_jobs_of_a_key_never_overlap_and_start_in_submit_order(
    dsn: str, client: Client, conn: asyncpg.Connection
) -> None:
    """Two workers at concurrency 8, a key whose shard moves between them mid-stream,
    jobs that fail once, one that dead-letters: starts stay in order, never overlap."""
    runs: list[tuple[int, str, float, float]] = []  # (n, what, start, end)
    registry = Registry()

    @registry.handler("step")
    async def step(payload: Any, ctx: Context) -> int:
        start = asyncio.get_running_loop().time()
        await asyncio.sleep(0.02)
        end = asyncio.get_running_loop().time()
        n = payload["n"]
        if payload.get("fail_once") and ctx.attempt == 1:
            runs.append((n, "failed", start, end))
            raise ConnectionError("fails once")
        if payload.get("dead"):
            runs.append((n, "dead", start, end))
            raise Permanent("gives up")
        runs.append((n, "ok", start, end))
        return n

    key = next(f"k{i}" for i in range(1000) if ordinal_for(shard_for(f"k{i}", SHARDS), 2) == 1)
    payloads = [{"n": n, "fail_once": n % 5 == 2, "dead": n == 7} for n in range(16)]
    retry = RetryPolicy(base_s=0.05, cap_s=0.05, max_attempts=3)
    settings = {"concurrency": 8, "lease_ttl_s": 1.5, "retry": retry}
    async with (
        running_worker(dsn, registry, **settings),
        running_worker(dsn, registry, ordinal=1, **settings),
    ):
        jobs = await client.submit("step", payloads, key=key)
        unkeyed = await client.submit("step", [{"n": 100 + i} for i in range(8)])
        for job in unkeyed:  # not held behind the key
            await result_of(client, job.id, timeout=BOUND)
        await result_of(client, jobs[3].id, timeout=BOUND)
        await pool_set_replicas(conn, POOL, 2)  # the key's shard moves to ordinal 1
        for n, job in enumerate(jobs[8:], start=8):
            assert await result_of(client, job.id, timeout=BOUND) == n

    keyed = sorted((r for r in runs if r[0] < 100), key=lambda r: r[2])
    for before, after in itertools.pairwise(keyed):
        assert before[3] <= after[2], f"job {before[0]} and job {after[0]} overlapped"
    order = [n for n, _, _, _ in keyed]
    expected = []
    for n in range(16):
        expected += [n, n] if n % 5 == 2 else [n]
    assert order == expected, order
    assert (await client.status(jobs[7].id)).state is JobState.DEAD
