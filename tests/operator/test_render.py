"""The children of a JobPool, rendered by pure functions: valid Kubernetes objects that
say what the spec says, and never hold a secret."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer.main
import yaml

import jobpool.cli
from jobpool.cli.worker import parse_weights
from jobpool.models import Priority
from jobpool.operator.render import (
    CONFIG_HASH_ANNOTATION,
    config_hash,
    labels,
    render_children,
    render_configmap,
    render_pdb,
    render_service,
    render_statefulset,
    selector,
)
from jobpool.operator.spec import OPERATOR_ENV_NAMES, JobPoolSpec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
LATEST = ".".join(kubernetes_validate.utils.latest_version().split(".")[:2])
KUBERNETES_VERSIONS = sorted({"1.34", LATEST})
NAMESPACE = "jobs"


def example(name: str) -> tuple[str, JobPoolSpec]:
    obj = yaml.safe_load((EXAMPLES / name).read_text())
    return obj["metadata"]["name"], parse_spec(obj["spec"])


MINIMAL = example("jobpool.yaml")
FULL = example("jobpool-full.yaml")
EXAMPLES_BY_ID = {"minimal": MINIMAL, "full": FULL}


def spec_with(**changes: Any) -> JobPoolSpec:
    raw = yaml.safe_load((EXAMPLES / "jobpool.yaml").read_text())["spec"]
    return parse_spec({**raw, **changes})


def pod_spec(spec: JobPoolSpec, name: str = "emails") -> dict[str, Any]:
    return render_statefulset(name, NAMESPACE, spec)["spec"]["template"]["spec"]


def container(spec: JobPoolSpec, name: str = "emails") -> dict[str, Any]:
    (worker,) = pod_spec(spec, name)["containers"]
    return worker


# Valid Kubernetes objects


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("pool", EXAMPLES_BY_ID.values(), ids=EXAMPLES_BY_ID.keys())
def test_children_validate_against_kubernetes(pool: tuple[str, JobPoolSpec], version: str) -> None:
    name, spec = pool
    children = render_children(name, NAMESPACE, spec)
    assert [c["kind"] for c in children] == [
        "ConfigMap",
        "Service",
        "PodDisruptionBudget",
        "StatefulSet",
    ]
    for child in children:
        kubernetes_validate.validate(child, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_database_secret_example_validates(version: str) -> None:
    secret = yaml.safe_load((EXAMPLES / "database-secret.yaml").read_text())
    kubernetes_validate.validate(secret, version, strict=True)
    assert secret["metadata"]["name"] == MINIMAL[1].database.secret_ref.name
    assert set(secret["stringData"]) == {MINIMAL[1].database.secret_ref.key}


def test_children_share_name_namespace_and_labels_without_owners() -> None:
    name, spec = FULL
    for child in render_children(name, NAMESPACE, spec):
        assert child["metadata"] == {"name": name, "namespace": NAMESPACE, "labels": labels(name)}
    assert labels(name) == {
        "app.kubernetes.io/name": "jobpool",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/managed-by": "jobpool-operator",
    }


def test_rendering_is_pure() -> None:
    name, spec = FULL
    assert render_children(name, NAMESPACE, spec) == render_children(name, NAMESPACE, spec)
    assert spec == example("jobpool-full.yaml")[1]


# No secret, ever


@pytest.mark.parametrize("pool", EXAMPLES_BY_ID.values(), ids=EXAMPLES_BY_ID.keys())
def test_no_manifest_holds_the_secret_value(pool: tuple[str, JobPoolSpec]) -> None:
    secret = yaml.safe_load((EXAMPLES / "database-secret.yaml").read_text())
    dsn = secret["stringData"]["dsn"]
    name, spec = pool
    text = json.dumps(render_children(name, NAMESPACE, spec))
    assert dsn not in text
    assert "postgresql://" not in text
    assert "CHANGE-ME" not in text


def test_dsn_comes_from_the_secret_by_reference() -> None:
    name, spec = FULL
    dsn = next(e for e in container(spec, name)["env"] if e["name"] == "JOBPOOL_DSN")
    assert dsn == {
        "name": "JOBPOOL_DSN",
        "valueFrom": {"secretKeyRef": {"name": "jobpool-database", "key": "dsn"}},
    }


# The StatefulSet says what the spec says


def test_statefulset_shape() -> None:
    name, spec = FULL
    sts = render_statefulset(name, NAMESPACE, spec)["spec"]
    assert sts["replicas"] == spec.replicas == 4
    assert sts["serviceName"] == render_service(name, NAMESPACE, spec)["metadata"]["name"]
    assert sts["podManagementPolicy"] == "Parallel"
    assert sts["selector"]["matchLabels"].items() <= sts["template"]["metadata"]["labels"].items()


def test_worker_command_and_args() -> None:
    name, spec = FULL
    worker = container(spec, name)
    assert worker["name"] == "worker"
    assert worker["image"] == spec.image
    assert worker["command"] == ["jobpool", "worker"]
    assert worker["args"] == ["--pool", "reports", "--app", "examples.handlers:registry"]
    assert worker["imagePullPolicy"] == "IfNotPresent"
    assert "imagePullPolicy" not in container(MINIMAL[1])


def test_worker_env_identity_then_dsn_then_user_env() -> None:
    name, spec = FULL
    worker = container(spec, name)
    env = worker["env"]
    assert env[:2] == [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
    ]
    assert env[2]["name"] == "JOBPOOL_DSN"
    assert env[3:] == yaml.safe_load((EXAMPLES / "jobpool-full.yaml").read_text())["spec"]["env"]
    assert worker["envFrom"] == [{"configMapRef": {"name": name}}]


def test_configmap_holds_the_worker_settings() -> None:
    name, spec = FULL
    data = render_configmap(name, NAMESPACE, spec)["data"]
    assert data == {
        "JOBPOOL_CONCURRENCY": "16",
        "JOBPOOL_LEASE_TTL": "15",
        "JOBPOOL_DRAIN_TIMEOUT": "30",
        "JOBPOOL_PRIORITY_WEIGHTS": "critical=4,high=3,normal=2,low=1",
        "JOBPOOL_MAX_ATTEMPTS": "5",
        "JOBPOOL_BACKOFF_BASE": "1",
        "JOBPOOL_BACKOFF_CAP": "300",
        "JOBPOOL_METRICS_PORT": "9100",
        "JOBPOOL_LOG_FORMAT": "json",
    }
    custom = spec_with(
        priorityWeights={"critical": 9, "low": 2},
        retry={"maxAttempts": 7, "backoffBaseSeconds": 0.25, "backoffCapSeconds": 60},
        concurrency=4,
        leaseTtlSeconds=30,
    )
    data = render_configmap("emails", NAMESPACE, custom)["data"]
    assert parse_weights(data["JOBPOOL_PRIORITY_WEIGHTS"]) == {
        Priority.CRITICAL: 9,
        Priority.HIGH: 3,
        Priority.NORMAL: 2,
        Priority.LOW: 2,
    }
    assert (data["JOBPOOL_MAX_ATTEMPTS"], data["JOBPOOL_BACKOFF_BASE"]) == ("7", "0.25")
    assert (data["JOBPOOL_BACKOFF_CAP"], data["JOBPOOL_CONCURRENCY"]) == ("60", "4")
    assert data["JOBPOOL_LEASE_TTL"] == "30"


def test_settings_are_options_of_jobpool_worker() -> None:
    """Every setting the ConfigMap carries is read by an option of ``jobpool worker``."""
    worker = typer.main.get_command(jobpool.cli.app).commands["worker"]  # type: ignore[attr-defined]
    envvars = {param.envvar for param in worker.params if isinstance(param.envvar, str)}
    name, spec = FULL
    assert set(render_configmap(name, NAMESPACE, spec)["data"]) <= envvars


def test_user_env_cannot_shadow_what_the_operator_sets() -> None:
    name, spec = FULL
    operator_set = {e["name"] for e in container(spec, name)["env"][:3]}
    operator_set |= set(render_configmap(name, NAMESPACE, spec)["data"]) - {"JOBPOOL_LOG_FORMAT"}
    assert operator_set <= set(OPERATOR_ENV_NAMES)


def test_probes_use_the_metrics_port() -> None:
    spec = spec_with(metricsPort=9300)
    worker = container(spec)
    assert worker["ports"] == [{"name": "metrics", "containerPort": 9300, "protocol": "TCP"}]
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert worker["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    data = render_configmap("emails", NAMESPACE, spec)["data"]
    assert data["JOBPOOL_METRICS_PORT"] == "9300"


@pytest.mark.parametrize("drain_s", [0, 30, 600])
def test_grace_period_covers_the_drain(drain_s: int) -> None:
    grace_s = pod_spec(spec_with(drainTimeoutSeconds=drain_s))["terminationGracePeriodSeconds"]
    assert grace_s >= drain_s + 10


def test_topology_spread_across_nodes() -> None:
    name, spec = FULL
    sts = render_statefulset(name, NAMESPACE, spec)["spec"]
    (constraint,) = sts["template"]["spec"]["topologySpreadConstraints"]
    assert constraint == {
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": sts["selector"],
    }


def test_security_context_is_restricted() -> None:
    pod = pod_spec(MINIMAL[1])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = container(MINIMAL[1])["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = container(MINIMAL[1])["volumeMounts"]
    assert {"name": "tmp", "mountPath": "/tmp"} in mounts  # writable scratch space


def test_resources_and_service_account() -> None:
    assert container(MINIMAL[1])["resources"] == {}
    assert container(FULL[1])["resources"] == {
        "requests": {"cpu": "250m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "512Mi"},
    }
    assert pod_spec(MINIMAL[1])["automountServiceAccountToken"] is False
    assert pod_spec(FULL[1])["serviceAccountName"] == "reports-worker"


def test_config_hash_rolls_pods_on_settings_changes_only() -> None:
    def pod_hash(spec: JobPoolSpec) -> str:
        template = render_statefulset("emails", NAMESPACE, spec)["spec"]["template"]
        return template["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]

    base = spec_with()
    assert pod_hash(base) == config_hash(render_configmap("emails", NAMESPACE, base)["data"])
    assert pod_hash(spec_with(concurrency=32)) != pod_hash(base)
    assert pod_hash(spec_with(priorityWeights={"low": 2})) != pod_hash(base)
    assert pod_hash(spec_with(replicas=9)) == pod_hash(base)


# Service, PodDisruptionBudget, selector


def test_headless_service_on_the_metrics_port() -> None:
    name, spec = FULL
    service = render_service(name, NAMESPACE, spec)["spec"]
    assert service["clusterIP"] == "None"
    assert service["ports"] == [
        {"name": "metrics", "port": 9100, "targetPort": "metrics", "protocol": "TCP"}
    ]
    sts = render_statefulset(name, NAMESPACE, spec)["spec"]
    assert service["selector"] == sts["selector"]["matchLabels"]


def test_pdb_lets_one_worker_go_at_a_time() -> None:
    name, spec = FULL
    pdb = render_pdb(name, NAMESPACE, spec)
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1
    sts = render_statefulset(name, NAMESPACE, spec)["spec"]
    assert pdb["spec"]["selector"] == sts["selector"]


def test_status_selector_selects_the_worker_pods() -> None:
    name, spec = FULL
    pod_labels = render_statefulset(name, NAMESPACE, spec)["spec"]["template"]["metadata"]["labels"]
    pairs = dict(term.split("=") for term in selector(name).split(","))
    assert pairs.items() <= pod_labels.items()
    assert pairs["app.kubernetes.io/instance"] == name
    other = dict(term.split("=") for term in selector("other").split(","))
    assert not other.items() <= pod_labels.items()
