"""Lone bursts after idle: retried jobs must not be stranded while their shard's owner
lives (a missed wake-up of the timer of the earliest ``run_at`` would leave them
``queued`` and due until something else wakes the worker)."""

from __future__ import annotations

import asyncio

import pytest
from chaos_load import Chaos, final_verdict

from jobpool import Item

BURSTS = 2
BURST = 200
IDLE_S = 10.0


@pytest.mark.timeout(300)
async def test_retry_bursts_after_idle_all_run(chaos: Chaos) -> None:
    """Ring of 2; twice: ~10 s of idle, then one burst of 200 jobs that fail half of
    their attempts (backoff 0.2-1 s), so retries keep writing new ``run_at`` values
    while claims and completions go on. Nothing may stay queued past its due time."""
    conn, fleet, workload = chaos.conn, chaos.fleet, chaos.workload
    for ordinal in range(2):
        fleet.start(ordinal)
    for _ in range(BURSTS):
        await asyncio.sleep(IDLE_S)
        await workload.submit_items("flaky", [Item({"s": 0.01, "p": 0.5})] * BURST)
    verdict = await final_verdict(conn, fleet, workload, settle_s=60, stuck_after_s=20)
    assert verdict.ok, verdict.render()
    assert verdict.figures["unfinished"] == 0, verdict.render()
    assert verdict.figures["retried_jobs"] > 0, verdict.render()
