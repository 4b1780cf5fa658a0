"""What one event adds to a view's speed tiles, compiled once per view from the plan (docs/design.md §3, §4).

A view's tiles (:attr:`fstore.core.plan.View.tiles`) list, per hop, the measures they carry and the states
each needs. A :class:`Step` is one (hop, measure): its value, its filter and the states to write. Running
every filter of every measure on every event would dominate the worker's CPU, so :class:`ViewSteps`
indexes the steps by the value of one field: a filter ``f == 'x'`` or ``f in ('x', 'y')`` (alone, or as
one term of an ``and``) on a text field puts its measure under ``x`` (and ``y``) of the *dispatch* field
``f`` — the field most of the view's filters test —, its other terms staying as the step's residual
condition; measures with any other filter run for every event. Per event, one dict lookup gives the
steps that may count it, as a hard-coded event type field did before plans existed. The semantics are
exactly :func:`fstore.core.expr_eval.measure_fn`'s: a step counts an event when its filter holds and its
value is not null (``tests/unit/jobs/stream/test_tile_steps.py`` holds the index to the reference tiler).

Counting-only values (every step of the value counts 1, with no residual and no distinct members) are
counted per event-time bucket first (the gcd of the view's hops), and expanded into cells once per bucket.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from fstore.core.event_schema import EventSchema
from fstore.core.expr import Col, Compare, Expr, In, Kind, Logic, Num, Str
from fstore.core.expr_eval import RowFn, compile_row, truth
from fstore.core.functions import State
from fstore.core.plan import View

#: Cell kinds, as the Lua script reads them (:mod:`jobs.stream.speed_lua`).
COUNTED = 0  # every value is 1: the count only (sum = count, min = max = 1)
NUMBER = 1  # count, sum, min, max
NUMBER_M2 = 2  # count, sum, min, max and the variance state
TEXT = 3  # text values: the count only (and the members)


@dataclass(frozen=True, eq=False)
class Step:
    """One measure of the tiles of one hop. ``value`` ``None``: every counted event measures 1."""

    size: int
    name: str
    value: RowFn | None
    where: Callable[[Any], bool] | None
    kind: int
    distinct: bool

    @property
    def plain_count(self) -> bool:
        """Counts 1 per event with no further condition and keeps no members."""
        return self.value is None and self.where is None and not self.distinct


def _index_term(node: Expr) -> tuple[str, tuple[str, ...]] | None:
    """``(field, values)`` of a filter term that selects events by the text value of one field."""
    if isinstance(node, Compare) and node.op == "==":
        for a, b in ((node.left, node.right), (node.right, node.left)):
            if isinstance(a, Col) and isinstance(b, Str):
                return a.name, (b.value,)
    if (
        isinstance(node, In)
        and not node.negated
        and isinstance(node.operand, Col)
        and all(isinstance(v, str) for v in node.values)
    ):
        return node.operand.name, tuple(str(v) for v in node.values)
    return None


def _split(where: Expr | None) -> tuple[tuple[str, tuple[str, ...]] | None, Expr | None]:
    """A filter as ``(index term or None, the rest or None)``."""
    if where is None:
        return None, None
    term = _index_term(where)
    if term is not None:
        return term, None
    if isinstance(where, Logic) and where.op == "and":
        for i, part in enumerate(where.operands):
            term = _index_term(part)
            if term is not None:
                rest = where.operands[:i] + where.operands[i + 1 :]
                return term, rest[0] if len(rest) == 1 else Logic("and", rest)
    return None, where


class ViewSteps:
    """The steps of one view, indexed by the value of its dispatch field (see the module docstring)."""

    def __init__(self, view: View, schema: EventSchema) -> None:
        self.view, self.name = view, view.name
        self.key, self.ts, self.id_field = view.entity.join_key, schema.timestamp_field, schema.id_field
        plans: list[tuple[int, str, tuple[str, tuple[str, ...]] | None, Expr | None, Expr, Kind, tuple[State, ...]]]
        plans = []
        for group in view.tiles:
            for tm in group.measures:
                m = view.measure(tm.measure)
                term, rest = _split(m.where)
                plans.append((group.hop, m.name, term, rest, m.value, m.kind, tm.states))
        fields = Counter(p[2][0] for p in plans if p[2] is not None)
        self.field: str | None = fields.most_common(1)[0][0] if fields else None
        indexed: dict[str, list[Step]] = {}
        always: list[Step] = []
        self.kinds: dict[tuple[int, str], tuple[int, bool]] = {}
        #: ``(size, start, measure)`` → ``(field prefix, kind, distinct)``, filled by the tile writer's packing
        self.cell_cache: dict[tuple[int, int, str], tuple[str, int, bool]] = {}
        #: ``(count-only dispatch value, bucket start)`` → ``(UTC day, field prefix)`` of the cells it adds to
        self.bucket_cells: dict[tuple[Any, int], tuple[tuple[int, str], ...]] = {}
        for size, name, term, rest, value, kind, states in plans:
            where: Expr | None
            if term is not None and term[0] == self.field:
                where = rest
            else:
                where = view.measure(name).where
                term = None
            distinct = State.DISTINCT in states
            counted = isinstance(value, Num) and value.value == 1.0 and not distinct
            if kind is not Kind.NUMBER:
                cell = TEXT
            elif counted:
                cell = COUNTED
            else:
                cell = NUMBER_M2 if State.M2 in states else NUMBER
            step = Step(
                size,
                name,
                None if counted else compile_row(value),
                None if where is None else truth(where),
                cell,
                distinct,
            )
            self.kinds[(size, name)] = (cell, distinct)
            if term is None:
                always.append(step)
            else:
                for v in term[1]:
                    indexed.setdefault(v, []).append(step)
        self.always: tuple[Step, ...] = tuple(always)
        self.by_value: dict[Any, tuple[Step, ...]] = {v: (*s, *always) for v, s in indexed.items()}
        sizes = [s.size for steps in (*self.by_value.values(), self.always) for s in steps]
        self.unit = math.gcd(*sizes) if sizes else 1
        self.counted: dict[Any, tuple[tuple[int, str], ...]] = {
            v: tuple((s.size, s.name) for s in steps)
            for v, steps in self.by_value.items()
            if all(s.plain_count for s in steps)
        }

    def steps(self, row: Any) -> tuple[Step, ...]:
        """The steps that may count ``row`` (their residual conditions and values still decide)."""
        if self.field is None:
            return self.always
        return self.by_value.get(row[self.field], self.always)

    def measured(self, row: Any) -> dict[str, float | str]:
        """``{measure: value}`` of every measure of the view that counts ``row`` (a future event's field)."""
        out: dict[str, float | str] = {}
        for st in self.steps(row):
            if st.name in out or (st.where is not None and not st.where(row)):
                continue
            x = 1.0 if st.value is None else st.value(row)
            if x is not None:
                out[st.name] = x
        return out


@cache
def view_steps(view: View, schema: EventSchema) -> ViewSteps:
    """The compiled steps of ``view`` (once per view)."""
    return ViewSteps(view, schema)
