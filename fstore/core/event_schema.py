"""The declared event schema of a plan (docs/design.md §2): fields, types, requirements, id and time fields.

The compiler fills it from the user's stream source; the event contract (validation, dead letters,
``raw_events`` columns) and the expression type checker read it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from fstore.core.expr import Column, Expr, Kind
from fstore.core.plan_error import PlanError, require_unique


class FieldType(StrEnum):
    """Types of event fields."""

    STRING = "string"
    INT = "int"  # 32-bit (Spark's INT and narrower)
    LONG = "long"  # 64-bit (Spark's BIGINT / LONG)
    FLOAT = "float"
    BOOL = "bool"
    TIMESTAMP = "timestamp"

    @property
    def kind(self) -> Kind | None:
        """The expression kind of the field (``None``: not usable in expressions)."""
        return _KINDS.get(self)


_KINDS = {
    FieldType.STRING: Kind.STRING,
    FieldType.INT: Kind.NUMBER,
    FieldType.LONG: Kind.NUMBER,
    FieldType.FLOAT: Kind.NUMBER,
    FieldType.BOOL: Kind.BOOL,
}

Scalar = str | int | float | bool

#: The integer field types and the values each holds (inclusive).
INTEGER_RANGES = {FieldType.INT: (-(2**31), 2**31 - 1), FieldType.LONG: (-(2**63), 2**63 - 1)}


@dataclass(frozen=True)
class EventField:
    """One declared field of the event schema.

    ``required``: every event carries it; ``required_when``: a condition under which it is required;
    ``values``: the allowed values of a string field (empty: any); ``minimum``/``maximum``: inclusive
    bounds of a number; ``default``: the value of an absent optional field.
    """

    name: str
    type: FieldType
    required: bool = False
    required_when: Expr | None = None
    values: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    default: Scalar | None = None
    description: str = ""


@dataclass(frozen=True)
class EventSchema:
    """The declared event schema: fields (in declaration order), the id field and the timestamp field."""

    fields: tuple[EventField, ...]
    id_field: str
    timestamp_field: str

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        require_unique(names, "event field")
        for special in (self.id_field, self.timestamp_field):
            if special not in names:
                raise PlanError([f"event schema: field '{special}' is not declared"])

    @property
    def names(self) -> tuple[str, ...]:
        """Field names in declaration order."""
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> EventField:
        """The field called ``name`` (``KeyError`` naming it when there is none)."""
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"event schema has no field '{name}'")

    def columns(self) -> dict[str, Column]:
        """What the expression type checker may read: every field but timestamps."""
        return expr_columns(self.fields)


def expr_columns(fields: Iterable[EventField]) -> dict[str, Column]:
    """The fields an expression may read (timestamps may not), with their kinds and declared values."""
    return {f.name: Column(k, frozenset(f.values)) for f in fields if (k := f.type.kind) is not None}
