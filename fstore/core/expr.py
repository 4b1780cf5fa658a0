"""The declared expression language of filters and measures (DESIGN.md §3, docs/adr/0012).

A measure is declared as one line, ``VALUE [if CONDITION]``, e.g. ``price * quantity if event_type ==
'purchase'`` or ``1 if event_type in ('click', 'tap')``. The language is deliberately small so that
Python, pyarrow (pandas/numpy), Spark SQL and Lua evaluate it identically:

- values are null, booleans, strings and numbers; every number (integer fields and literals included)
  is an IEEE-754 double, and arithmetic is ``+``, ``-``, unary ``-`` and ``*`` evaluated left to right
  (no division: a ratio is a derived feature with its own null rule); null in, null out;
- conditions are ``==``, ``!=`` (any two values of one kind), ``<``, ``<=``, ``>``, ``>=`` (numbers),
  ``x [not] in ('a', 'b')``, ``x is [not] null``, ``not``, ``and``, ``or``, and a boolean field alone;
  logic is two-valued: a comparison or an ``in`` with a null operand is false, a null boolean field is
  false;
- a measure counts an event when its condition is true and its value is not null.

This module holds the syntax tree, the parser and the type checker; evaluators live in
:mod:`fstore.core.expr_eval` (Python rows, pyarrow columns) and :mod:`fstore.core.expr_render`
(Spark SQL, Lua). The tree is made of frozen dataclasses, so two parses of one text compare equal.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterator, Mapping
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

KEYWORDS = frozenset({"if", "and", "or", "not", "in", "is", "null", "true", "false"})
ARITH_OPS = ("+", "-", "*")
COMPARE_OPS = ("==", "!=", "<", "<=", ">", ">=")
_TOKEN = re.compile(
    r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<str>'(?:[^']|'')*')|(?P<name>[A-Za-z_]\w*)"
    r"|(?P<op>==|!=|<=|>=|<|>|\+|-|\*|\(|\)|,))"
)
_HINTS = {
    "/": "there is no division: declare a ratio feature (tags={'fstore.ratio': 'a / b'}) instead",
    "=": "compare with ==",
    '"': "quote strings with single quotes: 'click'",
}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # num, str, name, op, end
    text: str
    pos: int


def _tokens(text: str) -> Iterator[_Token]:
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            yield _Token("end", "", pos)
            return
        m = _TOKEN.match(text, pos)
        if m is None or m.lastgroup is None:
            ch = text[pos]
            hint = _HINTS.get(ch)
            raise ExprError(f"unexpected {ch!r} at position {pos + 1}" + (f": {hint}" if hint else ""))
        yield _Token(m.lastgroup, m.group(m.lastgroup), m.start(m.lastgroup))
        pos = m.end()


class _Parser:
    """Recursive descent over the grammar in the module docstring (precedence: or < and < not < compare
    < +,- < * < unary -)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = list(_tokens(text))
        self.i = 0

    @property
    def tok(self) -> _Token:
        return self.toks[self.i]

    def at(self, *texts: str) -> bool:
        t = self.tok
        return t.kind in ("op", "name") and t.text in texts

    def take(self) -> _Token:
        t = self.tok
        self.i += 1
        return t

    def expect(self, text: str) -> None:
        if not self.at(text):
            self.fail(f"expected {text!r}")
        self.i += 1

    def fail(self, what: str) -> None:
        t = self.tok
        found = "the end" if t.kind == "end" else repr(t.text)
        raise ExprError(f"{what} at position {t.pos + 1}, found {found}")

    def end(self) -> None:
        if self.tok.kind != "end":
            self.fail("expected the end of the expression")

    def condition(self) -> Expr:
        return self._logic("or", self._conjunction)

    def _conjunction(self) -> Expr:
        return self._logic("and", self._negation)

    def _logic(self, op: str, operand: Callable[[], Expr]) -> Expr:
        items = [operand()]
        while self.at(op):
            self.take()
            items.append(operand())
        return items[0] if len(items) == 1 else Logic(op, tuple(items))

    def _negation(self) -> Expr:
        if self.at("not"):
            self.take()
            return Not(self._negation())
        return self._predicate()

    def _predicate(self) -> Expr:
        left = self.value()
        if self.tok.kind == "op" and self.tok.text in COMPARE_OPS:
            op = self.take().text
            return Compare(op, left, self.value())
        if self.at("is"):
            self.take()
            negated = self.at("not")
            if negated:
                self.take()
            self.expect("null")
            return IsNull(left, negated)
        negated = self.at("not")
        if negated or self.at("in"):
            if negated:
                self.take()
            self.expect("in")
            return In(left, self._literal_list(), negated)
        return left

    def _literal_list(self) -> tuple[str, ...] | tuple[float, ...]:
        self.expect("(")
        items: list[Expr] = [self._literal()]
        while self.at(","):
            self.take()
            items.append(self._literal())
        self.expect(")")
        if all(isinstance(x, Str) for x in items):
            return tuple(x.value for x in items if isinstance(x, Str))
        if all(isinstance(x, Num) for x in items):
            return tuple(x.value for x in items if isinstance(x, Num))
        raise ExprError("the values of an 'in' list must all be strings or all be numbers")

    def _literal(self) -> Expr:
        neg = self.at("-")
        if neg:
            self.take()
        t = self.tok
        if t.kind == "num":
            self.take()
            return Num(-_number(t.text) if neg else _number(t.text))
        if t.kind == "str" and not neg:
            self.take()
            return Str(t.text[1:-1].replace("''", "'"))
        self.fail("expected a string or number literal")
        raise AssertionError  # unreachable: fail raises

    def value(self) -> Expr:
        left = self._product()
        while self.at("+", "-"):
            op = self.take().text
            left = Arith(op, left, self._product())
        return left

    def _product(self) -> Expr:
        left = self._unary()
        while self.at("*"):
            self.take()
            left = Arith("*", left, self._unary())
        return left

    def _unary(self) -> Expr:
        if self.at("-"):
            self.take()
            operand = self._unary()
            return Num(-operand.value) if isinstance(operand, Num) else Neg(operand)
        return self._atom()

    def _atom(self) -> Expr:
        t = self.tok
        if t.kind == "num":
            self.take()
            return Num(_number(t.text))
        if t.kind == "str":
            self.take()
            return Str(t.text[1:-1].replace("''", "'"))
        if t.kind == "name":
            if t.text in ("true", "false"):
                self.take()
                return Bool(t.text == "true")
            if t.text in KEYWORDS:
                self.fail("expected a value")
            self.take()
            return Col(t.text)
        if self.at("("):
            self.take()
            inner = self.condition()
            self.expect(")")
            return inner
        self.fail("expected a value")
        raise AssertionError  # unreachable: fail raises


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ExprError(f"number {text} is not finite as a double")
    return value


def parse_condition(text: str) -> Expr:
    """Parse a condition (a filter), e.g. ``event_type == 'click' and price > 0``.

    Raises:
        ExprError: naming the position of the first syntax error.
    """
    p = _Parser(text)
    node = p.condition()
    p.end()
    return node


def parse_measure(text: str) -> tuple[Expr, Expr | None]:
    """Parse ``VALUE [if CONDITION]`` into the value and the condition (``None``: every event).

    Raises:
        ExprError: naming the position of the first syntax error.
    """
    p = _Parser(text)
    value = p.value()
    where = None
    if p.at(*COMPARE_OPS, "in", "is", "not", "and", "or"):
        p.fail("a measure is VALUE [if CONDITION] (to count the events where a condition holds: '1 if CONDITION');")
    if p.at("if"):
        p.take()
        where = p.condition()
    p.end()
    return value, where


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
