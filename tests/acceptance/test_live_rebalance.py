"""Rebalancing under load: ring 3 -> 4 -> 2 with real workers while jobs keep coming."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
from acceptance_kit import (
    POOL,
    SHARDS,
    Fleet,
    Lease,
    accepted_problems,
    assert_none,
    concurrent_runs,
    ring_owners,
    wait_all_finished,
    wait_attempts_recorded,
    wait_for,
    wait_for_owners,
)

from jobpool import Client
from jobpool.models import JobId
from jobpool.sharding import ordinal_for
from jobpool.store.pools import pool_set_replicas

BATCH = 4
EVERY_S = 0.05
SLEEP_S = 0.05
PROGRESS = 60
"""Jobs to finish between two ring changes: the ring moves while work flows."""


async def test_ring_3_to_4_to_2_under_load(
    client: Client, conn: asyncpg.Connection, fleet: Fleet
) -> None:
    """Ordinals 0..2 serve a steady stream of short jobs. ``jobpool ring --replicas 4``
    and ordinal 3 starts; later ``jobpool ring --replicas 2`` and ordinals 2 and 3 get
    SIGTERM (a StatefulSet scaling down).

    * Each handoff moves exactly what jump hash says: once it settles, every shard's
      lease is held, live, by ``ordinal_for(shard, R)``; the shards whose ordinal did
      not change kept their lease epoch (never released, never re-taken), and on 3 -> 4
      every shard that moved went to the new ordinal 3.
    * Handoffs are drain-then-release, so nothing is interrupted: every job ends
      ``succeeded`` after exactly one attempt with an empty error history, and no two
      attempts of one job overlapped.
    * The SIGTERMed ordinals exit 0.
    """
    await pool_set_replicas(conn, POOL, 3)
    workers = [fleet.start(ordinal) for ordinal in range(3)]
    ring3 = await wait_for_owners(conn, ring_owners(workers, 3), what="ring of 3 to settle")

    submitted: list[JobId] = []
    stop = asyncio.Event()
    submitter = asyncio.create_task(_submit_steadily(client, submitted, stop))
    try:
        await _wait_progress(conn, PROGRESS)

        await fleet.ring(4)
        workers.append(fleet.start(3))
        ring4 = await wait_for_owners(conn, ring_owners(workers, 4), what="ring of 4 to settle")
        moves = _handoff_problems(ring3, ring4, 3, 4)
        assert {s for s in range(SHARDS) if ordinal_for(s, 3) != ordinal_for(s, 4)} == {
            s for s in range(SHARDS) if ordinal_for(s, 4) == 3
        }
        await _wait_progress(conn, PROGRESS)

        await fleet.ring(2)
        for worker in workers[2:]:
            worker.terminate()
        ring2 = await wait_for_owners(conn, ring_owners(workers[:2], 2), what="ring of 2 to settle")
        moves += _handoff_problems(ring4, ring2, 4, 2)
        exits = [await worker.wait_exit() for worker in workers[2:]]
        await _wait_progress(conn, PROGRESS)
    finally:
        stop.set()
        await submitter

    assert exits == [0, 0]
    history = await wait_all_finished(conn, submitted)
    found = await wait_attempts_recorded(conn, fleet)
    assert_none(
        {
            "shards that moved other than jump hash says": moves,
            "attempts of one job ran at the same time": concurrent_runs(
                found, exited=fleet.exited_at()
            ),
            "jobs without exactly one accepted finish": accepted_problems(history, found),
            "jobs interrupted by a handoff": [
                f"job {job_id}: {row['attempts']} attempts, errors {row['error_history']}"
                for job_id, row in history.items()
                if row["attempts"] != 1 or row["error_history"] != "[]"
            ],
        }
    )
    assert len(found) == len(submitted)


async def _submit_steadily(client: Client, submitted: list[JobId], stop: asyncio.Event) -> None:
    """A batch of short jobs every 50 ms until ``stop`` is set."""
    while not stop.is_set():
        jobs = await client.submit("work", [{"sleep": SLEEP_S}] * BATCH)
        submitted.extend(job.id for job in jobs)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), EVERY_S)


async def _wait_progress(conn: asyncpg.Connection, jobs: int) -> None:
    """Wait until ``jobs`` more jobs have succeeded: work flows across the change."""
    start = await conn.fetchval("SELECT count(*) FROM job_history WHERE pool = $1", POOL)

    async def progressed() -> bool:
        done = await conn.fetchval("SELECT count(*) FROM job_history WHERE pool = $1", POOL)
        return done >= start + jobs

    await wait_for(progressed, what=f"{jobs} more jobs to succeed")


def _handoff_problems(
    before: dict[int, Lease], after: dict[int, Lease], old: int, new: int
) -> list[str]:
    """Shards that ended on the wrong ordinal, or whose lease moved though their ordinal
    did not (a changed epoch: released and taken again)."""
    problems = []
    for shard in range(SHARDS):
        was, wants = ordinal_for(shard, old), ordinal_for(shard, new)
        lease = after[shard]
        if lease.ordinal != wants:
            problems.append(f"ring {old}->{new}: shard {shard} is on {lease}, wants {wants}")
        elif was == wants and lease.epoch != before[shard].epoch:
            problems.append(
                f"ring {old}->{new}: shard {shard} stays on ordinal {wants} but its epoch "
                f"moved {before[shard].epoch} -> {lease.epoch}"
            )
        elif was != wants and lease.epoch == before[shard].epoch:
            problems.append(f"ring {old}->{new}: shard {shard} moved without an epoch bump")
    return problems
