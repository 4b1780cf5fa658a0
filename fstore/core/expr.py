"""The declared expression language of filters and measures (docs/design.md §3, docs/adr/0012).

A measure is declared as one line, ``VALUE [if CONDITION]``, e.g. ``amount * units if action ==
'sale'`` or ``1 if action in ('tap', 'swipe')``. The language is deliberately small so that
Python, pyarrow (pandas/numpy), Spark SQL and Lua evaluate it identically:

- values are null, booleans, strings and numbers; every number (integer fields and literals included)
  is an IEEE-754 double, and arithmetic is ``+``, ``-``, unary ``-`` and ``*`` evaluated left to right
  (no division: a ratio is a derived feature with its own null rule); null in, null out;
- conditions are ``==``, ``!=`` (any two values of one kind), ``<``, ``<=``, ``>``, ``>=`` (numbers),
  ``x [not] in ('a', 'b')``, ``x is [not] null``, ``not``, ``and``, ``or``, and a boolean field alone;
  logic is two-valued: a comparison or an ``in`` with a null operand is false, a null boolean field is
  false;
- a measure counts an event when its condition is true and its value is not null.

This module holds the syntax tree (frozen dataclasses: two parses of one text compare equal) and its
canonical text; :mod:`fstore.core.expr_parse` parses, :mod:`fstore.core.expr_check` type-checks against
the event schema, :mod:`fstore.core.expr_eval` evaluates (Python rows, pyarrow columns) and
:mod:`fstore.core.expr_render` writes Spark SQL and Lua.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ExprError(ValueError):
    """A text that is not a valid expression, or one that does not type-check against the event schema."""


class Kind(StrEnum):
    """The kind of an expression's value."""

    NUMBER = "number"
    STRING = "string"
    BOOL = "bool"


@dataclass(frozen=True)
class Column:
    """What the type checker knows of an event field: its kind and, for strings, the declared values."""

    kind: Kind
    values: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Num:
    value: float


@dataclass(frozen=True, slots=True)
class Str:
    value: str


@dataclass(frozen=True, slots=True)
class Bool:
    value: bool


@dataclass(frozen=True, slots=True)
class Col:
    name: str


@dataclass(frozen=True, slots=True)
class Neg:
    operand: Expr


@dataclass(frozen=True, slots=True)
class Arith:
    op: str  # "+", "-", "*"
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Compare:
    op: str  # "==", "!=", "<", "<=", ">", ">="
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class In:
    operand: Expr
    values: tuple[str, ...] | tuple[float, ...]
    negated: bool = False


@dataclass(frozen=True, slots=True)
class IsNull:
    operand: Expr
    negated: bool = False


@dataclass(frozen=True, slots=True)
class Not:
    operand: Expr


@dataclass(frozen=True, slots=True)
class Logic:
    op: str  # "and", "or"
    operands: tuple[Expr, ...]


Expr = Num | Str | Bool | Col | Neg | Arith | Compare | In | IsNull | Not | Logic


def columns(node: Expr) -> frozenset[str]:
    """The event fields an expression reads."""
    if isinstance(node, Col):
        return frozenset((node.name,))
    if isinstance(node, Num | Str | Bool):
        return frozenset()
    if isinstance(node, Arith | Compare):
        return columns(node.left) | columns(node.right)
    if isinstance(node, Logic):
        return frozenset().union(*(columns(x) for x in node.operands))
    return columns(node.operand)


_PRECEDENCE = {"or": 1, "and": 2, "not": 3, "compare": 4, "+": 5, "-": 5, "*": 6, "neg": 7, "atom": 8}


def _level(node: Expr) -> int:
    if isinstance(node, Logic):
        return _PRECEDENCE[node.op]
    if isinstance(node, Not):
        return _PRECEDENCE["not"]
    if isinstance(node, Compare | In | IsNull):
        return _PRECEDENCE["compare"]
    if isinstance(node, Arith):
        return _PRECEDENCE[node.op]
    if isinstance(node, Neg):
        return _PRECEDENCE["neg"]
    return _PRECEDENCE["atom"]


def _literal_text(v: float | str) -> str:
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    return repr(int(v)) if v.is_integer() and abs(v) < 1e16 else repr(v)


def unparse(node: Expr) -> str:
    """The canonical text of an expression; ``parse(unparse(e)) == e``."""

    def sub(child: Expr, min_level: int) -> str:
        text = unparse(child)
        return f"({text})" if _level(child) < min_level else text

    if isinstance(node, Num | Str):
        return _literal_text(node.value)
    if isinstance(node, Bool):
        return "true" if node.value else "false"
    if isinstance(node, Col):
        return node.name
    if isinstance(node, Neg):
        return "-" + sub(node.operand, _PRECEDENCE["neg"])
    if isinstance(node, Arith):
        lvl = _PRECEDENCE[node.op]
        return f"{sub(node.left, lvl)} {node.op} {sub(node.right, lvl + 1)}"
    if isinstance(node, Compare):
        lvl = _PRECEDENCE["compare"] + 1
        return f"{sub(node.left, lvl)} {node.op} {sub(node.right, lvl)}"
    if isinstance(node, In):
        items = ", ".join(_literal_text(v) for v in node.values)
        return f"{sub(node.operand, _PRECEDENCE['compare'] + 1)} {'not in' if node.negated else 'in'} ({items})"
    if isinstance(node, IsNull):
        return f"{sub(node.operand, _PRECEDENCE['compare'] + 1)} is {'not null' if node.negated else 'null'}"
    if isinstance(node, Not):
        return "not " + sub(node.operand, _PRECEDENCE["not"])
    lvl = _PRECEDENCE[node.op]
    return f" {node.op} ".join(sub(x, lvl + 1) for x in node.operands)


def unparse_measure(value: Expr, where: Expr | None) -> str:
    """The canonical text of a measure."""
    return unparse(value) if where is None else f"{unparse(value)} if {unparse(where)}"
