"""Window, hop, tail and tile arithmetic (docs/design.md §3).

For a window ``W`` evaluated at time ``t`` the events that count are those with
``tail(t) <= event_time < t`` where ``tail(t) = floor(t - W, hop(W))``. The head is exact, the tail is
aligned down to the hop grid, so the effective window lies between ``W`` and ``W + hop(W)``.

Tiles are the unit of storage in every layer: a tile of size ``hop`` starting at ``s`` (a multiple of
``hop``) holds the partial aggregates of the events in ``[s, s + hop)``. A window is therefore the full
tiles from ``tail(t)`` up to ``floor(t, hop)`` plus the head tile ``[floor(t, hop), t)``.
"""

from __future__ import annotations

from typing import NamedTuple

from fstore.core.timeutil import DAY, HOUR, MINUTE, Micros, ceil_to, floor_to

HOP_SHORT = 5 * MINUTE
HOP_MEDIUM = HOUR
HOP_LONG = DAY


def hop(window: int) -> int:
    """The hop (tile size) of a window, both in microseconds.

    ``W <= 12 h`` → 5 minutes; ``12 h < W <= 12 days`` → 1 hour; ``W > 12 days`` → 1 day.
    """
    if window <= 0:
        raise ValueError(f"window must be positive, got {window} us")
    if window <= 12 * HOUR:
        return HOP_SHORT
    if window <= 12 * DAY:
        return HOP_MEDIUM
    return HOP_LONG


def tail(t: Micros, window: int, size: int | None = None) -> Micros:
    """First included instant of the window ending (exclusively) at ``t``: ``floor(t - W, hop(W))``.

    Args:
        t: evaluation time(s), UTC epoch µs (an int, or an int64 array for the vectorised engines).
        window: ``W`` in µs.
        size: the hop grid to align to (default: :func:`hop` of the window).
    """
    lo = t - window  # = floor_to(t - window, size), aligned in place on this new value: for an int64 array
    # of 1M rows that saves the point-in-time engine a temporary per window
    lo -= lo % (hop(window) if size is None else size)
    return lo


def tile_bounds(t: int, window: int, size: int | None = None) -> tuple[int, int]:
    """``(lo, hi)``: the tiles of ``size`` that serve the window ``[tail(t), t)`` are those starting in
    ``[lo, hi)`` — the full tiles from the tail, then the head tile ``[floor(t), t)`` unless ``t`` is on
    the grid. Every reader of tiles takes its bounds from here.

    Args:
        t: evaluation time, UTC epoch µs (exclusive).
        window: ``W`` in µs.
        size: tile size (default: :func:`hop` of the window).
    """
    if size is None:
        size = hop(window)
    lo = t - window  # (tail(t, window, size), ceil_to(t, size)) inlined: this runs per window per online read
    return lo - lo % size, t + -t % size


class TileSpan(NamedTuple):
    """The tiles that make up one window evaluation.

    ``full_start`` .. ``head_start`` (exclusive, step ``size``) are complete tiles; the head tile starts at
    ``head_start`` and only its events strictly before ``t`` count (none when ``head_start == t``).
    """

    size: int
    full_start: int
    head_start: int
    t: int

    def full_tiles(self) -> range:
        """Start times of the complete tiles."""
        return range(self.full_start, self.head_start, self.size)

    def all_tiles(self) -> range:
        """Start times of every tile that may hold a counted event (full tiles and the head tile)."""
        return range(self.full_start, ceil_to(self.t, self.size), self.size)


def span(t: int, window: int) -> TileSpan:
    """Decompose the window ending at ``t`` into tiles of ``hop(window)``."""
    size = hop(window)
    return TileSpan(size=size, full_start=tail(t, window, size), head_start=floor_to(t, size), t=t)


#: ``tile_start(event_time, size)``: start of the tile of ``size`` that contains ``event_time`` (tiles lie
#: on the epoch-anchored grid; an alias, so the stream's per-event fold pays one call, not two).
tile_start = floor_to
