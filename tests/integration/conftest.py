"""Fixtures for tests against a real Postgres: a pool row and connected clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
import pytest_asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

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


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """Spans recorded by the global SDK tracer provider (installed once per process)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider), "another non-SDK tracer provider is installed"
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()
