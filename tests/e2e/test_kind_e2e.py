"""The kind end-to-end run (``scripts/e2e-kind.sh``) as a test, marked ``e2e``.

It needs docker with a running daemon, kind and kubectl (and downloads nothing but
helm, like the chart tests); where one is missing the test is skipped and says which.
The script builds the image, creates and deletes its own kind cluster, installs Postgres
and the chart, applies a JobPool, submits jobs, waits for them and describes the pool:
see the script's header. Deselect it with ``-m 'not e2e'``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "e2e-kind.sh"
E2E_TIMEOUT_S = 3600

pytestmark = pytest.mark.e2e


def missing_prerequisite() -> str | None:
    """Why the kind end-to-end run cannot happen here, or None when it can."""
    for tool in ("docker", "kind", "kubectl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (on PATH)"
    try:
        subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=True)
    except (subprocess.SubprocessError, OSError):
        return "the docker daemon does not answer (`docker info` failed)"
    return None


def fetch_helm() -> Path:
    """The chart tests' helm (tests/chart/helm_fetch.py), fetched into .bin/ if needed."""
    spec = importlib.util.spec_from_file_location(
        "e2e_helm_fetch", ROOT / "tests" / "chart" / "helm_fetch.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        return Path(module.ensure_helm())
    except module.HelmUnavailable as exc:
        pytest.fail(f"the kind end-to-end run needs helm: {exc}", pytrace=False)


@pytest.mark.timeout(E2E_TIMEOUT_S)
def test_kind_end_to_end(tmp_path: Path) -> None:
    reason = missing_prerequisite()
    if reason is not None:
        pytest.skip(f"kind end-to-end needs docker (running), kind and kubectl: {reason}")
    env = {**os.environ, "HELM": str(fetch_helm()), "TMPDIR": str(tmp_path)}
    log = tmp_path / "e2e-kind.log"
    with log.open("w") as output:
        done = subprocess.run(
            ["bash", str(SCRIPT)],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            timeout=E2E_TIMEOUT_S - 60,
            check=False,
        )
    text = log.read_text()
    assert done.returncode == 0, f"scripts/e2e-kind.sh failed:\n{text[-20000:]}"
    assert "e2e-kind: PASSED" in text
    assert "Name:         e2e" in text  # kubectl describe jobpool ran
