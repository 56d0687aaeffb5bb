"""The history checker on handcrafted histories: a clean run passes, and each detector
fires on the defect it names (and only that one)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from chaos_history import (
    Attempt,
    Cancel,
    DlqEntry,
    History,
    Job,
    Kind,
    LeaseHolding,
    Process,
    Submission,
    check,
)

T0 = 1_000_000.0
A = Process(incarnation="a", ordinal=0)
B = Process(incarnation="b", ordinal=1)
ID = uuid.UUID(int=1)
OTHER = uuid.UUID(int=2)
ERROR = {"attempt": 1, "error_type": "Permanent", "message": "no", "at": "2026-01-01T00:00:00Z"}


def ok_job(job_id: uuid.UUID = ID, *, attempts: int = 1, by: str = "a", **extra: Any) -> Job:
    return Job(
        id=job_id,
        state="succeeded",
        shard=3,
        attempts=attempts,
        result={"incarnation": by, "attempt": attempts},
        finished_at=T0 + 10,
        **extra,
    )


def run(
    attempt: int = 1, by: str = "a", start: float = 1, end: float | None = 2, **extra: Any
) -> Attempt:
    return Attempt(
        job_id=extra.pop("job_id", ID),
        attempt=attempt,
        incarnation=by,
        started=T0 + start,
        ended=None if end is None else T0 + end,
        outcome=extra.pop("outcome", "ok" if end is not None else None),
        **extra,
    )


def history(**fields: Any) -> History:
    base: dict[str, Any] = {
        "submitted": (Submission(id=ID, returned_at=T0),),
        "attempts": (run(),),
        "processes": (A, B),
        "jobs": (ok_job(),),
        "observed_at": T0 + 100,
    }
    return History(**(base | fields))


def kinds(h: History, *, stuck_after_s: float = 30.0) -> dict[Kind, int]:
    verdict = check(h, stuck_after_s=stuck_after_s)
    return {kind: verdict.count(kind) for kind in Kind if verdict.count(kind)}


def test_a_clean_history_passes_with_its_figures() -> None:
    verdict = check(history(), stuck_after_s=30)
    assert verdict.ok, verdict.render()
    assert verdict.figures["submitted"] == 1
    assert verdict.figures["succeeded"] == 1
    assert "verdict: OK" in verdict.render()


def test_retries_and_a_killed_attempt_are_not_problems() -> None:
    dead_a = A.model_copy(update={"exited_at": T0 + 3})
    h = history(
        processes=(dead_a, B),
        attempts=(run(1, "a", 1, None), run(2, "b", 5, 6)),
        jobs=(ok_job(attempts=2, by="b"),),
    )
    assert kinds(h) == {}


def test_lost_job() -> None:
    assert kinds(history(jobs=())) == {Kind.LOST: 1}


def test_stuck_queued_job_while_a_worker_lives() -> None:
    queued = Job(id=ID, state="queued", shard=3, attempts=1, run_at=T0 + 50)
    assert kinds(history(jobs=(queued,)), stuck_after_s=30) == {Kind.STUCK: 1}
    assert kinds(history(jobs=(queued,)), stuck_after_s=60) == {}


def test_a_queued_job_is_not_stuck_when_no_worker_lives() -> None:
    queued = Job(id=ID, state="queued", shard=3, attempts=1, run_at=T0)
    gone = tuple(p.model_copy(update={"exited_at": T0}) for p in (A, B))
    assert kinds(history(jobs=(queued,), processes=gone)) == {}


def test_stuck_running_job_of_a_dead_worker() -> None:
    running = Job(id=ID, state="running", shard=3, attempts=1, run_at=T0, worker="0:a")
    dead_a = A.model_copy(update={"exited_at": T0 + 2})
    h = history(jobs=(running,), processes=(dead_a, B), attempts=(run(1, "a", 1, None),))
    assert kinds(h) == {Kind.STUCK: 1}


@pytest.mark.parametrize(("executing", "stuck"), [(True, 0), (False, 1)])
def test_job_held_by_a_live_worker_that_does_not_run_it(executing: bool, stuck: int) -> None:
    running = Job(id=ID, state="running", shard=3, attempts=1, worker="0:a", started_at=T0)
    attempt = run(1, "a", 1, None if executing else 2)
    h = history(jobs=(running,), attempts=(attempt,))
    assert kinds(h) == ({Kind.STUCK: 1} if stuck else {})


def test_job_in_two_terminal_states() -> None:
    cancelled = Job(id=ID, state="cancelled", shard=3, attempts=1)
    assert kinds(history(jobs=(ok_job(), cancelled))) == {Kind.DOUBLE_TERMINAL: 1}


def test_dlq_entry_of_a_succeeded_job() -> None:
    entry = dlq_entry()
    assert kinds(history(dlq=(entry,))) == {Kind.DOUBLE_TERMINAL: 1}


def test_accepted_completion_of_a_superseded_attempt() -> None:
    h = history(
        attempts=(run(1, "a", 1, 9), run(2, "b", 5, 6)),
        jobs=(ok_job(attempts=1, by="a"),),
    )
    assert kinds(h) == {Kind.SUPERSEDED_ACCEPTED: 1, Kind.OVERLAP: 1}


def test_accepted_completion_from_an_older_epoch() -> None:
    h = history(
        processes=(A.model_copy(update={"frozen": ((T0 + 1.5, T0 + 8),)}), B),
        attempts=(run(1, "a", 1, 9, epoch=1), run(1, "b", 4, 5, epoch=2)),
        jobs=(ok_job(attempts=1, by="a"),),
    )
    assert kinds(h) == {Kind.SUPERSEDED_ACCEPTED: 1}


def test_success_whose_result_names_no_recorded_attempt() -> None:
    assert kinds(history(jobs=(ok_job(by="b"),))) == {Kind.SUPERSEDED_ACCEPTED: 1}


def test_overlap_of_two_live_workers() -> None:
    h = history(
        attempts=(run(2, "a", 1, 5, outcome="failed"), run(3, "b", 3, 4)),
        jobs=(ok_job(attempts=3, by="b"),),
    )
    assert kinds(h) == {Kind.OVERLAP: 1}


def test_no_overlap_when_the_first_worker_was_frozen() -> None:
    frozen_a = A.model_copy(update={"frozen": ((T0 + 2, T0 + 6),)})
    h = history(
        processes=(frozen_a, B),
        attempts=(run(1, "a", 1, 7, outcome="ok"), run(2, "b", 3, 4)),
        jobs=(ok_job(attempts=2, by="b"),),
    )
    assert kinds(h) == {}


def test_no_overlap_between_a_zombie_and_its_successor_of_one_ordinal() -> None:
    successor = Process(incarnation="a2", ordinal=0)
    h = history(
        processes=(A, successor, B),
        attempts=(run(1, "a", 1, 5, outcome="ok"), run(2, "a2", 3, 4)),
        jobs=(ok_job(attempts=2, by="a2"),),
    )
    assert kinds(h) == {}


@pytest.mark.parametrize(("ended_because", "overlaps"), [("expired", 0), ("released", 1)])
def test_overlap_after_the_first_lease_was_lost(ended_because: str, overlaps: int) -> None:
    lease = LeaseHolding(shard=3, epoch=1, owner="0:a", ended_because=ended_because)
    h = history(
        leases=(lease,),
        attempts=(run(1, "a", 1, 5, shard=3, epoch=1), run(2, "b", 3, 4, shard=3, epoch=2)),
        jobs=(ok_job(attempts=2, by="b"),),
    )
    assert kinds(h) == ({Kind.OVERLAP: 1} if overlaps else {})


def test_cancel_that_did_not_stick() -> None:
    cancel = Cancel(job_id=ID, answer="cancel_requested", answered_at=T0 + 3, attempts_then=1)
    h = history(
        cancels=(cancel,),
        attempts=(run(1, "a", 1, None), run(2, "b", 5, 6)),
        processes=(A.model_copy(update={"exited_at": T0 + 4}), B),
        jobs=(ok_job(attempts=2, by="b"),),
    )
    assert kinds(h) == {Kind.CANCEL_LOST: 1}


def test_a_cancel_racing_the_last_attempt_may_lose() -> None:
    cancel = Cancel(job_id=ID, answer="cancel_requested", answered_at=T0 + 1.5, attempts_then=1)
    assert kinds(history(cancels=(cancel,))) == {}


def test_an_attempt_claimed_before_the_cancel_may_start_after_it() -> None:
    cancel = Cancel(job_id=ID, answer="cancel_requested", answered_at=T0 + 0.5, attempts_then=1)
    assert kinds(history(cancels=(cancel,))) == {}


@pytest.mark.parametrize("second_returned_at", [T0 + 1, T0 + 20])
def test_dedupe_violation_only_while_the_first_job_was_unfinished(
    second_returned_at: float,
) -> None:
    subs = (
        Submission(id=ID, dedupe_key="k", returned_at=T0),
        Submission(id=OTHER, dedupe_key="k", returned_at=second_returned_at),
    )
    jobs = (ok_job(dedupe_key="k"), ok_job(OTHER, dedupe_key="k"))
    attempts = (run(), run(job_id=OTHER, start=21, end=22))
    found = kinds(history(submitted=subs, jobs=jobs, attempts=attempts))
    assert found == ({Kind.DEDUPE: 1} if second_returned_at < T0 + 10 else {})


def test_two_unfinished_jobs_with_one_dedupe_key() -> None:
    queued = [Job(id=i, state="queued", shard=1, attempts=0, run_at=T0 + 99, dedupe_key="k")
              for i in (ID, OTHER)]  # fmt: skip
    subs = tuple(Submission(id=i, returned_at=T0) for i in (ID, OTHER))
    assert kinds(history(submitted=subs, jobs=tuple(queued), attempts=())) == {Kind.DEDUPE: 1}


def dlq_entry(**changes: Any) -> DlqEntry:
    fields: dict[str, Any] = {
        "original_job_id": ID,
        "app_id": "acme",
        "type": "doomed",
        "payload": {},
        "error_reason": "Permanent",
        "attempts": 1,
        "error_history": [ERROR],
        "dlq_at": T0 + 3,
    }
    return DlqEntry(**(fields | changes))


def dead_job() -> Job:
    return Job(id=ID, state="dead", shard=3, attempts=1, finished_at=T0 + 3)


def test_dead_job_with_a_complete_dlq_entry_passes() -> None:
    assert kinds(history(jobs=(dead_job(),), dlq=(dlq_entry(),))) == {}


@pytest.mark.parametrize(
    "entries",
    [
        (),
        (dlq_entry(error_reason=None),),
        (dlq_entry(error_history=[]),),
        (dlq_entry(error_history=[{"attempt": 1}]),),
        (dlq_entry(attempts=2),),
    ],
)
def test_dlq_entry_missing_or_incomplete(entries: tuple[DlqEntry, ...]) -> None:
    assert kinds(history(jobs=(dead_job(),), dlq=entries)) == {Kind.DLQ_INCOMPLETE: 1}
