"""De-duplication by event_id (DESIGN.md §2): the first ingested copy wins.

Copies are ordered by ``(ingested_at, payload_hash)``: the earliest ingestion wins and, between copies
ingested at the same instant, the smaller hash of the original bytes does. Every reader of
``raw_events`` applies this rule, so the at-least-once raw sink never double counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar


class Ingested(Protocol):
    """A stored copy of an event."""

    @property
    def event_id(self) -> str: ...

    @property
    def ingested_at(self) -> int: ...

    @property
    def payload_hash(self) -> str: ...


T = TypeVar("T", bound=Ingested)


def precedence(copy: Ingested) -> tuple[int, str]:
    """Sort key: smaller wins."""
    return (copy.ingested_at, copy.payload_hash)


def first_ingested(copies: Iterable[T]) -> dict[str, T]:
    """The winning copy per event_id."""
    best: dict[str, T] = {}
    for c in copies:
        cur = best.get(c.event_id)
        if cur is None or precedence(c) < precedence(cur):
            best[c.event_id] = c
    return best
