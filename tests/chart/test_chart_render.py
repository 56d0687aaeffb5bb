"""``helm lint`` and ``helm template`` of charts/jobpool, on every value combination of
``chart_kit.CASES``: lint passes, and every rendered object is valid for Kubernetes 1.34
(``kubernetes-validate``, strict: unknown fields are errors) — except the objects of
other projects' CRDs, checked against their own schemas here. Then what each template
must say: a hardened operator Deployment whose arguments the ``jobpool operator`` CLI
accepts, the migration hook, the DSN Secret, the peering object, the ServiceMonitor, the
``helm test`` hook and NOTES.txt.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import typer.main
import yaml
from chart_kit import (
    CASES,
    CHART_DIR,
    DSN,
    NAMESPACE,
    RELEASE,
    Chart,
    Manifest,
    find,
    only,
    values_of,
)

from jobpool.cli import app
from jobpool.operator import render
from jobpool.operator.spec import parse_spec

KUBERNETES_VERSION = "1.34"
CLUSTER_SCOPED = {
    "ClusterRole",
    "ClusterRoleBinding",
    "ClusterKopfPeering",
    "CustomResourceDefinition",
}
PEERING_KINDS = {"KopfPeering", "ClusterKopfPeering"}

# The Prometheus Operator's ServiceMonitor is not in the Kubernetes schemas: this is the
# part of its CRD (monitoring.coreos.com/v1) that the chart uses, unknown fields refused.
DURATION = {"type": "string", "pattern": "^(0|([0-9]+(y|w|d|h|m|s|ms))+)$"}
LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}},
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": LABELS},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": DURATION,
                            "scrapeTimeout": DURATION,
                        },
                    },
                },
            },
        },
    },
}


def peering_schemas() -> dict[str, tuple[str, dict[str, Any], str]]:
    """kind → (apiVersion, openAPIV3Schema, scope), from the chart's own peering CRDs."""
    out = {}
    for crd in yaml.safe_load_all((CHART_DIR / "crds" / "kopf.dev_peerings.yaml").read_text()):
        version = crd["spec"]["versions"][0]
        out[crd["spec"]["names"]["kind"]] = (
            f"{crd['spec']['group']}/{version['name']}",
            version["schema"]["openAPIV3Schema"],
            crd["spec"]["scope"],
        )
    return out


def validate(manifest: Manifest) -> None:
    kind = manifest["kind"]
    where = f"{kind} {manifest['metadata'].get('name')}"
    if kind in PEERING_KINDS:
        api_version, schema, scope = peering_schemas()[kind]
        assert manifest["apiVersion"] == api_version, where
        assert ("namespace" in manifest["metadata"]) == (scope == "Namespaced"), where
        jsonschema.validate(manifest, schema)
    elif kind == "ServiceMonitor":
        jsonschema.validate(manifest, SERVICE_MONITOR_SCHEMA)
    else:
        try:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} is not a valid Kubernetes {KUBERNETES_VERSION} object: {exc}")
    if kind in CLUSTER_SCOPED:
        assert "namespace" not in manifest["metadata"], f"{where} is cluster-scoped"
    else:
        assert manifest["metadata"].get("namespace"), f"{where} names no namespace"


def container(manifest: Manifest) -> dict[str, Any]:
    pod = manifest["spec"]["template"]["spec"] if "template" in manifest["spec"] else None
    pod = pod or manifest["spec"]
    (only_container,) = pod["containers"]
    return only_container


def operator_params(args: list[str]) -> dict[str, Any]:
    """What ``jobpool ARGS`` gives the operator command (click parses, nothing runs)."""
    assert args[0] == "operator", args
    group = typer.main.get_command(app)
    command = group.commands["operator"]  # type: ignore[attr-defined]
    context = command.make_context("operator", list(args[1:]))
    return dict(context.params)


# -- every combination ------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_helm_lint_passes(chart: Chart, case: str) -> None:
    done = chart.lint(values_of(case))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[ERROR]" not in done.stdout, done.stdout
    assert "[WARNING]" not in done.stdout, done.stdout


@pytest.mark.parametrize("case", CASES)
def test_every_rendered_object_is_valid(chart: Chart, case: str) -> None:
    manifests = chart.template(values_of(case), include_crds=True)
    kinds = {m["kind"] for m in manifests}
    assert {"Deployment", "Service", "Pod", "CustomResourceDefinition"} <= kinds
    for manifest in manifests:
        validate(manifest)


@pytest.mark.parametrize("case", CASES)
def test_the_operator_cli_accepts_the_deployment(chart: Chart, case: str) -> None:
    values = values_of(case)
    operator = values.get("operator", {})
    manifests = chart.template(values)
    deployment = only(manifests, "Deployment")
    main = container(deployment)
    params = operator_params(main["args"])
    if operator.get("scope", "cluster") == "cluster":
        assert params["all_namespaces"]
        assert not params["namespace"]
    else:
        assert not params["all_namespaces"]
        assert params["namespace"] == operator.get("namespaces", [NAMESPACE])
    peering = operator.get("peering", {}).get("enabled", True)
    assert params["standalone"] is (not peering)
    if peering:
        assert params["peering"] == operator.get("peering", {}).get("name", "jobpool")
    port = operator.get("healthPort", 8080)
    assert params["liveness"] == f"http://0.0.0.0:{port}/healthz"
    assert main["ports"] == [{"name": "health", "containerPort": port, "protocol": "TCP"}]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert main[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    env = {e["name"]: e for e in main["env"]}
    database = values.get("database", {})
    assert env["JOBPOOL_DSN"]["valueFrom"]["secretKeyRef"] == {
        "name": database.get("secretName", "jobpool-database"),
        "key": database.get("secretKey", "dsn"),
    }
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert deployment["spec"]["replicas"] == operator.get("replicas", 1)
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize("case", CASES)
def test_the_dsn_appears_only_in_its_secret(chart: Chart, case: str) -> None:
    manifests = chart.template(values_of(case))
    secrets = find(manifests, "Secret")
    password = "s3cret-Pa55"
    for manifest in manifests:
        if manifest not in secrets:
            assert password not in yaml.safe_dump(manifest), manifest["kind"]
    if values_of(case).get("database", {}).get("createSecret"):
        (secret,) = secrets
        database = values_of(case)["database"]
        assert secret["metadata"]["name"] == database.get("secretName", "jobpool-database")
        assert secret["stringData"] == {
            database.get("secretKey", "dsn"): DSN,
            "checksum-salt": secret["stringData"]["checksum-salt"],
        }
    else:
        assert secrets == []


# -- the operator Deployment -------------------------------------------------------------


def test_the_operator_is_hardened(chart: Chart) -> None:
    deployment = only(chart.template(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == render.NON_ROOT_UID
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    main = container(deployment)
    assert main["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert {"mountPath": "/tmp", "name": "tmp"} in main["volumeMounts"]
    assert main["resources"]["requests"]
    assert main["resources"]["limits"]["memory"]
    assert main["image"] == "ghcr.io/example/jobpool:0.1.0"  # the appVersion by default


def test_an_image_digest_wins_over_the_tag(chart: Chart) -> None:
    values = {"image": {"tag": "9.9.9", "digest": "sha256:" + "0f" * 32}}
    main = container(only(chart.template(values), "Deployment"))
    assert main["image"] == "ghcr.io/example/jobpool@sha256:" + "0f" * 32


def test_pod_settings_reach_the_operator_pod(chart: Chart) -> None:
    values = values_of("everything")
    deployment = only(chart.template(values), "Deployment")
    pod = deployment["spec"]["template"]
    operator = values["operator"]
    assert pod["metadata"]["labels"]["team"] == "platform"
    assert pod["metadata"]["annotations"]["example.com/team"] == "platform"
    assert "checksum/database" in pod["metadata"]["annotations"]
    spec = pod["spec"]
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
        assert spec[key] == operator[key]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["serviceAccountName"] == "jobpool-operator"
    env = container(deployment)["env"]
    assert {"name": "OTEL_SERVICE_NAME", "value": "jobpool-operator"} in env
    assert {"name": "JOBPOOL_STATUS_INTERVAL", "value": "2.5"} in env


# -- the checksum/database annotation ------------------------------------------------------


def checksum_and_salt(manifests: list[Manifest]) -> tuple[str, str]:
    pod = only(manifests, "Deployment")["spec"]["template"]
    return pod["metadata"]["annotations"]["checksum/database"], only(manifests, "Secret")[
        "stringData"
    ]["checksum-salt"]


@pytest.mark.parametrize("case", ["created-secret", "migration-created-secret", "everything"])
def test_the_checksum_is_salted_with_the_secrets_salt(chart: Chart, case: str) -> None:
    """sha256 of the Secret's salt and the DSN: a guessed DSN cannot be confirmed from
    the Deployment (the salt is in the Secret only), and nothing of the DSN shows."""
    checksum, salt = checksum_and_salt(chart.template(values_of(case)))
    assert re.fullmatch(r"[A-Za-z0-9]{32}", salt)
    assert checksum == hashlib.sha256(f"{salt}\n{DSN}".encode()).hexdigest()
    assert hashlib.sha256(DSN.encode()).hexdigest()[:16] not in checksum  # the old, unsalted one


def test_helm_template_draws_a_new_salt_at_each_render(chart: Chart) -> None:
    """``lookup`` needs a cluster: without one (``helm template``, ``--dry-run``) no salt
    is found to keep, so each render draws its own (tests/k8s keeps it across upgrades)."""
    renders = [chart.template_run(values_of("created-secret")) for _ in range(2)]
    drawn = [checksum_and_salt([d for d in yaml.safe_load_all(r.stdout) if d]) for r in renders]
    assert drawn[0][1] != drawn[1][1]
    assert drawn[0][0] != drawn[1][0]


def test_no_checksum_without_a_chart_made_secret(chart: Chart) -> None:
    """An existing Secret is not the chart's to read: a change of it needs a restart."""
    pod = only(chart.template(values_of("migration")), "Deployment")["spec"]["template"]
    assert "checksum/database" not in pod["metadata"].get("annotations", {})


# -- hooks, peering, monitoring, NOTES ----------------------------------------------------


def test_the_migration_job_is_an_optional_pre_install_hook(chart: Chart) -> None:
    assert find(chart.template(), "Job") == []
    manifests = chart.template(values_of("migration"))
    job = only(manifests, "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["restartPolicy"] == "Never"
    main = container(job)
    assert main["args"] == ["migrate"]
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert find(manifests, "Secret") == []  # an existing Secret: nothing to hook


@pytest.mark.parametrize(
    ("database", "expected"),
    [
        ({}, ("jobpool-database", "dsn")),  # the operator's Secret: an owner login then
        ({"migrationSecretName": "jobpool-owner"}, ("jobpool-owner", "dsn")),
        ({"migrationSecretKey": "owner-dsn"}, ("jobpool-database", "owner-dsn")),
        (
            {"secretName": "pg", "migrationSecretName": "pg-owner", "migrationSecretKey": "u"},
            ("pg-owner", "u"),
        ),
    ],
)
def test_migrations_and_the_operator_read_their_own_secrets(
    chart: Chart, database: dict[str, str], expected: tuple[str, str]
) -> None:
    """The migration Job needs a jobpool_owner login, the operator one of
    jobpool_operator: each reads the Secret (and key) its values name."""
    manifests = chart.template({"migration": {"enabled": True}, "database": database})
    (migrate_env,) = container(only(manifests, "Job"))["env"]
    assert migrate_env["name"] == "JOBPOOL_DSN"
    name, key = expected
    assert migrate_env["valueFrom"]["secretKeyRef"] == {"name": name, "key": key}
    operator_env = {e["name"]: e for e in container(only(manifests, "Deployment"))["env"]}
    assert operator_env["JOBPOOL_DSN"]["valueFrom"]["secretKeyRef"] == {
        "name": database.get("secretName", "jobpool-database"),
        "key": "dsn",
    }


def test_a_created_secret_is_a_hook_before_the_migration(chart: Chart) -> None:
    plain = only(chart.template(values_of("created-secret")), "Secret")
    assert "annotations" not in plain["metadata"]  # a release object
    hooked = only(chart.template(values_of("migration-created-secret")), "Secret")
    job = only(chart.template(values_of("migration-created-secret")), "Job")
    secret_weight = int(hooked["metadata"]["annotations"]["helm.sh/hook-weight"])
    job_weight = int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    assert hooked["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert secret_weight < job_weight
    # A migration Job that reads another Secret leaves the operator's a release object.
    values = values_of("migration-created-secret")
    values["database"]["migrationSecretName"] = "jobpool-owner"
    assert "annotations" not in only(chart.template(values), "Secret")["metadata"]


@pytest.mark.parametrize("case", ["defaults", "namespaced-teams", "standalone"])
def test_the_peering_object_matches_the_operator(chart: Chart, case: str) -> None:
    values = values_of(case)
    manifests = chart.template(values)
    params = operator_params(container(only(manifests, "Deployment"))["args"])
    peerings = [m for m in manifests if m["kind"] in PEERING_KINDS]
    if params["standalone"]:
        assert peerings == []
    elif params["all_namespaces"]:
        assert [(m["kind"], m["metadata"]["name"]) for m in peerings] == [
            ("ClusterKopfPeering", params["peering"])
        ]
    else:
        assert sorted((m["metadata"]["namespace"], m["metadata"]["name"]) for m in peerings) == [
            (namespace, params["peering"]) for namespace in sorted(params["namespace"])
        ]
        assert {m["kind"] for m in peerings} == {"KopfPeering"}


@pytest.mark.parametrize("case", ["servicemonitor", "servicemonitor-namespaced"])
def test_the_service_monitor_selects_every_pools_workers(chart: Chart, case: str) -> None:
    assert find(chart.template(), "ServiceMonitor") == []
    values = values_of(case)
    monitor = only(chart.template(values), "ServiceMonitor")
    # What the operator puts on each JobPool's headless Service (jobpool.operator.render).
    spec = parse_spec({"image": "x", "app": "a.b:c", "database": {"secretRef": {"name": "db"}}})
    service = render.render_service("emails", "team-a", spec)
    match = monitor["spec"]["selector"]["matchLabels"]
    assert match.items() <= service["metadata"]["labels"].items()
    assert match["app.kubernetes.io/component"] == "worker"  # never the operator's Service
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == render.METRICS_PORT_NAME == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    namespaces = values["operator"].get("namespaces") if "operator" in values else None
    if namespaces:
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": namespaces}
    else:
        assert monitor["spec"]["namespaceSelector"] == {"any": True}
    assert monitor["metadata"]["labels"].get("release") == values["serviceMonitor"].get(
        "labels", {}
    ).get("release")


def test_helm_test_checks_the_operator_through_its_service(chart: Chart) -> None:
    manifests = chart.template()
    pod = only(manifests, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["automountServiceAccountToken"] is False
    service = only(manifests, "Service")
    deployment = only(manifests, "Deployment")
    assert service["spec"]["selector"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    (port,) = service["spec"]["ports"]
    url = {e["name"]: e["value"] for e in container(pod)["env"]}["HEALTH_URL"]
    assert url == (f"http://{service['metadata']['name']}.{NAMESPACE}.svc:{port['port']}/healthz")
    script = container(pod)["args"][0]
    compile(script, "helm-test", "exec")  # the check is valid Python


def render_notes(chart: Chart, tmp_path: Path, values: dict[str, Any]) -> str:
    """NOTES.txt as `helm install` prints it (`helm template` skips NOTES: render it as
    a ConfigMap's data in a copy of the chart)."""
    copy = tmp_path / "jobpool"
    shutil.copytree(CHART_DIR, copy)
    shutil.copy(copy / "templates" / "NOTES.txt", copy / "notes.txt")
    (copy / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ tpl (.Files.Get "notes.txt") . | toJson }}\n'
    )
    chart_copy = Chart(chart.helm, tmp_path)
    chart_copy.dir = copy
    return str(only(chart_copy.template(values), "ConfigMap", "notes")["data"]["notes"])


def test_notes_say_what_to_do_next(chart: Chart, tmp_path: Path) -> None:
    notes = render_notes(chart, tmp_path, {})
    assert "kubectl -n jobpool create secret generic jobpool-database" in notes
    assert f"helm test {RELEASE} -n {NAMESPACE}" in notes
    assert "kind: JobPool" in notes
    assert "kubectl get jobpools -A" in notes
    assert "no more than the role jobpool_operator" in notes
    assert "DSN for a jobpool_worker login" in notes
    assert "keep the schema current with an owner login" in notes
    assert "serves JobPools in every namespace" in notes
    assert "kubectl apply --server-side -f charts/jobpool/crds/" in notes
    assert "{{" not in notes
    assert "<no value>" not in notes
    teams = render_notes(chart, tmp_path / "teams", values_of("servicemonitor-namespaced"))
    assert "serves JobPools in: team-a, team-b." in teams
    assert "ServiceMonitor" in teams
    created = render_notes(chart, tmp_path / "created", values_of("created-secret"))
    assert "stored your DSN in the Secret jobpool-database" in created
    migrating = render_notes(chart, tmp_path / "migrating", values_of("everything"))
    assert "the migration Job reads the Secret pg-owner, which needs a jobpool_owner" in migrating
    assert "s3cret" not in created


def test_objects_are_labelled_as_the_release(chart: Chart) -> None:
    for manifest in chart.template(values_of("everything")):
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE, manifest["kind"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert re.fullmatch(r"jobpool-\d+\.\d+\.\d+", labels["helm.sh/chart"])
