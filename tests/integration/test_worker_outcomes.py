"""Every way an attempt can end, run by the real worker against a real Postgres.

Defends the job lifecycle (docs/architecture.md, "The data path"): success with a JSON
result; retry with exponential backoff, then success; attempts exhausted -> DLQ with the
full error history; terminal errors (invalid payload, unknown type, ``jobpool.Permanent``, a
result that is not JSON) -> DLQ after one attempt; a handler timeout is retryable; a
cancelled running job's task is cancelled at once and the job ends ``cancelled``, a
cancelled job still waiting in the worker's buffer ends ``cancelled`` without running;
progress reaches ``client.progress()``; a long job outlives the lease TTL without
being run twice; sync handlers run in a thread; handlers without a payload model get
the plain JSON value; the outcome counters of the Prometheus metrics move.

Each test builds its own ``Registry`` whose handlers record what they saw.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import asyncpg
import pytest
from pydantic import BaseModel
from worker_runtime_helpers import (
    FAST_RETRY,
    POOL,
    dlq_rows,
    history_row,
    result_of,
    running_worker,
    sample,
)

import jobpool
from jobpool import CancelOutcome, Client, Context, JobState, Priority, Registry
from jobpool.errors import JobCancelled, JobFailed
from jobpool.models import Pool

FIGURES = logging.getLogger("tests.figures")  # measured figures, for the log
BOUND = 5.0  # upper bound for anything that should happen promptly


class Greeting(BaseModel):
    name: str
    times: int = 1


async def test_success_returns_the_result_and_gives_the_handler_its_context(
    dsn: str, client: Client
) -> None:
    registry = Registry()
    seen: list[tuple[Any, ...]] = []

    @registry.handler("greet", payload=Greeting)
    async def greet(payload: Greeting, ctx: Context) -> dict[str, Any]:
        seen.append((payload, ctx.job_id, ctx.type, ctx.attempt, ctx.priority, ctx.tenant))
        seen.append((ctx.request_id, ctx.user_id))
        return {"greeting": f"hello {payload.name}", "n": payload.times, "ok": True}

    async with running_worker(dsn, registry):
        job = await client.submit(
            "greet",
            {"name": "ada", "times": 2},
            priority="high",
            request_id="req-1",
            user_id="user-7",
        )
        result = await result_of(client, job.id)

    assert result == {"greeting": "hello ada", "n": 2, "ok": True}
    assert seen == [
        (Greeting(name="ada", times=2), job.id, "greet", 1, Priority.HIGH, "acme"),
        ("req-1", "user-7"),
    ]
    status = await client.status(job.id)
    assert status.state is JobState.SUCCEEDED
    assert status.attempts == 1
    assert status.error_history == ()
    assert status.result == result


async def test_failed_attempts_are_retried_with_backoff_then_succeed(
    dsn: str, client: Client
) -> None:
    registry = Registry()
    starts: list[float] = []
    ends: list[float] = []

    @registry.handler("flaky")
    async def flaky(payload: Any, ctx: Context) -> str:
        starts.append(time.monotonic())
        try:
            if ctx.attempt < 3:
                raise ConnectionError(f"attempt {ctx.attempt} fails on purpose")
            return f"ok on attempt {ctx.attempt}"
        finally:
            ends.append(time.monotonic())

    async with running_worker(dsn, registry):
        job = await client.submit("flaky", {})
        result = await result_of(client, job.id)

    assert result == "ok on attempt 3"
    status = await client.status(job.id)
    assert status.state is JobState.SUCCEEDED
    assert status.attempts == 3
    assert [(e.attempt, e.error_type) for e in status.error_history] == [
        (1, "ConnectionError"),
        (2, "ConnectionError"),
    ]
    assert status.error_history[0].message == "attempt 1 fails on purpose"
    # Backoff: retry n waits at least half of base * factor**(n-1) (0.025 s, then 0.05 s).
    waits = [starts[i + 1] - ends[i] for i in range(2)]
    assert waits[0] >= FAST_RETRY.base_s / 2 * 0.9, waits
    assert waits[1] >= FAST_RETRY.base_s * FAST_RETRY.factor / 2 * 0.9, waits


async def test_exhausted_attempts_go_to_the_dlq_with_every_error(
    dsn: str, client: Client, conn: asyncpg.Connection
) -> None:
    registry = Registry()
    attempts: list[int] = []

    @registry.handler("always.fails")
    async def always_fails(payload: Any, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        raise RuntimeError(f"attempt {ctx.attempt} failed")

    async with running_worker(dsn, registry):
        job = await client.submit("always.fails", {"x": 1})
        with pytest.raises(JobFailed, match="RuntimeError: attempt 3 failed"):
            await result_of(client, job.id)

    assert attempts == [1, 2, 3]  # FAST_RETRY.max_attempts
    status = await client.status(job.id)
    assert status.state is JobState.DEAD
    assert status.attempts == 3
    history = [(e.attempt, e.error_type, e.message) for e in status.error_history]
    assert history == [(n, "RuntimeError", f"attempt {n} failed") for n in (1, 2, 3)]

    [entry] = await dlq_rows(conn, job.id)
    assert entry["error_reason"] == "MaxAttempts"
    assert entry["attempts"] == 3
    assert entry["app_id"] == "acme"
    assert entry["type"] == "always.fails"
    assert [(e["attempt"], e["error_type"], e["message"]) for e in entry["errors"]] == history
    [listed] = (await client.dlq.list()).entries
    assert listed.original_job_id == job.id
    assert len(listed.error_history) == 3


async def test_per_job_max_attempts_bounds_the_retries(dsn: str, client: Client) -> None:
    registry = Registry()
    attempts: list[int] = []

    @registry.handler("fails.twice")
    async def fails(payload: Any, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        raise RuntimeError("nope")

    async with running_worker(dsn, registry):
        job = await client.submit("fails.twice", {}, max_attempts=2)
        with pytest.raises(JobFailed):
            await result_of(client, job.id)

    assert attempts == [1, 2]
    [entry] = (await client.dlq.list()).entries
    assert (entry.error_reason, entry.attempts, len(entry.error_history)) == ("MaxAttempts", 2, 2)


@pytest.mark.parametrize(
    ("job_type", "payload", "reason"),
    [
        pytest.param("greet", {"name": 42}, "ValidationError", id="invalid-payload"),
        pytest.param("greet", "not an object", "ValidationError", id="payload-not-an-object"),
        pytest.param("no.such.type", {"name": "ada"}, "HandlerMissing", id="unknown-type"),
    ],
)
async def test_terminal_input_errors_go_straight_to_the_dlq(
    dsn: str,
    client: Client,
    conn: asyncpg.Connection,
    job_type: str,
    payload: Any,
    reason: str,
) -> None:
    registry = Registry()
    calls: list[Any] = []

    @registry.handler("greet", payload=Greeting)
    async def greet(payload: Greeting, ctx: Context) -> None:
        calls.append(payload)

    async with running_worker(dsn, registry):
        job = await client.submit(job_type, payload)
        with pytest.raises(JobFailed, match=reason):
            await result_of(client, job.id)

    assert calls == []
    status = await client.status(job.id)
    assert status.state is JobState.DEAD
    assert status.attempts == 1
    assert [(e.attempt, e.error_type) for e in status.error_history] == [(1, reason)]
    [entry] = await dlq_rows(conn, job.id)
    assert (entry["error_reason"], entry["attempts"]) == (reason, 1)
    assert [e["error_type"] for e in entry["errors"]] == [reason]


async def test_permanent_error_goes_straight_to_the_dlq(
    dsn: str, client: Client, conn: asyncpg.Connection
) -> None:
    registry = Registry()
    attempts: list[int] = []

    @registry.handler("reject")
    async def reject(payload: Any, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        raise jobpool.Permanent("mailbox does not exist")

    async with running_worker(dsn, registry):
        job = await client.submit("reject", {})
        with pytest.raises(JobFailed, match="mailbox does not exist"):
            await result_of(client, job.id)

    assert attempts == [1]
    [entry] = await dlq_rows(conn, job.id)
    assert (entry["error_reason"], entry["attempts"]) == ("Permanent", 1)
    assert [(e["error_type"], e["message"]) for e in entry["errors"]] == [
        ("Permanent", "mailbox does not exist")
    ]


async def test_non_json_result_goes_to_the_dlq(
    dsn: str, client: Client, conn: asyncpg.Connection
) -> None:
    registry = Registry()
    attempts: list[int] = []

    @registry.handler("returns.a.set")
    async def returns_a_set(payload: Any, ctx: Context) -> Any:
        attempts.append(ctx.attempt)
        return {"ids": {1, 2}}

    async with running_worker(dsn, registry):
        job = await client.submit("returns.a.set", {})
        with pytest.raises(JobFailed, match="ResultNotSerializable"):
            await result_of(client, job.id)

    assert attempts == [1]
    [entry] = await dlq_rows(conn, job.id)
    assert (entry["error_reason"], entry["attempts"]) == ("ResultNotSerializable", 1)


async def test_timeout_is_retryable(dsn: str, client: Client) -> None:
    registry = Registry()
    timed_out: list[int] = []

    @registry.handler("slow.then.fast", timeout=0.2)
    async def slow_then_fast(payload: Any, ctx: Context) -> str:
        if ctx.attempt == 1:
            try:
                await asyncio.sleep(BOUND)
            except asyncio.CancelledError:
                timed_out.append(ctx.attempt)
                raise
        return "fast enough"

    async with running_worker(dsn, registry):
        job = await client.submit("slow.then.fast", {})
        assert await result_of(client, job.id) == "fast enough"

    assert timed_out == [1]
    status = await client.status(job.id)
    assert status.attempts == 2
    [error] = status.error_history
    assert (error.attempt, error.error_type) == (1, "timeout")
    assert "0.2" in error.message


async def test_cancel_reaches_the_running_handler_through_its_notify(
    dsn: str, client: Client
) -> None:
    """The heartbeat (every 20 s here) would also catch the cancel: the job ending within
    ``result_of``'s few seconds shows the NOTIFY hint did it. The latency is logged."""
    registry = Registry()
    started = asyncio.Event()
    cancelled_at: list[float] = []

    @registry.handler("slow.cancel")
    async def slow(payload: Any, ctx: Context) -> None:
        started.set()
        try:
            await asyncio.sleep(BOUND * 3)
        except asyncio.CancelledError:
            cancelled_at.append(time.perf_counter())
            raise

    before = sample("jobpool_job_cancellations_total", pool=POOL, type="slow.cancel")
    async with running_worker(dsn, registry, lease_ttl_s=60.0):
        job = await client.submit("slow.cancel", {})
        async with asyncio.timeout(BOUND):
            await started.wait()
        asked = time.perf_counter()
        assert await client.cancel(job.id) is CancelOutcome.CANCEL_REQUESTED
        with pytest.raises(JobCancelled):
            await result_of(client, job.id)

    [cancelled] = cancelled_at
    latency = cancelled - asked
    FIGURES.info("cancel() to the handler's CancelledError: %.2f ms", latency * 1000)
    assert latency > 0
    status = await client.status(job.id)
    assert status.state is JobState.CANCELLED
    assert status.error_history == ()
    assert (await client.dlq.list()).entries == ()
    after = sample("jobpool_job_cancellations_total", pool=POOL, type="slow.cancel")
    assert after == before + 1


async def test_cancel_of_a_claimed_job_that_has_not_started_ends_it_unrun(
    dsn: str, client: Client
) -> None:
    registry = Registry()
    ran: list[Any] = []
    first_running = asyncio.Event()
    finish = asyncio.Event()

    @registry.handler("queued.behind")
    async def queued_behind(payload: Any, ctx: Context) -> Any:
        ran.append(ctx.job_id)
        first_running.set()
        await finish.wait()
        return payload

    # Both are claimed by the worker's first claim; with one slot, one waits in its buffer.
    jobs = await client.submit("queued.behind", [{"n": 0}, {"n": 1}])
    async with running_worker(dsn, registry, concurrency=1) as run:
        async with asyncio.timeout(BOUND):
            await first_running.wait()
        [buffered] = [job for job in jobs if job.id not in ran]
        assert run.worker.dispatcher.buffered_ids() == [buffered.id]
        assert await client.cancel(buffered.id) is CancelOutcome.CANCEL_REQUESTED
        with pytest.raises(JobCancelled):
            await result_of(client, buffered.id)
        finish.set()
        [started] = [job for job in jobs if job.id in ran]
        assert await result_of(client, started.id) == {"n": jobs.index(started)}

    assert ran == [started.id]
    assert (await client.status(buffered.id)).state is JobState.CANCELLED


async def test_progress_reaches_the_client(dsn: str, client: Client) -> None:
    registry = Registry()
    halfway = asyncio.Event()
    finish = asyncio.Event()

    @registry.handler("resize")
    async def resize(payload: Any, ctx: Context) -> str:
        await ctx.report_progress(0.25, "a quarter")
        await halfway.wait()
        await ctx.report_progress(0.75, "three quarters")
        await finish.wait()
        return "resized"

    seen: list[tuple[float | None, str | None]] = []
    async with running_worker(dsn, registry):
        job = await client.submit("resize", {})
        async with asyncio.timeout(BOUND):
            async for progress in client.progress(job.id):
                seen.append((progress.fraction, progress.message))
                (halfway if progress.fraction == 0.25 else finish).set()
        assert await result_of(client, job.id) == "resized"

    assert seen == [(0.25, "a quarter"), (0.75, "three quarters")]


async def test_long_job_outlives_the_lease_ttl_and_runs_once(
    dsn: str, client: Client, conn: asyncpg.Connection
) -> None:
    ttl = 1.5
    registry = Registry()
    runs: list[int] = []

    @registry.handler("transcode", duration="long")
    async def transcode(payload: Any, ctx: Context) -> str:
        runs.append(ctx.attempt)
        await asyncio.sleep(ttl + 0.5)  # the work itself: longer than the lease TTL
        return "transcoded"

    async with running_worker(dsn, registry, lease_ttl_s=ttl) as run:
        owner = run.worker.settings.owner
        job = await client.submit("transcode", {}, duration="long")
        epoch = await conn.fetchval(
            "SELECT epoch FROM shard_leases WHERE pool = $1 AND shard = $2", POOL, job.shard
        )
        assert await result_of(client, job.id) == "transcoded"
        lease = await conn.fetchrow(
            "SELECT owner, epoch FROM shard_leases WHERE pool = $1 AND shard = $2",
            POOL,
            job.shard,
        )

    assert runs == [1]
    assert (lease["owner"], lease["epoch"]) == (owner, epoch)  # never lapsed nor re-taken
    row = await history_row(conn, job.id)
    assert row is not None
    assert (row["state"], row["attempts"], row["errors"]) == ("succeeded", 1, "[]")


async def test_sync_handler_runs_in_a_thread(dsn: str, client: Client) -> None:
    registry = Registry()
    threads: list[int] = []

    @registry.handler("blocking", payload=Greeting)
    def blocking(payload: Greeting, ctx: Context) -> str:
        threads.append(threading.get_ident())
        time.sleep(0.05)  # blocking I/O: would stall the event loop if run on it
        return f"hi {payload.name} on attempt {ctx.attempt}"

    async with running_worker(dsn, registry):
        job = await client.submit("blocking", {"name": "bob"})
        assert await result_of(client, job.id) == "hi bob on attempt 1"

    [thread] = threads
    assert thread != threading.get_ident()


async def test_handler_without_payload_model_gets_the_plain_json_value(
    dsn: str, client: Client
) -> None:
    registry = Registry()
    payloads: list[Any] = []

    @registry.handler("echo")
    async def echo(payload: Any, ctx: Context) -> Any:
        payloads.append(payload)
        return payload

    sent = {"to": "ada@example.com", "tags": ["a", "b"], "n": 3, "nested": {"ok": None}}
    async with running_worker(dsn, registry):
        job = await client.submit("echo", sent)
        assert await result_of(client, job.id) == sent

    [payload] = payloads
    assert type(payload) is dict
    assert payload == sent


async def test_metrics_count_completions_and_failures(dsn: str, client: Client, pool: Pool) -> None:
    registry = Registry()

    @registry.handler("metrics.ok")
    async def ok(payload: Any, ctx: Context) -> int:
        return 1

    @registry.handler("metrics.flaky")
    async def flaky(payload: Any, ctx: Context) -> int:
        if ctx.attempt == 1:
            raise ConnectionError("first attempt fails")
        return ctx.attempt

    @registry.handler("metrics.dead")
    async def dead(payload: Any, ctx: Context) -> None:
        raise jobpool.Permanent("no")

    def snapshot() -> dict[str, float]:
        labels = {"pool": pool.name}
        return {
            "ok": sample("jobpool_jobs_completed_total", **labels, type="metrics.ok"),
            "flaky": sample("jobpool_jobs_completed_total", **labels, type="metrics.flaky"),
            "retry": sample(
                "jobpool_job_failures_total",
                **labels,
                type="metrics.flaky",
                priority="normal",
                reason="ConnectionError",
            ),
            "dead": sample(
                "jobpool_job_failures_total",
                **labels,
                type="metrics.dead",
                priority="normal",
                reason="Permanent",
            ),
            "timed": sample(
                "jobpool_job_processing_seconds_count",
                **labels,
                type="metrics.ok",
                priority="normal",
            ),
        }

    before = snapshot()
    async with running_worker(dsn, registry):
        jobs = await client.submit("metrics.ok", [{}, {}, {}])
        flaky_job = await client.submit("metrics.flaky", {})
        dead_job = await client.submit("metrics.dead", {})
        for job in jobs:
            assert await result_of(client, job.id) == 1
        assert await result_of(client, flaky_job.id) == 2
        with pytest.raises(JobFailed):
            await result_of(client, dead_job.id)
    after = snapshot()

    assert {name: after[name] - before[name] for name in before} == {
        "ok": 3,
        "flaky": 1,
        "retry": 1,
        "dead": 1,
        "timed": 3,
    }
