"""Pure batch logic of the stream worker: validate, classify and de-duplicate one consumed batch.

No Kafka, Redis or Delta here (unit-testable with plain bytes): the consumer task hands over the message
values of a batch with the processing clock, and gets back what goes to the dead-letter topic, to the
raw sink and to the speed tiles.

Decoding and validation run from the process's plan (:func:`fstore.plan_source.current_plan`) through its
:class:`fstore.event_reader.EventReader` (a compiled fast path, then the generic check, which alone gives
reasons); :func:`prepare` inlines its fast path, as this loop runs for every message. Duplicates are
recognised by the schema's id field.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import orjson

from fstore.core.events import MAX_MESSAGE_BYTES, Rejection, Row, parse_row, payload_hashes
from fstore.event_reader import EventReader, decode, reader_for

__all__ = ["Claims", "EventReader", "Prepared", "prepare", "reader_for"]


@dataclass
class Claims:
    """A batch's first copies to claim (:mod:`jobs.stream.claims`), as three parallel lists rather than a
    tuple per copy (the worker builds one per event): each copy's event_id, its payload hash and, when it
    goes to the tiles, its row (``None`` for a copy too old for them)."""

    ids: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    rows: list[Row | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[tuple[str, str, Row | None]]:
        """``(event_id, payload hash, row or None)`` per copy."""
        return zip(self.ids, self.hashes, self.rows, strict=True)


@dataclass
class Prepared:
    """One batch, classified.

    ``valid`` holds every valid copy in consumption order (the raw sink stores them all: readers apply
    first-ingested-wins); ``ingested_at`` gives each copy its own instant (batch clock + position), so
    the first copy in the log is also the first ingested. ``fresh`` is the first copy of each event_id in
    the batch whose event_time is inside the horizon: the candidates for the speed tiles (the event_id
    claims, then the Lua script's markers, decide whether they are new). ``claims`` lists every first copy,
    inside the horizon or not: ``(event_id, payload hash, the row if it is in fresh)`` (:mod:`jobs.stream.claims`).
    """

    valid: list[Row] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    ingested_at: list[int] = field(default_factory=list)
    fresh: list[Row] = field(default_factory=list)
    claims: Claims = field(default_factory=Claims)
    invalid: list[tuple[int, str]] = field(default_factory=list)  # (position in the batch, reason)
    batch_duplicates: int = 0
    late: int = 0
    beyond_horizon: int = 0
    last_at: int = 0


def prepare(
    values: Sequence[bytes],
    now: int,
    last_at: int,
    cutover: int | None,
    horizon_us: int,
    reader: EventReader | None = None,
) -> Prepared:
    """Validate and classify a batch of message values.

    Args:
        values: original message bytes, in consumption order.
        now: processing clock, UTC epoch microseconds (``future_timestamp`` is judged against it).
        last_at: the last ``ingested_at`` handed out (ingestion instants strictly increase).
        cutover: the serving batch view's cutover C, or ``None``; valid events before it are *late*.
        horizon_us: events older than ``now - horizon_us`` skip the tiles (raw_events still gets them).
        reader: the plan's reader (default: the process's plan).

    Returns:
        The classified batch; ``last_at`` is the last instant used.
    """
    r = reader_for() if reader is None else reader
    out = Prepared()
    first = max(now, last_at + 1)
    oldest = now - horizon_us
    cut = -(1 << 63) if cutover is None else cutover  # no batch view: nothing is late
    seen: set[str] = set()
    fast, check, loads = r.accept, r.check, orjson.loads
    idf, ts = r.id_field, r.ts_field
    valid, fresh, invalid = out.valid, out.fresh, out.invalid
    raws: list[bytes] = []  # the valid copies' bytes, hashed after the loop
    claims = out.claims
    first_ids, first_rows = claims.ids, claims.rows  # each first copy's id and its row if fresh
    repeats: list[int] = []  # positions in ``valid`` of the batch's later copies (rare)
    late = duplicates = beyond = 0
    for i, raw in enumerate(values):
        row: Row | None = None
        if len(raw) <= MAX_MESSAGE_BYTES:  # EventReader.parse, inlined: this loop runs for every message
            try:  # noqa: SIM105 - contextlib.suppress costs more, once per message
                row = fast(decode(raw), now)
            except Exception:  # as in EventReader.parse
                pass
        if row is None:  # the fast path was unsure: the generic check decides, with a reason
            res = parse_row(raw, now, check, loads)
            if isinstance(res, Rejection):
                invalid.append((i, res.reason))
                continue
            row = res
        valid.append(row)
        raws.append(raw)
        t = row[ts]
        if t < cut:
            late += 1
        eid = row[idf]
        if eid in seen:
            duplicates += 1
            repeats.append(len(valid) - 1)
            continue
        seen.add(eid)
        first_ids.append(eid)
        if t < oldest:
            beyond += 1
            first_rows.append(None)
        else:
            fresh.append(row)
            first_rows.append(row)
    # each valid copy its own instant, in consumption order: batch clock + position among the valid copies
    out.ingested_at = list(range(first, first + len(valid)))
    out.hashes = hashes = payload_hashes(raws)
    if repeats:
        later = set(repeats)
        claims.hashes = [h for j, h in enumerate(hashes) if j not in later]
    else:  # every valid copy is a first copy (the common case): the same hashes
        claims.hashes = hashes
    out.late, out.batch_duplicates, out.beyond_horizon = late, duplicates, beyond
    out.last_at = first + len(valid) - 1 if valid else max(now, last_at)
    return out
