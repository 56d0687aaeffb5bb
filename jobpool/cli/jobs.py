"""``jobpool status``, ``cancel`` and ``result``: follow and control one job by its id.

Each command connects a ``Client`` to the pool and tenant given by ``--pool`` and
``--tenant`` (a job of another tenant is "not found", as row-level security hides it).
The job id is checked before anything connects.
"""

from __future__ import annotations

import uuid
from typing import Annotated

import typer

from jobpool.cli.common import (
    DEFAULT_TENANT,
    CliError,
    DsnOption,
    ExitCode,
    JsonOption,
    PoolOption,
    Target,
    TenantOption,
    command,
    with_client,
)
from jobpool.cli.output import echo_errors, echo_fields, echo_json, status_fields, to_json_text
from jobpool.models import CancelOutcome, JobId

PANEL = "Jobs"

JobIdArgument = Annotated[
    str,
    typer.Argument(
        metavar="JOB_ID", show_default=False, help="The job's id, as printed by `jobpool submit`."
    ),
]


def parse_job_id(text: str) -> JobId:
    """The job id in ``text``; ``CliError`` (exit 2) if it is not a UUID."""
    try:
        return JobId(uuid.UUID(text.strip()))
    except ValueError:
        raise CliError(
            f"invalid job id {text!r}: expected a UUID such as "
            "0192f3a4-5b6c-7d8e-9f00-112233445566",
            ExitCode.USAGE,
        ) from None


@command
def status(
    job_id: JobIdArgument,
    dsn: DsnOption = None,
    pool: PoolOption = None,
    tenant: TenantOption = DEFAULT_TENANT,
    json_output: JsonOption = False,
) -> None:
    """Show a job: state, attempts, progress, times, result and error history.

    Exit status 3 if no such job exists in the pool for the tenant.
    """
    target, jid = Target.from_options(dsn, pool, tenant), parse_job_id(job_id)
    found = with_client(target, lambda client: client.status(jid))
    if json_output:
        echo_json(found)
        return
    echo_fields(status_fields(found))
    echo_errors(found.error_history)


@command
def cancel(
    job_id: JobIdArgument,
    dsn: DsnOption = None,
    pool: PoolOption = None,
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Cancel a job.

    A queued job is cancelled at once and the command prints "cancelled". A running job
    is signalled: its worker cancels the handler, and the command prints "cancel requested".
    Exit status 4 if the job already finished, 3 if there is no such job.
    """
    target, jid = Target.from_options(dsn, pool, tenant), parse_job_id(job_id)
    outcome = with_client(target, lambda client: client.cancel(jid))
    typer.echo("cancelled" if outcome is CancelOutcome.CANCELLED else "cancel requested")


@command
def result(
    job_id: JobIdArgument,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            min=0,
            metavar="SECONDS",
            show_default=False,
            help="Give up after this many seconds (exit status 5). Default: wait until the "
            "job ends.",
        ),
    ] = None,
    dsn: DsnOption = None,
    pool: PoolOption = None,
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Wait for a job to end and print its result as JSON.

    Waiting uses LISTEN/NOTIFY, not polling. Exit status 1 if the job ended dead (in the
    dead-letter queue) or cancelled, 5 if it did not end within --timeout, 3 if there is
    no such job.
    """
    target, jid = Target.from_options(dsn, pool, tenant), parse_job_id(job_id)
    value = with_client(target, lambda client: client.result(jid, timeout=timeout))
    typer.echo(to_json_text(value))


def register(app: typer.Typer) -> None:
    """Add the commands of this module to ``app``."""
    for func in (status, cancel, result):
        app.command(rich_help_panel=PANEL)(func)
