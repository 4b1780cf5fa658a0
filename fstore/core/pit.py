"""Point-in-time engine for training data (docs/design.md §3 and §6), pure numpy/pandas/pyarrow.

:func:`point_in_time` returns, for every row of an entity dataframe, ``value(e, t)`` of the requested
features of a compiled :class:`~fstore.core.plan.Plan` with ``t`` = the row's ``event_timestamp``
(exclusive) and ``tail(t) = floor(t - W, hop)`` (``hop`` = the feature's declared slide or the default).

Every function of the plan: count, sum, mean, min, max (prefix sums and sparse tables over the events
sorted by entity and time), std and var (sample, n - 1, from centred long-double prefix sums), exact
count_distinct (a merge-sort tree over each event's previous occurrence), and ratios.

Row contract: one output row per input row, in input order, every input column kept (labels included),
duplicate rows kept; an entity without events in the window gets count/sum/count_distinct 0 and
mean/min/max/std/var/ratio null (std/var also below two values). Naive timestamps are UTC. Adapters
(:mod:`fstore.offline.local`, :mod:`fstore.offline.spark`, :mod:`fstore.feast.offline_store`) only read
``raw_events`` and call this module.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fstore.core.expr import columns
from fstore.core.functions import Function
from fstore.core.huge_pages import small_pages
from fstore.core.pit_events import EncodedEvents, Keep, Once, ViewEvents
from fstore.core.pit_kernels import F64, I64, Bool, SortedMeasure, radix_order
from fstore.core.plan import Feature, Plan, RatioFeature, View, WindowedFeature
from fstore.core.timeutil import MILLISECOND, SECOND
from fstore.core.windows import tail

TIMESTAMP_COLUMN = "event_timestamp"
#: Columns of ``raw_events`` that de-duplication needs besides the plan's id field.
DEDUPE_COLUMNS = ("ingested_at", "payload_hash")

Frame = TypeVar("Frame", pd.DataFrame, pa.Table)
#: Below this many entity rows the work runs in the calling thread (threads would not pay off).
_PARALLEL_ROWS = 50_000


class PointInTimeError(ValueError):
    """Invalid point-in-time request; the message names the problem (column, feature or view)."""


@dataclass(frozen=True)
class Request:
    """A resolved request: the plan, the features in output order and their output column names."""

    plan: Plan
    features: tuple[tuple[View, Feature], ...]
    names: tuple[str, ...]

    @property
    def views(self) -> tuple[View, ...]:
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

    def event_columns(self) -> tuple[str, ...]:
        """The event fields the request reads: the timestamp field, the views' join keys and every field
        a requested measure's value or filter reads (in the schema's order)."""
        wanted = {self.plan.schema.timestamp_field, *self.join_keys}
        for v, f in self.features:
            for w in _windowed_of(v, f):
                m = v.measure(w.measure)
                wanted |= columns(m.value) | (columns(m.where) if m.where is not None else frozenset())
        return tuple(n for n in self.plan.schema.names if n in wanted)


def _windowed_of(view: View, feature: Feature) -> tuple[WindowedFeature, ...]:
    if isinstance(feature, RatioFeature):
        num, den = view.feature(feature.numerator), view.feature(feature.denominator)
        assert isinstance(num, WindowedFeature) and isinstance(den, WindowedFeature)
        return (num, den)
    return (feature,)


def resolve(plan: Plan, refs: Sequence[str], full_feature_names: bool = False) -> Request:
    """Resolve feature references (``view:feature`` or a whole ``view``) of ``plan`` into a :class:`Request`.

    Raises:
        PointInTimeError: no reference, an unknown view or feature, or two features with the same output
            name (use ``full_feature_names=True``: names become ``view__feature``).
    """
    if isinstance(refs, str):
        refs = [refs]
    if not refs:
        raise PointInTimeError("no features requested: pass refs like 'view:feature' or a view name")
    try:
        features = plan.resolve(list(refs))
    except KeyError as exc:
        raise PointInTimeError(exc.args[0]) from None
    names = tuple(f"{v.name}__{f.name}" if full_feature_names else f.name for v, f in features)
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise PointInTimeError(
            f"feature name(s) {', '.join(dup)} requested from several views; "
            "pass full_feature_names=True to get view__feature columns"
        )
    return Request(plan, tuple(features), names)


def to_utc(series: pd.Series) -> pd.Series:
    """Timestamps given as text or Python objects, as UTC: naive ones are UTC, the others are converted.

    Each value is read on its own (``format="mixed"``): with one format inferred for the column, pandas
    would read a naive value after one with an offset in that offset.

    A number is refused: it has no unit (pandas would read epoch milliseconds as nanoseconds, in 1970).
    Instants outside pandas' nanosecond range (1677–2262) are read value by value in microseconds, as a
    ``datetime64[us]`` column holds them.

    Raises:
        ValueError, TypeError: a value that is not a timestamp.
    """
    if pd.api.types.is_datetime64_any_dtype(series):
        return pd.to_datetime(series, utc=True)
    kind = pd.api.types.infer_dtype(series, skipna=True)  # in C: text columns skip the search below
    number = (
        None
        if kind in ("string", "datetime", "datetime64", "date", "empty")
        else next((v for v in series if isinstance(v, int | float | np.number) and not pd.isna(v)), None)
    )
    if number is not None:
        raise TypeError(f"{number!r} is a number, not a timestamp: give datetimes or ISO-8601 text (naive = UTC)")
    with _unknown_zones_refused():
        try:
            return pd.to_datetime(series, utc=True, format="mixed")
        except pd.errors.OutOfBoundsDatetime:
            return pd.Series([_utc_us(v) for v in series], index=series.index, name=series.name, dtype=_UTC_US)


@contextmanager
def _unknown_zones_refused() -> Iterator[None]:
    """Text naming a zone pandas does not know (``10:00 PST``, ``10:00 CET``) is refused: pandas drops the
    name with a FutureWarning and reads the rest as naive, which here means UTC — hours off, silently."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*un-recognized timezone", category=FutureWarning)
            yield
    except FutureWarning as exc:  # 'Parsed string "<text>" included an un-recognized timezone "<zone>". ...'
        text, found, zone = str(exc).removeprefix("Parsed string ").partition(" included an un-recognized timezone ")
        if not found:  # another FutureWarning, raised because the caller runs with -W error
            raise
        raise ValueError(
            f"{text} names a time zone that cannot be read ({zone.split('.')[0]}): "
            "give an offset (+05:30, -08:00, Z) or none (UTC)"
        ) from None


_UTC_US = "datetime64[us, UTC]"


def _utc_us(value: object) -> pd.Timestamp:
    """One timestamp (text or object, naive = UTC) in UTC microseconds, whatever its year (1–9999)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return pd.NaT
    try:
        t = pd.Timestamp(value)
        t = (t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")).as_unit("us")
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{value!r} is not a timestamp between years 1 and 9999 ({exc})") from None
    if not 1 <= t.year <= 9999:  # year 0 in UTC (an offset before 0001-01-01): pandas would wrap it silently
        raise ValueError(f"{value!r} is not a timestamp between years 1 and 9999 UTC")
    return t


def _column(frame: pd.DataFrame | pa.Table, name: str) -> pa.Array:
    names = list(frame.columns) if isinstance(frame, pd.DataFrame) else frame.column_names
    if name not in names:
        raise PointInTimeError(f"entity dataframe has no column '{name}' (columns: {', '.join(map(str, names))})")
    if isinstance(frame, pd.DataFrame):
        series = frame[name]
        if name == TIMESTAMP_COLUMN and not pd.api.types.is_datetime64_any_dtype(series):
            try:
                series = to_utc(series)
            except (ValueError, TypeError) as exc:
                raise PointInTimeError(f"column '{name}' is not a timestamp: {exc}") from None
        try:
            return pa.Array.from_pandas(series)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:  # e.g. numbers and text mixed
            raise PointInTimeError(f"column '{name}' holds values of mixed or unsupported types: {exc}") from None
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


def first_ingested_mask(raw: pa.Table, id_field: str) -> tuple[Bool, pa.Array]:
    """Which rows of ``raw_events`` are the winning copy of their event id (first ingested wins).

    Same rule as :func:`fstore.core.dedupe.first_ingested_arrow`: copies are ordered by ``(ingested_at,
    payload_hash)``. Most event_ids are unique, so repeated ids are found with one single-key sort of
    ``event_id`` and only their rows are ordered by the full key; unique rows are kept as they are.

    Args:
        raw: ``raw_events`` rows with the id field and ``ingested_at``; ``payload_hash`` is optional — it
            only breaks ties between copies ingested at the same instant, which are rare.
        id_field: the plan's event id field (``schema.id_field``).

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
    ids = raw.column(id_field).combine_chunks()
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


def dedupe(raw: pa.Table, id_field: str) -> pa.Table:
    """First ingested copy of each event id wins (:func:`fstore.core.dedupe.first_ingested_arrow`).

    ``raw`` needs the id field, ``ingested_at`` and ``payload_hash``. Only the rows of repeated event_ids
    are ordered by the full key (see :func:`first_ingested_mask`). Row order of the result is unspecified.
    """
    if "payload_hash" not in raw.column_names:
        raise PointInTimeError("dedupe needs the payload_hash column (see first_ingested_mask)")
    keep, _ = first_ingested_mask(raw, id_field)
    return raw if keep.all() else raw.filter(pa.array(keep))


Column = tuple[np.ndarray, Bool | None]  # values, null mask (None: no nulls)


class _ViewJob:
    """One view's share of a request: its entity rows sorted by ``(code, t)`` and the window bounds' search keys.

    The measures of all views are then sorted and queried as separate tasks (:func:`compute_arrays`), each
    with :meth:`measure_values`; :meth:`columns` puts the view's features back in input order.
    """

    def __init__(
        self,
        view: View,
        request: Request,
        shared: EncodedEvents,
        keys: pa.Array,
        down: I64,
        up: I64,
        by_time: Callable[[], I64],
    ) -> None:
        self.view = view
        self.request = request
        self.ev = ViewEvents(view, shared)
        codes = self.ev.codes(keys)
        self.order = _row_order(codes, by_time())  # rows sorted by (code, t): binary searches walk forward
        self.codes, self.down, self.up = codes[self.order], down[self.order], up[self.order]
        #: measure name → the windowed features of the request that read it
        self.by_measure: dict[str, dict[str, WindowedFeature]] = {}
        for v, f in request.features:
            if v is view:
                for w in _windowed_of(v, f):
                    self.by_measure.setdefault(w.measure, {})[w.name] = w
        self._bounds: Once[tuple[int, int], I64] = Once()
        self._needles: Once[tuple[object, ...], I64] = Once()  # measures of one key space share them

    def _position(self, sm: SortedMeasure, window: int, hop: int) -> I64:
        bound = self._bounds.get(
            (window, hop), lambda: self.up if (window, hop) == (0, 0) else tail(self.down, window, hop)
        )
        space = sm.key_space
        if space is None:
            return sm.position(self.codes, bound)
        return sm.position_of(self._needles.get((space, window, hop), lambda: sm.needles(self.codes, bound)))

    def measure_values(self, measure: str) -> dict[str, Column]:
        """The request's windowed features over ``measure`` (rows in ``(code, t)`` order): sort its events,
        search each window bound once."""
        self.ev.build({measure})
        sm = self.ev.measures[measure]
        hi = self._position(sm, 0, 0)
        ranges: dict[tuple[int, int], _Range] = {}
        out: dict[str, Column] = {}
        for name, f in self.by_measure[measure].items():
            if (f.window, f.hop) not in ranges:
                ranges[f.window, f.hop] = _Range(sm, self._position(sm, f.window, f.hop), hi)
            out[name] = _function(f.function, ranges[f.window, f.hop], self.ev.members.get(measure))
        return out

    def columns(self, values: dict[str, Column]) -> dict[str, Column]:
        """The view's requested features in input row order (ratios from their two counts)."""
        inverse = np.empty_like(self.order)
        inverse[self.order] = np.arange(len(self.order))
        out: dict[str, Column] = {}
        for (v, f), name in zip(self.request.features, self.request.names, strict=True):
            if v is not self.view:
                continue
            col = _ratio(values[f.numerator], values[f.denominator]) if isinstance(f, RatioFeature) else values[f.name]
            out[name] = (col[0][inverse], None if col[1] is None else col[1][inverse])
        return out


class _Range:
    """The index ranges ``[lo, hi)`` of one window over a sorted measure; the count and the sums are made
    once for the window's features (a sum and a mean of one window share them)."""

    def __init__(self, sm: SortedMeasure, lo: I64, hi: I64) -> None:
        self.sm, self.lo, self.hi = sm, lo, hi
        self._count: I64 | None = None
        self._sums: F64 | None = None

    @property
    def count(self) -> I64:
        if self._count is None:
            self._count = self.hi - self.lo
        return self._count

    @property
    def sums(self) -> F64:
        if self._sums is None:
            self._sums = self.sm.sums(self.lo, self.hi)
        return self._sums


def _function(function: Function, r: _Range, members: I64 | None) -> Column:
    """``function`` over the index ranges of a sorted measure, with §3's empty-window rules (the arrays
    returned may be shared between features of one window: callers do not write into them)."""
    sm, lo, hi = r.sm, r.lo, r.hi
    if function is Function.COUNT:
        return r.count, None
    if function is Function.SUM:
        return r.sums, None
    if function is Function.COUNT_DISTINCT:
        assert members is not None, "count_distinct needs the members"
        return sm.distinct(lo, hi, members), None
    if function is Function.MIN or function is Function.MAX:
        return sm.extreme(lo, hi, minimum=function is Function.MIN)
    count = r.count
    with np.errstate(invalid="ignore", divide="ignore"):
        if function is Function.MEAN:
            empty = count == 0
            return r.sums / np.where(empty, 1, count), empty
        few = count < 2
        var = sm.m2(lo, hi) / np.where(few, 1, count - 1)
        return (var if function is Function.VAR else np.sqrt(var)), few


def _ratio(num: Column, den: Column) -> Column:
    n, d = num[0].astype(np.float64), den[0].astype(np.float64)  # copies: the counts stay as they are
    null = d == 0
    for part in (num[1], den[1]):
        if part is not None:
            null |= part
    np.copyto(d, 1.0, where=null)
    with np.errstate(invalid="ignore", divide="ignore"):
        np.divide(n, d, out=n)  # a null row's value is never read (the mask says null)
    return n, null


def compute(
    entity_rows: pd.DataFrame | pa.Table, request: Request, events: pa.Table, keep: Keep = None
) -> dict[str, Column]:
    """Feature columns (input row order) for a resolved request over de-duplicated events.

    Args:
        entity_rows: the entity dataframe (join key columns and ``event_timestamp``).
        request: from :func:`resolve`.
        events: de-duplicated ``raw_events`` rows with the columns of :meth:`Request.event_columns` (any
            order; rows outside the windows are simply not counted; a field the table lacks is null).
        keep: which rows of ``events`` count (see :func:`compute_arrays`).

    Returns:
        Output column name → ``(values, null mask)``.
    """
    keys, down, up = normalise(entity_rows, request)
    return compute_arrays(keys, down, up, request, events, keep)


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
    return entity_rows_of(entity_rows, request.join_keys)


def entity_rows_of(
    entity_rows: pd.DataFrame | pa.Table, join_keys: Sequence[str]
) -> tuple[dict[str, pa.Array], I64, I64]:
    """The join key columns ``join_keys`` of an entity dataframe as string keys, and its row times in µs
    rounded down and up (see :func:`entity_times`).

    Raises:
        PointInTimeError: a missing or ill-typed column.
    """
    down, up = entity_times(_column(entity_rows, TIMESTAMP_COLUMN))
    keys = {k: _keys(_column(entity_rows, k), k) for k in join_keys}
    return keys, down, up


def _row_order(codes: I64, by_time: I64) -> I64:
    """Order of the entity rows by ``(code, time)``, ties in input order.

    ``by_time`` is the rows' stable order by time, shared by every view: a stable sort by code of it
    (:func:`~fstore.core.pit_kernels.radix_order`) gives the order without sorting 64-bit keys once per view.
    """
    if len(codes) == 0:
        return np.zeros(0, np.int64)
    shifted = codes[by_time] + 1  # -1 (no events) first
    high = int(shifted.max())
    if high >= 2**32:  # not reached with real key counts: sort the pairs
        by_pair: I64 = by_time[np.lexsort((np.arange(len(codes)), shifted))]
        return by_pair
    ordered: I64 = by_time[radix_order(shifted, high)]
    return ordered


def compute_arrays(
    keys: dict[str, pa.Array], down: I64, up: I64, request: Request, events: pa.Table, keep: Keep = None
) -> dict[str, Column]:
    """:func:`compute` on already normalised inputs (engines that ship rows elsewhere call this).

    Args:
        keys: join key column name → string keys, one per row.
        down: row times rounded down to the microsecond (see :func:`entity_times`).
        up: row times rounded up to the microsecond.
        request: from :func:`resolve`.
        events: de-duplicated events (the timestamp field as timestamp or int64 µs; string columns plain
            or dictionary-encoded, chunks may carry different dictionaries; missing fields are null).
        keep: which rows of ``events`` count: ``None`` (all: ``events`` is de-duplicated already) or a
            boolean mask (the de-duplication winners of copies read as they are stored, so the caller
            need not copy them into a new table: :mod:`fstore.offline.local`).

    From :data:`_PARALLEL_ROWS` rows on the work runs in threads (one per core): the views' row orders, the
    measures' filters and values, then one task per (view, measure) — sort its events, search the window
    bounds, evaluate its functions — largest first, then each view's columns in input order. numpy's huge
    pages are off meanwhile (:func:`fstore.core.huge_pages.small_pages`).
    """
    ts = request.plan.schema.timestamp_field
    if ts not in events.column_names:
        raise PointInTimeError(f"events table lacks the timestamp field '{ts}'")
    with small_pages():  # fewer CPU-s of page faults in the many large temporaries (fstore.core.huge_pages)
        return _compute_arrays(keys, down, up, request, events, keep)


def _compute_arrays(
    keys: dict[str, pa.Array], down: I64, up: I64, request: Request, events: pa.Table, keep: Keep
) -> dict[str, Column]:
    shared = EncodedEvents(events, request.plan.schema, keep)
    views = request.views
    pool = None if len(up) < _PARALLEL_ROWS else ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    run = map if pool is None else pool.map  # numpy and Arrow release the GIL in their kernels
    try:
        # every view orders its rows from one time sort (submitted first: beside the first view's encoding)
        def sort() -> I64:
            by: I64 = np.argsort(up, kind="stable")
            return by

        by_time = sort if pool is None else pool.submit(sort).result
        jobs = list(run(lambda v: _ViewJob(v, request, shared, keys[v.entity.join_key], down, up, by_time), views))
        tasks = [(job, m) for job in jobs for m in job.by_measure]
        # each distinct measure once (views' equal measures share one result: no thread waits for another)
        same = {t: (t[0].view.measure(t[1]).value, t[0].view.measure(t[1]).where) for t in tasks}
        measures = {same[t]: t[0].view.measure(t[1]) for t in tasks}
        rows = dict(zip(measures, run(lambda m: len(shared.measured(m)[0]), measures.values()), strict=True))
        tasks.sort(key=lambda t: -rows[same[t]])  # the largest first: the threads finish together
        values: dict[_ViewJob, dict[str, Column]] = {job: {} for job in jobs}
        for (job, _), part in zip(tasks, run(lambda t: t[0].measure_values(t[1]), tasks), strict=True):
            values[job].update(part)
        parts = list(run(lambda job: job.columns(values[job]), jobs))
    finally:
        if pool is not None:
            pool.shutdown()
    return {name: col for part in parts for name, col in part.items()}


def _arrow(col: Column, dtype: str) -> pa.Array:
    values, null = col
    typ = pa.int64() if dtype == "int64" else pa.float64()
    return pa.array(values.astype(dtype, copy=False), typ, mask=null)


def point_in_time(
    plan: Plan,
    entity_rows: Frame,
    refs: Sequence[str],
    events: pa.Table,
    *,
    full_feature_names: bool = False,
    keep: Keep = None,
) -> Frame:
    """Point-in-time correct feature values for every entity row (docs/design.md §3, §6).

    Args:
        plan: the compiled plan the features come from.
        entity_rows: pandas DataFrame or Arrow table with ``event_timestamp`` (naive = UTC) and the join
            key column of every requested view (views of several entities may be requested together).
        refs: ``view:feature`` or whole-``view`` references (resolved with :meth:`Plan.resolve`).
        events: de-duplicated ``raw_events`` rows (see :func:`dedupe`) covering at least
            ``[min t - lookback, max t)``.
        full_feature_names: name output columns ``view__feature`` instead of ``feature``.
        keep: which rows of ``events`` count (``None``: all; see :func:`compute_arrays`).

    Returns:
        The same type as ``entity_rows``: all input columns in input order, then one column per feature
        (int64 counts; float64 otherwise with nulls — NaN in pandas — for empty mean/min/max/std/var/ratio).

    Raises:
        PointInTimeError: a missing column, an unknown view/feature, a feature column clashing with an
            input column, a null or non-timestamp ``event_timestamp``.
    """
    request = resolve(plan, refs, full_feature_names)
    with small_pages():
        return _point_in_time(entity_rows, request, events, keep)


def _point_in_time(entity_rows: Frame, request: Request, events: pa.Table, keep: Keep) -> Frame:
    values = compute(entity_rows, request, events, keep)
    dtypes = {n: f.dtype for (_, f), n in zip(request.features, request.names, strict=True)}
    if isinstance(entity_rows, pd.DataFrame):
        out = entity_rows.copy()
        for name, (vals, null) in values.items():  # the columns are the engine's own arrays: no copies
            if null is None:
                out[name] = vals.astype(dtypes[name], copy=False)
            elif vals.dtype == np.float64:
                np.copyto(vals, np.nan, where=null)
                out[name] = vals
            else:
                out[name] = np.where(null, np.nan, vals)
        return out
    table = entity_rows
    for name, col in values.items():
        table = table.append_column(name, _arrow(col, dtypes[name]))
    return table


def event_range(plan: Plan, entity_rows: pd.DataFrame | pa.Table, refs: Sequence[str]) -> tuple[int, int] | None:
    """``[start, end)`` of the event times a request can count, UTC µs (``None`` for no rows).

    ``start = min t - longest window - largest hop`` of the requested features, ``end = max t``; readers
    prune ``raw_events`` partitions with it.
    """
    request = resolve(plan, refs, full_feature_names=True)  # output names play no part in the range
    down, up = entity_times(_column(entity_rows, TIMESTAMP_COLUMN))
    if len(down) == 0:
        return None
    return int(down.min()) - request.lookback(), int(up.max())
