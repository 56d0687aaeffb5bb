"""Thin kopf handlers of ``jobpools.jobpool.dev/v1alpha1``, and the operator's assembly.

Reconcile (create, update, resume — one idempotent path): validate the spec
(``spec.parse_spec``) → render the children (``render.render_children``, pure) →
``kopf.adopt`` (owner references, namespace, the JobPool's labels) → write the ring
and apply the children. No orchestration beyond that.

* **Invalid spec**: a Warning Event ``InvalidSpec``, ``Degraded=True`` (reason
  ``InvalidSpec``, the message naming the field) and ``Ready=False``, then a permanent
  error: no child, no ring and no schedule is touched, and kopf retries only when the
  spec changes.
  A pool's shard count is fixed at creation: a spec whose ``shards`` differs from the
  pool's row in Postgres is refused the same way.
* **The ring** (``pools.replicas`` and ``ring_version`` in Postgres, which the workers
  LISTEN to) follows ``spec.replicas``. The order matters: growing, the StatefulSet
  first, then the ring (new pods start with no shards, then receive them); shrinking,
  the ring first (the leaving ordinals drain and release their shards to the
  remaining ones), then the StatefulSet. When Postgres cannot be reached, kopf retries
  (``TemporaryError``): nothing is changed if the pool's row cannot be read, and a
  shrinking StatefulSet never gets ahead of its ring (a grown one may: its new pods
  simply own no shards until the retry). A ring change posts a ``Scaled`` Event.
* **Children** are applied through ``context.Kube`` (the official client, server-side
  apply, in a thread). ``status.observedGeneration`` says which spec they reflect.
* **Schedules**: ``spec.schedules`` become the pool's ``spec`` rows of the ``schedules``
  table (added, changed, removed), which the workers' periodic service enqueues.
* **Pause**: ``spec.paused`` and ``spec.pausedTypes`` are written to the pool's row when
  they differ from it (``jobpool.store.pause``: resumed types' parked jobs are queued
  again, the workers woken), with a ``Paused`` or ``Resumed`` Event. The spec wins
  over a ``jobpool pause``/``resume`` at the next reconcile.
* **Delete**: the children go with the JobPool through Kubernetes garbage collection
  (their owner references); the operator only posts an Event. The pool's row, its jobs,
  dead letters and ring stay in Postgres: deleting a custom resource must not lose
  submitted jobs, and a JobPool re-created with the same name resumes its backlog
  (dropping a pool's data is an explicit admin act). kopf keeps a finalizer on each
  JobPool anyway (it stops the status timer before the object goes), so deleting a
  JobPool waits for a running operator.

Start: the migrations are applied under their advisory lock before kopf starts (an
unreachable database is only logged: the first use migrates, and status reports
``DatabaseUnreachable`` meanwhile). A malformed DSN or a changed or broken migration
ends ``run_operator`` with that error at once. Not a ``@kopf.on.startup`` handler: when
one fails for good, kopf 1.45 keeps the process alive (idle) until it is stopped, which
would leave a pod Running that serves nothing. ``login`` hands kopf the credentials of
the same client configuration the handlers use.

:func:`run_operator` assembles a registry (:func:`build_registry`), settings and the
context, and runs ``kopf.operator``; the CLI and the tests both go through it.
"""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

import kopf
import kubernetes.client

from jobpool.errors import DatabaseUnavailable
from jobpool.models import Pool, PoolPause
from jobpool.operator import retention, status
from jobpool.operator.context import OperatorConfig, OperatorContext, connection_info
from jobpool.operator.render import render_children, selector
from jobpool.operator.spec import (
    GROUP,
    PLURAL,
    VERSION,
    InvalidSpec,
    JobPoolSpec,
    check_name,
    check_transition,
    parse_spec,
)
from jobpool.store.pause import pool_pause_change
from jobpool.store.pools import pool_ensure, pool_set_replicas
from jobpool.store.schedules import ScheduleSource, schedule_sync

logger = logging.getLogger(__name__)

PEERING_NAME = "jobpool"
ANNOTATION_PREFIX = "jobpool.dev"
FINALIZER = "jobpool.dev/operator"
RETRY_DELAY_S = 10.0
INSTANT_EXIT_TIMEOUT_S = 10.0
MAX_PRIORITY = 2**31 - 1


# -- reconcile -------------------------------------------------------------------------


def refuse(body: kopf.Body, patch: kopf.Patch, problem: str) -> None:
    """Report an invalid spec: a Warning Event, Degraded=True and Ready=False."""
    now = datetime.now(UTC)
    conditions = (body.get("status") or {}).get("conditions") or []
    for type_, state in (
        (status.READY, status.ConditionState(False, status.INVALID_SPEC, "the spec is invalid")),
        (status.DEGRADED, status.ConditionState(True, status.INVALID_SPEC, problem)),
    ):
        conditions = status.set_condition(conditions, type_, state, now=now)
    patch.status["conditions"] = conditions
    kopf.event(body, type="Warning", reason=status.INVALID_SPEC, message=problem)


def accept(body: kopf.Body, patch: kopf.Patch, generation: int | None) -> None:
    """Clear a previous ``InvalidSpec`` (the status timer judges everything else)."""
    conditions = (body.get("status") or {}).get("conditions") or []
    before = status.find_condition(conditions, status.DEGRADED)
    if before.get("reason") != status.INVALID_SPEC:
        return
    state = status.ConditionState(False, "SpecAccepted", f"generation {generation} is valid")
    now = datetime.now(UTC)
    patch.status["conditions"] = status.set_condition(conditions, status.DEGRADED, state, now=now)
    kopf.event(body, type="Normal", reason="Recovered", message="the spec is valid again")


async def ensure_pool(context: OperatorContext, name: str, spec: JobPoolSpec) -> Pool:
    """The pool's row (created with the spec's shards and replicas if missing)."""
    try:
        async with context.db.connection() as conn:
            pool = await pool_ensure(conn, name, shards=spec.shards, replicas=spec.replicas)
    except DatabaseUnavailable as exc:
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY_S) from None
    if problem := status.shards_problem(name, spec, pool.shards):
        raise problem
    return pool


async def sync_schedules(context: OperatorContext, name: str, spec: JobPoolSpec) -> None:
    """Declare ``spec.schedules`` in Postgres (the pool's periodic service enqueues them)."""
    try:
        async with context.db.connection() as conn:
            await schedule_sync(
                conn, name, ScheduleSource.SPEC, [s.schedule() for s in spec.schedules]
            )
    except DatabaseUnavailable as exc:
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY_S) from None


async def sync_pause(
    context: OperatorContext, body: kopf.Body, pool: Pool, spec: JobPoolSpec
) -> None:
    """Write ``spec.paused`` and ``spec.pausedTypes`` to the pool's row if they differ."""
    wanted = PoolPause(paused=spec.paused, types=frozenset(spec.paused_types))
    if pool.pause == wanted:
        return
    try:
        async with context.db.connection() as conn:
            change = await pool_pause_change(
                conn, pool.name, paused=spec.paused, types=sorted(wanted.types)
            )
    except DatabaseUnavailable as exc:
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY_S) from None
    reason = "Paused" if wanted.active else "Resumed"
    requeued = f"; {change.unparked} parked jobs queued again" if change.unparked else ""
    message = f"pool {change.pause.describe()}{requeued}"
    logger.info("pool %s: %s", pool.name, message)
    kopf.event(body, type="Normal", reason=reason, message=message)


async def set_ring(context: OperatorContext, body: kopf.Body, pool: Pool, replicas: int) -> Pool:
    if pool.replicas == replicas:
        return pool
    try:
        async with context.db.connection() as conn:
            moved = await pool_set_replicas(conn, pool.name, replicas)
    except DatabaseUnavailable as exc:
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY_S) from None
    message = f"{pool.replicas} -> {moved.replicas} replicas (ring version {moved.ring_version})"
    logger.info("pool %s: %s", pool.name, message)
    kopf.event(body, type="Normal", reason="Scaled", message=message)
    return moved


async def reconcile(
    body: kopf.Body,
    name: str,
    namespace: str,
    meta: kopf.Meta,
    patch: kopf.Patch,
    memo: OperatorContext,
    old: Any = None,
    **_: Any,
) -> None:
    """Bring the children and the ring in line with the spec (create, update, resume)."""
    try:
        spec = parse_spec(body.get("spec"))
        check_name(name)
        if (previous := _previous_spec(old)) is not None:
            check_transition(previous, spec)  # also where the CRD's CEL rules do not run
        children = render_children(name, namespace, spec)
        kopf.adopt(children, owner=body)
        pool = await ensure_pool(memo, name, spec)
    except InvalidSpec as exc:
        refuse(body, patch, str(exc))
        raise kopf.PermanentError(f"invalid spec: {exc}") from None
    shrinking = spec.replicas < pool.replicas
    if shrinking:
        pool = await set_ring(memo, body, pool, spec.replicas)
    for child in children:
        await memo.kube.apply(child)
    if not shrinking:
        pool = await set_ring(memo, body, pool, spec.replicas)
    await sync_schedules(memo, name, spec)
    await sync_pause(memo, body, pool, spec)
    generation = meta.get("generation")
    accept(body, patch, generation)
    patch.status["observedGeneration"] = generation
    patch.status["ringVersion"] = pool.ring_version
    patch.status["selector"] = selector(name)


def _previous_spec(old: Any) -> JobPoolSpec | None:
    """The spec before an update, if there was a valid one."""
    try:
        return parse_spec(old.get("spec")) if old else None
    except InvalidSpec:
        return None


async def deleted(body: kopf.Body, name: str, namespace: str, **_: Any) -> None:
    """Only an Event: the children go by owner references, the jobs stay in Postgres."""
    message = (
        "its StatefulSet, Service, PodDisruptionBudget and ConfigMap are garbage-collected "
        f"(owner references); pool {name!r} keeps its jobs, dead letters and ring in Postgres"
    )
    logger.info("jobpool %s/%s deleted: %s", namespace, name, message)
    kopf.event(body, type="Normal", reason="Deleted", message=message)


# -- activities ------------------------------------------------------------------------


def login(memo: OperatorContext, settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    return connection_info(memo.kube.configuration, trust_env=settings.networking.trust_env)


async def migrate_at_start(context: OperatorContext) -> None:
    """Apply pending migrations; an unreachable database only postpones them.

    A malformed DSN or an edited/broken migration (``InvalidDsn``, ``MigrationError``)
    propagates: the operator must not run against a schema it does not know.
    """
    try:
        applied = await context.db.migrate()
    except DatabaseUnavailable as exc:
        logger.warning("migrations postponed to the first use of the database: %s", exc)
        return
    logger.info("schema of %s is up to date (applied: %s)", context.db.label, applied or "none")


# -- assembly --------------------------------------------------------------------------


def build_registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    """A registry with every handler of the operator (no global kopf state)."""
    registry = kopf.OperatorRegistry()
    resource = (GROUP, VERSION, PLURAL)
    kopf.on.login(registry=registry)(login)
    kopf.on.create(*resource, id="reconcile", registry=registry)(reconcile)
    kopf.on.update(*resource, id="reconcile", registry=registry)(reconcile)
    kopf.on.resume(*resource, id="reconcile", registry=registry)(reconcile)
    kopf.on.delete(*resource, id="deleted", registry=registry)(deleted)
    status.register(registry, interval_s=config.status_interval_s)
    retention.register(registry, interval_s=config.retention_interval_s)
    return registry


def operator_settings(
    *, instance: str | None = None, cluster_discovery: bool = True
) -> kopf.OperatorSettings:
    """kopf settings: our own annotations and finalizer, Events only where we post them.

    ``instance`` names this operator in its Events (``reportingInstance``); default:
    the host name, which is the pod's name in a cluster. Without ``cluster_discovery``
    kopf neither lists nor watches CRDs and namespaces (cluster-wide calls a namespaced
    install may not be allowed): it serves the exact namespaces it was given and the
    resources its first API discovery found, instead of retrying forbidden calls.
    """
    settings = kopf.OperatorSettings()
    settings.scanning.disabled = not cluster_discovery
    settings.posting.reporting_instance = instance or socket.gethostname()
    settings.persistence.finalizer = FINALIZER
    # The CRD's structural schema prunes unknown status fields: keep kopf's state in
    # annotations only.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX
    )
    # On exit, let a status tick that is mid-flight finish rather than orphan it.
    settings.background.instant_exit_timeout = INSTANT_EXIT_TIMEOUT_S
    settings.posting.reporting_component = "jobpool-operator"
    settings.posting.level = logging.WARNING  # handler logs → Events only from warnings up
    return settings


def random_priority() -> int:
    """A peering priority unlikely to tie with a peer's (a tie would freeze both)."""
    return random.SystemRandom().randint(1, MAX_PRIORITY)


async def run_operator(
    config: OperatorConfig,
    configuration: kubernetes.client.Configuration,
    *,
    namespaces: Collection[str] = (),
    clusterwide: bool = False,
    standalone: bool = False,
    peering_name: str = PEERING_NAME,
    priority: int | None = None,
    liveness_endpoint: str | None = None,
    cluster_discovery: bool = True,
    identity: str | None = None,
    stop_flag: Any = None,
    ready_flag: Any = None,
) -> None:
    """Run the operator until ``stop_flag`` is set (or a signal in the main thread).

    Peering (unless ``standalone``): the operators sharing the peering object
    ``peering_name`` see each other, and all but the one with the highest priority
    pause, so two replicas never act at once. Each process draws a random priority
    unless given one: a tie would pause every one of them. Without the peering CRDs
    installed the operator stays paused (peering is mandatory when requested).
    ``identity`` names the operator among its peers and in its Events (default: kopf's,
    from ``$POD_ID`` or the user, host and start time). ``cluster_discovery``: see
    :func:`operator_settings`.
    """
    context = OperatorContext.create(config, configuration)
    try:
        await migrate_at_start(context)
        await kopf.operator(
            registry=build_registry(config),
            settings=operator_settings(instance=identity, cluster_discovery=cluster_discovery),
            memo=context,
            identity=identity,  # type: ignore[arg-type]  # kopf's Identity: NewType of str
            namespaces=list(namespaces),
            clusterwide=clusterwide,
            standalone=standalone,
            peering_name=None if standalone else peering_name,
            priority=None if standalone else (priority or random_priority()),
            liveness_endpoint=liveness_endpoint,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        await context.close()
