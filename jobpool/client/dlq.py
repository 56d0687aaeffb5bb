"""The client's dead-letter queue API: ``client.dlq.list/get/replay/purge/discard``."""

from __future__ import annotations

from datetime import timedelta

from jobpool.client.session import Session
from jobpool.client.validation import Item, SubmitOptions
from jobpool.models import DlqEntry, DlqId, DlqPage, Job
from jobpool.store import dlq, jobs


class DlqClient:
    """Dead-letter entries of the client's pool and tenant."""

    def __init__(self, session: Session) -> None:
        self._session = session

    async def list(
        self, *, type: str | None = None, limit: int = 100, cursor: str | None = None
    ) -> DlqPage:
        """A page of unreplayed entries, oldest first; pass ``next_cursor`` for the next."""
        async with self._session.statements() as conn:
            return await dlq.dlq_list(
                conn,
                self._session.pool_name,
                self._session.tenant,
                type=type,
                limit=limit,
                cursor=cursor,
            )

    async def get(self, entry_id: DlqId | int) -> DlqEntry:
        async with self._session.statements() as conn:
            return await dlq.dlq_get(
                conn, self._session.pool_name, self._session.tenant, DlqId(entry_id)
            )

    async def replay(self, entry_id: DlqId | int) -> Job:
        """Re-enqueue the entry's job as a new job linked to it; mark it replayed.

        Both happen in one transaction. Raises ``DlqEntryAlreadyReplayed`` the second time.
        """
        session = self._session
        async with session.statements() as conn, conn.transaction():
            entry = await dlq.dlq_mark_replayed(
                conn, session.pool_name, session.tenant, DlqId(entry_id)
            )
            options = SubmitOptions(
                priority=entry.priority,
                key=entry.key,
                max_attempts=entry.max_attempts,
                duration=entry.duration,
                request_id=entry.request_id,
                user_id=entry.user_id,
                replay_of=entry.id,
            )
            # Item keeps a list payload one job instead of a batch.
            new_jobs, _ = session.build(entry.type, Item(payload=entry.payload), options)
            [job] = await jobs.job_insert_many(conn, session.pool_name, session.tenant, new_jobs)
            return job

    async def purge(self, *, older_than: timedelta) -> int:
        """Delete this tenant's replayed entries older than ``older_than``; returns how many."""
        async with self._session.statements() as conn:
            return await dlq.dlq_purge(
                conn, self._session.pool_name, self._session.tenant, older_than=older_than
            )

    async def discard(self, entry_id: DlqId | int) -> DlqEntry:
        """Delete one entry, replayed or not, without running it again; returns it.

        Raises ``DlqEntryNotFound`` if the tenant has no such entry.
        """
        async with self._session.statements() as conn:
            return await dlq.dlq_discard(
                conn, self._session.pool_name, self._session.tenant, DlqId(entry_id)
            )

    async def discard_pending(
        self, *, type: str | None = None, older_than: timedelta = timedelta(0)
    ) -> int:
        """Delete this tenant's pending entries (of ``type``, if given) that went to the
        DLQ more than ``older_than`` ago; returns how many."""
        async with self._session.statements() as conn:
            return await dlq.dlq_discard_pending(
                conn,
                self._session.pool_name,
                self._session.tenant,
                type=type,
                older_than=older_than,
            )
