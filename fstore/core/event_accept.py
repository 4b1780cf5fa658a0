"""The fast path of :class:`~fstore.core.event_check.EventCheck`, compiled from one event schema.

The stream worker validates every message, so it cannot afford the generic per-field loop of
``EventCheck.check`` (about 9 µs for the example's eight fields, more than the rest of the worker's
per-event work). :func:`compile_accept` writes, once per schema, a Python function with the schema's
checks inlined — exact type tests, declared values as a frozenset, bounds as constants, the id charset
memoised (:func:`fstore.core.events._good_id`) — and compiles it with ``exec``: the generated code is
the same straight-line code one would write by hand for that schema.

The function takes a decoded JSON object and returns the row ``EventCheck`` would return, or ``None``
when unsure: any event that fails a check, free text that needs hashing, a float timestamp, an unusual
ISO-8601 shape. ``None`` sends the message to the generic path, which alone gives reasons; the fast path
never rejects. ``tests/unit/jobs/stream/test_pipeline.py`` holds both paths equal on generated and mutated
events of two schemas.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from fstore.core.event_check import FLOAT_LIMIT
from fstore.core.event_schema import INTEGER_RANGES, EventField, EventSchema, FieldType
from fstore.core.events import FUTURE_TOLERANCE, MIN_EPOCH_MS, Row, _good_id, _known_ids, _match_id
from fstore.core.expr import Bool, Col, Compare, Expr, In, IsNull, Logic, Not, Num, Str
from fstore.core.expr_eval import truth
from fstore.core.timeutil import EPOCH, MAX_MICROS

Accept = Callable[[Any, int], Row | None]

_fromisoformat = datetime.fromisoformat
_ONE_US = timedelta(microseconds=1)
_MAX_MS = MAX_MICROS // 1000
#: The ISO-8601 shape the fast path parses with ``datetime.fromisoformat`` (ASCII digits, ``T``, seconds,
#: ``Z``); other shapes, valid or not, go to the generic check (:data:`fstore.core.timeutil.ISO_8601`).
_FAST_ISO = re.compile(r"[0-9]{4}-(?:[0-9]{2}-[0-9]{2}|W[0-9]{2}-[0-9])T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:[.,][0-9]+)?Z")


def _cond(node: Expr, names: Mapping[str, str]) -> str | None:
    """Python source of a condition over the variables of the fields before it (``None``: not inlined)."""
    if isinstance(node, Col):
        var = names.get(node.name)
        return None if var is None else f"({var} is True)"
    if isinstance(node, Compare):
        left, right = _operand(node.left, names), _operand(node.right, names)
        if left is None or right is None:
            return None
        nulls = "".join(f"{x} is not None and " for x in (left, right) if x in names.values())
        return f"({nulls}{left} {node.op} {right})"
    if isinstance(node, In):
        x = _operand(node.operand, names)
        if x is None:
            return None
        return f"({x} is not None and {x} {'not in' if node.negated else 'in'} {frozenset(node.values)!r})"
    if isinstance(node, IsNull):
        x = _operand(node.operand, names)
        return None if x is None else f"({x} is {'not ' if node.negated else ''}None)"
    if isinstance(node, Not):
        inner = _cond(node.operand, names)
        return None if inner is None else f"(not {inner})"
    if isinstance(node, Logic):
        parts = [_cond(x, names) for x in node.operands]
        if any(p is None for p in parts):
            return None
        return "(" + f" {node.op} ".join(p for p in parts if p is not None) + ")"
    return None


def _operand(node: Expr, names: Mapping[str, str]) -> str | None:
    if isinstance(node, Col):
        return names.get(node.name)
    if isinstance(node, Str | Num):
        return repr(node.value)
    if isinstance(node, Bool):
        return repr(node.value)
    return None


def _bounds(f: EventField) -> tuple[float, float]:
    """The accepted range of a number field (what ``EventCheck`` accepts, as two finite constants)."""
    if f.type in INTEGER_RANGES:
        lo, hi = INTEGER_RANGES[f.type]
        if f.minimum is not None:
            lo = max(lo, math.ceil(f.minimum))
        if f.maximum is not None:
            hi = min(hi, math.floor(f.maximum))
        return lo, hi
    lo_f = f.minimum if f.minimum is not None else -FLOAT_LIMIT
    hi_f = f.maximum if f.maximum is not None else FLOAT_LIMIT
    return max(lo_f, -1.7e308), min(hi_f, 1.7e308)


def compile_accept(schema: EventSchema, entity_keys: Iterable[str] = ()) -> Accept:
    """The fast path for ``schema`` (see the module docstring); ``entity_keys`` as for ``EventCheck``."""
    ids: Collection[str] = {schema.id_field, *entity_keys}
    env: dict[str, Any] = {
        "known": _known_ids,
        "good_id": _good_id,
        "match_id": _match_id,
        "fromisoformat": _fromisoformat,
        "fast_iso": _FAST_ISO.fullmatch,
        "EPOCH": EPOCH,
        "ONE_US": _ONE_US,
    }
    lines = ["def accept(obj, now):", "    if type(obj) is not dict:", "        return None", "    get = obj.get"]
    names: dict[str, str] = {}
    for i, f in enumerate(schema.fields):
        v = f"v{i}"
        lines.append(f"    {v} = get({f.name!r})")
        lines.append(f"    if {v} is None:")
        if f.required:
            lines.append("        return None")
        else:
            if f.required_when is not None:
                cond = _cond(f.required_when, names)
                if cond is None:  # not inlined: the compiled condition over the fields before this one
                    env[f"when{i}"] = truth(f.required_when)
                    cond = f"when{i}({{{', '.join(f'{n!r}: {x}' for n, x in names.items())}}})"
                lines.append(f"        if {cond}:\n            return None")
            lines.append(f"        {v} = {f.default!r}")
        lines.append(f"    else:\n{_test(f, v, i, f.name in ids, f.name == schema.id_field, env)}")
        names[f.name] = v
    ts = names[schema.timestamp_field]
    lines.append(f"    if {ts} > now + {FUTURE_TOLERANCE}:\n        return None")
    lines.append("    return {" + ", ".join(f"{f.name!r}: {names[f.name]}" for f in schema.fields) + "}")
    source = "\n".join(lines)
    exec(compile(source, f"<accept {schema.id_field}>", "exec"), env)
    fn: Accept = env["accept"]
    fn.__doc__ = source
    return fn


def _test(f: EventField, v: str, i: int, is_id: bool, unique: bool, env: dict[str, Any]) -> str:
    """Indented source that leaves ``v`` normalised or returns ``None`` (``unique``: the id field, whose
    values never repeat, so its charset is matched without the memo of repeating ids)."""
    t = f.type
    if t is FieldType.STRING:
        if f.values and not is_id:
            env[f"values{i}"] = frozenset(f.values)
            return f"        if type({v}) is not str or {v} not in values{i}:\n            return None"
        if unique:
            return f"        if type({v}) is not str or not match_id({v}):\n            return None"
        return f"        if type({v}) is not str or ({v} not in known and not good_id({v})):\n            return None"
    if t is FieldType.BOOL:
        return f"        if type({v}) is not bool:\n            return None"
    if t is FieldType.TIMESTAMP:
        # Only ``YYYY-MM-DDThh:mm:ss[.f]Z`` (or a week date, :data:`_FAST_ISO`) or integer epoch ms in range:
        # fromisoformat also takes text that is not ISO-8601 (``…T12:00:00.Z``, any separator, offsets with
        # seconds, a fourth ``:00``, anything after six digits of a fraction) and reads a fraction of an hour
        # or a minute (``T12.5Z``, ``T12:30.5Z``) or three digits of seconds as seconds; EventCheck refuses
        # all of them.
        return (
            f"        if type({v}) is str:\n"
            f"            if not fast_iso({v}):\n"
            f"                return None\n"
            f"            try:\n"
            f"                {v} = (fromisoformat({v}) - EPOCH) // ONE_US\n"
            f"            except (ValueError, OverflowError):\n"
            f"                return None\n"
            f"            if not 0 <= {v} <= {MAX_MICROS}:\n"
            f"                return None\n"
            f"        elif type({v}) is int and {MIN_EPOCH_MS} <= {v} <= {_MAX_MS}:\n"
            f"            {v} = {v} * 1000\n"
            f"        else:\n"
            f"            return None"
        )
    lo, hi = _bounds(f)
    if t in INTEGER_RANGES:
        return f"        if type({v}) is not int or not {lo!r} <= {v} <= {hi!r}:\n            return None"
    return (
        f"        if type({v}) is float:\n            if not {lo!r} <= {v} <= {hi!r}:\n                return None\n"
        f"        elif type({v}) is int and {lo!r} <= {v} <= {hi!r}:\n            {v} = float({v})\n"
        f"        else:\n            return None"
    )
