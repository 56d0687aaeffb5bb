"""Discarding dead letters: ``client.dlq.discard`` (one entry) and ``discard_pending``
(by type and age), under the tenant rules.

Jobs die through ``FakeWorker``. The clients of the first tests connect as the schema
owner (the application's own tenant filters); the last tests connect as real,
unprivileged roles, so row-level security alone decides what a raw DELETE reaches.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pg
import pytest
import pytest_asyncio
from worker_helpers import FakeWorker

from jobpool import Client, SyncClient
from jobpool.errors import DlqEntryNotFound, InvalidInput, InvalidJobType
from jobpool.models import DlqId, Pool
from jobpool.store.roles import RoleKind, role_grant


@pytest_asyncio.fixture(loop_scope="session")
async def worker(conn: asyncpg.Connection, pool: Pool) -> FakeWorker:
    return await FakeWorker(conn, pool=pool.name).start()


@pytest_asyncio.fixture(loop_scope="session")
async def globex(dsn: str, pool: Pool) -> AsyncIterator[Client]:
    async with Client(dsn, pool=pool.name, tenant="globex") as jp:
        yield jp


async def dead_letters(
    client: Client, worker: FakeWorker, count: int, *, job_type: str = "send_email"
) -> list[DlqId]:
    """``count`` jobs of ``job_type`` killed at once; their DLQ ids, ascending."""
    jobs = await client.submit(job_type, [{"n": n} for n in range(count)])
    await worker.claim_all(jobs)
    await worker.dead(jobs)
    rows = await worker.conn.fetch(
        "SELECT id FROM job_dlq WHERE original_job_id = ANY($1::uuid[]) ORDER BY id",
        [job.id for job in jobs],
    )
    return [DlqId(row["id"]) for row in rows]


async def _age(conn: asyncpg.Connection, ids: list[DlqId], days: int) -> None:
    await conn.execute(
        "UPDATE job_dlq SET dlq_at = now() - make_interval(days => $2) WHERE id = ANY($1)",
        ids,
        days,
    )


async def _ids(conn: asyncpg.Connection) -> set[int]:
    return {row["id"] for row in await conn.fetch("SELECT id FROM job_dlq")}


async def test_discard_deletes_one_entry_and_returns_it(
    client: Client, worker: FakeWorker, conn: asyncpg.Connection
) -> None:
    first, second = await dead_letters(client, worker, 2)

    entry = await client.dlq.discard(first)

    assert entry.id == first
    assert entry.replayed_at is None
    assert await _ids(conn) == {second}
    with pytest.raises(DlqEntryNotFound, match=f"no DLQ entry {first} in pool 'emails'"):
        await client.dlq.discard(first)


async def test_discard_of_a_replayed_entry_deletes_it_too(
    client: Client, worker: FakeWorker, conn: asyncpg.Connection
) -> None:
    [entry_id] = await dead_letters(client, worker, 1)
    await client.dlq.replay(entry_id)

    assert (await client.dlq.discard(entry_id)).replayed_at is not None
    assert await _ids(conn) == set()


@pytest.mark.parametrize("bad", [0, -1, 2**63, "7", True])
async def test_discard_of_an_impossible_id_is_not_found(client: Client, bad: object) -> None:
    with pytest.raises(DlqEntryNotFound):
        await client.dlq.discard(bad)  # type: ignore[arg-type]


async def test_discard_pending_by_type_and_age(
    client: Client, worker: FakeWorker, conn: asyncpg.Connection
) -> None:
    old_emails = await dead_letters(client, worker, 3)
    new_emails = await dead_letters(client, worker, 2)
    old_reports = await dead_letters(client, worker, 2, job_type="report")
    replayed = await dead_letters(client, worker, 1)
    await _age(conn, old_emails + old_reports + replayed, days=10)
    await client.dlq.replay(replayed[0])

    gone = await client.dlq.discard_pending(type="send_email", older_than=timedelta(days=7))

    assert gone == 3
    assert await _ids(conn) == {*new_emails, *old_reports, *replayed}
    # By age alone: every type; replayed entries are purge's, not discard's.
    assert await client.dlq.discard_pending(older_than=timedelta(days=7)) == 2
    assert await _ids(conn) == {*new_emails, *replayed}
    # By type alone: any age.
    assert await client.dlq.discard_pending(type="send_email") == 2
    assert await _ids(conn) == set(replayed)


async def test_discard_pending_refuses_bad_filters(client: Client) -> None:
    with pytest.raises(InvalidInput, match="older_than must be a timedelta"):
        await client.dlq.discard_pending(older_than=timedelta(days=-1))
    with pytest.raises(InvalidJobType):
        await client.dlq.discard_pending(type="no spaces allowed")


async def test_discard_reaches_only_the_clients_tenant(
    client: Client, globex: Client, worker: FakeWorker, conn: asyncpg.Connection
) -> None:
    mine = await dead_letters(client, worker, 2)
    theirs = await dead_letters(globex, worker, 2)

    with pytest.raises(DlqEntryNotFound, match="for tenant 'acme'"):
        await client.dlq.discard(theirs[0])
    assert await client.dlq.discard_pending() == 2

    assert await _ids(conn) == set(theirs)
    assert mine[0] not in await _ids(conn)


def test_the_sync_client_discards(dsn: str, pool: Pool, conn: asyncpg.Connection) -> None:
    with SyncClient(dsn, pool=pool.name, tenant="acme") as jp:
        with pytest.raises(DlqEntryNotFound):
            jp.dlq.discard(12345)
        assert jp.dlq.discard_pending(type="send_email", older_than=timedelta(0)) == 0


# -- row-level security, under real roles -------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def acme_role(conn: asyncpg.Connection, dsn: str) -> AsyncIterator[str]:
    """DSN of a fresh login role in jobpool_client, bound to tenant ``acme`` only."""
    role = f"jp_discard_{uuid.uuid4().hex[:12]}"
    await pg.create_login_role(conn, role, "pw-" + role, groups=())
    await role_grant(conn, role, RoleKind.CLIENT, tenants=["acme"])
    yield pg.with_user(dsn, role, "pw-" + role)
    await conn.execute("DELETE FROM jobpool_tenant_roles WHERE role = $1", role)
    await conn.execute(f"DROP ROLE {pg.quote_ident(role)}")


async def test_a_client_role_discards_its_tenants_entries_only(
    acme_role: str, client: Client, globex: Client, worker: FakeWorker, conn: asyncpg.Connection
) -> None:
    mine = await dead_letters(client, worker, 2)
    theirs = await dead_letters(globex, worker, 2)
    async with Client(acme_role, pool="emails", tenant="acme") as acme:
        assert (await acme.dlq.discard(mine[0])).id == mine[0]
        with pytest.raises(DlqEntryNotFound):
            await acme.dlq.discard(theirs[0])
    # Raw SQL, claiming to act for globex: the role is not mapped to it, nothing goes.
    raw = await asyncpg.connect(acme_role, server_settings={"jobpool.tenant": "globex"})
    try:
        assert await raw.execute("DELETE FROM job_dlq") == "DELETE 0"
        await raw.execute("SELECT set_config('jobpool.tenant', 'acme', false)")
        assert await raw.execute("DELETE FROM job_dlq WHERE replayed_at IS NULL") == "DELETE 1"
    finally:
        await raw.close()
    assert await _ids(conn) == set(theirs)


async def test_the_operator_deletes_replayed_entries_only_and_workers_none(
    operator_dsn: str, worker_dsn: str, client: Client, worker: FakeWorker,
    conn: asyncpg.Connection,
) -> None:  # fmt: skip
    pending, replayed = await dead_letters(client, worker, 2)
    await client.dlq.replay(replayed)
    operator = await asyncpg.connect(operator_dsn)
    try:
        assert await operator.execute("DELETE FROM job_dlq") == "DELETE 1"
    finally:
        await operator.close()
    as_worker = await asyncpg.connect(worker_dsn)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await as_worker.execute("DELETE FROM job_dlq")
    finally:
        await as_worker.close()
    assert await _ids(conn) == {pending}
