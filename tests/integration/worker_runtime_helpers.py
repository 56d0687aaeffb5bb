"""Running the real worker (``jobpool.worker.Worker``) in-process in integration tests.

``async with running_worker(dsn, registry, **settings) as run:`` starts a worker of the
``emails`` pool (ordinal 0, metrics server off, fast retries) as a task of the test's
event loop, waits until it holds its shards and its dispatcher is idle, and on exit
stops it gracefully and waits for it to end; a worker that crashed fails the test with
its own exception, one that does not stop in time fails it too. Inside the block,
``run.worker`` is the worker and ``await run.stop()`` stops it early.

The other helpers read what the worker wrote, through the schema owner's connection
(the ``conn`` fixture, exempt from row-level security), and read Prometheus samples.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pg
from prometheus_client import REGISTRY

from jobpool import Client
from jobpool.models import JSON, JobId
from jobpool.worker import Registry, RetryPolicy, Worker, WorkerSettings

POOL = "emails"
SHARDS = 16
FAST_RETRY = RetryPolicy(base_s=0.05, cap_s=0.2, max_attempts=3)
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
TERMINATE_WORKER_BACKENDS = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE application_name LIKE 'jobpool-worker/%' AND datname = current_database()
"""


def worker_settings(dsn: str, **overrides: Any) -> WorkerSettings:
    """Settings for a test worker: pool ``emails``, ordinal 0, no metrics port, fast retries;
    it connects as the suite's ``jobpool_worker`` login role, as a deployed worker does."""
    defaults: dict[str, Any] = {
        "dsn": pg.as_role(dsn, pg.WORKER),
        "pool": POOL,
        "ordinal": 0,
        "metrics_port": None,
        "retry": FAST_RETRY,
    }
    return WorkerSettings(**(defaults | overrides))


@dataclass
class WorkerRun:
    """A worker running as a task of the test's event loop."""

    worker: Worker
    task: asyncio.Task[None]

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Ask for a graceful stop and wait until ``run()`` returned (re-raises a crash);
        a worker still running after ``timeout`` is cancelled and fails the test."""
        self.worker.stop()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.task)
        except TimeoutError:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            await _cancel_orphaned_loops()
            raise AssertionError(f"the worker did not stop within {timeout} s") from None
        finally:
            collect_garbage()


async def start_worker(dsn: str, registry: Registry, **settings: Any) -> WorkerRun:
    """Start a worker and wait until it is idle: it holds its first leases, and its
    dispatcher has made its first claim and waits for a wake-up. (A NOTIFY arriving
    while a claim is in flight is covered by a test of its own; the other tests submit
    to an idle worker.) Fails if the worker crashes or does not get there in time."""
    worker = Worker(worker_settings(dsn, **settings), registry)
    task = asyncio.create_task(worker.run(), name="test-worker")
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            await _unless_done(task, worker.started())
            if not task.done():  # the dispatcher exists once the worker has started
                await _unless_done(task, worker.dispatcher.asleep.wait())
    except TimeoutError:
        worker.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise AssertionError(f"the worker did not start within {START_TIMEOUT_S} s") from None
    if task.done():
        task.result()  # re-raises the crash
        raise AssertionError("the worker returned before it started")
    return WorkerRun(worker, task)


@contextlib.asynccontextmanager
async def running_worker(dsn: str, registry: Registry, **settings: Any) -> AsyncIterator[WorkerRun]:
    """A started worker for the duration of the block, stopped gracefully on exit."""
    run = await start_worker(dsn, registry, **settings)
    try:
        yield run
    except BaseException:
        # The block failed: stop the worker, but report the block's error, not the stop's.
        with contextlib.suppress(Exception):
            await run.stop()
        raise
    if run.task.done():
        run.task.result()  # a crash (or a stop inside the block) is surfaced here
    else:
        await run.stop()


async def _cancel_orphaned_loops() -> None:
    """``Worker.run()`` cancelled in the middle of its shutdown leaves the loops it had
    not cancelled yet running (they retry "pool is closed" forever): end them, so they
    do not haunt the next tests."""
    loops = [
        task
        for task in asyncio.all_tasks()
        if not task.done() and getattr(task.get_coro(), "__qualname__", "") == "forever"
    ]
    for task in loops:
        task.cancel()
    await asyncio.gather(*loops, return_exceptions=True)


async def _unless_done(task: asyncio.Task[None], awaited: Coroutine[Any, Any, Any]) -> None:
    """Wait for ``awaited``, or for ``task`` to end first (a crash)."""
    waiting = asyncio.ensure_future(awaited)
    try:
        await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()


def collect_garbage() -> None:
    """Collect the stopped worker's tasks now. A worker loop that died of an exception
    leaves a task whose exception nobody retrieved; asyncio reports it when the task is
    collected, formatting a traceback (``ast.parse`` in Python 3.11). Collected during
    pytest's own ``ast.parse`` of a failure, that nesting crashes the interpreter's
    parser ("AST constructor recursion depth mismatch") and pytest with it."""
    gc.collect()


# -- reading what the worker wrote -----------------------------------------------------


async def result_of(client: Client, job_id: JobId, *, timeout: float = 5.0) -> JSON:
    """``client.result()``, but a job still unfinished after ``timeout`` fails the test with
    its state: a queued job whose ``run_at`` is long past was left unclaimed."""
    try:
        return await client.result(job_id, timeout=timeout)
    except TimeoutError:
        status = await client.status(job_id)
        now = datetime.now(UTC)
        due = (
            ""
            if status.run_at is None
            else f", due {(now - status.run_at).total_seconds():.2f} s ago"
        )
        errors = [(e.attempt, e.error_type) for e in status.error_history]
        raise AssertionError(
            f"job {job_id} unfinished after {timeout} s: {status.state.value}, "
            f"attempts={status.attempts}{due}, errors={errors}"
        ) from None


async def job_row(conn: asyncpg.Connection, job_id: JobId) -> asyncpg.Record | None:
    """The job's row in the hot table (``None`` once it finished)."""
    return await conn.fetchrow(
        "SELECT state, attempts, run_at, worker, error_history::text AS errors "
        "FROM jobs WHERE id = $1",
        job_id,
    )


async def history_row(conn: asyncpg.Connection, job_id: JobId) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT state, attempts, result::text AS result, error_history::text AS errors "
        "FROM job_history WHERE id = $1",
        job_id,
    )


async def dlq_rows(conn: asyncpg.Connection, job_id: JobId) -> list[dict[str, Any]]:
    """The ``job_dlq`` rows of the job, with ``error_history`` decoded."""
    rows = await conn.fetch(
        "SELECT original_job_id, app_id, type, error_reason, attempts, "
        "error_history::text AS errors FROM job_dlq WHERE original_job_id = $1",
        job_id,
    )
    return [{**dict(row), "errors": json.loads(row["errors"])} for row in rows]


async def leases(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT shard, owner, epoch FROM shard_leases WHERE pool = $1 ORDER BY shard", POOL
    )


async def worker_rows(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT ordinal, incarnation FROM workers WHERE pool = $1", POOL)


def sample(name: str, **labels: str) -> float:
    """A Prometheus sample of the default registry (0 when it was never set)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0
