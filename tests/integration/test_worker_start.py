"""A worker's start: its LISTEN connection opens while its connection pool does (start-up
waits for one, not both), so a start whose pool fails must close the LISTEN connection
that did open: the error is the pool's, one line, and no connection is left behind."""

from __future__ import annotations

import asyncio

import asyncpg
import pg
import pytest
from worker_runtime_helpers import worker_settings

from jobpool import Registry
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

    async with asyncio.timeout(DEADLINE_S):  # a closed session leaves the view shortly after
        while await conn.fetchval(WORKER_BACKENDS, pg.WORKER):  # noqa: ASYNC110 - a view
            await asyncio.sleep(0.02)
