"""Tenant isolation is enforced by Postgres against a hostile client, not only by the client.

The proof needs roles that RLS binds: the suite's usual connections are superuser,
which RLS never restricts. Each test here creates fresh LOGIN roles that are members
of one jobpool group role and nothing more (not superuser, no BYPASSRLS, owner of no
table), bound to tenants with ``jobpool.store.roles.role_grant`` — what ``jobpool
grant`` runs. Data of two tenants, ``acme`` and ``globex``, is written by superuser
clients and ``FakeWorker``; then, connected as those roles, raw SQL and the Client API
reach only what the tenant map allows, whatever the session's ``jobpool.tenant`` says.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import asyncpg
import pg
import pytest
import pytest_asyncio
from worker_helpers import FakeWorker

from jobpool import CancelOutcome, Client, JobState
from jobpool.errors import AccessDenied, DlqEntryNotFound, JobNotFound
from jobpool.models import DlqId, JobId, Pool
from jobpool.store.roles import RoleKind, role_grant

TABLES = {"jobs": "tenant", "job_history": "tenant", "job_dlq": "app_id"}
RLS_VIOLATION = "new row violates row-level security policy"
DENIED = "permission denied"


def test_with_user_rewrites_only_the_credentials() -> None:
    assert (
        pg.with_user("postgresql://postgres:@/db1?host=/tmp/s", "app", "pw")
        == "postgresql://app:pw@/db1?host=/tmp/s"
    )
    assert (
        pg.with_user("postgresql://u:p%40ss@h:5432/db?user=x&sslmode=require", "app", "p@ss")
        == "postgresql://app:p%40ss@h:5432/db?sslmode=require"
    )
    assert pg.with_user("postgresql://h/db", "app", "pw") == "postgresql://app:pw@h/db"


# -- fixtures ------------------------------------------------------------------------


@dataclass
class App:
    """A login role of one test, with nothing but its jobpool group role."""

    role: str
    dsn: str

    async def connect(self, tenant: str | None) -> asyncpg.Connection:
        """A raw connection as the role, its session setting naming ``tenant`` (or none)."""
        settings = {} if tenant is None else {"jobpool.tenant": tenant}
        return await asyncpg.connect(self.dsn, server_settings=settings)

    def client(self, tenant: str) -> Client:
        return Client(self.dsn, pool="emails", tenant=tenant)


MakeRole = Callable[..., Awaitable[App]]


@pytest_asyncio.fixture(loop_scope="session")
async def make_role(conn: asyncpg.Connection, dsn: str) -> AsyncIterator[MakeRole]:
    """``await make_role(kind, tenants)``: a fresh LOGIN role granted ``kind`` (bound to
    ``tenants`` for a client; none: bound to no tenant); dropped after the test."""
    made: list[str] = []

    async def make(kind: RoleKind = RoleKind.CLIENT, tenants: list[str] | None = None) -> App:
        role = f"jp_app_{uuid.uuid4().hex[:12]}"
        password = secrets.token_hex(16)
        await pg.create_login_role(conn, role, password, groups=())
        made.append(role)
        if kind is RoleKind.CLIENT and not tenants:
            await conn.execute(f"GRANT jobpool_client TO {pg.quote_ident(role)}")
        else:
            await role_grant(conn, role, kind, tenants=tenants or [])
        return App(role=role, dsn=pg.with_user(dsn, role, password))

    yield make
    for role in made:
        await conn.execute("DELETE FROM jobpool_tenant_roles WHERE role = $1", role)
        await conn.execute(f"DROP ROLE {pg.quote_ident(role)}")


@pytest_asyncio.fixture(loop_scope="session")
async def app(make_role: MakeRole) -> App:
    """A client role bound to tenant ``acme`` only."""
    return await make_role(RoleKind.CLIENT, ["acme"])


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
        " FROM pg_class WHERE relname = ANY($1::text[]) AND relkind IN ('r', 'p')",
        list(TABLES),
    )
    assert {t["relname"] for t in tables} == set(TABLES)
    for table in tables:
        assert table["relrowsecurity"], f"RLS is off on {table['relname']}"
        assert table["owner"] == "jobpool_owner"
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


async def test_attack_naming_another_tenant_in_the_setting_reaches_nothing(
    app: App, conn: asyncpg.Connection, data: dict[str, TenantData]
) -> None:
    """Issue 10, attack 1: ``SET jobpool.tenant = 'globex'`` by acme's role, then reads,
    writes and a purge of globex's replayed entry: nothing is seen, nothing changes."""
    before = await snapshot(conn, "globex")
    raw = await app.connect("acme")
    try:
        await raw.execute("SET jobpool.tenant = 'globex'")
        assert await visible_counts(raw) == {table: 0 for table in TABLES}
        globex_job = data["globex"].queued[0]
        assert await raw.fetchrow("SELECT * FROM jobs WHERE id = $1", globex_job) is None
        purged = await raw.fetchval("SELECT jobpool_dlq_purge('emails', interval '0', 'globex')")
        assert purged == 0
        cancelled = "UPDATE jobs SET cancel_requested_at = now() WHERE id = $1"
        assert await raw.execute(cancelled, globex_job) == "UPDATE 0"
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match=RLS_VIOLATION):
            await raw.execute(INSERT_JOB, "globex")
        # A transaction-local setting is no different.
        async with raw.transaction():
            await raw.execute("SELECT set_config('jobpool.tenant', 'globex', true)")
            assert await visible_counts(raw) == {table: 0 for table in TABLES}
    finally:
        await raw.close()
    assert await snapshot(conn, "globex") == before


async def test_raw_writes_beyond_the_client_grants_are_refused(
    app: App, conn: asyncpg.Connection, data: dict[str, TenantData]
) -> None:
    """Issue 10, attack 4: a client may not update jobs (but to request a cancel),
    delete them, or write history; it may not even touch its own tenant's rows so."""
    before = await snapshot(conn, "acme")
    mine = data["acme"].queued[0]
    raw = await app.connect("acme")
    try:
        refused = [
            ("UPDATE jobs SET type = 'hijacked' WHERE id = $1", mine),
            ("UPDATE jobs SET state = 'running', worker = 'forged' WHERE id = $1", mine),
            ("UPDATE jobs SET tenant = 'globex' WHERE id = $1", mine),
            ("DELETE FROM jobs WHERE id = $1", mine),
            ("UPDATE job_history SET result = '1' WHERE id = $1", data["acme"].succeeded[0]),
            ("DELETE FROM job_history WHERE id = $1", data["acme"].succeeded[0]),
            ("UPDATE job_dlq SET payload = '1' WHERE id = $1", data["acme"].dlq_pending[0]),
        ]
        for statement, target in refused:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match=DENIED):
                await raw.execute(statement, target)
        for insert in (INSERT_HISTORY, INSERT_DLQ, INSERT_RUNNING):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match=DENIED):
                await raw.execute(insert, "acme")
        # Deleting its own dead letters is discarding them: test_dlq_discard.py.
    finally:
        await raw.close()
    assert await snapshot(conn, "acme") == before


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
INSERT_RUNNING = (
    "INSERT INTO jobs (id, pool, tenant, shard, type, priority, payload, state, worker,"
    " lease_epoch) VALUES (gen_random_uuid(), 'emails', $1, 0, 'send_email', 1, '{}',"
    " 'running', 'forged', 99)"
)
INSERT_HISTORY = (
    "INSERT INTO job_history (id, pool, tenant, shard, type, priority, state, payload,"
    " attempts, created_at, result) VALUES (gen_random_uuid(), 'emails', $1, 0,"
    " 'send_email', 1, 'succeeded', '{}', 1, now(), '\"forged\"')"
)
INSERT_DLQ = (
    "INSERT INTO job_dlq (pool, original_job_id, app_id, type, payload, error_reason,"
    " attempts) VALUES ('emails', gen_random_uuid(), $1, 'send_email', '{}', 'x', 1)"
)


async def test_raw_insert_of_another_tenants_job_is_rejected_by_the_policy(
    app: App, conn: asyncpg.Connection, data: dict[str, TenantData]
) -> None:
    before = await owner_counts(conn, "globex")
    raw = await app.connect("acme")
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match=RLS_VIOLATION):
            await raw.execute(INSERT_JOB, "globex")
        # The same statement for the role's own tenant is allowed (then rolled back):
        # it was the policy that refused, not a missing grant.
        async with rolled_back(raw):
            assert await raw.execute(INSERT_JOB, "acme") == "INSERT 0 1"
    finally:
        await raw.close()
    assert await owner_counts(conn, "globex") == before


async def test_raw_purge_for_all_tenants_purges_only_the_roles_tenant(
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
        assert await raw.execute("DELETE FROM job_dlq") == "DELETE 0"
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


async def test_a_role_bound_to_two_tenants_switches_between_those_only(
    make_role: MakeRole, conn: asyncpg.Connection, data: dict[str, TenantData]
) -> None:
    both = await make_role(RoleKind.CLIENT, ["acme", "globex"])
    for tenant in ("acme", "globex"):
        raw = await both.connect(tenant)
        try:
            assert await visible_counts(raw) == await owner_counts(conn, tenant)
            await raw.execute("SET jobpool.tenant = 'initech'")
            assert await visible_counts(raw) == {table: 0 for table in TABLES}
        finally:
            await raw.close()


async def test_a_trusted_application_role_may_name_any_tenant(
    make_role: MakeRole, conn: asyncpg.Connection, data: dict[str, TenantData]
) -> None:
    """The shared-role mode of before, now chosen explicitly: bound to '*'."""
    trusted = await make_role(RoleKind.CLIENT, ["*"])
    raw = await trusted.connect("globex")
    try:
        assert await visible_counts(raw) == await owner_counts(conn, "globex")
        await raw.execute("SET jobpool.tenant = 'acme'")
        assert await visible_counts(raw) == await owner_counts(conn, "acme")
    finally:
        await raw.close()


async def test_a_client_role_bound_to_no_tenant_reaches_nothing(
    make_role: MakeRole, data: dict[str, TenantData]
) -> None:
    unbound = await make_role(RoleKind.CLIENT, None)
    async with unbound.client("acme") as jp:
        with pytest.raises(AccessDenied, match="may not submit jobs for tenant 'acme'"):
            await jp.submit("send_email", {"to": "a@example.com"})
        with pytest.raises(JobNotFound):
            await jp.status(data["acme"].queued[0])
        assert (await jp.dlq.list()).entries == ()


async def test_a_role_seeing_the_tenant_map_sees_only_its_own_bindings(
    app: App, make_role: MakeRole
) -> None:
    await make_role(RoleKind.CLIENT, ["globex"])
    raw = await app.connect("acme")
    try:
        rows = await raw.fetch("SELECT tenant, role::text FROM jobpool_tenant_roles")
    finally:
        await raw.close()
    assert [tuple(r) for r in rows] == [("acme", app.role)]


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


async def test_a_client_of_a_tenant_its_role_is_not_bound_to_reaches_nothing(
    app: App, conn: asyncpg.Connection, data: dict[str, TenantData]
) -> None:
    before = await snapshot(conn, "globex")
    async with app.client("globex") as jp:
        with pytest.raises(JobNotFound):
            await jp.status(data["globex"].queued[0])
        with pytest.raises(JobNotFound):
            await jp.cancel(data["globex"].queued[0])
        assert (await jp.dlq.list()).entries == ()
        assert await jp.dlq.purge(older_than=timedelta(0)) == 0
        with pytest.raises(AccessDenied):
            await jp.submit("send_email", {"to": "b@example.com"})
    assert await snapshot(conn, "globex") == before


async def test_client_as_acme_runs_its_own_jobs_under_rls(
    app: App, make_role: MakeRole, pool: Pool, data: dict[str, TenantData]
) -> None:
    """The role has every grant it needs: RLS narrows what it sees, not what it may do;
    and a worker role serves every tenant."""
    worker_role = await make_role(RoleKind.WORKER)
    worker_conn = await asyncpg.connect(worker_role.dsn)
    try:
        worker = await FakeWorker(worker_conn, pool=pool.name).start()
        async with app.client("acme") as jp:
            assert (await jp.status(data["acme"].succeeded[0])).state is JobState.SUCCEEDED
            assert await jp.cancel(data["acme"].queued[0]) is CancelOutcome.CANCELLED
            assert (await jp.status(data["acme"].queued[0])).state is JobState.CANCELLED
            job = await jp.submit("send_email", {"to": "a@example.com"})
            running = await jp.submit("send_email", {"to": "b@example.com"})
            replay = await jp.dlq.replay(data["acme"].dlq_pending[0])
            claimed = {c.id for c in await worker.claim()}
            assert {job.id, running.id, replay.id, *data["globex"].queued} <= claimed
            assert await jp.cancel(running.id) is CancelOutcome.CANCEL_REQUESTED
            assert (await jp.status(running.id)).cancel_requested
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
    finally:
        await worker_conn.close()


async def test_same_role_bound_to_globex_sees_only_globex(
    make_role: MakeRole, conn: asyncpg.Connection, data: dict[str, TenantData]
) -> None:
    globex_app = await make_role(RoleKind.CLIENT, ["globex"])
    globex, acme = data["globex"], data["acme"]
    async with globex_app.client("globex") as jp:
        async with jp.connection() as session:
            assert await visible_counts(session) == await owner_counts(conn, "globex")
        assert (await jp.status(globex.queued[0])).tenant == "globex"
        assert (await jp.status(globex.dead[0])).state is JobState.DEAD
        with pytest.raises(JobNotFound):
            await jp.status(acme.queued[0])
        assert [e.id for e in (await jp.dlq.list()).entries] == globex.dlq_pending
        with pytest.raises(DlqEntryNotFound):
            await jp.dlq.get(acme.dlq_pending[0])
