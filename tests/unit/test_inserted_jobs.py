"""The jobs a submit returns (jobpool/store/rows.py) are the models pydantic would build.

A batch without keys gets back only the insert's time, and its jobs are built without
pydantic's per-field loop (thousands per batch): each must be the very model that
validating the same fields gives — equal, with the same fields set, repr and dump.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from jobpool.ids import new_job_ids
from jobpool.models import Duration, Job, JobState, NewJob, Priority, ShardId
from jobpool.store.rows import new_jobs

CREATED = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
LATER = datetime(2031, 5, 17, 8, 30, 15, 123456, tzinfo=UTC)


def _new_job(run_at: datetime | None, priority: Priority) -> NewJob:
    [job_id] = new_job_ids(1)
    return NewJob(
        id=job_id,
        payload_json="{}",
        shard=ShardId(5),
        type="email.send",
        priority=priority,
        run_at=run_at,
        duration=Duration.LONG,
    )


def _validated(job: NewJob, run_at: datetime) -> Job:
    return Job.model_validate(
        {
            "id": job.id,
            "pool": "emails",
            "tenant": "acme",
            "type": job.type,
            "priority": job.priority,
            "shard": job.shard,
            "state": JobState.QUEUED,
            "run_at": run_at,
            "created_at": CREATED,
            "dedupe_key": None,
            "duplicate": False,
        }
    )


def test_jobs_without_keys_are_the_models_validation_builds() -> None:
    batch = [_new_job(None, Priority.NORMAL), _new_job(LATER, Priority.CRITICAL)]
    built = new_jobs("emails", "acme", batch, created_at=CREATED)
    expected = [_validated(batch[0], CREATED), _validated(batch[1], LATER)]
    assert built == expected
    for job, model in zip(built, expected, strict=True):
        assert type(job) is Job
        assert repr(job) == repr(model)
        assert job.model_dump() == model.model_dump()
        assert job.model_dump_json() == model.model_dump_json()
        assert job.model_fields_set == model.model_fields_set
        assert job.model_copy(update={"shard": 7}).shard == 7
        assert job.shard == 5  # a copy leaves the original as it was


def test_a_built_job_stays_frozen() -> None:
    [job] = new_jobs("emails", "acme", [_new_job(None, Priority.LOW)], created_at=CREATED)
    with pytest.raises(ValidationError, match="frozen"):
        job.shard = ShardId(9)  # type: ignore[misc]
    assert job.shard == 5
