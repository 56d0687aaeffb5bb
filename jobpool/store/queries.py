"""Named SQL statements, loaded once from ``jobpool/sql/queries.sql``.

Each statement starts with a ``-- name: entity_verb`` line; the text up to the next
such line is the statement. Statements are grouped by the store module that runs them,
each group under a ``-- section: …`` line whose comments are not part of a statement.

A statement names its parameters ``:name``; at load time each name becomes ``$n``
(numbered by first appearance, a repeated name keeps its number) and the statement
keeps its ordered names, so a call binds by name::

    await conn.fetch(*QUERIES.bind("job_retry_many", pool=pool, owner=owner, ...))

``bind`` is a dict look-up and a tuple of the values, nothing parsed per call; the SQL
text is the same string for every call, so asyncpg prepares it once per connection.
A statement never writes ``$n`` itself (the loader refuses it): every call binds by name.

What is not a parameter: ``::type`` casts, ``:=``, and anything inside a string
(``'…'``, ``E'…'``, ``$tag$…$tag$``), a quoted identifier or a comment.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Final

_MARK_LINE = re.compile(r"^-- (?:name: (\w+)[ \t]*|section: .*)$", re.MULTILINE)

_TOKEN = re.compile(
    r"""
      (?P<skip>
          [Ee]'(?:[^'\\]|\\.|'')*'                      # escape string
        | '(?:[^']|'')*'                                # string
        | "(?:[^"]|"")*"                                # quoted identifier
        | \$(?P<tag>(?:[A-Za-z_]\w*)?)\$.*?\$(?P=tag)\$  # dollar-quoted string
        | --[^\n]*                                      # line comment
        | /\*.*?\*/                                     # block comment
        | ::                                            # cast
        | :=                                            # assignment
        | \w+                                           # word (``E`` of ``type'``…)
      )
    | :(?P<name>[A-Za-z_]\w*)
    | (?P<positional>\$\d+)
    | (?P<open>['"]|/\*)
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class Statement:
    """One named statement: its SQL (``$n`` parameters) and the name of each ``$n``."""

    name: str
    sql: str
    params: tuple[str, ...]


def compile_statement(name: str, text: str) -> Statement:
    """Turn the ``:name`` parameters of ``text`` into ``$n``; refuse a written ``$n``."""
    numbers: dict[str, int] = {}

    def replace(match: re.Match[str]) -> str:
        if (param := match["name"]) is not None:
            return f"${numbers.setdefault(param, len(numbers) + 1)}"
        if match["open"] is not None:
            raise ValueError(f"query {name!r}: unterminated {match['open']!r}")
        if match["positional"] is not None:
            raise ValueError(f"query {name!r} writes {match[0]}: name it (:name) instead")
        return match[0]

    sql = _TOKEN.sub(replace, text)
    return Statement(name=name, sql=sql, params=tuple(numbers))


def parse_queries(text: str) -> dict[str, Statement]:
    """Split a ``.sql`` file of named statements into ``{name: statement}``."""
    parts = _MARK_LINE.split(text)
    queries: dict[str, Statement] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name is None:
            _check_section(body)
            continue
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = compile_statement(name, body.strip())
    return queries


def _check_section(body: str) -> None:
    """A section's lines after its title are comments: SQL there would be lost."""
    for line in body.splitlines():
        if line.strip() and not line.lstrip().startswith("--"):
            raise ValueError(f"SQL outside a named statement: {line.strip()!r}")


class Queries(Mapping[str, str]):
    """The statements by name: ``QUERIES[name]`` is the SQL text, ``bind`` its call."""

    def __init__(self, statements: Mapping[str, Statement]) -> None:
        self._statements = dict(statements)

    def __getitem__(self, name: str) -> str:
        return self._statements[name].sql

    def __iter__(self) -> Iterator[str]:
        return iter(self._statements)

    def __len__(self) -> int:
        return len(self._statements)

    def params(self, name: str) -> tuple[str, ...]:
        """The parameter names of ``name``, in ``$n`` order."""
        return self._statements[name].params

    def bind(self, name: str, /, **params: object) -> tuple[object, ...]:
        """``(sql, *values)`` for ``conn.fetch(*…)``: every parameter, by name, once."""
        statement = self._statements[name]
        try:
            bound = (statement.sql, *map(params.__getitem__, statement.params))
        except KeyError as exc:
            raise TypeError(f"query {name!r} is missing parameter {exc.args[0]!r}") from None
        if len(params) != len(statement.params):
            unexpected = sorted(set(params) - set(statement.params))
            raise TypeError(f"query {name!r} got unexpected parameter(s) {unexpected}")
        return bound


QUERIES: Final = Queries(
    parse_queries(
        resources.files("jobpool").joinpath("sql", "queries.sql").read_text(encoding="utf-8")
    )
)
