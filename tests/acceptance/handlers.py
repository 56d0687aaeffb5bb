"""Handlers run by the real worker processes of the acceptance tests.

Workers load them with ``--app tests.acceptance.handlers:registry`` from the repository
root (``tests`` and ``tests/acceptance`` are namespace packages: no ``__init__.py``, so
the test suite's own ``import pg`` keeps working).

``work`` records every attempt in ``test_attempts`` (created by the test, see
``ATTEMPTS_DDL``) through its own asyncpg pool on ``$JOBPOOL_TEST_ATTEMPTS_DSN``:
job id, attempt, the worker's incarnation (the test passes it as ``POD_UID``) and pid,
when the work began and when it ended, and how it ended (``ok`` or ``cancelled``).

Times are wall-clock seconds (``time.time()``) taken in the worker process right
before and right after the work (a sleep of ``payload["sleep"]`` seconds), so the
recorded ``[started, ended]`` always contains the work itself. The test stamps its
signals (SIGSTOP, SIGCONT, SIGKILL) with the same clock (one host, one kernel clock),
whatever machine runs Postgres.

The start is written before the work begins (awaited); the end is written by a
background task, so the handler returns its result *without an await* after the work:
a worker resumed from SIGSTOP hands its outcome to its completer in the very first
loop iteration, before its heartbeat can notice that its leases are gone. That makes
the fenced ("rejected") completion of a zombie observable every time, not by luck.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import asyncpg

from jobpool import Context, Registry

ATTEMPTS_DSN_ENV = "JOBPOOL_TEST_ATTEMPTS_DSN"
POOL_SIZE = 8
"""Connections per worker process; tests run workers with at most this concurrency."""

ATTEMPTS_DDL = """
CREATE TABLE IF NOT EXISTS test_attempts (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id       uuid NOT NULL,
    attempt      integer NOT NULL,
    incarnation  text NOT NULL,
    pid          integer NOT NULL,
    started      double precision NOT NULL,
    ended        double precision,
    outcome      text CHECK (outcome IN ('ok', 'cancelled'))
)
"""

registry = Registry()

_pool: asyncpg.Pool | None = None
_pool_lock = asyncio.Lock()
_background: set[asyncio.Task[None]] = set()


async def _attempts_pool() -> asyncpg.Pool:
    global _pool
    async with _pool_lock:
        if _pool is None:
            # Connections made up front, enough for every handler at once: no write
            # waits for a connection to be opened.
            _pool = await asyncpg.create_pool(
                os.environ[ATTEMPTS_DSN_ENV], min_size=POOL_SIZE, max_size=POOL_SIZE
            )
    return _pool


async def _write_end(
    pool: asyncpg.Pool, inserted: asyncio.Future[int], ended: float, outcome: str
) -> None:
    row_id = await inserted
    await pool.execute(
        "UPDATE test_attempts SET ended = $2, outcome = $3 WHERE id = $1", row_id, ended, outcome
    )


def _record_end(pool: asyncpg.Pool, inserted: asyncio.Future[int], outcome: str) -> None:
    """Stamp the end now; write it in the background (no await in the handler)."""
    task = asyncio.create_task(_write_end(pool, inserted, time.time(), outcome))
    _background.add(task)
    task.add_done_callback(_background.discard)


@registry.handler("work")
async def work(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Sleep ``payload["sleep"]`` seconds, recording the attempt around the sleep."""
    pool = await _attempts_pool()
    started = time.time()
    # The start is written before the work begins. Shielded: a cancellation while it is
    # being written still leaves a row, which the end then completes.
    inserted = asyncio.ensure_future(
        pool.fetchval(
            "INSERT INTO test_attempts (job_id, attempt, incarnation, pid, started) "
            "VALUES ($1, $2, $3, $4, $5) RETURNING id",
            ctx.job_id,
            ctx.attempt,
            os.environ.get("POD_UID", "?"),
            os.getpid(),
            started,
        )
    )
    try:
        await asyncio.shield(inserted)
        await asyncio.sleep(float(payload.get("sleep", 0.0)))
    except asyncio.CancelledError:
        _record_end(pool, inserted, "cancelled")
        raise
    _record_end(pool, inserted, "ok")
    return {"pid": os.getpid(), "attempt": ctx.attempt}
