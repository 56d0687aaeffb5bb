"""Named SQL statements, loaded once from ``jobpool/sql/queries.sql``.

Each statement starts with a ``-- name: entity_verb`` line; the text up to the next
such line is the statement. Runtime code looks statements up by name and runs them
with ``$n`` parameters; asyncpg prepares each one once per connection.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Final

_NAME_LINE = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """Split a ``.sql`` file of named statements into ``{name: statement}``."""
    parts = _NAME_LINE.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip()
    return queries


QUERIES: Final = parse_queries(
    resources.files("jobpool").joinpath("sql", "queries.sql").read_text(encoding="utf-8")
)
