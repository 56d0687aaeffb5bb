"""The worker process: wires ownership, dispatcher, completer and the channels.

``Worker.run()`` runs until ``stop()`` (SIGTERM/SIGINT), then shuts down gracefully:
stop claiming, give the buffered (never started) jobs back, let the running ones
finish for up to ``drain_timeout_s`` (then interrupt them: they are retried), write
every outcome, release every lease so the next owner takes over at once.

A lost database connection is not fatal: each loop logs it and retries with backoff.
Meanwhile no new attempt starts past the last renewal plus the lease TTL, and
``/readyz`` reports not ready until the database answers again.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable

import asyncpg

from jobpool.models import ClaimedJob, JobId, Retry, ShardId
from jobpool.store import channels, connect, dlq, execution
from jobpool.store.listener import EventListener
from jobpool.store.workers import WorkerCounters
from jobpool.worker import metrics
from jobpool.worker.completer import Completer
from jobpool.worker.dispatcher import Dispatcher
from jobpool.worker.executor import Outcome
from jobpool.worker.ownership import Ownership
from jobpool.worker.periodic import PeriodicService
from jobpool.worker.registry import Registry
from jobpool.worker.settings import WorkerSettings

log = logging.getLogger(__name__)

# What a lost or refusing database looks like to the driver (InternalClientError: a
# query sent on a connection the server has just terminated).
DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)
RETRY_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
STATS_INTERVAL_S = 2.0
"""Refresh period of the queue gauges (one count over this worker's queued jobs)..."""
STATS_MAX_BUSY = 0.05
"""...stretched so that counting takes at most this share of the time (a count of
1,000,000 queued jobs takes about 0.3 s: refreshed every 6 s)."""

Step = Callable[[], Awaitable[None]]


class Worker:
    """One worker process of a pool: ``await Worker(settings, registry).run()``."""

    def __init__(self, settings: WorkerSettings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self._stop = asyncio.Event()
        self._started = asyncio.Event()
        self._conns: asyncpg.Pool | None = None
        self._ownership: Ownership | None = None
        self._dispatcher: Dispatcher | None = None

    def stop(self) -> None:
        self._stop.set()

    async def started(self) -> None:
        """Wait until the worker holds its first leases and claims."""
        await self._started.wait()

    @property
    def ready(self) -> bool:
        return self._ownership is not None and self._ownership.settled

    @property
    def ownership(self) -> Ownership:
        assert self._ownership is not None, "the worker is not running"
        return self._ownership

    @property
    def dispatcher(self) -> Dispatcher:
        assert self._dispatcher is not None, "the worker is not running"
        return self._dispatcher

    async def run(self) -> None:
        s = self.settings
        server_settings = {
            "application_name": f"jobpool-worker/{s.pool}/{s.ordinal}",
            "idle_in_transaction_session_timeout": "60000",
        }
        self._conns = conns = await connect.create_pool(
            s.dsn,
            min_size=2,
            max_size=4,
            server_settings=server_settings,
            reset=connect.keep_session,
        )
        listener = EventListener(
            lambda: connect.connect(s.dsn, server_settings=server_settings),
            channels.worker_channel(s.pool),
        )
        completer = Completer(
            conns, pool=s.pool, owner=s.owner, batch=s.completion_batch, on_written=self._on_written
        )
        self._ownership = Ownership(
            s,
            conns,
            in_flight=lambda shard: self.dispatcher.in_flight(shard),
            counters=self._counters,
            on_lost=lambda shards: self.dispatcher.drop_shards(shards),
            on_change=lambda: self.dispatcher.wake(new_work=True),
            on_superseded=self.stop,
        )
        self._dispatcher = Dispatcher(
            s,
            conns,
            self.registry,
            ownership=self._ownership,
            completer=completer,
            report_progress=self._report,
        )
        # The holder of shard 0 enqueues the pool's periodic jobs (once per tick anyway).
        periodic = PeriodicService(
            conns,
            pool=s.pool,
            declared=self.registry.schedules,
            active=lambda: ShardId(0) in self.ownership.claimable,
        )
        server = (
            metrics.serve(s.metrics_port, lambda: self.ready, host=s.metrics_host)
            if s.metrics_port
            else None
        )
        loops: list[asyncio.Task[None]] = []
        try:
            async with listener.subscribe() as events:
                await _retrying("start", self._prepare)
                await _retrying("start", self._follow_ring)
                loops += [
                    asyncio.create_task(_forever("listener", self._router(events))),
                    asyncio.create_task(_forever("ownership", self._heartbeat)),
                    asyncio.create_task(_forever("dispatcher", self.dispatcher.step)),
                    asyncio.create_task(_forever("completer", completer.step)),
                    asyncio.create_task(_forever("stats", self._stats)),
                    asyncio.create_task(_forever("periodic", periodic.step)),
                ]
                self._started.set()
                log.info(
                    "worker %s of pool %r started with %d shards",
                    s.owner,
                    s.pool,
                    len(self.ownership.held),
                )
                await self._stop.wait()
                await self._shutdown(completer, loops)
        finally:
            for loop in loops:  # also when run() itself is cancelled
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await listener.close()
            await conns.close()
            if server is not None:
                server.shutdown()
                server.server_close()

    # -- loops -----------------------------------------------------------------------

    def _router(self, events: asyncio.Queue[str]) -> Step:
        async def route() -> None:
            payload = await events.get()
            if payload in (channels.RING, channels.RELEASED):
                await self._follow_ring()
            else:
                self.dispatcher.on_notify(payload)

        return route

    async def _prepare(self) -> None:
        assert self._conns is not None
        async with self._conns.acquire() as conn:
            if await execution.jobs_ensure_statistics(conn):
                log.info("analyzed the jobs table, which had no statistics yet")

    async def _follow_ring(self) -> None:
        await self.ownership.read_ring()
        await self.ownership.run_once()
        self.dispatcher.wake(new_work=True)

    async def _heartbeat(self) -> None:
        await asyncio.sleep(self.settings.heartbeat_s)
        try:
            await self.ownership.read_ring()
            await self.ownership.run_once()
            self.dispatcher.wake()  # renewed leases: buffered jobs may start again
            self.dispatcher.check_cancels()  # in case a cancel's NOTIFY was missed
        except Exception:
            self.ownership.healthy = False
            raise

    async def _stats(self) -> None:
        assert self._conns is not None
        pool = self.settings.pool
        # The DLQ is pool-wide: only the holder of shard 0 counts it, so the pool is
        # counted once and the pods' gauges add up.
        reports_dlq = 0 in self.ownership.held
        began = time.monotonic()
        async with self._conns.acquire() as conn:
            depth = await execution.job_queue_depth(conn, pool, shards=list(self.ownership.held))
            dlq_size = await dlq.dlq_count_pending(conn, pool) if reports_dlq else 0
        busy_s = time.monotonic() - began
        for state, lanes in depth.items():
            for priority, queued in lanes.items():
                metrics.QUEUE_DEPTH.labels(pool, priority.value, state.value).set(queued)
        metrics.DLQ_SIZE.labels(pool).set(dlq_size)
        metrics.SHARDS_OWNED.labels(pool).set(len(self.ownership.held))
        await asyncio.sleep(max(STATS_INTERVAL_S, busy_s / STATS_MAX_BUSY))

    # -- callbacks -------------------------------------------------------------------

    def _counters(self) -> WorkerCounters:
        d = self._dispatcher
        if d is None:
            return WorkerCounters()
        return WorkerCounters(running=len(d.running), succeeded=d.succeeded, failed=d.failed)

    async def _report(self, job: ClaimedJob, fraction: float | None, message: str | None) -> None:
        """Progress is best effort: a database hiccup must not fail the attempt."""
        assert self._conns is not None
        try:
            await self._write_progress(job, fraction, message)
        except DB_ERRORS as exc:
            log.warning("progress of job %s not recorded: %s", job.id, exc)

    async def _write_progress(
        self, job: ClaimedJob, fraction: float | None, message: str | None
    ) -> None:
        assert self._conns is not None
        async with self._conns.acquire() as conn:
            await execution.job_progress_update(
                conn,
                self.settings.pool,
                owner=self.settings.owner,
                job_id=job.id,
                fraction=fraction,
                message=message,
            )

    def _on_written(self, batch: list[Outcome], accepted: set[JobId]) -> None:
        if any(isinstance(o, Retry) and o.job_id in accepted for o in batch):
            # A retry is a delayed job of our own shards: the claim timer must see it.
            self.dispatcher.wake(new_work=True)
        fenced = sum(outcome.job_id not in accepted for outcome in batch)
        if fenced:
            metrics.FENCED.labels(self.settings.pool).inc(fenced)
            log.warning("%d outcomes rejected: their shard moved to another worker", fenced)

    # -- shutdown --------------------------------------------------------------------

    async def _shutdown(self, completer: Completer, loops: list[asyncio.Task[None]]) -> None:
        s = self.settings
        dispatcher = self.dispatcher
        dispatcher.claiming = False
        await _retrying("release buffered jobs", self._release_buffered)
        running = [run.task for run in dispatcher.running.values()]
        if running:
            log.info("draining %d running jobs (up to %.0f s)", len(running), s.drain_timeout_s)
            _, late = await asyncio.wait(running, timeout=s.drain_timeout_s)
            dispatcher.interrupt(late)
            await asyncio.gather(*late, return_exceptions=True)  # prompt: handlers abandoned
        await completer.drained()
        if abandoned := dispatcher.launcher.abandoned_jobs():
            log.warning(
                "%d handlers ignored their cancellation and still run (%s): "
                "the worker stops without waiting for them",
                len(abandoned),
                ", ".join(f"job {job.id} ({job.type}) attempt {job.attempt}" for job in abandoned),
            )
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await _retrying("release leases", self.ownership.release_all)
        log.info("worker %s stopped cleanly", s.owner)

    async def _release_buffered(self) -> None:
        assert self._conns is not None
        ids = self.dispatcher.buffered_ids()
        for buf in self.dispatcher.buffers.values():
            buf.clear()
        async with self._conns.acquire() as conn:
            await execution.job_release_many(
                conn, self.settings.pool, owner=self.settings.owner, job_ids=ids
            )


async def _forever(name: str, step: Step) -> None:
    """Run ``step`` (one iteration of a loop) again and again. A failure is logged and
    retried with backoff, which starts over after every successful step: a worker loop
    never dies silently, whatever it meets."""
    failures = 0
    while True:
        try:
            await step()
            failures = 0
        except DB_ERRORS as exc:
            failures = await _back_off(name, failures, exc)
        except Exception as exc:
            log.exception("%s failed", name)
            failures = await _back_off(name, failures, exc)


async def _back_off(name: str, failures: int, exc: BaseException) -> int:
    delay = RETRY_BACKOFF_S[min(failures, len(RETRY_BACKOFF_S) - 1)]
    log.warning("%s: %s, retrying in %.1f s", name, exc, delay)
    await asyncio.sleep(delay)
    return failures + 1


async def _retrying(name: str, step: Step) -> None:
    """Run ``step`` once, retrying database errors with backoff until it succeeds
    (anything else propagates: at start, a missing pool must end the worker)."""
    failures = 0
    while True:
        try:
            return await step()
        except DB_ERRORS as exc:
            failures = await _back_off(name, failures, exc)


def install_signal_handlers(worker: Worker) -> None:
    """SIGTERM (Kubernetes) and SIGINT (Ctrl-C) start a graceful shutdown."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
