"""Autoscaling a JobPool on its backlog.

With ``spec.autoscaling`` set, every status tick (``status.py``, which has just read
the queue depth) asks :func:`decide_replicas` for the pool's size:

    desired = clamp(ceil(queued / targetQueuedPerReplica), minReplicas, maxReplicas)

where ``queued`` counts due jobs only: delayed jobs and retries backing off need no
worker yet, so a pool full of them is not scaled up.

and changes nothing while the last change is younger than ``cooldownSeconds`` (in
either direction: a backlog that drains in bursts must not make the pool flap).

The operator acts by patching the JobPool's own ``spec.replicas`` — the field the
scale subresource maps to — so the one reconcile path (``handlers.py``) resizes the
StatefulSet and the ring, exactly as for a ``kubectl scale``. The time of the change
goes into the annotation :data:`AUTOSCALED_AT_ANNOTATION`, so the cooldown survives an
operator restart or a hand-over to a peer; an ``Autoscaled`` Event says why.

Invariant: :func:`decide_replicas` is pure — counts, bounds and clock in, a decision
or ``None`` out — and is unit-tested on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import kopf

from jobpool.operator.spec import JobPoolSpec

AUTOSCALED_AT_ANNOTATION = "jobpool.dev/autoscaled-at"


@dataclass(frozen=True)
class ScaleDecision:
    replicas: int
    reason: str


def desired_replicas(
    queued: int, *, target_queued_per_replica: int, min_replicas: int, max_replicas: int
) -> int:
    """``clamp(ceil(queued / target), min, max)``."""
    if target_queued_per_replica < 1:
        raise ValueError(f"target_queued_per_replica must be >= 1, got {target_queued_per_replica}")
    wanted = math.ceil(max(queued, 0) / target_queued_per_replica)
    return max(min_replicas, min(max_replicas, wanted))


def decide_replicas(
    *,
    current: int,
    queued: int,
    target_queued_per_replica: int,
    min_replicas: int,
    max_replicas: int,
    cooldown_s: float,
    last_change_at: datetime | None,
    now: datetime,
) -> ScaleDecision | None:
    """The new replica count and why, or ``None`` to leave the pool as it is."""
    desired = desired_replicas(
        queued,
        target_queued_per_replica=target_queued_per_replica,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
    )
    if desired == current:
        return None
    if last_change_at is not None and now - last_change_at < timedelta(seconds=cooldown_s):
        return None
    return ScaleDecision(
        replicas=desired,
        reason=(
            f"{queued} queued jobs at {target_queued_per_replica} per replica: "
            f"{current} -> {desired} replicas (bounds {min_replicas}..{max_replicas})"
        ),
    )


def parse_time(text: object) -> datetime | None:
    """An RFC 3339 time from an annotation; ``None`` when absent or unreadable."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def autoscale(
    body: kopf.Body, patch: kopf.Patch, spec: JobPoolSpec, *, queued: int, now: datetime
) -> ScaleDecision | None:
    """Decide, and if the pool must change, patch ``spec.replicas`` and post an Event."""
    policy = spec.autoscaling
    if policy is None:
        return None
    annotations = body.get("metadata", {}).get("annotations") or {}
    decision = decide_replicas(
        current=spec.replicas,
        queued=queued,
        target_queued_per_replica=policy.target_queued_per_replica,
        min_replicas=policy.min_replicas,
        max_replicas=policy.max_replicas,
        cooldown_s=policy.cooldown_seconds,
        last_change_at=parse_time(annotations.get(AUTOSCALED_AT_ANNOTATION)),
        now=now,
    )
    if decision is None:
        return None
    patch.spec["replicas"] = decision.replicas
    patch.metadata.annotations[AUTOSCALED_AT_ANNOTATION] = now.astimezone(UTC).isoformat()
    kopf.event(body, type="Normal", reason="Autoscaled", message=decision.reason)
    return decision
