"""The kind run's files, checked where no cluster is: the script parses, its manifests
are valid Kubernetes 1.34 objects (the JobPool a valid JobPool), and they name the image
the script builds."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from jobpool.operator.spec import check_name, parse_spec

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "e2e-kind.sh"
MANIFESTS = ROOT / "scripts" / "e2e"


def script_image() -> str:
    match = re.search(r"^IMAGE=(\S+)", SCRIPT.read_text(), flags=re.M)
    assert match is not None
    return match.group(1)


def test_the_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    assert SCRIPT.stat().st_mode & 0o111, "scripts/e2e-kind.sh must be executable"


@pytest.mark.parametrize("name", ["postgres.yaml", "submit-job.yaml"])
def test_the_manifests_are_valid(name: str) -> None:
    for manifest in yaml.safe_load_all((MANIFESTS / name).read_text()):
        kubernetes_validate.validate(manifest, "1.34", strict=True)


def test_the_jobpool_is_valid_and_runs_the_built_image() -> None:
    jobpool = yaml.safe_load((MANIFESTS / "jobpool.yaml").read_text())
    check_name(jobpool["metadata"]["name"])
    spec = parse_spec(jobpool["spec"])
    assert spec.image == script_image()
    assert spec.image_pull_policy == "Never"  # loaded into kind, never pulled
    assert spec.app == "examples.handlers:registry"  # shipped in the image's /app


def test_the_submit_job_runs_the_built_image() -> None:
    job = yaml.safe_load((MANIFESTS / "submit-job.yaml").read_text())
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == script_image()
    assert container["command"][:2] == ["python", "examples/submit.py"]
    pool = container["command"][container["command"].index("--pool") + 1]
    assert pool == yaml.safe_load((MANIFESTS / "jobpool.yaml").read_text())["metadata"]["name"]
