"""Redis layout: hash tags, field round trips."""

import math

import numpy as np
import pyarrow as pa
import pytest

from fstore.core.aggregates import Partial
from fstore.core.timeutil import HOUR, MINUTE
from fstore.redis.layout import (
    BatchPointer,
    batch_key,
    marker_key,
    packed_arrays,
    packed_fields,
    parse_tiles,
    partial_fields,
    speed_key,
)

pytestmark = pytest.mark.unit

T = 1_763_683_200_000_000  # 2025-11-21T00:00Z


def test_keys_share_the_entity_hash_tag() -> None:
    keys = [
        speed_key("user_activity", "u1", T + HOUR),
        batch_key("user_activity", "u1", "v3"),
        marker_key("user_activity", "u1", 2921),
        marker_key("user_activity", "u1", 2921, moved=True),
    ]
    assert {k.split("}")[0] + "}" for k in keys} == {"fs:{user_activity|u1}"}
    assert speed_key("v", "e", T - 1) != speed_key("v", "e", T) == speed_key("v", "e", T + 23 * HOUR)


def test_partial_fields_round_trip() -> None:
    p = Partial(3, 0.1 + 0.2, 0.1, 0.2)
    q = Partial(1, 7.0, 7.0, 7.0)
    raw = {
        **partial_fields(5 * MINUTE, T, "purchase", p),
        **partial_fields(HOUR, T, "purchase", q),
        **partial_fields(HOUR, T, "click", Partial(0, 0.0, None, None)),
        "junk": "1",
    }
    raw_bytes = {k.encode(): v.encode() for k, v in raw.items()}
    tiles = parse_tiles(raw_bytes)
    assert tiles == {(5 * MINUTE, T): {"purchase": p}, (HOUR, T): {"purchase": q}}


def test_pointer_round_trip() -> None:
    ptr = BatchPointer("20251121-1", T)
    assert BatchPointer.loads(ptr.dumps().encode()) == ptr
    assert BatchPointer.loads(None) is None


def test_packed_fields_round_trip_and_mix_with_per_stat_fields() -> None:
    p = Partial(3, 0.1 + 0.2, 0.1, 0.2)
    empty = Partial(0, 0.0, None, None)
    raw = {
        **packed_fields(5 * MINUTE, T, "purchase", p),
        **packed_fields(HOUR, T, "click", empty),
        **partial_fields(HOUR, T, "purchase", Partial(1, 7.0, 7.0, 7.0)),  # a speed-style tile beside it
        "1:2:bad": "1 2 3",
        "junk": "1",
    }
    assert set(packed_fields(5 * MINUTE, T, "purchase", p)) == {"300:1763683200:purchase"}
    tiles = parse_tiles({k.encode(): v.encode() for k, v in raw.items()})
    assert tiles == {(5 * MINUTE, T): {"purchase": p}, (HOUR, T): {"purchase": Partial(1, 7.0, 7.0, 7.0)}}


def test_packed_arrays_match_packed_fields_and_round_trip_floats_exactly() -> None:
    rng = np.random.default_rng(3)
    floats = [
        0.1 + 0.2,
        1.0,
        7.0,
        1e20,
        1e16,
        123456789012345678.0,
        -0.0,
        5e-324,
        1.7976931348623157e308,
        *rng.random(200) * 1e3,
        *(rng.normal(size=200) * 1e-300),
    ]
    n = len(floats)
    partials = [Partial(i + 1, x, -x, None if i % 7 == 0 else x * 3) for i, x in enumerate(floats)]
    fields, values = packed_arrays(
        pa.array([HOUR] * n),
        pa.array([T + i * HOUR for i in range(n)]),
        pa.array(["m"] * n),
        pa.array([p.count for p in partials], pa.int64()),
        pa.array([p.total for p in partials], pa.float64()),
        pa.array([p.minimum for p in partials], pa.float64()),
        pa.array([p.maximum for p in partials], pa.float64()),
    )
    raw = dict(zip(fields.to_pylist(), values.to_pylist(), strict=True))
    assert set(raw) == {f for i, p in enumerate(partials) for f in packed_fields(HOUR, T + i * HOUR, "m", p)}
    tiles = parse_tiles(raw)
    for i, p in enumerate(partials):
        got = tiles[(HOUR, T + i * HOUR)]["m"]
        assert got == p and math.copysign(1.0, got.total) == math.copysign(1.0, p.total)
