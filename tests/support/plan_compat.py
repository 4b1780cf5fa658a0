"""The boundary table's views (:mod:`tests.support.boundary`, written with the example's fixed
definitions) as views of a compiled plan, so the plan-driven engines can run its rows. The measures are
the example repository's (same names); functions map one to one (``avg`` is ``mean``)."""

from __future__ import annotations

from fstore.core.functions import Function
from fstore.core.plan import Entity, Measure, RatioFeature, View, WindowedFeature
from tests.support.legacy.features import FeatureView
from tests.support.legacy.features import RatioFeature as OldRatio
from tests.support.repos import compiled

_FUNCTIONS = {"count": Function.COUNT, "sum": Function.SUM, "avg": Function.MEAN, "min": Function.MIN,
              "max": Function.MAX}  # fmt: skip


def plan_view(old: FeatureView) -> View:
    """``old`` over the example plan's measures and entities."""
    plan = compiled("ecommerce")
    measures: dict[str, Measure] = {m.name: m for v in plan.views for m in v.measures}
    entity = next(e for e in plan.entities if e.join_key == old.entity.join_key)
    features: list[WindowedFeature | RatioFeature] = []
    used: dict[str, Measure] = {}
    for f in old.features:
        if isinstance(f, OldRatio):
            features.append(RatioFeature(f.name, f.numerator, f.denominator))
        else:
            used[f.measure.name] = measures[f.measure.name]
            features.append(WindowedFeature(f.name, f.measure.name, _FUNCTIONS[str(f.agg)], f.window))
    return View(old.name, Entity(entity.name, entity.join_key), tuple(used.values()), tuple(features))
