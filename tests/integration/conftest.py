"""Fixtures for tests against a real Postgres: a pool row and connected clients."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest_asyncio

from jobpool import Client
from jobpool.models import Pool
from jobpool.store.pools import pool_ensure

POOL = "emails"
TENANT = "acme"
SHARDS = 16

_TEST = {"loop_scope": "session", "scope": "function"}


@pytest_asyncio.fixture(**_TEST)
async def pool(conn: asyncpg.Connection) -> Pool:
    """The ``emails`` pool (16 shards, 1 replica) in this test's database."""
    return await pool_ensure(conn, POOL, shards=SHARDS)


@pytest_asyncio.fixture(**_TEST)
async def client(dsn: str, pool: Pool) -> AsyncIterator[Client]:
    """A connected client of the ``emails`` pool for tenant ``acme``."""
    async with Client(dsn, pool=pool.name, tenant=TENANT) as jp:
        yield jp
