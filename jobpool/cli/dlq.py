"""``jobpool dlq …``: inspect, replay and purge the dead-letter queue of a pool.

A job ends in the dead-letter queue when it fails for good (a permanent error, or its
attempts ran out). Its entry stays pending until it is replayed (re-enqueued as a new
job), and a replayed entry stays until it is purged. Every command acts on the pool
and tenant given by ``--pool`` and ``--tenant``, through ``client.dlq``.
"""

from __future__ import annotations

from datetime import timedelta
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
from jobpool.cli.output import (
    dlq_entry_fields,
    dlq_table,
    echo_errors,
    echo_fields,
    echo_json,
    print_table,
)
from jobpool.cli.usage import PlainGroup
from jobpool.models import DlqId

app = typer.Typer(
    name="dlq",
    cls=PlainGroup,
    help="Inspect, replay and purge the dead-letter queue (jobs that failed for good).",
    no_args_is_help=True,
)

MAX_ENTRY_ID = 2**63 - 1
"""Entry ids are Postgres bigints."""

EntryIdArgument = Annotated[
    str,
    typer.Argument(
        metavar="ID", show_default=False, help="The entry's id, as shown by `jobpool dlq list`."
    ),
]


def parse_entry_id(text: str) -> DlqId:
    """The entry id in ``text``; ``CliError`` (exit 2) if it is not a positive integer."""
    if not text.strip().isdigit() or not 1 <= int(text) <= MAX_ENTRY_ID:
        raise CliError(
            f"invalid dead-letter entry id {text!r}: expected a positive integer", ExitCode.USAGE
        )
    return DlqId(int(text))


@app.command("list")
@command
def list_entries(
    job_type: Annotated[
        str | None,
        typer.Option("--type", show_default=False, help="Only entries of this job type."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Entries per page.")] = 50,
    cursor: Annotated[
        str | None,
        typer.Option(
            show_default=False, help='Resume after a previous page: its "next cursor" value.'
        ),
    ] = None,
    dsn: DsnOption = None,
    pool: PoolOption = None,
    tenant: TenantOption = DEFAULT_TENANT,
    json_output: JsonOption = False,
) -> None:
    """List pending (not yet replayed) entries, oldest first, one page at a time.

    Prints a table, then "next cursor: …" when more entries follow: pass that value
    to --cursor for the next page.
    """
    target = Target.from_options(dsn, pool, tenant)
    page = with_client(
        target, lambda client: client.dlq.list(type=job_type, limit=limit, cursor=cursor)
    )
    if json_output:
        echo_json(page)
    elif not page.entries:
        typer.echo("no pending dead-letter entries")
    else:
        print_table(dlq_table(page.entries))
        typer.echo(f"next cursor: {page.next_cursor}" if page.next_cursor else "last page")


@app.command("show")
@command
def show(
    entry_id: EntryIdArgument,
    dsn: DsnOption = None,
    pool: PoolOption = None,
    tenant: TenantOption = DEFAULT_TENANT,
    json_output: JsonOption = False,
) -> None:
    """Show every field of one entry: payload, reason, attempts and error history."""
    target, eid = Target.from_options(dsn, pool, tenant), parse_entry_id(entry_id)
    entry = with_client(target, lambda client: client.dlq.get(eid))
    if json_output:
        echo_json(entry)
        return
    echo_fields(dlq_entry_fields(entry))
    echo_errors(entry.error_history)


@app.command("replay")
@command
def replay(
    entry_id: EntryIdArgument,
    dsn: DsnOption = None,
    pool: PoolOption = None,
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Re-enqueue an entry's job as a new job and print the new job's id.

    The entry is marked replayed in the same transaction. Exit status 4 if it was
    already replayed, 3 if there is no such entry.
    """
    target, eid = Target.from_options(dsn, pool, tenant), parse_entry_id(entry_id)
    typer.echo(str(with_client(target, lambda client: client.dlq.replay(eid)).id))


@app.command("purge")
@command
def purge(
    older_than: Annotated[
        float,
        typer.Option(
            "--older-than",
            min=0,
            metavar="DAYS",
            show_default=False,
            help="Delete entries replayed more than this many days ago (required).",
        ),
    ],
    dsn: DsnOption = None,
    pool: PoolOption = None,
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Delete the tenant's entries replayed more than --older-than days ago.

    Pending (never replayed) entries are always kept. Prints how many were deleted.
    """
    target = Target.from_options(dsn, pool, tenant)
    age = timedelta(days=older_than)
    deleted = with_client(target, lambda client: client.dlq.purge(older_than=age))
    typer.echo(f"purged {deleted} replayed {'entry' if deleted == 1 else 'entries'}")


def register(root: typer.Typer) -> None:
    """Add the ``dlq`` command group to ``root``."""
    root.add_typer(app, rich_help_panel="Dead-letter queue")
