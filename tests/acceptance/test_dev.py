"""``jobpool dev`` end to end: the real supervisor, real worker processes, real Postgres.

Each test runs ``python -m jobpool dev`` as a subprocess with stdout a pipe (so it
prints ``status …`` lines instead of the live table) and reads its output as it comes.
Every wait polls with a deadline; nothing asserts on time. The environment of every
process started here has no ``JOBPOOL_*`` variable and its own ``XDG_STATE_HOME``, so
the developer's own ``jobpool dev`` (if one runs) is never seen nor disturbed.

The fixtures are in this file (``tests/conftest.py`` provides ``dsn``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from jobpool import Client
from jobpool.cli.common import CliError, ExitCode, Target, require_dsn
from jobpool.dev.embedded import (
    PGDATA,
    STATE_FILE,
    DevState,
    lock_data_dir,
    stop_server,
    write_state,
)
from jobpool.errors import JobpoolError
from jobpool.models import JobState
from jobpool.store.workers import worker_list

REPO = Path(__file__).resolve().parents[2]
APP = "examples.handlers:registry"
WAIT_S = 45.0
STATUS = re.compile(
    r"^status pool=(?P<pool>\S+) ring=(?P<ring>\d+) workers=(?P<workers>\d+) up=(?P<up>\d+)"
)
WORKER = re.compile(r"\| w(?P<ordinal>\d+) pid=(?P<pid>\d+|-) (?P<state>\S+)")


@dataclass(frozen=True)
class Status:
    """One parsed ``status …`` line of ``jobpool dev``."""

    line: str
    ring: int
    workers: int
    up: int
    pids: dict[int, int]  # ordinal -> pid, of the workers that have a process
    states: dict[int, str]


def parse_status(line: str) -> Status | None:
    match = STATUS.match(line)
    if match is None:
        return None
    found = list(WORKER.finditer(line))
    return Status(
        line=line,
        ring=int(match["ring"]),
        workers=int(match["workers"]),
        up=int(match["up"]),
        pids={int(m["ordinal"]): int(m["pid"]) for m in found if m["pid"] != "-"},
        states={int(m["ordinal"]): m["state"] for m in found},
    )


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBPOOL_")}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    env.update(extra)
    return env


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def postgres_pids(pgdata: Path) -> list[int]:
    """Processes whose command line names ``pgdata`` (the postmaster of that directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if str(pgdata).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


class Dev:
    """A running ``python -m jobpool dev`` and everything it printed so far."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self.pids: set[int] = set()  # every worker pid any status line showed
        self._new_line = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, *args: str, env: dict[str, str]) -> Dev:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "jobpool", "dev", "--app", APP, *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )  # fmt: skip
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            status = parse_status(line)
            if status is not None:
                self.pids |= set(status.pids.values())
            self._new_line.set()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    async def wait_for_line(self, predicate: Callable[[str], bool], what: str) -> str:
        """The first line (printed so far or later) for which ``predicate`` holds."""
        deadline = time.monotonic() + WAIT_S
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if predicate(line):
                    return line
            seen = len(self.lines)
            left = deadline - time.monotonic()
            if left <= 0 or self._reader.done():
                pytest.fail(f"jobpool dev never printed {what}; its output:\n{self.tail()}")
            self._new_line.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_line.wait(), left)

    async def wait_for_status(self, predicate: Callable[[Status], bool], what: str) -> Status:
        line = await self.wait_for_line(
            lambda text: (s := parse_status(text)) is not None and predicate(s), what
        )
        status = parse_status(line)
        assert status is not None
        return status

    async def stop(self, sig: signal.Signals = signal.SIGINT) -> int:
        self.process.send_signal(sig)
        try:
            code = await asyncio.wait_for(self.process.wait(), WAIT_S)
        except TimeoutError:
            pytest.fail(f"jobpool dev did not exit after {sig.name}; its output:\n{self.tail()}")
        await asyncio.wait_for(self._reader, 5)
        return code

    async def kill(self) -> None:
        """Cleanup after a failed test: the supervisor and every worker it showed."""
        for pid in [self.process.pid, *self.pids]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await self.process.wait()
        self._reader.cancel()

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.lines[-lines:])


@contextlib.asynccontextmanager
async def running_dev(*args: str, env: dict[str, str]) -> AsyncIterator[Dev]:
    dev = await Dev.start(*args, env=env)
    try:
        yield dev
    finally:
        if dev.process.returncode is None:
            await dev.kill()


async def cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run ``python -m jobpool ARGS``; its exit code, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jobpool", *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=REPO,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), WAIT_S)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


# -- the tests -----------------------------------------------------------------------------


async def test_dev_runs_the_ring_follows_it_restarts_and_stops_cleanly(
    dsn: str, tmp_path: Path
) -> None:
    env = clean_env(tmp_path)
    data_dir = tmp_path / "dev"
    args = ["--replicas", "2", "--dsn", dsn, "--pool", "devtest", "--data-dir", str(data_dir)]
    async with running_dev(*args, env=env) as dev:
        await dev.wait_for_status(lambda s: s.workers == 2 and s.up == 2, "2 workers up")
        state = json.loads((data_dir / STATE_FILE).read_text())
        assert (state["dsn"], state["pool"], state["pid"]) == (dsn, "devtest", dev.process.pid)
        assert "export JOBPOOL_DSN=" in dev.output

        async with Client(dsn, pool="devtest", tenant="acme") as jp:
            jobs = await jp.submit(
                "send_email", [{"to": f"user{i}@example.com"} for i in range(20)]
            )
            results = [await jp.result(job.id, timeout=WAIT_S) for job in jobs]
        assert [r["sent_to"] for r in results] == [f"user{i}@example.com" for i in range(20)]

        code, out, err = await cli(
            "ring", "--pool", "devtest", "--replicas", "3", "--dsn", dsn, env=env
        )
        assert code == 0, err
        assert "3 replicas" in out
        three = await dev.wait_for_status(
            lambda s: s.ring == 3 and s.workers == 3 and s.up == 3, "3 workers up"
        )
        assert sorted(three.pids) == [0, 1, 2]
        assert all(alive(pid) for pid in three.pids.values())
        conn = await asyncpg.connect(dsn)
        try:
            rows = await worker_list(conn, "devtest")
        finally:
            await conn.close()
        assert [row.ordinal for row in rows] == [0, 1, 2]

        # A worker that dies is restarted (same ordinal, new process).
        os.kill(three.pids[1], signal.SIGKILL)
        await dev.wait_for_line(lambda line: "exited unexpectedly" in line, "the restart notice")
        again = await dev.wait_for_status(
            lambda s: s.up == 3 and s.pids.get(1) not in (None, three.pids[1]), "worker 1 back"
        )
        assert again.pids[0] == three.pids[0]

        code = await dev.stop(signal.SIGINT)
        assert code == 0, dev.tail()
        assert "all workers stopped" in dev.output
        assert len(dev.pids) == 4
        assert not [pid for pid in dev.pids if alive(pid)]
        assert not (data_dir / STATE_FILE).exists()


@pytest.fixture
def embedded_data_dir() -> Iterator[Path]:
    """A data directory outside pytest's ``tmp_path``.

    As root, the server runs as the system user ``embedded_postgres``, which must be
    able to traverse every parent of its data directory; pytest resets
    ``/tmp/pytest-of-<user>`` to mode 0700 whenever a session starts (another one may
    start while this test runs), so the directory goes straight under the system's
    temporary directory, as ``tests/pg.py`` does.
    """
    path = Path(tempfile.mkdtemp(prefix="jobpool-dev-test-"))
    try:
        yield path / "dev"
    finally:
        stop_server(path / "dev" / PGDATA)  # a no-op unless a test step failed half-way
        shutil.rmtree(path, ignore_errors=True)


async def test_dev_embedded_server_keeps_its_data_and_is_stopped(
    tmp_path: Path, embedded_data_dir: Path
) -> None:
    env = clean_env(tmp_path)
    data_dir = embedded_data_dir
    pgdata = (data_dir / PGDATA).resolve()
    args = ["--replicas", "1", "--pool", "devembed", "--data-dir", str(data_dir)]
    async with running_dev(*args, env=env) as dev:
        await dev.wait_for_status(lambda s: s.up == 1, "1 worker up")
        state = json.loads((data_dir / STATE_FILE).read_text())
        assert state["embedded"] is True
        assert state["pid"] == dev.process.pid
        assert postgres_pids(pgdata)
        async with Client(state["dsn"], pool="devembed", tenant="acme") as jp:
            job = await jp.submit("send_email", {"to": "ada@example.com"})
            result = await jp.result(job.id, timeout=WAIT_S)
        assert result["sent_to"] == "ada@example.com"
        assert await dev.stop(signal.SIGINT) == 0, dev.tail()
        assert "embedded PostgreSQL stopped" in dev.output
    assert not postgres_pids(pgdata)
    assert not (data_dir / STATE_FILE).exists()

    # Second run: the same cluster starts again (no initdb) and still has the job.
    async with running_dev(*args, env=env) as dev:
        await dev.wait_for_status(lambda s: s.up == 1, "1 worker up, second run")
        assert "first run" not in dev.output
        async with Client(state["dsn"], pool="devembed", tenant="acme") as jp:
            status = await jp.status(job.id)
        assert status.state is JobState.SUCCEEDED
        assert await dev.stop(signal.SIGTERM) == 0, dev.tail()
    assert not postgres_pids(pgdata)


async def test_other_commands_find_the_dev_database(dsn: str, tmp_path: Path) -> None:
    env = clean_env(tmp_path)  # no JOBPOOL_DSN, no JOBPOOL_POOL; dev uses the default dir
    async with running_dev("--replicas", "1", "--dsn", dsn, "--pool", "devfind", env=env) as dev:
        await dev.wait_for_status(lambda s: s.up == 1, "1 worker up")
        assert (tmp_path / "state" / "jobpool" / "dev" / STATE_FILE).exists()

        code, out, err = await cli("submit", "send_email", '{"to": "grace@example.com"}', env=env)
        assert code == 0, err
        assert "using the jobpool dev database at" in err
        job_id = out.split()[0]
        code, out, err = await cli("result", job_id, "--timeout", "30", env=env)
        assert code == 0, err
        assert "grace@example.com" in out

        assert await dev.stop(signal.SIGINT) == 0, dev.tail()
    code, out, err = await cli("submit", "send_email", '{"to": "x@example.com"}', env=env)
    assert code == ExitCode.USAGE
    assert "no database given" in err


async def test_a_second_dev_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "dev"
    data_dir.mkdir()
    env = clean_env(tmp_path)
    lock = lock_data_dir(data_dir)  # as a running dev holds it
    assert lock is not None
    try:
        code, _, err = await cli("dev", "--app", APP, "--data-dir", str(data_dir), env=env)
    finally:
        os.close(lock)
    assert code == ExitCode.CONFLICT
    assert f"already runs on {data_dir.resolve()}" in err

    # A state file naming a live process is refused as well (the pid is this test's).
    write_state(DevState("postgresql://x@/db", "p", os.getpid(), True, str(data_dir), 0.0))
    code, _, err = await cli("dev", "--app", APP, "--data-dir", str(data_dir), env=env)
    assert code == ExitCode.CONFLICT
    assert f"a jobpool dev (pid {os.getpid()}) already runs" in err
    assert not (data_dir / PGDATA).exists()


def test_require_dsn_uses_only_a_live_dev(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JOBPOOL_DEV_DIR", str(tmp_path))
    dev_dsn = "postgresql://postgres:@/jobpool?host=/nowhere"
    with pytest.raises(CliError) as missing:
        require_dsn(None)
    assert missing.value.code is ExitCode.USAGE

    write_state(DevState(dev_dsn, "devpool", os.getpid(), True, str(tmp_path), 0.0))
    assert require_dsn(None) == dev_dsn
    assert "using the jobpool dev database at" in capsys.readouterr().err
    assert Target.from_options(None, None, "t") == Target(dev_dsn, "devpool", "t")
    assert Target.from_options(None, "other", "t").pool == "other"
    capsys.readouterr()
    # An explicit DSN wins, silently, and does not borrow the dev pool.
    assert require_dsn("postgresql://me@db/x") == "postgresql://me@db/x"
    assert capsys.readouterr().err == ""
    with pytest.raises(CliError):
        Target.from_options("postgresql://me@db/x", None, "t")

    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    write_state(DevState(dev_dsn, "devpool", finished.pid, True, str(tmp_path), 0.0))
    with pytest.raises(CliError):
        require_dsn(None)


async def test_dev_shows_totals_shards_dlq_and_workers_it_did_not_start(
    dsn: str, tmp_path: Path
) -> None:
    env = clean_env(tmp_path)
    args = ["--replicas", "1", "--dsn", dsn, "--pool", "devview", "--data-dir", str(tmp_path / "d")]
    async with running_dev(*args, env=env) as dev:
        await dev.wait_for_status(lambda s: s.up == 1, "1 worker up")
        # The banner's ring example grows the ring by one: dev then starts a worker.
        assert "jobpool ring --pool devview --replicas 2" in dev.output
        await dev.wait_for_line(
            lambda line: "expired_shards=0 free_shards=0" in line, "every shard with a live owner"
        )

        async with Client(dsn, pool="devview", tenant="acme") as jp:
            done = await jp.submit("send_email", {"to": "ada@example.com"})
            dead = await jp.submit("reject", {"n": 1})
            await jp.result(done.id, timeout=WAIT_S)
            with contextlib.suppress(JobpoolError):
                await jp.result(dead.id, timeout=WAIT_S)
        await dev.wait_for_line(lambda line: " dlq=1 per_min=2 " in line, "the DLQ and throughput")

        # A worker from another terminal, beyond the ring: shown as external, not "gone".
        outsider = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "jobpool", "worker", "--pool", "devview", "--ordinal", "3",
            "--app", APP, "--metrics-port", "0",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env={**env, "JOBPOOL_DSN": dsn},
            cwd=REPO,
        )  # fmt: skip
        try:
            status = await dev.wait_for_status(
                lambda s: s.states.get(3) == "external", "worker 3 shown as external"
            )
            assert status.up == 1
            assert "w3 pid=- external" in status.line
        finally:
            outsider.send_signal(signal.SIGTERM)
            await asyncio.wait_for(outsider.wait(), WAIT_S)
        assert await dev.stop(signal.SIGINT) == 0, dev.tail()


async def test_dev_says_when_jobpool_dsn_overrides_the_embedded_database(tmp_path: Path) -> None:
    socket_dir = tmp_path / "no-server-here"
    env = clean_env(tmp_path, JOBPOOL_DSN=f"postgresql://postgres:pw@/jobpool?host={socket_dir}")
    code, out, err = await cli("dev", "--app", APP, "--data-dir", str(tmp_path / "d"), env=env)
    assert code == ExitCode.UNAVAILABLE
    assert out == ""
    assert err.splitlines() == [
        f"error: cannot connect to the database (postgresql://postgres@/jobpool?host={socket_dir})"
        ": [Errno 2] No such file or directory (JOBPOOL_DSN is set in your environment and "
        "overrides the embedded database: unset it to use the embedded one)"
    ]
