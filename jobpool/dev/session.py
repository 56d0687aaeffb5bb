"""The ``jobpool dev`` session and its supervisor: the database, the pool, the ring.

:func:`run_dev` does the whole session:

1. claims the data directory (``dev.lock``): another ``jobpool dev`` on the same
   directory is refused;
2. without a DSN, starts (or reuses) the embedded PostgreSQL of the data directory
   (``jobpool.dev.embedded``);
3. migrates, creates the pool if needed and sets its ring to ``--replicas``;
4. writes ``<data dir>/dev.json`` (DSN, pool, this pid) so the other commands find the
   database, and prints how to use it from another terminal;
5. runs :class:`Supervisor` until SIGINT/SIGTERM, then stops the workers gracefully,
   stops the embedded server if this session started it, and removes ``dev.json``.

The supervisor runs one ``python -m jobpool worker --ordinal i`` process per ordinal
``0..R-1`` of the pool's ring, each in its own process group (so a Ctrl-C in the
terminal reaches only the supervisor, which then stops the workers in order). It
follows the ring: a ``ring`` notification on the pool's worker channel (sent by
``jobpool ring``), or the once-a-second re-read of the pool, starts the missing
ordinals and sends SIGTERM to the ones beyond the ring. A worker that exits on its own
is restarted after a backoff (1 s, 2 s, 5 s, 10 s, then every 30 s; back to 1 s once
it had run for a minute). Hourly (and at start) it also runs history maintenance, as
the operator does on Kubernetes: partitions of the coming days, finished jobs past
retention dropped.

Each worker's output (stdout and stderr) is appended to ``<data dir>/logs/worker-<i>.log``
and forwarded to the terminal prefixed with ``worker <i> |``. On a terminal the
supervisor shows a table refreshed every second; otherwise it prints one ``status …``
line whenever something changes and at least every five seconds.

This module holds the session and the supervisor's loop: reading the pool and its
workers from the database, following the ring, handling the signals. The processes
themselves are managed by ``jobpool.dev.processes``; what is shown, and how, is
``jobpool.dev.view``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from jobpool.dev.embedded import (
    DEV_DIR_ENV,
    PGDATA,
    DevState,
    EmbeddedServer,
    ensure_database,
    lock_data_dir,
    pid_alive,
    read_state,
    remove_state,
    standard_data_dir,
    start_server,
    write_state,
)
from jobpool.dev.processes import WorkerProcesses
from jobpool.dev.view import RECENT_S, Frame, Output, Snapshot, WorkerView
from jobpool.errors import DatabaseUnavailable, DevAlreadyRunning, JobpoolError
from jobpool.models import Pool
from jobpool.store import channels
from jobpool.store.connect import UNREACHABLE, connect, redact
from jobpool.store.dlq import dlq_count_pending
from jobpool.store.history import history_maintain
from jobpool.store.listener import EventListener
from jobpool.store.migrate import migrate
from jobpool.store.overview import job_history_recent_counts, lease_list
from jobpool.store.pools import pool_ensure, pool_get, pool_set_replicas
from jobpool.store.schedules import schedule_list
from jobpool.store.workers import LIVE_HEARTBEAT_S, WorkerRow, pool_queue_counts, worker_list

REFRESH_S = 1.0
HISTORY_MAINTAIN_S = 3600.0
"""How often the supervisor runs history maintenance (first at start): what the
operator does on Kubernetes, so a dev database keeps 7 days of finished jobs."""
STALE_ROW_S = 60.0
"""A worker row without a process of ours is shown while its heartbeat is this recent."""
LOGS = "logs"
SUPERVISOR_APP_NAME = "jobpool-cli/dev"


@dataclass(frozen=True)
class DevOptions:
    """The options of ``jobpool dev``."""

    app: str
    pool: str
    replicas: int
    shards: int
    concurrency: int
    metrics_port: int
    data_dir: Path
    dsn: str | None
    live: bool
    dsn_from_env: bool = False  # the DSN came from JOBPOOL_DSN, not from --dsn


# -- the session -------------------------------------------------------------------------


def run_dev(options: DevOptions) -> None:
    """Run a whole ``jobpool dev`` session (see the module docstring)."""
    data_dir = options.data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_data_dir(data_dir)
    previous = read_state(data_dir)
    live = previous is not None and previous.pid != os.getpid() and pid_alive(previous.pid)
    if lock is None or live:
        if lock is not None:
            os.close(lock)
        who = f" (pid {previous.pid})" if previous is not None and live else ""
        raise DevAlreadyRunning(
            f"a jobpool dev{who} already runs on {data_dir}: "
            "use it, stop it, or pass another --data-dir"
        )
    out = Output(live=options.live)
    server: EmbeddedServer | None = None
    # Until the supervisor takes over the signals, SIGTERM interrupts like Ctrl-C does,
    # so that the cleanup below still runs.
    previous_term = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if options.dsn is None:
            pgdata = data_dir / PGDATA
            fresh = not (pgdata / "PG_VERSION").exists()
            out.event(
                f"starting the embedded PostgreSQL in {pgdata}"
                + (" (first run: initdb takes a few seconds)" if fresh else "")
            )
            # A server left running by a killed jobpool dev is ours to stop at the end.
            server = start_server(pgdata, adopt=previous is not None and previous.embedded)
            out.event(
                f"embedded PostgreSQL {'started' if server.started else 'already running, reused'}"
                f" (pid {server.pid}, log {server.log_path})"
            )
        asyncio.run(_session(options, data_dir, server, out))
    finally:
        # Another Ctrl-C or SIGTERM must not interrupt the server's shutdown half-way.
        previous_handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if server is not None and server.owns:
                out.event("stopping the embedded PostgreSQL")
                server.stop()
                out.event("embedded PostgreSQL stopped")
            remove_state(data_dir, os.getpid())
        finally:
            signal.signal(signal.SIGINT, previous_handler)
            signal.signal(signal.SIGTERM, previous_term)
            os.close(lock)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


async def _session(
    options: DevOptions, data_dir: Path, server: EmbeddedServer | None, out: Output
) -> None:
    if server is not None:
        await ensure_database(server)
        dsn = server.dsn
    else:
        assert options.dsn is not None
        dsn = options.dsn
    conn = await _connect_first(dsn, from_env=server is None and options.dsn_from_env)
    try:
        applied = await migrate(conn)
        if applied:
            out.event(f"applied migrations: {', '.join(applied)}")
        pool = await pool_ensure(
            conn, options.pool, shards=options.shards, replicas=options.replicas
        )
        if pool.shards != options.shards:
            out.event(
                f"pool {pool.name!r} already exists with {pool.shards} shards "
                f"(a pool's shard count is fixed): --shards {options.shards} ignored"
            )
        pool = await pool_set_replicas(conn, options.pool, options.replicas)
    finally:
        await conn.close()
    state = DevState(
        dsn=dsn,
        pool=pool.name,
        pid=os.getpid(),
        embedded=server is not None,
        data_dir=str(data_dir),
        started_at=time.time(),
    )
    write_state(state)
    out.banner(_banner(options, state, server, data_dir / LOGS))
    supervisor = Supervisor(options, dsn, pool, data_dir / LOGS, out)
    await supervisor.run()


async def _connect_first(dsn: str, *, from_env: bool) -> asyncpg.Connection:
    """The session's first connection; its failure says when JOBPOOL_DSN chose the database."""
    try:
        return await connect(dsn, server_settings={"application_name": SUPERVISOR_APP_NAME})
    except DatabaseUnavailable as exc:
        if not from_env:
            raise
        raise DatabaseUnavailable(
            f"{exc} (JOBPOOL_DSN is set in your environment and overrides the embedded "
            "database: unset it to use the embedded one)"
        ) from None


def _banner(
    options: DevOptions, state: DevState, server: EmbeddedServer | None, logs: Path
) -> list[str]:
    shown_dsn = redact(state.dsn, state.dsn)
    masked = " (password masked)" if shown_dsn != state.dsn else ""
    if server is None:
        overrides = "JOBPOOL_DSN, which overrides the embedded one"
        where = f"your database ({overrides if options.dsn_from_env else '--dsn'})"
    else:
        fate = "stopped on exit" if server.owns else "left running on exit (not started by us)"
        where = f"embedded PostgreSQL 18 in {server.pgdata}, {fate}"
    metrics = (
        f"worker i serves /metrics on port {options.metrics_port}+i"
        if options.metrics_port
        else "off (--metrics-port 9100 serves worker i on 9100+i)"
    )
    pool = state.pool
    if Path(state.data_dir) == standard_data_dir().expanduser().resolve():
        other_terminal = "From another terminal (no setup needed: the commands find this database):"
    else:
        other_terminal = (
            "From another terminal, after `export "
            f"{DEV_DIR_ENV}={shlex.quote(state.data_dir)}` (the commands then find it):"
        )
    return [
        f"jobpool dev: pool {pool!r}, {options.replicas} workers, handlers {options.app}",
        f"  database    {shown_dsn}{masked}",
        f"              {where}",
        f"  state file  {state.path} (other jobpool commands use this database and pool)",
        f"  worker logs {logs}{os.sep}worker-<ordinal>.log",
        f"  metrics     {metrics}",
        "",
        other_terminal,
        '  jobpool submit send_email \'{"to": "ada@example.com"}\'',
        "  jobpool status <job id>   |   jobpool result <job id> --timeout 30",
        f"  jobpool ring --pool {pool} --replicas {options.replicas + 1}"
        f"     # dev starts worker {options.replicas} to match",
        "Or set the environment for scripts and other tools:",
        f"  export JOBPOOL_DSN={shlex.quote(shown_dsn)} JOBPOOL_POOL={shlex.quote(pool)}",
        *(
            ["  (unset JOBPOOL_DSN before the next `jobpool dev`: it overrides the embedded one)"]
            if server is not None
            else []
        ),
        "Ctrl-C stops the workers (they finish their running jobs)"
        + (" and the embedded PostgreSQL." if server is not None and server.owns else "."),
        "",
    ]


# -- the supervisor ----------------------------------------------------------------------


class Supervisor:
    """Keeps one worker process per ordinal of the pool's ring; shows their state."""

    def __init__(self, options: DevOptions, dsn: str, pool: Pool, logs: Path, out: Output) -> None:
        self.options = options
        self.dsn = dsn
        self.logs = logs
        self.out = out
        self.snapshot = Snapshot(pool=pool)
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self.workers = WorkerProcesses(
            self.worker_command, dsn=dsn, logs=logs, out=out, on_exit=self._wake.set
        )
        self._conn: asyncpg.Connection | None = None
        self._history_due_at = 0.0  # time.monotonic() of the next history maintenance

    @property
    def replicas(self) -> int:
        return self.snapshot.pool.replicas

    # -- the main loop ---------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)
        self.logs.mkdir(parents=True, exist_ok=True)
        listener = EventListener(self._connect, channels.worker_channel(self.snapshot.pool.name))
        follower: asyncio.Task[None] | None = None
        try:
            async with listener.subscribe() as events:
                follower = asyncio.ensure_future(self._follow_ring(events))
                with self.out.showing(self.frame()):
                    while not self._stop.is_set():
                        await self.refresh()
                        await self.workers.reconcile(self.replicas)
                        self.show()
                        await self._sleep(REFRESH_S)
                    await self._shutdown()
        finally:
            if follower is not None:
                follower.cancel()
            await self.workers.close()
            await listener.close()
            if self._conn is not None:
                await self._conn.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def _shutdown(self) -> None:
        self.workers.stop_all()
        while self.workers.processes:
            await self.refresh()
            self.show()
            await self._sleep(REFRESH_S / 2)
        await self.refresh()
        self.show(force=True)
        self.out.event("all workers stopped")

    def _on_signal(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._wake.set()
            return
        self.workers.kill_all()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _connect(self) -> asyncpg.Connection:
        return await connect(self.dsn, server_settings={"application_name": SUPERVISOR_APP_NAME})

    async def _follow_ring(self, events: asyncio.Queue[str]) -> None:
        """``jobpool ring`` notifies ``ring``; a reconnected listener says ``*``."""
        while True:
            payload = await events.get()
            if payload in (channels.RING, channels.ALL):
                self._wake.set()

    # -- reading the database -------------------------------------------------------

    async def refresh(self) -> None:
        name = self.snapshot.pool.name
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await self._connect()
            pool = await pool_get(self._conn, name)
            rows = await worker_list(self._conn, name)
            counts = await pool_queue_counts(self._conn, name)
            holders = await lease_list(self._conn, name)
            recent = await job_history_recent_counts(self._conn, name, window_s=RECENT_S)
            dlq = await dlq_count_pending(self._conn, name)
            schedules = await schedule_list(self._conn, name)
            await self._keep_history(self._conn)
        except (JobpoolError, *UNREACHABLE) as exc:
            message = redact(str(exc) or type(exc).__name__, self.dsn)
            if message != self.snapshot.error:
                self.out.event(f"cannot read the pool: {message}")
            self.snapshot.error = message
            if self._conn is not None:
                self._conn.terminate()
                self._conn = None
            return
        before = self.snapshot.pool
        if pool.pause != before.pause:
            self.out.event(f"pool pause: {pool.pause.describe()}")
        if pool.replicas != before.replicas and not self.workers.stopping:
            self.out.event(
                f"ring changed: {before.replicas} -> {pool.replicas} replicas "
                f"(ring version {pool.ring_version})"
            )
        self.snapshot = Snapshot(
            pool=pool,
            rows={row.ordinal: row for row in rows},
            counts=counts,
            holders=holders,
            recent=recent,
            dlq=dlq,
            schedules=schedules,
        )

    async def _keep_history(self, conn: asyncpg.Connection) -> None:
        """Every ``HISTORY_MAINTAIN_S``: partitions ahead, history past retention dropped."""
        if time.monotonic() < self._history_due_at:
            return
        done = await history_maintain(conn)
        self._history_due_at = time.monotonic() + HISTORY_MAINTAIN_S
        if done.dropped or done.deleted:
            self.out.event(
                f"history: dropped {done.dropped} day(s) past retention, "
                f"deleted {done.deleted} finished job(s) of pools keeping less"
            )

    # -- processes -------------------------------------------------------------------

    def worker_command(self, ordinal: int) -> list[str]:
        o = self.options
        metrics_port = o.metrics_port + ordinal if o.metrics_port else 0
        return [
            sys.executable, "-m", "jobpool", "worker",
            "--pool", self.snapshot.pool.name,
            "--app", o.app,
            "--ordinal", str(ordinal),
            "--concurrency", str(o.concurrency),
            "--metrics-port", str(metrics_port),
        ]  # fmt: skip

    # -- showing ---------------------------------------------------------------------

    def show(self, *, force: bool = False) -> None:
        self.out.show(self.frame(), force=force)

    def frame(self) -> Frame:
        return Frame(
            snapshot=self.snapshot,
            workers=[self.view(o) for o in self.ordinals()],
            alive=len(self.workers.alive()),
            stopping=self.workers.stopping,
            logs=self.logs,
        )

    def ordinals(self) -> list[int]:
        now = time.time()
        workers = self.workers
        shown = set(range(self.replicas)) | set(workers.processes) | set(workers.restart_at)
        shown |= {
            o
            for o, row in self.snapshot.rows.items()
            if now - row.heartbeat_at.timestamp() < STALE_ROW_S
        }
        return sorted(shown)

    def _external(self, row: WorkerRow | None) -> bool:
        """A live heartbeat row of an incarnation that none of our processes ever had."""
        return (
            row is not None
            and row.incarnation not in self.workers.incarnations
            and time.time() - row.heartbeat_at.timestamp() < LIVE_HEARTBEAT_S
        )

    def view(self, ordinal: int) -> WorkerView:
        workers = self.workers
        worker = workers.processes.get(ordinal)
        row = self.snapshot.rows.get(ordinal)
        if worker is not None and row is not None and row.incarnation != worker.incarnation:
            row = None  # the row of an earlier process of this ordinal
        if worker is not None:
            state = "stopping" if worker.stopping else "up" if row is not None else "starting"
        elif ordinal in workers.restart_at:
            wait = max(0.0, workers.restart_at[ordinal] - time.monotonic())
            state = f"restart in {wait:.0f}s"
        elif workers.stopping:
            state = "stopped"
        elif self._external(row):
            state = "external"  # a live worker that this session did not start
        elif ordinal < self.replicas:
            state = "starting"
        else:
            state = "gone"  # the recent row of a process of ours that died
        age = time.time() - row.heartbeat_at.timestamp() if row is not None else None
        return WorkerView(ordinal, worker.pid if worker else None, state, row, age)
