"""Serving layer against a real Redis: the lambda merge equals brute force; errors; cutover; outage."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from fstore.core.aggregates import isclose
from fstore.core.tile_state import Value
from fstore.core.timeutil import DAY, HOUR, MINUTE, SECOND
from fstore.devsvc.services import RedisServer
from fstore.plan_source import current_plan
from fstore.redis.layout import POINTER_KEY, BatchPointer
from services.online_api.app import create_app
from services.online_api.settings import ApiSettings
from tests.support import plan_bruteforce
from tests.support.online import AS_OF, C
from tests.support.online import load_rows as load
from tests.support.online import make_rows as make_events

Row = dict[str, Any]
USER_ACTIVITY, PRODUCT_ENGAGEMENT = "user_activity", "product_engagement"  # the shipped example's views

pytestmark = pytest.mark.integration


def app_client(url: str, **kw: object) -> TestClient:
    settings = ApiSettings(redis_url=url, **kw)  # type: ignore[arg-type]
    return TestClient(create_app(settings, clock=lambda: AS_OF))


def expected(view: str, events: list[Row], entity: str, t: int) -> dict[str, Value]:
    return {f"{view}:{k}": v for k, v in plan_bruteforce.values(current_plan(), view, events, entity, t).items()}


@pytest.mark.parametrize("history", ["batch_only", "speed_only", "mixed"])
def test_values_equal_brute_force(redis_client: redis.Redis, redis_server: RedisServer, history: str) -> None:
    events = make_events(1)
    if history == "batch_only":
        events = [e for e in events if e["event_time"] < C]
    elif history == "speed_only":
        events = [e for e in events if e["event_time"] >= C]
    load(redis_client, events, None if history == "speed_only" else "v1", C)
    with app_client(redis_server.url) as client:
        for u in ("u0", "u3", "nobody"):
            r = client.get("/features", params={"user_id": u, "features": "user_activity"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["as_of_us"] == AS_OF
            assert body["batch_cutoff"] == (None if history == "speed_only" else "2026-11-21T00:00:00Z")
            want = expected(USER_ACTIVITY, events, u, AS_OF)
            got = body["values"]  # docs/design.md §5: GET names the entity, the values and freshness
            assert set(got) == set(want)
            assert all(isclose(got[k], want[k]) for k in want), (got, want)
            assert body["entity"] == {"user_id": u}
            assert set(body["freshness"]) == {USER_ACTIVITY}
            assert body["rows"] == [{"entity": body["entity"], "values": got, "freshness": body["freshness"]}]
        rows = [{"product_id": f"p{i}", "user_id": "u1"} for i in range(5)]
        r = client.post(
            "/features", json={"entities": rows, "features": ["product_engagement", "user_activity:clicks_1h"]}
        )
        assert r.status_code == 200, r.text
        for row, out in zip(rows, r.json()["rows"], strict=True):
            want = expected(PRODUCT_ENGAGEMENT, events, row["product_id"], AS_OF)
            assert all(isclose(out["values"][k], want[k]) for k in want)
            assert out["values"]["user_activity:clicks_1h"] == plan_bruteforce.value(
                current_plan(), USER_ACTIVITY, "clicks_1h", events, "u1", AS_OF
            )
        # the same rows as columns, the way Feast's feature server takes entities: the same answer
        columns = {"product_id": [r["product_id"] for r in rows], "user_id": [r["user_id"] for r in rows]}
        c = client.post(
            "/features", json={"entities": columns, "features": ["product_engagement", "user_activity:clicks_1h"]}
        )
        assert c.status_code == 200 and c.json() == r.json(), c.text


def test_client_errors_name_the_problem(redis_client: redis.Redis, redis_server: RedisServer) -> None:
    with app_client(redis_server.url, api_max_entities=3) as client:
        r = client.get("/features", params={"user_id": "u1", "features": "user_activity:nope"})
        assert r.status_code == 404 and "nope" in r.json()["detail"]
        r = client.get("/features", params={"user_id": "u1", "features": "nosuchview"})
        assert r.status_code == 404 and "nosuchview" in r.json()["detail"]
        r = client.get("/features", params={"customer": "u1", "features": "user_activity"})
        assert r.status_code == 422 and "customer" in r.json()["detail"]
        r = client.get("/features", params={"product_id": "p1", "features": "user_activity"})
        assert r.status_code == 422 and "user_id" in r.json()["detail"]
        r = client.get("/features", params=[("user_id", "u1"), ("user_id", "u2"), ("features", "user_activity")])
        assert r.status_code == 422 and "user_id" in r.json()["detail"]  # which one was meant? not guessed
        r = client.post(
            "/features", json={"entities": [{"user_id": f"u{i}"} for i in range(4)], "features": ["user_activity"]}
        )
        assert r.status_code == 413 and "limit is 3" in r.json()["detail"]
        r = client.post(
            "/features",
            json={"entities": {"user_id": ["u1", "u2"], "product_id": ["p1"]}, "features": ["user_activity"]},
        )
        assert r.status_code == 422 and "different lengths" in r.json()["detail"] and "product_id" in r.json()["detail"]
        r = client.post(
            "/features", json={"entities": {"user_id": [f"u{i}" for i in range(4)]}, "features": ["user_activity"]}
        )
        assert r.status_code == 413 and "limit is 3" in r.json()["detail"]


def test_api_key(redis_client: redis.Redis, redis_server: RedisServer) -> None:
    with app_client(redis_server.url, api_key="s3cret") as client:
        params = {"user_id": "u1", "features": "user_activity"}
        assert client.get("/features", params=params).status_code == 401
        assert client.get("/features", params=params, headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.get("/features", params=params, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/health").status_code == 200
        # auth is checked before parameter validation, with or without the key
        assert client.get("/features", params={"user_id": "u1"}).status_code == 401
        r = client.get("/features", params={"user_id": "u1"}, headers={"X-API-Key": "s3cret"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "features"]
        metrics = client.get("/metrics", headers={"X-API-Key": "s3cret"}).text
        assert 'fstore_api_requests_total{method="GET",route="/features",status="200"} 1.0' in metrics
        assert 'fstore_api_requests_total{method="GET",route="/features",status="401"} 3.0' in metrics
        assert 'fstore_api_requests_total{method="GET",route="/features",status="422"} 1.0' in metrics
        # the 5xx series exist before their first burst, so rate() (FstoreApi5xx) sees that burst
        for route, method in (("/features", "GET"), ("/features", "POST"), ("/historical-features", "POST")):
            for status in (500, 503):
                series = f'fstore_api_requests_total{{method="{method}",route="{route}",status="{status}"}}'
                assert f"{series} 0.0" in metrics, series
        for path in ("/docs", "/redoc", "/openapi.json"):  # the docs follow the data's auth rule
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers={"X-API-Key": "s3cret"}).status_code == 200, path
        assert "/features" in client.get("/openapi.json", headers={"X-API-Key": "s3cret"}).json()["paths"]
    with app_client(redis_server.url) as client:  # no key set: everything open
        assert all(client.get(path).status_code == 200 for path in ("/docs", "/redoc", "/openapi.json"))


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_422_naming_the_field(
    redis_client: redis.Redis, redis_server: RedisServer, constant: str
) -> None:
    """Python's JSON parser accepts NaN and ±Infinity; the API refuses them with a 422 that names the
    field (never a 500 from serialising the error)."""
    load(redis_client, make_events(1), "v1", C)
    json_ct = {"content-type": "application/json"}
    with app_client(redis_server.url) as client:
        body = '{"entities": [{"user_id": X}], "features": ["user_activity"]}'.replace("X", constant)
        r = client.post("/features", content=body, headers=json_ct)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][:2] == ["body", "entities"], r.text
        body = '{"entity_rows": [{"user_id": "u1", "event_timestamp": "2026-11-21T10:00:00Z", "label": X}], '
        body = (body + '"features": ["user_activity:clicks_1h"]}').replace("X", constant)
        r = client.post("/historical-features", content=body, headers=json_ct)
        assert r.status_code == 422 and "entity_rows[0].label" in r.text, r.text
        body = '{"entity_rows": [{"user_id": "u1", "event_timestamp": X}], "features": ["user_activity"]}'
        body = body.replace("X", constant)
        r = client.post("/historical-features", content=body, headers=json_ct)
        assert r.status_code == 422 and "entity_rows[0].event_timestamp" in r.text, r.text


def test_cutover_during_reads_never_mixes_versions(redis_client: redis.Redis, redis_server: RedisServer) -> None:
    """Version A and B put the cutover at different places over different histories; every response
    must be exactly A's or exactly B's answer."""
    ev_a, ev_b = make_events(2), make_events(3)
    c_b = C - DAY
    load(redis_client, ev_a, "A", C)
    want_a = expected(USER_ACTIVITY, ev_a, "u1", AS_OF)
    # B: batch tiles of ev_b before C-1d, speed tiles of A's history from C on plus B's in [C-1d, C).
    speed_b = [e for e in ev_b if c_b <= e["event_time"] < C] + [e for e in ev_a if e["event_time"] >= C]
    load(redis_client, [e for e in ev_b if e["event_time"] < c_b], "B", c_b)
    load(redis_client, speed_b, None, c_b)
    want_b = expected(USER_ACTIVITY, [e for e in ev_b if e["event_time"] < c_b] + speed_b, "u1", AS_OF)
    assert want_a != want_b
    pointers = [BatchPointer("A", C).dumps(), BatchPointer("B", c_b).dumps()]
    stop = threading.Event()

    def flip() -> None:
        flipper = redis.Redis.from_url(redis_server.url)
        i = 0
        while not stop.is_set():
            flipper.set(POINTER_KEY, pointers[i % 2])
            i += 1
            stop.wait(0.01)  # far faster than any real cutover (once a day)

    seen = {"A": 0, "B": 0}
    with app_client(redis_server.url) as client:
        t = threading.Thread(target=flip)
        t.start()
        try:
            for _ in range(300):
                body = client.get("/features", params={"user_id": "u1", "features": "user_activity"}).json()
                want = want_a if body["batch_version"] == "A" else want_b
                assert body["batch_cutoff"] == (
                    "2026-11-21T00:00:00Z" if body["batch_version"] == "A" else "2026-11-20T00:00:00Z"
                )
                assert all(isclose(body["rows"][0]["values"][k], want[k]) for k in want), body
                seen[body["batch_version"]] += 1
        finally:
            stop.set()
            t.join()
    assert seen["A"] > 0 and seen["B"] > 0


def test_a_clock_behind_the_cutover_reads_at_the_cutover(redis_client: redis.Redis, redis_server: RedisServer) -> None:
    """docs/design.md §5, no event counts before its event_time: the batch host published C by its own clock;
    an API whose clock reads 30 s before C must not count the events of the batch tiles stamped between its
    clock and C. It answers at as_of = C, with the brute force's values at that as_of (probe-time)."""
    behind = C - 30 * SECOND
    events = [e for e in make_events(4) if e["event_time"] < C]
    clicks = [dict(events[0], event_id=f"skew-{i}", event_type="click", user_id="u1", product_id="p1", event_time=C - d)
              for i, d in enumerate((1, 10 * SECOND, 29 * SECOND))]  # fmt: skip
    events += clicks
    load(redis_client, events, "v1", C)
    with TestClient(create_app(ApiSettings(redis_url=redis_server.url), clock=lambda: behind)) as client:
        for u in ("u1", "u2"):
            body = client.get("/features", params={"user_id": u, "features": "user_activity"}).json()
            want = expected(USER_ACTIVITY, events, u, body["as_of_us"])
            assert all(isclose(body["values"][k], want[k]) for k in want), (u, body["as_of"], body["values"], want)
            assert body["as_of_us"] == C and body["batch_cutoff"] == "2026-11-21T00:00:00Z", body
    assert expected(USER_ACTIVITY, events, "u1", behind) != expected(USER_ACTIVITY, events, "u1", C)


def test_redis_outage_gives_503_fast_and_recovers(tmp_path: Path) -> None:
    import time

    server = RedisServer(state_dir=tmp_path / "r").start()
    try:
        with app_client(server.url) as client:
            params = {"user_id": "u1", "features": "user_activity:clicks_1h"}
            assert client.get("/features", params=params).status_code == 200
            server.stop()
            for path in ("/features", "/health"):
                t = time.perf_counter()
                r = client.get(path, params=params)
                assert r.status_code == 503, r.text
                assert time.perf_counter() - t < 1.0
                assert "Redis" in r.text and "Traceback" not in r.text
            server.start()
            r = client.get("/features", params=params)
            assert r.status_code == 200 and r.json()["rows"][0]["values"]["user_activity:clicks_1h"] == 0
            metrics = client.get("/metrics").text
            assert "fstore_api_redis_errors_total 2.0" in metrics
            assert 'fstore_api_requests_total{method="GET",route="/features",status="503"} 1.0' in metrics
    finally:
        server.stop()


def test_fast_merge_is_bit_identical_to_core_evaluate() -> None:
    """fstore.online.reader's series merge (and its cached-batch path, whose window folds and batch-only values
    are memoised across reads) equals fstore.core.view_tiles.evaluate over parse_states exactly, for both
    field forms, with and without a batch view, for any feature subset, at successive read times."""
    from fstore.core.tile_state import Acc
    from fstore.core.view_tiles import TileKey, ViewTiler, evaluate, lookup_in
    from fstore.online.reader import EntityRead, decode_batch, finish, merge, speed_days
    from fstore.redis.layout import acc_fields, parse_states
    from tests.support.plan_online import speed_fields

    rng = random.Random(11)
    plan = current_plan()
    for trial in range(60):
        as_of = C + rng.randrange(0, 2 * DAY)
        events = [e for e in make_events(100 + trial, 150) if e["event_time"] < as_of]
        ptr = None if trial % 5 == 0 else BatchPointer("v", C if trial % 2 else C - DAY)
        for view in plan.views:
            entity = "u1" if view.entity.join_key == "user_id" else "p1"
            batch_only = trial % 4 == 3  # no speed tiles: the memoised batch-only values of the cached path
            batch: dict[bytes, bytes] = {}
            speed: dict[int, dict[bytes, bytes]] = {}
            for (e, size, start), tile in ViewTiler(view, "event_time").build(events).items():
                if e != entity or (batch_only and start >= C - DAY):
                    continue
                for m, acc in tile.items():
                    if ptr is not None and start < ptr.cutover:
                        fields = (acc_fields if trial % 3 else speed_fields)(size, start, m, acc)
                        batch.update({k.encode(): v.encode() for k, v in fields.items()})
                    else:
                        fields = speed_fields(size, start, m, acc)
                        speed.setdefault(start - start % DAY, {}).update(
                            {k.encode(): v.encode() for k, v in fields.items()}
                        )
            tiles: dict[TileKey, dict[str, Acc]] = {}
            hashes: list[dict[bytes, bytes]] = [batch] if ptr else []
            for i, raw in enumerate(hashes + list(speed.values())):
                for (size, start), accs in parse_states(raw).items():
                    if ptr is not None and (start < ptr.cutover) != (ptr is not None and i == 0):
                        continue
                    slot = tiles.setdefault(TileKey(entity, size, start), {})
                    for m, acc in accs.items():
                        slot.setdefault(m, Acc()).merge(acc)
            newest = max((k.start for k in tiles if ptr is None or k.start >= ptr.cutover), default=None)
            cached = decode_batch(view, batch, ptr.cutover, ptr.cutover) if ptr is not None else None
            names_sets = (view.feature_names, tuple(rng.sample(view.feature_names, 3)))
            # successive reads: same grain, next tiles, next hours; the cached batch tiles are reused
            for t in (as_of, as_of + 1, as_of + 7 * MINUTE, as_of + HOUR + 1, as_of + 5 * HOUR):
                speed_hashes = [speed.get(d, {}) for d in speed_days(view, ptr, t)]
                for names in names_sets:
                    want = evaluate(view, lookup_in(tiles, entity), t, names)
                    read = EntityRead(view, entity, names)
                    got = merge(read, ptr, hashes + speed_hashes, t)
                    assert got.values == want and got.newest_speed_tile == newest, (trial, view.name)
                    if cached is not None:
                        got = finish(read, cached.cutover, cached, speed_hashes, t)
                        assert got.values == want and got.newest_speed_tile == newest, (trial, view.name, t)
                        flat = [x for h in speed_hashes for k, v in h.items() for x in (k, v)]
                        got = finish(read, cached.cutover, cached, [flat], t)  # RESP2 flat list replies
                        assert got.values == want and got.newest_speed_tile == newest, (trial, view.name, t)


def test_decode_speed_matches_parse_tiles() -> None:
    """The bytes fast path decodes exactly what parse_states does: both forms, mixed, junk, count 0."""
    from fstore.online.reader import decode_speed
    from fstore.redis.layout import packed_field, parse_states

    raw = {
        b"300:1700000100:click:c": b"2",
        b"300:1700000100:click:s": b"2.0",
        b"300:1700000100:click:n": b"1.0",
        b"300:1700000100:click:x": b"1.0",
        b"300:1700000100:click:v": b"0.0",
        packed_field(3600 * 10**6, 1700002800 * 10**6, "purchase").encode(): b"3 70.5 1.25 40.0 412.5",
        packed_field(3600 * 10**6, 1700006400 * 10**6, "purchase").encode(): b"2 3.0 1.0 2.0",
        packed_field(300 * 10**6, 1700000400 * 10**6, "click").encode(): b"1 1.0 None None",
        b"300:1700000700:click:c": b"0",
        b"300:1700000700:click:s": b"0.0",
        b"300:1700000000:page_view:c": b"1",
        b"junk": b"1",
        b"a:b": b"x",
        b"300:1700000100:click:q": b"9",
        b"3600:1:purchase": b"1 2",
    }
    tiles = parse_states(raw)
    cols, newest = decode_speed(raw, None)
    flat = {
        (size, start, m): stats
        for (size, m), (starts, all_stats, _) in cols.items()
        for start, stats in zip(starts, all_stats, strict=True)
    }
    want = {
        (size, start, m): (a.count, a.total, a.minimum, a.maximum, a.m2)
        for (size, start), accs in tiles.items()
        for m, a in accs.items()
    }
    assert flat == want
    assert newest == max(start for (_, start) in tiles)
    cols, newest = decode_speed(raw, 1700000400 * 10**6)
    assert newest == 1700006400 * 10**6 and all(
        s >= 1700000400 * 10**6 for starts, _, _ in cols.values() for s in starts
    )


def test_batch_cache_serves_repeat_reads(redis_client: redis.Redis, redis_server: RedisServer) -> None:
    """A repeat read of the same entity takes its batch tiles from the reader's cache (keyed by batch
    version) and answers exactly the same; a new version is read from Redis, never from the old cache."""
    events = make_events(4)
    load(redis_client, events, "v1", C)
    params = {"user_id": "u2", "features": "user_activity"}
    with app_client(redis_server.url) as client:
        reader = client.app.state.reader  # type: ignore[attr-defined]
        first = client.get("/features", params=params).json()
        misses = reader.cache_misses
        assert client.get("/features", params=params).json() == first
        assert reader.cache_hits >= 1 and reader.cache_misses == misses
        want = expected(USER_ACTIVITY, events, "u2", AS_OF)
        assert all(isclose(first["rows"][0]["values"][k], want[k]) for k in want)
        ev2 = make_events(5)
        load(redis_client, [e for e in ev2 if e["event_time"] < C], "v2", C)  # publishes v2
        second = client.get("/features", params=params).json()
        assert second["batch_version"] == "v2" and reader.cache_misses == misses + 1
        want2 = expected(
            USER_ACTIVITY,
            [e for e in ev2 if e["event_time"] < C] + [e for e in events if e["event_time"] >= C],
            "u2",
            AS_OF,
        )
        assert all(isclose(second["rows"][0]["values"][k], want2[k]) for k in want2), (second, want2)


def test_health_reports_batch_view_and_speed_freshness(redis_client: redis.Redis, redis_server: RedisServer) -> None:
    from fstore.redis.layout import HEARTBEAT_KEY, Heartbeat

    with app_client(redis_server.url) as client:
        body = client.get("/health").json()
        assert body["status"] == "ok" and body["batch_version"] is None
        assert body["detail"]["speed_layer"]["last_commit"] is None
        load(redis_client, make_events(5, 200), "v9", C)
        redis_client.set(HEARTBEAT_KEY, Heartbeat(AS_OF - 2_500_000, AS_OF - 4_000_000).dumps())
        body = client.get("/health").json()
        assert body["batch_version"] == "v9" and body["batch_cutoff"] == "2026-11-21T00:00:00Z"
        speed = body["detail"]["speed_layer"]
        assert speed["commit_age_s"] == pytest.approx(2.5)
        assert speed["newest_event_time"] == "2026-11-21T13:06:56.123456Z"
        # the worker found its Kafka log reset and replays it (issue 12, Build 3): degraded until caught up
        redis_client.set(
            HEARTBEAT_KEY, Heartbeat(AS_OF - 2_500_000, AS_OF - 4_000_000, AS_OF - 9_000_000, True).dumps()
        )
        replaying = client.get("/health")
        assert replaying.status_code == 503 and replaying.json()["status"] == "degraded"
        assert replaying.json()["detail"]["speed_layer"]["replaying"] is True
        redis_client.set(HEARTBEAT_KEY, Heartbeat(AS_OF - 2_500_000, AS_OF - 4_000_000, AS_OF - 9_000_000).dumps())
        caught_up = client.get("/health")
        assert caught_up.status_code == 200 and caught_up.json()["detail"]["speed_layer"]["last_log_reset"]


def test_redis_evicting_keys_is_loud(redis_client: redis.Redis, redis_server: RedisServer) -> None:
    """An evicted batch-view hash reads as an entity without events: values undercount with nothing wrong in
    the reply. So /health is degraded and /metrics says so while the policy may evict and once keys were
    evicted (probe-faults: allkeys-lru at maxmemory undercounted 1,019 values with /health 200)."""
    events = make_events(7)
    load(redis_client, events, "v1", C)
    want = expected(USER_ACTIVITY, events, "u1", AS_OF)
    redis_client.config_resetstat()
    try:
        with app_client(redis_server.url) as client:
            assert client.get("/health").status_code == 200
            redis_client.config_set("maxmemory-policy", "allkeys-lru")
            health = client.get("/health")
            assert health.status_code == 503 and "allkeys-lru" in health.json()["detail"]["eviction"]
            assert "fstore_api_redis_evicting_policy 1.0" in client.get("/metrics").text
            redis_client.config_set("maxmemory", "1")  # every key goes, a few at each write (eviction is
            deadline = time.monotonic() + 20  # incremental: a write may pass while it goes on, or fail with OOM)
            while redis_client.dbsize() > 1 and time.monotonic() < deadline:
                with contextlib.suppress(redis.exceptions.OutOfMemoryError):
                    redis_client.set("probe", "x")
            assert redis_client.dbsize() <= 1 and redis_client.info("stats")["evicted_keys"] > 0
            redis_client.config_set("maxmemory", "0")
            redis_client.config_set("maxmemory-policy", "noeviction")
            got = client.get("/features", params={"user_id": "u1", "features": "user_activity"}).json()["values"]
            assert not all(isclose(got[k], v) for k, v in want.items())  # undercounted, 200 all the same
            health = client.get("/health")
            assert health.status_code == 503 and "evicted" in health.json()["detail"]["eviction"]
            metrics = client.get("/metrics").text
            assert "fstore_api_redis_evicting_policy 0.0" in metrics
            assert "fstore_api_redis_evicted_keys 0.0" not in metrics
            redis_client.config_resetstat()  # after the runbook's flush and repair
            assert client.get("/health").status_code == 200
    finally:
        redis_client.config_set("maxmemory", "0")
        redis_client.config_set("maxmemory-policy", "noeviction")
        redis_client.config_resetstat()


def test_a_redis_that_refuses_info_is_no_outage(redis_client: redis.Redis, redis_server: RedisServer) -> None:
    """The eviction probe reads INFO; a Redis user without it (an ACL, a managed Redis) is served as before:
    /health ok, no eviction gauges, values exact — not "Redis unreachable"."""
    events = make_events(8)
    load(redis_client, events, "v1", C)
    redis_client.acl_setuser("no-info", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-info"])
    try:
        url = redis_server.url.replace("redis://", "redis://no-info:pw@")
        with app_client(url) as client:
            health = client.get("/health")
            assert health.status_code == 200 and health.json()["status"] == "ok", health.json()
            assert "fstore_api_redis_evicting_policy" not in client.get("/metrics").text
            got = client.get("/features", params={"user_id": "u1", "features": "user_activity"}).json()["values"]
            want = expected(USER_ACTIVITY, events, "u1", AS_OF)
            assert all(isclose(got[k], v) for k, v in want.items()), (got, want)
    finally:
        redis_client.acl_deluser("no-info")


def test_post_fast_path_matches_the_route(redis_client: redis.Redis, redis_server: RedisServer) -> None:
    """POST /features bodies the fast path takes answer as the FastAPI route does; bodies it declines
    (other content types, invalid JSON, extra or mistyped fields) reach the route with the body intact."""
    load(redis_client, make_events(6), "v1", C)
    body: dict[str, Any] = {
        "entities": [{"user_id": "u1"}, {"user_id": "u2", "product_id": "p1"}],
        "features": ["user_activity:clicks_1h", "product_engagement:ctr_1h"],
    }
    with app_client(redis_server.url) as client:
        fast = client.post("/features", json={**body, "entities": body["entities"][1:]})
        assert fast.status_code == 200, fast.text
        routed = client.post("/features", json={**body, "entities": body["entities"][1:], "extra": 1})
        assert routed.status_code == 200 and routed.json() == fast.json()  # extra keys: the route ignores them
        r = client.post("/features", json=body)
        assert r.status_code == 422 and "product_id" in r.json()["detail"]  # u1 row lacks the product key
        r = client.post("/features", json={"entities": [{"user_id": 7}], "features": ["user_activity"]})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][:2] == ["body", "entities"]
        r = client.post("/features", content=b'{"entities": [', headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
        r = client.post("/features", content=orjson_bytes(body), headers={"content-type": "text/plain"})
        assert r.status_code == 422
        r = client.post(
            "/features",
            content=orjson_bytes({**body, "entities": body["entities"][1:]}),
            headers={"content-type": "application/json; charset=utf-8"},
        )
        assert r.status_code == 200 and r.json()["rows"] == fast.json()["rows"]
    with app_client(redis_server.url, api_key="k") as client:
        assert client.post("/features", json=body).status_code == 401
        r = client.post("/features", json={**body, "entities": body["entities"][1:]}, headers={"X-API-Key": "k"})
        assert r.status_code == 200 and r.json()["rows"] == fast.json()["rows"]
        metrics = client.get("/metrics", headers={"X-API-Key": "k"}).text
        assert 'fstore_api_requests_total{method="POST",route="/features",status="200"} 1.0' in metrics
        assert 'fstore_api_requests_total{method="POST",route="/features",status="401"} 1.0' in metrics


def test_unexpected_error_on_the_fast_path_is_a_counted_500(
    redis_client: redis.Redis, redis_server: RedisServer
) -> None:
    """A bug under the fast path gets the 500 Starlette's server-error middleware would send (no stack trace
    in the body), is counted in the metrics, and the next request is served normally."""
    load(redis_client, make_events(5), "v1", C)
    app = create_app(ApiSettings(redis_url=redis_server.url), clock=lambda: AS_OF)
    with TestClient(app, raise_server_exceptions=False) as client:
        reader = app.state.reader
        real_read = reader.read

        async def broken(*args: object, **kwargs: object) -> object:
            raise RuntimeError("a bug")

        reader.read = broken
        r = client.get("/features", params={"user_id": "u1", "features": "user_activity"})
        assert r.status_code == 500 and r.text == "Internal Server Error"
        reader.read = real_read
        assert client.get("/features", params={"user_id": "u1", "features": "user_activity"}).status_code == 200
        metrics = client.get("/metrics").text
        assert 'fstore_api_requests_total{method="GET",route="/features",status="500"} 1.0' in metrics
        assert 'fstore_api_requests_total{method="GET",route="/features",status="200"} 1.0' in metrics


def orjson_bytes(obj: object) -> bytes:
    import orjson

    return orjson.dumps(obj)


def test_reader_round_trips_on_uvloop_survive_a_restart(tmp_path: Path) -> None:
    """The reader's own connections (fstore.redis.resp) under uvloop, as `fstore serve` runs them: values
    equal the redis-py path; a Redis restart breaks the pooled connection, which is retried on a fresh one;
    a dead server gives ConnectionError, a silent one TimeoutError within the socket timeout."""
    import socket
    import time

    import redis.asyncio as aioredis
    import uvloop

    from fstore.online.reader import EntityRead, OnlineReader
    from fstore.plan_source import current_plan

    server = RedisServer(state_dir=tmp_path / "r").start()
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections, never answers
    events = make_events(8)
    served = current_plan().view(USER_ACTIVITY)
    reads = [EntityRead(served, f"u{i}", served.feature_names) for i in range(5)]

    async def scenario() -> None:
        client = aioredis.Redis.from_url(server.url, socket_timeout=0.3, socket_connect_timeout=0.3)
        reader = OnlineReader(client, lambda: AS_OF)
        assert reader._wire is not None  # the custom wire path, not the fallback
        plain = OnlineReader(client, lambda: AS_OF)
        plain._wire = None  # the redis-py fallback path
        got = await reader.read(reads)
        assert [r.values for r in got.results] == [r.values for r in (await plain.read(reads)).results]
        for i, res in enumerate(got.results):
            want = plan_bruteforce.values(current_plan(), USER_ACTIVITY, events, f"u{i}", AS_OF)
            assert all(isclose(res.values[k], want[k]) for k in want), (res.values, want)
        server.stop()
        with pytest.raises(redis.exceptions.ConnectionError):
            await reader.read(reads)
        server.start()
        load(redis.Redis.from_url(server.url), events, "v1", C)
        assert [r.values for r in (await reader.read(reads)).results] == [r.values for r in got.results]
        mute = OnlineReader(aioredis.Redis(host="127.0.0.1", port=silent.getsockname()[1], socket_timeout=0.3))
        t = time.perf_counter()
        with pytest.raises(redis.exceptions.TimeoutError):
            await mute.read(reads)
        assert time.perf_counter() - t < 1.0
        await reader.aclose()
        await client.aclose()

    try:
        load(redis.Redis.from_url(server.url), events, "v1", C)
        uvloop.run(scenario())
    finally:
        silent.close()
        server.stop()
