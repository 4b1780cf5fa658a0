"""What a change of definitions needs (docs/design.md §3 "Evolution"), on the ``rides`` plan.

Each case edits the applied plan the way a user edits the repository and states, from the contract,
which tile series need a backfill, which are freed and which features are refused until then.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from fstore.core.expr_parse import parse_measure
from fstore.core.functions import Function, State
from fstore.core.plan import Measure, Plan, RatioFeature, View, WindowedFeature
from fstore.core.plan_diff import diff, series_of
from fstore.core.plan_error import PlanError
from fstore.core.timeutil import DAY, HOUR, MINUTE
from jobs.batch.plan import size_horizons
from tests.support.repos import compiled

pytestmark = pytest.mark.unit


def edit(plan: Plan, view: str, *, add: tuple[object, ...] = (), drop: tuple[str, ...] = (),
         measures: tuple[Measure, ...] = (), swap: dict[str, object] | None = None) -> Plan:  # fmt: skip
    """``plan`` with features added to / dropped from / replaced in one view, and measures added."""
    views = []
    for v in plan.views:
        if v.name == view:
            feats = tuple((swap or {}).get(f.name, f) for f in v.features if f.name not in drop) + add
            v = replace(v, features=feats, measures=v.measures + measures)  # type: ignore[arg-type]
        views.append(v)
    return replace(plan, views=tuple(views))


def dp(plan: Plan) -> View:
    return plan.view("driver_performance")


def test_the_first_apply_builds_every_series_and_refuses_every_feature() -> None:
    plan = compiled("rides")
    change = diff(None, plan)
    assert {s.key for s in change.build} == set(series_of(plan))
    assert len(change.pending) == sum(len(v.features) for v in plan.views)
    assert diff(plan, plan).empty and not diff(plan, plan).pending


def test_a_feature_on_a_new_measure_needs_its_series_built() -> None:
    old = compiled("rides")
    tips = Measure("tip_paid", *parse_measure("tip if kind == 'tipped'"))
    new = edit(old, "driver_performance", measures=(tips,),
               add=(WindowedFeature("tips_1d", "tip_paid", Function.SUM, DAY),))  # fmt: skip
    change = diff(old, new)
    assert change.added == ("driver_performance:tips_1d",)
    assert [(s.measure, s.hop) for s in change.build] == [("tip_paid", HOUR)]
    assert change.pending == ("driver_performance:tips_1d",) and not change.free


def test_a_new_function_on_existing_tiles_is_ready_unless_it_needs_a_state_they_do_not_keep() -> None:
    old = compiled("rides")
    trips = replace(dp(old).feature("trips_2d"), name="trips_2d_again")
    assert not diff(old, edit(old, "driver_performance", add=(trips,))).pending  # same tiles, same states
    spread = WindowedFeature("stars_std_30d", "stars", Function.STD, 30 * DAY)  # stars keep no m2 yet
    change = diff(old, edit(old, "driver_performance", add=(spread,)))
    assert [(s.measure, s.hop) for s in change.build] == [("stars", DAY)]
    assert change.pending == ("driver_performance:stars_std_30d",)  # min, max, mean: tiles still serve them


def test_a_window_beyond_the_stored_history_needs_a_backfill_one_within_it_does_not() -> None:
    """The batch view keeps a view's tiles of one size back to its longest window of that size (not to the
    plan's longest window): driver_performance's hourly tiles reach 2 days back, its daily ones 30."""
    old = compiled("rides")
    trips, stars = dp(old).feature("trips_2d"), dp(old).feature("stars_max_30d")
    assert isinstance(trips, WindowedFeature) and isinstance(stars, WindowedFeature)
    within = diff(old, edit(old, "driver_performance", swap={"trips_2d": replace(trips, window=36 * HOUR)}))
    assert within.changed == ("driver_performance:cancellation_rate_2d", "driver_performance:trips_2d")
    assert not within.build and not within.pending
    ten_days = diff(old, edit(old, "driver_performance", swap={"trips_2d": replace(trips, window=10 * DAY)}))
    assert [(s.measure, s.hop) for s in ten_days.build] == [("trip", HOUR)]  # hourly tiles: 2 days kept
    assert ten_days.pending == ("driver_performance:trips_2d", "driver_performance:cancellation_rate_2d")
    beyond = diff(old, edit(old, "driver_performance", swap={"stars_max_30d": replace(stars, window=45 * DAY)}))
    assert [(s.measure, s.hop) for s in beyond.build] == [("stars", DAY)]
    assert beyond.pending == ("driver_performance:stars_max_30d",)  # min and mean of 30 d stay served


def test_a_longer_window_on_the_tiles_of_a_shorter_one_waits_for_its_backfill() -> None:
    """design §3: a feature added to the example — clicks over 6 h, on the 5-minute click tiles that
    clicks_1h reads — is refused until built: the batch view holds those tiles for the last hour only."""
    old = compiled("ecommerce")
    clicks = old.view("user_activity").feature("clicks_1h")
    assert isinstance(clicks, WindowedFeature)
    change = diff(old, edit(old, "user_activity", add=(replace(clicks, name="clicks_6h", window=6 * HOUR),)))
    assert [(s.view, s.measure, s.hop) for s in change.build] == [("user_activity", "click", 5 * MINUTE)]
    assert change.pending == ("user_activity:clicks_6h",)  # clicks_1h stays served from the same tiles


WINDOWS = (10 * MINUTE, HOUR, 3 * HOUR, 6 * HOUR, 13 * HOUR, 2 * DAY, 10 * DAY, 30 * DAY)


@pytest.mark.parametrize("name", ["rides", "ecommerce"])
def test_a_feature_served_at_once_reads_only_tiles_the_last_batch_view_holds(name: str) -> None:
    """Independent of the diff's own rule: every feature a change leaves served (not pending) must find its
    tiles in the batch view the applied plan's nightly run keeps (jobs/batch/plan.py's horizons), for any
    window given to any feature."""
    old = compiled(name)
    cutover = 100 * DAY
    kept = {v.name: size_horizons(v, cutover) for v in old.views}
    checked = 0
    for view in old.views:
        for f in view.windowed:
            for window in WINDOWS:
                try:
                    new = edit(old, view.name, swap={f.name: replace(f, window=window)})
                except PlanError:  # a declared slide longer than the window
                    continue
                waiting = set(diff(old, new).pending)
                for g in new.view(view.name).windowed:
                    if f"{view.name}:{g.name}" in waiting:
                        continue
                    checked += 1
                    first = kept[view.name].get(g.hop)
                    assert first is not None and first <= cutover - g.window - g.hop, (f.name, window, g.name)
    assert checked > 500


def test_a_redefined_measure_is_rebuilt_and_its_ratios_wait() -> None:
    old = compiled("rides")
    view = dp(old)
    cancels = Measure("cancellation", *parse_measure("1 if kind == 'cancelled' and airport"))
    measures = tuple(cancels if m.name == "cancellation" else m for m in view.measures)
    new = replace(old, views=tuple(replace(v, measures=measures) if v is view else v for v in old.views))
    change = diff(old, new)
    assert change.changed == ("driver_performance:cancellation_rate_2d", "driver_performance:cancellations_2d")
    assert [s.measure for s in change.build] == ["cancellation"]
    assert set(change.pending) == {"driver_performance:cancellations_2d", "driver_performance:cancellation_rate_2d"}


def test_removing_the_last_reader_frees_the_series_and_a_rename_is_served_at_once() -> None:
    old = compiled("rides")
    assert not diff(old, edit(old, "zone_demand", drop=("requests_10m",))).free  # requests_3h reads them too
    change = diff(old, edit(old, "zone_demand", drop=("requests_10m", "requests_3h", "fill_rate_3h")))
    assert change.removed == ("zone_demand:fill_rate_3h", "zone_demand:requests_10m", "zone_demand:requests_3h")
    assert [(s.measure, s.hop) for s in change.free] == [("request", 5 * MINUTE)] and not change.build
    hourly = diff(old, edit(old, "driver_performance", drop=("trips_2d", "cancellation_rate_2d")))
    assert [(s.measure, s.hop) for s in hourly.free] == [("trip", HOUR)]  # trips_10m reads 5-minute tiles
    renamed = replace(dp(old).feature("fare_3h"), name="fares_3h")
    moved = diff(old, edit(old, "driver_performance", drop=("fare_3h",), add=(renamed,)))
    assert (moved.added, moved.removed, moved.build, moved.free, moved.pending) == (
        ("driver_performance:fares_3h",),
        ("driver_performance:fare_3h",),
        (),
        (),
        (),
    )


def test_removing_the_last_std_sheds_the_m2_of_a_series_other_features_keep() -> None:
    old = compiled("rides")
    assert not diff(old, edit(old, "driver_performance", drop=("fare_std_2d",))).shed  # fare_var_2d needs m2 too
    change = diff(old, edit(old, "driver_performance", drop=("fare_std_2d", "fare_var_2d")))
    assert [(s.measure, s.hop, state) for s, state in change.shed] == [("fare", HOUR, State.M2)]
    assert not change.free and not change.build and not change.pending and not change.empty
    assert "free driver_performance/fare every 3600s: m2" in change.lines()


def test_what_a_pending_feature_waits_for_is_not_built_for_the_next_change() -> None:
    old = compiled("rides")
    std = WindowedFeature("stars_std_30d", "stars", Function.STD, 30 * DAY)
    var = WindowedFeature("stars_var_30d", "stars", Function.VAR, 30 * DAY)
    applied = edit(old, "driver_performance", add=(std,))
    assert diff(old, applied).pending == ("driver_performance:stars_std_30d",)
    both = edit(applied, "driver_performance", add=(var,))
    assert diff(applied, both).pending == ()  # as if the std's m2 were built
    change = diff(applied, both, unbuilt=("driver_performance:stars_std_30d",))
    assert set(change.pending) == {"driver_performance:stars_std_30d", "driver_performance:stars_var_30d"}
    assert not change.free and not change.shed


def test_a_window_a_pending_feature_would_cover_is_not_built_for_the_next_change() -> None:
    """The window half of the same rule: the 5-minute request tiles reach back 3 h; a pending 6 h count would
    make them reach 6 h once built, but until then a 5 h count added next must wait for its backfill too."""
    old = compiled("rides")
    six = WindowedFeature("requests_6h", "request", Function.COUNT, 6 * HOUR, 5 * MINUTE)
    five = WindowedFeature("requests_5h", "request", Function.COUNT, 5 * HOUR, 5 * MINUTE)
    applied = edit(old, "zone_demand", add=(six,))
    assert diff(old, applied).pending == ("zone_demand:requests_6h",)
    both = edit(applied, "zone_demand", add=(five,))
    assert diff(applied, both).pending == ()  # as if the 6 h tiles were built
    change = diff(applied, both, unbuilt=("zone_demand:requests_6h",))
    assert set(change.pending) == {"zone_demand:requests_6h", "zone_demand:requests_5h"}


def test_summary_lines_name_every_item() -> None:
    old = compiled("rides")
    ratio = RatioFeature("airport_share_2d", "airport_trips_2d", "trips_2d")
    lines = diff(old, edit(old, "driver_performance", add=(ratio,), drop=("trips_10m",))).lines()
    assert lines == ["+ driver_performance:airport_share_2d", "- driver_performance:trips_10m",
                     "free driver_performance/trip every 300s"]  # fmt: skip


def test_a_field_whose_type_changed_is_a_mistake_no_backfill_makes_good() -> None:
    """probe-evo2: INT → BIGINT was "no change"; raw_events kept its int32 column, and the first value past 2³¹
    stopped the worker after its batch had counted. A changed type is refused, naming the field."""
    from fstore.core.event_schema import FieldType
    from fstore.core.plan_diff import retyped

    old = compiled("rides")
    fields = tuple(replace(f, type=FieldType.LONG) if f.name == "stars" else f for f in old.schema.fields)
    new = replace(old, schema=replace(old.schema, fields=fields))
    assert retyped(old, old) == [] and diff(old, new).empty  # the features read nothing new
    (problem,) = retyped(old, new)
    assert problem.startswith("event field 'stars': its type cannot change from int to long"), problem
    added = replace(new, schema=replace(new.schema, fields=(*old.schema.fields, replace(fields[0], name="extra"))))
    assert retyped(old, added) == []  # a new field, and none retyped: fine
