"""Drain throughput: how fast R real worker processes empty a queue of no-op jobs.

Each run gets a fresh, migrated database whose pool has an empty ring (``replicas=0``),
and R worker processes (``python -m jobpool worker``, ordinals 0..R-1, ``noop`` of
``bench/handlers.py``) that start up, connect and then idle: outside the ring they hold
no shard. The backlog is loaded with the client's batch submit (10,000 jobs a call, two
calls at a time), then ``VACUUM (ANALYZE) jobs`` and a ``CHECKPOINT`` leave the table
as autovacuum would and keep the load's dirty pages out of the measurement
(``--no-vacuum`` skips the vacuum: the claims then start on a table that has no planner
statistics, as in the first minute of a new database). The clock starts when the ring
is set to R (as ``jobpool ring`` does: the workers take their shards and start claiming
at once), so process start-up is not timed, the lease take-over is.

The product's defaults come first: 64 shards (``jobpool pool create``'s default), one
tenant, one worker at the worker's default concurrency. ``--shards``, ``--tenants``,
``--workers`` and ``--concurrency`` take comma-separated lists (``--shards 8,256``):
every combination is a scenario, the runs are interleaved (run 1 of each, then run 2,
...) so that the host's load falls on all alike, and the table shows each median as a
multiple of the first scenario's. With T tenants the backlog is spread evenly over
them (``tenant-0`` ... ``tenant-<T-1>``) before the clock starts.

Modes:

* default     drain all N jobs; rate = N / (last ``finished_at`` - start), both on the
              server's clock. The client polls every 100 ms until ``jobs`` is empty;
              the rate by that wall clock is shown too.
* --backlog   the rate of the first K jobs finished with a backlog of ``--small``
              (10,000) queued jobs, and with ``--large`` (1,000,000); K must be below
              the small backlog, so that neither run reaches the queue's tail. Reports
              both rates and the ratio large/small (the target: at least 0.8).

Also shown: the time from the ring change to the first job started; the CPU time of
the worker processes and of their Postgres backends per job (read from /proc, so only
for a server on this host: on a shared, busy host a steadier figure than the rate);
the largest peak RSS (VmHWM) among the workers (it should stay flat with the
backlog; run ``--concurrency 256`` for the memory of a busy worker).

Run from the repository root: ``.venv/bin/python bench/drain.py [--backlog] [--quick]``;
e.g. ``--shards 8,256``, ``--tenants 1,10000``, ``--workers 1,2,4``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from bench.common import (
    DEFAULT_CONCURRENCY,
    DEFAULT_SHARDS,
    DSN_ENV,
    POOL,
    TENANT,
    Scenario,
    bench_server,
    best_effort_checkpoint,
    fmt_rate,
    fresh_database,
    host_load,
    int_list,
    median,
    print_json,
    print_table,
    process_cpu_seconds,
    relative_to_first,
    server_info,
    summarize,
    wait_for_workers,
    worker_peak_rss_mb,
    worker_processes,
)
from jobpool.client.client import Client
from jobpool.store.pools import pool_set_replicas

JOB_TYPE = "noop"
LOAD_BATCH = 10_000
LOAD_STREAMS = 2  # concurrent batch submits while loading
POLL_S = 0.1
DRAIN_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Case:
    """One combination of the settings compared."""

    shards: int
    tenants: int
    workers: int
    concurrency: int

    def params(self) -> dict[str, int]:
        return {
            "shards": self.shards,
            "tenants": self.tenants,
            "workers": self.workers,
            "concurrency": self.concurrency,
        }


@dataclass(frozen=True)
class Config:
    jobs: int
    workers: tuple[int, ...]
    concurrency: tuple[int, ...]
    runs: int
    shards: tuple[int, ...]
    tenants: tuple[int, ...]
    backlog: bool
    first: int
    small: int
    large: int
    vacuum: bool

    def cases(self) -> list[Case]:
        """Every combination, the first values (the product's defaults) first."""
        return [
            Case(shards=s, tenants=t, workers=w, concurrency=c)
            for s in self.shards
            for t in self.tenants
            for w in self.workers
            for c in self.concurrency
        ]


DEFAULTS = Config(
    jobs=100_000,
    workers=(1,),
    concurrency=(DEFAULT_CONCURRENCY,),
    runs=5,
    shards=(DEFAULT_SHARDS,),
    tenants=(1,),
    backlog=False,
    first=8_000,
    small=10_000,
    large=1_000_000,
    vacuum=True,
)
QUICK = Config(
    jobs=5_000,
    workers=(1,),
    concurrency=(DEFAULT_CONCURRENCY,),
    runs=2,
    shards=(DEFAULT_SHARDS,),
    tenants=(1,),
    backlog=False,
    first=800,
    small=1_000,
    large=20_000,
    vacuum=True,
)


@dataclass(frozen=True)
class Measurement:
    jobs: int  # jobs counted: all of them, or the first K finished
    seconds: float  # server clock: ring change -> the last counted job finished
    wall: float  # client clock: ring change -> the poll that saw the goal reached
    first_start: float  # server clock: ring change -> first job started
    peak_rss_mb: float | None
    done: int  # jobs finished when the poll saw the goal reached (>= jobs)
    worker_cpu: float | None  # CPU seconds of the worker processes until then
    backend_cpu: float | None  # CPU seconds of their Postgres backends until then

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    def figures(self) -> dict[str, float]:
        figures = {
            "wall_rate": self.jobs / self.wall,
            "first_start_ms": self.first_start * 1000,
        }
        if self.peak_rss_mb is not None:
            figures["peak_rss_mb"] = self.peak_rss_mb
        if self.worker_cpu is not None:
            figures["worker_cpu_us_per_job"] = 1e6 * self.worker_cpu / self.done
        if self.backend_cpu is not None:
            figures["backend_cpu_us_per_job"] = 1e6 * self.backend_cpu / self.done
        return figures


CpuSnapshot = tuple[dict[int, float | None], dict[int, float | None]]


async def _cpu_snapshot(
    conn: asyncpg.Connection, procs: Sequence[asyncio.subprocess.Process]
) -> CpuSnapshot:
    """CPU seconds so far of each worker process and of each of their backends."""
    workers = {proc.pid: process_cpu_seconds(proc.pid) for proc in procs}
    pids = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'jobpool-worker/%'"
    )
    return workers, {row["pid"]: process_cpu_seconds(row["pid"]) for row in pids}


def _cpu_used(before: dict[int, float | None], after: dict[int, float | None]) -> float | None:
    """CPU seconds used between two snapshots; None if a process could not be read."""
    if not after or any(v is None for v in (*before.values(), *after.values())):
        return None
    return sum(v - (before.get(pid) or 0.0) for pid, v in after.items() if v is not None)


# -- one run --------------------------------------------------------------------------


async def _load(dsn: str, jobs: int, log: Callable[[str], None]) -> None:
    """Queue ``jobs`` no-op jobs with the client's batch submit, ``LOAD_STREAMS`` at once."""
    t0 = time.perf_counter()
    batches = iter(range(0, jobs, LOAD_BATCH))
    progress_every = max(LOAD_BATCH, jobs // 10)
    done = 0

    async def stream(client: Client) -> None:
        nonlocal done
        for start in batches:  # one event loop: the shared iterator needs no lock
            size = min(LOAD_BATCH, jobs - start)
            await client.submit(JOB_TYPE, [{"i": i} for i in range(start, start + size)])
            done += size
            if jobs >= 100_000 and (done % progress_every == 0 or done == jobs):
                elapsed = time.perf_counter() - t0
                log(f"  loaded {done:,}/{jobs:,} jobs ({done / elapsed:,.0f} jobs/s)")

    async with (
        Client(dsn, pool=POOL, tenant=TENANT, max_connections=LOAD_STREAMS) as client,
        asyncio.TaskGroup() as group,
    ):
        for _ in range(LOAD_STREAMS):
            group.create_task(stream(client))


SPREAD_TENANTS = """
UPDATE jobs SET tenant = 'tenant-' || (abs(hashtextextended(id::text, 0)) % $1)
"""


async def _prepare(conn: asyncpg.Connection, dsn: str, *, tenants: int, vacuum: bool) -> None:
    if tenants > 1:
        await conn.execute(SPREAD_TENANTS, tenants)
    if vacuum:
        await conn.execute("VACUUM (ANALYZE) jobs")
    await best_effort_checkpoint(dsn)


async def _wait_until(conn: asyncpg.Connection, query: str, *args: Any) -> float:
    """Poll ``query`` every ``POLL_S`` until it returns true; the perf_counter then."""
    async with asyncio.timeout(DRAIN_TIMEOUT_S):
        while True:  # a poll: nothing tells when rows leave the table
            if await conn.fetchval(query, *args):
                return time.perf_counter()
            await asyncio.sleep(POLL_S)


FINISHED = "SELECT count(*) FROM job_history"


async def run_once(
    admin_dsn: str,
    cfg: Config,
    case: Case,
    *,
    backlog: int,
    count: int,
    log: Callable[[str], None],
) -> Measurement:
    """Queue ``backlog`` jobs, start the workers, time the first ``count`` finished."""
    async with (
        fresh_database(admin_dsn, shards=case.shards, replicas=0) as dsn,
        worker_processes(dsn, count=case.workers, concurrency=case.concurrency) as procs,
    ):
        await wait_for_workers(dsn, procs, shards=0)
        await _load(dsn, backlog, log)
        conn = await asyncpg.connect(dsn)
        try:
            await _prepare(conn, dsn, tenants=case.tenants, vacuum=cfg.vacuum)
            cpu_before = await _cpu_snapshot(conn, procs)
            start: datetime = await conn.fetchval("SELECT clock_timestamp()")
            t0 = time.perf_counter()
            await pool_set_replicas(conn, POOL, case.workers)
            if count == backlog:
                t_end = await _wait_until(conn, "SELECT NOT EXISTS (SELECT 1 FROM jobs)")
                end, first = await conn.fetchrow(
                    "SELECT max(finished_at), min(started_at) FROM job_history"
                )
            else:
                t_end = await _wait_until(conn, f"SELECT ({FINISHED}) >= $1", count)
                end = await conn.fetchval(
                    "SELECT finished_at FROM job_history ORDER BY finished_at OFFSET $1 LIMIT 1",
                    count - 1,
                )
                first = await conn.fetchval("SELECT min(started_at) FROM job_history")
            cpu_after = await _cpu_snapshot(conn, procs)
            done = await conn.fetchval(FINISHED)
            failed = await conn.fetchval(
                "SELECT count(*) FROM job_history WHERE state <> 'succeeded'"
            )
            if failed:
                raise RuntimeError(f"{failed} jobs did not succeed")
            peak = worker_peak_rss_mb(procs)
        finally:
            await conn.close()
    return Measurement(
        jobs=count,
        seconds=(end - start).total_seconds(),
        wall=t_end - t0,
        first_start=(first - start).total_seconds(),
        peak_rss_mb=peak,
        done=done,
        worker_cpu=_cpu_used(cpu_before[0], cpu_after[0]),
        backend_cpu=_cpu_used(cpu_before[1], cpu_after[1]),
    )


def _log_run(log: Callable[[str], None], label: str, m: Measurement) -> None:
    load = host_load()
    rss = f", worker peak RSS {m.peak_rss_mb:.0f} MB" if m.peak_rss_mb else ""
    figures = m.figures()
    if "worker_cpu_us_per_job" in figures:
        rss += f", worker CPU {figures['worker_cpu_us_per_job']:.0f} us/job"
    if "backend_cpu_us_per_job" in figures:
        rss += f", backends {figures['backend_cpu_us_per_job']:.0f} us/job"
    log(
        f"{label}: {m.rate:>9,.0f} jobs/s ({m.jobs:,} jobs in {m.seconds:.2f} s; "
        f"first start after {m.first_start * 1000:.0f} ms{rss}); "
        f"host load {load['loadavg_1m']}, CPU pressure {load['cpu_pressure_avg60']} %"
    )


async def run_drain(admin_dsn: str, cfg: Config, log: Callable[[str], None]) -> list[Scenario]:
    """Every case, interleaved (run 1 of each, then run 2, ...)."""
    cases = cfg.cases()
    scenarios = [Scenario("drain", {"jobs": cfg.jobs, **case.params()}) for case in cases]
    for run in range(1, cfg.runs + 1):
        for case, scenario in zip(cases, scenarios, strict=True):
            m = await run_once(admin_dsn, cfg, case, backlog=cfg.jobs, count=cfg.jobs, log=log)
            scenario.add(m.rate, **m.figures())
            _log_run(log, f"run {run}/{cfg.runs} drain {_label(scenario.params)}", m)
    return scenarios


async def run_backlog(admin_dsn: str, cfg: Config, log: Callable[[str], None]) -> list[Scenario]:
    """Small and large backlog, interleaved (run 1 of each, then run 2, ...)."""
    [case] = cfg.cases()
    sizes = (cfg.small, cfg.large)
    scenarios = {
        size: Scenario("backlog", {"backlog": size, "first": cfg.first, **case.params()})
        for size in sizes
    }
    for run in range(1, cfg.runs + 1):
        for size in sizes:
            m = await run_once(admin_dsn, cfg, case, backlog=size, count=cfg.first, log=log)
            scenarios[size].add(m.rate, **m.figures())
            _log_run(log, f"run {run}/{cfg.runs} backlog {size:>9,}", m)
    return list(scenarios.values())


def backlog_ratio(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """large/small: of the medians, and the median of the per-run ratios."""
    small, large = summaries
    per_run = [lg / sm for sm, lg in zip(small["runs"], large["runs"], strict=True)]
    return {
        "ratio_of_medians": large["median"] / small["median"],
        "median_of_run_ratios": median(per_run),
        "run_ratios": per_run,
        "required": 0.8,
    }


# -- command line -------------------------------------------------------------------


def _label(p: dict[str, Any]) -> str:
    return f"S={p['shards']} T={p['tenants']:,} R={p['workers']} C={p['concurrency']}"


def _describe(s: dict[str, Any]) -> str:
    p = s["params"]
    if s["name"] == "drain":
        return f"drain N={p['jobs']:,} {_label(p)}"
    return f"first {p['first']:,} of {p['backlog']:,} {_label(p)}"


def _extra(name: str, render: Callable[[float], str]) -> Callable[[dict[str, Any]], str]:
    def cell(s: dict[str, Any]) -> str:
        figure = s["extra"].get(name)
        return "-" if figure is None else render(figure["median"])

    return cell


def columns(summaries: list[dict[str, Any]]) -> list[tuple[str, Callable[[dict[str, Any]], str]]]:
    return [
        ("scenario", _describe),
        ("median jobs/s", lambda s: fmt_rate(s["median"])),
        ("x first", relative_to_first(summaries)),
        *COLUMNS,
    ]


COLUMNS = [
    ("min", lambda s: fmt_rate(s["min"])),
    ("max", lambda s: fmt_rate(s["max"])),
    ("wall-clock jobs/s", _extra("wall_rate", fmt_rate)),
    ("first start ms", _extra("first_start_ms", lambda v: f"{v:.0f}")),
    ("worker CPU us/job", _extra("worker_cpu_us_per_job", lambda v: f"{v:.0f}")),
    ("its backends' CPU us/job", _extra("backend_cpu_us_per_job", lambda v: f"{v:.0f}")),
    ("worker peak RSS MB", _extra("peak_rss_mb", lambda v: f"{v:.0f}")),
]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _values(values: tuple[int, ...]) -> str:
    return ",".join(str(v) for v in values)


def parse_args(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="bench/drain.py",
        description=(
            "Measure how fast R worker processes drain queued no-op jobs (jobs/s, "
            "medians over the runs); --backlog compares the drain rate at a small and "
            "at a large backlog."
        ),
        epilog=(
            f"Server: ${DSN_ENV} (a superuser URI) when set, else a throwaway embedded "
            "Postgres with default durability, its data directory under $TMPDIR. Each "
            "run uses a fresh database and fresh workers. Progress goes to stderr, "
            "results to stdout. Options left unset take the --quick preset with --quick, "
            "else the defaults."
        ),
    )
    parser.add_argument(
        "--jobs", "-n", type=_positive, help=f"N: jobs to drain (default {DEFAULTS.jobs:,})"
    )
    parser.add_argument(
        "--workers",
        "-w",
        type=int_list,
        help=f"R: worker processes, comma-separated values (default {_values(DEFAULTS.workers)})",
    )
    parser.add_argument(
        "--concurrency",
        "-c",
        type=int_list,
        help=(
            "handlers running at once per worker, comma-separated values (default "
            f"{_values(DEFAULTS.concurrency)}, the worker's own)"
        ),
    )
    parser.add_argument("--runs", "-r", type=_positive, help=f"runs (default {DEFAULTS.runs})")
    parser.add_argument(
        "--shards",
        type=int_list,
        help=f"shards of the pool, comma-separated values (default {_values(DEFAULTS.shards)})",
    )
    parser.add_argument(
        "--tenants",
        type=int_list,
        help=(
            "tenants the backlog is spread over, comma-separated values (default "
            f"{_values(DEFAULTS.tenants)})"
        ),
    )
    parser.add_argument(
        "--backlog",
        action="store_true",
        help="compare the rate of the first K jobs at a small and at a large backlog",
    )
    parser.add_argument(
        "--first",
        "-k",
        type=_positive,
        help=f"K: jobs timed in --backlog mode (default {DEFAULTS.first:,})",
    )
    parser.add_argument(
        "--small", type=_positive, help=f"small backlog (default {DEFAULTS.small:,})"
    )
    parser.add_argument(
        "--large", type=_positive, help=f"large backlog (default {DEFAULTS.large:,})"
    )
    parser.add_argument(
        "--no-vacuum",
        dest="vacuum",
        action="store_false",
        default=None,
        help="skip VACUUM (ANALYZE) of the loaded backlog",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=(
            f"smoke configuration: N={QUICK.jobs:,}, runs={QUICK.runs}; --backlog: "
            f"K={QUICK.first:,}, backlogs {QUICK.small:,} and {QUICK.large:,}"
        ),
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else DEFAULTS
    cfg = Config(
        jobs=args.jobs or preset.jobs,
        workers=args.workers or preset.workers,
        concurrency=args.concurrency or preset.concurrency,
        runs=args.runs or preset.runs,
        shards=args.shards or preset.shards,
        tenants=args.tenants or preset.tenants,
        backlog=args.backlog,
        first=args.first or preset.first,
        small=args.small or preset.small,
        large=args.large or preset.large,
        vacuum=preset.vacuum if args.vacuum is None else args.vacuum,
    )
    if cfg.backlog and len(cfg.cases()) > 1:
        parser.error("--backlog compares backlogs: give one value of each setting")
    if cfg.backlog and not cfg.first < cfg.small <= cfg.large:
        parser.error(
            f"--backlog needs K < small <= large, got {cfg.first}, {cfg.small}, {cfg.large}"
        )
    return cfg, args


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _config(cfg: Config) -> dict[str, Any]:
    keys = ("runs", "vacuum")
    keys += ("first", "small", "large") if cfg.backlog else ("jobs",)
    return {key: getattr(cfg, key) for key in keys}


async def _main(admin_dsn: str, cfg: Config, as_json: bool, started: float) -> None:
    load = {"start": host_load()}
    info = await server_info(admin_dsn)
    _log(" | ".join(line.strip() for line in info.header_lines()[:3]))
    runner = run_backlog if cfg.backlog else run_drain
    summaries = [summarize(s) for s in await runner(admin_dsn, cfg, _log)]
    ratio = backlog_ratio(summaries) if cfg.backlog else None
    elapsed = time.perf_counter() - started
    load["end"] = host_load()
    if as_json:
        if ratio is not None:
            summaries.append({"name": "backlog_ratio", **ratio})
        print_json("drain", info, _config(cfg), summaries, elapsed=elapsed, load=load)
        return
    title = "jobpool drain rate" + (" by backlog" if cfg.backlog else "")
    table = columns(summaries)
    print_table(title, info, _config(cfg), summaries, table, elapsed=elapsed, load=load)
    if ratio is not None:
        verdict = "met" if ratio["ratio_of_medians"] >= ratio["required"] else "NOT met"
        runs = ", ".join(f"{r:.2f}" for r in ratio["run_ratios"])
        print(
            f"ratio large/small: {ratio['ratio_of_medians']:.2f} of the medians "
            f"(per run: {runs}; their median {ratio['median_of_run_ratios']:.2f}); "
            f"target >= {ratio['required']}: {verdict}"
        )


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    started = time.perf_counter()
    with bench_server() as admin_dsn:
        asyncio.run(_main(admin_dsn, cfg, args.json, started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
