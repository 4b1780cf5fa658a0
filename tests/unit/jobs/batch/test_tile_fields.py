"""The batch view's hash fields (packed tiles with the variance state, distinct members as fields)
decode with :func:`fstore.redis.layout.parse_states` into the reference tiles of any plan."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from fstore.core.timeutil import DAY, to_micros
from fstore.core.view_tiles import TileKey, ViewTiler
from fstore.core.view_tiles_frame import build_tiles, member
from fstore.redis.layout import distinct_field, parse_states
from jobs.batch.batch_view import tile_fields
from tests.support.plan_rows import arrow_table
from tests.support.repos import compiled
from tests.support.rides_traffic import rides

pytestmark = pytest.mark.unit

T0 = to_micros(datetime(2026, 3, 1, tzinfo=UTC))


def test_fields_decode_into_the_reference_tiles() -> None:
    plan = compiled("rides")
    rows = rides(2_000, T0, 35 * DAY, seed=3)
    checked = distinct = 0
    for view in plan.views:
        key = view.entity.join_key
        tiles = build_tiles(view, plan.schema, arrow_table(plan.schema, rows))
        entities, fields, values = tile_fields(tiles.take(list(range(tiles.num_rows))[::-1]), key)
        assert entities.to_pylist() == sorted(entities.to_pylist())  # one run of fields per entity
        hashes: dict[str, dict[str, str]] = defaultdict(dict)
        for e, f, v in zip(entities.to_pylist(), fields.to_pylist(), values.to_pylist(), strict=True):
            assert f not in hashes[e]
            hashes[e][f] = v
        want = ViewTiler(view, plan.schema.timestamp_field).build(rows)
        assert {k.entity for k in want} == set(hashes)
        for entity, raw in hashes.items():
            got = parse_states(raw)
            for (size, start), measures in got.items():
                ref = want[TileKey(entity, size, start)]
                assert set(measures) == set(ref)
                for m, acc in measures.items():
                    r = ref[m]
                    assert (acc.count, acc.minimum, acc.maximum) == (r.count, r.minimum, r.maximum)
                    assert math.isclose(acc.total, r.total, rel_tol=1e-12, abs_tol=1e-12)
                    assert math.isclose(acc.m2, r.m2, rel_tol=1e-12, abs_tol=1e-9)
                    if r.distinct is None:
                        assert acc.distinct is None
                    else:
                        assert acc.distinct == {member(x) for x in r.distinct}
                        for x in r.distinct:
                            assert raw[distinct_field(size, start, m, member(x))] == "1"
                        distinct += 1
                    checked += 1
            assert sum(len(t) for k, t in want.items() if k.entity == entity) == sum(len(t) for t in got.values())
    assert checked > 500 and distinct > 50


def test_tiles_without_the_new_columns_still_load() -> None:
    """Tiles read back from an older Delta partition (no m2, no distinct): packed fields, m2 = 0."""
    old = pa.table({"k": ["a"], "size": [60_000_000], "tile_start": [0], "measure": ["x"], "count": [2],
                    "sum": [3.0], "min": [1.0], "max": [2.0]})  # fmt: skip
    entities, fields, values = tile_fields(old, "k")
    assert (entities.to_pylist(), fields.to_pylist(), values.to_pylist()) == (["a"], ["60:0:x"], ["2 3 1 2"])
