"""What the speed layer (:class:`jobs.stream.layer.SpeedLayer`) needs from the outside world.

The worker talks to four things; each is a Protocol here, with the production adapter named and an
in-memory fake in :mod:`jobs.stream.fakes`, so a pipeline test runs in-process in a few lines:

* :class:`TileSink` — the speed tiles, exactly once per event_id (production: :class:`jobs.stream.sinks.TileWriter`,
  Lua in Redis);
* :class:`RawEventSink` — the buffered append of every valid copy to Delta ``raw_events``
  (:class:`jobs.stream.sinks.RawSink`);
* :class:`DeadLetterSink` — the dead-letter topic (:class:`jobs.stream.dead_letters.KafkaDeadLetters`, an
  idempotent producer: its ``send`` returns an awaitable that resolves once the broker has the record);
* :class:`KeyValue` — the two small Redis keys the worker reads and writes: the batch pointer (for the
  cutover C) and its heartbeat (a ``redis.asyncio.Redis`` client).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from fstore.core.events import Row
from jobs.stream.pipeline import Claims


class TileSink(Protocol):
    """Applies candidate events to the speed tiles, skipping event_ids already counted.

    An event stamped at or after the processing clock ``now`` is not put in a tile: it is held with its
    exact time (readers count it once ``as_of`` passes that time) until the worker moves it into the
    tiles (:meth:`plan_moves`), once its time has come (docs/design.md §5).
    """

    def plan(self, events: Sequence[Row], now: int | None = None) -> Any:
        """Prepare a batch (pure CPU; the worker runs it while the previous batch's request is in flight)."""
        ...

    async def claim(self, claims: Claims, now: int | None = None) -> set[str]:
        """Claim a batch's first copies (their event_ids, payload hashes and rows, ``None`` for one too old for
        the tiles); returns the ids whose rows must not count: claimed first by another copy whose markers do
        not cover them (:mod:`jobs.stream.claims`)."""
        ...

    def drop(self, plan: Any, lost: set[str]) -> set[str]:
        """Take the rows whose ids are in ``lost`` out of an unsent plan; returns the ids it held."""
        ...

    async def send(self, plan: Any, on_sent: Callable[[], None] | None = None) -> set[str]:
        """Apply a plan (safe to repeat after a failure); returns the event_ids skipped as duplicates.
        ``on_sent`` is called once the request is written."""
        ...

    async def apply(self, events: Sequence[Row], now: int | None = None) -> set[str]:
        """``send(plan(events, now))``."""
        ...

    def stored_future(self, plan: Any) -> list[tuple[Any, str, Row]]:
        """``(view, entity, event)`` of the future events a sent plan holds exactly (to move once due)."""
        ...

    def plan_moves(self, due: Sequence[tuple[Any, str, Row]]) -> Any:
        """A plan that moves held future events into the tiles (only ones :meth:`stored_future` returned)."""
        ...


class RawEventSink(Protocol):
    """Buffers valid copies with release tokens; a flush writes them and hands the tokens back in order."""

    @property
    def buffered(self) -> int:
        """Rows waiting for the next flush."""
        ...

    def to_rows(self, events: Sequence[Row], hashes: Sequence[str], ingested_at: Sequence[int]) -> Any:
        """The sink's form of a batch's rows, made when the batch is validated (before its tiles); raises on a
        value the sink cannot hold, so that the worker can isolate and dead-letter the message."""
        ...

    def add(self, rows: Any, tokens: Sequence[Any]) -> None:
        """Buffer rows made by :meth:`to_rows` (possibly none) and the tokens to release once they are written."""
        ...

    def warm(self) -> None:
        """Pay one-off costs (lazy imports) before the first batch."""
        ...

    def due(self) -> bool:
        """Whether the buffer reached its size or age bound."""
        ...

    async def flush(self) -> tuple[list[Any], int]:
        """Write what is buffered; returns ``(tokens, rows)``. On error nothing is released."""
        ...

    def flush_sync(self) -> tuple[list[Any], int]:
        """Blocking :meth:`flush` for shutdown."""
        ...


class DeadLetterSink(Protocol):
    """The dead-letter topic (production: :class:`jobs.stream.dead_letters.KafkaDeadLetters`)."""

    async def start(self) -> None:
        """Connect (called before the first batch; idempotent)."""
        ...

    async def stop(self) -> None:
        """Flush what is queued and disconnect."""
        ...

    async def send(self, *, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> Awaitable[Any]:
        """Queue one record; the returned awaitable resolves once the broker acknowledged it."""
        ...

    async def reset(self) -> None:
        """Drop the connection's state after failed sends and start a fresh one (called before a retry)."""
        ...


class KeyValue(Protocol):
    """The worker's reads and writes of single Redis keys."""

    async def get(self, key: str) -> Any:
        """The value of ``key`` (``None`` when missing)."""
        ...

    async def set(self, key: str, value: bytes | str, ex: int | None = None) -> Any:
        """Write ``key`` (expiring after ``ex`` seconds)."""
        ...
