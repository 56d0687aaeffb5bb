"""The ``jobpool`` command line: submit and follow jobs, manage the DLQ, migrate, pools.

Built with typer and rich, on top of the public ``Client`` and the ``jobpool.store``
functions (the CLI holds no SQL). Commands live in small modules: ``submit`` and
``jobs`` (one job), ``schedules`` (periodic jobs), ``dlq`` (dead-letter queue),
``history`` (retention of finished jobs), ``admin`` (schema and pools), ``pause`` (pause
and resume); ``common`` holds the shared options, connections, exit codes and error
reporting.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from jobpool.cli import admin, dev, dlq, history, jobs, operator, pause, schedules, submit, worker
from jobpool.cli.common import EXIT_CODES_HELP
from jobpool.cli.usage import RootGroup, plain_usage

app = typer.Typer(
    name="jobpool",
    cls=RootGroup,
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


submit.register(app)
jobs.register(app)
schedules.register(app)
dlq.register(app)
history.register(app)
admin.register(app)
pause.register(app)
worker.register(app)
dev.register(app)
operator.register(app)
plain_usage(app)


def main() -> None:
    """Entry point of the ``jobpool`` console script."""
    app(prog_name="jobpool")


__all__ = ["app", "main"]
