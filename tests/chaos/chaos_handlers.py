"""Handlers of the chaos suite's worker processes: ``--app tests.chaos.chaos_handlers:registry``.

Every attempt is recorded in ``chaos_attempts`` (created by the suite, see
``ATTEMPTS_DDL``; not part of the product's schema) through the handler's *own* asyncpg
pool on ``$JOBPOOL_CHAOS_DSN``, so the record does not depend on the worker's
connections or transactions: job id, attempt number, the worker's incarnation (the
suite passes it as ``POD_UID``), the shard and lease epoch the job was claimed under
(read with the start), when the work began and ended (``time.time()`` in the worker,
the clock the suite stamps its signals with: one host), and how it ended.

The start is written before the work begins (awaited, shielded from cancellation);
the end is stamped right after the work and written by a background task, so a
handler returns without an await after its work: a worker resumed from SIGSTOP hands
its outcome to its completer at once, and a fenced late completion is observable.

Job types (payload fields in brackets):

* ``noop``      returns at once.
* ``sleep``     sleeps [``s``] seconds.
* ``flaky``     sleeps [``s``], then fails with probability [``p``] (retried with backoff).
* ``doomed``    raises ``jobpool.Permanent``: dead-lettered after one attempt.
* ``long``      sleeps [``s``] (long): the target of cancels.

A successful attempt returns ``{"incarnation", "attempt"}``: the history checker knows
from the result which attempt's completion the database accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from jobpool import Context, Permanent, Registry

DSN_ENV = "JOBPOOL_CHAOS_DSN"
POOL_SIZE = 8
"""Connections per worker process: the suite runs workers with at most this concurrency."""
END_WRITE_TRIES = 120
END_WRITE_PAUSE_S = 0.5

ATTEMPTS_DDL = """
CREATE TABLE IF NOT EXISTS chaos_attempts (
    id           uuid PRIMARY KEY,
    job_id       uuid NOT NULL,
    attempt      integer NOT NULL,
    incarnation  text NOT NULL,
    shard        integer,
    epoch        bigint,
    started      double precision NOT NULL,
    ended        double precision,
    outcome      text CHECK (outcome IN ('ok', 'failed', 'permanent', 'cancelled'))
)
"""

_INSERT = """
INSERT INTO chaos_attempts (id, job_id, attempt, incarnation, shard, epoch, started)
SELECT $1, $2, $3, $4, j.shard, j.lease_epoch, $5
FROM (SELECT 1) AS one LEFT JOIN jobs j ON j.id = $2
"""

registry = Registry()

_pool: asyncpg.Pool | None = None
_pool_lock = asyncio.Lock()
_background: set[asyncio.Task[None]] = set()


class Flaked(Exception):
    """The deliberate, retryable failure of a ``flaky`` attempt."""


async def _attempts_pool() -> asyncpg.Pool:
    global _pool
    async with _pool_lock:
        if _pool is None:
            _pool = await asyncpg.create_pool(
                os.environ[DSN_ENV], min_size=POOL_SIZE, max_size=POOL_SIZE
            )
    return _pool


async def _write_end(
    row_id: uuid.UUID, inserted: asyncio.Future[str], ended: float, outcome: str
) -> None:
    """Write the end, retrying through a database outage (an attempt left without its
    end would look as if it ran until its process exited). The row's id is made here,
    not by the database: a start whose answer an outage cut off may still have been
    written, and its end must then be written too (after the start's own try)."""
    with contextlib.suppress(Exception):
        await inserted
    pool = await _attempts_pool()
    for _ in range(END_WRITE_TRIES):
        try:
            await pool.execute(
                "UPDATE chaos_attempts SET ended = $2, outcome = $3 WHERE id = $1",
                row_id,
                ended,
                outcome,
            )
            return
        except Exception:  # an outage, or a connection broken by one: try again
            await asyncio.sleep(END_WRITE_PAUSE_S)


def _record_end(row_id: uuid.UUID, inserted: asyncio.Future[str], outcome: str) -> None:
    """Stamp the end now; write it in the background (no await in the handler)."""
    task = asyncio.create_task(_write_end(row_id, inserted, time.time(), outcome))
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _recorded(ctx: Context, work: Callable[[], Awaitable[None]]) -> dict[str, Any]:
    """Run ``work`` as one recorded attempt; its exception (if any) is the outcome."""
    pool = await _attempts_pool()
    incarnation = os.environ.get("POD_UID", "?")
    row_id = uuid.uuid4()
    inserted = asyncio.ensure_future(
        pool.execute(_INSERT, row_id, ctx.job_id, ctx.attempt, incarnation, time.time())
    )
    try:
        await asyncio.shield(inserted)
        await work()
    except asyncio.CancelledError:
        _record_end(row_id, inserted, "cancelled")
        raise
    except Permanent:
        _record_end(row_id, inserted, "permanent")
        raise
    except Exception:
        _record_end(row_id, inserted, "failed")
        raise
    _record_end(row_id, inserted, "ok")
    return {"incarnation": incarnation, "attempt": ctx.attempt}


def _sleep(payload: dict[str, Any]) -> Callable[[], Awaitable[None]]:
    return lambda: asyncio.sleep(float(payload.get("s", 0.0)))


@registry.handler("noop")
async def noop(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
    async def nothing() -> None:
        return None

    return await _recorded(ctx, nothing)


@registry.handler("sleep")
async def sleep(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
    return await _recorded(ctx, _sleep(payload))


@registry.handler("long")
async def long(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
    return await _recorded(ctx, _sleep(payload))


@registry.handler("flaky")
async def flaky(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
    async def maybe_fail() -> None:
        await _sleep(payload)()
        if random.random() < float(payload.get("p", 0.5)):
            raise Flaked(f"attempt {ctx.attempt} failed on purpose")

    return await _recorded(ctx, maybe_fail)


@registry.handler("doomed")
async def doomed(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
    async def fail_for_good() -> None:
        raise Permanent("this job can never succeed")

    return await _recorded(ctx, fail_for_good)
