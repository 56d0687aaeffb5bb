"""Ticks of periodic schedules on a fake clock: next and latest ticks, time zones and
DST transitions, and which ticks are due with and without catch-up."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from jobpool.cron import (
    CATCH_UP_LIMIT,
    Schedule,
    anchor,
    check_cron,
    check_timezone,
    due_ticks,
    tick_key,
    upcoming_tick,
)
from jobpool.errors import InvalidPeriodic

PARIS = ZoneInfo("Europe/Paris")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def schedule(cron: str, **options: object) -> Schedule:
    return Schedule(name="s", cron=cron, type="report", **options)  # type: ignore[arg-type]


def ticks(s: Schedule, after: datetime, count: int) -> list[datetime]:
    found = s.ticks_after(after)
    return [next(found) for _ in range(count)]


# -- next and latest ticks ---------------------------------------------------------


def test_the_next_tick_is_strictly_after_the_moment() -> None:
    every_5 = schedule("*/5 * * * *")
    assert every_5.next_tick(utc(2025, 1, 1, 12, 0)) == utc(2025, 1, 1, 12, 5)
    assert every_5.next_tick(utc(2025, 1, 1, 12, 0, 0) - timedelta(microseconds=1)) == utc(
        2025, 1, 1, 12, 0
    )


def test_the_latest_tick_is_at_or_before_the_moment() -> None:
    every_5 = schedule("*/5 * * * *")
    assert every_5.latest_tick(utc(2025, 1, 1, 12, 0)) == utc(2025, 1, 1, 12, 0)
    assert every_5.latest_tick(utc(2025, 1, 1, 12, 4, 59, 999999)) == utc(2025, 1, 1, 12, 0)


def test_a_six_field_cron_ticks_every_few_seconds() -> None:
    every_2s = schedule("*/2 * * * * *")
    assert ticks(every_2s, utc(2025, 1, 1, 0, 0, 0), 3) == [
        utc(2025, 1, 1, 0, 0, 2),
        utc(2025, 1, 1, 0, 0, 4),
        utc(2025, 1, 1, 0, 0, 6),
    ]


def test_a_cron_reads_in_its_time_zone() -> None:
    nine_in_paris = schedule("0 9 * * *", timezone="Europe/Paris")
    # Winter: UTC+1; summer: UTC+2.
    assert nine_in_paris.next_tick(utc(2025, 1, 15)) == utc(2025, 1, 15, 8)
    assert nine_in_paris.next_tick(utc(2025, 7, 15)) == utc(2025, 7, 15, 7)


# -- DST transitions ---------------------------------------------------------------


def test_a_daily_tick_in_the_skipped_hour_runs_once_right_after_the_gap() -> None:
    # 2025-03-30 in Paris: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
    at_0230 = schedule("30 2 * * *", timezone="Europe/Paris")
    found = ticks(at_0230, datetime(2025, 3, 29, 12, tzinfo=PARIS), 3)
    assert [t.astimezone(PARIS).isoformat() for t in found] == [
        "2025-03-30T03:00:00+02:00",
        "2025-03-31T02:30:00+02:00",
        "2025-04-01T02:30:00+02:00",
    ]


def test_a_daily_tick_in_the_repeated_hour_runs_once() -> None:
    # 2025-10-26 in Paris: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
    at_0230 = schedule("30 2 * * *", timezone="Europe/Paris")
    found = ticks(at_0230, datetime(2025, 10, 25, 12, tzinfo=PARIS), 3)
    assert found == [utc(2025, 10, 26, 0, 30), utc(2025, 10, 27, 1, 30), utc(2025, 10, 28, 1, 30)]


def test_an_hourly_schedule_follows_real_time_across_both_transitions() -> None:
    hourly = schedule("0 * * * *", timezone="Europe/Paris")
    # Clocks back: the local hour 02:00 happens twice, so it ticks twice (an hour apart).
    back = ticks(hourly, utc(2025, 10, 25, 22, 30), 5)
    assert [b - a for a, b in itertools.pairwise(back)] == [timedelta(hours=1)] * 4
    # Clocks forward: the local hour 02:00 does not exist; still one tick per real hour.
    forward = ticks(hourly, utc(2025, 3, 29, 23, 30), 3)
    assert forward == [utc(2025, 3, 30, 0), utc(2025, 3, 30, 1), utc(2025, 3, 30, 2)]


@settings(max_examples=200, deadline=None)
@given(
    moment=st.datetimes(
        min_value=datetime(2024, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)
    ),
    cron=st.sampled_from(
        ["30 2 * * *", "0 * * * *", "*/7 * * * *", "15 1-3 * * 0", "*/13 * * * * *"]
    ),
    zone=st.sampled_from(["Europe/Paris", "America/New_York", "Australia/Lord_Howe", "UTC"]),
)
def test_property_the_latest_tick_is_the_one_before_the_next(
    moment: datetime, cron: str, zone: str
) -> None:
    """Reading backwards (latest tick) agrees with reading forwards, DST included."""
    s = schedule(cron, timezone=zone)
    latest = s.latest_tick(moment)
    assert latest is not None
    assert latest <= moment
    assert s.next_tick(latest) == s.next_tick(moment)


# -- what is due ---------------------------------------------------------------------


def test_nothing_is_due_before_the_first_tick_after_the_anchor() -> None:
    hourly = schedule("0 * * * *")
    assert due_ticks(hourly, after=utc(2025, 1, 1, 10, 0), now=utc(2025, 1, 1, 10, 59)) == []
    assert due_ticks(hourly, after=utc(2025, 1, 1, 10, 0), now=utc(2025, 1, 1, 11, 0)) == [
        utc(2025, 1, 1, 11, 0)
    ]


def test_without_catch_up_a_long_downtime_makes_one_job_not_a_burst() -> None:
    every_minute = schedule("* * * * *")
    # Down for a day: 1,440 ticks missed, only the latest is due.
    due = due_ticks(every_minute, after=utc(2025, 1, 1, 0, 0), now=utc(2025, 1, 2, 0, 0, 30))
    assert due == [utc(2025, 1, 2, 0, 0)]


def test_with_catch_up_every_missed_tick_is_due_oldest_first_in_bounded_calls() -> None:
    every_minute = schedule("* * * * *", catch_up=True)
    after, now = utc(2025, 1, 1, 0, 0), utc(2025, 1, 1, 0, 5, 30)
    assert due_ticks(every_minute, after=after, now=now) == [
        utc(2025, 1, 1, 0, minute) for minute in range(1, 6)
    ]
    day = due_ticks(every_minute, after=after, now=utc(2025, 1, 2))
    assert len(day) == CATCH_UP_LIMIT
    assert day[0] == utc(2025, 1, 1, 0, 1)


def test_the_anchor_is_the_later_of_the_last_tick_and_the_definition() -> None:
    defined = utc(2025, 1, 1, 12)
    assert anchor(last_tick=None, defined_at=defined) == defined
    assert anchor(last_tick=utc(2025, 1, 1, 13), defined_at=defined) == utc(2025, 1, 1, 13)
    # The cron changed after its last tick: the new cron's past ticks do not fire.
    assert anchor(last_tick=utc(2025, 1, 1, 11), defined_at=defined) == defined


def test_the_upcoming_tick_is_the_due_one_when_lagging_else_the_next() -> None:
    hourly = schedule("0 * * * *")
    lagging = upcoming_tick(hourly, after=utc(2025, 1, 1, 9), now=utc(2025, 1, 1, 10, 30))
    assert lagging == utc(2025, 1, 1, 10)
    on_time = upcoming_tick(hourly, after=utc(2025, 1, 1, 10), now=utc(2025, 1, 1, 10, 30))
    assert on_time == utc(2025, 1, 1, 11)


def test_a_tick_key_names_the_schedule_and_the_instant_in_utc() -> None:
    tick = datetime(2025, 3, 30, 3, 0, tzinfo=PARIS)
    assert tick_key("nightly", tick) == "periodic:nightly:2025-03-30T01:00:00Z"


# -- validation --------------------------------------------------------------------


@pytest.mark.parametrize("cron", ["", "* * * *", "61 * * * *", "* * * * * * *", "x" * 300])
def test_a_bad_cron_is_refused_with_a_typed_error(cron: str) -> None:
    with pytest.raises(InvalidPeriodic, match="invalid cron expression"):
        check_cron(cron)


@pytest.mark.parametrize("zone", ["", "Mars/Olympus", "../../etc/passwd", "Europe/"])
def test_an_unknown_time_zone_is_refused(zone: str) -> None:
    with pytest.raises(InvalidPeriodic, match="unknown time zone"):
        check_timezone(zone)


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"name": "1bad"}, "invalid schedule name"),
        ({"payload": {"x": float("nan")}}, "not JSON"),
        ({"payload": "x" * 70_000}, "over"),
        ({"priority": "urgent"}, "priority"),
        ({"tenant": ""}, "invalid tenant"),
    ],
)
def test_a_schedule_refuses_bad_fields(options: dict[str, object], problem: str) -> None:
    fields = {"name": "s", "cron": "* * * * *", "type": "report", **options}
    with pytest.raises(ValidationError, match=problem):
        Schedule(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cron", "after", "expected"),
    [
        ("0 0 L * *", utc(2025, 2, 1), utc(2025, 2, 28)),  # the last day of the month
        ("0 0 LW * *", utc(2025, 5, 1), utc(2025, 5, 30)),  # last weekday (31st: Saturday)
        ("0 0 * * MON#2", utc(2025, 2, 1), utc(2025, 2, 10)),  # the second Monday
        ("0 0 1 JAN *", utc(2025, 6, 1), utc(2026, 1, 1)),  # month names
    ],
)
def test_cronsims_extensions_read_as_documented(
    cron: str, after: datetime, expected: datetime
) -> None:
    assert schedule(cron).next_tick(after) == expected
