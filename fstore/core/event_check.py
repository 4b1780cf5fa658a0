"""The event contract of docs/design.md §2 for any declared schema: one decoded JSON object in, a
normalised row or one reason out.

:class:`EventCheck` is built once from a plan's :class:`~fstore.core.event_schema.EventSchema` and the
entity join keys, and checks the fields **in declaration order**; the first failing check gives the
reason, from the closed list:

==========================  ==========================================================================
``missing_field:<f>``       a required field is absent or null, or a ``required_when`` condition holds
                            and the field is absent (conditions read the fields declared before it)
``invalid_type:<f>``        wrong JSON type: STRING a string, INT/LONG an integer (not a boolean), FLOAT a
                            finite number, BOOL a boolean, TIMESTAMP an ISO-8601 string with an
                            offset or epoch milliseconds; or a number of the right JSON type outside
                            what the type holds: beyond its declared bounds other than a minimum ≥ 0,
                            an INT outside 32 bits (Arrow/Spark ``INT``), a LONG outside 64 (``BIGINT``),
                            a FLOAT beyond ±1e15 unless
                            its bounds say otherwise (products and sums stay finite in every sink),
                            epoch seconds, µs or ns sent as milliseconds
``invalid_id:<f>``          the id field or an entity key outside 1–128 chars of ``[A-Za-z0-9_.:-]``
``unknown_<f>``             a value outside a STRING field's declared values (``unknown_action`` for
                            a field ``action``)
``negative_amount``         a number below its declared minimum when that minimum is ≥ 0 (an amount or
                            a count that cannot be negative: an amount < 0, a count of units < 1)
``future_timestamp``        the timestamp more than the tolerance after the processing clock (checked
                            after every field)
==========================  ==========================================================================

(``malformed_json`` and ``oversized`` are decided on the bytes, before decoding; see
:mod:`fstore.core.events`.) Fields not in the schema are dropped. A free-text STRING field — neither the
id, nor an entity key, nor one with declared values — whose value is outside the id charset is stored
as its hash (:func:`fstore.core.events.hashed`): free text may carry personal data.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from fstore.core.event_schema import INTEGER_RANGES, EventField, EventSchema, FieldType
from fstore.core.events import FUTURE_TOLERANCE, Rejection, event_time_of, hashed
from fstore.core.expr_eval import truth

_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}").fullmatch
FLOAT_LIMIT = 1e15

Row = dict[str, Any]


class EventCheck:
    """Validation and normalisation of decoded events against one schema."""

    def __init__(self, schema: EventSchema, entity_keys: Iterable[str] = ()) -> None:
        self.schema = schema
        ids = {schema.id_field, *entity_keys}
        self._fields = [(f, f.name in ids, truth(f.required_when) if f.required_when else None) for f in schema.fields]

    def reasons(self) -> list[str]:
        """Every reason :meth:`check` can give for this schema, in check order (``future_timestamp`` last).

        The stream worker creates its per-reason dead-letter counter at 0 for each: a labelled series that
        is born with its first burst shows no increase to Prometheus's ``rate()`` (that needs two samples),
        so a first flood of a reason would stay out of the dead-letter rate and its alert.
        """
        out: list[str] = []
        for f, is_id, required_when in self._fields:
            if f.required or required_when is not None:
                out.append(f"missing_field:{f.name}")
            out.append(f"invalid_type:{f.name}")
            if f.type is FieldType.STRING and is_id:
                out.append(f"invalid_id:{f.name}")
            elif f.type is FieldType.STRING and f.values:
                out.append(f"unknown_{f.name}")
            elif f.minimum is not None and f.minimum >= 0 and f.type not in (FieldType.BOOL, FieldType.TIMESTAMP):
                out.append("negative_amount")
        return list(dict.fromkeys([*out, "future_timestamp"]))

    def check(self, obj: Mapping[str, Any], now: int) -> Row | Rejection:
        """The normalised row (every declared field, absent ones ``None`` or their default; the
        timestamp in UTC epoch µs) or the first reason, in declaration order."""
        row: Row = {}
        ts_name = self.schema.timestamp_field
        for f, is_id, required_when in self._fields:
            v = obj.get(f.name)
            if v is None:
                if f.required or (required_when is not None and required_when(row)):
                    return Rejection(f"missing_field:{f.name}")
                row[f.name] = f.default
                continue
            out = _value(f, v, is_id)
            if isinstance(out, Rejection):
                return out
            row[f.name] = out
        if row[ts_name] > now + FUTURE_TOLERANCE:
            return Rejection("future_timestamp")
        return row


def _value(f: EventField, v: Any, is_id: bool) -> Any:
    t = f.type
    if t is FieldType.STRING:
        if not isinstance(v, str):
            return Rejection(f"invalid_type:{f.name}")
        if is_id:
            return v if _ID(v) else Rejection(f"invalid_id:{f.name}")
        if f.values:
            return v if v in f.values else Rejection(f"unknown_{f.name}")
        return v if _ID(v) else hashed(v)
    if t is FieldType.BOOL:
        return v if isinstance(v, bool) else Rejection(f"invalid_type:{f.name}")
    if t is FieldType.TIMESTAMP:
        return event_time_of(v, f.name)
    whole = INTEGER_RANGES.get(t)
    if isinstance(v, bool) or not isinstance(v, int | float) or (whole is not None and not isinstance(v, int)):
        return Rejection(f"invalid_type:{f.name}")
    try:
        if not math.isfinite(v):
            return Rejection(f"invalid_type:{f.name}")
    except OverflowError:  # an integer beyond a double
        return Rejection(f"invalid_type:{f.name}")
    if f.minimum is not None and v < f.minimum:
        return Rejection("negative_amount" if f.minimum >= 0 else f"invalid_type:{f.name}")
    lo, hi = whole or (-FLOAT_LIMIT, FLOAT_LIMIT)
    if f.maximum is not None:
        hi = f.maximum if t is FieldType.FLOAT else min(hi, f.maximum)
    if f.minimum is not None and t is FieldType.FLOAT:
        lo = f.minimum
    if not lo <= v <= hi:
        return Rejection(f"invalid_type:{f.name}")
    return v if whole is not None else float(v)
