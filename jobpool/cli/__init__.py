"""The ``jobpool`` command line: submit and follow jobs, manage the DLQ, migrate, pools.

Built with typer and rich, on top of the public ``Client`` and the ``jobpool.store``
functions (the CLI holds no SQL). Commands live in small modules: ``submit`` and
``jobs`` (one job), ``schedules`` (periodic jobs), ``dlq`` (dead-letter queue),
``history`` (retention of finished jobs), ``admin`` (schema and pools), ``pause`` (pause
and resume), ``worker`` (a worker, the ring), ``dev`` and ``operator``; ``common`` holds
the shared options, connections, exit codes and error reporting.

A command's module is imported only when the command runs or its help is shown
(``jobpool.cli.lazy``): a worker's start-up does not pay for the other commands.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, ClassVar

import typer

from jobpool.cli.common import EXIT_CODES_HELP
from jobpool.cli.lazy import LazyGroup


class JobpoolGroup(LazyGroup):
    """The ``jobpool`` command; its commands in the order of its help (as typer lists
    them: commands, then command groups)."""

    package = "jobpool.cli"
    modules: ClassVar[Mapping[str, str]] = {
        "submit": "submit",
        "status": "jobs",
        "cancel": "jobs",
        "result": "jobs",
        "schedules": "schedules",
        "migrate": "admin",
        "grant": "admin",
        "pause": "pause",
        "resume": "pause",
        "worker": "worker",
        "ring": "worker",
        "dev": "dev",
        "operator": "operator",
        # command groups
        "dlq": "dlq",
        "history": "history",
        "pool": "admin",
    }


app = typer.Typer(
    name="jobpool",
    cls=JobpoolGroup,
    help="jobpool: a durable, sharded job system backed by Postgres.\n\n"
    "Every command takes the database as --dsn or JOBPOOL_DSN; job and dead-letter "
    "commands also take --pool (JOBPOOL_POOL) and --tenant (JOBPOOL_TENANT, default "
    '"default").',
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        try:
            typer.echo(f"jobpool {version('jobpool')}")
        except PackageNotFoundError:
            typer.echo("jobpool (not installed)")
        raise typer.Exit()


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """jobpool: a durable, sharded job system backed by Postgres."""


def main() -> None:
    """Entry point of the ``jobpool`` console script."""
    app(prog_name="jobpool")


__all__ = ["app", "main"]
