"""``jobpool schedules``: the periodic schedules of a pool and where their ticks stand.

One plain connection (``jobpool.store.schedules``), the database's clock for "now":
the next tick shown is the one the pool's periodic service enqueues next (a due tick
not enqueued yet, else the next one), the last one is the last tick enqueued. Rows
follow the connecting role's tenant rules: a client role sees its tenants' schedules.
"""

from __future__ import annotations

from datetime import datetime

import typer
from rich.table import Table

from jobpool.cli.common import (
    CliError,
    DsnOption,
    ExitCode,
    JsonOption,
    PoolOption,
    command,
    dev_pool,
    open_connection,
    require_dsn,
    run,
)
from jobpool.cli.output import echo_json, plain, print_table
from jobpool.store.pools import pool_get
from jobpool.store.schedules import ScheduleRow, schedule_list
from jobpool.store.stats import db_now
from jobpool.timefmt import when

PANEL = "Jobs"


@command
def schedules(
    dsn: DsnOption = None, pool: PoolOption = None, json_output: JsonOption = False
) -> None:
    """List the pool's periodic schedules: cron, time zone, next tick, last enqueued.

    Schedules come from the handler module (`@registry.periodic`, source "code") and
    from the JobPool's spec.schedules (source "spec"). Exit status 3 if the pool does
    not exist.
    """
    target = require_dsn(dsn)
    name = pool or dev_pool(target)
    if not name:
        raise CliError("no pool given: pass --pool or set JOBPOOL_POOL", ExitCode.USAGE)
    rows, now = run(_read(target, name))
    if json_output:
        echo_json([schedule_json(row, now) for row in rows])
        return
    if not rows:
        typer.echo(f"pool {name} has no periodic schedules")
        return
    print_table(schedules_table(rows, now))


async def _read(dsn: str, pool: str) -> tuple[list[ScheduleRow], datetime]:
    async with open_connection(dsn) as conn:
        await pool_get(conn, pool)
        return await schedule_list(conn, pool), await db_now(conn)


def schedule_json(row: ScheduleRow, now: datetime) -> dict[str, object]:
    """One schedule as plain JSON data: its definition, next tick and last enqueued."""
    upcoming = row.next_tick(now)
    return {
        **row.schedule.model_dump(mode="json"),
        "source": row.source.value,
        "next_tick": upcoming.isoformat() if upcoming else None,
        "last_tick": row.last_tick.isoformat() if row.last_tick else None,
    }


def schedules_table(rows: list[ScheduleRow], now: datetime) -> Table:
    table = Table("SCHEDULE", "CRON", "TIME ZONE", "NEXT TICK", "LAST ENQUEUED", "TYPE", "SOURCE")
    for row in rows:
        s = row.schedule
        table.add_row(
            plain(s.name),
            plain(s.cron),
            plain(s.timezone),
            plain(when(row.next_tick(now))),
            plain(when(row.last_tick)),
            plain(s.type),
            plain(row.source.value),
        )
    return table


def register(app: typer.Typer) -> None:
    """Add ``schedules`` to ``app``."""
    app.command(rich_help_panel=PANEL)(schedules)
