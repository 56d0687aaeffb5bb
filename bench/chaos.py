"""The chaos soak: a long run of real workers under every fault, judged by the history
checker of the chaos test suite (``tests/chaos``).

A throwaway PostgreSQL of its own (default durability; it is restarted as one of the
faults, so ``JOBPOOL_BENCH_DSN`` is not used), a pool of 16 shards, ``--replicas``
worker processes running the chaos handlers (every attempt recorded), and for
``--minutes`` a steady stream of mixed jobs (``--jobs`` in all: no-ops, short sleeps,
random failures, permanent failures, long jobs, some deduped) with a racing cancel per
batch. Every ``--fault-every`` seconds one fault, in rotation:

* ``kill9``       SIGKILL a random ordinal; its pod restarts at once.
* ``stop-replace`` SIGSTOP an ordinal past the lease TTL, start its replacement, resume
                  the zombie.
* ``stop-resume`` SIGSTOP an ordinal past the lease TTL, nobody replaces it, resume it.
* ``ring``        scale the ring to a random size in 1..6 (StatefulSet-like).
* ``postgres``    stop PostgreSQL for 3 s and start it again.
* ``orphan``      SIGKILL an ordinal and leave it dead until its shards are adopted by
                  the live ordinals (measured: the adoption latency), then restart it.

Then the run settles (every job finished; at most ``--settle`` seconds, and no longer
than a minute without a job finishing) and the checker's verdict is printed with the
figures: jobs by end state, faults by kind, duration, adoption latencies. Exit status
0 when the verdict is clean, 1 otherwise.
Progress goes to stderr; the workers' logs to a temporary directory (printed).

Run from the repository root:
``.venv/bin/python bench/chaos.py --jobs 200000 --minutes 30`` (``--minutes 2
--jobs 5000`` for a quick look).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT, REPO_ROOT / "tests" / "chaos"):
    if str(_path) not in sys.path:  # the chaos suite's modules import each other by name
        sys.path.insert(0, str(_path))

import asyncpg  # noqa: E402
from chaos_fleet import POOL, SHARDS, RestartableServer, restartable_server  # noqa: E402
from chaos_history import check  # noqa: E402
from chaos_load import Chaos, chaos_run, read_history  # noqa: E402

from jobpool.sharding import ordinal_for  # noqa: E402

TICK_S = 0.2
FROZEN_TTLS = 3
OUTAGE_S = 3.0
MAX_RING = 6
STUCK_AFTER_S = 60.0
ADOPTION_TIMEOUT_S = 120.0
STALL_S = 60.0


@dataclass
class Soak:
    chaos: Chaos
    server: RestartableServer
    replicas: int
    rng: random.Random
    faults: Counter[str] = field(default_factory=Counter)
    adoption_s: list[float] = field(default_factory=list)

    @property
    def ttl(self) -> float:
        return self.chaos.fleet.lease_ttl_s

    def heal(self) -> None:
        """What the StatefulSet does: every ordinal of the ring has a running pod."""
        live = self.chaos.fleet.live()
        for ordinal in range(self.replicas):
            if ordinal not in live:
                self.chaos.fleet.start(ordinal)

    def victim(self) -> int:
        """A random ordinal of the ring that has a running pod."""
        live = self.chaos.fleet.live()
        return self.rng.choice([o for o in range(self.replicas) if o in live])

    async def kill9(self) -> None:
        await self.chaos.fleet.live()[self.victim()].kill9()

    async def stop_replace(self) -> None:
        zombie = self.chaos.fleet.live()[self.victim()]
        await zombie.freeze()
        await asyncio.sleep(FROZEN_TTLS * self.ttl)
        self.chaos.fleet.start(zombie.ordinal)
        await asyncio.sleep(self.ttl)
        zombie.thaw()

    async def stop_resume(self) -> None:
        frozen = self.chaos.fleet.live()[self.victim()]
        await frozen.freeze()
        await asyncio.sleep(FROZEN_TTLS * self.ttl)
        frozen.thaw()

    async def ring(self) -> None:
        self.replicas = self.rng.choice([n for n in range(1, MAX_RING + 1) if n != self.replicas])
        await self.chaos.fleet.scale(self.replicas)

    async def postgres(self) -> None:
        self.server.stop()
        await asyncio.sleep(OUTAGE_S)
        self.server.start()
        await self.chaos.reconnect()

    async def orphan(self) -> None:
        """Kill an ordinal (not the only one) and time the adoption of its shards."""
        if self.replicas < 2:
            self.replicas = 2
            await self.chaos.fleet.scale(2)
        victim = self.chaos.fleet.live()[self.victim()]
        shards = [s for s in range(SHARDS) if ordinal_for(s, self.replicas) == victim.ordinal]
        with contextlib.suppress(TimeoutError):  # it holds its shards (timed from then on)
            await asyncio.wait_for(
                _wait_leases(self.chaos.conn, shards, _OWNED_BY, victim.owner), ADOPTION_TIMEOUT_S
            )
        await victim.kill9()
        killed_at = time.monotonic()
        try:
            await asyncio.wait_for(
                _wait_leases(self.chaos.conn, shards, _OWNED_BY_ANOTHER, victim.owner),
                ADOPTION_TIMEOUT_S,
            )
        except TimeoutError:
            say(f"orphan: shards {shards} not adopted within {ADOPTION_TIMEOUT_S:.0f} s")
            self.adoption_s.append(math.inf)
        else:
            self.adoption_s.append(time.monotonic() - killed_at)

    def rotation(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        return [
            ("kill9", self.kill9),
            ("stop-replace", self.stop_replace),
            ("ring", self.ring),
            ("stop-resume", self.stop_resume),
            ("orphan", self.orphan),
            ("postgres", self.postgres),
        ]


_LIVE_LEASES = (
    "SELECT count(*) FROM shard_leases WHERE pool = $1 AND shard = ANY($2::int[]) "
    "AND expires_at > now() AND "
)
_OWNED_BY = _LIVE_LEASES + "owner = $3"
_OWNED_BY_ANOTHER = _LIVE_LEASES + "owner IS NOT NULL AND owner <> $3"


async def _wait_leases(conn: asyncpg.Connection, shards: list[int], query: str, owner: str) -> None:
    """Until ``query`` counts every one of ``shards`` (held by ``owner``, or by another)."""
    while True:
        if await conn.fetchval(query, POOL, shards, owner) == len(shards):
            return
        await asyncio.sleep(0.1)


async def inject_faults(soak: Soak, stop: asyncio.Event, every_s: float) -> None:
    rotation = soak.rotation()
    turn = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        if stop.is_set():
            return
        name, fault = rotation[turn % len(rotation)]
        turn += 1
        say(f"fault: {name}")
        soak.heal()
        try:
            await fault()
        except Exception as exc:  # the driver's own failure: reported, the soak goes on
            say(f"fault {name} could not be injected: {exc!r}")
            soak.faults[f"{name} (not injected)"] += 1
        else:
            soak.faults[name] += 1
        soak.heal()


async def load(soak: Soak, *, jobs: int, seconds: float) -> None:
    """``jobs`` mixed jobs spread evenly over ``seconds``, a cancel with every batch."""
    workload = soak.chaos.workload
    batch = max(1, math.ceil(jobs / seconds * TICK_S))
    start = time.monotonic()
    while len(workload.submitted) < jobs and time.monotonic() - start < seconds:
        await workload.submit(min(batch, jobs - len(workload.submitted)))
        await workload.cancel_one()
        due = start + len(workload.submitted) / jobs * seconds
        await asyncio.sleep(max(0.0, due - time.monotonic()))


async def report_progress(soak: Soak, stop: asyncio.Event) -> None:
    """A line every 10 s, over a connection of its own (the faults use the run's)."""
    started = time.monotonic()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 10)
        with contextlib.suppress(Exception):  # the database may be restarting
            conn = await asyncpg.connect(soak.server.uri)
            try:
                done = await conn.fetchval("SELECT count(*) FROM job_history")
            finally:
                await conn.close()
            say(
                f"{time.monotonic() - started:6.0f} s: {len(soak.chaos.workload.submitted)} "
                f"submitted, {done} finished, ring {soak.replicas}, faults {dict(soak.faults)}"
            )


async def soak_run(
    args: argparse.Namespace, server: RestartableServer, log_dir: Path
) -> tuple[bool, str]:
    """The whole soak; returns whether the verdict is clean, and the report."""
    await server.migrate()
    # The fleet prints every worker's log when it closes: into a file, not the report.
    with (log_dir / "workers.log").open("w") as logs, contextlib.redirect_stdout(logs):
        async with chaos_run(
            server.uri, log_dir, replicas=args.replicas, concurrency=args.concurrency
        ) as chaos:
            soak = Soak(chaos, server, args.replicas, random.Random(args.seed))
            soak.heal()
            return await _measure(soak, args)


async def _measure(soak: Soak, args: argparse.Namespace) -> tuple[bool, str]:
    started = time.monotonic()
    stop = asyncio.Event()
    background = [
        asyncio.create_task(inject_faults(soak, stop, args.fault_every)),
        asyncio.create_task(report_progress(soak, stop)),
    ]
    try:
        await load(soak, jobs=args.jobs, seconds=args.minutes * 60)
    finally:
        stop.set()
        await asyncio.gather(*background)
    loaded_s = time.monotonic() - started
    soak.heal()
    say("load done; settling")
    await drain(soak.chaos.conn, timeout=args.settle)
    history = await read_history(soak.chaos.conn, soak.chaos.fleet, soak.chaos.workload)
    verdict = check(history, stuck_after_s=STUCK_AFTER_S)
    total_s = time.monotonic() - started
    adoption = ", ".join(f"{s:.1f}" for s in soak.adoption_s) or "none"
    report = (
        f"{verdict.render()}\n"
        f"jobs {len(soak.chaos.workload.ids())}, load {loaded_s:.0f} s, total {total_s:.0f} s, "
        f"faults {dict(soak.faults)}, adoption latency s [{adoption}] "
        f"(grace {soak.chaos.fleet.orphan_grace_s} s + 2 x TTL {soak.ttl} s)"
    )
    return verdict.ok and verdict.figures["unfinished"] == 0, report


async def drain(conn: asyncpg.Connection, *, timeout: float) -> None:
    """Wait while the backlog drains: until ``jobs`` is empty, ``timeout`` seconds pass,
    or a whole ``STALL_S`` passes with no job finishing (what is left is then judged by
    the checker: stuck or not)."""
    deadline = time.monotonic() + timeout
    left, last_change = None, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - last_change < STALL_S:
        now_left = await conn.fetchval("SELECT count(*) FROM jobs WHERE pool = $1", POOL)
        if now_left == 0:
            return
        if now_left != left:
            left, last_change = now_left, time.monotonic()
            say(f"settling: {left} unfinished")
        await asyncio.sleep(1.0)


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200_000, help="jobs in all")
    parser.add_argument("--minutes", type=float, default=30.0, help="how long the load lasts")
    parser.add_argument("--replicas", type=int, default=4, help="ordinals at the start")
    parser.add_argument("--concurrency", type=int, default=16, help="handlers per worker")
    parser.add_argument("--fault-every", type=float, default=20.0, help="seconds between faults")
    parser.add_argument("--settle", type=float, default=1800.0, help="longest wait at the end")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="jobpool-chaos-soak-"))
    say(f"worker logs: {log_dir}")
    with restartable_server() as server:
        ok, report = asyncio.run(soak_run(args, server, log_dir))
    print(report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
