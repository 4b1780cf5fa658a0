"""Evaluators of the expression language (:mod:`fstore.core.expr`): one event at a time, or columnar.

:func:`compile_row` turns a tree into a Python closure over one event (a mapping of field → value, a
missing field being null); :func:`evaluate_arrow` evaluates a tree over the columns of a pyarrow table
or record batch at once (what the pandas/numpy paths call: ``pa.Table.from_pandas(df)``). Both follow
the semantics of the language exactly — numbers as doubles, null in / null out for arithmetic, a
comparison with a null operand false, a null boolean field false — and the tests hold them equal.
Expressions are assumed type-checked (:func:`fstore.core.expr.check_measure`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, TypeAlias

import pyarrow as pa
import pyarrow.compute as pc

from fstore.core.expr import Arith, Bool, Col, Column, Compare, Expr, In, IsNull, Kind, Neg, Not, Num, Str

Row = Mapping[str, Any]
RowFn = Callable[[Row], Any]

_ARITH = {"+": operator.add, "-": operator.sub, "*": operator.mul}
_COMPARE = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _scalar(v: Any) -> Any:
    """A field's value as the language sees it: integers become doubles, booleans stay booleans."""
    if type(v) is int:
        return float(v)
    return v


@cache
def compile_row(node: Expr) -> RowFn:
    """A closure computing ``node`` for one event (``None`` is null)."""
    if isinstance(node, Num | Str | Bool):
        const = node.value
        return lambda row: const
    if isinstance(node, Col):
        name = node.name
        return lambda row: _scalar(row.get(name))
    if isinstance(node, Neg):
        inner = compile_row(node.operand)

        def neg(row: Row) -> Any:
            v = inner(row)
            return None if v is None else -v

        return neg
    if isinstance(node, Arith | Compare):
        left, right = compile_row(node.left), compile_row(node.right)
        if isinstance(node, Arith):
            arith = _ARITH[node.op]

            def binary(row: Row) -> Any:
                a, b = left(row), right(row)
                return None if a is None or b is None else arith(a, b)

            return binary
        compare = _COMPARE[node.op]

        def comparison(row: Row) -> bool:
            a, b = left(row), right(row)
            return a is not None and b is not None and bool(compare(a, b))

        return comparison
    if isinstance(node, In):
        inner, values, negated = compile_row(node.operand), frozenset(node.values), node.negated

        def member(row: Row) -> bool:
            v = inner(row)
            return v is not None and (v in values) is not negated

        return member
    if isinstance(node, IsNull):
        inner, negated = compile_row(node.operand), node.negated
        return lambda row: (inner(row) is None) is not negated
    if isinstance(node, Not):
        inner = truth(node.operand)
        return lambda row: not inner(row)
    parts = tuple(truth(x) for x in node.operands)
    if node.op == "and":
        return lambda row: all(p(row) for p in parts)
    return lambda row: any(p(row) for p in parts)


@cache
def truth(node: Expr) -> Callable[[Row], bool]:
    """A closure telling whether a condition holds for one event (a null boolean does not hold)."""
    inner = compile_row(node)
    return lambda row: inner(row) is True


def measure_fn(value: Expr, where: Expr | None) -> RowFn:
    """A closure giving the measured value of one event, or ``None`` when the event does not count."""
    val = compile_row(value)
    if where is None:
        return val
    cond = truth(where)
    return lambda row: val(row) if cond(row) else None


Columns: TypeAlias = pa.Table | pa.RecordBatch
Schema = Mapping[str, Column]
_NO_SCHEMA: Schema = {}

_ARROW_ARITH = {"+": pc.add, "-": pc.subtract, "*": pc.multiply}
_ARROW_COMPARE = {
    "==": pc.equal,
    "!=": pc.not_equal,
    "<": pc.less,
    "<=": pc.less_equal,
    ">": pc.greater,
    ">=": pc.greater_equal,
}


_ARROW_TYPES = {Kind.NUMBER: pa.float64(), Kind.STRING: pa.string(), Kind.BOOL: pa.bool_()}


def _column(data: Columns, name: str, schema: Schema) -> pa.Array | pa.ChunkedArray:
    if name not in data.column_names:  # an optional field added later: null in older data
        return pa.nulls(data.num_rows, _ARROW_TYPES[schema[name].kind] if name in schema else pa.float64())
    col = data.column(name)
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_decimal(col.type):
        return pc.cast(col, pa.float64(), safe=False)  # a 64-bit integer rounds to the nearest double
    return col


def _broadcast(v: Any, n: int) -> pa.Array | pa.ChunkedArray:
    if isinstance(v, pa.Scalar):
        return pa.repeat(v, n)
    return v


def evaluate_arrow(node: Expr, data: Columns, schema: Schema = _NO_SCHEMA) -> pa.Array | pa.ChunkedArray:
    """``node`` over every row of ``data``, as an array of the table's length (nulls are nulls).

    ``schema`` (the event fields' kinds) types the fields ``data`` lacks (all null: optional fields added
    after the data was written); without it they are numbers.
    """
    return _broadcast(_arrow(node, data, schema), data.num_rows)


def truth_arrow(node: Expr, data: Columns, schema: Schema = _NO_SCHEMA) -> pa.Array | pa.ChunkedArray:
    """A boolean array without nulls: where the condition holds."""
    return pc.fill_null(evaluate_arrow(node, data, schema), False)


def _arrow(node: Expr, data: Columns, schema: Schema) -> Any:
    if isinstance(node, Num):
        return pa.scalar(node.value, pa.float64())
    if isinstance(node, Str):
        return pa.scalar(node.value, pa.string())
    if isinstance(node, Bool):
        return pa.scalar(node.value, pa.bool_())
    if isinstance(node, Col):
        return _column(data, node.name, schema)
    if isinstance(node, Neg):
        return pc.negate(_arrow(node.operand, data, schema))
    if isinstance(node, Arith):
        return _ARROW_ARITH[node.op](_arrow(node.left, data, schema), _arrow(node.right, data, schema))
    if isinstance(node, Compare):
        compared = _ARROW_COMPARE[node.op](_arrow(node.left, data, schema), _arrow(node.right, data, schema))
        return pc.fill_null(compared, False)
    if isinstance(node, In):
        operand = evaluate_arrow(node.operand, data, schema)
        kind = pa.string() if isinstance(node.values[0], str) else pa.float64()
        found = pc.is_in(operand, value_set=pa.array(node.values, kind))
        return pc.and_(pc.invert(found), pc.is_valid(operand)) if node.negated else found
    if isinstance(node, IsNull):
        operand = evaluate_arrow(node.operand, data, schema)
        return pc.is_valid(operand) if node.negated else pc.is_null(operand)
    if isinstance(node, Not):
        return pc.invert(truth_arrow(node.operand, data, schema))
    combine = pc.and_ if node.op == "and" else pc.or_
    out = truth_arrow(node.operands[0], data, schema)
    for x in node.operands[1:]:
        out = combine(out, truth_arrow(x, data, schema))
    return out


def measure_arrow(value: Expr, where: Expr | None, data: Columns, schema: Schema = _NO_SCHEMA) -> tuple[Any, Any]:
    """``(mask, values)`` of a measure over ``data``: ``mask`` (no nulls) marks the events that count.

    ``schema``: as :func:`evaluate_arrow`.
    """
    values = evaluate_arrow(value, data, schema)
    mask = pc.is_valid(values)
    if where is not None:
        mask = pc.and_(mask, truth_arrow(where, data, schema))
    return mask, values
