"""``SyncClient``: the async client driven from synchronous code (Django, Flask, scripts).

One private event loop runs in a daemon thread; each call is submitted to it and
awaited. There is no second implementation: every method delegates to ``Client``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from datetime import timedelta
from typing import Any, Self, TypeVar

from jobpool.client.client import Client
from jobpool.models import (
    JSON,
    CancelOutcome,
    DlqEntry,
    DlqId,
    DlqPage,
    Job,
    JobId,
    JobStatus,
    Progress,
)

T = TypeVar("T")


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, daemon=True, name="jobpool-sync-client"
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class SyncDlqClient:
    """Blocking ``client.dlq``."""

    def __init__(self, client: SyncClient) -> None:
        self._sync = client

    def list(
        self, *, type: str | None = None, limit: int = 100, cursor: str | None = None
    ) -> DlqPage:
        return self._sync._run(self._sync.aio.dlq.list(type=type, limit=limit, cursor=cursor))

    def get(self, entry_id: DlqId | int) -> DlqEntry:
        return self._sync._run(self._sync.aio.dlq.get(entry_id))

    def replay(self, entry_id: DlqId | int) -> Job:
        return self._sync._run(self._sync.aio.dlq.replay(entry_id))

    def purge(self, *, older_than: timedelta) -> int:
        return self._sync._run(self._sync.aio.dlq.purge(older_than=older_than))

    def discard(self, entry_id: DlqId | int) -> DlqEntry:
        return self._sync._run(self._sync.aio.dlq.discard(entry_id))

    def discard_pending(
        self, *, type: str | None = None, older_than: timedelta = timedelta(0)
    ) -> int:
        return self._sync._run(self._sync.aio.dlq.discard_pending(type=type, older_than=older_than))


class SyncClient:
    """``with SyncClient(dsn, pool=…, tenant=…) as jp: jp.submit(...)``."""

    def __init__(self, dsn: str, *, pool: str, tenant: str, **settings: Any) -> None:
        self.aio = Client(dsn, pool=pool, tenant=tenant, **settings)
        self.dlq = SyncDlqClient(self)
        self._loop: _LoopThread | None = None

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the client is not connected: use `with SyncClient(...)`")
        return self._loop.run(coro)

    def connect(self) -> Self:
        self._loop = _LoopThread()
        try:
            self._run(self.aio.connect())
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._loop is not None:
            try:
                self._loop.run(self.aio.close())
            finally:
                self._loop.stop()
                self._loop = None

    def __enter__(self) -> Self:
        return self.connect()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def submit(self, job_type: str, payload: Any, **options: Any) -> Job | list[Job]:
        """Same as ``Client.submit``: a list payload submits a batch."""
        return self._run(self.aio.submit(job_type, payload, **options))

    def status(self, job_id: JobId | str) -> JobStatus:
        return self._run(self.aio.status(job_id))

    def cancel(self, job_id: JobId | str) -> CancelOutcome:
        return self._run(self.aio.cancel(job_id))

    def result(self, job_id: JobId | str, *, timeout: float | None = None) -> JSON:
        return self._run(self.aio.result(job_id, timeout=timeout))

    def progress(self, job_id: JobId | str) -> Iterator[Progress]:
        """Blocking iterator over the job's progress reports, until it ends."""
        updates = self.aio.progress(job_id)
        try:
            while True:
                try:
                    yield self._run(anext(updates))
                except StopAsyncIteration:
                    return
        finally:
            if self._loop is not None:
                self._run(updates.aclose())
