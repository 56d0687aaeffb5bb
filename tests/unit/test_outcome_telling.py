"""What a worker tells about each outcome: metrics, one log line, the span's status.

Defends: attempt failures and final outcomes are counted apart (a five-attempt death is
five attempt failures under the attempts' own error type, and one ``dead``), with a
``priority`` label; each failed attempt, dead letter and cancel is logged once, on one
line naming the job, its type, the attempt, the error type and message; a failed
attempt's ``jobpool.process`` span ends ERROR with an ``exception`` event carrying the
stack trace; ``type`` label values come only from registered handlers.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from claimed_jobs import claimed
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import REGISTRY

from jobpool.models import (
    ErrorRecord,
    Finish,
    JobId,
    JobState,
    Priority,
    Retry,
)
from jobpool.worker import Registry, metrics
from jobpool.worker.outcomes import mark_span, tell

POOL = "telling"


def error(attempt: int) -> ErrorRecord:
    return ErrorRecord(
        attempt=attempt,
        error_type="RuntimeError",
        message=f"smtp said no\n  (attempt {attempt})",
        at=datetime.now(UTC),
        traceback='Traceback (most recent call last):\n  File "x.py"\nRuntimeError: smtp said no',
    )


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"pool": POOL, "type": "send.mail", **labels}) or 0.0


def test_a_five_attempt_death_is_five_attempt_failures_and_one_dead_job(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures = {"priority": "high", "reason": "RuntimeError"}
    before = (
        sample("jobpool_job_failures_total", **failures),
        sample("jobpool_jobs_finished_total", priority="high", outcome="dead"),
        sample("jobpool_job_failures_total", priority="high", reason="MaxAttempts"),
    )
    job_id = JobId(uuid.uuid4())
    caplog.set_level(logging.INFO, logger="jobpool.worker.outcomes")
    for attempt in range(1, 5):
        run_at = datetime.now(UTC) + timedelta(seconds=attempt)
        retry = Retry(job_id=job_id, run_at=run_at, error=error(attempt))
        tell(
            claimed("send.mail", attempt=attempt, priority=Priority.HIGH, job_id=job_id),
            retry,
            pool=POOL,
            type_label="send.mail",
        )
    dead = Finish(job_id=job_id, state=JobState.DEAD, reason="MaxAttempts", error=error(5))
    tell(
        claimed("send.mail", attempt=5, priority=Priority.HIGH, job_id=job_id),
        dead,
        pool=POOL,
        type_label="send.mail",
    )

    after = (
        sample("jobpool_job_failures_total", **failures),
        sample("jobpool_jobs_finished_total", priority="high", outcome="dead"),
        sample("jobpool_job_failures_total", priority="high", reason="MaxAttempts"),
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == [5, 1, 0]

    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in lines] == ["WARNING"] * 4 + ["ERROR"]
    assert all("\n" not in message for _, message in lines)
    assert lines[0][1].startswith(
        f"job {job_id} (send.mail) attempt 1 failed: RuntimeError: smtp said no (attempt 1);"
        " retry at "
    )
    assert lines[4][1] == (
        f"job {job_id} (send.mail) dead-lettered (MaxAttempts) after attempt 5: "
        "RuntimeError: smtp said no (attempt 5)"
    )


def test_success_and_cancel_are_final_outcomes_and_a_cancel_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    labels = {"priority": "high"}
    before = [
        sample("jobpool_jobs_finished_total", **labels, outcome=outcome)
        for outcome in ("succeeded", "cancelled")
    ]
    job = claimed("send.mail", attempt=2, priority=Priority.HIGH)
    caplog.set_level(logging.INFO, logger="jobpool.worker.outcomes")
    ok = Finish(job_id=job.id, state=JobState.SUCCEEDED, result_json="1")
    tell(job, ok, pool=POOL, type_label="send.mail")
    cancelled = Finish(job_id=job.id, state=JobState.CANCELLED)
    tell(job, cancelled, pool=POOL, type_label="send.mail")

    after = [
        sample("jobpool_jobs_finished_total", **labels, outcome=outcome)
        for outcome in ("succeeded", "cancelled")
    ]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1]
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", f"job {job.id} (send.mail) cancelled (attempt 2)")
    ]


def test_a_failed_attempt_marks_its_span_error_with_an_exception_event() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")
    job = claimed("send.mail", priority=Priority.HIGH)

    with tracer.start_as_current_span("failed") as span:
        mark_span(span, Retry(job_id=job.id, run_at=datetime.now(UTC), error=error(1)))
    with tracer.start_as_current_span("ok") as span:
        mark_span(span, Finish(job_id=job.id, state=JobState.SUCCEEDED, result_json="1"))

    failed, ok = exporter.get_finished_spans()
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "RuntimeError: smtp said no\n  (attempt 1)"
    [event] = failed.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "RuntimeError"
    assert str(event.attributes["exception.stacktrace"]).endswith("RuntimeError: smtp said no")
    assert ok.status.status_code is StatusCode.UNSET
    assert ok.events == ()


def test_type_labels_come_only_from_registered_handlers() -> None:
    registry = Registry()
    registry.handler("send.mail")(lambda payload, ctx: None)

    assert metrics.type_label("send.mail", registry) == "send.mail"
    assert metrics.type_label("made.up.by.a.client", registry) == metrics.OTHER_TYPE
