"""Handlers that ignore cancellation, for the shutdown tests of real worker processes.

Loaded with ``--app tests.acceptance.stubborn_handlers:registry``. Each logs a line
when it starts (the test waits for it in the worker's log), then runs for
``payload["seconds"]`` whatever happens: the async one swallows every
``CancelledError``, the sync one never looks at ``ctx.cancelled``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from jobpool import Context, Registry

STARTED = "stubborn handler started"

registry = Registry()
log = logging.getLogger(__name__)


@registry.handler("stubborn.async")
async def stubborn_async(payload: dict[str, Any], ctx: Context) -> str:
    log.warning("%s: %s", STARTED, ctx.job_id)
    deadline = time.monotonic() + float(payload["seconds"])
    while time.monotonic() < deadline:
        try:
            await asyncio.sleep(0.1)
        except asyncio.CancelledError:
            continue  # swallowed
    return "done"


@registry.handler("stubborn.sync")
def stubborn_sync(payload: dict[str, Any], ctx: Context) -> str:
    log.warning("%s: %s", STARTED, ctx.job_id)
    time.sleep(float(payload["seconds"]))
    return "done"
