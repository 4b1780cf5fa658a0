"""Redis layout: hash tags, field round trips."""

import pytest

from fstore.core.aggregates import Partial
from fstore.core.timeutil import HOUR, MINUTE
from fstore.redis_layout import BatchPointer, batch_key, parse_tiles, partial_fields, seen_key, speed_key

pytestmark = pytest.mark.unit

T = 1_763_683_200_000_000  # 2025-11-21T00:00Z


def test_keys_share_the_entity_hash_tag() -> None:
    keys = [speed_key("user_activity", "u1", T + HOUR), batch_key("user_activity", "u1", "v3"),
            seen_key("user_activity", "u1", "e9")]
    assert {k.split("}")[0] + "}" for k in keys} == {"fs:{user_activity|u1}"}
    assert speed_key("v", "e", T - 1) != speed_key("v", "e", T) == speed_key("v", "e", T + 23 * HOUR)


def test_partial_fields_round_trip() -> None:
    p = Partial(3, 0.1 + 0.2, 0.1, 0.2)
    q = Partial(1, 7.0, 7.0, 7.0)
    raw = {**partial_fields(5 * MINUTE, T, "purchase", p), **partial_fields(HOUR, T, "purchase", q),
           **partial_fields(HOUR, T, "click", Partial(0, 0.0, None, None)), "junk": "1"}
    raw_bytes = {k.encode(): v.encode() for k, v in raw.items()}
    tiles = parse_tiles(raw_bytes)
    assert tiles == {(5 * MINUTE, T): {"purchase": p}, (HOUR, T): {"purchase": q}}


def test_pointer_round_trip() -> None:
    ptr = BatchPointer("20251121-1", T)
    assert BatchPointer.loads(ptr.dumps().encode()) == ptr
    assert BatchPointer.loads(None) is None
