"""Serving a repository that shares nothing with the example (``tests/support/repos/rides``), from its plan.

Ride traffic (:mod:`tests.support.rides_traffic`) is tiled by the reference tiler and written to a real
Redis in both layouts — the batch view packed with the variance state and distinct members, the speed view
per statistic (``c s n x v`` and member fields), some events as future-event JSON fields (numbers and
strings) — then ``GET``/``POST /features`` and Feast's ``get_online_features`` (through the fstore online
store) must equal the independent brute force of the contract (:mod:`tests.support.plan_bruteforce`) for
every feature: every function (std/var/count_distinct included), the ratios, and empty windows (0 / null).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from fstore.core.plan import Plan
from fstore.core.timeutil import DAY, HOUR, MINUTE
from fstore.devsvc.services import RedisServer
from fstore.plan_source import use_plan
from services.online_api.app import create_app
from services.online_api.settings import ApiSettings
from tests.support import plan_bruteforce
from tests.support.feast import applied_repo
from tests.support.plan_online import load_plan
from tests.support.repos import ROOT, compiled
from tests.support.rides_traffic import rides

pytestmark = pytest.mark.integration

C = 1_795_219_200_000_000  # 2026-11-21T00:00Z, the cutover
# Two reads: 13 h 7 min past the cutover (mid-tile), and exactly on a 15-minute and 6-hour boundary.
AS_OFS = (C + 13 * HOUR + 7 * MINUTE + 123_456, C + 18 * HOUR)
DRIVERS = [*(f"d{i}" for i in range(6)), "d-nobody"]
ZONES = [*(f"z{i}" for i in range(4)), "z-nobody"]


@pytest.fixture(scope="module")
def plan() -> Iterator[Plan]:
    p = compiled("rides")
    use_plan(p)
    try:
        yield p
    finally:
        use_plan(None)


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    """35 days of rides before the cutover and the hours after it (up to past the last read)."""
    old = rides(1500, C - 35 * DAY, 35 * DAY, seed=13)
    recent = rides(900, C - 4 * HOUR, 24 * HOUR, seed=14)
    for i, ev in enumerate(recent):
        ev["uid"] = f"n{i}"
    return [*old, *recent]


def load(plan: Plan, events: list[dict[str, Any]], url: str, as_of: int) -> int:
    """The views as the layers hold them when their clock reads ``as_of``: events stamped later are future
    fields (the speed layer tiles an event only once its clock passed it), and so is one in nine earlier
    events after the cutover (held while future, not moved yet). Returns the number of future fields."""
    client = redis.Redis.from_url(url)
    client.flushdb()
    future = {ev["uid"] for ev in events if ev["ts"] >= as_of or (ev["ts"] >= C and int(ev["uid"][1:]) % 9 == 0)}
    try:
        return load_plan(client, plan, events, "v1", C, future)
    finally:
        client.close()


def mismatches(plan: Plan, events: list[dict[str, Any]], got: dict[str, dict[str, Any]], as_of: int) -> list[Any]:
    """(view, entity, feature, got, want) for every value that is not the brute force's."""
    bad = []
    for view in plan.views:
        for entity in DRIVERS if view.entity.join_key == "driver_id" else ZONES:
            want = plan_bruteforce.values(plan, view.name, events, entity, as_of)
            for name, w in want.items():
                g = got[entity][f"{view.name}:{name}"]
                ok = (g is None) == (w is None) and (
                    g is None or math.isclose(float(g), float(w), rel_tol=1e-9, abs_tol=1e-9)  # type: ignore[arg-type]
                )
                if not ok or (w is not None and view.feature(name).dtype == "int64" and type(g) is not int):
                    bad.append((view.name, entity, name, g, w))
    return bad


def api_values(url: str, as_of: int) -> dict[str, dict[str, Any]]:
    """Every feature of every entity: drivers by GET (one per request), zones by one POST."""
    out: dict[str, dict[str, Any]] = {}
    with TestClient(create_app(ApiSettings(redis_url=url), clock=lambda: as_of)) as client:
        for d in DRIVERS:
            r = client.get("/features", params={"driver_id": d, "features": "driver_performance"})
            assert r.status_code == 200, r.text
            assert r.json()["as_of_us"] == as_of and r.json()["batch_version"] == "v1"
            out[d] = r.json()["rows"][0]["values"]
        r = client.post("/features", json={"entities": [{"zone_id": z} for z in ZONES], "features": ["zone_demand"]})
        assert r.status_code == 200, r.text
        out.update({z: row["values"] for z, row in zip(ZONES, r.json()["rows"], strict=True)})
        # errors name the unknown reference / key, from the plan
        r = client.get("/features", params={"driver_id": "d0", "features": "driver_performance:nope"})
        assert r.status_code == 404 and "nope" in r.json()["detail"]
        r = client.get("/features", params={"user_id": "u0", "features": "driver_performance"})
        assert r.status_code == 422 and "user_id" in r.json()["detail"] and "driver_id" in r.json()["detail"]
    return out


@pytest.mark.parametrize("as_of", AS_OFS)
def test_api_serves_the_rides_plan_exactly(
    plan: Plan, events: list[dict[str, Any]], redis_server: RedisServer, as_of: int
) -> None:
    assert load(plan, events, redis_server.url, as_of) > 100  # future fields, both counted and not yet
    got = api_values(redis_server.url, as_of)
    assert mismatches(plan, events, got, as_of) == []
    # the data exercises what it should: non-trivial std/var and distinct counts, ratios, empty windows
    drivers = [got[d] for d in DRIVERS[:-1]]
    assert all(v["driver_performance:fare_std_2d"] for v in drivers)
    assert all(v["driver_performance:riders_30d"] > 1 for v in drivers)
    assert any(v["driver_performance:cancellation_rate_2d"] for v in drivers)
    assert all(v is None or v == 0 for v in got["d-nobody"].values())
    assert any(got[z]["zone_demand:drivers_3h"] > 1 for z in ZONES)


@pytest.fixture(scope="module")
def rides_repo(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Path:
    tmp = tmp_path_factory.mktemp("rides_repo")
    return applied_repo(tmp, redis_server.url, tmp / "data", source=ROOT / "rides")


def test_feast_get_online_features_serves_the_rides_plan_exactly(
    plan: Plan,
    events: list[dict[str, Any]],
    rides_repo: Path,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from feast import FeatureStore

    from fstore.feast.online_store import FstoreOnlineStore

    as_of = AS_OFS[0]
    load(plan, events, redis_server.url, as_of)
    monkeypatch.setenv("FSTORE_REDIS_URL", redis_server.url)
    use_plan(None)  # the store must compile the plan of the repository it serves, not use the process's
    try:
        fs = FeatureStore(repo_path=str(rides_repo))
        online = fs._get_provider().online_store
        assert isinstance(online, FstoreOnlineStore)
        online.clock = lambda: as_of
        got: dict[str, dict[str, Any]] = {}
        for view, key, entities in (("driver_performance", "driver_id", DRIVERS), ("zone_demand", "zone_id", ZONES)):
            refs = [f"{view}:{n}" for n in plan.view(view).feature_names]
            out = fs.get_online_features(features=refs, entity_rows=[{key: e} for e in entities]).to_dict()
            for i, e in enumerate(entities):
                got[e] = {f"{view}:{n}": out[n][i] for n in plan.view(view).feature_names}
    finally:
        use_plan(plan)
    assert mismatches(plan, events, got, as_of) == []
