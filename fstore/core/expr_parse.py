"""The parser of the expression language (:mod:`fstore.core.expr`): text → syntax tree.

Grammar (precedence from loosest): ``or`` < ``and`` < ``not`` < comparisons (``==``, ``in``, ``is null``)
< ``+``/``-`` < ``*`` < unary ``-``; a measure is ``VALUE [if CONDITION]`` where VALUE is arithmetic.
Errors name the position and, for the usual slips (``=``, ``/``, double quotes), what to write instead.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NoReturn

from fstore.core.expr import Arith, Bool, Col, Compare, Expr, ExprError, In, IsNull, Logic, Neg, Not, Num, Str

KEYWORDS = frozenset({"if", "and", "or", "not", "in", "is", "null", "true", "false"})
COMPARE_OPS = ("==", "!=", "<", "<=", ">", ">=")
_TOKEN = re.compile(
    r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<str>'(?:[^']|'')*')|(?P<name>[A-Za-z_]\w*)"
    r"|(?P<op>==|!=|<=|>=|<|>|\+|-|\*|\(|\)|,))"
)
_HINTS = {
    "/": "there is no division: declare a ratio feature (tags={'fstore.ratio': 'a / b'}) instead",
    "=": "compare with ==",
    '"': "quote strings with single quotes: 'tap'",
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

    def fail(self, what: str) -> NoReturn:
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


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ExprError(f"number {text} is not finite as a double")
    return value


def parse_condition(text: str) -> Expr:
    """Parse a condition (a filter), e.g. ``action == 'tap' and amount > 0``.

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
