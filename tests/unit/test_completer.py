"""The completer's batching and its behaviour during a database outage (no database).

Defends: outcomes are written in batches of at most ``batch``, in the order they came,
each exactly once; with no other attempt running an outcome goes out at once, while
others run the write waits for theirs (until a batch is full, or ``LINGER_S``); a failed
write loses nothing (the batch goes back in front); under
the worker's loop runner (``loops.forever``) an outage is retried with backoff, logged with
one traceback for the first failure and then one line per retry.

The database is played by ``_write`` of a subclass: up or down, and able to hold a
write in flight, which is all the completer sees of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import cast

import asyncpg
import pytest

from jobpool.models import Finish, JobId, JobState, ShardId
from jobpool.worker import loops
from jobpool.worker.completer import Completer
from jobpool.worker.executor import Outcome

BOUND_S = 10.0


class Database(Completer):
    """A completer whose writes go to a list, or fail while ``down``."""

    def __init__(self, *, batch: int, running: int = 0) -> None:
        super().__init__(
            conns=cast(asyncpg.Pool, None),
            pool="unit",
            owner="w",
            batch=batch,
            on_written=self._on_written,
            running=lambda: self.running,
        )
        self.running = running  # attempts the worker still runs
        self.down = False
        self.gate = asyncio.Event()
        self.gate.set()
        self.writes: list[list[JobId]] = []
        self.attempts = 0

    async def _write(self, batch: list[Outcome]) -> set[JobId]:
        self.attempts += 1
        await self.gate.wait()
        if self.down:
            raise OSError("connection refused")
        self.writes.append([outcome.job_id for outcome in batch])
        return {outcome.job_id for outcome in batch}

    def _on_written(self, batch: list[Outcome], accepted: set[JobId]) -> None:
        assert {outcome.job_id for outcome in batch} == accepted


def succeeded() -> Finish:
    return Finish(job_id=JobId(uuid.uuid4()), state=JobState.SUCCEEDED, result_json="1")


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(BOUND_S):
        while True:
            if condition():
                return
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def looping(completer: Completer) -> AsyncIterator[None]:
    """The completer under the worker's own loop runner, as ``Worker.run`` starts it."""
    task = asyncio.create_task(loops.forever("completer", completer.step))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_outcomes_that_pile_up_during_a_write_go_out_in_batches_in_order() -> None:
    db = Database(batch=3)
    outcomes = [succeeded() for _ in range(8)]
    async with looping(db):
        db.gate.clear()  # the first write stays in flight while the rest arrive
        db.add(outcomes[0], shard=ShardId(1))
        await until(lambda: db.attempts == 1)
        for outcome in outcomes[1:]:
            db.add(outcome, shard=ShardId(1))
        db.gate.set()
        async with asyncio.timeout(BOUND_S):
            await db.drained()

    ids = [outcome.job_id for outcome in outcomes]
    assert db.writes == [ids[:1], ids[1:4], ids[4:7], ids[7:]]
    assert db.unwritten(ShardId(1)) == 0


async def test_while_attempts_run_a_write_waits_for_their_outcomes_until_a_batch_is_full() -> None:
    db = Database(batch=4, running=3)
    outcomes = [succeeded() for _ in range(4)]
    async with looping(db):
        db.add(outcomes[0], shard=ShardId(1))
        for _ in range(5):
            await asyncio.sleep(0)  # the writer is up, waiting for the others' outcomes
        assert db.attempts == 0
        for outcome in outcomes[1:]:
            db.add(outcome, shard=ShardId(1))
        async with asyncio.timeout(BOUND_S):
            await db.drained()

    assert db.writes == [[outcome.job_id for outcome in outcomes]]


async def test_a_lingering_write_goes_out_after_linger_s_when_no_more_come() -> None:
    db = Database(batch=100, running=3)
    outcome = succeeded()
    async with looping(db):
        db.add(outcome, shard=ShardId(1))
        async with asyncio.timeout(BOUND_S):
            await db.drained()

    assert db.writes == [[outcome.job_id]]


async def test_an_outage_loses_nothing_and_logs_one_traceback_then_one_line_per_retry(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loops, "RETRY_BACKOFF_S", (0.001, 0.002, 0.004))
    db = Database(batch=10)
    db.down = True
    outcomes = [succeeded() for _ in range(3)]
    caplog.set_level(logging.INFO)
    async with looping(db):
        for outcome in outcomes:
            db.add(outcome, shard=ShardId(2))
        await until(lambda: db.attempts >= 5)
        assert db.unwritten(ShardId(2)) == 3
        db.down = False
        async with asyncio.timeout(BOUND_S):
            await db.drained()
    failures = db.attempts - 1

    assert db.writes == [[outcome.job_id for outcome in outcomes]]
    records = [r for r in caplog.records if r.name.startswith("jobpool.worker")]
    tracebacks = [r for r in records if r.exc_info]
    assert [r.getMessage() for r in tracebacks] == [
        "writing 3 outcomes failed; retrying with backoff"
    ]
    retries = [r.getMessage() for r in records if not r.exc_info]
    assert len(retries) == failures
    assert all(line.startswith("completer: connection refused, retrying in ") for line in retries)
    assert all("\n" not in line for line in retries)


async def test_each_outage_logs_its_traceback_once(caplog: pytest.LogCaptureFixture) -> None:
    db = Database(batch=10)
    for _ in range(2):
        db.down = True
        db.add(succeeded(), shard=ShardId(0))
        for _ in range(3):
            with pytest.raises(OSError, match="connection refused"):
                await db.step()
        db.down = False
        await db.step()

    assert len(db.writes) == 2
    assert len([r for r in caplog.records if r.exc_info]) == 2
