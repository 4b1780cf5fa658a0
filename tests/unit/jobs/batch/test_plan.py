"""The batch run's tile horizons (jobs.batch.plan.size_horizons) against the window contract (docs/design.md §3)."""

from __future__ import annotations

import dataclasses

import pytest

from fstore.core.plan import View
from fstore.core.plan_error import PlanError
from fstore.core.timeutil import DAY, HOUR, MINUTE
from jobs.batch.plan import size_horizons
from tests.support.repos import compiled

pytestmark = pytest.mark.unit

CUTOVER = 400 * DAY  # 00:00 UTC


def _with_windows(view: View, window: int) -> View:
    """``view`` with every windowed feature's window set to ``window`` (their hops as declared or defaulted)."""
    features = tuple(dataclasses.replace(f, window=window) if f in view.windowed else f for f in view.features)
    return dataclasses.replace(view, features=features)


@pytest.mark.parametrize("repo", ["ecommerce", "rides"])
@pytest.mark.parametrize("window", [7 * DAY + 30 * MINUTE, 36 * HOUR + 20 * MINUTE, 2 * HOUR + 7 * MINUTE, DAY])
def test_a_horizon_is_a_tile_start_at_or_before_every_tail_read_from_the_cutover(repo: str, window: int) -> None:
    """Whole tiles only (the horizon on the size's grid), and every tile a read at t ≥ C needs
    (from ``tail(C) = floor(C − W, hop)`` on, the window's own) still kept, for windows that are not
    multiples of their hop too."""
    checked = 0
    for view in compiled(repo).views:
        try:
            view = _with_windows(view, window)
        except PlanError:  # a declared slide longer than the window
            continue
        horizons = size_horizons(view, CUTOVER)
        assert set(horizons) == set(view.hops)
        for f in view.windowed:
            first = horizons[f.hop]
            tail = (CUTOVER - f.window) // f.hop * f.hop
            assert first % f.hop == 0, (view.name, f.name, window)
            assert first <= tail, (view.name, f.name, window)
            assert first >= CUTOVER - f.window - 2 * f.hop, (view.name, f.name, window)  # not longer than needed
            checked += f.window % f.hop != 0
    assert checked or window % HOUR == 0  # the unaligned windows meet an unaligned case in every repository
