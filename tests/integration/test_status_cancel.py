"""Status and cancel against a real Postgres (jobpool/client/client.py, jobpool/store/jobs.py).

Defends: a job's status is exactly what was stored; cancelling a queued job ends it
``cancelled`` in ``job_history`` (not lost, not in the DLQ) and frees its dedupe key;
cancelling a running job signals its worker; unknown and finished jobs get typed
errors; one tenant can neither see nor change another tenant's jobs (invariant 6).
The test connection ``conn`` is a superuser, which bypasses row-level security, so the
tenant tests here check the explicit tenant filters of the queries.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import pytest_asyncio

from jobpool import CancelOutcome, Client, JobState, JobStatus, Priority
from jobpool.errors import JobAlreadyFinished, JobNotFound
from jobpool.ids import new_job_id
from jobpool.models import Job, Pool

POOL = "emails"
TENANT = "acme"
TYPE = "email.send"
WORKER_CHANNEL = "jp:emails"
EVENTS_CHANNEL = "jpe:emails"
LATER = datetime(2031, 5, 17, 8, 30, 15, 123456, tzinfo=UTC)

_TEST = {"loop_scope": "session", "scope": "function"}


class Notifications:
    """Everything NOTIFYed on some channels, seen by a LISTEN on its own connection.

    ``settle()`` is exact: it NOTIFYs a sentinel and waits for it, and Postgres delivers
    notifications in commit order, so all earlier commits have been delivered by then.
    Returns ``(channel, payload)`` pairs received since the last call.
    """

    def __init__(self, listener: asyncpg.Connection, channels: tuple[str, ...]) -> None:
        self._listener = listener
        self._channels = channels
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    def on_notify(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        self._queue.put_nowait((channel, payload))

    async def settle(self) -> list[tuple[str, str]]:
        sentinel = (self._channels[0], f"sentinel-{uuid.uuid4()}")
        await self._listener.execute("SELECT pg_notify($1, $2)", *sentinel)
        received = []
        async with asyncio.timeout(10):
            while (item := await self._queue.get()) != sentinel:
                received.append(item)
        return received


@pytest_asyncio.fixture(**_TEST)
async def notifications(dsn: str, pool: Pool) -> AsyncIterator[Notifications]:
    listener = await asyncpg.connect(dsn)
    try:
        seen = Notifications(listener, (WORKER_CHANNEL, EVENTS_CHANNEL))
        await listener.add_listener(WORKER_CHANNEL, seen.on_notify)
        await listener.add_listener(EVENTS_CHANNEL, seen.on_notify)
        yield seen
    finally:
        await listener.close()


@pytest_asyncio.fixture(**_TEST)
async def other_client(dsn: str, pool: Pool) -> AsyncIterator[Client]:
    """A client of the same pool for another tenant."""
    async with Client(dsn, pool=pool.name, tenant="other") as jp:
        yield jp


async def start_running(conn: asyncpg.Connection, job_id: uuid.UUID) -> None:
    """Do what a worker's claim does to a job: mark it running."""
    status = await conn.execute(
        "UPDATE jobs SET state = 'running', started_at = now(), attempts = attempts + 1,"
        " worker = 'emails-0', lease_epoch = 1 WHERE id = $1 AND state = 'queued'",
        job_id,
    )
    assert status == "UPDATE 1"


async def wait_until_blocked(conn: asyncpg.Connection, backends: int) -> None:
    """Wait until ``backends`` sessions of this database wait on a lock (no event exists)."""
    async with asyncio.timeout(10):
        while True:
            # pg_stat_activity is a per-transaction snapshot: refresh it on every look.
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if waiting >= backends:
                return
            await asyncio.sleep(0.005)


async def submit(client: Client, **options: object) -> Job:
    job = await client.submit(TYPE, {"to": "a@example.com"}, **options)
    assert isinstance(job, Job)
    return job


# -- status ----------------------------------------------------------------------


async def test_status_of_a_queued_job(client: Client, conn: asyncpg.Connection) -> None:
    job = await submit(
        client,
        priority="critical",
        max_attempts=4,
        request_id="req-9",
        user_id="user-3",
        run_at=LATER,
    )
    status = await client.status(job.id)
    assert isinstance(status, JobStatus)
    assert status.id == job.id
    assert (status.pool, status.tenant, status.type) == (POOL, TENANT, TYPE)
    assert status.priority is Priority.CRITICAL
    assert status.shard == job.shard
    assert status.state is JobState.QUEUED
    assert status.attempts == 0
    assert status.max_attempts == 4
    assert status.progress is None
    assert status.result is None
    assert status.error_history == ()
    assert status.last_error is None
    assert status.cancel_requested is False
    assert status.created_at == job.created_at
    assert status.run_at == LATER
    assert status.started_at is None
    assert status.finished_at is None
    assert (status.request_id, status.user_id) == ("req-9", "user-3")


async def test_status_accepts_the_id_as_text(client: Client) -> None:
    job = await submit(client)
    assert (await client.status(str(job.id))).id == job.id
    assert (await client.status(str(job.id).upper())).id == job.id


async def test_status_of_a_running_job(client: Client, conn: asyncpg.Connection) -> None:
    job = await submit(client)
    await start_running(conn, job.id)
    status = await client.status(job.id)
    assert status.state is JobState.RUNNING
    assert status.attempts == 1
    assert status.started_at is not None


async def test_status_of_an_unknown_job(client: Client) -> None:
    await submit(client)
    unknown = new_job_id()
    with pytest.raises(JobNotFound, match=str(unknown)):
        await client.status(unknown)


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "", "1234", "'; DROP TABLE jobs; --"])
async def test_status_of_a_malformed_id(
    client: Client, conn: asyncpg.Connection, bad_id: str
) -> None:
    await submit(client)
    with pytest.raises(JobNotFound):
        await client.status(bad_id)
    with pytest.raises(JobNotFound):
        await client.cancel(bad_id)
    assert await conn.fetchval("SELECT count(*) FROM jobs") == 1


# -- cancel ----------------------------------------------------------------------


async def test_cancel_a_queued_job(
    client: Client, conn: asyncpg.Connection, notifications: Notifications
) -> None:
    job = await submit(client, dedupe_key="welcome:1", request_id="req-1", priority="high")
    await notifications.settle()

    assert await client.cancel(job.id) is CancelOutcome.CANCELLED

    assert await conn.fetchval("SELECT count(*) FROM jobs") == 0
    row = await conn.fetchrow("SELECT * FROM job_history WHERE id = $1", job.id)
    assert row is not None
    assert row["state"] == "cancelled"
    assert (row["pool"], row["tenant"], row["type"]) == (POOL, TENANT, TYPE)
    assert row["shard"] == job.shard
    assert row["priority"] == Priority.HIGH.rank
    assert json.loads(row["payload"]) == {"to": "a@example.com"}
    assert (row["dedupe_key"], row["request_id"]) == ("welcome:1", "req-1")
    assert row["created_at"] == job.created_at
    assert row["finished_at"] is not None
    assert row["finished_at"] >= job.created_at
    # Cancelled is not dead: nothing goes to the dead-letter queue.
    assert await conn.fetchval("SELECT count(*) FROM job_dlq") == 0
    # Clients waiting on the job are told; workers have nothing to do.
    assert await notifications.settle() == [(EVENTS_CHANNEL, str(job.id))]

    status = await client.status(job.id)
    assert status.state is JobState.CANCELLED
    assert status.finished_at == row["finished_at"]
    assert status.cancel_requested is False


async def test_cancel_frees_the_dedupe_key(client: Client, conn: asyncpg.Connection) -> None:
    first = await submit(client, dedupe_key="k")
    assert (await submit(client, dedupe_key="k")).id == first.id
    await client.cancel(first.id)
    second = await submit(client, dedupe_key="k")
    assert second.id != first.id
    assert not second.duplicate
    assert (await client.status(second.id)).state is JobState.QUEUED
    assert (await client.status(first.id)).state is JobState.CANCELLED


async def test_cancel_twice_raises_job_already_finished(client: Client) -> None:
    job = await submit(client)
    await client.cancel(job.id)
    with pytest.raises(JobAlreadyFinished, match="cancelled"):
        await client.cancel(job.id)
    with pytest.raises(JobAlreadyFinished):
        await client.cancel(str(job.id))


async def test_cancel_an_unknown_job(client: Client, conn: asyncpg.Connection) -> None:
    job = await submit(client)
    with pytest.raises(JobNotFound):
        await client.cancel(new_job_id())
    assert (await client.status(job.id)).state is JobState.QUEUED
    assert await conn.fetchval("SELECT count(*) FROM job_history") == 0


async def test_cancel_only_touches_its_job(client: Client, conn: asyncpg.Connection) -> None:
    jobs = await client.submit(TYPE, [1, 2, 3])
    await client.cancel(jobs[1].id)
    states = [(await client.status(j.id)).state for j in jobs]
    assert states == [JobState.QUEUED, JobState.CANCELLED, JobState.QUEUED]
    assert await conn.fetchval("SELECT count(*) FROM jobs") == 2


async def test_cancel_a_delayed_job(client: Client) -> None:
    job = await submit(client, delay=timedelta(hours=1))
    assert await client.cancel(job.id) is CancelOutcome.CANCELLED
    assert (await client.status(job.id)).state is JobState.CANCELLED


async def test_cancel_a_running_job_signals_its_worker(
    client: Client, conn: asyncpg.Connection, notifications: Notifications
) -> None:
    job = await submit(client)
    await start_running(conn, job.id)
    await notifications.settle()

    assert await client.cancel(job.id) is CancelOutcome.CANCEL_REQUESTED

    assert await notifications.settle() == [(WORKER_CHANNEL, "cancel")]
    status = await client.status(job.id)
    assert status.state is JobState.RUNNING  # the worker ends it, not the client
    assert status.cancel_requested is True
    row = await conn.fetchrow("SELECT state, cancel_requested_at FROM jobs WHERE id = $1", job.id)
    assert row["state"] == "running"
    assert row["cancel_requested_at"] is not None
    assert await conn.fetchval("SELECT count(*) FROM job_history") == 0


async def test_cancel_a_running_job_twice_keeps_the_first_request(
    client: Client, conn: asyncpg.Connection, notifications: Notifications
) -> None:
    job = await submit(client)
    await start_running(conn, job.id)
    await client.cancel(job.id)
    first = await conn.fetchval("SELECT cancel_requested_at FROM jobs WHERE id = $1", job.id)
    await notifications.settle()
    assert await client.cancel(job.id) is CancelOutcome.CANCEL_REQUESTED
    again = await conn.fetchval("SELECT cancel_requested_at FROM jobs WHERE id = $1", job.id)
    assert again == first
    assert await notifications.settle() == [(WORKER_CHANNEL, "cancel")]


async def test_cancel_of_a_queued_job_racing_with_a_claim(
    client: Client, conn: asyncpg.Connection
) -> None:
    """A worker holding the row (claim in progress) makes cancel wait, then see `running`."""
    job = await submit(client)
    cancel: asyncio.Task[CancelOutcome] | None = None
    try:
        async with conn.transaction():
            await conn.fetchrow("SELECT id FROM jobs WHERE id = $1 FOR UPDATE", job.id)
            cancel = asyncio.create_task(client.cancel(job.id))
            await wait_until_blocked(conn, 1)
            await start_running(conn, job.id)
    finally:
        if cancel is not None:
            async with asyncio.timeout(10):
                await asyncio.wait([cancel])
    assert cancel is not None
    outcome = cancel.result()
    assert outcome is CancelOutcome.CANCEL_REQUESTED
    status = await client.status(job.id)
    assert (status.state, status.cancel_requested) == (JobState.RUNNING, True)


# -- tenants -----------------------------------------------------------------------


async def test_another_tenant_cannot_see_a_job(client: Client, other_client: Client) -> None:
    job = await submit(client)
    with pytest.raises(JobNotFound):
        await other_client.status(job.id)
    assert (await client.status(job.id)).state is JobState.QUEUED


async def test_another_tenant_cannot_cancel_a_queued_job(
    client: Client, other_client: Client, conn: asyncpg.Connection
) -> None:
    job = await submit(client)
    with pytest.raises(JobNotFound):
        await other_client.cancel(job.id)
    assert await conn.fetchval("SELECT state FROM jobs WHERE id = $1", job.id) == "queued"
    assert await conn.fetchval("SELECT count(*) FROM job_history") == 0


async def test_another_tenant_cannot_cancel_a_running_job(
    client: Client, other_client: Client, conn: asyncpg.Connection, notifications: Notifications
) -> None:
    job = await submit(client)
    await start_running(conn, job.id)
    await notifications.settle()
    with pytest.raises(JobNotFound):
        await other_client.cancel(job.id)
    assert await conn.fetchval("SELECT cancel_requested_at FROM jobs WHERE id = $1", job.id) is None
    assert await notifications.settle() == []


async def test_another_tenant_cannot_see_a_finished_job(
    client: Client, other_client: Client
) -> None:
    """Not even its existence: JobNotFound, not JobAlreadyFinished."""
    job = await submit(client)
    await client.cancel(job.id)
    with pytest.raises(JobNotFound):
        await other_client.status(job.id)
    with pytest.raises(JobNotFound):
        await other_client.cancel(job.id)


async def test_tenants_see_only_their_own_jobs(client: Client, other_client: Client) -> None:
    mine = await submit(client)
    theirs = await submit(other_client)
    assert (await client.status(mine.id)).tenant == TENANT
    assert (await other_client.status(theirs.id)).tenant == "other"
    with pytest.raises(JobNotFound):
        await client.status(theirs.id)
    with pytest.raises(JobNotFound):
        await client.cancel(theirs.id)
    assert (await other_client.status(theirs.id)).state is JobState.QUEUED


async def test_another_pool_cannot_see_a_job(
    client: Client, dsn: str, conn: asyncpg.Connection
) -> None:
    await conn.execute("INSERT INTO pools (name, shards) VALUES ('reports', 16)")
    job = await submit(client)
    async with Client(dsn, pool="reports", tenant=TENANT) as reports:
        with pytest.raises(JobNotFound):
            await reports.status(job.id)
        with pytest.raises(JobNotFound):
            await reports.cancel(job.id)
    assert (await client.status(job.id)).state is JobState.QUEUED
