"""The online merge without Redis: decoding replies, memoised batch folds and values, request parsing.

Views come from compiled plans: the example (``ecommerce``: counts, sums, means, maxima, ratios) and
``rides`` (std/var through the variance state, exact count_distinct through members, string measures).
"""

from __future__ import annotations

import math
import random
import subprocess
import sys
from typing import Any

import pytest

from fstore.core.expr_eval import measure_fn
from fstore.core.plan import View
from fstore.core.tile_state import Acc
from fstore.core.timeutil import DAY, HOUR, MINUTE, SECOND, iso
from fstore.core.view_tiles import TileKey, ViewTiler, evaluate, lookup_in
from fstore.online.merge import (
    BatchTiles,
    EntityRead,
    _plan,
    decode_batch,
    decode_speed_hashes,
    evaluate_columns,
    finish,
)
from fstore.redis.layout import acc_fields, future_field, future_value, parse_states
from tests.support import plan_bruteforce
from tests.support.plan_online import speed_fields
from tests.support.repos import compiled
from tests.support.rides_traffic import rides

pytestmark = pytest.mark.unit

C = 1_795_219_200_000_000  # 2026-11-21T00:00Z, the cutover
Tiles = dict[tuple[int, int], dict[str, Acc]]


def views() -> list[View]:
    return [compiled("ecommerce").view("user_activity"), compiled("rides").view("driver_performance")]


def random_tiles(view: View, rng: random.Random, lo: int, hi: int, n: int) -> Tiles:
    """``n`` random tile measures of ``view`` (numbers, or members for a string measure) in ``[lo, hi)``."""
    tiles: Tiles = {}
    for _ in range(n):
        group = rng.choice(view.tiles)
        tm = rng.choice(group.measures)
        start = rng.randrange(lo, hi) // group.hop * group.hop
        acc = Acc.for_states(tm.states)
        text = view.measure(tm.measure).kind.value == "string"
        for _ in range(rng.randint(1, 4)):
            acc.add(f"r{rng.randrange(9)}" if text else round(rng.uniform(-5, 90), 2))
        tiles.setdefault((group.hop, start), {})[tm.measure] = acc
    return tiles


def as_hash(tiles: Tiles, packed: bool) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for (size, start), accs in tiles.items():
        for m, acc in accs.items():
            fields = (acc_fields if packed else speed_fields)(size, start, m, acc)
            out.update({k.encode(): v.encode() for k, v in fields.items()})
    return out


def flat(h: dict[bytes, bytes]) -> list[bytes]:
    return [x for kv in h.items() for x in kv]


def reference(view: View, tiles: Tiles, t: int, names: tuple[str, ...]) -> dict[str, Any]:
    return evaluate(view, lookup_in({TileKey("e", s, st): accs for (s, st), accs in tiles.items()}, "e"), t, names)


@pytest.mark.parametrize("which", [0, 1])
def test_decoding_flat_replies_equals_mappings_and_parse_states(which: int) -> None:
    view = views()[which]
    rng = random.Random(1)
    day1, day2 = random_tiles(view, rng, C, C + DAY, 40), random_tiles(view, rng, C + DAY, C + DAY + 5 * HOUR, 20)
    h1, h2 = as_hash(day1, False), as_hash(day2, True)
    want = {
        (size, start, m): (acc.count, acc.total, acc.minimum, acc.maximum, acc.m2, acc.distinct or None)
        for tiles in (parse_states(dict(h1)), parse_states(dict(h2)))
        for (size, start), accs in tiles.items()
        for m, acc in accs.items()
    }
    h1.update({b"junk": b"1", b"300:abc:click:c": b"1", b"300:1:click": b"1 2", b"300:1:click:q": b"1"})  # ignored
    from_maps = decode_speed_hashes([h1, h2], C)
    assert decode_speed_hashes([flat(h1), flat(h2)], C) == from_maps
    assert decode_speed_hashes([{k.decode(): v.decode() for k, v in h1.items()}, h2], C) == from_maps
    cols, newest = from_maps
    got = {
        (size, start, m): (*st, None if sets is None else sets[i])
        for (size, m), (starts, stats, sets) in cols.items()
        for i, (start, st) in enumerate(zip(starts, stats, strict=True))
    }
    assert got == want and newest == max(start for (_, start, _) in want)
    assert all(list(starts) == sorted(starts) for starts, _, _ in cols.values())
    assert decode_speed_hashes([[], {}], C) == ({}, None)
    assert decode_speed_hashes([flat(h1)], C + 2 * DAY) == ({}, None)  # all before the cutover


@pytest.mark.parametrize("which", [0, 1])
def test_batch_folds_and_values_are_memoised_exactly(which: int) -> None:
    """A batch tile set reused across read times gives exactly the values of a fresh evaluation and of
    the reference tile path (same merge order: bit-identical sums and variance states)."""
    view = views()[which]
    rng = random.Random(2)
    subsets = (view.feature_names, view.feature_names[:3], view.feature_names[-2:])
    for trial in range(12):
        tiles = random_tiles(view, rng, C - 32 * DAY, C, 300)
        speed = random_tiles(view, rng, C, C + 20 * HOUR, 40) if trial % 2 else {}
        raw = as_hash(tiles, bool(trial % 3))
        cached = decode_batch(view, flat(raw), C, C)
        t0 = C + rng.randrange(0, 20 * HOUR)
        for t in (t0, t0 + 1, t0 + 4 * MINUTE, t0 + 16 * MINUTE, t0 + HOUR, t0 + 7 * HOUR, t0 + 2):
            now = {k: v for k, v in speed.items() if k[1] < t}
            speed_hash = as_hash(now, False)
            for names in subsets:
                want = reference(view, {**tiles, **now}, t, names)
                got = finish(EntityRead(view, "e", names), C, cached, [speed_hash], t)
                fresh = evaluate_columns(
                    view, names, decode_batch(view, raw, C, None), decode_speed_hashes([speed_hash], C)[0], t
                )
                assert got.values == want == fresh, (trial, t, names)


def test_fold_without_memo_before_the_cutover() -> None:
    """Reads before the cutover bound the batch tiles by the window head and do not memoise."""
    stats = ((1, 1.0, 1.0, 1.0, 0.0), (2, 5.0, 2.0, 3.0, 0.5))
    tiles = BatchTiles({(HOUR, "m"): ((C - 3 * HOUR, C - HOUR), stats, (frozenset("a"), frozenset("ab")))}, C)
    assert tiles.fold(HOUR, "m", C - 5 * HOUR, C - 2 * HOUR, True, True) == (1, 1.0, 1.0, 1.0, 0.0, frozenset("a"))
    # m2 of {1, 2, 3} = 2 (Chan: 0 + 0.5 + (2.5 - 1)^2 * 1 * 2 / 3); members united
    assert tiles.fold(HOUR, "m", C - 5 * HOUR, C + HOUR, True, True) == (3, 6.0, 1.0, 3.0, 2.0, frozenset("ab"))
    assert tiles.fold(HOUR, "x", C - 5 * HOUR, C + HOUR, True, True) == (0, 0.0, None, None, 0.0, None)


@pytest.mark.parametrize("which", [0, 1])
def test_future_fields_count_exactly_from_their_time_and_cutover(which: int) -> None:
    """What the speed layer writes — tiles of the events before its clock, exact JSON fields (numbers and
    strings) for the others — read at any as_of from that clock on equals the brute force: a future event
    counts iff before as_of."""
    plan = compiled("ecommerce") if which == 0 else compiled("rides")
    view = views()[which]
    ts, idf = plan.schema.timestamp_field, plan.schema.id_field
    clock = C + 5 * HOUR + 2 * MINUTE + 17 * SECOND
    if which == 0:
        rng = random.Random(9)
        kinds = ["page_view", "click", "add_to_cart", "purchase"]
        events: list[dict[str, Any]] = [
            {
                "event_id": f"e{i}",
                "event_type": rng.choice(kinds),
                "user_id": "u1",
                "product_id": "p1",
                "event_time": clock + rng.choice([-rng.randrange(3 * HOUR), rng.randrange(5 * MINUTE), 0, 1]),
                "price": round(rng.uniform(1, 90), 2),
                "quantity": rng.randint(1, 3),
            }
            for i in range(400)
        ]
        entity = "u1"
    else:
        events = rides(600, clock - 3 * HOUR, 3 * HOUR + 5 * MINUTE, seed=9, drivers=1)
        entity = "d0"
    past = [e for e in events if e[ts] < clock]
    early = {**events[0], idf: "before-cutover", ts: C - 1}
    events.append(early)  # a field, not a tile
    later = [e for e in events if e[ts] >= clock]
    assert len(later) > 5
    raw: dict[bytes, bytes] = {}
    for tk, tile in ViewTiler(view, ts).build(past).items():
        for m, acc in tile.items():
            raw.update({k.encode(): v.encode() for k, v in speed_fields(tk.size, tk.start, m, acc).items()})
    measures = [(m.name, measure_fn(m.value, m.where)) for m in view.measures]
    for e in [*later, early]:
        fed = {n: x if isinstance(x, str) else float(x) for n, fn in measures if (x := fn(e)) is not None}
        raw[future_field(e[ts], e[idf]).encode()] = future_value(fed).encode()
    assert parse_states(raw) == parse_states({k: v for k, v in raw.items() if not k.startswith(b"f:")})
    read = EntityRead(view, entity, view.feature_names)
    kept = [e for e in events if e[ts] >= C]
    for as_of in sorted({clock, clock + 1, *(e[ts] + d for e in later[:40] for d in (0, 1))}):
        got = finish(read, C, None, [flat(raw)], as_of).values
        want = plan_bruteforce.values(plan, view.name, kept, entity, as_of)
        bad = {n: (got[n], w) for n, w in want.items() if not close(got[n], w)}
        assert not bad, as_of
    # without the cutover the field before it counts too
    t = clock + 6 * MINUTE
    got = finish(read, None, None, [raw], t).values
    assert all(close(got[n], w) for n, w in plan_bruteforce.values(plan, view.name, events, entity, t).items())


def close(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)


def test_plan_grain_divides_every_size_and_window() -> None:
    for view in (compiled("ecommerce").view("user_activity"), compiled("ecommerce").view("product_engagement")):
        groups, _, grain = _plan(view, view.feature_names)
        assert grain == 300 * SECOND and all(g[0] % grain == 0 == g[1] % grain for g in groups)
    assert _plan(compiled("ecommerce").view("user_activity"), ("revenue_7d",))[2] == HOUR
    rides_view = compiled("rides").view("driver_performance")
    groups, _, grain = _plan(rides_view, rides_view.feature_names)
    assert all(g[0] % grain == 0 == g[1] % grain for g in groups)
    # the variance state is merged only where a std/var reads it, members only where a count_distinct does
    flags = {(g[2], g[1]): (g[3], g[4]) for g in groups}
    assert flags[("fare", 2 * DAY)] == (True, False) and flags[("rider_served", 30 * DAY)] == (False, True)
    assert flags[("trip", 2 * DAY)] == (False, False)


def test_iso_fast_equals_iso() -> None:
    from fstore.online.reader import iso_fast

    rng = random.Random(3)
    for us in [0, 1, SECOND, C, C + 123_456, -1, *(rng.randrange(-(10**16), 10**17) for _ in range(2000))]:
        assert iso_fast(us) == iso(us)


@pytest.mark.parametrize(
    ("body", "content_type", "taken"),
    [
        (b'{"entities": [{"user_id": "u1"}], "features": ["user_activity"]}', None, True),
        (b'{"entities": [{"user_id": "u1"}], "features": ["user_activity"]}', "application/json", True),
        (b'{"entities": [], "features": []}', "Application/JSON; charset=utf-8", True),
        (b'{"entities": [{"user_id": "u1"}], "features": ["user_activity"]}', "text/plain", False),
        (b'{"entities": [{"user_id": "u1"}], "features": ["user_activity"]}', "application/vnd.x+json", False),
        (b'{"entities": [{"user_id": "u1"}], "features": ["user_activity"], "x": 1}', None, False),
        (b'{"entities": [{"user_id": 1}], "features": ["user_activity"]}', None, False),
        (b'{"entities": [["u1"]], "features": ["user_activity"]}', None, False),
        (b'{"entities": [{"user_id": "u1"}], "features": "user_activity"}', None, False),
        (b'{"entities": [{"user_id": "u1"}]}', None, False),
        (b"[1, 2]", None, False),
        (b'{"entities": [', None, False),
        (b"NaN", None, False),
    ],
)
def test_post_fast_path_takes_only_bodies_the_route_accepts_unchanged(
    body: bytes, content_type: str | None, taken: bool
) -> None:
    from services.online_api.app import features_body

    assert (features_body(body, content_type) is not None) == taken


def test_online_merge_loads_no_client() -> None:
    code = (
        "import sys, fstore.online.merge\n"
        "sys.exit(1 if [m for m in sys.modules if m.split('.')[0] in ('redis', 'fastapi', 'feast')] else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
