"""``jobpool dlq discard`` and ``jobpool history prune|show`` against a real Postgres:
output, exit codes, one-line errors (see test_cli.py for how the CLI is invoked)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from test_cli import assert_one_line_error, invoke, job_args
from worker_helpers import FakeWorker

from jobpool import Client
from jobpool.cli.ages import format_age, parse_age
from jobpool.cli.common import ExitCode
from jobpool.models import DlqId, Pool
from jobpool.store.history import history_maintain, history_retention_get


async def _dead_letters(
    client: Client, conn: asyncpg.Connection, count: int, job_type: str = "send_email"
) -> list[DlqId]:
    worker = await FakeWorker(conn, pool=client.pool_name, owner=f"w-{job_type}").start()
    jobs = await client.submit(job_type, [{"n": n} for n in range(count)])
    await worker.claim_all(jobs)
    await worker.dead(jobs)
    await worker.conn.execute("UPDATE shard_leases SET owner = NULL")  # the next one takes them
    rows = await conn.fetch(
        "SELECT id FROM job_dlq WHERE original_job_id = ANY($1::uuid[]) ORDER BY id",
        [job.id for job in jobs],
    )
    return [DlqId(row["id"]) for row in rows]


async def _pending(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT count(*) FROM job_dlq WHERE replayed_at IS NULL")


@pytest.mark.parametrize(
    ("text", "age"),
    [("7d", timedelta(days=7)), ("36h", timedelta(hours=36)), ("14", timedelta(days=14)),
     ("90m", timedelta(minutes=90)), ("2w", timedelta(weeks=2)), ("30s", timedelta(seconds=30))],
)  # fmt: skip
def test_ages_read_and_print_alike(text: str, age: timedelta) -> None:
    assert parse_age(text) == age
    assert parse_age(format_age(age)) == age


async def test_discard_one_entry(dsn: str, client: Client, conn: asyncpg.Connection) -> None:
    [entry_id] = await _dead_letters(client, conn, 1)

    done = await invoke("dlq", "discard", str(entry_id), *job_args(dsn))

    assert done.exit_code == 0, done.output
    assert done.stdout.startswith(f"discarded entry {entry_id} (send_email, job ")
    again = await invoke("dlq", "discard", str(entry_id), *job_args(dsn))
    assert_one_line_error(again, ExitCode.NOT_FOUND, f"no DLQ entry {entry_id}")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((), "name what to discard"),
        (("7", "--type", "send_email"), "not both"),
        (("--older-than", "soon"), "'soon' is not an age"),
        (("abc",), "invalid dead-letter entry id"),
    ],
)
async def test_discard_usage_errors(dsn: str, pool: Pool, args: tuple[str, ...], fragment: str):
    result = await invoke("dlq", "discard", *args, *job_args(dsn))

    assert_one_line_error(result, ExitCode.USAGE, fragment)


async def test_discard_by_filter_asks_first(
    dsn: str, client: Client, conn: asyncpg.Connection
) -> None:
    await _dead_letters(client, conn, 2)
    await _dead_letters(client, conn, 1, job_type="report")
    args = ("dlq", "discard", "--type", "send_email", "--older-than", "0s", *job_args(dsn))

    unanswered = await invoke(*args)
    assert unanswered.exit_code == ExitCode.FAILED
    assert unanswered.stderr.splitlines()[-1].startswith("error: nothing discarded")
    assert "Traceback" not in unanswered.output
    declined = await invoke(*args, stdin="n\n")
    assert declined.exit_code == ExitCode.FAILED
    assert await _pending(conn) == 3

    confirmed = await invoke(*args, stdin="y\n")

    assert confirmed.exit_code == 0, confirmed.output
    assert "discard the pending dead-letter entries of type 'send_email'" in confirmed.stderr
    # (CliRunner echoes the typed answer to stdout, as a terminal would show it.)
    assert confirmed.stdout.endswith("discarded 2 pending entries\n")
    assert await _pending(conn) == 1


async def test_discard_by_age_with_yes(dsn: str, client: Client, conn: asyncpg.Connection):
    old = await _dead_letters(client, conn, 2)
    await _dead_letters(client, conn, 1)
    await conn.execute(
        "UPDATE job_dlq SET dlq_at = now() - interval '8 days' WHERE id = ANY($1)", old
    )

    result = await invoke("dlq", "discard", "--older-than", "7d", "--yes", *job_args(dsn))

    assert result.exit_code == 0, result.output
    assert result.stdout == "discarded 2 pending entries\n"
    assert await _pending(conn) == 1


async def test_history_prune_sets_the_retention_and_reports(
    dsn: str, pool: Pool, conn: asyncpg.Connection
) -> None:
    args = ("--older-than", "3d", "--dsn", dsn, "--pool", "emails")

    result = await invoke("history", "prune", *args)

    assert result.exit_code == 0, result.output
    first, second = result.stdout.splitlines()
    assert first.startswith("created ")
    assert "dropped 0 day(s) past retention" in first
    assert second == "pool 'emails' keeps finished jobs for 3d"
    assert (await history_retention_get(conn, "emails")).retention == timedelta(days=3)


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (("--older-than", "3d"), ExitCode.USAGE, "pass --pool"),
        (("--older-than", "10m", "--pool", "emails"), ExitCode.USAGE, "from 1 hour to 3650 days"),
        (("--older-than", "3d", "--pool", "nope"), ExitCode.NOT_FOUND, "'nope' does not exist"),
    ],
)
async def test_history_prune_errors(dsn: str, pool: Pool, args: tuple[str, ...], code, fragment):
    result = await invoke("history", "prune", *args, "--dsn", dsn)

    assert_one_line_error(result, code, fragment)


async def test_history_show_lists_the_partitions(dsn: str, pool: Pool) -> None:
    result = await invoke("history", "show", "--dsn", dsn, "--pool", "emails")

    assert result.exit_code == 0, result.output
    tomorrow = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y%m%d")
    assert f"job_history_{tomorrow}" in result.stdout
    assert "job_history_until_" in result.stdout
    assert "pool 'emails' keeps finished jobs for 7d" in result.stdout


async def test_status_of_a_job_past_retention_says_its_history_was_dropped(
    dsn: str, client: Client, conn: asyncpg.Connection
) -> None:
    worker = await FakeWorker(conn).start()
    [job] = await client.submit("send_email", [{"n": 1}])
    await worker.claim_all([job])
    await worker.succeed([job])
    await history_maintain(conn, at=datetime.now(UTC) + timedelta(days=9))

    result = await invoke("status", str(job.id), *job_args(dsn))

    assert_one_line_error(result, ExitCode.NOT_FOUND, f"job {job.id} is not in the history")
    assert "were dropped (the pool keeps finished jobs for 7 days)" in result.stderr
