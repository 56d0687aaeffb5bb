"""``jobpool pause`` and ``jobpool resume``: hold back a whole pool, or some job types.

One plain connection (``jobpool.store.pause``). The pause lives in the pool's row and
the pool's workers are woken to re-read it: a paused pool starts nothing new (running
jobs finish); jobs of a paused type are parked when a worker claims them and queued
again on resume. With a JobPool, the operator writes ``spec.paused`` and
``spec.pausedTypes`` to the same row at each reconcile: the spec is the lasting place.
"""

from __future__ import annotations

from typing import Annotated

import typer

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
from jobpool.cli.output import echo_json
from jobpool.store.pause import PauseChange, pool_pause_change

PANEL = "Administration"

TypeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--type",
        show_default=False,
        metavar="TYPE",
        help="A job type (repeat for several); without it, the whole pool.",
    ),
]


@command
def pause(
    pool: PoolOption = None,
    types: TypeOption = None,
    dsn: DsnOption = None,
    json_output: JsonOption = False,
) -> None:
    """Pause a pool, or only some job types of it (--type).

    A paused pool starts no new job; running jobs finish. Jobs of a paused type are set
    aside (state "paused") as workers reach them, while other types run on. Needs a
    jobpool_operator role. Exit status 3 if the pool does not exist.
    """
    _change(dsn, pool, types, paused=True, json_output=json_output)


@command
def resume(
    pool: PoolOption = None,
    types: TypeOption = None,
    dsn: DsnOption = None,
    json_output: JsonOption = False,
) -> None:
    """Resume a paused pool, or only some paused job types of it (--type).

    Parked jobs of the resumed types are queued again and the workers are woken.
    Resuming the pool leaves its paused types paused. Needs a jobpool_operator role.
    Exit status 3 if the pool does not exist.
    """
    _change(dsn, pool, types, paused=False, json_output=json_output)


def _change(
    dsn: str | None, pool: str | None, types: list[str] | None, *, paused: bool, json_output: bool
) -> None:
    target = require_dsn(dsn)
    name = pool or dev_pool(target)
    if not name:
        raise CliError("no pool given: pass --pool or set JOBPOOL_POOL", ExitCode.USAGE)
    change = run(_write(target, name, types or [], paused=paused))
    if json_output:
        echo_json(
            {
                "pool": name,
                "paused": change.pause.paused,
                "paused_types": sorted(change.pause.types),
                "unparked": change.unparked,
            }
        )
        return
    plural = "" if change.unparked == 1 else "s"
    requeued = f" ({change.unparked} parked job{plural} queued again)" if change.unparked else ""
    typer.echo(f"pool {name}: {change.pause.describe()}{requeued}")


async def _write(dsn: str, pool: str, types: list[str], *, paused: bool) -> PauseChange:
    async with open_connection(dsn) as conn:
        if not types:
            return await pool_pause_change(conn, pool, paused=paused)
        if paused:
            return await pool_pause_change(conn, pool, add=types)
        return await pool_pause_change(conn, pool, remove=types)


def register(app: typer.Typer) -> None:
    """Add ``pause`` and ``resume`` to ``app``."""
    app.command(rich_help_panel=PANEL)(pause)
    app.command(rich_help_panel=PANEL)(resume)
