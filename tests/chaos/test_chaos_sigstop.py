"""SIGSTOP past the lease TTL: a frozen worker, replaced by a new incarnation of its
ordinal or not, is fenced when it resumes; its shards' jobs neither stall nor run
twice, and cancels sent meanwhile stick."""

from __future__ import annotations

import asyncio

import pytest
from chaos_fleet import WorkerProcess
from chaos_load import Chaos, final_verdict, progress, running

FROZEN_TTLS = 3
"""How long a worker stays frozen, in lease TTLs: its leases surely expire."""


async def _freeze_past_ttl(chaos: Chaos, victim: WorkerProcess) -> None:
    await progress(chaos.conn, 20)
    await victim.freeze()
    await asyncio.sleep(FROZEN_TTLS * chaos.fleet.lease_ttl_s)


@pytest.mark.timeout(300)
async def test_frozen_worker_replaced_by_a_new_incarnation(chaos: Chaos) -> None:
    """Ring of 2; ordinal 1 is frozen while busy past its lease TTL, then a new
    incarnation of ordinal 1 starts (its pod replaced) and takes its shards at once;
    the zombie resumes while work goes on; then ordinal 0 goes through the same."""
    conn, fleet, workload = chaos.conn, chaos.fleet, chaos.workload
    for ordinal in range(2):
        fleet.start(ordinal)
    async with running(workload):
        for ordinal in (1, 0):
            zombie = fleet.live()[ordinal]
            await _freeze_past_ttl(chaos, zombie)
            fleet.start(ordinal)
            await progress(conn, 20)
            zombie.thaw()
            await progress(conn, 20)
    verdict = await final_verdict(conn, fleet, workload)
    assert verdict.ok, verdict.render()
    assert verdict.figures["unfinished"] == 0, verdict.render()


@pytest.mark.timeout(300)
async def test_frozen_worker_without_a_replacement(chaos: Chaos) -> None:
    """Ring of 2; ordinal 1 is frozen for three lease TTLs, nobody replaces it (its
    shards may be adopted by ordinal 0 meanwhile), then it resumes: what it had in
    flight must not be accepted over a newer attempt, nor overlap one."""
    conn, fleet, workload = chaos.conn, chaos.fleet, chaos.workload
    for ordinal in range(2):
        fleet.start(ordinal)
    async with running(workload):
        victim = fleet.live()[1]
        for _ in range(2):
            await _freeze_past_ttl(chaos, victim)
            victim.thaw()
    verdict = await final_verdict(conn, fleet, workload)
    assert verdict.ok, verdict.render()
    assert verdict.figures["unfinished"] == 0, verdict.render()
