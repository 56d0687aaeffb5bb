"""Following a job: ``result()`` and ``progress()`` wake on LISTEN/NOTIFY, never poll.

The worker is played by ``FakeWorker`` (the real store functions). To prove that a
waiter is woken by a notification rather than by luck of timing, ``StatusProbe``
wraps the client's ``status`` read: once a read has seen the job unfinished, the
waiter is parked on its event queue (there is no await between the read and the
wait), so whatever makes it read again afterwards is a notification.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from worker_helpers import FakeWorker

from jobpool import CancelOutcome, Client, JobState, Priority, Progress, SyncClient
from jobpool.errors import JobCancelled, JobFailed, JobNotFound
from jobpool.models import Finish, JobId, Pool
from jobpool.store import channels

BOUND = 5.0  # generous upper bound for anything that should be "immediate"


@pytest_asyncio.fixture(loop_scope="session")
async def worker(conn: asyncpg.Connection, pool: Pool) -> FakeWorker:
    return await FakeWorker(conn, pool=pool.name).start()


class StatusProbe:
    """Counts a client's status reads per job; ``parked(job)`` is set once one saw it unfinished."""

    def __init__(self, client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads: dict[JobId, int] = {}
        self._parked: dict[JobId, asyncio.Event] = {}
        original = client.status

        async def status(job_id: Any) -> Any:
            result = await original(job_id)
            self.reads[result.id] = self.reads.get(result.id, 0) + 1
            if not result.state.finished:
                self.parked(result.id).set()
            return result

        monkeypatch.setattr(client, "status", status)

    def parked(self, job_id: JobId) -> asyncio.Event:
        return self._parked.setdefault(job_id, asyncio.Event())


@pytest.fixture
def probe(client: Client, monkeypatch: pytest.MonkeyPatch) -> StatusProbe:
    return StatusProbe(client, monkeypatch)


@pytest_asyncio.fixture(loop_scope="session")
async def events(dsn: str, pool: Pool) -> AsyncIterator[asyncio.Queue[str]]:
    """Every payload NOTIFYed on the pool's events channel, seen by a raw listener."""
    received: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(dsn)
    await listener.add_listener(
        channels.events_channel(pool.name), lambda *args: received.put_nowait(args[-1])
    )
    try:
        yield received
    finally:
        await listener.close()


async def next_or_end(queue: asyncio.Queue[Any], task: asyncio.Task[Any]) -> Any:
    """The queue's next item; fails at once if ``task`` ends (or raises) first."""
    getter = asyncio.ensure_future(queue.get())
    try:
        await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not getter.done():
            getter.cancel()
    if getter.done() and not getter.cancelled():
        return getter.result()
    task.result()  # re-raises the task's error, if any
    pytest.fail(f"the follower ended early with {task.result()!r}")


# -- result() -----------------------------------------------------------------------


async def test_result_of_a_job_finished_later_is_woken_by_notify(
    client: Client, worker: FakeWorker, probe: StatusProbe
) -> None:
    job = await client.submit("send_email", {"to": "a@example.com"})
    waiter = asyncio.create_task(client.result(job.id))
    async with asyncio.timeout(BOUND):
        await probe.parked(job.id).wait()
        await worker.claim_all([job])
        assert not waiter.done(), "a claim is no reason to return"
        assert await worker.succeed([job], {"sent": True, "id": 7}) == [job.id]
        assert await waiter == {"sent": True, "id": 7}
    # One read before parking, one after the finish's notification: no polling.
    assert probe.reads[job.id] == 2


async def test_result_of_an_already_finished_job_returns_at_once(
    client: Client, worker: FakeWorker, probe: StatusProbe
) -> None:
    job = await client.submit("send_email", {"to": "a@example.com"})
    await worker.claim_all([job])
    await worker.succeed([job], ["delivered", 1])
    async with asyncio.timeout(BOUND):
        assert await client.result(job.id) == ["delivered", 1]
    assert probe.reads[job.id] == 1, "a finished job needs one read and no waiting"


async def test_result_of_a_job_finished_with_null_result_is_none(
    client: Client, worker: FakeWorker
) -> None:
    job = await client.submit("send_email", {})
    await worker.claim_all([job])
    await worker.succeed([job], None)
    async with asyncio.timeout(BOUND):
        assert await client.result(str(job.id)) is None
    assert (await client.status(job.id)).state is JobState.SUCCEEDED


async def test_result_with_timeout_on_a_queued_job_raises_timeout_error(
    client: Client, worker: FakeWorker
) -> None:
    job = await client.submit("send_email", {"to": "a@example.com"})
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await client.result(job.id, timeout=0.2)
    elapsed = time.monotonic() - started
    assert 0.19 <= elapsed < BOUND
    assert (await client.status(job.id)).state is JobState.QUEUED
    # The timed-out wait left nothing broken: a later wait still gets the result.
    await worker.claim_all([job])
    await worker.succeed([job], "late")
    async with asyncio.timeout(BOUND):
        assert await client.result(job.id, timeout=BOUND) == "late"


async def test_result_of_a_dead_job_raises_job_failed_with_the_last_error(
    client: Client, worker: FakeWorker, probe: StatusProbe
) -> None:
    job = await client.submit("send_email", {"to": "nobody@example.com"})
    await worker.claim_all([job])
    await worker.retry([job], attempt=1, message="first failure", error_type="Timeout")
    waiter = asyncio.create_task(client.result(job.id))
    async with asyncio.timeout(BOUND):
        await probe.parked(job.id).wait()
        await worker.claim_all([job])
        await worker.dead([job], attempt=2, message="mailbox is full", error_type="SMTPError")
        with pytest.raises(JobFailed) as failed:
            await waiter
    message = str(failed.value)
    assert str(job.id) in message
    assert "SMTPError: mailbox is full" in message
    assert "first failure" not in message, "the message carries the last error only"


async def test_result_of_a_cancelled_queued_job_raises_job_cancelled(
    client: Client, probe: StatusProbe
) -> None:
    job = await client.submit("send_email", {"to": "a@example.com"})
    waiter = asyncio.create_task(client.result(job.id))
    async with asyncio.timeout(BOUND):
        await probe.parked(job.id).wait()
        assert await client.cancel(job.id) is CancelOutcome.CANCELLED
        with pytest.raises(JobCancelled, match=str(job.id)):
            await waiter
    assert probe.reads[job.id] == 2


async def test_result_of_a_running_job_cancelled_by_its_worker_raises_job_cancelled(
    client: Client, worker: FakeWorker, probe: StatusProbe
) -> None:
    job = await client.submit("send_email", {"to": "a@example.com"})
    await worker.claim_all([job])
    waiter = asyncio.create_task(client.result(job.id))
    async with asyncio.timeout(BOUND):
        await probe.parked(job.id).wait()
        assert await client.cancel(job.id) is CancelOutcome.CANCEL_REQUESTED
        assert (await client.status(job.id)).cancel_requested
        assert not waiter.done(), "a cancel request alone does not end the job"
        assert await worker.cancelled([job]) == [job.id]
        with pytest.raises(JobCancelled):
            await waiter


async def test_result_wakes_on_a_batch_finish_notified_as_star(
    client: Client,
    worker: FakeWorker,
    probe: StatusProbe,
    events: asyncio.Queue[str],
) -> None:
    jobs = await client.submit("send_email", [{"n": n} for n in range(3)])
    waiters = {job.id: asyncio.create_task(client.result(job.id)) for job in jobs[:2]}
    async with asyncio.timeout(BOUND):
        for job_id in waiters:
            await probe.parked(job_id).wait()
        await worker.claim_all(jobs)
        finishes = [
            Finish(job_id=job.id, state=JobState.SUCCEEDED, result_json=json.dumps({"n": n}))
            for n, job in enumerate(jobs)
        ]
        assert sorted(await worker.finish(finishes)) == sorted(job.id for job in jobs)
        results = {job_id: await task for job_id, task in waiters.items()}
        # The batch sent one notification, and it named no job: `*`.
        assert await events.get() == channels.ALL
    assert events.empty()
    assert results == {jobs[0].id: {"n": 0}, jobs[1].id: {"n": 1}}


async def test_result_of_an_unknown_job_raises_job_not_found(client: Client) -> None:
    async with asyncio.timeout(BOUND):
        with pytest.raises(JobNotFound):
            await client.result("0190e3a4-0000-7000-8000-000000000000")
        with pytest.raises(JobNotFound):
            await client.result("not-a-uuid")


async def test_result_survives_its_listen_connection_dropping(
    client: Client, worker: FakeWorker, probe: StatusProbe, conn: asyncpg.Connection
) -> None:
    """A dropped LISTEN connection must not strand a waiter (Postgres restart, failover).

    The listener wakes its subscribers with ``*`` when its connection is lost; they
    re-read and wait again, and must still hear about the job's end afterwards.
    """
    job = await client.submit("send_email", {"to": "a@example.com"})
    waiter = asyncio.create_task(client.result(job.id))
    async with asyncio.timeout(BOUND):
        await probe.parked(job.id).wait()
        probe.parked(job.id).clear()
        listeners = await conn.fetch(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN %'"
        )
        assert len(listeners) == 1, "the client holds one LISTEN connection"
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", listeners[0]["pid"])
        await probe.parked(job.id).wait()  # woken by the loss, re-read, waiting again
        await worker.claim_all([job])
        await worker.succeed([job], "after the drop")
    try:
        async with asyncio.timeout(BOUND):
            assert await waiter == "after the drop"
    finally:
        waiter.cancel()


# -- progress() ---------------------------------------------------------------------

REPORTS = [(0.25, "rendering"), (0.5, "sending"), (1.0, "done")]


async def test_progress_yields_each_report_in_order_then_stops_when_the_job_ends(
    client: Client, worker: FakeWorker
) -> None:
    job = await client.submit("send_email", {"to": "a@example.com"})
    await worker.claim_all([job])
    seen: asyncio.Queue[Progress] = asyncio.Queue()

    async def follow() -> list[Progress]:
        got = []
        async for update in client.progress(job.id):
            got.append(update)
            seen.put_nowait(update)
        return got

    follower = asyncio.create_task(follow())
    async with asyncio.timeout(BOUND):
        for fraction, message in REPORTS:
            assert await worker.progress(job, fraction, message)
            update = await next_or_end(seen, follower)
            assert (update.fraction, update.message) == (fraction, message)
        assert not follower.done(), "the stream lasts until the job ends"
        await worker.succeed([job], "ok")
        got = await follower
    assert [(p.fraction, p.message) for p in got] == REPORTS
    assert [p.at for p in got] == sorted(p.at for p in got)
    assert seen.empty(), "the final status repeats no report"


async def test_progress_of_a_job_finished_without_progress_yields_nothing(
    client: Client, worker: FakeWorker, probe: StatusProbe
) -> None:
    done, later = await client.submit("send_email", [{"n": 1}, {"n": 2}])
    await worker.claim_all([done, later])
    await worker.succeed([done], "ok")
    async with asyncio.timeout(BOUND):
        assert [p async for p in client.progress(done.id)] == []

    async def follow() -> list[Progress]:
        return [p async for p in client.progress(later.id)]

    follower = asyncio.create_task(follow())
    async with asyncio.timeout(BOUND):
        await probe.parked(later.id).wait()
        await worker.succeed([later], "ok")
        assert await follower == []


async def test_progress_through_sync_client_in_a_thread(
    dsn: str, client: Client, worker: FakeWorker
) -> None:
    job = await client.submit("send_email", {"to": "a@example.com"})
    await worker.claim_all([job])
    loop = asyncio.get_running_loop()
    seen: asyncio.Queue[Progress] = asyncio.Queue()

    def follow() -> list[Progress]:
        got = []
        with SyncClient(dsn, pool=client.pool_name, tenant=client.tenant) as jp:
            for update in jp.progress(job.id):
                got.append(update)
                loop.call_soon_threadsafe(seen.put_nowait, update)
        return got

    follower = asyncio.ensure_future(asyncio.to_thread(follow))
    try:
        async with asyncio.timeout(BOUND):
            for fraction, message in REPORTS:
                assert await worker.progress(job, fraction, message)
                update = await next_or_end(seen, follower)
                assert (update.fraction, update.message) == (fraction, message)
            await worker.succeed([job], "ok")
            got = await follower
    finally:
        if not follower.done():  # never leave the thread blocked on an unfinished job
            await worker.succeed([job], "ok")
            await asyncio.wait({follower}, timeout=BOUND)
    assert [(p.fraction, p.message) for p in got] == REPORTS
    assert all(isinstance(p, Progress) for p in got)


async def test_progress_of_another_job_is_not_mixed_in(client: Client, worker: FakeWorker) -> None:
    mine = await client.submit("send_email", {"n": 1})
    other = await client.submit("send_email", {"n": 2}, priority="high")
    await worker.claim_all([mine])
    await worker.claim_all([other], priority=Priority.HIGH)
    seen: asyncio.Queue[Progress] = asyncio.Queue()

    async def follow() -> list[Progress]:
        got = []
        async for update in client.progress(mine.id):
            got.append(update)
            seen.put_nowait(update)
        return got

    follower = asyncio.create_task(follow())
    async with asyncio.timeout(BOUND):
        assert await worker.progress(other, 0.75, "not yours")
        assert await worker.progress(mine, 0.5, "half")
        update = await next_or_end(seen, follower)
        await worker.succeed([mine, other], None)
        got = await follower
    assert (update.fraction, update.message) == (0.5, "half")
    assert [(p.fraction, p.message) for p in got] == [(0.5, "half")]
