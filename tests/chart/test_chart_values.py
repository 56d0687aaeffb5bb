"""The chart's values: bad values fail `helm lint` and `helm template` (so `install` and
`upgrade`) with a message naming the value; every value is documented in values.yaml,
known to values.schema.json and listed in the README's values table.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from chart_kit import CHART_DIR, Chart

from jobpool.operator.render import NON_ROOT_UID

README = CHART_DIR.parents[1] / "README.md"
VALUES_FILE = CHART_DIR / "values.yaml"
SCHEMA_FILE = CHART_DIR / "values.schema.json"
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z][\w.-]*):")

# (values, what the error must name). Each also fails `helm lint`.
INVALID: dict[str, tuple[dict[str, Any], str]] = {
    "negative replicas": ({"operator": {"replicas": -1}}, "'/operator/replicas'"),
    "replicas as text": ({"operator": {"replicas": "two"}}, "'/operator/replicas'"),
    "unknown scope": ({"operator": {"scope": "everywhere"}}, "'/operator/scope'"),
    "bad namespace": (
        {"operator": {"scope": "namespaced", "namespaces": ["Team_A"]}},
        "'/operator/namespaces/0'",
    ),
    "log level": ({"operator": {"logLevel": "loud"}}, "'/operator/logLevel'"),
    "privileged port": ({"operator": {"healthPort": 80}}, "'/operator/healthPort'"),
    "status interval": ({"operator": {"statusIntervalSeconds": 0}}, "statusIntervalSeconds"),
    "pull policy": ({"image": {"pullPolicy": "Sometimes"}}, "'/image/pullPolicy'"),
    "short digest": ({"image": {"digest": "sha256:abc"}}, "'/image/digest'"),
    "empty repository": ({"image": {"repository": ""}}, "'/image/repository'"),
    "secret name": ({"database": {"secretName": "Bad Name"}}, "'/database/secretName'"),
    "scrape interval": ({"serviceMonitor": {"interval": "often"}}, "'/serviceMonitor/interval'"),
    "backoff limit": ({"migration": {"backoffLimit": -1}}, "'/migration/backoffLimit'"),
    "unknown key": ({"replicaCount": 2}, "additional properties 'replicaCount' not allowed"),
    "misspelt key": ({"operator": {"replica": 2}}, "additional properties 'replica' not allowed"),
    "operator env": (
        {"operator": {"extraEnv": [{"name": "JOBPOOL_DSN", "value": "x"}]}},
        "'/operator/extraEnv/0/name'",
    ),
    # Rules between two values (the schema's allOf).
    "replicas without peering": (
        {"operator": {"replicas": 2, "peering": {"enabled": False}}},
        "'/operator/replicas': maximum: got 2, want 1",
    ),
    "namespaces with scope cluster": (
        {"operator": {"namespaces": ["team-a"]}},
        "'/operator/namespaces': maxItems",
    ),
    "createSecret without dsn": ({"database": {"createSecret": True}}, "'/database/dsn'"),
    "dsn without createSecret": (
        {"database": {"dsn": "postgresql://u:pw@db/x"}},
        "'/database/dsn': maxLength",
    ),
    "the salt's key as the DSN's": (
        {"database": {"secretKey": "checksum-salt"}},
        "'/database/secretKey'",
    ),
    "migration secret without the migration Job": (
        {"database": {"migrationSecretName": "jobpool-owner"}},
        "'/database/migrationSecretName': maxLength",
    ),
    "migration key without the migration Job": (
        {"database": {"migrationSecretKey": "owner-dsn"}},
        "'/database/migrationSecretKey': maxLength",
    ),
    "bad migration secret name": (
        {"migration": {"enabled": True}, "database": {"migrationSecretName": "Owner DB"}},
        "'/database/migrationSecretName'",
    ),
    "existing service account without name": (
        {"serviceAccount": {"create": False}},
        "'/serviceAccount/name'",
    ),
}


@pytest.mark.parametrize("case", INVALID)
def test_a_bad_value_fails_naming_it(chart: Chart, case: str) -> None:
    values, named = INVALID[case]
    rendered = chart.template_run(values)
    assert rendered.returncode != 0, f"helm template accepted {values}"
    assert named in rendered.stderr, rendered.stderr
    linted = chart.lint(values)
    assert linted.returncode != 0, f"helm lint accepted {values}"
    assert named in linted.stdout + linted.stderr, linted.stdout


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"database": {"secretKey": "checksum-salt"}}, 'database.secretKey is "checksum-salt"'),
        (
            {"database": {"migrationSecretKey": "owner-dsn"}},
            "database.migrationSecretName or database.migrationSecretKey is set, but "
            "migration.enabled is false",
        ),
    ],
)
def test_templates_repeat_the_database_rules_without_the_schema(
    chart: Chart, values: dict[str, Any], message: str
) -> None:
    rendered = chart.template_run(values, extra=("--skip-schema-validation",))
    assert rendered.returncode != 0
    assert message in rendered.stderr, rendered.stderr


def test_a_dsn_of_another_database_fails_without_showing_it(chart: Chart) -> None:
    values = {"database": {"createSecret": True, "dsn": "mysql://app:pa55word@db/x"}}
    rendered = chart.template_run(values)
    assert rendered.returncode != 0
    assert "database.dsn must start with postgresql://" in rendered.stderr
    assert "pa55word" not in rendered.stdout + rendered.stderr
    # `helm lint` runs templates in lint mode, where `fail` is only an [INFO] line.
    linted = chart.lint(values)
    assert "pa55word" not in linted.stdout + linted.stderr


def test_schema_errors_never_echo_a_dsn(chart: Chart) -> None:
    values = {"database": {"dsn": "postgresql://u:pa55word@db/x"}}  # without createSecret
    for done in (chart.template_run(values), chart.lint(values)):
        assert done.returncode != 0
        assert "pa55word" not in done.stdout + done.stderr


# -- documentation ----------------------------------------------------------------------


def values_lines() -> list[tuple[str, bool, bool]]:
    """(dotted key path, documented by a ``# --`` comment, has a scalar or list value)."""
    lines = VALUES_FILE.read_text().splitlines()
    stack: list[tuple[int, str]] = []
    out = []
    for index, line in enumerate(lines):
        match = KEY_LINE.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        path = ".".join(key for _, key in stack)
        comments = []
        above = index - 1
        while above >= 0 and lines[above].strip().startswith("#"):
            comments.append(lines[above].strip())
            above -= 1
        documented = any(c.startswith("# --") for c in comments)
        rest = line[match.end() :].strip()
        out.append((path, documented, bool(rest)))
    return out


def documented_paths() -> set[str]:
    return {path for path, documented, _ in values_lines() if documented}


def schema_node(path: str) -> dict[str, Any] | None:
    schema = json.loads(SCHEMA_FILE.read_text())
    node: dict[str, Any] | None = schema
    for key in path.split("."):
        assert node is not None
        while "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[-1]]
        node = node.get("properties", {}).get(key)
        if node is None:
            return None
    return node


def readme_values_table() -> set[str]:
    text = README.read_text()
    start = text.index("## Install on Kubernetes with Helm")
    section = text[start : text.index("\n## ", start + 1)]
    return set(re.findall(r"^\| `([\w.]+)` \|", section, flags=re.M))


def test_every_value_is_documented_in_values_yaml() -> None:
    documented = documented_paths()
    for path, _, has_value in values_lines():
        if has_value:
            parts = path.split(".")
            ancestors = {".".join(parts[: i + 1]) for i in range(len(parts))}
            assert ancestors & documented, f"{path} has no `# --` comment in values.yaml"


def test_every_documented_value_is_in_the_schema() -> None:
    for path in documented_paths():
        assert schema_node(path) is not None, f"{path} is not in values.schema.json"


def test_the_readme_lists_every_value() -> None:
    assert readme_values_table() == documented_paths()


def test_the_defaults_run_as_the_images_user() -> None:
    values = yaml.safe_load(VALUES_FILE.read_text())
    assert values["operator"]["podSecurityContext"]["runAsUser"] == NON_ROOT_UID
    dockerfile = (CHART_DIR.parents[1] / "Dockerfile").read_text()
    assert f"USER {NON_ROOT_UID}:{NON_ROOT_UID}" in dockerfile
