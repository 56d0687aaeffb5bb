"""``SyncClient`` (jobpool/client/sync.py) driven from plain threads, against a real Postgres.

The fixtures run on the session's event loop, so each test hands its blocking code to
a worker thread with ``asyncio.to_thread``: that thread has no running loop, exactly
like a Django view or a script.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import asyncpg
import pytest

from jobpool import CancelOutcome, Job, JobState, JobStatus, Priority, SyncClient
from jobpool.errors import (
    BatchTooLarge,
    InvalidJobType,
    JobAlreadyFinished,
    JobNotFound,
    PayloadNotSerializable,
    PoolNotFound,
)
from jobpool.ids import new_job_id
from jobpool.models import Pool
from jobpool.sharding import shard_for

POOL = "emails"
TENANT = "acme"
TYPE = "email.send"


def _sync_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "jobpool-sync-client"]


async def test_submit_status_cancel_from_a_plain_thread(
    dsn: str, pool: Pool, conn: asyncpg.Connection
) -> None:
    def scenario() -> tuple[Job, JobStatus, CancelOutcome, JobStatus]:
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()  # really no loop in this thread
        with SyncClient(dsn, pool=POOL, tenant=TENANT) as jp:
            job = jp.submit(TYPE, {"to": "a@example.com"}, priority="high", key="c-1")
            assert isinstance(job, Job)
            queued = jp.status(job.id)
            outcome = jp.cancel(job.id)
            cancelled = jp.status(str(job.id))
        return job, queued, outcome, cancelled

    job, queued, outcome, cancelled = await asyncio.to_thread(scenario)

    assert (job.pool, job.tenant, job.type, job.state) == (POOL, TENANT, TYPE, JobState.QUEUED)
    assert job.priority is Priority.HIGH
    assert job.shard == shard_for("c-1", pool.shards)
    assert queued.id == job.id
    assert queued.state is JobState.QUEUED
    assert outcome is CancelOutcome.CANCELLED
    assert cancelled.state is JobState.CANCELLED
    assert cancelled.finished_at is not None
    row = await conn.fetchrow("SELECT state, payload FROM job_history WHERE id = $1", job.id)
    assert row["state"] == "cancelled"
    assert json.loads(row["payload"]) == {"to": "a@example.com"}
    assert _sync_threads() == []


async def test_batch_and_dedupe_from_a_plain_thread(
    dsn: str, pool: Pool, conn: asyncpg.Connection
) -> None:
    def scenario() -> tuple[list[Job], Job, Job]:
        with SyncClient(dsn, pool=POOL, tenant=TENANT) as jp:
            batch = jp.submit(TYPE, [{"n": i} for i in range(5)])
            first = jp.submit(TYPE, {"v": 1}, dedupe_key="once")
            second = jp.submit(TYPE, {"v": 2}, dedupe_key="once")
        assert isinstance(batch, list)
        assert isinstance(first, Job)
        assert isinstance(second, Job)
        return batch, first, second

    batch, first, second = await asyncio.to_thread(scenario)

    assert len(batch) == 5
    for i, job in enumerate(batch):
        payload = await conn.fetchval("SELECT payload FROM jobs WHERE id = $1", job.id)
        assert json.loads(payload) == {"n": i}
    assert second.id == first.id
    assert (first.duplicate, second.duplicate) == (False, True)
    assert await conn.fetchval("SELECT count(*) FROM jobs") == 6


async def test_typed_errors_reach_the_calling_thread(
    dsn: str, pool: Pool, conn: asyncpg.Connection
) -> None:
    def scenario() -> list[type[Exception]]:
        raised: list[type[Exception]] = []
        with SyncClient(dsn, pool=POOL, tenant=TENANT, max_batch=2) as jp:
            calls: list[Any] = [
                lambda: jp.submit("bad type", {}),
                lambda: jp.submit(TYPE, {"x": float("nan")}),
                lambda: jp.submit(TYPE, [1, 2, 3]),
                lambda: jp.status(new_job_id()),
                lambda: jp.cancel("not-a-uuid"),
            ]
            for call in calls:
                try:
                    call()
                except Exception as exc:
                    raised.append(type(exc))
            job = jp.submit(TYPE, {})
            jp.cancel(job.id)
            try:
                jp.cancel(job.id)
            except Exception as exc:
                raised.append(type(exc))
        return raised

    raised = await asyncio.to_thread(scenario)

    assert raised == [
        InvalidJobType,
        PayloadNotSerializable,
        BatchTooLarge,
        JobNotFound,
        JobNotFound,
        JobAlreadyFinished,
    ]
    assert await conn.fetchval("SELECT count(*) FROM jobs") == 0
    assert await conn.fetchval("SELECT count(*) FROM job_history") == 1


async def test_cancel_a_running_job_from_a_plain_thread(
    dsn: str, pool: Pool, conn: asyncpg.Connection
) -> None:
    def submit() -> Job:
        with SyncClient(dsn, pool=POOL, tenant=TENANT) as jp:
            job = jp.submit(TYPE, {})
        assert isinstance(job, Job)
        return job

    job = await asyncio.to_thread(submit)
    await conn.execute(
        "UPDATE jobs SET state = 'running', started_at = now() WHERE id = $1", job.id
    )

    def cancel() -> tuple[CancelOutcome, JobStatus]:
        with SyncClient(dsn, pool=POOL, tenant=TENANT) as jp:
            return jp.cancel(job.id), jp.status(job.id)

    outcome, status = await asyncio.to_thread(cancel)
    assert outcome is CancelOutcome.CANCEL_REQUESTED
    assert status.state is JobState.RUNNING
    assert status.cancel_requested is True


async def test_tenants_are_isolated_through_the_sync_client(dsn: str, pool: Pool) -> None:
    def scenario() -> list[type[Exception]]:
        raised: list[type[Exception]] = []
        with (
            SyncClient(dsn, pool=POOL, tenant=TENANT) as acme,
            SyncClient(dsn, pool=POOL, tenant="other") as other,
        ):
            job = acme.submit(TYPE, {})
            assert isinstance(job, Job)
            for call in (other.status, other.cancel):
                try:
                    call(job.id)
                except Exception as exc:
                    raised.append(type(exc))
            assert acme.status(job.id).state is JobState.QUEUED
        return raised

    assert await asyncio.to_thread(scenario) == [JobNotFound, JobNotFound]


async def test_several_threads_share_one_sync_client(
    dsn: str, pool: Pool, conn: asyncpg.Connection
) -> None:
    def scenario() -> set[Any]:
        with SyncClient(dsn, pool=POOL, tenant=TENANT) as jp:
            results: list[Any] = []
            lock = threading.Lock()

            def work(n: int) -> None:
                job = jp.submit(TYPE, {"n": n}, dedupe_key=f"k{n % 4}")
                with lock:
                    results.append(job.id)

            threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=30)
            assert len(results) == 16
            return set(results)

    ids = await asyncio.to_thread(scenario)
    assert len(ids) == 4
    assert await conn.fetchval("SELECT count(*) FROM jobs") == 4


async def test_unknown_pool_raises_and_leaves_no_thread_behind(dsn: str, pool: Pool) -> None:
    def scenario() -> None:
        with SyncClient(dsn, pool="newsletters", tenant=TENANT):
            pass

    before = len(_sync_threads())
    with pytest.raises(PoolNotFound):
        await asyncio.to_thread(scenario)
    assert len(_sync_threads()) == before


async def test_calls_before_connect_raise(dsn: str, pool: Pool) -> None:
    def scenario() -> None:
        jp = SyncClient(dsn, pool=POOL, tenant=TENANT)
        jp.submit(TYPE, {})

    with pytest.raises(RuntimeError, match="not connected"):
        await asyncio.to_thread(scenario)
