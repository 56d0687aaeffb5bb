"""SIGTERM has a hard limit: a real worker process exits within its drain timeout plus
a small margin even while its handlers ignore cancellation.

Two handlers that would run for ten minutes — an async one swallowing every
``CancelledError`` and a sync one that never looks at ``ctx.cancelled`` — are running
when the worker gets SIGTERM with ``--drain-timeout 2``. The process exits 0 long
before they would end; their attempts were interrupted and requeued (``Interrupted``),
every lease was released, and the log says (WARNING, naming each job) that the
handlers were left running. Without the hard limit the process waited for them.
"""

from __future__ import annotations

import logging
import time

import asyncpg
from acceptance_kit import Fleet, leases, ring_owners, wait_for, wait_for_owners
from stubborn_handlers import STARTED

from jobpool import Client

FIGURES = logging.getLogger("tests.figures")
DRAIN_TIMEOUT_S = 2.0
MARGIN_S = 20.0  # generous: a loaded machine; the handlers would run 600 s
APP = "tests.acceptance.stubborn_handlers:registry"


async def test_sigterm_exits_within_the_drain_timeout_despite_handlers_that_ignore_it(
    client: Client, conn: asyncpg.Connection, fleet: Fleet
) -> None:
    worker = fleet.start(0, concurrency=4, drain_timeout=DRAIN_TIMEOUT_S, app=APP)
    await wait_for_owners(conn, ring_owners([worker], 1), what="worker 0 to hold every shard")
    jobs = [
        await client.submit("stubborn.async", {"seconds": 600}),
        await client.submit("stubborn.sync", {"seconds": 600}),
    ]

    async def both_started() -> bool:
        return worker.log().count(STARTED) == 2

    await wait_for(both_started, what="both stubborn handlers to start")
    signalled = time.monotonic()
    worker.terminate()
    assert await worker.wait_exit(timeout=DRAIN_TIMEOUT_S + MARGIN_S) == 0
    FIGURES.info(
        "SIGTERM to exit with 2 handlers ignoring cancellation, --drain-timeout %.0f: %.2f s",
        DRAIN_TIMEOUT_S,
        time.monotonic() - signalled,
    )

    for job in jobs:
        status = await client.status(job.id)
        assert status.state.value == "queued"
        assert [(e.attempt, e.error_type) for e in status.error_history] == [(1, "Interrupted")]
    held = await leases(conn)
    assert all(lease.owner is None for lease in held.values()), held
    log = worker.log()
    assert "2 handlers ignored their cancellation and still run" in log
    [warning] = [line for line in log.splitlines() if "ignored their cancellation" in line]
    assert "WARNING" in warning
    for job in jobs:
        assert f"job {job.id} (stubborn." in warning
