"""The chaos workload and the history it leaves: submissions, racing cancels, final state.

``Workload`` submits a mix of the chaos job types (``chaos_handlers``) in batches —
no-ops, short sleeps, random failures, permanent failures, long jobs, some with
dedupe keys drawn from a small set — and cancels random recent jobs (mostly long
ones) while faults happen, recording every submission (with the moment its call
returned) and every answered cancel. A call cut off by a database outage records
nothing: its jobs may or may not exist, and the checker judges only what was
acknowledged.

``settle`` waits until every acknowledged job has finished (or a deadline passes:
whatever is left is then judged stuck or not by the checker); ``read_history`` waits
for the attempt records of live processes to be complete and reads the final state
into a :class:`~chaos_history.History`; ``final_verdict`` does both and judges it.
``chaos_run`` sets a database up for a run (pool, attempts table, client, fleet).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

import asyncpg
from chaos_fleet import CONCURRENCY, POOL, SHARDS, TENANT, ChaosFleet, wait_for
from chaos_handlers import ATTEMPTS_DDL
from chaos_history import (
    Attempt,
    Cancel,
    DlqEntry,
    History,
    Job,
    LeaseHolding,
    Submission,
    Verdict,
    check,
)

from jobpool import CancelOutcome, Client, Item
from jobpool.errors import DatabaseUnavailable, JobAlreadyFinished, JobNotFound
from jobpool.store.pools import pool_ensure

DEDUPE_KEYS = 20
LONG_S = (2.0, 5.0)
OUTAGE_ERRORS = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.InternalClientError,
    DatabaseUnavailable,
)
"""What a call raises while PostgreSQL is down or restarting (``InternalClientError``:
a pooled connection an outage broke mid-operation, seen right after a restart)."""


@dataclass
class Workload:
    client: Client
    seed: int = 0
    submitted: list[Submission] = field(default_factory=list)
    cancels: list[Cancel] = field(default_factory=list)
    long_jobs: list[UUID] = field(default_factory=list)
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def _mix(self, jobs: int) -> dict[str, list[Item]]:
        """``jobs`` items by type: 30% noop, 35% sleep (a tenth deduped), 20% flaky,
        5% doomed, 10% long."""
        rng = self.rng
        batches: dict[str, list[Item]] = {}
        for _ in range(jobs):
            roll = rng.random()
            if roll < 0.30:
                kind, item = "noop", Item({})
            elif roll < 0.65:
                deduped = rng.random() < 0.1
                key = f"key-{rng.randrange(DEDUPE_KEYS)}" if deduped else None
                item = Item({"s": rng.uniform(0.02, 0.3)}, dedupe_key=key)
                kind = "sleep"
            elif roll < 0.85:
                kind, item = "flaky", Item({"s": 0.02, "p": 0.4})
            elif roll < 0.90:
                kind, item = "doomed", Item({})
            else:
                kind, item = "long", Item({"s": rng.uniform(*LONG_S)})
            batches.setdefault(kind, []).append(item)
        return batches

    async def submit(self, jobs: int) -> int:
        """One batch of ``jobs`` mixed jobs (one call per type); returns how many were
        acknowledged."""
        mix = self._mix(jobs)
        return sum([await self.submit_items(kind, items) for kind, items in mix.items()])

    async def submit_items(self, kind: str, items: list[Item]) -> int:
        """Submit ``items`` of one type as a batch, recorded; how many were acknowledged."""
        try:
            done = await self.client.submit(kind, items)
        except OUTAGE_ERRORS:
            return 0
        returned_at = time.time()
        for item, job in zip(items, done, strict=True):
            self.submitted.append(
                Submission(id=job.id, dedupe_key=item.dedupe_key, returned_at=returned_at)
            )
            if kind == "long":
                self.long_jobs.append(job.id)
        return len(done)

    async def cancel_one(self) -> None:
        """Cancel a random recent job, a long one three times out of four."""
        pool = self.long_jobs if self.long_jobs and self.rng.random() < 0.75 else self.submitted
        if not pool:
            return
        recent = pool[-200:]
        pick = self.rng.choice(recent)
        await self._cancel(pick.id if isinstance(pick, Submission) else pick)

    async def cancel_running(self, conn: asyncpg.Connection, owner: str, *, most: int) -> None:
        """Cancel up to ``most`` long jobs that ``owner`` is running (before a fault hits it)."""
        rows = await conn.fetch(
            "SELECT id FROM jobs WHERE worker = $1 AND state = 'running' AND type = 'long' "
            "LIMIT $2",
            owner,
            most,
        )
        for row in rows:
            await self._cancel(row["id"])

    async def _cancel(self, job_id: UUID) -> None:
        try:
            answer = await self.client.cancel(job_id)
            answered_at = time.time()
            status = await self.client.status(job_id)
        except (JobAlreadyFinished, JobNotFound, *OUTAGE_ERRORS):
            return
        self.cancels.append(
            Cancel(
                job_id=job_id,
                answer=CancelOutcome(answer).value,
                answered_at=answered_at,
                attempts_then=status.attempts,
            )
        )

    async def run(self, stop: asyncio.Event, *, batch: int, every_s: float) -> None:
        """Until ``stop``: a batch every ``every_s`` seconds and a cancel with each."""
        while not stop.is_set():
            await self.submit(batch)
            await self.cancel_one()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)

    def ids(self) -> list[UUID]:
        return list({s.id for s in self.submitted})


@contextlib.asynccontextmanager
async def running(
    workload: Workload, *, batch: int = 10, every_s: float = 0.2
) -> AsyncIterator[None]:
    """The workload runs in the background for the duration of the block."""
    stop = asyncio.Event()
    task = asyncio.create_task(workload.run(stop, batch=batch, every_s=every_s))
    try:
        yield
    finally:
        stop.set()
        await task


async def unfinished(conn: asyncpg.Connection, ids: list[UUID]) -> int:
    finished = await conn.fetchval(
        "SELECT count(*) FROM job_history WHERE id = ANY($1::uuid[])", ids
    )
    return len(ids) - finished


async def settle(conn: asyncpg.Connection, workload: Workload, *, timeout: float) -> int:
    """Wait until every acknowledged job has finished, at most ``timeout`` seconds;
    returns how many have not."""
    ids = workload.ids()
    with contextlib.suppress(AssertionError):
        await wait_for(
            lambda: _all_finished(conn, ids), what="every job to finish", timeout=timeout
        )
    return await unfinished(conn, ids)


async def _all_finished(conn: asyncpg.Connection, ids: list[UUID]) -> bool:
    return await unfinished(conn, ids) == 0


async def read_history(conn: asyncpg.Connection, fleet: ChaosFleet, workload: Workload) -> History:
    """The final state, once the live processes' attempt records are complete."""
    live = {p.incarnation for p in fleet.procs if p.alive}

    async def records_complete() -> bool:
        open_ = await conn.fetchval(
            "SELECT count(*) FROM chaos_attempts WHERE ended IS NULL AND incarnation = ANY($1)",
            list(live),
        )
        return open_ == 0

    with contextlib.suppress(AssertionError):
        await wait_for(records_complete, what="attempt records", timeout=15)
    processes = fleet.processes()
    observed_at = time.time()
    return History(
        submitted=tuple(workload.submitted),
        attempts=tuple(await _attempts(conn)),
        processes=processes,
        cancels=tuple(workload.cancels),
        jobs=tuple(await _jobs(conn)),
        dlq=tuple(await _dlq(conn)),
        leases=tuple(await _leases(conn)),
        observed_at=observed_at,
    )


async def _attempts(conn: asyncpg.Connection) -> list[Attempt]:
    rows = await conn.fetch(
        "SELECT job_id, attempt, incarnation, shard, epoch, started, ended, outcome "
        "FROM chaos_attempts ORDER BY started"
    )
    return [Attempt(**dict(r)) for r in rows]


_JOBS = """
SELECT id, state, shard, attempts, extract(epoch FROM run_at)::float8 AS run_at, worker,
       extract(epoch FROM started_at)::float8 AS started_at, NULL::text AS result,
       dedupe_key, NULL::float8 AS finished_at
FROM jobs WHERE pool = $1
UNION ALL
SELECT id, state, shard, attempts, extract(epoch FROM run_at)::float8, NULL,
       extract(epoch FROM started_at)::float8, result::text, dedupe_key,
       extract(epoch FROM finished_at)::float8
FROM job_history WHERE pool = $1
"""


async def _jobs(conn: asyncpg.Connection) -> list[Job]:
    rows = await conn.fetch(_JOBS, POOL)
    return [
        Job(**{**dict(r), "result": json.loads(r["result"]) if r["result"] else None}) for r in rows
    ]


async def _dlq(conn: asyncpg.Connection) -> list[DlqEntry]:
    rows = await conn.fetch(
        "SELECT original_job_id, app_id, type, payload::text, error_reason, attempts, "
        "error_history::text, extract(epoch FROM dlq_at)::float8 AS dlq_at "
        "FROM job_dlq WHERE pool = $1",
        POOL,
    )
    return [
        DlqEntry(
            **{
                **dict(r),
                "payload": json.loads(r["payload"]),
                "error_history": json.loads(r["error_history"]),
            }
        )
        for r in rows
    ]


async def final_verdict(
    conn: asyncpg.Connection,
    fleet: ChaosFleet,
    workload: Workload,
    *,
    settle_s: float = 90.0,
    stuck_after_s: float = 30.0,
) -> Verdict:
    """Let the run settle (every process thawed by then), then judge its history."""
    await settle(conn, workload, timeout=settle_s)
    verdict = check(await read_history(conn, fleet, workload), stuck_after_s=stuck_after_s)
    print(verdict.render())
    return verdict


async def progress(conn: asyncpg.Connection, jobs: int, *, timeout: float = 60.0) -> None:
    """Wait until ``jobs`` more jobs have finished: work flows between two faults."""
    count = "SELECT count(*) FROM job_history WHERE pool = $1"
    start = await conn.fetchval(count, POOL)

    async def progressed() -> bool:
        return await conn.fetchval(count, POOL) >= start + jobs

    await wait_for(progressed, what=f"{jobs} more jobs to finish", timeout=timeout)


@dataclass
class Chaos:
    """One chaos run: a connection to its database, its fleet, its workload."""

    conn: asyncpg.Connection
    fleet: ChaosFleet
    workload: Workload

    async def reconnect(self) -> None:
        """A new connection after a database restart (the old one is dead)."""
        self.conn.terminate()
        self.conn = await asyncpg.connect(self.fleet.dsn)


@contextlib.asynccontextmanager
async def chaos_run(
    dsn: str, log_dir: Path, *, replicas: int, concurrency: int = CONCURRENCY
) -> AsyncIterator[Chaos]:
    """A migrated database ``dsn`` made ready for a chaos run: the pool with a ring of
    ``replicas`` (no worker started yet), the attempts table, a client, and a fleet that
    is killed and reaped (logs printed) afterwards."""
    conn = await asyncpg.connect(dsn)
    fleet = ChaosFleet(dsn, log_dir, concurrency=concurrency)
    try:
        await conn.execute(ATTEMPTS_DDL)
        await pool_ensure(conn, POOL, shards=SHARDS, replicas=replicas)
        async with Client(dsn, pool=POOL, tenant=TENANT) as client:
            run = Chaos(conn, fleet, Workload(client))
            yield run
            conn = run.conn
    finally:
        fleet.close()
        await conn.close()


async def _leases(conn: asyncpg.Connection) -> list[LeaseHolding]:
    """The product's lease history, where the schema has one."""
    if await conn.fetchval("SELECT to_regclass('lease_history')") is None:
        return []
    rows = await conn.fetch(
        "SELECT shard, epoch, owner, ended_because FROM lease_history WHERE pool = $1", POOL
    )
    return [LeaseHolding(**dict(r)) for r in rows]
