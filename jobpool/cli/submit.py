"""``jobpool submit``: one job from the command line, or a JSON-lines file in batches.

A file is read and checked whole before anything is written: every line must be
valid JSON within the payload size limit, and the first bad line is reported with its
line number, so a bad file submits nothing. It is then submitted in batches of
``--batch-size`` jobs, one round trip each. Each batch commits on its own: if the
database fails midway, the jobs of the batches already sent stay submitted, and the
command says how many they were.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from jobpool.cli.common import (
    DEFAULT_TENANT,
    CliError,
    DsnOption,
    ExitCode,
    JsonOption,
    PoolOption,
    Target,
    TenantOption,
    command,
    open_client,
    run,
    with_client,
)
from jobpool.cli.output import echo_json
from jobpool.client.validation import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_PAYLOAD_BYTES,
    encode_payload,
)
from jobpool.models import Duration, Job, Priority

PANEL = "Jobs"
DEFAULT_BATCH_SIZE = 1000
STDIN_NAME = "-"

Advance = Callable[[int], None]


@command
def submit(
    job_type: Annotated[
        str,
        typer.Argument(
            metavar="TYPE",
            show_default=False,
            help="Job type, e.g. email.send: a letter, then up to 127 of A-Z a-z 0-9 _ . : -",
        ),
    ],
    payload: Annotated[
        str | None,
        typer.Argument(
            metavar="PAYLOAD_JSON",
            show_default=False,
            help='The job\'s payload as JSON, e.g. \'{"to": "ann@example.com"}\'. '
            "Default: {}. Not with --file. A JSON array is a batch, as in the library: "
            "it needs --batch.",
        ),
    ] = None,
    batch: Annotated[
        bool,
        typer.Option(
            "--batch",
            help="PAYLOAD_JSON is a JSON array: submit one job per element, in one round "
            "trip, all or none, and print their ids in order.",
        ),
    ] = False,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            metavar="PATH",
            show_default=False,
            help="Submit a JSON-lines file instead: one payload per line, blank lines "
            "skipped, - for standard input. Every line is checked before any job is "
            "submitted; a bad line is reported with its number.",
        ),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            min=1, max=DEFAULT_MAX_BATCH, help="With --file: jobs per batch (one round trip each)."
        ),
    ] = DEFAULT_BATCH_SIZE,
    priority: Annotated[
        Priority, typer.Option(help="Priority lane; workers serve lanes by weight.")
    ] = Priority.NORMAL,
    dedupe_key: Annotated[
        str | None,
        typer.Option(
            show_default=False,
            help="While a job with this key is unfinished, submitting the key again "
            "returns that job instead of a new one. Not with --file.",
        ),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            show_default=False,
            help="Routing key: jobs with the same key share a shard and start in order.",
        ),
    ] = None,
    delay: Annotated[
        float | None,
        typer.Option(
            min=0,
            metavar="SECONDS",
            show_default=False,
            help="Start no earlier than this many seconds from now.",
        ),
    ] = None,
    max_attempts: Annotated[
        int | None,
        typer.Option(
            min=1,
            show_default=False,
            help="Attempts before the job goes to the dead-letter queue. Default: the "
            "pool's retry policy.",
        ),
    ] = None,
    duration: Annotated[
        Duration, typer.Option(help="long: the job keeps its shard lease alive while it runs.")
    ] = Duration.SHORT,
    request_id: Annotated[
        str | None,
        typer.Option(show_default=False, help="Request id to carry with the job (tracing, audit)."),
    ] = None,
    user_id: Annotated[
        str | None,
        typer.Option(show_default=False, help="User id to carry with the job (audit)."),
    ] = None,
    dsn: DsnOption = None,
    pool: PoolOption = None,
    tenant: TenantOption = DEFAULT_TENANT,
    json_output: JsonOption = False,
) -> None:
    """Submit one job and print its id, a batch (--batch), or a JSON-lines file of jobs.

    One job: prints the new job's id. When --dedupe-key matches an unfinished job, prints
    that job's id instead and says "duplicate of existing job" on stderr.

    A JSON array means a batch, as it does for the library's submit(): with --batch each
    element is the payload of one job, all submitted in one transaction (a bad element
    submits none and every bad element is named); the ids are printed one per line, in
    order. Without --batch an array is refused. (To submit one job whose payload is an
    array, put the array on one line of a --file.)

    With --file: shows a progress bar when stderr is a terminal, then prints how many jobs
    were submitted and at what rate. With --json the output is one JSON object.
    """
    target = Target.from_options(dsn, pool, tenant)
    options: dict[str, Any] = {
        "priority": priority, "key": key, "delay": delay, "max_attempts": max_attempts,
        "duration": duration, "request_id": request_id, "user_id": user_id,
    }  # fmt: skip
    if file is None:
        value = parse_payload(payload)
        if batch:
            _submit_batch(target, job_type, value, options, dedupe_key, json_output=json_output)
            return
        if isinstance(value, list):
            raise CliError(
                "PAYLOAD_JSON is a JSON array, which is a batch (as in the library): pass "
                "--batch to submit one job per element",
                ExitCode.USAGE,
            )
        job = run(_submit_one(target, job_type, value, options, dedupe_key))
        _report_one(job, json_output=json_output)
        return
    if payload is not None or batch:
        raise CliError(
            f"give either {'--batch' if batch else 'PAYLOAD_JSON'} or --file, not both",
            ExitCode.USAGE,
        )
    _refuse_shared_dedupe_key(dedupe_key, "--file", "line")
    payloads = read_payloads(file, max_payload_bytes=DEFAULT_MAX_PAYLOAD_BYTES)
    with progress_bar(len(payloads)) as advance:
        seconds = run(_submit_file(target, job_type, payloads, options, batch_size, advance))
    _report_file(len(payloads), seconds, json_output=json_output)


def parse_payload(text: str | None) -> Any:
    """The payload given on the command line (``{}`` when none)."""
    if text is None:
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"PAYLOAD_JSON is not valid JSON: {exc.msg} at column {exc.colno}", ExitCode.USAGE
        ) from None


def _refuse_shared_dedupe_key(dedupe_key: str | None, option: str, what: str) -> None:
    if dedupe_key is not None:
        raise CliError(
            f"--dedupe-key cannot be used with {option}: every {what} would share it",
            ExitCode.USAGE,
        )


async def _submit_one(
    target: Target, job_type: str, payload: Any, options: dict[str, Any], dedupe_key: str | None
) -> Job:
    async with open_client(target) as client:
        return await client.submit(job_type, payload, dedupe_key=dedupe_key, **options)


def _submit_batch(
    target: Target,
    job_type: str,
    payloads: Any,
    options: dict[str, Any],
    dedupe_key: str | None,
    *,
    json_output: bool,
) -> None:
    """``--batch``: the array's elements as one batch; their ids (or jobs), in order."""
    if not isinstance(payloads, list):
        raise CliError(
            f"--batch needs PAYLOAD_JSON to be a JSON array, got a JSON {_json_kind(payloads)}",
            ExitCode.USAGE,
        )
    _refuse_shared_dedupe_key(dedupe_key, "--batch", "element")
    jobs = with_client(target, lambda client: client.submit(job_type, payloads, **options))
    if json_output:
        echo_json([job.model_dump(mode="json") for job in jobs])
        return
    for job in jobs:
        typer.echo(str(job.id))


def _json_kind(value: Any) -> str:
    names = {dict: "object", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _report_one(job: Job, *, json_output: bool) -> None:
    if json_output:
        echo_json(job)
        return
    typer.echo(str(job.id))
    if job.duplicate:
        typer.echo(f"duplicate of existing job (dedupe key {job.dedupe_key!r})", err=True)


# -- JSON-lines files --------------------------------------------------------------


def read_payloads(path: Path, *, max_payload_bytes: int) -> list[Any]:
    """Every payload of a JSON-lines file; ``CliError`` naming the first bad line."""
    name = "stdin" if str(path) == STDIN_NAME else str(path)
    try:
        if str(path) == STDIN_NAME:
            return _parse_lines(sys.stdin, name, max_payload_bytes)
        with path.open(encoding="utf-8") as lines:
            return _parse_lines(lines, name, max_payload_bytes)
    except OSError as exc:
        raise CliError(f"cannot read {name}: {exc.strerror or exc}", ExitCode.USAGE) from None
    except UnicodeDecodeError as exc:
        raise CliError(
            f"cannot read {name}: not UTF-8 text ({exc.reason})", ExitCode.USAGE
        ) from None


def _parse_lines(lines: TextIO, name: str, max_payload_bytes: int) -> list[Any]:
    payloads = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            payload = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CliError(
                f"{name}, line {number}: invalid JSON: {exc.msg} at column {exc.colno}",
                ExitCode.USAGE,
            ) from None
        # Same checks as the client's, so a bad line fails before any batch is sent.
        encode_payload(payload, max_bytes=max_payload_bytes, where=f"{name}, line {number}")
        payloads.append(payload)
    return payloads


def _stderr_is_tty() -> bool:
    return sys.stderr.isatty()


@contextmanager
def progress_bar(total: int) -> Iterator[Advance]:
    """A function to report submitted jobs: a rich progress bar when stderr is a TTY."""
    if not _stderr_is_tty():
        yield lambda _count: None
        return
    columns = (TextColumn("submitting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("submit", total=total)
        yield lambda count: bar.advance(task, count)


async def _submit_file(
    target: Target,
    job_type: str,
    payloads: list[Any],
    options: dict[str, Any],
    batch_size: int,
    advance: Advance,
) -> float:
    """Submit ``payloads`` in batches; return the seconds the batches took."""
    async with open_client(target) as client:
        started, submitted = time.perf_counter(), 0
        try:
            for start in range(0, len(payloads), batch_size):
                jobs = await client.submit(
                    job_type, payloads[start : start + batch_size], **options
                )
                submitted += len(jobs)
                advance(len(jobs))
        except BaseException:
            if submitted:
                typer.echo(f"{submitted} of {len(payloads)} jobs were submitted", err=True)
            raise
        return time.perf_counter() - started


def _report_file(count: int, seconds: float, *, json_output: bool) -> None:
    rate = count / seconds if seconds > 0 else 0.0
    if json_output:
        echo_json(
            {"submitted": count, "seconds": round(seconds, 3), "jobs_per_second": round(rate)}
        )
        return
    typer.echo(f"submitted {count} jobs in {seconds:.2f} s ({rate:,.0f} jobs/s)")


def register(app: typer.Typer) -> None:
    """Add ``submit`` to ``app``."""
    app.command(rich_help_panel=PANEL)(submit)
