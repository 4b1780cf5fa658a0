"""Compiling the event source and the entities of a Feast repository (docs/design.md §2).

The event schema is the ``KafkaSource``'s ``JsonFormat(schema_json=...)`` (field names, types, ``NOT
NULL`` = required) plus ``fstore.*`` tags on the source for what Spark DDL cannot say:

==============================  =========================================================
``fstore.id_field``             the field that identifies an event (required; de-duplication)
``fstore.values.<field>``       the allowed values of a string field, comma separated
``fstore.required_when.<f>``    a condition under which an optional field is required
``fstore.min.<f>`` / ``max.``   inclusive bounds of a numeric field
``fstore.default.<f>``          the value of an absent optional field
==============================  =========================================================

The timestamp field is the source's ``timestamp_field``; entity keys are the entities' join keys.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from feast import Entity as FeastEntity
from feast import KafkaSource, ValueType
from feast.data_format import JsonFormat

from fstore.core.event_schema import INTEGER_RANGES, EventField, EventSchema, FieldType, Scalar, expr_columns
from fstore.core.expr import ExprError
from fstore.core.expr_check import check_condition
from fstore.core.expr_parse import parse_condition
from fstore.core.plan import Entity
from fstore.feast.problems import Problems, fstore_tags
from fstore.feast.schema_json import parse_schema_json

SOURCE_TAGS = ("id_field", "values.", "required_when.", "min.", "max.", "default.")
_NUMERIC = (FieldType.INT, FieldType.LONG, FieldType.FLOAT)


def source_name(source: Any) -> str:
    """How messages name a data source: ``KafkaSource 'events'``."""
    return f"{type(source).__name__} '{getattr(source, 'name', '?')}'"


def event_schema(source: KafkaSource, problems: Problems) -> EventSchema | None:
    """The event schema declared by ``source`` (``None``, with problems recorded, when it has mistakes)."""
    where = source_name(source)
    fmt = source.kafka_options.message_format
    if not isinstance(fmt, JsonFormat):
        problems.add(where, f"message_format must be JsonFormat(schema_json=...), not {type(fmt).__name__}")
        return None
    try:
        declared = {f.name: f for f in parse_schema_json(fmt.schema_json)}
    except ValueError as exc:
        problems.add(where, f"schema_json: {exc}")
        return None
    before = len(problems.items)
    fields = {f.name: EventField(f.name, f.type, required=f.not_null, description=f.comment) for f in declared.values()}
    id_field = ""
    tags = list(fstore_tags(source.tags, SOURCE_TAGS, where, problems))
    # values and bounds first: defaults and conditions are checked against them
    for kind, subject, value in sorted(tags, key=lambda t: SOURCE_TAGS.index(t[0] + ("." if t[1] else ""))):
        if kind == "id_field":
            id_field = value.strip()
        elif subject not in fields:
            problems.add(where, f"tag 'fstore.{kind}.{subject}' names no field of schema_json")
        else:
            update = _constraint(kind, fields[subject], value, fields, f"{where}, field {subject}", problems)
            if update is not None:
                fields[subject] = update
    ts = source.timestamp_field
    if not id_field:
        problems.add(
            where, "no id field: declare the field that identifies an event, tags={'fstore.id_field': 'event_id'}"
        )
    elif id_field not in fields or fields[id_field].type is not FieldType.STRING:
        problems.add(
            where, f"id field '{id_field}' must be a STRING field of schema_json: add '{id_field} STRING NOT NULL'"
        )
    if not ts or ts not in fields or fields[ts].type is not FieldType.TIMESTAMP:
        problems.add(
            where,
            f"timestamp_field '{ts}' must be a TIMESTAMP field of schema_json: "
            f"add '{ts or 'event_time'} TIMESTAMP NOT NULL'",
        )
    for name, f in fields.items():
        if f.type is FieldType.TIMESTAMP and name != ts:
            problems.add(
                where,
                f"field {name}: only the timestamp_field may be a TIMESTAMP; declare {name} as STRING (ISO-8601 "
                "text) or BIGINT (epoch milliseconds; an INT holds 32 bits)",
            )
    if len(problems.items) > before:
        return None
    for special in (id_field, ts):  # always required, whatever NOT NULL says
        fields[special] = replace(fields[special], required=True)
    return EventSchema(tuple(fields.values()), id_field, ts)


def _constraint(
    kind: str, f: EventField, text: str, fields: dict[str, EventField], where: str, problems: Problems
) -> EventField | None:
    """``f`` with one tag's constraint applied, or ``None`` (a problem recorded)."""
    if kind == "values":
        values = tuple(v.strip() for v in text.split(","))
        if f.type is not FieldType.STRING or not all(values):
            problems.add(where, "fstore.values lists the allowed values of a STRING field: 'a, b, c'")
            return None
        return replace(f, values=values)
    if kind == "required_when":
        if f.required:
            problems.add(where, "is NOT NULL (always required): remove NOT NULL or the fstore.required_when tag")
            return None
        try:
            cond = parse_condition(text)
            check_condition(cond, expr_columns(fields.values()))
        except ExprError as exc:
            problems.add(where, f"fstore.required_when {text!r}: {exc}")
            return None
        return replace(f, required_when=cond)
    if kind in ("min", "max"):
        bound = _number(text)
        if f.type not in _NUMERIC or bound is None:
            problems.add(where, f"fstore.{kind} is a finite number bounding an INT or DOUBLE field, got {text!r}")
            return None
        lo, hi = (bound, f.maximum) if kind == "min" else (f.minimum, bound)
        if lo is not None and hi is not None and lo > hi:
            problems.add(where, f"fstore.min ({lo:g}) is above fstore.max ({hi:g})")
            return None
        return replace(f, minimum=lo, maximum=hi)
    default = _typed(f.type, text)
    if f.required or default is None or (f.values and default not in f.values):
        problems.add(where, f"fstore.default {text!r} must be a valid {f.type} for an optional field")
        return None
    return replace(f, default=default)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _typed(kind: FieldType, text: str) -> Scalar | None:
    text = text.strip()
    if kind is FieldType.STRING:
        return text
    if kind is FieldType.BOOL:
        return {"true": True, "false": False}.get(text.lower())
    if kind in INTEGER_RANGES:
        try:
            return int(text)
        except ValueError:
            return None
    return _number(text) if kind is FieldType.FLOAT else None


def entities(feast_entities: Iterable[FeastEntity], schema: EventSchema, problems: Problems) -> list[Entity]:
    """The entities, each keyed by one STRING event field (keys are ids: Redis keys, Kafka keys)."""
    out = []
    for e in feast_entities:
        where = f"Entity '{e.name}'"
        key = e.join_key  # Feast itself refuses more than one join key
        if key not in schema.names or schema.field(key).type is not FieldType.STRING:
            problems.add(
                where, f"join key '{key}' must be a STRING field of the event schema: add '{key} STRING' to schema_json"
            )
            continue
        if e.value_type not in (ValueType.STRING, ValueType.UNKNOWN):
            problems.add(where, f"value_type {e.value_type.name} does not match its STRING key: use ValueType.STRING")
            continue
        out.append(Entity(e.name, key, e.description))
    return out
