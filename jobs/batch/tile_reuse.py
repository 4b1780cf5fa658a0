"""Tiles of a day whose input did not change since an earlier run are taken from that run (docs/batch.md).

Why it is exact: every tile size divides a day (:func:`fstore.core.window_limits.window_problem`), so a
tile lies inside one UTC day, and :func:`fstore.core.view_tiles_frame.build_tiles` makes a tile from the
events of its interval alone (values sorted, so bit-identical whatever the order). The tiles of view V
with start in day d are therefore a function of (a) V's definition and the event schema (the validity
checks, the entity keys) and (b) day d's de-duplicated events, which ``raw_events`` fixes by the files it
holds for d: the day's fingerprint (:func:`fstore.delta.raw_winners.fingerprints`, the name of its
winners file). :func:`day_key` hashes (a), (b) and :data:`FORMAT`; a run records the key of each day it
tiled, and a later run takes the stored tiles of every day whose key is unchanged. A late copy into a
closed day changes that day's fingerprint, a changed view or schema changes every key of the view: either
way the day is computed again.

A day's events are fixed by its fingerprint only when they were de-duplicated on their own: read from
its winners file, or the only day with copies read from ``raw_events`` (several such days are
de-duplicated together, so their winners may depend on each other: they get no key and are never reused;
a day without copies has no events and the fingerprint ``empty``).

The record of a run (``<tiles table>_inputs/run_date=D.json``) lists the keys of its days and the data
files of the table's partition ``run_date = D`` right after its commit. It is used only while the
partition still holds exactly those files (Delta files are immutable, so the name list is the proof): a
later commit of the partition, a failed run or a rewrite makes it useless, never wrong. Only runs of the
same or an earlier date are used, whose tile horizons start no later than this run's (same view, earlier
cutover), so they hold every tile this run keeps of a day.
"""

from __future__ import annotations

import hashlib
import json
import uuid
import warnings
from dataclasses import dataclass
from datetime import date

import pyarrow.fs as pafs

from fstore.core.plan import Plan, View
from fstore.core.plan_json import fingerprint
from fstore.core.timeutil import DAY
from fstore.delta import raw_log

#: Bumped when the tile arithmetic or the tile table's layout changes: records of another format are ignored.
FORMAT = "2"  # 2: distinct members spell -0.0 as 0.0 (session 9)


def view_key(plan: Plan, view: View) -> str | None:
    """What the tiles of ``view`` depend on besides the events: the view, the event schema and the
    entities (their keys are validity checks), as the fingerprint of a plan holding only this view.
    ``None`` (never reuse) if a tile size does not divide a day, so that a tile could span two days
    (the plan's checks refuse such hops; this does not rely on them)."""
    if any(DAY % size for size in view.hops):
        return None
    return fingerprint(Plan(plan.schema, plan.entities, (view,)))


def day_key(view: str, day: date, day_input: str) -> str:
    """The key of one day's tiles: :data:`FORMAT`, the view's key, the day and its input fingerprint."""
    text = json.dumps([FORMAT, view, day.isoformat(), day_input])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def inputs_uri(table_uri: str) -> str:
    """Where the records of a tile table live (its sibling ``<table>_inputs``)."""
    return table_uri.rstrip("/") + "_inputs"


def partition_files(table_uri: str, run_date: date) -> list[str] | None:
    """The data files of partition ``run_date`` of a tile table (sorted URIs); ``None`` when the table is
    missing or uses a reader feature that makes its files differ from its rows (deletion vectors, column
    mapping)."""
    dt = raw_log.open_table(table_uri)
    if dt is None or dt.protocol().min_reader_version > 1 or dt.protocol().reader_features:
        return None
    with warnings.catch_warnings():  # partition_filters is deprecated in delta-rs 1.x but still exact
        warnings.simplefilter("ignore", DeprecationWarning)
        return sorted(dt.file_uris(partition_filters=[("run_date", "=", run_date.isoformat())]))


@dataclass(frozen=True)
class Source:
    """An earlier run's tiles to take days from: its date, its partition's files and the days to take."""

    run_date: date
    files: list[str]
    days: list[date]


def record(table_uri: str, run_date: date, keys: dict[date, str]) -> None:
    """Record the day keys of the partition just committed (call after the commit)."""
    files = partition_files(table_uri, run_date)
    if files is None:
        return
    fs, root = raw_log.filesystem(inputs_uri(table_uri))
    fs.create_dir(root, recursive=True)
    body = {"format": FORMAT, "files": files, "days": {d.isoformat(): k for d, k in sorted(keys.items())}}
    tmp = f"{root}/.{uuid.uuid4().hex}.tmp"
    with fs.open_output_stream(tmp) as out:
        out.write(json.dumps(body, indent=1).encode())
    fs.move(tmp, f"{root}/run_date={run_date.isoformat()}.json")


def _records(table_uri: str) -> list[date]:
    fs, root = raw_log.filesystem(inputs_uri(table_uri))
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    out = []
    for info in infos:
        name = info.base_name
        if info.type == pafs.FileType.File and name.startswith("run_date=") and name.endswith(".json"):
            try:
                out.append(date.fromisoformat(name.removeprefix("run_date=").removesuffix(".json")))
            except ValueError:
                continue
    return sorted(out, reverse=True)


def recorded(table_uri: str, run_date: date) -> tuple[list[str], dict[date, str]] | None:
    """The files and day keys of the run of ``run_date`` while its record is still true (its partition
    holds the recorded files), else ``None``."""
    fs, root = raw_log.filesystem(inputs_uri(table_uri))
    try:
        with fs.open_input_stream(f"{root}/run_date={run_date.isoformat()}.json") as f:
            body = json.loads(f.read())
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        return None
    files = partition_files(table_uri, run_date)
    if files is None or body.get("files") != files:
        return None
    return files, {date.fromisoformat(d): str(k) for d, k in dict(body.get("days", {})).items()}


def find(table_uri: str, run_date: date, keys: dict[date, str]) -> Source | None:
    """The latest run of ``run_date`` or before whose record is still true and shares a day key with
    ``keys`` (this run's keys), with the days whose keys are equal; ``None`` if there is none."""
    for when in _records(table_uri):
        if when > run_date:
            continue
        found = recorded(table_uri, when)
        if found is None:
            continue
        files, theirs = found
        days = sorted(d for d, k in keys.items() if theirs.get(d) == k)
        if days:
            return Source(when, files, days)
    return None
