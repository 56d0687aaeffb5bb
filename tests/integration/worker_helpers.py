"""A deterministic stand-in worker for integration tests of the store and the client.

``FakeWorker`` plays the worker through the real store functions: it takes the shard
leases with ``lease_take``, claims with ``job_claim_batch`` and ends attempts with
``job_finish_many`` / ``job_retry_many`` / ``job_progress_update``, exactly the
statements a real worker runs. It holds no logic of its own beyond picking arguments,
so what a test observes is what the store does.

Use it on the schema owner's connection (the ``conn`` fixture): workers serve every
tenant of a pool and are exempt from row-level security.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from jobpool.models import (
    ClaimedJob,
    ErrorRecord,
    Finish,
    JobId,
    JobState,
    Priority,
    Retry,
    ShardId,
)
from jobpool.store.execution import (
    job_claim_batch,
    job_finish_many,
    job_progress_update,
    job_retry_many,
)
from jobpool.store.leases import lease_take

POOL = "emails"
SHARDS = 16


def error(attempt: int, message: str = "boom", error_type: str = "SMTPError") -> ErrorRecord:
    """One attempt's error, stamped now."""
    return ErrorRecord(attempt=attempt, error_type=error_type, message=message, at=_now())


def _now() -> datetime:
    return datetime.now(UTC)


def _ids(jobs: Iterable[JobId | ClaimedJob | Any]) -> list[JobId]:
    return [JobId(getattr(job, "id", job)) for job in jobs]


class FakeWorker:
    """Plays the worker through the real store functions (see the module docstring).

    ``await FakeWorker(conn).start()`` takes every shard of the pool (ordinal 0, so it
    may take them at once); then ``claim``, ``succeed``, ``dead``, ``retry``,
    ``cancelled`` and ``progress`` drive attempts as a worker would.
    """

    def __init__(
        self,
        conn: asyncpg.Connection,
        *,
        pool: str = POOL,
        owner: str = "w0",
        ordinal: int = 0,
        shards: Sequence[int] = range(SHARDS),
        ttl_s: float = 30,
    ) -> None:
        self.conn = conn
        self.pool = pool
        self.owner = owner
        self.ordinal = ordinal
        self.shards = list(shards)
        self.ttl_s = ttl_s
        self.epochs: dict[ShardId, int] = {}

    async def start(self) -> FakeWorker:
        """Take the leases of all ``shards``; fails if any of them is held elsewhere."""
        self.epochs = await lease_take(
            self.conn,
            self.pool,
            owner=self.owner,
            ordinal=self.ordinal,
            shards=self.shards,
            ttl_s=self.ttl_s,
            supersede=True,  # a worker's first take, as the runtime's
        )
        assert sorted(self.epochs) == sorted(self.shards), "could not take every shard"
        return self

    # -- claiming --------------------------------------------------------------

    async def claim(
        self, *, limit: int = 1000, priority: Priority = Priority.NORMAL
    ) -> list[ClaimedJob]:
        """Claim up to ``limit`` due jobs of one priority lane (a new attempt each)."""
        return await job_claim_batch(
            self.conn, self.pool, owner=self.owner, shards=self.shards,
            lanes={priority: limit},
        )  # fmt: skip

    async def claim_all(
        self, expected: Iterable[JobId | Any], *, priority: Priority = Priority.NORMAL
    ) -> list[ClaimedJob]:
        """Claim and check that exactly the ``expected`` jobs (ids or jobs) were claimed."""
        wanted = set(_ids(expected))
        claimed: list[ClaimedJob] = []
        # A claim may return fewer jobs than it may take (it reads a bounded number per
        # shard); like a worker, claim again until nothing more comes.
        while batch := await self.claim(limit=max(len(wanted), 1) * 2, priority=priority):
            claimed += batch
        assert {c.id for c in claimed} == wanted, "claimed other jobs than expected"
        return claimed

    # -- ending attempts -------------------------------------------------------

    async def finish(self, finishes: Sequence[Finish]) -> list[JobId]:
        """``job_finish_many``: one round trip (and one NOTIFY) for the whole batch."""
        return await job_finish_many(self.conn, self.pool, owner=self.owner, finishes=finishes)

    async def succeed(self, jobs: Iterable[JobId | Any], result: Any = None) -> list[JobId]:
        """Finish ``jobs`` (ids or jobs) as succeeded, all with ``result``, in one batch."""
        result_json = json.dumps(result)
        finishes = [
            Finish(job_id=job_id, state=JobState.SUCCEEDED, result_json=result_json)
            for job_id in _ids(jobs)
        ]
        return await self.finish(finishes)

    async def dead(
        self,
        jobs: Iterable[JobId | Any],
        *,
        reason: str = "attempts_exhausted",
        message: str = "mailbox unavailable",
        error_type: str = "SMTPError",
        attempt: int = 1,
    ) -> list[JobId]:
        """Dead-letter ``jobs`` in one batch, each with a last error of ``attempt``."""
        finishes = [
            Finish(
                job_id=job_id,
                state=JobState.DEAD,
                reason=reason,
                error=error(attempt, message, error_type),
            )
            for job_id in _ids(jobs)
        ]
        return await self.finish(finishes)

    async def cancelled(self, jobs: Iterable[JobId | Any]) -> list[JobId]:
        """End running ``jobs`` as cancelled (what a worker does after a cancel request)."""
        return await self.finish(
            [Finish(job_id=job_id, state=JobState.CANCELLED) for job_id in _ids(jobs)]
        )

    async def retry(
        self,
        jobs: Iterable[JobId | Any],
        *,
        attempt: int,
        message: str = "try again",
        error_type: str = "SMTPError",
        run_at: datetime | None = None,
    ) -> list[JobId]:
        """Requeue failed attempts; due at once unless ``run_at`` says otherwise."""
        due = run_at or _now() - timedelta(seconds=1)
        retries = [
            Retry(job_id=job_id, run_at=due, error=error(attempt, message, error_type))
            for job_id in _ids(jobs)
        ]
        return await job_retry_many(self.conn, self.pool, owner=self.owner, retries=retries)

    async def progress(
        self, job: JobId | Any, fraction: float | None, message: str | None = None
    ) -> bool:
        """Report a running job's progress; False if it is not running under us."""
        [job_id] = _ids([job])
        return await job_progress_update(
            self.conn, self.pool, owner=self.owner, job_id=job_id,
            fraction=fraction, message=message,
        )  # fmt: skip
