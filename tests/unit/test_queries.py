"""Named SQL statements: the ``:name`` parser, binding by name, and that the code and
``jobpool/sql/queries.sql`` name the same statements."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from jobpool.store.queries import QUERIES, Queries, compile_statement, parse_queries

PACKAGE = Path(__file__).resolve().parents[2] / "jobpool"


def test_names_become_numbers_by_first_appearance_and_repeats_share_one() -> None:
    statement = compile_statement("q", "SELECT :b, :a WHERE x = :b AND y = ANY(:a)")
    assert statement.sql == "SELECT $1, $2 WHERE x = $1 AND y = ANY($2)"
    assert statement.params == ("b", "a")


def test_casts_and_assignments_are_not_parameters() -> None:
    statement = compile_statement("q", "SELECT :ids::uuid[], x::text, f(a := :a), '1'::int")
    assert statement.sql == "SELECT $1::uuid[], x::text, f(a := $2), '1'::int"
    assert statement.params == ("ids", "a")


@pytest.mark.parametrize(
    "text",
    [
        "SELECT ':no', :yes",
        "SELECT 'it''s :no', :yes",
        "SELECT E'\\' :no', :yes",
        'SELECT ":no" FROM t WHERE a = :yes',
        "SELECT $$ :no $$, :yes",
        "SELECT $body$ ' :no $$ $body$, :yes",
        "SELECT :yes -- a comment on :no\n",
        "-- :no\nSELECT :yes",
        "SELECT /* :no\n:no */ :yes",
    ],
)
def test_strings_identifiers_and_comments_hide_names(text: str) -> None:
    statement = compile_statement("q", text)
    assert statement.params == ("yes",)
    assert ":no" in statement.sql
    assert ":yes" not in statement.sql


@pytest.mark.parametrize("text", ["SELECT $1::int", "SELECT :a, $2"])
def test_a_written_positional_parameter_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"'q' writes \$\d: name it"):
        compile_statement("q", text)


def test_a_dollar_quoted_string_is_no_positional_parameter() -> None:
    assert compile_statement("q", "SELECT $$ $1 $$, :a").params == ("a",)


@pytest.mark.parametrize("text", ["SELECT 'open :a", 'SELECT "open', "SELECT /* open"])
def test_an_unterminated_string_or_comment_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="'q': unterminated"):
        compile_statement("q", text)


def test_a_name_defined_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="'a' is defined twice"):
        parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")


QUERIES_FOR_BIND = Queries(parse_queries("-- name: pair\nSELECT :left, :right, :left;\n"))


def test_bind_orders_values_by_number() -> None:
    assert QUERIES_FOR_BIND.bind("pair", right=2, left=1) == ("SELECT $1, $2, $1;", 1, 2)
    assert QUERIES_FOR_BIND["pair"] == "SELECT $1, $2, $1;"
    assert QUERIES_FOR_BIND.params("pair") == ("left", "right")


def test_bind_names_a_missing_parameter() -> None:
    with pytest.raises(TypeError, match="query 'pair' is missing parameter 'right'"):
        QUERIES_FOR_BIND.bind("pair", left=1)


def test_bind_names_unexpected_parameters() -> None:
    with pytest.raises(TypeError, match=r"query 'pair' got unexpected parameter\(s\) \['up'\]"):
        QUERIES_FOR_BIND.bind("pair", left=1, right=2, up=3)


def _names_asked_by_the_package() -> set[str]:
    """Every ``QUERIES["name"]`` and ``QUERIES.bind("name", …)`` in the package."""
    asked: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Subscript)
                and isinstance(node.value, ast.Name)
                and node.value.id == "QUERIES"
            ):
                key = node.slice
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "QUERIES"
                and node.func.attr == "bind"
            ):
                key = node.args[0]
            else:
                continue
            assert isinstance(key, ast.Constant), f"{path}: QUERIES is looked up by a literal"
            asked.add(key.value)
    return asked


def test_the_code_and_the_sql_file_name_the_same_statements() -> None:
    asked = _names_asked_by_the_package()
    assert sorted(asked - set(QUERIES)) == [], "asked for but not in queries.sql"
    assert sorted(set(QUERIES) - asked) == [], "in queries.sql but never used"


def test_section_lines_group_statements_and_are_no_part_of_them() -> None:
    text = (
        "-- section: a — first\n-- notes\n\n"
        "-- name: x\nSELECT 1;\n-- section: b\n-- name: y\nSELECT 2;\n"
    )
    statements = parse_queries(text)
    assert {name: s.sql for name, s in statements.items()} == {"x": "SELECT 1;", "y": "SELECT 2;"}


def test_sql_under_a_section_line_outside_a_statement_is_refused() -> None:
    with pytest.raises(ValueError, match="SQL outside a named statement: 'SELECT 1;'"):
        parse_queries("-- section: a\nSELECT 1;\n-- name: x\nSELECT 2;\n")
