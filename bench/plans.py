"""Work per claim and per completion, by shards and tenants: Postgres' own accounting.

Times nothing that the host's load could skew: for each (shards S, tenants T) a fresh
database gets a pool of S shards, all leased to one owner, and a backlog of B due
no-op jobs (``INSERT ... SELECT``, spread round-robin over the shards, each shard's
jobs over the tenants), then ``VACUUM (ANALYZE)``. Then the exact statements the
worker sends, as it sends them at the product's default settings (captured with a
query logger while the store functions run):

* the claim of a drain's steady state: one lane (``normal``) wanting a lane's
  prefetch capacity from the shards one claim visits (at most ``SHARDS_PER_CLAIM``),
  and the first claim after a wake-up, which asks all four lanes; for comparison, the
  steady-state claim over every owned shard at once;
* the completion of the jobs one claim got (``job_finish_many``, all succeeded).

Each is run under ``EXPLAIN (ANALYZE, BUFFERS)`` in a transaction that is rolled back,
``--runs`` times; the table shows the medians: shared buffers touched (hit + read),
buffers per job, and the executor's time (server side only: no round trip).

Run from the repository root: ``.venv/bin/python bench/plans.py [--quick] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from bench.common import (
    DSN_ENV,
    POOL,
    Scenario,
    bench_server,
    fmt_rate,
    fresh_database,
    host_load,
    int_list,
    print_json,
    print_table,
    server_info,
    summarize,
)
from jobpool.models import Finish, JobState, Priority
from jobpool.store import execution
from jobpool.store.leases import lease_take
from jobpool.store.queries import QUERIES
from jobpool.worker.dispatcher import SHARDS_PER_CLAIM
from jobpool.worker.settings import WorkerSettings

NAMED = frozenset(QUERIES.values())
OWNER = "0:bench"
LEASE_TTL_S = 3600.0

# Due jobs g = 0..B-1: shard g % S, tenant (g / S) % T, priority normal.
LOAD = """
INSERT INTO jobs (id, pool, tenant, shard, type, priority, state, payload, run_at,
                  created_at)
SELECT gen_random_uuid(), $1, 't' || ((g / $2) % $3), g % $2, 'noop', $4, 'queued', '{}',
       now() - interval '1 hour' + make_interval(secs => g / 1000.0),
       now() - interval '1 hour'
FROM generate_series(0, $5::int - 1) AS g
"""


@dataclass(frozen=True)
class Config:
    shards: tuple[int, ...]
    tenants: tuple[int, ...]
    backlog: int
    runs: int


DEFAULTS = Config(shards=(8, 64, 256), tenants=(1, 10_000), backlog=200_000, runs=5)
QUICK = Config(shards=(8, 256), tenants=(1, 1_000), backlog=20_000, runs=2)


@dataclass(frozen=True)
class Cost:
    buffers: int
    rows: int
    ms: float


async def _statement(
    conn: asyncpg.Connection, call: Callable[[asyncpg.Connection], Awaitable[Any]]
) -> tuple[str, tuple[Any, ...], Any]:
    """The one named statement ``call`` sends (text, arguments) and ``call``'s result;
    run in a transaction that is rolled back."""
    sent: list[tuple[str, tuple[Any, ...]]] = []

    def record(query: Any) -> None:
        sent.append((query.query, tuple(query.args)))

    tx = conn.transaction()
    await tx.start()
    conn.add_query_logger(record)
    try:
        result = await call(conn)
    finally:
        conn.remove_query_logger(record)
        await tx.rollback()
    # The named statement; asyncpg's own type introspection is sent before it.
    [(sql, args)] = [(sql, args) for sql, args in sent if sql in NAMED]
    return sql, args, result


async def _explained(conn: asyncpg.Connection, sql: str, args: tuple[Any, ...]) -> Cost:
    tx = conn.transaction()
    await tx.start()
    try:
        text = await conn.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, *args)
    finally:
        await tx.rollback()
    top = json.loads(text)[0]
    plan = top["Plan"]
    buffers = plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]
    return Cost(buffers, int(plan["Actual Rows"]), top["Execution Time"])


def _claim(lanes: dict[Priority, int], shards: int) -> Callable[[Any], Awaitable[Any]]:
    return lambda conn: execution.job_claim_batch(
        conn, POOL, owner=OWNER, shards=range(shards), lanes=lanes
    )


CLAIMS = {  # name: (every lane?, every shard?)
    "claim": (False, False),
    "claim-4-lanes": (True, False),
    "claim-every-shard": (False, True),
}


def _finish(finishes: list[Finish]) -> Callable[[Any], Awaitable[Any]]:
    return lambda conn: execution.job_finish_many(conn, POOL, owner=OWNER, finishes=finishes)


async def measure(dsn: str, shards: int, runs: int) -> dict[str, list[Cost]]:
    """Costs of the steady-state claim, the all-lanes claim and a completion, per run."""
    capacity = WorkerSettings(dsn=dsn, pool=POOL, ordinal=0).lane_capacity
    visited = min(shards, SHARDS_PER_CLAIM)
    costs: dict[str, list[Cost]] = {name: [] for name in [*CLAIMS, "finish"]}
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(runs):
            for name, (every_lane, every_shard) in CLAIMS.items():
                lanes = dict.fromkeys(Priority if every_lane else [Priority.NORMAL], capacity)
                claim = _claim(lanes, shards if every_shard else visited)
                sql, args, _ = await _statement(conn, claim)
                costs[name].append(await _explained(conn, sql, args))
            async with conn.transaction():  # claimed for real, so they can be finished
                claimed = await _claim({Priority.NORMAL: capacity}, visited)(conn)
            finishes = [Finish(job_id=job.id, state=JobState.SUCCEEDED) for job in claimed]
            sql, args, _ = await _statement(conn, _finish(finishes))
            costs["finish"].append(await _explained(conn, sql, args))
            await execution.job_release_many(
                conn, POOL, owner=OWNER, job_ids=[job.id for job in claimed]
            )
    finally:
        await conn.close()
    return costs


async def run_case(
    admin_dsn: str, cfg: Config, *, shards: int, tenants: int, log: Callable[[str], None]
) -> list[Scenario]:
    async with fresh_database(admin_dsn, shards=shards) as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await lease_take(
                conn, POOL, owner=OWNER, ordinal=0, shards=range(shards), ttl_s=LEASE_TTL_S
            )
            await conn.execute(LOAD, POOL, shards, tenants, Priority.NORMAL.rank, cfg.backlog)
            await conn.execute("VACUUM (ANALYZE) jobs")
        finally:
            await conn.close()
        costs = await measure(dsn, shards, cfg.runs)
    scenarios = []
    for name, runs in costs.items():
        scenario = Scenario(
            name, {"shards": shards, "tenants": tenants, "backlog": cfg.backlog}, unit="buffers"
        )
        for cost in runs:
            per_job = cost.buffers / max(cost.rows, 1)
            scenario.add(cost.buffers, rows=cost.rows, ms=cost.ms, buffers_per_job=per_job)
        scenarios.append(scenario)
        last = runs[-1]
        log(
            f"S={shards:>4} T={tenants:>6} {name:<14} {last.buffers:>7} buffers, "
            f"{last.rows:>4} rows, {last.ms:7.2f} ms"
        )
    return scenarios


# -- command line -------------------------------------------------------------------


def _extra(name: str, fmt: str) -> Callable[[dict[str, Any]], str]:
    return lambda s: format(s["extra"][name]["median"], fmt)


COLUMNS = [
    ("statement", lambda s: s["name"]),
    ("shards", lambda s: str(s["params"]["shards"])),
    ("tenants", lambda s: f"{s['params']['tenants']:,}"),
    ("buffers", lambda s: fmt_rate(s["median"])),
    ("rows", _extra("rows", ".0f")),
    ("buffers/job", _extra("buffers_per_job", ".1f")),
    ("executor ms", _extra("ms", ".2f")),
]


def parse_args(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="bench/plans.py",
        description=(
            "Shared buffers (and executor time) of the worker's claim and completion "
            "statements under EXPLAIN (ANALYZE, BUFFERS), by shards and tenants, at a "
            "large backlog: the claim's cost should not grow with either."
        ),
        epilog=(
            f"Server: ${DSN_ENV} (a superuser URI) when set, else a throwaway embedded "
            "Postgres. Each (shards, tenants) case uses a fresh database. Progress goes "
            "to stderr, results to stdout."
        ),
    )
    parser.add_argument(
        "--shards",
        type=int_list,
        help=f"shard counts, comma-separated (default {','.join(map(str, DEFAULTS.shards))})",
    )
    parser.add_argument(
        "--tenants",
        type=int_list,
        help=f"tenant counts, comma-separated (default {','.join(map(str, DEFAULTS.tenants))})",
    )
    parser.add_argument(
        "--backlog", type=int, help=f"due jobs queued (default {DEFAULTS.backlog:,})"
    )
    parser.add_argument("--runs", "-r", type=int, help=f"runs (default {DEFAULTS.runs})")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke configuration: shards {QUICK.shards}, tenants {QUICK.tenants}, "
        f"backlog {QUICK.backlog:,}, runs {QUICK.runs}",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else DEFAULTS
    cfg = Config(
        shards=args.shards or preset.shards,
        tenants=args.tenants or preset.tenants,
        backlog=args.backlog or preset.backlog,
        runs=args.runs or preset.runs,
    )
    return cfg, args


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def _main(admin_dsn: str, cfg: Config, as_json: bool, started: float) -> None:
    load = {"start": host_load()}
    info = await server_info(admin_dsn)
    scenarios: list[Scenario] = []
    for shards in cfg.shards:
        for tenants in cfg.tenants:
            scenarios += await run_case(admin_dsn, cfg, shards=shards, tenants=tenants, log=_log)
    summaries = [summarize(s) for s in sorted(scenarios, key=lambda s: s.name)]
    elapsed = time.perf_counter() - started
    load["end"] = host_load()
    config = {"backlog": cfg.backlog, "runs": cfg.runs}
    if as_json:
        print_json("plans", info, config, summaries, elapsed=elapsed, load=load)
    else:
        title = "jobpool claim and completion cost (EXPLAIN ANALYZE BUFFERS, medians)"
        print_table(title, info, config, summaries, COLUMNS, elapsed=elapsed, load=load)


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    started = time.perf_counter()
    with bench_server() as admin_dsn:
        asyncio.run(_main(admin_dsn, cfg, args.json, started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
