"""Progress writes of running attempts (``ctx.report_progress``).

Best effort by design: a progress update is a courtesy to whoever follows the job, so
a database hiccup is logged and the attempt goes on. Fenced like every worker write:
only a row still running under this worker is updated.
"""

from __future__ import annotations

import logging

import asyncpg

from jobpool.models import ClaimedJob
from jobpool.store import execution
from jobpool.worker.loops import DB_ERRORS

log = logging.getLogger(__name__)


class ProgressWriter:
    """``await writer(job, fraction, message)``: the ``ReportProgress`` of every attempt."""

    def __init__(self, conns: asyncpg.Pool, *, pool: str, owner: str) -> None:
        self._conns = conns
        self._pool = pool
        self._owner = owner

    async def __call__(self, job: ClaimedJob, fraction: float | None, message: str | None) -> None:
        try:
            async with self._conns.acquire() as conn:
                await execution.job_progress_update(
                    conn,
                    self._pool,
                    owner=self._owner,
                    job_id=job.id,
                    fraction=fraction,
                    message=message,
                )
        except DB_ERRORS as exc:
            log.warning("progress of job %s not recorded: %s", job.id, exc)
