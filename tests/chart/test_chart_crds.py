"""The chart's CRDs: the JobPool CRD is the top-level one, byte for byte; kopf's peering
CRDs are the resources kopf looks for; every CRD is valid for Kubernetes."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml
from chart_kit import CHART_DIR, Chart
from kopf._cogs.structs import references

from jobpool.operator.crd import crd_yaml

TOP_LEVEL = CHART_DIR.parents[1] / "crds"
CHART_CRDS = CHART_DIR / "crds"
PEERING_FILE = "kopf.dev_peerings.yaml"


@pytest.mark.parametrize("name", sorted(p.name for p in TOP_LEVEL.glob("*.yaml")))
def test_the_chart_carries_each_top_level_crd_unchanged(name: str) -> None:
    chart_copy = CHART_CRDS / name
    assert chart_copy.is_file(), f"charts/jobpool/crds/{name} is missing: cp crds/{name} there"
    assert chart_copy.read_bytes() == (TOP_LEVEL / name).read_bytes(), (
        f"charts/jobpool/crds/{name} differs from crds/{name}: cp crds/{name} charts/jobpool/crds/"
    )


def test_the_chart_jobpool_crd_is_the_generated_one() -> None:
    assert (CHART_CRDS / "jobpool.dev_jobpools.yaml").read_text() == crd_yaml()


def test_the_chart_has_no_other_crds() -> None:
    names = {p.name for p in CHART_CRDS.iterdir()}
    assert names == {p.name for p in TOP_LEVEL.glob("*.yaml")} | {PEERING_FILE}


def test_the_peering_crds_are_what_kopf_looks_for() -> None:
    crds = {
        crd["spec"]["names"]["kind"]: crd
        for crd in yaml.safe_load_all((CHART_CRDS / PEERING_FILE).read_text())
    }
    for kind, selector, scope in (
        ("ClusterKopfPeering", references.CLUSTER_PEERINGS_K, "Cluster"),
        ("KopfPeering", references.NAMESPACED_PEERINGS_K, "Namespaced"),
    ):
        spec = crds[kind]["spec"]
        assert spec["group"] == selector.group
        assert spec["names"]["plural"] == selector.any_name
        assert [v["name"] for v in spec["versions"]] == [selector.version]
        assert spec["scope"] == scope
        status = spec["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["x-kubernetes-preserve-unknown-fields"] is True  # kopf's keep-alives


def test_every_crd_helm_installs_is_valid(chart: Chart) -> None:
    crds = [m for m in chart.template(include_crds=True) if m["kind"] == "CustomResourceDefinition"]
    assert len(crds) == 3
    for crd in crds:
        kubernetes_validate.validate(crd, "1.34", strict=True)
