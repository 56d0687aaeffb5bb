"""History retention against a real Postgres: job_history partitioned by day of finish.

Partitions are made ahead, a job finishing on a day without one lands in the default
partition (and maintenance moves it into its day), days past the longest retention of
any pool are dropped whole, a pool keeping less loses its rows past its own retention,
and the status of a job whose history was dropped says so. The clock moves through
``history_maintain(at=...)`` (the owner-only ``jobpool_history_maintain_at``); jobs end
through ``FakeWorker``, the store functions a worker runs. Row-level security through
the parent and refusal on a partition are proved under real, unprivileged roles.
"""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pg
import pytest
from worker_helpers import FakeWorker

from jobpool import Client, JobState
from jobpool.dev.session import DevOptions, Supervisor
from jobpool.dev.view import Output
from jobpool.errors import InvalidInput, JobHistoryDropped, JobNotFound
from jobpool.ids import job_id_time, new_job_id
from jobpool.models import JobId, Pool
from jobpool.store.history import (
    HISTORY_DAYS_AHEAD,
    history_maintain,
    history_partition_list,
    history_retention_get,
    history_retention_set,
    history_since,
)
from jobpool.store.migrate import MIGRATIONS_DIR, migrate
from jobpool.store.pools import pool_ensure
from jobpool.store.queries import QUERIES
from jobpool.store.roles import RoleKind, role_grant

DAY = timedelta(days=1)


def _midnight(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


async def _partition_of(conn: asyncpg.Connection, job_id: JobId) -> str:
    return await conn.fetchval(
        "SELECT tableoid::regclass::text FROM job_history WHERE id = $1", job_id
    )


async def _finished(client: Client, worker: FakeWorker, count: int = 1) -> list[JobId]:
    jobs = await client.submit("send_email", [{"n": n} for n in range(count)])
    await worker.claim_all(jobs)
    return await worker.succeed(jobs, {"sent": True})


async def test_partitions_of_the_coming_days_exist(conn: asyncpg.Connection) -> None:
    await history_maintain(conn)
    partitions = await history_partition_list(conn)
    today = _midnight(datetime.now(UTC))
    starts = {p.starts_at for p in partitions}
    for ahead in range(1, HISTORY_DAYS_AHEAD + 1):
        assert today + ahead * DAY in starts
    # The history before the migration is one partition, up to the day after it.
    [until] = [p for p in partitions if p.starts_at is None]
    assert until.name.startswith("job_history_until_")
    assert until.ends_at > today

    again = await history_maintain(conn)

    assert (again.created, again.dropped, again.deleted) == (0, 0, 0)


async def test_days_past_the_retention_are_dropped_and_status_says_so(
    conn: asyncpg.Connection, client: Client
) -> None:
    worker = await FakeWorker(conn).start()
    [old] = await _finished(client, worker)
    never = new_job_id()
    now = datetime.now(UTC)

    within = await history_maintain(conn, at=now + 6 * DAY)
    assert within.dropped == 0
    assert (await client.status(old)).state is JobState.SUCCEEDED
    with pytest.raises(JobNotFound) as unknown:
        await client.status(never)
    assert type(unknown.value) is JobNotFound

    past = await history_maintain(conn, at=now + 9 * DAY)

    assert past.dropped >= 1
    assert past.skipped == 0
    assert await conn.fetchval("SELECT count(*) FROM job_history") == 0
    with pytest.raises(JobHistoryDropped, match=r"were dropped .*keeps finished jobs for 7 days"):
        await client.status(old)
    with pytest.raises(JobHistoryDropped):
        await client.result(old, timeout=5)
    # Days before the retention window are gone; those ahead of the new clock exist.
    partitions = await history_partition_list(conn)
    assert min(p.ends_at for p in partitions) > now + 2 * DAY
    assert _midnight(now + 12 * DAY) in {p.starts_at for p in partitions}


async def test_a_job_finishing_on_a_day_without_a_partition_lands_in_the_default_one(
    conn: asyncpg.Connection, client: Client
) -> None:
    """The operator was down: nothing made today's partition. Finishing still works,
    and the next maintenance pass moves the row into a partition of its day."""
    await history_maintain(conn, at=datetime.now(UTC) + 9 * DAY)  # drops today's range
    worker = await FakeWorker(conn).start()

    [job] = await _finished(client, worker)

    assert await _partition_of(conn, job) == "job_history_default"
    assert (await client.status(job)).result == {"sent": True}
    done = await history_maintain(conn)
    assert done.created >= 1
    today = datetime.now(UTC).strftime("%Y%m%d")
    assert await _partition_of(conn, job) == f"job_history_{today}"
    assert await conn.fetchval("SELECT count(*) FROM job_history_default") == 0
    assert (await client.status(job)).state is JobState.SUCCEEDED


async def test_a_pool_keeping_less_loses_only_its_own_rows(
    conn: asyncpg.Connection, dsn: str, client: Client, pool: Pool
) -> None:
    await pool_ensure(conn, "reports", shards=pool.shards)
    assert await history_retention_set(conn, "reports", timedelta(days=1))
    assert not await history_retention_set(conn, "reports", timedelta(days=1))
    emails_worker = await FakeWorker(conn).start()
    reports_worker = await FakeWorker(conn, pool="reports").start()
    [kept] = await _finished(client, emails_worker)
    async with Client(dsn, pool="reports", tenant="acme") as reports:
        [gone] = await _finished(reports, reports_worker)

        done = await history_maintain(conn, at=datetime.now(UTC) + 2 * DAY)

        assert (done.dropped, done.deleted) == (0, 1)
        with pytest.raises(JobHistoryDropped, match="keeps finished jobs for 1 day\\)"):
            await reports.status(gone)
    assert (await client.status(kept)).state is JobState.SUCCEEDED
    retention = await history_retention_get(conn, "reports")
    assert retention.retention == timedelta(days=1)
    assert retention.pruned_before is not None
    assert retention.pruned_before > job_id_time(gone)


@pytest.mark.parametrize("retention", [timedelta(minutes=59), timedelta(days=3651), 7])
async def test_a_retention_out_of_range_is_refused(
    conn: asyncpg.Connection, pool: Pool, retention: Any
) -> None:
    with pytest.raises(InvalidInput, match="history retention must be from 1 hour to 3650 days"):
        await history_retention_set(conn, pool.name, retention)


def _id_at(moment: datetime) -> JobId:
    """A job id made at ``moment`` (a submitter whose clock says so)."""
    ms = int(moment.timestamp() * 1000)
    return JobId(uuid.UUID(int=(new_job_id().int & ((1 << 80) - 1)) | (ms << 80)))


def _scanned(plan: dict[str, Any]) -> list[tuple[str, str]]:
    found = [(plan["Node Type"], plan["Relation Name"])] if "Relation Name" in plan else []
    for child in plan.get("Plans", []):
        found += _scanned(child)
    return found


async def test_status_probes_only_the_days_since_the_job_by_index(
    conn: asyncpg.Connection, pool: Pool
) -> None:
    later = datetime.now(UTC) + 10 * DAY
    await history_maintain(conn, at=later)
    job_id = _id_at(later + 2 * DAY)
    await conn.execute(
        "INSERT INTO job_history (id, pool, tenant, shard, type, priority, state, payload,"
        " attempts, created_at, finished_at) VALUES ($1, $2, 'acme', 0, 'send_email', 1,"
        " 'succeeded', '{}', 1, $3, $3)",
        job_id,
        pool.name,
        later + 2 * DAY,
    )
    # Thousands of rows in each probed partition (the default one too: past the last),
    # so that the planner's choice is the one a real history gets.
    await conn.execute(
        "INSERT INTO job_history (id, pool, tenant, shard, type, priority, state, payload,"
        " attempts, created_at, finished_at) SELECT gen_random_uuid(), $1, 't' || g % 8,"
        " g % 16, 'send_email', 1, 'succeeded', '{}', 1, $2,"
        " $2::timestamptz + (g % 4 + 1) * interval '1 day' FROM generate_series(1, 20000) AS g",
        pool.name,
        later,
    )
    await conn.execute("ANALYZE job_history")
    args = QUERIES.bind(
        "job_status", id=job_id, pool=pool.name, tenant="acme", history_since=history_since(job_id)
    )[1:]
    plan = json.loads(await conn.fetchval("EXPLAIN (FORMAT JSON) " + QUERIES["job_status"], *args))
    scanned = _scanned(plan[0]["Plan"])

    history = [(node, rel) for node, rel in scanned if rel.startswith("job_history")]
    assert {rel for _, rel in history} == {
        "job_history_default",
        *(
            f"job_history_{(later + n * DAY).strftime('%Y%m%d')}"
            for n in range(1, HISTORY_DAYS_AHEAD + 1)
        ),
    }, scanned
    assert all(node.startswith("Index") for node, _ in scanned), scanned
    assert (await conn.fetchrow(QUERIES["job_status"], *args))["id"] == job_id


# -- the migration keeps the history it finds --------------------------------------------


async def test_the_history_before_the_migration_survives_it(
    empty_dsn: str, tmp_path: Path
) -> None:
    before = tmp_path / "migrations"
    before.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if path.name < "0005":
            shutil.copy(path, before / path.name)
    conn = await asyncpg.connect(empty_dsn)
    try:
        await migrate(conn, directory=before)
        ids = [_id_at(datetime.now(UTC) - 30 * DAY) for _ in range(3)]
        await conn.execute(
            "INSERT INTO job_history (id, pool, tenant, shard, type, priority, state, payload,"
            " attempts, created_at, finished_at, result)"
            " SELECT id, 'emails', 'acme', 0, 'send_email', 1, 'succeeded', '{}', 1,"
            " now() - interval '30 days', now() - n * interval '10 days', to_jsonb(n)"
            " FROM unnest($1::uuid[]) WITH ORDINALITY AS t (id, n)",
            ids,
        )

        await migrate(conn)
        await pool_ensure(conn, "emails", shards=4)

        kept = await conn.fetch(
            "SELECT id, result::int AS n, tableoid::regclass::text AS part FROM job_history"
            " ORDER BY n"
        )
        assert [(row["id"], row["n"]) for row in kept] == list(zip(ids, [1, 2, 3], strict=True))
        assert {row["part"] for row in kept} == {
            (await history_partition_list(conn))[0].name
        }
    finally:
        await conn.close()
    async with Client(empty_dsn, pool="emails", tenant="acme") as client:
        assert (await client.status(ids[0])).result == 1


# -- who reaches what ---------------------------------------------------------------------


async def test_rls_applies_through_the_parent_and_partitions_are_refused(
    conn: asyncpg.Connection, dsn: str, pool: Pool
) -> None:
    worker = await FakeWorker(conn).start()
    async with (
        Client(dsn, pool=pool.name, tenant="acme") as acme,
        Client(dsn, pool=pool.name, tenant="globex") as globex,
    ):
        mine = await _finished(acme, worker, 2)
        await _finished(globex, worker, 3)
    partitions = [p.name for p in await history_partition_list(conn)] + ["job_history_default"]
    role = f"jp_hist_{uuid.uuid4().hex[:12]}"
    await pg.create_login_role(conn, role, "pw-" + role, groups=())
    await role_grant(conn, role, RoleKind.CLIENT, tenants=["acme"])
    try:
        raw = await asyncpg.connect(
            pg.with_user(dsn, role, "pw-" + role), server_settings={"jobpool.tenant": "acme"}
        )
        try:
            seen = await raw.fetch("SELECT id FROM job_history")
            assert sorted(row["id"] for row in seen) == sorted(mine)
            await raw.execute("SELECT set_config('jobpool.tenant', 'globex', false)")
            assert await raw.fetchval("SELECT count(*) FROM job_history") == 0
            for name in partitions:
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await raw.fetch(f"SELECT * FROM {pg.quote_ident(name)}")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await raw.fetch("SELECT * FROM jobpool_history_maintain(3)")
        finally:
            await raw.close()
    finally:
        await conn.execute("DELETE FROM jobpool_tenant_roles WHERE role = $1", role)
        await conn.execute(f"DROP ROLE {pg.quote_ident(role)}")
    for dsn_as in (pg.as_role(dsn, pg.WORKER), pg.as_role(dsn, pg.OPERATOR)):
        raw = await asyncpg.connect(dsn_as)
        try:
            assert await raw.fetchval("SELECT count(*) FROM job_history") == 5
            for name in partitions:
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await raw.fetch(f"SELECT * FROM {pg.quote_ident(name)}")
        finally:
            await raw.close()


async def test_the_operator_role_maintains_but_cannot_move_the_clock(
    operator_dsn: str, pool: Pool
) -> None:
    raw = await asyncpg.connect(operator_dsn)
    try:
        done = await history_maintain(raw)
        assert done.skipped == 0
        assert len(await history_partition_list(raw)) >= HISTORY_DAYS_AHEAD
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await history_maintain(raw, at=datetime.now(UTC) + 30 * DAY)
        assert await history_retention_set(raw, pool.name, timedelta(days=30))
    finally:
        await raw.close()


# -- jobpool dev does it by itself ---------------------------------------------------------


async def test_the_dev_supervisor_keeps_the_history(
    conn: asyncpg.Connection, dsn: str, pool: Pool, tmp_path: Path
) -> None:
    """Its first refresh runs maintenance: a missing partition of the coming days is
    made again, and finished jobs past retention are dropped with a line saying so."""
    *later, until = sorted(await history_partition_list(conn), key=lambda p: p.name)
    for partition in (later[-1], until):
        await conn.execute(f"DROP TABLE {partition.name}")
    await history_maintain(conn, at=datetime.now(UTC) - 21 * DAY)  # four days, long past
    options = DevOptions(
        app="app:registry", pool=pool.name, replicas=0, shards=pool.shards, concurrency=1,
        metrics_port=0, data_dir=tmp_path, dsn=dsn, live=False,
    )  # fmt: skip
    events: list[str] = []
    out = Output(live=False)
    out.event = events.append  # type: ignore[method-assign]
    supervisor = Supervisor(options, dsn, pool, tmp_path / "logs", out)

    await supervisor.refresh()

    names = {p.name for p in await history_partition_list(conn)}
    assert later[-1].name in names
    assert events == [
        "history: dropped 4 day(s) past retention, deleted 0 finished job(s) of pools keeping less"
    ]
    await supervisor.refresh()  # not again before the hour is out
    assert len(events) == 1
