"""The operator's runtime context: its settings, its database and its Kubernetes API.

One :class:`OperatorContext` per operator process reaches every kopf handler as
``memo``. kopf hands each JobPool a shallow copy, so the database pool and the API
client are shared, and nothing in here is per-object state (what must survive a
restart or a hand-over to a peer lives in the JobPool itself: status, annotations).

Database — one per operator (``jobpool operator --dsn`` / ``JOBPOOL_DSN``), shared by
every JobPool it manages. A JobPool's ``database.secretRef`` is what its *workers*
mount; it must name the same database, which the operator cannot check without
reading secrets (it never does). :class:`Database` opens an asyncpg pool lazily with
``min_size=0`` (so an unreachable server never stops the operator from starting, and
status can say so), applies the migrations once under their advisory lock before the
first use, and turns every connection-level failure into
:class:`~jobpool.errors.DatabaseUnavailable`, whose message names the DSN without its
password.

Kubernetes API — the official, synchronous ``kubernetes`` client, each call in a worker
thread (``asyncio.to_thread``) so the event loop that runs kopf and asyncpg never
blocks. kopf's own API client is private (``kopf._cogs``), and ``kubernetes_asyncio``
would be a second client stack; the official one is already a dependency, and the
same :class:`kubernetes.client.Configuration` feeds kopf's login (see
:func:`connection_info`), so both always talk to one cluster as one identity.
Children are written by server-side apply (field manager ``jobpool-operator``,
``force``): a field the renderer stops producing is removed, which a merge patch
would leave behind. An emulator without apply support answers 404 for a missing
object, so a 404 falls back to a create.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import kopf
import kubernetes.client
import kubernetes.config
from kubernetes.client.exceptions import ApiException

from jobpool.errors import DatabaseUnavailable
from jobpool.store.connect import connect, connect_errors, create_pool, dsn_label, redact
from jobpool.store.migrate import migrate

logger = logging.getLogger(__name__)

STATUS_INTERVAL_S = 10.0
THROUGHPUT_WINDOW_S = 60.0
DLQ_GROWTH_WINDOW_S = 300.0
DB_TIMEOUT_S = 5.0
DB_MAX_CONNECTIONS = 4
API_TIMEOUT_S = 30.0
APPLICATION_NAME = "jobpool-operator"
FIELD_MANAGER = "jobpool-operator"
RETENTION_INTERVAL_S = 3600.0
APPLY_PATCH = "application/apply-patch+yaml"  # a JSON body is valid YAML

# Failures that mean "the database is not there", as opposed to a failed statement.
_CONNECTION_LOST = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InvalidCatalogNameError,
)


@dataclass(frozen=True)
class OperatorConfig:
    """What one operator process needs besides the cluster credentials."""

    dsn: str = field(repr=False)
    """The operator's database (never printed: ``repr`` leaves it out)."""
    status_interval_s: float = STATUS_INTERVAL_S
    """Seconds between two status projections of a JobPool (and autoscaling decisions)."""
    throughput_window_s: float = THROUGHPUT_WINDOW_S
    """``throughputPerMinute`` counts the jobs finished over this window."""
    dlq_growth_window_s: float = DLQ_GROWTH_WINDOW_S
    """New dead letters within this window make the pool ``Degraded`` (``DlqGrowing``)."""
    db_timeout_s: float = DB_TIMEOUT_S
    """Longest wait for a database connection before calling it unreachable."""
    retention_interval_s: float = RETENTION_INTERVAL_S
    """Seconds between two retention passes of a pool (history, replayed dead letters)."""


class Database:
    """The operator's asyncpg pool: opened lazily, migrated once, failures typed."""

    def __init__(self, dsn: str, *, timeout_s: float = DB_TIMEOUT_S) -> None:
        self._dsn = dsn
        self._timeout_s = timeout_s
        self._pool: asyncpg.Pool | None = None
        self._migrated = False
        self._lock = asyncio.Lock()

    @property
    def label(self) -> str:
        """The DSN without password or parameters, for logs and messages."""
        return dsn_label(self._dsn)

    async def migrate(self) -> list[str]:
        """Apply pending migrations under the advisory lock; return the files applied."""
        conn = await connect(
            self._dsn,
            timeout=self._timeout_s,
            server_settings={"application_name": APPLICATION_NAME},
        )
        try:
            applied = await migrate(conn)
        except _CONNECTION_LOST as exc:
            raise self._unavailable(exc) from None
        finally:
            await conn.close()
        self._migrated = True
        return applied

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; ``DatabaseUnavailable`` when the server cannot serve."""
        pool = await self._ready_pool()
        try:
            with connect_errors(self._dsn):
                conn = await pool.acquire(timeout=self._timeout_s)
        except TimeoutError as exc:
            raise self._unavailable(exc) from None
        try:
            yield conn
        except _CONNECTION_LOST as exc:
            raise self._unavailable(exc) from None
        finally:
            await pool.release(conn)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), self._timeout_s)
            except TimeoutError:
                pool.terminate()

    async def _ready_pool(self) -> asyncpg.Pool:
        async with self._lock:
            if not self._migrated:
                applied = await self.migrate()
                if applied:
                    logger.info("applied migrations %s to %s", applied, self.label)
            if self._pool is None:
                self._pool = await create_pool(
                    self._dsn,
                    min_size=0,
                    max_size=DB_MAX_CONNECTIONS,
                    timeout=self._timeout_s,
                    command_timeout=self._timeout_s,
                    server_settings={"application_name": APPLICATION_NAME},
                )
            return self._pool

    def _unavailable(self, exc: BaseException) -> DatabaseUnavailable:
        reason = redact(str(exc) or type(exc).__name__, self._dsn)
        return DatabaseUnavailable(f"cannot use the database ({self.label}): {reason}")


# -- the Kubernetes API ---------------------------------------------------------------


@dataclass(frozen=True)
class _KindApi:
    group: str  # which API object: "apps", "core" or "policy"
    noun: str  # e.g. "stateful_set" in create_namespaced_stateful_set


_KINDS: dict[str, _KindApi] = {
    "StatefulSet": _KindApi("apps", "stateful_set"),
    "Service": _KindApi("core", "service"),
    "ConfigMap": _KindApi("core", "config_map"),
    "PodDisruptionBudget": _KindApi("policy", "pod_disruption_budget"),
    "Pod": _KindApi("core", "pod"),
}


def load_configuration(
    *, kubeconfig: str | None = None, context: str | None = None
) -> kubernetes.client.Configuration:
    """The in-cluster service account when running in a pod, else the kubeconfig
    (``kubeconfig`` or ``$KUBECONFIG`` or ``~/.kube/config``)."""
    configuration = kubernetes.client.Configuration()
    if kubeconfig is None and context is None:
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
            return configuration
        except kubernetes.config.ConfigException:
            pass
    kubernetes.config.load_kube_config(
        config_file=kubeconfig, context=context, client_configuration=configuration
    )
    return configuration


def connection_info(
    configuration: kubernetes.client.Configuration, *, trust_env: bool = False
) -> kopf.ConnectionInfo:
    """kopf's credentials from the client's configuration (as ``kopf.login_via_client``)."""
    header = configuration.get_api_key_with_prefix(
        "BearerToken"
    ) or configuration.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme: str | None = parts[0] if len(parts) == 2 else None
    token: str | None = parts[-1] if parts else None
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
        trust_env=trust_env,
    )


class Kube:
    """The few Kubernetes calls the operator makes, each run in a worker thread."""

    def __init__(self, configuration: kubernetes.client.Configuration) -> None:
        self.configuration = configuration
        self._client = kubernetes.client.ApiClient(configuration)
        self._apis: dict[str, Any] = {
            "apps": kubernetes.client.AppsV1Api(self._client),
            "core": kubernetes.client.CoreV1Api(self._client),
            "policy": kubernetes.client.PolicyV1Api(self._client),
        }

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create or update one child by server-side apply; return the stored object."""
        return await asyncio.to_thread(self._apply, manifest)

    async def read(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        """The stored object, or ``None`` when it does not exist."""
        try:
            return await asyncio.to_thread(self._call, kind, "read", name=name, namespace=namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, kind: str, namespace: str, *, selector: str) -> list[dict[str, Any]]:
        """The objects of ``kind`` in ``namespace`` that match the label ``selector``."""
        found = await asyncio.to_thread(
            self._call, kind, "list", namespace=namespace, label_selector=selector
        )
        items: list[dict[str, Any]] = found.get("items") or []
        return items

    def close(self) -> None:
        self._client.close()

    def _apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        kind = manifest["kind"]
        name = manifest["metadata"]["name"]
        namespace = manifest["metadata"]["namespace"]
        apply = {"field_manager": FIELD_MANAGER, "force": True, "_content_type": APPLY_PATCH}
        try:
            return self._call(kind, "patch", name=name, namespace=namespace, body=manifest, **apply)
        except ApiException as exc:
            if exc.status != 404:  # a real API server creates on apply; an emulator may not
                raise
        try:
            return self._call(
                kind, "create", namespace=namespace, body=manifest, field_manager=FIELD_MANAGER
            )
        except ApiException as exc:
            if exc.status != 409:  # created meanwhile: apply again
                raise
        return self._call(kind, "patch", name=name, namespace=namespace, body=manifest, **apply)

    def _call(self, kind: str, verb: str, **kwargs: Any) -> dict[str, Any]:
        if kind not in _KINDS:
            raise ValueError(f"the operator does not manage {kind!r} objects")
        spec = _KINDS[kind]
        method: Callable[..., Any] = getattr(
            self._apis[spec.group], f"{verb}_namespaced_{spec.noun}"
        )
        response = method(**kwargs, _preload_content=False, _request_timeout=API_TIMEOUT_S)
        data: dict[str, Any] = json.loads(response.data)
        return data


@dataclass
class OperatorContext:
    """kopf's ``memo``: the operator's settings, database and Kubernetes API."""

    config: OperatorConfig
    db: Database
    kube: Kube

    @classmethod
    def create(
        cls, config: OperatorConfig, configuration: kubernetes.client.Configuration
    ) -> OperatorContext:
        return cls(
            config=config,
            db=Database(config.dsn, timeout_s=config.db_timeout_s),
            kube=Kube(configuration),
        )

    async def close(self) -> None:
        await self.db.close()
        self.kube.close()
