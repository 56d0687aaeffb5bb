"""Every way one attempt ends, decided by ``execute`` (no database, no worker).

Defends the executor's contract: a handler's failure never escapes, it becomes an
outcome; an attempt past its deadline is a timeout whatever the handler does — an
async handler that swallows ``CancelledError`` is not waited for (its outcome is
decided at the deadline, the handler is abandoned and counted until it ends); a sync
handler learns through ``ctx.cancelled`` / ``ctx.raise_if_cancelled()`` that its
attempt ended; sync handlers run on a bounded set of threads, and a new sync attempt
finding them all taken is refused with a retryable error; a cancel request ends the
attempt ``cancelled`` at once; any other cancellation propagates; a raised error keeps
its traceback, bounded.

Handlers that must outlive their attempt wait on a ``threading.Event`` the test sets:
nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from claimed_jobs import claimed
from pydantic import BaseModel

import jobpool
from jobpool.models import (
    MAX_ERROR_MESSAGE_CHARS,
    MAX_TRACEBACK_CHARS,
    ClaimedJob,
    Finish,
    JobState,
    Retry,
)
from jobpool.worker import Context, Registry, RetryPolicy
from jobpool.worker.executor import (
    CUT_MARK,
    END_CUT_MARK,
    JobContext,
    Outcome,
    bounded_traceback,
    execute,
)
from jobpool.worker.launcher import Launcher

POLICY = RetryPolicy(max_attempts=3, base_s=0.01, cap_s=0.01)
DEADLINE_S = 0.05  # handlers' timeout: they either end at once or outlive it on purpose
BOUND_S = 10.0  # generous bound for anything that must happen promptly
CURRENT: contextvars.ContextVar[str] = contextvars.ContextVar("current", default="none")


async def _no_progress(job: ClaimedJob, fraction: float | None, message: str | None) -> None:
    return None


class Attempts:
    """Runs attempts of one registry with one launcher, as a worker would."""

    def __init__(self, registry: Registry, *, threads: int = 4) -> None:
        self.registry = registry
        self.launcher = Launcher("unit", max_threads=threads)

    def context(self, job: ClaimedJob) -> JobContext:
        return JobContext(job, _no_progress)

    async def run(self, job: ClaimedJob, ctx: JobContext | None = None) -> Outcome:
        ctx = ctx or self.context(job)
        return await execute(job, ctx, self.registry, policy=POLICY, launcher=self.launcher)

    async def all_ended(self) -> None:
        """Wait until no abandoned handler runs any more."""
        await until(lambda: not self.launcher.running_abandoned)


@pytest.fixture
async def release() -> AsyncIterator[threading.Event]:
    """Set at the end of the test at the latest: no handler outlives its test."""
    event = threading.Event()
    yield event
    event.set()


async def until(condition: Callable[[], bool], *, timeout: float | None = BOUND_S) -> None:
    """Poll ``condition`` without blocking the loop until it holds (or ``timeout``)."""
    async with asyncio.timeout(timeout):
        while True:
            if condition():
                return
            await asyncio.sleep(0.005)


async def wait_set(event: threading.Event) -> None:
    """What a stubborn async handler waits on: ``event``, with no time limit."""
    await until(event.is_set, timeout=None)


# -- the attempt ends by itself ----------------------------------------------------------


class Greeting(BaseModel):
    name: str


async def test_a_result_ends_the_job_succeeded_with_it_as_json() -> None:
    registry = Registry()
    registry.handler("greet", payload=Greeting)(
        lambda payload, ctx: {"hello": payload.name, "attempt": ctx.attempt}
    )

    outcome = await Attempts(registry).run(claimed("greet", {"name": "ada"}))

    assert isinstance(outcome, Finish)
    assert outcome.state is JobState.SUCCEEDED
    assert outcome.result_json == '{"hello":"ada","attempt":1}'


async def test_an_exception_is_retried_with_its_type_message_and_traceback() -> None:
    registry = Registry()

    @registry.handler("fails")
    async def fails(payload: Any, ctx: Context) -> None:
        raise ConnectionError("smtp is down")

    outcome = await Attempts(registry).run(claimed("fails"))

    assert isinstance(outcome, Retry)
    assert (outcome.error.error_type, outcome.error.message) == ("ConnectionError", "smtp is down")
    assert outcome.error.traceback is not None
    assert "in fails" in outcome.error.traceback  # the handler's own frame
    assert outcome.error.traceback.rstrip().endswith("ConnectionError: smtp is down")


async def test_the_last_allowed_attempt_failing_is_dead_with_max_attempts() -> None:
    registry = Registry()
    registry.handler("fails")(lambda payload, ctx: 1 / 0)

    outcome = await Attempts(registry).run(claimed("fails", attempt=POLICY.max_attempts))

    assert isinstance(outcome, Finish)
    assert (outcome.state, outcome.reason) == (JobState.DEAD, "MaxAttempts")
    assert outcome.error is not None
    assert outcome.error.error_type == "ZeroDivisionError"
    assert outcome.error.traceback is not None


@pytest.mark.parametrize(
    ("job_type", "payload", "reason"),
    [
        ("permanent", {}, "Permanent"),
        ("unknown", {}, "HandlerMissing"),
        ("typed", {"name": 3}, "ValidationError"),
        ("not_json", {}, "ResultNotSerializable"),
    ],
)
async def test_terminal_errors_are_dead_after_one_attempt(
    job_type: str, payload: Any, reason: str
) -> None:
    registry = Registry()

    def permanent(payload: Any, ctx: Context) -> None:
        raise jobpool.Permanent("bad address")

    registry.handler("permanent")(permanent)
    registry.handler("typed", payload=Greeting)(lambda payload, ctx: None)
    registry.handler("not_json")(lambda payload, ctx: {1, 2})

    outcome = await Attempts(registry).run(claimed(job_type, payload))

    assert isinstance(outcome, Finish)
    assert (outcome.state, outcome.reason) == (JobState.DEAD, reason)
    assert outcome.error is not None
    assert outcome.error.error_type == reason


async def test_a_handler_raising_cancelled_error_itself_fails_its_attempt() -> None:
    """Nobody cancelled the attempt: the handler's own CancelledError is a failure."""
    registry = Registry()

    @registry.handler("self_cancel")
    async def self_cancel(payload: Any, ctx: Context) -> None:
        raise asyncio.CancelledError("my own")

    outcome = await Attempts(registry).run(claimed("self_cancel"))

    assert isinstance(outcome, Retry)
    assert outcome.error.error_type == "CancelledError"


def test_a_long_traceback_keeps_its_end_within_the_bound() -> None:
    try:
        raise ValueError("x" * 2 * MAX_TRACEBACK_CHARS + " the end of the message")
    except ValueError as exc:
        text = bounded_traceback(exc)

    assert len(text) == MAX_TRACEBACK_CHARS
    assert text.startswith(CUT_MARK)
    assert text.rstrip().endswith("x the end of the message")


async def test_a_huge_error_message_keeps_its_start_within_the_bound() -> None:
    registry = Registry()

    @registry.handler("fails.loudly")
    async def fails_loudly(payload: Any, ctx: Context) -> None:
        raise ValueError("the start of the message " + "x" * 1_000_000)

    outcome = await Attempts(registry).run(claimed("fails.loudly"))

    assert isinstance(outcome, Retry)
    assert len(outcome.error.message) == MAX_ERROR_MESSAGE_CHARS
    assert outcome.error.message.startswith("the start of the message xxx")
    assert outcome.error.message.endswith(END_CUT_MARK)


# -- the attempt ends at its deadline ----------------------------------------------------


async def test_an_async_handler_that_swallows_cancellation_times_out_at_its_deadline(
    release: threading.Event,
) -> None:
    registry = Registry()
    cancels: list[str] = []
    ended = threading.Event()

    @registry.handler("stubborn", timeout=DEADLINE_S)
    async def stubborn(payload: Any, ctx: Context) -> str:
        while not release.is_set():
            try:
                await wait_set(release)
            except asyncio.CancelledError:
                cancels.append("swallowed")
        ended.set()
        return "finished anyway"

    attempts = Attempts(registry)
    job = claimed("stubborn")
    ctx = attempts.context(job)
    outcome = await attempts.run(job, ctx)

    # Decided while the handler still runs: a timeout, never a success.
    assert not ended.is_set()
    assert isinstance(outcome, Retry)
    assert outcome.error.error_type == "timeout"
    assert ctx.cancelled
    await until(lambda: cancels == ["swallowed"])  # it was told, and ignores it
    assert attempts.launcher.running_abandoned == 1

    release.set()
    await attempts.all_ended()
    assert ended.is_set()


async def test_a_sync_handler_learns_of_its_timeout_through_its_context() -> None:
    registry = Registry()
    seen: list[str] = []
    stopped = threading.Event()

    @registry.handler("cooperative", timeout=DEADLINE_S)
    def cooperative(payload: Any, ctx: Context) -> None:
        try:
            while True:
                ctx.raise_if_cancelled()
                stopped.wait(0.005)
        except asyncio.CancelledError:
            seen.append(f"cancelled={ctx.cancelled}")
            raise
        finally:
            stopped.set()

    attempts = Attempts(registry)
    outcome = await attempts.run(claimed("cooperative"))

    assert isinstance(outcome, Retry)
    assert outcome.error.error_type == "timeout"
    await attempts.all_ended()
    assert seen == ["cancelled=True"]


async def test_a_sync_handler_runs_in_the_context_of_its_attempt() -> None:
    """As with ``asyncio.to_thread``: context variables (the attempt's span) carry over."""
    registry = Registry()
    registry.handler("reads")(lambda payload, ctx: CURRENT.get())
    token = CURRENT.set("the attempt's")
    try:
        outcome = await Attempts(registry).run(claimed("reads"))
    finally:
        CURRENT.reset(token)

    assert isinstance(outcome, Finish)
    assert outcome.result_json == '"the attempt\'s"'


async def test_sync_handlers_run_on_a_bounded_set_of_threads(release: threading.Event) -> None:
    """Two threads, both held by handlers that ignore their timeout: the next sync
    attempt is refused at once (retryable); once they end, sync attempts run again."""
    registry = Registry()
    registry.handler("ignores", timeout=DEADLINE_S)(lambda payload, ctx: release.wait())
    registry.handler("quick")(lambda payload, ctx: threading.current_thread().daemon)
    attempts = Attempts(registry, threads=2)

    for _ in range(2):
        outcome = await attempts.run(claimed("ignores"))
        assert isinstance(outcome, Retry)
        assert outcome.error.error_type == "timeout"
    refused = await attempts.run(claimed("quick"))

    assert isinstance(refused, Retry)
    assert refused.error.error_type == "HandlerThreadsBusy"
    assert "all 2 handler threads are busy" in refused.error.message

    release.set()
    await attempts.all_ended()
    ran = await attempts.run(claimed("quick"))
    assert isinstance(ran, Finish)
    assert ran.result_json == "true"  # a daemon thread: it never holds the process' exit


# -- the attempt is cancelled --------------------------------------------------------------


async def _cancel_while_running(
    attempts: Attempts, job: ClaimedJob, started: threading.Event, *, requested: bool
) -> tuple[asyncio.Task[Outcome], JobContext]:
    ctx = attempts.context(job)
    task = asyncio.create_task(attempts.run(job, ctx))
    async with asyncio.timeout(BOUND_S):
        await wait_set(started)
    ctx.cancel_requested = requested
    task.cancel()
    return task, ctx


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_cancel_request_ends_the_attempt_cancelled_at_once(
    kind: str, release: threading.Event
) -> None:
    registry = Registry()
    started = threading.Event()

    async def async_stubborn(payload: Any, ctx: Context) -> None:
        started.set()
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await wait_set(release)

    def sync_stubborn(payload: Any, ctx: Context) -> None:
        started.set()
        release.wait()

    registry.handler("stubborn")(async_stubborn if kind == "async" else sync_stubborn)
    attempts = Attempts(registry)
    task, ctx = await _cancel_while_running(attempts, claimed("stubborn"), started, requested=True)

    outcome = await task
    assert outcome == Finish(job_id=outcome.job_id, state=JobState.CANCELLED)
    assert ctx.cancelled
    assert attempts.launcher.running_abandoned == 1
    release.set()
    await attempts.all_ended()


async def test_any_other_cancellation_propagates_and_abandons_the_handler(
    release: threading.Event,
) -> None:
    """Shutdown or a lost lease: the attempt is not decided here (it is retried)."""
    registry = Registry()
    started = threading.Event()
    registry.handler("blocks")(lambda payload, ctx: (started.set(), release.wait()))
    attempts = Attempts(registry)
    task, ctx = await _cancel_while_running(attempts, claimed("blocks"), started, requested=False)

    with pytest.raises(asyncio.CancelledError):
        await task
    assert ctx.cancelled
    release.set()
    await attempts.all_ended()


async def test_a_handler_left_running_is_logged_and_counted_until_it_ends(
    release: threading.Event, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prometheus_client import REGISTRY

    from jobpool.worker import launcher

    monkeypatch.setattr(launcher, "LEFT_RUNNING_GRACE_S", 0.0)
    registry = Registry()
    registry.handler("ignores", timeout=DEADLINE_S)(lambda payload, ctx: release.wait())
    attempts = Attempts(registry)
    job = claimed("ignores")

    def left_running() -> float:
        labels = {"pool": "unit", "kind": "thread"}
        return REGISTRY.get_sample_value("jobpool_handlers_left_running", labels) or 0.0

    before = left_running()
    await attempts.run(job)
    await until(lambda: left_running() == before + 1)

    [warning] = [r for r in caplog.records if r.name == "jobpool.worker.launcher"]
    assert warning.levelname == "WARNING"
    assert f"job {job.id} (ignores) attempt 1 ended (timeout)" in warning.getMessage()
    assert "sync handler still runs" in warning.getMessage()

    release.set()
    await attempts.all_ended()
    await until(lambda: left_running() == before)
