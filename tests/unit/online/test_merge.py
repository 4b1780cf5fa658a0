"""The online merge without Redis: decoding replies, memoised batch folds and values, request parsing."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from fstore.core.aggregates import Partial, isclose
from fstore.core.events import Event
from fstore.core.features import PRODUCT_ENGAGEMENT, USER_ACTIVITY
from fstore.core.tiles import build_tiles, evaluate
from fstore.core.timeutil import DAY, HOUR, MINUTE, SECOND, iso
from fstore.online.merge import (
    BatchTiles,
    EntityRead,
    _plan,
    decode_batch,
    decode_speed_hashes,
    evaluate_columns,
    finish,
)
from fstore.redis.layout import future_field, future_value, packed_fields, parse_tiles, partial_fields
from tests.support import bruteforce
from tests.support.tiles import lookup_in_dict

pytestmark = pytest.mark.unit

C = 1_795_219_200_000_000  # 2026-11-21T00:00Z, the cutover
MEASURES = {300 * SECOND: ("page_view", "click"), HOUR: ("page_view", "click", "add_to_cart", "purchase")}


def random_tiles(rng: random.Random, lo: int, hi: int, n: int) -> dict[tuple[int, int], dict[str, Partial]]:
    tiles: dict[tuple[int, int], dict[str, Partial]] = {}
    for _ in range(n):
        size = rng.choice(list(MEASURES))
        start = rng.randrange(lo, hi) // size * size
        p = Partial()
        for _ in range(rng.randint(1, 3)):
            p.add(round(rng.uniform(1, 90), 2))
        tiles.setdefault((size, start), {})[rng.choice(MEASURES[size])] = p
    return tiles


def as_hash(tiles: dict[tuple[int, int], dict[str, Partial]], packed: bool) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for (size, start), ps in tiles.items():
        for m, p in ps.items():
            fields = (packed_fields if packed else partial_fields)(size, start, m, p)
            out.update({k.encode(): v.encode() for k, v in fields.items()})
    return out


def flat(h: dict[bytes, bytes]) -> list[bytes]:
    return [x for kv in h.items() for x in kv]


def test_decoding_flat_replies_equals_mappings_and_parse_tiles() -> None:
    rng = random.Random(1)
    day1, day2 = random_tiles(rng, C, C + DAY, 40), random_tiles(rng, C + DAY, C + DAY + 5 * HOUR, 20)
    h1, h2 = as_hash(day1, False), as_hash(day2, True)
    want = {
        (size, start, m): p.to_tuple()
        for tiles in (parse_tiles(dict(h1)), parse_tiles(dict(h2)))
        for (size, start), ps in tiles.items()
        for m, p in ps.items()
    }
    h1.update({b"junk": b"1", b"300:abc:click:c": b"1", b"300:1:click": b"1 2"})  # other shapes: ignored
    from_maps = decode_speed_hashes([h1, h2], C)
    assert decode_speed_hashes([flat(h1), flat(h2)], C) == from_maps
    assert decode_speed_hashes([{k.decode(): v.decode() for k, v in h1.items()}, h2], C) == from_maps
    cols, newest = from_maps
    got = {
        (size, start, m): st
        for (size, m), (starts, stats) in cols.items()
        for start, st in zip(starts, stats, strict=True)
    }
    assert got == want and newest == max(start for (_, start, _) in want)
    assert all(list(starts) == sorted(starts) for starts, _ in cols.values())
    assert decode_speed_hashes([[], {}], C) == ({}, None)
    assert decode_speed_hashes([flat(h1)], C + 2 * DAY) == ({}, None)  # all before the cutover


def test_batch_folds_and_values_are_memoised_exactly() -> None:
    """A batch tile set reused across read times gives exactly the values of a fresh evaluation."""
    rng = random.Random(2)
    for trial in range(30):
        tiles = random_tiles(rng, C - 8 * DAY, C, 200)
        speed = random_tiles(rng, C, C + 20 * HOUR, 30) if trial % 2 else {}
        raw = as_hash(tiles, bool(trial % 3))
        cached = decode_batch(USER_ACTIVITY, flat(raw), C, C)
        t0 = C + rng.randrange(0, 20 * HOUR)
        for t in (t0, t0 + 1, t0 + 4 * MINUTE, t0 + 6 * MINUTE, t0 + HOUR, t0 + 3 * HOUR, t0 + 2):
            speed_hash = as_hash({k: v for k, v in speed.items() if k[1] < t}, False)
            union = {**tiles, **{k: v for k, v in speed.items() if k[1] < t}}
            for names in (USER_ACTIVITY.feature_names, ("clicks_1h", "revenue_7d"), ("max_order_value_7d",)):
                want = evaluate(USER_ACTIVITY, lookup_in_dict(union), t, names)
                got = finish(EntityRead(USER_ACTIVITY, "u", names), C, cached, [speed_hash], t)
                fresh = evaluate_columns(
                    USER_ACTIVITY,
                    names,
                    decode_batch(USER_ACTIVITY, raw, C, None),
                    decode_speed_hashes([speed_hash], C)[0],
                    t,
                )
                assert got.values == want == fresh, (trial, t, names)


def test_fold_without_memo_before_the_cutover() -> None:
    """Reads before the cutover bound the batch tiles by the window head and do not memoise."""
    tiles = BatchTiles({(HOUR, "click"): ((C - 3 * HOUR, C - HOUR), ((1, 1.0, 1.0, 1.0), (2, 2.0, 1.0, 1.0)))}, C)
    assert tiles.fold(HOUR, "click", C - 5 * HOUR, C - 2 * HOUR) == (1, 1.0, 1.0, 1.0)
    assert tiles.fold(HOUR, "click", C - 5 * HOUR, C + HOUR) == (3, 3.0, 1.0, 1.0)
    assert tiles.fold(HOUR, "purchase", C - 5 * HOUR, C + HOUR) == (0, 0.0, None, None)


def test_future_fields_count_exactly_from_their_time_and_cutover() -> None:
    """What the speed layer writes — tiles of the events before its clock, exact fields for the others —
    read at any as_of from that clock on equals the brute force: a future event counts iff before as_of."""
    rng = random.Random(9)
    clock = C + 5 * HOUR + 2 * MINUTE + 17 * SECOND
    kinds = ["page_view", "click", "add_to_cart", "purchase"]
    events = [
        Event(
            f"e{i}",
            rng.choice(kinds),
            "u1",
            "p1",
            clock + rng.choice([-rng.randrange(3 * HOUR), rng.randrange(5 * MINUTE), 0, 1]),
            round(rng.uniform(1, 90), 2),
            rng.randint(1, 3),
            None,
        )
        for i in range(400)
    ]
    past = [e for e in events if e.event_time < clock]
    events.append(Event("before-cutover", "click", "u1", "p1", C - 1, None, 1, None))  # a field, not a tile
    later = [e for e in events if e.event_time >= clock]
    assert later
    raw: dict[bytes, bytes] = {}
    for tk, tile in build_tiles(USER_ACTIVITY, past).items():
        for m, part in tile.items():
            raw.update({k.encode(): v.encode() for k, v in partial_fields(tk.size, tk.start, m, part).items()})
    measures = {f.measure.name: f.measure for f in USER_ACTIVITY.windowed}
    for e in later + events[-1:]:
        fed = {n: m.of(e.price, e.quantity) for n, m in measures.items() if m.event_type == e.event_type}
        raw[future_field(e.event_time, e.event_id).encode()] = future_value(fed).encode()
    assert parse_tiles(raw) == parse_tiles({k: v for k, v in raw.items() if not k.startswith(b"f:")})
    read = EntityRead(USER_ACTIVITY, "u1", USER_ACTIVITY.feature_names)
    kept = [e for e in events if e.event_time >= C]
    for as_of in sorted({clock, clock + 1, *(e.event_time + d for e in later for d in (0, 1))}):
        got = finish(read, C, None, [flat(raw)], as_of).values
        want = bruteforce.values(USER_ACTIVITY, kept, "u1", as_of)
        assert all(isclose(got[n], w) for n, w in want.items()), (as_of, got, want)
    # without the cutover the field before it counts too
    got = finish(read, None, None, [raw], clock + 6 * MINUTE).values
    assert got["clicks_24h"] == bruteforce.value(USER_ACTIVITY, "clicks_24h", events, "u1", clock + 6 * MINUTE)


def test_plan_grain_divides_every_size_and_window() -> None:
    for view in (USER_ACTIVITY, PRODUCT_ENGAGEMENT):
        groups, _, grain = _plan(view, view.feature_names)
        assert grain == 300 * SECOND and all(size % grain == 0 == window % grain for size, window, _, _ in groups)
    assert _plan(USER_ACTIVITY, ("revenue_7d",))[2] == HOUR


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
