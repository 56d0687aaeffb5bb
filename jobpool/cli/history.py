"""``jobpool history …``: the retention of finished jobs, without Kubernetes.

Finished jobs live in ``job_history``, one partition per day; a pool keeps them for
its retention (7 days by default), then whole days are dropped (see
``jobpool.store.history``). On Kubernetes the operator does this every hour from
``spec.historyRetentionDays`` and ``jobpool dev`` does it by itself; elsewhere run
``jobpool history prune`` from cron (hourly or daily) with an operator or owner login:

* ``prune [--older-than AGE]``: sets the pool's retention when given, then creates the
  coming days' partitions and drops what is past retention; prints what it did;
* ``show``: the partitions, and the pool's retention.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer
from rich.table import Table

from jobpool.cli.ages import AGE_HELP, AGE_METAVAR, format_age, parse_age
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
from jobpool.cli.usage import PlainGroup
from jobpool.store.history import (
    HistoryPartition,
    HistoryPass,
    HistoryRetention,
    history_maintain,
    history_partition_list,
    history_retention_get,
    history_retention_set,
)
from jobpool.timefmt import when

app = typer.Typer(
    name="history",
    cls=PlainGroup,
    help="Retention of finished jobs: prune the history, show its partitions.",
    no_args_is_help=True,
)


@app.command("prune")
@command
def prune(
    older_than: Annotated[
        timedelta | None,
        typer.Option(
            "--older-than",
            parser=parse_age,
            metavar=AGE_METAVAR,
            show_default=False,
            help=f"Keep the pool's finished jobs this long from now on: {AGE_HELP}; "
            "1 hour to 3650 days. Default: the pool's retention (7d unless set).",
        ),
    ] = None,
    dsn: DsnOption = None,
    pool: PoolOption = None,
) -> None:
    """Drop finished jobs past retention and create the coming days' partitions.

    Days are dropped once past the longest retention of any pool; a pool keeping less
    loses its own rows of the days in between. Needs an operator or owner login.
    """
    checked_dsn = require_dsn(dsn)
    name = pool or dev_pool(checked_dsn)
    if older_than is not None and not name:
        raise CliError("--older-than sets a pool's retention: pass --pool", ExitCode.USAGE)
    done, kept = run(_prune(checked_dsn, name, older_than))
    typer.echo(_pass_line(done))
    if name and kept is not None:
        typer.echo(_retention_line(name, kept))


async def _prune(
    dsn: str, pool: str | None, older_than: timedelta | None
) -> tuple[HistoryPass, HistoryRetention | None]:
    async with open_connection(dsn) as conn:
        if pool and older_than is not None:
            await history_retention_set(conn, pool, older_than)
        done = await history_maintain(conn)
        return done, await history_retention_get(conn, pool) if pool else None


def _pass_line(done: HistoryPass) -> str:
    line = (
        f"created {done.created} partition(s), dropped {done.dropped} day(s) past retention, "
        f"deleted {done.deleted} finished job(s) of pools keeping less"
    )
    if done.skipped:
        line += f"; {done.skipped} day(s) locked by long queries are left for the next prune"
    return line


def _retention_line(pool: str, kept: HistoryRetention) -> str:
    line = f"pool {pool!r} keeps finished jobs for {format_age(kept.retention)}"
    if kept.pruned_before is not None:
        line += f"; those that ended before {kept.pruned_before:%Y-%m-%d %H:%M:%S %Z} are gone"
    return line


@app.command("show")
@command
def show(dsn: DsnOption = None, pool: PoolOption = None, json_output: JsonOption = False) -> None:
    """List the history's daily partitions (and the pool's retention, given one)."""
    checked_dsn = require_dsn(dsn)
    name = pool or dev_pool(checked_dsn)
    partitions, kept = run(_show(checked_dsn, name))
    if json_output:
        echo_json(
            {
                "partitions": [p.model_dump(mode="json") for p in partitions],
                "retention": kept.model_dump(mode="json") if kept else None,
            }
        )
        return
    print_table(_partition_table(partitions))
    if name and kept is not None:
        typer.echo(_retention_line(name, kept))


async def _show(
    dsn: str, pool: str | None
) -> tuple[list[HistoryPartition], HistoryRetention | None]:
    async with open_connection(dsn) as conn:
        partitions = await history_partition_list(conn)
        return partitions, await history_retention_get(conn, pool) if pool else None


def _partition_table(partitions: list[HistoryPartition]) -> Table:
    table = Table("PARTITION", "FINISHED FROM", "UNTIL", "ROWS (ESTIMATE)")
    table.columns[3].justify = "right"
    for p in partitions:
        table.add_row(
            plain(p.name), plain(when(p.starts_at)), plain(when(p.ends_at)), plain(p.rows_estimate)
        )
    return table


def register(root: typer.Typer) -> None:
    """Add the ``history`` command group to ``root``."""
    root.add_typer(app, rich_help_panel="Administration")
