"""The point-in-time engine (fstore.core.pit) on the example plan against the brute force of docs/design.md §3.

The brute force is tests/support/plan_bruteforce.py; the rides plan has its own test (test_pit_plans.py).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from itertools import pairwise

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from fstore.core import pit
from fstore.core.aggregates import isclose
from fstore.core.timeutil import DAY, HOUR, MINUTE, from_micros
from tests.support.pit import BASE, Row, assert_frame_matches, expected, query_times, random_events
from tests.support.pit import events_table as plan_events_table
from tests.support.repos import compiled

pytestmark = pytest.mark.unit

PLAN = compiled("ecommerce")


def events_table(rows: list[Row]) -> pa.Table:
    return plan_events_table(rows, PLAN.schema)


@pytest.mark.parametrize(("seed", "n_users", "n_products"), [(1, 25, 12), (2, 3, 2), (3, 60, 40)])
def test_engine_equals_brute_force(seed: int, n_users: int, n_products: int) -> None:
    """Sparse and dense windows (3 users: hundreds of events per 7-day window, deep sparse tables)."""
    rng = np.random.default_rng(seed)
    span = 10 * DAY
    events = random_events(rng, 2500, users=n_users, products=n_products, span=span)
    n = 1500
    times = query_times(rng, PLAN, events, n, span)
    users = [f"u{rng.integers(n_users + 5)}" for _ in range(n)]  # the last 5 never appear in events
    products: list[str | None] = [f"p{rng.integers(n_products + 3)}" if rng.random() > 0.02 else None for _ in range(n)]
    users[10:20] = users[0:10]  # duplicate entity rows (same key and time)
    times[10:20] = times[0:10]
    entity_df = pd.DataFrame(
        {
            "user_id": users,
            "product_id": products,
            "event_timestamp": pd.to_datetime(times, unit="us", utc=True),
            "label": np.arange(n) % 2,
        }
    )
    got = pit.point_in_time(
        PLAN, entity_df, ["user_activity", "product_engagement"], events_table(events), full_feature_names=True
    )
    assert len(got) == n and list(got.columns[:4]) == list(entity_df.columns)
    pd.testing.assert_frame_equal(got[entity_df.columns], entity_df)
    assert_frame_matches(
        got, PLAN, "user_activity", expected(PLAN, "user_activity", events, users, times), "user_activity__"
    )
    assert_frame_matches(
        got,
        PLAN,
        "product_engagement",
        expected(PLAN, "product_engagement", events, products, times),
        "product_engagement__",
    )
    assert got["user_activity__clicks_1h"].dtype == np.int64


def test_arrow_input_naive_times_and_single_features() -> None:
    rng = np.random.default_rng(9)
    events = random_events(rng, 800, users=6, products=4, span=3 * DAY)
    times = query_times(rng, PLAN, events, 400, 3 * DAY)
    users = [f"u{rng.integers(8)}" for _ in times]
    naive = pa.array(times, pa.int64()).cast(pa.timestamp("us"))  # naive → UTC
    table = pa.table({"user_id": users, "event_timestamp": naive})
    refs = [
        "user_activity:revenue_7d",
        "user_activity:clicks_1h",
        "user_activity:max_order_value_7d",
        "user_activity:avg_order_value_7d",
    ]
    got = pit.point_in_time(PLAN, table, refs, events_table(events))
    assert isinstance(got, pa.Table)
    assert got.column_names == [
        "user_id",
        "event_timestamp",
        "revenue_7d",
        "clicks_1h",
        "max_order_value_7d",
        "avg_order_value_7d",
    ]
    want = expected(PLAN, "user_activity", events, users, times)
    for name in refs:
        feat = name.split(":")[1]
        for g, w in zip(got.column(feat).to_pylist(), (r[feat] for r in want), strict=True):
            assert isclose(g, w), (feat, g, w)


def event(eid: str, etype: str, user: str, product: str | None, t: int, price: float | None = None) -> Row:
    return {
        "event_id": eid,
        "event_type": etype,
        "user_id": user,
        "product_id": product,
        "event_time": t,
        "price": price,
        "quantity": 1,
    }


def test_nanosecond_times_keep_the_exclusive_head_and_the_tail() -> None:
    t_event = BASE + HOUR  # a click of u1 at exactly 01:00
    events = [event("a", "click", "u1", "p1", t_event)]
    ns = np.array(
        [
            t_event * 1000,
            t_event * 1000 + 1,
            (t_event + HOUR) * 1000,
            (t_event + HOUR + 5 * MINUTE) * 1000 - 1,
            (t_event + HOUR + 5 * MINUTE) * 1000,
        ],
        dtype="datetime64[ns]",
    )
    df = pd.DataFrame({"user_id": ["u1"] * 5, "event_timestamp": ns})
    got = pit.point_in_time(PLAN, df, ["user_activity:clicks_1h"], events_table(events))
    # at t: excluded; 1 ns later: counted; t+1h: tail = t, counted; just before t+1h05: tail still t; at it: gone
    assert got["clicks_1h"].tolist() == [0, 1, 1, 1, 0]


def test_empty_inputs_and_no_events() -> None:
    df = pd.DataFrame(
        {"user_id": pd.Series([], dtype=object), "event_timestamp": pd.Series([], dtype="datetime64[ns]")}
    )
    assert len(pit.point_in_time(PLAN, df, ["user_activity"], events_table([]))) == 0
    one = pd.DataFrame({"user_id": ["u1", "u1"], "event_timestamp": [datetime(2026, 1, 1, tzinfo=UTC)] * 2})
    got = pit.point_in_time(PLAN, one, ["user_activity"], events_table([]))
    assert got["clicks_1h"].tolist() == [0, 0] and got["revenue_7d"].tolist() == [0.0, 0.0]
    assert got["avg_order_value_7d"].isna().all() and got["max_order_value_7d"].isna().all()


@pytest.mark.parametrize(
    ("frame", "refs", "message"),
    [
        (pd.DataFrame({"event_timestamp": [from_micros(BASE)]}), ["user_activity"], "no column 'user_id'"),
        (pd.DataFrame({"user_id": ["u"]}), ["user_activity"], "no column 'event_timestamp'"),
        (
            pd.DataFrame({"user_id": ["u"], "event_timestamp": [from_micros(BASE)]}),
            ["nope"],
            "unknown feature view 'nope'",
        ),
        (
            pd.DataFrame({"user_id": ["u"], "event_timestamp": [from_micros(BASE)]}),
            ["user_activity:nope"],
            "has no feature 'nope'",
        ),
        (
            pd.DataFrame({"user_id": ["u"], "product_id": ["p"], "event_timestamp": [from_micros(BASE)]}),
            ["user_activity:clicks_1h", "product_engagement:clicks_1h"],
            "full_feature_names=True",
        ),
        (pd.DataFrame({"user_id": ["u"], "event_timestamp": [None]}), ["user_activity"], "null"),
        (
            pd.DataFrame({"user_id": ["u"], "event_timestamp": [from_micros(BASE)], "clicks_1h": [1]}),
            ["user_activity"],
            "already has column",
        ),
        (pd.DataFrame({"user_id": ["u"], "event_timestamp": [from_micros(BASE)]}), [], "no features requested"),
    ],
)
def test_invalid_requests_name_the_problem(frame: pd.DataFrame, refs: list[str], message: str) -> None:
    with pytest.raises(pit.PointInTimeError, match=message):
        pit.point_in_time(PLAN, frame, refs, events_table([]))


def test_event_range_and_dedupe() -> None:
    df = pd.DataFrame({"user_id": ["u"], "event_timestamp": [from_micros(BASE + DAY)]})
    assert pit.event_range(PLAN, df, ["user_activity"]) == (BASE + DAY - 7 * DAY - HOUR, BASE + DAY)
    assert pit.event_range(PLAN, df, ["user_activity:clicks_1h"]) == (BASE + DAY - HOUR - 5 * MINUTE, BASE + DAY)
    raw = pa.table(
        {
            "event_id": ["a", "b", "a", "a"],
            "ingested_at": [5, 1, 3, 3],
            "payload_hash": ["x", "y", "z", "w"],
            "quantity": [1, 2, 3, 4],
        }
    )
    got = pit.dedupe(raw, "event_id").sort_by("event_id").to_pylist()
    assert [(r["event_id"], r["quantity"]) for r in got] == [("a", 4), ("b", 2)]


def dictionary_chunks(table: pa.Table, pieces: int) -> pa.Table:
    """``table`` as ``pieces`` record batches with string columns dictionary-encoded per batch (as the
    Delta reader returns them: each batch has its own dictionary)."""
    bounds = np.linspace(0, table.num_rows, pieces + 1).astype(int)
    batches = []
    for lo, hi in pairwise(bounds):
        part = table.slice(lo, hi - lo)
        cols = {
            n: (
                part.column(n).combine_chunks().dictionary_encode()
                if n in ("event_type", "user_id", "product_id")
                else part.column(n).combine_chunks()
            )
            for n in part.column_names
        }
        batches.append(pa.record_batch(cols))
    return pa.Table.from_batches(batches)


@pytest.mark.parametrize("in_time_order", [True, False])
def test_dictionary_events_threads_and_time_ordered_input_equal_brute_force(
    monkeypatch: pytest.MonkeyPatch, in_time_order: bool
) -> None:
    """Dictionary-encoded, multi-chunk events (the Delta reader's shape), sorted by time or not (the radix
    and the comparison sort of the kernels), with both views computed in threads."""
    monkeypatch.setattr(pit, "_PARALLEL_ROWS", 0)
    rng = np.random.default_rng(21)
    span = 6 * DAY
    events = random_events(rng, 2000, users=30, products=15, span=span)
    if in_time_order:
        events.sort(key=lambda e: e["event_time"])
    n = 800
    times = query_times(rng, PLAN, events, n, span)
    users = [f"u{rng.integers(33)}" for _ in range(n)]
    products = [f"p{rng.integers(17)}" for _ in range(n)]
    entity_df = pd.DataFrame(
        {"user_id": users, "product_id": products, "event_timestamp": pd.to_datetime(times, unit="us", utc=True)}
    )
    table = dictionary_chunks(events_table(events), pieces=7)
    assert pa.types.is_dictionary(table.schema.field("user_id").type) and table.column("user_id").num_chunks == 7
    got = pit.point_in_time(PLAN, entity_df, ["user_activity", "product_engagement"], table, full_feature_names=True)
    assert_frame_matches(
        got, PLAN, "user_activity", expected(PLAN, "user_activity", events, users, times), "user_activity__"
    )
    assert_frame_matches(
        got,
        PLAN,
        "product_engagement",
        expected(PLAN, "product_engagement", events, products, times),
        "product_engagement__",
    )
    plain = pit.point_in_time(
        PLAN, entity_df, ["user_activity", "product_engagement"], events_table(events), full_feature_names=True
    )
    pd.testing.assert_frame_equal(got, plain)


@pytest.mark.parametrize("n_codes", [50, 70_000, 2**25])  # radix passes: 16 bits; 16 + 8; 16 + 16
def test_kernel_order_is_the_stable_key_order(n_codes: int) -> None:
    from fstore.core.pit_kernels import _order

    rng = np.random.default_rng(n_codes)
    codes = rng.integers(0, n_codes, 20_000).astype(np.int64)
    times = np.sort(rng.integers(0, 1000, 20_000))  # many equal keys: stability matters
    keys = codes * 1001 + times
    want = np.argsort(keys, kind="stable")
    np.testing.assert_array_equal(_order(codes, times, keys, n_codes), want)
    np.testing.assert_array_equal(_order(codes, times, keys, n_codes, times_sorted=True), want)
    shuffled = rng.permutation(20_000)
    np.testing.assert_array_equal(
        _order(codes[shuffled], times[shuffled], keys[shuffled], n_codes), np.argsort(keys[shuffled], kind="stable")
    )
    np.testing.assert_array_equal(
        _order(codes[shuffled], times[shuffled], keys[shuffled], n_codes, times_sorted=False),
        np.argsort(keys[shuffled], kind="stable"),
    )


def test_first_ingested_mask_equals_brute_force_and_reports_unresolved_ties() -> None:
    rng = np.random.default_rng(5)
    ids = [f"e{int(i)}" for i in rng.integers(0, 400, 1500)]  # most ids repeated, some 5 times or more
    ats = [int(a) for a in rng.integers(0, 6, len(ids))]  # few instants: many ties
    hashes = [f"{int(h):08x}" for h in rng.permutation(len(ids))]
    raw = pa.table(
        {
            "event_id": ids,
            "ingested_at": pa.array(ats, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "payload_hash": hashes,
            "row": np.arange(len(ids)),
        }
    )
    first: dict[str, tuple[int, str, int]] = {}
    for i, a, h, r in zip(ids, ats, hashes, range(len(ids)), strict=True):
        if i not in first or (a, h) < first[i][:2]:
            first[i] = (a, h, r)
    want = {i: r for i, (_, _, r) in first.items()}  # event_id → winning row
    keep, unresolved = pit.first_ingested_mask(raw, "event_id")
    assert len(unresolved) == 0
    assert dict(zip(np.array(ids)[keep], np.flatnonzero(keep), strict=True)) == want
    assert sorted(pit.dedupe(raw, "event_id").column("row").to_pylist()) == sorted(want.values())
    # Without payload_hash: ids whose earliest copies tie are left out and named; the rest are decided.
    keep, unresolved = pit.first_ingested_mask(raw.drop_columns(["payload_hash"]), "event_id")
    earliest: dict[str, list[int]] = defaultdict(list)
    for i, a in zip(ids, ats, strict=True):
        earliest[i].append(a)
    tied = {i for i, a in earliest.items() if a.count(min(a)) > 1}
    assert tied and set(unresolved.to_pylist()) == tied and len(unresolved) == len(tied)
    assert dict(zip(np.array(ids)[keep], np.flatnonzero(keep), strict=True)) == {
        i: r for i, r in want.items() if i not in tied
    }
    with pytest.raises(pit.PointInTimeError, match="payload_hash"):
        pit.dedupe(raw.drop_columns(["payload_hash"]), "event_id")


def test_a_dictionary_holding_null_as_a_value_reads_as_null() -> None:
    """A Parquet file whose ``product_id`` values are all null (one page_view written alone by a small flush)
    reads back through the Delta dataset as a dictionary ``[null]`` with a *valid* index 0; Arrow cannot
    unify such dictionaries with the other files' ones ("Cannot yet unify dictionaries with nulls"), which
    made ``get_historical_features`` raise. The engine reads the value as null."""
    rng = np.random.default_rng(5)
    events = random_events(rng, 600, users=8, products=5, span=3 * DAY)
    lone = event("lone", "page_view", "u1", None, events[0]["event_time"] + 1)
    table = dictionary_chunks(events_table(events), pieces=3)
    row = events_table([lone]).to_batches()[0]
    cols = {n: row.column(n) for n in row.schema.names}
    cols["event_type"] = cols["event_type"].dictionary_encode()
    cols["user_id"] = cols["user_id"].dictionary_encode()
    cols["product_id"] = pa.DictionaryArray.from_arrays(pa.array([0], pa.int32()), pa.array([None], pa.string()))
    table = pa.Table.from_batches([*table.to_batches(), pa.record_batch(cols)])
    times = query_times(rng, PLAN, events, 50, 3 * DAY)
    entity_df = pd.DataFrame(
        {
            "user_id": [f"u{i % 8}" for i in range(50)],
            "product_id": [f"p{i % 5}" for i in range(50)],
            "event_timestamp": pd.to_datetime(times, unit="us", utc=True),
        }
    )
    refs = ["user_activity", "product_engagement"]
    got = pit.point_in_time(PLAN, entity_df, refs, table, full_feature_names=True)
    plain = pit.point_in_time(PLAN, entity_df, refs, events_table([*events, lone]), full_feature_names=True)
    pd.testing.assert_frame_equal(got, plain)


def test_text_timestamps_are_read_one_by_one() -> None:
    """A naive timestamp is UTC even after one with an offset (pandas' one inferred format would read it in
    that offset), in the API's rows and in an entity frame of strings alike."""
    text = pd.Series(["2026-11-21T12:00:00+02:00", "2026-11-21T10:00:00", "2026-11-21T10:00:00z", "2026-11-21"])
    want = [datetime(2026, 11, 21, 10, tzinfo=UTC)] * 3 + [datetime(2026, 11, 21, tzinfo=UTC)]
    assert [t.to_pydatetime() for t in pit.to_utc(text)] == want
    with pytest.raises(ValueError):
        pit.to_utc(pd.Series(["2026-11-21T10:00:00", "yesterday"]))


@pytest.mark.parametrize(
    "text", [["2026-11-21T10:00:00 PST"], ["2026-11-21T10:00:00Z", "2026-11-21T10:00:00 CET"], ["2300-01-01 10:00 EST"]]
)
def test_text_naming_an_unknown_zone_is_refused(text: list[str]) -> None:
    """pandas drops a zone name it cannot read ("PST") with a FutureWarning and reads the rest as naive,
    which here means UTC: every value computed hours away from the instant meant. Refused, naming the value;
    the names it reads (UTC, GMT) and offsets keep working."""
    with pytest.raises(ValueError, match=text[-1].split()[-1]):
        pit.to_utc(pd.Series(text))
    frame = pd.DataFrame({"user_id": ["u"] * len(text), "event_timestamp": text})
    with pytest.raises(pit.PointInTimeError, match="event_timestamp"):
        pit.point_in_time(PLAN, frame, ["user_activity"], events_table([]))
    ok = pd.Series(["2026-11-21T10:00:00 UTC", "2026-11-21T10:00:00 GMT", "2026-11-21T02:00:00-08:00"])
    assert {t.to_pydatetime() for t in pit.to_utc(ok)} == {datetime(2026, 11, 21, 10, tzinfo=UTC)}


def test_text_timestamps_outside_the_nanosecond_range_are_read_in_microseconds() -> None:
    """Years 1–9999 as text or objects, as a ``datetime64[us]`` column holds them (pandas' nanoseconds end in
    1677 and 2262); an offset that puts the instant before year 1 in UTC is refused, not wrapped."""
    text = pd.Series(["2300-01-01", "9999-12-31T00:00:00Z", "0001-01-02T03:00:00+02:00", None, datetime(2500, 1, 1)])
    want = [
        datetime(2300, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, tzinfo=UTC),
        datetime(1, 1, 2, 1, tzinfo=UTC),
        None,
        datetime(2500, 1, 1, tzinfo=UTC),
    ]
    got = pit.to_utc(text)
    assert [None if pd.isna(t) else t.to_pydatetime() for t in got] == want
    with pytest.raises(ValueError, match="0001-01-01T00:00:00"):
        pit.to_utc(pd.Series(["2300-01-01", "0001-01-01T00:00:00+05:00"]))


@pytest.mark.parametrize(
    "values",
    [[1795169220000], [1.7951692e9], ["2026-11-21T10:00:00Z", 1795169220000], [None, 1795169220000], [True]],
)
def test_numbers_are_not_timestamps(values: list[object]) -> None:
    """A number has no unit (epoch s, ms, ns?): pandas would read 1795169220000 as nanoseconds, 1970-01-01 —
    every value computed at the wrong time, silently. It is refused, naming the column, in a frame of
    numbers and among text alike."""
    with pytest.raises((TypeError, ValueError), match="number"):
        pit.to_utc(pd.Series(values))
    frame = pd.DataFrame({"user_id": ["u"] * len(values), "event_timestamp": values})
    with pytest.raises(pit.PointInTimeError, match="event_timestamp"):
        pit.point_in_time(PLAN, frame, ["user_activity"], events_table([]))


@pytest.mark.parametrize("keys", [40, 70_000, 2**25])
def test_row_order_sorts_by_code_then_time_ties_in_input_order(keys: int) -> None:
    """The rows' order from the shared time order and a radix sort by code (one pass, or two above 2**16
    codes) equals a plain sort by (code, time, input position); code -1 (no events) first."""
    rng = np.random.default_rng(5)
    n = 5000
    codes = rng.integers(-1, keys, n)
    times = rng.integers(0, 50, n)  # many ties
    got = pit._row_order(codes, np.argsort(times, kind="stable"))
    assert got.tolist() == np.lexsort((np.arange(n), times, codes)).tolist()
