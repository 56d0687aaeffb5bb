"""The operator tier: the real operator, in-process, against kmock's Kubernetes emulator.

Fixtures:

* ``api``: a :class:`ApiServer` (kmock's ``KubernetesEmulator``, served on a local
  port) whose discovery lists the JobPool resource (with its ``status`` and ``scale``
  subresources), ``apiextensions.k8s.io/v1/customresourcedefinitions`` and
  ``v1/namespaces`` — without those kopf never starts watching — and the kinds the
  operator writes. The JobPool CRD itself (``crd.render_crd()``) is stored in it.
* ``cluster``: a :class:`Cluster`, the test's kubectl: create/patch/delete JobPools,
  read objects and Events, patch a StatefulSet's status as its controller would, and
  poll with a deadline (:meth:`Cluster.eventually`).
* ``start_operator``: starts the real operator (``handlers.run_operator``: kopf, the
  operator's registry, settings and context) against ``api`` and the test's migrated
  database ``dsn``, standalone, cluster-wide, with a short status interval; stops it
  after the test and checks that its thread and event loop are gone.

Why a thread with its own event loop: when ``kopf.operator()`` ends it cancels every
task of its loop created after it started. In pytest-asyncio's session loop that
would include the fixtures' own teardown; in its own loop it is exactly the operator.
The emulator keeps serving in the test's loop, so tests await (poll) instead of
blocking.

Why cluster-wide: kmock 0.8 cannot parse ``GET /api/v1/namespaces`` (its path parser
takes ``namespaces`` for the namespace prefix and fails), which a namespaced kopf
needs to observe its namespaces. ``v1/namespaces`` is still registered, as kopf
checks discovery for it.

What kmock leaves to its users (its docs invite subclassing for it),
:class:`ApiServer` adds: a name from ``generateName`` (kopf's Events use it), ``uid``,
``creationTimestamp``, ``generation`` bumped on a spec change, and a
``resourceVersion`` on every write. There is no garbage collector and no StatefulSet
controller: tests assert owner references, and patch a StatefulSet's status
themselves.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import itertools
import threading
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import kmock
import kubernetes.client
import pg
import pytest_asyncio

from jobpool.operator.context import OperatorConfig
from jobpool.operator.crd import render_crd
from jobpool.operator.handlers import run_operator
from jobpool.operator.render import selector_labels

T = TypeVar("T")

_TEST = {"loop_scope": "session", "scope": "function"}

NAMESPACE = "jobs"
JOBPOOLS = "jobpool.dev/v1alpha1/jobpools"
KINDS = {
    "StatefulSet": "apps/v1/statefulsets",
    "Service": "v1/services",
    "ConfigMap": "v1/configmaps",
    "PodDisruptionBudget": "policy/v1/poddisruptionbudgets",
}
EVENTS = "v1/events"
PODS = "v1/pods"
STATUS_INTERVAL_S = 0.3
DEADLINE_S = 15.0
POLL_S = 0.05
_ALL_VERBS = {"list", "watch", "get", "create", "patch", "update", "delete"}


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 merge patch (what kmock applies), to see whether a spec changes."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


class ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator plus the metadata a real API server maintains."""

    _versions = itertools.count(1)

    async def _handle(self, request: kmock.Request) -> Any:
        if request.resource is not None and isinstance(request.data, dict):
            if request.action == kmock.action.CREATE:
                self._stamp_new(request.data)
            elif request.action == kmock.action.UPDATE and request.name is not None:
                self._stamp_change(request)
        return await super()._handle(request)

    def _stamp_new(self, data: dict[str, Any]) -> None:
        meta = data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", datetime.now(UTC).isoformat())
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = str(next(self._versions))

    def _stamp_change(self, request: kmock.Request) -> None:
        data: dict[str, Any] = request.data
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return
        current = self.objects[key].raw
        meta = data.get("metadata")
        if not isinstance(meta, dict):
            meta = data["metadata"] = {}
        if request.subresource is None and "spec" in data:
            old_spec = current.get("spec")
            if _merge(old_spec, data["spec"]) != old_spec:
                meta["generation"] = int(current.get("metadata", {}).get("generation", 1)) + 1
        meta["resourceVersion"] = str(next(self._versions))


def _plain(value: Any) -> Any:
    return copy.deepcopy(value.raw if hasattr(value, "raw") else value)


class Cluster:
    """The test's kubectl against the emulator, and polling with a deadline."""

    def __init__(self, api: ApiServer, namespace: str = NAMESPACE) -> None:
        self.api = api
        self.namespace = namespace

    # -- JobPools -----------------------------------------------------------------

    def jobpool_url(self, name: str | None = None, subresource: str | None = None) -> str:
        url = f"/apis/jobpool.dev/v1alpha1/namespaces/{self.namespace}/jobpools"
        return url + (f"/{name}" if name else "") + (f"/{subresource}" if subresource else "")

    async def create_jobpool(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {
            "apiVersion": "jobpool.dev/v1alpha1",
            "kind": "JobPool",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": spec,
        }
        return await self._send("post", self.jobpool_url(), body)

    async def patch_jobpool(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self._send("patch", self.jobpool_url(name), patch)

    async def delete_jobpool(self, name: str) -> None:
        await self._send("delete", self.jobpool_url(name), None)

    def jobpool(self, name: str) -> dict[str, Any] | None:
        return self.get(JOBPOOLS, name)

    def status(self, name: str) -> dict[str, Any]:
        return (self.jobpool(name) or {}).get("status") or {}

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        conditions = self.status(name).get("conditions") or []
        return next((c for c in conditions if c.get("type") == type_), {})

    # -- other objects -------------------------------------------------------------

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        key = (kmock.resource(resource), self.namespace, name)
        if key not in self.api.objects or self.api.objects[key].deleted:
            return None
        return _plain(self.api.objects[key])

    def child(self, kind: str, name: str) -> dict[str, Any] | None:
        return self.get(KINDS[kind], name)

    def children(self, name: str) -> dict[str, dict[str, Any] | None]:
        return {kind: self.child(kind, name) for kind in KINDS}

    def events(self, name: str, reason: str | None = None) -> list[dict[str, Any]]:
        """Events about the JobPool ``name`` (oldest first), optionally of one reason."""
        found = [
            _plain(obj)
            for (resource, _, _), obj in self.api.objects.items()
            if resource == kmock.resource(EVENTS) and not obj.deleted
        ]
        return sorted(
            (
                e
                for e in found
                if e.get("involvedObject", {}).get("name") == name
                and e.get("involvedObject", {}).get("kind") == "JobPool"
                and (reason is None or e.get("reason") == reason)
            ),
            key=lambda e: e.get("metadata", {}).get("resourceVersion", "").zfill(12),
        )

    async def set_statefulset_status(self, name: str, status: dict[str, Any]) -> None:
        """Play the StatefulSet controller: report replicas, readiness, rollout."""
        url = f"/apis/apps/v1/namespaces/{self.namespace}/statefulsets/{name}/status"
        await self._send("patch", url, {"status": status})

    async def add_ready_pod(self, name: str, ordinal: int, *, since: str) -> None:
        """Play the kubelet: worker pod ``<name>-<ordinal>``, Ready since ``since``."""
        ready = {"type": "Ready", "status": "True", "lastTransitionTime": since}
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{name}-{ordinal}",
                "namespace": self.namespace,
                "labels": selector_labels(name),
            },
            "status": {"conditions": [ready]},
        }
        await self._send("post", f"/api/v1/namespaces/{self.namespace}/pods", pod)

    # -- waiting -------------------------------------------------------------------

    async def eventually(
        self,
        probe: Callable[[], T | bool | None] | Callable[[], Awaitable[T | bool | None]],
        *,
        what: str,
        timeout: float = DEADLINE_S,
    ) -> T:
        """Poll ``probe`` until it returns something truthy; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            result = probe()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result  # type: ignore[return-value]
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            await asyncio.sleep(POLL_S)

    async def _send(self, method: str, url: str, body: dict[str, Any] | None) -> dict[str, Any]:
        async with self.api.request(method, url, json=body) as response:
            data: dict[str, Any] = await response.json()
            assert response.status < 400, f"{method} {url}: {response.status} {data}"
            return data


class OperatorThread:
    """The real operator, in its own thread and event loop; stopped by a flag."""

    def __init__(self, config: OperatorConfig, server: str, **options: Any) -> None:
        configuration = kubernetes.client.Configuration()
        configuration.host = server
        self._args = (config, configuration)
        self._options = {"clusterwide": True, "standalone": True, **options}
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="jobpool-operator", daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            await run_operator(
                *self._args, **self._options, stop_flag=self.stop_flag, ready_flag=self.ready_flag
            )

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by stop()
            self.error = exc

    async def start(self) -> None:
        self.thread.start()
        if not await asyncio.to_thread(self.ready_flag.wait, DEADLINE_S):
            raise AssertionError(f"the operator did not start: {self.error!r}")

    async def task_names(self) -> list[str]:
        """Names of the tasks alive in the operator's event loop."""
        assert self.loop is not None

        async def names() -> list[str]:
            return sorted(task.get_name() for task in asyncio.all_tasks())

        future = asyncio.run_coroutine_threadsafe(names(), self.loop)
        return await asyncio.wrap_future(future)

    async def stop(self) -> None:
        """Stop the operator (again: no-op) and check that nothing of it is left."""
        self.stop_flag.set()
        await asyncio.to_thread(self.thread.join, DEADLINE_S)
        assert not self.thread.is_alive(), "the operator did not stop"
        assert self.error is None, f"the operator failed: {self.error!r}"
        assert self.loop is not None
        assert self.loop.is_closed()
        _collect_leftovers()


def _collect_leftovers() -> None:
    """kopf leaves some aiohttp sessions and sockets of its closed loop to the garbage
    collector. Collect them now, while they can only be this operator's: otherwise
    their "unclosed" ResourceWarnings surface (as errors, under filterwarnings=error) in
    whichever later test happens to run the collector."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def watch_requests(api: ApiServer) -> list[kmock.Request]:
    return [
        request
        for request in list(api)
        if request.action == kmock.action.WATCH and request.resource == kmock.resource(JOBPOOLS)
    ]


@pytest_asyncio.fixture(**_TEST)
async def api() -> AsyncIterator[ApiServer]:
    async with ApiServer() as server, kmock.Server(server):
        resources = server.resources
        resources[JOBPOOLS] = kmock.ResourceInfo(
            kind="JobPool",
            singular="jobpool",
            namespaced=True,
            shortnames={"jp"},
            subresources={"status", "scale"},
            verbs=_ALL_VERBS,
        )
        resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = kmock.ResourceInfo(
            kind="CustomResourceDefinition", namespaced=False, verbs=_ALL_VERBS
        )
        resources["v1/namespaces"] = kmock.ResourceInfo(
            kind="Namespace", namespaced=False, verbs=_ALL_VERBS
        )
        resources[EVENTS] = kmock.ResourceInfo(kind="Event", namespaced=True, verbs=_ALL_VERBS)
        resources[PODS] = kmock.ResourceInfo(kind="Pod", namespaced=True, verbs=_ALL_VERBS)
        for kind, resource in KINDS.items():
            resources[resource] = kmock.ResourceInfo(
                kind=kind, namespaced=True, subresources={"status"}, verbs=_ALL_VERBS
            )
        crd = render_crd()
        async with server.post(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd
        ) as response:
            assert response.status == 200, await response.text()
        yield server


@pytest_asyncio.fixture(**_TEST)
async def cluster(api: ApiServer) -> Cluster:
    return Cluster(api)


@pytest_asyncio.fixture(**_TEST)
async def start_operator(
    api: ApiServer, cluster: Cluster, dsn: str
) -> AsyncIterator[Callable[..., Awaitable[OperatorThread]]]:
    """``await start_operator(options=..., **config)``: run an operator until the test ends.

    ``config`` overrides ``OperatorConfig`` fields (``dsn`` too); ``options`` go to
    ``run_operator`` (peering, priority, identity); ``watching=False`` skips waiting
    for kopf's JobPool watch (a paused operator never starts it).
    """
    started: list[OperatorThread] = []

    async def start(
        *, options: dict[str, Any] | None = None, watching: bool = True, **overrides: Any
    ) -> OperatorThread:
        settings: dict[str, Any] = {"status_interval_s": STATUS_INTERVAL_S, "db_timeout_s": 2.0}
        operator_dsn = overrides.pop("dsn", pg.as_role(dsn, pg.OPERATOR))
        config = OperatorConfig(dsn=operator_dsn, **{**settings, **overrides})
        operator = OperatorThread(config, str(api.url).rstrip("/"), **(options or {}))
        started.append(operator)
        watches = len(watch_requests(api))
        await operator.start()
        if watching:  # a JobPool created before kopf watches would be replayed to it
            await cluster.eventually(
                lambda: len(watch_requests(api)) > watches, what="kopf to watch JobPools"
            )
        return operator

    yield start
    for operator in started:
        await operator.stop()
