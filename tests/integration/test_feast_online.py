"""Feast's ``get_online_features`` through the fstore online store equals the API and brute force.

A temporary copy of ``feature_repo`` gets the fstore ``online_store:`` block and is applied with the
``feast`` CLI; tiles are loaded into a real Redis with a fixed batch pointer, as the layers write them.
Feast has no clock injection, so the test sets the store's ``clock`` attribute (the documented hook) to
the same fixed ``as_of`` that the API gets through ``create_app(clock=...)``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis
from fastapi.testclient import TestClient
from feast import FeatureStore

from fstore.core.aggregates import isclose
from fstore.core.plan import View
from fstore.core.timeutil import DAY
from fstore.devsvc.services import RedisServer
from fstore.feast.online_store import FstoreOnlineStore, FstoreReadOnlyError
from fstore.plan_source import current_plan
from services.online_api.app import create_app
from services.online_api.settings import ApiSettings
from tests.support import plan_bruteforce
from tests.support.online import AS_OF, C
from tests.support.online import load_rows as load
from tests.support.online import make_rows as make_events

pytestmark = pytest.mark.integration

PLAN = current_plan()  # the shipped example (feature_repo), which the Feast repository copies
USER_ACTIVITY, PRODUCT_ENGAGEMENT = PLAN.view("user_activity"), PLAN.view("product_engagement")

USERS = ["u0", "u1", "u3", "nobody"]
PRODUCTS = ["p0", "p2", "p4", "no-such-product"]


@pytest.fixture
def store(feast_repo: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[FeatureStore]:
    """The Feast store of :func:`feast_repo` with the online store's clock fixed at ``AS_OF``."""
    monkeypatch.setenv("FSTORE_REDIS_URL", redis_server.url)
    fs = FeatureStore(repo_path=str(feast_repo))
    online = fs._get_provider().online_store
    assert isinstance(online, FstoreOnlineStore)
    online.clock = lambda: AS_OF
    yield fs


def api_rows(url: str, rows: list[dict[str, str]], features: list[str]) -> list[dict[str, Any]]:
    with TestClient(create_app(ApiSettings(redis_url=url), clock=lambda: AS_OF)) as client:
        r = client.post("/features", json={"entities": rows, "features": features})
        assert r.status_code == 200, r.text
        assert r.json()["as_of_us"] == AS_OF
        return [row["values"] for row in r.json()["rows"]]


def assert_same(
    feast_out: dict[str, list[Any]],
    api: list[dict[str, Any]],
    views: list[View],
    rows: list[dict[str, str]],
    events: list[Any],
) -> int:
    """Feast == API == brute force for every row and feature; returns the number of nulls seen."""
    nulls = 0
    for i, row in enumerate(rows):
        for view in views:
            want = plan_bruteforce.values(PLAN, view.name, events, row[view.entity.join_key], AS_OF)
            for name, w in want.items():
                got = feast_out[f"{view.name}__{name}"][i]
                from_api = api[i][f"{view.name}:{name}"]
                assert isclose(got, w) and isclose(from_api, w), (row, view.name, name, got, from_api, w)
                assert (got is None) == (w is None)
                nulls += got is None
    return nulls


@pytest.mark.parametrize("history", ["batch_only", "mixed"])
def test_get_online_features_equals_api_and_brute_force(
    store: FeatureStore, redis_client: redis.Redis, redis_server: RedisServer, history: str
) -> None:
    events = make_events(11)
    if history == "batch_only":
        events = [e for e in events if e["event_time"] < C]
    load(redis_client, events, "v1", C)
    rows = [{"user_id": u, "product_id": p} for u, p in zip(USERS, PRODUCTS, strict=True)]
    refs = [f"{v.name}:{n}" for v in (USER_ACTIVITY, PRODUCT_ENGAGEMENT) for n in v.feature_names]
    out = store.get_online_features(features=refs, entity_rows=rows, full_feature_names=True).to_dict()
    assert out["user_id"] == USERS and out["product_id"] == PRODUCTS
    api = api_rows(redis_server.url, rows, ["user_activity", "product_engagement"])
    nulls = assert_same(out, api, [USER_ACTIVITY, PRODUCT_ENGAGEMENT], rows, events)
    assert nulls >= 5  # unknown entities: avg/max and both ratios are null, not 0
    assert out["user_activity__clicks_24h"][3] == 0 and out["product_engagement__ctr_1h"][3] is None
    assert any(isinstance(v, float) for v in out["product_engagement__ctr_24h"][:3])

    # A subset of one view, duplicated and reordered entity rows, and the async path (OnlineReader).
    sub = ["product_engagement:ctr_1h", "product_engagement:conversion_rate_7d", "product_engagement:clicks_7d"]
    rows2 = [{"product_id": p} for p in ["p4", "no-such-product", "p4", "p0"]]
    out2 = store.get_online_features(features=sub, entity_rows=rows2, full_feature_names=True).to_dict()
    out3 = asyncio.run(
        store.get_online_features_async(features=sub, entity_rows=rows2, full_feature_names=True)
    ).to_dict()
    assert out2 == out3
    assert set(out2) == {"product_id", *(r.replace(":", "__") for r in sub)}
    api2 = api_rows(redis_server.url, rows2, sub)
    for i, row in enumerate(rows2):
        for ref in sub:
            want = plan_bruteforce.value(
                PLAN, PRODUCT_ENGAGEMENT.name, ref.split(":")[1], events, row["product_id"], AS_OF
            )
            assert isclose(out2[ref.replace(":", "__")][i], want) and isclose(api2[i][ref], want)


def test_follows_a_batch_cutover(store: FeatureStore, redis_client: redis.Redis) -> None:
    """The store caches the pointer; after a cutover it must read the new version, never the old one."""
    events = make_events(13)
    rows = [{"user_id": u} for u in USERS]
    refs = [f"user_activity:{n}" for n in USER_ACTIVITY.feature_names]
    load(redis_client, events, "v1", C)
    before = store.get_online_features(features=refs, entity_rows=rows).to_dict()
    load(redis_client, events, "v2", C - DAY)  # new version, earlier cutover, same history
    for key in redis_client.scan_iter(match="fs:*:b:v1"):
        redis_client.delete(key)  # reading the stale version would now lose its tiles
    after = store.get_online_features(features=refs, entity_rows=rows).to_dict()
    for out in (before, after):
        for i, u in enumerate(USERS):
            want = plan_bruteforce.values(PLAN, USER_ACTIVITY.name, events, u, AS_OF)
            assert all(isclose(out[n][i], w) for n, w in want.items()), (u, out, want)


def test_writes_are_refused_and_teardown_keeps_the_view(store: FeatureStore, redis_client: redis.Redis) -> None:
    load(redis_client, make_events(12, 300), "v1", C)
    keys = redis_client.dbsize()
    df = pd.DataFrame(
        {
            "user_id": ["u1"],
            "event_time": [pd.Timestamp.now(tz="UTC")],  # the stream feature view's timestamp field
            **{n: [1.0] for n in USER_ACTIVITY.feature_names},
        }
    )
    with pytest.raises(FstoreReadOnlyError, match="fstore stream"):
        store.write_to_online_store("user_activity", df)
    online = store._get_provider().online_store
    online.teardown(store.config, [store.get_stream_feature_view("user_activity")], [])
    assert redis_client.dbsize() == keys


def test_materialize_is_refused_naming_what_fstore_runs_instead(store: FeatureStore, redis_client: redis.Redis) -> None:
    """``feast materialize`` / ``materialize-incremental`` (what a Feast user tries first): Feast's own engine
    failed on the views' time windows ("Time window aggregation is not supported in the local compute
    engine"), saying nothing of fstore; the repository's batch engine refuses naming the jobs instead, and
    the served state is untouched."""
    load(redis_client, make_events(14, 300), "v1", C)
    before = {k: redis_client.dump(k) for k in redis_client.scan_iter()}
    end = datetime.fromtimestamp(AS_OF / 1e6, tz=UTC)
    with pytest.raises(
        FstoreReadOnlyError, match=r"feature view '(user_activity|product_engagement)'.*fstore stream.*fstore batch"
    ):
        store.materialize(end - timedelta(days=1), end)
    with pytest.raises(FstoreReadOnlyError, match="fstore stream"):
        store.materialize_incremental(end, feature_views=["product_engagement"])
    assert {k: redis_client.dump(k) for k in redis_client.scan_iter()} == before


def test_unreachable_redis_fails_fast(feast_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSTORE_REDIS_URL", "redis://127.0.0.1:1/0")
    fs = FeatureStore(repo_path=str(feast_repo))
    t = time.perf_counter()
    with pytest.raises(redis.exceptions.ConnectionError):
        fs.get_online_features(features=["user_activity:clicks_1h"], entity_rows=[{"user_id": "u1"}])
    assert time.perf_counter() - t < 2.0
