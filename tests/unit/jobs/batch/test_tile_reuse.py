"""The keys that decide whether a day's tiles may be taken from an earlier run (jobs.batch.tile_reuse)."""

from __future__ import annotations

import dataclasses
from datetime import date

import pytest

from fstore.core.plan import View, WindowedFeature
from fstore.core.timeutil import HOUR, MINUTE
from jobs.batch.tile_reuse import day_key, view_key
from tests.support.repos import compiled

pytestmark = pytest.mark.unit

D = date(2026, 11, 20)


def _edit_first_window(view: View, window: int) -> View:
    first = next(f for f in view.windowed)
    features = tuple(dataclasses.replace(f, window=window) if f is first else f for f in view.features)
    return dataclasses.replace(view, features=features)


@pytest.mark.parametrize("repo", ["ecommerce", "rides"])
def test_a_view_key_changes_with_the_view_and_the_schema_but_not_with_other_views(repo: str) -> None:
    plan = compiled(repo)
    view, *others = plan.views
    key = view_key(plan, view)
    assert key is not None and key == view_key(compiled(repo), compiled(repo).views[0])  # stable
    measure = view.measures[0]
    refiltered = dataclasses.replace(view, measures=(dataclasses.replace(measure, where=None), *view.measures[1:]))
    changed = [
        _edit_first_window(view, next(f for f in view.windowed).window + HOUR),
        dataclasses.replace(view, description=view.description + " edited"),
    ]
    if measure.where is not None:
        changed.append(refiltered)
    for edited in changed:
        assert view_key(dataclasses.replace(plan, views=(edited, *others)), edited) != key
    field = plan.schema.fields[-1]
    schema = dataclasses.replace(
        plan.schema, fields=(*plan.schema.fields[:-1], dataclasses.replace(field, required=not field.required))
    )
    assert view_key(dataclasses.replace(plan, schema=schema), view) != key
    if others:  # another view's change leaves this view's tiles alone
        edited_other = _edit_first_window(others[0], next(f for f in others[0].windowed).window + HOUR)
        assert view_key(dataclasses.replace(plan, views=(view, edited_other, *others[1:])), view) == key


def test_a_day_key_changes_with_the_view_the_day_and_its_input() -> None:
    base = day_key("v1", D, "fp1")
    assert base == day_key("v1", D, "fp1")
    assert len({base, day_key("v2", D, "fp1"), day_key("v1", date(2026, 11, 19), "fp1"), day_key("v1", D, "fp2")}) == 4


def test_no_key_when_a_tile_could_span_two_days() -> None:
    plan = compiled("ecommerce")
    view = plan.views[0]
    odd = next(f for f in view.windowed)
    # The plan's own checks refuse a hop that does not divide a day; the key does not rely on them.
    bad = WindowedFeature(odd.name, odd.measure, odd.function, odd.window, 5 * MINUTE)
    object.__setattr__(bad, "slide", 7 * MINUTE)
    edited = dataclasses.replace(view)
    object.__setattr__(edited, "features", tuple(bad if f is odd else f for f in view.features))
    assert 7 * MINUTE in edited.hops and view_key(plan, edited) is None
