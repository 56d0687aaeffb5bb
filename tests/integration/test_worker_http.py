"""The worker's HTTP endpoint: /healthz (alive), /readyz (holds its shards) and the
Prometheus metrics, served for real on a local port."""

from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request

from worker_runtime_helpers import running_worker

import jobpool
from jobpool import Client
from jobpool.worker.metrics import health_app


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


async def test_probes_and_metrics_are_served(dsn: str, client: Client) -> None:
    registry = jobpool.Registry()
    registry.handler("noop")(lambda payload, ctx: None)
    port = _free_port()

    async with running_worker(dsn, registry, metrics_port=port):
        job = await client.submit("noop", {})
        await client.result(job.id, timeout=10)
        health = await asyncio.to_thread(_get, port, "/healthz")
        ready = await asyncio.to_thread(_get, port, "/readyz")
        status, metrics = await asyncio.to_thread(_get, port, "/metrics")

    assert health == (200, "ok\n")
    assert ready == (200, "ready\n")
    assert status == 200
    assert 'jobpool_jobs_completed_total{pool="emails",type="noop"}' in metrics
    assert "jobpool_submit_to_start_seconds_bucket" in metrics


def test_readyz_answers_503_until_the_worker_holds_its_shards() -> None:
    replies: list[str] = []
    app = health_app(lambda environ, start: [b"metrics"], ready=lambda: False)

    body = app({"PATH_INFO": "/readyz"}, lambda status, headers: replies.append(status))

    assert replies == ["503 Service Unavailable"]
    assert list(body) == [b"not ready\n"]
