"""Jobs: insertion (with dedupe), status, cancellation.

``job_insert_many`` is the one write path for new jobs, single or batch, in the
client's own transaction or in a caller's. It costs one round trip plus one NOTIFY
when no dedupe key collides; collisions cost one more query to fetch the existing jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import attrgetter, itemgetter
from typing import Any

import asyncpg
from asyncpg import Connection, Record

from jobpool.errors import (
    AccessDenied,
    InvalidInput,
    JobAlreadyFinished,
    KeyedEnqueueIsolation,
)
from jobpool.models import (
    CancelOutcome,
    Job,
    JobId,
    JobState,
    JobStatus,
    NewJob,
)
from jobpool.store import channels, rows
from jobpool.store.history import history_since, job_missing
from jobpool.store.queries import QUERIES

# A duplicate's original can finish between our insert and our look-up; then the key
# is free again and the job must be inserted after all. Each round makes progress.
_DEDUPE_ROUNDS = 5


async def tenant_set_local(conn: Connection, tenant: str) -> None:
    """Bind the current transaction to ``tenant`` for row-level security."""
    await conn.execute(*QUERIES.bind("tenant_set_local", tenant=tenant))


def _column(values: tuple[object, ...]) -> tuple[object, ...] | None:
    """An array parameter, or NULL when every value is NULL: unnest() pads a NULL
    array with NULLs, and the driver skips encoding a whole array of them."""
    return None if values.count(None) == len(values) else values


# A NewJob field the statements take once when every job shares its value: its array
# parameter, and what the database stores of a value (None: the value itself).
_SHAREABLE: dict[str, tuple[str, Callable[[Any], object] | None]] = {
    "type": ("types", None),
    "priority": ("priorities", attrgetter("rank")),
    "run_at": ("run_ats", None),
    "max_attempts": ("max_attempts", None),
    "duration": ("durations", attrgetter("value")),
    "request_id": ("request_ids", None),
    "user_id": ("user_ids", None),
    "traceparent": ("traceparents", None),
    "replay_of": ("replays_of", None),
}


def _shared_or_per_job(field: str, values: tuple[object, ...]) -> dict[str, object]:
    """``shared_<field>`` when every job has that value (the array NULL), else the
    array (``shared_<field>`` NULL); the statements take ``coalesce(array's, shared)``.
    A batch's jobs mostly share their options, and the driver encodes an array value
    by value, however often it repeats."""
    array, stored = _SHAREABLE[field]
    first = values[0]
    if values.count(first) == len(values):
        shared = first if stored is None or first is None else stored(first)
        return {f"shared_{field}": shared, array: None}
    return {f"shared_{field}": None, array: values if stored is None else list(map(stored, values))}


_FIELD = {field: itemgetter(index) for index, field in enumerate(NewJob._fields)}


def _values(jobs: Sequence[NewJob], field: str) -> tuple[object, ...]:
    """Each job's ``field``, in order: a map in C (transposing with ``zip(*jobs)``
    would make an iterator per job, which sets the garbage collector off)."""
    return tuple(map(_FIELD[field], jobs))


def _insert_params(jobs: Sequence[NewJob]) -> dict[str, object]:
    """The parameters of ``job_insert_many_unkeyed``, per job in the batch's order."""
    params: dict[str, object] = {
        "ids": _values(jobs, "id"),
        "shards": _values(jobs, "shard"),
        "payloads": _values(jobs, "payload_json"),
    }
    for field in _SHAREABLE:
        params |= _shared_or_per_job(field, _values(jobs, field))
    return params


def _keyed_insert_params(jobs: Sequence[NewJob]) -> dict[str, object]:
    """The parameters of ``job_insert_many``: the keys' too."""
    return {
        **_insert_params(jobs),
        "routing_keys": _column(_values(jobs, "key")),
        "dedupe_keys": _column(_values(jobs, "dedupe_key")),
    }


def _dedupe_order(job: NewJob) -> tuple[bool, str]:
    return job.dedupe_key is None, job.dedupe_key or ""


async def job_insert_many(
    conn: Connection, pool: str, tenant: str, jobs: Sequence[NewJob]
) -> list[Job]:
    """Insert ``jobs`` (already validated) and return them in order.

    The connection must be bound to ``tenant`` (session setting, or
    ``tenant_set_local`` in the caller's transaction). Without dedupe collisions this is
    one statement, atomic on its own; with them, run it in a transaction to make the
    whole batch atomic. A job whose dedupe key belongs to an unfinished job (stored
    already, or earlier in this batch) comes back as that job with ``duplicate=True``.
    The pool's workers get one NOTIFY, delivered at commit.
    """
    if not jobs:
        return []
    wake = {
        "channel": channels.worker_channel(pool),
        "shards_woken": channels.shards_payload(_values(jobs, "shard")),
    }
    if _column(_values(jobs, "key")) is None and _column(_values(jobs, "dedupe_key")) is None:
        return await _insert_unkeyed(conn, pool, tenant, jobs, wake)
    results: dict[int, Job] = {}
    pending = list(range(len(jobs)))
    for _ in range(_DEDUPE_ROUNDS):
        # Dedupe keys in one global order: two batches that share keys then wait on
        # each other's unique-index entries in the same order and cannot deadlock.
        batch = sorted((jobs[i] for i in pending), key=_dedupe_order)
        query = QUERIES.bind(
            "job_insert_many", pool=pool, tenant=tenant, **_keyed_insert_params(batch), **wake
        )
        inserted = {row["id"]: row for row in await _insert(conn, tenant, query)}
        for i in pending:
            if (row := inserted.get(jobs[i].id)) is not None:
                results[i] = rows.new_job(pool, tenant, jobs[i], row)
        pending = [i for i in pending if i not in results]
        pending = await _resolve_duplicates(conn, pool, tenant, jobs, pending, results)
        if not pending:
            return [results[i] for i in range(len(jobs))]
    raise RuntimeError(f"dedupe keys kept changing hands over {_DEDUPE_ROUNDS} rounds")


async def _insert_unkeyed(
    conn: Connection, pool: str, tenant: str, jobs: Sequence[NewJob], wake: dict[str, str]
) -> list[Job]:
    """The common case, jobs without keys or dedupe keys: every row is inserted, so the
    statement locks no key, skips no conflict and returns only its time. The rows go in
    by shard, and within a shard in the batch's order (a batch's ids ascend): the
    claim's indexes then take their entries in order, which costs the database less."""
    by_shard = sorted(jobs, key=_shard_of)
    query = QUERIES.bind(
        "job_insert_many_unkeyed", pool=pool, tenant=tenant, **_insert_params(by_shard), **wake
    )
    [row] = await _insert(conn, tenant, query)
    return rows.new_jobs(pool, tenant, jobs, created_at=row["created_at"])


_shard_of = attrgetter("shard")


async def _insert(conn: Connection, tenant: str, query: tuple[object, ...]) -> list[Record]:
    """Run the bound ``job_insert_many``; the database's refusals become typed errors."""
    try:
        return await conn.fetch(*query)
    except asyncpg.InsufficientPrivilegeError as exc:
        raise AccessDenied(
            f"the database role may not submit jobs for tenant {tenant!r} ({exc}): "
            "map it to the tenant with `jobpool grant ROLE client --tenant …`"
        ) from None
    except asyncpg.CheckViolationError as exc:
        raise InvalidInput(f"the database refused the job ({exc.constraint_name})") from None
    except asyncpg.InvalidTransactionStateError as exc:
        raise KeyedEnqueueIsolation(str(exc)) from None


async def _resolve_duplicates(
    conn: Connection,
    pool: str,
    tenant: str,
    jobs: Sequence[NewJob],
    pending: list[int],
    results: dict[int, Job],
) -> list[int]:
    """Fill ``results`` for skipped jobs whose key holder still exists; return the rest."""
    if not pending:
        return []
    keys = list({jobs[i].dedupe_key for i in pending})
    found = await conn.fetch(
        *QUERIES.bind("job_find_by_dedupe_keys", pool=pool, tenant=tenant, dedupe_keys=keys)
    )
    holders = {row["dedupe_key"]: row for row in found}
    for i in pending:
        if (row := holders.get(jobs[i].dedupe_key)) is not None:
            results[i] = rows.existing_job(pool, tenant, row)
    return [i for i in pending if i not in results]


async def job_status(conn: Connection, pool: str, tenant: str, job_id: JobId) -> JobStatus:
    row = await conn.fetchrow(
        *QUERIES.bind(
            "job_status", id=job_id, pool=pool, tenant=tenant, history_since=history_since(job_id)
        )
    )
    if row is None:
        raise await job_missing(conn, pool, tenant, job_id)
    return rows.job_status(row)


async def job_cancel(conn: Connection, pool: str, tenant: str, job_id: JobId) -> CancelOutcome:
    """Cancel a queued job at once, or ask the worker running it to cancel it.

    Must run inside a transaction bound to ``tenant``.
    """
    row = await conn.fetchrow(*QUERIES.bind("job_cancel", id=job_id, pool=pool, tenant=tenant))
    if row is None:
        finished = await conn.fetchval(
            *QUERIES.bind(
                "job_history_exists",
                id=job_id,
                pool=pool,
                tenant=tenant,
                history_since=history_since(job_id),
            )
        )
        if finished is not None:
            raise JobAlreadyFinished(f"job {job_id} already ended {finished}")
        raise await job_missing(conn, pool, tenant, job_id)
    if row["state"] in (JobState.QUEUED, JobState.WAITING, JobState.PAUSED):
        await conn.execute(
            *QUERIES.bind("job_notify", channel=channels.events_channel(pool), payload=str(job_id))
        )
        return CancelOutcome.CANCELLED
    # A hint without the job: each worker reads its own attempts' rows to act on it.
    await conn.execute(
        *QUERIES.bind("job_notify", channel=channels.worker_channel(pool), payload=channels.CANCEL)
    )
    return CancelOutcome.CANCEL_REQUESTED
