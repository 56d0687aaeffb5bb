"""Handlers of the benchmarks' worker processes: ``--app bench.handlers:registry``.

* ``noop``     does nothing (drain throughput).
* ``stamp``    returns ``time.time()`` taken as the handler starts: the benchmark, on
               the same host and clock, subtracts the moment it called ``submit()``
               (submit→start latency, see ``bench/latency.py``).
"""

from __future__ import annotations

import time

import jobpool
from jobpool import Context

registry = jobpool.Registry()


@registry.handler("noop")
async def noop(payload: object, ctx: Context) -> None:
    """Does nothing."""


@registry.handler("stamp")
async def stamp(payload: object, ctx: Context) -> float:
    """The wall-clock time at which the handler started, in seconds since the epoch."""
    return time.time()
