"""Round trips per job: a drain batches its claims and its completions.

The worker waits on round trips, not on CPU (a no-op job costs far less Python than
one claim or completion round trip), so the statements it sends per job decide its
drain rate. This counts them and times nothing: a real worker with the product's
default settings drains a backlog of no-op jobs from a pool of the default shard count
(``jobpool pool create``'s), while a query logger on every connection of the worker's
pool counts the statements it sends, by name. The statements of its timed loops
(heartbeat, lease renewal, stats) are left out: their number grows with the drain's
duration on a slow machine, not with the jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from worker_runtime_helpers import POOL, result_of, running_worker

from jobpool import Client, Context, Priority, Registry
from jobpool.cli.admin import DEFAULT_SHARDS
from jobpool.store import connect
from jobpool.store.pools import pool_ensure
from jobpool.store.queries import QUERIES
from jobpool.worker.dispatcher import SHARDS_PER_CLAIM, Dispatcher

JOBS = 4_000
DRAIN_DEADLINE_S = 240.0
# Measured at the defaults (concurrency 16, lanes of 256): 27 and 34 per 1,000 jobs in
# two runs (a claim per 50-90 jobs, a completion per 70-85, as the completer waits for
# the outcomes of the attempts still running); before that wait, about 50 (a completion
# per ~25 jobs); lanes of 32 sent 125, one claim and one completion per 16 jobs.
MAX_ROUND_TRIPS_PER_1000 = 100
# The loops that run on a timer, whatever the jobs: not counted.
TIMED = ("lease_", "worker_", "pool_", "dlq_count_pending", "job_queue_depth", "jobs_row_estimate")

_NAMES = {sql: name for name, sql in QUERIES.items()}
_CLAIM_SHARDS = QUERIES.params("job_claim_batch").index("shards")


def _name(sql: str) -> str:
    """The statement's name in ``queries.sql``; ``unnamed`` for the driver's own
    (transaction control, type introspection once per connection and type)."""
    return _NAMES.get(sql, "unnamed")


@dataclass
class Sent:
    """What the worker sent: statements by name, and each claim's shards argument."""

    names: Counter[str] = field(default_factory=Counter)
    claimed_shards: list[list[int]] = field(default_factory=list)

    def record(self, query: Any) -> None:
        name = _name(query.query)
        self.names[name] += 1
        if name == "job_claim_batch":
            self.claimed_shards.append(list(query.args[_CLAIM_SHARDS]))


@contextlib.asynccontextmanager
async def sent_statements(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Sent]:
    """Statements sent on every connection of the pools created in the block."""
    sent = Sent()
    create_pool = connect.create_pool

    async def recording_pool(dsn: str, **options: Any) -> asyncpg.Pool:
        async def init(conn: asyncpg.Connection) -> None:
            conn.add_query_logger(sent.record)

        return await create_pool(dsn, init=init, **options)

    monkeypatch.setattr(connect, "create_pool", recording_pool)
    yield sent


def _noop() -> Registry:
    registry = Registry()

    @registry.handler("noop")
    async def noop(payload: object, ctx: Context) -> None:
        """Does nothing: a drain is all claims and completions."""

    return registry


async def _idle(dispatcher: Dispatcher) -> None:
    """Wait until a started worker has gone round its shards and knows every lane empty."""
    async with asyncio.timeout(DRAIN_DEADLINE_S):
        while True:  # a poll: the dispatcher signals nothing when it goes idle
            if dispatcher.empty_lanes == set(Priority):
                return
            await asyncio.sleep(0.05)


async def _drained(conn: asyncpg.Connection) -> None:
    """Wait until the hot table is empty: a poll, as nothing signals that."""
    async with asyncio.timeout(DRAIN_DEADLINE_S):
        while True:
            if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM jobs)"):
                return
            await asyncio.sleep(0.2)


@pytest.mark.timeout(DRAIN_DEADLINE_S + 60)
@pytest.mark.parametrize("shards", [DEFAULT_SHARDS, 256])
async def test_a_drain_at_the_defaults_sends_few_round_trips_per_job(
    dsn: str, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch, shards: int
) -> None:
    """Whatever the shards, each claim visits a few of them in turn, and the drain
    takes every job."""
    await pool_ensure(conn, POOL, shards=shards)
    async with Client(dsn, pool=POOL, tenant="acme") as client:
        await client.submit("noop", [{"i": i} for i in range(JOBS)])

    async with sent_statements(monkeypatch) as sent, running_worker(dsn, _noop()):
        await _drained(conn)

    per_job = {
        name: n
        for name, n in sent.names.items()
        if name != "unnamed" and not name.startswith(TIMED)
    }
    assert per_job.get("job_claim_batch"), sent.names
    assert per_job.get("job_finish_many"), sent.names
    assert max(map(len, sent.claimed_shards)) <= SHARDS_PER_CLAIM
    total = sum(per_job.values())
    print(f"\n{total} round trips for {JOBS:,} jobs: {dict(sorted(per_job.items()))}")
    assert total * 1000 / JOBS <= MAX_ROUND_TRIPS_PER_1000, (
        f"draining {JOBS:,} jobs took {total} round trips ({per_job}); "
        f"at most {MAX_ROUND_TRIPS_PER_1000} per 1,000 jobs expected"
    )


async def test_a_submit_into_one_shard_makes_an_idle_worker_claim_from_it_alone(
    dsn: str, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim's cost grows with the shards it visits: a job submitted into one shard
    of 256 (its NOTIFY names the shard) is claimed from that shard alone, and the next
    one too; the worker does not go through every shard it owns."""
    await pool_ensure(conn, POOL, shards=256)
    async with (
        sent_statements(monkeypatch) as sent,
        running_worker(dsn, _noop()) as run,
        Client(dsn, pool=POOL, tenant="acme") as client,
    ):
        await _idle(run.worker.dispatcher)
        for n in range(2):
            before = len(sent.claimed_shards)
            job = await client.submit("noop", {"n": n})
            await result_of(client, job.id, timeout=30)

            assert sent.claimed_shards[before:] == [[job.shard]]
