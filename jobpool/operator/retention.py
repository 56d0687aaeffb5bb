"""DLQ retention: replayed dead-letter entries are purged after ``spec.dlqRetentionDays``.

An unreplayed entry is never purged: it is work someone still has to look at. A kopf
timer per JobPool (hourly by default) runs ``jobpool_dlq_purge`` for every tenant of
the pool and posts an Event when it removed anything.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import kopf

from jobpool.errors import DatabaseUnavailable
from jobpool.operator.context import OperatorContext
from jobpool.operator.spec import GROUP, PLURAL, VERSION, InvalidSpec, JobPoolSpec, parse_spec
from jobpool.store.dlq import dlq_purge

logger = logging.getLogger(__name__)


async def purge_replayed(context: OperatorContext, pool: str, spec: JobPoolSpec) -> int:
    """Delete the pool's replayed entries older than its retention; returns how many."""
    async with context.db.connection() as conn:
        return await dlq_purge(conn, pool, None, older_than=timedelta(days=spec.dlq_retention_days))


async def retention_timer(body: kopf.Body, name: str, memo: OperatorContext, **_: Any) -> None:
    try:
        spec = parse_spec(body.get("spec"))
        purged = await purge_replayed(memo, name, spec)
    except (InvalidSpec, DatabaseUnavailable):
        return  # reported by the reconcile handler and the status timer
    if purged:
        message = f"purged {purged} replayed dead-letter entries older than "
        message += f"{spec.dlq_retention_days} days"
        logger.info("jobpool %s: %s", name, message)
        kopf.event(body, type="Normal", reason="DlqPurged", message=message)


def register(registry: kopf.OperatorRegistry, *, interval_s: float) -> None:
    """Add the DLQ retention timer of every JobPool to ``registry``."""
    kopf.timer(GROUP, VERSION, PLURAL, id="dlq-retention", interval=interval_s, registry=registry)(
        retention_timer
    )
