"""Handlers of the periodic acceptance test: a schedule ticking every second.

``catch_up`` makes every tick due, so the test can require one job for each tick
between the first and the last, through a crash of the worker that enqueues them.
"""

from __future__ import annotations

from jobpool import Context, Registry

SCHEDULE = "every-second"

registry = Registry()


@registry.periodic("* * * * * *", name=SCHEDULE, catch_up=True)
@registry.handler("tick")
async def tick(payload: object, ctx: Context) -> None:
    """Nothing to do: the test counts the jobs, not what they do."""
