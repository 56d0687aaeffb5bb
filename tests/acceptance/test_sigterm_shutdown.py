"""Graceful shutdown of a real worker process on SIGTERM."""

from __future__ import annotations

import asyncpg
from acceptance_kit import (
    POOL,
    Fleet,
    attempts,
    leases,
    ring_owners,
    wait_all_finished,
    wait_for,
    wait_for_owners,
)

from jobpool import Client


async def test_sigterm_drains_exits_0_and_releases_leases(
    client: Client, conn: asyncpg.Connection, fleet: Fleet
) -> None:
    """SIGTERM while jobs run: the process finishes them, exits 0, frees every lease.

    The running attempts end ``ok`` and their completions are accepted (the drain);
    every lease the worker held ends released (no owner, expired), so a successor needs
    no TTL wait; the worker's heartbeat row is gone.
    """
    worker = fleet.start(0, concurrency=4)
    await wait_for_owners(conn, ring_owners([worker], 1), what="worker 0 to hold every shard")
    jobs = await client.submit("work", [{"sleep": 0.5}] * 4)

    async def all_running() -> bool:
        return len(await attempts(conn)) == len(jobs)

    await wait_for(all_running, what="the 4 jobs to start")
    worker.terminate()
    assert await worker.wait_exit() == 0

    history = await wait_all_finished(conn, [job.id for job in jobs], timeout=1)
    assert {row["state"] for row in history.values()} == {"succeeded"}
    assert {row["attempts"] for row in history.values()} == {1}
    assert all(a.outcome == "ok" for a in await attempts(conn))
    held = await leases(conn)
    assert len(held) == 16
    assert all(lease.owner is None and not lease.live for lease in held.values()), held
    assert await conn.fetchval("SELECT count(*) FROM workers WHERE pool = $1", POOL) == 0
    assert "stopped cleanly" in worker.log()
