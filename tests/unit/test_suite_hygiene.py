"""A test run cleans up after itself: the empty directory that stands for "no
``jobpool dev`` here" (see tests/conftest.py) is removed when the run ends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_test_run_leaves_no_temporary_directory_behind(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit/test_ids.py"],
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(scratch)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert list(scratch.iterdir()) == []


def test_test_modules_have_unique_names() -> None:
    """Test folders are not packages (their helpers are imported by module name), so two
    test files with one basename stop the whole run at collection."""
    names = [path.name for path in (REPO / "tests").rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
