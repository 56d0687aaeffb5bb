"""The async client: submit jobs, follow them, cancel them, manage the DLQ.

A ``Client`` is bound to one pool and one tenant. Its connections carry the tenant as
the ``jobpool.tenant`` session setting, so row-level security applies to every
statement at no extra round trip; ``enqueue(conn, ...)`` sets it for the caller's
transaction instead. A single submit is one statement: insert and NOTIFY together.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, Self, overload

import asyncpg

from jobpool.client.dlq import DlqClient
from jobpool.client.validation import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_PAYLOAD_BYTES,
    MAX_PAYLOAD_BYTES_LIMIT,
    Item,
    SubmitOptions,
    as_items,
    build_jobs,
)
from jobpool.errors import (
    BatchTooLarge,
    InvalidInput,
    JobCancelled,
    JobFailed,
    JobNotFound,
    JobWaitTimeout,
)
from jobpool.models import (
    JSON,
    CancelOutcome,
    Duration,
    Job,
    JobId,
    JobState,
    JobStatus,
    NewJob,
    Pool,
    Priority,
    Progress,
    check_pool_name,
    check_tenant,
)
from jobpool.store import channels, connect, jobs, pools
from jobpool.store.listener import EventListener
from jobpool.tracing import current_traceparent, tracer


class Client:
    """Async client of one pool for one tenant: ``async with Client(dsn, pool=…, tenant=…)``."""

    def __init__(
        self,
        dsn: str,
        *,
        pool: str,
        tenant: str,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_connections: int = 10,
    ) -> None:
        self.dsn = dsn
        self.pool_name = check_pool_name(pool)
        self.tenant = check_tenant(tenant)
        if not 1 <= max_payload_bytes <= MAX_PAYLOAD_BYTES_LIMIT:
            raise InvalidInput(
                f"max_payload_bytes must be from 1 to {MAX_PAYLOAD_BYTES_LIMIT}, "
                f"got {max_payload_bytes}"
            )
        self.max_payload_bytes = max_payload_bytes
        self.max_batch = max_batch
        self._max_connections = max_connections
        self._conns: asyncpg.Pool | None = None
        self._pool: Pool | None = None
        self._listener = EventListener(self._connect_one, channels.events_channel(pool))
        self.dlq = DlqClient(self)

    # -- lifecycle ---------------------------------------------------------------

    @property
    def _server_settings(self) -> dict[str, str]:
        return {"jobpool.tenant": self.tenant, "application_name": "jobpool-client"}

    async def connect(self) -> Self:
        """Open the connection pool and read the pool's shard count."""
        if self._conns is None:
            self._conns = await connect.create_pool(
                self.dsn,
                min_size=1,
                max_size=self._max_connections,
                server_settings=self._server_settings,
                reset=connect.keep_session,
            )
        async with self._conns.acquire() as conn:
            self._pool = await pools.pool_get(conn, self.pool_name)
        return self

    async def close(self) -> None:
        await self._listener.close()
        if self._conns is not None:
            conns, self._conns = self._conns, None
            await conns.close()

    async def __aenter__(self) -> Self:
        try:
            return await self.connect()
        except BaseException:
            await self.close()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _connect_one(self) -> asyncpg.Connection:
        return await connect.connect(self.dsn, server_settings=self._server_settings)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection bound to this client's tenant, fully reset after use."""
        async with self.statements() as conn:
            try:
                yield conn
            finally:
                await conn.reset()

    @asynccontextmanager
    async def statements(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for the client's own statements, which leave no session
        state behind: released without the reset round trip."""
        if self._conns is None:
            raise RuntimeError("the client is not connected: use `async with Client(...)`")
        async with self._conns.acquire() as conn:
            yield conn

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise RuntimeError("the client is not connected: use `async with Client(...)`")
        return self._pool

    # -- submission --------------------------------------------------------------

    def build(
        self, job_type: str, payload: Any, options: SubmitOptions
    ) -> tuple[list[NewJob], bool]:
        """Validate a submit call into jobs; nothing is written. Returns (jobs, is_batch)."""
        items, is_batch = as_items(payload)
        if len(items) > self.max_batch:
            raise BatchTooLarge(f"batch of {len(items)} jobs is over the limit of {self.max_batch}")
        new_jobs = build_jobs(
            job_type,
            items,
            options,
            shards=self.pool.shards,
            max_payload_bytes=self.max_payload_bytes,
            traceparent=current_traceparent(),
        )
        return new_jobs, is_batch

    @overload
    async def submit(self, job_type: str, payload: list[Any], **options: Any) -> list[Job]: ...
    @overload
    async def submit(self, job_type: str, payload: Any, **options: Any) -> Job: ...

    async def submit(
        self,
        job_type: str,
        payload: Any,
        *,
        priority: str | Priority = Priority.NORMAL,
        dedupe_key: str | None = None,
        key: str | None = None,
        delay: timedelta | float | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
        duration: str | Duration = Duration.SHORT,
        request_id: str | None = None,
        user_id: str | None = None,
    ) -> Job | list[Job]:
        """Submit one job, or a batch when ``payload`` is a list (one round trip).

        A batch returns its jobs in order; items may be ``Item(payload, …)`` to carry
        their own dedupe key, key, priority or schedule. A dedupe key held by an
        unfinished job returns that job (``duplicate=True``) instead of a new one.
        """
        options = SubmitOptions(
            priority=priority,
            dedupe_key=dedupe_key,
            key=key,
            delay=delay,
            run_at=run_at,
            max_attempts=max_attempts,
            duration=duration,
            request_id=request_id,
            user_id=user_id,
        )
        return await self._submit(job_type, payload, options)

    async def _submit(self, job_type: str, payload: Any, options: SubmitOptions) -> Job | list[Job]:
        return await self._traced(job_type, payload, options, self._insert_own)

    async def enqueue(
        self, conn: asyncpg.Connection, job_type: str, payload: Any, **options: Any
    ) -> Job | list[Job]:
        """``submit`` inside the caller's open transaction on ``conn`` (transactional enqueue).

        The jobs exist only if that transaction commits; workers are woken at commit.
        """
        if not conn.is_in_transaction():
            raise RuntimeError("enqueue() needs a connection inside a transaction")

        async def insert_in_callers_transaction(new_jobs: list[NewJob]) -> list[Job]:
            await jobs.tenant_set_local(conn, self.tenant)
            return await jobs.job_insert_many(conn, self.pool_name, self.tenant, new_jobs)

        return await self._traced(
            job_type, payload, SubmitOptions(**options), insert_in_callers_transaction
        )

    async def _traced(
        self,
        job_type: str,
        payload: Any,
        options: SubmitOptions,
        insert: Callable[[list[NewJob]], Awaitable[list[Job]]],
    ) -> Job | list[Job]:
        """Validate, then insert, in a ``jobpool.submit`` span (whose traceparent the jobs
        carry); one job or the batch, as submitted."""
        with tracer.start_as_current_span("jobpool.submit") as span:
            new_jobs, is_batch = self.build(job_type, payload, options)
            span.set_attributes(self._span_attributes(job_type, new_jobs))
            inserted = await insert(new_jobs)
            return inserted if is_batch else inserted[0]

    async def _insert_own(self, new_jobs: list[NewJob]) -> list[Job]:
        """On a connection of our own: one statement, or a transaction when dedupe keys
        may need a second look-up (so the batch stays atomic)."""
        async with self.statements() as conn:
            if not any(job.dedupe_key for job in new_jobs):
                return await jobs.job_insert_many(conn, self.pool_name, self.tenant, new_jobs)
            async with conn.transaction():
                return await jobs.job_insert_many(conn, self.pool_name, self.tenant, new_jobs)

    def _span_attributes(self, job_type: str, new_jobs: list[NewJob]) -> dict[str, Any]:
        first = new_jobs[0] if new_jobs else None
        attributes: dict[str, Any] = {
            "jobpool.pool": self.pool_name,
            "jobpool.tenant": self.tenant,
            "jobpool.job.type": job_type,
            "jobpool.batch_size": len(new_jobs),
        }
        if first is not None:
            attributes |= {
                "jobpool.job.id": str(first.id),
                "jobpool.job.priority": first.priority.value,
                "jobpool.job.shard": first.shard,
            }
        return attributes

    # -- following and cancelling ------------------------------------------------

    async def status(self, job_id: JobId | str) -> JobStatus:
        async with self.statements() as conn:
            return await jobs.job_status(conn, self.pool_name, self.tenant, _job_id(job_id))

    async def cancel(self, job_id: JobId | str) -> CancelOutcome:
        """Cancel a queued job now, or signal the worker running it.

        Raises ``JobAlreadyFinished`` for an ended job, ``JobNotFound`` for an unknown one.
        """
        async with self.statements() as conn, conn.transaction():
            return await jobs.job_cancel(conn, self.pool_name, self.tenant, _job_id(job_id))

    async def result(self, job_id: JobId | str, *, timeout: float | None = None) -> JSON:
        """Wait for the job to end and return its result (LISTEN, no polling).

        Raises ``JobFailed`` if it ended dead, ``JobCancelled`` if it was cancelled and
        ``JobWaitTimeout`` (a ``TimeoutError`` too) if it is still unfinished after
        ``timeout`` seconds, naming the job, the wait and the job's state.
        """
        jid = _job_id(job_id)
        try:
            status = await self._wait(jid, lambda s: s.state.finished, timeout)
        except TimeoutError:
            if timeout is None:
                raise
            state = (await self.status(jid)).state.value
            raise JobWaitTimeout(
                f"timed out after {timeout:g} s: job {jid} is still {state}"
            ) from None
        if status.state is JobState.DEAD:
            last = status.last_error
            reason = f"{last.error_type}: {last.message}" if last else "no error recorded"
            raise JobFailed(f"job {status.id} ended in the dead-letter queue ({reason})")
        if status.state is JobState.CANCELLED:
            raise JobCancelled(f"job {status.id} was cancelled")
        return status.result

    async def progress(self, job_id: JobId | str) -> AsyncIterator[Progress]:
        """Yield each new progress report of the job until it ends."""
        jid = _job_id(job_id)
        last: Progress | None = None
        async with self._listener.subscribe() as events:
            while True:
                status = await self.status(jid)
                if status.progress is not None and status.progress != last:
                    last = status.progress
                    yield last
                if status.state.finished:
                    return
                await _next_event(events, jid)

    async def _wait(
        self, job_id: JobId, done: Callable[[JobStatus], bool], timeout: float | None
    ) -> JobStatus:
        async with self._listener.subscribe() as events, asyncio.timeout(timeout):
            while not done(status := await self.status(job_id)):
                await _next_event(events, job_id)
            return status


async def _next_event(events: asyncio.Queue[str], job_id: JobId) -> None:
    """Wait until a notification may concern ``job_id``."""
    wanted = {str(job_id), channels.ALL}
    while await events.get() not in wanted:
        pass


def _job_id(value: JobId | str) -> JobId:
    try:
        return JobId(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))
    except ValueError:
        raise JobNotFound(f"{value!r} is not a job id (a UUID)") from None


__all__ = ["Client", "Item"]
