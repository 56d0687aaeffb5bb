"""The history checker: what a chaos run recorded, judged against the product's promises.

Pure (no I/O): :func:`check` takes a :class:`History` — every submission, every
recorded attempt, every cancel and its answer, every worker process with its frozen
windows and exit, and the final database state (``jobs``, ``job_history``,
``job_dlq``) — and returns a :class:`Verdict` with the problems of each kind, counted,
with examples. The chaos tests and ``bench/chaos.py`` build the history; the unit
tests (``test_checker.py``) feed handcrafted ones, so each detector is proven to fire.

Times are wall-clock seconds since the epoch; the suite, its workers and Postgres run
on one host, so one clock. The detectors err towards silence where a clock could
mislead (e.g. a cancel is stamped when its answer arrived, after it committed), never
towards blaming a correct run.

What each kind means:

* ``lost``: submitted, but neither unfinished (``jobs``) nor finished (``job_history``).
* ``stuck``: unfinished at the end although it should have run: queued and due for
  longer than ``stuck_after_s`` while some worker lives (its shard's ring owner, or
  an adopter once the owner is gone), or ``running`` for a worker process that had
  been dead for longer than that, or claimed longer ago than that by a live worker
  that runs no attempt of it.
* ``double_terminal``: in ``jobs`` and ``job_history`` at once, a DLQ row of a job
  that did not end dead, or several DLQ rows for one job.
* ``superseded_accepted``: the accepted finish is not the job's last started attempt
  (a later attempt had started, or started under a newer lease epoch), or a success
  whose result names an attempt that was not recorded or not its last.
* ``overlap``: two attempts of one job whose executions overlapped in time, by two
  workers both live and unfenced. Not counted: an attempt interrupted by a freeze of
  its process (a frozen process executes nothing; its lease lapsed and it is fenced
  when it resumes), a pair run by two incarnations of one ordinal (a new incarnation
  takes its ordinal's shards at once, as a StatefulSet runs one pod per ordinal: the
  older one is a zombie, fenced by the epoch bump), and an attempt whose lease (its
  shard and epoch in the lease history) ended ``expired`` or ``superseded``: its worker
  had truly lost the shard (e.g. it could not renew through a database outage) and is
  fenced. Whichever way, the late completion of the fenced attempt is judged by the
  check above.
* ``cancel_lost``: a cancel was answered, yet the job ended otherwise than
  ``cancelled`` after a *new* attempt started after the answer: one numbered past the
  attempts the job had counted by then (read right after the answer, so a claim in
  between only makes the check more lenient). An attempt claimed before the cancel may
  still start and run to its end before its worker learns of the cancel (the answer
  was ``cancel_requested``: the worker is signalled, not waited for).
* ``dedupe``: two unfinished jobs with one dedupe key, or a submit that got a new job
  for a key whose job was still unfinished when the submit returned.
* ``dlq_incomplete``: a dead job without a DLQ row, or a DLQ row with a field missing
  or inconsistent with the job (attempts, error history).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from enum import StrEnum
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

FINISHED = frozenset({"succeeded", "cancelled", "dead"})


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True)


class Submission(_Record):
    id: UUID
    dedupe_key: str | None = None
    returned_at: float
    """When the submit call returned (its insert had committed by then)."""


class Attempt(_Record):
    job_id: UUID
    attempt: int
    incarnation: str
    shard: int | None = None
    epoch: int | None = None
    started: float
    ended: float | None = None
    outcome: str | None = None


class Process(_Record):
    """One worker process (incarnation) of the run."""

    incarnation: str
    ordinal: int
    frozen: tuple[tuple[float, float], ...] = ()
    exited_at: float | None = None
    """``None``: still running when the final state was read."""


class LeaseHolding(_Record):
    """One holding of a shard lease, from the product's lease history."""

    shard: int
    epoch: int
    owner: str
    ended_because: str | None = None
    """``released``, ``expired``, ``superseded``, or ``None`` while held."""


class Cancel(_Record):
    job_id: UUID
    answer: Literal["cancelled", "cancel_requested"]
    answered_at: float
    attempts_then: int
    """The job's attempt count read right after the answer."""


class Job(_Record):
    """A job's final row: from ``jobs`` (queued, running) or ``job_history``."""

    id: UUID
    state: Literal["queued", "running", "succeeded", "cancelled", "dead"]
    shard: int
    attempts: int
    run_at: float | None = None
    worker: str | None = None
    """Lease owner ``ordinal:incarnation`` of a running job."""
    started_at: float | None = None
    """When the current (or last) attempt was claimed."""
    result: Any = None
    dedupe_key: str | None = None
    finished_at: float | None = None


class DlqEntry(_Record):
    original_job_id: UUID
    app_id: str | None
    type: str | None
    payload: Any
    error_reason: str | None
    attempts: int | None
    error_history: list[dict[str, Any]]
    dlq_at: float | None


class History(_Record):
    submitted: tuple[Submission, ...]
    attempts: tuple[Attempt, ...]
    processes: tuple[Process, ...]
    cancels: tuple[Cancel, ...] = ()
    jobs: tuple[Job, ...]
    """Both the unfinished rows and the finished ones (a job may wrongly be in both)."""
    dlq: tuple[DlqEntry, ...] = ()
    leases: tuple[LeaseHolding, ...] = ()
    observed_at: float
    """When the final state was read."""


class Kind(StrEnum):
    LOST = "lost"
    STUCK = "stuck"
    DOUBLE_TERMINAL = "double_terminal"
    SUPERSEDED_ACCEPTED = "superseded_accepted"
    OVERLAP = "overlap"
    CANCEL_LOST = "cancel_lost"
    DEDUPE = "dedupe"
    DLQ_INCOMPLETE = "dlq_incomplete"


class Verdict(_Record):
    problems: dict[Kind, list[str]] = Field(default_factory=dict)
    figures: dict[str, int] = Field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(self.problems.values())

    def count(self, kind: Kind) -> int:
        return len(self.problems.get(kind, []))

    def render(self, *, shown: int = 5) -> str:
        """One line per kind with its count, then a few examples of each problem."""
        lines = ["verdict: " + ("OK" if self.ok else "PROBLEMS")]
        lines.append("  " + ", ".join(f"{kind}={self.count(kind)}" for kind in Kind))
        lines.append("  " + ", ".join(f"{name}={value}" for name, value in self.figures.items()))
        for kind in Kind:
            items = self.problems.get(kind, [])
            lines += [f"  {kind}: {item}" for item in items[:shown]]
            if len(items) > shown:
                lines.append(f"  {kind}: ... and {len(items) - shown} more")
        return "\n".join(lines)


def check(history: History, *, stuck_after_s: float) -> Verdict:
    """Judge ``history``; ``stuck_after_s`` bounds how long a due job may wait."""
    view = _View(history)
    problems = {
        Kind.LOST: _lost(view),
        Kind.STUCK: _stuck(view, stuck_after_s),
        Kind.DOUBLE_TERMINAL: _double_terminal(view),
        Kind.SUPERSEDED_ACCEPTED: _superseded(view),
        Kind.OVERLAP: _overlaps(view),
        Kind.CANCEL_LOST: _cancels_lost(view),
        Kind.DEDUPE: _dedupe(view),
        Kind.DLQ_INCOMPLETE: _dlq_incomplete(view),
    }
    return Verdict(problems=problems, figures=_figures(view))


class _View:
    """The history indexed for the detectors."""

    def __init__(self, history: History) -> None:
        self.h = history
        self.rows: dict[UUID, list[Job]] = defaultdict(list)
        for job in history.jobs:
            self.rows[job.id].append(job)
        self.final = {job_id: _most_final(rows) for job_id, rows in self.rows.items()}
        self.attempts: dict[UUID, list[Attempt]] = defaultdict(list)
        for attempt in sorted(history.attempts, key=lambda a: a.started):
            self.attempts[attempt.job_id].append(attempt)
        self.processes = {p.incarnation: p for p in history.processes}
        self.lost_leases = {
            (lease.shard, lease.epoch)
            for lease in history.leases
            if lease.ended_because in {"expired", "superseded"}
        }
        self.dlq: dict[UUID, list[DlqEntry]] = defaultdict(list)
        for entry in history.dlq:
            self.dlq[entry.original_job_id].append(entry)

    def live(self) -> list[Process]:
        return [p for p in self.h.processes if p.exited_at is None]

    def end_of(self, attempt: Attempt) -> float:
        """When the attempt's execution ended at the latest."""
        if attempt.ended is not None:
            return attempt.ended
        process = self.processes.get(attempt.incarnation)
        if process is not None and process.exited_at is not None:
            return process.exited_at
        return self.h.observed_at

    def same_ordinal(self, one: Attempt, other: Attempt) -> bool:
        """Run by two incarnations of one ordinal (a zombie and its successor)."""
        first, second = self.processes.get(one.incarnation), self.processes.get(other.incarnation)
        return (
            first is not None
            and second is not None
            and first.incarnation != second.incarnation
            and first.ordinal == second.ordinal
        )

    def fenced(self, attempt: Attempt) -> bool:
        """Its lease ended by expiry or supersession: its worker had lost the shard."""
        return (attempt.shard, attempt.epoch) in self.lost_leases

    def interrupted(self, attempt: Attempt) -> bool:
        """Its process was frozen at some point while it ran."""
        process = self.processes.get(attempt.incarnation)
        end = self.end_of(attempt)
        frozen = process.frozen if process else ()
        return any(attempt.started < thawed and end > stopped for stopped, thawed in frozen)


def _most_final(rows: list[Job]) -> Job:
    finished = [row for row in rows if row.state in FINISHED]
    return finished[0] if finished else rows[0]


def _lost(view: _View) -> list[str]:
    seen: set[UUID] = set()
    lost = []
    for sub in view.h.submitted:
        if sub.id not in view.rows and sub.id not in seen:
            seen.add(sub.id)
            lost.append(f"job {sub.id} (submitted at {sub.returned_at:.3f}) is nowhere")
    return lost


def _stuck(view: _View, stuck_after_s: float) -> list[str]:
    stuck = []
    for job in view.final.values():
        if job.state == "queued":
            stuck += _stuck_queued(view, job, stuck_after_s)
        elif job.state == "running":
            stuck += _stuck_running(view, job, stuck_after_s)
    return stuck


def _stuck_queued(view: _View, job: Job, stuck_after_s: float) -> list[str]:
    live = view.live()
    late = view.h.observed_at - job.run_at if job.run_at is not None else 0.0
    if not live or late <= stuck_after_s:
        return []
    return [
        f"job {job.id} queued on shard {job.shard}, due {late:.1f} s ago, "
        f"{job.attempts} attempts; live ordinals {sorted(p.ordinal for p in live)}"
    ]


def _stuck_running(view: _View, job: Job, stuck_after_s: float) -> list[str]:
    """Claimed by a process dead for longer than the bound, or held for longer than the
    bound by a live one that runs no attempt of it."""
    now = view.h.observed_at
    incarnation = (job.worker or "").partition(":")[2]
    process = view.processes.get(incarnation)
    if process is not None and process.exited_at is not None:
        dead_for = now - process.exited_at
        if dead_for <= stuck_after_s:
            return []
        return [
            f"job {job.id} running on shard {job.shard} for {job.worker}, "
            f"whose process exited {dead_for:.1f} s ago"
        ]
    held_for = now - job.started_at if job.started_at is not None else 0.0
    executing = any(
        a.ended is None and a.incarnation == incarnation for a in view.attempts.get(job.id, [])
    )
    if executing or held_for <= stuck_after_s:
        return []
    return [
        f"job {job.id} running on shard {job.shard} for {job.worker} (alive) for "
        f"{held_for:.1f} s, attempt {job.attempts}, but no attempt of it runs there"
    ]


def _double_terminal(view: _View) -> list[str]:
    found = []
    for job_id, rows in view.rows.items():
        states = sorted(row.state for row in rows)
        if len(rows) > 1:
            found.append(f"job {job_id} has {len(rows)} rows: {', '.join(states)}")
    for job_id, entries in view.dlq.items():
        job = view.final.get(job_id)
        if len(entries) > 1:
            found.append(f"job {job_id} has {len(entries)} DLQ entries")
        if job is not None and job.state != "dead":
            found.append(f"job {job_id} ended {job.state} and has a DLQ entry")
    return found


def _superseded(view: _View) -> list[str]:
    found = []
    for job in view.final.values():
        if job.state not in {"succeeded", "dead"}:
            continue
        runs = view.attempts.get(job.id, [])
        later = [a for a in runs if a.attempt > job.attempts]
        if later:
            found.append(
                f"job {job.id} ended {job.state} by attempt {job.attempts}, but attempt "
                f"{later[0].attempt} had started ({later[0].incarnation})"
            )
            continue
        if job.state == "succeeded":
            found += _accepted_problems(job, runs)
    return found


def _accepted_problems(job: Job, runs: list[Attempt]) -> list[str]:
    """The attempt a success's result names: recorded, the last, under the newest epoch."""
    result = job.result if isinstance(job.result, dict) else {}
    number, incarnation = result.get("attempt"), result.get("incarnation")
    accepted = [a for a in runs if a.attempt == number and a.incarnation == incarnation]
    if number != job.attempts or not accepted:
        return [
            f"job {job.id} succeeded with attempts={job.attempts} but its result names "
            f"attempt {number} of {incarnation}, recorded: {len(accepted)}"
        ]
    epochs = [a.epoch for a in runs if a.epoch is not None]
    mine = accepted[-1]
    if mine.epoch is not None and epochs and mine.epoch < max(epochs):
        return [
            f"job {job.id} accepted attempt {number} of {incarnation} at epoch {mine.epoch}, "
            f"but an attempt ran under epoch {max(epochs)}"
        ]
    newer = [a for a in runs if a.attempt == number and a.started > mine.started]
    return [
        f"job {job.id}: attempt {number} ran again in {a.incarnation} after {incarnation}'s, "
        f"whose completion was accepted"
        for a in newer
    ]


def _overlaps(view: _View) -> list[str]:
    found = []
    for job_id, runs in view.attempts.items():
        active = [a for a in runs if not view.interrupted(a)]
        for i, first in enumerate(active):
            first_end = view.end_of(first)
            found += [
                f"job {job_id}: {_describe(view, first)} overlaps {_describe(view, other)}"
                for other in active[i + 1 :]
                if other.started < first_end
                and not view.same_ordinal(first, other)
                and not view.fenced(first)
            ]
    return found


def _describe(view: _View, attempt: Attempt) -> str:
    return (
        f"[attempt {attempt.attempt} of {attempt.incarnation} epoch {attempt.epoch} "
        f"{attempt.started:.3f}..{view.end_of(attempt):.3f} {attempt.outcome or 'no end'}]"
    )


def _cancels_lost(view: _View) -> list[str]:
    found = []
    for cancel in view.h.cancels:
        job = view.final.get(cancel.job_id)
        if job is None or job.state not in FINISHED or job.state == "cancelled":
            continue
        after = [
            a
            for a in view.attempts.get(cancel.job_id, [])
            if a.started > cancel.answered_at and a.attempt > cancel.attempts_then
        ]
        if after:
            found.append(
                f"job {cancel.job_id}: cancel answered {cancel.answer} at "
                f"{cancel.answered_at:.3f}, then attempt {after[0].attempt} started "
                f"{after[0].started - cancel.answered_at:+.3f} s later and the job ended "
                f"{job.state}"
            )
    return found


def _dedupe(view: _View) -> list[str]:
    found = []
    unfinished: dict[str, list[UUID]] = defaultdict(list)
    for job in view.final.values():
        if job.dedupe_key is not None and job.state not in FINISHED:
            unfinished[job.dedupe_key].append(job.id)
    found += [
        f"dedupe key {key!r}: {len(ids)} unfinished jobs {ids}"
        for key, ids in unfinished.items()
        if len(ids) > 1
    ]
    by_key: dict[str, list[Submission]] = defaultdict(list)
    for sub in view.h.submitted:
        if sub.dedupe_key is not None:
            by_key[sub.dedupe_key].append(sub)
    for key, subs in by_key.items():
        found += _dedupe_submits(view, key, subs)
    return found


def _dedupe_submits(view: _View, key: str, subs: Iterable[Submission]) -> list[str]:
    """A submit that got a new job while an earlier job of its key surely was unfinished."""
    found = []
    ordered = sorted(subs, key=lambda s: s.returned_at)
    for i, sub in enumerate(ordered):
        for earlier in ordered[:i]:
            job = view.final.get(earlier.id)
            open_until = job.finished_at if job and job.finished_at else None
            unfinished_then = open_until is None or sub.returned_at < open_until
            if earlier.id != sub.id and unfinished_then and job is not None:
                found.append(
                    f"dedupe key {key!r}: submit at {sub.returned_at:.3f} made job {sub.id} "
                    f"while job {earlier.id} was unfinished"
                )
                break
    return found


_DLQ_ERROR_FIELDS = ("attempt", "error_type", "message", "at")


def _dlq_incomplete(view: _View) -> list[str]:
    found = []
    for job in view.final.values():
        if job.state == "dead" and not view.dlq.get(job.id):
            found.append(f"job {job.id} is dead but has no DLQ entry")
    for job_id, entries in view.dlq.items():
        job = view.final.get(job_id)
        for entry in entries:
            missing = [
                name
                for name in ("app_id", "type", "payload", "error_reason", "attempts", "dlq_at")
                if getattr(entry, name) in (None, "")
            ]
            if not entry.error_history or any(
                field not in error for error in entry.error_history for field in _DLQ_ERROR_FIELDS
            ):
                missing.append("error_history")
            if job is not None and entry.attempts != job.attempts:
                missing.append(f"attempts ({entry.attempts} vs the job's {job.attempts})")
            if missing:
                found.append(f"DLQ entry of job {job_id}: missing or wrong {', '.join(missing)}")
    return found


def _figures(view: _View) -> dict[str, int]:
    states = Counter(job.state for job in view.final.values())
    outcomes = Counter(a.outcome or "no end" for a in view.h.attempts)
    return {
        "submitted": len({s.id for s in view.h.submitted}),
        **{state: states.get(state, 0) for state in ("succeeded", "cancelled", "dead")},
        "unfinished": states.get("queued", 0) + states.get("running", 0),
        "attempts": len(view.h.attempts),
        "attempts_cut_short": outcomes.get("no end", 0) + outcomes.get("cancelled", 0),
        "retried_jobs": sum(job.attempts > 1 for job in view.final.values()),
        "cancels": len(view.h.cancels),
        "processes": len(view.h.processes),
        "frozen": sum(len(p.frozen) for p in view.h.processes),
    }
