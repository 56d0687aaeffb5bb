"""The chart's RBAC grants exactly the Kubernetes API calls the operator makes: every
call is allowed, and nothing else is.

The calls are derived from the code, not listed by hand:

1. **The operator's own calls** go through ``jobpool.operator.context.Kube``. An AST scan
   of ``jobpool/operator/*.py`` finds each use of it (``….kube.apply(manifest)``,
   ``….kube.read("Kind", …)``); ``apply`` is used on the children that
   ``render.render_children`` produces. Each use is then *run* against a recording fake
   of the kubernetes client's HTTP layer — the object existing, missing (the create
   fallback) and created meanwhile (409, apply again) — and each HTTP request is turned
   into a permission (``GET`` one object → get, ``POST`` → create, ``PATCH`` → patch, …).
   The scan also looks for any direct ``kubernetes.client`` API method call
   (``create_namespaced_stateful_set``, …) outside ``Kube``; each is run the same way.
2. **kopf's own calls**, from the operator's kopf registry (``handlers.build_registry``)
   and settings (``handlers.operator_settings``), and the mode the chart's Deployment
   passes to ``jobpool operator`` (parsed by the CLI itself). What kopf 1.45 does, and why
   (see kopf/_core/reactor/observation.py, _core/engines/peering.py,
   _cogs/clients/patching.py and events.py):

   * the served resource (every resource a handler is registered for): ``list`` and
     ``watch`` (its watch streams); ``patch`` when a handler keeps state (the finalizer,
     progress and diff-base annotations of changing handlers and timers; autoscaling
     patches ``spec.replicas``); ``patch`` on its ``status`` subresource when the CRD has
     one and a handler writes ``patch.status`` (kopf sends the status part there);
     ``update`` on its ``finalizers`` subresource when ``kopf.adopt`` is used (it sets
     ``blockOwnerDeletion``, which the OwnerReferencesPermissionEnforcement admission
     plugin checks that way);
   * ``events``: ``create`` (``kopf.event`` and kopf's own handler-failure events);
   * peering, unless ``--standalone``: ``list`` and ``watch`` on ``kopfpeerings`` (per
     namespace) or ``clusterkopfpeerings`` (cluster-wide), ``patch`` on the one named
     ``--peering`` (keep-alives; never ``get`` or ``create``: a missing object is
     only logged). kopf also looks for the legacy ``zalando.org`` peering resources, but
     uses only those the cluster serves; the chart installs the ``kopf.dev`` ones;
   * discovery (``settings.scanning``): ``list`` and ``watch`` on
     ``customresourcedefinitions`` in both modes, and on ``namespaces`` when namespaced
     (kopf lists them even for exact names; a cluster-wide kopf does not). Both are
     cluster-wide, so the chart makes them optional (``rbac.clusterDiscovery``); without
     them kopf logs a warning and keeps its first discovery and the exact namespaces.
     API discovery itself (``/api``, ``/apis``, ``/version``) is allowed to every
     authenticated user (``system:discovery``).

The pods of the migration Job and of ``helm test`` mount no token: they need nothing.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import itertools
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes.client
import kubernetes.client.rest
import pytest
import typer.main
from chart_kit import CASES, NAMESPACE, Chart, Manifest, find, only, values_of
from kopf._cogs.structs import references
from kubernetes.client.exceptions import ApiException

from jobpool.cli import app
from jobpool.operator import context as operator_context
from jobpool.operator.context import Kube, OperatorConfig
from jobpool.operator.crd import render_crd
from jobpool.operator.handlers import build_registry, operator_settings
from jobpool.operator.render import render_children
from jobpool.operator.spec import parse_spec

OPERATOR_DIR = Path(operator_context.__file__).parent
API_METHOD = re.compile(r"^(list|read|create|patch|replace|delete|connect)_\w+$")
HTTP_VERBS = {"POST": "create", "PATCH": "patch", "PUT": "update"}
NOT_API_CALLS = {"close"}  # Kube methods that send no request
EVERYWHERE = "*"  # a ClusterRole's scope: every namespace, or a cluster-scoped resource


@dataclass(frozen=True, order=True)
class Permission:
    scope: str  # a namespace, or EVERYWHERE
    group: str
    resource: str  # with its subresource: "jobpools/status"
    verb: str
    name: str = ""  # a resourceNames entry; "" for any object

    def __str__(self) -> str:
        name = f" named {self.name}" if self.name else ""
        return f"{self.verb} {self.group or 'core'}/{self.resource}{name} in {self.scope}"


@dataclass(frozen=True)
class Call:
    """One API request, as the kubernetes client sends it."""

    group: str
    resource: str
    verb: str
    namespaced: bool


@dataclass(frozen=True)
class Mode:
    """What the chart's Deployment tells ``jobpool operator``."""

    clusterwide: bool
    namespaces: tuple[str, ...]
    peering: str | None  # the peering object's name; None when standalone

    @property
    def scopes(self) -> tuple[str, ...]:
        return (EVERYWHERE,) if self.clusterwide else self.namespaces


# -- recording the kubernetes client's requests ------------------------------------------


class _RawResponse:
    """What urllib3 would return: the kubernetes client wraps it in a RESTResponse."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.status = 200
        self.reason = "OK"
        self.data = json.dumps(body).encode()
        self.headers: dict[str, str] = {}


class Recorder:
    """Stands in for ``RESTClientObject.request``: records, then answers per ``behaviour``.

    ``exists``: every request succeeds. ``missing``: reading or patching an object
    answers 404 (so ``Kube`` creates it). ``race``: as ``missing``, but creating answers
    409 (someone created it meanwhile), and the next patch succeeds.
    """

    def __init__(self) -> None:
        self.calls: set[Call] = set()
        self._behaviour = "exists"
        self._patched: set[str] = set()

    @property
    def behaviour(self) -> str:
        return self._behaviour

    @behaviour.setter
    def behaviour(self, behaviour: str) -> None:
        self._behaviour = behaviour
        self._patched.clear()

    def __call__(self, method: str, url: str, **_: Any) -> Any:
        call = to_call(method, url)
        self.calls.add(call)
        if self.behaviour in ("missing", "race"):
            if method == "PATCH" and url not in self._patched:
                self._patched.add(url)
                raise ApiException(status=404, reason="Not Found")
            if method == "GET":
                raise ApiException(status=404, reason="Not Found")
            if method == "POST" and self.behaviour == "race":
                raise ApiException(status=409, reason="Conflict")
        return kubernetes.client.rest.RESTResponse(_RawResponse({"kind": "Status"}))


def to_call(method: str, url: str) -> Call:
    """``PATCH /apis/apps/v1/namespaces/ns/statefulsets/x`` → (apps, statefulsets, patch)."""
    split = urlsplit(url)
    parts = split.path.strip("/").split("/")
    if parts[0] == "api":  # /api/v1/...: the core group
        group, rest = "", parts[2:]
    else:  # /apis/<group>/<version>/...
        group, rest = parts[1], parts[3:]
    namespaced = rest[:1] == ["namespaces"] and len(rest) > 2
    if namespaced:
        rest = rest[2:]
    resource, named = rest[0], len(rest) > 1
    if len(rest) > 2:
        resource += "/" + rest[2]  # a subresource
    watching = parse_qs(split.query).get("watch", [""])[0].lower() in ("true", "1")
    if method == "GET":
        verb = "get" if named else ("watch" if watching else "list")
    elif method == "DELETE":
        verb = "delete" if named else "deletecollection"
    else:
        verb = HTTP_VERBS[method]
    return Call(group, resource, verb, namespaced)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recording = Recorder()
    monkeypatch.setattr(kubernetes.client.rest.RESTClientObject, "request", recording)
    return recording


def fake_kube() -> Kube:
    configuration = kubernetes.client.Configuration()
    configuration.host = "https://kubernetes.invalid"
    return Kube(configuration)


# -- what the operator's code calls --------------------------------------------------------


def operator_sources() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(OPERATOR_DIR.glob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def kube_uses() -> dict[str, set[str]]:
    """Each ``….kube.<method>(…)`` call in the operator: method → the kinds it gets."""
    children = {m["kind"] for m in render_children("pool", "ns", representative_spec())}
    uses: dict[str, set[str]] = {}
    for path, tree in operator_sources():
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Attribute)
                and node.func.value.attr == "kube"
            ):
                continue
            method = node.func.attr
            where = f"{path.name}:{node.lineno}"
            if method == "apply":
                uses.setdefault(method, set()).update(children)
            elif method in ("read", "list"):
                kind = node.args[0] if node.args else None
                if not (isinstance(kind, ast.Constant) and isinstance(kind.value, str)):
                    pytest.fail(f"{where}: kube.{method}'s kind is not a literal; teach this test")
                uses.setdefault(method, set()).add(kind.value)
            elif method not in NOT_API_CALLS:
                pytest.fail(f"{where}: Kube.{method} is new; teach this test what it calls")
    return uses


def client_apis() -> list[type]:
    """Every API class of kubernetes.client (CoreV1Api, AppsV1Api, …)."""
    classes = (getattr(kubernetes.client, name) for name in dir(kubernetes.client))
    return [c for c in classes if inspect.isclass(c) and c.__name__.endswith("Api")]


def direct_api_methods() -> set[str]:
    """Names of kubernetes.client API methods the operator's code mentions directly."""
    apis = client_apis()
    found = set()
    for _, tree in operator_sources():
        for node in ast.walk(tree):
            name = node.attr if isinstance(node, ast.Attribute) else None
            if name and API_METHOD.match(name) and any(hasattr(cls, name) for cls in apis):
                found.add(name)
    return found


def run_direct_method(name: str, recorder: Recorder) -> None:
    """Call a kubernetes.client API method with placeholder arguments, to record it."""
    for cls in client_apis():
        if hasattr(cls, name):
            api = cls(kubernetes.client.ApiClient(fake_kube().configuration))
            method = getattr(cls, name)
            required = [
                p.name
                for p in inspect.signature(method).parameters.values()
                if p.default is inspect.Parameter.empty and p.name != "self"
            ]
            placeholders = {p: {} if p == "body" else "placeholder" for p in required}
            # Unvalidated (the client checks bodies with pydantic): only the URL matters.
            unvalidated = getattr(method, "raw_function", method)
            unvalidated(api, **placeholders, _preload_content=False)
            return
    raise AssertionError(f"no kubernetes.client API has {name}")


def representative_spec() -> Any:
    return parse_spec({"image": "x", "app": "a.b:c", "database": {"secretRef": {"name": "db"}}})


@pytest.fixture
def operator_calls(recorder: Recorder) -> set[Call]:
    """Every request the operator's own code can send (kopf's are below)."""
    kube = fake_kube()
    children = {m["kind"]: m for m in render_children("pool", "ns", representative_spec())}

    async def exercise() -> None:
        for method, kinds in kube_uses().items():
            for kind, behaviour in itertools.product(sorted(kinds), ("exists", "missing", "race")):
                recorder.behaviour = behaviour
                if method == "apply":
                    await kube.apply(children[kind])
                elif method == "list" and behaviour == "exists":  # a list never 404s
                    await kube.list(kind, "ns", selector="a=b")
                elif method == "list":
                    continue
                else:
                    await kube.read(kind, "pool", "ns")

    try:
        # In a thread of its own: asyncio.run must not touch this thread's event loop,
        # which pytest-asyncio owns.
        with ThreadPoolExecutor(1) as thread:
            thread.submit(asyncio.run, exercise()).result()
        for name in direct_api_methods():
            recorder.behaviour = "exists"
            run_direct_method(name, recorder)
    finally:
        kube.close()
    return set(recorder.calls)


def uses_in_code(dotted: str) -> bool:
    """Whether the operator's code mentions ``a.b`` (e.g. ``kopf.adopt``)."""
    owner, attr = dotted.split(".")
    for _, tree in operator_sources():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == attr
                and isinstance(node.value, ast.Name)
                and node.value.id == owner
            ):
                return True
    return False


# -- what kopf calls -----------------------------------------------------------------------


def kopf_permissions(mode: Mode, *, discovery: bool) -> set[Permission]:
    registry = build_registry(OperatorConfig(dsn="postgresql://rbac-test@localhost/unused"))
    settings = operator_settings(instance="rbac-test")
    assert not registry._webhooks.get_all_handlers(), "webhooks need admissionregistration"
    stateful = [*registry._changing.get_all_handlers(), *registry._spawning.get_all_handlers()]
    stateless = [*registry._watching.get_all_handlers(), *registry._indexing.get_all_handlers()]
    served = {(h.selector.group, h.selector.any_name) for h in stateful + stateless}
    patched = {(h.selector.group, h.selector.any_name) for h in stateful}
    has_status = "status" in render_crd()["spec"]["versions"][0]["subresources"]
    permissions: set[Permission] = set()
    for scope in mode.scopes:
        for group, plural in served:
            permissions |= {Permission(scope, group, plural, v) for v in ("list", "watch")}
            if (group, plural) in patched:
                permissions.add(Permission(scope, group, plural, "patch"))
            if has_status and uses_in_code("patch.status"):
                permissions.add(Permission(scope, group, f"{plural}/status", "patch"))
            if uses_in_code("kopf.adopt"):
                permissions.add(Permission(scope, group, f"{plural}/finalizers", "update"))
        if settings.posting.enabled or uses_in_code("kopf.event"):
            permissions.add(Permission(scope, "", "events", "create"))
        if mode.peering is not None:
            peering = (
                references.CLUSTER_PEERINGS_K
                if mode.clusterwide
                else references.NAMESPACED_PEERINGS_K
            )
            group, plural = peering.group, peering.any_name
            permissions |= {Permission(scope, group, plural, v) for v in ("list", "watch")}
            permissions.add(Permission(scope, group, plural, "patch", mode.peering))
    if discovery and not settings.scanning.disabled:
        crds = references.CRDS
        permissions |= {
            Permission(EVERYWHERE, crds.group, crds.any_name, v) for v in ("list", "watch")
        }
        if not mode.clusterwide:
            names = references.NAMESPACES
            permissions |= {
                Permission(EVERYWHERE, names.group, names.any_name, v) for v in ("list", "watch")
            }
    return permissions


def operator_permissions(mode: Mode, calls: set[Call]) -> set[Permission]:
    permissions = set()
    for call in calls:
        scopes = mode.scopes if call.namespaced else (EVERYWHERE,)
        permissions |= {Permission(s, call.group, call.resource, call.verb) for s in scopes}
    return permissions


def operator_mode(manifests: list[Manifest]) -> Mode:
    """Parse the Deployment's arguments with the ``jobpool operator`` CLI itself."""
    deployment = only(manifests, "Deployment")
    (main,) = deployment["spec"]["template"]["spec"]["containers"]
    args = main["args"]
    assert args[0] == "operator"
    command = typer.main.get_command(app).commands["operator"]  # type: ignore[attr-defined]
    params = command.make_context("operator", list(args[1:])).params
    return Mode(
        clusterwide=params["all_namespaces"],
        namespaces=tuple(params["namespace"] or ()),
        peering=None if params["standalone"] else params["peering"],
    )


# -- what the chart grants ------------------------------------------------------------------


def granted(manifests: list[Manifest]) -> set[Permission]:
    """The permissions the chart's bindings give the operator's ServiceAccount."""
    deployment = only(manifests, "Deployment")
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    subject = {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    roles = {
        (m["kind"], m["metadata"].get("namespace", ""), m["metadata"]["name"]): m
        for m in manifests
        if m["kind"] in ("Role", "ClusterRole")
    }
    permissions: set[Permission] = set()
    for binding in find(manifests, "RoleBinding") + find(manifests, "ClusterRoleBinding"):
        assert binding["subjects"] == [subject], binding["metadata"]["name"]
        namespace = binding["metadata"].get("namespace", "")
        ref = binding["roleRef"]
        role = roles[(ref["kind"], namespace if ref["kind"] == "Role" else "", ref["name"])]
        scope = namespace if binding["kind"] == "RoleBinding" else EVERYWHERE
        for rule in role["rules"]:
            assert "nonResourceURLs" not in rule
            for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(key, []), f"a wildcard in {role['metadata']['name']}"
            for group, resource, verb, name in itertools.product(
                rule["apiGroups"], rule["resources"], rule["verbs"], rule.get("resourceNames", [""])
            ):
                permissions.add(Permission(scope, group, resource, verb, name))
    return permissions


RBAC_CASES = [case for case in CASES if values_of(case).get("rbac", {}).get("create", True)]


@pytest.mark.parametrize("case", RBAC_CASES)
def test_rbac_is_exactly_what_the_operator_calls(
    chart: Chart, case: str, operator_calls: set[Call]
) -> None:
    values = values_of(case)
    manifests = chart.template(values)
    mode = operator_mode(manifests)
    discovery = values.get("rbac", {}).get("clusterDiscovery", True)
    expected = operator_permissions(mode, operator_calls) | kopf_permissions(
        mode, discovery=discovery
    )
    actual = granted(manifests)
    missing = sorted(map(str, expected - actual))
    extra = sorted(map(str, actual - expected))
    assert not missing, "the operator calls, the chart does not allow:\n" + "\n".join(missing)
    assert not extra, "the chart allows, the operator never calls:\n" + "\n".join(extra)


def test_a_namespaced_install_without_discovery_has_no_cluster_permission(chart: Chart) -> None:
    manifests = chart.template(values_of("namespaced-no-discovery"))
    assert find(manifests, "ClusterRole") == []
    assert find(manifests, "ClusterRoleBinding") == []


def test_without_rbac_the_chart_creates_none(chart: Chart) -> None:
    manifests = chart.template(values_of("no-rbac"))
    for kind in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "ServiceAccount"):
        assert find(manifests, kind) == []
    deployment = only(manifests, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "ops"


def test_only_the_operator_pod_mounts_a_token(chart: Chart) -> None:
    for manifest in chart.template(values_of("everything")):
        if manifest["kind"] in ("Job", "Pod"):
            pod = (
                manifest["spec"]["template"]["spec"]
                if manifest["kind"] == "Job"
                else manifest["spec"]
            )
            assert pod["automountServiceAccountToken"] is False, manifest["metadata"]["name"]


def test_the_operator_calls_found_in_its_code(operator_calls: set[Call]) -> None:
    """What the derivation finds today (a change here is a change of the RBAC)."""
    assert operator_calls == {
        Call("apps", "statefulsets", "patch", True),
        Call("apps", "statefulsets", "create", True),
        Call("apps", "statefulsets", "get", True),
        Call("", "services", "patch", True),
        Call("", "services", "create", True),
        Call("", "configmaps", "patch", True),
        Call("", "configmaps", "create", True),
        Call("policy", "poddisruptionbudgets", "patch", True),
        Call("policy", "poddisruptionbudgets", "create", True),
        Call("", "pods", "list", True),
    }


@pytest.mark.parametrize(
    ("method", "call"),
    [
        ("create_namespaced_stateful_set", Call("apps", "statefulsets", "create", True)),
        ("read_namespaced_stateful_set_status", Call("apps", "statefulsets/status", "get", True)),
        ("patch_namespaced_config_map", Call("", "configmaps", "patch", True)),
        ("list_namespace", Call("", "namespaces", "list", False)),
        ("replace_namespaced_lease", Call("coordination.k8s.io", "leases", "update", True)),
        ("delete_namespaced_pod", Call("", "pods", "delete", True)),
    ],
)
def test_a_direct_client_call_maps_to_its_permission(
    recorder: Recorder, method: str, call: Call
) -> None:
    """The scanner's path for direct ``kubernetes.client`` calls (none today) works."""
    run_direct_method(method, recorder)
    assert recorder.calls == {call}
