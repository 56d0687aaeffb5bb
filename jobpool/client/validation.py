"""Turning submit arguments into validated ``NewJob`` rows, before any I/O.

All checks run on the whole batch before anything is written, so a batch with one bad
item inserts nothing. Errors are the typed ``InvalidInput`` subclasses of
``jobpool.errors``; in a batch they name the offending item (``item #3: …``), and a
batch with several bad items raises one ``InvalidBatch`` that lists every one of them
(index and what is wrong), so a caller fixes them all in one go.

Options are checked by hand rather than by a coercing model: ``priority=5`` is an
unknown priority, not a validation error of another library, and ``max_attempts=True``
is refused rather than read as 1.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from jobpool.errors import (
    InvalidBatch,
    InvalidInput,
    InvalidSchedule,
    PayloadNotSerializable,
    PayloadTooLarge,
    UnknownPriority,
)
from jobpool.ids import new_job_ids
from jobpool.models import (
    DlqId,
    Duration,
    JobId,
    NewJob,
    Priority,
    ShardId,
    check_job_type,
)
from jobpool.sharding import shard_for, shards_for

MAX_KEY_LENGTH = 512
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
DEFAULT_MAX_BATCH = 10_000
MAX_PAYLOAD_BYTES_LIMIT = 8 * 1024 * 1024
"""The largest ``max_payload_bytes`` a client may choose (the database refuses larger)."""
MAX_ATTEMPTS_LIMIT = 1000
"""The largest ``max_attempts`` of a job (a CHECK constraint of the database too)."""
RUN_AT_MIN = datetime(1970, 1, 1, tzinfo=UTC)
RUN_AT_MAX = datetime(3000, 1, 1, tzinfo=UTC)
"""A ``run_at`` must fall in [RUN_AT_MIN, RUN_AT_MAX) (a CHECK constraint too)."""
MAX_LISTED_ITEMS = 20
"""An ``InvalidBatch`` message lists this many bad items; its ``items`` holds them all."""

Delay = timedelta | float | int


@dataclass(frozen=True, kw_only=True)
class SubmitOptions:
    """The keyword arguments of ``submit``/``enqueue``, shared by every item of a call."""

    priority: str | Priority = Priority.NORMAL
    dedupe_key: str | None = None
    key: str | None = None
    delay: Delay | None = None
    run_at: datetime | None = None
    max_attempts: int | None = None
    duration: str | Duration = Duration.SHORT
    request_id: str | None = None
    user_id: str | None = None
    replay_of: DlqId | None = None


@dataclass(frozen=True)
class Item:
    """One batch item with its own options: ``submit(type, [Item(p, dedupe_key="a"), ...])``.

    Options left ``None`` take the call's value. Wrapping a list in ``Item`` submits it
    as the payload of a single job rather than as a batch.
    """

    payload: Any
    _: dataclasses.KW_ONLY
    dedupe_key: str | None = None
    key: str | None = None
    priority: str | Priority | None = None
    delay: Delay | None = None
    run_at: datetime | None = None
    request_id: str | None = None
    user_id: str | None = None


def parse_priority(value: object) -> Priority:
    if isinstance(value, str):
        try:
            return Priority(value)
        except ValueError:
            pass
    allowed = ", ".join(p.value for p in Priority)
    raise UnknownPriority(f"unknown priority {value!r}: use one of {allowed}")


_ENCODE_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
"""``json.dumps`` with these options, without building an encoder per call."""


def encode_payload(payload: Any, *, max_bytes: int, where: str = "payload") -> str:
    """Compact JSON text of the payload, checked for what Postgres jsonb can store."""
    try:
        text = _ENCODE_JSON(payload)
        # ASCII text is as many bytes as characters; other text is measured encoded,
        # which also refuses a lone surrogate.
        size = len(text) if text.isascii() else len(text.encode())
    except (TypeError, ValueError, RecursionError) as exc:
        raise PayloadNotSerializable(f"{where} is not JSON-serialisable: {exc}") from None
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        raise PayloadNotSerializable(f"{where} holds a NUL character, which jsonb cannot store")
    if size > max_bytes:
        raise PayloadTooLarge(f"{where} is {size} bytes of JSON, over the limit of {max_bytes}")
    return text


_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
"""``\\u0000`` preceded by an even number of backslashes: an escaped NUL character, not
an escaped backslash followed by the text ``u0000`` (json.dumps escapes every other
backslash, so the count of those before it decides)."""


def _delay_seconds(delay: object) -> float:
    if isinstance(delay, timedelta):
        return delay.total_seconds()
    if isinstance(delay, int | float) and not isinstance(delay, bool):
        return float(delay)
    raise InvalidSchedule(f"delay must be seconds or a timedelta, got {delay!r}")


def resolve_run_at(delay: object, run_at: object) -> datetime | None:
    """The absolute start time, or ``None`` for "now" (the database's clock decides)."""
    if delay is not None and run_at is not None:
        raise InvalidSchedule("give either delay or run_at, not both")
    if run_at is not None:
        if not isinstance(run_at, datetime) or run_at.utcoffset() is None:
            raise InvalidSchedule(f"run_at must be a timezone-aware datetime, got {run_at!r}")
        return _in_range(run_at)
    if delay is None:
        return None
    seconds = _delay_seconds(delay)
    if not math.isfinite(seconds):
        raise InvalidSchedule(f"delay must be a finite number of seconds, got {seconds}")
    if seconds < 0:
        raise InvalidSchedule(f"delay must not be negative, got {seconds} s")
    if not seconds:
        return None
    try:
        return _in_range(datetime.now(UTC) + timedelta(seconds=seconds))
    except OverflowError:
        raise InvalidSchedule(f"delay of {seconds} s is past the end of time") from None


def _in_range(run_at: datetime) -> datetime:
    """``run_at`` in UTC, refused outside [RUN_AT_MIN, RUN_AT_MAX)."""
    try:
        utc = run_at.astimezone(UTC)
    except OverflowError:
        utc = None  # past year 9999 (or before year 1) once its offset is applied
    if utc is None or not RUN_AT_MIN <= utc < RUN_AT_MAX:
        raise InvalidSchedule(
            f"run_at must be from {RUN_AT_MIN.isoformat()} to before {RUN_AT_MAX.isoformat()}, "
            f"got {run_at.isoformat()}"
        )
    return utc


def check_text(name: str, value: object) -> str | None:
    """An optional key or id: a non-empty string Postgres ``text`` can store."""
    if value is None:
        return None
    if not (isinstance(value, str) and 0 < len(value) <= MAX_KEY_LENGTH):
        raise InvalidInput(f"{name} must be a non-empty string of at most {MAX_KEY_LENGTH} chars")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidInput(f"{name} is not valid Unicode (a lone surrogate)") from None
    if "\x00" in value:
        raise InvalidInput(f"{name} holds a NUL character")
    return value


def _check_max_attempts(value: object) -> int | None:
    integer = isinstance(value, int) and not isinstance(value, bool)
    if value is not None and not (integer and 1 <= value <= MAX_ATTEMPTS_LIMIT):
        raise InvalidInput(
            f"max_attempts must be an integer >= 1 and <= {MAX_ATTEMPTS_LIMIT}, got {value!r}"
        )
    return value


_DURATIONS = {d.value: d for d in Duration}


def _parse_duration(value: object) -> Duration:
    if isinstance(value, str) and (duration := _DURATIONS.get(value)) is not None:
        return duration
    raise InvalidInput(f"unknown duration {value!r}: use 'short' or 'long'")


def _validated_fields(options: SubmitOptions, traceparent: str | None) -> dict[str, Any]:
    return {
        "priority": parse_priority(options.priority),
        "duration": _parse_duration(options.duration),
        "run_at": resolve_run_at(options.delay, options.run_at),
        "key": check_text("key", options.key),
        "dedupe_key": check_text("dedupe_key", options.dedupe_key),
        "max_attempts": _check_max_attempts(options.max_attempts),
        "request_id": check_text("request_id", options.request_id),
        "user_id": check_text("user_id", options.user_id),
        "traceparent": traceparent,
        "replay_of": options.replay_of,
    }


def _item_overrides(item: Item) -> dict[str, Any]:
    """The options an item gives itself, validated; a schedule of its own (delay or
    run_at) replaces the call's."""
    overrides: dict[str, Any] = {}
    if item.priority is not None:
        overrides["priority"] = parse_priority(item.priority)
    if item.delay is not None or item.run_at is not None:
        overrides["run_at"] = resolve_run_at(item.delay, item.run_at)
    for name in ("key", "dedupe_key", "request_id", "user_id"):
        if (value := getattr(item, name)) is not None:
            overrides[name] = check_text(name, value)
    return overrides


def _item_job(
    item: Item, job_id: JobId, call: NewJob, *, shards: int, max_payload_bytes: int
) -> NewJob:
    """The call's job with the item's own options, its shard from its own routing key."""
    job = call._replace(id=job_id, **_item_overrides(item))
    routing_key = job.key or job.dedupe_key or str(job_id)
    return job._replace(
        payload_json=encode_payload(item.payload, max_bytes=max_payload_bytes),
        shard=ShardId(shard_for(routing_key, shards)),
    )


def build_jobs(
    job_type: str,
    items: list[Any],
    options: SubmitOptions,
    *,
    shards: int,
    max_payload_bytes: int,
    traceparent: str | None,
) -> list[NewJob]:
    """Validate one submit call (one payload or a batch) into insertable jobs.

    The call's options are validated once; a bare payload then costs its JSON encoding
    and one tuple, its shard coming from the batch's routing key (the call's key or
    dedupe key) or, without one, from its id (all hashed in one pass). An ``Item``
    costs the validation of the options it gives itself.
    """
    check_job_type(job_type)
    # The call's job, less its id, payload and shard: each bare payload's job is a copy.
    common = NewJob(
        id=JobId(uuid.UUID(int=0)),
        type=job_type,
        payload_json="",
        shard=ShardId(0),
        **_validated_fields(options, traceparent),
    )
    ids = new_job_ids(len(items))
    call_key = common.key or common.dedupe_key
    id_shards = (
        [shard_for(call_key, shards)] * len(items)
        if call_key is not None
        else shards_for(map(str, ids), shards)
    )
    make, shared = NewJob._make, common[NewJob.PER_JOB_FIELDS :]
    jobs: list[NewJob] = []
    bad: list[tuple[int, InvalidInput]] = []
    for index, item in enumerate(items):
        try:
            if isinstance(item, Item):
                jobs.append(
                    _item_job(
                        item, ids[index], common, shards=shards, max_payload_bytes=max_payload_bytes
                    )
                )
            else:
                payload_json = encode_payload(item, max_bytes=max_payload_bytes)
                jobs.append(make((ids[index], payload_json, id_shards[index], *shared)))
        except InvalidInput as exc:
            if len(items) == 1:
                raise
            bad.append((index, exc))
    if bad:
        raise _batch_error(bad, len(items))
    return jobs


def _batch_error(bad: list[tuple[int, InvalidInput]], total: int) -> InvalidInput:
    """One bad item: its own error, naming it; several: ``InvalidBatch`` listing each."""
    if len(bad) == 1:
        index, exc = bad[0]
        return type(exc)(f"item #{index}: {exc}")
    listed = "; ".join(f"item #{index}: {exc}" for index, exc in bad[:MAX_LISTED_ITEMS])
    more = len(bad) - MAX_LISTED_ITEMS
    tail = f"; and {more} more" if more > 0 else ""
    return InvalidBatch(f"{len(bad)} of {total} items are invalid: {listed}{tail}", items=bad)


def as_items(payload: Any) -> tuple[list[Any], bool]:
    """A list of payloads is a batch; anything else (an ``Item`` too) is one job."""
    if isinstance(payload, list):
        return payload, True
    return [payload], False
