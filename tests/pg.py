"""Postgres helpers for the test suite: DSN rewriting, database names, a throwaway server,
and the login roles the suite runs workers, the operator and clients as.

Imported by ``conftest.py`` and tests as ``pg`` (pytest puts ``tests/`` on ``sys.path``).

Login roles: ``conftest.py`` creates :data:`WORKER`, :data:`OPERATOR` and :data:`CLIENT`
once per session (cluster-wide), members of ``jobpool_worker``, ``jobpool_operator`` and
``jobpool_client`` only: not superuser, no ``BYPASSRLS``, owner of nothing. ``as_role``
turns a test's superuser ``dsn`` into the same database as one of them, so workers and
the operator run with exactly the privileges a deployment gives them.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qsl, quote, urlencode

import asyncpg

from jobpool.dev.embedded import throwaway_server

_URI = re.compile(r"(?P<head>postgres(?:ql)?://[^/?#]*)(?P<path>/[^?#]*)?(?P<tail>.*)", re.S)
_DB_PARAMS = frozenset({"dbname", "database"})
_CREDENTIALS = re.compile(
    r"(?P<scheme>postgres(?:ql)?://)(?:[^@/?#]*@)?(?P<hosts>[^/?#]*)(?P<rest>.*)", re.S
)

WORKER = "jobpool_test_worker"
OPERATOR = "jobpool_test_operator"
CLIENT = "jobpool_test_client"
LOGIN_ROLES = {WORKER: "jobpool_worker", OPERATOR: "jobpool_operator", CLIENT: "jobpool_client"}
"""The suite's login roles and the one group role each is a member of."""
ROLE_PASSWORD = secrets.token_hex(16)
"""Password of the suite's login roles (set again at each session start)."""


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


def with_user(dsn: str, user: str, password: str) -> str:
    """``dsn`` with its credentials replaced by ``user``/``password`` (URI form only)."""
    match = _CREDENTIALS.fullmatch(dsn)
    if match is None:
        raise ValueError("expected a postgresql:// URI")
    path, question, query = match["rest"].partition("?")
    if question:
        params = parse_qsl(query, keep_blank_values=True)
        kept = [(k, v) for k, v in params if k not in {"user", "password"}]
        path += f"?{urlencode(kept, safe='/')}" if kept else ""
    userinfo = f"{quote(user, safe='')}:{quote(password, safe='')}@"
    return f"{match['scheme']}{userinfo}{match['hosts']}{path}"


def as_role(dsn: str, role: str) -> str:
    """``dsn`` connecting as one of the suite's login roles (:data:`LOGIN_ROLES`)."""
    if role not in LOGIN_ROLES:
        raise ValueError(f"{role!r} is not one of the suite's login roles")
    return with_user(dsn, role, ROLE_PASSWORD)


async def create_login_role(
    admin: asyncpg.Connection, role: str, password: str, *, groups: tuple[str, ...]
) -> None:
    """A LOGIN role with nothing but membership of ``groups`` (made again if it exists)."""
    ident = quote_ident(role)
    exists = await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
    verb = "ALTER" if exists else "CREATE"
    await admin.execute(
        f"{verb} ROLE {ident} LOGIN PASSWORD {quote_literal(password)}"
        " NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE INHERIT"
    )
    for group in groups:
        await admin.execute(f"GRANT {quote_ident(group)} TO {ident}")


async def create_login_roles(admin: asyncpg.Connection) -> None:
    """The suite's worker, operator and client login roles (:data:`LOGIN_ROLES`)."""
    for role, group in LOGIN_ROLES.items():
        await create_login_role(admin, role, ROLE_PASSWORD, groups=(group,))


def random_name(prefix: str) -> str:
    """A database name unlikely to clash: ``prefix`` plus 12 random hex digits."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


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
