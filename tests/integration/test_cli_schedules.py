"""``jobpool schedules``: a pool's periodic schedules with their next and last ticks."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
from test_cli import assert_one_line_error, invoke

from jobpool.cli.common import ExitCode
from jobpool.cron import Schedule
from jobpool.models import Pool
from jobpool.store.schedules import ScheduleSource, schedule_enqueue, schedule_sync
from jobpool.store.stats import db_now

PARIS = "Europe/Paris"
NIGHTLY = Schedule(name="nightly", cron="30 2 * * *", type="report", timezone=PARIS)
MINUTELY = Schedule(name="minutely", cron="* * * * *", type="ping", payload={"n": 1})


async def test_lists_each_schedule_with_its_next_tick_and_last_enqueued(
    dsn: str, conn: asyncpg.Connection, pool: Pool
) -> None:
    await schedule_sync(conn, pool.name, ScheduleSource.CODE, [MINUTELY])
    await schedule_sync(conn, pool.name, ScheduleSource.SPEC, [NIGHTLY])
    enqueued_tick = (await db_now(conn)).replace(second=0, microsecond=0) + timedelta(minutes=1)
    await schedule_enqueue(conn, pool.name, "minutely", [enqueued_tick], shards=pool.shards)

    text = await invoke("schedules", "--dsn", dsn, "--pool", pool.name)
    listed = await invoke("schedules", "--dsn", dsn, "--pool", pool.name, "--json")

    assert text.exit_code == 0, text.output
    header, *lines = [line for line in text.stdout.splitlines() if "│" in line or "┃" in line]
    for column in ("SCHEDULE", "CRON", "TIME ZONE", "NEXT TICK", "LAST ENQUEUED", "SOURCE"):
        assert column in header
    assert any("nightly" in line and "Europe/Paris" in line and "spec" in line for line in lines)
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    minutely = rows["minutely"]
    assert (minutely["cron"], minutely["source"], minutely["payload"]) == (
        "* * * * *",
        "code",
        {"n": 1},
    )
    assert datetime.fromisoformat(minutely["last_tick"]) == enqueued_tick
    assert datetime.fromisoformat(minutely["next_tick"]) == enqueued_tick + timedelta(minutes=1)
    next_nightly = datetime.fromisoformat(rows["nightly"]["next_tick"])
    # 02:30 in Paris, or 03:00 on the day clocks skip it.
    assert next_nightly.astimezone(ZoneInfo(PARIS)).strftime("%H:%M") in ("02:30", "03:00")


async def test_a_pool_without_schedules_says_so(dsn: str, pool: Pool) -> None:
    result = await invoke("schedules", "--dsn", dsn, "--pool", pool.name)
    assert (result.exit_code, result.stdout) == (0, f"pool {pool.name} has no periodic schedules\n")


async def test_an_unknown_pool_is_exit_status_3(dsn: str) -> None:
    result = await invoke("schedules", "--dsn", dsn, "--pool", "nowhere")
    assert_one_line_error(result, ExitCode.NOT_FOUND, "pool 'nowhere' does not exist")
