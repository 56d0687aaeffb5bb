"""A PostgreSQL restart under load: the server of this test (its own, not the
session's) is stopped for a few seconds and started again, twice, while workers run,
jobs are submitted and cancels race. Workers that exit meanwhile are started again,
as their StatefulSet would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from chaos_fleet import RestartableServer, restartable_server
from chaos_load import Chaos, chaos_run, final_verdict, progress, running

OUTAGES = 2
OUTAGE_S = 3.0
REPLICAS = 2


@pytest_asyncio.fixture(loop_scope="session")
async def restartable(tmp_path: Path) -> AsyncIterator[tuple[RestartableServer, Chaos]]:
    with restartable_server() as server:
        await server.migrate()
        async with chaos_run(server.uri, tmp_path, replicas=REPLICAS) as run:
            yield server, run


@pytest.mark.timeout(300)
async def test_postgres_restart_under_load(restartable: tuple[RestartableServer, Chaos]) -> None:
    server, chaos = restartable
    fleet, workload = chaos.fleet, chaos.workload
    for ordinal in range(REPLICAS):
        fleet.start(ordinal)
    async with running(workload):
        for _ in range(OUTAGES):
            await progress(chaos.conn, 30)
            server.stop()
            await asyncio.sleep(OUTAGE_S)
            server.start()
            await chaos.reconnect()
            for ordinal in range(REPLICAS):
                if ordinal not in fleet.live():
                    fleet.start(ordinal)
        await progress(chaos.conn, 30, timeout=120)
    verdict = await final_verdict(chaos.conn, fleet, workload)
    assert verdict.ok, verdict.render()
    assert verdict.figures["unfinished"] == 0, verdict.render()
