"""Which windows and declared hops fstore can serve (docs/design.md §3), and durations as short text."""

from __future__ import annotations

from fstore.core.timeutil import DAY, HOUR, MINUTE, SECOND

#: The longest window fstore serves: the nightly batch rebuilds ``longest window + largest hop`` of tiles.
MAX_WINDOW = 366 * DAY
#: The smallest declared hop (one tile per entity and measure every minute is the finest Redis keeps).
MIN_HOP = MINUTE
#: The most tiles one value may read (the default hop table never needs more than 366).
MAX_TILES = 1000


def duration_text(us: int) -> str:
    """``90 * MINUTE`` → ``"90m"``, ``2 * DAY`` → ``"2d"``: the largest unit that divides the duration."""
    for unit, suffix in ((DAY, "d"), (HOUR, "h"), (MINUTE, "m"), (SECOND, "s")):
        if us and us % unit == 0:
            return f"{us // unit}{suffix}"
    return f"{us}us"


def window_problem(window: int, slide: int | None) -> str | None:
    """Why fstore cannot serve a window with this declared hop (``None``: it can).

    A window must be positive and at most :data:`MAX_WINDOW`; a declared hop at least :data:`MIN_HOP`,
    dividing a day (so 00:00 UTC, the batch cutover, is a tile boundary of every hop), at most the
    window, and such that a value reads at most :data:`MAX_TILES` tiles.
    """
    if window <= 0:
        return "time_window must be positive"
    if window > MAX_WINDOW:
        return f"time_window {duration_text(window)} is longer than the longest window fstore serves (366d)"
    if slide is None:
        return None
    if slide < MIN_HOP or DAY % slide:
        return (
            f"slide_interval {duration_text(slide)} must be at least 1 minute and divide a day "
            "(e.g. 5 minutes, 15 minutes, 1 hour, 6 hours, 1 day)"
        )
    if slide > window:
        return f"slide_interval {duration_text(slide)} is longer than time_window {duration_text(window)}"
    tiles = -(-window // slide) + 1
    if tiles > MAX_TILES:
        return (
            f"a value would read {tiles} tiles of {duration_text(slide)} (at most {MAX_TILES}): "
            "declare a larger slide_interval"
        )
    return None
