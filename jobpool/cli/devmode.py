"""The supervisor behind ``jobpool dev``: worker processes, ring following, the live table.

:func:`run_dev` does the whole session:

1. claims the data directory (``dev.lock``): another ``jobpool dev`` on the same
   directory is refused;
2. without a DSN, starts (or reuses) the embedded PostgreSQL of the data directory
   (``jobpool.store.embedded``);
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
it had run for a minute).

Each worker's output (stdout and stderr) is appended to ``<data dir>/logs/worker-<i>.log``
and forwarded to the terminal prefixed with ``worker <i> |``. On a terminal the
supervisor shows a table refreshed every second; otherwise it prints one ``status …``
line whenever something changes and at least every five seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from rich.columns import Columns
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from jobpool.cli.common import APPLICATION_NAME, CliError, ExitCode
from jobpool.errors import JobpoolError
from jobpool.models import JobState, Pool, Priority
from jobpool.store import channels
from jobpool.store.connect import UNREACHABLE, connect, redact
from jobpool.store.embedded import (
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
from jobpool.store.listener import EventListener
from jobpool.store.migrate import migrate
from jobpool.store.pools import pool_ensure, pool_get, pool_set_replicas
from jobpool.store.workers import WorkerRow, pool_queue_counts, worker_list

REFRESH_S = 1.0
STATUS_EVERY_S = 5.0
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
HEALTHY_AFTER_S = 60.0
WORKER_DRAIN_S = 30.0
"""The workers' default ``--drain-timeout``: how long a SIGTERM-ed worker may take."""
KILL_AFTER_S = WORKER_DRAIN_S + 15.0
"""After SIGTERM, a worker still running this much later gets SIGKILL."""
STALE_ROW_S = 60.0
"""A worker row without a process of ours is shown while its heartbeat is this recent."""
LOGS = "logs"
SUPERVISOR_APP_NAME = f"{APPLICATION_NAME}/dev"


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
        raise CliError(
            f"a jobpool dev{who} already runs on {data_dir}: "
            "use it, stop it, or pass another --data-dir",
            ExitCode.CONFLICT,
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
    conn = await connect(dsn, server_settings={"application_name": SUPERVISOR_APP_NAME})
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


def _banner(
    options: DevOptions, state: DevState, server: EmbeddedServer | None, logs: Path
) -> list[str]:
    shown_dsn = redact(state.dsn, state.dsn)
    masked = " (password masked)" if shown_dsn != state.dsn else ""
    if server is None:
        where = "your database (--dsn)"
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
        f"  jobpool ring --pool {pool} --replicas 3     # dev starts/stops workers to match",
        "Or set the environment for scripts and other tools:",
        f"  export JOBPOOL_DSN={shlex.quote(shown_dsn)} JOBPOOL_POOL={shlex.quote(pool)}",
        "Ctrl-C stops the workers (they finish their running jobs)"
        + (" and the embedded PostgreSQL." if server is not None and server.owns else "."),
        "",
    ]


# -- output ------------------------------------------------------------------------------


class Output:
    """Where the supervisor writes: a rich console with a live table, or plain lines."""

    def __init__(self, *, live: bool) -> None:
        self.live = live
        self.console = Console(highlight=False) if live else None
        self._live: Live | None = None

    def event(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        if self.console is not None:
            self.console.print(Text.assemble((f"{stamp} ", "dim"), ("dev ", "bold"), message))
        else:
            _print(f"{stamp} dev {message}")

    def worker_line(self, ordinal: int, line: str) -> None:
        if self.console is not None:
            prefix = Text(f"worker {ordinal} | ", style=f"bold {_COLOURS[ordinal % len(_COLOURS)]}")
            self.console.print(prefix + Text(line), soft_wrap=True)
        else:
            _print(f"worker {ordinal} | {line}")

    def banner(self, lines: list[str]) -> None:
        if self.console is not None:
            head, *rest = lines
            self.console.print(Text(head, style="bold"))
            for line in rest:
                self.console.print(Text(line), soft_wrap=True)
        else:
            for line in lines:
                _print(line)

    def status(self, line: str) -> None:
        _print(line)

    @contextlib.contextmanager
    def showing(self, render: Callable[[], RenderableType]) -> Iterator[Callable[[], None]]:
        """On a terminal, a live display of ``render()``; yields its refresh function."""
        if self.console is None:
            yield lambda: None
            return
        with Live(render(), console=self.console, auto_refresh=False) as live:
            self._live = live
            try:
                yield lambda: live.update(render(), refresh=True)
            finally:
                self._live = None


_COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "red")


def _print(line: str) -> None:
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):  # stdout went away: keep supervising
        pass


# -- the supervisor ----------------------------------------------------------------------


@dataclass(eq=False)
class WorkerProcess:
    """One worker process the supervisor started."""

    ordinal: int
    incarnation: str
    process: asyncio.subprocess.Process
    log_path: Path
    started: float = field(default_factory=time.monotonic)
    stopping: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def signal(self, sig: signal.Signals) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)


@dataclass
class Snapshot:
    """What the database said at the last refresh."""

    pool: Pool
    rows: dict[int, WorkerRow] = field(default_factory=dict)
    counts: dict[JobState, dict[Priority, int]] = field(default_factory=dict)
    error: str | None = None


class Supervisor:
    """Keeps one worker process per ordinal of the pool's ring; shows their state."""

    def __init__(self, options: DevOptions, dsn: str, pool: Pool, logs: Path, out: Output) -> None:
        self.options = options
        self.dsn = dsn
        self.logs = logs
        self.out = out
        self.snapshot = Snapshot(pool=pool)
        self.workers: dict[int, WorkerProcess] = {}
        self.restart_at: dict[int, float] = {}
        self.failures: dict[int, int] = {}
        self.stopping = False
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_status = ("", 0.0)

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
        try:
            async with listener.subscribe() as events:
                self._spawn_task(self._follow_ring(events))
                with self.out.showing(self.render) as refresh:
                    while not self._stop.is_set():
                        await self.refresh()
                        await self.reconcile()
                        self.show(refresh)
                        await self._sleep(REFRESH_S)
                    await self._shutdown(refresh)
        finally:
            for worker in list(self.workers.values()):
                worker.signal(signal.SIGKILL)
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await listener.close()
            if self._conn is not None:
                await self._conn.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def _shutdown(self, refresh: Callable[[], None]) -> None:
        self.stopping = True
        if self.workers:
            self.out.event(
                f"stopping {len(self.workers)} workers: they finish their running jobs "
                "(Ctrl-C again kills them)"
            )
        for worker in list(self.workers.values()):
            self.stop_worker(worker)
        while self.workers:
            await self.refresh()
            self.show(refresh)
            await self._sleep(REFRESH_S / 2)
        await self.refresh()
        self.show(refresh, force=True)
        self.out.event("all workers stopped")

    def _on_signal(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._wake.set()
            return
        alive = [w for w in self.workers.values() if w.running]
        if alive:
            self.out.event(f"killing {len(alive)} workers (SIGKILL)")
        for worker in alive:
            worker.signal(signal.SIGKILL)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    def _spawn_task(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        if pool.replicas != before.replicas and not self.stopping:
            self.out.event(
                f"ring changed: {before.replicas} -> {pool.replicas} replicas "
                f"(ring version {pool.ring_version})"
            )
        self.snapshot = Snapshot(pool=pool, rows={row.ordinal: row for row in rows}, counts=counts)

    # -- processes -------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Start the ordinals of the ring that do not run; stop the ones beyond it."""
        if self.stopping:
            return
        now = time.monotonic()
        for ordinal in range(self.replicas):
            if ordinal not in self.workers and self.restart_at.get(ordinal, 0.0) <= now:
                self.restart_at.pop(ordinal, None)
                await self.start_worker(ordinal)
        for ordinal in [o for o in self.restart_at if o >= self.replicas]:
            del self.restart_at[ordinal]
        for worker in list(self.workers.values()):
            if worker.ordinal >= self.replicas and not worker.stopping:
                self.out.event(
                    f"worker {worker.ordinal} (pid {worker.pid}) is beyond the ring: SIGTERM"
                )
                self.stop_worker(worker)

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

    async def start_worker(self, ordinal: int) -> None:
        incarnation = uuid.uuid4().hex
        env = {
            **os.environ,
            # The DSN goes through the environment: a command line is visible to `ps`.
            "JOBPOOL_DSN": self.dsn,
            # The worker's incarnation (see `jobpool worker`): lets the table match
            # each process with its heartbeat row.
            "POD_UID": incarnation,
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("POD_NAME", None)
        log_path = self.logs / f"worker-{ordinal}.log"
        process = await asyncio.create_subprocess_exec(
            *self.worker_command(ordinal),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            # Its own process group: Ctrl-C in the terminal reaches the supervisor only,
            # which then stops the workers one SIGTERM each.
            process_group=0,
        )
        worker = WorkerProcess(ordinal, incarnation, process, log_path)
        self.workers[ordinal] = worker
        self.out.event(f"worker {ordinal} started (pid {worker.pid}, log {log_path})")
        self._spawn_task(self._watch(worker))

    def stop_worker(self, worker: WorkerProcess) -> None:
        """SIGTERM: the worker drains; SIGKILL if it is still there after ``KILL_AFTER_S``."""
        if worker.stopping:
            return
        worker.stopping = True
        worker.signal(signal.SIGTERM)
        self._spawn_task(self._kill_later(worker))

    async def _kill_later(self, worker: WorkerProcess) -> None:
        await asyncio.sleep(KILL_AFTER_S)
        if worker.running:
            self.out.event(
                f"worker {worker.ordinal} (pid {worker.pid}) still runs {KILL_AFTER_S:.0f} s "
                "after SIGTERM: SIGKILL"
            )
            worker.signal(signal.SIGKILL)

    async def _watch(self, worker: WorkerProcess) -> None:
        """Forward the worker's output until it exits; then restart it if it should run."""
        pump = asyncio.ensure_future(self._pump(worker))
        code = await worker.process.wait()
        with contextlib.suppress(TimeoutError):
            # A grandchild holding the pipe open must not keep us waiting.
            await asyncio.wait_for(asyncio.shield(pump), 2.0)
        pump.cancel()
        if self.workers.get(worker.ordinal) is worker:
            del self.workers[worker.ordinal]
        self._wake.set()
        how = _exit_description(code)
        if worker.stopping or self.stopping:
            self.out.event(f"worker {worker.ordinal} (pid {worker.pid}) stopped ({how})")
            return
        ran = time.monotonic() - worker.started
        failures = 0 if ran >= HEALTHY_AFTER_S else self.failures.get(worker.ordinal, 0)
        self.failures[worker.ordinal] = failures + 1
        delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
        if worker.ordinal < self.replicas:
            self.restart_at[worker.ordinal] = time.monotonic() + delay
            self.out.event(
                f"worker {worker.ordinal} (pid {worker.pid}) exited unexpectedly ({how}) "
                f"after {ran:.1f} s: restarting it in {delay:.0f} s (log {worker.log_path})"
            )
        else:
            self.out.event(f"worker {worker.ordinal} (pid {worker.pid}) exited ({how})")

    async def _pump(self, worker: WorkerProcess) -> None:
        """Copy the worker's output to its log file and, line by line, to the terminal."""
        stream = worker.process.stdout
        assert stream is not None
        pending = b""
        with worker.log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"--- {stamp} worker {worker.ordinal} pid {worker.pid} ---\n".encode())
            while chunk := await stream.read(65536):
                log.write(chunk)
                log.flush()
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    self.out.worker_line(worker.ordinal, line.decode(errors="replace").rstrip())
            if pending:
                self.out.worker_line(worker.ordinal, pending.decode(errors="replace").rstrip())

    # -- showing ---------------------------------------------------------------------

    def show(self, refresh: Callable[[], None], *, force: bool = False) -> None:
        if self.out.live:
            refresh()
            return
        line = self.status_line()
        signature = _without_ages(line)
        last_signature, last_at = self._last_status
        now = time.monotonic()
        if force or signature != last_signature or now - last_at >= STATUS_EVERY_S:
            self.out.status(line)
            self._last_status = (signature, now)

    def ordinals(self) -> list[int]:
        now = time.time()
        shown = set(range(self.replicas)) | set(self.workers) | set(self.restart_at)
        shown |= {
            o
            for o, row in self.snapshot.rows.items()
            if now - row.heartbeat_at.timestamp() < STALE_ROW_S
        }
        return sorted(shown)

    def view(self, ordinal: int) -> WorkerView:
        worker = self.workers.get(ordinal)
        row = self.snapshot.rows.get(ordinal)
        if worker is not None and row is not None and row.incarnation != worker.incarnation:
            row = None  # the row of an earlier process of this ordinal
        if worker is not None:
            state = "stopping" if worker.stopping else "up" if row is not None else "starting"
        elif ordinal in self.restart_at:
            wait = max(0.0, self.restart_at[ordinal] - time.monotonic())
            state = f"restart in {wait:.0f}s"
        elif self.stopping:
            state = "stopped"
        elif ordinal < self.replicas:
            state = "starting"
        else:
            state = "gone"  # a recent row of a process that is not ours
        age = time.time() - row.heartbeat_at.timestamp() if row is not None else None
        return WorkerView(ordinal, worker.pid if worker else None, state, row, age)

    def status_line(self) -> str:
        views = [self.view(o) for o in self.ordinals()]
        counts = self.snapshot.counts
        queued = sum(counts.get(JobState.QUEUED, {}).values())
        running = sum(counts.get(JobState.RUNNING, {}).values())
        alive = sum(1 for w in self.workers.values() if w.running)
        parts = [
            f"status pool={self.snapshot.pool.name} ring={self.replicas} workers={alive}"
            f" up={sum(v.state == 'up' for v in views)} queued={queued} running={running}"
            f" done={sum(v.done for v in views)} failed={sum(v.failed for v in views)}"
        ]
        if self.snapshot.error:
            parts[0] += " db=unavailable"
        for v in views:
            parts.append(
                f"w{v.ordinal} pid={v.pid or '-'} {v.state.replace(' ', '-')}"
                f" shards={v.shards} running={v.running} done={v.done} failed={v.failed}"
                f" hb={_age(v.heartbeat_age)}"
            )
        return " | ".join(parts)

    def render(self) -> RenderableType:
        pool = self.snapshot.pool
        title = Text.assemble(
            ("jobpool dev", "bold"),
            f"  pool {pool.name} · ring {pool.replicas} replicas (version {pool.ring_version})"
            f" · {pool.shards} shards",
        )
        parts: list[RenderableType] = [title]
        if self.snapshot.error:
            parts.append(Text(f"database unavailable: {self.snapshot.error}", style="bold red"))
        parts.append(Columns([self._workers_table(), self._queue_table()], padding=(0, 4)))
        if not self.stopping:
            hint = "Ctrl-C stops"
        elif self.workers:
            hint = "stopping… (Ctrl-C again kills the workers)"
        else:
            hint = "workers stopped"
        parts.append(Text(f"{hint} · worker logs in {self.logs}", style="dim"))
        return Group(*parts)

    def _workers_table(self) -> Table:
        table = Table(title="workers", title_justify="left", title_style="bold")
        for name in ("ordinal", "pid", "state", "shards", "running", "done", "failed"):
            table.add_column(name, justify="left" if name == "state" else "right")
        table.add_column("heartbeat", justify="right")
        views = [self.view(o) for o in self.ordinals()]
        for i, v in enumerate(views):
            style = {"up": "green", "starting": "yellow", "stopping": "yellow"}.get(v.state, "red")
            table.add_row(
                str(v.ordinal),
                str(v.pid or "—"),
                Text(v.state, style=style),
                _num(v.shards, v.row),
                _num(v.running, v.row),
                _num(v.done, v.row),
                _num(v.failed, v.row),
                f"{_age(v.heartbeat_age)} ago" if v.heartbeat_age is not None else "—",
                end_section=i == len(views) - 1,
            )
        table.add_row(
            "total",
            "",
            f"{sum(v.state == 'up' for v in views)} up",
            str(sum(v.shards for v in views)),
            str(sum(v.running for v in views)),
            str(sum(v.done for v in views)),
            str(sum(v.failed for v in views)),
            "",
            style="bold",
        )
        return table

    def _queue_table(self) -> Table:
        table = Table(title="jobs", title_justify="left", title_style="bold")
        table.add_column("priority")
        table.add_column("queued", justify="right")
        table.add_column("running", justify="right")
        queued = self.snapshot.counts.get(JobState.QUEUED, {})
        running = self.snapshot.counts.get(JobState.RUNNING, {})
        for i, priority in enumerate(Priority):
            table.add_row(
                priority.value,
                str(queued.get(priority, 0)),
                str(running.get(priority, 0)),
                end_section=i == len(Priority) - 1,
            )
        table.add_row("total", str(sum(queued.values())), str(sum(running.values())), style="bold")
        return table


@dataclass(frozen=True)
class WorkerView:
    """One line of the workers table."""

    ordinal: int
    pid: int | None
    state: str
    row: WorkerRow | None
    heartbeat_age: float | None

    @property
    def shards(self) -> int:
        return len(self.row.shards) if self.row else 0

    @property
    def running(self) -> int:
        return self.row.running if self.row else 0

    @property
    def done(self) -> int:
        return self.row.succeeded if self.row else 0

    @property
    def failed(self) -> int:
        return self.row.failed if self.row else 0


def _num(value: int, row: WorkerRow | None) -> str:
    return str(value) if row is not None else "—"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m"


def _without_ages(line: str) -> str:
    return " ".join(part for part in line.split(" ") if not part.startswith("hb="))


def _exit_description(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
