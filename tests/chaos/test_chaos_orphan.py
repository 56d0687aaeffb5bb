"""An ordinal that never returns: its shards are adopted by the live ordinals.

In Kubernetes a StatefulSet pod on a lost node is not replaced until the node is gone
(minutes, or never). Ring of 2; ordinal 1 gets SIGKILL and stays dead. Its leases
expire within a lease TTL; once they have stayed unclaimed by their ring owner for
the orphan grace period, a live ordinal adopts them. So every job of its shards must
start within grace + 2 x TTL of the moment it was both due and orphaned (the kill,
or its submit if later), jobs already running there included (requeued by the
adoption), while cancels race — and the history must be clean.
"""

from __future__ import annotations

import time
from uuid import UUID

import pytest
from chaos_fleet import SHARDS
from chaos_load import Chaos, final_verdict, progress, running

from jobpool import Item
from jobpool.sharding import ordinal_for, shard_for

REPLICAS = 2
DEAD = 1
WAVES = 3
PER_WAVE = 12


def dead_ordinal_keys(count: int, wave: int) -> list[str]:
    """Routing keys whose shards the ring gives the ordinal that dies."""
    keys = (f"orphan-{wave}-{i}" for i in range(100_000))
    owned = (k for k in keys if ordinal_for(shard_for(k, SHARDS), REPLICAS) == DEAD)
    return [next(owned) for _ in range(count)]


@pytest.mark.timeout(300)
async def test_shards_of_an_ordinal_that_never_returns_are_adopted(chaos: Chaos) -> None:
    conn, fleet, workload = chaos.conn, chaos.fleet, chaos.workload
    for ordinal in range(REPLICAS):
        fleet.start(ordinal)
    bound_s = fleet.orphan_grace_s + 2 * fleet.lease_ttl_s
    orphans: list[UUID] = []
    async with running(workload):
        await progress(conn, 20)
        victim = fleet.live()[DEAD]
        await victim.kill9()
        killed_at = time.time()
        for wave in range(WAVES):
            before = len(workload.submitted)
            items = [Item({"s": 0.05}, key=key) for key in dead_ordinal_keys(PER_WAVE, wave)]
            await workload.submit_items("sleep", items)
            orphans += [s.id for s in workload.submitted[before:]]
            await progress(conn, PER_WAVE, timeout=4 * bound_s)
    verdict = await final_verdict(conn, fleet, workload, settle_s=60, stuck_after_s=bound_s)
    cancelled = {cancel.job_id for cancel in workload.cancels}  # may never have started
    orphans = [job for job in orphans if job not in cancelled]
    starts = await first_starts(chaos, orphans)
    submitted_at = {s.id: s.returned_at for s in workload.submitted}
    waits = {
        job: starts[job] - max(killed_at, submitted_at[job]) for job in orphans if job in starts
    }
    print(f"orphan adoption: {len(waits)} of {len(orphans)} jobs started, waits max "
          f"{max(waits.values(), default=0):.2f} s (bound {bound_s:.1f} s)")  # fmt: skip
    late = {job: round(wait, 2) for job, wait in waits.items() if wait > bound_s}
    assert len(waits) == len(orphans), f"{len(orphans) - len(waits)} orphaned jobs never started"
    assert not late, f"started later than {bound_s:.1f} s: {late}"
    assert verdict.ok, verdict.render()
    assert not fleet.live().get(DEAD), "the dead ordinal came back: nothing was tested"


async def first_starts(chaos: Chaos, jobs: list[UUID]) -> dict[UUID, float]:
    """When each job's first attempt after the kill started (recorded by its handler)."""
    rows = await chaos.conn.fetch(
        "SELECT job_id, min(started) AS started FROM chaos_attempts "
        "WHERE job_id = ANY($1::uuid[]) GROUP BY job_id",
        jobs,
    )
    return {r["job_id"]: r["started"] for r in rows}
