"""Retention: the operator purges a pool's replayed dead-letter entries older than
``spec.dlqRetentionDays`` and says so in an Event (pending entries stay); it applies
``spec.historyRetentionDays`` to the pool, keeps partitions ahead, drops the days past
retention with an Event, and reports it all in ``status.history``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jobpool import Client
from jobpool.ids import new_job_id
from jobpool.models import ErrorRecord, Finish, JobState, Priority
from jobpool.operator.spec import InvalidSpec, parse_spec
from jobpool.store.execution import job_claim_batch, job_finish_many
from jobpool.store.history import (
    HISTORY_DAYS_AHEAD,
    history_maintain,
    history_partition_list,
    history_retention_get,
)
from jobpool.store.leases import lease_take

SPEC = {
    "replicas": 1,
    "image": "registry.example/app:1.0",
    "app": "app.jobs:registry",
    "shards": 16,
    "dlqRetentionDays": 7,
    "database": {"secretRef": {"name": "pool-db"}},
}


async def test_replayed_entries_past_retention_are_purged(start_operator, cluster, conn, dsn):
    await start_operator(retention_interval_s=0.3)
    await cluster.create_jobpool("emails", SPEC)
    await cluster.eventually(lambda: cluster.status("emails").get("ringVersion"), what="ring")
    await lease_take(conn, "emails", owner="w0", ordinal=0, shards=range(16), ttl_s=60)
    async with Client(dsn, pool="emails", tenant="acme") as client:
        await client.submit("email.send", [{"n": n} for n in range(3)])
        claimed = await job_claim_batch(
            conn,
            "emails",
            owner="w0",
            shards=range(16),
            lanes={Priority.NORMAL: 3},
            per_shard_limit=3,
        )
        error = ErrorRecord(attempt=1, error_type="Boom", message="boom", at=datetime.now(UTC))
        dead = [
            Finish(job_id=job.id, state=JobState.DEAD, reason="failed", error=error)
            for job in claimed
        ]
        assert len(await job_finish_many(conn, "emails", owner="w0", finishes=dead)) == 3
        old, recent, pending = [entry.id for entry in (await client.dlq.list()).entries]
        await client.dlq.replay(old)
        await client.dlq.replay(recent)
    await conn.execute(
        "UPDATE job_dlq SET replayed_at = now() - interval '8 days' WHERE id = $1", old
    )

    event = await cluster.eventually(
        lambda: cluster.events("emails", "DlqPurged"), what="the DlqPurged Event"
    )

    assert "purged 1 replayed dead-letter entries older than 7 days" in event[-1]["message"]
    remaining = {row["id"] for row in await conn.fetch("SELECT id FROM job_dlq")}
    assert remaining == {recent, pending}


# -- history retention ---------------------------------------------------------------


async def test_history_retention_days_is_validated() -> None:
    assert parse_spec({**SPEC}).history_retention_days == 7
    assert parse_spec({**SPEC, "historyRetentionDays": 30}).history_retention_days == 30
    for bad in (0, 3651, "7"):
        with pytest.raises(InvalidSpec, match=r"spec\.historyRetentionDays"):
            parse_spec({**SPEC, "historyRetentionDays": bad})


async def test_the_spec_retention_reaches_the_pool_and_status_history(
    start_operator, cluster, conn
):
    await start_operator(retention_interval_s=0.3)
    await cluster.create_jobpool("emails", {**SPEC, "historyRetentionDays": 3})

    history = await cluster.eventually(
        lambda: (cluster.status("emails").get("history") or {}).get("retentionDays") == 3
        and cluster.status("emails")["history"],
        what="status.history with the pool's retention",
    )

    assert history["partitions"] >= HISTORY_DAYS_AHEAD
    kept = await history_retention_get(conn, "emails")
    assert kept.retention == timedelta(days=3)


async def test_days_past_retention_are_dropped_with_an_event(
    start_operator, cluster, conn, dsn
):
    """History of three weeks ago, in its own day's partition (the history before the
    migration, which covered it, is dropped first); the operator drops it."""
    [until] = [p for p in await history_partition_list(conn) if p.starts_at is None]
    await conn.execute(f"DROP TABLE {until.name}")
    await history_maintain(conn, at=datetime.now(UTC) - timedelta(days=21))
    job_id = new_job_id()
    await conn.execute(
        "INSERT INTO job_history (id, pool, tenant, shard, type, priority, state, payload,"
        " attempts, created_at, finished_at) VALUES ($1, 'emails', 'acme', 0, 'email.send', 1,"
        " 'succeeded', '{}', 1, now(), now() - interval '20 days')",
        job_id,
    )
    await start_operator(retention_interval_s=0.3)
    await cluster.create_jobpool("emails", SPEC)

    event = await cluster.eventually(
        lambda: cluster.events("emails", "HistoryDropped"), what="the HistoryDropped Event"
    )

    assert "dropped 4 daily history partition(s)" in event[-1]["message"]
    assert await conn.fetchval("SELECT count(*) FROM job_history") == 0
    dropped_before = await cluster.eventually(
        lambda: (cluster.status("emails").get("history") or {}).get("droppedBefore"),
        what="status.history.droppedBefore",
    )
    assert datetime.fromisoformat(dropped_before) > datetime.now(UTC) - timedelta(days=18)
