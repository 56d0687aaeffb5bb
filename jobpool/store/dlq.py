"""The dead-letter queue: paging, replay, purge and discard of dead jobs' entries.

Pending entries are those not yet replayed; they are paged by id (a keyset cursor, so
a page costs the same at any depth) through a partial index that holds only them.
Purge deletes replayed entries by age; discard deletes one entry, or pending entries by
type and age: work nobody will replay. Both delete the caller's tenant's rows only
(the statements name the tenant, and row-level security enforces it).
"""

from __future__ import annotations

from datetime import timedelta

from asyncpg import Connection

from jobpool.errors import DlqEntryAlreadyReplayed, DlqEntryNotFound, InvalidInput
from jobpool.models import DlqEntry, DlqId, DlqPage, check_job_type
from jobpool.store import rows
from jobpool.store.queries import QUERIES

_MAX_BIGINT = 2**63 - 1
MAX_PAGE = 1000
MAX_OLDER_THAN = timedelta(days=36_500)
"""A purge reaches back at most a hundred years: far older is no entry, and past it
the database's clock arithmetic would overflow."""


def _decode_cursor(cursor: str | None) -> int:
    if cursor is None:
        return 0
    try:
        after = int(cursor)
    except (TypeError, ValueError):
        after = -1
    if not 0 <= after <= _MAX_BIGINT:
        raise InvalidInput(f"invalid DLQ cursor {cursor!r}")
    return after


def _entry_id(entry_id: object, pool: str, tenant: str) -> DlqId:
    """A DLQ id as stored (a positive bigint); anything else cannot name an entry."""
    if isinstance(entry_id, int) and not isinstance(entry_id, bool) and 0 < entry_id <= _MAX_BIGINT:
        return DlqId(entry_id)
    raise DlqEntryNotFound(f"no DLQ entry {entry_id!r} in pool {pool!r} for tenant {tenant!r}")


async def dlq_list(
    conn: Connection,
    pool: str,
    tenant: str,
    *,
    type: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> DlqPage:
    """One page of the tenant's unreplayed entries, oldest first."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be an integer from 1 to {MAX_PAGE}, got {limit!r}")
    after = _decode_cursor(cursor)
    if type is not None:
        check_job_type(type)
    if type is None:
        found = await conn.fetch(
            *QUERIES.bind("dlq_list", pool=pool, tenant=tenant, after=after, limit=limit + 1)
        )
    else:
        found = await conn.fetch(
            *QUERIES.bind(
                "dlq_list_by_type",
                pool=pool,
                tenant=tenant,
                after=after,
                type=type,
                limit=limit + 1,
            )
        )
    entries = tuple(rows.dlq_entry(row) for row in found[:limit])
    next_cursor = str(entries[-1].id) if len(found) > limit else None
    return DlqPage(entries=entries, next_cursor=next_cursor)


async def dlq_get(conn: Connection, pool: str, tenant: str, entry_id: DlqId) -> DlqEntry:
    row = await conn.fetchrow(
        *QUERIES.bind("dlq_get", id=_entry_id(entry_id, pool, tenant), pool=pool, tenant=tenant)
    )
    if row is None:
        raise DlqEntryNotFound(f"no DLQ entry {entry_id} in pool {pool!r} for tenant {tenant!r}")
    return rows.dlq_entry(row)


async def dlq_mark_replayed(conn: Connection, pool: str, tenant: str, entry_id: DlqId) -> DlqEntry:
    """Mark an entry replayed (the caller enqueues the new job in the same transaction)."""
    entry_id = _entry_id(entry_id, pool, tenant)
    row = await conn.fetchrow(
        *QUERIES.bind("dlq_mark_replayed", id=entry_id, pool=pool, tenant=tenant)
    )
    if row is None:
        entry = await dlq_get(conn, pool, tenant, entry_id)
        raise DlqEntryAlreadyReplayed(
            f"DLQ entry {entry.id} was replayed at {entry.replayed_at:%Y-%m-%d %H:%M:%S %Z}"
        )
    return rows.dlq_entry(row)


def _check_older_than(older_than: object) -> timedelta:
    if not isinstance(older_than, timedelta) or not timedelta(0) <= older_than <= MAX_OLDER_THAN:
        raise InvalidInput(
            f"older_than must be a timedelta from 0 to {MAX_OLDER_THAN.days} days, "
            f"got {older_than!r}"
        )
    return older_than


async def dlq_purge(
    conn: Connection, pool: str, tenant: str | None, *, older_than: timedelta
) -> int:
    """Delete replayed entries older than ``older_than``; ``tenant=None`` means all."""
    age = _check_older_than(older_than)
    return int(
        await conn.fetchval(*QUERIES.bind("dlq_purge", pool=pool, older_than=age, tenant=tenant))
    )


async def dlq_discard(conn: Connection, pool: str, tenant: str, entry_id: DlqId) -> DlqEntry:
    """Delete one entry, replayed or not; returns it as it was."""
    row = await conn.fetchrow(
        *QUERIES.bind("dlq_discard", id=_entry_id(entry_id, pool, tenant), pool=pool, tenant=tenant)
    )
    if row is None:
        raise DlqEntryNotFound(f"no DLQ entry {entry_id} in pool {pool!r} for tenant {tenant!r}")
    return rows.dlq_entry(row)


async def dlq_discard_pending(
    conn: Connection,
    pool: str,
    tenant: str,
    *,
    type: str | None = None,
    older_than: timedelta = timedelta(0),
) -> int:
    """Delete the tenant's pending entries (of ``type``) older than ``older_than``;
    returns how many went."""
    age = _check_older_than(older_than)
    if type is None:
        return int(
            await conn.fetchval(
                *QUERIES.bind("dlq_discard_pending", pool=pool, tenant=tenant, older_than=age)
            )
        )
    check_job_type(type)
    return int(
        await conn.fetchval(
            *QUERIES.bind(
                "dlq_discard_pending_by_type", pool=pool, tenant=tenant, older_than=age, type=type
            )
        )
    )


async def dlq_count_pending(conn: Connection, pool: str) -> int:
    return int(await conn.fetchval(*QUERIES.bind("dlq_count_pending", pool=pool)))
