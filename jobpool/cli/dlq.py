"""``jobpool dlq …``: inspect, replay, purge and discard the dead-letter queue of a pool.

A job ends in the dead-letter queue when it fails for good (a permanent error, or its
attempts ran out). Its entry stays pending until it is replayed (re-enqueued as a new
job) or discarded (deleted for good); a replayed entry stays until it is purged. Every
command acts on the pool and tenant given by ``--pool`` and ``--tenant``, through
``client.dlq``. Discarding by filter asks first, unless ``--yes``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import click
import typer

from jobpool.cli.ages import AGE_HELP, AGE_METAVAR, format_age, parse_age
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
    help="Inspect, replay, purge and discard the dead-letter queue (jobs that failed for good).",
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


@app.command("discard")
@command
def discard(
    entry_id: Annotated[
        str | None,
        typer.Argument(
            metavar="[ID]",
            show_default=False,
            help="The entry's id; or discard by --type and --older-than instead.",
        ),
    ] = None,
    job_type: Annotated[
        str | None,
        typer.Option("--type", show_default=False, help="Pending entries of this job type."),
    ] = None,
    older_than: Annotated[
        timedelta | None,
        typer.Option(
            "--older-than",
            parser=parse_age,
            metavar=AGE_METAVAR,
            show_default=False,
            help=f"Pending entries that went to the DLQ longer ago than this: {AGE_HELP}.",
        ),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Discard by filter without asking first.")
    ] = False,
    dsn: DsnOption = None,
    pool: PoolOption = None,
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Delete dead-letter entries for good, without running them again.

    With an ID: that entry, replayed or not. Else the tenant's pending entries of
    --type and/or older than --older-than (at least one), after a confirmation
    (--yes skips it). Prints what was discarded.
    """
    target = Target.from_options(dsn, pool, tenant)
    if entry_id is not None:
        if job_type is not None or older_than is not None:
            raise CliError("give an entry ID or --type/--older-than, not both", ExitCode.USAGE)
        eid = parse_entry_id(entry_id)
        entry = with_client(target, lambda client: client.dlq.discard(eid))
        typer.echo(f"discarded entry {entry.id} ({entry.type}, job {entry.original_job_id})")
        return
    if job_type is None and older_than is None:
        raise CliError("name what to discard: an entry ID, --type or --older-than", ExitCode.USAGE)
    what = _pending_description(target, job_type, older_than)
    if not yes and not _confirmed(f"discard {what}?"):
        raise CliError("nothing discarded (not confirmed; --yes skips the question)")
    age = older_than or timedelta(0)
    count = with_client(
        target, lambda client: client.dlq.discard_pending(type=job_type, older_than=age)
    )
    typer.echo(f"discarded {count} pending {'entry' if count == 1 else 'entries'}")


def _confirmed(question: str) -> bool:
    """The answer on stdin to ``question`` (asked on stderr); no answer is no."""
    try:
        return typer.confirm(question, default=False, err=True)
    except (click.Abort, typer.Abort):  # end of input
        typer.echo(err=True)
        return False


def _pending_description(target: Target, job_type: str | None, age: timedelta | None) -> str:
    kind = f"of type {job_type!r} " if job_type else ""
    since = f"older than {format_age(age)} " if age else ""
    return (
        f"the pending dead-letter entries {kind}{since}of tenant {target.tenant!r} "
        f"in pool {target.pool!r}"
    )


def register(root: typer.Typer) -> None:
    """Add the ``dlq`` command group to ``root``."""
    root.add_typer(app, rich_help_panel="Dead-letter queue")
