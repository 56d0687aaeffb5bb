"""Claimed jobs, as the store hands them to a worker, for tests without a database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from jobpool.models import ClaimedJob, Duration, JobId, Priority, ShardId


def claimed(
    job_type: str,
    payload: Any = None,
    *,
    attempt: int = 1,
    priority: Priority = Priority.NORMAL,
    job_id: JobId | None = None,
) -> ClaimedJob:
    """One attempt of a new job of ``job_type`` (tenant ``acme``, shard 0), due now."""
    now = datetime.now(UTC)
    return ClaimedJob(
        id=job_id or JobId(uuid.uuid4()),
        tenant="acme",
        shard=ShardId(0),
        type=job_type,
        priority=priority,
        payload=payload if payload is not None else {},
        attempt=attempt,
        max_attempts=None,
        duration=Duration.SHORT,
        request_id=None,
        user_id=None,
        traceparent=None,
        created_at=now,
        run_at=now,
        epoch=1,
    )
