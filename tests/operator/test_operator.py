"""The operator end to end: kopf in-process against kmock's emulator, Postgres for real.

Each test starts the real operator (``start_operator``), acts like a user would
(create, patch, delete a JobPool) and polls, with a deadline, for what the operator
must do: children with owner references, the ring in Postgres, status, Events.
"""

from __future__ import annotations

import asyncio

import asyncpg
import kmock
import kubernetes.client
import pytest
from typer.testing import CliRunner

from jobpool.cli import app
from jobpool.errors import InvalidDsn, PoolNotFound
from jobpool.operator.context import OperatorConfig
from jobpool.operator.handlers import run_operator
from jobpool.operator.render import labels
from jobpool.store.migrate import pending_migrations
from jobpool.store.pools import pool_ensure, pool_get

SPEC = {
    "replicas": 2,
    "image": "registry.example/app:1.0",
    "app": "app.jobs:registry",
    "shards": 16,
    "database": {"secretRef": {"name": "pool-db", "key": "dsn"}},
}


async def ring(conn: asyncpg.Connection, name: str) -> tuple[int, int] | None:
    try:
        pool = await pool_get(conn, name)
    except PoolNotFound:
        return None
    return pool.replicas, pool.ring_version


def image_of(statefulset: dict) -> str:
    return statefulset["spec"]["template"]["spec"]["containers"][0]["image"]


async def test_create_makes_owned_children_and_the_ring(start_operator, cluster, conn):
    await start_operator()
    await cluster.create_jobpool("emails", SPEC)

    children = await cluster.eventually(
        lambda: (found := cluster.children("emails")) and all(found.values()) and found,
        what="the StatefulSet, Service, PDB and ConfigMap",
    )
    owner = cluster.jobpool("emails")
    for kind, child in children.items():
        assert child["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "jobpool.dev/v1alpha1",
                "kind": "JobPool",
                "name": "emails",
                "uid": owner["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ], kind
        assert labels("emails").items() <= child["metadata"]["labels"].items(), kind
    assert children["StatefulSet"]["spec"]["replicas"] == 2
    assert image_of(children["StatefulSet"]) == "registry.example/app:1.0"

    assert await cluster.eventually(lambda: ring(conn, "emails"), what="the ring") == (2, 1)
    assert (await pool_get(conn, "emails")).shards == 16
    status = await cluster.eventually(
        lambda: (
            cluster.status("emails").get("observedGeneration") == 1 and cluster.status("emails")
        ),
        what="observedGeneration 1",
    )
    assert status["ringVersion"] == 1
    assert status["selector"] == (
        "app.kubernetes.io/name=jobpool,app.kubernetes.io/instance=emails,"
        "app.kubernetes.io/component=worker"
    )


async def test_update_patches_the_statefulset_and_moves_the_ring(start_operator, cluster, conn):
    await start_operator()
    await cluster.create_jobpool("emails", SPEC)
    await cluster.eventually(lambda: ring(conn, "emails"), what="the ring")

    await cluster.patch_jobpool(
        "emails", {"spec": {"replicas": 3, "image": "registry.example/app:2.0"}}
    )
    sts = await cluster.eventually(
        lambda: (
            (s := cluster.child("StatefulSet", "emails"))
            and s["spec"]["replicas"] == 3
            and image_of(s) == "registry.example/app:2.0"
            and s
        ),
        what="the StatefulSet at 3 replicas of image 2.0",
    )
    assert sts["metadata"]["ownerReferences"][0]["name"] == "emails"
    assert await cluster.eventually(lambda: _ring_is(conn, "emails", 3), what="the ring at 3") == (
        3,
        2,
    )
    await cluster.eventually(
        lambda: cluster.status("emails").get("observedGeneration") == 2, what="generation 2"
    )
    scaled = await cluster.eventually(lambda: cluster.events("emails", "Scaled"), what="Scaled")
    assert scaled[-1]["message"] == "2 -> 3 replicas (ring version 2)"

    await cluster.patch_jobpool("emails", {"spec": {"replicas": 1}})
    assert await cluster.eventually(lambda: _ring_is(conn, "emails", 1), what="the ring at 1") == (
        1,
        3,
    )
    await cluster.eventually(
        lambda: cluster.child("StatefulSet", "emails")["spec"]["replicas"] == 1,
        what="the StatefulSet at 1 replica",
    )


async def _ring_is(conn: asyncpg.Connection, name: str, replicas: int) -> tuple[int, int] | None:
    found = await ring(conn, name)
    return found if found is not None and found[0] == replicas else None


async def test_invalid_spec_is_degraded_and_touches_nothing(start_operator, cluster, conn):
    await start_operator()
    await cluster.create_jobpool("emails", {**SPEC, "replicas": -1})

    degraded = await cluster.eventually(
        lambda: (
            cluster.condition("emails", "Degraded").get("status") == "True"
            and cluster.condition("emails", "Degraded")
        ),
        what="Degraded",
    )
    assert degraded["reason"] == "InvalidSpec"
    assert "spec.replicas" in degraded["message"]
    assert cluster.condition("emails", "Ready")["status"] == "False"
    warning = await cluster.eventually(
        lambda: cluster.events("emails", "InvalidSpec"), what="the InvalidSpec Event"
    )
    assert warning[0]["type"] == "Warning"
    assert "spec.replicas" in warning[0]["message"]
    assert not any(cluster.children("emails").values())
    assert await ring(conn, "emails") is None

    await cluster.patch_jobpool("emails", {"spec": {"replicas": 1}})
    await cluster.eventually(
        lambda: all(cluster.children("emails").values()), what="children of the fixed spec"
    )
    await cluster.eventually(
        lambda: cluster.condition("emails", "Degraded").get("status") == "False",
        what="Degraded cleared",
    )
    await cluster.eventually(lambda: cluster.events("emails", "Recovered"), what="Recovered")
    assert await ring(conn, "emails") == (1, 1)


async def test_shards_are_fixed_by_the_pool_in_postgres(start_operator, cluster, conn):
    await pool_ensure(conn, "emails", shards=64, replicas=2)
    await start_operator()
    await cluster.create_jobpool("emails", SPEC)  # 16 shards

    degraded = await cluster.eventually(
        lambda: (
            cluster.condition("emails", "Degraded").get("reason") == "InvalidSpec"
            and cluster.condition("emails", "Degraded")
        ),
        what="Degraded/InvalidSpec",
    )
    assert degraded["message"].startswith("spec.shards: is fixed at creation")
    assert not any(cluster.children("emails").values())
    assert (await pool_get(conn, "emails")).shards == 64


async def test_changing_shards_of_a_jobpool_is_refused_and_changes_nothing(
    start_operator, cluster, conn
):
    """Where the CRD's CEL rules do not run (an old API server, this emulator), the
    operator itself refuses an update of ``shards``, naming the field."""
    await start_operator()
    await cluster.create_jobpool("emails", SPEC)
    await cluster.eventually(lambda: cluster.child("StatefulSet", "emails"), what="children")

    await cluster.patch_jobpool("emails", {"spec": {"shards": 32, "replicas": 3}})

    degraded = await cluster.eventually(
        lambda: (
            cluster.condition("emails", "Degraded").get("reason") == "InvalidSpec"
            and cluster.condition("emails", "Degraded")
        ),
        what="Degraded/InvalidSpec",
    )
    # Either the update handler ("is immutable") or the status timer, which compares
    # with the pool's row ("is fixed at creation"), says it first: both name the field.
    assert degraded["message"].startswith("spec.shards: is ")
    assert (await pool_get(conn, "emails")).shards == 16
    assert cluster.child("StatefulSet", "emails")["spec"]["replicas"] == SPEC["replicas"]


async def test_delete_leaves_it_to_owner_references_and_keeps_the_jobs(
    start_operator, cluster, conn
):
    operator = await start_operator()
    await cluster.create_jobpool("emails", SPEC)
    await cluster.eventually(lambda: all(cluster.children("emails").values()), what="children")
    uid = cluster.jobpool("emails")["metadata"]["uid"]
    await cluster.eventually(
        lambda: cluster.status("emails").get("conditions"), what="a first status"
    )
    assert "runner of status" in await operator.task_names()

    await cluster.delete_jobpool("emails")
    await cluster.eventually(lambda: cluster.jobpool("emails") is None, what="the JobPool gone")
    deleted = await cluster.eventually(lambda: cluster.events("emails", "Deleted"), what="Deleted")
    assert "garbage-collected" in deleted[0]["message"]

    # kmock has no garbage collector: the owner references are what would remove them.
    for kind, child in cluster.children("emails").items():
        assert child is not None, kind
        reference = child["metadata"]["ownerReferences"][0]
        assert (reference["uid"], reference["controller"]) == (uid, True), kind
    assert await ring(conn, "emails") == (2, 1)  # the pool (and its jobs) stay

    async def timer_gone() -> bool:
        return "runner of status" not in await operator.task_names()

    await cluster.eventually(timer_gone, what="the status timer to stop")


async def test_a_restarted_operator_resumes_without_changes(start_operator, cluster, api, conn):
    first = await start_operator()
    await cluster.create_jobpool("emails", SPEC)
    await cluster.eventually(
        lambda: cluster.status("emails").get("observedGeneration"), what="a reconciled pool"
    )
    await first.stop()
    applied = len(statefulset_patches(api))

    await start_operator()
    await cluster.eventually(
        lambda: len(statefulset_patches(api)) > applied, what="the resumed reconcile"
    )
    assert await ring(conn, "emails") == (2, 1)
    assert cluster.child("StatefulSet", "emails")["spec"]["replicas"] == 2
    assert not cluster.events("emails", "Scaled")


def statefulset_patches(api) -> list:
    statefulsets = kmock.resource("apps/v1/statefulsets")
    return [r for r in list(api) if r.method == "PATCH" and r.resource == statefulsets]


PEERINGS = "kopf.dev/v1/clusterkopfpeerings"


async def test_of_two_peers_only_the_higher_priority_acts(start_operator, cluster, api, conn):
    api.resources[PEERINGS] = kmock.ResourceInfo(
        kind="ClusterKopfPeering",
        namespaced=False,
        verbs={"list", "watch", "get", "create", "patch", "delete"},
    )
    peering = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering"}
    async with api.post(
        f"/apis/{PEERINGS}", json={**peering, "metadata": {"name": "jobpool"}}
    ) as response:
        assert response.status == 200
    peering_options = {"standalone": False, "peering_name": "jobpool"}
    await start_operator(options={**peering_options, "priority": 100, "identity": "op-high"})
    await start_operator(
        options={**peering_options, "priority": 1, "identity": "op-low"}, watching=False
    )
    peers = await cluster.eventually(
        lambda: {"op-high", "op-low"} <= set(_peers(api)) and _peers(api),
        what="both operators in the peering object",
    )
    assert (peers["op-high"]["priority"], peers["op-low"]["priority"]) == (100, 1)

    await cluster.create_jobpool("emails", SPEC)
    await cluster.eventually(lambda: all(cluster.children("emails").values()), what="children")
    await cluster.patch_jobpool("emails", {"spec": {"replicas": 3}})
    await cluster.eventually(lambda: cluster.events("emails", "Scaled"), what="Scaled")
    assert {e["reportingInstance"] for e in cluster.events("emails")} == {"op-high"}
    assert len(cluster.events("emails", "Scaled")) == 1
    assert await ring(conn, "emails") == (3, 2)


def _peers(api) -> dict:
    key = (kmock.resource(PEERINGS), None, "jobpool")
    return dict(api.objects[key].raw.get("status") or {})


async def test_operator_migrates_its_database_at_start(start_operator, empty_dsn):
    await start_operator(dsn=empty_dsn)
    conn = await asyncpg.connect(empty_dsn)
    try:
        assert await pending_migrations(conn) == []
    finally:
        await conn.close()


async def test_a_malformed_dsn_stops_the_operator_before_kopf_starts(api):
    configuration = kubernetes.client.Configuration()
    configuration.host = str(api.url).rstrip("/")
    config = OperatorConfig(dsn="postgresql://app:hunter2@db:99999/jobs")
    with pytest.raises(InvalidDsn) as caught:
        await asyncio.wait_for(run_operator(config, configuration, clusterwide=True), 10)
    assert "hunter2" not in str(caught.value)
    assert "postgresql://app@db:99999/jobs" in str(caught.value)


def test_cli_needs_a_scope():
    result = CliRunner().invoke(app, ["operator", "--dsn", "postgresql://u@h/db"])
    assert result.exit_code == 2
    assert "--namespace NS" in result.output
