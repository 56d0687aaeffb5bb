"""A claim in flight leaves no slot idle: buffered jobs start in the slots that free up
meanwhile (a claim's round trip is longer than a short job).

Deterministic: the worker's second claim is held until a job has started during it (or
``HOLD_S`` has passed, and the test fails). Concurrency 1 and lanes of 4: the
first claim buffers 4 jobs, and when the second claim begins (the lane at half its
capacity) the running job ends and a buffered one is waiting for its slot.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from worker_runtime_helpers import result_of, running_worker

from jobpool import Client, Context
from jobpool.store import execution
from jobpool.worker import Registry

BOUND = 30.0
HOLD_S = 3.0  # how long the held claim waits for a start: past it, the test fails
JOBS = 6


@pytest.mark.usefixtures("pool")
async def test_buffered_jobs_start_while_a_claim_is_in_flight(
    dsn: str, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[int] = []
    registry = Registry()

    @registry.handler("step")
    async def step(payload: Any, ctx: Context) -> None:
        started.append(payload["n"])

    claims = 0
    starts_during_held_claim: list[int] = []
    claim_batch = execution.job_claim_batch

    async def held_claim(*args: Any, **kwargs: Any) -> Any:
        nonlocal claims
        claims += 1
        if claims == 2:  # the first claim that finds buffered jobs behind it
            before = len(started)
            try:
                async with asyncio.timeout(HOLD_S):
                    while len(started) == before:  # noqa: ASYNC110 - a handler appends
                        await asyncio.sleep(0.01)
            except TimeoutError:
                pass
            starts_during_held_claim.append(len(started) - before)
        return await claim_batch(*args, **kwargs)

    monkeypatch.setattr(execution, "job_claim_batch", held_claim)
    jobs = await client.submit("step", [{"n": n} for n in range(JOBS)])
    async with running_worker(dsn, registry, concurrency=1, lane_prefetch=4):
        for job in jobs:
            assert await result_of(client, job.id, timeout=BOUND) is None

    assert claims >= 2
    assert starts_during_held_claim
    assert starts_during_held_claim[0] >= 1, "a slot stayed idle while the claim was in flight"
    assert sorted(started) == list(range(JOBS))
