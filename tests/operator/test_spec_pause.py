"""spec.paused and spec.pausedTypes: the operator writes them to the pool's row (with a
Paused or Resumed Event, parked jobs of resumed types queued again), refuses a bad type
with its field path, and the JobPool status shows the pause and the parked jobs."""

from __future__ import annotations

import asyncpg
from test_operator import SPEC as POOL_SPEC

from jobpool import Client
from jobpool.errors import PoolNotFound
from jobpool.models import PoolPause
from jobpool.store.pools import pool_get

SPEC = {**POOL_SPEC, "replicas": 1}


async def pause_is(conn: asyncpg.Connection, wanted: PoolPause) -> bool:
    try:
        return (await pool_get(conn, "emails")).pause == wanted
    except PoolNotFound:
        return False  # the operator has not created the pool's row yet


async def test_the_spec_pauses_and_resumes_the_pool_and_the_status_shows_it(
    start_operator, cluster, conn, dsn
):
    await start_operator()
    await cluster.create_jobpool("emails", {**SPEC, "paused": True, "pausedTypes": ["report"]})
    wanted = PoolPause(paused=True, types=frozenset({"report"}))
    await cluster.eventually(lambda: pause_is(conn, wanted), what="the pause in the row")
    await cluster.eventually(lambda: cluster.events("emails", "Paused"), what="a Paused event")

    async with Client(dsn, pool="emails", tenant="acme") as client:
        jobs = await client.submit("report", [{"n": i} for i in range(3)])
    # What a worker does with jobs of a paused type it claimed: park them.
    await conn.execute(
        "UPDATE jobs SET state = 'paused' WHERE id = ANY($1::uuid[])", [j.id for j in jobs]
    )
    status = await cluster.eventually(
        lambda: cluster.status("emails").get("parked") == 3 and cluster.status("emails"),
        what="the parked jobs in the status",
    )
    assert status["paused"] is True
    assert status["pausedTypes"] == ["report"]

    await cluster.patch_jobpool("emails", {"spec": {"paused": False, "pausedTypes": []}})
    await cluster.eventually(lambda: pause_is(conn, PoolPause()), what="the pool resumed")
    resumed = await cluster.eventually(
        lambda: cluster.events("emails", "Resumed"), what="a Resumed event"
    )
    assert "3 parked jobs queued again" in resumed[-1]["message"]
    assert await conn.fetchval("SELECT count(*) FROM jobs WHERE state = 'queued'") == 3
    status = await cluster.eventually(
        lambda: cluster.status("emails").get("paused") is False and cluster.status("emails"),
        what="the status resumed",
    )
    assert status["pausedTypes"] == []
    assert status["parked"] == 0


async def test_a_bad_paused_type_is_an_invalid_spec_naming_the_field(start_operator, cluster, conn):
    await start_operator()
    await cluster.create_jobpool("emails", {**SPEC, "pausedTypes": ["ok", "not a type"]})
    degraded = await cluster.eventually(
        lambda: (
            cluster.condition("emails", "Degraded").get("reason") == "InvalidSpec"
            and cluster.condition("emails", "Degraded")
        ),
        what="Degraded/InvalidSpec",
    )
    assert "spec.pausedTypes[1]" in degraded["message"]
    assert await conn.fetchval("SELECT count(*) FROM pools") == 0
