"""Manifests of a JobPool's children, built by pure functions (no I/O, no cluster).

A JobPool ``<name>`` becomes four objects, each named ``<name>`` in its namespace:

* a **ConfigMap** whose data are the worker's ``JOBPOOL_*`` settings taken from the
  spec — the single place they are written;
* a **StatefulSet** of workers (``podManagementPolicy: Parallel``), pods ``<name>-0 …``:
  the container runs ``jobpool worker --pool <name> --app <app>``, reads the settings
  with ``envFrom`` from the ConfigMap, gets ``POD_NAME``/``POD_UID`` (its ordinal and
  incarnation) from the downward API and ``JOBPOOL_DSN`` from the database Secret by
  ``secretKeyRef``; the user's ``spec.env`` comes last. The pod template carries a hash
  of the ConfigMap data (``jobpool.dev/config-hash``), so a settings change rolls the
  pods;
* a headless **Service** (the StatefulSet's governing service, metrics port);
* a **PodDisruptionBudget** letting one worker go at a time.

Invariants: the DSN, or any Secret value, never appears in a manifest (only the
Secret's name and key do); the functions take only the JobPool's name, namespace and
parsed spec, so the same input always gives the same manifests. Owner references are
the kopf handler's job (``kopf.adopt``), not these functions'.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from jobpool.operator.spec import JobPoolSpec

Manifest = dict[str, Any]

CONFIG_HASH_ANNOTATION = "jobpool.dev/config-hash"
CONTAINER_NAME = "worker"
METRICS_PORT_NAME = "metrics"
GRACE_MARGIN_S = 10
"""Seconds the pod gets past the drain timeout to write outcomes and release leases."""
NON_ROOT_UID = 65532
TMP_VOLUME = "tmp"


def labels(name: str) -> dict[str, str]:
    """The labels of every child object and of the worker pods."""
    return {**selector_labels(name), "app.kubernetes.io/managed-by": "jobpool-operator"}


def selector_labels(name: str) -> dict[str, str]:
    """The labels that select a pool's worker pods (a StatefulSet's selector is immutable)."""
    return {
        "app.kubernetes.io/name": "jobpool",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": "worker",
    }


def selector(name: str) -> str:
    """``status.selector``: the worker pods' label selector as a string (scale subresource)."""
    return ",".join(f"{key}={value}" for key, value in selector_labels(name).items())


def worker_settings(spec: JobPoolSpec) -> dict[str, str]:
    """The ConfigMap data: the ``JOBPOOL_*`` variables ``jobpool worker`` reads."""
    weights = spec.priority_weights
    return {
        "JOBPOOL_CONCURRENCY": str(spec.concurrency),
        "JOBPOOL_LEASE_TTL": str(spec.lease_ttl_seconds),
        "JOBPOOL_DRAIN_TIMEOUT": str(spec.drain_timeout_seconds),
        "JOBPOOL_PRIORITY_WEIGHTS": (
            f"critical={weights.critical},high={weights.high},"
            f"normal={weights.normal},low={weights.low}"
        ),
        "JOBPOOL_MAX_ATTEMPTS": str(spec.retry.max_attempts),
        "JOBPOOL_BACKOFF_BASE": _number(spec.retry.backoff_base_seconds),
        "JOBPOOL_BACKOFF_CAP": _number(spec.retry.backoff_cap_seconds),
        "JOBPOOL_METRICS_PORT": str(spec.metrics_port),
        "JOBPOOL_LOG_FORMAT": "json",
    }


def config_hash(data: dict[str, str]) -> str:
    """A short, stable digest of ConfigMap data, for the pod template's annotation."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def render_configmap(name: str, namespace: str, spec: JobPoolSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(name, namespace),
        "data": worker_settings(spec),
    }


def render_service(name: str, namespace: str, spec: JobPoolSpec) -> Manifest:
    """The headless governing Service: stable pod DNS names and a metrics endpoint."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, namespace),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(name),
            "ports": [
                {
                    "name": METRICS_PORT_NAME,
                    "port": spec.metrics_port,
                    "targetPort": METRICS_PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


def render_pdb(name: str, namespace: str, spec: JobPoolSpec) -> Manifest:
    """At most one worker evicted at a time; unhealthy ones may always go (node drains)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(name, namespace),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(name)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def render_statefulset(name: str, namespace: str, spec: JobPoolSpec) -> Manifest:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(name, namespace),
        "spec": {
            "replicas": spec.replicas,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            "selector": {"matchLabels": selector_labels(name)},
            "template": {
                "metadata": {
                    "labels": labels(name),
                    "annotations": {CONFIG_HASH_ANNOTATION: config_hash(worker_settings(spec))},
                },
                "spec": _pod_spec(name, spec),
            },
        },
    }


def render_children(name: str, namespace: str, spec: JobPoolSpec) -> list[Manifest]:
    """Every child of the JobPool, in creation order (the ConfigMap before its readers)."""
    return [
        render_configmap(name, namespace, spec),
        render_service(name, namespace, spec),
        render_pdb(name, namespace, spec),
        render_statefulset(name, namespace, spec),
    ]


def _metadata(name: str, namespace: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels(name)}


def _pod_spec(name: str, spec: JobPoolSpec) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "terminationGracePeriodSeconds": spec.drain_timeout_seconds + GRACE_MARGIN_S,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": NON_ROOT_UID,
            "runAsGroup": NON_ROOT_UID,
            "fsGroup": NON_ROOT_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector_labels(name)},
            }
        ],
        "containers": [_container(name, spec)],
        "volumes": [{"name": TMP_VOLUME, "emptyDir": {}}],
    }
    if spec.service_account_name:
        pod["serviceAccountName"] = spec.service_account_name
    else:
        pod["automountServiceAccountToken"] = False
    return pod


def _container(name: str, spec: JobPoolSpec) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "command": ["jobpool", "worker"],
        "args": ["--pool", name, "--app", spec.app],
        "envFrom": [{"configMapRef": {"name": name}}],
        "env": _env(spec),
        "ports": [
            {"name": METRICS_PORT_NAME, "containerPort": spec.metrics_port, "protocol": "TCP"}
        ],
        "startupProbe": _probe("/healthz", period_s=2, failures=30),
        "livenessProbe": _probe("/healthz", period_s=10, failures=3),
        "readinessProbe": _probe("/readyz", period_s=5, failures=2),
        "resources": _resources(spec),
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": TMP_VOLUME, "mountPath": "/tmp"}],
    }
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    return container


def _env(spec: JobPoolSpec) -> list[dict[str, Any]]:
    """Pod identity, then the DSN by reference (never by value), then the user's env."""
    secret = spec.database.secret_ref
    return [
        _field_env("POD_NAME", "metadata.name"),
        _field_env("POD_UID", "metadata.uid"),
        {
            "name": "JOBPOOL_DSN",
            "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}},
        },
        *(var.model_dump(by_alias=True, exclude_none=True) for var in spec.env),
    ]


def _field_env(name: str, field_path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


def _probe(path: str, *, period_s: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": METRICS_PORT_NAME},
        "periodSeconds": period_s,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def _resources(spec: JobPoolSpec) -> dict[str, Any]:
    if spec.resources is None:
        return {}
    return spec.resources.model_dump(by_alias=True, exclude_none=True)


def _number(value: float) -> str:
    """``1.0`` as ``1``, ``0.5`` as ``0.5``: what ``jobpool worker``'s float options read."""
    return str(int(value)) if value.is_integer() else repr(value)
