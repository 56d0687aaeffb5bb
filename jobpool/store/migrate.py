"""Schema migrations: plain SQL files applied in order, once, under an advisory lock.

Design:

* A migration is a file ``NNNN_name.sql`` in ``jobpool/sql/migrations``, beside the
  named statements of ``jobpool/sql/queries.sql`` (package data, so the wheel carries
  both). Files are applied in number order; a file, once applied, is never edited
  again: a schema change is a new file. A file is known by its name and content, never
  by its path, so the folder may move without touching an applied database.
* ``jobpool_migrations`` records each applied file with the sha256 of its bytes. Before
  anything is applied, every recorded file is checked against the disk: an edited file
  raises :class:`~jobpool.errors.MigrationChanged`; a recorded file missing from disk,
  or a new file numbered below one already applied, raises
  :class:`~jobpool.errors.MigrationError`. Either way nothing is applied.
* Several processes may start at once (every worker replica migrates on boot), so
  :func:`migrate` holds the session-level advisory lock :data:`MIGRATION_LOCK_KEY` for
  its whole run: the first process applies the pending files, the others wait, then
  find nothing left to do.
* Each file and its bookkeeping row commit in one transaction, so a failed file leaves
  no trace and the next run retries it.
* Roles: before applying anything, the group roles :data:`ROLES` must exist (they are
  cluster-wide). Missing ones are created when the migrating role may (``CREATEROLE``);
  otherwise :class:`~jobpool.errors.MigrationRolesMissing` names them and how to create
  them, so ``migrate`` works without ``CREATEROLE`` once an administrator has. The
  migrating role must be a member of ``jobpool_owner``, which owns every object: once
  it does (migration 0003 hands the schema over), files run as ``jobpool_owner``.
* With nothing pending, ``migrate`` writes nothing and needs no privilege beyond
  reading ``jobpool_migrations``: a worker or the operator may call it at start.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from pathlib import Path

import asyncpg
from pydantic import BaseModel, ConfigDict

from jobpool.errors import MigrationChanged, MigrationError, MigrationRolesMissing
from jobpool.store.queries import QUERIES

MIGRATIONS_DIR: Path = Path(__file__).resolve().parent.parent / "sql" / "migrations"

MIGRATION_LOCK_KEY: int = 0x6A6F62706F6F6C4D
"""Key of the ``pg_advisory_lock`` held while migrating: ASCII ``"jobpoolM"`` as a bigint."""

ROLES: tuple[str, ...] = ("jobpool_owner", "jobpool_worker", "jobpool_operator", "jobpool_client")
"""The group roles of the security model (NOLOGIN); ``jobpool_owner`` owns the schema."""

_FILE_NAME = re.compile(r"(\d{4})_[A-Za-z0-9_]+\.sql", re.ASCII)


class Migration(BaseModel):
    """One migration file: its name (``0001_initial.sql``), sha256 hex and SQL text."""

    model_config = ConfigDict(frozen=True)

    name: str
    checksum: str
    sql: str


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Read the ``*.sql`` files of ``directory``, sorted by number; other files are ignored."""
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} does not exist")
    by_number: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.fullmatch(path.name)
        if match is None:
            raise MigrationError(
                f"bad migration file name {path.name!r} in {directory}: expected NNNN_name.sql"
            )
        number = int(match.group(1))
        if number in by_number:
            raise MigrationError(
                f"migrations {by_number[number].name!r} and {path.name!r} share number {number}"
            )
        data = path.read_bytes()
        try:
            sql = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MigrationError(f"migration {path.name!r} is not valid UTF-8") from exc
        checksum = hashlib.sha256(data).hexdigest()
        by_number[number] = Migration(name=path.name, checksum=checksum, sql=sql)
    return [by_number[number] for number in sorted(by_number)]


async def migrate(conn: asyncpg.Connection, *, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply the pending migrations in order; return the names applied by this call.

    Idempotent: returns ``[]`` when the schema is up to date. ``conn`` must not be
    inside a transaction, as each file commits on its own.
    """
    migrations = load_migrations(directory)
    if conn.is_in_transaction():
        raise MigrationError("migrate() commits each file itself: call it outside a transaction")
    await conn.execute(*QUERIES.bind("migration_lock", key=MIGRATION_LOCK_KEY))
    try:
        exists = await conn.fetchval(QUERIES["migration_table_exists"])
        pending = _verify(migrations, await _applied(conn) if exists else {})
        if pending:
            await _prepare_roles(conn)
            await conn.execute(QUERIES["migration_table_create"])
        for migration in pending:
            try:
                async with conn.transaction():
                    if await conn.fetchval(QUERIES["migration_owner_ready"]):
                        await conn.execute(QUERIES["migration_set_owner_role"])
                    await conn.execute(migration.sql)
                    await conn.execute(
                        *QUERIES.bind(
                            "migration_record", name=migration.name, checksum=migration.checksum
                        )
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"migration {migration.name!r} failed: {exc}") from exc
        return [migration.name for migration in pending]
    finally:
        if not conn.is_closed():
            await conn.execute(*QUERIES.bind("migration_unlock", key=MIGRATION_LOCK_KEY))


async def pending_migrations(
    conn: asyncpg.Connection, *, directory: Path = MIGRATIONS_DIR
) -> list[str]:
    """Verify the applied migrations against ``directory``; return the pending names.

    Writes nothing and takes no lock; works before ``jobpool_migrations`` exists.
    """
    migrations = load_migrations(directory)
    exists = await conn.fetchval(QUERIES["migration_table_exists"])
    applied = await _applied(conn) if exists else {}
    return [migration.name for migration in _verify(migrations, applied)]


async def _prepare_roles(conn: asyncpg.Connection) -> None:
    """Create the missing group roles (or say how to) and join ``jobpool_owner``."""
    user = await conn.fetchval(QUERIES["role_current"])
    missing: list[str] = await conn.fetchval(*QUERIES.bind("role_missing", roles=list(ROLES)))
    if missing and not await conn.fetchval(QUERIES["role_may_create"]):
        creates = " ".join(f"CREATE ROLE {role} NOLOGIN;" for role in missing)
        raise MigrationRolesMissing(
            f"role(s) {', '.join(missing)} do not exist and {user} may not create them "
            f"(it lacks CREATEROLE): as an administrator run `{creates} "
            f"GRANT jobpool_owner TO {user};` then migrate again"
        )
    for role in missing:
        # Created meanwhile by a migration of another database: as good.
        with contextlib.suppress(asyncpg.DuplicateObjectError, asyncpg.UniqueViolationError):
            await conn.execute(await conn.fetchval(*QUERIES.bind("role_create", role=role)))
    if await conn.fetchval(QUERIES["role_is_owner"]):
        return
    try:
        await conn.execute(
            await conn.fetchval(*QUERIES.bind("role_grant", role="jobpool_owner", member=user))
        )
    except asyncpg.InsufficientPrivilegeError:
        raise MigrationRolesMissing(
            f"{user} is not a member of jobpool_owner, which owns the schema: as an "
            f"administrator run `GRANT jobpool_owner TO {user};` then migrate again"
        ) from None


async def _applied(conn: asyncpg.Connection) -> dict[str, str]:
    rows = await conn.fetch(QUERIES["migration_list"])
    return {row["name"]: row["checksum"] for row in rows}


def _verify(migrations: list[Migration], applied: dict[str, str]) -> list[Migration]:
    """Check ``applied`` (name -> checksum) against the files; return the unapplied files."""
    on_disk = {migration.name: migration for migration in migrations}
    for name, checksum in sorted(applied.items()):
        if name not in on_disk:
            raise MigrationError(f"applied migration {name!r} is missing from the migrations")
        if on_disk[name].checksum != checksum:
            raise MigrationChanged(f"applied migration {name!r} was edited after it ran")
    pending = [migration for migration in migrations if migration.name not in applied]
    last_applied = max(applied, default="")
    if pending and pending[0].name < last_applied:
        raise MigrationError(
            f"migration {pending[0].name!r} is not applied but the later {last_applied!r} is"
        )
    return pending
