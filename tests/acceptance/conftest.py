"""Fixtures of the acceptance tier: the ``emails`` pool, the attempts table, a client,
and a fleet of real worker processes that is always cleaned up."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from acceptance_kit import POOL, SHARDS, TENANT, Fleet
from handlers import ATTEMPTS_DDL

from jobpool import Client
from jobpool.store.pools import pool_ensure

_TEST = {"loop_scope": "session", "scope": "function"}


@pytest_asyncio.fixture(**_TEST)
async def attempts_table(conn: asyncpg.Connection) -> None:
    """``test_attempts``, where the ``work`` handler records each attempt."""
    await conn.execute(ATTEMPTS_DDL)


@pytest_asyncio.fixture(**_TEST)
async def client(dsn: str, conn: asyncpg.Connection, attempts_table: None) -> AsyncIterator[Client]:
    """A client of the ``emails`` pool (16 shards) for tenant ``acme``.

    The pool starts with one replica; tests set another ring before starting workers
    (``pool_set_replicas``) or change it live with ``fleet.ring`` (``jobpool ring``).
    """
    await pool_ensure(conn, POOL, shards=SHARDS)
    async with Client(dsn, pool=POOL, tenant=TENANT) as jp:
        yield jp


@pytest.fixture
def fleet(dsn: str, tmp_path: Path) -> Iterator[Fleet]:
    """Starts worker processes; kills and reaps any left, and prints their logs."""
    workers = Fleet(dsn, tmp_path)
    try:
        yield workers
    finally:
        workers.close()
