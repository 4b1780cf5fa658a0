"""A compiled plan as JSON and back: what ``fstore apply`` records and every process reloads.

Expressions are stored as their canonical text (:func:`fstore.core.expr.unparse`) and parsed back, so
a stored plan is readable and diffable; times are integers (µs). ``from_json(to_json(p)) == p`` for
every plan (checked by the tests on both shipped repositories). :func:`fingerprint` names a plan by
the hash of its canonical JSON: equal plans have equal fingerprints.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fstore.core.event_schema import EventField, EventSchema, FieldType
from fstore.core.expr import unparse
from fstore.core.expr_check import kind_of
from fstore.core.expr_parse import parse_condition, parse_measure
from fstore.core.functions import Function
from fstore.core.plan import Entity, Feature, Measure, Plan, RatioFeature, View, WindowedFeature

FORMAT = 1


def to_dict(plan: Plan) -> dict[str, Any]:
    """The plan as plain JSON-able data."""
    return {
        "format": FORMAT,
        "source": plan.source,
        "topic": plan.topic,
        "schema": {
            "id_field": plan.schema.id_field,
            "timestamp_field": plan.schema.timestamp_field,
            "fields": [_field(f) for f in plan.schema.fields],
        },
        "entities": [_entity(e) for e in plan.entities],
        "views": [
            {
                "name": v.name,
                "entity": v.entity.name,
                "description": v.description,
                "measures": [{"name": m.name, "text": m.text} for m in v.measures],
                "features": [_feature(f) for f in v.features],
            }
            for v in plan.views
        ],
    }


def _field(f: EventField) -> dict[str, Any]:
    return {
        "name": f.name,
        "type": str(f.type),
        "required": f.required,
        "required_when": unparse(f.required_when) if f.required_when is not None else None,
        "values": list(f.values),
        "minimum": f.minimum,
        "maximum": f.maximum,
        "default": f.default,
        "description": f.description,
    }


def _entity(e: Entity) -> dict[str, Any]:
    return {"name": e.name, "join_key": e.join_key, "description": e.description}


def _feature(f: Feature) -> dict[str, Any]:
    if isinstance(f, RatioFeature):
        return {"ratio": f.name, "numerator": f.numerator, "denominator": f.denominator, "description": f.description}
    return {
        "name": f.name,
        "measure": f.measure,
        "function": str(f.function),
        "window": f.window,
        "slide": f.slide,
        "sketch": f.sketch,
        "description": f.description,
    }


def from_dict(data: dict[str, Any]) -> Plan:
    """The plan of :func:`to_dict`'s data.

    Raises:
        ValueError: a format this version cannot read.
    """
    if data.get("format") != FORMAT:
        raise ValueError(f"stored plan has format {data.get('format')!r}; this fstore reads format {FORMAT}")
    s = data["schema"]
    schema = EventSchema(
        tuple(
            EventField(
                f["name"],
                FieldType(f["type"]),
                required=f["required"],
                required_when=parse_condition(f["required_when"]) if f["required_when"] is not None else None,
                values=tuple(f["values"]),
                minimum=f["minimum"],
                maximum=f["maximum"],
                default=f["default"],
                description=f["description"],
            )
            for f in s["fields"]
        ),
        s["id_field"],
        s["timestamp_field"],
    )
    entities = {e["name"]: Entity(e["name"], e["join_key"], e["description"]) for e in data["entities"]}
    views = []
    for v in data["views"]:
        measures = []
        for m in v["measures"]:
            value, where = parse_measure(m["text"])
            measures.append(Measure(m["name"], value, where, kind_of(value, schema.columns())))
        views.append(View(v["name"], entities[v["entity"]], tuple(measures),
                          tuple(_feature_of(f) for f in v["features"]), v["description"]))  # fmt: skip
    return Plan(schema, tuple(entities.values()), tuple(views), data["source"], data["topic"])


def _feature_of(f: dict[str, Any]) -> Feature:
    if "ratio" in f:
        return RatioFeature(f["ratio"], f["numerator"], f["denominator"], f["description"])
    return WindowedFeature(
        f["name"], f["measure"], Function(f["function"]), f["window"], f["slide"], f["sketch"], f["description"]
    )


def to_json(plan: Plan) -> str:
    """Canonical JSON text of the plan (sorted keys, no spaces)."""
    return json.dumps(to_dict(plan), sort_keys=True, separators=(",", ":"))


def from_json(text: str) -> Plan:
    """Inverse of :func:`to_json`."""
    return from_dict(json.loads(text))


def fingerprint(plan: Plan) -> str:
    """A short name of the plan: 16 hex digits of the hash of its canonical JSON."""
    return hashlib.blake2b(to_json(plan).encode(), digest_size=8).hexdigest()
