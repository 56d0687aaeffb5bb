"""What a worker tells about each attempt's outcome: metrics, a log line, the span.

Every outcome is told exactly once, when it is decided: by the executor, by the
shutdown's interrupt, or by the dispatcher for a claimed job cancelled before it ran.

* metrics — a failed attempt (retried or not) counts in ``jobpool_job_failures_total``
  under its error type; a job that ends for good counts once in
  ``jobpool_jobs_finished_total`` under its outcome (``succeeded``, ``dead``,
  ``cancelled``). A five-attempt death is five attempt failures and one ``dead``.
* one log line — WARNING for a failed attempt that will be retried, ERROR for a job
  dead-lettered (with the last attempt's error), INFO for a cancel (of a running
  attempt, or of a claimed job before it started). One line each:
  the message's whitespace is collapsed and it is cut at ``MAX_LOGGED_MESSAGE_CHARS``;
  the traceback goes to the job's error history, not to the log.
* the ``jobpool.process`` span — status ERROR and an ``exception`` event (type,
  message, stack trace as OpenTelemetry's semantic conventions name them) when the
  attempt failed.
"""

from __future__ import annotations

import logging

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from jobpool.models import ClaimedJob, ErrorRecord, JobState, Retry
from jobpool.worker import metrics
from jobpool.worker.executor import Outcome

log = logging.getLogger(__name__)

MAX_LOGGED_MESSAGE_CHARS = 500


def tell(job: ClaimedJob, outcome: Outcome, *, pool: str, type_label: str) -> None:
    """Count ``outcome`` and log it (see the module docstring)."""
    labels = (pool, type_label, job.priority.value)
    error = outcome.error
    if error is not None:
        metrics.labelled(metrics.FAILURES, *labels, error.error_type).inc()
    if isinstance(outcome, Retry):
        log.warning(
            "job %s (%s) attempt %d failed: %s; retry at %s",
            job.id,
            job.type,
            job.attempt,
            _described(outcome.error),
            outcome.run_at.isoformat(timespec="milliseconds"),
        )
        return
    metrics.labelled(metrics.FINISHED, *labels, outcome.state.value).inc()
    if outcome.state is JobState.SUCCEEDED:
        metrics.labelled(metrics.COMPLETED, pool, type_label).inc()
    elif outcome.state is JobState.CANCELLED:
        metrics.labelled(metrics.CANCELLATIONS, pool, type_label).inc()
        log.info("job %s (%s) cancelled (attempt %d)", job.id, job.type, job.attempt)
    elif error is not None:
        log.error(
            "job %s (%s) dead-lettered (%s) after attempt %d: %s",
            job.id,
            job.type,
            outcome.reason,
            job.attempt,
            _described(error),
        )


def mark_span(span: trace.Span, outcome: Outcome) -> None:
    """Status ERROR with an ``exception`` event when the attempt failed."""
    error = outcome.error
    if error is None:
        return
    attributes = {"exception.type": error.error_type, "exception.message": error.message}
    if error.traceback is not None:
        attributes["exception.stacktrace"] = error.traceback
    span.add_event("exception", attributes)
    span.set_status(Status(StatusCode.ERROR, f"{error.error_type}: {error.message}"))


def _described(error: ErrorRecord) -> str:
    message = " ".join(error.message.split())
    if len(message) > MAX_LOGGED_MESSAGE_CHARS:
        message = message[:MAX_LOGGED_MESSAGE_CHARS] + "..."
    return f"{error.error_type}: {message}" if message else error.error_type
