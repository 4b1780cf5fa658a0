"""One table of expression cases for every evaluator of the language (Python, pyarrow, Lua, Spark SQL).

``CASES`` pairs a measure with its value on each of ``ROWS`` (``None``: the event does not count), worked
out by hand from the semantics in :mod:`fstore.core.expr`; the random generators add expressions and
rows on which the evaluators must agree with each other.
"""

from __future__ import annotations

import random
from typing import Any

from fstore.core.expr import Column, Kind

SCHEMA = {
    "kind": Column(Kind.STRING, frozenset({"click", "buy", "view"})),
    "label": Column(Kind.STRING),
    "price": Column(Kind.NUMBER),
    "qty": Column(Kind.NUMBER),
    "flag": Column(Kind.BOOL),
}

ROWS: list[dict[str, Any]] = [
    {"kind": "buy", "label": "a", "price": 2.5, "qty": 3, "flag": True},
    {"kind": "buy", "label": None, "price": None, "qty": 1, "flag": False},
    {"kind": "click", "label": "it's", "price": 0.1, "qty": 2, "flag": None},
    {"kind": "view", "qty": 0},  # missing fields are null
    {"kind": "click", "label": "b", "price": -0.0, "qty": 2**53 + 1, "flag": True},
]

# (measure, expected value per row; None = the event does not count)
CASES: list[tuple[str, list[Any]]] = [
    ("price * qty if kind == 'buy'", [7.5, None, None, None, None]),
    ("1", [1.0] * 5),
    ("1 if kind != 'buy'", [None, None, 1.0, 1.0, 1.0]),
    ("1 if flag", [1.0, None, None, None, 1.0]),
    ("1 if not flag", [None, 1.0, 1.0, 1.0, None]),  # a null boolean is false, so "not" of it is true
    ("1 if not (price > 1)", [None, 1.0, 1.0, 1.0, 1.0]),  # null > 1 is false, so "not" of it is true
    ("1 if price > 0", [1.0, None, 1.0, None, None]),
    ("1 if price == 0", [None, None, None, None, 1.0]),  # -0.0 == 0
    ("1 if price != 2.5", [None, None, 1.0, None, 1.0]),  # null != x is false, not true
    ("1 if label is null", [None, 1.0, None, 1.0, None]),
    ("1 if label not in ('a')", [None, None, 1.0, None, 1.0]),  # null "not in" is false
    ("qty", [3.0, 1.0, 2.0, 0.0, float(2**53 + 1)]),  # integers become doubles (2**53 + 1 rounds)
    ("price * qty * qty if qty >= 2", [22.5, None, 0.4, None, -0.0]),
    ("price - qty - 1 if kind in ('buy', 'click')", [-1.5, None, -2.9, None, -(2.0**53)]),  # -2**53 - 1 rounds
    ("-price if flag or kind == 'view'", [-2.5, None, None, None, 0.0]),
    ("label if flag == false or label == 'b'", [None, None, None, None, "b"]),
    ("1 if (kind == 'buy' or kind == 'click') and qty in (2, 3)", [1.0, None, 1.0, None, None]),
]


def random_rows(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """Rows over :data:`SCHEMA` with nulls in every field (``qty`` an integer, ``price`` a double)."""
    return [
        {
            "kind": rng.choice(["buy", "click", "view", None]),
            "label": rng.choice(["a", "b", "c", None]),
            "price": rng.choice([None, 0.0, 1.0, 2.5, rng.uniform(-5, 5)]),
            "qty": rng.choice([None, 1, 2, 3]),
            "flag": rng.choice([True, False, None]),
        }
        for _ in range(n)
    ]


def random_expr(rng: random.Random, depth: int, kind: str) -> str:
    if kind == "num":
        if depth == 0 or rng.random() < 0.3:
            return rng.choice(["price", "qty", "1", "2.5", "-3", "0.1"])
        op = rng.choice(["+", "-", "*"])
        return f"({random_expr(rng, depth - 1, 'num')} {op} {random_expr(rng, depth - 1, 'num')})"
    if depth == 0 or rng.random() < 0.3:
        return rng.choice(
            ["flag", "kind == 'buy'", "label is null", "price > 1", "qty in (1, 2)", "label not in ('a', 'b')"]
        )
    op = rng.choice(["and", "or", "not", "cmp"])
    if op == "not":
        return f"not ({random_expr(rng, depth - 1, 'bool')})"
    if op == "cmp":
        cmp = rng.choice(["<", "<=", "==", "!=", ">", ">="])
        return f"{random_expr(rng, depth - 1, 'num')} {cmp} {random_expr(rng, depth - 1, 'num')}"
    return f"({random_expr(rng, depth - 1, 'bool')}) {op} ({random_expr(rng, depth - 1, 'bool')})"


def random_measures(rng: random.Random, n: int) -> list[str]:
    """``n`` random measures ``VALUE if CONDITION`` over :data:`SCHEMA`."""
    return [f"{random_expr(rng, 3, 'num')} if {random_expr(rng, 3, 'bool')}" for _ in range(n)]
