"""Shared by the chart tests: run helm on charts/jobpool, pick manifests, value cases.

:class:`Chart` runs ``helm template`` / ``helm lint`` on the chart with given values (a
dict, written to a values file) and parses what ``template`` renders into a list of
manifests. Renders are cached per values, so the many tests that look at the same
combination pay for one helm run. helm runs with its own empty config, cache and data
directories and no kubeconfig, so neither the developer's helm setup nor a cluster can
change what it renders.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import helm_fetch
import yaml

CHART_DIR = helm_fetch.ROOT / "charts" / "jobpool"
KUBE_VERSION = "1.34.0"
RELEASE = "jobpool"
NAMESPACE = "jobpool"

Manifest = dict[str, Any]


class HelmFailed(AssertionError):
    """helm exited non-zero; the message holds its output."""


class Chart:
    """``helm template`` and ``helm lint`` of charts/jobpool, values in, manifests out."""

    def __init__(self, helm: Path, workdir: Path) -> None:
        self.helm = helm
        self.dir = CHART_DIR
        self._workdir = workdir
        self._env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(workdir),
            "HELM_CONFIG_HOME": str(workdir / "config"),
            "HELM_CACHE_HOME": str(workdir / "cache"),
            "HELM_DATA_HOME": str(workdir / "data"),
            "KUBECONFIG": str(workdir / "no-kubeconfig"),
        }
        self._renders: dict[str, list[Manifest]] = {}

    def run(
        self, *args: str, values: Mapping[str, Any] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``helm ARGS [-f values]``, whatever its exit code."""
        command = [str(self.helm), *args]
        if values:
            command += ["--values", str(self._values_file(values))]
        return subprocess.run(
            command, capture_output=True, text=True, env=self._env, timeout=120, check=False
        )

    def template_run(
        self,
        values: Mapping[str, Any] | None = None,
        *,
        namespace: str = NAMESPACE,
        include_crds: bool = False,
        extra: tuple[str, ...] = (),
    ) -> subprocess.CompletedProcess[str]:
        args = ["template", RELEASE, str(self.dir), "--namespace", namespace]
        args += ["--kube-version", KUBE_VERSION, *extra]
        if include_crds:
            args.append("--include-crds")
        return self.run(*args, values=values)

    def template(
        self,
        values: Mapping[str, Any] | None = None,
        *,
        namespace: str = NAMESPACE,
        include_crds: bool = False,
    ) -> list[Manifest]:
        """The manifests ``helm template`` renders (hooks and tests included)."""
        key = json.dumps([values or {}, namespace, include_crds], sort_keys=True)
        if key not in self._renders:
            done = self.template_run(values, namespace=namespace, include_crds=include_crds)
            if done.returncode != 0:
                raise HelmFailed(f"helm template failed with {values}:\n{done.stderr}")
            docs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
            self._renders[key] = docs
        return [json.loads(json.dumps(doc)) for doc in self._renders[key]]  # a fresh copy

    def lint(self, values: Mapping[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
        return self.run("lint", "--strict", str(self.dir), values=values)

    def _values_file(self, values: Mapping[str, Any]) -> Path:
        text = yaml.safe_dump(dict(values), sort_keys=True)
        path = self._workdir / f"values-{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
        if not path.exists():
            path.write_text(text)
        return path


def find(manifests: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    """The manifests of one kind (and name)."""
    return [
        m
        for m in manifests
        if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)
    ]


def only(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = find(manifests, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


DSN = "postgresql://jobpool:s3cret-Pa55@db.example:5432/jobpool"
"""A DSN given to the chart in some cases: its password must appear in the Secret only."""

CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"operator": {"scope": "namespaced"}},
    "namespaced-teams": {"operator": {"scope": "namespaced", "namespaces": ["team-a", "team-b"]}},
    "namespaced-no-discovery": {
        "operator": {"scope": "namespaced"},
        "rbac": {"clusterDiscovery": False},
    },
    "cluster-no-discovery": {"rbac": {"clusterDiscovery": False}},
    "standalone": {"operator": {"peering": {"enabled": False}}},
    "namespaced-standalone": {"operator": {"scope": "namespaced", "peering": {"enabled": False}}},
    "migration": {"migration": {"enabled": True}},
    "created-secret": {"database": {"createSecret": True, "dsn": DSN}},
    "migration-created-secret": {
        "migration": {"enabled": True},
        "database": {"createSecret": True, "dsn": DSN},
    },
    "servicemonitor": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "servicemonitor-namespaced": {
        "operator": {"scope": "namespaced", "namespaces": ["team-a", "team-b"]},
        "serviceMonitor": {"enabled": True},
    },
    "no-rbac": {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "ops"}},
    "everything": {
        "nameOverride": "jp",
        "image": {"digest": "sha256:" + "ab" * 32, "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "database": {
            "secretName": "pg",
            "secretKey": "uri",
            "createSecret": True,
            "dsn": DSN,
            "migrationSecretName": "pg-owner",
            "migrationSecretKey": "owner-uri",
        },
        "operator": {
            "replicas": 3,
            "scope": "namespaced",
            "namespaces": ["jobpool", "team-a"],
            "peering": {"enabled": True, "name": "jobpool-ha"},
            "statusIntervalSeconds": 2.5,
            "logLevel": "debug",
            "logFormat": "text",
            "healthPort": 9000,
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": 1}},
            "podAnnotations": {"example.com/team": "platform"},
            "podLabels": {"team": "platform"},
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "ops", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {
                "podAntiAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 100,
                            "podAffinityTerm": {
                                "topologyKey": "kubernetes.io/hostname",
                                "labelSelector": {"matchLabels": {"team": "platform"}},
                            },
                        }
                    ]
                }
            },
            "priorityClassName": "system-cluster-critical",
            "extraEnv": [{"name": "OTEL_SERVICE_NAME", "value": "jobpool-operator"}],
        },
        "serviceAccount": {"name": "jobpool-operator", "annotations": {"example.com/role": "x"}},
        "migration": {"enabled": True, "backoffLimit": 3, "activeDeadlineSeconds": 120},
        "serviceMonitor": {"enabled": True, "interval": "15s", "scrapeTimeout": "5s"},
    },
}
"""Value combinations every render test runs on: scope, peering, migration, ServiceMonitor,
Secret and RBAC switched on and off."""


def values_of(case: str) -> dict[str, Any]:
    return json.loads(json.dumps(CASES[case]))
