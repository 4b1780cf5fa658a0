"""``raw_log.rows_table``: the Arrow rows of ``raw_events``, column by column, whatever the rows' key order."""

from __future__ import annotations

import pytest

from fstore.core.events import Row
from fstore.delta import raw_log
from tests.support.repos import compiled

pytestmark = pytest.mark.unit

NOW = 1_763_700_000_000_000


def _rows() -> list[Row]:
    base: Row = {
        "event_id": "e1",
        "event_type": "purchase",
        "user_id": "u1",
        "product_id": "p1",
        "event_time": NOW,
        "price": 9.5,
        "quantity": 2,
        "session_id": "s1",
    }
    reordered = dict(reversed(list({**base, "event_id": "e2", "price": None}.items())))  # keys in another order
    return [base, reordered, {**base, "event_id": "e3", "session_id": None}]


def _reference(rows: list[Row], names: tuple[str, ...]) -> dict[str, list[object]]:
    return {n: [r.get(n) for r in rows] for n in names}


@pytest.mark.parametrize("drop", [None, "session_id"])
def test_rows_table_columns_are_the_rows_fields(drop: str | None) -> None:
    """Each column holds its field of every row (a row without the field, a null: the per-field path)."""
    schema = compiled("ecommerce").schema
    rows = _rows()
    if drop is not None:
        del rows[1][drop]
    table = raw_log.rows_table(schema, rows, ["h1", "h2", "h3"], [NOW + 1, NOW + 2, NOW + 3])
    got = {n: table.column(n).to_pylist() for n in schema.names}
    want = _reference(rows, schema.names)
    want["event_time"] = [table.column("event_time")[0].as_py()] * 3  # the same instant, as a timestamp
    assert got == want
    assert table.column("payload_hash").to_pylist() == ["h1", "h2", "h3"]
    assert [t.value for t in table.column("ingested_at")] == [NOW + 1, NOW + 2, NOW + 3]
