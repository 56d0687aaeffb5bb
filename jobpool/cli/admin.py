"""``jobpool migrate``, ``jobpool grant`` and ``jobpool pool …``: the schema, its roles and
the pools of a database.

These commands need only ``--dsn``: they work on one plain connection through
``jobpool.store.migrate`` and ``jobpool.store.pools``. ``migrate`` is safe to run from
many processes at once (the store serialises runs under an advisory lock).
"""

from __future__ import annotations

from typing import Annotated

import asyncpg
import typer

from jobpool.cli.common import (
    CliError,
    DsnOption,
    ExitCode,
    JsonOption,
    command,
    open_connection,
    require_dsn,
    run,
)
from jobpool.cli.output import echo_fields, echo_json, pool_fields
from jobpool.cli.usage import PlainGroup
from jobpool.errors import PoolNotFound
from jobpool.models import Pool
from jobpool.store.migrate import migrate, pending_migrations
from jobpool.store.pools import pool_ensure, pool_get
from jobpool.store.roles import ANY_TENANT, RoleKind, role_grant

PANEL = "Administration"
DEFAULT_SHARDS = 64

pool_app = typer.Typer(
    name="pool",
    cls=PlainGroup,
    help="Create and show pools (a pool's shard count and its ring of worker replicas).",
    no_args_is_help=True,
)

PoolNameArgument = Annotated[
    str,
    typer.Argument(
        metavar="NAME",
        show_default=False,
        help="Pool name: lowercase letters, digits and -, at most 50 characters.",
    ),
]


@command
def migrate_command(
    dsn: DsnOption = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Apply nothing: list the pending migrations and exit with status 1 if "
            "there are any (validates the applied ones too).",
        ),
    ] = False,
) -> None:
    """Bring the database schema up to date: apply the pending migrations, in order.

    Prints each migration it applies, or "schema is up to date". Before applying
    anything, it checks the migrations already applied against the shipped files: an
    edited or missing one stops it with exit status 7. It creates the group roles
    jobpool_owner, jobpool_worker, jobpool_operator and jobpool_client when missing,
    which needs CREATEROLE; without it, it names the roles an administrator must create.
    """
    target = require_dsn(dsn)
    if check:
        pending = run(_pending(target))
        for name in pending:
            typer.echo(f"pending {name}")
        if pending:
            raise CliError(f"{len(pending)} migration(s) pending", ExitCode.FAILED)
        typer.echo("schema is up to date")
        return
    applied = run(_migrate(target))
    for name in applied:
        typer.echo(f"applied {name}")
    if not applied:
        typer.echo("schema is up to date")


async def _pending(dsn: str) -> list[str]:
    async with open_connection(dsn) as conn:
        return await pending_migrations(conn)


async def _migrate(dsn: str) -> list[str]:
    async with open_connection(dsn) as conn:
        return await migrate(conn)


@command
def grant_command(
    role: Annotated[
        str,
        typer.Argument(metavar="LOGIN_ROLE", show_default=False, help="An existing login role."),
    ],
    kind: Annotated[
        RoleKind,
        typer.Argument(
            metavar="KIND",
            show_default=False,
            help="owner (migrations), worker, operator or client.",
        ),
    ],
    tenants: Annotated[
        list[str] | None,
        typer.Option(
            "--tenant",
            show_default=False,
            help="A tenant a client role acts for (repeat for several; "
            f"'{ANY_TENANT}' for any tenant: a trusted application).",
        ),
    ] = None,
    dsn: DsnOption = None,
) -> None:
    """Grant a jobpool group role to a login role; bind a client role to its tenants.

    Run it as an administrator (a member of jobpool_owner that may grant the group
    role). A client role reaches only the jobs of the tenants it is bound to.
    """
    run(_grant(require_dsn(dsn), role, kind, tenants or []))
    bound = f", tenants {', '.join(tenants)}" if tenants else ""
    typer.echo(f"granted {kind.group} to {role}{bound}")


async def _grant(dsn: str, role: str, kind: RoleKind, tenants: list[str]) -> None:
    async with open_connection(dsn) as conn:
        await role_grant(conn, role, kind, tenants=tenants)


@pool_app.command("create")
@command
def create(
    name: PoolNameArgument,
    shards: Annotated[
        int,
        typer.Option(
            min=1,
            max=4096,
            help="Number of virtual shards; fixed once the pool exists.",
        ),
    ] = DEFAULT_SHARDS,
    replicas: Annotated[int, typer.Option(min=0, help="Worker replicas of the initial ring.")] = 1,
    dsn: DsnOption = None,
) -> None:
    """Create a pool, unless it exists (an existing pool is left unchanged).

    Prints the pool's shards, replicas and ring version.
    """
    pool, created = run(_create(require_dsn(dsn), name, shards=shards, replicas=replicas))
    state = "created" if created else "already exists, unchanged"
    typer.echo(
        f"pool {pool.name} {state}: {pool.shards} shards, {pool.replicas} "
        f"replica{'' if pool.replicas == 1 else 's'}, ring version {pool.ring_version}"
    )
    if not created and (pool.shards, pool.replicas) != (shards, replicas):
        typer.echo("note: --shards and --replicas apply only to a new pool", err=True)


async def _create(dsn: str, name: str, *, shards: int, replicas: int) -> tuple[Pool, bool]:
    async with open_connection(dsn) as conn:
        try:
            return await pool_get(conn, name), False
        except PoolNotFound:
            pass
        try:
            return await pool_ensure(conn, name, shards=shards, replicas=replicas), True
        except asyncpg.CheckViolationError:
            raise CliError(
                f"invalid pool name {name!r}: use at most 50 lowercase letters, digits and -, "
                "starting and ending with a letter or digit",
                ExitCode.USAGE,
            ) from None


@pool_app.command("show")
@command
def show(name: PoolNameArgument, dsn: DsnOption = None, json_output: JsonOption = False) -> None:
    """Show a pool: its shard count, replicas and ring version.

    Exit status 3 if the pool does not exist.
    """
    pool = run(_show(require_dsn(dsn), name))
    if json_output:
        echo_json(pool)
    else:
        echo_fields(pool_fields(pool))


async def _show(dsn: str, name: str) -> Pool:
    async with open_connection(dsn) as conn:
        return await pool_get(conn, name)


def register(app: typer.Typer) -> None:
    """Add ``migrate``, ``grant`` and the ``pool`` command group to ``app``."""
    app.command("migrate", rich_help_panel=PANEL)(migrate_command)
    app.command("grant", rich_help_panel=PANEL)(grant_command)
    app.add_typer(pool_app, rich_help_panel=PANEL)
