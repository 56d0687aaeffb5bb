"""``examples/submit.py`` against a real Postgres and a real worker process serving
``examples/handlers.py``: the local version of the kind run's submit step (no marker:
it runs everywhere the test Postgres does)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUBMIT = ROOT / "examples" / "submit.py"
POOL = "examples"
COUNT = 40


async def run(*args: str, env: dict[str, str], timeout: float = 90.0) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def child_env(dsn: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBPOOL_")}
    if dsn is not None:
        env["JOBPOOL_DSN"] = dsn
    return env


async def test_submit_waits_for_every_result(dsn: str, tmp_path: Path) -> None:
    env = child_env(dsn)
    jobpool = (sys.executable, "-m", "jobpool")
    code, out, err = await run(*jobpool, "pool", "create", POOL, "--shards", "8", env=env)
    assert code == 0, err
    log = tmp_path / "worker.log"
    with log.open("w") as output:
        worker = await asyncio.create_subprocess_exec(
            *jobpool,
            "worker",
            "--pool",
            POOL,
            "--app",
            "examples.handlers:registry",
            "--ordinal",
            "0",
            "--metrics-port",
            "0",
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        code, out, err = await run(
            sys.executable,
            str(SUBMIT),
            "--pool",
            POOL,
            "--count",
            str(COUNT),
            "--timeout",
            "60",
            env=env,
        )
    finally:
        worker.terminate()
        await asyncio.wait_for(worker.wait(), 30)
    assert code == 0, f"{out}\n{err}\nworker log:\n{log.read_text()}"
    assert f"submitted {COUNT} jobs to pool {POOL!r} in one batch" in out
    assert f"{COUNT} succeeded, 0 failed, 0 cancelled, 0 errors" in out
    assert "'sent_to': 'user" in out


async def test_submit_to_a_missing_pool_is_an_error(dsn: str) -> None:
    code, _, err = await run(
        sys.executable, str(SUBMIT), "--pool", "nowhere", "--count", "1", env=child_env(dsn)
    )
    assert code == 2
    assert err.startswith("error: ")
    assert "nowhere" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [((), "no database: pass --dsn or set JOBPOOL_DSN"), (("--count", "0"), "--count")],
)
async def test_submit_usage_errors(args: tuple[str, ...], message: str) -> None:
    env = child_env(None if not args else "postgresql://unused@localhost/x")
    code, _, err = await run(sys.executable, str(SUBMIT), *args, env=env)
    assert code == 2
    assert message in err
