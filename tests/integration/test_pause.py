"""Pause and resume a pool or one job type, with the real in-process worker.

A paused pool starts nothing new while its running jobs finish; a paused type's jobs
are parked (state ``paused``, attempt uncounted) while other types run, and run once
resumed; retries of a paused type are parked too; a parked job is cancelled at once; a
parked keyed head keeps its successors waiting. The pause is written by the schema
owner here (as the CLI and the operator do) and read by the worker from the pool row.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
from worker_runtime_helpers import POOL, WorkerRun, result_of, running_worker

from jobpool import Client, Context, JobState
from jobpool.errors import AccessDenied, InvalidInput, PoolNotFound
from jobpool.models import CancelOutcome, JobId, Pool
from jobpool.store.pause import job_parked_counts, pool_pause_change
from jobpool.store.pools import pool_get
from jobpool.store.workers import pool_queue_counts
from jobpool.worker import Registry
from jobpool.worker.dispatcher import Dispatcher

DEADLINE_S = 20.0


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait until ``check()`` holds, asking it again after each short pause."""
    try:
        async with asyncio.timeout(DEADLINE_S):
            while not await check():  # noqa: ASYNC110 - a database row, not an event
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {DEADLINE_S} s: {what}") from None


async def states(conn: asyncpg.Connection, ids: list[JobId]) -> list[str | None]:
    rows = await conn.fetch("SELECT id, state FROM jobs WHERE id = ANY($1::uuid[])", ids)
    found = {row["id"]: row["state"] for row in rows}
    return [found.get(job_id) for job_id in ids]


async def all_in(conn: asyncpg.Connection, ids: list[JobId], state: str) -> bool:
    return await states(conn, ids) == [state] * len(ids)


async def a_full_step(dispatcher: Dispatcher) -> None:
    """Wake the dispatcher with news of work everywhere; return once it went through a
    whole step (every lane asked, if it claims at all) and sleeps again."""
    dispatcher.asleep.clear()
    dispatcher.wake(new_work=True)
    async with asyncio.timeout(DEADLINE_S):
        await dispatcher.asleep.wait()


async def sees(run: WorkerRun, *, paused: bool, types: set[str]) -> None:
    pause = run.worker.ownership
    await until(
        _true(lambda: pause.pause.paused == paused and pause.pause.types == types),
        f"the worker sees paused={paused}, types={types}",
    )


def _true(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def ask() -> bool:
        return check()

    return ask


def gated_registry() -> tuple[Registry, asyncio.Event, asyncio.Event, list[str]]:
    """``slow`` waits for ``release``; ``send`` and ``report`` return at once; every
    start is recorded by type."""
    registry = Registry()
    started, release = asyncio.Event(), asyncio.Event()
    ran: list[str] = []

    @registry.handler("slow")
    async def slow(payload: dict[str, int], ctx: Context) -> int:
        ran.append("slow")
        started.set()
        await release.wait()
        return 1

    @registry.handler("send")
    async def send(payload: dict[str, int], ctx: Context) -> int:
        ran.append("send")
        return payload["n"]

    @registry.handler("report")
    async def report(payload: dict[str, int], ctx: Context) -> int:
        ran.append("report")
        return payload["n"]

    return registry, started, release, ran


async def test_a_paused_pool_starts_nothing_new_while_running_jobs_finish_then_resumes(
    dsn: str, client: Client, conn: asyncpg.Connection
) -> None:
    registry, started, release, ran = gated_registry()
    async with running_worker(dsn, registry) as run:
        running = await client.submit("slow", {"n": 0})
        await asyncio.wait_for(started.wait(), DEADLINE_S)

        change = await pool_pause_change(conn, POOL, paused=True)
        assert change.pause.paused
        assert not change.pause.types
        await sees(run, paused=True, types=set())
        waiting = await client.submit("send", [{"n": i} for i in range(5)])
        release.set()
        assert await result_of(client, running.id) == 1  # the running job finished
        await a_full_step(run.worker.dispatcher)
        ids = [job.id for job in waiting]
        assert await all_in(conn, ids, "queued")
        assert ran == ["slow"]
        assert not any(run.worker.dispatcher.buffers.values())
        assert (await pool_get(conn, POOL)).pause.paused

        change = await pool_pause_change(conn, POOL, paused=False)
        assert not change.pause.active
        assert [await result_of(client, job_id) for job_id in ids] == list(range(5))


async def test_a_paused_type_is_parked_while_other_types_run_and_runs_once_resumed(
    dsn: str, client: Client, conn: asyncpg.Connection
) -> None:
    registry, _, _, ran = gated_registry()
    async with running_worker(dsn, registry) as run:
        await pool_pause_change(conn, POOL, add=["report"])
        await sees(run, paused=False, types={"report"})
        reports = [job.id for job in await client.submit("report", [{"n": i} for i in range(6)])]
        sends = [job.id for job in await client.submit("send", [{"n": i} for i in range(4)])]

        assert [await result_of(client, job_id) for job_id in sends] == list(range(4))
        await until(lambda: all_in(conn, reports, "paused"), "every report is parked")
        assert "report" not in ran
        status = await client.status(reports[0])
        assert status.state is JobState.PAUSED
        assert status.attempts == 0
        assert await job_parked_counts(conn, POOL) == {"report": 6}
        assert sum((await pool_queue_counts(conn, POOL))[JobState.PAUSED].values()) == 6

        change = await pool_pause_change(conn, POOL, remove=["report"])
        assert change.unparked == 6
        assert not change.pause.active
        assert [await result_of(client, job_id) for job_id in reports] == list(range(6))
        assert await job_parked_counts(conn, POOL) == {}


async def test_retries_of_a_paused_type_are_parked(
    dsn: str, client: Client, conn: asyncpg.Connection
) -> None:
    registry = Registry()
    failing, fail_now = asyncio.Event(), asyncio.Event()

    @registry.handler("flaky")
    async def flaky(payload: dict[str, int], ctx: Context) -> int:
        if ctx.attempt == 1:
            failing.set()
            await fail_now.wait()
            raise RuntimeError("first attempt fails")
        return ctx.attempt

    async with running_worker(dsn, registry) as run:
        job = await client.submit("flaky", {"n": 1})
        await asyncio.wait_for(failing.wait(), DEADLINE_S)
        await pool_pause_change(conn, POOL, add=["flaky"])
        await sees(run, paused=False, types={"flaky"})
        fail_now.set()  # the retry comes after the pause: it is parked, not run

        await until(lambda: all_in(conn, [job.id], "paused"), "the retry is parked")
        status = await client.status(job.id)
        assert status.attempts == 1
        assert [e.error_type for e in status.error_history] == ["RuntimeError"]
        await pool_pause_change(conn, POOL, remove=["flaky"])
        assert await result_of(client, job.id) == 2


async def test_a_parked_job_is_cancelled_at_once(
    dsn: str, client: Client, conn: asyncpg.Connection
) -> None:
    registry, _, _, _ = gated_registry()
    async with running_worker(dsn, registry) as run:
        await pool_pause_change(conn, POOL, add=["report"])
        await sees(run, paused=False, types={"report"})
        job = await client.submit("report", {"n": 1})
        await until(lambda: all_in(conn, [job.id], "paused"), "the report is parked")

        assert await client.cancel(job.id) is CancelOutcome.CANCELLED
        assert (await client.status(job.id)).state is JobState.CANCELLED
        assert await states(conn, [job.id]) == [None]


async def test_a_parked_keyed_head_keeps_its_successors_waiting(
    dsn: str, client: Client, conn: asyncpg.Connection
) -> None:
    registry = Registry()
    order: list[int] = []

    @registry.handler("report")
    async def report(payload: dict[str, int], ctx: Context) -> int:
        order.append(payload["n"])
        return payload["n"]

    async with running_worker(dsn, registry) as run:
        await pool_pause_change(conn, POOL, add=["report"])
        await sees(run, paused=False, types={"report"})
        keyed = await client.submit("report", [{"n": i} for i in range(4)], key="k")
        jobs = [job.id for job in keyed]
        await until(lambda: all_in(conn, jobs[:1], "paused"), "the head is parked")
        await a_full_step(run.worker.dispatcher)
        assert await states(conn, jobs) == ["paused", "waiting", "waiting", "waiting"]

        await pool_pause_change(conn, POOL, remove=["report"])
        assert [await result_of(client, job_id) for job_id in jobs] == [0, 1, 2, 3]
        assert order == [0, 1, 2, 3]


async def test_pause_changes_are_checked_and_need_the_operator_role(
    pool: Pool, conn: asyncpg.Connection, operator_dsn: str, worker_dsn: str
) -> None:
    with pytest.raises(PoolNotFound):
        await pool_pause_change(conn, "nope", paused=True)
    with pytest.raises(InvalidInput):
        await pool_pause_change(conn, POOL, add=["not a type"])
    await pool_pause_change(conn, POOL, add=["a", "b"])
    await pool_pause_change(conn, POOL, add=["b", "c"], remove=["a"])
    assert (await pool_get(conn, POOL)).pause.types == {"b", "c"}

    operator = await asyncpg.connect(operator_dsn)
    try:
        change = await pool_pause_change(operator, POOL, paused=True, types=[])
        assert change.pause.paused
        assert not change.pause.types
    finally:
        await operator.close()
    worker = await asyncpg.connect(worker_dsn)
    try:
        with pytest.raises(AccessDenied):
            await pool_pause_change(worker, POOL, paused=False)
    finally:
        await worker.close()
