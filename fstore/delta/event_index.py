"""Where the winning copy of every stored event_id lies: the writers' index of ``raw_events`` (docs/design.md §2).

Copies of one event_id may carry different event_times, so they can land in different ``event_date``
partitions, and a reader that reads some partitions only (the nightly batch, a point-in-time request)
cannot see a copy that won on another day. The writers can: before they append, they know every event_id
already stored. :class:`EventIndex` is that knowledge, kept in memory by each writer (``fstore ingest``,
the stream worker's raw sink) and caught up from the Delta log before each append:

* a copy whose event_id is already stored on *another* day lost (the stored copy arrived first). The raw
  sink still stores it, but first records ``(event_id, event_date)`` in the small Delta table
  ``raw_events_superseded`` (:mod:`fstore.delta.raw_log`); ``fstore ingest`` does not store it at all.
  Readers drop the copies of the superseded pairs of the days they read, then de-duplicate within what
  they read as before — so they never need another day's partition;
* copies on the *same* day as the winner need nothing: every reader of that day sees them all.

The index maps a 64-bit hash of each event_id to the day of its winning copy: 12 bytes per event_id,
sorted numpy arrays searched a batch at a time. A hash is only a hint: whenever it names another day the
copies are read back from those days' partitions (event_id filter) and the decision is taken on the exact
ids, so a collision can cost a read, never a wrong decision. Cross-day copies are rare, so that read is too.

Concurrent writers: marks are committed before the rows they cover, and every catch-up checks the
committed rows it has not seen yet. Two writers that stored copies of one event_id on different days
without seeing each other (both within the instant between catch-up and commit) are reconciled by the
next catch-up of either: the copy with the smaller ``(ingested_at, payload_hash)`` wins and the other
day is marked. The decision depends on the data only, so every writer takes the same one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import TypeAlias
from urllib.parse import unquote

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import DeltaTable

from fstore.core.timeutil import DAY, day_start, to_date
from fstore.delta import raw_log

log = logging.getLogger(__name__)

U64 = npt.NDArray[np.uint64]
I32 = npt.NDArray[np.int32]
I8 = npt.NDArray[np.int8]

#: Verdicts of :meth:`EventIndex.classify`, per copy.
NEW, SAME_DAY, SUPERSEDED = 0, 1, 2
_UNKNOWN, _AMBIGUOUS = -1, -2
_M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)


def _mix(h: U64) -> U64:
    """The splitmix64 finaliser (a bijection that spreads every input bit over the output)."""
    h = h ^ (h >> np.uint64(30))
    h = h * _M2
    h = h ^ (h >> np.uint64(27))
    h = h * _M3
    return h ^ (h >> np.uint64(31))


def id_hashes(ids: pa.Array | pa.ChunkedArray | Sequence[str]) -> U64:
    """64-bit hashes of event_ids (vectorised over the Arrow buffers: eight bytes per numpy pass)."""
    arr = ids if isinstance(ids, pa.Array | pa.ChunkedArray) else pa.array(ids, pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    arr = arr.cast(pa.large_string())
    n = len(arr)
    if n == 0:
        return np.empty(0, np.uint64)
    _, off_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(off_buf, np.int64, n + 1, arr.offset * 8)
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.empty(0, np.uint8)
    lengths = np.diff(offsets)
    padded = np.concatenate([data[: offsets[-1]], np.zeros(8, np.uint8)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, 8)
    h = _mix(lengths.astype(np.uint64) * _M1 + np.uint64(0x632BE59BD9B4E019))
    for k in range(int(-(-int(lengths.max()) // 8))):
        left = lengths - 8 * k
        live = left > 0
        starts = np.minimum(offsets[:-1] + 8 * k, len(padded) - 8)
        words = np.ascontiguousarray(windows[starts]).view("<u8").ravel()
        keep = np.clip(left, 0, 8).astype(np.uint64) * np.uint64(8)
        mask = np.where(keep >= 64, np.uint64(0xFFFFFFFFFFFFFFFF), (np.uint64(1) << (keep % np.uint64(64))) - 1)
        h = np.where(live, _mix((h ^ (words & mask)) * _M1 + np.uint64(k)), h)
    return h


Ids: TypeAlias = Sequence[str] | pa.Array | pa.ChunkedArray


def _pick(ids: Ids, rows: list[int]) -> list[str]:
    """``ids[rows]`` as Python strings (Arrow or a sequence)."""
    if isinstance(ids, pa.Array | pa.ChunkedArray):
        return ids.take(pa.array(rows, pa.int64())).to_pylist()  # type: ignore[no-any-return]
    return [ids[i] for i in rows]


def _days(dates: pa.Array | pa.ChunkedArray) -> I32:
    """UTC day numbers of a date32 column."""
    return np.asarray(pc.cast(dates, pa.int32()).to_numpy(zero_copy_only=False), np.int32)


_EMPTY_ROWS = pa.schema([("event_id", pa.string()), ("event_date", pa.date32())]).empty_table()


def _added(fs: pafs.FileSystem, root: str, version: int) -> list[tuple[str, date]]:
    """``(path relative to the table, event_date)`` of the files that commit ``version`` added (its
    ``_delta_log`` entry: one JSON action per line)."""
    with fs.open_input_stream(f"{root}/_delta_log/{version:020d}.json") as f:
        lines = f.read().splitlines()
    out = []
    for line in lines:
        add = orjson.loads(line).get("add") if line.strip() else None
        if add is not None:
            out.append((unquote(add["path"]), date.fromisoformat(add["partitionValues"]["event_date"])))
    return out


def _with_date(ids: pa.Table, day: date, id_column: str) -> pa.Table:
    """``event_id`` rows (the id column of one file) with their partition's ``event_date``."""
    return pa.table(
        {"event_id": ids.column(id_column), "event_date": pa.array([day] * ids.num_rows, pa.date32())},
        schema=_EMPTY_ROWS.schema,
    )


@dataclass
class _Run:
    """Sorted ``(hash, day)`` entries."""

    h: U64 = field(default_factory=lambda: np.empty(0, np.uint64))
    d: I32 = field(default_factory=lambda: np.empty(0, np.int32))

    def insert(self, h: U64, d: I32) -> None:
        order = np.argsort(h, kind="stable")
        h, d = h[order], d[order]
        at = np.searchsorted(self.h, h)
        self.h, self.d = np.insert(self.h, at, h), np.insert(self.d, at, d)


class EventIndex:
    """Every event_id in ``raw_events`` → the UTC day of its winning copy (see the module docstring).

    Args:
        raw_uri: the ``raw_events`` table.
        superseded_uri: its table of superseded ``(event_id, event_date)`` pairs (default: beside it).
        id_column: the column of ``raw_events`` holding the id (the plan's id field).
    """

    def __init__(self, raw_uri: str, superseded_uri: str | None = None, id_column: str = "event_id") -> None:
        self.raw_uri, self.id_column = raw_uri, id_column
        self.superseded_uri = superseded_uri or raw_log.superseded_uri(raw_uri)
        self._base, self._recent = _Run(), _Run()
        self._table: DeltaTable | None = None
        self._version = -1
        self._marks: set[tuple[str, int]] = set()
        self._marks_version = -1
        self.loaded_rows = 0

    def __len__(self) -> int:
        return len(self._base.h) + len(self._recent.h)

    @property
    def snapshot(self) -> DeltaTable | None:
        """The ``raw_events`` table at the version the index has caught up with (``None``: no table yet)."""
        return self._table

    # -- catching up with the Delta log -------------------------------------------------------------------

    def refresh(self) -> None:
        """Catch up with rows committed since the last call (all of them the first time): index their
        event_ids and reconcile cross-day copies that no mark covers (see the module docstring).

        After the first load only the files the new commits added are read (from their Delta log
        entries), so a catch-up costs what was written since, whatever the size of the table.
        """
        if self._table is None:
            self._table = raw_log.open_table(self.raw_uri)
            if self._table is None:
                self._load_marks()
                return
        else:
            self._table.update_incremental()
        version = self._table.version()
        if version == self._version:
            return
        rows = self._rows_since(self._version, version)
        self._version = version
        self._load_marks()  # after the raw snapshot: every mark of a row seen above is committed by now
        self.loaded_rows += rows.num_rows
        if rows.num_rows:
            self._absorb(rows)

    def committed(self) -> None:
        """Called after this writer's own append: when nobody else committed in between, the new version
        is only that append, whose event_ids :meth:`record` indexes, so no catch-up reads it back."""
        if self._table is None:
            self._table = raw_log.open_table(self.raw_uri)
            if self._table is not None and self._table.version() == 0 and self._version == -1:
                self._version = 0  # this append created the table
            return
        self._table.update_incremental()
        if self._table.version() == self._version + 1:
            self._version = self._table.version()

    def _rows_since(self, known: int, version: int) -> pa.Table:
        """``event_id, event_date`` of the rows added after version ``known`` up to ``version`` (every row
        when ``known`` is negative or a log entry is gone)."""
        assert self._table is not None
        if known >= 0:
            try:
                fs, root = raw_log.filesystem(self.raw_uri)
                parts = [
                    _with_date(
                        pq.read_table(f"{root}/{path}", columns=[self.id_column], filesystem=fs), day, self.id_column
                    )
                    for v in range(known + 1, version + 1)
                    for path, day in _added(fs, root, v)
                ]
                return pa.concat_tables(parts) if parts else _EMPTY_ROWS
            except (OSError, KeyError, ValueError) as exc:  # log entries cleaned up, or an unexpected action
                log.warning("raw_events: catching up from the Delta log failed (%s); reading the whole table", exc)
        rows = self._table.to_pyarrow_dataset().to_table(columns=[self.id_column, "event_date"])
        return rows.rename_columns(["event_id", "event_date"])

    def _load_marks(self) -> None:
        table = raw_log.open_table(self.superseded_uri)
        if table is None or table.version() == self._marks_version:
            return
        marks = table.to_pyarrow_dataset().to_table(columns=["event_id", "event_date"])
        self._marks = set(
            zip(marks.column("event_id").to_pylist(), _days(marks.column("event_date")).tolist(), strict=True)
        )
        self._marks_version = table.version()

    def _absorb(self, rows: pa.Table) -> None:
        """Index committed rows: new event_ids go in; an event_id found on a day other than its winner's
        must be covered by a mark, or it is a race between writers to reconcile now."""
        pairs = rows.group_by(["event_id", "event_date"], use_threads=False).aggregate([])
        ids = pairs.column("event_id").combine_chunks()
        days = _days(pairs.column("event_date"))
        h = id_hashes(ids)
        known = self._lookup(h)
        counts = np.unique(h, return_counts=True)
        single = np.isin(h, counts[0][counts[1] == 1])  # one (id, day) pair of this hash among the new rows
        add = single & (known == _UNKNOWN)
        same = single & (known == days)
        self._insert(h[add], days[add])
        rest = ~(add | same)
        if not rest.any():
            return
        by_id: dict[str, set[int]] = {}
        for i in np.flatnonzero(rest).tolist():
            by_id.setdefault(ids[i].as_py(), set()).add(int(days[i]))
        self._reconcile(by_id)

    def _reconcile(self, new_days: dict[str, set[int]]) -> None:
        """For event_ids seen on more than one day: make sure exactly one day is unmarked and indexed."""
        hashes = id_hashes(list(new_days))
        where = self._candidates(hashes)
        wanted = {eid: days | where[i] for i, (eid, days) in enumerate(new_days.items())}
        present = self._present(wanted)
        winners = self._winners(present)
        add_h, add_d = [], []
        for i, eid in enumerate(new_days):
            w = winners.get(eid)
            if w is not None and w not in where[i]:
                add_h.append(hashes[i])
                add_d.append(w)
        self._insert(np.array(add_h, np.uint64), np.array(add_d, np.int32))

    # -- lookups ------------------------------------------------------------------------------------------

    def _insert(self, h: U64, d: I32) -> None:
        if not len(h):
            return
        self._recent.insert(h, d)
        if len(self._recent.h) > max(65_536, len(self._base.h) // 8):
            self._base.insert(self._recent.h, self._recent.d)
            self._recent = _Run()

    def _lookup(self, h: U64) -> I32:
        """Per hash: the one indexed day, :data:`_UNKNOWN` when none, :data:`_AMBIGUOUS` when several."""
        out = np.full(len(h), _UNKNOWN, np.int32)
        runs = [run for run in (self._base, self._recent) if len(run.h)]
        if not runs or not len(h):
            return out
        order = np.argsort(h, kind="stable")
        needles = h[order]  # sorted needles: the binary searches walk the index in order (~4x faster)
        found = np.full(len(h), _UNKNOWN, np.int32)
        count = np.zeros(len(h), np.int8)
        for run in runs:
            n = len(run.h)
            lo = np.searchsorted(run.h, needles)
            at = np.minimum(lo, n - 1)
            hit = run.h[at] == needles
            more = hit & (lo + 1 < n) & (run.h[np.minimum(lo + 1, n - 1)] == needles)
            found = np.where(hit & (count == 0), run.d[at], found)
            count += hit.astype(np.int8) + more.astype(np.int8)
        found[count > 1] = _AMBIGUOUS
        out[order] = found
        return out

    def _candidates(self, h: U64) -> list[set[int]]:
        """Every indexed day of each hash."""
        out: list[set[int]] = [set() for _ in range(len(h))]
        for run in (self._base, self._recent):
            lo = np.searchsorted(run.h, h, "left")
            hi = np.searchsorted(run.h, h, "right")
            for i in np.flatnonzero(hi > lo).tolist():
                out[i].update(run.d[lo[i] : hi[i]].tolist())
        return out

    def _present(self, wanted: dict[str, set[int]]) -> dict[str, dict[int, tuple[int, str]]]:
        """Exact read-back: for each event_id, the days (of those given) holding a copy, with the smallest
        ``(ingested_at, payload_hash)`` of its copies on that day."""
        days = sorted({d for ds in wanted.values() for d in ds})
        out: dict[str, dict[int, tuple[int, str]]] = {eid: {} for eid in wanted}
        if not days or self._table is None:
            return out
        idc = self.id_column
        flt = pc.field("event_date").isin([to_date(d * DAY) for d in days]) & pc.field(idc).isin(list(wanted))
        rows = self._table.to_pyarrow_dataset().to_table(
            columns=[idc, "event_date", "ingested_at", "payload_hash"], filter=flt
        )
        rows = rows.rename_columns(["event_id", "event_date", "ingested_at", "payload_hash"])
        at = pc.cast(rows.column("ingested_at"), pa.int64()).to_pylist()
        for eid, d, t, ph in zip(
            rows.column("event_id").to_pylist(),
            _days(rows.column("event_date")).tolist(),
            at,
            rows.column("payload_hash").to_pylist(),
            strict=True,
        ):
            if d in wanted[eid]:
                key = (t, ph)
                cur = out[eid].get(d)
                if cur is None or key < cur:
                    out[eid][d] = key
        return out

    def _winners(self, present: dict[str, dict[int, tuple[int, str]]]) -> dict[str, int]:
        """The winning day of each event_id among its unmarked days; marks the others if several remain (a
        race between writers: the smallest ``(ingested_at, payload_hash)`` wins)."""
        out: dict[str, int] = {}
        marks: list[tuple[str, int]] = []
        for eid, by_day in present.items():
            free = {d: k for d, k in by_day.items() if (eid, d) not in self._marks}
            if not free:
                continue
            win = min(free, key=free.__getitem__)
            out[eid] = win
            marks += [(eid, d) for d in free if d != win]
        if marks:
            log.warning(
                "raw_events: %d event_id(s) stored on several days by concurrent writers; marking the "
                "later copies superseded",
                len(marks),
            )
            self.write_marks(marks)
        return out

    def write_marks(self, marks: Iterable[tuple[str, int]]) -> None:
        """Commit superseded ``(event_id, day)`` pairs (before the rows they cover) and remember them."""
        todo = sorted(set(marks) - self._marks)
        if todo:
            raw_log.append_superseded(self.superseded_uri, raw_log.superseded_table(todo, time.time_ns() // 1000))
            self._marks.update(todo)

    # -- what a writer asks -------------------------------------------------------------------------------

    def classify(self, ids: Ids, days: I32, hashes: U64 | None = None) -> I8:
        """Verdict per copy about to be stored, in arrival order: :data:`NEW` (the first copy of an event_id
        not stored yet: the winner), :data:`SAME_DAY` (the winner is on the copy's own day: stored, or an
        earlier copy in ``ids``) or :data:`SUPERSEDED` (the winner is on another day). Call :meth:`refresh`
        first.

        A hash that names the copy's own day is trusted: a collision there makes a new event_id look like a
        same-day copy, which changes nothing for a writer that stores same-day copies anyway (and
        ``fstore ingest`` checks the ids of the day exactly).

        Args:
            ids: event_ids of the copies, in arrival order.
            days: UTC day number of each copy's event_time.
            hashes: ``id_hashes(ids)``, when the caller has them already (:meth:`record` takes them too).
        """
        n = len(ids)
        verdict = np.full(n, NEW, np.int8)
        if n == 0:
            return verdict
        days = np.asarray(days, np.int32)
        h = id_hashes(ids) if hashes is None else hashes
        known = self._lookup(h)
        _, first, counts = np.unique(h, return_index=True, return_counts=True)
        once = np.zeros(n, bool)
        once[first[counts == 1]] = True
        verdict[once & (known == days)] = SAME_DAY
        simple = once & ((known == _UNKNOWN) | (known == days))
        if simple.all():
            return verdict
        # The rest, in Python: event_ids repeated in the batch, and those the index places on another day.
        rest = np.flatnonzero(~simple).tolist()
        name = dict(zip(rest, _pick(ids, rest), strict=True))
        first_seen: dict[str, int] = {}
        for i in rest:
            first_seen.setdefault(name[i], i)
        winner: dict[str, int] = {}
        check: dict[str, int] = {}
        for eid, i in first_seen.items():
            if known[i] == _UNKNOWN:
                winner[eid] = int(days[i])  # the first copy is the winner
            elif known[i] == days[i]:
                winner[eid] = int(days[i])
                verdict[i] = SAME_DAY
            else:
                check[eid] = i
        if check:  # read the copies back from the days the index names, decide on the exact ids
            where = self._candidates(h[list(check.values())])
            found = self._winners(self._present({eid: where[j] for j, eid in enumerate(check)}))
            for eid, i in check.items():
                w = found.get(eid)
                if w is None:  # a hash collision: this event_id is not stored yet
                    winner[eid] = int(days[i])
                else:
                    winner[eid] = w
                    verdict[i] = SAME_DAY if w == days[i] else SUPERSEDED
        for i in rest:
            eid = name[i]
            if first_seen[eid] != i:
                verdict[i] = SAME_DAY if winner[eid] == days[i] else SUPERSEDED
        return verdict

    def record(self, ids: Ids, days: I32, verdicts: I8, hashes: U64 | None = None) -> None:
        """Index the :data:`NEW` copies once they are committed (their marks were written before); ``hashes``:
        ``id_hashes(ids)`` if the caller has them (as for :meth:`classify`)."""
        new = np.flatnonzero(np.asarray(verdicts) == NEW)
        if len(new) == len(ids):
            self._insert(id_hashes(ids) if hashes is None else hashes, np.asarray(days, np.int32))
        elif len(new):
            h = id_hashes(_pick(ids, new.tolist())) if hashes is None else hashes[new]
            self._insert(h, np.asarray(days, np.int32)[new])

    def superseded(self, ids: Ids, days: I32, verdicts: I8) -> list[tuple[str, int]]:
        """The ``(event_id, day)`` pairs of the :data:`SUPERSEDED` copies (to :meth:`write_marks`)."""
        rows = np.flatnonzero(np.asarray(verdicts) == SUPERSEDED).tolist()
        return sorted(set(zip(_pick(ids, rows), (int(days[i]) for i in rows), strict=True)))


def day_numbers(event_times: Iterable[int]) -> I32:
    """UTC day numbers of epoch-µs event times."""
    return np.fromiter((t // DAY for t in event_times), np.int32)


def date_numbers(dates: pa.Array | pa.ChunkedArray) -> I32:
    """UTC day numbers of a date32 column (e.g. ``raw_events.event_date``)."""
    return _days(dates)


def day_of(d: date) -> int:
    """UTC day number of a date."""
    return day_start(d) // DAY
