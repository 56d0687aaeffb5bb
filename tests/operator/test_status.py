"""Status projection: the pure rules, then the operator projecting real Postgres figures."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import asyncpg
import pg
import pytest

from jobpool import Client
from jobpool.models import ErrorRecord, Finish, JobState, Priority
from jobpool.operator.spec import JobPoolStatus, parse_spec
from jobpool.operator.status import (
    ConditionState,
    Observation,
    PoolFigures,
    degraded,
    degraded_transition,
    figures_status,
    progressing,
    project,
    ready,
    set_condition,
    status_changes,
)
from jobpool.sharding import ordinal_for
from jobpool.store.connect import dsn_secrets
from jobpool.store.execution import job_claim_batch, job_finish_many
from jobpool.store.leases import lease_release, lease_take
from jobpool.store.workers import WorkerCounters, WorkerRow, worker_heartbeat

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
SPEC = {
    "replicas": 2,
    "image": "registry.example/app:1.0",
    "app": "app.jobs:registry",
    "shards": 4,
    "leaseTtlSeconds": 15,
    "database": {"secretRef": {"name": "pool-db"}},
}
STATUS_FIELDS = {field.alias for field in JobPoolStatus.model_fields.values()}


def figures(**changes) -> PoolFigures:
    values = {
        "now": T0,
        "queued": {Priority.NORMAL: 3, Priority.HIGH: 1},
        "running": 2,
        "dlq": 0,
        "dlq_recent": 0,
        "dlq_window_s": 300.0,
        "oldest_queued_s": 12.34,
        "finished_recent": 30,
        "throughput_window_s": 60.0,
        "workers": (worker(0, T0), worker(1, T0 - timedelta(seconds=5))),
        "ring_version": 3,
        "shards": 4,
    }
    return PoolFigures(**{**values, **changes})


def worker(ordinal: int, beat: datetime) -> WorkerRow:
    return WorkerRow(
        ordinal=ordinal,
        incarnation=f"pod-{ordinal}",
        started_at=T0 - timedelta(hours=1),
        heartbeat_at=beat,
        shards=(ordinal, ordinal + 2),
        running=1,
        succeeded=10,
        failed=1,
    )


def sts(ready_replicas: int = 2, *, replicas: int = 2, observed: int | None = 1) -> dict:
    status = {"replicas": replicas, "readyReplicas": ready_replicas, "updatedReplicas": replicas}
    if observed is not None:
        status["observedGeneration"] = observed
    return {"metadata": {"generation": 1}, "status": status}


def pod(
    ordinal: int, *, ready: bool = True, since: timedelta = timedelta(hours=1), gone: bool = False
) -> dict:
    """Worker pod ``emails-<ordinal>``: Ready (or not) for ``since``; terminating if ``gone``."""
    metadata: dict = {"name": f"emails-{ordinal}"}
    if gone:
        metadata["deletionTimestamp"] = "2025-01-31T12:00:00Z"
    condition = {"type": "Ready", "status": "True" if ready else "False"}
    condition["lastTransitionTime"] = (T0 - since).isoformat().replace("+00:00", "Z")
    return {"metadata": metadata, "status": {"conditions": [condition]}}


def observation(**changes) -> Observation:
    values = {
        "name": "emails",
        "spec": parse_spec(SPEC),
        "selector": "app=x",
        "statefulset": sts(),
        "figures": figures(),
        "now": T0,
        "pods": (pod(0), pod(1)),
    }
    return Observation(**{**values, **changes})


# -- the pure rules ------------------------------------------------------------------


def test_a_healthy_pool_is_ready_stable_and_not_degraded():
    observed = observation()
    assert ready(observed) == ConditionState(True, "WorkersReady", "2/2 workers ready")
    assert progressing(observed).status is False
    assert degraded(observed) == ConditionState(False, "Healthy", "")


def test_degraded_reasons_in_order_of_precedence():
    stale = figures(workers=(worker(0, T0), worker(1, T0 - timedelta(seconds=16))), dlq_recent=2)
    assert degraded(observation(figures=stale, database_error="boom")).reason == (
        "DatabaseUnreachable"
    )
    missing = degraded(observation(figures=stale))
    assert missing.reason == "WorkersMissingHeartbeats"
    assert missing.message.startswith("ordinals 1 have not heartbeated")
    assert degraded(observation(figures=figures(dlq_recent=2, dlq=5))) == ConditionState(
        True, "DlqGrowing", "2 jobs dead-lettered in the last 300 s; 5 entries pending"
    )
    # a shard count that differs from the pool's row is an invalid spec
    assert degraded(observation(figures=figures(shards=64))).reason == "InvalidSpec"


def test_heartbeats_are_judged_per_ready_pod_that_does_not_terminate():
    no_rows = figures(workers=())

    def missing(*pods: dict) -> str:
        return degraded(observation(figures=no_rows, pods=pods)).message

    assert missing(pod(0, ready=False), pod(1, gone=True)) == ""  # a graceful stop
    assert missing(pod(0, since=timedelta(seconds=10))) == ""  # a new pod: a TTL of grace
    assert missing(pod(0, since=timedelta(seconds=16))).startswith("ordinals 0 ")
    assert missing(pod(2), pod(0, gone=True)).startswith("ordinals 2 ")  # mid-rollout
    assert ready(observation(statefulset=sts(1))).reason == "WorkersNotReady"


def test_progressing_follows_the_statefulset():
    assert progressing(observation(statefulset=None)).reason == "Creating"
    assert progressing(observation(statefulset=sts(observed=None))).reason == "Pending"
    assert progressing(observation(statefulset=sts(replicas=1))).reason == "Scaling"
    rolling = sts()
    rolling["status"]["updatedReplicas"] = 1
    assert progressing(observation(statefulset=rolling)).reason == "RollingOut"


def test_a_condition_keeps_its_transition_time_until_it_flips():
    first = set_condition([], "Degraded", ConditionState(True, "DlqGrowing", "a"), now=T0)
    later = T0 + timedelta(minutes=5)
    same = set_condition(first, "Degraded", ConditionState(True, "DlqGrowing", "b"), now=later)
    assert same[0]["lastTransitionTime"] == "2025-01-01T12:00:00Z"
    assert same[0]["message"] == "b"
    flipped = set_condition(same, "Degraded", ConditionState(False, "Healthy"), now=later)
    assert flipped[0]["lastTransitionTime"] == "2025-01-01T12:05:00Z"
    both = set_condition(flipped, "Ready", ConditionState(True, "WorkersReady"), now=later)
    assert [c["type"] for c in both] == ["Ready", "Degraded"]


def test_degraded_transitions_make_events():
    was_fine = {"type": "Degraded", "status": "False", "reason": "Healthy"}
    was_bad = {"type": "Degraded", "status": "True", "reason": "DlqGrowing"}
    bad = ConditionState(True, "DatabaseUnreachable", "down")
    fine = ConditionState(False, "Healthy")
    assert degraded_transition(was_fine, bad).reason == "Degraded"
    assert degraded_transition(was_bad, bad).message == "DatabaseUnreachable: down"
    assert degraded_transition(was_bad, ConditionState(True, "DlqGrowing", "more")) is None
    assert degraded_transition(was_bad, fine).reason == "Recovered"
    assert degraded_transition({}, fine) is None


def test_the_projection_is_a_valid_status_and_patches_only_changes():
    projection = project(observation(), {})
    status = projection.status
    assert set(status) <= STATUS_FIELDS
    JobPoolStatus.model_validate(status)
    assert status["queued"] == {"critical": 0, "high": 1, "normal": 3, "low": 0}
    assert (status["queuedTotal"], status["throughputPerMinute"]) == (4, 30.0)
    assert status["oldestQueuedSeconds"] == 12.3
    assert status["ordinals"][1] == {
        "ordinal": 1,
        "shards": 2,
        "lastHeartbeat": "2025-01-01T11:59:55Z",
        "running": 1,
        "succeeded": 10,
        "failed": 1,
    }
    assert projection.events == ()
    assert status_changes(status, project(observation(), status).status) == {}
    unreachable = project(observation(figures=None, database_error="down"), status)
    assert set(status_changes(status, unreachable.status)) == {"conditions"}  # figures kept
    assert [e.reason for e in unreachable.events] == ["Degraded"]


def test_throughput_is_per_minute_over_the_window():
    assert (
        figures_status(figures(finished_recent=10, throughput_window_s=30.0))["throughputPerMinute"]
        == 20.0
    )


# -- the operator projecting Postgres --------------------------------------------------


async def test_status_carries_the_postgres_figures(start_operator, cluster, conn, dsn):
    await start_operator()
    await cluster.create_jobpool("emails", {**SPEC, "replicas": 1})
    await cluster.eventually(
        lambda: cluster.status("emails").get("ringVersion"), what="the pool's ring"
    )
    async with Client(dsn, pool="emails", tenant="acme") as client:
        for priority, count in (("critical", 2), ("high", 3), ("normal", 4), ("low", 1)):
            await client.submit("email.send", [{"n": n} for n in range(count)], priority=priority)
        # Not due for an hour: not queued for a worker, so not in the figures (nor autoscaling).
        await client.submit("email.send", [{"n": 9}] * 2, priority="low", delay=3600)
    # Play worker 0: lease every shard, heartbeat, run both critical jobs to an end
    # (one succeeds, one is dead-lettered), and keep one normal job running.
    await lease_take(conn, "emails", owner="w0", ordinal=0, shards=range(4), ttl_s=60)
    await worker_heartbeat(
        conn, "emails", ordinal=0, incarnation="w0", shards=range(4), counters=WorkerCounters()
    )
    done = await job_claim_batch(
        conn, "emails", owner="w0", shards=range(4), lanes={Priority.CRITICAL: 2}
    )
    error = ErrorRecord(attempt=1, error_type="Boom", message="boom", at=datetime.now(UTC))
    await job_finish_many(
        conn,
        "emails",
        owner="w0",
        finishes=[
            Finish(job_id=done[0].id, state=JobState.SUCCEEDED, result_json="{}"),
            Finish(job_id=done[1].id, state=JobState.DEAD, reason="failed", error=error),
        ],
    )
    await job_claim_batch(conn, "emails", owner="w0", shards=range(4), lanes={Priority.NORMAL: 1})
    await cluster.set_statefulset_status(
        "emails", {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "observedGeneration": 1}
    )

    status = await cluster.eventually(
        lambda: (s := cluster.status("emails")).get("dlq") == 1 and s.get("running") == 1 and s,
        what="the figures",
    )
    assert status["queued"] == {"critical": 0, "high": 3, "normal": 3, "low": 1}
    assert (status["queuedTotal"], status["throughputPerMinute"]) == (7, 2.0)
    assert status["oldestQueuedSeconds"] >= 0
    assert [(o["ordinal"], o["shards"]) for o in status["ordinals"]] == [(0, 4)]
    assert (status["replicas"], status["readyReplicas"]) == (1, 1)
    JobPoolStatus.model_validate(status)
    assert set(status) <= STATUS_FIELDS
    assert cluster.condition("emails", "Ready")["status"] == "True"
    assert cluster.condition("emails", "Progressing")["reason"] == "Stable"
    growing = await cluster.eventually(
        lambda: (
            cluster.condition("emails", "Degraded").get("reason") == "DlqGrowing"
            and cluster.condition("emails", "Degraded")
        ),
        what="Degraded/DlqGrowing",
    )
    assert growing["message"].startswith("1 jobs dead-lettered in the last 300 s")
    event = await cluster.eventually(lambda: cluster.events("emails", "Degraded"), what="Event")
    assert event[-1]["type"] == "Warning"


async def test_missing_heartbeats_degrade_until_the_worker_beats(start_operator, cluster, conn):
    await start_operator()
    await cluster.create_jobpool("emails", SPEC)
    await cluster.eventually(lambda: cluster.status("emails").get("ringVersion"), what="ring")
    await worker_heartbeat(
        conn, "emails", ordinal=0, incarnation="a", shards=[0, 1], counters=WorkerCounters()
    )
    await cluster.set_statefulset_status(
        "emails", {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2, "observedGeneration": 1}
    )
    for ordinal in (0, 1):
        await cluster.add_ready_pod("emails", ordinal, since="2025-01-01T00:00:00Z")
    missing = await cluster.eventually(
        lambda: (
            cluster.condition("emails", "Degraded").get("reason") == "WorkersMissingHeartbeats"
            and cluster.condition("emails", "Degraded")
        ),
        what="Degraded/WorkersMissingHeartbeats",
    )
    assert missing["message"].startswith("ordinals 1 have not heartbeated")
    assert cluster.condition("emails", "Ready")["status"] == "False"

    await worker_heartbeat(
        conn, "emails", ordinal=1, incarnation="b", shards=[2, 3], counters=WorkerCounters()
    )
    await cluster.eventually(
        lambda: cluster.condition("emails", "Ready").get("status") == "True", what="Ready"
    )
    assert cluster.condition("emails", "Degraded")["status"] == "False"
    await cluster.eventually(lambda: cluster.events("emails", "Recovered"), what="Recovered")


def _with_password(dsn: str) -> tuple[str, str]:
    """The DSN with a password to hunt for (the test server trusts local connections)."""
    secrets = dsn_secrets(dsn)
    if secrets or os.environ.get("JOBPOOL_TEST_DSN"):
        return dsn, max(secrets, key=len, default="")
    scheme, rest = dsn.split("://", 1)
    user_info, _, host_rest = rest.rpartition("@")
    user = user_info.split(":", 1)[0] or "postgres"
    secret = "Sup3r-Secret-pw"
    return f"{scheme}://{user}:{secret}@{host_rest}", secret


async def test_unreachable_database_degrades_and_recovers(
    start_operator, cluster, dsn, server_dsn, caplog
):
    caplog.set_level(logging.DEBUG)
    operator_dsn, secret = _with_password(dsn)
    database = urlsplit(dsn).path.lstrip("/")
    await start_operator(dsn=operator_dsn)
    await cluster.create_jobpool("emails", SPEC)
    await cluster.eventually(
        lambda: cluster.condition("emails", "Degraded").get("reason") == "Healthy",
        what="a healthy pool",
    )
    admin = await asyncpg.connect(server_dsn)
    try:
        # Block new connections, then cut the existing ones: the server is there, the
        # database is not reachable — as after a failover or a pg_hba change.
        await admin.execute(f"ALTER DATABASE {pg.quote_ident(database)} ALLOW_CONNECTIONS false")
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            database,
        )
        down = await cluster.eventually(
            lambda: (
                cluster.condition("emails", "Degraded").get("reason") == "DatabaseUnreachable"
                and cluster.condition("emails", "Degraded")
            ),
            what="Degraded/DatabaseUnreachable",
        )
        assert database in down["message"]
        assert cluster.condition("emails", "Ready")["reason"] == "DatabaseUnreachable"
        assert cluster.status("emails")["queuedTotal"] == 0  # the last figures stay
    finally:
        await admin.execute(f"ALTER DATABASE {pg.quote_ident(database)} ALLOW_CONNECTIONS true")
        await admin.close()
    await cluster.eventually(
        lambda: cluster.condition("emails", "Degraded").get("status") == "False",
        what="Degraded cleared",
    )
    recovered = await cluster.eventually(
        lambda: cluster.events("emails", "Recovered"), what="Recovered"
    )
    assert "DatabaseUnreachable" in recovered[-1]["message"]
    if secret:
        everything = json.dumps([cluster.jobpool("emails"), cluster.events("emails")])
        assert secret not in everything
        assert secret not in caplog.text


@pytest.mark.parametrize("key", ["replicas", "readyReplicas", "selector", "conditions"])
def test_status_fields_exist_in_the_crd_model(key):
    assert key in STATUS_FIELDS


# -- missing ordinals (orphaned and adopted shards) -----------------------------------


def test_adopted_and_unserved_shards_name_their_missing_ordinals():
    lacking = figures(replicas=2, adopted_shards=(1,), orphaned_shards=(3,))
    owners = sorted({ordinal_for(1, 2), ordinal_for(3, 2)})
    state = degraded(observation(figures=lacking))
    assert (state.status, state.reason) == (True, "OrdinalsMissing")
    assert state.message.startswith(f"ordinals {', '.join(map(str, owners))} are missing")
    assert "1 of their shards are served by other ordinals, 1 by none" in state.message
    status = figures_status(lacking)
    assert (status["adoptedShards"], status["shardsWithoutLiveOwner"]) == (1, 1)
    assert status["missingOrdinals"] == owners
    assert degraded(observation(figures=figures(replicas=2))).status is False


async def test_an_adopted_shard_degrades_the_pool_until_it_is_handed_back(
    start_operator, cluster, conn
):
    spec = {**SPEC, "shards": 8}  # jump hash gives shards 0-3 of a ring of 2 to ordinal 0
    await start_operator()
    await cluster.create_jobpool("emails", spec)
    await cluster.eventually(lambda: cluster.status("emails").get("ringVersion"), what="ring")
    shard = next(s for s in range(spec["shards"]) if ordinal_for(s, spec["replicas"]) == 1)
    await lease_take(conn, "emails", owner="0:a", ordinal=0, shards=[shard], ttl_s=600, adopt=True)
    missing = await cluster.eventually(
        lambda: (
            cluster.condition("emails", "Degraded").get("reason") == "OrdinalsMissing"
            and cluster.condition("emails", "Degraded")
        ),
        what="Degraded/OrdinalsMissing",
    )
    assert missing["message"].startswith("ordinals 1 are missing")
    status = cluster.status("emails")
    assert (status["adoptedShards"], status["missingOrdinals"]) == (1, [1])

    await lease_release(conn, "emails", owner="0:a", shards=[shard])  # ordinal 1 returned
    await lease_take(conn, "emails", owner="1:b", ordinal=1, shards=[shard], ttl_s=600)
    await cluster.eventually(
        lambda: cluster.condition("emails", "Degraded").get("status") == "False",
        what="Degraded cleared",
    )
    assert cluster.status("emails")["missingOrdinals"] == []
