"""Running one claimed attempt and deciding its outcome.

``execute`` never raises for a handler's failure: every way an attempt can end becomes
an outcome for the completer — ``Finish`` (succeeded, dead, cancelled) or ``Retry``.

Terminal at once (DLQ, no retry): no handler for the type (``HandlerMissing``), a
payload the handler's model rejects (``ValidationError``), ``jobpool.Permanent``, a
result that is not JSON (``ResultNotSerializable``). Retryable: any other exception
and a timeout (reason ``timeout``), until the attempts are exhausted (``MaxAttempts``).
A cancellation that the job's cancel request caused ends it ``cancelled``; any other
cancellation (shutdown, lost lease) propagates, and the attempt is retried elsewhere.

The attempt ends at its deadline, or when it is cancelled, whatever the handler does:
the handler runs apart from the attempt (a task, or a thread of the launcher), the
outcome is decided at that moment, and a handler that does not stop is abandoned to
the launcher, which bounds and counts such handlers. ``ctx.cancelled`` turns true when
the attempt ended early, so sync handlers can stop cooperatively. A handler's
traceback is kept, bounded, in the error record.
"""

from __future__ import annotations

import asyncio
import json
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from pydantic import ValidationError

from jobpool.errors import HandlerMissing, Permanent
from jobpool.models import (
    MAX_ERROR_MESSAGE_CHARS,
    MAX_TRACEBACK_CHARS,
    ClaimedJob,
    ErrorRecord,
    Finish,
    JobId,
    JobState,
    Priority,
    Retry,
)
from jobpool.worker.backoff import RetryPolicy
from jobpool.worker.launcher import HandlerThreadsBusy, Launcher, Run
from jobpool.worker.registry import Registry

Outcome = Finish | Retry
ReportProgress = Callable[[ClaimedJob, float | None, str | None], Awaitable[None]]

TIMEOUT: Final = "timeout"
CANCELLED: Final = "cancelled"
Ended = Literal["done", "timeout", "cancelled"]
MAX_ATTEMPTS = "MaxAttempts"
NULL_JSON = "null"  # most handlers return nothing: no encoder for it
CUT_MARK = "... (start cut)\n"
END_CUT_MARK = " ... (cut)"


@dataclass
class JobContext:
    """The ``ctx`` a handler receives (implements ``jobpool.worker.registry.Context``)."""

    job: ClaimedJob
    _report: ReportProgress
    cancel_requested: bool = field(default=False, init=False)
    _ended: bool = field(default=False, init=False)  # a plain flag: threads read it as is

    @property
    def job_id(self) -> JobId:
        return self.job.id

    @property
    def type(self) -> str:
        return self.job.type

    @property
    def attempt(self) -> int:
        return self.job.attempt

    @property
    def priority(self) -> Priority:
        return self.job.priority

    @property
    def tenant(self) -> str:
        return self.job.tenant

    @property
    def request_id(self) -> str | None:
        return self.job.request_id

    @property
    def user_id(self) -> str | None:
        return self.job.user_id

    @property
    def cancelled(self) -> bool:
        """True once the attempt ended without the handler: cancelled on request, past
        its timeout, or stopped by the worker (shutdown, lost lease). Safe from threads."""
        return self._ended

    def raise_if_cancelled(self) -> None:
        """Raise ``asyncio.CancelledError`` (not an ``Exception``, so ``except
        Exception`` lets it through) if the attempt already ended; else do nothing."""
        if self._ended:
            raise asyncio.CancelledError(f"attempt {self.attempt} of job {self.job_id} ended")

    def end(self) -> None:
        """Mark the attempt ended: ``cancelled`` turns true."""
        self._ended = True

    async def report_progress(self, fraction: float | None, message: str | None = None) -> None:
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise ValueError(f"progress fraction must be within [0, 1], got {fraction}")
        await self._report(self.job, fraction, message)


def bounded_traceback(exc: BaseException) -> str:
    """``exc``'s formatted traceback, cut from the start to ``MAX_TRACEBACK_CHARS``."""
    text = "".join(traceback.format_exception(exc))
    if len(text) <= MAX_TRACEBACK_CHARS:
        return text
    return CUT_MARK + text[len(text) - MAX_TRACEBACK_CHARS + len(CUT_MARK) :]


def _error(
    job: ClaimedJob, error_type: str, message: str, exc: BaseException | None = None
) -> ErrorRecord:
    if len(message) > MAX_ERROR_MESSAGE_CHARS:
        message = message[: MAX_ERROR_MESSAGE_CHARS - len(END_CUT_MARK)] + END_CUT_MARK
    return ErrorRecord(
        attempt=job.attempt,
        error_type=error_type,
        message=message,
        at=datetime.now(UTC),
        traceback=None if exc is None else bounded_traceback(exc),
    )


def _raised(job: ClaimedJob, exc: BaseException) -> ErrorRecord:
    return _error(job, type(exc).__name__, str(exc), exc)


def _dead(job: ClaimedJob, reason: str, error: ErrorRecord) -> Finish:
    return Finish(job_id=job.id, state=JobState.DEAD, reason=reason, error=error)


def _retry_or_dead(job: ClaimedJob, error: ErrorRecord, policy: RetryPolicy) -> Outcome:
    if policy.exhausted(job.attempt, job.max_attempts):
        return _dead(job, MAX_ATTEMPTS, error)
    delay = timedelta(seconds=policy.delay_s(job.attempt))
    return Retry(job_id=job.id, run_at=error.at + delay, error=error)


async def execute(
    job: ClaimedJob,
    ctx: JobContext,
    registry: Registry,
    *,
    policy: RetryPolicy,
    launcher: Launcher,
) -> Outcome:
    """Run ``job``'s handler once and turn whatever happens into an outcome."""
    try:
        handler = registry.get(job.type)
        argument = handler.parse(job.payload)
    except HandlerMissing as exc:
        return _dead(job, "HandlerMissing", _error(job, "HandlerMissing", str(exc)))
    except ValidationError as exc:
        return _dead(job, "ValidationError", _error(job, "ValidationError", str(exc)))
    policy = handler.policy(policy)
    try:
        run = launcher.start(handler, argument, ctx)
    except HandlerThreadsBusy as exc:
        return _retry_or_dead(job, _error(job, "HandlerThreadsBusy", str(exc)), policy)
    ended = await _wait(run, job, ctx, launcher, handler.timeout_s)
    if ended == TIMEOUT:
        message = f"the handler ran longer than its timeout of {handler.timeout_s} s"
        return _retry_or_dead(job, _error(job, TIMEOUT, message), policy)
    if ended == CANCELLED:
        asyncio.current_task().uncancel()  # type: ignore[union-attr]
        return Finish(job_id=job.id, state=JobState.CANCELLED)
    try:
        value = run.future.result()
    except Permanent as exc:
        return _dead(job, "Permanent", _raised(job, exc))
    except (Exception, asyncio.CancelledError) as exc:  # the handler's own, not ours
        return _retry_or_dead(job, _raised(job, exc), policy)
    if value is None:
        return Finish(job_id=job.id, state=JobState.SUCCEEDED, result_json=NULL_JSON)
    try:
        result_json = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        error = _error(job, "ResultNotSerializable", str(exc))
        return _dead(job, "ResultNotSerializable", error)
    return Finish(job_id=job.id, state=JobState.SUCCEEDED, result_json=result_json)


async def _wait(
    run: Run, job: ClaimedJob, ctx: JobContext, launcher: Launcher, timeout_s: float | None
) -> Ended:
    """Wait for the handler until its deadline. Neither the deadline nor a cancellation
    of the attempt waits for the handler to stop: it is abandoned to the launcher. A
    cancellation propagates unless the job's cancel request caused it."""
    loop = asyncio.get_running_loop()
    woken = loop.create_future()

    def wake(_: object = None) -> None:
        if not woken.done():
            woken.set_result(None)

    run.future.add_done_callback(wake)
    timer = None if timeout_s is None else loop.call_later(timeout_s, wake)
    try:
        await woken
    except asyncio.CancelledError:
        ctx.end()
        launcher.abandon(run, job, why=CANCELLED if ctx.cancel_requested else "stopped")
        if not ctx.cancel_requested:
            raise
        return CANCELLED
    finally:
        if timer is not None:
            timer.cancel()
        run.future.remove_done_callback(wake)
    if run.future.done():
        return "done"
    ctx.end()
    launcher.abandon(run, job, why=TIMEOUT)
    return TIMEOUT
