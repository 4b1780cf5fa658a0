"""Point-in-time engine for training data (docs/design.md §3 and §6), pure numpy/pandas/pyarrow.

:func:`point_in_time` returns, for every row of an entity dataframe, ``value(e, t)`` of the requested
features with ``t`` = the row's ``event_timestamp`` (exclusive) and ``tail(t) = floor(t - W, hop(W))``.

Row contract: one output row per input row, in input order, every input column kept (labels included),
duplicate rows kept; an entity without events in the window gets count/sum 0 and avg/min/max/ratio null.
Naive timestamps are UTC. Adapters (:mod:`fstore.offline.local`, :mod:`fstore.offline.spark`,
:mod:`fstore.feast.offline_store`) only read ``raw_events`` and call this module.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fstore.core.aggregates import Agg
from fstore.core.features import Feature, FeatureView, RatioFeature, ValueKind, WindowedFeature, resolve
from fstore.core.pit_kernels import F64, I64, Bool, SortedMeasure
from fstore.core.timeutil import MILLISECOND, SECOND
from fstore.core.windows import tail

TIMESTAMP_COLUMN = "event_timestamp"
#: Columns of ``raw_events`` the engine reads (after de-duplication).
EVENT_COLUMNS = ("event_type", "user_id", "product_id", "event_time", "price", "quantity")
#: Columns that de-duplication needs on top of :data:`EVENT_COLUMNS`.
DEDUPE_COLUMNS = ("event_id", "ingested_at", "payload_hash")

Frame = TypeVar("Frame", pd.DataFrame, pa.Table)
#: Below this many entity rows the views are computed one after the other (threads would not pay off).
_PARALLEL_ROWS = 50_000


class PointInTimeError(ValueError):
    """Invalid point-in-time request; the message names the problem (column, feature or view)."""


@dataclass(frozen=True)
class Request:
    """A resolved request: the features in output order and their output column names."""

    features: tuple[tuple[FeatureView, Feature], ...]
    names: tuple[str, ...]

    @property
    def views(self) -> tuple[FeatureView, ...]:
        """The views involved, in first-use order."""
        return tuple(dict.fromkeys(v for v, _ in self.features))

    @property
    def join_keys(self) -> tuple[str, ...]:
        """The entity columns the entity dataframe needs."""
        return tuple(dict.fromkeys(v.entity.join_key for v in self.views))

    def lookback(self) -> int:
        """How far before ``t`` an event can count: longest window + largest hop of the request (µs)."""
        windowed = [w for v, f in self.features for w in _windowed_of(v, f)]
        return max(w.window for w in windowed) + max(w.hop for w in windowed)


def _windowed_of(view: FeatureView, feature: Feature) -> tuple[WindowedFeature, ...]:
    if isinstance(feature, RatioFeature):
        num, den = view.feature(feature.numerator), view.feature(feature.denominator)
        assert isinstance(num, WindowedFeature) and isinstance(den, WindowedFeature)
        return (num, den)
    return (feature,)


def plan(refs: Sequence[str], full_feature_names: bool = False) -> Request:
    """Resolve feature references (``view:feature`` or a whole ``view``) into a :class:`Request`.

    Raises:
        PointInTimeError: no reference, an unknown view or feature, or two features with the same output
            name (use ``full_feature_names=True``: names become ``view__feature``).
    """
    if isinstance(refs, str):
        refs = [refs]
    if not refs:
        raise PointInTimeError("no features requested: pass refs like 'user_activity:clicks_1h' or a view name")
    try:
        features = resolve(list(refs))
    except KeyError as exc:
        raise PointInTimeError(exc.args[0]) from None
    names = tuple(f"{v.name}__{f.name}" if full_feature_names else f.name for v, f in features)
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise PointInTimeError(
            f"feature name(s) {', '.join(dup)} requested from several views; "
            "pass full_feature_names=True to get view__feature columns"
        )
    return Request(tuple(features), names)


def _column(frame: pd.DataFrame | pa.Table, name: str) -> pa.Array:
    names = list(frame.columns) if isinstance(frame, pd.DataFrame) else frame.column_names
    if name not in names:
        raise PointInTimeError(f"entity dataframe has no column '{name}' (columns: {', '.join(map(str, names))})")
    if isinstance(frame, pd.DataFrame):
        series = frame[name]
        if name == TIMESTAMP_COLUMN and not pd.api.types.is_datetime64_any_dtype(series):
            try:
                series = pd.to_datetime(series, utc=True)
            except (ValueError, TypeError) as exc:
                raise PointInTimeError(f"column '{name}' is not a timestamp: {exc}") from None
        return pa.Array.from_pandas(series)
    return frame.column(name).combine_chunks()


def entity_times(column: pa.Array) -> tuple[I64, I64]:
    """``event_timestamp`` values as UTC epoch microseconds, rounded ``(down, up)``.

    Naive timestamps are taken as UTC; dates mean 00:00 UTC. Sub-microsecond instants are kept exact:
    events count when ``event_time < up`` and the tail is aligned from ``down``.

    Raises:
        PointInTimeError: for non-timestamp types or null values.
    """
    typ = column.type
    if pa.types.is_date(typ):
        column, typ = column.cast(pa.timestamp("us")), pa.timestamp("us")
    if not pa.types.is_timestamp(typ):
        raise PointInTimeError(f"column '{TIMESTAMP_COLUMN}' must hold timestamps, not {typ}")
    if column.null_count:
        raise PointInTimeError(f"column '{TIMESTAMP_COLUMN}' has {column.null_count} null value(s)")
    raw = column.view(pa.int64()).to_numpy(zero_copy_only=False).astype(np.int64)
    if typ.unit == "ns":
        return raw // 1000, -(-raw // 1000)
    scale = {"s": SECOND, "ms": MILLISECOND, "us": 1}[typ.unit]
    return raw * scale, raw * scale


def _keys(column: pa.Array, name: str) -> pa.Array:
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_integer(column.type) or pa.types.is_large_string(column.type):
        return column.cast(pa.string())
    if pa.types.is_string(column.type) or pa.types.is_null(column.type):
        return column.cast(pa.string())
    raise PointInTimeError(f"join key column '{name}' must hold strings, not {column.type}")


def first_ingested_mask(raw: pa.Table) -> tuple[Bool, pa.Array]:
    """Which rows of ``raw_events`` are the winning copy of their event_id (first ingested wins).

    Same rule as :func:`fstore.core.dedupe.first_ingested_arrow`: copies are ordered by ``(ingested_at,
    payload_hash)``. Most event_ids are unique, so repeated ids are found with one single-key sort of
    ``event_id`` and only their rows are ordered by the full key; unique rows are kept as they are.

    Args:
        raw: ``raw_events`` rows with ``event_id`` and ``ingested_at``; ``payload_hash`` is optional — it
            only breaks ties between copies ingested at the same instant, which are rare.

    Returns:
        ``(keep, unresolved)``: ``keep`` marks the winning rows. ``unresolved`` lists the event_ids whose
        earliest ``ingested_at`` is shared by several copies while ``raw`` has no ``payload_hash``; none
        of their rows is kept: read their copies with ``payload_hash`` and pass them to :func:`dedupe`.
    """
    n = raw.num_rows
    keep = np.ones(n, bool)
    none = pa.array([], pa.string())
    if n < 2:
        return keep, none
    ids = raw.column("event_id").combine_chunks()
    if pa.types.is_dictionary(ids.type):
        ids = ids.dictionary_decode()
    order = pc.sort_indices(ids)
    ranked = ids.take(order)
    same = pc.fill_null(pc.equal(ranked.slice(1), ranked.slice(0, n - 1)), False).to_numpy(zero_copy_only=False)
    if not same.any():
        return keep, none
    repeated = np.zeros(n, bool)
    repeated[1:] = same
    repeated[:-1] |= same
    rows = order.to_numpy()[repeated]  # grouped by event_id
    group = np.cumsum(np.concatenate([[True], ~same])[repeated])  # group number per repeated row
    cols: dict[str, pa.Array | np.ndarray] = {
        "group": group,
        "ingested_at": raw.column("ingested_at").take(rows).cast(pa.int64()),
        "row": rows,
    }
    has_hash = "payload_hash" in raw.column_names
    if has_hash:
        cols["payload_hash"] = raw.column("payload_hash").take(rows)
    keys = [("group", "ascending"), ("ingested_at", "ascending")]
    ordered = pa.table(cols).sort_by(keys + ([("payload_hash", "ascending")] if has_hash else []))
    g = ordered.column("group").to_numpy()
    first = np.concatenate([[True], g[1:] != g[:-1]])
    keep[rows] = False
    winners = ordered.column("row").to_numpy()[first]
    if has_hash:
        keep[winners] = True
        return keep, none
    at = ordered.column("ingested_at").to_numpy()
    tied = np.zeros(len(g), bool)
    tied[:-1] = ~first[1:] & (at[1:] == at[:-1]) & first[:-1]  # the runner-up ties with the winner
    keep[winners] = True
    keep[ordered.column("row").to_numpy()[tied]] = False
    return keep, ids.take(pa.array(ordered.column("row").to_numpy()[tied]))


def dedupe(raw: pa.Table) -> pa.Table:
    """First ingested copy of each event_id wins (:func:`fstore.core.dedupe.first_ingested_arrow`).

    ``raw`` needs ``event_id``, ``ingested_at`` and ``payload_hash``. Only the rows of repeated event_ids
    are ordered by the full key (see :func:`first_ingested_mask`). Row order of the result is unspecified.
    """
    if "payload_hash" not in raw.column_names:
        raise PointInTimeError("dedupe needs the payload_hash column (see first_ingested_mask)")
    keep, _ = first_ingested_mask(raw)
    return raw if keep.all() else raw.filter(pa.array(keep))


def _encoded(column: pa.ChunkedArray | pa.Array) -> tuple[I64, pa.Array]:
    """``(codes, dictionary)`` of a string column, ``-1`` for nulls; dictionary columns keep their codes."""
    if pa.types.is_dictionary(column.type):
        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        if any(c.dictionary.null_count for c in chunks):  # a Parquet file whose values are all null reads so
            column = column.cast(column.type.value_type)  # decode (Arrow cannot unify such dictionaries)
    if isinstance(column, pa.ChunkedArray):
        if pa.types.is_dictionary(column.type) and column.num_chunks > 1:
            column = pa.table({"c": column}).unify_dictionaries().column(0)  # one shared dictionary
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if not pa.types.is_dictionary(column.type):
        column = column.cast(pa.string()).dictionary_encode()
    codes = pc.fill_null(column.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    dictionary = column.dictionary
    if pc.count_distinct(dictionary, mode="all").as_py() != len(dictionary):  # re-encode repeated values
        return _encoded(column.dictionary_decode())
    if not (pa.types.is_string(dictionary.type) or pa.types.is_null(dictionary.type)):
        dictionary = dictionary.cast(pa.string())
    return codes, dictionary


class _Events:
    """De-duplicated events decoded once, with the rows of each needed event type, shared by every view.

    Args:
        events: the events table (:data:`EVENT_COLUMNS`).
        event_types: the event types the request measures.
    """

    def __init__(self, events: pa.Table, event_types: set[str]) -> None:
        self.table = events
        type_codes, types = _encoded(events.column("event_type"))
        names = types.to_pylist()
        times = events.column("event_time").cast(pa.int64()).to_numpy().astype(np.int64, copy=False)
        self.rows: dict[str, I64] = {}  # event type → its rows, in table order
        self.times: dict[str, I64] = {}
        for event_type in event_types:
            codes = [i for i, name in enumerate(names) if name == event_type]
            mask = type_codes == codes[0] if len(codes) == 1 else np.isin(type_codes, codes)
            self.rows[event_type] = rows = np.flatnonzero(mask)
            self.times[event_type] = times[rows]

    def revenue(self, event_type: str) -> F64:
        """price × quantity of the events of one type (a null price counts 0)."""
        rows = pa.array(self.rows[event_type])
        price = pc.fill_null(self.table.column("price").take(rows), 0.0).to_numpy(zero_copy_only=False)
        qty = self.table.column("quantity").take(rows).to_numpy(zero_copy_only=False)
        revenue: F64 = price.astype(np.float64) * qty
        return revenue


class _ViewEvents:
    """Events of one view's entity, per measure, sorted for window queries."""

    def __init__(self, view: FeatureView, events: _Events, wanted: set[str]) -> None:
        codes, self.dictionary = _encoded(events.table.column(view.entity.join_key))
        self.measures: dict[str, SortedMeasure] = {}
        for f in view.windowed:
            m = f.measure
            if m.name in self.measures or m.name not in wanted:
                continue
            c, t = codes[events.rows[m.event_type]], events.times[m.event_type]
            values = None
            if m.value is ValueKind.REVENUE:
                values = events.revenue(m.event_type)
            elif any(g.measure == m and g.agg in (Agg.MIN, Agg.MAX, Agg.AVG, Agg.SUM) for g in view.windowed):
                values = np.ones(len(c), np.float64)
            has_key = c >= 0
            if not has_key.all():  # events without this view's key (a page view without product_id)
                c, t, values = c[has_key], t[has_key], None if values is None else values[has_key]
            self.measures[m.name] = SortedMeasure(c, t, values, len(self.dictionary))

    def codes(self, keys: pa.Array) -> I64:
        """Entity code of each key, ``-1`` when the entity has no events (or the key is null)."""
        idx = pc.index_in(keys, value_set=self.dictionary)
        codes: I64 = pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        return codes


Column = tuple[np.ndarray, Bool | None]  # values, null mask (None: no nulls)


def _windowed_values(
    view: FeatureView, request: Request, ev: _ViewEvents, codes: I64, down: I64, up: I64
) -> dict[str, Column]:
    """Every windowed feature the request needs from ``view``, for rows sorted by ``(code, t)``."""
    needed = {w.name: w for v, f in request.features if v is view for w in _windowed_of(v, f)}
    out: dict[str, Column] = {}
    hi_cache: dict[str, I64] = {}
    lo_cache: dict[tuple[str, int], I64] = {}
    for name, f in needed.items():
        sm = ev.measures[f.measure.name]
        if f.measure.name not in hi_cache:
            hi_cache[f.measure.name] = sm.position(codes, up)
        hi = hi_cache[f.measure.name]
        lk = (f.measure.name, f.window)
        if lk not in lo_cache:
            lo_cache[lk] = sm.position(codes, tail(down, f.window, f.hop))  # the core's tail, on int64 arrays
        lo = lo_cache[lk]
        count = hi - lo
        if f.agg is Agg.COUNT:
            out[name] = (count, None)
        elif f.agg is Agg.SUM:
            out[name] = (sm.sums(lo, hi), None)
        elif f.agg is Agg.AVG:
            empty = count == 0
            with np.errstate(invalid="ignore", divide="ignore"):
                out[name] = (sm.sums(lo, hi) / np.where(empty, 1, count), empty)
        else:
            out[name] = sm.extreme(lo, hi, minimum=f.agg is Agg.MIN)
    return out


def _ratio(num: Column, den: Column) -> Column:
    n, d = num[0].astype(np.float64), den[0].astype(np.float64)
    null = d == 0
    for part in (num[1], den[1]):
        if part is not None:
            null |= part
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(null, np.nan, n / np.where(null, 1.0, d)), null


def compute(entity_rows: pd.DataFrame | pa.Table, request: Request, events: pa.Table) -> dict[str, Column]:
    """Feature columns (input row order) for a resolved request over de-duplicated events.

    Args:
        entity_rows: the entity dataframe (join key columns and ``event_timestamp``).
        request: from :func:`plan`.
        events: de-duplicated ``raw_events`` rows with at least :data:`EVENT_COLUMNS` (any order, any
            extra rows outside the windows are simply not counted).

    Returns:
        Output column name → ``(values, null mask)``.
    """
    keys, down, up = normalise(entity_rows, request)
    return compute_arrays(keys, down, up, request, events)


def normalise(entity_rows: pd.DataFrame | pa.Table, request: Request) -> tuple[dict[str, pa.Array], I64, I64]:
    """Validate the entity dataframe for a request and extract its join keys and times.

    Returns:
        ``(keys, down, up)``: join key column → string keys, and the row times in µs rounded down and up
        (see :func:`entity_times`).

    Raises:
        PointInTimeError: a missing or ill-typed column, or a feature name that clashes with an input column.
    """
    columns = list(entity_rows.columns) if isinstance(entity_rows, pd.DataFrame) else entity_rows.column_names
    clash = [n for n in request.names if n in columns]
    if clash:
        raise PointInTimeError(f"entity dataframe already has column(s) {', '.join(clash)}; rename them")
    down, up = entity_times(_column(entity_rows, TIMESTAMP_COLUMN))
    keys = {k: _keys(_column(entity_rows, k), k) for k in request.join_keys}
    return keys, down, up


def _row_order(codes: I64, times: I64) -> I64:
    """Order of the entity rows by ``(code, time)`` (one int64 sort key when it fits, else a lexsort)."""
    if len(codes) == 0:
        return np.zeros(0, np.int64)
    t0, span = int(times.min()), int(times.max()) - int(times.min()) + 1
    if (int(codes.max()) + 2) * span < 2**62:
        order: I64 = np.argsort((codes + 1) * span + (times - t0), kind="stable")
        return order
    by_pair: I64 = np.lexsort((times, codes))
    return by_pair


def compute_arrays(
    keys: dict[str, pa.Array], down: I64, up: I64, request: Request, events: pa.Table
) -> dict[str, Column]:
    """:func:`compute` on already normalised inputs (engines that ship rows elsewhere call this).

    Args:
        keys: join key column name → string keys, one per row.
        down: row times rounded down to the microsecond (see :func:`entity_times`).
        up: row times rounded up to the microsecond.
        request: from :func:`plan`.
        events: de-duplicated events with :data:`EVENT_COLUMNS` (``event_time`` timestamp or int64 µs;
            string columns plain or dictionary-encoded, chunks may carry different dictionaries).

    The views of a request are computed in parallel threads (from :data:`_PARALLEL_ROWS` rows on).
    """
    missing = [c for c in EVENT_COLUMNS if c not in events.column_names]
    if missing:
        raise PointInTimeError(f"events table lacks column(s) {', '.join(missing)}")
    shared = _Events(events, {w.measure.event_type for v, f in request.features for w in _windowed_of(v, f)})

    def one_view(view: FeatureView) -> dict[str, Column]:
        wanted = {w.measure.name for v, f in request.features if v is view for w in _windowed_of(v, f)}
        ev = _ViewEvents(view, shared, wanted)
        codes = ev.codes(keys[view.entity.join_key])
        order = _row_order(codes, up)  # rows sorted by (code, t): binary searches walk forward
        values = _windowed_values(view, request, ev, codes[order], down[order], up[order])
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        out: dict[str, Column] = {}
        for (v, f), name in zip(request.features, request.names, strict=True):
            if v is not view:
                continue
            col = _ratio(values[f.numerator], values[f.denominator]) if isinstance(f, RatioFeature) else values[f.name]
            out[name] = (col[0][inverse], None if col[1] is None else col[1][inverse])
        return out

    views = request.views
    if len(views) == 1 or len(up) < _PARALLEL_ROWS:
        parts = [one_view(v) for v in views]
    else:  # views are independent; numpy and Arrow release the GIL in their kernels
        with ThreadPoolExecutor(max_workers=min(len(views), os.cpu_count() or 1)) as pool:
            parts = list(pool.map(one_view, views))
    return {name: col for part in parts for name, col in part.items()}


def _arrow(col: Column, dtype: str) -> pa.Array:
    values, null = col
    typ = pa.int64() if dtype == "int64" else pa.float64()
    return pa.array(values.astype(dtype), typ, mask=null)


def point_in_time(
    entity_rows: Frame, refs: Sequence[str], events: pa.Table, *, full_feature_names: bool = False
) -> Frame:
    """Point-in-time correct feature values for every entity row (docs/design.md §3, §6).

    Args:
        entity_rows: pandas DataFrame or Arrow table with ``event_timestamp`` (naive = UTC) and the join
            key column(s) of the requested views (``user_id``, ``product_id``). Both views may be
            requested together when both key columns are present.
        refs: ``view:feature`` or whole-``view`` references (resolved with :func:`fstore.core.features.resolve`).
        events: de-duplicated ``raw_events`` rows (see :func:`dedupe`) covering at least
            ``[min t - lookback, max t)``.
        full_feature_names: name output columns ``view__feature`` instead of ``feature``.

    Returns:
        The same type as ``entity_rows``: all input columns in input order, then one column per feature
        (int64 counts; float64 otherwise with nulls — NaN in pandas — for empty avg/min/max/ratio).

    Raises:
        PointInTimeError: a missing column, an unknown view/feature, a feature column clashing with an
            input column, a null or non-timestamp ``event_timestamp``.
    """
    request = plan(refs, full_feature_names)
    values = compute(entity_rows, request, events)
    dtypes = {n: f.dtype for (_, f), n in zip(request.features, request.names, strict=True)}
    if isinstance(entity_rows, pd.DataFrame):
        out = entity_rows.copy()
        for name, (vals, null) in values.items():
            out[name] = vals.astype(dtypes[name]) if null is None else np.where(null, np.nan, vals)
        return out
    table = entity_rows
    for name, col in values.items():
        table = table.append_column(name, _arrow(col, dtypes[name]))
    return table


def event_range(entity_rows: pd.DataFrame | pa.Table, refs: Sequence[str]) -> tuple[int, int] | None:
    """``[start, end)`` of the event times a request can count, UTC µs (``None`` for no rows).

    ``start = min t - longest window - largest hop`` of the requested features, ``end = max t``; readers
    prune ``raw_events`` partitions with it.
    """
    request = plan(refs, full_feature_names=True)  # output names play no part in the range
    down, up = entity_times(_column(entity_rows, TIMESTAMP_COLUMN))
    if len(down) == 0:
        return None
    return int(down.min()) - request.lookback(), int(up.max())
