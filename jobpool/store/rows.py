"""Conversions between asyncpg records and domain models.

jsonb columns are read as text (``::text`` in the queries) and decoded here, so the
store works on any asyncpg connection, whatever JSON codecs its owner registered.
"""

from __future__ import annotations

import json
from typing import Any

from asyncpg import Record

from jobpool.models import (
    DlqEntry,
    DlqId,
    Duration,
    ErrorRecord,
    JobId,
    JobState,
    JobStatus,
    Priority,
    Progress,
    ShardId,
)


def error_history(text: str | None) -> tuple[ErrorRecord, ...]:
    return tuple(ErrorRecord.model_validate(item) for item in json.loads(text or "[]"))


def _json_or_none(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _progress(row: Record) -> Progress | None:
    if row["progress_at"] is None:
        return None
    return Progress(
        fraction=row["progress"], message=row["progress_message"], at=row["progress_at"]
    )


def job_status(row: Record) -> JobStatus:
    return JobStatus(
        id=JobId(row["id"]),
        pool=row["pool"],
        tenant=row["tenant"],
        type=row["type"],
        priority=Priority.from_rank(row["priority"]),
        shard=ShardId(row["shard"]),
        state=JobState(row["state"]),
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        progress=_progress(row),
        result=_json_or_none(row["result"]),
        error_history=error_history(row["error_history"]),
        cancel_requested=row["cancel_requested"],
        created_at=row["created_at"],
        run_at=row["run_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        request_id=row["request_id"],
        user_id=row["user_id"],
    )


def dlq_entry(row: Record) -> DlqEntry:
    return DlqEntry(
        id=DlqId(row["id"]),
        pool=row["pool"],
        original_job_id=JobId(row["original_job_id"]),
        app_id=row["app_id"],
        type=row["type"],
        payload=json.loads(row["payload"]),
        priority=Priority.from_rank(row["priority"]),
        key=row["routing_key"],
        max_attempts=row["max_attempts"],
        duration=Duration(row["duration"]),
        error_reason=row["error_reason"],
        attempts=row["attempts"],
        error_history=error_history(row["error_history"]),
        dlq_at=row["dlq_at"],
        replayed_at=row["replayed_at"],
        request_id=row["request_id"],
        user_id=row["user_id"],
    )
