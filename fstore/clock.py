"""The one wall clock. Everything that needs "now" takes a :data:`Clock` argument defaulting to
:func:`wall_clock`, so tests inject a fixed or stepping clock instead (the core never reads the time)."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], int]  # returns UTC epoch microseconds


def wall_clock() -> int:
    """Current UTC time in epoch microseconds."""
    return time.time_ns() // 1000
