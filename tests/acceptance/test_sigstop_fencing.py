"""Fencing: a worker frozen (SIGSTOP) past its lease TTL, whose shards were taken over
meanwhile, cannot complete what it had claimed once resumed (SIGCONT), and nothing runs
twice at the same time.

What "two workers executing one job at the same time" can honestly mean with SIGSTOP:
a frozen process executes nothing, so the attempts the frozen worker A had in flight
did not run while the new owner B re-ran those jobs. When A resumes, those attempts
reach their end at once (their sleep is over) and hand in their completions: nothing
can stop a resumed process from reaching its next instruction. What the design
guarantees (docs/architecture.md, invariant 2; ``Ownership.valid_until``) is that those late
completions are *rejected* — the lease epoch moved on — and that A starts nothing on
shards it no longer holds. So the checks are:

* an attempt during which its process was frozen is *interrupted*: it is left out of
  the overlap check; its completion must not be the accepted one, and its job carries
  the ``WorkerLost`` error of the takeover's requeue;
* every other pair of attempts of one job — B's, A's before the freeze, anything A
  starts after SIGCONT — must not overlap in wall-clock time. The recorded
  ``[started, ended]`` of an attempt always contains its work, and the frozen window
  is stamped inside the real one (after the kernel reports the process stopped,
  before SIGCONT), so this check can only err towards reporting an overlap;
* A's log shows its late completions rejected ("N outcomes rejected"); each job has
  exactly one accepted finish (``job_history``'s primary key), ``succeeded``, by an
  attempt that ran to its end and was not interrupted;
* the takeover sticks: the resumed A does not take the shards back (their owner and
  epoch stay B's) and starts no attempt after SIGCONT.

Timing: A runs 4 jobs at a time with the rest of the batch claimed into its buffer;
A is resumed once B has finished a few jobs, so B is still busy with the others — the
moment a resumed zombie could do harm.
"""

from __future__ import annotations

import re

import asyncpg
from acceptance_kit import (
    LEASE_TTL,
    SHARDS,
    Fleet,
    Lease,
    WorkerProcess,
    accepted_problems,
    assert_none,
    attempt_end,
    attempts,
    concurrent_runs,
    interrupted,
    leases,
    ring_owners,
    wait_all_finished,
    wait_attempts_recorded,
    wait_for,
    wait_for_owners,
)

from jobpool import Client, Item
from jobpool.models import JobId
from jobpool.sharding import ordinal_for, shard_for
from jobpool.store.pools import pool_set_replicas

JOBS = 24
SLEEP_S = 0.3
CONCURRENCY = 4
REJECTED = re.compile(r"\d+ outcomes rejected")


async def test_frozen_worker_is_fenced_after_a_new_incarnation_takes_over(
    client: Client, conn: asyncpg.Connection, fleet: Fleet
) -> None:
    """Pool of 1 replica. A is frozen until its leases expire; B, a new incarnation of
    the same ordinal (a restarted StatefulSet pod), takes every shard at once with a new
    epoch and requeues A's attempts; A is resumed while B is still busy."""
    zombie = fleet.start(0, concurrency=CONCURRENCY)
    first = await wait_for_owners(conn, ring_owners([zombie], 1), what="A to hold every shard")
    jobs = await client.submit("work", [{"sleep": SLEEP_S}] * JOBS)

    await _freeze_while_busy(conn, zombie)
    successor = fleet.start(0, concurrency=CONCURRENCY)
    taken = await wait_for_owners(
        conn, ring_owners([successor], 1), what="B, a new incarnation, to take every shard"
    )
    assert all(taken[s].epoch > first[s].epoch for s in taken), (first, taken)

    await _thaw_once_busy(conn, zombie, [job.id for job in jobs])
    await _check_fenced(conn, fleet, zombie, successor, [job.id for job in jobs], taken)


async def test_frozen_worker_is_fenced_after_another_ordinal_takes_over(
    client: Client, conn: asyncpg.Connection, fleet: Fleet
) -> None:
    """Pool of 2 replicas; A is ordinal 1, B ordinal 0. While A is frozen the ring
    shrinks to 1 (a scale-down): B wants A's shards, takes them once A's leases have
    expired (a different ordinal never takes a live lease), requeues A's attempts and
    runs them; A is resumed while B is still busy. Unlike a new incarnation of A's own
    ordinal, B cannot be robbed back by A (A's ordinal wants nothing any more), so this
    isolates what A itself does when it resumes."""
    await pool_set_replicas(conn, "emails", 2)
    survivor = fleet.start(0, concurrency=CONCURRENCY)
    zombie = fleet.start(1, concurrency=CONCURRENCY)
    await wait_for_owners(
        conn, ring_owners([survivor, zombie], 2), what="ordinals 0 and 1 to hold their shards"
    )
    a_shards = [s for s in range(SHARDS) if ordinal_for(s, 2) == 1]
    keys = [k for k in (f"key-{i}" for i in range(1000)) if shard_for(k, SHARDS) in a_shards]
    items = [Item({"sleep": SLEEP_S}, key=key) for key in keys[:JOBS]]
    jobs = await client.submit("work", items)
    job_ids = [job.id for job in jobs]
    before = await leases(conn)

    await _freeze_while_busy(conn, zombie)
    await fleet.ring(1)
    taken = await wait_for_owners(
        conn, ring_owners([survivor], 1), what="ordinal 0 to take ordinal 1's expired shards"
    )
    assert all(taken[s].epoch > before[s].epoch for s in a_shards), (before, taken)

    await _thaw_once_busy(conn, zombie, job_ids)
    await _check_fenced(conn, fleet, zombie, survivor, job_ids, taken)


async def _freeze_while_busy(conn: asyncpg.Connection, zombie: WorkerProcess) -> None:
    """SIGSTOP ``zombie`` while it runs CONCURRENCY attempts; wait out its leases."""

    async def busy() -> bool:
        mine = [a for a in await attempts(conn) if a.incarnation == zombie.incarnation]
        return sum(a.ended is None for a in mine) >= CONCURRENCY

    await wait_for(busy, what=f"{zombie.name} to run {CONCURRENCY} attempts")
    await zombie.freeze()

    async def expired() -> bool:
        held = await leases(conn)
        return not any(lease.live for lease in held.values() if lease.owner == zombie.owner)

    await wait_for(expired, what="the frozen worker's leases to expire", timeout=3 * LEASE_TTL)


async def _thaw_once_busy(
    conn: asyncpg.Connection, zombie: WorkerProcess, job_ids: list[JobId]
) -> None:
    """SIGCONT ``zombie`` once the new owner has finished a few of its jobs."""

    async def some_done() -> bool:
        done = await conn.fetchval("SELECT count(*) FROM job_history WHERE id = ANY($1)", job_ids)
        return done >= CONCURRENCY

    await wait_for(some_done, what="the new owner to finish a few jobs")
    zombie.thaw()


async def _check_fenced(
    conn: asyncpg.Connection,
    fleet: Fleet,
    zombie: WorkerProcess,
    owner: WorkerProcess,
    job_ids: list[JobId],
    taken: dict[int, Lease],
) -> None:
    history = await wait_all_finished(conn, job_ids)

    async def rejected() -> bool:
        return REJECTED.search(zombie.log()) is not None

    await wait_for(rejected, what="the resumed worker's 'outcomes rejected' warning", timeout=10)
    found = await wait_attempts_recorded(conn, fleet)
    final = await leases(conn)

    exited = fleet.exited_at()
    thawed_at = zombie.frozen[-1][1]
    mine = [a for a in found if a.incarnation == zombie.incarnation]
    late = [a for a in mine if interrupted(a, attempt_end(a, exited), zombie.frozen)]
    assert any(a.outcome == "ok" for a in late), f"no attempt of A ended after SIGCONT: {late}"
    assert_none(
        {
            "attempts of one job ran at the same time (unfrozen)": concurrent_runs(
                found, exited=exited, frozen=fleet.frozen()
            ),
            "jobs without exactly one accepted, uninterrupted finish": accepted_problems(
                history, found, exclude=[a.id for a in late]
            ),
            "shards the resumed A took back from the new owner": [
                f"shard {s}: taken by {owner.owner} at epoch {taken[s].epoch}, now {lease}"
                for s, lease in sorted(final.items())
                if lease.owner != owner.owner or lease.epoch != taken[s].epoch
            ],
            "attempts A started after SIGCONT": [
                f"job {a.job_id} attempt {a.attempt} started {a.started - thawed_at:+.3f} s "
                f"after SIGCONT, ended {a.outcome}"
                for a in mine
                if a.started >= thawed_at
            ],
            "interrupted attempts whose job has no WorkerLost requeue": [
                f"job {a.job_id}: {history[a.job_id]['error_history']}"
                for a in late
                if "WorkerLost" not in history[a.job_id]["error_history"]
            ],
        }
    )
