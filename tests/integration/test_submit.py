"""Submitting jobs against a real Postgres (jobpool/client/client.py, jobpool/store/jobs.py).

Defends: a submitted job is stored with everything it was given (invariant 1 starts
here), dedupe returns the existing job instead of a second row, bad input raises a
typed error and writes nothing (invariant 7), one NOTIFY per transaction with a tiny
payload (invariant 4 / "Data"), and the request context (traceparent) travels with
the job. Rows are checked through the test's own superuser connection ``conn``.
"""

from __future__ import annotations

import asyncio
import json
import math
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from jobpool import Client, Item, Job, JobState, Priority
from jobpool.errors import (
    BatchTooLarge,
    DatabaseUnavailable,
    InvalidInput,
    InvalidJobType,
    InvalidSchedule,
    PayloadNotSerializable,
    PayloadTooLarge,
    PoolNotFound,
    UnknownPriority,
)
from jobpool.models import Pool
from jobpool.sharding import shard_for

POOL = "emails"
TENANT = "acme"
SHARDS = 16
CHANNEL = "jp:emails"
TYPE = "email.send"
LATER = datetime(2031, 5, 17, 8, 30, 15, 123456, tzinfo=UTC)

_TEST = {"loop_scope": "session", "scope": "function"}


# -- helpers ---------------------------------------------------------------------


class Notifications:
    """Everything NOTIFYed on one channel, seen by a LISTEN on its own connection.

    ``settle()`` returns what arrived since the last call, and is exact: it sends a
    sentinel NOTIFY and waits for it. Postgres delivers notifications in commit order,
    so every transaction committed before the call has been delivered by then.
    """

    def __init__(self, listener: asyncpg.Connection, channel: str) -> None:
        self._listener = listener
        self._channel = channel
        self._queue: asyncio.Queue[str] = asyncio.Queue()

    def on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self._queue.put_nowait(payload)

    async def settle(self) -> list[str]:
        sentinel = f"sentinel-{uuid.uuid4()}"
        await self._listener.execute("SELECT pg_notify($1, $2)", self._channel, sentinel)
        received = []
        async with asyncio.timeout(10):
            while (payload := await self._queue.get()) != sentinel:
                received.append(payload)
        return received


@pytest_asyncio.fixture(**_TEST)
async def notifications(dsn: str, pool: Pool) -> AsyncIterator[Notifications]:
    listener = await asyncpg.connect(dsn)
    try:
        seen = Notifications(listener, CHANNEL)
        await listener.add_listener(CHANNEL, seen.on_notify)
        yield seen
    finally:
        await listener.close()


@pytest_asyncio.fixture(**_TEST)
async def small_client(dsn: str, pool: Pool) -> AsyncIterator[Client]:
    """A client with tiny limits: 64-byte payloads, batches of at most 3."""
    async with Client(dsn, pool=pool.name, tenant=TENANT, max_payload_bytes=64, max_batch=3) as jp:
        yield jp


@pytest_asyncio.fixture(**_TEST)
async def other_client(dsn: str, pool: Pool) -> AsyncIterator[Client]:
    async with Client(dsn, pool=pool.name, tenant="other") as jp:
        yield jp


async def job_row(conn: asyncpg.Connection, job_id: uuid.UUID) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
    assert row is not None, f"job {job_id} is not in the jobs table"
    return row


async def count_jobs(conn: asyncpg.Connection, table: str = "jobs") -> int:
    return await conn.fetchval(f"SELECT count(*) FROM {table}")


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    """Re-check a database condition until it holds (there is no event to wait on)."""
    async with asyncio.timeout(timeout):
        while True:
            if await predicate():
                return
            await asyncio.sleep(0.005)


# -- single submit ---------------------------------------------------------------


async def test_submit_returns_a_queued_job_stored_with_all_fields(
    client: Client, conn: asyncpg.Connection
) -> None:
    payload = {"to": "zoë@example.com", "tags": ["a", "b"], "n": 3, "ok": True, "none": None}
    job = await client.submit(
        TYPE,
        payload,
        priority="high",
        key="customer-9",
        max_attempts=5,
        duration="long",
        request_id="req-123",
        user_id="user-7",
    )
    assert isinstance(job, Job)
    assert job.id.version == 7
    assert (job.pool, job.tenant, job.type) == (POOL, TENANT, TYPE)
    assert job.priority is Priority.HIGH
    assert job.state is JobState.QUEUED
    assert job.shard == shard_for("customer-9", SHARDS)
    assert job.duplicate is False
    assert job.dedupe_key is None

    row = await job_row(conn, job.id)
    assert row["pool"] == POOL
    assert row["tenant"] == TENANT
    assert row["shard"] == job.shard
    assert row["type"] == TYPE
    assert row["priority"] == Priority.HIGH.rank == 2
    assert row["state"] == "queued"
    assert json.loads(row["payload"]) == payload
    assert row["routing_key"] == "customer-9"
    assert row["dedupe_key"] is None
    assert row["max_attempts"] == 5
    assert row["duration"] == "long"
    assert row["request_id"] == "req-123"
    assert row["user_id"] == "user-7"
    assert row["attempts"] == 0
    assert row["started_at"] is None
    assert row["cancel_requested_at"] is None
    assert json.loads(row["error_history"]) == []
    assert row["created_at"] == job.created_at
    assert row["run_at"] == job.run_at == job.created_at  # no schedule: due at once


async def test_submit_defaults(client: Client, conn: asyncpg.Connection) -> None:
    job = await client.submit(TYPE, {"to": "a@example.com"})
    row = await job_row(conn, job.id)
    assert job.priority is Priority.NORMAL
    assert row["priority"] == Priority.NORMAL.rank == 1
    assert row["shard"] == job.shard == shard_for(str(job.id), SHARDS)
    assert row["max_attempts"] is None
    assert row["duration"] == "short"
    assert row["routing_key"] is None
    assert (row["request_id"], row["user_id"]) == (None, None)


@pytest.mark.parametrize(
    ("priority", "rank"), [("low", 0), ("normal", 1), ("high", 2), (Priority.CRITICAL, 3)]
)
async def test_priority_is_stored_as_its_rank(
    client: Client, conn: asyncpg.Connection, priority: str | Priority, rank: int
) -> None:
    job = await client.submit(TYPE, {}, priority=priority)
    assert (await job_row(conn, job.id))["priority"] == rank


@pytest.mark.parametrize("payload", [None, 0, "text", [1, 2, 3], {"deep": {"er": [{}]}}])
async def test_any_json_payload_round_trips(
    client: Client, conn: asyncpg.Connection, payload: Any
) -> None:
    job = await client.submit(TYPE, Item(payload=payload))
    assert json.loads((await job_row(conn, job.id))["payload"]) == payload


async def test_delay_sets_run_at_in_the_future(client: Client, conn: asyncpg.Connection) -> None:
    before = datetime.now(UTC)
    job = await client.submit(TYPE, {}, delay=timedelta(minutes=5))
    after = datetime.now(UTC)
    row = await job_row(conn, job.id)
    assert row["run_at"] == job.run_at
    assert before + timedelta(minutes=5) <= row["run_at"] <= after + timedelta(minutes=5)
    assert row["created_at"] < row["run_at"]


async def test_delay_in_seconds(client: Client, conn: asyncpg.Connection) -> None:
    before = datetime.now(UTC)
    job = await client.submit(TYPE, {}, delay=90)
    after = datetime.now(UTC)
    run_at = (await job_row(conn, job.id))["run_at"]
    assert before + timedelta(seconds=90) <= run_at <= after + timedelta(seconds=90)


async def test_run_at_is_stored_exactly(client: Client, conn: asyncpg.Connection) -> None:
    job = await client.submit(TYPE, {}, run_at=LATER)
    assert job.run_at == LATER
    assert (await job_row(conn, job.id))["run_at"] == LATER


# -- batches ---------------------------------------------------------------------


async def test_batch_returns_jobs_in_order_in_one_transaction(
    client: Client, conn: asyncpg.Connection
) -> None:
    payloads = [{"n": i} for i in range(25)]
    jobs = await client.submit(TYPE, payloads, priority="low", request_id="batch-1")
    assert isinstance(jobs, list)
    assert len(jobs) == 25
    assert len({j.id for j in jobs}) == 25
    rows = {r["id"]: r for r in await conn.fetch("SELECT * FROM jobs")}
    assert set(rows) == {j.id for j in jobs}
    for payload, job in zip(payloads, jobs, strict=True):
        row = rows[job.id]
        assert json.loads(row["payload"]) == payload
        assert row["shard"] == job.shard
        assert (row["priority"], row["request_id"]) == (0, "batch-1")
        assert job.state is JobState.QUEUED
        assert not job.duplicate
    # now() is the transaction's start time: one value means one transaction.
    assert len({r["created_at"] for r in rows.values()}) == 1


async def test_a_batch_without_keys_returns_each_job_as_stored(
    client: Client, conn: asyncpg.Connection
) -> None:
    """Such a batch gets back only the insert's time, not a row per job: each returned
    job is still exactly its stored row, schedules and priorities of its own included."""
    items = [
        {"n": 0},
        Item(payload={"n": 1}, run_at=LATER, request_id="r-1"),
        Item(payload={"n": 2}, priority="critical", delay=3600, user_id="u-2"),
        *({"n": i} for i in range(3, 40)),
    ]
    jobs = await client.submit(TYPE, items, priority="high", user_id="u-all")
    rows = {r["id"]: r for r in await conn.fetch("SELECT * FROM jobs")}
    assert len(rows) == len(jobs) == len(items)
    for job in jobs:
        row = rows[job.id]
        stored = Job.model_validate(
            {
                **{field: row[field] for field in ("id", "pool", "tenant", "type", "shard")},
                **{field: row[field] for field in ("state", "run_at", "created_at")},
                "priority": Priority.from_rank(row["priority"]),
                "dedupe_key": None,
            }
        )
        assert job == stored
        assert repr(job) == repr(stored)
        assert job.model_dump() == stored.model_dump()
        assert job.shard == shard_for(str(job.id), SHARDS)
    assert [json.loads(rows[j.id]["payload"])["n"] for j in jobs] == list(range(len(items)))
    assert [rows[j.id]["request_id"] for j in jobs[:4]] == [None, "r-1", None, None]
    assert [rows[j.id]["user_id"] for j in jobs[:4]] == ["u-all", "u-all", "u-2", "u-all"]
    assert {rows[j.id]["duration"] for j in jobs} == {"short"}
    assert jobs[1].run_at == LATER
    assert jobs[2].run_at > jobs[2].created_at == jobs[0].created_at == jobs[0].run_at
    assert [j.priority for j in jobs[:4]] == [
        Priority.HIGH,
        Priority.HIGH,
        Priority.CRITICAL,
        Priority.HIGH,
    ]


async def test_batch_items_carry_their_own_options(
    client: Client, conn: asyncpg.Connection
) -> None:
    jobs = await client.submit(
        TYPE,
        [
            Item(payload="a", priority="critical", key="k-a"),
            Item(payload="b", dedupe_key="d-b", run_at=LATER),
            "c",
        ],
        priority="low",
    )
    rows = [await job_row(conn, j.id) for j in jobs]
    assert [r["priority"] for r in rows] == [3, 0, 0]
    assert [r["routing_key"] for r in rows] == ["k-a", None, None]
    assert [r["dedupe_key"] for r in rows] == [None, "d-b", None]
    assert rows[0]["shard"] == shard_for("k-a", SHARDS)
    assert rows[1]["shard"] == shard_for("d-b", SHARDS)
    assert rows[1]["run_at"] == LATER
    assert [json.loads(r["payload"]) for r in rows] == ["a", "b", "c"]


async def test_jobs_with_one_key_share_a_shard(client: Client, conn: asyncpg.Connection) -> None:
    jobs = await client.submit(TYPE, [{"n": i} for i in range(10)], key="customer-1")
    shards = await conn.fetch("SELECT DISTINCT shard FROM jobs")
    assert [r["shard"] for r in shards] == [shard_for("customer-1", SHARDS)]
    assert {j.shard for j in jobs} == {shard_for("customer-1", SHARDS)}


async def test_empty_batch_returns_an_empty_list_and_writes_nothing(
    client: Client, conn: asyncpg.Connection, notifications: Notifications
) -> None:
    assert await client.submit(TYPE, []) == []
    assert await count_jobs(conn) == 0
    assert await notifications.settle() == []


async def test_batch_of_exactly_max_batch_is_accepted(
    small_client: Client, conn: asyncpg.Connection
) -> None:
    jobs = await small_client.submit(TYPE, [1, 2, 3])
    assert len(jobs) == 3
    assert await count_jobs(conn) == 3


async def test_payload_of_exactly_max_payload_bytes_is_accepted(
    small_client: Client, conn: asyncpg.Connection
) -> None:
    payload = "x" * 62  # 64 bytes of JSON with the quotes
    job = await small_client.submit(TYPE, payload)
    assert json.loads((await job_row(conn, job.id))["payload"]) == payload


# -- transactional enqueue --------------------------------------------------------


async def test_enqueue_in_a_committed_transaction_persists(
    client: Client, conn: asyncpg.Connection, notifications: Notifications
) -> None:
    async with conn.transaction():
        await conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
        await conn.execute("INSERT INTO orders VALUES (1)")
        job = await client.enqueue(conn, TYPE, {"order": 1}, priority="high", request_id="r1")
        assert isinstance(job, Job)
        assert await notifications.settle() == []  # workers are woken at commit, not before
    row = await job_row(conn, job.id)
    assert (row["tenant"], row["priority"], row["request_id"]) == (TENANT, 2, "r1")
    assert json.loads(row["payload"]) == {"order": 1}
    assert await notifications.settle() == [str(job.shard)]


async def test_enqueue_a_batch_in_a_transaction(client: Client, conn: asyncpg.Connection) -> None:
    async with conn.transaction():
        jobs = await client.enqueue(conn, TYPE, [{"n": 1}, {"n": 2}])
    assert isinstance(jobs, list)
    assert [json.loads((await job_row(conn, j.id))["payload"]) for j in jobs] == [
        {"n": 1},
        {"n": 2},
    ]


async def test_enqueue_in_a_rolled_back_transaction_leaves_nothing(
    client: Client, conn: asyncpg.Connection, notifications: Notifications
) -> None:
    transaction = conn.transaction()
    await transaction.start()
    try:
        await client.enqueue(conn, TYPE, {"order": 1})
        jobs = await client.enqueue(conn, TYPE, [{"n": 1}, {"n": 2}], dedupe_key="d")
        assert [j.duplicate for j in jobs] == [False, True]
        assert await count_jobs(conn) == 2
    finally:
        await transaction.rollback()
    assert await count_jobs(conn) == 0
    assert await notifications.settle() == []
    # The dedupe key was never taken.
    job = await client.submit(TYPE, {}, dedupe_key="d")
    assert job.duplicate is False


async def test_enqueue_outside_a_transaction_raises(
    client: Client, conn: asyncpg.Connection
) -> None:
    with pytest.raises(RuntimeError, match="transaction"):
        await client.enqueue(conn, TYPE, {"order": 1})
    assert await count_jobs(conn) == 0


async def test_enqueue_binds_the_transaction_to_the_clients_tenant_only(
    client: Client, conn: asyncpg.Connection
) -> None:
    async with conn.transaction():
        await client.enqueue(conn, TYPE, {})
        assert await conn.fetchval("SELECT current_setting('jobpool.tenant', true)") == TENANT
    assert await conn.fetchval("SELECT current_setting('jobpool.tenant', true)") in (None, "")


async def test_enqueue_refuses_an_unknown_option(client: Client, conn: asyncpg.Connection) -> None:
    """A misspelt option (``dedupe_kye``) must not silently submit without dedupe."""
    with pytest.raises((TypeError, InvalidInput)):
        async with conn.transaction():
            await client.enqueue(conn, TYPE, {}, dedupe_kye="order-1")
    assert await count_jobs(conn) == 0


# -- dedupe ----------------------------------------------------------------------


async def test_sequential_dedupe_returns_the_existing_job(
    client: Client, conn: asyncpg.Connection
) -> None:
    first = await client.submit(TYPE, {"v": 1}, dedupe_key="welcome:42", priority="high")
    second = await client.submit(TYPE, {"v": 2}, dedupe_key="welcome:42", priority="low")
    assert first.duplicate is False
    assert second.duplicate is True
    assert second.id == first.id
    assert (second.shard, second.priority, second.state) == (
        first.shard,
        Priority.HIGH,
        JobState.QUEUED,
    )
    assert second.dedupe_key == "welcome:42"
    assert second.created_at == first.created_at
    assert await count_jobs(conn) == 1
    assert json.loads((await job_row(conn, first.id))["payload"]) == {"v": 1}


async def test_concurrent_dedupe_inserts_exactly_one_job(
    client: Client, conn: asyncpg.Connection
) -> None:
    jobs = await asyncio.gather(
        *(client.submit(TYPE, {"attempt": i}, dedupe_key="once") for i in range(20))
    )
    assert len({j.id for j in jobs}) == 1
    assert sum(not j.duplicate for j in jobs) == 1
    assert await count_jobs(conn) == 1
    assert await conn.fetchval("SELECT dedupe_key FROM jobs") == "once"


async def test_dedupe_within_one_batch(client: Client, conn: asyncpg.Connection) -> None:
    jobs = await client.submit(
        TYPE,
        [
            Item(payload=1, dedupe_key="a"),
            Item(payload=2, dedupe_key="b"),
            Item(payload=3, dedupe_key="a"),
            4,
        ],
    )
    assert [j.duplicate for j in jobs] == [False, False, True, False]
    assert jobs[2].id == jobs[0].id
    assert len({jobs[0].id, jobs[1].id, jobs[3].id}) == 3
    assert await count_jobs(conn) == 3
    assert json.loads((await job_row(conn, jobs[0].id))["payload"]) == 1


async def test_batch_dedupe_against_a_stored_job(client: Client, conn: asyncpg.Connection) -> None:
    existing = await client.submit(TYPE, "old", dedupe_key="a")
    jobs = await client.submit(TYPE, [Item(payload="new", dedupe_key="a"), "other"])
    assert jobs[0].id == existing.id
    assert jobs[0].duplicate
    assert not jobs[1].duplicate
    assert await count_jobs(conn) == 2


async def test_dedupe_key_is_free_again_once_the_job_finished(
    client: Client, conn: asyncpg.Connection
) -> None:
    first = await client.submit(TYPE, {"v": 1}, dedupe_key="k")
    await client.cancel(first.id)
    second = await client.submit(TYPE, {"v": 2}, dedupe_key="k")
    assert second.id != first.id
    assert second.duplicate is False
    assert await conn.fetchval("SELECT id FROM jobs WHERE dedupe_key = 'k'") == second.id
    assert await conn.fetchval("SELECT state FROM job_history WHERE id = $1", first.id) == (
        "cancelled"
    )


async def test_dedupe_keys_are_per_tenant(
    client: Client, other_client: Client, conn: asyncpg.Connection
) -> None:
    mine = await client.submit(TYPE, {}, dedupe_key="shared")
    theirs = await other_client.submit(TYPE, {}, dedupe_key="shared")
    assert theirs.id != mine.id
    assert not theirs.duplicate
    assert theirs.tenant == "other"
    tenants = await conn.fetch("SELECT tenant FROM jobs WHERE dedupe_key = 'shared' ORDER BY 1")
    assert [r["tenant"] for r in tenants] == [TENANT, "other"]


async def test_concurrent_batches_with_overlapping_dedupe_keys_do_not_deadlock(
    client: Client, conn: asyncpg.Connection
) -> None:
    """Two batches naming the same dedupe keys in opposite orders must both succeed.

    A third transaction holds key ``k0``; each batch inserts its first key, then waits on
    ``k0``. Once ``k0`` commits, batch A needs ``k2`` (held by B) and B needs ``k1``
    (held by A): unless the store inserts keys in a canonical order, Postgres detects a
    deadlock and one submit fails.
    """

    async def blocked_backends() -> bool:
        # Inside a transaction pg_stat_activity is a snapshot: refresh it on every look.
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return waiting >= 2

    def batch(*keys: str) -> list[Item]:
        return [Item(payload=key, dedupe_key=key) for key in keys]

    tasks: list[asyncio.Task[Any]] = []
    try:
        async with conn.transaction():
            holder = await client.enqueue(conn, TYPE, "holder", dedupe_key="k0")
            tasks.append(asyncio.create_task(client.submit(TYPE, batch("k1", "k0", "k2"))))
            tasks.append(asyncio.create_task(client.submit(TYPE, batch("k2", "k0", "k1"))))
            await wait_until(blocked_backends)
    finally:
        async with asyncio.timeout(30):
            results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    a, b = results
    assert isinstance(a, list)
    assert isinstance(b, list)
    assert a[1].id == b[1].id == holder.id
    assert {j.id for j in a} == {j.id for j in b}
    assert await count_jobs(conn) == 3


# -- typed errors write nothing ----------------------------------------------------

Submit = Callable[[Client], Awaitable[Any]]

ERROR_CASES: list[tuple[str, Submit, type[Exception]]] = [
    ("empty-type", lambda jp: jp.submit("", {}), InvalidJobType),
    ("bad-type", lambda jp: jp.submit("send mail", {}), InvalidJobType),
    ("unknown-priority", lambda jp: jp.submit(TYPE, {}, priority="urgent"), UnknownPriority),
    ("nan-payload", lambda jp: jp.submit(TYPE, {"x": math.nan}), PayloadNotSerializable),
    ("set-payload", lambda jp: jp.submit(TYPE, {"x": {1, 2}}), PayloadNotSerializable),
    ("nul-in-payload", lambda jp: jp.submit(TYPE, {"x": "a\x00b"}), InvalidInput),
    ("nul-in-dedupe-key", lambda jp: jp.submit(TYPE, {}, dedupe_key="a\x00b"), InvalidInput),
    ("too-large", lambda jp: jp.submit(TYPE, "x" * 63), PayloadTooLarge),
    ("batch-too-large", lambda jp: jp.submit(TYPE, [1, 2, 3, 4]), BatchTooLarge),
    (
        "delay-and-run-at",
        lambda jp: jp.submit(TYPE, {}, delay=5, run_at=LATER),
        InvalidSchedule,
    ),
    ("negative-delay", lambda jp: jp.submit(TYPE, {}, delay=-1), InvalidSchedule),
    (
        "naive-run-at",
        lambda jp: jp.submit(TYPE, {}, run_at=datetime(2031, 1, 1)),
        InvalidSchedule,
    ),
    ("max-attempts-0", lambda jp: jp.submit(TYPE, {}, max_attempts=0), InvalidInput),
    ("empty-dedupe-key", lambda jp: jp.submit(TYPE, {}, dedupe_key=""), InvalidInput),
    (
        "batch-nan-in-middle",
        lambda jp: jp.submit(TYPE, [1, math.nan, 3]),
        PayloadNotSerializable,
    ),
    (
        "batch-too-large-item-in-middle",
        lambda jp: jp.submit(TYPE, ["a", "x" * 100, "c"]),
        PayloadTooLarge,
    ),
    (
        "batch-bad-priority-in-middle",
        lambda jp: jp.submit(
            TYPE, [Item(payload=1, dedupe_key="a"), Item(payload=2, priority="urgent"), 3]
        ),
        UnknownPriority,
    ),
    (
        "batch-bad-schedule-in-middle",
        lambda jp: jp.submit(TYPE, [1, Item(payload=2, delay=-3), 3], dedupe_key="d"),
        InvalidSchedule,
    ),
]


@pytest.mark.parametrize(
    ("submit", "error"),
    [pytest.param(s, e, id=name) for name, s, e in ERROR_CASES],
)
async def test_typed_errors_write_nothing(
    small_client: Client,
    conn: asyncpg.Connection,
    notifications: Notifications,
    submit: Submit,
    error: type[Exception],
) -> None:
    with pytest.raises(error):
        await submit(small_client)
    assert await count_jobs(conn) == 0
    assert await notifications.settle() == []
    # The client is still usable afterwards.
    job = await small_client.submit(TYPE, {"ok": True})
    assert await count_jobs(conn) == 1
    assert job.state is JobState.QUEUED


async def test_typed_errors_in_enqueue_write_nothing(
    small_client: Client, conn: asyncpg.Connection
) -> None:
    async with conn.transaction():
        await small_client.enqueue(conn, TYPE, {"first": True})
        with pytest.raises(PayloadNotSerializable):
            await small_client.enqueue(conn, TYPE, [1, math.nan, 3])
        with pytest.raises(BatchTooLarge):
            await small_client.enqueue(conn, TYPE, [1, 2, 3, 4])
        # The caller's transaction is untouched: it can go on and commit.
        await small_client.enqueue(conn, TYPE, {"second": True})
    payloads = [json.loads(r["payload"]) for r in await conn.fetch("SELECT payload FROM jobs")]
    assert sorted(payloads, key=str) == [{"first": True}, {"second": True}]


# -- NOTIFY ----------------------------------------------------------------------


async def test_single_submit_notifies_its_shard_once(
    client: Client, notifications: Notifications
) -> None:
    job = await client.submit(TYPE, {})
    assert await notifications.settle() == [str(job.shard)]


async def test_multi_shard_batch_notifies_once_with_a_star(
    client: Client, notifications: Notifications
) -> None:
    keys = ["a", "b", "c", "d", "e", "f"]
    assert len({shard_for(k, SHARDS) for k in keys}) > 1
    jobs = await client.submit(TYPE, [Item(payload=k, key=k) for k in keys])
    assert len({j.shard for j in jobs}) > 1
    assert await notifications.settle() == ["*"]


async def test_single_shard_batch_notifies_that_shard_once(
    client: Client, notifications: Notifications
) -> None:
    await client.submit(TYPE, [1, 2, 3, 4], key="customer-3")
    assert await notifications.settle() == [str(shard_for("customer-3", SHARDS))]


async def test_dedupe_batch_notifies_once(client: Client, notifications: Notifications) -> None:
    await client.submit(TYPE, [Item(payload=i, dedupe_key=f"k{i % 3}") for i in range(9)])
    assert len(await notifications.settle()) == 1


async def test_entirely_duplicate_submit_notifies_nobody(
    client: Client, notifications: Notifications
) -> None:
    first = await client.submit(TYPE, {}, dedupe_key="k")
    batch = await client.submit(TYPE, [Item(payload=1, dedupe_key="a"), Item(payload=2, key="x")])
    assert len(await notifications.settle()) == 2
    again = await client.submit(TYPE, {}, dedupe_key="k")
    assert again.duplicate
    assert again.id == first.id
    await client.submit(TYPE, [Item(payload=1, dedupe_key="a"), Item(payload=3, dedupe_key="k")])
    assert await notifications.settle() == []
    assert batch[0].state is JobState.QUEUED


# -- connecting --------------------------------------------------------------------


async def test_unknown_pool_raises_pool_not_found(dsn: str, pool: Pool) -> None:
    with pytest.raises(PoolNotFound, match="'newsletters'"):
        async with Client(dsn, pool="newsletters", tenant=TENANT):
            pass


async def test_the_client_reads_the_pools_shard_count(client: Client, pool: Pool) -> None:
    assert client.pool == pool
    assert client.pool.shards == SHARDS


@pytest.mark.parametrize(
    ("dsn", "password"),
    [
        ("postgresql://u:pw@127.0.0.1:1/x", "pw"),
        ("postgresql://u:Sup3r-S3cret@127.0.0.1:1/x", "Sup3r-S3cret"),
        ("postgresql://u@127.0.0.1:1/x?password=Sup3r-S3cret", "Sup3r-S3cret"),
    ],
)
async def test_unreachable_database_raises_without_leaking_the_password(
    dsn: str, password: str
) -> None:
    with pytest.raises(DatabaseUnavailable) as info:
        async with Client(dsn, pool=POOL, tenant=TENANT):
            pass
    message = str(info.value)
    assert "127.0.0.1" in message
    assert password not in message
    assert password not in "".join(traceback.format_exception(info.value))
    assert isinstance(info.value, ConnectionError)


# -- tracing -----------------------------------------------------------------------


async def test_submit_records_a_span_and_stores_its_traceparent(
    client: Client, conn: asyncpg.Connection, spans: InMemorySpanExporter
) -> None:
    tracer = trace.get_tracer("tests.submit")
    with tracer.start_as_current_span("handle-request") as parent:
        job = await client.submit(TYPE, {}, priority="high")
    parent_context = parent.get_span_context()

    (span,) = [
        s
        for s in spans.get_finished_spans()
        if s.name == "jobpool.submit" and s.attributes.get("jobpool.job.id") == str(job.id)
    ]
    assert span.attributes["jobpool.pool"] == POOL
    assert span.attributes["jobpool.job.type"] == TYPE
    assert span.attributes["jobpool.tenant"] == TENANT
    assert span.attributes["jobpool.job.priority"] == "high"
    assert span.attributes["jobpool.job.shard"] == job.shard
    assert span.context.trace_id == parent_context.trace_id
    assert span.parent is not None
    assert span.parent.span_id == parent_context.span_id

    traceparent = (await job_row(conn, job.id))["traceparent"]
    assert traceparent is not None
    version, trace_id, span_id, _flags = traceparent.split("-")
    assert version == "00"
    assert int(trace_id, 16) == parent_context.trace_id
    assert int(span_id, 16) == span.context.span_id


async def test_batch_jobs_share_the_submitters_traceparent(
    client: Client, conn: asyncpg.Connection, spans: InMemorySpanExporter
) -> None:
    tracer = trace.get_tracer("tests.submit")
    with tracer.start_as_current_span("handle-request") as parent:
        jobs = await client.submit(TYPE, [1, 2, 3])
    (span,) = [
        s
        for s in spans.get_finished_spans()
        if s.name == "jobpool.submit" and s.attributes.get("jobpool.job.id") == str(jobs[0].id)
    ]
    assert span.attributes["jobpool.batch_size"] == 3
    stored = {r["traceparent"] for r in await conn.fetch("SELECT traceparent FROM jobs")}
    assert len(stored) == 1
    (traceparent,) = stored
    assert traceparent.split("-")[1] == f"{parent.get_span_context().trace_id:032x}"


async def test_enqueue_records_a_span_and_stores_its_traceparent(
    client: Client, conn: asyncpg.Connection, spans: InMemorySpanExporter
) -> None:
    tracer = trace.get_tracer("tests.submit")
    with tracer.start_as_current_span("handle-request") as parent:
        async with conn.transaction():
            job = await client.enqueue(conn, TYPE, {})
    traceparent = (await job_row(conn, job.id))["traceparent"]
    assert traceparent.split("-")[1] == f"{parent.get_span_context().trace_id:032x}"
    assert any(
        s.name == "jobpool.submit" and s.attributes.get("jobpool.job.id") == str(job.id)
        for s in spans.get_finished_spans()
    )
