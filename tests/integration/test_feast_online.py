"""Feast's ``get_online_features`` through the fstore online store equals the API and brute force.

A temporary copy of ``feature_repo`` gets the fstore ``online_store:`` block and is applied with the
``feast`` CLI; tiles are loaded into a real Redis with a fixed batch pointer, as the layers write them.
Feast has no clock injection, so the test sets the store's ``clock`` attribute (the documented hook) to
the same fixed ``as_of`` that the API gets through ``create_app(clock=...)``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis
from fastapi.testclient import TestClient
from feast import FeatureService, FeatureStore
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from fstore.core.aggregates import isclose
from fstore.core.plan import View
from fstore.core.timeutil import DAY
from fstore.devsvc.services import RedisServer
from fstore.feast.compile import load_repo
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


def registry_refs(store: FeatureStore, view: View) -> list[str]:
    """References built from the registry, as a notebook builds them: ``view:name`` for each of
    ``fv.features``, where Feast lists the view's join key (its schema ``Field``) beside the aggregations."""
    names = [f.name for f in store.get_stream_feature_view(view.name).features]
    assert view.entity.join_key in names and set(names) - {view.entity.join_key} == set(view.feature_names)
    return [f"{view.name}:{n}" for n in names]


def assert_brute(out: dict[str, list[Any]], refs: list[str], rows: list[dict[str, str]], events: list[Any]) -> None:
    """Each reference's column (``view__name``) equals brute force, or the row's entity key for a view's join key."""
    for ref in refs:
        view_name, name = ref.split(":")
        view = PLAN.view(view_name)
        for i, row in enumerate(rows):
            got, key = out[f"{view_name}__{name}"][i], row[view.entity.join_key]
            if name == view.entity.join_key:
                assert got == key, (ref, i, got)
                continue
            want = plan_bruteforce.value(PLAN, view_name, name, events, key, AS_OF)
            assert isclose(got, want) and (got is None) == (want is None), (ref, row, got, want)


def both_paths(store: FeatureStore, features: Any, rows: list[dict[str, str]], full: bool = True) -> dict[str, Any]:
    """``get_online_features`` (SyncOnlineReader), checked equal to ``get_online_features_async`` (OnlineReader)."""
    out = store.get_online_features(features=features, entity_rows=rows, full_feature_names=full).to_dict()
    again = asyncio.run(store.get_online_features_async(features=features, entity_rows=rows, full_feature_names=full))
    assert again.to_dict() == out
    return out


def test_refs_from_the_registry_read_the_join_key_as_the_entity_key(
    store: FeatureStore, redis_client: redis.Redis
) -> None:
    """Feast's registry lists a StreamFeatureView's join key among its features: refs built from
    ``fv.features`` name it, and the store answers it with the row's key (it refused it with a KeyError)."""
    events = make_events(15)
    load(redis_client, events, "v1", C)
    rows = [{"user_id": u, "product_id": p} for u, p in zip(USERS, PRODUCTS, strict=True)]
    refs = registry_refs(store, USER_ACTIVITY) + registry_refs(store, PRODUCT_ENGAGEMENT)
    out = both_paths(store, refs, rows)
    assert set(out) == {"user_id", "product_id", *(r.replace(":", "__") for r in refs)}
    assert out["user_activity__user_id"] == out["user_id"] == USERS
    assert out["product_engagement__product_id"] == out["product_id"] == PRODUCTS
    assert_brute(out, refs, rows, events)
    assert any(out["user_activity__clicks_24h"]) and any(out["product_engagement__revenue_24h"])  # not all empty

    # One view with plain names: the join key is one column, the entity's; duplicated rows; the key alone.
    rows1 = [{"product_id": p} for p in ["p4", "no-such-product", "p4", "p0"]]
    plain = both_paths(store, registry_refs(store, PRODUCT_ENGAGEMENT), rows1, full=False)
    assert set(plain) == {"product_id", *PRODUCT_ENGAGEMENT.feature_names}
    assert plain["product_id"] == [r["product_id"] for r in rows1]
    assert_brute(
        {f"product_engagement__{n}": v for n, v in plain.items()},
        registry_refs(store, PRODUCT_ENGAGEMENT),
        rows1,
        events,
    )
    assert both_paths(store, ["product_engagement:product_id"], rows1, full=False) == {
        "product_id": plain["product_id"]
    }

    # Only a view's own join key is answered so: another name still fails in the store, naming it.
    online = store._get_provider().online_store
    fv = store.get_stream_feature_view("user_activity")
    key = EntityKeyProto(join_keys=["user_id"], entity_values=[ValueProto(string_val="u1")])
    for name in ("product_id", "no_such_feature"):
        with pytest.raises(KeyError, match=f"feature view 'user_activity' has no feature '{name}'"):
            online.online_read(store.config, fv, [key], [name])


def test_a_key_that_is_no_id_is_refused_naming_it(store: FeatureStore, redis_client: redis.Redis) -> None:
    """No event can carry an entity key outside the id charset (design §2): reading one is a mistake the
    store names (the API answers 422), not an entity with no events whose zeros it would serve."""
    load(redis_client, make_events(15), "v1", C)
    for bad in ("u 1", "", "u" * 129, "ü1"):
        rows = [{"user_id": "u1"}, {"user_id": bad}]
        with pytest.raises(ValueError, match=f"entity key user_id={bad!r} is not 1-128 characters"):
            store.get_online_features(features=["user_activity:clicks_1h"], entity_rows=rows)
        with pytest.raises(ValueError, match=f"entity key user_id={bad!r} is not 1-128 characters"):
            asyncio.run(store.get_online_features_async(features=["user_activity:clicks_1h"], entity_rows=rows))
    ok = store.get_online_features(features=["user_activity:clicks_1h"], entity_rows=[{"user_id": "u" * 128}])
    assert ok.to_dict()["clicks_1h"] == [0]  # an id no event carried: zero clicks, as §3 says


def test_feature_services_over_a_view_and_a_projection_equal_brute_force(
    store: FeatureStore, feast_repo: Path, redis_client: redis.Redis
) -> None:
    """A FeatureService of a whole view and ``product_engagement[["ctr_1h"]]``: declared with the repository's
    objects (Feast leaves the join key out of the view's projection) and built from the registry's views
    (whose projection lists the join key as a feature), applied, read on both paths."""
    events = make_events(16)
    load(redis_client, events, "v1", C)
    declared = {v.name: v for v in load_repo(feast_repo).stream_feature_views}
    registered = {v.name: store.get_stream_feature_view(v.name) for v in (USER_ACTIVITY, PRODUCT_ENGAGEMENT)}
    services = [
        FeatureService(name=name, features=[views["user_activity"], views["product_engagement"][["ctr_1h"]]])
        for name, views in (("declared", declared), ("registered", registered))
    ]
    store.apply([*services])
    rows = [{"user_id": u, "product_id": p} for u, p in zip(USERS, PRODUCTS, strict=True)]
    for svc in services:
        refs = [f"user_activity:{n}" for n in USER_ACTIVITY.feature_names] + ["product_engagement:ctr_1h"]
        if svc.name == "registered":
            refs.append("user_activity:user_id")
        out = both_paths(store, store.get_feature_service(svc.name), rows)
        assert set(out) == {"user_id", "product_id", *(r.replace(":", "__") for r in refs)}, svc.name
        assert_brute(out, refs, rows, events)
        plain = both_paths(store, store.get_feature_service(svc.name), rows, full=False)
        assert set(plain) == {"user_id", "product_id", *USER_ACTIVITY.feature_names, "ctr_1h"}
        assert plain["user_id"] == USERS and plain["ctr_1h"] == out["product_engagement__ctr_1h"]


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


def test_feast_materialize_on_the_command_line_says_why_without_a_traceback(
    feast_repo: Path, redis_server: RedisServer
) -> None:
    """The refusal above through the real ``feast`` command (probe-feast): it was the last line of a
    40-line traceback of Feast's internals; now ``Error: ...`` naming the jobs, exit code 1, as for a
    repository ``feast apply`` refuses."""
    feast = str(Path(sys.executable).with_name("feast"))
    env = {**os.environ, "FSTORE_REDIS_URL": redis_server.url}
    for args in (
        ["materialize", "2026-01-01T00:00:00", "2026-01-02T00:00:00"],
        ["materialize-incremental", "2026-01-02"],
    ):
        proc = subprocess.run([feast, *args], cwd=feast_repo, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert "Error: the fstore online store is read-only" in proc.stderr, proc.stderr[-3000:]
        assert "`fstore stream`" in proc.stderr and "`fstore batch`" in proc.stderr, proc.stderr[-3000:]


def test_unreachable_redis_fails_fast(feast_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSTORE_REDIS_URL", "redis://127.0.0.1:1/0")
    fs = FeatureStore(repo_path=str(feast_repo))
    t = time.perf_counter()
    with pytest.raises(redis.exceptions.ConnectionError):
        fs.get_online_features(features=["user_activity:clicks_1h"], entity_rows=[{"user_id": "u1"}])
    assert time.perf_counter() - t < 2.0
