"""Pure batch logic of the stream worker: validate, classify and de-duplicate one consumed batch.

No Kafka, Redis or Delta here (unit-testable with plain bytes): the consumer task hands over the message
values of a batch with the processing clock, and gets back what goes to the dead-letter topic, to the
raw sink and to the speed tiles.

Decoding: a message made only of the schema's fields is decoded by msgspec straight into typed fields
(:class:`_Wire`: no dict, the JSON types checked in C) and accepted by the core's fast path
(:func:`fstore.core.events.accept`); anything else — another field, a null id, a float time, a syntax
error, a check that fails — goes through :func:`fstore.core.events.parse` with orjson, which alone gives
the verdict and the reason. The typed decoder only ever accepts what the core accepts for the same
bytes, with the same event (``tests/unit/jobs/stream/test_pipeline.py`` compares both paths on
generated and mutated messages): unknown fields are refused rather than skipped, so no JSON text reaches
an accepted event without both decoders having read it the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
import orjson

from fstore.core.events import MAX_MESSAGE_BYTES, Event, Rejection, accept, parse, payload_hash


class _Wire(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The schema's fields with the JSON types the core's fast path accepts (others: the orjson path)."""

    event_id: str
    event_type: str
    user_id: str
    event_time: int | str
    product_id: str | None = None
    price: float | None = None
    quantity: int | None = None
    session_id: str | None = None


_decode = msgspec.json.Decoder(_Wire).decode


def parse_fast(raw: bytes, now: int) -> Event | Rejection:
    """:func:`fstore.core.events.parse` with orjson, via the typed decoder first (see the module docstring)."""
    if len(raw) <= MAX_MESSAGE_BYTES:
        try:
            w = _decode(raw)
        except Exception:  # DecodeError, UnicodeDecodeError (bad UTF-8), ...: the orjson path decides
            pass
        else:
            ev = accept(
                w.event_id, w.event_type, w.user_id, w.product_id, w.event_time, w.price, w.quantity, w.session_id, now
            )
            if ev is not None:
                return ev
    return parse(raw, now, orjson.loads)


@dataclass
class Prepared:
    """One batch, classified.

    ``valid`` holds every valid copy in consumption order (the raw sink stores them all: readers apply
    first-ingested-wins); ``ingested_at`` gives each copy its own instant (batch clock + position), so
    the first copy in the log is also the first ingested. ``fresh`` is the first copy of each event_id in
    the batch whose event_time is inside the horizon: the candidates for the speed tiles (the Lua script
    decides whether they are new).
    """

    valid: list[Event] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    ingested_at: list[int] = field(default_factory=list)
    fresh: list[Event] = field(default_factory=list)
    invalid: list[tuple[int, str]] = field(default_factory=list)  # (position in the batch, reason)
    batch_duplicates: int = 0
    late: int = 0
    beyond_horizon: int = 0
    last_at: int = 0


def prepare(values: Sequence[bytes], now: int, last_at: int, cutover: int | None, horizon_us: int) -> Prepared:
    """Validate and classify a batch of message values.

    Args:
        values: original message bytes, in consumption order.
        now: processing clock, UTC epoch microseconds (``future_timestamp`` is judged against it).
        last_at: the last ``ingested_at`` handed out (ingestion instants strictly increase).
        cutover: the serving batch view's cutover C, or ``None``; valid events before it are *late*.
        horizon_us: events older than ``now - horizon_us`` skip the tiles (raw_events still gets them).

    Returns:
        The classified batch; ``last_at`` is the last instant used.
    """
    out = Prepared()
    at = max(now, last_at + 1)
    oldest = now - horizon_us
    seen: set[str] = set()
    decode, fast, loads = _decode, accept, orjson.loads
    for i, raw in enumerate(values):
        res: Event | Rejection | None = None
        if len(raw) <= MAX_MESSAGE_BYTES:  # parse_fast, inlined: this loop runs for every message
            try:
                w = decode(raw)
            except Exception:  # as in parse_fast
                pass
            else:
                res = fast(
                    w.event_id,
                    w.event_type,
                    w.user_id,
                    w.product_id,
                    w.event_time,
                    w.price,
                    w.quantity,
                    w.session_id,
                    now,
                )
        if res is None:
            res = parse(raw, now, loads)
        if not isinstance(res, Event):
            out.invalid.append((i, res.reason))
            continue
        out.valid.append(res)
        out.hashes.append(payload_hash(raw))
        out.ingested_at.append(at)
        at += 1
        if cutover is not None and res.event_time < cutover:
            out.late += 1
        if res.event_id in seen:
            out.batch_duplicates += 1
        elif res.event_time < oldest:
            out.beyond_horizon += 1
        else:
            seen.add(res.event_id)
            out.fresh.append(res)
    out.last_at = at - 1 if out.valid else max(now, last_at)
    return out
