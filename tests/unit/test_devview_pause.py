"""``jobpool dev`` shows a paused pool or paused types, and the parked jobs: a line in
its live view, a ``pause=`` field on its plain status line, a row in the totals."""

from __future__ import annotations

import re
from pathlib import Path

from rich.console import Console

from jobpool.dev.view import Frame, Snapshot, render, status_line
from jobpool.models import JobState, Pool, PoolPause, Priority


def frame(pause: PoolPause, parked: int = 0) -> Frame:
    pool = Pool(name="demo", shards=4, replicas=1, ring_version=1, pause=pause)
    counts = {JobState.PAUSED: {Priority.NORMAL: parked}}
    snapshot = Snapshot(pool=pool, counts=counts)
    return Frame(snapshot=snapshot, workers=[], alive=0, stopping=False, logs=Path("/tmp/x"))


def shown(frame: Frame) -> str:
    console = Console(width=200, record=True)
    console.print(render(frame))
    return console.export_text()


def test_an_active_pool_shows_no_pause_line() -> None:
    assert " pause=active" in status_line(frame(PoolPause()))
    assert "paused:" not in shown(frame(PoolPause()))


def test_paused_types_and_their_parked_jobs_are_shown() -> None:
    paused = frame(PoolPause(types=frozenset({"report", "export"})), parked=7)
    assert " pause=active,types:export,report,parked=7" in status_line(paused)
    text = shown(paused)
    assert "pool active; types paused: export, report (7 jobs parked)" in text
    assert re.search(r"│ paused +│ 7 │", text)  # the totals table's row


def test_a_paused_pool_says_nothing_new_starts() -> None:
    paused = frame(PoolPause(paused=True))
    assert " pause=paused" in status_line(paused)
    assert "pool paused: no new job starts" in shown(paused)
