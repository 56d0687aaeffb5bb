"""A worker's start does independent steps at once, and keeps what each one is for.

Its LISTEN connection opens while its connection pool does (start-up waits for one, not
both), so a start whose pool fails must close the LISTEN connection that did open: the
error is the pool's, one line, and no connection is left behind; nor after a start that
fails because its metrics port is taken. A ``jobs`` table that
was never analyzed is analyzed while the ring is read and the leases taken, and still
before the first claim (whose plans would otherwise rest on guesses).
"""

from __future__ import annotations

import asyncio
import socket

import asyncpg
import pg
import pytest
from worker_runtime_helpers import running_worker, worker_settings

from jobpool import Client, Context, Registry
from jobpool.errors import DatabaseUnavailable
from jobpool.worker import Worker
from jobpool.worker.runtime import POOL_MIN_SIZE

DEADLINE_S = 30.0
WORKER_BACKENDS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND usename = $1"
)


async def test_a_start_whose_pool_cannot_open_leaves_no_connection(
    dsn: str, conn: asyncpg.Connection
) -> None:
    # Room for two of the worker's connections (the LISTEN one and the pool's first):
    # the pool's others are refused, so the pool fails once the LISTEN one is up.
    database = await conn.fetchval("SELECT current_database()")
    others = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    )
    await conn.execute(f'ALTER DATABASE "{database}" CONNECTION LIMIT {others + 2}')
    assert POOL_MIN_SIZE > 1

    with pytest.raises(DatabaseUnavailable, match="too many connections"):
        await Worker(worker_settings(dsn), Registry()).run()

    await no_worker_connection(conn)


@pytest.mark.usefixtures("pool")
async def test_a_start_whose_metrics_port_is_taken_leaves_no_connection(
    dsn: str, conn: asyncpg.Connection
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = worker_settings(dsn, metrics_port=port, metrics_host="127.0.0.1")
        with pytest.raises(OSError, match="in use"):
            await Worker(settings, Registry()).run()

    await no_worker_connection(conn)


async def no_worker_connection(conn: asyncpg.Connection) -> None:
    async with asyncio.timeout(DEADLINE_S):  # a closed session leaves the view shortly after
        while await conn.fetchval(WORKER_BACKENDS, pg.WORKER):  # noqa: ASYNC110 - a view
            await asyncio.sleep(0.02)


async def test_a_never_analyzed_jobs_table_is_analyzed_before_the_first_claim(
    dsn: str, conn: asyncpg.Connection, client: Client
) -> None:
    assert await conn.fetchval("SELECT reltuples < 0 FROM pg_class WHERE oid = 'jobs'::regclass")
    registry = Registry()

    @registry.handler("noop")
    async def noop(payload: object, ctx: Context) -> None:
        pass

    job = await client.submit("noop", {})
    async with running_worker(dsn, registry):
        await client.result(job.id, timeout=DEADLINE_S)

    analyzed = await conn.fetchval(
        "SELECT last_analyze FROM pg_stat_user_tables WHERE relid = 'jobs'::regclass"
    )
    started = (await client.status(job.id)).started_at
    assert analyzed is not None
    assert started is not None
    assert analyzed < started
