"""DLQ retention: the operator purges a pool's replayed dead-letter entries older than
``spec.dlqRetentionDays`` and says so in an Event; pending entries stay."""

from __future__ import annotations

from datetime import UTC, datetime

from jobpool import Client
from jobpool.models import ErrorRecord, Finish, JobState, Priority
from jobpool.store.execution import job_claim_batch, job_finish_many
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
