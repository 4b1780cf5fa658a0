"""The event schema of a ``KafkaSource``: the Spark DDL string of Feast's ``JsonFormat(schema_json=...)``.

Feast hands ``schema_json`` to Spark's ``from_json``, so it is a DDL field list such as
``event_id STRING NOT NULL, amount DOUBLE, units INT COMMENT 'items'``. fstore reads the flat subset
of it (one scalar type per field; ``NOT NULL`` marks a required field; ``COMMENT`` becomes the field's
description) without Spark, so that the compiler can run anywhere.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from fstore.core.event_schema import FieldType

_TYPES = {
    "STRING": FieldType.STRING,
    "VARCHAR": FieldType.STRING,
    "CHAR": FieldType.STRING,
    "BOOLEAN": FieldType.BOOL,
    "TINYINT": FieldType.INT,
    "BYTE": FieldType.INT,
    "SMALLINT": FieldType.INT,
    "SHORT": FieldType.INT,
    "INT": FieldType.INT,
    "INTEGER": FieldType.INT,
    "BIGINT": FieldType.LONG,
    "LONG": FieldType.LONG,
    "FLOAT": FieldType.FLOAT,
    "REAL": FieldType.FLOAT,
    "DOUBLE": FieldType.FLOAT,
    "TIMESTAMP": FieldType.TIMESTAMP,
    "TIMESTAMP_LTZ": FieldType.TIMESTAMP,
}
_FIELD = re.compile(
    r"\s*(?:`(?P<quoted>[^`]+)`|(?P<name>[A-Za-z_]\w*))\s*:?\s+(?P<type>[A-Za-z_]+)(?:\s*\(\s*\d+\s*(?:,\s*\d+\s*)?\))?"
    r"(?P<notnull>\s+NOT\s+NULL)?(?:\s+COMMENT\s+'(?P<comment>(?:[^'\\]|\\.)*)')?\s*",
    re.IGNORECASE,
)


class DeclaredField(NamedTuple):
    """One field of the DDL: name, type, ``NOT NULL`` and its comment."""

    name: str
    type: FieldType
    not_null: bool
    comment: str


def _split(ddl: str) -> list[str]:
    """Split at the commas that are outside quotes, brackets and parentheses."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(ddl):
        if quote:
            if ch == quote and ddl[i - 1] != "\\":
                quote = ""
        elif ch in "'`":
            quote = ch
        elif ch in "<(":
            depth += 1
        elif ch in ">)":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(ddl[start:i])
            start = i + 1
    parts.append(ddl[start:])
    return parts


def parse_schema_json(ddl: str) -> list[DeclaredField]:
    """Parse a flat Spark DDL field list.

    Raises:
        ValueError: naming the first field that is not ``name TYPE [NOT NULL] [COMMENT '...']`` with a
            scalar type fstore knows (nested types, DECIMAL, DATE, ... are refused with what to use).
    """
    if not ddl.strip():
        raise ValueError('schema_json is empty: declare the event fields, e.g. "event_id STRING NOT NULL, ..."')
    out = []
    for part in _split(ddl):
        m = _FIELD.fullmatch(part)
        if m is None and re.search(r"\b(ARRAY|MAP|STRUCT)\s*<", part, re.IGNORECASE):
            raise ValueError(f"field {part.strip()!r}: nested types are not supported; declare flat scalar fields")
        if m is None:
            raise ValueError(f"cannot read the field {part.strip()!r}: write name TYPE [NOT NULL] [COMMENT '...']")
        name = m.group("quoted") or m.group("name")
        type_name = m.group("type").upper()
        if type_name not in _TYPES:
            raise ValueError(
                f"field {name}: type {type_name} is not supported; use one of STRING, BOOLEAN, INT, BIGINT, "
                "DOUBLE, TIMESTAMP (nested and decimal fields are not)"
            )
        comment = (m.group("comment") or "").replace("\\'", "'")
        out.append(DeclaredField(name, _TYPES[type_name], bool(m.group("notnull")), comment))
    return out
