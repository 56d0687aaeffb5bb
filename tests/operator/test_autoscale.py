"""Autoscaling: the pure decision, then the operator moving replicas on queue depth."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jobpool import Client
from jobpool.operator.autoscale import (
    AUTOSCALED_AT_ANNOTATION,
    ScaleDecision,
    decide_replicas,
    desired_replicas,
    parse_time,
)
from jobpool.store.pools import pool_get

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def decide(**changes):
    values = {
        "current": 2,
        "queued": 250,
        "target_queued_per_replica": 100,
        "min_replicas": 1,
        "max_replicas": 5,
        "cooldown_s": 60.0,
        "last_change_at": None,
        "now": T0,
    }
    return decide_replicas(**{**values, **changes})


@pytest.mark.parametrize(
    ("queued", "expected"),
    [(0, 1), (1, 1), (100, 1), (101, 2), (250, 3), (500, 5), (10_000, 5)],
)
def test_desired_is_the_clamped_ceiling(queued, expected):
    assert (
        desired_replicas(queued, target_queued_per_replica=100, min_replicas=1, max_replicas=5)
        == expected
    )


def test_scale_to_zero_when_the_minimum_allows_it():
    assert desired_replicas(0, target_queued_per_replica=10, min_replicas=0, max_replicas=3) == 0
    assert desired_replicas(1, target_queued_per_replica=10, min_replicas=0, max_replicas=3) == 1


def test_a_decision_says_why():
    assert decide() == ScaleDecision(
        replicas=3, reason="250 queued jobs at 100 per replica: 2 -> 3 replicas (bounds 1..5)"
    )


def test_no_decision_when_already_right():
    assert decide(current=3) is None


def test_cooldown_holds_changes_in_both_directions():
    recent = T0 - timedelta(seconds=59)
    assert decide(last_change_at=recent) is None
    assert decide(queued=0, current=4, last_change_at=recent) is None
    assert decide(last_change_at=T0 - timedelta(seconds=60)).replicas == 3
    assert decide(queued=0, current=4, last_change_at=T0 - timedelta(minutes=5)).replicas == 1


def test_out_of_bounds_replicas_are_brought_back():
    assert decide(current=9, queued=0).replicas == 1
    assert decide(current=0, queued=0).replicas == 1


def test_the_cooldown_annotation_is_read_leniently():
    assert parse_time("2025-01-01T12:00:00+00:00") == T0
    assert parse_time("2025-01-01T12:00:00") == T0
    assert parse_time("yesterday") is None
    assert parse_time(None) is None


SPEC = {
    "replicas": 1,
    "image": "registry.example/app:1.0",
    "app": "app.jobs:registry",
    "shards": 8,
    "database": {"secretRef": {"name": "pool-db"}},
    "autoscaling": {
        "minReplicas": 1,
        "maxReplicas": 4,
        "targetQueuedPerReplica": 10,
        "cooldownSeconds": 0,
    },
}


async def test_autoscaling_follows_the_queue(start_operator, cluster, conn, dsn):
    await start_operator()
    await cluster.create_jobpool("emails", SPEC)
    await cluster.eventually(lambda: cluster.status("emails").get("ringVersion"), what="ring")

    async with Client(dsn, pool="emails", tenant="acme") as client:
        jobs = await client.submit("email.send", [{"n": n} for n in range(25)])
        await cluster.eventually(
            lambda: cluster.jobpool("emails")["spec"]["replicas"] == 3, what="3 replicas"
        )
        await cluster.eventually(
            lambda: cluster.child("StatefulSet", "emails")["spec"]["replicas"] == 3,
            what="the StatefulSet at 3",
        )

        async def ring_at(replicas: int) -> bool:
            return (await pool_get(conn, "emails")).replicas == replicas

        await cluster.eventually(lambda: ring_at(3), what="the ring at 3")
        event = await cluster.eventually(
            lambda: cluster.events("emails", "Autoscaled"), what="Autoscaled"
        )
        assert event[0]["message"] == (
            "25 queued jobs at 10 per replica: 1 -> 3 replicas (bounds 1..4)"
        )
        annotations = cluster.jobpool("emails")["metadata"]["annotations"]
        assert parse_time(annotations[AUTOSCALED_AT_ANNOTATION]) is not None

        for job in jobs:
            await client.cancel(job.id)
    await cluster.eventually(
        lambda: cluster.jobpool("emails")["spec"]["replicas"] == 1, what="back to 1 replica"
    )
    await cluster.eventually(
        lambda: cluster.child("StatefulSet", "emails")["spec"]["replicas"] == 1,
        what="the StatefulSet at 1",
    )
    await cluster.eventually(lambda: ring_at(1), what="the ring at 1")
