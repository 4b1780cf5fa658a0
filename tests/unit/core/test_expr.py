"""The expression language of filters and measures (fstore.core.expr, expr_eval): syntax, types, and
the Python and pyarrow evaluators on a table of hand-computed cases and on random rows."""

from __future__ import annotations

import random
from typing import Any

import pyarrow as pa
import pytest

from fstore.core.expr import (
    Arith,
    Col,
    Compare,
    ExprError,
    In,
    Kind,
    Logic,
    Num,
    Str,
    columns,
    unparse,
    unparse_measure,
)
from fstore.core.expr_check import check_measure
from fstore.core.expr_eval import compile_row, measure_arrow, measure_fn, truth_arrow
from fstore.core.expr_parse import parse_condition, parse_measure
from tests.support.expr_cases import CASES, ROWS, SCHEMA, random_measures, random_rows

pytestmark = pytest.mark.unit


def test_a_measure_is_a_value_and_an_optional_condition() -> None:
    value, where = parse_measure("price * qty if kind == 'buy'")
    assert value == Arith("*", Col("price"), Col("qty"))
    assert where == Compare("==", Col("kind"), Str("buy"))
    assert parse_measure("1") == (Num(1.0), None)
    assert parse_condition("kind in ('a', 'b') and not flag") == Logic(
        "and", (In(Col("kind"), ("a", "b")), parse_condition("not flag"))
    )
    assert columns(value) | columns(where) == {"price", "qty", "kind"}


@pytest.mark.parametrize(
    "text",
    [
        "price * qty if kind == 'buy'",
        "1 if kind in ('click', 'buy') and not flag",
        "-price * qty - (price - qty) if price is not null or qty > -2.5",
        "label if label != 'it''s' and (flag or price >= 1e+20)",
        "price - (qty - 1) if not (kind == 'buy' or kind == 'view') and qty not in (1, 2)",
        "(price + qty) * 2 if flag == true and label is null",
    ],
)
def test_unparse_round_trips(text: str) -> None:
    value, where = parse_measure(text)
    assert parse_measure(unparse_measure(value, where)) == (value, where)
    assert unparse_measure(*parse_measure(unparse_measure(value, where))) == unparse_measure(value, where)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("price / qty", "no division"),
        ("price if kind = 'buy'", "compare with =="),
        ('1 if kind == "buy"', "single quotes"),
        ("1 if", "expected a value"),
        ("kind == 'buy'", "VALUE [if CONDITION]"),
        ("1 if a == b == c", "expected the end"),
        ("1 if kind in ('a', 2)", "all be strings or all be numbers"),
        ("1 if kind in ()", "expected a string or number literal"),
        ("(price", "expected ')'"),
        ("1 if price @ 2", "unexpected '@'"),
        ("1 if null", "expected a value"),
    ],
)
def test_syntax_errors_say_where_and_what(text: str, message: str) -> None:
    with pytest.raises(
        ExprError,
        match="(?s).*" + message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]"),
    ):
        parse_measure(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prise if kind == 'buy'", "unknown field 'prise' (did you mean price?)"),
        ("label * 2", "arithmetic needs numbers, but label is a string"),
        ("1 if kind == 3", "compares a string with a number"),
        ("1 if label < 'x'", "orders numbers only"),
        ("1 if kind == 'bye'", "'bye' is not a declared value of kind"),
        ("1 if kind in ('buy', 'bye')", "'bye' is not a declared value of kind"),
        ("1 if price in ('a')", "looks for strings in a number"),
        ("1 if price", "must be true or false"),
        ("1 if flag and price", "and needs conditions, but price is a number"),
        ("flag", "write '1 if flag'"),
        ("-label", "arithmetic needs numbers"),
    ],
)
def test_type_errors_name_the_field_and_what_to_do(text: str, message: str) -> None:
    value, where = parse_measure(text)
    with pytest.raises(ExprError) as err:
        check_measure(value, where, SCHEMA)
    assert message in str(err.value)


def test_a_measure_value_may_be_a_string() -> None:
    assert check_measure(*parse_measure("label if flag"), SCHEMA) is Kind.STRING
    assert check_measure(*parse_measure("price * qty if kind == 'buy'"), SCHEMA) is Kind.NUMBER


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_python_evaluation(text: str, expected: list[Any]) -> None:
    value, where = parse_measure(text)
    check_measure(value, where, SCHEMA)
    got = [measure_fn(value, where)(row) for row in ROWS]
    assert got == expected
    assert [type(g) for g in got] == [type(e) for e in expected]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_arrow_evaluation_matches(text: str, expected: list[Any]) -> None:
    table = pa.Table.from_pylist(ROWS)
    mask, values = measure_arrow(*parse_measure(text), table)
    got = [v if m else None for v, m in zip(values.to_pylist(), mask.to_pylist(), strict=True)]
    assert got == expected
    assert mask.null_count == 0


def test_arrow_reads_a_field_missing_from_older_data_as_null() -> None:
    table = pa.table({"kind": ["buy", "click"]})
    mask, _ = measure_arrow(*parse_measure("1 if flag or price > 1 or label == 'a'"), table, SCHEMA)
    assert mask.to_pylist() == [False, False]
    assert truth_arrow(parse_condition("price is null"), table).to_pylist() == [True, True]


def test_python_and_arrow_agree_on_random_expressions_and_rows() -> None:
    rng = random.Random(7)
    rows = random_rows(rng, 200)
    table = pa.Table.from_pylist(rows)
    for text in random_measures(rng, 150):
        value, where = parse_measure(text)
        check_measure(value, where, SCHEMA)
        python = [measure_fn(value, where)(r) for r in rows]
        mask, values = measure_arrow(value, where, table)
        arrow = [v if m else None for v, m in zip(values.to_pylist(), mask.to_pylist(), strict=True)]
        assert arrow == python, text
        assert unparse(parse_measure(unparse_measure(value, where))[0]) == unparse(value)


def test_compiled_closures_are_cached_per_tree() -> None:
    node = parse_condition("kind == 'buy'")
    assert compile_row(node) is compile_row(parse_condition("kind == 'buy'"))
