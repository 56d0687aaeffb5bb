"""The ``jobpool`` CLI against a real Postgres (see tests/conftest.py).

The CLI runs its own event loop (``asyncio.run``), so database tests invoke it in a
worker thread (``asyncio.to_thread``) while the fixtures live on the session loop.
Every test checks both the output and the exit code.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import typer
from typer.testing import CliRunner, Result

from jobpool.cli import app
from jobpool.cli import submit as submit_module
from jobpool.cli.common import ExitCode, scrub
from jobpool.models import Pool
from jobpool.store.migrate import MIGRATIONS_DIR
from jobpool.store.workers import WorkerCounters, worker_heartbeat

REPO_ROOT = Path(__file__).resolve().parents[2]
TENANT = "acme"
UNREACHABLE_DSN = "postgresql://u:secret@127.0.0.1:1/db"
ALL_MIGRATIONS = [path.name for path in sorted(MIGRATIONS_DIR.glob("*.sql"))]

runner = CliRunner(env={"JOBPOOL_DSN": None, "JOBPOOL_POOL": None, "JOBPOOL_TENANT": None})


def invoke_sync(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(app, list(args), input=stdin, env=env)


async def invoke(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> Result:
    """Run the CLI in a thread: it starts its own event loop."""
    return await asyncio.to_thread(invoke_sync, *args, stdin=stdin, env=env)


def job_args(dsn: str, pool: str = "emails", tenant: str = TENANT) -> list[str]:
    return ["--dsn", dsn, "--pool", pool, "--tenant", tenant]


def assert_one_line_error(result: Result, code: ExitCode, *fragments: str) -> None:
    """A failure: the exit code, one ``error:`` line on stderr, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]


async def submit_job(dsn: str, *extra: str) -> str:
    result = await invoke(
        "submit", "email.send", '{"to": "ann@example.com"}', *job_args(dsn), *extra
    )
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


async def count_jobs(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT count(*) FROM jobs")


# -- help --------------------------------------------------------------------------

COMMANDS = [
    [],
    ["submit"],
    ["status"],
    ["cancel"],
    ["result"],
    ["migrate"],
    ["pool"],
    ["pool", "create"],
    ["pool", "show"],
    ["dlq"],
    ["dlq", "list"],
    ["dlq", "show"],
    ["dlq", "replay"],
    ["dlq", "purge"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "jobpool")
def test_help_of_every_command(command: list[str]) -> None:
    result = invoke_sync(*command, "--help")
    assert result.exit_code == 0, result.output
    assert f"Usage: jobpool {' '.join(command)}".rstrip() in result.stdout
    assert result.stderr == ""


def _walk(command: Any, path: str = "jobpool") -> Iterator[tuple[str, Any]]:
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _walk(sub, f"{path} {name}")


def test_every_command_and_parameter_is_documented() -> None:
    root = typer.main.get_command(app)
    for path, command in _walk(root):
        assert command.help, f"{path} has no help text"
        for param in command.params:
            if param.name != "help":
                assert getattr(param, "help", None), f"{path}: {param.name} has no help text"


def test_root_help_lists_commands_and_exit_codes() -> None:
    result = invoke_sync("--help")
    assert result.exit_code == 0
    for word in ["submit", "status", "cancel", "result", "migrate", "pool", "dlq", "Exit codes"]:
        assert word in result.stdout
    assert "6: the database cannot be reached" in result.stdout


def test_help_shows_env_var_names_but_never_the_dsn() -> None:
    result = invoke_sync("status", "--help", env={"JOBPOOL_DSN": UNREACHABLE_DSN})
    assert result.exit_code == 0
    assert "JOBPOOL_DSN" in result.stdout
    assert "JOBPOOL_POOL" in result.stdout
    assert "JOBPOOL_TENANT" in result.stdout
    assert "secret" not in result.output


def test_no_arguments_prints_help() -> None:
    result = invoke_sync()
    assert result.exit_code in (0, 2)
    assert "Usage: jobpool" in result.output


# -- migrate -----------------------------------------------------------------------


async def test_migrate_empty_database_then_up_to_date(empty_dsn: str) -> None:
    first = await invoke("migrate", "--dsn", empty_dsn)
    assert first.exit_code == 0, first.output
    assert first.stdout.splitlines() == [f"applied {name}" for name in ALL_MIGRATIONS]

    second = await invoke("migrate", env={"JOBPOOL_DSN": empty_dsn})
    assert second.exit_code == 0, second.output
    assert second.stdout == "schema is up to date\n"


async def test_migrate_check_lists_pending_and_exits_1(empty_dsn: str) -> None:
    pending = await invoke("migrate", "--check", "--dsn", empty_dsn)
    assert pending.exit_code == ExitCode.FAILED
    assert pending.stdout.splitlines() == [f"pending {name}" for name in ALL_MIGRATIONS]
    assert pending.stderr == f"error: {len(ALL_MIGRATIONS)} migration(s) pending\n"

    # --check applied nothing; after a real migrate it passes.
    assert (await invoke("migrate", "--check", "--dsn", empty_dsn)).exit_code == ExitCode.FAILED
    assert (await invoke("migrate", "--dsn", empty_dsn)).exit_code == 0
    clean = await invoke("migrate", "--check", "--dsn", empty_dsn)
    assert clean.exit_code == 0
    assert clean.stdout == "schema is up to date\n"


async def test_commands_on_an_unmigrated_database_say_so(empty_dsn: str) -> None:
    result = await invoke("pool", "show", "emails", "--dsn", empty_dsn)
    assert_one_line_error(result, ExitCode.DATABASE_ERROR, "run `jobpool migrate`")


# -- pools -------------------------------------------------------------------------


async def test_pool_create_and_show(dsn: str) -> None:
    created = await invoke(
        "pool", "create", "reports", "--shards", "8", "--replicas", "2", "--dsn", dsn
    )
    assert created.exit_code == 0, created.output
    assert created.stdout == "pool reports created: 8 shards, 2 replicas, ring version 1\n"

    again = await invoke("pool", "create", "reports", "--dsn", dsn)
    assert again.exit_code == 0
    assert again.stdout.startswith("pool reports already exists, unchanged: 8 shards")
    assert "apply only to a new pool" in again.stderr

    shown = await invoke("pool", "show", "reports", "--dsn", dsn)
    assert shown.exit_code == 0
    assert shown.stdout.split() == [
        "pool:", "reports", "shards:", "8", "replicas:", "2", "ring", "version:", "1",
        "pause:", "active",
    ]  # fmt: skip
    as_json = await invoke("pool", "show", "reports", "--json", "--dsn", dsn)
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout) == {
        "name": "reports", "shards": 8, "replicas": 2, "ring_version": 1,
        "pause": {"paused": False, "types": []},
    }  # fmt: skip


async def test_pool_create_defaults_to_64_shards(dsn: str) -> None:
    result = await invoke("pool", "create", "default-shards", "--dsn", dsn)
    assert result.exit_code == 0
    assert result.stdout == "pool default-shards created: 64 shards, 1 replica, ring version 1\n"


async def test_pool_create_rejects_a_bad_name(dsn: str) -> None:
    result = await invoke("pool", "create", "Bad_Name", "--dsn", dsn)
    assert_one_line_error(result, ExitCode.USAGE, "invalid pool name 'Bad_Name'")


async def test_pool_show_unknown_pool(dsn: str) -> None:
    result = await invoke("pool", "show", "nope", "--dsn", dsn)
    assert_one_line_error(result, ExitCode.NOT_FOUND, "pool 'nope' does not exist")


# -- one job -----------------------------------------------------------------------


async def test_submit_status_cancel(dsn: str, pool: Pool) -> None:
    job_id = await submit_job(dsn, "--priority", "high", "--request-id", "req-1")
    assert uuid.UUID(job_id)

    status = await invoke("status", job_id, *job_args(dsn))
    assert status.exit_code == 0, status.output
    fields = dict(line.split(":", 1) for line in status.stdout.splitlines() if ":" in line)
    assert fields["id"].strip() == job_id
    assert fields["state"].strip() == "queued"
    assert fields["priority"].strip() == "high"
    assert fields["type"].strip() == "email.send"
    assert fields["request id"].strip() == "req-1"
    assert fields["attempts"].strip() == (
        "0 (the job sets no limit: its handler's max_attempts applies, else the worker's "
        "--max-attempts)"
    )
    assert "errors: none" in status.stdout

    cancelled = await invoke("cancel", job_id, *job_args(dsn))
    assert cancelled.exit_code == 0, cancelled.output
    assert cancelled.stdout == "cancelled\n"

    as_json = await invoke("status", job_id, "--json", *job_args(dsn))
    assert as_json.exit_code == 0
    assert len(as_json.stdout.splitlines()) == 1
    document = json.loads(as_json.stdout)
    assert (document["id"], document["state"], document["pool"]) == (job_id, "cancelled", "emails")

    twice = await invoke("cancel", job_id, *job_args(dsn))
    assert_one_line_error(twice, ExitCode.CONFLICT, job_id, "already ended")

    ended = await invoke("result", job_id, *job_args(dsn))
    assert_one_line_error(ended, ExitCode.FAILED, f"job {job_id} was cancelled")


async def test_submit_json_output_and_dedupe(dsn: str, pool: Pool) -> None:
    first = await invoke("submit", "email.send", "--dedupe-key", "k1", "--json", *job_args(dsn))
    assert first.exit_code == 0, first.output
    job = json.loads(first.stdout)
    assert (job["type"], job["state"], job["duplicate"], job["dedupe_key"]) == (
        "email.send", "queued", False, "k1",
    )  # fmt: skip

    second = await invoke("submit", "email.send", "--dedupe-key", "k1", *job_args(dsn))
    assert second.exit_code == 0, second.output
    assert second.stdout == f"{job['id']}\n"
    assert "duplicate of existing job" in second.stderr


async def test_submit_array_needs_batch_and_then_is_a_batch(
    dsn: str, pool: Pool, conn: asyncpg.Connection
) -> None:
    refused = await invoke("submit", "email.send", "[1, 2, 3]", *job_args(dsn))
    assert_one_line_error(refused, ExitCode.USAGE, "is a JSON array", "pass --batch")
    assert await count_jobs(conn) == 0

    batch = await invoke("submit", "email.send", '[{"n": 1}, [2], 3]', "--batch", *job_args(dsn))
    assert batch.exit_code == 0, batch.output
    ids = [uuid.UUID(line) for line in batch.stdout.splitlines()]
    rows = await conn.fetch("SELECT id, payload::text FROM jobs")
    payloads = {row["id"]: json.loads(row["payload"]) for row in rows}
    assert [payloads[job_id] for job_id in ids] == [{"n": 1}, [2], 3]

    as_json = await invoke("submit", "email.send", "[4, 5]", "--batch", "--json", *job_args(dsn))
    assert as_json.exit_code == 0, as_json.output
    assert [job["type"] for job in json.loads(as_json.stdout)] == ["email.send"] * 2


async def test_submit_batch_misuse(dsn: str, pool: Pool, tmp_path: Path) -> None:
    not_array = await invoke("submit", "email.send", '{"n": 1}', "--batch", *job_args(dsn))
    assert_one_line_error(
        not_array,
        ExitCode.USAGE,
        "--batch needs PAYLOAD_JSON to be a JSON array, got a JSON object",
    )
    shared = await invoke(
        "submit", "email.send", "[1]", "--batch", "--dedupe-key", "k", *job_args(dsn)
    )
    assert_one_line_error(shared, ExitCode.USAGE, "--dedupe-key cannot be used with --batch")
    path = tmp_path / "jobs.jsonl"
    path.write_text("1\n")
    both = await invoke("submit", "email.send", "--batch", "--file", str(path), *job_args(dsn))
    assert_one_line_error(both, ExitCode.USAGE, "give either --batch or --file, not both")


async def test_submit_batch_names_every_bad_element(
    dsn: str, pool: Pool, conn: asyncpg.Connection
) -> None:
    payload = json.dumps([{"ok": 1}, {"blob": "x" * (1024 * 1024)}, {"ok": 2}, "y" * (1024 * 1024)])
    result = await invoke("submit", "email.send", payload, "--batch", *job_args(dsn))
    assert_one_line_error(
        result,
        ExitCode.USAGE,
        "2 of 4 items are invalid",
        "item #1: payload is",
        "item #3: payload is",
    )
    assert await count_jobs(conn) == 0


async def test_submit_uses_environment_variables(dsn: str, pool: Pool) -> None:
    env = {"JOBPOOL_DSN": dsn, "JOBPOOL_POOL": "emails", "JOBPOOL_TENANT": TENANT}
    submitted = await invoke("submit", "email.send", "--delay", "60", env=env)
    assert submitted.exit_code == 0, submitted.output
    status = await invoke("status", submitted.stdout.strip(), "--json", env=env)
    assert status.exit_code == 0
    assert json.loads(status.stdout)["tenant"] == TENANT


async def test_submit_rejects_bad_input(dsn: str, pool: Pool, conn: asyncpg.Connection) -> None:
    not_json = await invoke("submit", "email.send", "{oops", *job_args(dsn))
    assert_one_line_error(not_json, ExitCode.USAGE, "PAYLOAD_JSON is not valid JSON")
    bad_type = await invoke("submit", "9lives", *job_args(dsn))
    assert_one_line_error(bad_type, ExitCode.USAGE, "invalid job type '9lives'")
    assert await count_jobs(conn) == 0


async def test_other_tenant_does_not_see_the_job(dsn: str, pool: Pool) -> None:
    job_id = await submit_job(dsn)
    result = await invoke("status", job_id, *job_args(dsn, tenant="globex"))
    assert_one_line_error(result, ExitCode.NOT_FOUND, f"no job {job_id}")


async def test_result_times_out_on_a_queued_job(dsn: str, pool: Pool) -> None:
    job_id = await submit_job(dsn)
    result = await invoke("result", job_id, "--timeout", "0.2", *job_args(dsn))
    assert_one_line_error(
        result, ExitCode.TIMEOUT, f"timed out after 0.2 s: job {job_id} is still queued"
    )


async def _add_finished_job(
    conn: asyncpg.Connection, state: str, *, result: str | None = None, errors: str = "[]"
) -> str:
    """A job as a worker leaves it in job_history (no worker runs in these tests)."""
    job_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO job_history (id, pool, tenant, shard, type, priority, state, payload,"
        " attempts, max_attempts, result, error_history, created_at)"
        " VALUES ($1, 'emails', $2, 0, 'email.send', 1, $3, '{}', 1, 3, $4::jsonb, $5::jsonb,"
        " now())",
        job_id,
        TENANT,
        state,
        result,
        errors,
    )
    return str(job_id)


async def test_result_and_status_of_finished_jobs(
    dsn: str, pool: Pool, conn: asyncpg.Connection
) -> None:
    succeeded = await _add_finished_job(conn, "succeeded", result='{"sent": [1, 2]}')
    await conn.execute(  # the handler's last report was 20 %: the job is done all the same
        "UPDATE job_history SET progress = 0.2, progress_at = now() WHERE id = $1",
        uuid.UUID(succeeded),
    )
    result = await invoke("result", succeeded, "--timeout", "5", *job_args(dsn))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"sent": [1, 2]}
    status = await invoke("status", succeeded, *job_args(dsn))
    assert status.exit_code == 0
    assert "attempts:    1 of at most 3 (set on the job)" in status.stdout
    assert "progress:    100% (succeeded)" in status.stdout
    assert 'result:      {"sent": [1, 2]}' in status.stdout

    errors = json.dumps(
        [
            {
                "attempt": 1,
                "error_type": "Permanent",
                "message": "no such user",
                "at": "2025-01-01T00:00:00Z",
            }
        ]
    )
    dead = await _add_finished_job(conn, "dead", errors=errors)
    failed = await invoke("result", dead, *job_args(dsn))
    assert_one_line_error(
        failed,
        ExitCode.FAILED,
        f"job {dead} ended in the dead-letter queue (Permanent: no such user)",
    )
    status = await invoke("status", dead, *job_args(dsn))
    assert status.exit_code == 0
    assert "attempt 1 at 2025-01-01 00:00:00Z  Permanent: no such user" in status.stdout


# -- JSON-lines files --------------------------------------------------------------


async def test_submit_jsonl_file_in_batches(
    dsn: str, pool: Pool, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"n": 1}\n\n{"n": 2}\n[3]\n   \n"four"\n{"n": 5}\n')
    result = await invoke(
        "submit", "email.send", "--file", str(path), "--batch-size", "2", *job_args(dsn)
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("submitted 5 jobs in ")
    assert result.stdout.rstrip().endswith("jobs/s)")
    assert result.stderr == ""  # no progress bar: stderr is not a terminal
    payloads = await conn.fetch("SELECT payload::text FROM jobs")
    assert sorted(r["payload"] for r in payloads) == sorted(
        ['"four"', "[3]", '{"n": 1}', '{"n": 2}', '{"n": 5}']
    )


async def test_submit_jsonl_bad_line_submits_nothing(
    dsn: str, pool: Pool, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"n": 1}\n{"n": 2}\n\n{"n": oops}\n{"n": 5}\n')
    result = await invoke(
        "submit", "email.send", "--file", str(path), "--batch-size", "1", *job_args(dsn)
    )
    assert_one_line_error(result, ExitCode.USAGE, f"{path}, line 4: invalid JSON")
    assert await count_jobs(conn) == 0


async def test_submit_jsonl_oversized_line_submits_nothing(
    dsn: str, pool: Pool, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"n": 1}\n' + json.dumps({"blob": "x" * (1024 * 1024)}) + "\n")
    result = await invoke(
        "submit", "email.send", "--file", str(path), "--batch-size", "1", *job_args(dsn)
    )
    assert_one_line_error(result, ExitCode.USAGE, f"{path}, line 2 is ", "over the limit")
    assert await count_jobs(conn) == 0


async def test_submit_jsonl_from_stdin_with_json_summary(dsn: str, pool: Pool) -> None:
    result = await invoke(
        "submit",
        "email.send",
        "--file",
        "-",
        "--json",
        *job_args(dsn),
        stdin='{"a": 1}\n{"a": 2}\n',
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["submitted"] == 2
    assert summary["jobs_per_second"] >= 0


async def test_submit_jsonl_progress_bar_on_a_terminal(
    dsn: str, pool: Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(submit_module, "_stderr_is_tty", lambda: True)
    path = tmp_path / "jobs.jsonl"
    path.write_text("1\n2\n3\n")
    result = await invoke("submit", "email.send", "-f", str(path), *job_args(dsn))
    assert result.exit_code == 0, result.output
    assert "submitting" in result.stderr
    assert "3/3" in result.stderr
    assert result.stdout.startswith("submitted 3 jobs in ")


async def test_submit_jsonl_errors(dsn: str, pool: Pool, tmp_path: Path) -> None:
    missing = await invoke(
        "submit", "email.send", "--file", str(tmp_path / "nope.jsonl"), *job_args(dsn)
    )
    assert_one_line_error(missing, ExitCode.USAGE, "cannot read", "No such file or directory")
    path = tmp_path / "jobs.jsonl"
    path.write_text("{}\n")
    both = await invoke("submit", "email.send", "{}", "--file", str(path), *job_args(dsn))
    assert_one_line_error(both, ExitCode.USAGE, "not both")
    dedupe = await invoke(
        "submit", "email.send", "--file", str(path), "--dedupe-key", "k", *job_args(dsn)
    )
    assert_one_line_error(dedupe, ExitCode.USAGE, "--dedupe-key cannot be used with --file")


# -- dead-letter queue -------------------------------------------------------------


async def _add_dlq_entries(conn: asyncpg.Connection, count: int) -> list[int]:
    history = json.dumps(
        [
            {
                "attempt": 1,
                "error_type": "SMTPError",
                "message": "timeout",
                "at": "2025-01-01T00:00:00Z",
            },
            {
                "attempt": 2,
                "error_type": "SMTPError",
                "message": "refused",
                "at": "2025-01-01T00:01:00Z",
            },
        ]
    )
    rows = await conn.fetch(
        "INSERT INTO job_dlq (pool, original_job_id, app_id, type, payload, error_reason,"
        " attempts, error_history)"
        " SELECT 'emails', gen_random_uuid(), $1, 'email.send', '{\"to\": \"[b]x[/b]\"}',"
        " 'SMTPError: refused', 2, $2::jsonb FROM generate_series(1, $3) RETURNING id",
        TENANT,
        history,
        count,
    )
    return sorted(row["id"] for row in rows)


def table_ids(text: str) -> list[int]:
    """The ID column of a rich table."""
    cells = [line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│")]
    return [int(cell) for cell in cells if cell.isdigit()]


async def test_dlq_list_empty(dsn: str, pool: Pool) -> None:
    result = await invoke("dlq", "list", *job_args(dsn))
    assert result.exit_code == 0, result.output
    assert result.stdout == "no pending dead-letter entries\n"


async def test_dlq_list_pages_show_replay_purge(
    dsn: str, pool: Pool, conn: asyncpg.Connection
) -> None:
    first_id, second_id, third_id = await _add_dlq_entries(conn, 3)

    page = await invoke("dlq", "list", "--limit", "2", *job_args(dsn))
    assert page.exit_code == 0, page.output
    assert "SMTPError: refused" in page.stdout
    assert table_ids(page.stdout) == [first_id, second_id]
    assert page.stdout.rstrip().endswith(f"next cursor: {second_id}")
    last = await invoke(
        "dlq", "list", "--cursor", str(second_id), "--type", "email.send", *job_args(dsn)
    )
    assert last.exit_code == 0
    assert table_ids(last.stdout) == [third_id]
    assert last.stdout.rstrip().endswith("last page")

    shown = await invoke("dlq", "show", str(first_id), *job_args(dsn))
    assert shown.exit_code == 0, shown.output
    assert "reason:" in shown.stdout
    assert '{"to": "[b]x[/b]"}' in shown.stdout  # printed verbatim, not as markup
    assert "attempt 1 at 2025-01-01 00:00:00Z  SMTPError: timeout" in shown.stdout
    assert "attempt 2 at 2025-01-01 00:01:00Z  SMTPError: refused" in shown.stdout

    replayed = await invoke("dlq", "replay", str(first_id), *job_args(dsn))
    assert replayed.exit_code == 0, replayed.output
    new_job = replayed.stdout.strip()
    status = await invoke("status", new_job, "--json", *job_args(dsn))
    assert json.loads(status.stdout)["state"] == "queued"

    again = await invoke("dlq", "replay", str(first_id), *job_args(dsn))
    assert_one_line_error(again, ExitCode.CONFLICT, f"DLQ entry {first_id} was replayed at")
    assert re.search(r"replayed at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$", again.stderr.strip())

    purged = await invoke("dlq", "purge", "--older-than", "0", *job_args(dsn))
    assert purged.exit_code == 0, purged.output
    assert purged.stdout == "purged 1 replayed entry\n"
    kept = await invoke("dlq", "list", "--json", *job_args(dsn))
    assert [e["id"] for e in json.loads(kept.stdout)["entries"]] == [second_id, third_id]


async def test_dlq_unknown_and_invalid_entries(dsn: str, pool: Pool) -> None:
    unknown = await invoke("dlq", "show", "999999", *job_args(dsn))
    assert_one_line_error(unknown, ExitCode.NOT_FOUND, "no DLQ entry 999999")
    for bad_id in ("abc", "0", str(2**63)):
        invalid = await invoke("dlq", "replay", bad_id, *job_args(dsn))
        assert_one_line_error(invalid, ExitCode.USAGE, f"invalid dead-letter entry id {bad_id!r}")
    cursor = await invoke("dlq", "list", "--cursor", "zzz", *job_args(dsn))
    assert_one_line_error(cursor, ExitCode.USAGE, "invalid DLQ cursor 'zzz'")


# -- errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["migrate"],
        ["migrate", "--check"],
        ["pool", "create", "emails"],
        ["pool", "show", "emails"],
        ["submit", "email.send", "--pool", "emails"],
        ["status", str(uuid.UUID(int=1)), "--pool", "emails"],
        ["dlq", "list", "--pool", "emails"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
async def test_unreachable_database(command: list[str]) -> None:
    result = await invoke(*command, "--dsn", UNREACHABLE_DSN)
    assert_one_line_error(
        result,
        ExitCode.UNAVAILABLE,
        "cannot connect to the database (postgresql://u@127.0.0.1:1/db)",
    )
    assert "secret" not in result.output


async def test_unreachable_database_from_the_environment() -> None:
    result = await invoke("status", str(uuid.UUID(int=1)), env={
        "JOBPOOL_DSN": UNREACHABLE_DSN, "JOBPOOL_POOL": "emails",
    })  # fmt: skip
    assert_one_line_error(result, ExitCode.UNAVAILABLE, "cannot connect to the database")
    assert "secret" not in result.output


@pytest.mark.parametrize(
    ("bad_dsn", "fragment"),
    [
        ("mysql://u:secret@localhost/db", "scheme is expected"),
        ("host=localhost password=secret", "scheme is expected"),
        ("postgresql://u:secret@localhost:port/db", "port"),
        ("postgresql://u:secret@localhost:99999/db", "Port out of range"),
        ("postgresql://u:secret@[::1/db", "IPv6"),
        ("postgresql://u:secret@localhost/db?sslmode=bogus", "sslmode"),
    ],
)
async def test_malformed_dsn(bad_dsn: str, fragment: str) -> None:
    result = await invoke("pool", "show", "emails", "--dsn", bad_dsn)
    assert_one_line_error(result, ExitCode.USAGE, "malformed DSN", fragment)
    assert "secret" not in result.output


@pytest.mark.parametrize(
    ("dsn", "message", "expected"),
    [
        ("postgresql://u:s3cr%40t@h/db", "a s3cr@t b s3cr%40t", "a *** b ***"),
        ("postgresql://u@h/db?password=hunter2", "bad hunter2", "bad ***"),
        ("postgresql://u:pw@h/db?options=a@b", "x pw y", "x *** y"),
        ("postgresql://postgres:@/db?host=/tmp", "line one\n  line two", "line one line two"),
        (None, "no dsn", "no dsn"),
    ],
)
def test_scrub_masks_passwords_and_keeps_one_line(
    dsn: str | None, message: str, expected: str
) -> None:
    assert scrub(message, dsn) == expected


@pytest.mark.parametrize(
    "command",
    [["migrate"], ["pool", "show", "emails"], ["status", str(uuid.UUID(int=1)), "--pool", "p"]],
    ids=lambda c: c[0],
)
def test_missing_dsn(command: list[str]) -> None:
    result = invoke_sync(*command)
    assert_one_line_error(
        result, ExitCode.USAGE, "no database given: pass --dsn or set JOBPOOL_DSN"
    )


def test_missing_pool() -> None:
    result = invoke_sync("submit", "email.send", "--dsn", UNREACHABLE_DSN)
    assert_one_line_error(result, ExitCode.USAGE, "no pool given: pass --pool or set JOBPOOL_POOL")


async def test_unknown_pool(dsn: str) -> None:
    result = await invoke("submit", "email.send", *job_args(dsn, pool="nope"))
    assert_one_line_error(result, ExitCode.NOT_FOUND, "pool 'nope' does not exist")


async def test_unknown_job(dsn: str, pool: Pool) -> None:
    job_id = str(uuid.uuid4())
    for command in ("status", "cancel", "result"):
        result = await invoke(command, job_id, *job_args(dsn))
        assert_one_line_error(result, ExitCode.NOT_FOUND, f"no job {job_id}")


def test_invalid_job_id_is_rejected_before_connecting() -> None:
    for command in ("status", "cancel", "result"):
        result = invoke_sync(command, "not-a-uuid", "--pool", "emails", "--dsn", UNREACHABLE_DSN)
        assert_one_line_error(result, ExitCode.USAGE, "invalid job id 'not-a-uuid'")


# -- usage errors: one line, exit 2, no traceback ----------------------------------


@pytest.mark.parametrize(
    ("command", "fragments"),
    [
        (["submit"], ["missing argument 'TYPE'", "(see `jobpool submit --help`)"]),
        (
            ["submit", "email.send", "--priority", "urgent"],
            ["invalid value for '--priority': 'urgent' is not one of 'critical'"],
        ),
        (["submit", "email.send", "--bogus"], ["no such option: --bogus"]),
        (["result", str(uuid.UUID(int=1)), "--timeout", "-1"], ["invalid value for '--timeout'"]),
        (["nosuchcommand"], ["no such command 'nosuchcommand'", "(see `jobpool --help`)"]),
        (["dlq", "list", "--limit", "many"], ["invalid value for '--limit'"]),
        (
            ["worker", "--pool", "p", "--app", "m:r", "--log-level", "verbose"],
            ["'verbose' is not one of 'debug'"],
        ),
        (
            ["worker", "--pool", "p", "--app", "m:r", "--log-format", "yaml"],
            ["'yaml' is not one of 'text', 'json'"],
        ),
        (["operator", "--log-format", "yaml"], ["'yaml' is not one of 'text', 'json'"]),
        (["worker", "--app", "m:r"], ["missing option '--pool'"]),
    ],
    ids=lambda value: " ".join(value)[:40] if isinstance(value, list) else None,
)
def test_usage_errors_are_one_line(command: list[str], fragments: list[str]) -> None:
    assert_one_line_error(invoke_sync(*command), ExitCode.USAGE, *fragments)


def test_log_level_from_the_environment_is_checked_too() -> None:
    result = invoke_sync(
        "worker", "--pool", "p", "--app", "m:r", env={"JOBPOOL_LOG_LEVEL": "verbose"}
    )
    assert_one_line_error(result, ExitCode.USAGE, "JOBPOOL_LOG_LEVEL", "'verbose'")


def test_usage_shows_plain_argument_names_and_no_flag_types() -> None:
    usage = invoke_sync("submit", "--help")
    assert usage.exit_code == 0
    assert "Usage: jobpool submit [OPTIONS] TYPE [PAYLOAD_JSON]" in usage.stdout
    assert "{TYPE}" not in usage.stdout
    for command in (
        ["--help"],
        ["submit", "--help"],
        ["dlq", "list", "--help"],
        ["pool", "--help"],
    ):
        assert "<bool>" not in invoke_sync(*command).stdout, command


def test_a_group_without_a_command_prints_its_help() -> None:
    result = invoke_sync("dlq")
    assert "Usage: jobpool dlq" in result.output
    assert "error:" not in result.output


@pytest.mark.parametrize(
    ("source", "raised"),
    [
        ("def broken(:\n", "SyntaxError: "),
        ("raise RuntimeError('no SMTP_HOST in the environment')\n", "RuntimeError: no SMTP_HOST"),
        ("import no_such_module_anywhere\n", "No module named 'no_such_module_anywhere'"),
        ("registry = 42\n", "registry is of type int, not a jobpool.Registry"),
    ],
    ids=["syntax", "runtime", "import", "not-a-registry"],
)
@pytest.mark.parametrize("command", ["worker", "dev"])
def test_an_app_module_that_fails_is_one_line(
    command: str, source: str, raised: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"broken_handlers_{uuid.uuid4().hex}"
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    extra = ["--ordinal", "0"] if command == "worker" else []
    result = invoke_sync(
        command, "--pool", "p", "--app", f"{module}:registry", "--dsn", UNREACHABLE_DSN, *extra
    )
    assert_one_line_error(
        result, ExitCode.USAGE, f"cannot load handlers '{module}:registry'", raised
    )


# -- workers and the ring ----------------------------------------------------------


async def test_a_metrics_port_in_use_is_one_line(dsn: str, pool: Pool) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "jobpool", "worker", "--pool", "emails", "--ordinal", "0",
             "--app", "examples.handlers:registry", "--metrics-port", str(port)],
            env={**os.environ, "JOBPOOL_DSN": dsn},
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
    assert worker.returncode == ExitCode.USAGE, worker.stderr
    lines = worker.stderr.splitlines()
    assert lines == [
        f"error: cannot serve metrics on port {port}: Address already in use (another worker "
        "on this host? give each its own --metrics-port, or 0 for none)"
    ], worker.stderr


async def _heartbeat(conn: asyncpg.Connection, *ordinals: int) -> None:
    for ordinal in ordinals:
        await worker_heartbeat(
            conn, "emails", ordinal=ordinal, incarnation=f"test-{ordinal}", shards=[],
            counters=WorkerCounters(),
        )  # fmt: skip


async def test_ring_warns_about_missing_and_extra_workers(
    dsn: str, pool: Pool, conn: asyncpg.Connection
) -> None:
    await _heartbeat(conn, 0, 5)
    result = await invoke("ring", "--pool", "emails", "--replicas", "3", "--dsn", dsn)
    assert result.exit_code == 0, result.output
    assert result.stdout == "pool emails: 3 replicas, ring version 2\n"
    assert result.stderr.splitlines() == [
        "warning: the ring of pool emails wants 3 workers (ordinals 0-2), but ordinals 1, 2 "
        "have no live worker: start them (jobpool worker --pool emails --ordinal 1 …; "
        "jobpool worker --pool emails --ordinal 2 …)",
        "warning: ordinal 5 of pool emails has a live worker beyond the ring of 3: it holds "
        "no shards and idles; stop it, or raise --replicas",
    ]

    # A dead worker's row (an old heartbeat) does not count as live.
    await conn.execute(
        "UPDATE workers SET heartbeat_at = now() - interval '1 hour' WHERE ordinal = 5"
    )
    await _heartbeat(conn, 1, 2)
    agreed = await invoke("ring", "--pool", "emails", "--replicas", "3", "--dsn", dsn)
    assert agreed.exit_code == 0, agreed.output
    assert agreed.stderr == ""
