"""What the tests of the real-control-plane tier share: kubectl, helm, waiting, reading.

:class:`Cluster` is the tests' hands on the control plane: ``kubectl`` as the admin
(``run``, ``apply``), the official client for reads, JobPools and Events, and
:func:`eventually` — bounded polling of a condition, never a fixed sleep, with a
generous deadline since the machine is shared and slow. :class:`Helm` runs the real
helm binary against it with its own empty helm directories.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import kubernetes.client
import kubernetes.config
import yaml
from controlplane import ControlPlane, assets_dir
from kubelet import KubeletStandIn
from kubernetes.client.exceptions import ApiException

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "jobpool"
GROUP, VERSION, PLURAL = "jobpool.dev", "v1alpha1", "jobpools"
DEADLINE_S = 120.0
POLL_S = 0.5
COMMAND_TIMEOUT_S = 300


def eventually(
    probe: Callable[[], T | None],
    *,
    what: str,
    timeout: float = DEADLINE_S,
    detail: Callable[[], object] | None = None,
) -> T:
    """Poll ``probe`` until it returns something truthy; return that, or fail naming
    ``what`` (and what ``detail`` then shows)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            shown = f": {detail()}" if detail else ""
            raise AssertionError(f"gave up waiting ({timeout:.0f} s) for {what}{shown}")
        time.sleep(POLL_S)


class CommandFailed(AssertionError):
    """kubectl or helm exited non-zero; the message holds its output."""


def _run(command: list[str], env: Mapping[str, str], stdin: str | None) -> str:
    done = subprocess.run(
        command,
        input=stdin,
        capture_output=True,
        text=True,
        env=dict(env),
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise CommandFailed(f"{' '.join(command[:6])} … failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


@dataclass
class Cluster:
    """kubectl and the official client, as the control plane's admin."""

    plane: ControlPlane
    kubelet: KubeletStandIn

    def __post_init__(self) -> None:
        self.kubeconfig = self.plane.kubeconfig("admin")
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(
            config_file=str(self.kubeconfig), client_configuration=configuration
        )
        self.api = kubernetes.client.ApiClient(configuration)
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.apps = kubernetes.client.AppsV1Api(self.api)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "KUBECONFIG": str(self.kubeconfig),
            # kubectl caches discovery under $HOME/.kube: keep it in the plane's workdir.
            "HOME": str(self.kubeconfig.parent),
        }

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        return _run([str(assets_dir() / "kubectl"), *args], self.env, stdin)

    def kubectl_result(
        self, *args: str, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """kubectl whatever its exit code (for refusals)."""
        return subprocess.run(
            [str(assets_dir() / "kubectl"), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )

    def apply(self, *manifests: Mapping[str, Any], namespace: str | None = None) -> str:
        text = yaml.safe_dump_all([dict(m) for m in manifests])
        args = ["apply", "--server-side", "--force-conflicts", "-f", "-"]
        return self.kubectl(*args, *(["-n", namespace] if namespace else []), stdin=text)

    def namespace(self, name: str) -> str:
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        return name

    def secret(self, namespace: str, name: str, data: Mapping[str, str]) -> None:
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": namespace},
                "stringData": dict(data),
            }
        )

    # -- reads ----------------------------------------------------------------------------

    def jobpool(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return found

    def condition(self, namespace: str, name: str, kind: str) -> dict[str, Any]:
        pool = self.jobpool(namespace, name) or {}
        conditions = (pool.get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c.get("type") == kind), {})

    def patch_jobpool(self, namespace: str, name: str, spec: Mapping[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, {"spec": dict(spec)}
        )

    def statefulset(self, namespace: str, name: str) -> Any:
        try:
            return self.apps.read_namespaced_stateful_set(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def pods(self, namespace: str, selector: str) -> list[Any]:
        return list(self.core.list_namespaced_pod(namespace, label_selector=selector).items)

    def events(self, namespace: str, *, involved: str | None = None) -> list[Any]:
        selector = f"involvedObject.name={involved}" if involved else None
        return list(self.core.list_namespaced_event(namespace, field_selector=selector).items)

    def pool_ready(self, namespace: str, name: str, replicas: int) -> bool:
        """The JobPool says Ready with ``replicas`` ready workers, and no pod terminates."""
        pool = self.jobpool(namespace, name) or {}
        status = pool.get("status") or {}
        pods = self.pods(namespace, f"app.kubernetes.io/instance={name}")
        return (
            self.condition(namespace, name, "Ready").get("status") == "True"
            and status.get("readyReplicas") == replicas
            and len(pods) == replicas
            and all(p.metadata.deletion_timestamp is None for p in pods)
        )

    def wait_pool_ready(self, namespace: str, name: str, replicas: int) -> None:
        eventually(
            lambda: self.pool_ready(namespace, name, replicas),
            what=f"JobPool {namespace}/{name} Ready with {replicas} workers",
        )


@dataclass
class Helm:
    """The real helm binary against the test control plane."""

    binary: Path
    workdir: Path
    cluster: Cluster

    def run(self, *args: str) -> str:
        env = {
            **self.cluster.env,
            "HOME": str(self.workdir),
            "HELM_CONFIG_HOME": str(self.workdir / "config"),
            "HELM_CACHE_HOME": str(self.workdir / "cache"),
            "HELM_DATA_HOME": str(self.workdir / "data"),
        }
        return _run([str(self.binary), *args], env, None)

    def install(
        self, release: str, namespace: str, values: Mapping[str, Any], *, upgrade: bool = False
    ) -> str:
        values_file = self.workdir / f"{release}-{namespace}.values.json"
        values_file.write_text(json.dumps(values))
        verb = ["upgrade"] if upgrade else ["install"]
        return self.run(
            *verb,
            release,
            str(CHART),
            "--namespace",
            namespace,
            "--values",
            str(values_file),
            "--wait",
            "--timeout",
            "4m",
        )


# -- the operator, installed by the chart ----------------------------------------------

OPERATOR_NAMESPACE = "jobpool-system"
DATABASE_SECRET = "jobpool-database"
STATUS_INTERVAL_S = 1


def merged(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, nested mappings key by key."""
    result = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def operator_values(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The chart's values for the tier: a short status interval, text logs."""
    base = {
        "image": {"repository": "jobpool", "tag": "test"},
        "database": {"secretName": DATABASE_SECRET},
        "operator": {"statusIntervalSeconds": STATUS_INTERVAL_S, "logFormat": "text"},
    }
    return merged(base, extra or {})


def install_operator(
    helm: Helm, *, release: str, namespace: str, dsn: str, values: Mapping[str, Any]
) -> None:
    """The DSN Secret, then ``helm install --wait`` (the operator pod Ready)."""
    helm.cluster.namespace(namespace)
    helm.cluster.secret(namespace, DATABASE_SECRET, {"dsn": dsn})
    helm.install(release, namespace, values)


def operator_log(cluster: Cluster, *, release: str, namespace: str) -> str:
    """Everything the operator pods of ``release`` printed."""
    return cluster.kubelet.logs(namespace, f"{release}-")
