"""Handlers that do not stop, failures that are told, and honest metrics — run by the
real worker (in-process) against a real Postgres.

Defends (issues "handlers that do not stop", "a worker says nothing when a job fails",
"metrics that mislead", "tenants control metric labels"):

* an async handler that swallows ``CancelledError`` is a timeout at its deadline and is
  never recorded succeeded, even when it returns later; it is counted while it runs on;
* a cancelled sync handler learns it through ``ctx.cancelled`` and its job ends
  ``cancelled`` at once;
* a failed attempt's error record keeps its traceback, which ``jobpool status`` shows,
  and its ``jobpool.process`` span ends ERROR with an exception event;
* ``jobpool_queue_depth`` tells due from scheduled jobs; the pool's queue counts (the
  operator's "queued" figure and the autoscaler's input) count due jobs only;
* 3,000 job types invented by a client add no series to the worker's metrics.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import REGISTRY
from test_cli import invoke, job_args
from worker_runtime_helpers import POOL, result_of, running_worker, sample

from jobpool import Client, Context, JobState, Priority, Registry
from jobpool.errors import JobCancelled, JobFailed
from jobpool.models import QueueState
from jobpool.store.execution import job_queue_depth
from jobpool.store.workers import pool_queue_counts
from jobpool.worker import RetryPolicy

BOUND_S = 10.0
SHARDS = list(range(16))


@pytest.fixture
async def release() -> AsyncIterator[threading.Event]:
    """Lets the test's stubborn handlers end; set at the end of the test at the latest."""
    event = threading.Event()
    yield event
    event.set()


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(BOUND_S):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


async def test_a_handler_swallowing_cancellation_is_a_timeout_never_a_success(
    dsn: str, client: Client, release: threading.Event
) -> None:
    registry = Registry()
    returned: list[str] = []

    @registry.handler("stubborn", timeout=0.2, max_attempts=1)
    async def stubborn(payload: Any, ctx: Context) -> str:
        while not release.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                continue  # swallowed: the handler runs on past its deadline
        returned.append("finished anyway")
        return "finished anyway"

    async with running_worker(dsn, registry) as run:
        job = await client.submit("stubborn", {})
        with pytest.raises(JobFailed):
            await result_of(client, job.id, timeout=BOUND_S)
        launcher = run.worker.dispatcher.launcher
        assert launcher.running_abandoned == 1  # still running, and counted
        release.set()
        await until(lambda: launcher.running_abandoned == 0)
        assert returned == ["finished anyway"]

    status = await client.status(job.id)
    assert status.state is JobState.DEAD
    assert [(e.attempt, e.error_type) for e in status.error_history] == [(1, "timeout")]
    assert status.result is None


async def test_a_cancelled_sync_handler_learns_it_from_its_context(
    dsn: str, client: Client
) -> None:
    registry = Registry()
    started = threading.Event()
    saw: list[bool] = []

    @registry.handler("cooperative")
    def cooperative(payload: Any, ctx: Context) -> None:
        started.set()
        while not ctx.cancelled:
            threading.Event().wait(0.01)
        saw.append(ctx.cancelled)
        ctx.raise_if_cancelled()

    async with running_worker(dsn, registry) as run:
        job = await client.submit("cooperative", {})
        await until(started.is_set)
        await client.cancel(job.id)
        with pytest.raises(JobCancelled):
            await result_of(client, job.id, timeout=BOUND_S)
        await until(lambda: run.worker.dispatcher.launcher.running_abandoned == 0)

    assert saw == [True]


async def test_sync_handlers_left_running_take_at_most_twice_the_concurrency_in_threads(
    dsn: str, client: Client, release: threading.Event
) -> None:
    """Concurrency 1: two sync handlers that ignore their timeout hold both threads, so
    the next sync attempt is refused (retryable), and runs once they ended."""
    registry = Registry()
    registry.handler("ignores", timeout=0.1, max_attempts=1)(lambda p, ctx: release.wait())
    unhurried = RetryPolicy(base_s=0.5, cap_s=0.5, max_attempts=10)
    registry.handler("quick", retry=unhurried)(lambda payload, ctx: "ran")

    async with running_worker(dsn, registry, concurrency=1) as run:
        for _ in range(2):
            ignored = await client.submit("ignores", {})
            with pytest.raises(JobFailed):
                await result_of(client, ignored.id, timeout=BOUND_S)
        quick = await client.submit("quick", {})
        async with asyncio.timeout(BOUND_S):
            while True:  # refused once, and backing off: now let the threads go
                if (await client.status(quick.id)).error_history:
                    break
                await asyncio.sleep(0.02)
        release.set()
        assert await result_of(client, quick.id, timeout=BOUND_S) == "ran"
        await until(lambda: run.worker.dispatcher.launcher.threads.busy == 0)

    refusals = (await client.status(quick.id)).error_history
    assert refusals
    assert {error.error_type for error in refusals} == {"HandlerThreadsBusy"}
    assert "all 2 handler threads are busy" in refusals[0].message


async def test_a_failure_keeps_its_traceback_shown_by_status_and_marks_the_span(
    dsn: str, client: Client, spans: InMemorySpanExporter
) -> None:
    registry = Registry()

    def render(name: str) -> str:
        raise KeyError(f"no template {name!r}")

    @registry.handler("render", max_attempts=1)
    def handler(payload: Any, ctx: Context) -> str:
        return render(payload["template"])

    async with running_worker(dsn, registry):
        job = await client.submit("render", {"template": "welcome"})
        with pytest.raises(JobFailed):
            await result_of(client, job.id, timeout=BOUND_S)

    [record] = (await client.status(job.id)).error_history
    assert record.error_type == "KeyError"
    assert record.traceback is not None
    assert "in render" in record.traceback
    assert record.traceback.rstrip().endswith("KeyError: \"no template 'welcome'\"")

    result = await invoke("status", str(job.id), *job_args(dsn))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    at = lines.index("traceback of attempt 1:")
    assert lines[at + 1] == "  Traceback (most recent call last):"
    assert lines[-1] == "  KeyError: \"no template 'welcome'\""

    [span] = [
        s
        for s in spans.get_finished_spans()
        if s.name == "jobpool.process"
        and s.attributes is not None
        and s.attributes["jobpool.job.id"] == str(job.id)
    ]
    assert span.status.status_code is StatusCode.ERROR
    [event] = [e for e in span.events if e.name == "exception"]
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "KeyError"
    assert "in render" in str(event.attributes["exception.stacktrace"])


async def test_queue_figures_tell_due_jobs_from_scheduled_ones(
    client: Client, conn: asyncpg.Connection
) -> None:
    await client.submit("send", [{}, {}], priority="high")
    await client.submit("send", [{}, {}, {}], priority="high", delay=timedelta(hours=1))

    depth = await job_queue_depth(conn, POOL, shards=SHARDS)
    assert depth[QueueState.DUE][Priority.HIGH] == 2
    assert depth[QueueState.SCHEDULED][Priority.HIGH] == 3
    counts = await pool_queue_counts(conn, POOL)
    assert counts[JobState.QUEUED][Priority.HIGH] == 2  # what the operator calls queued


async def test_the_queue_depth_gauge_shows_scheduled_jobs_apart(dsn: str, client: Client) -> None:
    def depth(state: str) -> float:
        return sample("jobpool_queue_depth", pool=POOL, priority="low", state=state)

    async with running_worker(dsn, Registry()):
        await client.submit("later", [{}] * 3, priority="low", delay=timedelta(hours=1))
        await until(lambda: depth("scheduled") == 3)
        assert depth("due") == 0


async def test_job_types_invented_by_a_client_add_no_metric_series(
    dsn: str, client: Client, conn: asyncpg.Connection
) -> None:
    """3,000 distinct unknown types: every one dead-lettered (no handler), counted under
    the one catch-all ``type`` label."""
    types = [f"invented.{n}" for n in range(3000)]

    def series() -> int:
        return sum(
            len(metric.samples)
            for metric in REGISTRY.collect()
            if metric.name.startswith("jobpool_")
        )

    async with running_worker(dsn, Registry(), concurrency=32):
        warm = await client.submit("warm.up", {})  # creates the catch-all series
        with pytest.raises(JobFailed):
            await result_of(client, warm.id, timeout=BOUND_S)
        before = series()
        for job_type in types:
            await client.submit(job_type, {})
        async with asyncio.timeout(120):
            while True:
                if await conn.fetchval("SELECT count(*) FROM job_dlq") == 1 + len(types):
                    break
                await asyncio.sleep(0.1)
        after = series()

    assert after - before < 20, (before, after)
    exposed = {s.labels.get("type") for metric in REGISTRY.collect() for s in metric.samples}
    assert not any(str(label).startswith("invented.") for label in exposed)
