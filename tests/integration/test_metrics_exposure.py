"""The worker's metrics server answers only its three paths, on the address it is told.

Issue 10: it bound 0.0.0.0 with no option and answered on any path. ``--metrics-host``
(``WorkerSettings.metrics_host``) now chooses the address; any path but ``/metrics``,
``/healthz`` and ``/readyz`` is a 404.
"""

from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request

from worker_runtime_helpers import running_worker

import jobpool
from jobpool.models import Pool


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status
    except urllib.error.HTTPError as refused:
        return refused.code


def _listening_address(port: int) -> str:
    """The local address of the (only) TCP socket listening on ``port``."""
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                return socket.inet_ntoa(int(address, 16).to_bytes(4, "little"))
    raise AssertionError(f"nothing listens on port {port}")


async def test_only_the_three_paths_answer_on_the_chosen_host(dsn: str, pool: Pool) -> None:
    registry = jobpool.Registry()
    registry.handler("noop")(lambda payload, ctx: None)
    port = _free_port()
    paths = ["/metrics", "/healthz", "/readyz", "/", "/metrics/x", "/debug", "/../etc"]

    async with running_worker(dsn, registry, metrics_port=port, metrics_host="127.0.0.1"):
        statuses = [await asyncio.to_thread(_status, port, path) for path in paths]
        address = _listening_address(port)

    assert dict(zip(paths, statuses, strict=True)) == {
        "/metrics": 200, "/healthz": 200, "/readyz": 200,
        "/": 404, "/metrics/x": 404, "/debug": 404, "/../etc": 404,
    }  # fmt: skip
    assert address == "127.0.0.1"
