"""Claims, fencing and finishes against a real Postgres, through the store functions.

Defends invariant 2 (a claim or completion by a worker that lost the shard is rejected
by the epoch; no job is executed twice concurrently) and invariant 5 (finished jobs
leave the hot table). Jobs are submitted through the real client with routing keys
chosen to land in known shards.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from routing import routed

from jobpool import CancelOutcome, Client, Item, JobState
from jobpool.errors import JobCancelled, JobFailed
from jobpool.models import (
    ClaimedJob,
    Duration,
    ErrorRecord,
    Finish,
    Job,
    JobId,
    Pool,
    Priority,
    Retry,
)
from jobpool.sharding import shards_of
from jobpool.store.execution import job_claim_batch, job_finish_many, job_retry_many
from jobpool.store.jobs import job_cancel
from jobpool.store.leases import lease_release, lease_take

POOL = "emails"
TENANT = "acme"
SHARDS = 16
TTL = 60.0
EVERY_LANE = dict.fromkeys(Priority, 1000)


async def _submit(client: Client, shard: int, count: int = 1, **options: object) -> list[Job]:
    jobs = await client.submit(
        "send", routed(shard, [{"shard": shard, "n": i} for i in range(count)]), **options
    )
    assert {job.shard for job in jobs} == {shard}
    return jobs


async def _claim(
    conn: asyncpg.Connection,
    owner: str,
    shards: Sequence[int],
    lanes: dict[Priority, int] = EVERY_LANE,
    per_shard_limit: int | None = None,
) -> list[ClaimedJob]:
    return await job_claim_batch(
        conn, POOL, owner=owner, shards=shards, lanes=lanes, per_shard_limit=per_shard_limit
    )


async def _take(conn: asyncpg.Connection, owner: str, ordinal: int, shards: Sequence[int]) -> dict:
    taken = await lease_take(
        conn, POOL, owner=owner, ordinal=ordinal, shards=shards, ttl_s=TTL, supersede=True
    )
    assert sorted(taken) == sorted(shards), f"{owner} could not take {shards}"
    return taken


async def _expire(conn: asyncpg.Connection, shards: Sequence[int]) -> None:
    await conn.execute(
        "UPDATE shard_leases SET expires_at = now() - interval '1 second'"
        " WHERE pool = $1 AND shard = ANY($2::int[])",
        POOL,
        list(shards),
    )


async def _states(conn: asyncpg.Connection, jobs: Sequence[Job | ClaimedJob]) -> dict:
    """``{id: state}`` of jobs in the hot table (finished ones are absent)."""
    rows = await conn.fetch(
        "SELECT id, state FROM jobs WHERE id = ANY($1::uuid[])", [j.id for j in jobs]
    )
    return {row["id"]: row["state"] for row in rows}


def _ids(jobs: Sequence[Job | ClaimedJob]) -> set[JobId]:
    return {job.id for job in jobs}


def _error(attempt: int, message: str = "boom") -> ErrorRecord:
    return ErrorRecord(attempt=attempt, error_type="SMTPError", message=message, at=_now())


def _now() -> datetime:
    return datetime.now(UTC)


async def _hot_count(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT count(*) FROM jobs WHERE pool = $1", POOL)


# -- what a claim takes ------------------------------------------------------------------


async def test_claim_takes_only_from_shards_leased_to_the_owner(
    conn: asyncpg.Connection, client: Client
) -> None:
    mine = [*await _submit(client, 0, 2), *await _submit(client, 1, 2)]
    others = await _submit(client, 2, 2)
    free = await _submit(client, 3, 2)
    await _take(conn, "w0", 0, [0, 1])
    await _take(conn, "w1", 1, [2])

    # Asking for every shard does not widen the claim: the lease join decides.
    claimed = await _claim(conn, "w0", range(SHARDS))

    assert _ids(claimed) == _ids(mine)
    states = await _states(conn, [*others, *free])
    assert len(states) == 4
    assert set(states.values()) == {"queued"}
    assert await _claim(conn, "w0", [2, 3]) == []


async def test_claim_stops_when_the_owners_lease_expired(
    conn: asyncpg.Connection, client: Client
) -> None:
    await _take(conn, "w0", 0, [0, 1])
    jobs = [*await _submit(client, 0), *await _submit(client, 1)]
    await _expire(conn, [1])

    claimed = await _claim(conn, "w0", [0, 1])

    assert [j.shard for j in claimed] == [0], "an expired lease must not be claimed from"
    assert (await _states(conn, jobs))[jobs[1].id] == "queued"


async def test_claim_serves_only_the_lanes_asked_for(
    conn: asyncpg.Connection, client: Client
) -> None:
    low = await _submit(client, 0, 3, priority="low")
    high = await _submit(client, 0, 2, priority="high")
    critical = await _submit(client, 0, 1, priority="critical")
    await _take(conn, "w0", 0, [0])

    got_high = await _claim(conn, "w0", [0], {Priority.HIGH: 10})
    assert _ids(got_high) == _ids(high)
    assert {j.priority for j in got_high} == {Priority.HIGH}
    assert await _claim(conn, "w0", [0], {Priority.NORMAL: 10}) == []

    # Several lanes in one round trip, each up to its own want.
    got = await _claim(conn, "w0", [0], {Priority.LOW: 2, Priority.CRITICAL: 5})
    assert Counter(j.priority for j in got) == {Priority.LOW: 2, Priority.CRITICAL: 1}
    assert _ids(got) <= _ids([*low, *critical])
    assert list((await _states(conn, low)).values()).count("queued") == 1


async def test_claim_takes_only_due_jobs(conn: asyncpg.Connection, client: Client) -> None:
    [later] = await _submit(client, 0, delay=timedelta(hours=1))
    [now] = await _submit(client, 0)
    [overdue] = await _submit(client, 0, run_at=_now() - timedelta(minutes=5))
    await _take(conn, "w0", 0, [0])

    assert _ids(await _claim(conn, "w0", [0])) == {now.id, overdue.id}
    assert await _states(conn, [later]) == {later.id: "queued"}
    assert await _claim(conn, "w0", [0]) == [], "a delayed job was claimed before it was due"

    await conn.execute("UPDATE jobs SET run_at = now() - interval '1 ms' WHERE id = $1", later.id)
    assert _ids(await _claim(conn, "w0", [0])) == {later.id}


async def test_claim_is_fifo_by_run_at_within_a_shard(
    conn: asyncpg.Connection, client: Client
) -> None:
    base = _now() - timedelta(hours=1)
    offsets = [7, 2, 9, 0, 4, 1]
    items = [Item(payload={"offset": m}, run_at=base + timedelta(minutes=m)) for m in offsets]
    jobs = await client.submit("send", routed(4, items))
    await _take(conn, "w0", 0, [4])

    order = []
    for _ in offsets:
        [job] = await _claim(conn, "w0", [4], {Priority.NORMAL: 1})
        order.append(job.payload["offset"])

    assert order == sorted(offsets)
    assert len(jobs) == len(offsets)


async def test_claim_takes_the_oldest_across_shards(
    conn: asyncpg.Connection, client: Client
) -> None:
    base = _now() - timedelta(hours=1)
    for shard, minutes in [(0, (1, 3, 5)), (1, (2, 4, 6))]:
        items = [Item(payload={"m": m}, run_at=base + timedelta(minutes=m)) for m in minutes]
        await client.submit("send", routed(shard, items))
    await _take(conn, "w0", 0, [0, 1])

    got = await _claim(conn, "w0", [0, 1], {Priority.NORMAL: 3})

    assert sorted(j.payload["m"] for j in got) == [1, 2, 3]


async def test_claim_respects_the_lane_want_and_the_per_shard_limit(
    conn: asyncpg.Connection, client: Client
) -> None:
    jobs = [*await _submit(client, 0, 10), *await _submit(client, 1, 10)]
    await _take(conn, "w0", 0, [0, 1])

    assert len(await _claim(conn, "w0", [0, 1], {Priority.NORMAL: 7})) == 7

    bounded = await _claim(conn, "w0", [0, 1], {Priority.NORMAL: 100}, per_shard_limit=2)
    assert Counter(j.shard for j in bounded) == {0: 2, 1: 2}
    states = Counter((await _states(conn, jobs)).values())
    assert states == {"running": 11, "queued": 9}


async def test_claimed_rows_run_under_the_owner_and_its_current_epoch(
    conn: asyncpg.Connection, client: Client
) -> None:
    await _take(conn, "w3-a", 3, [3])
    await _take(conn, "w3-b", 3, [3])  # a restart: epoch 2
    [job] = await client.submit(
        "send",
        routed(3, [{"to": "a@example.com"}]),
        priority="high",
        max_attempts=5,
        duration="long",
        request_id="req-1",
        user_id="u-1",
    )

    [claimed] = await _claim(conn, "w3-b", [3])

    assert claimed.id == job.id
    assert (claimed.attempt, claimed.epoch, claimed.shard) == (1, 2, 3)
    assert (claimed.tenant, claimed.type, claimed.priority) == (TENANT, "send", Priority.HIGH)
    assert claimed.payload == {"to": "a@example.com"}
    assert (claimed.max_attempts, claimed.duration) == (5, Duration.LONG)
    assert (claimed.request_id, claimed.user_id) == ("req-1", "u-1")
    row = await conn.fetchrow(
        "SELECT state, attempts, worker, lease_epoch, started_at FROM jobs WHERE id = $1", job.id
    )
    assert (row["state"], row["attempts"], row["worker"], row["lease_epoch"]) == (
        "running",
        1,
        "w3-b",
        2,
    )
    assert row["started_at"] is not None
    status = await client.status(job.id)
    assert (status.state, status.attempts) == (JobState.RUNNING, 1)


async def test_cancelled_job_is_not_claimed(conn: asyncpg.Connection, client: Client) -> None:
    cancelled, kept = await _submit(client, 0, 2)
    await _take(conn, "w0", 0, [0])

    assert await client.cancel(cancelled.id) is CancelOutcome.CANCELLED
    claimed = await _claim(conn, "w0", [0])

    assert _ids(claimed) == {kept.id}
    assert (await client.status(cancelled.id)).state is JobState.CANCELLED


async def test_job_cancelled_while_a_claim_waits_on_it_is_skipped(
    conn: asyncpg.Connection, dsn: str, client: Client
) -> None:
    [job] = await _submit(client, 0)
    await _take(conn, "w0", 0, [0])
    canceller = await asyncpg.connect(dsn)
    try:
        tx = canceller.transaction()
        await tx.start()
        assert await job_cancel(canceller, POOL, TENANT, job.id) is CancelOutcome.CANCELLED
        # The claim's snapshot still sees the job queued; its UPDATE waits on the row lock.
        claim = asyncio.create_task(_claim(conn, "w0", [0]))
        await _until_waiting_on_a_lock(canceller, conn.get_server_pid())
        await tx.commit()
        assert await asyncio.wait_for(claim, timeout=10) == []
    finally:
        await canceller.close()
    assert (await client.status(job.id)).state is JobState.CANCELLED
    assert await _hot_count(conn) == 0


async def _until_waiting_on_a_lock(observer: asyncpg.Connection, pid: int) -> None:
    """Poll the server until backend ``pid`` waits on a lock (a state, not a timing)."""
    waiting = "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1"
    async with asyncio.timeout(10):
        while not await observer.fetchval(waiting, pid):  # noqa: ASYNC110 - no event to await
            await asyncio.sleep(0.005)


# -- fencing -----------------------------------------------------------------------------


async def _move_by_expiry(conn: asyncpg.Connection, shard: int) -> str:
    await _expire(conn, [shard])
    await _take(conn, "w1-a", 1, [shard])
    return "w1-a"


async def _move_by_restart(conn: asyncpg.Connection, shard: int) -> str:
    await _take(conn, "w0-b", 0, [shard])
    return "w0-b"


async def _move_by_release(conn: asyncpg.Connection, shard: int) -> str:
    # The release itself is what a draining owner does; a zombie copy of it keeps going.
    assert await lease_release(conn, POOL, owner="w0-a", shards=[shard]) == [shard]
    await _take(conn, "w1-a", 1, [shard])
    return "w1-a"


@pytest.mark.parametrize("move", [_move_by_expiry, _move_by_restart, _move_by_release])
async def test_an_owner_that_lost_the_shard_can_neither_claim_nor_complete(
    conn: asyncpg.Connection, client: Client, move
) -> None:
    jobs = await _submit(client, 0, 3)
    await _take(conn, "w0-a", 0, [0])
    first, second, third = await _claim(conn, "w0-a", [0])
    await _submit(client, 0, 2)  # new work the old owner must not get

    new_owner = await move(conn, 0)

    finished = await job_finish_many(
        conn,
        POOL,
        owner="w0-a",
        finishes=[
            Finish(job_id=first.id, state=JobState.SUCCEEDED, result_json="{}"),
            Finish(job_id=third.id, state=JobState.DEAD, reason="boom", error=_error(1)),
        ],
    )
    retried = await job_retry_many(
        conn,
        POOL,
        owner="w0-a",
        retries=[Retry(job_id=second.id, run_at=_now(), error=_error(1))],
    )
    assert (finished, retried) == ([], [])
    assert await _claim(conn, "w0-a", [0]) == []
    # Nothing moved: the attempts were requeued by the take-over, nothing more.
    rows = await conn.fetch(
        "SELECT state, worker, error_history::text AS errors FROM jobs WHERE id = ANY($1::uuid[])",
        [j.id for j in jobs],
    )
    assert len(rows) == 3
    assert {(r["state"], r["worker"]) for r in rows} == {("queued", None)}
    assert all(json.loads(r["errors"])[-1]["error_type"] == "WorkerLost" for r in rows)
    assert await conn.fetchval("SELECT count(*) FROM job_history") == 0
    assert await conn.fetchval("SELECT count(*) FROM job_dlq") == 0

    # The new owner re-runs them; the old owner still cannot touch them while they run.
    reclaimed = await _claim(conn, new_owner, [0])
    assert len(reclaimed) == 5
    assert _ids(jobs) <= _ids(reclaimed)
    stale = [Finish(job_id=j.id, state=JobState.SUCCEEDED) for j in reclaimed]
    assert await job_finish_many(conn, POOL, owner="w0-a", finishes=stale) == []
    assert set(await job_finish_many(conn, POOL, owner=new_owner, finishes=stale)) == _ids(
        reclaimed
    )
    assert await _hot_count(conn) == 0


# -- invariant 2 under concurrency ----------------------------------------------------------


async def test_concurrent_owners_claim_every_job_exactly_once(
    conn: asyncpg.Connection, dsn: str, client: Client
) -> None:
    """Two live owners on disjoint halves, each with two claiming connections, and stale
    incarnations of both racing them: every job is claimed (and finished) exactly once."""
    lanes = list(Priority)
    items = [Item(payload={"n": i}, priority=lanes[i % 4]) for i in range(2000)]
    submitted = await client.submit("send", items)
    halves = {o: shards_of(o, shards=SHARDS, replicas=2) for o in (0, 1)}
    assert sorted(halves[0] + halves[1]) == list(range(SHARDS))
    assert halves[0]
    assert halves[1]
    for ordinal, shards in halves.items():
        await _take(conn, f"w{ordinal}-old", ordinal, shards)
        await _take(conn, f"w{ordinal}", ordinal, shards)  # restart: the old ones are stale

    claims: dict[str, list[JobId]] = {}
    finished: list[JobId] = []
    done = asyncio.Event()
    conns = [await asyncpg.connect(dsn) for _ in range(5)]
    try:
        racer = asyncio.create_task(_race(conns[4], ["w0-old", "w1-old"], claims, done))
        workers = []
        for i, c in enumerate(conns[:4]):
            owner = f"w{i % 2}"
            claimed = claims.setdefault(f"{owner}/{i}", [])
            workers.append(_work(c, owner, halves[i % 2], claimed, finished))
        await asyncio.gather(*workers)
        done.set()
        racer_rounds = await racer
    finally:
        for c in conns:
            await c.close()

    counts = Counter(job_id for ids in claims.values() for job_id in ids)
    assert [job_id for job_id, n in counts.items() if n > 1] == [], "claimed more than once"
    assert set(counts) == _ids(submitted)
    assert Counter(finished) == Counter(_ids(submitted)), "finished twice, or not at all"
    assert racer_rounds > 0, "the stale owners never got to race"
    shard_of = {job.id: job.shard for job in submitted}
    for key, ids in claims.items():
        half = halves[int(key[1])]
        assert {shard_of[i] for i in ids} <= set(half), f"{key} claimed outside its leases"
    assert await _hot_count(conn) == 0
    history = await conn.fetchrow(
        "SELECT count(*) AS n, count(*) FILTER (WHERE state = 'succeeded' AND attempts = 1)"
        " AS clean FROM job_history"
    )
    assert (history["n"], history["clean"]) == (2000, 2000)


async def _work(
    conn: asyncpg.Connection,
    owner: str,
    shards: list[int],
    claimed: list[JobId],
    finished: list[JobId],
) -> None:
    """Claim from every shard (the lease decides) and finish, until our half is drained."""
    while True:
        got = await _claim(conn, owner, range(SHARDS), dict.fromkeys(Priority, 50), 20)
        if got:
            claimed.extend(j.id for j in got)
            done = [Finish(job_id=j.id, state=JobState.SUCCEEDED, result_json="1") for j in got]
            finished.extend(await job_finish_many(conn, POOL, owner=owner, finishes=done))
        elif not await conn.fetchval(
            "SELECT count(*) FROM jobs WHERE pool = $1 AND shard = ANY($2::int[])", POOL, shards
        ):
            return


async def _race(
    conn: asyncpg.Connection,
    stale: list[str],
    claims: dict[str, list[JobId]],
    done: asyncio.Event,
) -> int:
    """Claim and complete as the stale incarnations until the live owners are done."""
    rounds = 0
    while not done.is_set():
        for owner in stale:
            assert await _claim(conn, owner, range(SHARDS)) == [], f"{owner} claimed"
            recent = [ids[-1] for ids in claims.values() if ids]
            finishes = [Finish(job_id=i, state=JobState.SUCCEEDED) for i in recent]
            assert await job_finish_many(conn, POOL, owner=owner, finishes=finishes) == []
        rounds += 1
        await asyncio.sleep(0)
    return rounds


# -- finishing ---------------------------------------------------------------------------


async def test_finish_moves_a_mixed_batch_out_of_the_hot_table(
    conn: asyncpg.Connection, client: Client
) -> None:
    ok, dead, cancelled = await client.submit(
        "send",
        routed(6, [{"n": 1}, {"n": 2}, {"n": 3}]),
        request_id="req-9",
        user_id="u-9",
    )
    await _take(conn, "w0", 0, [6])
    assert len(await _claim(conn, "w0", [6])) == 3
    last_error = _error(1, "mailbox full")

    finished = await job_finish_many(
        conn,
        POOL,
        owner="w0",
        finishes=[
            Finish(job_id=ok.id, state=JobState.SUCCEEDED, result_json='{"sent": true}'),
            Finish(job_id=dead.id, state=JobState.DEAD, reason="Permanent", error=last_error),
            Finish(job_id=cancelled.id, state=JobState.CANCELLED),
        ],
    )

    assert set(finished) == {ok.id, dead.id, cancelled.id}
    assert await _hot_count(conn) == 0, "finished jobs stayed in the hot table"
    history = {
        r["id"]: r
        for r in await conn.fetch(
            "SELECT id, state, attempts, result::text, error_history::text AS errors,"
            " finished_at FROM job_history"
        )
    }
    assert {i: r["state"] for i, r in history.items()} == {
        ok.id: "succeeded",
        dead.id: "dead",
        cancelled.id: "cancelled",
    }
    assert json.loads(history[ok.id]["result"]) == {"sent": True}
    assert all(r["attempts"] == 1 and r["finished_at"] is not None for r in history.values())
    assert [e["message"] for e in json.loads(history[dead.id]["errors"])] == ["mailbox full"]

    dlq = await conn.fetch(
        "SELECT original_job_id, app_id, type, payload::text, error_reason, attempts,"
        " error_history::text AS errors, request_id, user_id FROM job_dlq"
    )
    assert len(dlq) == 1, "only the dead job belongs in the DLQ"
    entry = dlq[0]
    assert (entry["original_job_id"], entry["app_id"], entry["type"]) == (dead.id, TENANT, "send")
    assert json.loads(entry["payload"]) == {"n": 2}
    assert (entry["error_reason"], entry["attempts"]) == ("Permanent", 1)
    assert json.loads(entry["errors"])[0]["error_type"] == "SMTPError"
    assert (entry["request_id"], entry["user_id"]) == ("req-9", "u-9")

    # What a caller sees.
    assert await client.result(ok.id, timeout=5) == {"sent": True}
    with pytest.raises(JobFailed):
        await client.result(dead.id, timeout=5)
    with pytest.raises(JobCancelled):
        await client.result(cancelled.id, timeout=5)


async def test_retry_requeues_at_the_backoff_time(
    conn: asyncpg.Connection, client: Client, pool: Pool
) -> None:
    [job] = await _submit(client, 7)
    await _take(conn, "w0", 0, [7])
    await _claim(conn, "w0", [7])

    retry = Retry(job_id=job.id, run_at=_now() + timedelta(hours=1), error=_error(1))
    assert await job_retry_many(conn, POOL, owner="w0", retries=[retry]) == [job.id]

    status = await client.status(job.id)
    assert (status.state, status.attempts) == (JobState.QUEUED, 1)
    assert [e.error_type for e in status.error_history] == ["SMTPError"]
    assert await _claim(conn, "w0", [7]) == [], "a backed-off job was claimed early"
    await conn.execute("UPDATE jobs SET run_at = now() WHERE id = $1", job.id)
    [again] = await _claim(conn, "w0", [7])
    assert (again.id, again.attempt) == (job.id, 2)
