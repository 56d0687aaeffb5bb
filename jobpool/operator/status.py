"""Status projection: Postgres and the StatefulSet, folded into a JobPool's ``status``.

One kopf timer per JobPool (every ``OperatorConfig.status_interval_s``, 10 s by
default) reads

* from Postgres, in one read-only snapshot: due queued jobs by priority (``run_at``
  passed: delayed jobs and retries backing off wait for no worker), running jobs,
  pending dead letters (and those of the last ``dlq_growth_window_s``), the wait of the
  oldest due job, the jobs finished in the last ``throughput_window_s``, the ring, and
  each ordinal's heartbeat, shards and counters;
* from Kubernetes: the StatefulSet's ``status`` (replicas, ready, rollout) and the
  worker pods (which are Ready, which terminate);

and patches ``status`` with the fields of ``spec.JobPoolStatus`` and three conditions:

* ``Degraded`` — True with the first reason that applies: ``DatabaseUnreachable``,
  ``WorkersMissingHeartbeats`` (see :func:`missing_heartbeats`), ``OrdinalsMissing``
  (shards whose ring owner is gone: adopted by a live ordinal, or free past the orphan
  grace period — see :func:`missing_ordinals`), ``DlqGrowing`` (new dead letters
  within the window).
  ``InvalidSpec`` is the reconcile handler's: this timer skips a spec that does not
  parse, so it never hides that reason.
* ``Ready`` — every desired worker is ready and heartbeating, and Postgres answers.
* ``Progressing`` — the StatefulSet is being created, scaled or rolled out.

Events: ``Degraded`` (Warning) when Degraded turns True or changes reason;
``Recovered`` (Normal) when it turns False. Then autoscaling (``autoscale.py``) acts
on the same figures.

Invariants: :func:`project` is pure (what was read and the clock in, status and events
out), so every rule is unit-tested; when Postgres cannot be read, the last known
figures stay and only the conditions change; only fields whose value changed are
patched; no DSN or secret ever reaches status, events or logs (database errors carry
the DSN's label without password, see ``jobpool.store.connect``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import kopf

from jobpool.errors import DatabaseUnavailable, PoolNotFound
from jobpool.models import JobState, Pool, PoolPause, Priority
from jobpool.operator import autoscale
from jobpool.operator.context import OperatorConfig, OperatorContext
from jobpool.operator.render import selector
from jobpool.operator.spec import (
    GROUP,
    PLURAL,
    VERSION,
    InvalidSpec,
    JobPoolSpec,
    parse_spec,
    plain,
)
from jobpool.sharding import ordinal_for
from jobpool.store.dlq import dlq_count_pending
from jobpool.store.leases import lease_health
from jobpool.store.pools import pool_get
from jobpool.store.schedules import ScheduleRow, schedule_list
from jobpool.store.stats import (
    db_now,
    dlq_count_recent,
    pool_finished_count,
    pool_oldest_queued_seconds,
)
from jobpool.store.workers import WorkerRow, pool_queue_counts, worker_list

logger = logging.getLogger(__name__)

READY, PROGRESSING, DEGRADED = "Ready", "Progressing", "Degraded"
CONDITION_TYPES = (READY, PROGRESSING, DEGRADED)

DATABASE_UNREACHABLE = "DatabaseUnreachable"
WORKERS_MISSING_HEARTBEATS = "WorkersMissingHeartbeats"
ORDINALS_MISSING = "OrdinalsMissing"
ORPHAN_GRACE_TTLS = 2
"""The workers' default orphan grace period, in lease TTLs (``--orphan-grace``)."""
DLQ_GROWING = "DlqGrowing"
INVALID_SPEC = "InvalidSpec"
POD_ORDINAL = re.compile(r"-(\d+)$")


@dataclass(frozen=True)
class ConditionState:
    status: bool
    reason: str
    message: str = ""


@dataclass(frozen=True)
class EventNote:
    """A Kubernetes Event to post about the JobPool."""

    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class PoolFigures:
    """What Postgres says about one pool, read in one snapshot."""

    now: datetime  # the database's clock, which stamps heartbeats
    queued: Mapping[Priority, int]
    running: int
    dlq: int
    dlq_recent: int
    dlq_window_s: float
    oldest_queued_s: float
    finished_recent: int
    throughput_window_s: float
    workers: Sequence[WorkerRow] = ()
    ring_version: int | None = None
    shards: int | None = None  # the pool's fixed shard count, None before its row exists
    replicas: int | None = None  # the ring in the pool's row
    orphaned_shards: tuple[int, ...] = ()  # free or expired past the grace period
    adopted_shards: tuple[int, ...] = ()  # served by an ordinal that adopted them
    schedules: Sequence[ScheduleRow] = ()  # the pool's periodic schedules
    pause: PoolPause = field(default_factory=PoolPause)  # the pause in the pool's row
    parked: int = 0  # jobs of paused types set aside

    @property
    def queued_total(self) -> int:
        return sum(self.queued.values())


@dataclass(frozen=True)
class Observation:
    """Everything one projection looks at."""

    name: str
    spec: JobPoolSpec
    selector: str
    statefulset: Mapping[str, Any] | None
    figures: PoolFigures | None
    database_error: str | None = None
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    pods: Sequence[Mapping[str, Any]] = ()  # the worker pods, as the API returns them

    @property
    def sts_status(self) -> Mapping[str, Any]:
        return (self.statefulset or {}).get("status") or {}

    @property
    def ready_replicas(self) -> int:
        return int(self.sts_status.get("readyReplicas") or 0)


@dataclass(frozen=True)
class Projection:
    status: dict[str, Any]
    events: tuple[EventNote, ...]


# -- conditions ----------------------------------------------------------------------


def rfc3339(moment: datetime) -> str:
    """``2025-01-31T12:00:00Z``: whole seconds in UTC, as Kubernetes writes times."""
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def find_condition(conditions: Sequence[Mapping[str, Any]], type_: str) -> Mapping[str, Any]:
    return next((c for c in conditions if c.get("type") == type_), {})


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    type_: str,
    state: ConditionState,
    *,
    now: datetime,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """``conditions`` with ``type_`` set; its transition time moves only when it flips."""
    previous = find_condition(conditions, type_)
    status = "True" if state.status else "False"
    flipped = previous.get("status") != status or "lastTransitionTime" not in previous
    entry: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": state.reason,
        "message": state.message,
        "lastTransitionTime": rfc3339(now) if flipped else previous["lastTransitionTime"],
    }
    if generation is not None:
        entry["observedGeneration"] = generation
    others = [dict(c) for c in conditions if c.get("type") != type_]
    order = {name: index for index, name in enumerate(CONDITION_TYPES)}
    return sorted([*others, entry], key=lambda c: order.get(c.get("type", ""), len(order)))


def degraded_transition(
    before: Mapping[str, Any], after: ConditionState, *, subject: str = "pool"
) -> EventNote | None:
    """The Event a change of the Degraded condition deserves, if any."""
    was_degraded = before.get("status") == "True"
    if after.status and (not was_degraded or before.get("reason") != after.reason):
        return EventNote("Warning", "Degraded", f"{after.reason}: {after.message}")
    if was_degraded and not after.status:
        return EventNote("Normal", "Recovered", f"{subject} no longer {before.get('reason')}")
    return None


def shards_problem(name: str, spec: JobPoolSpec, pool_shards: int | None) -> InvalidSpec | None:
    """A spec whose shard count differs from the pool's row (fixed at creation)."""
    if pool_shards is None or pool_shards == spec.shards:
        return None
    return InvalidSpec(
        [("spec.shards", f"is fixed at creation: pool {name!r} has {pool_shards} shards")]
    )


def spec_problem(observed: Observation) -> str | None:
    if observed.figures is None:
        return None
    problem = shards_problem(observed.name, observed.spec, observed.figures.shards)
    return str(problem) if problem is not None else None


def serving_since(pod: Mapping[str, Any]) -> tuple[int, datetime] | None:
    """``(ordinal, Ready since)`` of a pod that is Ready and not terminating, else None.

    A terminating pod still counts in the StatefulSet's ``readyReplicas`` while its
    worker drains and removes its row; a rolling update leaves ready ordinals that are
    not ``0..N-1``: hence pods, not counts.
    """
    metadata = pod.get("metadata") or {}
    match = POD_ORDINAL.search(metadata.get("name") or "")
    if match is None or metadata.get("deletionTimestamp"):
        return None
    conditions = (pod.get("status") or {}).get("conditions") or []
    ready = find_condition(conditions, "Ready")
    if ready.get("status") != "True" or not ready.get("lastTransitionTime"):
        return None
    since = datetime.fromisoformat(ready["lastTransitionTime"].replace("Z", "+00:00"))
    return int(match.group(1)), since


def missing_heartbeats(observed: Observation) -> list[int]:
    """Ordinals of serving pods (Ready, not terminating) whose worker does not heartbeat.

    A worker's row is late when its heartbeat is older than the lease TTL; a pod whose
    ordinal has no fresh row gets the lease TTL from its Ready transition as grace (a
    new pod's first heartbeat, the row its predecessor removed on a clean stop).
    """
    figures = observed.figures
    if figures is None:
        return []
    ttl = timedelta(seconds=observed.spec.lease_ttl_seconds)
    beats = {worker.ordinal: worker.heartbeat_at for worker in figures.workers}
    missing = []
    for ordinal, since in filter(None, map(serving_since, observed.pods)):
        fresh = ordinal in beats and figures.now - beats[ordinal] <= ttl
        if not fresh and observed.now - since > ttl:
            missing.append(ordinal)
    return sorted(missing)


def missing_ordinals(figures: PoolFigures) -> list[int]:
    """Ordinals of the ring whose shards are served by an adopter or by nobody."""
    if not figures.replicas:
        return []
    lacking = (*figures.orphaned_shards, *figures.adopted_shards)
    return sorted({ordinal_for(shard, figures.replicas) for shard in lacking})


def degraded(observed: Observation) -> ConditionState:
    if observed.database_error is not None:
        return ConditionState(True, DATABASE_UNREACHABLE, observed.database_error)
    if problem := spec_problem(observed):
        return ConditionState(True, INVALID_SPEC, problem)
    if missing := missing_heartbeats(observed):
        ordinals = ", ".join(map(str, missing))
        ttl = observed.spec.lease_ttl_seconds
        return ConditionState(
            True,
            WORKERS_MISSING_HEARTBEATS,
            f"ordinals {ordinals} have not heartbeated within the lease TTL ({ttl} s)",
        )
    figures = observed.figures
    if figures is not None and (missing := missing_ordinals(figures)):
        return ConditionState(
            True,
            ORDINALS_MISSING,
            f"ordinals {', '.join(map(str, missing))} are missing: "
            f"{len(figures.adopted_shards)} of their shards are served by other ordinals, "
            f"{len(figures.orphaned_shards)} by none",
        )
    if figures is not None and figures.dlq_recent > 0:
        return ConditionState(
            True,
            DLQ_GROWING,
            f"{figures.dlq_recent} jobs dead-lettered in the last {figures.dlq_window_s:g} s; "
            f"{figures.dlq} entries pending",
        )
    return ConditionState(False, "Healthy", "")


def ready(observed: Observation) -> ConditionState:
    desired, ready_now = observed.spec.replicas, observed.ready_replicas
    if observed.database_error is not None:
        return ConditionState(False, DATABASE_UNREACHABLE, "the pool's database cannot be read")
    if spec_problem(observed):
        return ConditionState(False, INVALID_SPEC, "the spec is invalid")
    if ready_now < desired:
        return ConditionState(False, "WorkersNotReady", f"{ready_now}/{desired} workers ready")
    if missing_heartbeats(observed):
        return ConditionState(False, WORKERS_MISSING_HEARTBEATS, "some workers do not heartbeat")
    return ConditionState(
        True, "WorkersReady", f"{min(ready_now, desired)}/{desired} workers ready"
    )


def progressing(observed: Observation) -> ConditionState:
    if observed.statefulset is None:
        return ConditionState(True, "Creating", "the StatefulSet does not exist yet")
    status = observed.sts_status
    seen = status.get("observedGeneration")
    if seen is None:
        return ConditionState(True, "Pending", "waiting for the StatefulSet controller")
    generation = (observed.statefulset.get("metadata") or {}).get("generation")
    if generation is not None and seen < generation:
        return ConditionState(True, "RollingOut", f"StatefulSet generation {generation} pending")
    desired, current = observed.spec.replicas, int(status.get("replicas") or 0)
    if current != desired:
        return ConditionState(True, "Scaling", f"{current} -> {desired} replicas")
    updated = status.get("updatedReplicas")
    if updated is not None and updated < desired:
        return ConditionState(True, "RollingOut", f"{updated}/{desired} pods updated")
    return ConditionState(False, "Stable", "every replica runs the current template")


# -- the projection --------------------------------------------------------------------


def figures_status(figures: PoolFigures) -> dict[str, Any]:
    """The Postgres half of the status (camelCase, JSON-ready)."""
    per_minute = figures.finished_recent * 60.0 / figures.throughput_window_s
    return {
        "queued": {priority.value: figures.queued.get(priority, 0) for priority in Priority},
        "queuedTotal": figures.queued_total,
        "running": figures.running,
        "dlq": figures.dlq,
        "oldestQueuedSeconds": round(figures.oldest_queued_s, 1),
        "throughputPerMinute": round(per_minute, 1),
        "ordinals": [
            {
                "ordinal": worker.ordinal,
                "shards": len(worker.shards),
                "lastHeartbeat": rfc3339(worker.heartbeat_at),
                "running": worker.running,
                "succeeded": worker.succeeded,
                "failed": worker.failed,
            }
            for worker in figures.workers
        ],
        "shardsWithoutLiveOwner": len(figures.orphaned_shards),
        "adoptedShards": len(figures.adopted_shards),
        "missingOrdinals": missing_ordinals(figures),
        "schedules": [schedule_status(row, figures.now) for row in figures.schedules],
        **({"ringVersion": figures.ring_version} if figures.ring_version is not None else {}),
        "paused": figures.pause.paused,
        "pausedTypes": sorted(figures.pause.types),
        "parked": figures.parked,
    }


def schedule_status(row: ScheduleRow, now: datetime) -> dict[str, Any]:
    """One periodic schedule: its cron and zone, the last tick enqueued and the next."""
    upcoming = row.next_tick(now)
    return {
        "name": row.schedule.name,
        "cron": row.schedule.cron,
        "timezone": row.schedule.timezone,
        "source": row.source.value,
        **({"lastTick": rfc3339(row.last_tick)} if row.last_tick is not None else {}),
        **({"nextTick": rfc3339(upcoming)} if upcoming is not None else {}),
    }


def project(observed: Observation, current: Mapping[str, Any]) -> Projection:
    """The status the JobPool should show, and the Events its changes deserve."""
    status: dict[str, Any] = {
        "replicas": int(observed.sts_status.get("replicas") or 0),
        "readyReplicas": observed.ready_replicas,
        "selector": observed.selector,
    }
    if observed.figures is not None:
        status.update(figures_status(observed.figures))
    conditions: list[dict[str, Any]] = list(current.get("conditions") or [])
    degraded_now = degraded(observed)
    for type_, state in (
        (READY, ready(observed)),
        (PROGRESSING, progressing(observed)),
        (DEGRADED, degraded_now),
    ):
        conditions = set_condition(conditions, type_, state, now=observed.now)
    status["conditions"] = conditions
    note = degraded_transition(
        find_condition(current.get("conditions") or [], DEGRADED), degraded_now
    )
    return Projection(status=status, events=(note,) if note else ())


def status_changes(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``desired`` whose value differs from ``current`` (what to patch)."""
    return {key: value for key, value in desired.items() if plain(current.get(key)) != value}


# -- reading Postgres ------------------------------------------------------------------


async def read_figures(context: OperatorContext, pool: str, *, lease_ttl_s: float) -> PoolFigures:
    """One consistent, read-only snapshot of the pool's figures."""
    config: OperatorConfig = context.config
    async with (
        context.db.connection() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        counts = await pool_queue_counts(conn, pool)
        try:
            row: Pool | None = await pool_get(conn, pool)
        except PoolNotFound:
            row = None
        health = await lease_health(conn, pool, grace_s=ORPHAN_GRACE_TTLS * lease_ttl_s)
        return PoolFigures(
            now=await db_now(conn),
            queued=counts[JobState.QUEUED],
            running=sum(counts[JobState.RUNNING].values()),
            dlq=await dlq_count_pending(conn, pool),
            dlq_recent=await dlq_count_recent(conn, pool, window_s=config.dlq_growth_window_s),
            dlq_window_s=config.dlq_growth_window_s,
            oldest_queued_s=await pool_oldest_queued_seconds(conn, pool),
            finished_recent=await pool_finished_count(
                conn, pool, window_s=config.throughput_window_s
            ),
            throughput_window_s=config.throughput_window_s,
            workers=tuple(await worker_list(conn, pool)),
            ring_version=row.ring_version if row is not None else None,
            shards=row.shards if row is not None else None,
            replicas=row.replicas if row is not None else None,
            orphaned_shards=tuple(health.orphaned),
            adopted_shards=tuple(health.adopted),
            schedules=tuple(await schedule_list(conn, pool)),
            pause=row.pause if row is not None else PoolPause(),
            parked=sum(counts[JobState.PAUSED].values()),
        )


async def observe(
    context: OperatorContext, name: str, namespace: str, spec: JobPoolSpec
) -> Observation:
    statefulset = await context.kube.read("StatefulSet", name, namespace)
    pods = await context.kube.list("Pod", namespace, selector=selector(name))
    seen: dict[str, Any] = {"name": name, "spec": spec, "selector": selector(name)}
    seen.update(statefulset=statefulset, pods=pods)
    try:
        figures = await read_figures(context, name, lease_ttl_s=spec.lease_ttl_seconds)
    except DatabaseUnavailable as exc:
        return Observation(**seen, figures=None, database_error=str(exc))
    except asyncpg.PostgresError as exc:
        error = f"database error ({context.db.label}): {type(exc).__name__}: {exc}"
        return Observation(**seen, figures=None, database_error=error)
    return Observation(**seen, figures=figures)


# -- the kopf timer --------------------------------------------------------------------


async def status_timer(
    body: kopf.Body,
    name: str,
    namespace: str,
    patch: kopf.Patch,
    memo: OperatorContext,
    **_: Any,
) -> None:
    """Project Postgres and the StatefulSet into ``status``; then autoscale."""
    try:
        spec = parse_spec(body.get("spec"))
    except InvalidSpec:
        return  # the reconcile handler reports it (Degraded/InvalidSpec); nothing to read
    observed = await observe(memo, name, namespace, spec)
    current = body.get("status") or {}
    projection = project(observed, current)
    for key, value in status_changes(current, projection.status).items():
        patch.status[key] = value
    for note in projection.events:
        logger.info("jobpool %s/%s: %s: %s", namespace, name, note.reason, note.message)
        kopf.event(body, type=note.type, reason=note.reason, message=note.message)
    if observed.figures is not None and spec_problem(observed) is None:
        autoscale.autoscale(
            body, patch, spec, queued=observed.figures.queued_total, now=observed.now
        )


def register(registry: kopf.OperatorRegistry, *, interval_s: float) -> None:
    """Add the status timer of every JobPool to ``registry``."""
    kopf.timer(
        GROUP,
        VERSION,
        PLURAL,
        id="status",
        interval=interval_s,
        backoff=interval_s,
        registry=registry,
    )(status_timer)
