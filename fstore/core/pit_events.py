"""Events of a point-in-time request, encoded once for every view (docs/design.md §3, §6), numpy/pyarrow only.

The engine works on integer codes: event types and entity keys become dictionary codes, times int64 µs.
:class:`EncodedEvents` encodes the columns every view shares; each view then encodes its entity key
(:func:`encode_strings`) and builds its sorted measures (:class:`ViewEvents`).

Which rows count (the de-duplication winners inside the time range) may be given as a mask over the
table's rows (:data:`Keep`), so a reader need not copy the winners into a new table
(:mod:`fstore.offline.local`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fstore.core.aggregates import Agg
from fstore.core.features import FeatureView, ValueKind
from fstore.core.pit_kernels import F64, I64, Bool, SortedMeasure

#: Rows of the events table that count: a boolean mask, or ``None`` for every row.
Keep = Bool | None


def _dictionary_key(dictionary: pa.Array) -> tuple[int, ...]:
    """Identity of a chunk's dictionary (its buffers): chunks read from one Parquet row group share it."""
    return (dictionary.offset, len(dictionary), *(b.address if b is not None else 0 for b in dictionary.buffers()))


def _encoded_chunks(column: pa.ChunkedArray) -> tuple[I64, pa.Array]:
    """:func:`encode_strings` of a dictionary column in chunks with their own dictionaries.

    The distinct chunk dictionaries (by identity) are concatenated and encoded in one hash pass; each
    chunk's codes are then a lookup of its indices. Cheaper than unifying the dictionaries chunk by chunk
    (the Delta reader yields one dictionary per row group, each holding most of the keys).
    """
    start: dict[tuple[int, ...], int] = {}
    dictionaries: list[pa.Array] = []
    total = 0
    for chunk in column.chunks:
        key = _dictionary_key(chunk.dictionary)
        if key not in start:
            start[key] = total
            dictionaries.append(chunk.dictionary.cast(pa.string()))
            total += len(chunk.dictionary)
    merged = pc.dictionary_encode(pa.concat_arrays(dictionaries))
    glob = np.append(pc.fill_null(merged.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64), -1)
    parts = []
    for chunk in column.chunks:
        at = pc.fill_null(chunk.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        at = np.where(at >= 0, at + start[_dictionary_key(chunk.dictionary)], total)  # null → the -1 at the end
        parts.append(glob[at])
    codes: I64 = np.concatenate(parts) if parts else np.empty(0, np.int64)
    return codes, merged.dictionary


def encode_strings(column: pa.ChunkedArray | pa.Array) -> tuple[I64, pa.Array]:
    """``(codes, dictionary)`` of a string column, ``-1`` for nulls; dictionary columns keep their codes.

    The dictionary holds distinct strings (``codes`` index it).
    """
    if isinstance(column, pa.ChunkedArray):
        if pa.types.is_dictionary(column.type) and column.num_chunks > 1:
            return _encoded_chunks(column)  # a null held in a chunk's dictionary gets code -1 there
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
        return encode_strings(column.dictionary_decode())
    if not (pa.types.is_string(dictionary.type) or pa.types.is_null(dictionary.type)):
        dictionary = dictionary.cast(pa.string())
    return codes, dictionary


class EncodedEvents:
    """Events decoded once, shared by every view: the counted rows of each needed event type and their times.

    Args:
        events: the events table (``event_type``, ``event_time``, ``price``, ``quantity`` and the entity keys).
        event_types: the event types the request measures.
        keep: which rows count (see :data:`Keep`).
    """

    def __init__(self, events: pa.Table, event_types: set[str], keep: Keep = None) -> None:
        self.table = events
        type_codes, types = encode_strings(events.column("event_type"))
        names = types.to_pylist()
        times = events.column("event_time").cast(pa.int64()).to_numpy().astype(np.int64, copy=False)
        if keep is not None and len(keep) != len(type_codes):
            raise ValueError(f"keep mask has {len(keep)} rows, the events {len(type_codes)}")
        #: ``(first, span)`` of every event's time: the time axis the views' sorted measures share.
        self.time_span: tuple[int, int] | None = None
        if len(times):
            first = int(times.min())
            self.time_span = (first, int(times.max()) - first + 1)
        self.rows: dict[str, I64] = {}  # event type → its counted rows, in table order
        self.times: dict[str, I64] = {}
        for event_type in event_types:
            codes = [i for i, name in enumerate(names) if name == event_type]
            mask = type_codes == codes[0] if len(codes) == 1 else np.isin(type_codes, codes)
            if keep is not None:
                mask &= keep
            self.rows[event_type] = rows = np.flatnonzero(mask)
            self.times[event_type] = times[rows]

    def revenue(self, event_type: str) -> F64:
        """price × quantity of the counted events of one type (a null price counts 0)."""
        rows = pa.array(self.rows[event_type])
        price = pc.fill_null(self.table.column("price").take(rows), 0.0).to_numpy(zero_copy_only=False)
        qty = self.table.column("quantity").take(rows).to_numpy(zero_copy_only=False)
        revenue: F64 = price.astype(np.float64) * qty
        return revenue


class ViewEvents:
    """Events of one view's entity, per measure, sorted for window queries.

    The entity key is encoded at construction; :meth:`build` sorts the measures the request needs.
    """

    def __init__(self, view: FeatureView, events: EncodedEvents) -> None:
        self.view = view
        self.events = events
        self._codes, self.dictionary = encode_strings(events.table.column(view.entity.join_key))
        self.measures: dict[str, SortedMeasure] = {}

    def codes(self, keys: pa.Array) -> I64:
        """Entity code of each key, ``-1`` when the entity has no events (or the key is null)."""
        idx = pc.index_in(keys, value_set=self.dictionary)
        codes: I64 = pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        return codes

    def build(self, wanted: set[str]) -> None:
        """Sort the events of every measure named in ``wanted``."""
        events, view = self.events, self.view
        for f in view.windowed:
            m = f.measure
            if m.name in self.measures or m.name not in wanted:
                continue
            c, t = self._codes[events.rows[m.event_type]], events.times[m.event_type]
            values = None
            if m.value is ValueKind.REVENUE:
                values = events.revenue(m.event_type)
            elif any(g.measure == m and g.agg in (Agg.MIN, Agg.MAX, Agg.AVG, Agg.SUM) for g in view.windowed):
                values = np.ones(len(c), np.float64)
            has_key = c >= 0
            if not has_key.all():  # events without this view's key (a page view without product_id)
                c, t, values = c[has_key], t[has_key], None if values is None else values[has_key]
            self.measures[m.name] = SortedMeasure(c, t, values, len(self.dictionary), events.time_span)
