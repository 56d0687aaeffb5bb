"""The periodic service's pacing, without a database: it sleeps until the next tick of
any schedule, at most the refresh period, and polls slowly while another worker holds
shard 0."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from jobpool.cron import Schedule
from jobpool.store.schedules import ScheduleRow, ScheduleSource
from jobpool.worker.periodic import INACTIVE_POLL_S, REFRESH_S, PeriodicService

NOW = datetime(2025, 1, 1, 12, 0, 0, 500_000, tzinfo=UTC)


def service(*crons: str, active: bool = True) -> PeriodicService:
    found = PeriodicService(
        None,  # type: ignore[arg-type]  # delay_s does no I/O
        pool="p",
        declared=[],
        active=lambda: active,
    )
    found.schedules = [
        ScheduleRow(
            schedule=Schedule(name=f"s{i}", cron=cron, type="t"),
            source=ScheduleSource.CODE,
            defined_at=NOW,
            last_tick=None,
            last_enqueued_at=None,
        )
        for i, cron in enumerate(crons)
    ]
    return found


@pytest.mark.parametrize(
    ("crons", "delay_s"),
    [
        ((), REFRESH_S),
        (("* * * * *",), REFRESH_S),  # next tick in 59.5 s: read the schedules again before
        (("* * * * *", "*/2 * * * * *"), 1.5),
        (("* * * * * *",), 0.5),
    ],
)
def test_a_step_sleeps_until_the_next_tick_at_most_the_refresh_period(
    crons: tuple[str, ...], delay_s: float
) -> None:
    assert service(*crons).delay_s(NOW) == delay_s


def test_a_worker_without_shard_0_polls_for_it() -> None:
    assert service("* * * * * *", active=False).delay_s(NOW) == INACTIVE_POLL_S
