"""What the CLI prints: one-line JSON for scripts, aligned fields and tables for people.

Text that comes from the database (payloads, job types, error messages) is printed
verbatim: it is never interpreted as rich markup. Times are shown in UTC.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table
from rich.text import Text

from jobpool.models import DlqEntry, ErrorRecord, JobState, JobStatus, Pool
from jobpool.timefmt import when

PIPE_WIDTH_CHARS = 200
"""Table width when stdout is not a terminal, so piped tables are not cut at 80 columns."""

Fields = Sequence[tuple[str, str]]


def to_json_text(value: Any) -> str:
    """``value`` as one line of JSON; non-ASCII characters are kept readable."""
    return json.dumps(value, ensure_ascii=False)


def echo_json(value: Any) -> None:
    """Print ``value`` (a model or plain data) as one line of JSON on stdout."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    typer.echo(to_json_text(value))


def echo_fields(fields: Fields) -> None:
    """Print ``name: value`` lines with the values aligned."""
    width = max(len(name) for name, _ in fields) + 1
    for name, value in fields:
        typer.echo(f"{name + ':':<{width}}  {value}")


def echo_errors(history: Iterable[ErrorRecord]) -> None:
    """Print the error history, one failed attempt per line, oldest first, then the
    traceback of the last attempt that has one (``--json`` shows every traceback)."""
    records = list(history)
    typer.echo(f"errors: {'none' if not records else ''}".rstrip())
    for record in records:
        typer.echo(
            f"  attempt {record.attempt} at {when(record.at)}  "
            f"{record.error_type}: {' '.join(record.message.split())}"
        )
    last = next((r for r in reversed(records) if r.traceback), None)
    if last is not None and last.traceback is not None:
        typer.echo(f"traceback of attempt {last.attempt}:")
        for line in last.traceback.rstrip().splitlines():
            typer.echo(f"  {line}")


def print_table(table: Table) -> None:
    """Render a rich table on stdout, wide enough when piped."""
    width = None if sys.stdout.isatty() else PIPE_WIDTH_CHARS
    Console(width=width, highlight=False).print(table)


def plain(value: object) -> Text:
    """A table cell shown as is, never parsed as markup."""
    return Text(str(value))


# -- models ------------------------------------------------------------------------


def pool_fields(pool: Pool) -> Fields:
    return [
        ("pool", pool.name),
        ("shards", str(pool.shards)),
        ("replicas", str(pool.replicas)),
        ("ring version", str(pool.ring_version)),
        ("pause", pool.pause.describe()),
    ]


def status_fields(status: JobStatus) -> Fields:
    """Everything about a job but its error history, for ``jobpool status``."""
    fields = [
        ("id", str(status.id)),
        ("pool", status.pool),
        ("tenant", status.tenant),
        ("type", status.type),
        ("state", _state(status)),
        ("priority", status.priority.value),
        ("shard", str(status.shard)),
        ("attempts", _attempts(status)),
        ("progress", _progress(status)),
        ("created", when(status.created_at)),
        ("run at", when(status.run_at)),
        ("started", when(status.started_at)),
        ("finished", when(status.finished_at)),
        ("request id", status.request_id or "-"),
        ("user id", status.user_id or "-"),
    ]
    if status.state.finished:
        fields.append(("result", to_json_text(status.result)))
    return fields


def _state(status: JobStatus) -> str:
    if status.state is JobState.PAUSED:
        return (
            f"paused (parked: type {status.type} is paused in pool {status.pool}; "
            f"`jobpool resume --pool {status.pool} --type {status.type}` runs it)"
        )
    return status.state.value + (" (cancel requested)" if status.cancel_requested else "")


def _progress(status: JobStatus) -> str:
    """The last report; a succeeded job is done (100 %), whatever it last reported."""
    if status.state is JobState.SUCCEEDED:
        return "100% (succeeded)"
    if status.progress is None:
        return "-"
    fraction = status.progress.fraction
    parts = [f"{fraction:.0%}" if fraction is not None else "", status.progress.message or ""]
    ended = f", before the job ended {status.state.value}" if status.state.finished else ""
    return f"{' '.join(p for p in parts if p) or '-'} (at {when(status.progress.at)}{ended})"


def _attempts(status: JobStatus) -> str:
    if status.max_attempts is None:
        return (
            f"{status.attempts} (the job sets no limit: its handler's max_attempts applies, "
            "else the worker's --max-attempts)"
        )
    return f"{status.attempts} of at most {status.max_attempts} (set on the job)"


def dlq_entry_fields(entry: DlqEntry) -> Fields:
    """Every field of a dead-letter entry but its error history."""
    return [
        ("id", str(entry.id)),
        ("pool", entry.pool),
        ("tenant", entry.app_id),
        ("original job", str(entry.original_job_id)),
        ("type", entry.type),
        ("priority", entry.priority.value),
        ("key", entry.key or "-"),
        ("reason", " ".join(entry.error_reason.split())),
        ("attempts", str(entry.attempts)),
        ("dead-lettered", when(entry.dlq_at)),
        ("replayed", when(entry.replayed_at)),
        ("request id", entry.request_id or "-"),
        ("user id", entry.user_id or "-"),
        ("payload", to_json_text(entry.payload)),
    ]


def dlq_table(entries: Iterable[DlqEntry]) -> Table:
    table = Table("ID", "TYPE", "ORIGINAL JOB", "ATTEMPTS", "DEAD-LETTERED", "REASON")
    for column in table.columns[:5]:
        column.no_wrap = True
    table.columns[3].justify = "right"
    for entry in entries:
        table.add_row(
            plain(entry.id),
            plain(entry.type),
            plain(entry.original_job_id),
            plain(entry.attempts),
            plain(when(entry.dlq_at)),
            plain(" ".join(entry.error_reason.split())),
        )
    return table
