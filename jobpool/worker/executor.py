"""Running one claimed attempt and deciding its outcome.

``execute`` never raises for a handler's failure: every way an attempt can end becomes
an outcome for the completer — ``Finish`` (succeeded, dead, cancelled) or ``Retry``.

Terminal at once (DLQ, no retry): no handler for the type (``HandlerMissing``), a
payload the handler's model rejects (``ValidationError``), ``jobpool.Permanent``, a
result that is not JSON (``ResultNotSerializable``). Retryable: any other exception
and a timeout (reason ``timeout``), until the attempts are exhausted (``MaxAttempts``).
A cancellation that the job's cancel request caused ends it ``cancelled``; any other
cancellation (shutdown, lost lease) propagates, and the attempt is retried elsewhere.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError

from jobpool.errors import HandlerMissing, Permanent
from jobpool.models import ClaimedJob, ErrorRecord, Finish, JobId, JobState, Priority, Retry
from jobpool.worker.backoff import RetryPolicy
from jobpool.worker.registry import Handler, Registry

Outcome = Finish | Retry
ReportProgress = Callable[[ClaimedJob, float | None, str | None], Awaitable[None]]

TIMEOUT = "timeout"
MAX_ATTEMPTS = "MaxAttempts"


@dataclass
class JobContext:
    """The ``ctx`` a handler receives (implements ``jobpool.worker.registry.Context``)."""

    job: ClaimedJob
    _report: ReportProgress
    cancel_requested: bool = field(default=False, init=False)

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

    async def report_progress(self, fraction: float | None, message: str | None = None) -> None:
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise ValueError(f"progress fraction must be within [0, 1], got {fraction}")
        await self._report(self.job, fraction, message)


def _error(job: ClaimedJob, error_type: str, message: str) -> ErrorRecord:
    return ErrorRecord(
        attempt=job.attempt, error_type=error_type, message=message, at=datetime.now(UTC)
    )


def _dead(job: ClaimedJob, reason: str, error: ErrorRecord) -> Finish:
    return Finish(job_id=job.id, state=JobState.DEAD, reason=reason, error=error)


def _retry_or_dead(job: ClaimedJob, error: ErrorRecord, policy: RetryPolicy) -> Outcome:
    if policy.exhausted(job.attempt, job.max_attempts):
        return _dead(job, MAX_ATTEMPTS, error)
    delay = timedelta(seconds=policy.delay_s(job.attempt))
    return Retry(job_id=job.id, run_at=error.at + delay, error=error)


async def _call(handler: Handler, argument: object, ctx: JobContext) -> object:
    if handler.is_async:
        return await handler.fn(argument, ctx)
    return await asyncio.to_thread(handler.fn, argument, ctx)


async def execute(
    job: ClaimedJob, ctx: JobContext, registry: Registry, *, policy: RetryPolicy
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
        async with asyncio.timeout(handler.timeout_s) as deadline:
            value = await _call(handler, argument, ctx)
    except asyncio.CancelledError:
        if not ctx.cancel_requested:
            raise
        asyncio.current_task().uncancel()  # type: ignore[union-attr]
        return Finish(job_id=job.id, state=JobState.CANCELLED)
    except TimeoutError as exc:
        if deadline.expired():
            message = f"the handler ran longer than its timeout of {handler.timeout_s} s"
            return _retry_or_dead(job, _error(job, TIMEOUT, message), policy)
        return _retry_or_dead(job, _error(job, type(exc).__name__, str(exc)), policy)
    except Permanent as exc:
        return _dead(job, "Permanent", _error(job, "Permanent", str(exc)))
    except Exception as exc:
        return _retry_or_dead(job, _error(job, type(exc).__name__, str(exc)), policy)
    try:
        result_json = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        error = _error(job, "ResultNotSerializable", str(exc))
        return _dead(job, "ResultNotSerializable", error)
    return Finish(job_id=job.id, state=JobState.SUCCEEDED, result_json=result_json)
