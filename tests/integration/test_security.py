"""The attacks of issue 10, each as a test, and the properties that close them.

Raw SQL runs as the suite's login roles (``pg.LOGIN_ROLES``: members of one jobpool
group role each, nothing more) or as the superuser where a test shows that even a
row written past every grant is refused by a CHECK constraint. Property tests
(hypothesis) run random client inputs through the client and random writes through a
client role's raw SQL.
"""

from __future__ import annotations

import asyncio
import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import pg
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobpool import Client
from jobpool.errors import (
    InvalidDsn,
    InvalidInput,
    InvalidJobType,
    InvalidSchedule,
    MigrationRolesMissing,
)
from jobpool.models import Pool
from jobpool.store.connect import connect
from jobpool.store.migrate import migrate
from jobpool.store.roles import RoleKind, role_grant

TENANT = "acme"
HYPOTHESIS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest_asyncio.fixture(loop_scope="session")
async def client_conn(conn: asyncpg.Connection, dsn: str, pool: Pool) -> asyncpg.Connection:
    """A raw connection as the suite's client role, bound to ``acme`` only."""
    await role_grant(conn, pg.CLIENT, RoleKind.CLIENT, tenants=[TENANT])
    raw = await asyncpg.connect(
        pg.as_role(dsn, pg.CLIENT), server_settings={"jobpool.tenant": TENANT}
    )
    yield raw
    await raw.close()


INSERT = (
    "INSERT INTO jobs (id, pool, tenant, shard, type, priority, payload, run_at, max_attempts)"
    " VALUES (gen_random_uuid(), 'emails', 'acme', 0, $1, 1, $2::jsonb, $3, $4)"
)
GOOD = ("send_email", "{}", datetime(2030, 1, 1, tzinfo=UTC), None)


# -- attack 3: one job stalls a pool -------------------------------------------------


@pytest.mark.parametrize(
    "run_at",
    [
        datetime.max.replace(tzinfo=UTC),
        datetime.min.replace(tzinfo=UTC),
        datetime(9999, 12, 31, 23, tzinfo=timezone(-timedelta(hours=5))),
        datetime(1969, 12, 31, 23, tzinfo=UTC),
        datetime(3000, 1, 1, tzinfo=UTC),
    ],
)
async def test_attack_run_at_out_of_range_is_refused_by_the_client(
    client: Client, conn: asyncpg.Connection, run_at: datetime
) -> None:
    with pytest.raises(InvalidSchedule, match="run_at must be from"):
        await client.submit("send_email", {}, run_at=run_at)
    assert await conn.fetchval("SELECT count(*) FROM jobs") == 0


@pytest.mark.parametrize("run_at", ["infinity", "-infinity", "0001-01-01", "5000-01-01"])
async def test_attack_run_at_out_of_range_is_refused_by_the_database(
    client_conn: asyncpg.Connection, conn: asyncpg.Connection, run_at: str
) -> None:
    """Whoever writes it: a client role, or the superuser past every grant."""
    statement = INSERT.replace("$3", f"'{run_at}'::timestamptz").replace("$4", "$3")
    for writer in (client_conn, conn):
        with pytest.raises(asyncpg.CheckViolationError, match="jobs_run_at_sane"):
            await writer.execute(statement, "send_email", "{}", None)


# -- attack 4: clients write what only workers should --------------------------------


@pytest.mark.parametrize(
    ("args", "constraint"),
    [
        (("send\nemail", *GOOD[1:]), "jobs_type_valid"),
        (("", *GOOD[1:]), "jobs_type_valid"),
        (("x" * 129, *GOOD[1:]), "jobs_type_valid"),
        ((GOOD[0], '"' + "x" * 16_777_216 + '"', *GOOD[2:]), "jobs_payload_size"),
        ((*GOOD[:3], 2**31 - 1), "jobs_max_attempts_sane"),
    ],
)
async def test_attack_rows_the_client_would_refuse_are_refused_by_the_database(
    client_conn: asyncpg.Connection, args: tuple[Any, ...], constraint: str
) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match=constraint):
        await client_conn.execute(INSERT, *args)
    assert await client_conn.execute(INSERT, *GOOD) == "INSERT 0 1"


async def test_the_database_refuses_a_queued_job_holding_a_worker(
    conn: asyncpg.Connection,
) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match="jobs_worker_owned"):
        await conn.execute(
            "INSERT INTO jobs (id, pool, tenant, shard, type, priority, payload, worker)"
            " VALUES (gen_random_uuid(), 'emails', 'acme', 0, 't', 1, '{}', 'forged')"
        )


@st.composite
def raw_writes(draw: st.DrawFn) -> str:
    """A write a hostile client role might try on a table jobpool owns."""
    table = draw(st.sampled_from(["jobs", "job_history", "job_dlq", "pools", "shard_leases",
                                  "workers", "lease_history", "jobpool_tenant_roles",
                                  "jobpool_migrations"]))  # fmt: skip
    column = draw(st.sampled_from(["state", "worker", "lease_epoch", "attempts", "tenant",
                                   "result", "type", "payload", "owner", "epoch", "role",
                                   "replicas", "error_history", "started_at"]))  # fmt: skip
    verb = draw(st.sampled_from(["UPDATE", "DELETE", "TRUNCATE", "INSERT", "ALTER", "DROP"]))
    return {
        "UPDATE": f"UPDATE {table} SET {column} = NULL",
        "DELETE": f"DELETE FROM {table} WHERE {column} IS NULL",
        "TRUNCATE": f"TRUNCATE {table}",
        "INSERT": f"INSERT INTO {table} ({column}) VALUES (NULL)",
        "ALTER": f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY",
        "DROP": f"DROP TABLE {table}",
    }[verb]


@HYPOTHESIS
@given(statement=raw_writes())
async def test_property_a_client_role_cannot_write_beyond_its_grants(
    client_conn: asyncpg.Connection, statement: str
) -> None:
    """Every write outside the client's few grants is refused outright (privilege,
    ownership, an unknown column or a NULL); the one that may pass, a DELETE of dead
    letters, reaches replayed entries of the client's tenant only (none here)."""
    transaction = client_conn.transaction()
    await transaction.start()
    try:
        await client_conn.execute(statement)
    except (
        asyncpg.InsufficientPrivilegeError,
        asyncpg.UndefinedColumnError,
        asyncpg.NotNullViolationError,
    ):
        pass
    except asyncpg.PostgresError as exc:
        pytest.fail(f"{statement!r} failed otherwise: {type(exc).__name__}: {exc}")
    else:
        assert statement.startswith("DELETE FROM job_dlq"), statement
    finally:
        await transaction.rollback()


# -- roles: nothing needs the owner at run time --------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "ALTER TABLE jobs DISABLE ROW LEVEL SECURITY",
        "DROP POLICY worker_all ON jobs",
        "INSERT INTO jobpool_tenant_roles VALUES ('*', current_user)",
        "TRUNCATE jobs",
        "UPDATE pools SET replicas = 9",
    ],
)
async def test_a_worker_role_can_neither_lift_rls_nor_change_the_ring(
    worker_dsn: str, pool: Pool, statement: str
) -> None:
    worker = await asyncpg.connect(worker_dsn)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await worker.execute(statement)
    finally:
        await worker.close()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE jobs SET state = 'queued'",
        "DELETE FROM jobs",
        "INSERT INTO job_history (id) VALUES (gen_random_uuid())",
        "UPDATE shard_leases SET epoch = epoch + 1",
    ],
)
async def test_an_operator_role_reads_but_does_not_run_jobs(
    operator_dsn: str, pool: Pool, statement: str
) -> None:
    operator = await asyncpg.connect(operator_dsn)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await operator.execute(statement)
    finally:
        await operator.close()


async def test_migrate_as_a_non_owner_with_nothing_pending_writes_nothing(
    operator_dsn: str, worker_dsn: str
) -> None:
    for role_dsn in (operator_dsn, worker_dsn):
        role_conn = await asyncpg.connect(role_dsn)
        try:
            assert await migrate(role_conn) == []
        finally:
            await role_conn.close()


async def test_migrate_without_createrole_names_what_is_missing(
    conn: asyncpg.Connection, empty_dsn: str
) -> None:
    """The group roles exist (cluster-wide): a plain role migrating a fresh database is
    told it must be a member of jobpool_owner, and nothing is applied."""
    role = pg.random_name("jp_mig_")
    await pg.create_login_role(conn, role, "pw", groups=())
    try:
        migrating = await asyncpg.connect(pg.with_user(empty_dsn, role, "pw"))
        try:
            with pytest.raises(MigrationRolesMissing, match=f"GRANT jobpool_owner TO {role}"):
                await migrate(migrating)
            assert await migrating.fetchval("SELECT to_regclass('jobs')") is None
        finally:
            await migrating.close()
    finally:
        await conn.execute(f"DROP ROLE {role}")


# -- NOTIFY is a hint ----------------------------------------------------------------


async def test_a_cancel_notification_carries_no_job_id(
    client: Client, conn: asyncpg.Connection
) -> None:
    job = await client.submit("send_email", {})
    await conn.execute(
        "UPDATE jobs SET state = 'running', worker = 'w', lease_epoch = 1 WHERE id = $1", job.id
    )
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(client.dsn)
    try:
        await listener.add_listener("jp:emails", lambda *args: heard.put_nowait(args[3]))
        await client.cancel(job.id)
        payload = await asyncio.wait_for(heard.get(), 10)
    finally:
        await listener.close()
    assert str(job.id) not in payload


# -- attack 7 and item 8: typed errors, no leaked password ---------------------------


PASSWORDS = st.text(string.ascii_letters + string.digits + "!$&()*+,;=-._~/@:", min_size=6).map(
    lambda text: f"Pw{text}"
)


@HYPOTHESIS
@given(
    password=PASSWORDS,
    form=st.sampled_from(
        [
            "jobpool:{p}@127.0.0.1:55432/jobpool",
            "postgresql://jobpool:{p}@127.0.0.1:99999/jobpool",
            "postgresql://jobpool:{p}@[::1/jobpool",
            "postgres://jobpool:{p}@h:x/db",
            "host=h password={p} port=notaport",
            "postgresql://jobpool@h:1/db?password={p}&port=99999",
            "mysql://jobpool:{p}@h/db",
        ]
    ),
)
async def test_property_a_malformed_dsn_never_prints_its_password(password: str, form: str) -> None:
    dsn = form.format(p=password)
    with pytest.raises((InvalidDsn, ConnectionError)) as caught:
        await connect(dsn, timeout=1)
    assert password not in str(caught.value)


async def test_item_8_inputs_get_typed_errors(client: Client) -> None:
    with pytest.raises(InvalidInput, match="max_attempts"):
        await client.submit("send_email", {}, max_attempts=2**40)
    with pytest.raises(InvalidInput, match="limit"):
        await client.dlq.list(limit=1.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidJobType):
        await client.dlq.list(type="a\x00")
    with pytest.raises(InvalidInput, match="older_than"):
        await client.dlq.purge(older_than=timedelta.max)
    with pytest.raises(InvalidInput, match="max_payload_bytes"):
        Client(client.dsn, pool="emails", tenant=TENANT, max_payload_bytes=2**40)
    job = await client.submit("send_email", {"a": "\\u0000"})  # an escaped backslash
    assert (await client.status(job.id)).state.value == "queued"


@HYPOTHESIS
@given(
    run_at=st.datetimes(timezones=st.timezones()),
    max_attempts=st.one_of(st.none(), st.integers(-(2**70), 2**70)),
)
async def test_property_client_inputs_are_stored_or_refused_with_a_typed_error(
    client: Client, run_at: datetime, max_attempts: int | None
) -> None:
    try:
        job = await client.submit("send_email", {}, run_at=run_at, max_attempts=max_attempts)
    except InvalidInput:
        return
    assert job.run_at == run_at
