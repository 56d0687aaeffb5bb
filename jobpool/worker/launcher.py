"""Starting handlers, and keeping count of those that outlive their attempt.

An attempt ends at its deadline, on a cancel request, or when the worker stops it
(shutdown, lost lease) — whatever its handler does. Python cannot kill a coroutine that
swallows ``CancelledError`` nor a thread, so the executor decides the outcome at once
and *abandons* the handler: it is cancelled (async) or told through ``ctx.cancelled``
(sync), and left to end by itself. The launcher keeps those handlers bounded and
visible:

* Sync handlers run on daemon threads of this module's own pool, at most
  ``max_threads`` of them (the worker gives it twice its concurrency, so up to
  ``concurrency`` abandoned sync handlers may still run). When every thread is busy a
  new sync attempt is refused at once with ``HandlerThreadsBusy``, a retryable error:
  the job goes back to the queue with backoff instead of queueing behind threads that
  may never end. Daemon threads never hold the process at exit.
* A handler still running ``LEFT_RUNNING_GRACE_S`` after it was abandoned is logged at
  WARNING (naming the job) and counted in ``jobpool_handlers_left_running{pool,kind}``
  until it ends.

Invariant: ``running_abandoned`` counts every abandoned handler that has not ended yet
(graceful ones included), so a process can tell whether its exit would wait for one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from jobpool.models import ClaimedJob
from jobpool.worker import metrics
from jobpool.worker.registry import Handler

log = logging.getLogger(__name__)

LEFT_RUNNING_GRACE_S = 1.0
"""How long an abandoned handler may take to stop before it counts as left running."""

Kind = Literal["async", "thread"]
Work = asyncio.Future[Any] | concurrent.futures.Future[Any]


class HandlerThreadsBusy(Exception):
    """Every handler thread is taken (some by handlers that ignored their cancellation)."""


class HandlerThreads:
    """At most ``limit`` daemon threads, started on demand and reused."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._busy = 0
        self._threads = 0
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()

    @property
    def busy(self) -> int:
        return self._busy

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args)`` on a free thread; ``HandlerThreadsBusy`` if none is free."""
        with self._lock:
            if self._busy >= self._limit:
                raise HandlerThreadsBusy(
                    f"all {self._limit} handler threads are busy (sync handlers that "
                    "ignored cancellation still run); retrying later"
                )
            self._busy += 1
            start = self._threads < self._busy
            self._threads += start
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._calls.put(lambda: self._call(future, fn, args))
        if start:
            threading.Thread(target=self._serve, daemon=True, name="jobpool-handler").start()
        return future

    def _call(
        self, future: concurrent.futures.Future[Any], fn: Callable[..., Any], args: Any
    ) -> None:
        try:
            if future.set_running_or_notify_cancel():
                try:
                    value = fn(*args)
                except BaseException as exc:  # the handler's failure goes to its attempt
                    future.set_exception(exc)
                else:
                    future.set_result(value)
        finally:
            with self._lock:
                self._busy -= 1

    def _serve(self) -> None:
        while True:
            self._calls.get()()


@dataclass(slots=True)
class Run:
    """A started handler: ``future`` to await on the loop, ``work`` what must end (the
    task itself, or the thread's own future) and its ``kind``."""

    future: asyncio.Future[Any]
    work: Work
    kind: Kind


class Launcher:
    """Starts a pool's handlers; see the module docstring."""

    def __init__(self, pool: str, *, max_threads: int) -> None:
        self._pool = pool
        self.threads = HandlerThreads(max_threads)
        self._abandoned: dict[Work, ClaimedJob] = {}
        self._lock = threading.Lock()

    @property
    def running_abandoned(self) -> int:
        """Abandoned handlers (tasks and threads) that have not ended yet."""
        with self._lock:
            return len(self._abandoned)

    def abandoned_jobs(self) -> list[ClaimedJob]:
        """The attempts whose abandoned handlers still run."""
        with self._lock:
            return list(self._abandoned.values())

    def start(self, handler: Handler, argument: object, ctx: object) -> Run:
        """Start the handler: a task for an async one, a thread of the pool for a sync
        one (``HandlerThreadsBusy`` when every thread is taken)."""
        if handler.is_async:
            task = asyncio.get_running_loop().create_task(handler.fn(argument, ctx))
            return Run(task, task, "async")
        # In the caller's context, as asyncio.to_thread does: the attempt's span is the
        # current one in the handler's thread too.
        context = contextvars.copy_context()
        thread = self.threads.submit(context.run, handler.fn, argument, ctx)
        return Run(asyncio.wrap_future(thread), thread, "thread")

    def abandon(self, run: Run, job: ClaimedJob, *, why: str) -> None:
        """Stop waiting for ``run``: cancel it and count it until it ends (module doc)."""
        run.future.cancel()  # a task gets CancelledError; a thread is told by its ctx
        if run.work.done():
            return
        with self._lock:
            self._abandoned[run.work] = job
        run.work.add_done_callback(self._ended)
        loop = asyncio.get_running_loop()
        loop.call_later(LEFT_RUNNING_GRACE_S, self._check, run, job, why)

    def _check(self, run: Run, job: ClaimedJob, why: str) -> None:
        if run.work.done():
            return
        gauge = metrics.labelled(metrics.HANDLERS_LEFT_RUNNING, self._pool, run.kind)
        gauge.inc()
        run.work.add_done_callback(lambda _: gauge.dec())
        log.warning(
            "job %s (%s) attempt %d ended (%s) but its %s handler still runs; "
            "left to end by itself (%d such handlers now)",
            job.id,
            job.type,
            job.attempt,
            why,
            "sync" if run.kind == "thread" else "async",
            self.running_abandoned,
        )

    def _ended(self, work: Work) -> None:
        with self._lock:
            self._abandoned.pop(work, None)
        if not work.cancelled():
            work.exception()  # retrieved: how an abandoned handler ended is no news
