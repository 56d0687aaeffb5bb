"""The JobPool CRD: generated from the models, valid for Kubernetes, structural, and in
agreement with ``parse_spec`` on valid and invalid JobPools.

No cluster: the API server's part is played by ``api_server_errors()``, which applies
the schema's defaults, validates with a JSON-schema validator (OpenAPI v3.0 schemas are
draft 4) with unknown fields refused as kubectl's strict field validation does, and then
evaluates the CEL rules through Python mirrors (a test demands a mirror for each rule).
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from jobpool.errors import InvalidInput
from jobpool.operator.crd import NAME_RULE, crd_yaml, render_crd
from jobpool.operator.spec import (
    AUTOSCALING_RULE,
    ENV_RULE,
    NAME_PATTERN,
    OPERATOR_ENV_NAMES,
    SHARDS_RULE,
    InvalidSpec,
    JobPoolStatus,
    check_name,
    check_transition,
    parse_spec,
)

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "jobpool.dev_jobpools.yaml"
EXAMPLES = ROOT / "examples"
LATEST = ".".join(kubernetes_validate.utils.latest_version().split(".")[:2])
KUBERNETES_VERSIONS = sorted({"1.34", LATEST})

Rule = Callable[[Any, Any], bool]
CEL_MIRRORS: dict[str, Rule] = {
    NAME_RULE: lambda new, _: re.search(NAME_PATTERN, new["metadata"]["name"]) is not None,
    SHARDS_RULE: lambda new, old: new["shards"] == old["shards"],
    AUTOSCALING_RULE: lambda new, _: (
        "autoscaling" not in new
        or new["autoscaling"]["minReplicas"] <= new["autoscaling"]["maxReplicas"]
    ),
    ENV_RULE: lambda new, _: new["name"] not in OPERATOR_ENV_NAMES,
}


def openapi() -> dict[str, Any]:
    return render_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields refused wherever it does not preserve them."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: strict(sub) for name, sub in out["properties"].items()}
        if not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = strict(out[key])
    return out


def defaulted(schema: dict[str, Any], value: Any) -> Any:
    """The API server's defaulting: missing fields with a default get it, top-down."""
    if isinstance(value, dict):
        value = dict(value)
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = defaulted(sub, value[name])
    elif isinstance(value, list) and "items" in schema:
        value = [defaulted(schema["items"], item) for item in value]
    return value


def dotted(parts: Iterator[Any] | list[Any]) -> str:
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path.lstrip(".")


def cel_errors(schema: dict[str, Any], new: Any, old: Any, path: str) -> list[str]:
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"] and old is None:
            continue  # a transition rule: checked on updates only
        if not CEL_MIRRORS[rule["rule"]](new, old):
            where = (path + rule.get("fieldPath", "")).lstrip(".")
            errors.append(f"{where}: {rule['message']}" if where else rule["message"])
    for name, sub in schema.get("properties", {}).items():
        if isinstance(new, dict) and name in new:
            old_value = old.get(name) if isinstance(old, dict) else None
            errors += cel_errors(sub, new[name], old_value, f"{path}.{name}")
    if "items" in schema and isinstance(new, list):
        for index, item in enumerate(new):
            errors += cel_errors(schema["items"], item, None, f"{path}[{index}]")
    return errors


def api_server_errors(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """What the API server answers to creating ``obj`` (or updating ``old`` to it)."""
    schema = openapi()
    obj = defaulted(schema, obj)
    validator = jsonschema.Draft4Validator(strict(schema))
    errors = [f"{dotted(e.absolute_path)}: {e.message}" for e in validator.iter_errors(obj)]
    if errors:
        return errors  # CEL rules run only on objects that pass the schema
    return cel_errors(schema, obj, None if old is None else defaulted(schema, old), "")


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text())


def minimal() -> dict[str, Any]:
    return load("jobpool.yaml")


def with_spec(**changes: Any) -> dict[str, Any]:
    obj = minimal()
    for key, value in changes.items():
        if value is None:
            obj["spec"].pop(key, None)
        else:
            obj["spec"][key] = value
    return obj


def names_field(message: str, path: str) -> bool:
    """``spec.a.b: ...``, or ``spec.a: ... 'b' ...`` (a missing or unknown field)."""
    parent, _, leaf = path.rpartition(".")
    return message.startswith(f"{path}:") or (
        message.startswith(f"{parent}:") and f"'{leaf}'" in message
    )


# The generated file and the Kubernetes schema of a CRD


def test_checked_in_crd_is_the_generated_one() -> None:
    hint = "regenerate: python -m jobpool.operator.crd > crds/jobpool.dev_jobpools.yaml"
    assert CRD_FILE.read_text() == crd_yaml(), hint
    assert yaml.safe_load(CRD_FILE.read_text()) == render_crd(), hint


def test_generator_entry_point_prints_the_crd() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jobpool.operator.crd"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert result.stdout == CRD_FILE.read_text()


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_crd_validates_against_kubernetes(version: str) -> None:
    kubernetes_validate.validate(render_crd(), version, strict=True)


def test_crd_names_scale_and_printer_columns() -> None:
    crd = render_crd()
    assert crd["metadata"]["name"] == "jobpools.jobpool.dev"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"], names["categories"]) == (
        "JobPool",
        "jobpools",
        ["jp"],
        ["all"],
    )
    (version,) = crd["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }
    columns = version["additionalPrinterColumns"]
    assert [c["name"] for c in columns] == ["Replicas", "Ready", "Queued", "Running", "DLQ", "Age"]
    for column in columns[:-1]:
        section, field = column["jsonPath"].strip(".").split(".")
        assert openapi()["properties"][section]["properties"][field]["type"] == column["type"]


# The schema is structural (apiextensions.k8s.io/v1 accepts nothing else)


def schema_nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from schema_nodes(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from schema_nodes(node[key], f"{path}.{key}")


STRUCTURAL_TYPES = {"object", "array", "string", "integer", "number", "boolean"}


def test_schema_is_structural() -> None:
    preserved = []
    for path, node in schema_nodes(openapi()):
        assert not {"$ref", "allOf", "oneOf", "not", "nullable"} & node.keys(), path
        if node.get("x-kubernetes-int-or-string"):
            assert node.get("anyOf") == [{"type": "integer"}, {"type": "string"}], path
            continue
        assert "anyOf" not in node, path
        assert node.get("type") in STRUCTURAL_TYPES, path
        assert not ("properties" in node and "additionalProperties" in node), path
        assert not isinstance(node.get("additionalProperties"), bool), path
        if node.get("x-kubernetes-preserve-unknown-fields"):
            preserved.append(path)
        if "default" in node:
            jsonschema.Draft4Validator(strict(node)).validate(node["default"])
    # Kubernetes' own free-form types, and a periodic job's payload (a JSON object).
    assert preserved == [".spec.resources", ".spec.env.items", ".spec.schedules.items.payload"]
    assert openapi()["properties"]["metadata"] == {"type": "object"}


def test_status_has_no_defaults_and_fits_the_status_model() -> None:
    status_schema = openapi()["properties"]["status"]
    assert all("default" not in node for _, node in schema_nodes(status_schema))
    status = JobPoolStatus.model_validate(
        {
            "replicas": 2,
            "readyReplicas": 1,
            "selector": "app.kubernetes.io/instance=emails",
            "queued": {"critical": 1, "low": 3},
            "queuedTotal": 4,
            "running": 2,
            "dlq": 1,
            "oldestQueuedSeconds": 3.5,
            "throughputPerMinute": 120.0,
            "ordinals": [
                {"ordinal": 0, "shards": 32, "lastHeartbeat": "2026-01-02T03:04:05Z", "running": 2}
            ],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "AllReplicasReady",
                    "lastTransitionTime": "2026-01-02T03:04:05Z",
                    "observedGeneration": 3,
                }
            ],
            "observedGeneration": 3,
            "ringVersion": 7,
        }
    )
    patch = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    jsonschema.Draft4Validator(strict(status_schema)).validate(patch)


def test_schema_defaults_are_the_model_defaults() -> None:
    obj = minimal()
    expected = parse_spec(obj["spec"]).model_dump(by_alias=True, exclude_none=True, mode="json")
    assert expected.pop("env") == []
    assert expected.pop("schedules") == []
    assert expected.pop("pausedTypes") == []
    assert defaulted(openapi(), obj)["spec"] == expected


def test_every_cel_rule_has_a_mirror() -> None:
    rules = {
        rule["rule"]
        for _, node in schema_nodes(openapi())
        for rule in node.get("x-kubernetes-validations", [])
    }
    assert rules == set(CEL_MIRRORS)


# Valid and invalid JobPools: the schema and parse_spec agree

VALID = {
    "minimal": minimal(),
    "full": load("jobpool-full.yaml"),
    "no replicas": with_spec(replicas=0),
    "one shard": with_spec(shards=1),
    "most shards": with_spec(shards=4096),
    "fractional backoff": with_spec(retry={"backoffBaseSeconds": 0.25}),
    "integer quantity": with_spec(resources={"limits": {"cpu": 2}, "claims": [{"name": "gpu"}]}),
    "user log level": with_spec(env=[{"name": "JOBPOOL_LOG_LEVEL", "value": "debug"}]),
    "min equals max": with_spec(autoscaling={"minReplicas": 3, "maxReplicas": 3}),
    "scale to zero": with_spec(autoscaling={"minReplicas": 0, "maxReplicas": 1}),
}

INVALID = {
    "negative replicas": (with_spec(replicas=-1), "spec.replicas"),
    "string replicas": (with_spec(replicas="3"), "spec.replicas"),
    "zero shards": (with_spec(shards=0), "spec.shards"),
    "5000 shards": (with_spec(shards=5000), "spec.shards"),
    "unknown priority": (with_spec(priorityWeights={"urgent": 5}), "spec.priorityWeights.urgent"),
    "zero weight": (with_spec(priorityWeights={"low": 0}), "spec.priorityWeights.low"),
    "app without registry": (with_spec(app="myapp.jobs"), "spec.app"),
    "app as a path": (with_spec(app="myapp/jobs.py:registry"), "spec.app"),
    "missing image": (with_spec(image=None), "spec.image"),
    "empty image": (with_spec(image=""), "spec.image"),
    "missing database": (with_spec(database=None), "spec.database"),
    "missing secret name": (with_spec(database={"secretRef": {}}), "spec.database.secretRef.name"),
    "min above max": (
        with_spec(autoscaling={"minReplicas": 5, "maxReplicas": 2}),
        "spec.autoscaling.maxReplicas",
    ),
    "zero max replicas": (
        with_spec(autoscaling={"maxReplicas": 0}),
        "spec.autoscaling.maxReplicas",
    ),
    "fractional concurrency": (with_spec(concurrency=2.5), "spec.concurrency"),
    "zero backoff": (with_spec(retry={"backoffBaseSeconds": 0}), "spec.retry.backoffBaseSeconds"),
    "port out of range": (with_spec(metricsPort=70000), "spec.metricsPort"),
    "unknown pull policy": (with_spec(imagePullPolicy="Sometimes"), "spec.imagePullPolicy"),
    "negative drain": (with_spec(drainTimeoutSeconds=-1), "spec.drainTimeoutSeconds"),
    "operator env": (with_spec(env=[{"name": "POD_NAME", "value": "x-0"}]), "spec.env[0].name"),
    "env without name": (with_spec(env=[{"value": "x"}]), "spec.env[0].name"),
    "unknown field": (with_spec(replica=3), "spec.replica"),
}


@pytest.mark.parametrize("obj", VALID.values(), ids=VALID.keys())
def test_valid_jobpools_pass_schema_and_parse_spec(obj: dict[str, Any]) -> None:
    assert api_server_errors(obj) == []
    parse_spec(obj["spec"])


@pytest.mark.parametrize(("obj", "path"), INVALID.values(), ids=INVALID.keys())
def test_invalid_jobpools_fail_schema_and_parse_spec(obj: dict[str, Any], path: str) -> None:
    errors = api_server_errors(obj)
    assert any(names_field(error, path) for error in errors), errors
    with pytest.raises(InvalidSpec) as caught:
        parse_spec(obj["spec"])
    assert any(p == path for p, _ in caught.value.problems), caught.value.problems
    assert f"{path}: " in str(caught.value)


def test_min_above_max_message() -> None:
    with pytest.raises(InvalidSpec, match=r"spec\.autoscaling\.maxReplicas: must be at least"):
        parse_spec(with_spec(autoscaling={"minReplicas": 5, "maxReplicas": 2})["spec"])


def test_invalid_spec_is_a_typed_input_error() -> None:
    assert issubclass(InvalidSpec, InvalidInput)
    with pytest.raises(InvalidSpec, match=r"^spec: must be an object$"):
        parse_spec("replicas: 3")  # type: ignore[arg-type]
    with pytest.raises(InvalidSpec) as caught:
        parse_spec(None)
    assert {p for p, _ in caught.value.problems} == {"spec.image", "spec.app", "spec.database"}


class MappingView(Mapping[str, Any]):
    """Like kopf's ``body.spec``: a read-only mapping, not a dict."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def test_parse_spec_takes_a_mapping_view() -> None:
    spec = parse_spec(MappingView(load("jobpool-full.yaml")["spec"]))
    assert spec.shards == 128
    assert spec.autoscaling is not None
    assert spec.autoscaling.max_replicas == 10


# metadata.name and updates


@pytest.mark.parametrize("name", ["Emails", "emails.eu", "-emails", "e" * 51])
def test_bad_pool_names_are_refused(name: str) -> None:
    obj = minimal()
    obj["metadata"]["name"] = name
    assert any(error.startswith("metadata.name must be") for error in api_server_errors(obj))
    with pytest.raises(InvalidSpec, match=r"^metadata\.name: "):
        check_name(name)


@pytest.mark.parametrize("name", ["emails", "e" * 50, "a", "reports-2"])
def test_good_pool_names_are_accepted(name: str) -> None:
    obj = minimal()
    obj["metadata"]["name"] = name
    assert api_server_errors(obj) == []
    assert check_name(name) == name


def test_shards_are_immutable() -> None:
    old = minimal()
    assert api_server_errors(with_spec(shards=128), old=old) == [
        "spec.shards: is immutable: a pool's shard count is fixed at creation"
    ]
    assert api_server_errors(with_spec(replicas=7), old=old) == []
    assert api_server_errors(with_spec(shards=64), old=old) == []  # the default, spelled out
    with pytest.raises(InvalidSpec, match=r"^spec\.shards: is immutable"):
        check_transition(parse_spec(old["spec"]), parse_spec(with_spec(shards=128)["spec"]))
    check_transition(parse_spec(old["spec"]), parse_spec(with_spec(replicas=7)["spec"]))


@pytest.mark.parametrize("name", ["jobpool.yaml", "jobpool-full.yaml"])
def test_examples_are_valid_jobpools(name: str) -> None:
    obj = load(name)
    assert (obj["apiVersion"], obj["kind"]) == ("jobpool.dev/v1alpha1", "JobPool")
    assert api_server_errors(obj) == []
    check_name(obj["metadata"]["name"])
    parse_spec(obj["spec"])


def test_full_example_sets_every_field() -> None:
    spec_fields = set(openapi()["properties"]["spec"]["properties"])
    assert set(load("jobpool-full.yaml")["spec"]) == spec_fields
