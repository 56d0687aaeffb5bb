"""``jobpool pause`` / ``jobpool resume``: the pool's pause written and printed, one-line
errors with their exit codes, and ``jobpool status`` of a parked job saying so."""

from __future__ import annotations

import json

import asyncpg
import pg
from test_cli import assert_one_line_error, invoke, job_args, submit_job

from jobpool.cli.common import ExitCode
from jobpool.models import Pool, PoolPause
from jobpool.store.pools import pool_get


async def test_pause_and_resume_a_pool_and_its_types(
    dsn: str, pool: Pool, conn: asyncpg.Connection
) -> None:
    paused = await invoke("pause", "--pool", "emails", "--dsn", dsn)
    assert paused.exit_code == 0, paused.output
    assert paused.stdout == "pool emails: paused\n"

    typed = await invoke(
        "pause", "-p", "emails", "--type", "report", "--type", "export", "--dsn", dsn
    )
    assert typed.stdout == "pool emails: paused, types paused: export, report\n"
    assert (await pool_get(conn, "emails")).pause == PoolPause(
        paused=True, types=frozenset({"export", "report"})
    )

    resumed = await invoke("resume", "--pool", "emails", "--dsn", dsn, "--json")
    assert json.loads(resumed.stdout) == {
        "pool": "emails",
        "paused": False,
        "paused_types": ["export", "report"],
        "unparked": 0,
    }

    job_id = await submit_job(dsn)
    await conn.execute(
        "UPDATE jobs SET state = 'paused', type = 'report' WHERE id = $1::uuid", job_id
    )
    status = await invoke("status", job_id, *job_args(dsn))
    assert "paused (parked: type report is paused in pool emails;" in status.stdout
    assert "`jobpool resume --pool emails --type report` runs it" in status.stdout

    back = await invoke("resume", "--pool", "emails", "--type", "report", "--dsn", dsn)
    assert back.stdout == "pool emails: active, types paused: export (1 parked job queued again)\n"
    assert await conn.fetchval("SELECT state FROM jobs WHERE id = $1::uuid", job_id) == "queued"


async def test_pause_errors_are_one_line(dsn: str, pool: Pool) -> None:
    assert_one_line_error(
        await invoke("pause", "--pool", "nope", "--dsn", dsn), ExitCode.NOT_FOUND, "pool 'nope'"
    )
    assert_one_line_error(
        await invoke("pause", "--pool", "emails", "--type", "no spaces", "--dsn", dsn),
        ExitCode.USAGE,
        "invalid job type 'no spaces'",
    )
    assert_one_line_error(
        await invoke("resume", "--pool", "emails", "--dsn", pg.as_role(dsn, pg.CLIENT)),
        ExitCode.FAILED,
        "may not pause or resume pools",
    )
    assert_one_line_error(await invoke("pause", "--dsn", dsn), ExitCode.USAGE, "no pool given")


async def test_pause_help_names_the_type_option() -> None:
    for command in ("pause", "resume"):
        result = await invoke(command, "--help")
        assert result.exit_code == 0
        assert "--type" in result.stdout
        assert "jobpool_operator" in result.stdout
