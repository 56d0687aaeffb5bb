"""Scheduling in the real worker: weighted priority lanes, NOTIFY wake-ups, timers.

Defends docs/architecture.md, "Scheduling" and invariant 4: with every lane saturated a worker
serves critical/high/normal/low 4:3:2:1 and never starves ``low``; a lone lane gets
every slot; an idle worker makes no claim queries (no poll loop) yet starts a new job
at once when its NOTIFY arrives, also when that NOTIFY lands while a claim is in
flight; a delayed job and a retry's backoff are served by the timer, with no NOTIFY.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from worker_runtime_helpers import result_of, running_worker

from jobpool import Client, Context, Priority, Registry
from jobpool.store import execution
from jobpool.worker.dispatcher import Dispatcher

FIGURES = logging.getLogger("tests.figures")  # measured figures, for the log
BOUND = 5.0
WEIGHTS = {Priority.CRITICAL: 4, Priority.HIGH: 3, Priority.NORMAL: 2, Priority.LOW: 1}


class Calls:
    """Counts the calls of ``jobpool.store.execution.<name>`` that the worker makes (the
    worker looks the function up on that module at each call)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        self.count = 0
        self.returned = asyncio.Event()
        original = getattr(execution, name)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            try:
                return await original(*args, **kwargs)
            finally:
                self.returned.set()

        monkeypatch.setattr(execution, name, counted)


async def test_saturated_lanes_are_served_4_3_2_1(dsn: str, client: Client) -> None:
    per_lane = 200
    window = 400  # critical, the fastest lane, has run ~160 < 200 of its jobs by then
    registry = Registry()
    order: list[Priority] = []
    enough = asyncio.Event()

    @registry.handler("weighted")
    async def weighted(payload: Any, ctx: Context) -> None:
        order.append(ctx.priority)
        if len(order) >= window:
            enough.set()

    for priority in reversed(Priority):  # low first: submission order must not matter
        await client.submit("weighted", [{"n": n} for n in range(per_lane)], priority=priority)

    async with running_worker(dsn, registry, concurrency=1):
        async with asyncio.timeout(30):
            await enough.wait()

    picks = order[:window]
    counts = Counter(picks)
    assert all(counts[p] < per_lane for p in Priority), "a lane ran dry inside the window"
    total_weight = sum(WEIGHTS.values())
    shares = {p.value: counts[p] / window for p in Priority}
    FIGURES.info(
        "picks per lane in the first %d: %s", window, {p.value: counts[p] for p in Priority}
    )
    for priority, weight in WEIGHTS.items():
        expected = weight / total_weight
        assert abs(shares[priority.value] - expected) <= 0.1 * expected, shares
    # Interleaved, not in bursts: no lane runs more than its weight in a row, and the
    # lightest lane is served at least once every total-weight picks.
    longest = {p: 0 for p in Priority}
    run_length = 0
    for i, lane in enumerate(picks):
        run_length = run_length + 1 if i and picks[i - 1] is lane else 1
        longest[lane] = max(longest[lane], run_length)
    assert all(longest[p] <= WEIGHTS[p] for p in Priority), longest
    lows = [i for i, lane in enumerate(picks) if lane is Priority.LOW]
    assert lows[0] < total_weight
    assert max(b - a for a, b in itertools.pairwise(lows)) <= total_weight


async def test_a_lone_low_lane_gets_every_slot(dsn: str, client: Client) -> None:
    concurrency = 4
    registry = Registry()
    running: list[Priority] = []
    most = 0
    full = asyncio.Event()
    release = asyncio.Event()

    @registry.handler("lowly")
    async def lowly(payload: Any, ctx: Context) -> int:
        nonlocal most
        running.append(ctx.priority)
        most = max(most, len(running))
        if len(running) == concurrency:
            full.set()
        await release.wait()
        running.remove(ctx.priority)
        return payload["n"]

    jobs = await client.submit("lowly", [{"n": n} for n in range(3 * concurrency)], priority="low")
    async with running_worker(dsn, registry, concurrency=concurrency) as run:
        async with asyncio.timeout(BOUND):
            await full.wait()
        assert running == [Priority.LOW] * concurrency
        assert len(run.worker.dispatcher.running) == concurrency
        release.set()
        assert [await result_of(client, job.id) for job in jobs] == list(range(len(jobs)))

    assert most == concurrency


async def test_idle_worker_makes_no_claims_and_wakes_on_notify(
    dsn: str, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims = Calls(monkeypatch, "job_claim_batch")
    registry = Registry()
    started_at: list[float] = []
    started = asyncio.Event()

    @registry.handler("ping")
    async def ping(payload: Any, ctx: Context) -> str:
        started_at.append(time.monotonic())
        started.set()
        return "pong"

    async with running_worker(dsn, registry):
        # The worker's first claim (at start, nothing queued) is its last until woken.
        async with asyncio.timeout(BOUND):
            await claims.returned.wait()
        idle_claims = claims.count
        await asyncio.sleep(1.0)  # proving that nothing happens: no poll loop
        assert claims.count == idle_claims, f"{claims.count - idle_claims} claims while idle"

        submitted = time.monotonic()
        job = await client.submit("ping", {})
        async with asyncio.timeout(2.0):
            await started.wait()
        assert await result_of(client, job.id) == "pong"

    latency = started_at[0] - submitted
    FIGURES.info("idle worker, submit() call to handler start: %.2f ms", latency * 1000)
    assert latency < 2.0


async def test_notify_arriving_while_a_claim_is_in_flight_is_not_lost(
    dsn: str, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job committed just after a claim read the queue (so the claim missed it), whose
    NOTIFY reaches the worker before that claim has returned: the wake-up must still
    lead to a claim that finds it. The claim is held only as long as it takes."""
    registry = Registry()
    started = asyncio.Event()

    @registry.handler("ping")
    async def ping(payload: Any, ctx: Context) -> str:
        started.set()
        return "pong"

    async with running_worker(dsn, registry) as run:
        claim_batch = execution.job_claim_batch
        claimed = asyncio.Event()
        release = asyncio.Event()

        async def held_claim(*args: Any, **kwargs: Any) -> Any:
            result = await claim_batch(*args, **kwargs)
            if not claimed.is_set():  # hold the first claim only
                claimed.set()
                async with asyncio.timeout(BOUND):
                    await release.wait()
            return result

        monkeypatch.setattr(execution, "job_claim_batch", held_claim)
        dispatcher = run.worker.dispatcher
        on_notify = dispatcher.on_notify

        def notified(payload: str) -> None:
            on_notify(payload)
            release.set()  # the wake-up is in: now let the claim return

        dispatcher.on_notify = notified  # type: ignore[method-assign]
        dispatcher.wake(new_work=True)  # e.g. a finished job: the worker claims again
        async with asyncio.timeout(BOUND):
            await claimed.wait()  # that claim has read the queue (empty) ...
        job = await client.submit("ping", {})  # ... then this job and its NOTIFY arrive
        try:
            async with asyncio.timeout(2.0):
                await started.wait()
        except TimeoutError:
            pytest.fail("a job whose NOTIFY arrived during a claim was not started within 2 s")
        assert await result_of(client, job.id) == "pong"


async def test_delayed_job_runs_on_the_timer(dsn: str, client: Client) -> None:
    registry = Registry()
    started_at: list[datetime] = []

    @registry.handler("later")
    async def later(payload: Any, ctx: Context) -> str:
        started_at.append(datetime.now(UTC))
        return "on time"

    async with running_worker(dsn, registry) as run:
        dispatcher = run.worker.dispatcher
        notified: list[float] = []
        on_notify = dispatcher.on_notify

        def recording(payload: str) -> None:
            notified.append(time.monotonic())
            on_notify(payload)

        dispatcher.on_notify = recording  # type: ignore[method-assign]
        submitted = time.monotonic()
        job = await client.submit("later", {}, delay=1.0)
        assert await result_of(client, job.id, timeout=BOUND) == "on time"

    [start] = started_at
    assert start >= job.run_at
    assert (start - job.run_at).total_seconds() < 0.5
    # The submit's NOTIFY came (and found nothing due); the start was the timer's doing.
    assert notified, "the submit's NOTIFY never reached the worker"
    assert all(t < submitted + 0.5 for t in notified), "a NOTIFY arrived near the due time"


async def test_retry_runs_after_its_backoff_even_if_written_after_the_dispatcher_looked(
    dsn: str, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retry's write and the dispatcher's claim race after a failure (they run on
    two connections at once). Here the write is held until the dispatcher has claimed
    and asked for the next due time, as happens whenever the write is the slower one:
    the retried job must still run when its backoff (<= 0.2 s) ends."""
    dispatchers: list[Dispatcher] = []
    retry_many = execution.job_retry_many

    async def late_retry_many(*args: Any, **kwargs: Any) -> Any:
        # Held until the dispatcher has armed its claim timer after the failure (if it
        # does not look, another design, the write goes anyway after 1 s).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(dispatchers[0].timer_armed.wait(), 1.0)
        return await retry_many(*args, **kwargs)

    monkeypatch.setattr(execution, "job_retry_many", late_retry_many)
    registry = Registry()

    @registry.handler("fails.once")
    async def fails_once(payload: Any, ctx: Context) -> int:
        if ctx.attempt == 1:
            dispatchers[0].timer_armed.clear()  # from now on: did it look after the failure?
            raise ConnectionError("first attempt fails")
        return ctx.attempt

    async with running_worker(dsn, registry) as run:
        dispatchers.append(run.worker.dispatcher)
        job = await client.submit("fails.once", {})
        assert await result_of(client, job.id, timeout=BOUND) == 2
