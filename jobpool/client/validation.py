"""Turning submit arguments into validated ``NewJob`` rows, before any I/O.

All checks run on the whole batch before anything is written, so a batch with one bad
item inserts nothing. Errors are the typed ``InvalidInput`` subclasses of
``jobpool.errors`` and name the offending item and value.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict

from jobpool.errors import (
    InvalidInput,
    InvalidJobType,
    InvalidSchedule,
    PayloadNotSerializable,
    PayloadTooLarge,
    UnknownPriority,
)
from jobpool.ids import new_job_id
from jobpool.models import DlqId, Duration, NewJob, Priority, ShardId
from jobpool.sharding import shard_for

JOB_TYPE_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,127}$")
MAX_KEY_LENGTH = 512
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
DEFAULT_MAX_BATCH = 10_000


class SubmitOptions(BaseModel):
    """The keyword arguments of ``submit``/``enqueue`` shared by every item of a call."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    priority: str | Priority = Priority.NORMAL
    dedupe_key: str | None = None
    key: str | None = None
    delay: timedelta | float | None = None
    run_at: datetime | None = None
    max_attempts: int | None = None
    duration: str | Duration = Duration.SHORT
    request_id: str | None = None
    user_id: str | None = None
    replay_of: DlqId | None = None


def parse_priority(value: str | Priority) -> Priority:
    try:
        return Priority(value)
    except ValueError:
        allowed = ", ".join(p.value for p in Priority)
        raise UnknownPriority(f"unknown priority {value!r}: use one of {allowed}") from None


def check_job_type(job_type: object) -> str:
    if not isinstance(job_type, str) or not JOB_TYPE_PATTERN.match(job_type):
        raise InvalidJobType(
            f"invalid job type {job_type!r}: it must start with a letter and hold at most "
            "128 of A-Z a-z 0-9 _ . : -"
        )
    return job_type


def encode_payload(payload: Any, *, max_bytes: int, where: str = "payload") -> str:
    try:
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PayloadNotSerializable(f"{where} is not JSON-serialisable: {exc}") from None
    size = len(text.encode())
    if size > max_bytes:
        raise PayloadTooLarge(f"{where} is {size} bytes of JSON, over the limit of {max_bytes}")
    return text


def resolve_run_at(delay: timedelta | float | None, run_at: datetime | None) -> datetime | None:
    """The absolute start time, or ``None`` for "now" (the database's clock decides)."""
    if delay is not None and run_at is not None:
        raise InvalidSchedule("give either delay or run_at, not both")
    if run_at is not None:
        if run_at.tzinfo is None:
            raise InvalidSchedule(f"run_at must be timezone-aware, got {run_at.isoformat()}")
        return run_at
    if delay is None:
        return None
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
    if seconds < 0:
        raise InvalidSchedule(f"delay must not be negative, got {seconds} s")
    return datetime.now(UTC) + timedelta(seconds=seconds) if seconds else None


def _check_text(name: str, value: str | None) -> str | None:
    if value is not None and not (isinstance(value, str) and 0 < len(value) <= MAX_KEY_LENGTH):
        raise InvalidInput(f"{name} must be a non-empty string of at most {MAX_KEY_LENGTH} chars")
    return value


def _check_max_attempts(value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidInput(f"max_attempts must be an integer >= 1, got {value!r}")
    return value


def _parse_duration(value: str | Duration) -> Duration:
    try:
        return Duration(value)
    except ValueError:
        raise InvalidInput(f"unknown duration {value!r}: use 'short' or 'long'") from None


class Item(BaseModel):
    """One batch item with its own options: ``submit(type, [Item(p, dedupe_key="a"), ...])``.

    Fields left ``None`` take the call's value. Wrapping a list in ``Item`` submits it
    as the payload of a single job rather than as a batch.
    """

    model_config = ConfigDict(frozen=True)

    payload: Any
    dedupe_key: str | None = None
    key: str | None = None
    priority: str | Priority | None = None
    delay: timedelta | float | None = None
    run_at: datetime | None = None
    request_id: str | None = None
    user_id: str | None = None


def _item_options(options: SubmitOptions, item: Item) -> SubmitOptions:
    overrides = item.model_dump(exclude={"payload"}, exclude_none=True)
    if "delay" in overrides or "run_at" in overrides:
        overrides.setdefault("delay", None)
        overrides.setdefault("run_at", None)
    return options.model_copy(update=overrides)


def _validated_fields(options: SubmitOptions, traceparent: str | None) -> dict[str, Any]:
    return {
        "priority": parse_priority(options.priority),
        "duration": _parse_duration(options.duration),
        "run_at": resolve_run_at(options.delay, options.run_at),
        "key": _check_text("key", options.key),
        "dedupe_key": _check_text("dedupe_key", options.dedupe_key),
        "max_attempts": _check_max_attempts(options.max_attempts),
        "request_id": _check_text("request_id", options.request_id),
        "user_id": _check_text("user_id", options.user_id),
        "traceparent": traceparent,
        "replay_of": options.replay_of,
    }


def build_jobs(
    job_type: str,
    items: list[Any],
    options: SubmitOptions,
    *,
    shards: int,
    max_payload_bytes: int,
    traceparent: str | None,
) -> list[NewJob]:
    """Validate one submit call (one payload or a batch) into insertable jobs."""
    check_job_type(job_type)
    common = _validated_fields(options, traceparent)
    jobs = []
    for index, item in enumerate(items):
        fields = common
        payload = item
        if isinstance(item, Item):
            fields = _validated_fields(_item_options(options, item), traceparent)
            payload = item.payload
        where = f"payload #{index}" if len(items) > 1 else "payload"
        job_id = new_job_id()
        routing_key = fields["key"] or fields["dedupe_key"] or str(job_id)
        jobs.append(
            NewJob(
                id=job_id,
                type=job_type,
                payload_json=encode_payload(payload, max_bytes=max_payload_bytes, where=where),
                shard=ShardId(shard_for(routing_key, shards)),
                **fields,
            )
        )
    return jobs


def as_items(payload: Any) -> tuple[list[Any], bool]:
    """A list of payloads is a batch; anything else (an ``Item`` too) is one job."""
    if isinstance(payload, list):
        return payload, True
    return [payload], False
