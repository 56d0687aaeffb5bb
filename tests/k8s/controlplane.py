"""A real Kubernetes control plane on 127.0.0.1, started once per test session.

The envtest convention: the binaries come from ``$KUBEBUILDER_ASSETS``, else
``/usr/local/kubebuilder/bin`` (where controller-runtime's ``setup-envtest`` and CI's
install step put them). :func:`missing_binaries` says
which are absent, and the tier skips with that reason.

:class:`ControlPlane` starts etcd (a fresh data directory), kube-apiserver,
kube-controller-manager (StatefulSets, garbage collection, service-account tokens) and
kube-scheduler, each on free ports of 127.0.0.1, with certificates and static tokens of
its own: a CA made with ``openssl``, a serving certificate for 127.0.0.1, a
service-account signing key, and tokens for an admin (``system:masters``), the
controller manager and the scheduler. RBAC is the only authorizer and the
``OwnerReferencesPermissionEnforcement`` admission plugin is on, as on clusters that
check ``<resource>/finalizers`` for ``blockOwnerDeletion``.

Every process dies with the test process (``PR_SET_PDEATHSIG``) and logs to a file in
the work directory, which :meth:`ControlPlane.logs` returns for a failure report.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ASSETS_ENV = "KUBEBUILDER_ASSETS"
DEFAULT_ASSETS = Path("/usr/local/kubebuilder/bin")
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
HOST = "127.0.0.1"
SERVICE_CIDR = "10.0.0.0/24"
ISSUER = "https://kubernetes.default.svc.cluster.local"
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
POLL_S = 0.25
PR_SET_PDEATHSIG = 1

TOKENS = {
    "admin": ("admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", ""),
    "scheduler": ("system:kube-scheduler", ""),
}
"""Static tokens: name → (user, groups)."""


def assets_dir() -> Path:
    return Path(os.environ.get(ASSETS_ENV) or DEFAULT_ASSETS)


def missing_binaries() -> str | None:
    """Why the tier cannot run here, or ``None`` when every binary is present."""
    missing = [name for name in BINARIES if not os.access(assets_dir() / name, os.X_OK)]
    if not missing:
        return None
    return (
        f"no real Kubernetes control plane: {', '.join(missing)} missing in {assets_dir()} "
        f"(set ${ASSETS_ENV}, e.g. with controller-runtime's setup-envtest)"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGKILL when the thread that started it ends."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(directory: Path) -> None:
    """ca.crt/key, a serving certificate for 127.0.0.1 (server.crt/key), sa.key/pub."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=jobpool-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        cwd=directory,
    )
    (directory / "san.ext").write_text(f"subjectAltName=IP:{HOST},DNS:localhost\n")
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=kube-apiserver",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        cwd=directory,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
        cwd=directory,
    )
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=directory)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)


def write_kubeconfig(path: Path, *, server: str, ca: Path, token: str, namespace: str = "") -> Path:
    """A kubeconfig with one cluster, one token user and one current context."""
    context: dict[str, str] = {"cluster": "test", "user": "test"}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "test", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": "test", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": context}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class ControlPlane:
    """etcd, kube-apiserver, kube-controller-manager and kube-scheduler on 127.0.0.1."""

    workdir: Path
    api_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def server(self) -> str:
        return f"https://{HOST}:{self.api_port}"

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def ca(self) -> Path:
        return self.pki / "ca.crt"

    def token(self, name: str) -> str:
        return f"{name}-{self.api_port}-token"

    def kubeconfig(self, name: str = "admin") -> Path:
        """The kubeconfig of one static-token identity (``admin`` by default)."""
        path = self.workdir / f"{name}.kubeconfig"
        if not path.exists():
            write_kubeconfig(path, server=self.server, ca=self.ca, token=self.token(name))
        return path

    def start(self) -> None:
        make_pki(self.pki)
        tokens = self.workdir / "tokens.csv"
        tokens.write_text(
            "".join(
                f'{self.token(name)},{user},{user},"{groups}"\n'
                for name, (user, groups) in TOKENS.items()
            )
        )
        etcd_port = free_port()
        self._spawn(
            "etcd",
            "--data-dir",
            str(self.workdir / "etcd"),
            "--listen-client-urls",
            f"http://{HOST}:{etcd_port}",
            "--advertise-client-urls",
            f"http://{HOST}:{etcd_port}",
            "--listen-peer-urls",
            f"http://{HOST}:{free_port()}",
        )
        self._spawn("kube-apiserver", *self._apiserver_args(etcd_port, tokens))
        self.wait_ready()
        self._spawn(
            "kube-controller-manager",
            "--kubeconfig",
            str(self.kubeconfig("controller-manager")),
            "--use-service-account-credentials",
            "--service-account-private-key-file",
            str(self.pki / "sa.key"),
            "--root-ca-file",
            str(self.ca),
            "--leader-elect=false",
            "--bind-address",
            HOST,
            "--secure-port",
            "0",
            "--controllers",
            "*",
            "--concurrent-statefulset-syncs",
            "5",
        )
        self._spawn(
            "kube-scheduler",
            "--kubeconfig",
            str(self.kubeconfig("scheduler")),
            "--leader-elect=false",
            "--bind-address",
            HOST,
            "--secure-port",
            "0",
        )

    def _apiserver_args(self, etcd_port: int, tokens: Path) -> list[str]:
        return [
            "--etcd-servers",
            f"http://{HOST}:{etcd_port}",
            "--bind-address",
            HOST,
            "--advertise-address",
            HOST,
            "--secure-port",
            str(self.api_port),
            "--cert-dir",
            str(self.workdir / "certs"),
            "--tls-cert-file",
            str(self.pki / "server.crt"),
            "--tls-private-key-file",
            str(self.pki / "server.key"),
            "--client-ca-file",
            str(self.ca),
            "--token-auth-file",
            str(tokens),
            "--service-account-issuer",
            ISSUER,
            "--service-account-key-file",
            str(self.pki / "sa.pub"),
            "--service-account-signing-key-file",
            str(self.pki / "sa.key"),
            "--service-cluster-ip-range",
            SERVICE_CIDR,
            "--authorization-mode",
            "RBAC",
            "--endpoint-reconciler-type",
            "none",
            "--enable-admission-plugins",
            "OwnerReferencesPermissionEnforcement",
        ]

    def _spawn(self, binary: str, *args: str) -> None:
        log = (self.workdir / f"{binary}.log").open("wb")
        self.processes[binary] = subprocess.Popen(
            [str(assets_dir() / binary), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        log.close()

    def wait_ready(self) -> None:
        """Until ``/readyz`` answers 200; a process that exits meanwhile fails at once."""
        context = ssl.create_default_context(cafile=str(self.ca))
        request = urllib.request.Request(
            f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.token('admin')}"}
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            self.check_alive()
            try:
                with urllib.request.urlopen(request, context=context, timeout=5) as answer:
                    if answer.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"kube-apiserver not ready after {READY_TIMEOUT_S:.0f} s")
            time.sleep(POLL_S)

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited ({process.returncode}):\n{self.logs(name)}")

    def logs(self, name: str, *, tail_chars: int = 4000) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-tail_chars:] if path.exists() else ""

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
