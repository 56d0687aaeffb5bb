"""Shard leases against a real Postgres: take, renew, release, and the take-over rescue.

Invariant 2 starts here: a shard changes hands only when its lease is free, expired, or
re-taken by a new incarnation of the same ordinal, and every take bumps the epoch. A
take-over requeues the attempts the previous owner left ``running`` in the taken shards
(invariants 1 and 3: nothing is lost, interrupted attempts are retried).
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
from routing import routed

from jobpool import Client, JobState
from jobpool.models import Job, Pool, Priority
from jobpool.store.execution import job_claim_batch
from jobpool.store.leases import lease_holders, lease_release, lease_renew, lease_take

POOL = "emails"
SHARDS = 16
TTL = 30.0


async def _submit(client: Client, shard: int, count: int) -> list[Job]:
    jobs = await client.submit("send", routed(shard, [{"n": i} for i in range(count)]))
    assert {job.shard for job in jobs} == {shard}
    return jobs


async def _expire(conn: asyncpg.Connection, shards: Sequence[int]) -> None:
    """Backdate the leases of ``shards`` as if their holder had stopped renewing."""
    await conn.execute(
        "UPDATE shard_leases SET expires_at = now() - interval '1 second'"
        " WHERE pool = $1 AND shard = ANY($2::int[])",
        POOL,
        list(shards),
    )


async def _leases(conn: asyncpg.Connection, *, free: bool = False) -> dict[int, asyncpg.Record]:
    """The held leases of the pool (and, with ``free``, the free rows too)."""
    rows = await conn.fetch(
        "SELECT shard, owner, ordinal, epoch, expires_at,"
        " extract(epoch FROM expires_at - now())::float8 AS ttl_left"
        " FROM shard_leases WHERE pool = $1 AND (owner IS NOT NULL OR $2)",
        POOL,
        free,
    )
    return {row["shard"]: row for row in rows}


async def _claim_all(conn: asyncpg.Connection, owner: str, shards: Sequence[int]) -> list:
    lanes = dict.fromkeys(Priority, 1000)
    return await job_claim_batch(conn, POOL, owner=owner, shards=shards, lanes=lanes)


async def _job_rows(conn: asyncpg.Connection, jobs: Sequence[Job]) -> dict:
    rows = await conn.fetch(
        "SELECT id, state, worker, lease_epoch, attempts, run_at, error_history::text AS errors"
        " FROM jobs WHERE id = ANY($1::uuid[])",
        [job.id for job in jobs],
    )
    return {row["id"]: row for row in rows}


async def test_take_of_free_shards_starts_at_epoch_1(conn: asyncpg.Connection, pool: Pool) -> None:
    taken = await lease_take(conn, POOL, owner="w0-a", ordinal=0, shards=[0, 1, 2], ttl_s=TTL)

    assert taken == {0: 1, 1: 1, 2: 1}
    leases = await _leases(conn, free=True)
    assert set(leases) == set(range(SHARDS)), "a pool has a lease row for every shard"
    for shard, lease in leases.items():
        if shard in (0, 1, 2):
            assert (lease["owner"], lease["ordinal"], lease["epoch"]) == ("w0-a", 0, 1)
            assert TTL - 5 < lease["ttl_left"] <= TTL
        else:
            assert (lease["owner"], lease["epoch"]) == (None, 0), "only requested shards move"
            assert lease["ttl_left"] <= 0, "a free shard's expires_at is when it became free"


async def test_other_ordinal_cannot_take_unexpired_leases(
    conn: asyncpg.Connection, pool: Pool
) -> None:
    await lease_take(conn, POOL, owner="w0-a", ordinal=0, shards=[0, 1], ttl_s=TTL)
    before = await _leases(conn)

    assert await lease_take(conn, POOL, owner="w1-a", ordinal=1, shards=[0, 1], ttl_s=TTL) == {}
    # Of a mixed request, only the free shard is taken.
    assert await lease_take(conn, POOL, owner="w1-a", ordinal=1, shards=[1, 2], ttl_s=TTL) == {2: 1}

    after = await _leases(conn)
    for shard in (0, 1):
        held = (after[shard]["owner"], after[shard]["epoch"], after[shard]["expires_at"])
        was = (before[shard]["owner"], before[shard]["epoch"], before[shard]["expires_at"])
        assert held == was, f"a refused take changed the lease of shard {shard}"
    assert (after[2]["owner"], after[2]["ordinal"]) == ("w1-a", 1)


async def test_other_ordinal_takes_expired_leases_with_the_next_epoch(
    conn: asyncpg.Connection, pool: Pool
) -> None:
    await lease_take(conn, POOL, owner="w0-a", ordinal=0, shards=[0, 1, 2], ttl_s=TTL)
    await _expire(conn, [0, 1])

    taken = await lease_take(conn, POOL, owner="w1-a", ordinal=1, shards=[0, 1, 2], ttl_s=TTL)

    assert taken == {0: 2, 1: 2}, "shard 2 is still held; 0 and 1 expired"
    leases = await _leases(conn)
    for shard in (0, 1):
        assert (leases[shard]["owner"], leases[shard]["ordinal"]) == ("w1-a", 1)
        assert leases[shard]["ttl_left"] > TTL - 5, "a take sets a fresh expiry"
    assert (leases[2]["owner"], leases[2]["epoch"]) == ("w0-a", 1)
    # The previous holder finds out through its heartbeat.
    assert await lease_renew(conn, POOL, owner="w0-a", shards=[0, 1, 2], ttl_s=TTL) == {2: 1}


async def test_new_incarnation_of_the_same_ordinal_takes_its_leases_at_once(
    conn: asyncpg.Connection, pool: Pool
) -> None:
    await lease_take(conn, POOL, owner="w0-a", ordinal=0, shards=[0, 1], ttl_s=TTL)

    # The pod restarted under the same name: same ordinal, new incarnation, unexpired leases.
    taken = await lease_take(
        conn, POOL, owner="w0-b", ordinal=0, shards=[0, 1], ttl_s=TTL, supersede=True
    )

    assert taken == {0: 2, 1: 2}
    leases = await _leases(conn)
    assert {(lease["owner"], lease["ordinal"]) for lease in leases.values()} == {("w0-b", 0)}
    # The zombie incarnation is fenced: it cannot renew, and another ordinal still waits.
    assert await lease_renew(conn, POOL, owner="w0-a", shards=[0, 1], ttl_s=TTL) == {}
    assert await lease_take(conn, POOL, owner="w1-a", ordinal=1, shards=[0, 1], ttl_s=TTL) == {}
    # A third incarnation bumps the epoch again.
    assert await lease_take(
        conn, POOL, owner="w0-c", ordinal=0, shards=[1], ttl_s=TTL, supersede=True
    ) == {1: 3}


async def test_renew_returns_only_the_shards_still_held(
    conn: asyncpg.Connection, pool: Pool
) -> None:
    await lease_take(conn, POOL, owner="w0-a", ordinal=0, shards=[0, 1, 2, 3], ttl_s=5)
    await _expire(conn, [1])
    assert await lease_take(conn, POOL, owner="w1-a", ordinal=1, shards=[1], ttl_s=TTL) == {1: 2}
    assert await lease_release(conn, POOL, owner="w0-a", shards=[3]) == [3]

    renewed = await lease_renew(conn, POOL, owner="w0-a", shards=[0, 1, 2, 3], ttl_s=600)

    assert renewed == {0: 1, 2: 1}, "shard 1 was taken over and shard 3 released"
    leases = await _leases(conn, free=True)
    assert leases[0]["ttl_left"] > 500
    assert leases[2]["ttl_left"] > 500
    assert leases[1]["owner"] == "w1-a"
    assert leases[1]["ttl_left"] <= TTL, "renew extended a lease it does not hold"
    assert leases[3]["owner"] is None
    assert [lease["epoch"] for lease in (leases[0], leases[2])] == [1, 1], "renew bumped epoch"


async def test_release_frees_shards_for_another_ordinal_at_once(
    conn: asyncpg.Connection, pool: Pool
) -> None:
    await lease_take(conn, POOL, owner="w0-a", ordinal=0, shards=[0, 1, 2], ttl_s=TTL)

    assert sorted(await lease_release(conn, POOL, owner="w0-a", shards=[0, 1])) == [0, 1]
    leases = await _leases(conn, free=True)
    assert all(leases[s]["owner"] is None and leases[s]["ordinal"] is None for s in (0, 1))
    assert all(leases[s]["ttl_left"] <= 0 for s in (0, 1)), "free since the release"

    taken = await lease_take(conn, POOL, owner="w1-a", ordinal=1, shards=[0, 1, 2], ttl_s=TTL)
    assert taken == {0: 2, 1: 2}, "released shards are taken without waiting for the TTL"

    # Only the holder can release: neither a non-holder nor the former holder frees anything.
    assert await lease_release(conn, POOL, owner="w1-a", shards=[2]) == []
    assert await lease_release(conn, POOL, owner="w0-a", shards=[0, 1]) == []
    leases = await _leases(conn)
    assert leases[2]["owner"] == "w0-a"
    assert {leases[s]["owner"] for s in (0, 1)} == {"w1-a"}


async def test_take_over_requeues_the_previous_owners_running_attempts(
    conn: asyncpg.Connection, client: Client
) -> None:
    moved = [*await _submit(client, 0, 2), *await _submit(client, 1, 2)]
    kept = await _submit(client, 2, 2)
    await lease_take(conn, POOL, owner="w0-a", ordinal=0, shards=[0, 1, 2], ttl_s=TTL)
    assert len(await _claim_all(conn, "w0-a", [0, 1, 2])) == 6
    waiting = await _submit(client, 0, 1)  # queued in a moving shard: must stay untouched
    waiting_before = (await _job_rows(conn, waiting))[waiting[0].id]
    await _expire(conn, [0, 1])

    assert await lease_take(conn, POOL, owner="w1-a", ordinal=1, shards=[0, 1], ttl_s=TTL) == {
        0: 2,
        1: 2,
    }

    rows = await _job_rows(conn, [*moved, *kept, *waiting])
    for job in moved:
        row = rows[job.id]
        assert row["state"] == "queued"
        assert (row["worker"], row["lease_epoch"], row["attempts"]) == (None, None, 1)
        status = await client.status(job.id)
        assert status.state is JobState.QUEUED
        assert [(e.attempt, e.error_type) for e in status.error_history] == [(1, "WorkerLost")]
    for job in kept:
        row = rows[job.id]
        assert (row["state"], row["worker"], row["lease_epoch"]) == ("running", "w0-a", 1)
        assert row["errors"] == "[]"
    assert rows[waiting[0].id] == waiting_before, "a queued job of a taken shard changed"

    # The rescued attempts are due at once for the new owner, as attempt 2 under epoch 2.
    reclaimed = await _claim_all(conn, "w1-a", [0, 1])
    assert sorted(j.id for j in reclaimed) == sorted(j.id for j in [*moved, *waiting])
    assert {(j.attempt, j.epoch) for j in reclaimed if j.id != waiting[0].id} == {(2, 2)}


async def test_restarted_incarnation_requeues_what_its_predecessor_left_running(
    conn: asyncpg.Connection, client: Client
) -> None:
    jobs = await _submit(client, 5, 3)
    await lease_take(conn, POOL, owner="w0-a", ordinal=0, shards=[5], ttl_s=TTL)
    assert len(await _claim_all(conn, "w0-a", [5])) == 3

    assert await lease_take(
        conn, POOL, owner="w0-b", ordinal=0, shards=[5], ttl_s=TTL, supersede=True
    ) == {5: 2}

    rows = await _job_rows(conn, jobs)
    assert {(r["state"], r["worker"], r["lease_epoch"]) for r in rows.values()} == {
        ("queued", None, None)
    }
    assert all('"WorkerLost"' in r["errors"] for r in rows.values())
    reclaimed = await _claim_all(conn, "w0-b", [5])
    assert {(j.attempt, j.epoch) for j in reclaimed} == {(2, 2)}
    assert len(reclaimed) == 3


async def test_without_supersede_an_incarnation_cannot_take_live_leases_of_its_ordinal(
    conn: asyncpg.Connection, pool: Pool
) -> None:
    """Only a worker's first take supersedes: a resumed zombie (an older incarnation)
    cannot take its shards back from the incarnation that replaced it."""
    await lease_take(conn, POOL, owner="w0-old", ordinal=0, shards=[0, 1], ttl_s=TTL)
    await lease_take(
        conn, POOL, owner="w0-new", ordinal=0, shards=[0, 1], ttl_s=TTL, supersede=True
    )

    assert await lease_take(conn, POOL, owner="w0-old", ordinal=0, shards=[0, 1], ttl_s=TTL) == {}
    holders = await lease_holders(conn, POOL, [0, 1])
    assert holders == {0: ("w0-new", 0), 1: ("w0-new", 0)}
