"""Fixtures of the chaos tier: one chaos run per test on a database of its own.

``chaos`` uses the session's server (``dsn``: a fresh migrated database); the restart
test brings a server of its own (``chaos_fleet.restartable_server``) and calls
``chaos_load.chaos_run`` directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from chaos_load import Chaos, chaos_run

_TEST = {"loop_scope": "session", "scope": "function"}


@pytest_asyncio.fixture(**_TEST)
async def chaos(dsn: str, tmp_path: Path) -> AsyncIterator[Chaos]:
    """A chaos run of the ``emails`` pool (16 shards), ring of 2 until the test changes it."""
    async with chaos_run(dsn, tmp_path, replicas=2) as run:
        yield run
