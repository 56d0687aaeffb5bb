"""The chart's database wiring on a real cluster: least-privilege Secrets, and the
operator's ``checksum/database`` annotation across real ``helm upgrade``\\ s.

The release installs on an empty database: its migration Job (a pre-install hook) runs
``jobpool migrate`` with the owner's DSN from ``database.migrationSecretName``, and the
operator then starts with a login that is only a member of ``jobpool_operator``, from the
Secret the chart creates. The annotation is a sha256 over a salt that the chart drew at
the install and keeps in that Secret (``lookup``, which only a real cluster answers):
an upgrade with the same DSN changes nothing (no restart), a new DSN changes the
annotation (the operator restarts) and keeps the salt.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

import pg
import pytest
from k8s_kit import DATABASE_SECRET, Cluster, Helm, operator_values

RELEASE = "jpdb"
NAMESPACE = "jpdb-system"
OWNER_SECRET = "jobpool-owner"

pytestmark = pytest.mark.timeout(600)


def values(operator_dsn: str) -> dict[str, Any]:
    return operator_values(
        {
            "migration": {"enabled": True},
            "database": {
                "createSecret": True,
                "dsn": operator_dsn,
                "migrationSecretName": OWNER_SECRET,
            },
        }
    )


def released(cluster: Cluster) -> tuple[str, str, int]:
    """(the Secret's salt, the pod template's checksum, the Deployment's generation)."""
    secret = cluster.core.read_namespaced_secret(DATABASE_SECRET, NAMESPACE)
    salt = base64.b64decode(secret.data["checksum-salt"]).decode()
    deployment = cluster.apps.read_namespaced_deployment(f"{RELEASE}-jobpool", NAMESPACE)
    checksum = deployment.spec.template.metadata.annotations["checksum/database"]
    return salt, checksum, deployment.metadata.generation


def salted(salt: str, dsn: str) -> str:
    return hashlib.sha256(f"{salt}\n{dsn}".encode()).hexdigest()


def test_least_privilege_install_and_a_checksum_that_follows_the_dsn(
    cluster: Cluster, helm: Helm, empty_dsn: str
) -> None:
    operator_dsn = pg.as_role(empty_dsn, pg.OPERATOR)
    cluster.namespace(NAMESPACE)
    cluster.secret(NAMESPACE, OWNER_SECRET, {"dsn": empty_dsn})  # the owner's login
    helm.install(RELEASE, NAMESPACE, values(operator_dsn))  # --wait: the operator Ready
    try:
        salt, checksum, generation = released(cluster)
        assert re.fullmatch(r"[A-Za-z0-9]{32}", salt)
        assert checksum == salted(salt, operator_dsn)

        helm.install(RELEASE, NAMESPACE, values(operator_dsn), upgrade=True)
        assert released(cluster) == (salt, checksum, generation)

        separator = "&" if "?" in operator_dsn else "?"
        rotated = f"{operator_dsn}{separator}application_name=jobpool-operator-rotated"
        helm.install(RELEASE, NAMESPACE, values(rotated), upgrade=True)
        assert released(cluster) == (salt, salted(salt, rotated), generation + 1)
    finally:
        helm.run("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait")
