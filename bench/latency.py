"""Submit→start latency of idle workers at a steady, low submit rate.

R real worker processes (``python -m jobpool worker``, handlers of ``bench/handlers.py``)
serve a fresh pool; once they hold every shard, one client submits N ``stamp`` jobs one
at a time on a fixed schedule (``rate`` per second, open loop: a late submit does not
push the next ones back). The ``stamp`` handler returns ``time.time()`` as it starts;
the benchmark took ``time.time()`` just before calling ``submit()``. Same host, same
clock: the difference is the latency a caller sees from ``submit()`` to its handler
running — the submit round trip and commit, the NOTIFY, the worker's claim round trip
and the start of the task.

Reported, each as the median over the runs: p50, p95, p99 and max of the latency, and
at p50 where the time goes: the ``submit()`` call itself; the start measured from the
moment ``submit()`` returned (it can beat the reply: the worker is woken at commit);
and on the server's clock (``now()`` of each transaction), from the insert's start to
the claim's start (commit, NOTIFY, the worker waking up), then from the claim's start to
the handler running (claim statement, commit, reply, task start). Each run uses a fresh,
migrated database and fresh worker processes; the warm-up jobs (connections, prepared
statements) are not counted.

The product's defaults come first: 64 shards (``jobpool pool create``'s default) and
the worker's default concurrency. ``--shards`` takes comma-separated values
(``--shards 8,256``): each is a scenario, the runs are interleaved (run 1 of each,
then run 2, ...), and the table shows each p50 as a multiple of the first scenario's.

Targets: p50 < 5 ms and p99 < 50 ms; stretch: p50 ≤ 2 ms and p99 ≤ 5 ms.

Run from the repository root: ``.venv/bin/python bench/latency.py [--quick] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
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
    fmt_ms,
    fresh_database,
    host_load,
    int_list,
    percentile,
    print_json,
    print_table,
    relative_to_first,
    server_info,
    summarize,
    wait_for_workers,
    worker_processes,
)
from jobpool.client.client import Client
from jobpool.models import JobId

JOB_TYPE = "stamp"
FINISH_TIMEOUT_S = 60.0
TARGET_P50_MS, TARGET_P99_MS = 5.0, 50.0
STRETCH_P50_MS, STRETCH_P99_MS = 2.0, 5.0


@dataclass(frozen=True)
class Config:
    jobs: int
    rate: float
    workers: int
    concurrency: int
    runs: int
    warmup: int
    shards: tuple[int, ...]


DEFAULTS = Config(
    jobs=500,
    rate=50.0,
    workers=1,
    concurrency=DEFAULT_CONCURRENCY,
    runs=5,
    warmup=50,
    shards=(DEFAULT_SHARDS,),
)
QUICK = Config(
    jobs=50,
    rate=50.0,
    workers=1,
    concurrency=DEFAULT_CONCURRENCY,
    runs=2,
    warmup=10,
    shards=(DEFAULT_SHARDS,),
)


@dataclass(frozen=True)
class Sample:
    job_id: JobId
    submitted: float  # time.time() just before submit()
    call: float  # seconds the submit() call took


@dataclass(frozen=True)
class Measurement:
    latencies: list[float]  # seconds, submit() called -> handler started
    calls: list[float]  # seconds per submit() call
    after_return: list[float]  # seconds, submit() returned -> handler started
    to_claim: list[float]  # seconds, the insert's transaction began -> the claim's began
    claim_to_handler: list[float]  # seconds, the claim's transaction began -> handler started
    late_submits: int  # submits that could not keep to the schedule

    def figures(self) -> dict[str, float]:
        ms = [x * 1000 for x in self.latencies]
        return {
            "p95_ms": percentile(ms, 95),
            "p99_ms": percentile(ms, 99),
            "max_ms": max(ms),
            "submit_p50_ms": percentile(self.calls, 50) * 1000,
            "after_return_p50_ms": percentile(self.after_return, 50) * 1000,
            "to_claim_p50_ms": percentile(self.to_claim, 50) * 1000,
            "claim_to_handler_p50_ms": percentile(self.claim_to_handler, 50) * 1000,
        }

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies, 50) * 1000


# -- one run --------------------------------------------------------------------------


async def _paced(client: Client, count: int, rate: float, first: int) -> tuple[list[Sample], int]:
    """Submit ``count`` jobs at ``rate`` per second on a fixed schedule."""
    samples: list[Sample] = []
    late = 0
    interval = 1.0 / rate
    start = time.perf_counter() + interval
    for i in range(count):
        delay = start + i * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif i:
            late += 1
        submitted = time.time()
        t0 = time.perf_counter()
        job = await client.submit(JOB_TYPE, {"i": first + i})
        samples.append(Sample(job.id, submitted, time.perf_counter() - t0))
    return samples, late


@dataclass(frozen=True)
class Times:
    """Server-side moments of one job (``now()`` of its transactions) and its handler's."""

    inserted: float  # created_at: the insert's transaction began
    claimed: float  # started_at: the claim's transaction began
    handler: float  # the handler's time.time()


async def _job_times(conn: asyncpg.Connection, ids: list[JobId]) -> dict[JobId, Times]:
    """Wait until every job has ended; return each one's moments."""
    async with asyncio.timeout(FINISH_TIMEOUT_S):
        while True:  # a poll: simpler than following the events channel
            query = "SELECT count(*) FROM job_history WHERE id = ANY($1::uuid[])"
            if await conn.fetchval(query, ids) == len(ids):
                break
            await asyncio.sleep(0.05)
    rows = await conn.fetch(
        "SELECT id, state, result::text, extract(epoch FROM created_at)::float8 AS inserted,"
        " extract(epoch FROM started_at)::float8 AS claimed"
        " FROM job_history WHERE id = ANY($1::uuid[])",
        ids,
    )
    bad = [row for row in rows if row["state"] != "succeeded"]
    if bad:
        raise RuntimeError(f"{len(bad)} jobs did not succeed, e.g. {dict(bad[0])}")
    return {
        JobId(row["id"]): Times(row["inserted"], row["claimed"], float(json.loads(row["result"])))
        for row in rows
    }


async def run_once(admin_dsn: str, cfg: Config, shards: int) -> Measurement:
    async with (
        fresh_database(admin_dsn, shards=shards, replicas=cfg.workers) as dsn,
        worker_processes(dsn, count=cfg.workers, concurrency=cfg.concurrency) as procs,
    ):
        await wait_for_workers(dsn, procs, shards=shards)
        conn = await asyncpg.connect(dsn)
        try:
            async with Client(dsn, pool=POOL, tenant=TENANT, max_connections=1) as client:
                if cfg.warmup:
                    warm, _ = await _paced(client, cfg.warmup, cfg.rate, -cfg.warmup)
                    await _job_times(conn, [s.job_id for s in warm])
                await best_effort_checkpoint(dsn)
                samples, late = await _paced(client, cfg.jobs, cfg.rate, 0)
            times = await _job_times(conn, [s.job_id for s in samples])
        finally:
            await conn.close()
    return Measurement(
        latencies=[times[s.job_id].handler - s.submitted for s in samples],
        calls=[s.call for s in samples],
        after_return=[times[s.job_id].handler - s.submitted - s.call for s in samples],
        to_claim=[times[s.job_id].claimed - times[s.job_id].inserted for s in samples],
        claim_to_handler=[times[s.job_id].handler - times[s.job_id].claimed for s in samples],
        late_submits=late,
    )


async def run_all(admin_dsn: str, cfg: Config, log: Callable[[str], None]) -> list[Scenario]:
    """One scenario per shard count, interleaved (run 1 of each, then run 2, ...)."""
    scenarios = [
        Scenario(
            "latency",
            {
                "jobs": cfg.jobs,
                "rate": cfg.rate,
                "workers": cfg.workers,
                "concurrency": cfg.concurrency,
                "shards": shards,
            },
            unit="ms (p50)",
        )
        for shards in cfg.shards
    ]
    for run in range(1, cfg.runs + 1):
        for scenario in scenarios:
            shards = scenario.params["shards"]
            m = await run_once(admin_dsn, cfg, shards)
            figures = m.figures()
            scenario.add(m.p50_ms, **figures)
            late = f", {m.late_submits} submits behind schedule" if m.late_submits else ""
            log(
                f"run {run}/{cfg.runs} S={shards}: p50 {m.p50_ms:.2f} ms, "
                f"p95 {figures['p95_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms, "
                f"max {figures['max_ms']:.2f} ms (submit() p50 {figures['submit_p50_ms']:.2f} "
                f"ms{late}); {host_load_text()}"
            )
    return scenarios


def host_load_text() -> str:
    load = host_load()
    return f"host load {load['loadavg_1m']}, CPU pressure {load['cpu_pressure_avg60']} %"


# -- command line -------------------------------------------------------------------


def _extra(name: str) -> Callable[[dict[str, Any]], str]:
    return lambda s: fmt_ms(s["extra"][name]["median"])


def _describe(s: dict[str, Any]) -> str:
    p = s["params"]
    return f"S={p['shards']} R={p['workers']} C={p['concurrency']} N={p['jobs']} at {p['rate']:g}/s"


def columns(summaries: list[dict[str, Any]]) -> list[tuple[str, Callable[[dict[str, Any]], str]]]:
    return [
        ("scenario", _describe),
        ("p50 ms", lambda s: fmt_ms(s["median"])),
        ("x first", relative_to_first(summaries)),
        *COLUMNS,
    ]


COLUMNS = [
    ("p95 ms", _extra("p95_ms")),
    ("p99 ms", _extra("p99_ms")),
    ("max ms", _extra("max_ms")),
    ("p50 min..max", lambda s: f"{fmt_ms(s['min'])}..{fmt_ms(s['max'])}"),
    ("submit() p50 ms", _extra("submit_p50_ms")),
    ("after return p50 ms", _extra("after_return_p50_ms")),
    ("insert->claim p50 ms", _extra("to_claim_p50_ms")),
    ("claim->handler p50 ms", _extra("claim_to_handler_p50_ms")),
]


def _verdict(summary: dict[str, Any]) -> str:
    p50, p99 = summary["median"], summary["extra"]["p99_ms"]["median"]

    def check(limit50: float, limit99: float, strict: bool) -> str:
        ok = (p50 < limit50 and p99 < limit99) if strict else (p50 <= limit50 and p99 <= limit99)
        return "met" if ok else "NOT met"

    return (
        f"targets: p50 < {TARGET_P50_MS:g} ms, p99 < {TARGET_P99_MS:g} ms: "
        f"{check(TARGET_P50_MS, TARGET_P99_MS, True)}; stretch p50 <= {STRETCH_P50_MS:g} ms, "
        f"p99 <= {STRETCH_P99_MS:g} ms: {check(STRETCH_P50_MS, STRETCH_P99_MS, False)}"
    )


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


def _positive_rate(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="bench/latency.py",
        description=(
            "Measure submit->start latency: R idle worker processes, one client "
            "submitting N jobs one at a time at a steady rate; the handler returns the "
            "time it started. Reports p50/p95/p99/max (medians over the runs)."
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
        "--jobs", "-n", type=_positive, help=f"N: jobs per run (default {DEFAULTS.jobs})"
    )
    parser.add_argument(
        "--rate",
        type=_positive_rate,
        help=f"submits per second, on a fixed schedule (default {DEFAULTS.rate:g})",
    )
    parser.add_argument(
        "--workers",
        "-w",
        type=_positive,
        help=f"R: worker processes, ordinals 0..R-1 (default {DEFAULTS.workers})",
    )
    parser.add_argument(
        "--concurrency",
        "-c",
        type=_positive,
        help=f"handlers running at once per worker (default {DEFAULTS.concurrency})",
    )
    parser.add_argument("--runs", "-r", type=_positive, help=f"runs (default {DEFAULTS.runs})")
    parser.add_argument(
        "--warmup",
        type=_non_negative,
        help=f"untimed jobs submitted first, at the same rate (default {DEFAULTS.warmup})",
    )
    parser.add_argument(
        "--shards",
        type=int_list,
        help=(
            "shards of the pool, comma-separated values (default "
            f"{','.join(map(str, DEFAULTS.shards))})"
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke configuration: N={QUICK.jobs}, runs={QUICK.runs}, warmup={QUICK.warmup}",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else DEFAULTS
    cfg = Config(
        jobs=args.jobs or preset.jobs,
        rate=args.rate or preset.rate,
        workers=args.workers or preset.workers,
        concurrency=args.concurrency or preset.concurrency,
        runs=args.runs or preset.runs,
        warmup=preset.warmup if args.warmup is None else args.warmup,
        shards=args.shards or preset.shards,
    )
    return cfg, args


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def _main(admin_dsn: str, cfg: Config, as_json: bool, started: float) -> None:
    load = {"start": host_load()}
    info = await server_info(admin_dsn)
    _log(" | ".join(line.strip() for line in info.header_lines()[:3]))
    summaries = [summarize(scenario) for scenario in await run_all(admin_dsn, cfg, _log)]
    config = {"runs": cfg.runs, "warmup": cfg.warmup}
    elapsed = time.perf_counter() - started
    load["end"] = host_load()
    if as_json:
        for summary in summaries:
            summary["verdict"] = _verdict(summary)
        print_json("latency", info, config, summaries, elapsed=elapsed, load=load)
    else:
        title = "jobpool submit->start latency (idle workers, steady rate)"
        table = columns(summaries)
        print_table(title, info, config, summaries, table, elapsed=elapsed, load=load)
        for summary in summaries:
            print(f"S={summary['params']['shards']}: {_verdict(summary)}")


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    started = time.perf_counter()
    with bench_server() as admin_dsn:
        asyncio.run(_main(admin_dsn, cfg, args.json, started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
