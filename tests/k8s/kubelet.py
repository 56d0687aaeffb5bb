"""A kubelet stand-in: real pods of the test control plane run as local processes.

The control plane has no kubelet and no container runtime. :class:`KubeletStandIn`
plays their part for one Node, in a thread that syncs every ``SYNC_S``:

* **Node**: registers ``NODE`` (Ready, room for many pods, ``127.0.0.1``), and renews
  its Lease in ``kube-node-lease`` and its Ready condition, so the node lifecycle
  controller never taints it.
* **Start**: each pod scheduled to it runs its (single) container's command — the
  container's ``command`` or the image's entrypoint ``jobpool``, then its ``args`` —
  through ``podshim.py`` in the repository root (the image's working directory holds
  the same ``examples/``), with the env its spec resolves to: ``value``, ``fieldRef``,
  ``secretKeyRef``, ``configMapKeyRef``, ``envFrom`` (read when the container starts,
  as the kubelet does). A pod that mounts a service-account token (the
  ``kube-api-access-*`` volume the admission plugin adds) gets a kubeconfig with a
  token of its ServiceAccount, bound to the pod (TokenRequest), as ``KUBECONFIG``.
  Each container port gets a host port of its own (see ``podshim.py``).
* **Status**: ``Running`` with the container started; ``Ready`` (and
  ``ContainersReady``) as the readiness probe answers (HTTP GET, 2xx/3xx), or once
  running when there is no probe. A container that exits is restarted under
  ``restartPolicy: Always`` (``restartCount`` grows), else the pod ends ``Succeeded``
  or ``Failed``.
* **Deletion**: a pod with a ``deletionTimestamp`` gets SIGTERM, up to its grace period
  to exit, then SIGKILL; then the stand-in deletes it with grace 0, as a kubelet does.

Not played: liveness and startup probes, volumes (the host's filesystem is shared),
resource limits, image pulls, ``$(VAR)`` expansion. Every container's output goes to
``<workdir>/pods/<namespace>_<pod>_<uid>.log`` (:meth:`KubeletStandIn.logs`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config
from controlplane import HOST, die_with_parent, free_port, write_kubeconfig
from kubernetes.client.exceptions import ApiException

import jobpool

ROOT = Path(__file__).resolve().parents[2]
SHIM = Path(__file__).with_name("podshim.py")
NODE = "standin"
SYNC_S = 0.3
HEARTBEAT_S = 10.0
PROBE_TIMEOUT_S = 2.0
IMAGE_ENTRYPOINT = ["jobpool"]
TOKEN_SECONDS = 3600


def now_rfc3339() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass
class Container:
    """The process running one pod's container, and what the stand-in reported."""

    uid: str
    namespace: str
    name: str
    popen: subprocess.Popen[bytes]
    ports: dict[str, int]  # container port (number, and name) → host port
    started_at: str
    restarts: int = 0
    ready: bool | None = None
    term_deadline: float | None = None
    finished: bool = False

    def host_port(self, port: int | str) -> int | None:
        return self.ports.get(str(port))


@dataclass
class KubeletStandIn:
    """Runs the pods of Node ``NODE``; start with :meth:`start`, end with :meth:`stop`."""

    kubeconfig: Path
    workdir: Path
    server: str
    ca: Path
    containers: dict[str, Container] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(
            config_file=str(self.kubeconfig), client_configuration=configuration
        )
        self.api = kubernetes.client.ApiClient(configuration)
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.coordination = kubernetes.client.CoordinationV1Api(self.api)
        (self.workdir / "pods").mkdir(parents=True, exist_ok=True)
        self.services_file = self.workdir / "services.json"
        self.services_file.write_text("{}")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kubelet-standin", daemon=True)
        self._lock = threading.Lock()
        self._last_heartbeat = 0.0

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self.core.create_node(
            {
                "metadata": {
                    "name": NODE,
                    "labels": {"kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux"},
                }
            }
        )
        self._heartbeat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for container in list(self.containers.values()):
            self._kill(container)
        self.api.close()

    def logs(self, namespace: str, prefix: str) -> str:
        """Every container log of the pods in ``namespace`` named ``prefix…``, in age order."""
        paths = sorted(
            (self.workdir / "pods").glob(f"{namespace}_{prefix}*.log"),
            key=lambda path: path.stat().st_mtime,
        )
        return "".join(f"== {p.name}\n{p.read_text(errors='replace')}" for p in paths)

    # -- the sync loop ---------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if time.monotonic() - self._last_heartbeat > HEARTBEAT_S:
                    self._heartbeat()
                self._sync()
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(SYNC_S)

    def _sync(self) -> None:
        pods = self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={NODE}").items
        seen = set()
        for pod in pods:
            seen.add(pod.metadata.uid)
            self._sync_pod(pod)
        for uid in set(self.containers) - seen:  # deleted behind our back
            self._kill(self.containers.pop(uid))
        self._publish_services(pods)

    def _sync_pod(self, pod: Any) -> None:
        container = self.containers.get(pod.metadata.uid)
        if pod.metadata.deletion_timestamp is not None:
            self._terminate(pod, container)
        elif container is None:
            if pod.status.phase not in ("Succeeded", "Failed"):
                self._start(pod)
        elif not container.finished:
            self._watch(pod, container)

    # -- node ------------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        stamp = now_rfc3339()
        capacity = {"cpu": "64", "memory": "256Gi", "pods": "500"}
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "kubelet stand-in is posting ready status",
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": stamp,
        }
        self.core.patch_node_status(
            NODE,
            {
                "status": {
                    "capacity": capacity,
                    "allocatable": capacity,
                    "conditions": [ready],
                    "addresses": [{"type": "InternalIP", "address": HOST}],
                    "nodeInfo": {"kubeletVersion": "v1.36.2", "architecture": "amd64"},
                }
            },
        )
        lease = {
            "metadata": {"name": NODE, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": NODE,
                "leaseDurationSeconds": 40,
                "renewTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            },
        }
        try:
            self.coordination.patch_namespaced_lease(NODE, "kube-node-lease", lease)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.coordination.create_namespaced_lease("kube-node-lease", lease)
        self._last_heartbeat = time.monotonic()

    # -- containers ------------------------------------------------------------------------

    def _start(self, pod: Any, *, restarts: int = 0) -> None:
        spec = pod.spec.containers[0]
        ports = {}
        for port in spec.ports or ():
            ports[str(port.container_port)] = free_port()
            if port.name:
                ports[port.name] = ports[str(port.container_port)]
        env = {
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": "/tmp",
            "HOSTNAME": pod.metadata.name,
            "PYTHONUNBUFFERED": "1",
            "STANDIN_PORTS": json.dumps(
                {k: v for k, v in ports.items() if k.isdigit()}, sort_keys=True
            ),
            "STANDIN_SERVICES": str(self.services_file),
            # the image's Python path: the package under test, wherever the tests import it
            "PYTHONPATH": str(Path(jobpool.__file__).resolve().parents[1]),
        }
        env.update(self._resolve_env(pod, spec))
        if any((v.name or "").startswith("kube-api-access-") for v in pod.spec.volumes or ()):
            env["KUBECONFIG"] = str(self._service_account_kubeconfig(pod))
        command = [*(spec.command or IMAGE_ENTRYPOINT), *(spec.args or ())]
        log_path = (
            self.workdir
            / "pods"
            / f"{pod.metadata.namespace}_{pod.metadata.name}_{pod.metadata.uid}.log"
        )
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                [sys.executable, str(SHIM), *command],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        container = Container(
            uid=pod.metadata.uid,
            namespace=pod.metadata.namespace,
            name=pod.metadata.name,
            popen=popen,
            ports=ports,
            started_at=now_rfc3339(),
            restarts=restarts,
        )
        self.containers[pod.metadata.uid] = container
        self._report(pod, container, ready=spec.readiness_probe is None)

    def _watch(self, pod: Any, container: Container) -> None:
        code = container.popen.poll()
        if code is None:
            probe = pod.spec.containers[0].readiness_probe
            ready = probe is None or self._probe(container, probe)
            if ready != container.ready:
                self._report(pod, container, ready=ready)
            return
        if pod.spec.restart_policy == "Always":
            del self.containers[pod.metadata.uid]
            self._start(pod, restarts=container.restarts + 1)
            return
        container.finished = True
        self._report(pod, container, ready=False, exit_code=code)

    def _terminate(self, pod: Any, container: Container | None) -> None:
        if container is not None and container.popen.poll() is None:
            if container.term_deadline is None:
                grace = pod.metadata.deletion_grace_period_seconds or 0
                container.term_deadline = time.monotonic() + grace
                container.popen.send_signal(signal.SIGTERM)
                return
            if time.monotonic() < container.term_deadline:
                return
            self._kill(container)
        self.containers.pop(pod.metadata.uid, None)
        options = kubernetes.client.V1DeleteOptions(
            grace_period_seconds=0,
            preconditions=kubernetes.client.V1Preconditions(uid=pod.metadata.uid),
        )
        with contextlib.suppress(ApiException):  # gone already, or a new pod of that name
            self.core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, body=options)

    def _kill(self, container: Container) -> None:
        if container.popen.poll() is None:
            container.popen.kill()
        container.popen.wait()

    def _probe(self, container: Container, probe: Any) -> bool:
        http = probe.http_get
        if http is None:
            return True
        port = container.host_port(http.port)
        if port is None:
            return False
        try:
            with urllib.request.urlopen(
                f"http://{HOST}:{port}{http.path or '/'}", timeout=PROBE_TIMEOUT_S
            ) as answer:
                return 200 <= answer.status < 400
        except (OSError, urllib.error.URLError):
            return False

    def _report(
        self, pod: Any, container: Container, *, ready: bool, exit_code: int | None = None
    ) -> None:
        container.ready = ready
        spec = pod.spec.containers[0]
        if exit_code is None:
            phase, state = "Running", {"running": {"startedAt": container.started_at}}
        else:
            phase = "Succeeded" if exit_code == 0 else "Failed"
            state = {
                "terminated": {
                    "exitCode": exit_code,
                    "reason": "Completed" if exit_code == 0 else "Error",
                    "startedAt": container.started_at,
                    "finishedAt": now_rfc3339(),
                }
            }
        flag = "True" if ready else "False"
        stamp = now_rfc3339()
        conditions = [
            {"type": kind, "status": status, "lastTransitionTime": stamp}
            for kind, status in (
                ("PodScheduled", "True"),
                ("Initialized", "True"),
                ("ContainersReady", flag),
                ("Ready", flag),
            )
        ]
        status = {
            "phase": phase,
            "hostIP": HOST,
            "podIP": HOST,
            "podIPs": [{"ip": HOST}],
            "startTime": container.started_at,
            "conditions": conditions,
            "containerStatuses": [
                {
                    "name": spec.name,
                    "image": spec.image,
                    "imageID": spec.image,
                    "ready": ready,
                    "started": exit_code is None,
                    "restartCount": container.restarts,
                    "state": state,
                }
            ],
        }
        with contextlib.suppress(ApiException):  # deleted meanwhile
            self.core.patch_namespaced_pod_status(
                pod.metadata.name, pod.metadata.namespace, {"status": status}
            )

    # -- what a pod's process sees ---------------------------------------------------------

    def _resolve_env(self, pod: Any, spec: Any) -> dict[str, str]:
        namespace = pod.metadata.namespace
        env: dict[str, str] = {}
        for source in spec.env_from or ():
            prefix = source.prefix or ""
            if source.config_map_ref is not None:
                data = self._config_map(namespace, source.config_map_ref.name)
            else:
                data = self._secret(namespace, source.secret_ref.name)
            env.update({prefix + key: value for key, value in data.items()})
        for var in spec.env or ():
            env[var.name] = self._env_value(pod, var)
        return env

    def _env_value(self, pod: Any, var: Any) -> str:
        if var.value_from is None:
            return var.value or ""
        source = var.value_from
        namespace = pod.metadata.namespace
        if source.field_ref is not None:
            return field_value(pod, source.field_ref.field_path)
        if source.secret_key_ref is not None:
            ref = source.secret_key_ref
            return self._secret(namespace, ref.name)[ref.key]
        if source.config_map_key_ref is not None:
            ref = source.config_map_key_ref
            return self._config_map(namespace, ref.name)[ref.key]
        raise ValueError(f"env {var.name}: the stand-in resolves no {source}")

    def _secret(self, namespace: str, name: str) -> dict[str, str]:
        data = self.core.read_namespaced_secret(name, namespace).data or {}
        return {key: base64.b64decode(value).decode() for key, value in data.items()}

    def _config_map(self, namespace: str, name: str) -> dict[str, str]:
        return dict(self.core.read_namespaced_config_map(name, namespace).data or {})

    def _service_account_kubeconfig(self, pod: Any) -> Path:
        request = {
            "spec": {
                "audiences": [],
                "expirationSeconds": TOKEN_SECONDS,
                "boundObjectRef": {
                    "kind": "Pod",
                    "apiVersion": "v1",
                    "name": pod.metadata.name,
                    "uid": pod.metadata.uid,
                },
            }
        }
        account = pod.spec.service_account_name or "default"
        token = self.core.create_namespaced_service_account_token(
            account, pod.metadata.namespace, request
        ).status.token
        path = self.workdir / "pods" / f"{pod.metadata.uid}.kubeconfig"
        return write_kubeconfig(
            path, server=self.server, ca=self.ca, token=token, namespace=pod.metadata.namespace
        )

    def _publish_services(self, pods: list[Any]) -> None:
        """``services.json`` for ``podshim.py``: each Service port → a ready pod's host port."""
        table: dict[str, dict[str, int]] = {}
        for service in self.core.list_service_for_all_namespaces().items:
            selector = (service.spec.selector or {}).items()
            ready = [
                container
                for pod in pods
                if pod.metadata.namespace == service.metadata.namespace
                and selector
                and selector <= (pod.metadata.labels or {}).items()
                and (container := self.containers.get(pod.metadata.uid)) is not None
                and container.ready
            ]
            ports = {
                str(port.port): target
                for port in (service.spec.ports or ())
                if ready
                if (target := ready[0].host_port(port.target_port or port.port)) is not None
            }
            if ports:
                table[f"{service.metadata.name}.{service.metadata.namespace}"] = ports
        temporary = self.services_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(table))
        temporary.replace(self.services_file)


def field_value(pod: Any, path: str) -> str:
    """A ``fieldRef`` of the downward API."""
    values = {
        "metadata.name": pod.metadata.name,
        "metadata.namespace": pod.metadata.namespace,
        "metadata.uid": pod.metadata.uid,
        "spec.nodeName": pod.spec.node_name,
        "spec.serviceAccountName": pod.spec.service_account_name,
        "status.podIP": HOST,
        "status.hostIP": HOST,
    }
    if path in values:
        return str(values[path] or "")
    raise ValueError(f"fieldRef {path!r}: not known to the stand-in")
