"""Events of a point-in-time request, encoded once for every view (docs/design.md §3, §6), numpy/pyarrow only.

The engine works on integer codes: entity keys become dictionary codes, times int64 µs. :class:`EncodedEvents`
evaluates each measure of the request once over the table (:mod:`fstore.core.expr_eval`, vectorised on
Arrow; views sharing a measure's expression share the result); each view then encodes its entity key
(:func:`encode_strings`) and builds its sorted measures (:class:`ViewEvents`).

Which rows count (the de-duplication winners inside the time range) may be given as a mask over the
table's rows (:data:`Keep`), so a reader need not copy the winners into a new table
(:mod:`fstore.offline.local`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping
from typing import Generic, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fstore.core.event_schema import EventSchema
from fstore.core.expr import Column, Expr, columns
from fstore.core.expr_eval import evaluate_arrow, truth_arrow
from fstore.core.functions import State
from fstore.core.pit_kernels import F64, I64, Bool, SortedMeasure
from fstore.core.plan import Measure, View

#: Rows of the events table that count: a boolean mask, or ``None`` for every row.
Keep = Bool | None


def _dictionary_key(dictionary: pa.Array) -> tuple[int, ...]:
    """Identity of a chunk's dictionary (its buffers): chunks read from one Parquet row group share it."""
    return (dictionary.offset, len(dictionary), *(b.address if b is not None else 0 for b in dictionary.buffers()))


def _encoded_chunks(column: pa.ChunkedArray, ordered: bool = False) -> tuple[I64, pa.Array]:
    """:func:`encode_strings` of a dictionary column in chunks with their own dictionaries.

    The distinct chunk dictionaries (by identity) are concatenated and encoded in one hash pass; each
    chunk's codes are then a lookup of its indices. Cheaper than unifying the dictionaries chunk by chunk
    (the Delta reader yields one dictionary per row group, each holding most of the keys). ``ordered``:
    the codes of :func:`sorted_codes`, renumbered in the small lookup table before the per-row lookups.
    """
    start, dictionaries = _distinct_dictionaries(column)
    merged = pc.dictionary_encode(pa.concat_arrays(dictionaries))
    glob = np.append(pc.fill_null(merged.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64), -1)
    dictionary = merged.dictionary
    if ordered:
        glob, dictionary = sorted_codes(glob, dictionary)  # the trailing -1 (null) stays -1
    codes: I64 = np.empty(len(column), np.int64)
    at = 0
    for chunk in column.chunks:
        first, end = start[_dictionary_key(chunk.dictionary)], at + len(chunk)
        if not chunk.indices.null_count:  # the usual case: look the chunk's indices up in its own slice
            np.take(glob[first : first + len(chunk.dictionary)], chunk.indices.to_numpy(), out=codes[at:end])
        else:
            idx = pc.fill_null(chunk.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
            codes[at:end] = glob[np.where(idx >= 0, idx + first, len(glob) - 1)]  # null → the -1 at the end
        at = end
    return codes, dictionary


def encode_strings(column: pa.ChunkedArray | pa.Array, ordered: bool = False) -> tuple[I64, pa.Array]:
    """``(codes, dictionary)`` of a string column, ``-1`` for nulls; dictionary columns keep their codes.

    The dictionary holds distinct strings (``codes`` index it). ``ordered``: codes follow the strings'
    sort order (what :func:`sorted_codes` gives, done here in one pass for chunked dictionary columns).
    """
    if isinstance(column, pa.ChunkedArray):
        if pa.types.is_dictionary(column.type) and column.num_chunks > 1:
            return _encoded_chunks(column, ordered)  # a null held in a chunk's dictionary gets code -1 there
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_dictionary(column.type) and column.dictionary.null_count:
        # a Parquet file whose values are all null reads back as a dictionary holding null as a value:
        # decoded, its rows are nulls (code -1), not a key
        column = column.cast(column.type.value_type)
    if not pa.types.is_dictionary(column.type):
        column = column.cast(pa.string()).dictionary_encode()
    codes = pc.fill_null(column.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    dictionary = column.dictionary
    if pc.count_distinct(dictionary, mode="all").as_py() != len(dictionary):  # re-encode repeated values
        return encode_strings(column.dictionary_decode(), ordered)
    if not (pa.types.is_string(dictionary.type) or pa.types.is_null(dictionary.type)):
        dictionary = dictionary.cast(pa.string())
    return sorted_codes(codes, dictionary) if ordered else (codes, dictionary)


def sorted_codes(codes: I64, dictionary: pa.Array) -> tuple[I64, pa.Array]:
    """``(codes, dictionary)`` re-numbered so that codes follow the keys' sort order (``-1`` stays).

    Entity codes order the engine's sorted events, and so the order in which prefix sums add them up: codes
    that depend on the keys only (not on how the rows were stored or read) make every sum, and so every
    feature value, the same bits whichever files the same events were read from.
    """
    order = pc.sort_indices(dictionary).to_numpy()
    if len(order) < 2 or bool((order[1:] > order[:-1]).all()):
        return codes, dictionary
    rank = np.empty(len(order) + 1, np.int64)
    rank[order] = np.arange(len(order))
    rank[-1] = -1  # code -1 (null) picks the last entry
    return rank[codes], dictionary.take(pa.array(order))


def _distinct_dictionaries(column: pa.ChunkedArray) -> tuple[dict[tuple[int, ...], int], list[pa.Array]]:
    """The distinct dictionaries of a dictionary column's chunks (by identity) as strings, and where each
    starts once they are concatenated (keyed by :func:`_dictionary_key`)."""
    start: dict[tuple[int, ...], int] = {}
    dictionaries: list[pa.Array] = []
    total = 0
    for chunk in column.chunks:
        key = _dictionary_key(chunk.dictionary)
        if key not in start:
            start[key] = total
            dictionaries.append(chunk.dictionary.cast(pa.string()))
            total += len(chunk.dictionary)
    return start, dictionaries


def dictionary_truth(where: Expr, name: str, column: pa.ChunkedArray, schema: Mapping[str, Column]) -> Bool:
    """Where ``where`` (a condition on the one column ``name``) holds, for a dictionary-encoded ``column``.

    The condition is evaluated once over the values of the chunks' distinct dictionaries (and null); each
    chunk's rows then look their index up in their dictionary's slice, the last entry for a null index.
    """
    start, dictionaries = _distinct_dictionaries(column)
    values = pa.concat_arrays([*dictionaries, pa.nulls(1, pa.string())])
    held = np.asarray(truth_arrow(where, pa.table({name: values}), schema).to_numpy(zero_copy_only=False), bool)
    out: Bool = np.empty(len(column), bool)
    at = 0
    for chunk in column.chunks:
        first, size, end = start[_dictionary_key(chunk.dictionary)], len(chunk.dictionary), at + len(chunk)
        lookup = np.append(held[first : first + size], held[-1])  # index ``size``: a null row
        indices = chunk.indices if not chunk.indices.null_count else pc.fill_null(chunk.indices, size)
        np.take(lookup, indices.to_numpy(), out=out[at:end])
        at = end
    return out


def event_times(column: pa.ChunkedArray | pa.Array) -> I64:
    """An event timestamp column (timestamp or int64 µs) as int64 UTC epoch µs."""
    if pa.types.is_timestamp(column.type) and column.type.unit != "us":
        column = pc.cast(column, pa.timestamp("us", tz=column.type.tz))
    times: I64 = column.cast(pa.int64()).to_numpy().astype(np.int64, copy=False)
    return times


def _members(values: pa.Array | pa.ChunkedArray) -> I64:
    """Integer codes of a measure's values for distinct counts (equal values, equal codes)."""
    if pa.types.is_floating(values.type):
        data = np.asarray(values.to_numpy(zero_copy_only=False), np.float64) + 0.0  # -0.0 counts as 0.0
        _, codes = np.unique(data, return_inverse=True)
        return codes.astype(np.int64)
    if pa.types.is_boolean(values.type):
        return np.asarray(values.to_numpy(zero_copy_only=False), np.int64)
    return encode_strings(values)[0]


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Once(Generic[K, V]):
    """Values made once per key, also when the views' threads ask for one at the same time (the second
    waits for the first instead of computing it again)."""

    def __init__(self) -> None:
        self._made: dict[K, V] = {}
        self._locks: dict[K, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, key: K, make: Callable[[], V]) -> V:
        if key in self._made:
            return self._made[key]
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._made:
                self._made[key] = make()
        return self._made[key]


class EncodedEvents:
    """Events decoded once, shared by every view: per measure, the rows that count and their values.

    Args:
        events: the events table (the plan's field names; the timestamp field as timestamp or int64 µs;
            fields the table lacks are null).
        schema: the plan's event schema.
        keep: which rows count (see :data:`Keep`).
    """

    def __init__(self, events: pa.Table, schema: EventSchema, keep: Keep = None) -> None:
        self.table = events
        self.columns = schema.columns()
        times = event_times(events.column(schema.timestamp_field))
        if keep is not None and len(keep) != len(times):
            raise ValueError(f"keep mask has {len(keep)} rows, the events {len(times)}")
        self.keep = keep
        self.all_times = times
        #: ``(first, span)`` of every event's time: the time axis the views' sorted measures share.
        self.time_span: tuple[int, int] | None = None
        #: whether the events come in time order (so does every measure's subset of them: rows ascend)
        self.times_sorted = len(times) > 1 and bool((times[1:] >= times[:-1]).all())
        if len(times):
            first = int(times.min())
            self.time_span = (first, int(times.max()) - first + 1)
        self._where: Once[Expr | None, I64] = Once()
        self._values: Once[tuple[Expr, Expr | None], tuple[I64, pa.Array | pa.ChunkedArray]] = Once()
        self._encoded: Once[tuple[str, bool], tuple[I64, pa.Array]] = Once()

    def encoded(self, name: str, ordered: bool = False) -> tuple[I64, pa.Array]:
        """:func:`encode_strings` of a string column of the table (once per column and ``ordered``)."""
        return self._encoded.get((name, ordered), lambda: encode_strings(self.table.column(name), ordered))

    def _truth(self, where: Expr) -> Bool:
        """Where the condition holds, over every row of the table.

        A condition on one dictionary-encoded column (``kind == 'completed'``) is evaluated once per value of
        the chunks' dictionaries and looked up chunk by chunk (:func:`dictionary_truth`) — the same answer as
        row by row, without decoding the strings or encoding the column.
        """
        names = columns(where)
        if len(names) == 1:
            (name,) = names
            if name in self.table.column_names and pa.types.is_dictionary(self.table.schema.field(name).type):
                return dictionary_truth(where, name, self.table.column(name), self.columns)
        mask = truth_arrow(where, self._select(names), self.columns)
        return np.asarray(mask.to_numpy(zero_copy_only=False), bool)

    def _counted(self, where: Expr | None) -> I64:
        """Rows (table order) that are kept and where the condition holds."""

        def make() -> I64:
            if where is None:
                rows = np.arange(self.table.num_rows) if self.keep is None else np.flatnonzero(self.keep)
            else:
                hit = self._truth(where)
                if self.keep is not None:
                    hit = np.logical_and(hit, self.keep, out=hit if hit.flags.writeable else None)
                rows = np.flatnonzero(hit)
            return rows.astype(np.int64, copy=False)

        return self._where.get(where, make)

    def _select(self, names: frozenset[str], rows: int | None = None) -> pa.Table:
        """The table's columns among ``names``; without any, a table of ``rows`` rows (default: the table's)."""
        present = [n for n in self.table.column_names if n in names]
        if present:
            return self.table.select(present)
        count = self.table.num_rows if rows is None else rows
        return pa.table({"__row": pa.nulls(count, pa.int8())})  # keeps the row count

    def measured(self, measure: Measure) -> tuple[I64, pa.Array | pa.ChunkedArray]:
        """``(rows, values)`` of a measure: the counted rows (table order) and their non-null values.

        The filter is evaluated over the whole table, the value only over the rows it keeps (the same
        result as :func:`fstore.core.expr_eval.measure_arrow`, less work for selective filters).
        """

        def make() -> tuple[I64, pa.Array | pa.ChunkedArray]:
            rows = self._counted(measure.where)
            sub = self._select(columns(measure.value), len(rows))
            if len(rows) != sub.num_rows:  # a value that reads no column (a count) needs no copy
                # the rows as a mask, kept chunk by chunk (``take`` would first join every chunk into one)
                counted = np.zeros(sub.num_rows, bool)
                counted[rows] = True
                sub = sub.filter(pa.array(counted))
            values = evaluate_arrow(measure.value, sub, self.columns)
            if values.null_count:
                valid = np.asarray(pc.is_valid(values).to_numpy(zero_copy_only=False), bool)
                rows, values = rows[valid], values.filter(pa.array(valid))
            return rows, values

        return self._values.get((measure.value, measure.where), make)


class ViewEvents:
    """Events of one view's entity, per measure, sorted for window queries.

    The entity key is encoded at construction; :meth:`build` sorts the measures the request needs.
    """

    def __init__(self, view: View, events: EncodedEvents) -> None:
        self.view = view
        self.events = events
        key = view.entity.join_key
        if key in events.table.column_names:
            self._codes, self.dictionary = events.encoded(key, ordered=True)
        else:
            self._codes, self.dictionary = encode_strings(pa.nulls(events.table.num_rows, pa.string()))
        self.measures: dict[str, SortedMeasure] = {}
        #: measure name → distinct-member code of each of its sorted measure's events (input order).
        self.members: dict[str, I64] = {}

    def codes(self, keys: pa.Array) -> I64:
        """Entity code of each key, ``-1`` when the entity has no events (or the key is null)."""
        idx = pc.index_in(keys, value_set=self.dictionary)
        codes: I64 = pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        return codes

    def build(self, wanted: set[str]) -> None:
        """Sort the events of every measure named in ``wanted``."""
        view = self.view
        needs: dict[str, set[State]] = {}
        for f in view.windowed:
            needs.setdefault(f.measure, set()).update(f.states)
        for name in wanted:
            if name in self.measures:
                continue
            rows, values = self.events.measured(view.measure(name))
            states = needs.get(name, set())
            c, t = self._codes[rows], self.events.all_times[rows]
            numbers: F64 | None = None
            if states & {State.SUM, State.MIN, State.MAX, State.M2}:
                numbers = np.asarray(values.to_numpy(zero_copy_only=False), np.float64)
            has_key = c >= 0
            members = _members(values) if states & {State.DISTINCT, State.SKETCH} else None
            if not has_key.all():  # events without this view's key (an optional join key left out)
                c, t = c[has_key], t[has_key]
                numbers = None if numbers is None else numbers[has_key]
                members = None if members is None else members[has_key]
            self.measures[name] = SortedMeasure(
                c, t, numbers, len(self.dictionary), self.events.time_span, self.events.times_sorted
            )
            if members is not None:
                self.members[name] = members
