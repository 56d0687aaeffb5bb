"""Prometheus metrics of a worker, and the HTTP endpoint that serves them with probes.

One process runs one worker, so the metrics live in prometheus-client's default
registry. Gauges about the queue cover this worker's own shards: summed over the pods
of a pool they give the pool's figures.

Label values are bounded whatever clients submit: ``type`` only takes the names of this
worker's registered handlers (``OTHER_TYPE`` for the rest), ``priority`` the four
lanes, ``reason`` the error types of the handlers' own code and jobpool's.

The endpoint (prometheus-client's WSGI server, in a thread) answers ``/metrics``,
``/healthz`` (the process is alive) and ``/readyz`` (the worker holds the shards the
ring gives it and its last database round trip succeeded).
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable, Collection, Container, Iterable
from typing import Any
from wsgiref.simple_server import WSGIServer

import asyncpg
from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler, make_server

from jobpool.models import ShardId
from jobpool.store import dlq, execution

QUEUE_DEPTH = Gauge(
    "jobpool_queue_depth",
    "Queued jobs in this worker's shards: state=due (run_at passed, waiting for a slot) "
    "or state=scheduled (delayed, or backing off before a retry)",
    ["pool", "priority", "state"],
)
PROCESSING_SECONDS = Histogram(
    "jobpool_job_processing_seconds",
    "Handler run time per attempt",
    ["pool", "type", "priority"],
)
FAILURES = Counter(
    "jobpool_job_failures_total",
    "Failed attempts (retried or not), by the attempt's error type",
    ["pool", "type", "priority", "reason"],
)
FINISHED = Counter(
    "jobpool_jobs_finished_total",
    "Jobs that ended for good, by outcome: succeeded, dead or cancelled",
    ["pool", "type", "priority", "outcome"],
)
DLQ_SIZE = Gauge(
    "jobpool_dlq_size",
    "Unreplayed dead-letter entries of the pool (reported by the holder of shard 0, "
    "0 on the other pods)",
    ["pool"],
)
COMPLETED = Counter("jobpool_jobs_completed_total", "Jobs that succeeded", ["pool", "type"])
CANCELLATIONS = Counter(
    "jobpool_job_cancellations_total",
    "Jobs a worker cancelled on request (running, or claimed and not started yet)",
    ["pool", "type"],
)
HANDLERS_LEFT_RUNNING = Gauge(
    "jobpool_handlers_left_running",
    "Handlers still running after their attempt ended (timeout, cancel, shutdown) and "
    "they ignored the cancellation, by kind: async or thread",
    ["pool", "kind"],
)
SUBMIT_TO_START = Histogram(
    "jobpool_submit_to_start_seconds",
    "From the time a job was due (submitted, or its run_at) to its handler's start",
    ["pool"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
SHARDS_OWNED = Gauge("jobpool_shards_owned", "Shard leases this worker holds", ["pool"])
SHARDS_ADOPTED = Gauge(
    "jobpool_shards_adopted",
    "Shards this worker holds for a missing ordinal (handed back when it returns)",
    ["pool"],
)
SHARDS_ORPHANED = Gauge(
    "jobpool_shards_orphaned",
    "Shards of missing ordinals, free past the grace period and not yet adopted",
    ["pool"],
)
FENCED = Counter(
    "jobpool_fenced_writes_total",
    "Outcomes rejected because the shard's lease moved on (another owner took it)",
    ["pool"],
)


OTHER_TYPE = "_other"
"""The ``type`` label of jobs whose type has no handler on this worker. Label values
come only from registered handlers, so clients cannot add series by inventing types
(and no job type can start with ``_``)."""


def type_label(job_type: str, registered: Container[str]) -> str:
    return job_type if job_type in registered else OTHER_TYPE


@functools.cache
def labelled(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, looked up once: ``labels()`` costs more than the
    increment it serves, and it runs several times per job."""
    return metric.labels(*values)


STATS_INTERVAL_S = 2.0
"""Refresh period of the queue gauges (one count over this worker's queued jobs)..."""
STATS_MAX_BUSY = 0.05
"""...stretched so that counting takes at most this share of the time. Above
``execution.EXACT_DEPTH_UP_TO`` queued jobs the figures are estimated from a sample
(an exact count of 1,000,000 queued jobs takes 0.3-0.8 s of a server core)."""


class QueueGauges:
    """The loop that refreshes the gauges read from the database: this worker's queue
    depth (due and scheduled, per priority), owned shards, and the pool's DLQ size —
    counted by the holder of shard 0 only, so the pods' gauges add up to the pool's."""

    def __init__(
        self, conns: asyncpg.Pool, *, pool: str, held: Callable[[], Collection[ShardId]]
    ) -> None:
        self._conns = conns
        self._pool = pool
        self._held = held
        self._last_total: int | None = None  # queued jobs at the last refresh (or estimate)

    async def step(self) -> None:
        """Refresh once, then wait out the refresh period."""
        held = list(self._held())
        began = time.monotonic()
        async with self._conns.acquire() as conn:
            depth = await execution.job_queue_depth_estimate(
                conn, self._pool, shards=held, last_total=self._last_total
            )
            dlq_size = await dlq.dlq_count_pending(conn, self._pool) if 0 in held else 0
        busy_s = time.monotonic() - began
        self._last_total = sum(sum(lanes.values()) for lanes in depth.values())
        for state, lanes in depth.items():
            for priority, queued in lanes.items():
                QUEUE_DEPTH.labels(self._pool, priority.value, state.value).set(queued)
        DLQ_SIZE.labels(self._pool).set(dlq_size)
        SHARDS_OWNED.labels(self._pool).set(len(held))
        await asyncio.sleep(max(STATS_INTERVAL_S, busy_s / STATS_MAX_BUSY))


StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def health_app(metrics: WsgiApp, ready: Callable[[], bool]) -> WsgiApp:
    """``/healthz`` and ``/readyz`` in front of the metrics app."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path == "/readyz":
            ok = ready()
            start_response(
                "200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")]
            )
            return [b"ready\n" if ok else b"not ready\n"]
        return metrics(environ, start_response)

    return app


def serve(port: int, ready: Callable[[], bool], *, host: str = "0.0.0.0") -> WSGIServer:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port`` from a daemon
    thread (any other path is a 404); returns the server."""
    known = health_app(make_wsgi_app(), ready)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "") in {"/metrics", "/healthz", "/readyz"}:
            return known(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics, /healthz or /readyz\n"]

    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_SilentHandler)
    threading.Thread(target=server.serve_forever, daemon=True, name="jobpool-metrics").start()
    return server
