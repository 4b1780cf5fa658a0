"""What one nightly run covers: cutover, tile horizons per view and size, raw partitions to read.

Pure arithmetic over the compiled plan (:func:`fstore.plan_source.current_plan` unless one is given);
the Spark job and the tests share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from fstore.core.plan import Plan, View
from fstore.core.timeutil import DAY, day_start, iso, to_date
from fstore.plan_source import current_plan


class OpenDay(ValueError):
    """A run date that is not over yet: its cutover is after the clock, so the batch view would own tiles
    whose events are still arriving (and events stamped ahead of the reads), and the speed layer none."""


def check_closed(run_date: date, now: int) -> None:
    """Refuse ``run_date`` unless its cutover (the next 00:00 UTC) is not after ``now`` (UTC epoch µs).

    Raises:
        OpenDay: naming the date, its cutover and the latest closed day.
    """
    cutover = day_start(run_date + timedelta(days=1))
    if cutover > now:
        latest = to_date(now) - timedelta(days=1)
        raise OpenDay(
            f"run date {run_date} is not over: its cutover {iso(cutover)} is after now ({iso(now)}); "
            f"the latest closed day is {latest} (fstore batch --date {latest})"
        )


@dataclass(frozen=True)
class RunPlan:
    """The run for date ``run_date``: cutover ``C`` = next 00:00 UTC.

    ``read_from`` is ``C - longest window - largest hop``: every event a tile of the batch view can hold
    lies in ``[read_from, C)``. ``horizons[view][size]`` is the first tile start the batch view needs at
    that size: ``C - (longest window served by that size) - size``.
    """

    run_date: date
    cutover: int
    read_from: int
    horizons: dict[str, dict[int, int]]

    @property
    def dates(self) -> list[date]:
        """The ``event_date`` partitions of ``raw_events`` the run reads."""
        first, last = to_date(self.read_from), self.run_date
        return [first + timedelta(days=i) for i in range((last - first).days + 1)]

    @property
    def day_start(self) -> int:
        """00:00 UTC of the run date (the day whose data the quality gate judges)."""
        return self.cutover - DAY


def size_horizons(view: View, cutover: int) -> dict[int, int]:
    """First needed tile start per tile size of ``view`` for cutover ``cutover``: ``C − W − s`` for the longest
    window ``W`` of size ``s``, rounded up to a tile start. A window need not be a multiple of its hop; the
    earliest tail any read from ``C`` on needs is ``floor(C − W, s)``, never before that tile start, and a
    horizon on the tile grid keeps whole tiles only: the events from it on make the same tiles as all events
    do (a day's tiles taken from an earlier night, ``jobs/batch/tile_reuse.py``, rely on it)."""
    return {s: -(-(cutover - max(f.window for f in view.windowed if f.hop == s) - s) // s) * s for s in view.hops}


def plan_run(run_date: date, plan: Plan | None = None) -> RunPlan:
    """The run for ``run_date`` of ``plan``'s views (default: the process's plan)."""
    plan = current_plan() if plan is None else plan
    cutover = day_start(run_date + timedelta(days=1))
    return RunPlan(
        run_date,
        cutover,
        cutover - plan.longest_window - plan.largest_hop,
        {v.name: size_horizons(v, cutover) for v in plan.views},
    )


def tiles_table(view: str) -> str:
    """Name of the Delta tile table of a view (``tiles_<view>``)."""
    return f"tiles_{view}"


def snapshot_table(view: str) -> str:
    """Name of the Delta feature-snapshot table of a view (``feature_snapshots/<view>``)."""
    return f"feature_snapshots/{view}"
