"""``jobpool dev`` shows a line per periodic schedule in its live view, and their count
on its plain status line."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from jobpool.cron import Schedule
from jobpool.dev.view import Frame, Snapshot, render, schedule_lines, status_line
from jobpool.models import Pool
from jobpool.store.schedules import ScheduleRow, ScheduleSource

NOW = datetime(2025, 3, 29, 12, 0, tzinfo=UTC)
NIGHTLY = ScheduleRow(
    schedule=Schedule(name="nightly", cron="30 2 * * *", type="report", timezone="Europe/Paris"),
    source=ScheduleSource.SPEC,
    defined_at=datetime(2025, 3, 1, tzinfo=UTC),
    last_tick=datetime(2025, 3, 29, 1, 30, tzinfo=UTC),
    last_enqueued_at=datetime(2025, 3, 29, 1, 30, 1, tzinfo=UTC),
)


def frame(*rows: ScheduleRow) -> Frame:
    pool = Pool(name="demo", shards=4, replicas=1, ring_version=1)
    snapshot = Snapshot(pool=pool, schedules=list(rows))
    return Frame(snapshot=snapshot, workers=[], alive=0, stopping=False, logs=Path("/tmp/x"))


def test_a_schedule_line_shows_cron_zone_next_and_last_tick() -> None:
    (line,) = schedule_lines([NIGHTLY], NOW)
    # The next night skips 02:30 in Paris (clocks go forward): it ticks at 03:00 CEST.
    assert str(line) == (
        "schedule nightly  30 2 * * * (Europe/Paris)  next 2025-03-30 01:00:00Z"
        "  last 2025-03-29 01:30:00Z  → report"
    )


def test_the_live_view_has_the_schedule_line_and_the_status_line_the_count() -> None:
    console = Console(width=200, record=True)
    console.print(render(frame(NIGHTLY)))
    assert "schedule nightly  30 2 * * * (Europe/Paris)" in console.export_text()
    assert " schedules=1" in status_line(frame(NIGHTLY))
    assert " schedules=0" in status_line(frame())
