"""The container image's recipe (no Docker here: the kind end-to-end test builds it):
a pinned slim base, a non-root user, `jobpool` as the entrypoint, only what it needs."""

from __future__ import annotations

import re
import tomllib

import yaml
from chart_kit import CHART_DIR

from jobpool.operator.render import NON_ROOT_UID

ROOT = CHART_DIR.parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_base_is_a_pinned_slim_python() -> None:
    (default,) = [rest for word, rest in instructions() if word == "ARG" and "PYTHON_IMAGE" in rest]
    image = default.split("=", 1)[1]
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", image), image
    assert [rest for word, rest in instructions() if word == "FROM"] == [
        "${PYTHON_IMAGE} AS build",
        "${PYTHON_IMAGE}",
    ]


def test_it_runs_as_the_non_root_user_of_the_pods() -> None:
    users = [rest for word, rest in instructions() if word == "USER"]
    assert users == [f"{NON_ROOT_UID}:{NON_ROOT_UID}"]
    assert f"--uid {NON_ROOT_UID}" in DOCKERFILE


def test_the_entrypoint_is_jobpool() -> None:
    assert ("ENTRYPOINT", '["jobpool"]') in instructions()
    assert ("WORKDIR", "/app") in instructions()
    assert ("COPY", "examples ./examples") in instructions()  # examples.handlers:registry


def test_the_build_context_is_only_what_the_image_needs() -> None:
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") :][:5] == [
        "*",
        "!pyproject.toml",
        "!README.md",
        "!jobpool/",
        "!examples/",
    ]


def test_the_chart_deploys_this_projects_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["appVersion"] == project["version"]
