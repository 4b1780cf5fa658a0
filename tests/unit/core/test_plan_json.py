"""A stored plan reads back as the same plan; its fingerprint changes with any definition."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from fstore.core.plan_json import fingerprint, from_dict, from_json, to_dict, to_json
from tests.support.repos import compiled

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("repo", ["ecommerce", "rides"])
def test_round_trip_gives_an_equal_plan_and_fingerprint(repo: str) -> None:
    plan = compiled(repo)
    text = to_json(plan)
    back = from_json(text)
    assert back == plan
    assert to_json(back) == text and fingerprint(back) == fingerprint(plan)
    assert "distance_km * rate_per_km * surge if kind == 'completed'" in text or repo == "ecommerce"


def test_any_change_changes_the_fingerprint_and_unknown_formats_are_refused() -> None:
    plan = compiled("rides")
    view = plan.views[0]
    longer = replace(view.windowed[0], window=view.windowed[0].window * 2)
    changed = replace(plan, views=(replace(view, features=(longer, *view.features[1:])), *plan.views[1:]))
    assert fingerprint(changed) != fingerprint(plan)
    data = to_dict(plan) | {"format": 99}
    with pytest.raises(ValueError, match="format 99"):
        from_dict(json.loads(json.dumps(data)))
