"""Real worker processes need no more than ``jobpool_worker``, ``jobpool ring`` no more
than ``jobpool_operator``: the fleet runs them as the suite's login roles, which own
nothing and are members of that one group role only."""

from __future__ import annotations

import asyncpg
import pg
from acceptance_kit import Fleet, ring_owners, wait_all_finished, wait_for_owners

from jobpool import Client


async def worker_session_roles(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT DISTINCT usename FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name LIKE 'jobpool-worker/%'"
    )
    return {row["usename"] for row in rows}


async def test_workers_run_jobs_as_jobpool_worker_only(
    client: Client, conn: asyncpg.Connection, fleet: Fleet
) -> None:
    await fleet.ring(2)
    workers = [fleet.start(0), fleet.start(1)]
    await wait_for_owners(conn, ring_owners(workers, 2), what="both workers to hold their shards")
    jobs = await client.submit("work", [{"sleep": 0.01}] * 20)
    history = await wait_all_finished(conn, [job.id for job in jobs])
    assert {row["state"] for row in history.values()} == {"succeeded"}

    assert await worker_session_roles(conn) == {pg.WORKER}
    role = await conn.fetchrow(
        "SELECT rolsuper, rolbypassrls, pg_has_role(rolname, 'jobpool_owner', 'MEMBER') AS owner"
        " FROM pg_roles WHERE rolname = $1",
        pg.WORKER,
    )
    assert dict(role) == {"rolsuper": False, "rolbypassrls": False, "owner": False}
