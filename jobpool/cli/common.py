"""Shared plumbing of the CLI: options, exit codes, connections and error reporting.

Design:

* Every command body runs under :func:`command`, which turns each expected failure
  (a typed ``jobpool.errors`` error, an unreachable or malformed database, a failed SQL
  statement) into one line ``error: …`` on stderr and a documented :class:`ExitCode` —
  never a traceback. Only a genuine bug escapes as a traceback, without local variables.
* Nothing printed ever contains the DSN's password: connection errors name the DSN
  redacted, and every error line is scrubbed of the password besides.
* The CLI holds no SQL: it connects through :func:`open_client` (a ``Client``) or
  :func:`open_connection` (a bare connection for ``jobpool.store`` functions).
* Every command imports this module, ``jobpool worker`` too: the client and the dev
  machinery are imported by the functions that use them, not by the module.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import asyncpg
import typer

from jobpool.errors import (
    DatabaseUnavailable,
    DevAlreadyRunning,
    DlqEntryAlreadyReplayed,
    DlqEntryNotFound,
    InvalidInput,
    JobAlreadyFinished,
    JobCancelled,
    JobFailed,
    JobNotFound,
    JobpoolError,
    JobWaitTimeout,
    MigrationError,
    PoolNotFound,
)
from jobpool.store.connect import connect, redact

if TYPE_CHECKING:
    from jobpool.client import Client
    from jobpool.dev.embedded import DevState

P = ParamSpec("P")
T = TypeVar("T")

APPLICATION_NAME = "jobpool-cli"
CLI_MAX_CONNECTIONS = 2


class ExitCode(IntEnum):
    """The exit status of every ``jobpool`` command (listed in ``jobpool --help``)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    NOT_FOUND = 3
    CONFLICT = 4
    TIMEOUT = 5
    UNAVAILABLE = 6
    DATABASE_ERROR = 7
    INTERRUPTED = 130


EXIT_CODES_HELP = """\
**Exit codes**

- 0: success
- 1: the job ended dead or cancelled (`result`); migrations are pending (`migrate --check`)
- 2: invalid usage or input: option, argument, payload, job id, missing or malformed DSN
- 3: not found: unknown pool, job or dead-letter entry
- 4: conflict: the job already finished, or the entry was already replayed
- 5: timed out: the job did not end within `result --timeout`
- 6: the database cannot be reached
- 7: database error: a statement or migration failed (is the schema migrated?)
- 130: interrupted (Ctrl-C)
"""


class CliError(Exception):
    """A failure the CLI reports as one line on stderr with ``code`` as exit status."""

    def __init__(self, message: str, code: ExitCode = ExitCode.FAILED) -> None:
        super().__init__(message)
        self.code = code


# -- options shared by the commands ----------------------------------------------

CONNECTION_PANEL = "Connection"

DsnOption = Annotated[
    str | None,
    typer.Option(
        "--dsn",
        envvar="JOBPOOL_DSN",
        show_default=False,
        metavar="URI",
        rich_help_panel=CONNECTION_PANEL,
        help="Postgres URI, e.g. postgresql://user:password@host:5432/db. "
        "Prefer the environment variable, which keeps the password out of your shell history. "
        "Default: the database of a running `jobpool dev`.",
    ),
]
PoolOption = Annotated[
    str | None,
    typer.Option(
        "--pool",
        "-p",
        envvar="JOBPOOL_POOL",
        show_default=False,
        metavar="NAME",
        rich_help_panel=CONNECTION_PANEL,
        help="Name of the pool the jobs belong to (required, unless `jobpool dev` runs).",
    ),
]
TenantOption = Annotated[
    str,
    typer.Option(
        "--tenant",
        "-t",
        envvar="JOBPOOL_TENANT",
        metavar="NAME",
        rich_help_panel=CONNECTION_PANEL,
        help="Tenant the jobs belong to; you see and change only this tenant's jobs.",
    ),
]
JsonOption = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print machine-readable JSON (one object on one line) instead of text.",
    ),
]
DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class Target:
    """Where a job command acts: a database, a pool and a tenant."""

    dsn: str
    pool: str
    tenant: str

    @classmethod
    def from_options(cls, dsn: str | None, pool: str | None, tenant: str) -> Target:
        checked_dsn = require_dsn(dsn)
        pool = pool or dev_pool(checked_dsn)
        if not pool:
            raise CliError("no pool given: pass --pool or set JOBPOOL_POOL", ExitCode.USAGE)
        if not tenant:
            raise CliError(
                "the tenant must not be empty (--tenant, JOBPOOL_TENANT)", ExitCode.USAGE
            )
        return cls(dsn=checked_dsn, pool=pool, tenant=tenant)


# -- the DSN -----------------------------------------------------------------------


def require_dsn(dsn: str | None) -> str:
    """The DSN, checked for shape; ``CliError`` when missing or malformed.

    Without one, the database of a running ``jobpool dev`` (found through its state
    file, see ``jobpool.dev.embedded``) is used, with a one-line note on stderr.
    """
    if dsn:
        return dsn
    dev = _dev_state()
    if dev is None:
        raise CliError(
            "no database given: pass --dsn or set JOBPOOL_DSN (or start `jobpool dev`)",
            ExitCode.USAGE,
        )
    typer.echo(f"using the jobpool dev database at {redact(dev.dsn, dev.dsn)}", err=True)
    return dev.dsn


def dev_pool(dsn: str) -> str | None:
    """The pool of the running ``jobpool dev`` whose database is ``dsn``, if any."""
    dev = _dev_state()
    return dev.pool if dev is not None and dev.dsn == dsn else None


def _dev_state() -> DevState | None:
    from jobpool.dev.embedded import live_state

    return live_state()


def scrub(message: str, dsn: str | None) -> str:
    """``message`` on one line, with any password of ``dsn`` masked."""
    return " ".join((redact(message, dsn) if dsn else message).split())


# -- connections -------------------------------------------------------------------


@asynccontextmanager
async def open_client(target: Target) -> AsyncIterator[Client]:
    """A connected ``Client`` of the target's pool and tenant, closed on exit."""
    from jobpool.client import Client

    client = Client(
        target.dsn, pool=target.pool, tenant=target.tenant, max_connections=CLI_MAX_CONNECTIONS
    )
    try:
        await client.connect()
        yield client
    finally:
        await client.close()


def with_client(target: Target, call: Callable[[Client], Awaitable[T]]) -> T:
    """Run one client call against ``target`` (connect, call, close) and return its value."""

    async def main() -> T:
        async with open_client(target) as client:
            return await call(client)

    return run(main())


@asynccontextmanager
async def open_connection(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """One plain connection (for ``jobpool.store`` functions), closed on exit."""
    conn = await connect(dsn, server_settings={"application_name": APPLICATION_NAME})
    try:
        yield conn
    finally:
        await conn.close()


# -- running commands and reporting errors -----------------------------------------

_CONNECTION_LOST = (ConnectionResetError, ConnectionAbortedError, ConnectionRefusedError)

_EXIT_CODES: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], ExitCode], ...] = (
    (InvalidInput, ExitCode.USAGE),
    ((PoolNotFound, JobNotFound, DlqEntryNotFound), ExitCode.NOT_FOUND),
    ((JobAlreadyFinished, DlqEntryAlreadyReplayed, DevAlreadyRunning), ExitCode.CONFLICT),
    ((JobFailed, JobCancelled), ExitCode.FAILED),
    (JobWaitTimeout, ExitCode.TIMEOUT),
    # Not every OSError: a broken stdout pipe is left to click, which exits quietly.
    ((DatabaseUnavailable, asyncpg.InterfaceError, *_CONNECTION_LOST), ExitCode.UNAVAILABLE),
    ((asyncpg.PostgresError, MigrationError), ExitCode.DATABASE_ERROR),
    (JobpoolError, ExitCode.FAILED),
)


def describe(exc: BaseException) -> tuple[ExitCode, str] | None:
    """The exit code and message of an expected failure; ``None`` for a bug."""
    if isinstance(exc, CliError):
        return exc.code, str(exc)
    for types, code in _EXIT_CODES:
        if isinstance(exc, types):
            return code, _message(exc, code)
    return None


def _message(exc: BaseException, code: ExitCode) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.UndefinedFunctionError):
        return f"database error: {text} (is the schema migrated? run `jobpool migrate`)"
    if isinstance(exc, asyncpg.PostgresError):
        return f"database error: {text}"
    if code is ExitCode.UNAVAILABLE and not isinstance(exc, DatabaseUnavailable):
        return f"lost the database connection: {text}"
    return text


def fail(message: str, code: ExitCode) -> typer.Exit:
    """Print ``error: message`` on stderr; return the ``typer.Exit`` to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(int(code))


def command(func: Callable[P, T]) -> Callable[P, T]:
    """Decorate a command: report expected failures as one scrubbed line and exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        dsn = kwargs.get("dsn")
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            raise fail("interrupted", ExitCode.INTERRUPTED) from None
        except Exception as exc:
            found = describe(exc)
            if found is None:
                raise
            code, message = found
            raise fail(scrub(message, dsn if isinstance(dsn, str) else None), code) from None

    return wrapper


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run one command's coroutine to completion on a fresh event loop."""
    return asyncio.run(main)
