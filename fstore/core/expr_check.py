"""The type checker of the expression language (:mod:`fstore.core.expr`) against the event fields.

It runs when a repository is compiled, so that a mistake is reported with its definition instead of
showing up as a wrong value: unknown fields (with the closest names), arithmetic on a non-number,
comparisons across kinds, ordering of non-numbers, a string compared with a value its field does not
declare, a boolean where a value is expected and a value where a condition is expected.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from fstore.core.expr import (
    Arith,
    Bool,
    Col,
    Column,
    Compare,
    Expr,
    ExprError,
    In,
    IsNull,
    Kind,
    Neg,
    Not,
    Num,
    Str,
    unparse,
)


def kind_of(node: Expr, schema: Mapping[str, Column]) -> Kind:
    """Type-check ``node`` against the event fields and return the kind of its value.

    Raises:
        ExprError: an unknown field (with the closest known names), arithmetic on a non-number, a
            comparison of two kinds, an ordering of non-numbers, a string compared with a value its
            field does not declare, or a non-boolean where a condition is expected.
    """
    if isinstance(node, Num):
        return Kind.NUMBER
    if isinstance(node, Str):
        return Kind.STRING
    if isinstance(node, Bool):
        return Kind.BOOL
    if isinstance(node, Col):
        if node.name not in schema:
            close = difflib.get_close_matches(node.name, list(schema), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else f" (fields: {', '.join(sorted(schema))})"
            raise ExprError(f"unknown field '{node.name}'{hint}")
        return schema[node.name].kind
    if isinstance(node, Neg | Arith):
        for operand in (node.operand,) if isinstance(node, Neg) else (node.left, node.right):
            k = kind_of(operand, schema)
            if k is not Kind.NUMBER:
                raise ExprError(f"arithmetic needs numbers, but {unparse(operand)} is a {k}")
        return Kind.NUMBER
    if isinstance(node, Compare):
        left, right = kind_of(node.left, schema), kind_of(node.right, schema)
        if left is not right:
            raise ExprError(f"{unparse(node)} compares a {left} with a {right}")
        if node.op not in ("==", "!=") and left is not Kind.NUMBER:
            raise ExprError(f"{unparse(node)}: {node.op} orders numbers only; use == or != for a {left}")
        _check_declared(node.left, node.right, schema)
        _check_declared(node.right, node.left, schema)
        return Kind.BOOL
    if isinstance(node, In):
        k = kind_of(node.operand, schema)
        want = Kind.STRING if isinstance(node.values[0], str) else Kind.NUMBER
        if k is not want:
            raise ExprError(f"{unparse(node)} looks for {want}s in a {k}")
        for v in node.values:
            _check_declared(node.operand, Str(v) if isinstance(v, str) else Num(v), schema)
        return Kind.BOOL
    if isinstance(node, IsNull):
        kind_of(node.operand, schema)
        return Kind.BOOL
    word, operands = ("not", (node.operand,)) if isinstance(node, Not) else (node.op, node.operands)
    for operand in operands:
        k = kind_of(operand, schema)
        if k is not Kind.BOOL:
            raise ExprError(f"{word} needs conditions, but {unparse(operand)} is a {k}")
    return Kind.BOOL


def _check_declared(field: Expr, literal: Expr, schema: Mapping[str, Column]) -> None:
    """A string literal compared with a field that declares its values must be one of them."""
    if isinstance(field, Col) and isinstance(literal, Str) and field.name in schema:
        declared = schema[field.name].values
        if declared and literal.value not in declared:
            raise ExprError(
                f"'{literal.value}' is not a declared value of {field.name} (declared: {', '.join(sorted(declared))})"
            )


def check_condition(node: Expr, schema: Mapping[str, Column]) -> None:
    """Type-check a condition (it must be boolean). Raises :class:`ExprError`."""
    k = kind_of(node, schema)
    if k is not Kind.BOOL:
        raise ExprError(f"a condition must be true or false, but {unparse(node)} is a {k}")


def check_measure(value: Expr, where: Expr | None, schema: Mapping[str, Column]) -> Kind:
    """Type-check a measure; its value is a number or a string (strings serve count and count_distinct).

    Raises:
        ExprError: as :func:`kind_of`, or when the value is a boolean.
    """
    k = kind_of(value, schema)
    if k is Kind.BOOL:
        raise ExprError(f"a measure's value is a number or a string, not a condition: write '1 if {unparse(value)}'")
    if where is not None:
        check_condition(where, schema)
    return k
