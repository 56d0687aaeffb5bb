"""The migration runner against a real Postgres (see tests/conftest.py)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from jobpool.errors import MigrationChanged, MigrationError
from jobpool.store.migrate import (
    MIGRATION_LOCK_KEY,
    MIGRATIONS_DIR,
    load_migrations,
    migrate,
    pending_migrations,
)

EXPECTED_TABLES = {"pools", "jobs", "job_history", "job_dlq", "shard_leases", "workers"}
ALL_NAMES = [path.name for path in sorted(MIGRATIONS_DIR.glob("*.sql"))]

# Not idempotent on purpose: applied twice, the CREATE TABLE fails.
EXTRA_SQL = "CREATE TABLE migrate_probe (id int PRIMARY KEY);\n"


@pytest_asyncio.fixture(loop_scope="session")
async def empty_conn(empty_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(empty_dsn)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    """A copy of the real migrations plus one more file, free to edit."""
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, directory)
    (directory / "9000_probe.sql").write_text(EXTRA_SQL)
    return directory


async def _applied(conn: asyncpg.Connection) -> list[str]:
    return [r["name"] for r in await conn.fetch("SELECT name FROM jobpool_migrations ORDER BY 1")]


async def _has_table(conn: asyncpg.Connection, name: str) -> bool:
    return await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name)


async def _advisory_locks(conn: asyncpg.Connection) -> int:
    return await conn.fetchval(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
        " WHERE l.locktype = 'advisory' AND d.datname = current_database()"
    )


def test_migrations_dir_is_package_data() -> None:
    assert MIGRATIONS_DIR.parts[-3:] == ("jobpool", "sql", "migrations")
    assert "0001_initial.sql" in ALL_NAMES
    loaded = load_migrations()
    assert [m.name for m in loaded] == ALL_NAMES
    assert all(len(m.checksum) == 64 and m.sql.strip() for m in loaded)


async def test_migrate_from_zero_applies_everything(empty_conn: asyncpg.Connection) -> None:
    assert await migrate(empty_conn) == ALL_NAMES

    tables = {
        r["tablename"]
        for r in await empty_conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        )
    }
    assert tables >= EXPECTED_TABLES | {"jobpool_migrations"}
    assert (
        await empty_conn.fetchval(
            "SELECT count(*) FROM pg_proc WHERE proname = 'jobpool_dlq_purge'"
        )
        == 1
    )
    rows = await empty_conn.fetch("SELECT name, checksum FROM jobpool_migrations ORDER BY name")
    assert [(r["name"], r["checksum"]) for r in rows] == [
        (m.name, m.checksum) for m in load_migrations()
    ]
    assert await _advisory_locks(empty_conn) == 0, "the migration lock was not released"


async def test_migrate_twice_applies_nothing_the_second_time(
    empty_conn: asyncpg.Connection,
) -> None:
    assert await migrate(empty_conn) == ALL_NAMES
    before = await empty_conn.fetch("SELECT name, applied_at FROM jobpool_migrations")

    assert await migrate(empty_conn) == []
    assert await empty_conn.fetch("SELECT name, applied_at FROM jobpool_migrations") == before


async def test_a_database_migrated_from_another_folder_is_up_to_date(
    empty_conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Files are known by name and content, not path: the folder moved, nothing is pending."""
    before_the_move = tmp_path / "jobpool" / "migrations"
    shutil.copytree(MIGRATIONS_DIR, before_the_move)
    assert await migrate(empty_conn, directory=before_the_move) == ALL_NAMES

    assert await pending_migrations(empty_conn) == []
    assert await migrate(empty_conn) == []


async def test_migrate_applies_only_new_files(
    empty_conn: asyncpg.Connection, migrations: Path
) -> None:
    (migrations / "9000_probe.sql").unlink()
    assert await migrate(empty_conn, directory=migrations) == ALL_NAMES

    (migrations / "9000_probe.sql").write_text(EXTRA_SQL)
    assert await migrate(empty_conn, directory=migrations) == ["9000_probe.sql"]
    assert await _has_table(empty_conn, "migrate_probe")


async def test_concurrent_migrations_apply_each_file_once(empty_dsn: str, migrations: Path) -> None:
    # The sleep widens the window in which an unlocked second runner would also see the
    # file as pending (and then fail on the duplicate CREATE TABLE).
    (migrations / "9000_probe.sql").write_text("SELECT pg_sleep(0.2);\n" + EXTRA_SQL)
    first, second = [await asyncpg.connect(empty_dsn) for _ in range(2)]
    try:
        results = await asyncio.gather(
            migrate(first, directory=migrations),
            migrate(second, directory=migrations),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert errors == []
        expected = [*ALL_NAMES, "9000_probe.sql"]
        # One runner applied everything, the other waited on the lock and found nothing.
        assert sorted(results, key=len) == [[], expected]
        assert await _applied(first) == expected
        assert await _advisory_locks(first) == 0
    finally:
        await first.close()
        await second.close()


async def test_changed_migration_raises_naming_the_file(
    empty_conn: asyncpg.Connection, migrations: Path
) -> None:
    await migrate(empty_conn, directory=migrations)
    with (migrations / "0001_initial.sql").open("a") as file:
        file.write("\n-- edited after it ran\n")
    (migrations / "9001_more.sql").write_text("CREATE TABLE never_applied (id int);\n")

    with pytest.raises(MigrationChanged, match=r"0001_initial\.sql"):
        await migrate(empty_conn, directory=migrations)
    with pytest.raises(MigrationChanged, match=r"0001_initial\.sql"):
        await pending_migrations(empty_conn, directory=migrations)
    assert not await _has_table(empty_conn, "never_applied"), "applied despite the check"
    assert await _advisory_locks(empty_conn) == 0


async def test_applied_migration_missing_from_disk_raises(
    empty_conn: asyncpg.Connection, migrations: Path
) -> None:
    await migrate(empty_conn, directory=migrations)
    (migrations / "9000_probe.sql").unlink()

    with pytest.raises(MigrationError, match=r"9000_probe\.sql") as info:
        await migrate(empty_conn, directory=migrations)
    assert not isinstance(info.value, MigrationChanged)


async def test_new_file_below_an_applied_one_raises(
    empty_conn: asyncpg.Connection, migrations: Path
) -> None:
    await migrate(empty_conn, directory=migrations)
    (migrations / "0500_late.sql").write_text("CREATE TABLE late (id int);\n")

    with pytest.raises(MigrationError, match=r"0500_late\.sql"):
        await migrate(empty_conn, directory=migrations)
    assert not await _has_table(empty_conn, "late")


async def test_failed_migration_leaves_no_trace(
    empty_conn: asyncpg.Connection, migrations: Path
) -> None:
    (migrations / "9001_broken.sql").write_text("CREATE TABLE half (id int);\nSELECT 1/0;\n")

    with pytest.raises(MigrationError, match=r"9001_broken\.sql") as info:
        await migrate(empty_conn, directory=migrations)
    assert isinstance(info.value.__cause__, asyncpg.DivisionByZeroError)
    # The files before it committed; the broken one rolled back, table and row alike.
    assert await _applied(empty_conn) == [*ALL_NAMES, "9000_probe.sql"]
    assert not await _has_table(empty_conn, "half")
    assert await _advisory_locks(empty_conn) == 0


async def test_migrate_refuses_to_run_inside_a_transaction(
    empty_conn: asyncpg.Connection,
) -> None:
    async with empty_conn.transaction():
        with pytest.raises(MigrationError, match="outside a transaction"):
            await migrate(empty_conn)
    assert not await _has_table(empty_conn, "jobpool_migrations")


async def test_pending_migrations_lists_missing_and_writes_nothing(
    empty_conn: asyncpg.Connection, migrations: Path
) -> None:
    everything = [*ALL_NAMES, "9000_probe.sql"]
    assert await pending_migrations(empty_conn, directory=migrations) == everything
    assert not await _has_table(empty_conn, "jobpool_migrations"), "pending_migrations wrote"

    (migrations / "9000_probe.sql").unlink()
    await migrate(empty_conn, directory=migrations)
    (migrations / "9000_probe.sql").write_text(EXTRA_SQL)
    applied = await _applied(empty_conn)

    assert await pending_migrations(empty_conn, directory=migrations) == ["9000_probe.sql"]
    assert await _applied(empty_conn) == applied
    assert not await _has_table(empty_conn, "migrate_probe")


async def test_pending_migrations_waits_for_no_lock(
    empty_conn: asyncpg.Connection, empty_dsn: str
) -> None:
    other = await asyncpg.connect(empty_dsn)
    try:
        await other.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        pending = await asyncio.wait_for(pending_migrations(empty_conn), timeout=5)
        assert pending == ALL_NAMES
    finally:
        await other.close()


@pytest.mark.parametrize(
    "bad_name", ["1_init.sql", "0002-dash.sql", "0002_.sql", "00002_long.sql", "0002_a b.sql"]
)
def test_bad_file_name_raises(tmp_path: Path, bad_name: str) -> None:
    (tmp_path / "0001_ok.sql").write_text("SELECT 1;\n")
    (tmp_path / bad_name).write_text("SELECT 1;\n")
    with pytest.raises(MigrationError, match="bad migration file name"):
        load_migrations(tmp_path)


async def test_migrate_with_a_bad_file_name_writes_nothing(
    empty_conn: asyncpg.Connection, tmp_path: Path
) -> None:
    (tmp_path / "init.sql").write_text("CREATE TABLE t (id int);\n")
    with pytest.raises(MigrationError, match=r"'init\.sql'"):
        await migrate(empty_conn, directory=tmp_path)
    assert not await _has_table(empty_conn, "jobpool_migrations")


def test_duplicate_number_raises(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;\n")
    (tmp_path / "0001_b.sql").write_text("SELECT 2;\n")
    with pytest.raises(MigrationError, match="share number 1"):
        load_migrations(tmp_path)


def test_load_migrations_sorts_by_number_and_ignores_other_files(tmp_path: Path) -> None:
    for name in ["0010_c.sql", "0002_b.sql", "0001_a.sql"]:
        (tmp_path / name).write_text(f"-- {name}\n")
    (tmp_path / "README.md").write_text("not a migration\n")
    assert [m.name for m in load_migrations(tmp_path)] == ["0001_a.sql", "0002_b.sql", "0010_c.sql"]


def test_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="does not exist"):
        load_migrations(tmp_path / "nope")


async def test_per_test_database_is_migrated_and_private(conn: asyncpg.Connection) -> None:
    assert (await conn.fetchval("SELECT current_database()")).startswith("jobpool_t_")
    assert await pending_migrations(conn) == []
    assert await _applied(conn) == ALL_NAMES
    assert await migrate(conn) == []
