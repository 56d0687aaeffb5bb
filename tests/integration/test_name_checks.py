"""The database's name checks on ``jobs`` accept exactly the names the client accepts.

Rows written by any path meet the client's own validation again in CHECK constraints
(``jobs_type_valid``, ``jobs_pool_valid``). Those are written as an unbounded pattern
plus a length bound, which PostgreSQL matches far faster than a bounded repetition
(migration 0008): this holds the two sides to the same verdict, name by name, at the
boundaries and on random names.
"""

from __future__ import annotations

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobpool.errors import InvalidJobType, InvalidName
from jobpool.models import Pool, check_job_type, check_pool_name

INSERT = (
    "INSERT INTO jobs (id, pool, tenant, shard, type, priority, payload)"
    " VALUES (gen_random_uuid(), $1, 'acme', 0, $2, 1, '{}')"
)
HYPOTHESIS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
TYPES = ["a", "Z9", "email.send", "a_b.c:d-e", "A" * 128, "A" * 129, "", "1a", "_a", "-a",
         "a b", "a/b", "a\n", "\na", "é", "aé", "a\x7f"]  # fmt: skip
POOLS = ["a", "0", "ab", "a-b", "a" * 50, "a" * 51, "a" + "-" * 48 + "b", "", "-a", "a-",
         "A", "a_b", "a.b", "a\n", "é"]  # fmt: skip
NAME_CHARACTERS = st.sampled_from("aZ09_.:-/ \né")


def _client_accepts_type(name: str) -> bool:
    try:
        check_job_type(name)
    except InvalidJobType:
        return False
    return True


def _client_accepts_pool(name: str) -> bool:
    try:
        check_pool_name(name)
    except InvalidName:
        return False
    return True


async def _refused_by(conn: asyncpg.Connection, *, pool: str, job_type: str) -> str | None:
    """The constraint that refuses a job of this pool and type, or None if stored."""
    try:
        await conn.execute(INSERT, pool, job_type)
    except asyncpg.CheckViolationError as exc:
        return exc.constraint_name
    return None


async def _type_verdict(conn: asyncpg.Connection, pool: Pool, name: str) -> None:
    refused_by = await _refused_by(conn, pool=pool.name, job_type=name)
    assert refused_by == (None if _client_accepts_type(name) else "jobs_type_valid")


async def _pool_verdict(conn: asyncpg.Connection, name: str) -> None:
    refused_by = await _refused_by(conn, pool=name, job_type="send")
    assert refused_by == (None if _client_accepts_pool(name) else "jobs_pool_valid")


@pytest.mark.parametrize("name", TYPES)
async def test_job_types_get_the_clients_verdict(
    conn: asyncpg.Connection, pool: Pool, name: str
) -> None:
    await _type_verdict(conn, pool, name)


@pytest.mark.parametrize("name", POOLS)
async def test_pool_names_get_the_clients_verdict(conn: asyncpg.Connection, name: str) -> None:
    await _pool_verdict(conn, name)


@HYPOTHESIS
@given(name=st.text(NAME_CHARACTERS, max_size=130))
async def test_random_job_types_get_the_clients_verdict(
    conn: asyncpg.Connection, pool: Pool, name: str
) -> None:
    await _type_verdict(conn, pool, name)


@HYPOTHESIS
@given(name=st.text(st.sampled_from("az09-_.A\n"), max_size=52))
async def test_random_pool_names_get_the_clients_verdict(
    conn: asyncpg.Connection, name: str
) -> None:
    await _pool_verdict(conn, name)
