"""The real worker's life: readiness, graceful stop, lost database connections.

Defends docs/architecture.md invariants 1-3 and "Sharding and ownership": a started worker holds
the leases of its shards and says it is ready; ``stop()`` lets running jobs finish,
gives buffered (never started) jobs back uncounted, writes every outcome, releases
every lease and removes its ``workers`` row; a job still running at the drain timeout
is interrupted and retried, and another worker completes it; a worker whose database
connections are all killed keeps running, reconnects and runs the next job; none of
its loops (claims, outcome writes, heartbeat) dies of a driver error on a connection
the server terminated; stop() returns whatever wakes the dispatcher as it stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import asyncpg
import pytest
from worker_runtime_helpers import (
    POOL,
    SHARDS,
    TERMINATE_WORKER_BACKENDS,
    WorkerRun,
    job_row,
    leases,
    result_of,
    running_worker,
    start_worker,
    worker_rows,
    worker_settings,
)

from jobpool import Client, Context, JobState, Registry
from jobpool.store import execution
from jobpool.store import leases as leases_store
from jobpool.worker import Worker
from jobpool.worker.completer import Completer

FIGURES = logging.getLogger("tests.figures")  # measured figures, for the log
BOUND = 5.0


@pytest.mark.usefixtures("pool")
async def test_ready_once_it_holds_its_shards(dsn: str, conn: asyncpg.Connection) -> None:
    worker = Worker(worker_settings(dsn), Registry())
    assert not worker.ready

    async with running_worker(dsn, Registry()) as run:
        owner = run.worker.settings.owner
        assert run.worker.ready
        assert sorted(run.worker.ownership.held) == list(range(SHARDS))
        assert {row["owner"] for row in await leases(conn)} == {owner}
        [row] = await worker_rows(conn)
        assert (row["ordinal"], row["incarnation"]) == (0, run.worker.settings.incarnation)
        await run.stop()
        assert not run.worker.ready


@pytest.mark.usefixtures("pool")
async def test_not_ready_until_a_shard_held_elsewhere_expires(
    dsn: str, conn: asyncpg.Connection
) -> None:
    # Shard 3 is held by another ordinal (a pod of an older ring) for one more second.
    await conn.execute(
        "UPDATE shard_leases SET owner = '7:other', ordinal = 7, epoch = 1,"
        " expires_at = now() + interval '1 second' WHERE pool = $1 AND shard = 3",
        POOL,
    )
    async with running_worker(dsn, Registry(), lease_ttl_s=1.5) as run:
        assert not run.worker.ready
        assert 3 not in run.worker.ownership.held
        assert len(run.worker.ownership.held) == SHARDS - 1
        # Readiness follows the heartbeat (every TTL/3): check after each one.
        beat = run.worker.ownership.renewed
        async with asyncio.timeout(BOUND):
            while not run.worker.ready:
                beat.clear()
                await beat.wait()
        assert 3 in run.worker.ownership.held


async def test_stop_drains_running_jobs_and_gives_buffered_ones_back(
    dsn: str, client: Client, conn: asyncpg.Connection
) -> None:
    registry = Registry()
    ran: list[int] = []
    interrupted: list[int] = []
    both_running = asyncio.Event()
    finish = asyncio.Event()

    @registry.handler("drained")
    async def drained(payload: Any, ctx: Context) -> int:
        ran.append(payload["n"])
        if len(ran) == 2:
            both_running.set()
        try:
            await finish.wait()
        except asyncio.CancelledError:
            interrupted.append(payload["n"])
            raise
        return payload["n"]

    jobs = await client.submit("drained", [{"n": n} for n in range(6)])
    run = await start_worker(dsn, registry, concurrency=2)
    try:
        async with asyncio.timeout(BOUND):
            await both_running.wait()
        running_ids = set(run.worker.dispatcher.running)
        buffered_ids = set(run.worker.dispatcher.buffered_ids())
        assert len(running_ids) == 2
        assert buffered_ids  # claimed (prefetched) but not started: no free slot
        waiting_ids = {job.id for job in jobs} - running_ids  # buffered or never claimed

        released = run.worker.dispatcher.gave_back
        released.clear()
        run.worker.stop()
        async with asyncio.timeout(BOUND):
            await released.wait()
        # The buffered jobs are back in the queue, their attempt not counted; the two
        # running ones still run (the drain waits for them).
        for job_id in waiting_ids:
            row = await job_row(conn, job_id)
            assert row is not None
            assert (row["state"], row["attempts"], row["worker"]) == ("queued", 0, None)
        for job_id in running_ids:
            row = await job_row(conn, job_id)
            assert row is not None
            assert (row["state"], row["attempts"]) == ("running", 1)
        assert not run.task.done()

        finish.set()
        async with asyncio.timeout(BOUND):
            await run.task
    finally:
        finish.set()
        if not run.task.done():
            await run.stop()

    assert sorted(ran) == [n for n, job in enumerate(jobs) if job.id in running_ids]
    assert interrupted == []
    for job_id in running_ids:
        status = await client.status(job_id)
        assert (status.state, status.attempts) == (JobState.SUCCEEDED, 1)
    for job_id in waiting_ids:
        status = await client.status(job_id)
        assert (status.state, status.attempts) == (JobState.QUEUED, 0)
    assert [row["owner"] for row in await leases(conn)] == [None] * SHARDS
    assert await worker_rows(conn) == []


async def test_job_interrupted_at_drain_timeout_is_retried_by_the_next_worker(
    dsn: str, client: Client, conn: asyncpg.Connection
) -> None:
    registry = Registry()
    attempts: list[int] = []
    interrupted: list[int] = []
    started = asyncio.Event()

    @registry.handler("too.slow")
    async def too_slow(payload: Any, ctx: Context) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            started.set()
            try:
                await asyncio.sleep(BOUND * 3)
            except asyncio.CancelledError:
                interrupted.append(ctx.attempt)
                raise
        return f"done on attempt {ctx.attempt}"

    async with running_worker(dsn, registry, drain_timeout_s=0.2) as first:
        job = await client.submit("too.slow", {})
        async with asyncio.timeout(BOUND):
            await started.wait()
        stopping = time.monotonic()
        await first.stop()
    assert time.monotonic() - stopping < 2.0
    assert interrupted == [1]

    row = await job_row(conn, job.id)
    assert row is not None
    assert (row["state"], row["attempts"], row["worker"]) == ("queued", 1, None)
    status = await client.status(job.id)
    [error] = status.error_history
    assert (error.attempt, error.error_type) == (1, "Interrupted")
    assert [lease["owner"] for lease in await leases(conn)] == [None] * SHARDS

    async with running_worker(dsn, registry) as second:
        assert second.worker.settings.incarnation != first.worker.settings.incarnation
        assert await result_of(client, job.id) == "done on attempt 2"

    assert attempts == [1, 2]
    status = await client.status(job.id)
    assert (status.state, status.attempts) == (JobState.SUCCEEDED, 2)
    assert [e.error_type for e in status.error_history] == ["Interrupted"]


async def test_worker_survives_losing_its_database_connections(
    dsn: str, client: Client, conn: asyncpg.Connection
) -> None:
    registry = Registry()

    @registry.handler("echo")
    async def echo(payload: Any, ctx: Context) -> Any:
        return payload

    async with running_worker(dsn, registry) as run:
        before = await client.submit("echo", {"n": 1})
        assert await result_of(client, before.id) == {"n": 1}

        killed = await conn.fetchval(TERMINATE_WORKER_BACKENDS)
        assert killed >= 2  # the pool's connections and the LISTEN connection

        after = await client.submit("echo", {"n": 2})
        assert await result_of(client, after.id, timeout=10.0) == {"n": 2}
        assert not run.task.done()
        # Once more, with the connections it opened again.
        third = await client.submit("echo", {"n": 3})
        assert await result_of(client, third.id) == {"n": 3}
        reconnected = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name LIKE 'jobpool-worker/%' AND datname = current_database()"
        )
        assert reconnected >= 2


async def test_jobs_running_while_the_connections_drop_still_complete(
    dsn: str, client: Client, conn: asyncpg.Connection
) -> None:
    """Each round kills the worker's connections while a job runs, then lets the job
    end at once: its outcome is written on a connection the server just terminated.
    (Whether the driver has noticed yet is a matter of timing: several rounds.)"""
    registry = Registry()
    running = asyncio.Event()
    finish = asyncio.Event()

    @registry.handler("outlives.connections")
    async def outlives(payload: Any, ctx: Context) -> int:
        if payload["block"]:
            running.set()
            await finish.wait()
        return payload["round"]

    async with running_worker(dsn, registry) as run:
        for round_ in range(4):
            running.clear()
            finish.clear()
            job = await client.submit("outlives.connections", {"round": round_, "block": True})
            async with asyncio.timeout(BOUND):
                await running.wait()
            assert await conn.fetchval(TERMINATE_WORKER_BACKENDS) >= 2
            finish.set()
            assert await result_of(client, job.id, timeout=10.0) == round_
            # and the worker goes on running jobs afterwards
            after = await client.submit("outlives.connections", {"round": -1, "block": False})
            assert await result_of(client, after.id) == -1
            assert not run.task.done()
            status = await client.status(job.id)
            assert (status.attempts, status.error_history) == (1, ())


def driver_error_on_terminated_connection() -> Exception:
    """What asyncpg raises for a statement sent on a pooled connection the server has
    just terminated, before the driver saw the socket close (seen with
    ``pg_terminate_backend``; not an ``InterfaceError`` nor a ``PostgresError``)."""
    return asyncpg.InternalClientError(
        "cannot switch to state 11; another operation (2) is in progress"
    )


def connection_closed() -> Exception:
    return asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")


class BrokenOnce:
    """Makes ``<module>.<name>`` raise ``error()`` once each time it is ``armed``; every
    other call goes through."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        module: Any,
        name: str,
        error: Any = driver_error_on_terminated_connection,
    ) -> None:
        self.armed = False
        self.raised = asyncio.Event()
        original = getattr(module, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.armed:
                self.armed = False
                self.raised.set()
                raise error()
            return await original(*args, **kwargs)

        monkeypatch.setattr(module, name, call)


def echo_registry() -> Registry:
    registry = Registry()

    @registry.handler("echo")
    async def echo(payload: Any, ctx: Context) -> Any:
        return payload

    return registry


async def test_outcome_writer_survives_a_driver_error_on_a_terminated_connection(
    dsn: str, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = BrokenOnce(monkeypatch, execution, "job_finish_many")
    async with running_worker(dsn, echo_registry()) as run:
        broken.armed = True
        job = await client.submit("echo", {"n": 1})
        assert await result_of(client, job.id) == {"n": 1}
        assert broken.raised.is_set()
        later = await client.submit("echo", {"n": 2})
        assert await result_of(client, later.id) == {"n": 2}
        assert not run.task.done()


async def test_dispatcher_survives_a_driver_error_on_a_terminated_connection(
    dsn: str, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = BrokenOnce(monkeypatch, execution, "job_claim_batch")
    async with running_worker(dsn, echo_registry()):
        broken.armed = True
        job = await client.submit("echo", {"n": 1})
        assert await result_of(client, job.id) == {"n": 1}
        assert broken.raised.is_set()


async def test_dispatcher_backoff_starts_over_once_it_recovered(
    dsn: str, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connection losses months apart must not add up: after each recovery, the next
    failed claim is retried after the first backoff step again (0.5 s), not after an
    ever longer one (0.5, 1, 2, then 5 s for good)."""
    broken = BrokenOnce(monkeypatch, execution, "job_claim_batch", connection_closed)
    async with running_worker(dsn, echo_registry()) as run:
        dispatcher = run.worker.dispatcher
        on_notify = dispatcher.on_notify

        def arming(payload: str) -> None:
            broken.armed = True  # the claim this NOTIFY causes fails
            on_notify(payload)

        dispatcher.on_notify = arming  # type: ignore[method-assign]
        for n in range(4):
            submitted = time.monotonic()
            job = await client.submit("echo", {"n": n})
            assert await result_of(client, job.id, timeout=2.5) == {"n": n}
            assert broken.raised.is_set()
            broken.raised.clear()
            FIGURES.info(
                "round %d: a failed claim, then the job done %.2f s after its submit",
                n,
                time.monotonic() - submitted,
            )


async def test_heartbeat_survives_a_driver_error_on_a_terminated_connection(
    dsn: str, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = BrokenOnce(monkeypatch, leases_store, "lease_renew")
    async with running_worker(dsn, echo_registry(), lease_ttl_s=1.5) as run:
        ownership = run.worker.ownership
        beat = ownership.renewed
        broken.armed = True
        async with asyncio.timeout(BOUND):
            await broken.raised.wait()
        beat.clear()
        try:
            async with asyncio.timeout(BOUND):
                await beat.wait()  # the next heartbeat renews the leases
        except TimeoutError:
            pytest.fail("no heartbeat after the failed one: the ownership loop died")
        assert run.worker.ready
        job = await client.submit("echo", {"n": 1})
        assert await result_of(client, job.id) == {"n": 1}


@pytest.mark.usefixtures("pool")
async def test_stop_completes_when_the_dispatcher_is_woken_as_it_is_cancelled(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shutdown cancels the worker's loops right after the last outcome is written. A
    wake-up of the dispatcher landing at that same instant (a finished job, a NOTIFY,
    a written retry) must not swallow the cancellation: stop() must still return."""
    runs: list[WorkerRun] = []
    drained = Completer.drained

    async def drained_then_woken(self: Completer) -> None:
        await drained(self)
        runs[0].worker.dispatcher.wake(new_work=True)

    monkeypatch.setattr(Completer, "drained", drained_then_woken)
    runs.append(await start_worker(dsn, Registry()))  # returns once the dispatcher sleeps
    await runs[0].stop(timeout=3.0)  # fails if the dispatcher loop outlives its cancellation
