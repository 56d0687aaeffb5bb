"""Running the worker's loops: each is a ``step`` (one iteration) run again and again.

A worker loop never dies silently, whatever it meets: a failed step is logged and
retried with backoff (0.5, 1, 2, then every 5 s), which starts over after every step
that succeeds. A lost database is expected (a failover, a restart): it gets one line per
retry; anything else also gets its traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncpg

log = logging.getLogger(__name__)

DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)
"""What a lost or refusing database looks like to the driver (InternalClientError: a
query sent on a connection the server has just terminated)."""
RETRY_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)

Step = Callable[[], Awaitable[None]]


async def forever(name: str, step: Step) -> None:
    """Run ``step`` again and again until cancelled, backing off after failures."""
    failures = 0
    while True:
        try:
            await step()
            failures = 0
        except DB_ERRORS as exc:
            failures = await _back_off(name, failures, exc)
        except Exception as exc:
            log.exception("%s failed", name)
            failures = await _back_off(name, failures, exc)


async def until_done(name: str, step: Step) -> None:
    """Run ``step`` once, retrying database errors with backoff until it succeeds
    (anything else propagates: at start, a missing pool must end the worker)."""
    failures = 0
    while True:
        try:
            return await step()
        except DB_ERRORS as exc:
            failures = await _back_off(name, failures, exc)


async def _back_off(name: str, failures: int, exc: BaseException) -> int:
    delay = RETRY_BACKOFF_S[min(failures, len(RETRY_BACKOFF_S) - 1)]
    log.warning("%s: %s, retrying in %.1f s", name, exc, delay)
    await asyncio.sleep(delay)
    return failures + 1
