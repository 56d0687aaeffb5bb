"""One JobPool's life on a real control plane, served by the operator the chart installs.

The module installs the chart cluster-wide (``helm install --wait``: the operator pod
Ready), applies ``examples/jobpool.yaml`` with its Secret, and then walks the pool
through what a user does to it, in order: read it (``kubectl get``/``describe``), run
jobs, scale it through the scale subresource under load, delete a pod, roll out a new
image, upgrade the chart, ``helm test``, and delete the pool.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator

import pytest
import yaml
from k8s_kit import (
    OPERATOR_NAMESPACE,
    ROOT,
    Cluster,
    Helm,
    eventually,
    install_operator,
    operator_log,
    operator_values,
)

from jobpool import SyncClient
from jobpool.models import JobId, JobState

RELEASE = "jobpool"
NAMESPACE = "pools"
POOL = "emails"
TENANT = "acme"
CHILD_KINDS = ("StatefulSet", "Service", "PodDisruptionBudget", "ConfigMap")

pytestmark = pytest.mark.timeout(600)


def example(name: str) -> dict:
    return yaml.safe_load((ROOT / "examples" / name).read_text())


@pytest.fixture(scope="module")
def release(helm: Helm, k8s_dsn: str) -> Iterator[str]:
    install_operator(
        helm, release=RELEASE, namespace=OPERATOR_NAMESPACE, dsn=k8s_dsn, values=operator_values()
    )
    try:
        yield RELEASE
    finally:
        helm.run("uninstall", RELEASE, "--namespace", OPERATOR_NAMESPACE, "--wait")


@pytest.fixture(scope="module")
def pool(release: str, cluster: Cluster, k8s_dsn: str) -> str:
    """``examples/jobpool.yaml`` and its Secret, applied as they are (the DSN made real)."""
    cluster.namespace(NAMESPACE)
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(ROOT / "examples" / "database-secret.yaml"))
    secret = example("database-secret.yaml")["metadata"]["name"]
    cluster.secret(NAMESPACE, secret, {"dsn": k8s_dsn})
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(ROOT / "examples" / "jobpool.yaml"))
    cluster.wait_pool_ready(NAMESPACE, POOL, example("jobpool.yaml")["spec"]["replicas"])
    return POOL


def no_403(cluster: Cluster) -> None:
    log = operator_log(cluster, release=RELEASE, namespace=OPERATOR_NAMESPACE)
    assert " 403" not in log, log[-3000:]
    assert "Forbidden" not in log, log[-3000:]


def degraded_events(cluster: Cluster) -> list[str]:
    """The Warning Events ``Degraded`` the operator posted about the pool."""
    return [
        e.message
        for e in cluster.events(NAMESPACE, involved=POOL)
        if e.reason == "Degraded" and e.involved_object.kind == "JobPool"
    ]


def worker_uids(cluster: Cluster) -> dict[str, str]:
    return {
        p.metadata.name: p.metadata.uid
        for p in cluster.pods(NAMESPACE, f"app.kubernetes.io/instance={POOL}")
    }


@pytest.fixture(scope="module")
def client(k8s_dsn: str) -> Iterator[SyncClient]:
    with SyncClient(k8s_dsn, pool=POOL, tenant=TENANT) as jobs:
        yield jobs


def submit(client: SyncClient, count: int, *, tag: str) -> list[JobId]:
    payloads = [{"to": f"user{i}@{tag}.example", "subject": tag} for i in range(count)]
    return [job.id for job in client.submit("send_email", payloads)]


def wait_all_succeeded(client: SyncClient, ids: list[JobId]) -> None:
    """Every job ends ``succeeded``: none lost, none dead (bounded polling)."""
    pending = set(ids)

    def done() -> bool:
        for job_id in list(pending):
            state = client.status(job_id).state
            assert state in (JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED), state
            if state is JobState.SUCCEEDED:
                pending.discard(job_id)
        return not pending

    eventually(done, what=f"{len(ids)} jobs to succeed", timeout=240)


class Load:
    """Submits a batch of jobs every ``period_s`` in a thread until stopped."""

    def __init__(self, client: SyncClient, *, batch: int = 20, period_s: float = 0.5) -> None:
        self.ids: list[JobId] = []
        self._client, self._batch, self._period_s = client, batch, period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            self.ids += submit(self._client, self._batch, tag=f"load{len(self.ids)}")

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def test_the_example_pool_gets_its_children_owned_by_it(cluster: Cluster, pool: str) -> None:
    owner = cluster.jobpool(NAMESPACE, pool)
    assert owner is not None
    for kind in CHILD_KINDS:
        text = cluster.kubectl("get", kind.lower(), pool, "-n", NAMESPACE, "-o", "yaml")
        refs = yaml.safe_load(text)["metadata"]["ownerReferences"]
        assert [(r["kind"], r["name"], r["uid"], r["controller"]) for r in refs] == [
            ("JobPool", pool, owner["metadata"]["uid"], True)
        ], kind
    no_403(cluster)


def test_kubectl_get_shows_the_printer_columns(cluster: Cluster, pool: str) -> None:
    header, row = cluster.kubectl("get", "jp", "-n", NAMESPACE).splitlines()
    assert header.split() == ["NAME", "REPLICAS", "READY", "QUEUED", "RUNNING", "DLQ", "AGE"]
    assert row.split()[:6] == [pool, "3", "3", "0", "0", "0"]


def test_kubectl_describe_shows_status_conditions_and_events(cluster: Cluster, pool: str) -> None:
    text = cluster.kubectl("describe", "jp", pool, "-n", NAMESPACE)
    for expected in (r"Ready Replicas:\s+3\n", r"Reason:\s+WorkersReady\n", r"Type:\s+Degraded\n"):
        assert re.search(expected, text), text
    assert re.search(r"\nEvents:", text), text


def test_jobs_submitted_through_the_client_run_in_the_pods(
    cluster: Cluster, pool: str, client: SyncClient
) -> None:
    wait_all_succeeded(client, submit(client, 60, tag="first"))
    status = (cluster.jobpool(NAMESPACE, pool) or {})["status"]
    ordinals = {o["ordinal"]: o for o in status["ordinals"]}
    assert sorted(ordinals) == [0, 1, 2]
    assert sum(o["shards"] for o in ordinals.values()) == 64


def test_a_deleted_pod_is_recreated_without_degrading_the_pool(
    cluster: Cluster, pool: str, client: SyncClient
) -> None:
    before = worker_uids(cluster)
    with Load(client) as load:
        cluster.kubectl("delete", "pod", f"{pool}-1", "-n", NAMESPACE, "--wait=false")
        eventually(
            lambda: worker_uids(cluster).get(f"{pool}-1") not in (None, before[f"{pool}-1"]),
            what="pod 1 recreated",
        )
        cluster.wait_pool_ready(NAMESPACE, pool, 3)
    wait_all_succeeded(client, load.ids)
    assert degraded_events(cluster) == []


def test_an_image_rollout_replaces_every_pod_without_degrading_the_pool(
    cluster: Cluster, pool: str, client: SyncClient
) -> None:
    before = worker_uids(cluster)
    with Load(client) as load:
        cluster.patch_jobpool(NAMESPACE, pool, {"image": "ghcr.io/example/jobpool-app:0.2.0"})

        def rolled() -> bool:
            pods = cluster.pods(NAMESPACE, f"app.kubernetes.io/instance={pool}")
            return all(p.spec.containers[0].image.endswith(":0.2.0") for p in pods) and not (
                set(before.values()) & {p.metadata.uid for p in pods}
            )

        eventually(rolled, what="every pod on the new image", timeout=240)
        cluster.wait_pool_ready(NAMESPACE, pool, 3)
    wait_all_succeeded(client, load.ids)
    assert degraded_events(cluster) == []
    assert cluster.condition(NAMESPACE, pool, "Degraded")["status"] == "False"


def test_scaling_through_the_scale_subresource_under_load_loses_nothing(
    cluster: Cluster, pool: str, client: SyncClient
) -> None:
    with Load(client) as load:
        cluster.kubectl("scale", "jp", pool, "-n", NAMESPACE, "--replicas=5")
        cluster.wait_pool_ready(NAMESPACE, pool, 5)
        cluster.kubectl("scale", "jp", pool, "-n", NAMESPACE, "--replicas=2")
        cluster.wait_pool_ready(NAMESPACE, pool, 2)
    assert len(load.ids) > 0
    wait_all_succeeded(client, load.ids)
    scale = json.loads(
        cluster.kubectl(
            "get",
            "--raw",
            f"/apis/jobpool.dev/v1alpha1/namespaces/{NAMESPACE}/jobpools/{pool}/scale",
        )
    )
    assert scale["spec"]["replicas"] == 2
    assert scale["status"]["replicas"] == 2
    assert degraded_events(cluster) == []


def test_helm_upgrade_restarts_the_operator_and_helm_test_passes(
    cluster: Cluster, helm: Helm, pool: str
) -> None:
    helm.install(
        RELEASE,
        OPERATOR_NAMESPACE,
        operator_values({"operator": {"logLevel": "debug"}}),
        upgrade=True,
    )
    cluster.patch_jobpool(NAMESPACE, pool, {"replicas": 3})
    cluster.wait_pool_ready(NAMESPACE, pool, 3)
    assert "Phase:          Succeeded" in helm.run(
        "test", RELEASE, "--namespace", OPERATOR_NAMESPACE, "--timeout", "3m"
    )
    no_403(cluster)


def test_deleting_the_pool_garbage_collects_its_children(cluster: Cluster, pool: str) -> None:
    cluster.kubectl("delete", "jp", pool, "-n", NAMESPACE, "--timeout=120s")

    kinds = ",".join(kind.lower() for kind in CHILD_KINDS) + ",pods"

    def left() -> list[str]:
        selector = f"app.kubernetes.io/instance={pool}"
        return cluster.kubectl("get", kinds, "-n", NAMESPACE, "-l", selector, "-o", "name").split()

    eventually(lambda: not left(), what="garbage collection", timeout=180, detail=left)
