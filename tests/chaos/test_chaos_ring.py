"""Ring storms: the pool scales 1 -> 6 -> 2 -> 5 under load, each step as a
StatefulSet does it (new ring, then the highest ordinals started or stopped), with
cancels racing the handoffs."""

from __future__ import annotations

import pytest
from chaos_load import Chaos, final_verdict, progress, running

STORM = (6, 2, 5)


@pytest.mark.timeout(300)
async def test_ring_storm_1_6_2_5(chaos: Chaos) -> None:
    conn, fleet, workload = chaos.conn, chaos.fleet, chaos.workload
    await fleet.scale(1)
    async with running(workload, batch=12):
        for replicas in STORM:
            await progress(conn, 30)
            await fleet.scale(replicas)
        await progress(conn, 30)
    verdict = await final_verdict(conn, fleet, workload)
    assert verdict.ok, verdict.render()
    assert verdict.figures["unfinished"] == 0, verdict.render()
    assert sorted(fleet.live()) == list(range(STORM[-1]))
