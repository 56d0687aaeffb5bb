"""What ``jobpool dev`` shows: its events, its workers' output, the live table, status lines.

The supervisor (``jobpool.dev.session``) decides; this module only writes. It hands
:class:`Output` a :class:`Frame` — the last :class:`Snapshot` read from the database
and one :class:`WorkerView` per ordinal shown — whenever the display may have changed.

On a terminal (``live``) the output goes through a rich console: events and worker
lines scroll above a table of the workers and of the queue, which :meth:`Output.show`
redraws. Otherwise every line is plain text on stdout, and :meth:`Output.show` prints
one ``status …`` line (the acceptance tests parse it) when something other than a
heartbeat age changed, and at least every ``STATUS_EVERY_S``; there, a closed stdout
does not stop the supervisor.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rich.columns import Columns
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from jobpool.models import JobState, Pool, Priority, ShardId
from jobpool.store.overview import ShardHolder
from jobpool.store.schedules import ScheduleRow
from jobpool.store.workers import WorkerRow
from jobpool.timefmt import when

STATUS_EVERY_S = 5.0
"""Without a terminal, an unchanged status line is still printed this often."""


RECENT_S = 60.0
"""Jobs that ended this recently make the throughput and the recent outcomes shown."""


@dataclass
class Snapshot:
    """What the database said at the last refresh."""

    pool: Pool
    rows: dict[int, WorkerRow] = field(default_factory=dict)
    counts: dict[JobState, dict[Priority, int]] = field(default_factory=dict)
    holders: dict[ShardId, ShardHolder] = field(default_factory=dict)
    recent: dict[JobState, int] = field(default_factory=dict)  # ended in the last RECENT_S
    dlq: int = 0  # pending dead-letter entries
    schedules: list[ScheduleRow] = field(default_factory=list)
    error: str | None = None

    def total(self, state: JobState) -> int:
        """Jobs in ``state`` now (queued, running) or ended in it lately (the others)."""
        if state in self.counts:
            return sum(self.counts[state].values())
        return self.recent.get(state, 0)

    @property
    def per_minute(self) -> float:
        """Jobs that ended (any outcome) per minute, over the last ``RECENT_S``."""
        return sum(self.recent.values()) * 60.0 / RECENT_S

    def ownerless(self) -> tuple[list[int], list[int]]:
        """Shards without a live owner: (expired leases, free shards)."""
        expired = [s for s, h in sorted(self.holders.items()) if not h.live]
        free = [s for s in range(self.pool.shards) if s not in self.holders]
        return expired, free

    def shard_map(self) -> str:
        """Who holds each shard, in runs: ``0-20:w0 21-41:w1 42:expired(w2) 43-63:free``."""
        runs: list[tuple[int, int, str]] = []
        for shard in range(self.pool.shards):
            holder = self.holders.get(ShardId(shard))
            if holder is None or holder.ordinal is None:
                label = "free"
            else:
                label = f"w{holder.ordinal}" if holder.live else f"expired(w{holder.ordinal})"
            if runs and runs[-1][2] == label and runs[-1][1] == shard - 1:
                runs[-1] = (runs[-1][0], shard, label)
            else:
                runs.append((shard, shard, label))
        return " ".join(
            f"{first}{'' if first == last else f'-{last}'}:{label}" for first, last, label in runs
        )


@dataclass(frozen=True)
class WorkerView:
    """One line of the workers table."""

    ordinal: int
    pid: int | None  # of our process of this ordinal, if there is one
    state: str
    row: WorkerRow | None
    heartbeat_age: float | None

    @property
    def shards(self) -> int:
        return len(self.row.shards) if self.row else 0

    @property
    def running(self) -> int:
        return self.row.running if self.row else 0

    @property
    def done(self) -> int:
        return self.row.succeeded if self.row else 0

    @property
    def failed(self) -> int:
        return self.row.failed if self.row else 0


@dataclass(frozen=True)
class Frame:
    """Everything the display shows at one moment."""

    snapshot: Snapshot
    workers: list[WorkerView]  # one per ordinal shown, in order
    alive: int  # worker processes of ours still running
    stopping: bool  # the session is stopping its workers
    logs: Path


class Output:
    """Where the supervisor writes: a rich console with a live table, or plain lines."""

    def __init__(self, *, live: bool) -> None:
        self.console = Console(highlight=False) if live else None
        self._live: Live | None = None
        self._last_status = ("", 0.0)  # the last status line printed (ages aside), when

    def event(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        if self.console is not None:
            self.console.print(Text.assemble((f"{stamp} ", "dim"), ("dev ", "bold"), message))
        else:
            _print(f"{stamp} dev {message}")

    def worker_line(self, ordinal: int, line: str) -> None:
        if self.console is not None:
            prefix = Text(f"worker {ordinal} | ", style=f"bold {_COLOURS[ordinal % len(_COLOURS)]}")
            self.console.print(prefix + Text(line), soft_wrap=True)
        else:
            _print(f"worker {ordinal} | {line}")

    def banner(self, lines: list[str]) -> None:
        if self.console is not None:
            head, *rest = lines
            self.console.print(Text(head, style="bold"))
            for line in rest:
                self.console.print(Text(line), soft_wrap=True)
        else:
            for line in lines:
                _print(line)

    @contextlib.contextmanager
    def showing(self, frame: Frame) -> Iterator[None]:
        """On a terminal, a live display of ``frame``, which :meth:`show` then updates."""
        if self.console is None:
            yield
            return
        with Live(render(frame), console=self.console, auto_refresh=False) as live:
            self._live = live
            try:
                yield
            finally:
                self._live = None

    def show(self, frame: Frame, *, force: bool = False) -> None:
        """Redraw the live display; without one, print the status line if it is due.

        ``force`` prints it even when nothing changed.
        """
        if self.console is not None:
            if self._live is not None:
                self._live.update(render(frame), refresh=True)
            return
        line = status_line(frame)
        signature = _without_ages(line)
        last_signature, last_at = self._last_status
        now = time.monotonic()
        if force or signature != last_signature or now - last_at >= STATUS_EVERY_S:
            _print(line)
            self._last_status = (signature, now)


_COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "red")


def _print(line: str) -> None:
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):  # stdout went away: keep supervising
        pass


# -- the status line -------------------------------------------------------------------


def status_line(frame: Frame) -> str:
    """The whole state on one line: ``status pool=… ring=… | w0 pid=… up … | w1 …``."""
    snapshot, views = frame.snapshot, frame.workers
    expired, free = snapshot.ownerless()
    parts = [
        f"status pool={snapshot.pool.name} ring={snapshot.pool.replicas} workers={frame.alive}"
        f" up={sum(v.state == 'up' for v in views)}"
        f" queued={snapshot.total(JobState.QUEUED)} running={snapshot.total(JobState.RUNNING)}"
        f" done={sum(v.done for v in views)} failed={sum(v.failed for v in views)}"
        f" dlq={snapshot.dlq} per_min={snapshot.per_minute:.0f}"
        f" expired_shards={len(expired)} free_shards={len(free)}"
        f" schedules={len(snapshot.schedules)}"
        f" pause={pause_word(snapshot)}"
    ]
    if snapshot.error:
        parts[0] += " db=unavailable"
    for v in views:
        parts.append(
            f"w{v.ordinal} pid={v.pid or '-'} {v.state.replace(' ', '-')}"
            f" shards={v.shards} running={v.running} done={v.done} failed={v.failed}"
            f" hb={_age(v.heartbeat_age)}"
        )
    return " | ".join(parts)


def _without_ages(line: str) -> str:
    return " ".join(part for part in line.split(" ") if not part.startswith("hb="))


# -- the live table --------------------------------------------------------------------


def render(frame: Frame) -> RenderableType:
    """The live display: a title, the workers and the jobs tables, a hint."""
    pool = frame.snapshot.pool
    title = Text.assemble(
        ("jobpool dev", "bold"),
        f"  pool {pool.name} · ring {pool.replicas} replicas (version {pool.ring_version})"
        f" · {pool.shards} shards",
    )
    parts: list[RenderableType] = [title]
    if frame.snapshot.error:
        parts.append(Text(f"database unavailable: {frame.snapshot.error}", style="bold red"))
    parts.append(
        Columns(
            [
                _workers_table(frame.workers),
                _queue_table(frame.snapshot),
                _totals_table(frame.snapshot),
            ],
            padding=(0, 4),
        )
    )
    parts.extend(_shard_lines(frame.snapshot))
    parts.extend(pause_lines(frame.snapshot))
    parts.extend(schedule_lines(frame.snapshot.schedules, datetime.now(UTC)))
    if not frame.stopping:
        hint = "Ctrl-C stops"
    elif any(v.pid is not None for v in frame.workers):  # a process of ours is still there
        hint = "stopping… (Ctrl-C again kills the workers)"
    else:
        hint = "workers stopped"
    parts.append(Text(f"{hint} · worker logs in {frame.logs}", style="dim"))
    return Group(*parts)


def _workers_table(views: list[WorkerView]) -> Table:
    table = Table(title="workers", title_justify="left", title_style="bold")
    for name in ("ordinal", "pid", "state", "shards", "running", "done", "failed"):
        table.add_column(name, justify="left" if name == "state" else "right")
    table.add_column("heartbeat", justify="right")
    for i, v in enumerate(views):
        style = {
            "up": "green", "starting": "yellow", "stopping": "yellow", "external": "cyan",
        }.get(v.state, "red")  # fmt: skip
        table.add_row(
            str(v.ordinal),
            str(v.pid or "—"),
            Text(v.state, style=style),
            _num(v.shards, v.row),
            _num(v.running, v.row),
            _num(v.done, v.row),
            _num(v.failed, v.row),
            f"{_age(v.heartbeat_age)} ago" if v.heartbeat_age is not None else "—",
            end_section=i == len(views) - 1,
        )
    table.add_row(
        "total",
        "",
        f"{sum(v.state == 'up' for v in views)} up",
        str(sum(v.shards for v in views)),
        str(sum(v.running for v in views)),
        str(sum(v.done for v in views)),
        str(sum(v.failed for v in views)),
        "",
        style="bold",
    )
    return table


def _queue_table(snapshot: Snapshot) -> Table:
    table = Table(title="jobs", title_justify="left", title_style="bold")
    table.add_column("priority")
    table.add_column("queued", justify="right")
    table.add_column("running", justify="right")
    queued = snapshot.counts.get(JobState.QUEUED, {})
    running = snapshot.counts.get(JobState.RUNNING, {})
    for i, priority in enumerate(Priority):
        table.add_row(
            priority.value,
            str(queued.get(priority, 0)),
            str(running.get(priority, 0)),
            end_section=i == len(Priority) - 1,
        )
    table.add_row("total", str(sum(queued.values())), str(sum(running.values())), style="bold")
    return table


def _totals_table(snapshot: Snapshot) -> Table:
    """Jobs per state (now, or ended in the last minute), throughput and the DLQ."""
    table = Table(title="totals", title_justify="left", title_style="bold")
    table.add_column("jobs")
    table.add_column("", justify="right")
    for state in (JobState.QUEUED, JobState.WAITING, JobState.PAUSED, JobState.RUNNING):
        table.add_row(state.value, str(snapshot.total(state)))
    for state in (JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED):
        table.add_row(f"{state.value} (last {RECENT_S:.0f}s)", str(snapshot.total(state)))
    table.add_row("ended per minute", f"{snapshot.per_minute:.0f}")
    table.add_row("dead-letter queue", str(snapshot.dlq), style="bold" if snapshot.dlq else "")
    return table


def _shard_lines(snapshot: Snapshot) -> list[RenderableType]:
    """Who holds each shard; the shards without a live owner, in red."""
    lines: list[RenderableType] = [Text(f"shards  {snapshot.shard_map()}", style="dim")]
    expired, free = snapshot.ownerless()
    if expired or free:
        lines.append(
            Text(
                f"without a live owner: {len(expired)} with an expired lease {_list(expired)}, "
                f"{len(free)} free {_list(free)}",
                style="bold red",
            )
        )
    return lines


def pause_word(snapshot: Snapshot) -> str:
    """``active``, ``paused``, or the paused types (``types:a,b``), then ``+parked=N``."""
    pause = snapshot.pool.pause
    word = "paused" if pause.paused else "active"
    if pause.types:
        word += f",types:{','.join(sorted(pause.types))}"
    parked = snapshot.total(JobState.PAUSED)
    return word + (f",parked={parked}" if parked else "")


def pause_lines(snapshot: Snapshot) -> list[RenderableType]:
    """A line while the pool or some of its types are paused (``jobpool pause``)."""
    pause = snapshot.pool.pause
    if not pause.active:
        return []
    what = "pool paused: no new job starts" if pause.paused else "pool active"
    types = f"; types paused: {', '.join(sorted(pause.types))}" if pause.types else ""
    parked = f" ({snapshot.total(JobState.PAUSED)} jobs parked)" if pause.types else ""
    return [Text(f"{what}{types}{parked} · `jobpool resume` resumes", style="bold yellow")]


def schedule_lines(schedules: list[ScheduleRow], now: datetime) -> list[RenderableType]:
    """A line per periodic schedule: cron and time zone, next tick, last enqueued."""
    return [
        Text(
            f"schedule {row.schedule.name}  {row.schedule.cron} ({row.schedule.timezone})"
            f"  next {when(row.next_tick(now))}  last {when(row.last_tick)}"
            f"  → {row.schedule.type}"
        )
        for row in schedules
    ]


def _list(shards: list[int], shown: int = 12) -> str:
    if not shards:
        return ""
    more = f", … {len(shards) - shown} more" if len(shards) > shown else ""
    return "(" + ", ".join(map(str, shards[:shown])) + more + ")"


def _num(value: int, row: WorkerRow | None) -> str:
    return str(value) if row is not None else "—"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m"
