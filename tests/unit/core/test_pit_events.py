"""Encoding of the point-in-time engine's events (fstore.core.pit_events) and its ``keep`` mask."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from fstore.core import pit
from fstore.core.expr import Column, Kind
from fstore.core.expr_eval import truth_arrow
from fstore.core.expr_parse import parse_condition
from fstore.core.pit_events import dictionary_truth, encode_strings, sorted_codes
from tests.support.pit import events_table, query_times, random_events
from tests.support.repos import compiled

PLAN = compiled("ecommerce")


def _decoded(codes: np.ndarray, dictionary: pa.Array) -> list[str | None]:
    values = dictionary.to_pylist()
    return [None if c < 0 else values[c] for c in codes.tolist()]


def test_chunks_with_own_shared_and_repeated_dictionaries_decode_to_the_strings() -> None:
    """Chunks as the Delta reader yields them (one dictionary per row group, two batches sharing one), plus
    nulls, a dictionary holding a value twice, a large_string dictionary and a plain chunk."""
    shared = pa.DictionaryArray.from_arrays(pa.array([0, 1, None, 1]), pa.array(["a", "b"]))
    same_dict = pa.DictionaryArray.from_arrays(pa.array([1, 1, 0]), shared.dictionary)
    repeated = pa.DictionaryArray.from_arrays(pa.array([0, 1, 2]), pa.array(["c", "a", "c"]))
    large = pa.DictionaryArray.from_arrays(pa.array([0, None]), pa.array(["d"], pa.large_string()))
    column = pa.chunked_array([shared, same_dict, repeated, large.cast(shared.type)])
    codes, dictionary = encode_strings(column)
    assert _decoded(codes, dictionary) == column.to_pylist()
    assert len(set(dictionary.to_pylist())) == len(dictionary) == 4
    plain = pa.chunked_array([pa.array(["x", None]), pa.array(["y", "x"])])
    codes, dictionary = encode_strings(plain)
    assert _decoded(codes, dictionary) == ["x", None, "y", "x"]


@pytest.mark.parametrize("chunked", [True, False])
def test_ordered_codes_follow_the_strings_sort_order(chunked: bool) -> None:
    """``ordered=True`` (renumbered in the chunks' lookup table, or after encoding a single array) gives the
    codes :func:`sorted_codes` gives: the same strings, codes in the strings' order, null stays ``-1``."""
    first = pa.DictionaryArray.from_arrays(pa.array([0, 1, None, 2]), pa.array(["k", "b", "x"]))
    second = pa.DictionaryArray.from_arrays(pa.array([1, 0, 1]), pa.array(["a", "k"]))
    column = pa.chunked_array([first, second]) if chunked else pa.chunked_array([first])
    codes, dictionary = encode_strings(column, ordered=True)
    assert _decoded(codes, dictionary) == column.to_pylist()
    assert dictionary.to_pylist() == sorted(dictionary.to_pylist())
    want_codes, want_dictionary = sorted_codes(*encode_strings(column))
    assert codes.tolist() == want_codes.tolist() and dictionary.equals(want_dictionary)


def test_keep_mask_equals_the_filtered_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows left out by ``keep`` count exactly as if they were not in the table (views in threads)."""
    monkeypatch.setattr(pit, "_PARALLEL_ROWS", 0)
    rng = np.random.default_rng(8)
    events = random_events(rng, 1500, users=12, products=6, span=3 * 86_400_000_000)
    table = events_table(events, PLAN.schema)
    keep: np.ndarray = np.asarray(rng.random(table.num_rows) < 0.6)
    times = query_times(rng, PLAN, events, 300, 3 * 86_400_000_000)
    entity_df = pd.DataFrame(
        {
            "user_id": [f"u{rng.integers(13)}" for _ in range(300)],
            "product_id": [f"p{rng.integers(7)}" for _ in range(300)],
            "event_timestamp": pd.to_datetime(times, unit="us", utc=True),
        }
    )
    refs = ["user_activity", "product_engagement"]
    got = pit.point_in_time(PLAN, entity_df, refs, table, full_feature_names=True, keep=keep)
    want = pit.point_in_time(PLAN, entity_df, refs, table.filter(pa.array(keep)), full_feature_names=True)
    pd.testing.assert_frame_equal(got, want)
    with pytest.raises(ValueError, match="keep mask has 3 rows"):
        pit.point_in_time(PLAN, entity_df, refs, table, keep=np.ones(3, bool), full_feature_names=True)


def test_a_single_dictionary_holding_null_as_a_value_gives_null_codes() -> None:
    """A Parquet file whose values are all null reads back as a dictionary holding null as a value: its rows
    are nulls (-1), not a key called null — in one array or one chunk as in many."""
    d = pa.DictionaryArray.from_arrays(pa.array([0, 0, 1], pa.int32()), pa.array([None, "a"]))
    for column in (d, pa.chunked_array([d])):
        codes, dictionary = encode_strings(column)
        assert codes.tolist() == [-1, -1, 0] and dictionary.to_pylist() == ["a"]


def test_values_are_the_same_bits_whatever_order_the_events_come_in() -> None:
    """The engine's sums add events in (entity, time) order: entity codes follow the keys, and events of one
    entity at one instant follow their values, so the same events read in another order (other files, the
    day's winners file) give the same bits. A large early purchase makes the prefix sums round visibly."""
    rng = np.random.default_rng(3)
    events = random_events(rng, 400, users=6, products=4, span=2 * 86_400_000_000)
    at = events[10]["event_time"]
    ties = [
        {**events[10], "event_id": f"t{i}", "event_type": "purchase", "price": 0.1 * (i + 1) + 1 / 3, "quantity": 1}
        for i in range(8)
    ]
    big = {**events[10], "event_id": "big", "event_type": "purchase", "price": 9.7e8, "event_time": at - 86_400_000_000}
    rows = [*events, *ties, big]
    times = query_times(rng, PLAN, rows, 200, 2 * 86_400_000_000)
    users = [f"u{rng.integers(7)}" for _ in times]
    products = [f"p{rng.integers(5)}" for _ in times]
    for i, step in enumerate((1, 1000, 60_000_000, 1_800_000_000)):  # right after the ties, after the big one
        times[i], users[i], products[i] = at + step, events[10]["user_id"], events[10]["product_id"]
    frame = pd.DataFrame(
        {
            "user_id": users,
            "product_id": products,
            "event_timestamp": pd.to_datetime(times, unit="us", utc=True),
        }
    )
    views = [v.name for v in PLAN.views]
    outs = []
    for seed in range(6):
        order = np.random.default_rng(seed).permutation(len(rows)) if seed else np.arange(len(rows))
        table = events_table([rows[i] for i in order], PLAN.schema)
        outs.append(pit.point_in_time(PLAN, frame, views, table, full_feature_names=True))
    for out in outs[1:]:
        pd.testing.assert_frame_equal(out, outs[0], check_exact=True)


@pytest.mark.parametrize(
    "condition", ["kind == 'a'", "kind is null", "not (kind == 'b')", "kind in ('a', 'c') or kind is null"]
)
def test_dictionary_truth_equals_the_condition_row_by_row(condition: str) -> None:
    """Chunks with their own, shared and null-holding dictionaries and null indices: the lookup per chunk
    dictionary gives what the condition gives over the decoded strings."""
    shared = pa.DictionaryArray.from_arrays(pa.array([0, 1, None, 1]), pa.array(["a", "b"]))
    same_dict = pa.DictionaryArray.from_arrays(pa.array([1, None, 0]), shared.dictionary)
    other = pa.DictionaryArray.from_arrays(pa.array([2, 0, 1, None]), pa.array(["c", "b", "a"]))
    holding_null = pa.DictionaryArray.from_arrays(pa.array([0, 0]), pa.array([None], pa.string()))
    column = pa.chunked_array([shared, same_dict, other, holding_null])
    schema = {"kind": Column(Kind.STRING)}
    where = parse_condition(condition)
    want = truth_arrow(where, pa.table({"kind": column.cast(pa.string())}), schema).to_pylist()
    assert dictionary_truth(where, "kind", column, schema).tolist() == want
