"""numpy's transparent huge pages, switched off while the point-in-time engine runs (numpy only).

numpy asks the kernel for transparent huge pages (``madvise(MADV_HUGEPAGE)``) on every array of 4 MB or
more. The engine allocates and frees hundreds of such arrays per request from several threads; freed
memory goes back to the kernel and the next array faults it in again, each fault of a huge page zeroing
2 MB whatever part of it is used. On the point-in-time benchmark (1M rows × 21 features over 10M events)
that cost 1.5–2.5 CPU-s of kernel time per request, and varied from run to run with how the allocations
of the threads happened to fall (docs/benchmarks.md, "session 6"); with 4 kB pages the same request
faults more often but zeroes only the pages it touches. The switch is numpy's own
(``NUMPY_MADVISE_HUGEPAGE=0`` does the same for a whole process).

:func:`small_pages` switches it off for the duration of a call and puts back what it was when the last
concurrent caller leaves. It only changes how memory is obtained, never a result.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from numpy._core import multiarray

#: numpy's switch (returns the previous setting); ``None`` when this numpy has none.
_SET: Callable[[bool], bool] | None = getattr(multiarray, "_set_madvise_hugepage", None)
_lock = threading.Lock()
_inside = 0
_before = True


def enabled() -> bool | None:
    """Whether numpy currently asks for huge pages (``None``: this numpy cannot tell)."""
    if _SET is None:
        return None
    with _lock:
        current = _SET(True)
        _SET(current)
        return current


@contextmanager
def small_pages() -> Iterator[None]:
    """Run the body with numpy's huge-page requests off (re-entrant and thread-safe: the setting found by
    the first caller is restored when the last one leaves)."""
    global _inside, _before
    if _SET is None:
        yield
        return
    with _lock:
        if _inside == 0:
            _before = _SET(False)
        _inside += 1
    try:
        yield
    finally:
        with _lock:
            _inside -= 1
            if _inside == 0:
                _SET(_before)
