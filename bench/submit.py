"""Submit throughput of the real ``jobpool`` client against Postgres with default durability.

Scenarios (each run of each scenario gets a fresh, migrated database):

* ``single``      N sequential ``await client.submit("noop", {"i": i})``: one job per
                  round trip and per commit.
* ``concurrent``  the same N single submits spread over C coroutines sharing one
                  ``Client(max_connections=C)``: commits overlap (group commit).
* ``batch``       M jobs as ``submit("noop", [payload, ...])`` batches of B: one round
                  trip and one commit per batch.

Reported per scenario: the median, min and max of jobs/s over the runs, plus the median
over runs of the per-call latency p50/p99 (a call is one submit, or one whole batch) and
of the client process's CPU use (CPU seconds / wall seconds; near 100 % means the client,
not Postgres, is the bottleneck) and CPU time per job (steadier than a rate on a busy
machine). Only the submit loop is timed: connecting, the warm-up and the database
set-up are not.

Run from the repository root: ``.venv/bin/python bench/submit.py [--quick] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    DSN_ENV,
    POOL,
    TENANT,
    Scenario,
    Stopwatch,
    bench_server,
    best_effort_checkpoint,
    fmt_ms,
    fmt_rate,
    fresh_database,
    host_load,
    percentile,
    print_json,
    print_table,
    server_info,
    summarize,
)
from jobpool.client.client import Client
from jobpool.client.validation import DEFAULT_MAX_BATCH

JOB_TYPE = "noop"
SCENARIOS = ("single", "concurrent", "batch")


@dataclass(frozen=True)
class Config:
    jobs: int
    concurrency: int
    batch_size: int
    batch_jobs: int
    runs: int
    warmup: int
    shards: int
    scenarios: tuple[str, ...]


DEFAULTS = Config(
    jobs=5000,
    concurrency=16,
    batch_size=1000,
    batch_jobs=100_000,
    runs=5,
    warmup=100,
    shards=16,
    scenarios=SCENARIOS,
)
QUICK = Config(
    jobs=200,
    concurrency=4,
    batch_size=100,
    batch_jobs=2000,
    runs=2,
    warmup=10,
    shards=16,
    scenarios=SCENARIOS,
)


@dataclass(frozen=True)
class Measurement:
    jobs: int
    wall: float
    cpu: float
    calls: list[float]  # seconds per call (one submit, or one batch)

    @property
    def rate(self) -> float:
        return self.jobs / self.wall

    def figures(self) -> dict[str, float]:
        return {
            "call_p50_ms": percentile(self.calls, 50) * 1000,
            "call_p99_ms": percentile(self.calls, 99) * 1000,
            "client_cpu_pct": 100 * self.cpu / self.wall,
            "client_cpu_us_per_job": 1e6 * self.cpu / self.jobs,
        }


# -- scenarios ----------------------------------------------------------------------


async def _timed_submit(client: Client, payload: Any, calls: list[float]) -> None:
    start = time.perf_counter()
    await client.submit(JOB_TYPE, payload)
    calls.append(time.perf_counter() - start)


async def _sequential(client: Client, payloads: list[Any], calls: list[float]) -> None:
    for payload in payloads:
        await _timed_submit(client, payload, calls)


async def _concurrent(
    client: Client, payloads: list[Any], workers: int, calls: list[float]
) -> None:
    shared: Iterator[Any] = iter(payloads)  # one event loop: no lock needed

    async def worker() -> None:
        for payload in shared:
            await _timed_submit(client, payload, calls)

    async with asyncio.TaskGroup() as group:
        for _ in range(workers):
            group.create_task(worker())


async def _measure(
    dsn: str,
    cfg: Config,
    *,
    connections: int,
    warmup: Callable[[Client, list[float]], Any] | None,
    body: Callable[[Client, list[float]], Any],
    jobs: int,
    expected_rows: int,
) -> Measurement:
    client = Client(
        dsn,
        pool=POOL,
        tenant=TENANT,
        max_connections=connections,
        max_batch=max(cfg.batch_size, DEFAULT_MAX_BATCH),
    )
    async with client:
        if warmup is not None:
            await warmup(client, [])
        await best_effort_checkpoint(dsn)
        calls: list[float] = []
        with Stopwatch() as sw:
            await body(client, calls)
        async with client.connection() as conn:
            rows = await conn.fetchval("SELECT count(*) FROM jobs")
    if rows != expected_rows:
        raise RuntimeError(f"expected {expected_rows} jobs in the table, found {rows}")
    return Measurement(jobs=jobs, wall=sw.wall, cpu=sw.cpu, calls=calls)


def _payloads(start: int, count: int) -> list[dict[str, int]]:
    return [{"i": i} for i in range(start, start + count)]


async def run_single(dsn: str, cfg: Config) -> Measurement:
    warm = _payloads(-cfg.warmup, cfg.warmup)
    payloads = _payloads(0, cfg.jobs)
    return await _measure(
        dsn,
        cfg,
        connections=1,
        warmup=(lambda c, calls: _sequential(c, warm, calls)) if warm else None,
        body=lambda c, calls: _sequential(c, payloads, calls),
        jobs=cfg.jobs,
        expected_rows=cfg.warmup + cfg.jobs,
    )


async def run_concurrent(dsn: str, cfg: Config) -> Measurement:
    # The warm-up opens all C connections and prepares the insert on each.
    warm_count = max(cfg.warmup, cfg.concurrency) if cfg.warmup else 0
    warm = _payloads(-warm_count, warm_count)
    payloads = _payloads(0, cfg.jobs)
    return await _measure(
        dsn,
        cfg,
        connections=cfg.concurrency,
        warmup=(lambda c, calls: _concurrent(c, warm, cfg.concurrency, calls)) if warm else None,
        body=lambda c, calls: _concurrent(c, payloads, cfg.concurrency, calls),
        jobs=cfg.jobs,
        expected_rows=warm_count + cfg.jobs,
    )


async def run_batch(dsn: str, cfg: Config) -> Measurement:
    size = cfg.batch_size
    warm = [_payloads(-size, size)] if cfg.warmup else []
    batches = [
        _payloads(start, min(size, cfg.batch_jobs - start))
        for start in range(0, cfg.batch_jobs, size)
    ]
    return await _measure(
        dsn,
        cfg,
        connections=1,
        warmup=(lambda c, calls: _sequential(c, warm, calls)) if warm else None,
        body=lambda c, calls: _sequential(c, batches, calls),
        jobs=cfg.batch_jobs,
        expected_rows=len(warm) * size + cfg.batch_jobs,
    )


RUNNERS = {"single": run_single, "concurrent": run_concurrent, "batch": run_batch}


def _params(name: str, cfg: Config) -> dict[str, Any]:
    if name == "single":
        return {"jobs": cfg.jobs}
    if name == "concurrent":
        return {"jobs": cfg.jobs, "concurrency": cfg.concurrency}
    return {"jobs": cfg.batch_jobs, "batch_size": cfg.batch_size}


def _describe(name: str, params: dict[str, Any]) -> str:
    if name == "single":
        return f"single N={params['jobs']}"
    if name == "concurrent":
        return f"concurrent C={params['concurrency']} N={params['jobs']}"
    return f"batch B={params['batch_size']} M={params['jobs']}"


async def run_all(admin_dsn: str, cfg: Config, log: Callable[[str], None]) -> list[Scenario]:
    """Every run of every scenario, interleaved (run 1 of each, then run 2, ...)."""
    results = {name: Scenario(name, _params(name, cfg)) for name in cfg.scenarios}
    for run in range(1, cfg.runs + 1):
        for name in cfg.scenarios:
            async with fresh_database(admin_dsn, shards=cfg.shards) as dsn:
                m = await RUNNERS[name](dsn, cfg)
            results[name].add(m.rate, **m.figures())
            log(
                f"run {run}/{cfg.runs} {name:<10} {m.rate:>10,.0f} jobs/s "
                f"({m.jobs} jobs in {m.wall:.2f} s, client CPU {100 * m.cpu / m.wall:.0f} %)"
            )
    return list(results.values())


# -- command line -------------------------------------------------------------------

COLUMNS = [
    ("scenario", lambda s: _describe(s["name"], s["params"])),
    ("median jobs/s", lambda s: fmt_rate(s["median"])),
    ("min", lambda s: fmt_rate(s["min"])),
    ("max", lambda s: fmt_rate(s["max"])),
    ("call p50 ms", lambda s: fmt_ms(s["extra"]["call_p50_ms"]["median"])),
    ("call p99 ms", lambda s: fmt_ms(s["extra"]["call_p99_ms"]["median"])),
    ("client CPU %", lambda s: f"{s['extra']['client_cpu_pct']['median']:.0f}"),
    ("client CPU µs/job", lambda s: f"{s['extra']['client_cpu_us_per_job']['median']:.1f}"),
]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="bench/submit.py",
        description=(
            "Measure job submission throughput of the jobpool Client (single submits, "
            "concurrent single submits, batches) against Postgres with its default "
            "durability. Each run of each scenario uses a fresh, migrated database; the "
            "table reports the median and min/max of jobs/s over the runs."
        ),
        epilog=(
            f"Server: ${DSN_ENV} (a superuser URI; its database is only used to create "
            "and drop the per-run databases) when set, else a throwaway embedded "
            "Postgres started for this run, its data directory under $TMPDIR (default /tmp; "
            "not tmpfs, where fsync would cost nothing). Progress goes to stderr, results "
            "to stdout; the header names the server settings and the host load. "
            "Options left unset take the --quick preset with --quick, else the defaults."
        ),
    )
    parser.add_argument(
        "--jobs",
        "-n",
        type=_positive,
        help=f"N: jobs per run of 'single' and of 'concurrent' (default {DEFAULTS.jobs})",
    )
    parser.add_argument(
        "--concurrency",
        "-c",
        type=_positive,
        help=(
            "C: coroutines submitting at once in 'concurrent', sharing one Client with "
            f"max_connections=C (default {DEFAULTS.concurrency})"
        ),
    )
    parser.add_argument(
        "--batch-size",
        "-b",
        type=_positive,
        help=f"B: jobs per submit call in 'batch' (default {DEFAULTS.batch_size})",
    )
    parser.add_argument(
        "--batch-jobs",
        "-m",
        type=_positive,
        help=(
            "M: jobs per run of 'batch', the last batch holding the remainder "
            f"(default {DEFAULTS.batch_jobs})"
        ),
    )
    parser.add_argument(
        "--runs",
        "-r",
        type=_positive,
        help=f"runs per scenario, each on a fresh database (default {DEFAULTS.runs})",
    )
    parser.add_argument(
        "--warmup",
        type=_non_negative,
        help=(
            "untimed jobs submitted the same way before each timed loop, to open the "
            "connections and prepare the statements; 'batch' warms up with one batch; "
            f"0 disables (default {DEFAULTS.warmup})"
        ),
    )
    parser.add_argument(
        "--shards",
        type=_positive,
        help=f"shard count of the benchmark pool (default {DEFAULTS.shards})",
    )
    parser.add_argument(
        "--scenario",
        "-s",
        dest="scenarios",
        action="append",
        choices=SCENARIOS,
        help="scenario to run; repeat for several (default: all, in the order listed)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=(
            f"tiny smoke configuration: N={QUICK.jobs}, C={QUICK.concurrency}, "
            f"B={QUICK.batch_size}, M={QUICK.batch_jobs}, runs={QUICK.runs}, "
            f"warmup={QUICK.warmup}"
        ),
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the results as one JSON document instead of the table",
    )
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else DEFAULTS
    cfg = Config(
        jobs=args.jobs or preset.jobs,
        concurrency=args.concurrency or preset.concurrency,
        batch_size=args.batch_size or preset.batch_size,
        batch_jobs=args.batch_jobs or preset.batch_jobs,
        runs=args.runs or preset.runs,
        warmup=preset.warmup if args.warmup is None else args.warmup,
        shards=args.shards or preset.shards,
        scenarios=tuple(s for s in SCENARIOS if s in args.scenarios)
        if args.scenarios
        else preset.scenarios,
    )
    return cfg, args


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def _main(admin_dsn: str, cfg: Config, as_json: bool, started: float) -> None:
    load = {"start": host_load()}
    info = await server_info(admin_dsn)
    _log(" | ".join(line.strip() for line in info.header_lines()[:3]))
    scenarios = await run_all(admin_dsn, cfg, _log)
    summaries = [summarize(s) for s in scenarios]
    config = {k: v for k, v in vars(cfg).items() if k != "scenarios"}
    elapsed = time.perf_counter() - started
    load["end"] = host_load()
    if as_json:
        print_json("submit", info, config, summaries, elapsed=elapsed, load=load)
    else:
        title = "jobpool submit throughput"
        print_table(title, info, config, summaries, COLUMNS, elapsed=elapsed, load=load)


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    started = time.perf_counter()
    with bench_server() as admin_dsn:
        asyncio.run(_main(admin_dsn, cfg, args.json, started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
