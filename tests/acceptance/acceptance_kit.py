"""Real worker processes for the acceptance tests, and the checks they share.

``Fleet`` starts ``python -m jobpool worker`` subprocesses (cwd = repository root,
output to a log file per process), signals them for real (SIGSTOP, SIGCONT, SIGKILL,
SIGTERM) and stamps each signal with the wall clock the handlers also use (see
``handlers.py``). Its ``close()`` kills whatever is still running and prints every
log, which pytest shows for a failed test.

The processes run with exactly the privileges a deployment gives them: a worker
connects as the suite's ``jobpool_worker`` login, ``jobpool ring`` as its
``jobpool_operator`` login (``pg.as_role``). The test's superuser DSN serves only the
test's own side: its client, its checks, and the handlers' ``test_attempts`` table.

Waiting is bounded polling of the database (every 50 ms up to a deadline): tests wait
for conditions, they never assert on elapsed time.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import asyncpg
import pg
from handlers import ATTEMPTS_DSN_ENV

from jobpool.sharding import ordinal_for

REPO_ROOT = Path(__file__).resolve().parents[2]
APP = "tests.acceptance.handlers:registry"
POOL = "emails"
TENANT = "acme"
SHARDS = 16
LEASE_TTL = 2.0
POLL_S = 0.05
PR_SET_PDEATHSIG = 1

T = TypeVar("T")


async def wait_for(probe: Callable[[], Awaitable[T]], *, what: str, timeout: float = 20.0) -> T:
    """Poll ``probe`` every 50 ms until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting ({timeout:.0f} s) for {what}")
        await asyncio.sleep(POLL_S)


# -- worker processes --------------------------------------------------------------


@dataclass
class WorkerProcess:
    """One ``jobpool worker`` subprocess and the signals the test sent it."""

    name: str
    ordinal: int
    incarnation: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    frozen: list[tuple[float, float]] = field(default_factory=list)
    """Wall-clock windows during which the process was surely stopped (SIGSTOP..SIGCONT)."""
    exited_at: float | None = None
    """Wall-clock time by which the process had surely exited (stamped once reaped)."""
    _stopped_at: float | None = None

    @property
    def owner(self) -> str:
        """The lease owner string the worker writes: ordinal plus incarnation."""
        return f"{self.ordinal}:{self.incarnation}"

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def freeze(self) -> None:
        """SIGSTOP; returns once the kernel reports the process stopped."""
        self.popen.send_signal(signal.SIGSTOP)

        async def stopped() -> bool:
            return self._state() in {"T", "t"}

        await wait_for(stopped, what=f"{self.name} to be stopped", timeout=5)
        # Stamped after the stop took effect: the window recorded is inside the real one.
        self._stopped_at = time.time()

    def thaw(self) -> None:
        """SIGCONT; the window recorded ends before the process can run again."""
        assert self._stopped_at is not None, f"{self.name} is not frozen"
        self.frozen.append((self._stopped_at, time.time()))
        self._stopped_at = None
        self.popen.send_signal(signal.SIGCONT)

    async def kill9(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        await self.wait_exit(timeout=10)

    def terminate(self) -> None:
        self.popen.send_signal(signal.SIGTERM)

    async def wait_exit(self, *, timeout: float = 20.0) -> int:
        async def exited() -> bool:
            return self.popen.poll() is not None

        await wait_for(exited, what=f"{self.name} (pid {self.pid}) to exit", timeout=timeout)
        self.exited_at = time.time()
        return self.popen.returncode

    def _state(self) -> str:
        """The process state letter of /proc/PID/stat (``T``: stopped by a signal)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0]


class Fleet:
    """Starts and signals worker processes of the ``emails`` pool; cleans up after."""

    def __init__(self, dsn: str, log_dir: Path) -> None:
        self.dsn = dsn
        """The test's superuser DSN: its own side, never a worker's."""
        self.worker_dsn = pg.as_role(dsn, pg.WORKER)
        self.operator_dsn = pg.as_role(dsn, pg.OPERATOR)
        self.log_dir = log_dir
        self.procs: list[WorkerProcess] = []

    def start(
        self,
        ordinal: int,
        *,
        concurrency: int = 8,
        lease_ttl: float = LEASE_TTL,
        drain_timeout: float = 10.0,
        app: str = APP,
        extra_args: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
    ) -> WorkerProcess:
        """Start ordinal ``ordinal`` (a new incarnation) running the handlers ``app``;
        ``extra_args`` go after the defaults (a repeated option's last value wins)."""
        incarnation = f"inc{ordinal}-{uuid.uuid4().hex[:8]}"
        name = f"worker-{ordinal}#{sum(p.ordinal == ordinal for p in self.procs)}"
        log_path = self.log_dir / f"{name}.log"
        env = {
            **os.environ,
            "POD_UID": incarnation,
            ATTEMPTS_DSN_ENV: self.dsn,
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        # fmt: off
        argv = [
            sys.executable, "-m", "jobpool", "worker",
            "--pool", POOL, "--app", app, "--ordinal", str(ordinal), "--dsn", self.worker_dsn,
            "--lease-ttl", str(lease_ttl), "--concurrency", str(concurrency),
            "--drain-timeout", str(drain_timeout), "--metrics-port", "0",
            "--log-level", "debug", *extra_args,
        ]
        # fmt: on
        with log_path.open("wb") as out:
            popen = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        proc = WorkerProcess(name, ordinal, incarnation, popen, log_path)
        self.procs.append(proc)
        return proc

    async def ring(self, replicas: int) -> None:
        """``jobpool ring --replicas N``, the real command."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "jobpool", "ring", "--pool", POOL,
            "--replicas", str(replicas), "--dsn", self.operator_dsn,
            cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await process.communicate()
        assert process.returncode == 0, f"jobpool ring failed: {output.decode()}"

    def exited_at(self) -> dict[str, float]:
        return {p.incarnation: p.exited_at for p in self.procs if p.exited_at is not None}

    def frozen(self) -> dict[str, list[tuple[float, float]]]:
        return {p.incarnation: p.frozen for p in self.procs if p.frozen}

    def close(self) -> None:
        """Kill every process still running (thawed first), reap it, print every log."""
        for proc in self.procs:
            if proc.alive:
                proc.popen.send_signal(signal.SIGCONT)
                proc.popen.kill()
            proc.popen.wait(timeout=10)
        for proc in self.procs:
            print(f"===== {proc.name} pid {proc.pid} owner {proc.owner} "
                  f"exit {proc.popen.returncode} =====")  # fmt: skip
            print(proc.log())


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL me if the test process dies (Linux), so no
    worker outlives a test run even if pytest itself is killed."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


# -- database state ------------------------------------------------------------------


@dataclass(frozen=True)
class Lease:
    owner: str | None
    ordinal: int | None
    epoch: int
    live: bool


async def leases(conn: asyncpg.Connection) -> dict[int, Lease]:
    rows = await conn.fetch(
        "SELECT shard, owner, ordinal, epoch, expires_at > now() AS live "
        "FROM shard_leases WHERE pool = $1",
        POOL,
    )
    return {r["shard"]: Lease(r["owner"], r["ordinal"], r["epoch"], r["live"]) for r in rows}


async def wait_for_owners(
    conn: asyncpg.Connection, owners: dict[int, str], *, what: str, timeout: float = 20.0
) -> dict[int, Lease]:
    """Wait until every shard in ``owners`` is held, live, by the owner given."""

    async def probe() -> dict[int, Lease] | None:
        held = await leases(conn)
        ok = all(
            s in held and held[s].owner == owner and held[s].live for s, owner in owners.items()
        )
        return held if ok else None

    return await wait_for(probe, what=what, timeout=timeout)


def ring_owners(procs: Iterable[WorkerProcess], replicas: int) -> dict[int, str]:
    """Shard -> lease owner that jump hash over ``replicas`` says, among ``procs``."""
    by_ordinal = {p.ordinal: p.owner for p in procs}
    return {s: by_ordinal[ordinal_for(s, replicas)] for s in range(SHARDS)}


async def wait_all_finished(
    conn: asyncpg.Connection, job_ids: Iterable[object], *, timeout: float = 30.0
) -> dict[object, asyncpg.Record]:
    """Wait until every job has left ``jobs`` for ``job_history``; return their rows."""
    ids = list(job_ids)

    async def probe() -> dict[object, asyncpg.Record] | None:
        rows = await conn.fetch(
            "SELECT id, state, attempts, result, error_history::text FROM job_history "
            "WHERE id = ANY($1::uuid[])",
            ids,
        )
        return {r["id"]: r for r in rows} if len(rows) == len(ids) else None

    async def describe() -> str:
        counts = await conn.fetch(
            "SELECT state, count(*) FROM jobs WHERE pool = $1 GROUP BY state", POOL
        )
        return ", ".join(f"{r['state']}: {r['count']}" for r in counts) or "none"

    try:
        return await wait_for(probe, what=f"{len(ids)} jobs to finish", timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still in jobs: {await describe()}") from None


# -- attempts and the no-concurrent-execution check --------------------------------


@dataclass(frozen=True)
class Attempt:
    id: int
    job_id: object
    attempt: int
    incarnation: str
    pid: int
    started: float
    ended: float | None
    outcome: str | None


async def attempts(conn: asyncpg.Connection) -> list[Attempt]:
    rows = await conn.fetch("SELECT * FROM test_attempts ORDER BY id")
    return [Attempt(**dict(r)) for r in rows]


async def wait_attempts_recorded(
    conn: asyncpg.Connection, fleet: Fleet, *, timeout: float = 10.0
) -> list[Attempt]:
    """Wait until every attempt of a live process has its end written; return all."""
    exited = fleet.exited_at()

    async def probe() -> list[Attempt] | None:
        found = await attempts(conn)
        open_ = [a for a in found if a.ended is None and a.incarnation not in exited]
        return found if not open_ else None

    return await wait_for(probe, what="every attempt's end to be recorded", timeout=timeout)


def interrupted(attempt: Attempt, end: float, frozen: list[tuple[float, float]]) -> bool:
    """Whether the attempt's process was frozen at some point while it ran."""
    return any(attempt.started < thawed and end > stopped for stopped, thawed in frozen)


def attempt_end(attempt: Attempt, exited: dict[str, float]) -> float:
    """When the attempt ended at the latest: its recorded end, else its process's exit."""
    end = attempt.ended if attempt.ended is not None else exited.get(attempt.incarnation)
    assert end is not None, f"{attempt} never ended and its process did not exit"
    return end


def concurrent_runs(
    found: list[Attempt],
    *,
    exited: dict[str, float],
    frozen: dict[str, list[tuple[float, float]]] | None = None,
) -> list[str]:
    """Pairs of attempts of one job that ran at the same time (none, if all is well).

    An attempt's execution lies within ``[started, ended]`` (stamped around the work by
    the handler). One without an end belongs to a process that exited (SIGKILL) before
    writing it: it ran until that process was gone at the latest (``exited``). An
    attempt during which its process was frozen (``frozen`` windows) is *interrupted*:
    a stopped process executes nothing, its lease ran out, its shard went to another
    incarnation that requeued and re-ran the job, and its completion is fenced. Such
    attempts are left out here (the tests check separately that their completion was
    not the accepted one); every other pair of attempts of a job must not overlap.
    """
    frozen = frozen or {}
    runs: dict[object, list[tuple[float, float, Attempt]]] = defaultdict(list)
    for a in found:
        end = attempt_end(a, exited)
        if not interrupted(a, end, frozen.get(a.incarnation, [])):
            runs[a.job_id].append((a.started, end, a))
    problems = []
    for job_id, job_runs in runs.items():
        job_runs.sort(key=lambda run: run[0])
        for i, (start, end, first) in enumerate(job_runs):
            problems += [
                f"job {job_id}: {describe(first, start, end)} overlaps {describe(other, s, e)}"
                for s, e, other in job_runs[i + 1 :]
                if s < end
            ]
    return problems


def describe(attempt: Attempt, start: float, end: float) -> str:
    return (
        f"[{attempt.incarnation} pid {attempt.pid} attempt {attempt.attempt} "
        f"{start:.3f}..{end:.3f} {attempt.outcome or 'no end'}]"
    )


def accepted_problems(
    history: dict[object, asyncpg.Record],
    found: list[Attempt],
    *,
    exclude: Iterable[int] = (),
) -> list[str]:
    """Jobs that did not succeed exactly once, by an attempt that ran to its end.

    ``job_history`` holds one row per job (its primary key): at most one finish was
    accepted. Its ``attempts`` is the number of the attempt whose completion the
    database accepted; the result names the pid that produced it. That attempt must be
    recorded in that pid, not ended ``cancelled`` (its end may be missing only if its
    process was killed right after the handler returned), and must not be one of
    ``exclude`` (attempt row ids, e.g. the interrupted attempts of a frozen process).
    """
    excluded = set(exclude)
    by_key = {(a.job_id, a.attempt, a.pid): a for a in found}
    problems = []
    for job_id, row in history.items():
        if row["state"] != "succeeded":
            problems.append(f"job {job_id} ended {row['state']}, not succeeded")
            continue
        result = json.loads(row["result"])
        accepted = by_key.get((job_id, row["attempts"], result["pid"]))
        if accepted is None or accepted.outcome == "cancelled" or accepted.id in excluded:
            problems.append(
                f"job {job_id}: the accepted completion (attempt {row['attempts']}, "
                f"pid {result['pid']}) is {accepted}"
            )
    return problems


def assert_none(problems: dict[str, list[str]], *, shown: int = 4) -> None:
    """Fail with a summary of every kind of problem found (a few examples of each)."""
    found = {kind: items for kind, items in problems.items() if items}
    if not found:
        return
    lines = []
    for kind, items in found.items():
        lines.append(f"* {kind}: {len(items)}")
        lines += [f"    {item}" for item in items[:shown]]
        if len(items) > shown:
            lines.append(f"    ... and {len(items) - shown} more")
    raise AssertionError("\n".join(lines))
