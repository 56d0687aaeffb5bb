"""Shared helpers of the benchmarks: a Postgres server, fresh databases, statistics, output.

Every benchmark measures the real product code against a Postgres with its *default*
durability (``fsync``, ``synchronous_commit`` and ``full_page_writes`` on): the server
is ``$JOBPOOL_BENCH_DSN`` (a superuser URI, its database used for maintenance) when set,
else a throwaway embedded server started for the run and deleted afterwards. Unlike
the test suite, nothing here ever turns durability off.

Each measured run gets a database of its own, freshly created and migrated, with one
pool in it (:func:`fresh_database`), so runs do not see each other's rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # ``tests.pg`` lives next to ``bench``
    sys.path.insert(0, str(REPO_ROOT))

from jobpool.dev.embedded import throwaway_server  # noqa: E402
from jobpool.store.migrate import migrate  # noqa: E402
from jobpool.store.pools import pool_ensure  # noqa: E402
from jobpool.worker.settings import WorkerSettings  # noqa: E402
from tests.pg import (  # noqa: E402
    create_database,
    drop_database,
    quote_ident,
    random_name,
    with_database,
)

DSN_ENV = "JOBPOOL_BENCH_DSN"
POOL = "bench"
TENANT = "bench"

# What a user gets without choosing: benchmarks measure these first.
DEFAULT_SHARDS = 64  # `jobpool pool create`'s and the JobPool resource's default
DEFAULT_CONCURRENCY: int = WorkerSettings.model_fields["concurrency"].default

# Server settings printed with every result: without them a figure means little.
REPORTED_SETTINGS = (
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_sync_method",
    "commit_delay",
    "shared_buffers",
    "max_wal_size",
    "max_connections",
)

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_SHARDS",
    "DSN_ENV",
    "POOL",
    "TENANT",
    "WORKER_APP",
    "Scenario",
    "ServerInfo",
    "Stopwatch",
    "bench_server",
    "best_effort_checkpoint",
    "embedded_server",
    "fmt_ms",
    "fmt_rate",
    "fresh_database",
    "host_load",
    "int_list",
    "median",
    "percentile",
    "print_json",
    "print_table",
    "process_cpu_seconds",
    "quote_ident",
    "relative_to_first",
    "server_info",
    "summarize",
    "wait_for_workers",
    "worker_peak_rss_mb",
    "worker_processes",
]


# -- server and databases ----------------------------------------------------------


@contextmanager
def bench_server() -> Iterator[str]:
    """Yield the superuser URI of the maintenance database of the benchmark server.

    ``$JOBPOOL_BENCH_DSN`` when set (used as given), else :func:`embedded_server`.
    """
    env_dsn = os.environ.get(DSN_ENV)
    if env_dsn:
        yield env_dsn
        return
    with embedded_server() as uri:
        yield with_database(uri, "postgres")


@contextmanager
def embedded_server() -> Iterator[str]:
    """A throwaway Postgres on a disk; yields its superuser URI.

    Its data directory is under the default temporary directory (``$TMPDIR``, else
    ``/tmp``), deliberately *not* ``/dev/shm`` as the test suite prefers: on tmpfs
    ``fsync`` costs nothing, and the figures would not show what commits cost on a disk.
    Postgres's default settings are kept (``make_fast`` is never applied).
    """
    with throwaway_server(prefix="jobpool-bench-pg-") as uri:
        yield uri


@asynccontextmanager
async def fresh_database(
    admin_dsn: str,
    *,
    shards: int,
    pool: str = POOL,
    replicas: int = 1,
    prefix: str = "jobpool_bench_",
) -> AsyncIterator[str]:
    """Create and migrate a new database with ``pool`` in it; yield its URI; drop it.

    ``replicas`` is the pool's ring size: the worker ordinals below it get shards.
    """
    name = random_name(prefix)
    admin = await asyncpg.connect(admin_dsn)
    try:
        await create_database(admin, name)
        try:
            dsn = with_database(admin_dsn, name)
            conn = await asyncpg.connect(dsn)
            try:
                await migrate(conn)
                await pool_ensure(conn, pool, shards=shards, replicas=replicas)
            finally:
                await conn.close()
            yield dsn
        finally:
            await drop_database(admin, name)
    finally:
        await admin.close()


async def best_effort_checkpoint(dsn: str) -> None:
    """Run ``CHECKPOINT`` so a run does not pay for the previous one's dirty pages.

    Needs superuser (or ``pg_checkpoint``); without the privilege it does nothing.
    """
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CHECKPOINT")
    except asyncpg.InsufficientPrivilegeError:
        pass
    finally:
        await conn.close()


@dataclass(frozen=True)
class ServerInfo:
    """What a reader needs to interpret a figure: the server, its durability, the host."""

    version: str
    settings: dict[str, str]
    data_directory: str | None
    data_filesystem: str | None
    embedded: bool
    host_cpus: int | None
    python: str
    asyncpg: str

    def header_lines(self) -> list[str]:
        where = "embedded, throwaway" if self.embedded else f"${DSN_ENV}"
        lines = [f"PostgreSQL {self.version} ({where})"]
        lines.append("  " + "  ".join(f"{k}={v}" for k, v in self.settings.items()))
        if self.data_directory:
            fs = f" on {self.data_filesystem}" if self.data_filesystem else ""
            lines.append(f"  data_directory={self.data_directory}{fs}")
        lines.append(
            f"client: Python {self.python}, asyncpg {self.asyncpg}, "
            f"{self.host_cpus} CPUs on this host (shared with the server when local)"
        )
        return lines


async def server_info(dsn: str) -> ServerInfo:
    conn = await asyncpg.connect(dsn)
    try:
        version = await conn.fetchval("SHOW server_version")
        rows = await conn.fetch(
            "SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1::text[])",
            list(REPORTED_SETTINGS),
        )
        found = {row["name"]: _with_unit(row["setting"], row["unit"]) for row in rows}
        settings = {name: found[name] for name in REPORTED_SETTINGS if name in found}
        try:
            data_directory = await conn.fetchval("SHOW data_directory")
        except asyncpg.InsufficientPrivilegeError:
            data_directory = None
    finally:
        await conn.close()
    return ServerInfo(
        version=version,
        settings=settings,
        data_directory=data_directory,
        data_filesystem=_filesystem_of(data_directory) if data_directory else None,
        embedded=not os.environ.get(DSN_ENV),
        host_cpus=os.cpu_count(),
        python=platform.python_version(),
        asyncpg=asyncpg.__version__,
    )


def _with_unit(setting: str, unit: str | None) -> str:
    """``16384`` with unit ``8kB`` reads ``128MB``; unit-less settings are kept as is."""
    sizes = {"B": 1, "kB": 1024, "8kB": 8192, "MB": 1024**2}
    if unit not in sizes or not setting.lstrip("-").isdigit():
        return f"{setting}{unit or ''}"
    size = int(setting) * sizes[unit]
    for name, scale in (("GB", 1024**3), ("MB", 1024**2), ("kB", 1024)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{name}"
    return f"{size}B"


def _filesystem_of(path: str) -> str | None:
    """Filesystem type of the local mount holding ``path`` (from /proc/mounts), if any."""
    if not os.path.exists(path):
        return None
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    best, fstype = "", None
    real = os.path.realpath(path)
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1]
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best):
            best, fstype = mount, f"{parts[2]} ({parts[0]})"
    return fstype


def host_load() -> dict[str, float | None]:
    """How busy this host is right now: other work on it skews every figure.

    ``loadavg_1m`` from ``os.getloadavg``; ``cpu_pressure_avg60`` is the share of the
    last minute in which some runnable task waited for a CPU (Linux PSI,
    ``/proc/pressure/cpu``), ``None`` where unavailable. Near 0 on an idle host.
    """
    pressure = None
    try:
        for line in Path("/proc/pressure/cpu").read_text().splitlines():
            if line.startswith("some "):
                fields = dict(part.split("=", 1) for part in line.split()[1:])
                pressure = float(fields["avg60"])
    except (OSError, KeyError, ValueError):
        pressure = None
    return {"loadavg_1m": round(os.getloadavg()[0], 2), "cpu_pressure_avg60": pressure}


def _load_text(load: dict[str, float | None]) -> str:
    pressure = load.get("cpu_pressure_avg60")
    text = f"load {load.get('loadavg_1m')}"
    return text if pressure is None else f"{text}, CPU pressure {pressure:.0f} %"


# -- worker processes ---------------------------------------------------------------

WORKER_APP = "bench.handlers:registry"
WORKER_STOP_TIMEOUT_S = 60.0
WORKER_READY_TIMEOUT_S = 60.0


@asynccontextmanager
async def worker_processes(
    dsn: str,
    *,
    count: int,
    concurrency: int,
    pool: str = POOL,
    app: str = WORKER_APP,
    log_level: str = "info",
) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """Run ``count`` real worker processes (``python -m jobpool worker``), ordinals 0..R-1.

    Separate processes, as in production: the benchmark's client and the workers do not
    share an event loop (or a GIL). The DSN goes through ``$JOBPOOL_DSN``, not the
    command line; metrics are off. Each worker's log goes to a temporary file, shown
    when it exits with a failure. On exit every worker gets SIGTERM (a graceful
    shutdown), then SIGKILL after ``WORKER_STOP_TIMEOUT_S``.
    """
    logdir = Path(tempfile.mkdtemp(prefix="jobpool-bench-workers-"))
    env = {**os.environ, "JOBPOOL_DSN": dsn}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    procs: list[asyncio.subprocess.Process] = []
    logs: list[Path] = []
    try:
        for ordinal in range(count):
            log_path = logdir / f"worker-{ordinal}.log"
            logs.append(log_path)
            with log_path.open("wb") as log_file:
                procs.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "jobpool",
                        "worker",
                        "--pool",
                        pool,
                        "--app",
                        app,
                        "--ordinal",
                        str(ordinal),
                        "--concurrency",
                        str(concurrency),
                        "--metrics-port",
                        "0",
                        "--log-level",
                        log_level,
                        cwd=REPO_ROOT,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                    )
                )
        yield procs
    finally:
        failed = await _stop_workers(procs)
        for ordinal in failed:
            tail = logs[ordinal].read_text(errors="replace").splitlines()[-30:]
            code = procs[ordinal].returncode
            print(f"worker {ordinal} exited with {code}; the end of its log:", file=sys.stderr)
            for line in tail:
                print(f"  {line}", file=sys.stderr)
        shutil.rmtree(logdir, ignore_errors=True)


async def _stop_workers(procs: Sequence[asyncio.subprocess.Process]) -> list[int]:
    """SIGTERM each worker still running, wait, SIGKILL the late; the ordinals that failed."""
    failed = [i for i, proc in enumerate(procs) if proc.returncode not in (None, 0)]
    running = [proc for proc in procs if proc.returncode is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    for proc in running:
        try:
            await asyncio.wait_for(proc.wait(), WORKER_STOP_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    failed += [i for i, proc in enumerate(procs) if proc in running and proc.returncode != 0]
    return sorted(set(failed))


async def wait_for_workers(
    dsn: str,
    procs: Sequence[asyncio.subprocess.Process],
    *,
    shards: int,
    pool: str = POOL,
    timeout: float = WORKER_READY_TIMEOUT_S,
) -> None:
    """Wait until every worker has written its heartbeat row and ``shards`` leases are held.

    ``shards=0`` waits for the heartbeats only (workers outside the ring hold none).
    Raises if a worker exits or ``timeout`` passes first.
    """
    conn = await asyncpg.connect(dsn)
    try:
        async with asyncio.timeout(timeout):
            while True:
                dead = [i for i, proc in enumerate(procs) if proc.returncode is not None]
                if dead:
                    raise RuntimeError(f"worker(s) {dead} exited during start-up")
                alive = await conn.fetchval("SELECT count(*) FROM workers WHERE pool = $1", pool)
                held = await conn.fetchval(
                    "SELECT count(*) FROM shard_leases"
                    " WHERE pool = $1 AND owner IS NOT NULL AND expires_at > now()",
                    pool,
                )
                if alive == len(procs) and held == shards:
                    return
                await asyncio.sleep(0.05)
    finally:
        await conn.close()


def process_cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds used so far by process ``pid`` on this host, if known."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_peak_rss_mb(procs: Sequence[asyncio.subprocess.Process]) -> float | None:
    """The largest peak resident set (``VmHWM``, MB) among running workers (Linux only)."""
    peaks = []
    for proc in procs:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) / 1024)
    return max(peaks) if peaks else None


# -- statistics ---------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 to 100) with linear interpolation, as numpy's default."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class Stopwatch:
    """Wall-clock and this process's CPU time over a block: ``with Stopwatch() as sw:``."""

    wall: float = 0.0
    cpu: float = 0.0

    def __enter__(self) -> Stopwatch:
        self._wall0, self._cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.wall = time.perf_counter() - self._wall0
        self.cpu = time.process_time() - self._cpu0


# -- results ------------------------------------------------------------------------


@dataclass
class Scenario:
    """One measured scenario: its description and one figure per run (higher is better).

    ``extra`` holds per-run secondary figures by name (e.g. ``call_p50_ms``), each a list
    aligned with ``values``; the table shows their medians.
    """

    name: str
    params: dict[str, Any]
    unit: str = "jobs/s"
    values: list[float] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)

    def add(self, value: float, **extra: float) -> None:
        self.values.append(value)
        for key, figure in extra.items():
            self.extra.setdefault(key, []).append(figure)


def summarize(scenario: Scenario) -> dict[str, Any]:
    """JSON-ready summary: median, min, max of the runs, and the medians of ``extra``."""
    values = scenario.values
    return {
        "name": scenario.name,
        "params": scenario.params,
        "unit": scenario.unit,
        "runs": values,
        "median": median(values) if values else None,
        "min": min(values) if values else None,
        "max": max(values) if values else None,
        "extra": {key: {"runs": v, "median": median(v)} for key, v in scenario.extra.items()},
    }


Column = tuple[str, Callable[[dict[str, Any]], str]]


def print_table(
    title: str,
    info: ServerInfo,
    config: dict[str, Any],
    summaries: Sequence[dict[str, Any]],
    columns: Sequence[Column],
    *,
    elapsed: float,
    load: dict[str, dict[str, float | None]] | None = None,
    file: Any = None,
) -> None:
    """A plain, aligned text table under a header naming the server and its settings.

    ``load`` maps moments (``start``, ``end``) to :func:`host_load` readings.
    """
    out = file or sys.stdout
    print(title, file=out)
    for line in info.header_lines():
        print(line, file=out)
    print("config: " + ", ".join(f"{k}={v}" for k, v in config.items()), file=out)
    print(file=out)
    header = [name for name, _ in columns]
    body = [[render(summary) for _, render in columns] for summary in summaries]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    print(line(header), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in body:
        print(line(row), file=out)
    print(file=out)
    print(f"total wall time {elapsed:.1f} s", file=out)
    if load:
        moments = "; ".join(f"{moment}: {_load_text(value)}" for moment, value in load.items())
        print(f"host ({moments})", file=out)


def print_json(
    benchmark: str,
    info: ServerInfo,
    config: dict[str, Any],
    summaries: Sequence[dict[str, Any]],
    *,
    elapsed: float,
    load: dict[str, dict[str, float | None]] | None = None,
    file: Any = None,
) -> None:
    document = {
        "benchmark": benchmark,
        "server": asdict(info),
        "config": config,
        "scenarios": list(summaries),
        "elapsed_s": round(elapsed, 3),
        "host_load": load or {},
    }
    print(json.dumps(document, indent=2), file=file or sys.stdout)


def int_list(text: str) -> tuple[int, ...]:
    """An ``argparse`` type: one or more positive integers, comma-separated (``8,256``)."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas: {text}") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"every value must be >= 1: {text}")
    return values


def relative_to_first(summaries: Sequence[dict[str, Any]]) -> Callable[[dict[str, Any]], str]:
    """A table cell: a scenario's median as a multiple of the first scenario's."""
    first = summaries[0]["median"] if summaries else None

    def cell(summary: dict[str, Any]) -> str:
        if not first or summary["median"] is None:
            return "-"
        return f"{summary['median'] / first:.2f}"

    return cell


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
