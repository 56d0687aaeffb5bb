"""Kill -9 storms: workers die mid-attempt again and again and come back as new
incarnations of their ordinals (what a StatefulSet does), while jobs and cancels flow."""

from __future__ import annotations

import random

import pytest
from chaos_load import Chaos, final_verdict, progress, running

from jobpool.store.pools import pool_set_replicas

KILLS = 8


@pytest.mark.timeout(300)
async def test_kill9_storm_loses_nothing(chaos: Chaos) -> None:
    """Ring of 3; every few finished jobs a random ordinal gets SIGKILL and its pod is
    restarted at once; right before each kill, long jobs it runs get a cancel. The
    history must show nothing lost, stuck, finished twice or
    accepted from a superseded attempt, no overlapping live attempts, no lost cancel."""
    conn, fleet, workload = chaos.conn, chaos.fleet, chaos.workload
    rng = random.Random(8)
    await pool_set_replicas(conn, "emails", 3)
    for ordinal in range(3):
        fleet.start(ordinal)
    async with running(workload):
        for _ in range(KILLS):
            await progress(conn, 20)
            victim = fleet.live()[rng.randrange(3)]
            await workload.cancel_running(conn, victim.owner, most=2)
            await victim.kill9()
            fleet.start(victim.ordinal)
    verdict = await final_verdict(conn, fleet, workload)
    assert verdict.ok, verdict.render()
    assert verdict.figures["unfinished"] == 0, verdict.render()
    assert verdict.figures["attempts_cut_short"] > 0, "no kill interrupted an attempt"
