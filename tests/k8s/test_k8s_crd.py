"""The JobPool CRD as the real kube-apiserver evaluates it: its schema and every CEL rule.

Each invalid JobPool is sent with ``kubectl apply --dry-run=server`` (admission and
validation run, nothing is stored) and must be refused with the rule's message; the
examples are accepted as they are.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from k8s_kit import ROOT, Cluster

NAMESPACE = "crd-checks"
SPEC = {
    "replicas": 1,
    "image": "ghcr.io/example/jobpool-app:0.1.0",
    "app": "examples.handlers:registry",
    "database": {"secretRef": {"name": "jobpool-database"}},
}


def jobpool(name: str = "checks", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "jobpool.dev/v1alpha1",
        "kind": "JobPool",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {**SPEC, **spec},
    }


def dry_run(cluster: Cluster, manifest: dict[str, Any]) -> str:
    """The apiserver's refusal (stderr), or ``""`` when it accepts ``manifest``."""
    done = cluster.kubectl_result(
        "apply", "--dry-run=server", "-f", "-", stdin=json.dumps(manifest)
    )
    return "" if done.returncode == 0 else done.stderr


@pytest.fixture(scope="module")
def namespace(cluster: Cluster) -> str:
    return cluster.namespace(NAMESPACE)


@pytest.mark.parametrize("example", ["jobpool.yaml", "jobpool-full.yaml"])
def test_the_examples_are_valid(cluster: Cluster, namespace: str, example: str) -> None:
    manifest = yaml.safe_load((ROOT / "examples" / example).read_text())
    manifest["metadata"]["namespace"] = namespace
    assert dry_run(cluster, manifest) == ""


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (jobpool("Bad_Name"), "metadata.name must be a DNS label of at most 50 characters"),
        (jobpool("x" * 51), "metadata.name must be a DNS label of at most 50 characters"),
        (
            jobpool(env=[{"name": "JOBPOOL_DSN", "value": "postgresql://elsewhere"}]),
            "is set by the operator from the pod and the spec",
        ),
        (
            jobpool(autoscaling={"minReplicas": 5, "maxReplicas": 2}),
            "must be at least minReplicas",
        ),
        (jobpool(replicas=-1), "spec.replicas"),
        (jobpool(shards=0), "spec.shards"),
        (
            jobpool(schedules=[{"name": "n", "cron": "* * * * *", "type": "t"}] * 2),
            "spec.schedules[1]: Duplicate value",
        ),
    ],
    ids=[
        "name-pattern",
        "name-length",
        "reserved-env",
        "autoscaling-range",
        "replicas",
        "shards",
        "schedule-names",
    ],
)
def test_an_invalid_jobpool_is_refused_by_the_apiserver(
    cluster: Cluster, namespace: str, manifest: dict[str, Any], message: str
) -> None:
    assert message in dry_run(cluster, manifest)


def test_the_shard_count_is_immutable(cluster: Cluster, namespace: str) -> None:
    """The transition rule ``self.shards == oldSelf.shards`` needs a stored object."""
    cluster.apply(jobpool("fixed-shards", shards=16))
    try:
        refusal = dry_run(cluster, jobpool("fixed-shards", shards=32))
        assert "is immutable: a pool's shard count is fixed at creation" in refusal
        assert dry_run(cluster, jobpool("fixed-shards", shards=16, replicas=2)) == ""
    finally:
        cluster.kubectl("delete", "jp", "fixed-shards", "-n", namespace, "--wait=false")
