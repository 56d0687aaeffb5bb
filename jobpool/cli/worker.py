"""``jobpool worker`` (run one worker process) and ``jobpool ring`` (resize a pool's ring).

A worker needs its pool, its handlers (``--app module:registry``) and its ordinal:
``--ordinal`` or, in a StatefulSet pod, the number at the end of ``POD_NAME``
(``emails-2`` is ordinal 2). Its incarnation is ``POD_UID`` when set (a pod's UID
changes on every restart while its name does not), else a fresh UUID.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import re
import sys
import uuid
from typing import Annotated

import typer

from jobpool.cli.common import (
    CliError,
    DsnOption,
    ExitCode,
    command,
    dev_pool,
    open_connection,
    require_dsn,
    run,
)
from jobpool.cli.logs import LogFormatOption, LogLevelOption, configure_logging
from jobpool.cli.ringcheck import read_live_ordinals, ring_warnings
from jobpool.models import Pool, Priority
from jobpool.store.pools import pool_set_replicas
from jobpool.worker import Registry, RetryPolicy, Worker, WorkerSettings
from jobpool.worker.runtime import install_signal_handlers
from jobpool.worker.scheduler import DEFAULT_WEIGHTS

PANEL = "Workers"
_BIND_ERRORS = (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL)
"""Why the metrics server could not listen: the only ``OSError`` a worker reports as such."""
POD_ORDINAL = re.compile(r"-(\d+)$")

PoolNameOption = Annotated[
    str,
    typer.Option("--pool", "-p", envvar="JOBPOOL_POOL", metavar="NAME", help="The pool."),
]


def load_registry(app_path: str) -> Registry:
    """Import ``module:attribute`` and check that it is a ``jobpool.Registry``."""
    module_name, _, attribute = app_path.partition(":")
    if not module_name or not attribute:
        raise CliError(f"--app must look like module:registry, got {app_path!r}", ExitCode.USAGE)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        registry = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise CliError(f"cannot load handlers {app_path!r}: {exc}", ExitCode.USAGE) from None
    except Exception as exc:  # the module itself failed: a SyntaxError, its own error
        raise CliError(
            f"cannot load handlers {app_path!r}: importing {module_name} raised "
            f"{type(exc).__name__}: {exc}",
            ExitCode.USAGE,
        ) from None
    if not isinstance(registry, Registry):
        raise CliError(
            f"cannot load handlers {app_path!r}: {attribute} is of type "
            f"{type(registry).__name__}, not a jobpool.Registry",
            ExitCode.USAGE,
        )
    return registry


def resolve_ordinal(ordinal: int | None) -> int:
    if ordinal is not None:
        return ordinal
    match = POD_ORDINAL.search(os.environ.get("POD_NAME", ""))
    if match is None:
        raise CliError("no ordinal: pass --ordinal or set POD_NAME (e.g. emails-2)", ExitCode.USAGE)
    return int(match.group(1))


def parse_weights(text: str) -> dict[Priority, int]:
    """``critical=4,high=3,normal=2,low=1`` (lanes left out keep their default)."""
    weights: dict[Priority, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        try:
            weights[Priority(name)] = int(value)
        except ValueError:
            raise CliError(
                f"bad --weights entry {part!r}: use e.g. critical=4,low=1", ExitCode.USAGE
            ) from None
    return weights


@command
def worker_command(
    pool: PoolNameOption,
    app: Annotated[
        str,
        typer.Option(
            envvar="JOBPOOL_APP",
            metavar="MODULE:REGISTRY",
            help="Where the handlers are: a jobpool.Registry, e.g. myapp.jobs:registry.",
        ),
    ],
    ordinal: Annotated[
        int | None,
        typer.Option(
            min=0,
            envvar="JOBPOOL_ORDINAL",
            help="This worker's ordinal; default: the number ending POD_NAME.",
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option(min=1, envvar="JOBPOOL_CONCURRENCY", help="Handlers running at once.")
    ] = 16,
    lease_ttl: Annotated[
        float,
        typer.Option(min=1.0, envvar="JOBPOOL_LEASE_TTL", help="Shard lease lifetime, seconds."),
    ] = 15.0,
    orphan_grace: Annotated[
        float,
        typer.Option(
            min=0.0,
            envvar="JOBPOOL_ORPHAN_GRACE",
            help="Seconds a shard may stay free or expired before live ordinals adopt it "
            "(its ordinal is missing); 0 = twice the lease TTL.",
        ),
    ] = 0.0,
    drain_timeout: Annotated[
        float,
        typer.Option(
            min=0.0,
            envvar="JOBPOOL_DRAIN_TIMEOUT",
            help="On SIGTERM, seconds running jobs may take to finish.",
        ),
    ] = 30.0,
    weights: Annotated[
        str,
        typer.Option(
            envvar="JOBPOOL_PRIORITY_WEIGHTS",
            help="Priority weights, e.g. critical=4,high=3,normal=2,low=1.",
        ),
    ] = "",
    max_attempts: Annotated[
        int,
        typer.Option(
            min=1,
            envvar="JOBPOOL_MAX_ATTEMPTS",
            help="Attempts per job unless the job or its handler says otherwise.",
        ),
    ] = 5,
    backoff_base: Annotated[
        float,
        typer.Option(
            min=0.001,
            envvar="JOBPOOL_BACKOFF_BASE",
            help="Seconds before the first retry; doubles per attempt.",
        ),
    ] = 1.0,
    backoff_cap: Annotated[
        float,
        typer.Option(
            min=0.001, envvar="JOBPOOL_BACKOFF_CAP", help="Longest wait between attempts, seconds."
        ),
    ] = 300.0,
    metrics_port: Annotated[
        int,
        typer.Option(
            min=0,
            max=65535,
            envvar="JOBPOOL_METRICS_PORT",
            help="Port of /metrics, /healthz and /readyz; 0 turns them off.",
        ),
    ] = 9100,
    metrics_host: Annotated[
        str,
        typer.Option(
            envvar="JOBPOOL_METRICS_HOST",
            help="Address the metrics port listens on: 0.0.0.0 (all, what a pod needs "
            "to be scraped) or e.g. 127.0.0.1 (this host only).",
        ),
    ] = "0.0.0.0",
    log_level: LogLevelOption = "info",
    log_format: LogFormatOption = "text",
    dsn: DsnOption = None,
) -> None:
    """Run one worker of a pool until SIGTERM or Ctrl-C, then drain and exit 0.

    The worker takes the shards the pool's ring gives its ordinal, claims their jobs
    (woken by NOTIFY, no polling), runs them under weighted priorities, retries with
    backoff, dead-letters, honours cancel requests, and serves Prometheus metrics and
    health probes. Changing the ring (jobpool ring) rebalances shards live.
    """
    settings = WorkerSettings(
        dsn=require_dsn(dsn),
        pool=pool,
        ordinal=resolve_ordinal(ordinal),
        incarnation=os.environ.get("POD_UID") or uuid.uuid4().hex,
        concurrency=concurrency,
        lease_ttl_s=lease_ttl,
        orphan_grace_s=orphan_grace,
        drain_timeout_s=drain_timeout,
        priority_weights={**DEFAULT_WEIGHTS, **parse_weights(weights)},
        retry=RetryPolicy(max_attempts=max_attempts, base_s=backoff_base, cap_s=backoff_cap),
        metrics_port=metrics_port or None,
        metrics_host=metrics_host,
    )
    registry = load_registry(app)
    configure_logging(log_level, log_format)
    try:
        run(_run_worker(settings, registry))
    except OSError as exc:
        if exc.errno not in _BIND_ERRORS:
            raise
        raise CliError(
            f"cannot serve metrics on port {metrics_port}: {exc.strerror} (another worker "
            "on this host? give each its own --metrics-port, or 0 for none)",
            ExitCode.USAGE,
        ) from None


async def _run_worker(settings: WorkerSettings, registry: Registry) -> None:
    worker = Worker(settings, registry)
    install_signal_handlers(worker)
    await worker.run()
    if worker.dispatcher.launcher.running_abandoned:
        # Handlers that ignore cancellation would hold asyncio.run's final cleanup
        # forever: the drain is done (outcomes written, leases released), exit now.
        logging.shutdown()
        os._exit(0)


@command
def ring_command(
    pool: PoolNameOption,
    replicas: Annotated[int, typer.Option(min=0, help="The new number of worker replicas.")],
    dsn: DsnOption = None,
) -> None:
    """Change the ring of a running pool: its workers rebalance their shards at once.

    Scaling from R to R+1 moves about 1/(R+1) of the shards, all to the new ordinal;
    shards move only after their current owner has drained them. Warns on stderr when
    an ordinal of the new ring has no live worker, or a live worker is beyond it
    (unless a `jobpool dev` of this pool runs: it starts and stops workers to match).
    """
    checked_dsn = require_dsn(dsn)
    updated, live = run(_set_ring(checked_dsn, pool, replicas))
    typer.echo(
        f"pool {updated.name}: {updated.replicas} replicas, ring version {updated.ring_version}"
    )
    if dev_pool(checked_dsn) == updated.name:
        typer.echo("jobpool dev starts and stops workers to match", err=True)
        return
    for warning in ring_warnings(updated.name, updated.replicas, live):
        typer.echo(warning, err=True)


async def _set_ring(dsn: str, pool: str, replicas: int) -> tuple[Pool, set[int]]:
    """The pool with its new ring, and the ordinals that have a live worker."""
    async with open_connection(dsn) as conn:
        updated = await pool_set_replicas(conn, pool, replicas)
        return updated, await read_live_ordinals(conn, pool)


def register(app: typer.Typer) -> None:
    app.command("worker", rich_help_panel=PANEL)(worker_command)
    app.command("ring", rich_help_panel=PANEL)(ring_command)
