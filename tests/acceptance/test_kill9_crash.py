"""Crash safety: kill -9 a real worker in the middle of a run; nothing is lost or stuck.

In this design a different ordinal never takes the shards the ring gives another
ordinal, so a crashed worker's shards come back with its ordinal, restarted (what a
StatefulSet does): the new incarnation takes its shards with a new epoch and, in the
same transaction, requeues every attempt its previous incarnation left ``running``.
"""

from __future__ import annotations

import json

import asyncpg
from acceptance_kit import (
    LEASE_TTL,
    POOL,
    SHARDS,
    Fleet,
    Lease,
    WorkerProcess,
    accepted_problems,
    assert_none,
    attempts,
    concurrent_runs,
    leases,
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

JOBS = 40
SLEEP_S = 0.3
CONCURRENCY = 4
LONG_TTL = 60.0


async def test_kill9_then_restart_takes_the_shards_at_once_and_requeues(
    client: Client, conn: asyncpg.Connection, fleet: Fleet
) -> None:
    """Pool of 1 replica: SIGKILL its worker while it runs jobs (and holds more in its
    buffer), start ordinal 0 again at once.

    The killed worker ran with a long lease TTL, so its leases are still live when its
    successor starts: the new incarnation must take its own ordinal's shards at once —
    no waiting for expiry — with a new epoch, and requeue the attempts left ``running``
    (right after the take none is left for the dead incarnation). Then every job ends
    ``succeeded`` exactly once, the killed attempts were retried (``WorkerLost``), no two
    attempts of one job overlapped, and the hot table is empty.
    """
    victim = fleet.start(0, concurrency=CONCURRENCY, lease_ttl=LONG_TTL)
    await wait_for_owners(conn, ring_owners([victim], 1), what="worker 0 to hold every shard")
    jobs = await client.submit("work", [{"sleep": SLEEP_S}] * JOBS)
    job_ids = [job.id for job in jobs]
    await _kill_while_busy(conn, victim)
    live_until = await conn.fetchval(
        "SELECT min(expires_at) FROM shard_leases WHERE owner = $1", victim.owner
    )
    held = await leases(conn)

    restarted = fleet.start(0, concurrency=CONCURRENCY)
    await _restart_takes_over(conn, victim, restarted, held, set(range(SHARDS)))
    assert await conn.fetchval("SELECT now() < $1", live_until), (
        "the restarted ordinal waited for its dead incarnation's leases to expire"
    )
    await _check_all_done_once(conn, fleet, victim, job_ids)


async def test_kill9_other_ordinals_keep_off_until_the_ordinal_restarts(
    client: Client, conn: asyncpg.Connection, fleet: Fleet
) -> None:
    """Pool of 2 replicas: SIGKILL ordinal 1 mid-run; ordinal 0 goes on.

    Nothing renews the dead worker's leases: they expire (TTL 2 s), and its claimed
    jobs stay ``running`` — nobody else may touch its shards: ordinal 0 keeps to its
    own shards, runs their jobs to the end and, heartbeat after heartbeat, never takes
    the dead ordinal's expired leases (the ring does not give them to it). When
    ordinal 1 restarts it takes its shards and requeues the orphans; every job then
    ends ``succeeded`` exactly once, with no overlapping attempts.
    """
    await pool_set_replicas(conn, POOL, 2)
    survivor = fleet.start(0, concurrency=CONCURRENCY)
    victim = fleet.start(1, concurrency=CONCURRENCY)
    await wait_for_owners(
        conn, ring_owners([survivor, victim], 2), what="ordinals 0 and 1 to hold their shards"
    )
    jobs = await client.submit("work", [{"sleep": SLEEP_S}] * JOBS)
    job_ids = [job.id for job in jobs]
    dead = {s for s in range(SHARDS) if ordinal_for(s, 2) == 1}
    orphaned = await _kill_while_busy(conn, victim)

    async def dead_leases_expired() -> dict[int, Lease] | None:
        held = await leases(conn)
        return held if not any(held[s].live for s in dead) else None

    held = await wait_for(
        dead_leases_expired, what="the dead worker's leases to expire", timeout=3 * LEASE_TTL
    )
    assert {s for s, lease in held.items() if lease.owner == victim.owner} == dead
    await _survivor_keeps_to_its_shards(conn, survivor, job_ids, dead)
    still = await conn.fetchval(
        "SELECT count(*) FROM jobs WHERE state = 'running' AND worker = $1", victim.owner
    )
    assert still == orphaned, "someone touched the dead worker's attempts"

    restarted = fleet.start(1, concurrency=CONCURRENCY)
    await _restart_takes_over(conn, victim, restarted, held, dead)
    await _check_all_done_once(conn, fleet, victim, job_ids)


async def _kill_while_busy(conn: asyncpg.Connection, victim: WorkerProcess) -> int:
    """SIGKILL ``victim`` while it runs CONCURRENCY attempts; returns how many of its
    claimed jobs it left ``running`` (in flight and buffered)."""

    async def busy() -> bool:
        mine = [a for a in await attempts(conn) if a.incarnation == victim.incarnation]
        return sum(a.ended is None for a in mine) >= CONCURRENCY

    await wait_for(busy, what=f"{victim.name} to run {CONCURRENCY} attempts")
    await victim.kill9()
    orphaned = await conn.fetchval(
        "SELECT count(*) FROM jobs WHERE state = 'running' AND worker = $1", victim.owner
    )
    assert orphaned >= 1, "the killed worker left no running attempt: nothing was tested"
    return orphaned


async def _restart_takes_over(
    conn: asyncpg.Connection,
    victim: WorkerProcess,
    restarted: WorkerProcess,
    before: dict[int, Lease],
    shards: set[int],
) -> None:
    """The restarted ordinal holds ``shards`` with new epochs, and nothing is left
    ``running`` for the dead incarnation (take and requeue are one transaction)."""
    taken = await wait_for_owners(
        conn,
        {s: restarted.owner for s in shards},
        what="the restarted ordinal to take its shards",
    )
    assert all(taken[s].epoch > before[s].epoch for s in shards), (before, taken)
    left = await conn.fetchval("SELECT count(*) FROM jobs WHERE worker = $1", victim.owner)
    assert left == 0, f"{left} attempts of the dead incarnation still running after the take"


async def _survivor_keeps_to_its_shards(
    conn: asyncpg.Connection, survivor: WorkerProcess, job_ids: list[JobId], dead: set[int]
) -> None:
    """While the victim's ordinal is down: the survivor finishes every job of its own
    shards, goes on heartbeating, and leaves the dead ordinal's expired leases alone."""

    async def own_jobs_done() -> bool:
        left = await conn.fetchval(
            "SELECT count(*) FROM jobs WHERE id = ANY($1) AND NOT (shard = ANY($2))",
            job_ids,
            list(dead),
        )
        return left == 0

    await wait_for(own_jobs_done, what="the survivor to finish the jobs of its shards")
    beats: list[object] = []

    async def two_more_heartbeats() -> bool:
        beat = await conn.fetchval(
            "SELECT heartbeat_at FROM workers WHERE incarnation = $1", survivor.incarnation
        )
        if not beats or beat != beats[-1]:
            beats.append(beat)
        return len(beats) > 2

    await wait_for(two_more_heartbeats, what="two more heartbeats of the survivor")
    held = await leases(conn)
    assert not [s for s in dead if held[s].owner == survivor.owner], held


async def _check_all_done_once(
    conn: asyncpg.Connection, fleet: Fleet, victim: WorkerProcess, job_ids: list[JobId]
) -> None:
    history = await wait_all_finished(conn, job_ids)
    found = await wait_attempts_recorded(conn, fleet)
    accepted = {
        (job_id, row["attempts"], json.loads(row["result"])["pid"])
        for job_id, row in history.items()
    }
    # Cut short by the kill: no end recorded, and not the attempt whose completion was
    # accepted (a handler may return, and its completion be written, just before the
    # kill lands and before its end is recorded).
    killed = [
        a
        for a in found
        if a.incarnation == victim.incarnation
        and a.ended is None
        and (a.job_id, a.attempt, a.pid) not in accepted
    ]
    assert killed, "no attempt was cut short by the kill"
    assert_none(
        {
            "attempts of one job ran at the same time": concurrent_runs(
                found, exited=fleet.exited_at()
            ),
            "jobs without exactly one accepted finish": accepted_problems(history, found),
            "killed attempts not requeued as WorkerLost": [
                f"job {a.job_id}: {history[a.job_id]['error_history']}"
                for a in killed
                if "WorkerLost" not in history[a.job_id]["error_history"]
            ],
        }
    )
    assert await conn.fetchval("SELECT count(*) FROM jobs WHERE pool = $1", POOL) == 0
