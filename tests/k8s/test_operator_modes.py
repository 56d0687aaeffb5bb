"""The operator as the chart installs it, in every RBAC mode, and two replicas peering.

Each mode is a fresh ``helm install`` whose operator pod runs ``jobpool operator`` with
the chart ServiceAccount's token (the kubelet stand-in hands the pod a bound token):
the RBAC the chart grants is then exactly what the real apiserver enforces. In each,
a JobPool is served (its workers Ready, its status written) and the operator's log
holds no 403: with ``rbac.clusterDiscovery=false`` the operator runs with
``--no-cluster-discovery`` and never tries the cluster-wide calls it may not make.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from k8s_kit import Cluster, Helm, eventually, install_operator, operator_log, operator_values

TEAM = "team"
POOL = "mails"
SPEC = {
    "replicas": 1,
    "image": "ghcr.io/example/jobpool-app:0.1.0",
    "app": "examples.handlers:registry",
    "database": {"secretRef": {"name": "jobpool-database"}},
}
NAMESPACED = {"operator": {"scope": "namespaced", "namespaces": [TEAM]}}
NO_DISCOVERY = {"rbac": {"clusterDiscovery": False}}
MODES: dict[str, dict[str, Any]] = {
    "cluster": {},
    "cluster-no-discovery": NO_DISCOVERY,
    "namespaced": NAMESPACED,
    "namespaced-no-discovery": {**NAMESPACED, **NO_DISCOVERY},
}

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def team(cluster: Cluster, k8s_dsn: str) -> str:
    cluster.namespace(TEAM)
    cluster.secret(TEAM, "jobpool-database", {"dsn": k8s_dsn})
    return TEAM


@contextmanager
def operator(helm: Helm, dsn: str, *, release: str, values: dict[str, Any]) -> Iterator[str]:
    """A chart release in its own namespace, uninstalled (with its JobPool gone) after."""
    namespace = f"{release}-system"
    install_operator(
        helm, release=release, namespace=namespace, dsn=dsn, values=operator_values(values)
    )
    try:
        yield namespace
    finally:
        # While the operator still runs: it removes its finalizer from the JobPool.
        helm.cluster.kubectl("delete", "jp", "--all", "-n", TEAM, "--timeout=120s")
        helm.run("uninstall", release, "--namespace", namespace, "--wait")


def serve_a_pool(cluster: Cluster, replicas: int = 1) -> None:
    cluster.apply(
        {
            "apiVersion": "jobpool.dev/v1alpha1",
            "kind": "JobPool",
            "metadata": {"name": POOL, "namespace": TEAM},
            "spec": {**SPEC, "replicas": replicas},
        }
    )
    cluster.wait_pool_ready(TEAM, POOL, replicas)


# An HTTP 403 in the operator's log: kopf's APIForbiddenError, the word, or the status
# code on its own (not the milliseconds of a log line's time stamp, like ",403").
FORBIDDEN = re.compile(r"Forbidden|(?<![,.\d])403(?!\d)")


@pytest.mark.parametrize("mode", MODES)
def test_every_rbac_mode_serves_pools_with_no_403(
    cluster: Cluster, helm: Helm, k8s_dsn: str, team: str, mode: str
) -> None:
    release = f"jp-{mode}"
    with operator(helm, k8s_dsn, release=release, values=MODES[mode]) as namespace:
        serve_a_pool(cluster)
        log = operator_log(cluster, release=release, namespace=namespace)
        assert not FORBIDDEN.search(log), log[-4000:]


def test_two_replicas_one_acts_and_the_other_takes_over(
    cluster: Cluster, helm: Helm, k8s_dsn: str, team: str
) -> None:
    release = "jp-ha"
    values = {**NAMESPACED, "operator": {**NAMESPACED["operator"], "replicas": 2}}
    with operator(helm, k8s_dsn, release=release, values=values) as namespace:
        serve_a_pool(cluster)
        peers = eventually(
            lambda: len(peering(cluster)) == 2 and peering(cluster), what="two peers"
        )
        active = max(peers, key=lambda name: peers[name]["priority"])
        standby = next(name for name in peers if name != active)
        resumed = "Resuming operations"  # kopf starts paused; the active peer resumed
        assert resumed in cluster.kubelet.logs(namespace, active)
        before = cluster.kubelet.logs(namespace, standby).count(resumed)
        cluster.kubectl("delete", "pod", active, "-n", namespace, "--wait=true")
        cluster.patch_jobpool(TEAM, POOL, {"replicas": 2})
        cluster.wait_pool_ready(TEAM, POOL, 2)
        assert cluster.kubelet.logs(namespace, standby).count(resumed) > before


def peering(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """The peers in the team namespace's KopfPeering ``jobpool``: pod name → keep-alive."""
    found = cluster.custom.get_namespaced_custom_object(
        "kopf.dev", "v1", TEAM, "kopfpeerings", "jobpool"
    )
    return dict(found.get("status") or {})
