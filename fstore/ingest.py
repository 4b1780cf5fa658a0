"""Backfill path: append the valid events of a message file to ``raw_events`` (docs/design.md §1, §2).

Messages are validated against the plan's event schema exactly as the stream job does (the same
:class:`~fstore.event_reader.EventReader`); the rows take the plan's ``raw_events`` columns
(:func:`fstore.delta.raw_log.raw_schema`, with its schema evolution); invalid ones go to ``dead_letters``
with their reason. Duplicates follow arrival order, as on the stream (docs/design.md §2): the first valid copy
of an event_id in line order wins, within a batch and across batches and runs, whatever the copies'
payloads or event_times. Only that copy is written, with its own ingestion instant (``ingested_at`` = the
batch's instant, strictly later than the previous batch's last, plus the copy's position), so a file
ingested here and the same file sent through Kafka give the same winners. An event_id already present in
``raw_events`` — on its own event_date (checked exactly) or on another one (the writers' index,
:mod:`fstore.delta.event_index`) — is not written again, which makes re-ingesting a file a no-op.

Before each commit, the copies to write go to the speed layer as the stream worker's first copies do
(``speed``, :mod:`jobs.ingest_speed`): their event_ids are claimed and the recent ones counted in the speed
tiles, so that they are served online and a later copy sent through Kafka counts nowhere. The speed step's
``begin`` runs at the start of every batch, before anything of it is written: a batch it lets start is
finished (tiles and commit, a commit lost to a concurrent writer retried without a new ``begin``), which is
what ``fstore backfill`` waits for.
"""

from __future__ import annotations

import gc
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import orjson
import pyarrow as pa

from fstore.clock import Clock, wall_clock
from fstore.core.event_schema import EventSchema
from fstore.core.events import UNPROCESSABLE, Row, mask_dead_letter, payload_hash
from fstore.core.plan import Plan
from fstore.core.timeutil import DAY, day_start, to_date
from fstore.delta import raw_log
from fstore.delta.event_index import NEW, SAME_DAY, SUPERSEDED, EventIndex, day_numbers
from fstore.event_reader import reader_for
from fstore.kafka.messages import iter_batches


@dataclass
class IngestReport:
    """What one ingestion did.

    ``duplicates`` counts copies of an event_id that this run had already taken (earlier in the file);
    ``already_present`` counts event_ids that were in ``raw_events`` before the run.
    """

    source: str
    messages: int = 0
    valid: int = 0
    written: int = 0
    duplicates: int = 0
    already_present: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    commit_retries: int = 0  # raw_events commits redone after a concurrent writer's commit
    claimed: int = 0  # event_ids claimed for the stream: the copies written (``Ingestor.speed``)
    tiled: int = 0  # of those, the events newly counted in the speed tiles (inside the stream's horizon)
    dead_letters_skipped: int = 0  # dead letters of batches that were dead-lettered before (same messages)
    seen: set[str] = field(default_factory=set, repr=False)  # event_ids written by this run
    seconds: float = 0.0

    @property
    def invalid(self) -> int:
        """Messages rejected, all reasons."""
        return sum(self.rejected.values())

    def summary(self) -> dict[str, object]:
        """JSON-able figures."""
        return {
            "source": self.source,
            "messages": self.messages,
            "valid": self.valid,
            "written": self.written,
            "duplicates": self.duplicates,
            "already_present": self.already_present,
            "invalid": self.invalid,
            "rejected_by_reason": dict(sorted(self.rejected.items())),
            "commit_retries": self.commit_retries,
            "claimed": self.claimed,
            "tiled": self.tiled,
            "dead_letters_skipped": self.dead_letters_skipped,
            "seconds": round(self.seconds, 3),
            "messages_per_s": round(self.messages / self.seconds) if self.seconds else None,
        }


#: raw_events commits a batch may lose to concurrent writers before the ingestion gives up.
MAX_COMMIT_ATTEMPTS = 50


class Interrupted(RuntimeError):
    """The ingestion was asked to stop (Ctrl-C) and stopped between two batches."""


class Speed(Protocol):
    """The speed layer's share of a batch (:class:`jobs.ingest_speed.IngestSpeed`)."""

    def begin(self) -> None:
        """At a batch boundary, before the batch's first call; raising stops the ingestion with nothing of the
        batch written."""

    def __call__(self, rows: Sequence[Row], hashes: Sequence[str], now: int) -> int:
        """Hands ``rows`` about to be written (their payload ``hashes``, the batch's clock ``now``) to the speed
        layer; returns the events newly counted in the speed tiles. Called again with the rows checked anew
        when the commit lost to a concurrent writer."""


class Ingestor:
    """Validates, de-duplicates and appends batches of messages (reusable across files).

    ``speed``, when given, is begun at the start of every batch, then called with the rows and
    payload hashes of those copies and the batch's processing clock, before its ``raw_events`` commit
    (``fstore ingest`` passes :class:`jobs.ingest_speed.IngestSpeed`: claims and speed tiles, as the stream
    worker writes them); what it raises stops the ingestion before that commit.
    """

    def __init__(
        self,
        raw_uri: str,
        dead_uri: str,
        clock: Clock = wall_clock,
        keep_unparseable: bool = False,
        plan: Plan | None = None,
        speed: Speed | None = None,
    ) -> None:
        self.raw_uri, self.dead_uri, self.clock, self.speed = raw_uri, dead_uri, clock, speed
        self.keep_unparseable = keep_unparseable  # dead letters that are not JSON objects: bytes, not a summary
        self.reader = reader_for(plan)  # the plan's event schema (default: the process's plan)
        self.schema = self.reader.schema
        self.idf, self.ts = self.schema.id_field, self.schema.timestamp_field
        self._known: dict[int, set[str]] = {}  # UTC day number -> event_ids stored on that event_date
        self.index = EventIndex(raw_uri, id_column=self.idf)  # every stored event_id -> the day of its winning copy
        self._last_at = 0

    def _known_ids(self, days: set[int]) -> None:
        missing = days - self._known.keys()
        if missing:
            found = raw_log.event_ids_on(self.raw_uri, [to_date(d * DAY) for d in missing], self.idf)
            self._known.update({(day_start(d) // DAY): ids for d, ids in found.items()})

    def ingest_batch(self, messages: list[bytes], source: str, report: IngestReport) -> None:
        """Validate and append one batch: one ``raw_events`` commit and one ``dead_letters`` commit.

        The first valid copy of an event_id in line order wins (as the stream takes the earlier offset);
        a copy of an event_id already stored — on any day — is not written again.

        Concurrent writers (another ``fstore ingest``, the stream's raw sink): the ``raw_events`` commit is
        made only on top of the version this batch was checked against; if anyone committed in between,
        the batch is checked again against what they wrote and retried, so no event_id is stored twice by
        two ingests. The ``dead_letters`` commit carries the batch's idempotency key (a Delta application
        transaction, app id = hash of the batch's messages): a batch already dead-lettered — by a
        concurrent run or an earlier one — is not dead-lettered again.
        """
        now = self.clock()
        first: dict[str, tuple[bytes, Row]] = {}
        bad_payloads: list[bytes] = []
        bad_reasons: list[str] = []
        loads, parse, idf, ts, names = orjson.loads, self.reader.parse, self.idf, self.ts, self.schema.names
        duplicates = tiled = 0
        if self.speed is not None:  # the batch boundary: once begun, a batch is finished (its retries check no hold)
            self.speed.begin()
        for raw in messages:
            res = parse(raw, now)
            if isinstance(res, dict):
                if res[idf] in first:
                    duplicates += 1  # a later line: arrival order decides
                else:
                    first[res[idf]] = (raw, res)
            else:
                bad_payloads.append(mask_dead_letter(raw, names, loads, self.keep_unparseable))
                bad_reasons.append(res.reason)
        for attempt in range(MAX_COMMIT_ATTEMPTS):
            stored, taken = self._check(first)
            at = max(now, self._last_at + 1)  # one instant per copy, in line order: ingested_at plus a sequence
            table, refused = rows_or_refused(taken, at, self.schema)
            if self.speed is not None and table.num_rows:  # before the commit: the worker's tiles precede its raw sink
                out = {ev[idf] for _, ev in refused}
                kept = [ev for _, ev in taken if ev[idf] not in out]
                tiled += self.speed(kept, table.column("payload_hash").to_pylist(), now)
            try:
                raw_log.append_on(self.raw_uri, self.index.snapshot, table, ["event_date"])
                break
            except raw_log.CommitConflict:  # another writer committed since the check: check again
                self._known.clear()
                report.commit_retries += 1
                time.sleep(min(0.05 * 2**attempt, 1.0))
        else:
            raise RuntimeError(f"raw_events: {MAX_COMMIT_ATTEMPTS} commits in a row lost to concurrent writers")
        self._last_at = at + max(len(taken) - 1, 0)
        report.messages += len(messages)
        report.duplicates += duplicates
        for event_id in stored:
            self._count_stored(event_id, report)
        for raw, _ in refused:  # valid, yet raw_events cannot hold it: dead-lettered, the file goes on
            bad_payloads.append(mask_dead_letter(raw, names, loads, self.keep_unparseable))
            bad_reasons.append(UNPROCESSABLE)
        report.valid += len(messages) - len(bad_payloads)
        report.rejected.update(bad_reasons)
        gone = {ev[idf] for _, ev in refused}
        events = [ev for _, ev in taken if ev[idf] not in gone]
        for ev in events:
            report.seen.add(ev[idf])
            self._known[ev[ts] // DAY].add(ev[idf])
        if events:
            self.index.committed()
            written = [ev[idf] for ev in events]
            self.index.record(written, day_numbers(ev[ts] for ev in events), np.full(len(written), NEW, np.int8))
        report.written += len(events)
        if self.speed is not None:
            report.claimed += table.num_rows
            report.tiled += tiled
        if bad_payloads:
            key = "fstore-ingest:" + hashlib.blake2b(b"\n".join(messages), digest_size=16).hexdigest()
            dead = raw_log.dead_letters_table(bad_payloads, bad_reasons, source, at)
            if not raw_log.append_once(self.dead_uri, dead, ["ingest_date"], key):
                report.dead_letters_skipped += len(bad_payloads)

    def _check(self, first: dict[str, tuple[bytes, Row]]) -> tuple[list[str], list[tuple[bytes, Row]]]:
        """Against the table as it is now: the event_ids already stored, and the copies to write."""
        idf, ts = self.idf, self.ts
        self.index.refresh()
        self._known_ids({ev[ts] // DAY for _, ev in first.values()})
        stored: list[str] = []
        fresh: list[tuple[bytes, Row]] = []
        for raw, ev in first.values():
            if ev[idf] in self._known[ev[ts] // DAY]:
                stored.append(ev[idf])
            else:
                fresh.append((raw, ev))
        # Copies whose event_id is stored on another day (another event_time) lost to that copy too; one the
        # index places on its own day that the cached ids of that day lack was written by another writer
        # since they were read: read the day again (exact ids).
        ids = [ev[idf] for _, ev in fresh]
        days = day_numbers(ev[ts] for _, ev in fresh)
        verdicts = self.index.classify(ids, days).tolist()
        stale = {ev[ts] // DAY for (_, ev), v in zip(fresh, verdicts, strict=True) if v == SAME_DAY}
        if stale:
            for day in stale:
                self._known.pop(day, None)
            self._known_ids(stale)
        taken: list[tuple[bytes, Row]] = []
        for (raw, ev), verdict in zip(fresh, verdicts, strict=True):
            if verdict == SUPERSEDED or ev[idf] in self._known[ev[ts] // DAY]:
                stored.append(ev[idf])
            else:
                taken.append((raw, ev))
        return stored, taken

    @staticmethod
    def _count_stored(event_id: str, report: IngestReport) -> None:
        if event_id in report.seen:
            report.duplicates += 1  # taken earlier in this run
        else:
            report.already_present += 1

    def ingest_file(
        self,
        path: str | Path,
        batch_size: int = 200_000,
        progress: Callable[[int], object] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> IngestReport:
        """Ingest every message of a JSONL or Parquet message file.

        Args:
            path: the message file (see :mod:`fstore.kafka.messages`).
            batch_size: messages per Delta commit.
            progress: called with the number of messages done after each batch.
            stop: asked before each batch; ``True`` stops there (:class:`Interrupted`), the batches before
                committed whole (``fstore ingest`` on Ctrl-C).

        Raises:
            Interrupted: ``stop`` said so before a batch.
        """
        report = IngestReport(source=str(path))
        start = time.perf_counter()
        gc_was_enabled = gc.isenabled()
        gc.disable()  # millions of short-lived tuples, no cycles: full collections only cost time here
        try:
            for batch in iter_batches(path, batch_size):
                if stop is not None and stop():
                    raise Interrupted(
                        f"interrupted: {path} stopped after {report.messages:,} messages, every batch before "
                        "committed whole; run fstore ingest again to go on (nothing is written twice)"
                    )
                self.ingest_batch(batch, str(path), report)
                if progress:
                    progress(len(batch))
        finally:
            if gc_was_enabled:
                gc.enable()
        report.seconds = time.perf_counter() - start
        return report


def rows_or_refused(
    taken: list[tuple[bytes, Row]], at: int, schema: EventSchema
) -> tuple[pa.Table, list[tuple[bytes, Row]]]:
    """The ``raw_events`` rows of ``(message, row)`` pairs (``ingested_at`` from ``at`` on, in order), and the
    pairs whose row could not be built (a value Arrow refuses): those are left out, the others kept.

    The whole batch is converted at once; only when that fails is each row converted on its own to find the
    culprits. Validation bounds every value (docs/design.md §2), so this is the safety net behind it.
    """
    hashes = [payload_hash(raw) for raw, _ in taken]
    try:
        return raw_log.rows_table(schema, [ev for _, ev in taken], hashes, range(at, at + len(taken))), []
    except (ValueError, TypeError, OverflowError, pa.ArrowException):
        pass
    keep: list[int] = []
    refused: list[tuple[bytes, Row]] = []
    for i, (_, ev) in enumerate(taken):
        try:
            raw_log.rows_table(schema, [ev], [hashes[i]], [at + i])
            keep.append(i)
        except (ValueError, TypeError, OverflowError, pa.ArrowException):
            refused.append(taken[i])
    table = raw_log.rows_table(schema, [taken[i][1] for i in keep], [hashes[i] for i in keep], [at + i for i in keep])
    return table, refused
