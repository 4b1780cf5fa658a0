"""Pure parts of the stream worker: batch classification and the Lua call packing (no services)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from redis.asyncio.connection import Connection

from fstore.core.event_check import EventCheck
from fstore.core.events import Rejection, Row, parse_row, payload_hash
from fstore.core.plan import Plan
from fstore.core.tile_state import Acc
from fstore.core.timeutil import HOUR, MINUTE, SECOND
from fstore.core.view_tiles import TileKey, ViewTiler
from fstore.core.view_tiles_frame import member
from fstore.redis.layout import future_field, marker_key, parse_future, speed_key
from jobs.stream.pipeline import prepare, reader_for
from jobs.stream.speed_lua import APPLY_TILES_SHA, group_events, marker_generation, plan_calls
from jobs.stream.tile_steps import NUMBER_M2, TEXT, ViewSteps, view_steps
from tests.support.repos import compiled
from tests.support.rides_traffic import rides

pytestmark = pytest.mark.unit

NOW = 1_763_700_000_000_000
KINDS = ["page_view", "impression", "click", "add_to_cart", "purchase"]


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


def row(
    i: int, etype: str, user: str, product: str | None, t: int, price: float | None = None, quantity: int = 1
) -> Row:
    """A normalised event of the example schema."""
    return {
        "event_id": f"e{i}",
        "event_type": etype,
        "user_id": user,
        "product_id": product,
        "event_time": t,
        "price": price,
        "quantity": quantity,
        "session_id": None,
    }


def steps(plan: Plan) -> list[ViewSteps]:
    return [view_steps(v, plan.schema) for v in plan.views]


def reference(plan: Plan, rows: list[Row], view_name: str) -> dict[TileKey, dict[str, Acc]]:
    """The reference tiler's tiles, members as text (as Redis stores them)."""
    tiles = ViewTiler(plan.view(view_name), plan.schema.timestamp_field).build(rows)
    for tile in tiles.values():
        for acc in tile.values():
            if acc.distinct is not None:
                acc.distinct = {member(x) for x in acc.distinct}
    return tiles


def rides_rows(plan: Plan, n: int, seed: int) -> list[Row]:
    """Generated rides normalised by the plan's check (times on whole milliseconds)."""
    check = EventCheck(plan.schema, {e.join_key for e in plan.entities}).check
    out = []
    for r in rides(n, NOW - 3 * 86_400 * SECOND, 3 * 86_400 * SECOND, seed):
        r["ts"] = r["ts"] // 1000
        res = check({k: v for k, v in r.items() if v is not None}, NOW)
        assert not isinstance(res, Rejection), (r, res)
        out.append(res)
    return out


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
    assert [e["event_id"] for e in p.valid] == ["e1", "e1", "e3", "e4"]
    assert p.ingested_at == [NOW + 6, NOW + 7, NOW + 8, NOW + 9] and p.last_at == NOW + 9
    assert p.hashes == [payload_hash(values[i]) for i in (0, 3, 4, 5)]  # each valid copy's own bytes
    assert [e["event_id"] for e in p.fresh] == ["e1", "e4"] and p.fresh[0]["quantity"] == 1
    assert (p.batch_duplicates, p.beyond_horizon, p.late) == (1, 1, 2)
    # every first copy claims its id, the one too old for the tiles too (its later copies must not count)
    assert list(p.claims) == [
        ("e1", p.hashes[0], p.fresh[0]),
        ("e3", p.hashes[2], None),
        ("e4", p.hashes[3], p.fresh[1]),
    ]


def test_a_copy_after_a_first_copy_too_old_for_the_tiles_is_a_duplicate() -> None:
    p = prepare([msg(5, t=NOW - 30 * 24 * HOUR), msg(5)], NOW, 0, None, 8 * 24 * HOUR)
    assert p.fresh == [] and (p.batch_duplicates, p.beyond_horizon) == (1, 1)
    assert [(eid, row) for eid, _, row in p.claims] == [("e5", None)]


def test_prepare_dedupes_by_the_plans_id_field() -> None:
    plan = compiled("rides")
    one = {"uid": "r1", "kind": "requested", "zone_id": "z1", "ts": (NOW - HOUR) // 1000}
    values = [json.dumps(one).encode(), json.dumps({**one, "zone_id": "z2"}).encode(), b"[]"]
    p = prepare(values, NOW, 0, None, 8 * 24 * HOUR, reader_for(plan))
    assert [e["zone_id"] for e in p.valid] == ["z1", "z2"] and [e["zone_id"] for e in p.fresh] == ["z1"]
    assert p.batch_duplicates == 1 and p.invalid == [(2, "malformed_json")]
    assert p.valid[0]["surge"] == 1.0 and p.valid[0]["ts"] == (NOW - HOUR) // 1000 * 1000  # default; µs


def test_plan_calls_packs_markers_and_deltas(plan: Plan) -> None:
    events = [row(i, "purchase", f"u{i % 2}", "p1", NOW - i * MINUTE, 2.5 * i) for i in range(4)]
    groups = group_events(steps(plan), events)
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


def test_subgroup_rebuild_drops_duplicates(plan: Plan) -> None:
    events = [row(i, "click", "u1", "p1", NOW - i * MINUTE) for i in range(3)]
    sub = group_events(steps(plan), events)[("user_activity", "u1")]
    sub.rebuild({"e1"})
    assert sub.states == reference(plan, [events[0], events[2]], "user_activity")


def test_group_events_matches_the_reference_tiler(plan: Plan) -> None:
    events = [
        row(i, KINDS[i % 5], f"u{i % 4}", None if i % 10 == 0 else f"p{i % 3}", NOW - i * 7 * MINUTE,
            1.5 * i if i % 5 == 4 else None, 1 + i % 2)
        for i in range(200)
    ]  # fmt: skip
    rides_plan = compiled("rides")
    for p, rows in ((plan, events), (rides_plan, rides_rows(rides_plan, 600, 5))):
        groups = group_events(steps(p), rows)
        for view in p.views:
            got = {k: t for (v, _), sub in groups.items() if v == view.name for k, t in sub.states.items()}
            assert got == reference(p, rows, view.name), view.name


def test_dispatch_index_and_cell_kinds_follow_the_plan() -> None:
    rides_plan = compiled("rides")
    driver = view_steps(rides_plan.view("driver_performance"), rides_plan.schema)
    zone = view_steps(rides_plan.view("zone_demand"), rides_plan.schema)
    assert driver.field == "kind" and set(driver.by_value) == {"completed", "cancelled"}
    assert {s.name for s in driver.by_value["completed"]} == {"trip", "fare", "airport_trip", "rider_served", "stars"}
    assert {s.name for s in driver.always} == {"stars"}  # no filter: every event (null when absent)
    assert {s.name for s in zone.always} == {"driver_id", "tip"}  # no filter: every event
    airport = [s for s in driver.by_value["completed"] if s.name == "airport_trip"]
    assert airport and all(s.where is not None and s.value is None for s in airport)  # `and airport` stays
    assert driver.kinds[(3600 * SECOND, "fare")] == (NUMBER_M2, False)
    assert driver.kinds[(6 * 3600 * SECOND, "rider_served")] == (TEXT, True)
    assert driver.counted == {}  # `stars` runs for every event: no value counts plainly
    example = compiled("ecommerce")
    user = view_steps(example.view("user_activity"), example.schema)
    assert user.field == "event_type" and set(user.counted) == {"page_view", "click", "add_to_cart"}


def ecommerce_rows(n: int) -> list[Row]:
    """Example events over three days: ``u0`` also buys (cells with values), the other users only count."""
    return [
        row(i, "purchase" if i % 24 == 0 else KINDS[i % 4], f"u{i % 6}", None if i % 4 == 0 else f"p{i % 5}",
            NOW - i * 11 * MINUTE, 1.25 * i if i % 24 == 0 else None)
        for i in range(n)
    ]  # fmt: skip


@pytest.mark.parametrize("case", ["rides", "ecommerce"])
def test_script_payload_keys_fields_and_marker_owners(case: str) -> None:
    """The JSON argument, decoded as the Lua script does, holds each cell's states, members and future fields
    (rides: numbers, members, future fields; the example: count-only subgroups over several days)."""
    p = compiled(case)
    if case == "rides":
        events, ts, idf = rides_rows(p, 300, 9), "ts", "uid"
        now = sorted(e[ts] for e in events)[-40]  # the last events are stamped at or after the processing clock
    else:
        events, ts, idf = ecommerce_rows(400), "event_time", "event_id"
        now = NOW - 30 * MINUTE  # the first three (a purchase, a click, an add_to_cart) are future fields
    groups = group_events(steps(p), events, now)
    assert {ev[idf] for sub in groups.values() for ev in sub.future} <= {e[idf] for e in events if e[ts] >= now}
    if case == "ecommerce":
        assert {ev[idf] for sub in groups.values() for ev in sub.future} == {"e0", "e1", "e2"}
    calls = list(plan_calls(list(groups.values()), 100, 200, cluster=False, chunk=7, generation=3))
    assert len(calls) > 1
    for (_, entity), sub in groups.items():  # the tiles hold only the events before the clock
        past = [ev for ev in sub.events if ev[ts] < now]
        want = {k: t for k, t in reference(p, past, sub.view.name).items() if k.entity == entity}
        assert sub.states == want
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
            assert data[a : a + nm] == [ev[idf] for ev in sub.events]
            a += nm
            assert call.keys[k : k + 3] == [marker_key(sub.view.name, sub.entity, g) for g in (2, 3, 4)]
            hashes = call.keys[k + 3 : k + 3 + nk]
            want_cells: dict[tuple[str, str], tuple[Any, ...]] = {}
            past = [ev for ev in sub.events if ev[ts] < now]
            for tk, tile in reference(p, past, sub.view.name).items():
                if tk.entity != sub.entity:
                    continue
                for m, acc in tile.items():
                    kind = sub.steps.kinds[(tk.size, m)][0]
                    prefix = f"{tk.size // SECOND}:{tk.start // SECOND}:{m}"
                    cells: tuple[Any, ...] = (
                        (acc.count,) if kind == TEXT else (acc.count, acc.total, acc.minimum, acc.maximum)
                    )
                    want_cells[(speed_key(sub.view.name, sub.entity, tk.start), prefix)] = (
                        *cells, *((acc.m2,) if kind == NUMBER_M2 else ()), sorted(acc.distinct or ())
                    )  # fmt: skip
            got: dict[tuple[str, str], tuple[Any, ...]] = {}
            end = a + nd  # nd counts array slots
            while a < end:
                code, prefix, n = data[a : a + 3]
                kind, distinct, i = code % 4, code % 8 >= 4, code // 8
                if kind == 0:  # count-style: sum = count, min = max = 1
                    nums: tuple[Any, ...] = (n, float(n), 1.0, 1.0)
                    a += 3
                elif kind == TEXT:
                    nums = (n,)
                    a += 3
                else:
                    nums = (n, *(float(x) for x in data[a + 3 : a + 6 + (kind == NUMBER_M2)]))
                    a += 6 + (kind == NUMBER_M2)
                members: list[str] = []
                if distinct:
                    members = data[a + 1 : a + 1 + data[a]]
                    a += 1 + data[a]
                got[(hashes[i], prefix)] = (*nums, members)
            assert a == end
            assert got.keys() == want_cells.keys()
            for key, w in want_cells.items():  # sums in one batch: the order of the reference's, exactly
                assert got[key] == w, (key, got[key], w)
            fields = {
                (hashes[data[j]], data[j + 1]): parse_future(data[j + 1], data[j + 2]) for j in range(a, a + 3 * nf, 3)
            }
            a += 3 * nf
            assert fields == {
                (speed_key(sub.view.name, sub.entity, ev[ts]), future_field(ev[ts], ev[idf])): (
                    ev[ts],
                    sub.steps.measured(ev),
                )
                for ev in sub.future
            }
            k += 3 + nk
        assert a == len(data) and k == len(call.keys)


def test_count_only_subgroups_pack_as_their_merged_cells_do(plan: Plan) -> None:
    """A subgroup whose cells are all bucket counts is packed from the buckets directly; the request must be
    the bytes packed from its merged cells (:attr:`Subgroup.cells`), subgroup by subgroup."""
    events = ecommerce_rows(400)
    fast = list(group_events(steps(plan), events).values())
    merged = list(group_events(steps(plan), events).values())
    for sub in merged:
        assert sub.cells is not None  # the bucket counts folded into the cells: packed cell by cell
    assert sum(not sub._cells for sub in fast) > len(fast) // 2  # most take the count-only path
    assert sum(len({c[1] // (24 * HOUR) for c in sub.cells}) > 1 for sub in merged) > 3  # several days' hashes
    for a, b in zip(fast, merged, strict=True):
        ((one,), (two,)) = (plan_calls([s], 100, 200, cluster=False, chunk=7, generation=3) for s in (a, b))
        assert one.packed() == two.packed(), a.entity


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


def test_packed_call_is_what_redis_py_sends(plan: Plan) -> None:
    events = [row(i, "purchase", f"u{i % 3}", "p1", NOW - i * MINUTE, 2.5 * i) for i in range(9)]
    events.append({**row(0, "click", "ü", "p1", NOW), "event_id": "é-1"})  # non-ASCII: bytes, not characters
    groups = group_events(steps(plan), events)
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
    # a fraction of an hour or a minute, or a fourth group: not ISO-8601 here (fromisoformat read them as seconds)
    b'{"event_id":"a","event_type":"page_view","user_id":"u","event_time":"2027-01-15T02.5Z"}',
    b'{"event_id":"a","event_type":"page_view","user_id":"u","event_time":"2027-01-15T02,5Z"}',
    b'{"event_id":"a","event_type":"page_view","user_id":"u","event_time":"2027-01-15T02:01.5Z"}',
    b'{"event_id":"a","event_type":"page_view","user_id":"u","event_time":"2027-01-15T0201.5Z"}',
    b'{"event_id":"a","event_type":"page_view","user_id":"u","event_time":"2027-W02-5T02:01,5Z"}',
    b'{"event_id":"a","event_type":"page_view","user_id":"u","event_time":"2027-01-15T02:01:33:00Z"}',
    b'{"event_id":"a","event_type":"page_view","user_id":"u","event_time":"2027-01-15T02:01:33.5Z"}',
    b'{"event_id":"a","event_type":"page_view","user_id":"u","event_time":"2027-01-15T0201Z"}',
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


def test_fast_path_agrees_with_the_generic_check_on_every_message(plan: Plan) -> None:
    """The stream's msgspec path (``EventReader.parse``, and ``prepare`` which inlines it) gives every message
    the verdict and the row of the generic check (``parse_row`` with orjson and ``EventCheck``): generated
    traffic with every injection, hand-made edge cases, and random mutations of valid messages (bytes and
    values)."""
    import random

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
    reader = reader_for(plan)
    want = [parse_row(v, now, reader.check, orjson.loads) for v in values]
    assert [reader.parse(v, now) for v in values] == want
    accepted = [w for w in want if not isinstance(w, Rejection)]
    assert 5_000 < len(accepted) < len(values) - 1_000  # both verdicts are well represented
    p = prepare(values, now, 0, None, 10**15)
    assert p.valid == accepted
    assert p.invalid == [(i, w.reason) for i, w in enumerate(want) if isinstance(w, Rejection)]


def test_fast_path_agrees_on_mutated_time_strings(plan: Plan) -> None:
    """ISO-8601 times with a character changed, dropped or added: the fast path gives the generic check's
    verdict and time. ``datetime.fromisoformat`` alone took ``…T10:00:080Z`` as 10:00:08, ``…T10.5Z`` as
    10:00:00.5 and ``…T10:00:00:00Z`` or ``…59.999999T9Z`` as valid (found by the contract audit)."""
    import random

    rng = random.Random(5)
    alphabet = "0123456789:.,-+TZWtz "
    templates = [
        "2026-11-28T10:00:00Z",
        "2026-11-28T10:00:00.123Z",
        "2026-W48-6T10:00:00Z",
        "2026-11-28T23:59:59.999999Z",
    ]
    values = []
    for _ in range(20_000):
        s = list(rng.choice(templates))
        for _ in range(rng.randint(1, 3)):
            i, op = rng.randrange(len(s) + 1), rng.random()
            if op < 0.4 and i < len(s):
                s[i] = rng.choice(alphabet)
            elif op < 0.7 and i < len(s):
                del s[i]
            else:
                s.insert(i, rng.choice(alphabet))
        event = {"event_id": "a", "event_type": "click", "user_id": "u", "product_id": "p", "event_time": "".join(s)}
        values.append(orjson.dumps(event))
    reader, now = reader_for(plan), 1_900_000_000_000_000  # after every time above
    want = [parse_row(v, now, reader.check, orjson.loads) for v in values]
    got = [reader.parse(v, now) for v in values]
    assert [(v, g) for v, g, w in zip(values, got, want, strict=True) if g != w][:5] == []
    assert 1_000 < sum(not isinstance(w, Rejection) for w in want) < len(values) - 1_000


def test_fast_path_agrees_on_a_second_schema() -> None:
    """The rides schema (other ids, a boolean, an integer with bounds, a default, conditions): valid rides and
    every field swapped for an odd value get the generic check's verdict and row."""
    import random

    rides_plan = compiled("rides")
    reader = reader_for(rides_plan)
    rng = random.Random(11)
    swaps: list[object] = [None, True, False, 1, 0, -2, 6, 2.5, 1e16, "x", "a b", "requested", [], {}, 1799978493303]
    values = []
    for r in rides(800, NOW - 86_400 * SECOND, 86_400 * SECOND, 4):
        r["ts"] = r["ts"] // 1000 if rng.random() < 0.5 else "2025-11-21T04:40:00.123Z"
        obj = {k: v for k, v in r.items() if v is not None}
        values.append(orjson.dumps(obj))
        obj[rng.choice([*obj, "surge", "stars", "tip", "airport", "rider", "email"])] = rng.choice(swaps)
        values.append(orjson.dumps(obj))
    want = [parse_row(v, NOW, reader.check, orjson.loads) for v in values]
    assert [reader.parse(v, NOW) for v in values] == want
    assert 900 < sum(not isinstance(w, Rejection) for w in want) < len(values) - 200
