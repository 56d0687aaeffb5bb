"""spec.schedules: the operator declares them in Postgres (added, changed, removed),
refuses a bad one with a field path, and the JobPool status lists each schedule with its
last and next tick."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg
from test_operator import SPEC as POOL_SPEC

from jobpool.cron import Schedule
from jobpool.operator.status import schedule_status
from jobpool.store.schedules import ScheduleRow, ScheduleSource, schedule_list

SPEC = {**POOL_SPEC, "replicas": 1}
NIGHTLY = {
    "name": "nightly",
    "cron": "30 2 * * *",
    "type": "report",
    "timezone": "Europe/Paris",
    "payload": {"full": True},
    "priority": "low",
    "catchUp": True,
}
EVERY_5 = {"name": "every-5", "cron": "*/5 * * * *", "type": "ping"}


async def stored(
    conn: asyncpg.Connection, check: Callable[[dict[str, ScheduleRow]], bool]
) -> dict[str, ScheduleRow] | None:
    """The pool's schedules by name, once ``check`` accepts them."""
    found = {row.schedule.name: row for row in await schedule_list(conn, "emails")}
    return found if check(found) else None


async def test_spec_schedules_are_declared_updated_removed_and_shown(start_operator, cluster, conn):
    await start_operator()
    await cluster.create_jobpool("emails", {**SPEC, "schedules": [NIGHTLY, EVERY_5]})

    rows = await cluster.eventually(
        lambda: stored(conn, lambda found: len(found) == 2), what="both schedules"
    )
    assert rows["nightly"].source is ScheduleSource.SPEC
    assert rows["nightly"].schedule == Schedule(
        name="nightly",
        cron="30 2 * * *",
        type="report",
        timezone="Europe/Paris",
        payload={"full": True},
        priority="low",  # type: ignore[arg-type]
        catch_up=True,
    )
    status = await cluster.eventually(
        lambda: (
            len(cluster.status("emails").get("schedules") or []) == 2
            and cluster.status("emails")["schedules"]
        ),
        what="the schedules in the status",
    )
    shown = {entry["name"]: entry for entry in status}
    assert shown["every-5"]["cron"] == "*/5 * * * *"
    assert shown["nightly"]["timezone"] == "Europe/Paris"
    assert shown["nightly"]["source"] == "spec"
    assert datetime.fromisoformat(shown["every-5"]["nextTick"]).minute % 5 == 0

    await cluster.patch_jobpool(
        "emails", {"spec": {"schedules": [{**EVERY_5, "cron": "*/10 * * * *"}]}}
    )
    rows = await cluster.eventually(
        lambda: stored(conn, lambda found: list(found) == ["every-5"]), what="nightly removed"
    )
    assert rows["every-5"].schedule.cron == "*/10 * * * *"


async def test_a_bad_schedule_is_an_invalid_spec_naming_the_field(start_operator, cluster, conn):
    await start_operator()
    await cluster.create_jobpool(
        "emails", {**SPEC, "schedules": [{**NIGHTLY, "timezone": "Europe/Atlantis"}]}
    )
    degraded = await cluster.eventually(
        lambda: (
            cluster.condition("emails", "Degraded").get("reason") == "InvalidSpec"
            and cluster.condition("emails", "Degraded")
        ),
        what="Degraded/InvalidSpec",
    )
    assert "spec.schedules[0].timezone: unknown time zone 'Europe/Atlantis'" in degraded["message"]
    assert await conn.fetchval("SELECT count(*) FROM schedules") == 0


def test_the_status_shows_the_last_tick_and_the_next() -> None:
    now = datetime(2025, 1, 1, 12, 7, 30, tzinfo=UTC)
    row = ScheduleRow(
        schedule=Schedule(name="every-5", cron="*/5 * * * *", type="ping"),
        source=ScheduleSource.CODE,
        defined_at=now - timedelta(days=1),
        last_tick=datetime(2025, 1, 1, 12, 5, tzinfo=UTC),
        last_enqueued_at=datetime(2025, 1, 1, 12, 5, 0, 20_000, tzinfo=UTC),
    )
    assert schedule_status(row, now) == {
        "name": "every-5",
        "cron": "*/5 * * * *",
        "timezone": "UTC",
        "source": "code",
        "lastTick": "2025-01-01T12:05:00Z",
        "nextTick": "2025-01-01T12:10:00Z",
    }
    never = row.model_copy(update={"last_tick": None, "defined_at": now})
    assert "lastTick" not in schedule_status(never, now)
