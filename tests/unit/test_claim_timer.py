"""The claim timer and the leases' validity on a fake clock (no database, no sleeps).

Defends docs/architecture.md, "Scheduling": a lane whose claim came back empty waits for
new work or for the timer, whose deadline is absolute — a wake-up that brings no work (a
heartbeat, a finished job) does not move it; new work clears it; a due time already
past fires at once (MIN_TIMER_S), not never. And "Sharding and ownership": no shard is
claimable past ``valid_until``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg
import pytest

from jobpool.models import Priority, ShardId
from jobpool.worker import Registry
from jobpool.worker.completer import Completer
from jobpool.worker.dispatcher import MAX_TIMER_S, MIN_TIMER_S, Dispatcher
from jobpool.worker.ownership import Ownership
from jobpool.worker.settings import WorkerSettings

SETTINGS = WorkerSettings(dsn="postgresql://unused/db", pool="emails", ordinal=0)
SHARDS = [ShardId(0), ShardId(1)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _ownership(clock: Clock) -> Ownership:
    conns = cast(asyncpg.Pool, None)  # never used: no round trip happens here
    return Ownership(
        SETTINGS,
        conns,
        in_flight=lambda shard: 0,
        counters=lambda: cast(Any, None),
        on_lost=lambda shards: None,
        on_change=lambda: None,
        on_superseded=lambda: None,
        clock=clock,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def dispatcher(clock: Clock) -> Dispatcher:
    async def no_progress(*args: Any) -> None:
        return None

    return Dispatcher(
        SETTINGS,
        cast(asyncpg.Pool, None),
        Registry(),
        ownership=_ownership(clock),
        completer=cast(Completer, None),
        report_progress=no_progress,
        clock=clock,
    )


def test_an_empty_lanes_deadline_is_absolute_whatever_wakes_the_dispatcher(
    dispatcher: Dispatcher, clock: Clock
) -> None:
    assert dispatcher._note_empty(SHARDS, {Priority.NORMAL}) is not None
    assert dispatcher._timeout() == pytest.approx(MAX_TIMER_S)
    clock.now += 45
    dispatcher.wake()  # a heartbeat, a finished job: no new work
    assert dispatcher._timeout() == pytest.approx(MAX_TIMER_S - 45)
    # A lane that turns empty later does not push the deadline back either.
    dispatcher._note_empty(SHARDS, {Priority.LOW})
    assert dispatcher._timeout() == pytest.approx(MAX_TIMER_S - 45)


def test_new_work_clears_the_empty_lanes_and_their_deadline(dispatcher: Dispatcher) -> None:
    dispatcher._note_empty(SHARDS, {Priority.NORMAL})
    assert dispatcher._note_empty(SHARDS, {Priority.NORMAL}) is None, "looked up once"
    dispatcher.wake(new_work=True)
    assert dispatcher.empty_lanes == frozenset()
    assert dispatcher._note_empty(SHARDS, {Priority.NORMAL}) is not None


def test_a_due_time_bounds_the_sleep_and_one_already_past_fires_at_once(
    dispatcher: Dispatcher,
) -> None:
    dispatcher._note_empty(SHARDS, {Priority.NORMAL})
    dispatcher._due = datetime.now(UTC) + timedelta(seconds=10)
    assert 9 < dispatcher._timeout() <= 10
    dispatcher._due = datetime.now(UTC) - timedelta(seconds=5)  # fell due during a claim
    assert dispatcher._timeout() == MIN_TIMER_S


def test_no_shard_is_claimable_past_the_leases_validity(clock: Clock) -> None:
    ownership = _ownership(clock)
    ownership.held = {ShardId(0): 1, ShardId(1): 1}
    ownership.wanted = {ShardId(0), ShardId(1)}
    ownership.valid_until = clock.now + 15
    assert ownership.claimable == [0, 1]
    clock.now += 15  # e.g. the process was frozen past its last renewal + TTL
    assert ownership.claimable == []
    assert ownership.serves(ShardId(0)), "still held: its outcomes may be written"
