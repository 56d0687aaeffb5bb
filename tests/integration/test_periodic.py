"""Periodic jobs against a real Postgres, on a fake clock: exactly one job per tick
however many enqueuers race, never again once the tick's job finished, no burst of
missed ticks after downtime (unless ``catch_up``), and schedules declared by code and by
the spec. Enqueuers are ``PeriodicService``s connected as the worker role."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import datetime, timedelta

import asyncpg
import pg
import pytest
import pytest_asyncio
from worker_runtime_helpers import POOL, running_worker

from jobpool.cron import CATCH_UP_LIMIT, Schedule
from jobpool.models import Pool, Priority
from jobpool.store.connect import create_pool
from jobpool.store.roles import RoleKind, role_grant
from jobpool.store.schedules import ScheduleSource, schedule_enqueue, schedule_list, schedule_sync
from jobpool.store.stats import db_now
from jobpool.worker import Registry
from jobpool.worker.periodic import SYNC_INTERVAL_S, PeriodicService

_TEST = {"loop_scope": "session", "scope": "function"}
ENQUEUERS = 6

EVERY_MINUTE = Schedule(name="minutely", cron="* * * * *", type="report", payload={"n": 1})


@pytest_asyncio.fixture(**_TEST)
async def worker_conns(dsn: str, pool: Pool) -> AsyncIterator[list[asyncpg.Pool]]:
    """``ENQUEUERS`` connection pools as the worker role, one per would-be replica."""
    async with AsyncExitStack() as stack:
        conns = []
        for _ in range(ENQUEUERS):
            conns.append(await create_pool(pg.as_role(dsn, pg.WORKER), min_size=1, max_size=2))
            stack.push_async_callback(conns[-1].close)
        yield conns


def services(conns: list[asyncpg.Pool], *declared: Schedule) -> list[PeriodicService]:
    """One active service per connection pool, each declaring ``declared``."""
    return [PeriodicService(c, pool=POOL, declared=declared, active=lambda: True) for c in conns]


async def jobs_by_key(conn: asyncpg.Connection) -> dict[str, int]:
    """Jobs of every periodic tick, finished or not, counted by dedupe key."""
    rows = await conn.fetch(
        "SELECT dedupe_key, count(*) AS jobs FROM ("
        " SELECT dedupe_key FROM jobs UNION ALL SELECT dedupe_key FROM job_history"
        ") j WHERE dedupe_key LIKE 'periodic:%' GROUP BY dedupe_key"
    )
    return {row["dedupe_key"]: row["jobs"] for row in rows}


async def test_racing_enqueuers_make_exactly_one_job_per_tick(
    conn: asyncpg.Connection, worker_conns: list[asyncpg.Pool]
) -> None:
    racers = services(worker_conns, EVERY_MINUTE)
    start = await db_now(conn)
    await racers[0].run_once(start)  # declares the schedule: ticks from now on
    minutes = [start + timedelta(minutes=m, seconds=1) for m in range(1, 6)]

    for now in minutes:
        results = await asyncio.gather(*(racer.run_once(now) for racer in racers))
        assert sum(len(r) for r in results) == 1, f"{now}: {results}"

    counts = await jobs_by_key(conn)
    assert len(counts) == len(minutes)
    assert set(counts.values()) == {1}
    row = (await schedule_list(conn, POOL))[0]
    assert row.last_tick == minutes[-1].replace(second=0, microsecond=0)


async def test_a_tick_whose_job_finished_is_never_enqueued_again(
    conn: asyncpg.Connection, worker_conns: list[asyncpg.Pool]
) -> None:
    (service,) = services(worker_conns[:1], EVERY_MINUTE)
    start = await db_now(conn)
    await service.run_once(start)
    now = start + timedelta(minutes=1)
    (first,) = await service.run_once(now)
    # The job finishes: its dedupe key is free again (unique only among unfinished jobs).
    await conn.execute("DELETE FROM jobs WHERE id = $1", first.job_id)

    assert await service.run_once(now) == []
    assert await schedule_enqueue(conn, POOL, EVERY_MINUTE.name, [first.tick], shards=16) == []
    assert await jobs_by_key(conn) == {}


async def test_after_downtime_only_the_latest_missed_tick_is_enqueued(
    conn: asyncpg.Connection, worker_conns: list[asyncpg.Pool]
) -> None:
    (service,) = services(worker_conns[:1], EVERY_MINUTE)
    start = await db_now(conn)
    await service.run_once(start)
    a_day_later = (start + timedelta(days=1)).replace(second=1)

    (tick,) = await service.run_once(a_day_later)

    assert tick.tick == a_day_later.replace(second=0, microsecond=0)
    assert await service.run_once(a_day_later + timedelta(seconds=30)) == []


async def test_catch_up_enqueues_every_missed_tick_in_bounded_steps(
    conn: asyncpg.Connection, worker_conns: list[asyncpg.Pool]
) -> None:
    catching_up = EVERY_MINUTE.model_copy(update={"catch_up": True})
    (service,) = services(worker_conns[:1], catching_up)
    start = await db_now(conn)
    await service.run_once(start)
    later = start + timedelta(minutes=CATCH_UP_LIMIT + 20, seconds=1)

    first = await service.run_once(later)
    second = await service.run_once(later)

    assert len(first) == CATCH_UP_LIMIT
    assert len(second) == 20
    assert await service.run_once(later) == []
    ticks = [t.tick for t in first + second]
    assert ticks == sorted(set(ticks))
    assert all(b - a == timedelta(minutes=1) for a, b in itertools.pairwise(ticks))


async def test_an_inactive_service_neither_declares_nor_enqueues(
    conn: asyncpg.Connection, worker_conns: list[asyncpg.Pool]
) -> None:
    service = PeriodicService(
        worker_conns[0], pool=POOL, declared=[EVERY_MINUTE], active=lambda: False
    )
    now = await db_now(conn)
    assert await service.run_once(now + timedelta(hours=1)) == []
    assert await schedule_list(conn, POOL) == []


async def test_a_spec_schedule_overrides_a_code_one_and_each_source_syncs_its_own(
    conn: asyncpg.Connection, pool: Pool
) -> None:
    nightly = Schedule(name="nightly", cron="0 3 * * *", type="report")
    spec_nightly = nightly.model_copy(update={"cron": "30 4 * * *", "timezone": "Europe/Paris"})
    other = Schedule(name="other", cron="*/5 * * * *", type="report")
    await schedule_sync(conn, POOL, ScheduleSource.CODE, [nightly, other])
    await schedule_sync(conn, POOL, ScheduleSource.SPEC, [spec_nightly])
    await schedule_sync(conn, POOL, ScheduleSource.CODE, [nightly, other])  # cannot undo it

    rows = {row.schedule.name: row for row in await schedule_list(conn, POOL)}
    assert rows["nightly"].source is ScheduleSource.SPEC
    assert rows["nightly"].schedule == spec_nightly
    assert rows["other"].source is ScheduleSource.CODE

    await schedule_sync(conn, POOL, ScheduleSource.CODE, [nightly])
    await schedule_sync(conn, POOL, ScheduleSource.SPEC, [])
    assert await schedule_list(conn, POOL) == []
    await schedule_sync(conn, POOL, ScheduleSource.CODE, [nightly])
    assert [row.source for row in await schedule_list(conn, POOL)] == [ScheduleSource.CODE]


async def test_a_changed_cron_restarts_the_schedule_but_a_same_definition_does_not(
    conn: asyncpg.Connection, pool: Pool
) -> None:
    await schedule_sync(conn, POOL, ScheduleSource.SPEC, [EVERY_MINUTE])
    (before,) = await schedule_list(conn, POOL)
    await asyncio.sleep(0.01)
    await schedule_sync(conn, POOL, ScheduleSource.SPEC, [EVERY_MINUTE])
    (same,) = await schedule_list(conn, POOL)
    changed = EVERY_MINUTE.model_copy(update={"cron": "*/2 * * * *"})
    await schedule_sync(conn, POOL, ScheduleSource.SPEC, [changed])
    (after,) = await schedule_list(conn, POOL)

    assert same.defined_at == before.defined_at
    assert after.defined_at > before.defined_at


async def test_a_tick_job_carries_the_schedules_type_payload_tenant_and_priority(
    conn: asyncpg.Connection, worker_conns: list[asyncpg.Pool]
) -> None:
    schedule = EVERY_MINUTE.model_copy(update={"tenant": "acme", "priority": Priority.HIGH})
    (service,) = services(worker_conns[:1], schedule)
    start = await db_now(conn)
    await service.run_once(start)
    (tick,) = await service.run_once(start + timedelta(minutes=1))

    row = await conn.fetchrow(
        "SELECT type, payload::text, tenant, priority, run_at, dedupe_key FROM jobs WHERE id = $1",
        tick.job_id,
    )
    assert dict(row) == {
        "type": "report",
        "payload": '{"n": 1}',
        "tenant": "acme",
        "priority": 2,
        "run_at": tick.tick,
        "dedupe_key": f"periodic:minutely:{tick.tick.strftime('%Y-%m-%dT%H:%M:%SZ')}",
    }


@pytest.mark.usefixtures("pool")
async def test_a_worker_runs_its_modules_periodic_jobs(dsn: str, conn: asyncpg.Connection) -> None:
    """The real worker, in real time: a per-second schedule's jobs are enqueued and run."""
    registry = Registry()
    ran: list[datetime] = []
    enough = asyncio.Event()

    @registry.periodic("* * * * * *", payload={"from": "code"})
    @registry.handler("tick")
    async def tick(payload: dict[str, str], ctx: object) -> None:
        ran.append(datetime.now())
        if len(ran) >= 2:
            enough.set()

    async with running_worker(dsn, registry):
        await asyncio.wait_for(enough.wait(), timeout=30)

    counts = await jobs_by_key(conn)
    assert len(counts) >= 2
    assert set(counts.values()) == {1}
    (row,) = await schedule_list(conn, POOL)
    assert (row.source, row.schedule.payload) == (ScheduleSource.CODE, {"from": "code"})


async def test_the_enqueuer_declares_its_modules_schedules_again_every_sync_interval(
    conn: asyncpg.Connection, worker_conns: list[asyncpg.Pool]
) -> None:
    """A spec schedule that overrode a code one and went away: the code one is back at the
    next sync of the worker running the periodic service."""
    (service,) = services(worker_conns[:1], EVERY_MINUTE)
    start = await db_now(conn)
    await service.run_once(start)
    await schedule_sync(conn, POOL, ScheduleSource.SPEC, [EVERY_MINUTE])
    await schedule_sync(conn, POOL, ScheduleSource.SPEC, [])

    await service.run_once(start + timedelta(seconds=SYNC_INTERVAL_S / 2))
    assert await schedule_list(conn, POOL) == []
    await service.run_once(start + timedelta(seconds=SYNC_INTERVAL_S))
    assert [row.source for row in await schedule_list(conn, POOL)] == [ScheduleSource.CODE]


async def test_a_client_role_reads_its_tenants_schedules_and_writes_none(
    conn: asyncpg.Connection, dsn: str, pool: Pool
) -> None:
    """Row-level security on ``schedules``: a client bound to acme sees acme's schedule
    only, and may not declare or move one (only workers and the operator write them)."""
    acme = EVERY_MINUTE.model_copy(update={"name": "acme-report", "tenant": "acme"})
    await schedule_sync(conn, POOL, ScheduleSource.SPEC, [acme, EVERY_MINUTE])
    await role_grant(conn, pg.CLIENT, RoleKind.CLIENT, tenants=["acme"])
    client = await asyncpg.connect(
        pg.as_role(dsn, pg.CLIENT), server_settings={"jobpool.tenant": "acme"}
    )
    try:
        assert [row.schedule.name for row in await schedule_list(client, POOL)] == ["acme-report"]
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await schedule_sync(client, POOL, ScheduleSource.SPEC, [])
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await client.execute("UPDATE schedules SET last_tick = now()")
    finally:
        await client.close()
    owner, rls = await conn.fetchrow(
        "SELECT pg_get_userbyid(relowner), relrowsecurity FROM pg_class WHERE relname = 'schedules'"
    )
    assert (owner, rls) == ("jobpool_owner", True)
