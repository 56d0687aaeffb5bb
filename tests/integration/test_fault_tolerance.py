"""Fault tolerance of the in-process worker, each case made deterministic.

- The claim timer: a retry backing off in an idle lane runs after its backoff even while
  another lane keeps the worker busy, and a job that falls due between a claim and the
  timer's look-up is not skipped (both stranded jobs for minutes before).
- Handover: a shard that moves while a claim on it is in flight is not released under
  that claim; what the claim brought in is given back unstarted, so the old and the new
  owner never run one job at once. A worker's own release is no "lost lease".
- Cancellation: the row decides, never a NOTIFY payload; a cancel requested while the
  worker died sticks when the attempt is requeued; a missed NOTIFY is caught by the
  heartbeat.
- Orphans: the shards of an ordinal that does not come back are adopted by a live one
  and handed back when it returns; the lease history tells the story.

Killing a worker is cancelling its task: like kill -9, nothing is released or written.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
import pytest
from worker_runtime_helpers import (
    POOL,
    SHARDS,
    WorkerRun,
    job_row,
    result_of,
    running_worker,
    start_worker,
)

from jobpool import CancelOutcome, Client, Context, JobState
from jobpool.models import Priority
from jobpool.sharding import ordinal_for, shard_for
from jobpool.store import channels, execution
from jobpool.store.leases import lease_history_list, lease_take
from jobpool.store.pools import pool_set_replicas
from jobpool.worker import Registry, RetryPolicy

BOUND = 10.0
TTL = 1.5


def _key_in(shard: int) -> str:
    return next(f"k{i}" for i in range(10_000) if shard_for(f"k{i}", SHARDS) == shard)


def _moving_shard() -> int:
    """A shard that ordinal 0 owns in a ring of 1 and ordinal 1 in a ring of 2."""
    return next(s for s in range(SHARDS) if ordinal_for(s, 2) == 1)


async def _eventually(check: Any, what: str, *, timeout: float = BOUND) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not await check():  # noqa: ASYNC110 - state in another process' rows
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"not within {timeout} s: {what}")


def _kill(run: WorkerRun) -> None:
    """Like kill -9: the worker's task ends with no release and no last write."""
    run.task.cancel()


# -- the claim timer ---------------------------------------------------------------------


async def test_a_retry_in_an_idle_lane_runs_after_its_backoff_while_another_lane_is_busy(
    dsn: str, client: Client
) -> None:
    registry = Registry()
    events: list[str] = []

    @registry.handler("slow")
    async def slow(payload: Any, ctx: Context) -> None:
        await asyncio.sleep(0.05)
        events.append("slow")

    @registry.handler("fails.once")
    async def fails_once(payload: Any, ctx: Context) -> int:
        events.append(f"attempt {ctx.attempt}")
        if ctx.attempt == 1:
            raise ConnectionError("first attempt fails")
        return ctx.attempt

    # A backoff of 0.3-0.6 s: surely longer than the claim that follows the retry's write.
    retry = RetryPolicy(base_s=0.6, cap_s=0.6, max_attempts=2)
    async with running_worker(dsn, registry, concurrency=1, lease_ttl_s=TTL, retry=retry):
        await client.submit("slow", [{}] * 200, priority="low")
        job = await client.submit("fails.once", {}, priority="high")
        assert await result_of(client, job.id, timeout=BOUND) == 2

    between = events[events.index("attempt 1") : events.index("attempt 2")]
    # A dozen slow jobs fit in the backoff, not the low lane's 200 (10 s).
    assert between.count("slow") < 100, f"the retry waited for {len(between)} low jobs"


async def test_a_job_that_falls_due_during_the_timer_look_up_is_not_skipped(
    dsn: str, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    next_due = execution.job_next_due

    async def slow_next_due(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.6)  # the delayed job falls due meanwhile
        return await next_due(*args, **kwargs)

    registry = Registry()

    @registry.handler("later")
    async def later(payload: Any, ctx: Context) -> str:
        return "ran"

    async with running_worker(dsn, registry, lease_ttl_s=TTL):
        monkeypatch.setattr(execution, "job_next_due", slow_next_due)
        job = await client.submit("later", {}, delay=0.3)
        assert await result_of(client, job.id, timeout=BOUND) == "ran"


# -- handover ----------------------------------------------------------------------------


async def test_a_shard_moving_during_a_claim_is_not_released_under_it_nor_run_twice(
    dsn: str, client: Client, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    moving = _moving_shard()
    ran_by: list[int] = []

    def recording(ordinal: int) -> Registry:
        registry = Registry()

        @registry.handler("once")
        async def once(payload: Any, ctx: Context) -> None:
            ran_by.append(ordinal)

        return registry

    claimed, resume = asyncio.Event(), asyncio.Event()
    claim_batch = execution.job_claim_batch

    async def held_claim(*args: Any, **kwargs: Any) -> Any:
        jobs = await claim_batch(*args, **kwargs)
        if any(job.shard == moving for job in jobs):
            claimed.set()
            await resume.wait()  # the rows are claimed; the worker has not seen them yet
        return jobs

    async with (
        running_worker(dsn, recording(0), lease_ttl_s=TTL) as old,
        running_worker(dsn, recording(1), ordinal=1, lease_ttl_s=TTL) as new,
    ):
        monkeypatch.setattr(execution, "job_claim_batch", held_claim)
        job = await client.submit("once", {}, key=_key_in(moving))
        async with asyncio.timeout(BOUND):
            await claimed.wait()
        await pool_set_replicas(conn, POOL, 2)  # ordinal 1 is alive: the shard moves to it
        ownership = old.worker.ownership
        await ownership.read_ring()
        await ownership.run_once()
        assert moving not in ownership.wanted
        assert moving in ownership.held, "released while a claim on the shard was in flight"
        resume.set()
        # What the claim brought in goes back unstarted, then the drained shard is let go
        # and its new owner runs the job.
        assert await result_of(client, job.id, timeout=BOUND) is None
        assert moving in new.worker.ownership.held

    assert ran_by == [1], "the job ran on the old owner, or not exactly once"
    status = await client.status(job.id)
    assert (status.attempts, status.error_history) == (1, ()), "the give-back counted an attempt"


async def _state_is(conn: asyncpg.Connection, job_id: Any, state: JobState) -> bool:
    row = await job_row(conn, job_id)
    return row is not None and row["state"] == state.value


@pytest.mark.usefixtures("pool")
async def test_a_workers_own_handover_is_not_reported_as_a_lost_lease(
    dsn: str, conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        running_worker(dsn, Registry(), lease_ttl_s=TTL) as run,
        running_worker(dsn, Registry(), ordinal=1, lease_ttl_s=TTL),
    ):
        await pool_set_replicas(conn, POOL, 2)
        ownership = run.worker.ownership
        await ownership.read_ring()
        with caplog.at_level(logging.INFO, logger="jobpool.worker.ownership"):
            # The heartbeat and a ring change's follow-up, at once: the second must see
            # what the first released.
            await asyncio.gather(ownership.run_once(), ownership.run_once())
        assert set(ownership.held) == ownership.wanted
    messages = [r.getMessage() for r in caplog.records]
    assert any("released shards" in m for m in messages)
    assert not [m for m in messages if "lost the leases" in m], messages


# -- cancellation ------------------------------------------------------------------------


async def test_a_cancel_requested_while_the_worker_died_sticks_when_it_is_requeued(
    dsn: str, client: Client, conn: asyncpg.Connection
) -> None:
    calls: list[int] = []
    registry = Registry()

    @registry.handler("long")
    async def long(payload: Any, ctx: Context) -> None:
        calls.append(ctx.attempt)

    job = await client.submit("long", {})
    # A previous incarnation of ordinal 0 claimed it, then froze and died.
    await lease_take(conn, POOL, owner="0:dead", ordinal=0, shards=[job.shard], ttl_s=60)
    lanes = dict.fromkeys(Priority, 10)
    [claimed] = await execution.job_claim_batch(
        conn, POOL, owner="0:dead", shards=[job.shard], lanes=lanes
    )
    assert claimed.id == job.id
    assert await client.cancel(job.id) is CancelOutcome.CANCEL_REQUESTED

    async with running_worker(dsn, registry, lease_ttl_s=TTL):  # supersedes "0:dead"
        await _eventually(lambda: _finished(conn, job.id), "the requeued job ended")

    status = await client.status(job.id)
    assert status.state is JobState.CANCELLED
    assert calls == [], "a job whose cancel was requested ran again"
    assert [e.error_type for e in status.error_history] == ["WorkerLost"]
    assert status.attempts == 1, "ending it counted an attempt that never ran"


async def _finished(conn: asyncpg.Connection, job_id: Any) -> bool:
    return await job_row(conn, job_id) is None


async def test_the_heartbeat_catches_a_cancel_whose_notify_was_missed(
    dsn: str, client: Client
) -> None:
    started = asyncio.Event()
    registry = Registry()

    @registry.handler("long")
    async def long(payload: Any, ctx: Context) -> None:
        started.set()
        await asyncio.sleep(60)

    async with running_worker(dsn, registry, lease_ttl_s=TTL) as run:
        dispatcher = run.worker.dispatcher
        on_notify = dispatcher.on_notify

        def losing_cancels(payload: str) -> None:
            if payload != channels.CANCEL:
                on_notify(payload)

        dispatcher.on_notify = losing_cancels  # type: ignore[method-assign]
        job = await client.submit("long", {})
        async with asyncio.timeout(BOUND):
            await started.wait()
        assert await client.cancel(job.id) is CancelOutcome.CANCEL_REQUESTED

        async def cancelled() -> bool:
            return (await client.status(job.id)).state is JobState.CANCELLED

        await _eventually(cancelled, "the cancel acted on by the next heartbeat")


async def test_a_forged_cancel_notify_cancels_nothing(
    dsn: str, client: Client, conn: asyncpg.Connection
) -> None:
    started, go_on = asyncio.Event(), asyncio.Event()
    registry = Registry()

    @registry.handler("long")
    async def long(payload: Any, ctx: Context) -> str:
        started.set()
        await go_on.wait()
        return "finished"

    async with running_worker(dsn, registry, lease_ttl_s=TTL) as run:
        job = await client.submit("long", {})
        async with asyncio.timeout(BOUND):
            await started.wait()
        checked = run.worker.dispatcher.cancels_read
        checked.clear()
        channel = channels.worker_channel(POOL)
        for payload in (f"cancel:{job.id}", "cancel"):  # any role can NOTIFY anything
            await conn.execute("SELECT pg_notify($1, $2)", channel, payload)
        async with asyncio.timeout(BOUND):
            await checked.wait()
        go_on.set()
        assert await result_of(client, job.id, timeout=BOUND) == "finished"


# -- orphans -----------------------------------------------------------------------------


async def test_a_missing_ordinals_shards_are_adopted_then_handed_back(
    dsn: str, client: Client, conn: asyncpg.Connection
) -> None:
    registry = Registry()

    @registry.handler("echo")
    async def echo(payload: Any, ctx: Context) -> Any:
        return payload

    await pool_set_replicas(conn, POOL, 2)
    settings = {"lease_ttl_s": TTL, "orphan_grace_s": 1.0}
    orphans = {s for s in range(SHARDS) if ordinal_for(s, 2) == 1}
    async with running_worker(dsn, registry, ordinal=0, **settings) as survivor:
        missing = await start_worker(dsn, registry, ordinal=1, **settings)

        async def settled() -> bool:
            return set(missing.worker.ownership.held) == orphans

        await _eventually(settled, "ordinal 1 holds its shards")
        _kill(missing)
        await asyncio.gather(missing.task, return_exceptions=True)

        jobs = [await client.submit("echo", {"n": s}, key=_key_in(s)) for s in sorted(orphans)]
        # Expiry (TTL) + grace + a heartbeat (TTL / 3), with room for a slow machine.
        for job in jobs:
            assert await result_of(client, job.id, timeout=BOUND) == {"n": job.shard}
        ownership = survivor.worker.ownership
        assert orphans <= ownership.adopted <= set(ownership.held)

        async with running_worker(dsn, registry, ordinal=1, **settings) as returned:
            back = returned.worker.ownership

            async def handed_back() -> bool:
                return set(back.held) == orphans and not ownership.adopted

            await _eventually(handed_back, "the adopted shards handed back")
            assert not set(ownership.held) & orphans

    shard = min(orphans)
    history = [
        (r.ordinal, r.taken_because, r.ended_because)
        for r in await lease_history_list(conn, POOL, [shard])
    ]
    assert history == [
        (1, "free", "expired"),
        (0, "adopted", "released"),
        (1, "free", "released"),
    ], history


def _recording(calls: list[int]) -> Registry:
    """Handlers of type ``once`` that record each attempt they run."""
    registry = Registry()

    @registry.handler("once")
    async def once(payload: Any, ctx: Context) -> None:
        calls.append(ctx.attempt)

    return registry


async def _buffered(run: WorkerRun, client: Client) -> tuple[Any, Any]:
    """Submit a job and put it, claimed, in the worker's buffer (claiming is off)."""
    run.worker.dispatcher.claiming = False
    job = await client.submit("once", {})
    lanes = dict.fromkeys(Priority, 10)
    async with run.worker._conns.acquire() as conn:  # type: ignore[union-attr]
        [claimed] = await execution.job_claim_batch(
            conn, POOL, owner=run.worker.settings.owner, shards=[job.shard], lanes=lanes
        )
    run.worker.dispatcher.buffers[claimed.priority].append(claimed)
    return job, claimed


async def test_an_attempt_whose_leases_lapsed_before_its_first_step_does_not_start(
    dsn: str, client: Client
) -> None:
    """A process frozen between creating an attempt's task and the task's first step
    (SIGSTOP) may have lost its leases meanwhile: the handler must not start then."""
    calls: list[int] = []
    async with running_worker(dsn, _recording(calls), lease_ttl_s=TTL) as run:
        dispatcher, ownership = run.worker.dispatcher, run.worker.ownership
        job, claimed = await _buffered(run, client)
        valid_until = ownership.valid_until
        dispatcher._start_ready()  # the task exists; its first step has not run
        ownership.valid_until = 0.0  # ... and the process "wakes up" past its leases
        await asyncio.sleep(0.05)
        assert calls == [], "a handler started past the leases' validity"
        assert list(dispatcher.buffers[claimed.priority]) == [claimed]

        ownership.valid_until = valid_until  # the heartbeat renewed them
        dispatcher.wake()
        assert await result_of(client, job.id, timeout=BOUND) is None
    assert calls == [1]


async def test_a_buffered_job_whose_cancel_hint_came_mid_step_is_not_started(
    dsn: str, client: Client
) -> None:
    calls: list[int] = []
    async with running_worker(dsn, _recording(calls), lease_ttl_s=TTL) as run:
        dispatcher = run.worker.dispatcher
        job, _ = await _buffered(run, client)
        assert await client.cancel(job.id) is CancelOutcome.CANCEL_REQUESTED
        dispatcher.check_cancels()  # the hint arrives while a step is under way ...
        dispatcher._start_ready()  # ... which then reaches its starts
        assert not dispatcher.running, "a job was started before its cancel hint was read"

        async def cancelled() -> bool:
            return (await client.status(job.id)).state is JobState.CANCELLED

        await _eventually(cancelled, "the buffered job ended cancelled")
    assert calls == []
