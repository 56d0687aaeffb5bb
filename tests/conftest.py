"""Shared fixtures: one Postgres per session, a fresh database per test.

The server is ``$JOBPOOL_TEST_DSN`` (a superuser URI) when set, else a throwaway
embedded server started once per session. The schema is migrated once into a template
database; each test that asks for ``dsn``/``conn`` gets its own copy of it
(``CREATE DATABASE ... TEMPLATE``, a file copy: far faster than migrating), dropped
after the test.

Fixtures:

* ``server_dsn`` (session): superuser URI of the ``postgres`` maintenance database.
* ``dsn``: URI of a fresh, fully migrated database of this test's own.
* ``conn``: an asyncpg connection to ``dsn``, closed after the test.
* ``empty_dsn``: URI of a fresh, empty (unmigrated) database, for migration tests.
* ``worker_dsn`` / ``operator_dsn``: ``dsn`` as the suite's login role in
  ``jobpool_worker`` / ``jobpool_operator`` (``pg.as_role``): what a deployment runs as.

The migration creates the group roles ``jobpool_*`` (cluster-wide) in the template;
the suite's login roles (``pg.LOGIN_ROLES``) are created right after it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pg
import pytest
import pytest_asyncio

from jobpool.store.migrate import migrate

# The suite must not see the developer's own settings or a running `jobpool dev`:
# every JOBPOOL_* variable but the test server's goes, and dev state lives nowhere.
for _name in [name for name in os.environ if name.startswith("JOBPOOL_")]:
    if _name != "JOBPOOL_TEST_DSN":
        del os.environ[_name]
os.environ["JOBPOOL_DEV_DIR"] = _NO_DEV_DIR = tempfile.mkdtemp(prefix="jobpool-tests-no-dev-")
atexit.register(shutil.rmtree, _NO_DEV_DIR, ignore_errors=True)

_SESSION = {"loop_scope": "session", "scope": "session"}
_TEST = {"loop_scope": "session", "scope": "function"}


@pytest.fixture(scope="session")
def _server_uri() -> Iterator[tuple[str, bool]]:
    """The server's superuser URI, and whether it is ours to reconfigure."""
    env_dsn = os.environ.get("JOBPOOL_TEST_DSN")
    if env_dsn:
        yield env_dsn, False
        return
    with pg.embedded_server() as uri:
        yield uri, True


@pytest_asyncio.fixture(**_SESSION)
async def server_dsn(_server_uri: tuple[str, bool]) -> str:
    uri, throwaway = _server_uri
    dsn = pg.with_database(uri, "postgres")
    if throwaway:
        admin = await asyncpg.connect(dsn)
        try:
            await pg.make_fast(admin)
        finally:
            await admin.close()
    return dsn


@pytest_asyncio.fixture(**_SESSION)
async def _admin(server_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """One superuser connection for creating and dropping the test databases."""
    admin = await asyncpg.connect(server_dsn)
    try:
        yield admin
    finally:
        await admin.close()


@pytest_asyncio.fixture(**_SESSION)
async def _template(server_dsn: str, _admin: asyncpg.Connection) -> AsyncIterator[str]:
    """Name of a database migrated once per session, copied by each ``dsn``."""
    name = pg.random_name("jobpool_tmpl_")
    await pg.create_database(_admin, name)
    try:
        conn = await asyncpg.connect(pg.with_database(server_dsn, name))
        try:
            await migrate(conn)
        finally:
            await conn.close()
        await pg.create_login_roles(_admin)
        yield name
    finally:
        await pg.drop_database(_admin, name)


@pytest_asyncio.fixture(**_TEST)
async def dsn(server_dsn: str, _admin: asyncpg.Connection, _template: str) -> AsyncIterator[str]:
    name = pg.random_name("jobpool_t_")
    await pg.create_database(_admin, name, template=_template)
    try:
        yield pg.with_database(server_dsn, name)
    finally:
        await pg.drop_database(_admin, name)


@pytest_asyncio.fixture(**_TEST)
async def empty_dsn(server_dsn: str, _admin: asyncpg.Connection) -> AsyncIterator[str]:
    name = pg.random_name("jobpool_t_")
    await pg.create_database(_admin, name)
    try:
        yield pg.with_database(server_dsn, name)
    finally:
        await pg.drop_database(_admin, name)


@pytest.fixture
def worker_dsn(dsn: str) -> str:
    return pg.as_role(dsn, pg.WORKER)


@pytest.fixture
def operator_dsn(dsn: str) -> str:
    return pg.as_role(dsn, pg.OPERATOR)


@pytest_asyncio.fixture(**_TEST)
async def conn(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(dsn)
    try:
        yield connection
    finally:
        await connection.close()
