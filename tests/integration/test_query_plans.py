"""Invariant 5 in Postgres' own words: every hot query is served by the index built for it.

A large backlog is loaded once for the module with ``INSERT ... SELECT generate_series``
(200,000 due jobs over 16 shards and 4 priorities, 20,000 delayed ones, 50,000 running,
50,000 finished, 50,000 dead-letter entries). Then the exact statements the store sends
(captured from the store functions themselves, so a change of SQL or arguments is what
gets tested) are EXPLAINed with real parameters, twice: the custom plan Postgres makes
for the first executions of a prepared statement, and the plan the statement runs once
the connection is warm (asyncpg prepares every statement, and after five executions the
plan cache switches to the generic plan when that one looks no dearer).

Per-job cost is measured as work, never as time: the shared buffers a claim touches at
a 10,000-job backlog and at a 200,000-job one (owned by 8 tenants, then by 1,000), those
the claim timer's look-up (``job_next_due``) touches at 2,000 and at 40,000 delayed jobs,
and the job_dlq blocks a DLQ page reads on a warm client connection.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pg
import pytest
import pytest_asyncio

from jobpool import Client
from jobpool.models import ErrorRecord, Finish, JobId, JobState, Priority, QueueState, Retry
from jobpool.store import dlq, execution, jobs
from jobpool.store.leases import lease_take
from jobpool.store.pools import pool_ensure
from jobpool.store.queries import QUERIES
from jobpool.worker.settings import WorkerSettings

POOL = "emails"
SHARDS = 16
OWNER = "w0"
TENANTS = 8  # t0 … t7, each with due jobs in every shard and lane
QUEUED = 200_000
DELAYED = 20_000
RUNNING = 50_000
FINISHED = 50_000
DEAD = 50_000
RARE_TYPE = "bounce"  # t3's 100 pending DLQ entries of this type come last, after all others

_MODULE = {"loop_scope": "session", "scope": "module"}

LOAD_JOBS = """
INSERT INTO jobs (id, pool, tenant, shard, type, priority, state, payload, dedupe_key, run_at,
                  created_at, attempts, worker, lease_epoch, started_at)
SELECT gen_random_uuid(), $1, 't' || (g / ($2 * 4) % $7), g % $2, 'send', (g / $2) % 4, $5,
       jsonb_build_object('to', 'user' || g || '@example.com'), 'dedupe-' || g,
       now() + make_interval(secs => $6) - make_interval(secs => ($4 - g) / 100.0),
       now() - interval '1 day',
       CASE WHEN $5 = 'running' THEN 1 ELSE 0 END,
       CASE WHEN $5 = 'running' THEN 'w-gone' END,
       CASE WHEN $5 = 'running' THEN 1 END,
       CASE WHEN $5 = 'running' THEN now() END
FROM generate_series($3::int, $4::int - 1) AS g
"""

LOAD_HISTORY = """
INSERT INTO job_history (id, pool, tenant, shard, type, priority, state, payload, attempts,
                         created_at, run_at, started_at)
SELECT gen_random_uuid(), $1, 't' || (g % 8), g % 16, 'send', 1, 'succeeded', '{}', 1,
       now() - interval '1 day', now() - interval '1 day', now() - interval '1 day'
FROM generate_series(1, $2::int) AS g
"""

# Eight tenants, twenty types, half of the entries replayed; then 100 pending entries of
# tenant t3 with a type of their own, the newest of all.
LOAD_DLQ = """
INSERT INTO job_dlq (pool, original_job_id, app_id, type, payload, error_reason, attempts,
                     replayed_at)
SELECT $1, gen_random_uuid(), CASE WHEN g > $2 - 100 THEN 't3' ELSE 't' || (g % 8) END,
       CASE WHEN g > $2 - 100 THEN $3 ELSE 'type' || (g % 20) END, '{}', 'SMTPError', 3,
       CASE WHEN g % 2 = 0 AND g <= $2 - 100 THEN now() END
FROM generate_series(1, $2::int) AS g
"""


async def _load_jobs(
    conn: asyncpg.Connection,
    start: int,
    stop: int,
    state: str,
    *,
    delay_s: float = 0.0,
    tenants: int = TENANTS,
    shards: int = SHARDS,
) -> None:
    """Jobs ``start..stop``: every (shard, lane) gets jobs of every tenant, in turn; due
    (the highest number last) unless ``delay_s`` puts them that far in the future."""
    await conn.execute(LOAD_JOBS, POOL, shards, start, stop, state, delay_s, tenants)


@pytest_asyncio.fixture(**_MODULE)
async def backlog_dsn(
    server_dsn: str, _admin: asyncpg.Connection, _template: str
) -> AsyncIterator[str]:
    """A database of its own for the module, with the big backlog loaded once."""
    name = pg.random_name("jobpool_plans_")
    await pg.create_database(_admin, name, template=_template)
    try:
        dsn = pg.with_database(server_dsn, name)
        conn = await asyncpg.connect(dsn)
        try:
            await pool_ensure(conn, POOL, shards=SHARDS)
            await lease_take(conn, POOL, owner=OWNER, ordinal=0, shards=range(SHARDS), ttl_s=3600)
            await _load_jobs(conn, 0, QUEUED, "queued")
            await _load_jobs(conn, QUEUED, QUEUED + RUNNING, "running")
            everything = QUEUED + RUNNING
            await _load_jobs(conn, everything, everything + DELAYED, "queued", delay_s=86_400)
            await conn.execute(LOAD_HISTORY, POOL, FINISHED)
            await conn.execute(LOAD_DLQ, POOL, DEAD, RARE_TYPE)
            # The DLQ test counts the blocks read from job_dlq: no autovacuum in between.
            await conn.execute("ALTER TABLE job_dlq SET (autovacuum_enabled = false)")
            await conn.execute("ANALYZE")
        finally:
            await conn.close()
        yield dsn
    finally:
        await pg.drop_database(_admin, name)


@pytest_asyncio.fixture(**_MODULE)
async def big(backlog_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(backlog_dsn)
    try:
        yield connection
    finally:
        await connection.close()


# -- capturing the statements the store sends ---------------------------------------------


class _Recorder:
    """Stands in for an asyncpg connection and keeps the statements it was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[Any, ...]]] = []

    async def _record(self, sql: str, *args: Any) -> Any:
        self.sent.append((sql, args))
        return None

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        await self._record(sql, *args)
        return []

    fetchrow = fetchval = execute = _record


async def _sent(call: Callable[[Any], Awaitable[Any]]) -> tuple[str, tuple[Any, ...]]:
    recorder = _Recorder()
    with contextlib.suppress(Exception):  # e.g. JobNotFound for a lookup that found nothing
        await call(recorder)
    # The first: a lookup that found nothing may go on to ask why (job_status does).
    return recorder.sent[0]


def _claim(lanes: dict[Priority, int], per_shard_limit: int | None = None):
    return lambda c: execution.job_claim_batch(
        c, POOL, owner=OWNER, shards=range(SHARDS), lanes=lanes, per_shard_limit=per_shard_limit
    )


def _dispatcher_per_shard(want: int) -> int:
    """The per-shard bound the worker's dispatcher passes for a lane want of ``want``."""
    return max(2, -(-2 * want // SHARDS))


CLAIMS = {
    # One lane, the store's default per-shard bound (= the want).
    "one-lane": ({Priority.NORMAL: 100}, None),
    # Every lane at once, bounded per shard the way the dispatcher does it.
    "all-lanes": (dict.fromkeys(Priority, 100), _dispatcher_per_shard(100)),
}


# -- reading plans ---------------------------------------------------------------------


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _indexes(plan: dict[str, Any]) -> set[str]:
    return {node["Index Name"] for node in _nodes(plan) if "Index Name" in node}


def _seq_scanned(plan: dict[str, Any]) -> set[str]:
    return {
        node["Relation Name"]
        for node in _nodes(plan)
        if node["Node Type"] == "Seq Scan" and "Relation Name" in node
    }


def _sorted_rows(plan: dict[str, Any]) -> list[float]:
    """Estimated input rows of every sort in the plan."""
    return [node["Plan Rows"] for node in _nodes(plan) if "Sort" in node["Node Type"]]


def _outline(plan: dict[str, Any], depth: int = 0) -> str:
    """A compact rendering for assertion messages."""
    parts = [
        node
        for node in (
            plan["Node Type"],
            plan.get("Index Name", ""),
            plan.get("Relation Name", ""),
            f"rows={plan.get('Plan Rows')}",
        )
        if node
    ]
    lines = ["  " * depth + " ".join(parts)]
    lines += [_outline(child, depth + 1) for child in plan.get("Plans", [])]
    return "\n".join(lines)


async def _custom_plan(conn: asyncpg.Connection, sql: str, args: tuple[Any, ...]) -> dict:
    text = await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
    return json.loads(text)[0]["Plan"]


_EXPLAIN_GENERIC = """
CREATE FUNCTION pg_temp.explain_generic(statement text) RETURNS json LANGUAGE plpgsql AS $$
DECLARE plan json;
BEGIN
    EXECUTE 'EXPLAIN (GENERIC_PLAN, FORMAT JSON) ' || statement INTO plan;
    RETURN plan;
END $$
"""


async def _generic_plan(conn: asyncpg.Connection, sql: str, args: tuple[Any, ...]) -> dict:
    """The plan the plan cache switches to after five executions: parameters unknown."""
    if not await conn.fetchval(
        "SELECT to_regprocedure('pg_temp.explain_generic(text)') IS NOT NULL"
    ):
        await conn.execute(_EXPLAIN_GENERIC)
    text = await conn.fetchval("SELECT pg_temp.explain_generic($1)::text", sql)
    return json.loads(text)[0]["Plan"]


async def _goes_generic(conn: asyncpg.Connection, sql: str, args: tuple[Any, ...]) -> bool:
    """Whether a pooled connection runs ``sql`` with its generic plan once it is warm.

    asyncpg prepares every statement; after five executions Postgres' plan cache switches
    to the generic plan if that one looks no dearer than the custom ones. Run the
    statement ten times (rolled back) and ask the plan cache what it did.
    """
    for _ in range(10):
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.fetch(sql, *args)
        finally:
            await tx.rollback()
    cached = await conn.fetchrow(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1",
        sql,
    )
    assert cached is not None
    assert cached["generic_plans"] + cached["custom_plans"] >= 10
    return cached["generic_plans"] > 0


async def _warm_plan(conn: asyncpg.Connection, sql: str, args: tuple[Any, ...]) -> dict:
    """The plan a pooled connection runs once its statement cache is warm."""
    if await _goes_generic(conn, sql, args):
        return await _generic_plan(conn, sql, args)
    return await _custom_plan(conn, sql, args)


PLANNERS = {"custom": _custom_plan, "warm": _warm_plan}


def _now() -> datetime:
    return datetime.now(UTC)


# -- the claim -----------------------------------------------------------------------------


async def _analyzed(conn: asyncpg.Connection, sql: str, args: tuple[Any, ...]) -> dict:
    """EXPLAIN (ANALYZE, BUFFERS) of a statement, in a transaction rolled back."""
    tx = conn.transaction()
    await tx.start()
    try:
        text = await conn.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, *args)
    finally:
        await tx.rollback()
    return json.loads(text)[0]["Plan"]


def _sorted_actual(plan: dict[str, Any]) -> list[float]:
    """Rows every sort of an analyzed plan actually sorted (over all its loops)."""
    return [
        node["Actual Rows"] * node["Actual Loops"]
        for node in _nodes(plan)
        if "Sort" in node["Node Type"]
    ]


@pytest.mark.parametrize("mode", ["custom", "warm"])
@pytest.mark.parametrize("claim", CLAIMS)
async def test_claim_is_served_by_the_claim_index(
    big: asyncpg.Connection, claim: str, mode: str
) -> None:
    lanes, per_shard = CLAIMS[claim]
    sql, args = await _sent(_claim(lanes, per_shard))
    assert sql == QUERIES["job_claim_batch"]
    generic = mode == "warm" and await _goes_generic(big, sql, args)

    plan = await (_generic_plan if generic else _analyzed)(big, sql, args)

    outline = _outline(plan)
    assert "jobs_claim_idx" in _indexes(plan), outline
    assert "jobs" not in _seq_scanned(plan), outline
    # The rows are updated by primary key, not found again by scanning the backlog.
    assert "jobs_pkey" in _indexes(plan), outline
    if not generic:
        assert plan["Actual Rows"] == sum(lanes.values()), outline
        # Candidates: at most per_shard of each tenant in each (shard, lane), never the
        # lane's whole backlog (50,000 jobs here).
        bound = SHARDS * len(lanes) * TENANTS * (per_shard or max(lanes.values()))
        assert max(_sorted_actual(plan), default=0) <= bound, outline


# -- the other hot statements ---------------------------------------------------------------


async def _running_ids(conn: asyncpg.Connection, count: int) -> list[JobId]:
    rows = await conn.fetch("SELECT id FROM jobs WHERE state = 'running' LIMIT $1", count)
    return [JobId(row["id"]) for row in rows]


async def _lookups(conn: asyncpg.Connection) -> dict[str, tuple[str, tuple[Any, ...], set[str]]]:
    """name → (statement, arguments, indexes the plan must use)."""
    running = await _running_ids(conn, 100)
    queued = await conn.fetchrow("SELECT id, tenant FROM jobs WHERE state = 'queued' LIMIT 1")
    error = ErrorRecord(attempt=1, error_type="SMTPError", message="boom", at=_now())
    finishes = [Finish(job_id=i, state=JobState.SUCCEEDED, result_json="{}") for i in running]
    retries = [Retry(job_id=i, run_at=_now(), error=error) for i in running]
    status = await _sent(lambda c: jobs.job_status(c, POOL, queued["tenant"], queued["id"]))
    statements = {
        # Its history part: test_history_retention.py (only the days since the job).
        "job_status": (*status, {"jobs_pkey"}),
        "job_find_by_dedupe_keys": (
            QUERIES["job_find_by_dedupe_keys"],
            QUERIES.bind(
                "job_find_by_dedupe_keys",
                pool=POOL,
                tenant="t3",
                dedupe_keys=["dedupe-3", "dedupe-11", "dedupe-missing"],
            )[1:],
            {"jobs_dedupe_idx"},
        ),
        "dlq_list": (
            *await _sent(lambda c: dlq.dlq_list(c, POOL, "t3", limit=100)),
            {"job_dlq_pending_idx"},
        ),
        "dlq_list[type]": (
            *await _sent(lambda c: dlq.dlq_list(c, POOL, "t3", type="type3", limit=100)),
            {"job_dlq_pending_type_idx"},
        ),
        "job_finish_many": (
            *await _sent(
                lambda c: execution.job_finish_many(c, POOL, owner=OWNER, finishes=finishes)
            ),
            {"jobs_pkey"},
        ),
        "job_retry_many": (
            *await _sent(lambda c: execution.job_retry_many(c, POOL, owner=OWNER, retries=retries)),
            {"jobs_pkey"},
        ),
        "job_requeue_orphans": (
            QUERIES["job_requeue_orphans"],
            QUERIES.bind("job_requeue_orphans", pool=POOL, shards=[3])[1:],
            {"jobs_running_idx"},
        ),
        # The claim timer: when the earliest delayed job of the owner's shards is due.
        "job_next_due": (
            *await _sent(
                lambda c: execution.job_next_due(c, POOL, shards=range(SHARDS), lanes=Priority)
            ),
            {"jobs_due_idx"},
        ),
    }
    return statements


LOOKUPS = [
    "job_status",
    "job_find_by_dedupe_keys",
    "dlq_list",
    "dlq_list[type]",
    "job_finish_many",
    "job_retry_many",
    "job_requeue_orphans",
    "job_next_due",
]


# dlq_list on a warm connection: test_dlq_page_stays_cheap_once_the_plan_cache_warms,
# through the client itself, so that a fix in the SQL or in the connection settings counts.
@pytest.mark.parametrize(
    ("name", "mode"),
    [(name, "custom") for name in LOOKUPS]
    + [(name, "warm") for name in LOOKUPS if not name.startswith("dlq_list")],
)
async def test_hot_statement_is_served_by_its_index(
    big: asyncpg.Connection, name: str, mode: str
) -> None:
    sql, args, expected = (await _lookups(big))[name]

    plan = await PLANNERS[mode](big, sql, args)

    outline = _outline(plan)
    assert expected <= _indexes(plan), outline
    assert not _seq_scanned(plan) & {"jobs", "job_history", "job_dlq"}, outline
    assert _sorted_rows(plan) == [], f"sorts rows an index should deliver in order\n{outline}"


async def _dlq_blocks(conn: asyncpg.Connection) -> int:
    """Blocks of job_dlq and its indexes read so far (shared hits and reads), all backends."""
    return await conn.fetchval(
        "SELECT heap_blks_hit + heap_blks_read + idx_blks_hit + idx_blks_read"
        " FROM pg_statio_user_tables WHERE relid = 'job_dlq'::regclass"
    )


async def _flush_stats(client: Client) -> None:
    """Publish the client connection's pending I/O counters (before it reports ready)."""
    async with client.connection() as conn:
        await conn.execute("SELECT pg_stat_force_next_flush()")


async def test_dlq_page_stays_cheap_once_the_plan_cache_warms(
    backlog_dsn: str, big: asyncpg.Connection
) -> None:
    """An operator pages through tenant t3's DLQ filtered by a common type; after five
    executions Postgres may switch the prepared statement to its generic plan. A page of
    a type t3 has only a few entries of must still be read through the pending indexes,
    not by walking every tenant's entries in id order."""
    client = Client(backlog_dsn, pool=POOL, tenant="t3", max_connections=1)
    async with client:
        cursor = None
        for _ in range(8):
            page = await client.dlq.list(type="type3", limit=100, cursor=cursor)
            cursor = page.next_cursor
        await _flush_stats(client)
        before = await _dlq_blocks(big)

        page = await client.dlq.list(type=RARE_TYPE, limit=100)

        await _flush_stats(client)
        read = await _dlq_blocks(big) - before
    print(f"\nDLQ page of a rare type after warm-up: {read} blocks of job_dlq read")
    assert [e.type for e in page.entries] == [RARE_TYPE] * 100
    assert read < 50, (
        f"a page of 100 entries read {read} blocks of job_dlq ({DEAD:,} entries): "
        "the plan scans far more than the pending entries of the tenant and type"
    )


# -- cost per claim as the backlog grows -------------------------------------------------------


async def _claim_buffers(conn: asyncpg.Connection, claim: str) -> tuple[int, float]:
    """Shared buffers one claim touches (hit + read), and the rows it claimed; rolled back."""
    lanes, per_shard = CLAIMS[claim]
    sql, args = await _sent(_claim(lanes, per_shard))
    plan = await _analyzed(conn, sql, args)
    return plan["Shared Hit Blocks"] + plan["Shared Read Blocks"], plan["Actual Rows"]


@pytest.mark.parametrize("tenants", [TENANTS, 1000], ids=["8-tenants", "1000-tenants"])
async def test_claim_work_stays_flat_as_the_backlog_grows(
    conn: asyncpg.Connection, tenants: int
) -> None:
    """Claims of the same size at 10,000 and at 200,000 due jobs (x20) touch about the
    same number of buffers, whether the backlog belongs to a few big tenants or to many
    small ones (every tenant has due jobs in every shard and lane)."""
    await pool_ensure(conn, POOL, shards=SHARDS)
    await lease_take(conn, POOL, owner=OWNER, ordinal=0, shards=range(SHARDS), ttl_s=3600)
    small, large = 10_000, 200_000

    await _load_jobs(conn, 0, small, "queued", tenants=tenants)
    await conn.execute("ANALYZE jobs")
    at_small = {claim: await _claim_buffers(conn, claim) for claim in CLAIMS}
    await _load_jobs(conn, small, large, "queued", tenants=tenants)
    await conn.execute("ANALYZE jobs")
    at_large = {claim: await _claim_buffers(conn, claim) for claim in CLAIMS}

    report = {claim: (at_small[claim][0], at_large[claim][0]) for claim in CLAIMS}
    print(f"\n{tenants} tenants, shared buffers per claim at {small:,} vs {large:,}: {report}")
    for claim, (lanes, _) in CLAIMS.items():
        wanted = sum(lanes.values())
        assert at_small[claim][1] == at_large[claim][1] == wanted, "claims differ in size"
        buffers_small, buffers_large = report[claim]
        assert buffers_large < 3 * buffers_small, (
            f"{claim}, {tenants} tenants: a claim of {wanted} touched {buffers_small} buffers "
            f"at {small:,} due jobs but {buffers_large} at {large:,} (backlog x{large // small})"
        )


MANY_SHARDS = 256
MANY_SHARDS_BACKLOG = 100_000
# Measured at the defaults (4 lanes of 256 wanted: 1,024 jobs): ~33,000 shared buffers,
# ~32 per (shard, lane) probed (the claim visits every owned shard in every lane it
# asks for). The bound leaves room for plan noise, not for a claim that reads per
# (shard, lane) more than its tenants' first jobs.
MAX_CLAIM_BUFFERS_AT_MANY_SHARDS = 50_000


async def test_claim_at_many_shards_reads_a_bounded_number_of_buffers(
    conn: asyncpg.Connection,
) -> None:
    """The claim a worker sends at its default settings after a wake-up (every lane
    wanting its prefetch capacity) from 256 owned shards with 100,000 due jobs reads a
    bounded number of buffers."""
    await pool_ensure(conn, POOL, shards=MANY_SHARDS)
    shards = range(MANY_SHARDS)
    await lease_take(conn, POOL, owner=OWNER, ordinal=0, shards=shards, ttl_s=3600)
    await _load_jobs(conn, 0, MANY_SHARDS_BACKLOG, "queued", shards=MANY_SHARDS)
    await conn.execute("ANALYZE jobs")
    capacity = WorkerSettings(dsn="postgresql:///unused", pool=POOL, ordinal=0).lane_capacity
    lanes = dict.fromkeys(Priority, capacity)
    sql, args = await _sent(
        lambda c: execution.job_claim_batch(c, POOL, owner=OWNER, shards=shards, lanes=lanes)
    )

    plan = await _analyzed(conn, sql, args)

    buffers = plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]
    print(f"\nclaim of {sum(lanes.values())} from {MANY_SHARDS} shards: {buffers} buffers")
    assert plan["Actual Rows"] == sum(lanes.values()), _outline(plan)
    assert buffers <= MAX_CLAIM_BUFFERS_AT_MANY_SHARDS, (
        f"a claim of {sum(lanes.values())} jobs from {MANY_SHARDS} shards touched {buffers} "
        f"buffers (bound {MAX_CLAIM_BUFFERS_AT_MANY_SHARDS})\n{_outline(plan)}"
    )


async def _next_due_buffers(conn: asyncpg.Connection) -> int:
    sql, args = await _sent(
        lambda c: execution.job_next_due(c, POOL, shards=range(SHARDS), lanes=Priority)
    )
    text = await conn.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, *args)
    plan = json.loads(text)[0]["Plan"]
    return plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]


async def test_next_due_work_stays_flat_as_delayed_jobs_pile_up(conn: asyncpg.Connection) -> None:
    """The dispatcher asks for the next due time whenever a lane came back empty, so this
    look-up runs about as often as claims do: it must not read every delayed job."""
    await pool_ensure(conn, POOL, shards=SHARDS)
    small, large = 2_000, 40_000
    day = 86_400

    await _load_jobs(conn, 0, small, "queued", delay_s=day)
    await conn.execute("ANALYZE jobs")
    at_small = await _next_due_buffers(conn)
    await _load_jobs(conn, small, large, "queued", delay_s=day)
    await conn.execute("ANALYZE jobs")
    at_large = await _next_due_buffers(conn)

    print(
        f"\nshared buffers per next-due look-up at {small:,} vs {large:,} delayed jobs: "
        f"{at_small} vs {at_large}"
    )
    assert at_large < 3 * at_small, (
        f"job_next_due touched {at_small} buffers at {small:,} delayed jobs but {at_large} "
        f"at {large:,} (x{large // small})"
    )


# -- ending attempts: linear in the batch, whatever runs beside it --------------------------

BUFFERED = 2_000  # claimed (running) jobs of one worker, most of them still in its lanes
ENDED = 200  # the batch the completer (or a give-back) writes


@pytest_asyncio.fixture(**_MODULE)
async def drained(
    server_dsn: str, _admin: asyncpg.Connection, _template: str
) -> AsyncIterator[asyncpg.Connection]:
    """A drain's table: analyzed while everything was queued (so the statistics know of
    no running job), then ``BUFFERED`` jobs claimed by one worker under its epochs."""
    name = pg.random_name("jobpool_drained_")
    await pg.create_database(_admin, name, template=_template)
    conn = await asyncpg.connect(pg.with_database(server_dsn, name))
    try:
        await pool_ensure(conn, POOL, shards=SHARDS)
        await lease_take(conn, POOL, owner=OWNER, ordinal=0, shards=range(SHARDS), ttl_s=3600)
        await _load_jobs(conn, 0, 2 * BUFFERED, "queued")
        await conn.execute("ANALYZE")
        await conn.execute(
            """UPDATE jobs j SET state = 'running', worker = $2, attempts = 1,
                   started_at = now(), lease_epoch = l.epoch
               FROM shard_leases l
               WHERE l.pool = j.pool AND l.shard = j.shard
                 AND j.id IN (SELECT id FROM jobs WHERE pool = $1 LIMIT $3)""",
            POOL,
            OWNER,
            BUFFERED,
        )
        yield conn
    finally:
        await conn.close()
        await pg.drop_database(_admin, name)


async def _generic_analyzed(conn: asyncpg.Connection, sql: str, args: tuple[Any, ...]) -> dict:
    """EXPLAIN (ANALYZE) of the generic plan, the one a warm pooled connection runs."""
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE ending AS {sql}")
        literals = ", ".join(_literal(arg) for arg in args)
        text = await conn.fetchval(
            f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE ending({literals})"
        )
    finally:
        await tx.rollback()
        await conn.execute("DEALLOCATE ending")
    return json.loads(text)[0]["Plan"]


def _literal(value: Any) -> str:
    """``value`` as an SQL literal (EXECUTE takes no bound parameters): the prepared
    statement's casts give it its type."""
    if value is None:
        return "NULL"
    if isinstance(value, list):
        value = "{" + ",".join("NULL" if v is None else _array_item(v) for v in value) + "}"
    return "'" + str(value).replace("'", "''") + "'"


def _array_item(value: Any) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ending(name: str, ids: list[JobId]) -> Callable[[Any], Awaitable[Any]]:
    error = ErrorRecord(attempt=1, error_type="SMTPError", message="boom", at=_now())
    if name == "job_finish_many":
        finishes = [Finish(job_id=i, state=JobState.SUCCEEDED, result_json="{}") for i in ids]
        return lambda c: execution.job_finish_many(c, POOL, owner=OWNER, finishes=finishes)
    if name == "job_retry_many":
        retries = [Retry(job_id=i, run_at=_now(), error=error) for i in ids]
        return lambda c: execution.job_retry_many(c, POOL, owner=OWNER, retries=retries)
    return lambda c: execution.job_release_many(c, POOL, owner=OWNER, job_ids=ids)


@pytest.mark.parametrize("name", ["job_finish_many", "job_retry_many", "job_release_many"])
async def test_ending_attempts_is_linear_in_the_batch(
    drained: asyncpg.Connection, name: str
) -> None:
    """Each ended row is found by its primary key and its lease by the lease's: the rows
    the plan handles grow with the batch, not with the batch times the running jobs (a plan that
    walked the running jobs' index, or joined the batch's array with itself, did)."""
    ids = await _running_ids(drained, ENDED)
    sql, args = await _sent(_ending(name, ids))

    plan = await _generic_analyzed(drained, sql, args)

    outline = _outline(plan)
    assert "jobs_running_idx" not in _indexes(plan), outline
    handled = sum(node["Actual Rows"] * node["Actual Loops"] for node in _nodes(plan))
    removed = sum(
        node.get("Rows Removed by Join Filter", 0) + node.get("Rows Removed by Filter", 0)
        for node in _nodes(plan)
    )
    assert handled + removed <= 20 * ENDED, outline


# -- the queue gauges at a large backlog ----------------------------------------------------


def _total(depth: execution.QueueDepth) -> int:
    return sum(sum(lanes.values()) for lanes in depth.values())


async def test_queue_depth_is_estimated_from_a_sample_above_the_exact_bound(
    big: asyncpg.Connection,
) -> None:
    """Counting 200,000 queued jobs exactly reads every one of their index entries; past
    ``EXACT_DEPTH_UP_TO`` the gauges read a sample of about ``SAMPLED_ROWS`` rows and
    scale it up (the pages are drawn at random: the bounds allow several standard
    errors of such a sample)."""
    shards = range(SHARDS)
    exact = await execution.job_queue_depth(big, POOL, shards=shards)
    assert _total(exact) > execution.EXACT_DEPTH_UP_TO

    first = await execution.job_queue_depth_estimate(big, POOL, shards=shards, last_total=None)
    later = await execution.job_queue_depth_estimate(
        big, POOL, shards=shards, last_total=_total(exact)
    )
    small = await execution.job_queue_depth_estimate(big, POOL, shards=shards, last_total=10)

    for estimate in (first, later):
        assert _total(estimate) == pytest.approx(_total(exact), rel=0.15)
        due, scheduled = (
            sum(estimate[state].values()) for state in (QueueState.DUE, QueueState.SCHEDULED)
        )
        assert due == pytest.approx(sum(exact[QueueState.DUE].values()), rel=0.15)
        assert scheduled == pytest.approx(sum(exact[QueueState.SCHEDULED].values()), rel=0.4)
    assert first != exact, "estimated by counting every job, not from a sample"
    assert later != exact, "estimated by counting every job, not from a sample"
    assert small == exact, "below the bound the figures are counted exactly"
