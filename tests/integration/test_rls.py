"""Tenant isolation is enforced by Postgres row-level security, not only by the client.

The proof needs a role that RLS actually binds: the suites' usual connections are
superuser (and table owner), which RLS never restricts. Each test here creates a fresh
LOGIN role that is a member of ``jobpool_client`` and nothing more: not superuser, no
BYPASSRLS, owner of no table. Data of two tenants, ``acme`` and ``globex``, is written
by superuser clients and ``FakeWorker``; then, connected as that role, raw SQL and the
Client API may see and change only the rows of the tenant named by the
``jobpool.tenant`` setting, and nothing at all without it.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import parse_qsl, quote, urlencode

import asyncpg
import pg
import pytest
import pytest_asyncio
from worker_helpers import FakeWorker

from jobpool import CancelOutcome, Client, JobState
from jobpool.errors import DlqEntryNotFound, JobNotFound
from jobpool.models import DlqId, JobId, Pool

TABLES = {"jobs": "tenant", "job_history": "tenant", "job_dlq": "app_id"}
RLS_VIOLATION = "new row violates row-level security policy"

_URI = re.compile(r"(?P<scheme>postgres(?:ql)?://)(?:[^@/?#]*@)?(?P<hosts>[^/?#]*)(?P<rest>.*)")


def with_user(dsn: str, user: str, password: str) -> str:
    """``dsn`` with its credentials replaced by ``user``/``password`` (URI form only)."""
    match = _URI.fullmatch(dsn)
    if match is None:
        raise ValueError("expected a postgresql:// URI")
    rest = match["rest"]
    path, question, query = rest.partition("?")
    if question:
        params = parse_qsl(query, keep_blank_values=True)
        kept = [(k, v) for k, v in params if k not in {"user", "password"}]
        path += f"?{urlencode(kept, safe='/')}" if kept else ""
    userinfo = f"{quote(user, safe='')}:{quote(password, safe='')}@"
    return f"{match['scheme']}{userinfo}{match['hosts']}{path}"


def test_with_user_rewrites_only_the_credentials() -> None:
    assert (
        with_user("postgresql://postgres:@/db1?host=/tmp/s", "app", "pw")
        == "postgresql://app:pw@/db1?host=/tmp/s"
    )
    assert (
        with_user("postgresql://u:p%40ss@h:5432/db?user=x&sslmode=require", "app", "p@ss")
        == "postgresql://app:p%40ss@h:5432/db?sslmode=require"
    )
    assert with_user("postgresql://h/db", "app", "pw") == "postgresql://app:pw@h/db"


# -- fixtures ------------------------------------------------------------------------


@dataclass
class App:
    """The unprivileged application role of one test."""

    role: str
    dsn: str

    async def connect(self, tenant: str | None) -> asyncpg.Connection:
        """A raw connection as the role, its session bound to ``tenant`` (or to none)."""
        settings = {} if tenant is None else {"jobpool.tenant": tenant}
        return await asyncpg.connect(self.dsn, server_settings=settings)

    def client(self, tenant: str) -> Client:
        return Client(self.dsn, pool="emails", tenant=tenant)


@pytest_asyncio.fixture(loop_scope="session")
async def app(conn: asyncpg.Connection, dsn: str) -> AsyncIterator[App]:
    """A fresh LOGIN role in ``jobpool_client``; revoked and dropped after the test."""
    role = f"jp_app_{uuid.uuid4().hex[:12]}"
    password = secrets.token_hex(16)
    ident = pg.quote_ident(role)
    await conn.execute(
        f"CREATE ROLE {ident} LOGIN PASSWORD '{password}'"
        " NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE INHERIT"
    )
    try:
        await conn.execute(f"GRANT jobpool_client TO {ident}")
        yield App(role=role, dsn=with_user(dsn, role, password))
    finally:
        await conn.execute(f"REVOKE jobpool_client FROM {ident}")
        await conn.execute(f"DROP ROLE {ident}")


@dataclass
class TenantData:
    queued: list[JobId] = field(default_factory=list)
    succeeded: list[JobId] = field(default_factory=list)
    dead: list[JobId] = field(default_factory=list)
    dlq_pending: list[DlqId] = field(default_factory=list)
    dlq_replayed: DlqId | None = None  # replayed 10 days ago: purgeable


@pytest_asyncio.fixture(loop_scope="session")
async def data(dsn: str, conn: asyncpg.Connection, pool: Pool) -> dict[str, TenantData]:
    """Rows of both tenants in jobs, job_history and job_dlq, with different counts.

    acme: 1 succeeded, 2 dead (one replayed), 2 queued (+1 replay) → 3 jobs, 3 history,
    2 DLQ rows; globex: 2 succeeded, 3 dead (one replayed), 3 queued (+1 replay) → 4 jobs,
    5 history, 3 DLQ rows. Written as the schema owner, so RLS plays no part here.
    """
    worker = await FakeWorker(conn, pool=pool.name).start()
    sizes = {"acme": (1, 2, 2), "globex": (2, 3, 3)}
    result = {tenant: TenantData() for tenant in sizes}
    async with (
        Client(dsn, pool=pool.name, tenant="acme") as acme,
        Client(dsn, pool=pool.name, tenant="globex") as globex,
    ):
        clients = {"acme": acme, "globex": globex}
        # Finished jobs first, both tenants, so that the claims take nothing else.
        for tenant, (n_ok, n_dead, _) in sizes.items():
            jp, d = clients[tenant], result[tenant]
            ok = await jp.submit("send_email", [{"t": tenant, "ok": n} for n in range(n_ok)])
            dead = await jp.submit("send_email", [{"t": tenant, "dead": n} for n in range(n_dead)])
            await worker.claim_all(ok + dead)
            d.succeeded = await worker.succeed(ok, {"tenant": tenant})
            d.dead = await worker.dead(dead)
        # Then one replayed (10 days ago) DLQ entry each, and the queued jobs.
        for tenant, (_, n_dead, n_queued) in sizes.items():
            jp, d = clients[tenant], result[tenant]
            entries = (await jp.dlq.list()).entries
            assert len(entries) == n_dead
            d.dlq_replayed, *d.dlq_pending = [e.id for e in entries]
            await jp.dlq.replay(d.dlq_replayed)
            await conn.execute(
                "UPDATE job_dlq SET replayed_at = now() - interval '10 days' WHERE id = $1",
                d.dlq_replayed,
            )
            queued = await jp.submit("send_email", [{"t": tenant, "q": n} for n in range(n_queued)])
            d.queued = [job.id for job in queued]
    return result


async def owner_counts(conn: asyncpg.Connection, tenant: str) -> dict[str, int]:
    """Rows of ``tenant`` per table, counted by the owner (who RLS does not restrict)."""
    return {
        table: await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {column} = $1", tenant)
        for table, column in TABLES.items()
    }


async def visible_counts(conn: asyncpg.Connection) -> dict[str, int]:
    """Rows per table as plain ``SELECT count(*)``, no WHERE: all that RLS lets through."""
    return {table: await conn.fetchval(f"SELECT count(*) FROM {table}") for table in TABLES}


async def snapshot(conn: asyncpg.Connection, tenant: str) -> dict[str, list[str]]:
    """Every row of ``tenant``, as text, per table: to prove nothing changed."""
    return {
        table: [
            r["t"]
            for r in await conn.fetch(
                f"SELECT t::text AS t FROM {table} t WHERE {column} = $1 ORDER BY t::text", tenant
            )
        ]
        for table, column in TABLES.items()
    }


# -- the role is a fair test subject -------------------------------------------------


async def test_the_app_role_is_unprivileged_and_rls_is_on(
    app: App, conn: asyncpg.Connection
) -> None:
    role = await conn.fetchrow(
        "SELECT rolsuper, rolbypassrls, rolcanlogin,"
        " pg_has_role(rolname, 'jobpool_client', 'USAGE') AS in_client_role"
        " FROM pg_roles WHERE rolname = $1",
        app.role,
    )
    assert dict(role) == {
        "rolsuper": False,
        "rolbypassrls": False,
        "rolcanlogin": True,
        "in_client_role": True,
    }
    tables = await conn.fetch(
        "SELECT relname, relrowsecurity, pg_get_userbyid(relowner) AS owner"
        " FROM pg_class WHERE relname = ANY($1::text[]) AND relkind = 'r'",
        list(TABLES),
    )
    assert {t["relname"] for t in tables} == set(TABLES)
    for table in tables:
        assert table["relrowsecurity"], f"RLS is off on {table['relname']}"
        assert table["owner"] != app.role
    raw = await app.connect("acme")
    try:
        assert await raw.fetchval("SELECT current_user") == app.role
        assert await raw.fetchval("SHOW jobpool.tenant") == "acme"
    finally:
        await raw.close()


# -- raw SQL as the app role ---------------------------------------------------------


async def test_raw_selects_see_only_the_session_tenants_rows(
    app: App, conn: asyncpg.Connection, data: dict[str, TenantData]
) -> None:
    acme = await owner_counts(conn, "acme")
    globex = await owner_counts(conn, "globex")
    assert acme == {"jobs": 3, "job_history": 3, "job_dlq": 2}
    assert globex == {"jobs": 4, "job_history": 5, "job_dlq": 3}
    raw = await app.connect("acme")
    try:
        assert await visible_counts(raw) == acme
        for table, column in TABLES.items():
            tenants = await raw.fetch(f"SELECT DISTINCT {column} AS t FROM {table}")
            assert [r["t"] for r in tenants] == ["acme"]
            assert (
                await raw.fetchval(f"SELECT count(*) FROM {table} WHERE {column} = 'globex'") == 0
            )
        globex_job = data["globex"].queued[0]
        assert await raw.fetchrow("SELECT * FROM jobs WHERE id = $1", globex_job) is None
    finally:
        await raw.close()


async def test_raw_update_and_delete_of_other_tenants_rows_change_nothing(
    app: App, conn: asyncpg.Connection, data: dict[str, TenantData]
) -> None:
    before = await snapshot(conn, "globex")
    raw = await app.connect("acme")
    try:
        for table, column in TABLES.items():
            where = f"WHERE {column} = 'globex'"
            assert await raw.execute(f"UPDATE {table} SET type = 'hijacked' {where}") == "UPDATE 0"
            assert await raw.execute(f"DELETE FROM {table} {where}") == "DELETE 0"
        target = data["globex"].queued[0]
        assert await raw.execute("DELETE FROM jobs WHERE id = $1", target) == "DELETE 0"
        assert (
            await raw.execute("UPDATE job_dlq SET replayed_at = now() WHERE id = $1",
                              data["globex"].dlq_pending[0])
            == "UPDATE 0"
        )  # fmt: skip
        # An unfiltered DELETE reaches the session tenant's rows only (rolled back).
        acme = await owner_counts(conn, "acme")
        async with rolled_back(raw):
            for table in TABLES:
                assert await raw.execute(f"DELETE FROM {table}") == f"DELETE {acme[table]}"
    finally:
        await raw.close()
    assert await snapshot(conn, "globex") == before
    assert await owner_counts(conn, "acme") == {"jobs": 3, "job_history": 3, "job_dlq": 2}


@asynccontextmanager
async def rolled_back(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """A transaction that is always rolled back: try a write, keep nothing."""
    transaction = conn.transaction()
    await transaction.start()
    try:
        yield
    finally:
        await transaction.rollback()


INSERT_JOB = (
    "INSERT INTO jobs (id, pool, tenant, shard, type, priority, payload)"
    " VALUES (gen_random_uuid(), 'emails', $1, 0, 'send_email', 1, '{}')"
)
INSERT_HISTORY = (
    "INSERT INTO job_history (id, pool, tenant, shard, type, priority, state, payload,"
    " attempts, created_at) VALUES (gen_random_uuid(), 'emails', $1, 0, 'send_email', 1,"
    " 'succeeded', '{}', 1, now())"
)
INSERT_DLQ = (
    "INSERT INTO job_dlq (pool, original_job_id, app_id, type, payload, error_reason,"
    " attempts) VALUES ('emails', gen_random_uuid(), $1, 'send_email', '{}', 'x', 1)"
)


@pytest.mark.parametrize("insert", [INSERT_JOB, INSERT_HISTORY, INSERT_DLQ])
async def test_raw_insert_of_another_tenants_row_is_rejected(
    app: App, conn: asyncpg.Connection, data: dict[str, TenantData], insert: str
) -> None:
    before = await owner_counts(conn, "globex")
    raw = await app.connect("acme")
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match=RLS_VIOLATION):
            await raw.execute(insert, "globex")
        # The same statement for the session's own tenant is allowed (then rolled back):
        # it was the policy that refused, not a missing grant.
        async with rolled_back(raw):
            assert await raw.execute(insert, "acme") == "INSERT 0 1"
    finally:
        await raw.close()
    assert await owner_counts(conn, "globex") == before


async def test_raw_update_moving_a_row_to_another_tenant_is_rejected(
    app: App, conn: asyncpg.Connection, data: dict[str, TenantData]
) -> None:
    mine = data["acme"].queued[0]
    raw = await app.connect("acme")
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match=RLS_VIOLATION):
            await raw.execute("UPDATE jobs SET tenant = 'globex' WHERE id = $1", mine)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match=RLS_VIOLATION):
            await raw.execute(
                "UPDATE job_dlq SET app_id = 'globex' WHERE id = $1", data["acme"].dlq_pending[0]
            )
    finally:
        await raw.close()
    assert await conn.fetchval("SELECT tenant FROM jobs WHERE id = $1", mine) == "acme"


async def test_raw_purge_function_for_all_tenants_purges_only_the_session_tenant(
    app: App, conn: asyncpg.Connection, data: dict[str, TenantData]
) -> None:
    raw = await app.connect("acme")
    try:
        # NULL asks for every tenant; RLS still narrows the DELETE to acme's rows.
        purged = await raw.fetchval("SELECT jobpool_dlq_purge('emails', interval '1 day', NULL)")
    finally:
        await raw.close()
    assert purged == 1
    remaining = {r["id"] for r in await conn.fetch("SELECT id FROM job_dlq")}
    assert data["acme"].dlq_replayed not in remaining
    assert data["globex"].dlq_replayed in remaining


async def test_without_a_tenant_setting_the_role_sees_and_changes_nothing(
    app: App, conn: asyncpg.Connection, data: dict[str, TenantData]
) -> None:
    raw = await app.connect(None)
    try:
        assert await raw.fetchval("SELECT current_setting('jobpool.tenant', true)") is None
        assert await visible_counts(raw) == {table: 0 for table in TABLES}
        for table in TABLES:
            assert await raw.execute(f"DELETE FROM {table}") == "DELETE 0"
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match=RLS_VIOLATION):
            await raw.execute(INSERT_JOB, "acme")
        # A transaction-local setting (what ``enqueue`` uses) opens acme for that
        # transaction only.
        async with raw.transaction():
            await raw.execute("SELECT set_config('jobpool.tenant', 'acme', true)")
            assert await visible_counts(raw) == await owner_counts(conn, "acme")
        assert await visible_counts(raw) == {table: 0 for table in TABLES}
    finally:
        await raw.close()


# -- the Client API as the app role --------------------------------------------------


async def test_client_as_acme_cannot_reach_globex_jobs_or_dlq_entries(
    app: App, conn: asyncpg.Connection, data: dict[str, TenantData]
) -> None:
    globex, acme = data["globex"], data["acme"]
    before = await snapshot(conn, "globex")
    async with app.client("acme") as jp:
        for job_id in (globex.queued[0], globex.succeeded[0], globex.dead[0]):
            with pytest.raises(JobNotFound):
                await jp.status(job_id)
        with pytest.raises(JobNotFound):
            await jp.cancel(globex.queued[0])
        for entry_id in (globex.dlq_pending[0], globex.dlq_replayed):
            with pytest.raises(DlqEntryNotFound):
                await jp.dlq.get(entry_id)
        with pytest.raises(DlqEntryNotFound):
            await jp.dlq.replay(globex.dlq_pending[0])
        assert [e.id for e in (await jp.dlq.list()).entries] == acme.dlq_pending
        assert await jp.dlq.purge(older_than=timedelta(days=7)) == 1
        async with jp.connection() as session:
            assert await session.fetchval("SHOW jobpool.tenant") == "acme"
            assert await visible_counts(session) == await owner_counts(conn, "acme")
    assert await snapshot(conn, "globex") == before
    assert globex.dlq_replayed in {r["id"] for r in await conn.fetch("SELECT id FROM job_dlq")}


async def test_client_as_acme_runs_its_own_jobs_under_rls(
    app: App, conn: asyncpg.Connection, pool: Pool, data: dict[str, TenantData]
) -> None:
    """The role has every grant it needs: RLS narrows what it sees, not what it may do."""
    worker = await FakeWorker(conn, pool=pool.name).start()
    async with app.client("acme") as jp:
        assert (await jp.status(data["acme"].succeeded[0])).state is JobState.SUCCEEDED
        assert await jp.cancel(data["acme"].queued[0]) is CancelOutcome.CANCELLED
        job = await jp.submit("send_email", {"to": "a@example.com"})
        replay = await jp.dlq.replay(data["acme"].dlq_pending[0])
        # The worker (schema owner) sees every tenant's queue.
        claimed = await worker.claim()
        assert job.id in {c.id for c in claimed}
        assert replay.id in {c.id for c in claimed}
        await worker.succeed([job], {"sent": True})
        assert await jp.result(job.id, timeout=5) == {"sent": True}
    # enqueue() binds the caller's transaction to the tenant with set_config(local).
    async with app.client("acme") as jp:
        raw = await app.connect(None)
        try:
            async with raw.transaction():
                enqueued = await jp.enqueue(raw, "send_email", {"n": 1})
            assert await raw.fetchval("SELECT count(*) FROM jobs") == 0
        finally:
            await raw.close()
        assert (await jp.status(enqueued.id)).state is JobState.QUEUED
    assert await conn.fetchval("SELECT tenant FROM jobs WHERE id = $1", enqueued.id) == "acme"


async def test_same_role_bound_to_globex_sees_only_globex(
    app: App, conn: asyncpg.Connection, data: dict[str, TenantData]
) -> None:
    globex, acme = data["globex"], data["acme"]
    async with app.client("globex") as jp:
        async with jp.connection() as session:
            assert await visible_counts(session) == await owner_counts(conn, "globex")
        assert (await jp.status(globex.queued[0])).tenant == "globex"
        assert (await jp.status(globex.dead[0])).state is JobState.DEAD
        with pytest.raises(JobNotFound):
            await jp.status(acme.queued[0])
        assert [e.id for e in (await jp.dlq.list()).entries] == globex.dlq_pending
        with pytest.raises(DlqEntryNotFound):
            await jp.dlq.get(acme.dlq_pending[0])
    raw = await app.connect("globex")
    try:
        assert await visible_counts(raw) == {"jobs": 4, "job_history": 5, "job_dlq": 3}
    finally:
        await raw.close()
