"""Retention: finished jobs after ``spec.historyRetentionDays``, replayed dead letters
after ``spec.dlqRetentionDays``.

A kopf timer per JobPool (hourly by default):

* writes the spec's history retention into the pool's row, then runs one pass of
  history maintenance (``jobpool.store.history``): partitions of the coming days are
  created, days past the longest retention of any pool are dropped whole, and the rows
  of pools keeping less are deleted. The pass is shared by every pool (one table), so
  any JobPool's timer serves them all; it is cheap when nothing is due. Its outcome
  goes to ``status.history`` and, when history was dropped, to a ``HistoryDropped``
  Event.
* purges the pool's replayed dead-letter entries past their retention (an unreplayed
  entry is never purged: it is work someone still has to look at) and posts a
  ``DlqPurged`` Event when it removed anything.

While the operator is down nobody creates partitions: jobs finishing on a day without
one land in the default partition, and the next pass moves them into their day's.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf

from jobpool.errors import DatabaseUnavailable, PoolNotFound
from jobpool.operator.context import OperatorContext
from jobpool.operator.spec import (
    GROUP,
    PLURAL,
    VERSION,
    HistoryStatus,
    InvalidSpec,
    JobPoolSpec,
    parse_spec,
)
from jobpool.store.dlq import dlq_purge
from jobpool.store.history import (
    HistoryPass,
    history_maintain,
    history_partition_list,
    history_retention_get,
    history_retention_set,
)

logger = logging.getLogger(__name__)


async def purge_replayed(context: OperatorContext, pool: str, spec: JobPoolSpec) -> int:
    """Delete the pool's replayed entries older than its retention; returns how many."""
    async with context.db.connection() as conn:
        return await dlq_purge(conn, pool, None, older_than=timedelta(days=spec.dlq_retention_days))


async def keep_history(
    context: OperatorContext, pool: str, spec: JobPoolSpec
) -> tuple[HistoryPass, HistoryStatus]:
    """Apply the spec's history retention to the pool and run one maintenance pass."""
    async with context.db.connection() as conn:
        await history_retention_set(conn, pool, timedelta(days=spec.history_retention_days))
        done = await history_maintain(conn)
        kept = await history_retention_get(conn, pool)
        partitions = await history_partition_list(conn)
    status = HistoryStatus(
        retention_days=round(kept.retention / timedelta(days=1)),  # what the pool's row says
        dropped_before=kept.pruned_before,
        partitions=len(partitions),
        maintained_at=datetime.now(UTC),
    )
    return done, status


def history_message(done: HistoryPass, retention_days: int) -> str | None:
    """The ``HistoryDropped`` Event's message, when the pass dropped anything."""
    if not done.dropped and not done.deleted:
        return None
    return (
        f"dropped {done.dropped} daily history partition(s) past the longest retention "
        f"of any pool and {done.deleted} finished job(s) of pools keeping less "
        f"(this pool keeps {retention_days} days)"
    )


async def retention_timer(
    body: kopf.Body, name: str, patch: kopf.Patch, memo: OperatorContext, **_: Any
) -> None:
    try:
        spec = parse_spec(body.get("spec"))
        done, history = await keep_history(memo, name, spec)
        purged = await purge_replayed(memo, name, spec)
    except (InvalidSpec, DatabaseUnavailable, PoolNotFound):
        return  # reported by the reconcile handler and the status timer
    patch.status["history"] = history.model_dump(by_alias=True, mode="json")
    if message := history_message(done, spec.history_retention_days):
        logger.info("jobpool %s: %s", name, message)
        kopf.event(body, type="Normal", reason="HistoryDropped", message=message)
    if done.skipped:
        logger.warning(
            "jobpool %s: %d history partition(s) past retention were locked by long "
            "queries; the next pass drops them",
            name,
            done.skipped,
        )
    if purged:
        message = f"purged {purged} replayed dead-letter entries older than "
        message += f"{spec.dlq_retention_days} days"
        logger.info("jobpool %s: %s", name, message)
        kopf.event(body, type="Normal", reason="DlqPurged", message=message)


def register(registry: kopf.OperatorRegistry, *, interval_s: float) -> None:
    """Add the retention timer of every JobPool to ``registry``."""
    kopf.timer(GROUP, VERSION, PLURAL, id="retention", interval=interval_s, registry=registry)(
        retention_timer
    )
