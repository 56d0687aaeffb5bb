"""The worker process: wires ownership, dispatcher, completer, the periodic service,
the gauges and the channels, and runs each as a loop (``loops.forever``).

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
from typing import TYPE_CHECKING

import asyncpg

from jobpool.models import JobId, Retry, ShardId
from jobpool.store import channels, connect, execution
from jobpool.store.listener import EventListener
from jobpool.store.workers import WorkerCounters
from jobpool.worker import metrics
from jobpool.worker.completer import Completer
from jobpool.worker.dispatcher import Dispatcher
from jobpool.worker.executor import Outcome
from jobpool.worker.loops import Step, forever, until_done
from jobpool.worker.ownership import Ownership
from jobpool.worker.periodic import PeriodicService
from jobpool.worker.progress import ProgressWriter
from jobpool.worker.registry import Registry
from jobpool.worker.settings import WorkerSettings

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

log = logging.getLogger(__name__)

POOL_MIN_SIZE = 3
"""Connections opened at start, at once: the first claim, the gauges and the periodic
service each take one as the loops start, so the claim does not wait for a new one."""


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
            # Short statements by the thousand: JIT compilation never pays for itself
            # here, and with it on, asyncpg's type look-up takes three round trips.
            "jit": "off",
        }
        listener = EventListener(
            lambda: connect.connect(s.dsn, server_settings=server_settings),
            channels.worker_channel(s.pool),
        )
        # The LISTEN connection opens while the pool does: start-up waits for one, not both.
        listening = asyncio.ensure_future(listener.listen())
        try:
            self._conns = conns = await connect.create_pool(
                s.dsn,
                min_size=POOL_MIN_SIZE,
                max_size=4,
                server_settings=server_settings,
                reset=connect.keep_session,
            )
        except BaseException:
            await asyncio.gather(listening, return_exceptions=True)
            await listener.close()
            raise
        completer = Completer(
            conns,
            pool=s.pool,
            owner=s.owner,
            batch=s.completion_batch,
            on_written=self._on_written,
            running=lambda: len(self.dispatcher.running),
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
            report_progress=ProgressWriter(conns, pool=s.pool, owner=s.owner),
        )
        # The holder of shard 0 enqueues the pool's periodic jobs (once per tick anyway).
        periodic = PeriodicService(
            conns,
            pool=s.pool,
            declared=self.registry.schedules,
            active=lambda: ShardId(0) in self.ownership.claimable,
        )
        gauges = metrics.QueueGauges(conns, pool=s.pool, held=lambda: self.ownership.held)
        server: WSGIServer | None = None
        loops: list[asyncio.Task[None]] = []
        try:  # from here on, every way out closes the connections (and the server)
            if s.metrics_port:
                server = metrics.serve(s.metrics_port, lambda: self.ready, host=s.metrics_host)
            await listening
            async with listener.subscribe() as events:
                await self._start()
                loops += [
                    asyncio.create_task(forever(name, step))
                    for name, step in (
                        ("listener", self._router(events)),
                        ("ownership", self._heartbeat),
                        ("dispatcher", self.dispatcher.step),
                        ("completer", completer.step),
                        ("stats", gauges.step),
                        ("periodic", periodic.step),
                    )
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
            await asyncio.gather(*loops, listening, return_exceptions=True)
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

    async def _start(self) -> None:
        """Read the ring and take the leases while a ``jobs`` table that was never
        analyzed is (on another connection): the first claim waits for both at once."""
        preparing = asyncio.ensure_future(until_done("start", self._prepare))
        try:
            await until_done("start", self._follow_ring)
        except BaseException:
            preparing.cancel()
            await asyncio.gather(preparing, return_exceptions=True)
            raise
        await preparing

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

    # -- callbacks -------------------------------------------------------------------

    def _counters(self) -> WorkerCounters:
        d = self._dispatcher
        if d is None:
            return WorkerCounters()
        return WorkerCounters(running=len(d.running), succeeded=d.succeeded, failed=d.failed)

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
        dispatcher.stop_claiming()
        await until_done("release buffered jobs", dispatcher.give_back_buffered)
        await dispatcher.drain(s.drain_timeout_s)
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
        await until_done("release leases", self.ownership.release_all)
        log.info("worker %s stopped cleanly", s.owner)


def install_signal_handlers(worker: Worker) -> None:
    """SIGTERM (Kubernetes) and SIGINT (Ctrl-C) start a graceful shutdown."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
