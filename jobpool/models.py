"""Domain models shared by the client, the store, the worker and the operator.

Pure data (pydantic v2, no I/O). Everything that crosses a boundary — a submitted job,
a job's status, a dead-letter entry — is one of these immutable models.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple, NewType

from pydantic import BaseModel, ConfigDict, Field

from jobpool.errors import InvalidJobType, InvalidName

JobId = NewType("JobId", uuid.UUID)
ShardId = NewType("ShardId", int)
DlqId = NewType("DlqId", int)

JSON = Any
"""A value that survives ``json.dumps``/``json.loads`` unchanged."""

JOB_TYPE_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,127}$")


def check_job_type(job_type: object) -> str:
    """A job type name: a letter, then at most 127 of ``A-Z a-z 0-9 _ . : -``."""
    if not isinstance(job_type, str) or not JOB_TYPE_PATTERN.fullmatch(job_type):
        raise InvalidJobType(
            f"invalid job type {job_type!r}: it must start with a letter and hold at most "
            "128 of A-Z a-z 0-9 _ . : -"
        )
    return job_type


POOL_NAME_PATTERN = re.compile(r"[a-z0-9]([-a-z0-9]{0,48}[a-z0-9])?")
MAX_TENANT_LENGTH = 128


def check_pool_name(name: object) -> str:
    """A pool name: a DNS label of at most 50 characters (it names Kubernetes objects)."""
    if not isinstance(name, str) or not POOL_NAME_PATTERN.fullmatch(name):
        raise InvalidName(
            f"invalid pool name {name!r}: use at most 50 of a-z 0-9 -, "
            "starting and ending with a letter or digit"
        )
    return name


def check_tenant(tenant: object) -> str:
    """A tenant name: a non-empty string of printable characters, at most 128."""
    if not (
        isinstance(tenant, str) and 0 < len(tenant) <= MAX_TENANT_LENGTH and tenant.isprintable()
    ):
        raise InvalidName(
            f"invalid tenant {tenant!r}: use 1 to {MAX_TENANT_LENGTH} printable characters"
        )
    return tenant


class Priority(StrEnum):
    """Priority lanes; a worker serves them in proportion to the pool's weights."""

    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """The number stored in ``jobs.priority``: low=0 … critical=3."""
        return _PRIORITY_RANK[self]

    @classmethod
    def from_rank(cls, rank: int) -> Priority:
        return _RANK_PRIORITY[rank]


_PRIORITY_RANK = {Priority.LOW: 0, Priority.NORMAL: 1, Priority.HIGH: 2, Priority.CRITICAL: 3}
_RANK_PRIORITY = {rank: priority for priority, rank in _PRIORITY_RANK.items()}


class JobState(StrEnum):
    """Where a job is in its lifecycle; the last three are terminal. ``waiting``: a job
    with a key behind an unfinished job of the same key (it runs after it). ``paused``:
    a job of a paused type, set aside until its type is resumed."""

    QUEUED = "queued"
    WAITING = "waiting"
    PAUSED = "paused"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    CANCELLED = "cancelled"
    DEAD = "dead"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.CANCELLED, JobState.DEAD)


class QueueState(StrEnum):
    """A queued job is ``due`` once its ``run_at`` passed, ``scheduled`` before (delayed,
    or backing off before a retry): only due jobs wait for a worker."""

    DUE = "due"
    SCHEDULED = "scheduled"


class Duration(StrEnum):
    """``long`` jobs renew their shard lease while they run."""

    SHORT = "short"
    LONG = "long"


class CancelOutcome(StrEnum):
    """What ``cancel`` did: ended a queued job, or signalled a running one."""

    CANCELLED = "cancelled"
    CANCEL_REQUESTED = "cancel_requested"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


MAX_TRACEBACK_CHARS = 4096
MAX_ERROR_MESSAGE_CHARS = 2048


class ErrorRecord(_Frozen):
    """One failed attempt, as kept in ``error_history``.

    ``traceback`` is the handler's formatted traceback when it raised, bounded to
    ``MAX_TRACEBACK_CHARS`` (its end kept: the innermost frames and the error);
    ``message`` is bounded to ``MAX_ERROR_MESSAGE_CHARS`` (its start kept).
    """

    attempt: int
    error_type: str
    message: str = Field(max_length=MAX_ERROR_MESSAGE_CHARS)
    at: datetime
    traceback: str | None = Field(default=None, max_length=MAX_TRACEBACK_CHARS)


class Progress(_Frozen):
    """The latest progress a running handler reported."""

    fraction: float | None = Field(default=None, ge=0.0, le=1.0)
    message: str | None = None
    at: datetime


class PoolPause(_Frozen):
    """What a pool holds back: every job (``paused``: nothing new starts, running jobs
    finish) and the jobs of ``types`` (parked when claimed, until their type resumes)."""

    paused: bool = False
    types: frozenset[str] = frozenset()

    @property
    def active(self) -> bool:
        return self.paused or bool(self.types)

    def describe(self) -> str:
        """One line: ``paused`` or ``active``, then the paused types if any."""
        types = f", types paused: {', '.join(sorted(self.types))}" if self.types else ""
        return ("paused" if self.paused else "active") + types


class Pool(_Frozen):
    """A pool's row: its fixed shard count, its current ring and its pause."""

    name: str
    shards: int
    replicas: int
    ring_version: int
    pause: PoolPause = PoolPause()


class NewJob(NamedTuple):
    """A validated job about to be inserted (built by the client from submit arguments).

    A named tuple, not a pydantic model nor a frozen dataclass: it never crosses a
    boundary unvalidated (``jobpool.client.validation`` checks every field), and a batch
    builds thousands of them, where a model's (or a frozen dataclass's) construction cost
    would dominate. The fields that differ between the jobs of one submit call come
    first (``PER_JOB_FIELDS``): a call's jobs share the rest.
    """

    id: JobId
    payload_json: str
    shard: ShardId
    type: str
    priority: Priority
    key: str | None = None
    dedupe_key: str | None = None
    run_at: datetime | None = None
    max_attempts: int | None = None
    duration: Duration = Duration.SHORT
    request_id: str | None = None
    user_id: str | None = None
    traceparent: str | None = None
    replay_of: DlqId | None = None

    PER_JOB_FIELDS = 3
    """``id``, ``payload_json`` and ``shard``: ``NewJob._make((id, payload_json, shard,
    *other[NewJob.PER_JOB_FIELDS:]))`` is ``other`` with those three replaced."""


class Job(_Frozen):
    """A submitted job, as returned by ``submit``.

    ``duplicate`` is true when a job with the same dedupe key was still unfinished:
    the returned job is that existing one, and nothing new was inserted.
    """

    id: JobId
    pool: str
    tenant: str
    type: str
    priority: Priority
    shard: ShardId
    state: JobState
    run_at: datetime
    created_at: datetime
    dedupe_key: str | None = None
    duplicate: bool = False


class JobStatus(_Frozen):
    """Everything a caller may know about one job."""

    id: JobId
    pool: str
    tenant: str
    type: str
    priority: Priority
    shard: ShardId
    state: JobState
    attempts: int
    max_attempts: int | None
    progress: Progress | None
    result: JSON = None
    error_history: tuple[ErrorRecord, ...] = ()
    cancel_requested: bool = False
    created_at: datetime
    run_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    request_id: str | None = None
    user_id: str | None = None

    @property
    def last_error(self) -> ErrorRecord | None:
        return self.error_history[-1] if self.error_history else None


class DlqEntry(_Frozen):
    """A job that ended dead, kept until it is replayed and purged."""

    id: DlqId
    pool: str
    original_job_id: JobId
    app_id: str
    type: str
    payload: JSON
    priority: Priority
    key: str | None
    max_attempts: int | None
    duration: Duration
    error_reason: str
    attempts: int
    error_history: tuple[ErrorRecord, ...]
    dlq_at: datetime
    replayed_at: datetime | None
    request_id: str | None
    user_id: str | None


class DlqPage(_Frozen):
    """One page of unreplayed entries; pass ``next_cursor`` back for the next one."""

    entries: tuple[DlqEntry, ...]
    next_cursor: str | None


@dataclass(slots=True)
class ClaimedJob:
    """A job a worker claimed: one attempt, fenced by the lease epoch it was claimed under.

    Read-only by convention. A plain slotted dataclass, not a pydantic model: every value
    comes typed from the database's columns (``jobpool.store.rows.claimed_job``), and a
    worker builds one per job, where even ``model_construct`` cost more than a no-op job's
    own bookkeeping.
    """

    id: JobId
    tenant: str
    shard: ShardId
    type: str
    priority: Priority
    payload: JSON
    attempt: int
    max_attempts: int | None
    duration: Duration
    request_id: str | None
    user_id: str | None
    traceparent: str | None
    created_at: datetime
    run_at: datetime
    epoch: int
    cancel_requested: bool = False
    """Cancelled while an earlier attempt ran: the worker ends it without running it."""


class Finish(_Frozen):
    """How a running attempt ended for good: succeeded, dead or cancelled.

    ``result_json`` goes with ``succeeded``; ``reason`` (the DLQ's ``error_reason``) and
    ``error`` go with ``dead``; ``error`` is appended to the job's error history.
    """

    job_id: JobId
    state: JobState
    result_json: str | None = None
    reason: str | None = None
    error: ErrorRecord | None = None


class Retry(_Frozen):
    """A failed attempt that goes back to the queue at ``run_at`` (its backoff)."""

    job_id: JobId
    run_at: datetime
    error: ErrorRecord
