"""Postgres helpers for the test suite: DSN rewriting, database names, a throwaway server.

Imported by ``conftest.py`` and tests as ``pg`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qsl, quote, urlencode

import asyncpg

from jobpool.store.embedded import throwaway_server

_URI = re.compile(r"(?P<head>postgres(?:ql)?://[^/?#]*)(?P<path>/[^?#]*)?(?P<tail>.*)", re.S)
_DB_PARAMS = frozenset({"dbname", "database"})


def with_database(dsn: str, database: str) -> str:
    """Return the URI ``dsn`` pointing at ``database``; everything else is kept as is.

    Handles socket URIs (``postgresql://postgres:@/postgres?host=/tmp/x``, also with an
    empty authority, ``postgresql:///db?host=/tmp/x``) and TCP URIs with user, password,
    port and parameters. A ``dbname``/``database`` query parameter is dropped, since
    libpq would let it override the path.
    """
    match = _URI.fullmatch(dsn)
    if match is None:
        raise ValueError("expected a postgresql:// URI")
    tail = match["tail"]
    if tail.startswith("?"):
        query, hash_mark, fragment = tail[1:].partition("#")
        params = parse_qsl(query, keep_blank_values=True)
        if any(key in _DB_PARAMS for key, _ in params):
            kept = urlencode([(k, v) for k, v in params if k not in _DB_PARAMS], safe="/")
            tail = (f"?{kept}" if kept else "") + hash_mark + fragment
    return f"{match['head']}/{quote(database, safe='')}{tail}"


def random_name(prefix: str) -> str:
    """A database name unlikely to clash: ``prefix`` plus 12 random hex digits."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def create_database(admin: asyncpg.Connection, name: str, *, template: str = "") -> None:
    sql = f"CREATE DATABASE {quote_ident(name)}"
    if template:
        sql += f" TEMPLATE {quote_ident(template)}"
    await admin.execute(sql)


async def drop_database(admin: asyncpg.Connection, name: str) -> None:
    await admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")


_FAST_SETTINGS = ("fsync", "synchronous_commit", "full_page_writes")


async def make_fast(admin: asyncpg.Connection) -> None:
    """Trade durability for speed: only ever for a throwaway server."""
    for setting in _FAST_SETTINGS:
        await admin.execute(f"ALTER SYSTEM SET {setting} = off")
    await admin.execute("SELECT pg_reload_conf()")


@contextmanager
def embedded_server() -> Iterator[str]:
    """A throwaway Postgres for the suite; yields its superuser URI. Its data directory
    goes to ``/dev/shm`` when that has room (see ``_fast_tmp_dir``)."""
    with throwaway_server(parent_dir=_fast_tmp_dir()) as uri:
        yield uri


def _fast_tmp_dir() -> str | None:
    """``/dev/shm`` if it is a roomy tmpfs, else ``None`` (the default temporary directory).

    Creating a database copies ~300 files; on a slow disk that alone takes ~0.2 s, on
    tmpfs ~0.01 s. Docker's default 64 MB ``/dev/shm`` is too small, hence the check.
    """
    shm = "/dev/shm"
    roomy = os.path.isdir(shm) and os.access(shm, os.W_OK)
    return shm if roomy and shutil.disk_usage(shm).free >= _MIN_SHM_FREE else None


_MIN_SHM_FREE = 2 * 1024**3
