"""Conversions between asyncpg records and domain models: every row converter of the
store lives here, beside the row models that only the store builds (``ScheduleRow``,
``WorkerRow``, ``ShardHolder``, ``LeaseRecord``, the history's).

jsonb columns are read as text (``::text`` in the queries) and decoded here, so the
store works on any asyncpg connection, whatever JSON codecs its owner registered.
Converters of rows the database has typed, or of input validated already, build their
model with ``model_construct`` (no re-validation on the hot paths); the jobs a submit
returns, thousands per batch, skip its loop over the fields too (``_inserted_job``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple

from asyncpg import Record
from pydantic import BaseModel, ConfigDict

from jobpool.cron import Schedule, anchor, upcoming_tick
from jobpool.models import (
    ClaimedJob,
    DlqEntry,
    DlqId,
    Duration,
    ErrorRecord,
    Job,
    JobId,
    JobState,
    JobStatus,
    NewJob,
    Pool,
    PoolPause,
    Priority,
    Progress,
    ShardId,
)


class ScheduleSource(StrEnum):
    """Who declared a schedule: the worker's handler module or the JobPool spec."""

    CODE = "code"
    SPEC = "spec"


class ScheduleRow(BaseModel):
    """A stored schedule: its definition and where its ticks stand."""

    model_config = ConfigDict(frozen=True)

    schedule: Schedule
    source: ScheduleSource
    defined_at: datetime
    last_tick: datetime | None
    last_enqueued_at: datetime | None

    @property
    def after(self) -> datetime:
        """Ticks after this moment may fire (see ``jobpool.cron.anchor``)."""
        return anchor(last_tick=self.last_tick, defined_at=self.defined_at)

    def next_tick(self, now: datetime) -> datetime | None:
        """The tick it enqueues next: a due one not enqueued yet, else the next one."""
        return upcoming_tick(self.schedule, after=self.after, now=now)


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


def claimed_job(row: Record) -> ClaimedJob:
    # Every value comes from the database, typed by its columns: no re-validation.
    return ClaimedJob(
        id=JobId(row["id"]),
        tenant=row["tenant"],
        shard=ShardId(row["shard"]),
        type=row["type"],
        priority=Priority.from_rank(row["priority"]),
        payload=json.loads(row["payload"]),
        attempt=row["attempts"],
        max_attempts=row["max_attempts"],
        duration=Duration(row["duration"]),
        request_id=row["request_id"],
        user_id=row["user_id"],
        traceparent=row["traceparent"],
        created_at=row["created_at"],
        run_at=row["run_at"],
        epoch=row["lease_epoch"],
        cancel_requested=row["cancel_requested"],
    )


def new_job(pool: str, tenant: str, job: NewJob, row: Record) -> Job:
    """A job as inserted, its times (and, for a keyed job, its state) from its row."""
    # Only a keyed job can be inserted waiting: skip the enum lookup for the others.
    state = JobState.QUEUED if job.key is None else JobState(row["state"])
    return _inserted_job(
        pool, tenant, job, state, row["run_at"], row["created_at"], set(_JOB_FIELDS)
    )


def new_jobs(pool: str, tenant: str, jobs: Sequence[NewJob], *, created_at: datetime) -> list[Job]:
    """Jobs inserted without keys or dedupe keys, by a statement that returns only its
    time: each is queued, created then, and due at its own ``run_at`` or then."""
    fields_set = set(_JOB_FIELDS)  # shared, as model_construct(_fields_set=…) shares it
    return [
        _inserted_job(
            pool, tenant, job, JobState.QUEUED, job.run_at or created_at, created_at, fields_set
        )
        for job in jobs
    ]


_JOB_FIELDS = frozenset(Job.model_fields)
_new_object = Job.__new__
_set_attribute = object.__setattr__


def _inserted_job(
    pool: str,
    tenant: str,
    job: NewJob,
    state: JobState,
    run_at: datetime,
    created_at: datetime,
    fields_set: set[str],
) -> Job:
    """``Job.model_construct(_fields_set=fields_set, **fields)`` without its loop over the
    fields, which a batch of thousands of jobs would pay per job: every field is given,
    validated input or the database's. It sets what ``model_construct`` sets on a model
    without extras, private attributes or post-init (a unit test holds the two equal)."""
    built = _new_object(Job)
    _set_attribute(
        built,
        "__dict__",
        {
            "id": job.id,
            "pool": pool,
            "tenant": tenant,
            "type": job.type,
            "priority": job.priority,
            "shard": job.shard,
            "state": state,
            "run_at": run_at,
            "created_at": created_at,
            "dedupe_key": job.dedupe_key,
            "duplicate": False,
        },
    )
    _set_attribute(built, "__pydantic_fields_set__", fields_set)
    _set_attribute(built, "__pydantic_extra__", None)
    _set_attribute(built, "__pydantic_private__", None)
    return built


def existing_job(pool: str, tenant: str, row: Record) -> Job:
    return Job(
        id=JobId(row["id"]),
        pool=pool,
        tenant=tenant,
        type=row["type"],
        priority=Priority.from_rank(row["priority"]),
        shard=ShardId(row["shard"]),
        state=JobState(row["state"]),
        run_at=row["run_at"],
        created_at=row["created_at"],
        dedupe_key=row["dedupe_key"],
        duplicate=True,
    )


def pool_pause(row: Record) -> PoolPause:
    return PoolPause(paused=row["paused"], types=frozenset(row["paused_types"]))


def pool(row: Record) -> Pool:
    return Pool(
        name=row["name"],
        shards=row["shards"],
        replicas=row["replicas"],
        ring_version=row["ring_version"],
        pause=pool_pause(row),
    )


def schedule_row(row: Record) -> ScheduleRow:
    schedule = Schedule(
        name=row["name"],
        cron=row["cron"],
        type=row["type"],
        payload=json.loads(row["payload"]),
        timezone=row["timezone"],
        priority=Priority.from_rank(row["priority"]),
        tenant=row["tenant"],
        catch_up=row["catch_up"],
    )
    return ScheduleRow(
        schedule=schedule,
        source=ScheduleSource(row["source"]),
        defined_at=row["defined_at"],
        last_tick=row["last_tick"],
        last_enqueued_at=row["last_enqueued_at"],
    )


class WorkerCounters(BaseModel):
    """What one worker reports with each heartbeat."""

    model_config = ConfigDict(frozen=True)

    running: int = 0
    succeeded: int = 0
    failed: int = 0


class WorkerRow(WorkerCounters):
    ordinal: int
    incarnation: str
    started_at: datetime
    heartbeat_at: datetime
    shards: tuple[int, ...]


def worker_row(row: Record) -> WorkerRow:
    return WorkerRow.model_validate({**dict(row), "shards": tuple(row["shards"])})


class ShardHolder(BaseModel):
    """The holder of one shard's lease; ``live`` while the lease has not expired."""

    model_config = ConfigDict(frozen=True)

    ordinal: int | None
    live: bool


def shard_holder(row: Record) -> ShardHolder:
    return ShardHolder(ordinal=row["ordinal"], live=row["live"])


class LeaseRecord(NamedTuple):
    """One holding of a shard lease, from ``lease_history``."""

    shard: ShardId
    epoch: int
    owner: str
    ordinal: int
    taken_at: datetime
    taken_because: str
    ended_at: datetime | None
    ended_because: str | None


def lease_record(row: Record) -> LeaseRecord:
    return LeaseRecord(ShardId(row["shard"]), *list(row.values())[1:])


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class HistoryPass(_Frozen):
    """What one maintenance pass did."""

    created: int  # partitions created (ahead, or for rows found in the default one)
    dropped: int  # partitions dropped past the longest retention
    deleted: int  # rows deleted of pools keeping less than the longest retention
    skipped: int  # partitions due but locked by a long query: left for the next pass


def history_pass(row: Record) -> HistoryPass:
    return HistoryPass.model_validate(dict(row))


class HistoryPartition(_Frozen):
    """A partition of ``job_history``: the finish times it holds, [starts_at, ends_at)."""

    name: str
    starts_at: datetime | None  # None: from the beginning (the history before 0005)
    ends_at: datetime
    rows_estimate: int


def history_partition(row: Record) -> HistoryPartition:
    return HistoryPartition.model_validate(dict(row))


class HistoryRetention(_Frozen):
    """A pool's retention, and the time before which its finished jobs are gone."""

    retention: timedelta
    pruned_before: datetime | None


def history_retention(row: Record) -> HistoryRetention:
    return HistoryRetention(
        retention=row["history_retention"], pruned_before=row["history_pruned_before"]
    )
