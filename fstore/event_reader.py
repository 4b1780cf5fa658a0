"""Bytes → row for the process's plan: the event contract's generic check behind a compiled fast path.

Used by every path that validates messages (the stream worker, ``fstore ingest``). An
:class:`EventReader` is built once per plan. A message within the size limit is decoded by msgspec into a
dict and accepted by the schema's compiled fast path (:func:`fstore.core.event_accept.compile_accept`);
anything it is unsure about — another field, free text to hash, a syntax error, a check that fails — goes
through :func:`fstore.core.events.parse_row` with orjson and the schema's
:class:`~fstore.core.event_check.EventCheck`, which alone gives the verdict and the reason. The fast path
only ever accepts what the check accepts for the same bytes, with the same row (the tests compare both
paths on generated and mutated messages of two schemas) — but for an integer too large for a double in an
undeclared field, which msgspec reads and orjson refuses (docs/design.md §2, Status).
"""

from __future__ import annotations

import msgspec
import orjson

from fstore.core.event_accept import compile_accept
from fstore.core.event_check import EventCheck
from fstore.core.events import MAX_MESSAGE_BYTES, UNPROCESSABLE, Rejection, Row, parse_row
from fstore.core.plan import Plan
from fstore.plan_source import current_plan

#: msgspec's untyped JSON decoder (a dict for an object).
decode = msgspec.json.Decoder().decode


class EventReader:
    """Bytes → row for one plan: the schema's check, its compiled fast path and the id/time field names."""

    def __init__(self, plan: Plan) -> None:
        keys = {e.join_key for e in plan.entities}
        self.plan, self.schema = plan, plan.schema
        checker = EventCheck(plan.schema, keys)
        self.check = checker.check
        #: Every dead-letter reason a message can get under this plan: the byte checks, the schema's, and a
        #: sink's refusal (docs/design.md §2's closed list, with the fields named).
        self.reasons = ("malformed_json", "oversized", *checker.reasons(), UNPROCESSABLE)
        self.accept = compile_accept(plan.schema, keys)
        self.id_field, self.ts_field = plan.schema.id_field, plan.schema.timestamp_field

    def parse(self, raw: bytes, now: int) -> Row | Rejection:
        """:func:`fstore.core.events.parse_row` with orjson, via the fast path first (see the module docstring)."""
        if len(raw) <= MAX_MESSAGE_BYTES:
            try:
                row = self.accept(decode(raw), now)
            except Exception:  # DecodeError, UnicodeDecodeError (bad UTF-8), ...: the orjson path decides
                row = None
            if row is not None:
                return row
        return parse_row(raw, now, self.check, orjson.loads)


_readers: dict[int, tuple[Plan, EventReader]] = {}


def reader_for(plan: Plan | None = None) -> EventReader:
    """The :class:`EventReader` of ``plan`` (default: the process's plan), built once per plan."""
    plan = current_plan() if plan is None else plan
    hit = _readers.get(id(plan))
    if hit is None or hit[0] is not plan:
        hit = _readers[id(plan)] = (plan, EventReader(plan))
    return hit[1]
