"""``raw_events_winners``: each day's de-duplication winners, computed once at write time (docs/design.md §2, §6).

Every reader of ``raw_events`` counts each event_id once (first ingested copy wins). The point-in-time
engine used to find the winners at every request: read ``event_id`` and ``ingested_at`` of every copy in
the range and sort the ids. :func:`compact` does it once per day and keeps the result beside the table,
``raw_events_winners/event_date=D/<fingerprint>.parquet``:

* the rows are the winners of day ``D`` as a reader of ``D`` alone finds them — the copies of the
  superseded pairs of ``D`` dropped (``raw_events_superseded``), then the first ingested copy of each
  event_id kept (:func:`fstore.core.pit.dedupe`) — with every column of ``raw_events``, in time order, plus
  ``__id_hash`` (64-bit hash of the event id, :func:`fstore.delta.event_index.id_hashes`);
* ``<fingerprint>`` hashes the files ``raw_events`` and ``raw_events_superseded`` hold for ``D``
  (:func:`fingerprints`). A file is therefore valid exactly while those files are unchanged: a late copy,
  a new superseded pair or a rewrite of the day gives the day another fingerprint, readers no longer find
  a file for it and read the day from ``raw_events`` as before (never a stale value), until the next
  :func:`compact` writes the new one. No manifest and no transaction: the name is the proof.

A day's winners equal the reader's winners of that day only if no event_id has unmarked copies on two
days (writers mark every cross-day loser, ADR 0010; only two writers racing leave such a pair, until the
next catch-up marks it). :func:`compact` checks the days it publishes against each other by id hash and
does not publish a day that shares an id with another published day; readers check the days they read
from ``raw_events`` against the published days they use the same way and read everything from
``raw_events`` on any hit (:func:`fstore.offline.local.get_historical_features`). Run one compaction at a
time (the nightly job, or ``fstore compact``).

The files are a cache: deleting the directory loses nothing but speed.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import DeltaTable

from fstore.core import pit
from fstore.core.dedupe import drop_superseded
from fstore.core.event_schema import EventSchema
from fstore.delta import raw_log
from fstore.delta.event_index import id_hashes

log = logging.getLogger(__name__)

#: Column of the 64-bit event id hash (the cross-day checks).
ID_HASH = "__id_hash"
#: Bumped when the file layout changes: files of another format are never read.
FORMAT = "1"


def winners_uri(raw_uri: str) -> str:
    """Location of the winners of a ``raw_events`` table (its sibling ``raw_events_winners``)."""
    return raw_uri.rstrip("/") + "_winners"


def _files_by_day(table: DeltaTable | None, days: set[date] | None) -> dict[date, list[tuple[str, int]]]:
    """``(path, size)`` of the table's files per ``event_date`` (sorted), for ``days`` or all."""
    if table is None:
        return {}
    actions = pa.table(table.get_add_actions(flatten=True)).select(["path", "size_bytes", "partition.event_date"])
    out: dict[date, list[tuple[str, int]]] = {}
    for path, size, day in zip(*(actions.column(i).to_pylist() for i in range(3)), strict=True):
        if days is None or day in days:
            out.setdefault(day, []).append((path, size))
    return {d: sorted(files) for d, files in out.items()}


def fingerprints(raw: DeltaTable, superseded: DeltaTable | None, days: Iterable[date] | None = None) -> dict[date, str]:
    """Per ``event_date`` that holds rows in ``raw``: a hash of its files in ``raw_events`` and in
    ``raw_events_superseded`` (path and size) and of :data:`FORMAT`. Delta files are immutable, so equal
    fingerprints mean equal copies and equal marks."""
    wanted = set(days) if days is not None else None
    raw_files = _files_by_day(raw, wanted)
    marks = _files_by_day(superseded, set(raw_files))
    out = {}
    for day, files in raw_files.items():
        text = repr((FORMAT, files, marks.get(day, [])))
        out[day] = hashlib.sha256(text.encode()).hexdigest()[:32]
    return out


def day_path(root: str, day: date, fingerprint: str) -> str:
    """Path of a day's winners file under the winners root."""
    return f"{root}/event_date={day.isoformat()}/{fingerprint}.parquet"


def published(uri: str) -> dict[date, set[str]]:
    """Fingerprints of the winners files present, per day (empty when there is no directory)."""
    fs, root = raw_log.filesystem(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except FileNotFoundError:
        return {}
    out: dict[date, set[str]] = {}
    for info in infos:
        parts = info.path[len(root) :].strip("/").split("/")
        if info.type != pafs.FileType.File or len(parts) != 2 or not parts[1].endswith(".parquet"):
            continue
        if not parts[0].startswith("event_date=") or parts[1].startswith("."):
            continue
        try:
            day = date.fromisoformat(parts[0].removeprefix("event_date="))
        except ValueError:
            continue
        out.setdefault(day, set()).add(parts[1].removesuffix(".parquet"))
    return out


def usable(raw_uri: str, current: dict[date, str]) -> dict[date, str]:
    """Of the days with fingerprints ``current``, those whose winners file is published: day → file path."""
    uri = winners_uri(raw_uri)
    have = published(uri)
    _, root = raw_log.filesystem(uri)
    return {d: day_path(root, d, fp) for d, fp in current.items() if fp in have.get(d, set())}


def _superseded_of(table: DeltaTable | None, day: date) -> pa.Table:
    """Superseded ``(event_id, event_date)`` pairs of one day, read from the given table version."""
    if table is None:
        return raw_log.SUPERSEDED_SCHEMA.empty_table().select(["event_id", "event_date"])
    flt = pc.field("event_date") == pa.scalar(day, pa.date32())
    return table.to_pyarrow_dataset().to_table(columns=["event_id", "event_date"], filter=flt)


def day_winners(raw: DeltaTable, superseded: DeltaTable | None, day: date, schema: EventSchema) -> pa.Table:
    """The winners of one day of ``raw`` (every column, in time order, with :data:`ID_HASH`)."""
    flt = pc.field("event_date") == pa.scalar(day, pa.date32())
    copies = raw.to_pyarrow_dataset().to_table(filter=flt)
    probe = copies.select([schema.id_field, schema.timestamp_field]).rename_columns(["event_id", "event_time"])
    probe = probe.append_column("__row", pa.array(np.arange(copies.num_rows, dtype=np.int64)))
    left = drop_superseded(probe, _superseded_of(superseded, day))
    if left.num_rows != copies.num_rows:
        copies = copies.take(left.column("__row"))
    winners = pit.dedupe(copies, schema.id_field) if copies.num_rows else copies
    order = pc.sort_indices(winners, [(schema.timestamp_field, "ascending")])  # stable
    winners = winners.take(order)
    hashes = id_hashes(winners.column(schema.id_field)).view(np.int64)
    return winners.append_column(ID_HASH, pa.array(hashes, pa.int64()))


def read_hashes(paths: Iterable[str], uri: str) -> np.ndarray:
    """The :data:`ID_HASH` values of winners files (int64)."""
    fs, _ = raw_log.filesystem(uri)
    parts = [pq.read_table(p, columns=[ID_HASH], filesystem=fs).column(0).to_numpy() for p in paths]
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


@dataclass
class Report:
    """What :func:`compact` did."""

    written: list[date] = field(default_factory=list)
    kept: list[date] = field(default_factory=list)
    #: days not published because they share an event_id with another day (unmarked cross-day copies)
    conflicted: list[date] = field(default_factory=list)
    removed_files: int = 0
    rows: int = 0


def compact(
    raw_uri: str, schema: EventSchema, before: date | None = None, days: Iterable[date] | None = None
) -> Report:
    """Write the winners file of every day of ``raw_events`` (before ``before``, or of ``days``) that has no
    current one, and remove the files of older fingerprints.

    Args:
        raw_uri: the ``raw_events`` table.
        schema: the plan's event schema (id and timestamp fields).
        before: only days strictly before this one (the open day keeps changing: leave it out).
        days: only these days.
    """
    report = Report()
    raw = raw_log.open_table(raw_uri)
    if raw is None:
        return report
    superseded = raw_log.open_table(raw_log.superseded_uri(raw_uri))
    current = fingerprints(raw, superseded, days)
    if before is not None:
        current = {d: fp for d, fp in current.items() if d < before}
    uri = winners_uri(raw_uri)
    fs, root = raw_log.filesystem(uri)
    have = published(uri)
    fresh = {d: day_path(root, d, fp) for d, fp in current.items() if fp in have.get(d, set())}
    report.kept = sorted(fresh)
    if set(current) == set(fresh):  # nothing to write
        _remove_old(fs, root, have, current, report)
        return report
    others = {d: fps for d, fps in have.items() if d not in current}  # days not asked for stay as they are
    pool = [*fresh.items(), *((d, day_path(root, d, fp)) for d, fps in others.items() for fp in fps)]
    pool_hashes = [read_hashes([p], uri) for _, p in pool]
    pool_days = [np.full(len(h), d.toordinal(), np.int64) for h, (d, _) in zip(pool_hashes, pool, strict=True)]
    staged: dict[date, str] = {}
    for day in sorted(set(current) - set(fresh)):
        table = day_winners(raw, superseded, day, schema)
        fs.create_dir(f"{root}/event_date={day.isoformat()}", recursive=True)
        tmp = f"{root}/event_date={day.isoformat()}/.{uuid.uuid4().hex}.tmp"
        pq.write_table(table, tmp, filesystem=fs, row_group_size=1 << 20)
        staged[day] = tmp
        pool_hashes.append(table.column(ID_HASH).to_numpy())
        pool_days.append(np.full(table.num_rows, day.toordinal(), np.int64))
        report.rows += table.num_rows
    conflicted = _shared_days(np.concatenate(pool_hashes) if pool_hashes else np.empty(0, np.int64), pool_days)
    for day, tmp in staged.items():
        if day in conflicted:
            fs.delete_file(tmp)
            report.conflicted.append(day)
            log.warning("raw_events_winners: %s shares event ids with another day; left to raw_events", day)
            continue
        fs.move(tmp, day_path(root, day, current[day]))
        report.written.append(day)
    _remove_old(fs, root, have, current, report)
    return report


def _remove_old(
    fs: pafs.FileSystem, root: str, have: dict[date, set[str]], current: dict[date, str], report: Report
) -> None:
    """Delete the files of the days of ``current`` whose fingerprint is not the current one."""
    for day in current:
        for fp in have.get(day, set()) - {current[day]}:
            fs.delete_file(day_path(root, day, fp))
            report.removed_files += 1


def _shared_days(hashes: np.ndarray, days: list[np.ndarray]) -> set[date]:
    """Days holding a hash that another day holds too."""
    if not len(hashes):
        return set()
    labels = np.concatenate(days)
    order = np.argsort(hashes, kind="stable")
    h, d = hashes[order], labels[order]
    clash = (h[1:] == h[:-1]) & (d[1:] != d[:-1])
    hit = np.concatenate([d[1:][clash], d[:-1][clash]])
    return {date.fromordinal(int(x)) for x in np.unique(hit)}


def dataset(paths: list[str], uri: str, schema: pa.Schema, strings: set[str]) -> ds.Dataset:
    """The winners files ``paths`` as one dataset in ``schema`` (columns a file lacks read as null; the
    string columns in ``strings`` dictionary-encoded)."""
    fs, _ = raw_log.filesystem(uri)
    fmt = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=strings))
    return ds.dataset(paths, schema=schema, format=fmt, filesystem=fs)


def settled(raw_uri: str, days: Iterable[date], schema: EventSchema) -> dict[date, str]:
    """Of ``days``, those a reader of all ``days`` may take from their current winners file instead of
    de-duplicating ``raw_events``: day → the file's location (a URI when ``raw_uri`` is one, else a path).

    Empty (read every day from ``raw_events``) when no day has a current file, or when a copy of one of
    the other days — its superseded pairs dropped, as a reader drops them — shares its event id hash with
    a winner in those files: an event with unmarked copies on two days, which only a de-duplication
    across the whole range decides (the same check as the point-in-time reader's). Reads the id and
    timestamp columns of the other days and the hashes of the files, in this process.
    """
    wanted = sorted(set(days))
    raw = raw_log.open_table(raw_uri)
    if raw is None or not wanted:
        return {}
    marks = raw_log.open_table(raw_log.superseded_uri(raw_uri))
    found = usable(raw_uri, fingerprints(raw, marks, wanted))
    if not found:
        return {}
    uri = winners_uri(raw_uri)
    rest = [d for d in wanted if d not in found]
    if rest:
        cols = [schema.id_field, schema.timestamp_field]
        copies = raw.to_pyarrow_dataset().to_table(
            columns=cols, filter=pc.field("event_date").isin(pa.array(rest, pa.date32()))
        )
        pairs = raw_log.superseded_on(raw_log.superseded_uri(raw_uri), rest[0], rest[-1])
        copies = drop_superseded(copies, pairs, schema.id_field, schema.timestamp_field)
        if copies.num_rows:
            ours = id_hashes(copies.column(schema.id_field)).view(np.int64)
            theirs = read_hashes([found[d] for d in sorted(found)], uri)
            if pc.any(pc.is_in(pa.array(theirs), value_set=pa.array(ours))).as_py():
                log.warning("raw_events_winners: an event id has copies on two days; reading raw_events instead")
                return {}
    if "://" not in uri:
        return found
    _, root = raw_log.filesystem(uri)
    return {d: uri.rstrip("/") + path[len(root) :] for d, path in found.items()}
