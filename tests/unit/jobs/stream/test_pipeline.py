"""Pure parts of the stream worker: batch classification and the Lua call packing (no services)."""

from __future__ import annotations

import json

import orjson
import pytest
from redis.asyncio.connection import Connection

from fstore.core.events import Event
from fstore.core.features import PRODUCT_ENGAGEMENT, USER_ACTIVITY
from fstore.core.tiles import build_tiles
from fstore.core.timeutil import HOUR, MINUTE, SECOND
from fstore.redis.layout import future_field, marker_key, parse_future, partial_fields, speed_key
from jobs.stream.pipeline import prepare
from jobs.stream.speed_lua import APPLY_TILES_SHA, group_events, marker_generation, plan_calls

pytestmark = pytest.mark.unit

NOW = 1_763_700_000_000_000


def msg(i: int, t: int = NOW - HOUR, etype: str = "click", **kw: object) -> bytes:
    body = {
        "event_id": f"e{i}",
        "event_type": etype,
        "user_id": f"u{i % 3}",
        "product_id": f"p{i % 2}",
        "event_time": t // 1000,
        **kw,
    }
    return json.dumps(body).encode()


def test_prepare_classifies_and_keeps_first_copy() -> None:
    values = [
        msg(1),
        b"{oops",
        msg(2, t=NOW + 10 * MINUTE),
        msg(1, quantity=3),
        msg(3, t=NOW - 30 * 24 * HOUR),
        msg(4, t=NOW - 2 * HOUR),
    ]
    p = prepare(values, NOW, last_at=NOW + 5, cutover=NOW - 90 * MINUTE, horizon_us=8 * 24 * HOUR)
    assert p.invalid == [(1, "malformed_json"), (2, "future_timestamp")]
    assert [e.event_id for e in p.valid] == ["e1", "e1", "e3", "e4"]
    assert p.ingested_at == [NOW + 6, NOW + 7, NOW + 8, NOW + 9] and p.last_at == NOW + 9
    assert [e.event_id for e in p.fresh] == ["e1", "e4"] and p.fresh[0].quantity == 1
    assert (p.batch_duplicates, p.beyond_horizon, p.late) == (1, 1, 2)


def test_plan_calls_packs_markers_and_deltas() -> None:
    events = [Event(f"e{i}", "purchase", f"u{i % 2}", "p1", NOW - i * MINUTE, 2.5 * i, 1, None) for i in range(4)]
    groups = group_events([USER_ACTIVITY, PRODUCT_ENGAGEMENT], events)
    assert set(groups) == {("user_activity", "u0"), ("user_activity", "u1"), ("product_engagement", "p1")}
    calls = list(plan_calls(list(groups.values()), 100, 200, cluster=True, chunk=1, generation=7))
    assert len(calls) == 3  # one hash slot each
    for call in calls:
        assert call.argv[:3] == [100, 200, 1]
        tags = {k[k.index("{") : k.index("}") + 1] for k in call.keys}
        assert len(tags) == 1
        ((_, sub),) = call.subs
        assert call.keys[:3] == [marker_key(sub.view.name, sub.entity, g) for g in (6, 7, 8)]
        data = orjson.loads(call.argv[3])  # type: ignore[arg-type]
        assert data[4 : 4 + len(sub.events)] == [eid for _, eid in call.markers.values()]
    packed = list(plan_calls(list(groups.values()), 100, 200, cluster=False, chunk=10_000, generation=7))
    assert len(packed) == 1 and packed[0].argv[2] == 3


def test_marker_generation_keeps_markers_at_least_one_ttl() -> None:
    ttl = 3600
    for now in (0, 1, ttl * SECOND - 1, ttl * SECOND, 5 * ttl * SECOND + 17):
        g, left = marker_generation(now, ttl)
        assert g * ttl <= now // SECOND < (g + 1) * ttl  # the clock's generation
        assert now // SECOND + left == (g + 2) * ttl  # the generation's hashes expire together
        assert ttl < left <= 2 * ttl  # a marker written now outlives the TTL


def test_subgroup_rebuild_drops_duplicates() -> None:
    events = [Event(f"e{i}", "click", "u1", "p1", NOW - i * MINUTE, None, 1, None) for i in range(3)]
    sub = group_events([USER_ACTIVITY], events)[("user_activity", "u1")]
    sub.rebuild({"e1"})
    assert sub.tiles == build_tiles(USER_ACTIVITY, [events[0], events[2]])


def test_group_events_matches_core_build_tiles() -> None:
    kinds = ["page_view", "impression", "click", "add_to_cart", "purchase"]
    events = [
        Event(
            f"e{i}",
            kinds[i % 5],
            f"u{i % 4}",
            None if i % 10 == 0 else f"p{i % 3}",
            NOW - i * 7 * MINUTE,
            1.5 * i if i % 5 == 4 else None,
            1 + i % 2,
            None,
        )
        for i in range(200)
    ]
    groups = group_events([USER_ACTIVITY, PRODUCT_ENGAGEMENT], events)
    for view in (USER_ACTIVITY, PRODUCT_ENGAGEMENT):
        want = build_tiles(view, events)
        got = {k: t for (v, _), sub in groups.items() if v == view.name for k, t in sub.tiles.items()}
        assert got == want


def test_script_payload_keys_fields_and_marker_owners() -> None:
    kinds = ["page_view", "impression", "click", "add_to_cart", "purchase"]
    events = [
        Event(
            f"e{i}",
            kinds[i % 5],
            f"u{i % 3}",
            f"p{i % 2}",
            NOW - i * 97 * MINUTE,
            2.5 * i if i % 5 == 4 else None,
            1 + i % 3,
            None,
        )
        for i in range(40)
    ]
    now = NOW - 9 * 97 * MINUTE  # the first ten events are stamped at or after the processing clock
    groups = group_events([USER_ACTIVITY, PRODUCT_ENGAGEMENT], events, now)
    assert {ev.event_id for sub in groups.values() for ev in sub.future} == {f"e{i}" for i in range(10)}
    for (_, entity), sub in groups.items():  # the tiles hold only the events before the clock
        past = [ev for ev in sub.events if ev.event_time < now]
        assert sub.tiles == {k: t for k, t in build_tiles(sub.view, past).items() if k.entity == entity}
    calls = list(plan_calls(list(groups.values()), 100, 200, cluster=False, chunk=7, generation=3))
    assert len(calls) > 1
    for call in calls:
        markers = call.markers
        assert {i: call.owner(i) for i in markers} == markers  # what the reply handler maps back
        arg = call.argv[3]
        assert isinstance(arg, bytes)
        data = orjson.loads(arg)
        a, k = 0, 0
        for _, sub in call.subs:
            nm, nk, nd, nf = data[a : a + 4]
            a += 4
            assert nm == len(sub.events) and nf == len(sub.future)
            assert data[a : a + nm] == [ev.event_id for ev in sub.events]
            a += nm
            assert call.keys[k : k + 3] == [marker_key(sub.view.name, sub.entity, g) for g in (2, 3, 4)]
            hashes = call.keys[k + 3 : k + 3 + nk]
            want: dict[tuple[str, str], tuple[float, ...]] = {}
            for tk, tile in sub.tiles.items():
                for m, p in tile.items():
                    prefix = partial_fields(tk.size, tk.start, m, p)
                    key = speed_key(sub.view.name, sub.entity, tk.start)
                    stats = tuple(float(prefix[f]) for f in sorted(prefix))  # c, n, s, x
                    want[(key, next(iter(prefix))[:-2])] = stats
            got: dict[tuple[str, str], tuple[float, ...]] = {}
            end = a + nd  # nd counts array slots: 3 per count-style delta, 6 per other
            while a < end:
                i = data[a]
                if i < 0:  # count-style: sum = count, min = max = 1
                    n = data[a + 2]
                    got[(hashes[-1 - i], data[a + 1])] = (n, 1.0, float(n), 1.0)
                    a += 3
                else:
                    n, s, lo, hi = data[a + 2 : a + 6]
                    got[(hashes[i], data[a + 1])] = (n, float(lo), float(s), float(hi))
                    a += 6
            assert a == end and got == want
            fields = {
                (hashes[data[j]], data[j + 1]): parse_future(data[j + 1], data[j + 2]) for j in range(a, a + 3 * nf, 3)
            }
            a += 3 * nf
            assert fields == {
                (speed_key(sub.view.name, sub.entity, ev.event_time), future_field(ev.event_time, ev.event_id)): (
                    ev.event_time,
                    {
                        f.measure.name: (ev.price or 0.0) * ev.quantity if f.measure.value == "revenue" else 1.0
                        for f in sub.view.windowed
                        if f.measure.event_type == ev.event_type
                    },
                )
                for ev in sub.future
            }
            k += 3 + nk
        assert a == len(data) and k == len(call.keys)


def test_observe_many_matches_observe() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    from jobs.stream.metrics import observe_many

    reg = CollectorRegistry()
    one = Histogram("one", "x", registry=reg, buckets=(0.1, 0.5, 1.0))
    many = Histogram("many", "x", registry=reg, buckets=(0.1, 0.5, 1.0))
    for v, n in [(0.05, 3), (0.1, 2), (0.7, 1), (5.0, 4)]:
        for _ in range(n):
            one.observe(v)
        observe_many(many, v, n)
    samples = {
        (s.name.replace("one", "many"), tuple(s.labels.items())): s.value
        for m in reg.collect()
        if m.name == "one"
        for s in m.samples
        if not s.name.endswith("_created")
    }
    other = {
        (s.name, tuple(s.labels.items())): s.value
        for m in reg.collect()
        if m.name == "many"
        for s in m.samples
        if not s.name.endswith("_created")
    }
    assert samples == other


def test_packed_call_is_what_redis_py_sends() -> None:
    events = [Event(f"e{i}", "purchase", f"u{i % 3}", "p1", NOW - i * MINUTE, 2.5 * i, 1, None) for i in range(9)]
    events.append(Event("é-1", "click", "ü", "p1", NOW, None, 1, None))  # non-ASCII: bytes, not characters
    groups = group_events([USER_ACTIVITY, PRODUCT_ENGAGEMENT], events)
    conn = Connection()
    for call in plan_calls(list(groups.values()), 100, 200, cluster=False, chunk=4, generation=1):
        want = b"".join(conn.pack_command("EVALSHA", APPLY_TILES_SHA, len(call.keys), *call.keys, *call.argv))
        assert call.packed() == want


EDGE_CASES = [
    b'{"event_id":"a","event_id":"b","event_type":"click","user_id":"u","product_id":"p","event_time":1799978493303}',
    b'{"event_id":"a","event_type":"click","user_id":"u","product_id":"p","event_time":1799978493303,"price":1e400}',
    b'{"event_id":"a","event_type":"click","user_id":"u","product_id":"p","event_time":1799978493303,"price":-0.0}',
    b'{"event_id":"a\\ud800","event_type":"click","user_id":"u","product_id":"p","event_time":1799978493303}',
    b'{"event_id":"\\u0061","event_type":"click","user_id":"u","product_id":"p","event_time":1799978493303}',
    b'{"event_id":"a","event_type":"click","user_id":"u","product_id":"p","event_time":18446744073709551616}',
    b'{"event_id":"a","event_type":"click","user_id":"u","product_id":"p","event_time":1799978493303.5}',
    b'{"event_id":"a","event_type":"click","user_id":"u","product_id":"p","event_time":1799978493303,"quantity":1.0}',
    b'{"event_id":"a","event_type":"click","user_id":"u","product_id":"p","event_time":1799978493303,"quantity":true}',
    b'{"event_id":"a","event_type":"click","user_id":"u","product_id":"p","event_time":1799978493303,"quantity":0}',
    b'{"event_id":"a","event_type":"click","user_id":"u","product_id":"p","event_time":1799978493303} x',
    b'\xef\xbb\xbf{"event_id":"a","event_type":"click","user_id":"u","product_id":"p","event_time":1799978493303}',
    b'{"event_id":"a","event_type":"purchase","user_id":"u","product_id":"p","event_time":1799978493303,"price":5}',
    b'{"event_id":"a","event_type":"purchase","user_id":"u","product_id":"p","event_time":1799978493303,"price":1e15}',
    b'{"event_id":"a","event_type":"purchase","user_id":"u","product_id":"p","event_time":1799978493303,"price":1000000000000001}',
    b'{"event_id":"a","event_type":"purchase","user_id":"u","product_id":"p","event_time":1799978493303,"price":0.1000000000000000055511151231257827}',
    b'{"event_id":"a","event_type":"purchase","user_id":"u","product_id":"p","event_time":1799978493303}',
    b' {"event_id":"a","event_type":"page_view","user_id":"u","event_time":"2027-01-15T02:01:33.510+02:00"}\n',
    b'{"event_id":"a","event_type":"page_view","user_id":"u","event_time":"2027-01-15T02:01:33.510"}',
    b'{"event_id":"a","event_type":"page_view","user_id":"u","event_time":"2027-01-15 02:01:33.5104567Z"}',
    b'{"event_id":"a","event_type":"page_view","user_id":"u","event_time":-9223372036854775809}',
    b'{"event_id":"a","event_type":"page_view","user_id":"u","product_id":null,"event_time":1799978493303}',
    b'{"event_id":"a","event_type":"click","user_id":"u","product_id":null,"event_time":1799978493303}',
    b'{"event_id":"a","event_type":"page_view","user_id":"u","event_time":1799978493303,"session_id":"free text"}',
    b'{"event_id":"a","event_type":"page_view","user_id":"u","event_time":1799978493303,"email":"x@y.z"}',
    b'{"event_id":"a","event_type":"page_view","user_id":"u","event_time":1799978493303,"extra":{"deep":[1,2e400]}}',
    b'{"event_id":"' + b"a" * 129 + b'","event_type":"page_view","user_id":"u","event_time":1799978493303}',
    b'{"event_id":"a","event_type":"page_view","user_id":"u","event_time":1799978493303,"pad":"'
    + b"x" * 70_000
    + b'"}',
    b'{"event_id":"a","event_type":"Page_view","user_id":"u","event_time":1799978493303}',
    b'{"event_id":"a","event_type":"page_view","user_id":"u","event_time":1799978493303}\x00',
    b'{"event_id":"a","event_type":"page_view","user_id":"u","event_time":1799978493303,"session_id":"s\xc3\xa9"}',
    b'{"event_id":"a","event_type":"page_view","user_id":"\xff","event_time":1799978493303}',
    b"[1, 2]",
    b"null",
    b"",
]


def test_typed_decoder_agrees_with_the_core_on_every_message() -> None:
    """The stream's msgspec path (``parse_fast``, and ``prepare`` which inlines it) gives every message the
    verdict and the event of the core's ``parse`` with orjson: generated traffic with every injection,
    hand-made edge cases, and random mutations of valid messages (bytes and values)."""
    import random

    from fstore.core.events import parse
    from jobs.stream.pipeline import parse_fast
    from tests.support.messages import injected_messages

    now = 1_800_000_000_000_000
    generated = injected_messages(now, 6, 6_000, 5, malformed_rate=0.05)
    rng = random.Random(3)
    alphabet = b'{}[]":,.-+eE0123456789 \\nultrfasxu'
    swaps: list[object] = [
        None,
        True,
        1.5,
        -1,
        0,
        2**64 - 1,
        "x",
        "",
        "a b",
        [],
        {},
        1799978493303,
        "2027-01-15T02:01:33Z",
    ]
    mutated = []
    for raw in generated[:3_000]:
        b = bytearray(raw)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(b))
            op = rng.random()
            if op < 0.4:
                b[i] = rng.choice(alphabet)
            elif op < 0.7:
                del b[i]
            else:
                b.insert(i, rng.choice(alphabet))
        mutated.append(bytes(b))
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            obj[rng.choice([*obj, "price", "quantity", "session_id", "product_id"])] = rng.choice(swaps)
            mutated.append(orjson.dumps(obj))
    values = generated + EDGE_CASES + mutated
    want = [parse(v, now, orjson.loads) for v in values]
    assert [parse_fast(v, now) for v in values] == want
    accepted = [w for w in want if isinstance(w, Event)]
    assert 5_000 < len(accepted) < len(values) - 1_000  # both verdicts are well represented
    p = prepare(values, now, 0, None, 10**15)
    assert p.valid == accepted
    assert p.invalid == [(i, w.reason) for i, w in enumerate(want) if not isinstance(w, Event)]
