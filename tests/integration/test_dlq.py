"""The dead-letter queue: what dead-lettering writes, and ``client.dlq`` list/get/replay/purge.

Jobs die through ``FakeWorker`` (the real store functions a worker runs). The clients
here connect as the schema owner, so these tests check the application's own tenant
filters; tests/integration/test_rls.py proves the same isolation with row-level
security under a non-privileged role.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from worker_helpers import FakeWorker

from jobpool import Client, JobState, Priority
from jobpool.errors import DlqEntryAlreadyReplayed, DlqEntryNotFound, InvalidInput
from jobpool.models import DlqEntry, DlqId, Pool

TWELVE_FIELDS = {
    "id",
    "original_job_id",
    "app_id",
    "type",
    "payload",
    "error_reason",
    "attempts",
    "error_history",
    "dlq_at",
    "replayed_at",
    "request_id",
    "user_id",
}


@pytest_asyncio.fixture(loop_scope="session")
async def worker(conn: asyncpg.Connection, pool: Pool) -> FakeWorker:
    return await FakeWorker(conn, pool=pool.name).start()


@pytest_asyncio.fixture(loop_scope="session")
async def globex(dsn: str, pool: Pool) -> AsyncIterator[Client]:
    """A client of the same pool for another tenant."""
    async with Client(dsn, pool=pool.name, tenant="globex") as jp:
        yield jp


async def dead_letter(
    client: Client,
    worker: FakeWorker,
    payloads: Sequence[Any],
    *,
    job_type: str = "send_email",
    reason: str = "attempts_exhausted",
    **options: Any,
) -> list[DlqId]:
    """Submit ``payloads`` as a batch, kill them all in one finish; their DLQ ids, ascending.

    Entries of one finish batch get ids in the order the batch's rows were deleted,
    which is not the submission order: callers must not assume one.
    """
    jobs = await client.submit(job_type, list(payloads), **options)
    priority = Priority(options.get("priority", Priority.NORMAL))
    await worker.claim_all(jobs, priority=priority)
    assert sorted(await worker.dead(jobs, reason=reason)) == sorted(j.id for j in jobs)
    rows = await worker.conn.fetch(
        "SELECT original_job_id, id FROM job_dlq WHERE original_job_id = ANY($1::uuid[])",
        [j.id for j in jobs],
    )
    assert len(rows) == len(jobs)
    return sorted(DlqId(row["id"]) for row in rows)


async def list_all(client: Client, *, limit: int, type: str | None = None) -> list[list[DlqEntry]]:
    """Every page of ``client.dlq.list``, following cursors to the end."""
    pages: list[list[DlqEntry]] = []
    cursor = None
    while True:
        page = await client.dlq.list(type=type, limit=limit, cursor=cursor)
        pages.append(list(page.entries))
        if page.next_cursor is None:
            return pages
        assert page.entries, "a page that promises more is never empty"
        cursor = page.next_cursor
        assert len(pages) < 100, "the cursor does not advance"


# -- what dead-lettering writes ------------------------------------------------------


async def test_dead_letter_writes_every_field_and_the_whole_error_history(
    client: Client, worker: FakeWorker, conn: asyncpg.Connection
) -> None:
    payload = {"to": "a@example.com", "cc": ["b", "c"], "n": 3.5, "ok": None}
    job = await client.submit(
        "send_email", payload, priority="high", key="customer-7",
        request_id="req-123", user_id="user-9", max_attempts=3,
    )  # fmt: skip
    for attempt in (1, 2):
        [claimed] = await worker.claim_all([job], priority=Priority.HIGH)
        assert claimed.attempt == attempt
        assert await worker.retry([job], attempt=attempt, message=f"failure {attempt}") == [job.id]
    [claimed] = await worker.claim_all([job], priority=Priority.HIGH)
    assert claimed.attempt == 3
    before = await conn.fetchval("SELECT clock_timestamp()")
    assert await worker.dead(
        [job], reason="attempts_exhausted", message="failure 3", attempt=3
    ) == [job.id]
    after = await conn.fetchval("SELECT clock_timestamp()")

    row = await conn.fetchrow(
        "SELECT *, jsonb_typeof(error_history) AS history_type FROM job_dlq"
        " WHERE original_job_id = $1",
        job.id,
    )
    assert row is not None
    assert set(row.keys()) >= TWELVE_FIELDS | {"pool"}
    assert isinstance(row["id"], int)
    assert row["original_job_id"] == job.id
    assert row["app_id"] == "acme"
    assert row["pool"] == "emails"
    assert row["type"] == "send_email"
    assert json.loads(row["payload"]) == payload
    assert row["error_reason"] == "attempts_exhausted"
    assert row["attempts"] == 3
    assert row["history_type"] == "array"
    history = json.loads(row["error_history"])
    assert [e["attempt"] for e in history] == [1, 2, 3]
    assert [e["message"] for e in history] == ["failure 1", "failure 2", "failure 3"]
    assert {e["error_type"] for e in history} == {"SMTPError"}
    assert all(e["at"] for e in history)
    assert before <= row["dlq_at"] <= after
    assert row["replayed_at"] is None
    assert row["request_id"] == "req-123"
    assert row["user_id"] == "user-9"

    entry = await client.dlq.get(row["id"])
    assert entry.id == row["id"]
    assert entry.original_job_id == job.id
    assert (entry.pool, entry.app_id, entry.type) == ("emails", "acme", "send_email")
    assert entry.payload == payload
    assert (entry.priority, entry.key) == (Priority.HIGH, "customer-7")
    assert [(e.attempt, e.message) for e in entry.error_history] == [
        (1, "failure 1"), (2, "failure 2"), (3, "failure 3"),
    ]  # fmt: skip
    assert (entry.error_reason, entry.attempts, entry.replayed_at) == (
        "attempts_exhausted",
        3,
        None,
    )
    assert (entry.request_id, entry.user_id) == ("req-123", "user-9")

    # The job itself ended dead, left the hot table and kept the same history.
    status = await client.status(job.id)
    assert (status.state, status.attempts) == (JobState.DEAD, 3)
    assert status.error_history == entry.error_history
    assert await conn.fetchval("SELECT count(*) FROM jobs WHERE id = $1", job.id) == 0


async def test_only_dead_finishes_write_dlq_rows(
    client: Client, worker: FakeWorker, conn: asyncpg.Connection
) -> None:
    ok, cancelled = await client.submit("send_email", [{"n": 1}, {"n": 2}])
    await worker.claim_all([ok, cancelled])
    await worker.succeed([ok], "fine")
    await worker.cancelled([cancelled])
    assert await conn.fetchval("SELECT count(*) FROM job_dlq") == 0
    assert (await client.dlq.list()).entries == ()


@pytest.mark.parametrize("bad_history", ['{"attempt": 1}', '"boom"', "42", "null", "true"])
async def test_error_history_check_rejects_non_arrays(
    conn: asyncpg.Connection, pool: Pool, bad_history: str
) -> None:
    insert = (
        "INSERT INTO job_dlq (pool, original_job_id, app_id, type, payload, error_reason,"
        " attempts, error_history) VALUES ($1, gen_random_uuid(), 'acme', 'send_email',"
        " '{}', 'attempts_exhausted', 1, $2::jsonb)"
    )
    with pytest.raises(asyncpg.CheckViolationError, match="error_history"):
        await conn.execute(insert, pool.name, bad_history)
    assert await conn.fetchval("SELECT count(*) FROM job_dlq") == 0
    # The same statement with an array goes in: it was the CHECK that refused.
    await conn.execute(insert, pool.name, '[{"attempt": 1}]')
    assert await conn.fetchval("SELECT count(*) FROM job_dlq") == 1


# -- list / get ----------------------------------------------------------------------


@pytest.mark.parametrize(("count", "sizes"), [(7, [3, 3, 1]), (6, [3, 3]), (2, [2])])
async def test_list_pages_with_limit_and_cursor(
    client: Client, worker: FakeWorker, count: int, sizes: list[int]
) -> None:
    ids = await dead_letter(client, worker, [{"n": n} for n in range(count)])
    pages = await list_all(client, limit=3)
    assert [len(page) for page in pages] == sizes
    listed = [entry.id for page in pages for entry in page]
    assert len(listed) == len(set(listed)), "no entry twice"
    assert listed == sorted(ids), "every entry, oldest first"
    listed_payloads = sorted(entry.payload["n"] for page in pages for entry in page)
    assert listed_payloads == list(range(count))


async def test_list_filters_by_type(client: Client, worker: FakeWorker) -> None:
    emails = await dead_letter(client, worker, [{"n": n} for n in range(3)])
    sms = await dead_letter(client, worker, [{"n": n} for n in range(2)], job_type="send_sms")
    pages = await list_all(client, limit=2, type="send_email")
    assert [len(page) for page in pages] == [2, 1]
    assert [e.id for page in pages for e in page] == emails
    only_sms = await client.dlq.list(type="send_sms")
    assert [e.id for e in only_sms.entries] == sms
    assert {e.type for e in only_sms.entries} == {"send_sms"}
    assert only_sms.next_cursor is None
    nothing = await client.dlq.list(type="send_fax")
    assert (nothing.entries, nothing.next_cursor) == ((), None)
    assert len((await client.dlq.list()).entries) == 5


async def test_list_excludes_replayed_entries(client: Client, worker: FakeWorker) -> None:
    first, middle, last = await dead_letter(client, worker, [{"n": n} for n in range(3)])
    await client.dlq.replay(middle)
    assert [e.id for e in (await client.dlq.list()).entries] == [first, last]
    assert [e.id for e in (await client.dlq.list(limit=1, cursor=str(first))).entries] == [last]
    replayed = await client.dlq.get(middle)  # still readable, just not pending
    assert replayed.replayed_at is not None


async def test_list_and_get_show_only_the_clients_tenant(
    client: Client, globex: Client, worker: FakeWorker
) -> None:
    acme_ids = await dead_letter(client, worker, [{"t": "acme", "n": n} for n in range(3)])
    globex_ids = await dead_letter(globex, worker, [{"t": "globex", "n": n} for n in range(2)])
    acme_page = await client.dlq.list()
    assert [e.id for e in acme_page.entries] == acme_ids
    assert {e.app_id for e in acme_page.entries} == {"acme"}
    globex_page = await globex.dlq.list()
    assert [e.id for e in globex_page.entries] == globex_ids
    assert {e.app_id for e in globex_page.entries} == {"globex"}
    # Paging from acme's last cursor does not run into globex's (later) entries.
    assert (await client.dlq.list(limit=3)).next_cursor is None
    with pytest.raises(DlqEntryNotFound):
        await client.dlq.get(globex_ids[0])
    assert (await globex.dlq.get(globex_ids[0])).app_id == "globex"


async def test_get_unknown_entry_raises_not_found(client: Client) -> None:
    with pytest.raises(DlqEntryNotFound, match="424242"):
        await client.dlq.get(424242)


@pytest.mark.parametrize("entry_id", [2**63, 2**70])
async def test_get_and_replay_of_an_impossible_entry_id_raise_typed_errors(
    client: Client, entry_id: int
) -> None:
    """An id beyond bigint cannot exist: a typed error, like a non-UUID job id gets."""
    with pytest.raises((DlqEntryNotFound, InvalidInput)):
        await client.dlq.get(entry_id)
    with pytest.raises((DlqEntryNotFound, InvalidInput)):
        await client.dlq.replay(entry_id)


@pytest.mark.parametrize("cursor", ["not-a-cursor", "1.5", "", "99999999999999999999"])
async def test_list_with_an_invalid_cursor_raises_invalid_input(
    client: Client, cursor: str
) -> None:
    with pytest.raises(InvalidInput, match="cursor"):
        await client.dlq.list(cursor=cursor)


@pytest.mark.parametrize("limit", [0, -1, 1001])
async def test_list_with_an_invalid_limit_raises_invalid_input(client: Client, limit: int) -> None:
    with pytest.raises(InvalidInput, match="limit"):
        await client.dlq.list(limit=limit)


# -- replay --------------------------------------------------------------------------


async def test_replay_enqueues_a_linked_copy_and_marks_the_entry(
    client: Client, worker: FakeWorker, conn: asyncpg.Connection
) -> None:
    payload = [{"to": "a@example.com"}, "list payloads stay one job"]
    [entry_id] = await dead_letter(
        client, worker, [payload], priority="high", key="customer-7",
        request_id="req-1", user_id="user-1",
    )  # fmt: skip
    entry = await client.dlq.get(entry_id)

    job = await client.dlq.replay(entry_id)

    assert job.id != entry.original_job_id
    assert (job.type, job.priority, job.state) == ("send_email", Priority.HIGH, JobState.QUEUED)
    assert (job.pool, job.tenant, job.duplicate) == ("emails", "acme", False)
    original_shard = await conn.fetchval(
        "SELECT shard FROM job_history WHERE id = $1", entry.original_job_id
    )
    assert job.shard == original_shard, "the routing key is kept, so is the shard"
    row = await conn.fetchrow(
        "SELECT payload, priority, routing_key, request_id, user_id, replay_of, state"
        " FROM jobs WHERE id = $1",
        job.id,
    )
    assert json.loads(row["payload"]) == payload
    assert (row["priority"], row["routing_key"], row["state"]) == (2, "customer-7", "queued")
    assert (row["request_id"], row["user_id"], row["replay_of"]) == ("req-1", "user-1", entry_id)
    assert (await client.dlq.get(entry_id)).replayed_at is not None

    # A worker gets the replayed job as a fresh first attempt of the same work.
    [claimed] = await worker.claim_all([job], priority=Priority.HIGH)
    assert (claimed.payload, claimed.attempt) == (payload, 1)
    assert (claimed.request_id, claimed.user_id) == ("req-1", "user-1")


async def test_second_replay_raises_already_replayed_and_enqueues_nothing(
    client: Client, worker: FakeWorker, conn: asyncpg.Connection
) -> None:
    [entry_id] = await dead_letter(client, worker, [{"n": 1}])
    first = await client.dlq.replay(entry_id)
    replayed_at = (await client.dlq.get(entry_id)).replayed_at
    with pytest.raises(DlqEntryAlreadyReplayed, match=str(entry_id)):
        await client.dlq.replay(entry_id)
    jobs = await conn.fetch("SELECT id FROM jobs WHERE replay_of = $1", entry_id)
    assert [r["id"] for r in jobs] == [first.id]
    assert (await client.dlq.get(entry_id)).replayed_at == replayed_at


async def test_concurrent_replays_enqueue_exactly_one_job(
    client: Client, worker: FakeWorker, conn: asyncpg.Connection
) -> None:
    [entry_id] = await dead_letter(client, worker, [{"n": 1}])
    outcomes = await asyncio.gather(
        client.dlq.replay(entry_id), client.dlq.replay(entry_id), return_exceptions=True
    )
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(errors) == 1
    assert isinstance(errors[0], DlqEntryAlreadyReplayed)
    assert await conn.fetchval("SELECT count(*) FROM jobs WHERE replay_of = $1", entry_id) == 1


async def test_replay_of_unknown_or_foreign_entry_raises_not_found(
    client: Client, globex: Client, worker: FakeWorker, conn: asyncpg.Connection
) -> None:
    [foreign] = await dead_letter(globex, worker, [{"n": 1}])
    with pytest.raises(DlqEntryNotFound):
        await client.dlq.replay(424242)
    with pytest.raises(DlqEntryNotFound):
        await client.dlq.replay(foreign)
    assert (await globex.dlq.get(foreign)).replayed_at is None
    assert await conn.fetchval("SELECT count(*) FROM jobs") == 0


# -- purge ---------------------------------------------------------------------------


async def test_purge_deletes_only_this_tenants_replayed_entries_older_than_threshold(
    client: Client, globex: Client, worker: FakeWorker, conn: asyncpg.Connection
) -> None:
    old, recent, fresh, pending = await dead_letter(client, worker, [{"n": n} for n in range(4)])
    [foreign_old] = await dead_letter(globex, worker, [{"n": 9}])
    for entry_id in (old, recent, fresh):
        await client.dlq.replay(entry_id)
    await globex.dlq.replay(foreign_old)
    backdate = "UPDATE job_dlq SET {} = now() - $2::interval WHERE id = $1"
    await conn.execute(backdate.format("replayed_at"), old, timedelta(days=10))
    await conn.execute(backdate.format("replayed_at"), recent, timedelta(days=3))
    await conn.execute(backdate.format("replayed_at"), foreign_old, timedelta(days=10))
    # "Fresh" is a second old, so that older_than=0 takes it whatever the clock does.
    await conn.execute(backdate.format("replayed_at"), fresh, timedelta(seconds=1))
    await conn.execute(backdate.format("dlq_at"), pending, timedelta(days=30))

    async def remaining() -> set[int]:
        return {r["id"] for r in await conn.fetch("SELECT id FROM job_dlq")}

    assert await client.dlq.purge(older_than=timedelta(days=7)) == 1
    assert await remaining() == {recent, fresh, pending, foreign_old}
    assert await client.dlq.purge(older_than=timedelta(days=7)) == 0
    assert await client.dlq.purge(older_than=timedelta(days=1)) == 1
    assert await remaining() == {fresh, pending, foreign_old}
    # An unreplayed entry is never purged, however old it is.
    assert await client.dlq.purge(older_than=timedelta(0)) == 1
    assert await remaining() == {pending, foreign_old}
    assert [e.id for e in (await client.dlq.list()).entries] == [pending]
    # The other tenant purges its own.
    assert await globex.dlq.purge(older_than=timedelta(days=7)) == 1
    assert await remaining() == {pending}


async def test_purge_with_a_negative_age_raises_invalid_input(client: Client) -> None:
    with pytest.raises(InvalidInput, match="older_than"):
        await client.dlq.purge(older_than=timedelta(days=-1))
