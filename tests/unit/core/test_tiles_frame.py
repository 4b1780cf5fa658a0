"""The vectorised tiles/snapshots agree with the core's scalar tiles and with the brute force."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from fstore.core.aggregates import isclose
from fstore.core.timeutil import DAY, HOUR, MINUTE, day_start
from tests.support import bruteforce
from tests.support.legacy import tiles as core_tiles
from tests.support.legacy import tiles_frame
from tests.support.legacy.events_example import EVENT_TYPES, Event
from tests.support.legacy.features import VIEWS, FeatureView

pytestmark = pytest.mark.unit

C = day_start(__import__("datetime").date(2026, 11, 21))


def random_events(n: int, seed: int) -> list[Event]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        et = rng.choice(EVENT_TYPES)
        # bias towards the last day and exact tile boundaries, including t = C itself (excluded)
        offset = rng.choice(
            [
                rng.randrange(0, 8 * DAY),
                rng.randrange(0, 2 * HOUR),
                rng.randrange(0, 30) * 5 * MINUTE,
                0,
                7 * DAY,
                7 * DAY + HOUR,
            ]
        )
        price = round(rng.uniform(0, 300), 2) if et == "purchase" else rng.choice([None, 1.5])
        pid = None if et == "page_view" and rng.random() < 0.4 else f"p{rng.randrange(6)}"
        out.append(Event(f"e{i}", et, f"u{rng.randrange(8)}", pid, C - offset, price, rng.randrange(1, 4), None))
    return out


def events_frame(view: FeatureView, events: list[Event]) -> pa.Table:
    key = view.entity.join_key
    return pa.table(
        {
            key: [getattr(e, key) for e in events],
            "event_type": [e.event_type for e in events],
            "event_time": pa.array([e.event_time for e in events], pa.int64()),
            "price": pa.array([e.price for e in events], pa.float64()),
            "quantity": [e.quantity for e in events],
        }
    )


def horizons(view: FeatureView) -> dict[int, int]:
    return {s: C - max(f.window for f in view.windowed if f.hop == s) - s for s in view.hops}


@pytest.mark.parametrize("name", sorted(VIEWS))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_tiles_match_the_scalar_core(name: str, seed: int) -> None:
    view = VIEWS[name]
    events = random_events(600, seed)
    hz = horizons(view)
    got = tiles_frame.build_tiles(view, events_frame(view, list(reversed(events))), hz, C)
    want = core_tiles.build_tiles(view, [e for e in events if e.event_time < C])
    want_rows = {
        (k.entity, k.size, k.start, m): p.to_tuple()
        for k, tile in want.items()
        for m, p in tile.items()
        if k.start >= hz[k.size]
    }
    got_rows = {
        (r[view.entity.join_key], r["size"], r["tile_start"], r["measure"]): (r["count"], r["sum"], r["min"], r["max"])
        for r in got.to_pylist()
    }
    assert set(got_rows) == set(want_rows) and len(got_rows) > 20
    for k, (c, s, lo, hi) in got_rows.items():
        wc, ws, wlo, whi = want_rows[k]
        assert c == wc and isclose(s, ws) and lo == wlo and hi == whi, k


@pytest.mark.parametrize("name", sorted(VIEWS))
def test_snapshot_matches_brute_force(name: str) -> None:
    view = VIEWS[name]
    events = random_events(800, 5)
    tl = tiles_frame.build_tiles(view, events_frame(view, events), horizons(view), C)
    snap = tiles_frame.snapshot(view, tl, C)
    assert snap.schema == tiles_frame.snapshot_schema(view)
    rows = {r[view.entity.join_key]: r for r in snap.to_pylist()}
    key = view.entity.join_key
    entities = {getattr(e, key) for e in events if getattr(e, key) is not None}
    nonzero = 0
    for ent in sorted(entities):
        want = bruteforce.values(view, events, ent, C)
        counted = any(
            e.event_type == f.measure.event_type
            for f in view.windowed
            for e in bruteforce.window_events(events, key, ent, C, f.window)
        )
        assert (ent in rows) == counted, ent
        if ent in rows:
            nonzero += 1
            assert rows[ent]["event_timestamp"] == C
            for n, v in want.items():
                assert isclose(rows[ent][n], v), (ent, n, rows[ent][n], v)
    assert nonzero >= 3


def test_snapshot_rejects_off_grid_time() -> None:
    view = VIEWS["user_activity"]
    with pytest.raises(ValueError, match="tile boundary"):
        tiles_frame.snapshot(view, tiles_frame.tile_schema(view).empty_table(), C + 1)


def test_reordering_gives_identical_tiles() -> None:
    view = VIEWS["product_engagement"]
    events = random_events(500, 9)
    a = tiles_frame.build_tiles(view, events_frame(view, events), horizons(view), C)
    random.Random(3).shuffle(events)
    b = tiles_frame.build_tiles(view, events_frame(view, events), horizons(view), C)
    assert a.equals(b)
