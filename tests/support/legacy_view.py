"""The old fixed-definition views (:mod:`tests.support.legacy.features`, still used by the boundary table) as plan
views, so tables written against them also drive the engines that now run from a compiled plan.

The measures become the expressions the example repository declares (``1 if event_type == '<type>'``,
``price * quantity if event_type == 'purchase'``), so the values are the same.
"""

from __future__ import annotations

from fstore.core.expr_parse import parse_measure
from fstore.core.functions import Function
from fstore.core.plan import Entity, Feature, Measure, RatioFeature, View, WindowedFeature
from tests.support.legacy.features import FeatureView, ValueKind
from tests.support.legacy.features import RatioFeature as OldRatio

_FUNCTIONS = {
    "count": Function.COUNT,
    "sum": Function.SUM,
    "avg": Function.MEAN,
    "min": Function.MIN,
    "max": Function.MAX,
}
_CACHE: dict[str, View] = {}


def plan_view(old: FeatureView) -> View:
    """The plan view with the same name, entity, measures and features as ``old`` (memoised by name)."""
    hit = _CACHE.get(old.name)
    if hit is not None:
        return hit
    measures: dict[str, Measure] = {}
    features: list[Feature] = []
    for f in old.features:
        if isinstance(f, OldRatio):
            features.append(RatioFeature(f.name, f.numerator, f.denominator))
            continue
        m = f.measure
        value = "price * quantity" if m.value is ValueKind.REVENUE else "1"
        measures[m.name] = Measure(m.name, *parse_measure(f"{value} if event_type == '{m.event_type}'"))
        features.append(WindowedFeature(f.name, m.name, _FUNCTIONS[str(f.agg.value)], f.window))
    view = View(old.name, Entity(old.entity.name, old.entity.join_key), tuple(measures.values()), tuple(features))
    _CACHE[old.name] = view
    return view
