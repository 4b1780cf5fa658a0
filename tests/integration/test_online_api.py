"""Serving layer against a real Redis: the lambda merge equals brute force; errors; cutover; outage."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from fstore.core.aggregates import isclose
from fstore.core.events import Event
from fstore.core.features import PRODUCT_ENGAGEMENT, USER_ACTIVITY, VIEWS, FeatureView
from fstore.core.tiles import build_tiles
from fstore.core.timeutil import DAY, HOUR, MINUTE, parse_timestamp
from fstore.localsvc import RedisServer
from fstore.redis_layout import POINTER_KEY, BatchPointer, batch_key, partial_fields, speed_key
from services.online_api.app import create_app
from services.online_api.settings import ApiSettings
from tests import bruteforce

pytestmark = pytest.mark.integration

C = parse_timestamp("2026-11-21T00:00:00Z")  # the cutover
AS_OF = C + 13 * HOUR + 7 * MINUTE + 123_456


def make_events(seed: int, n: int = 3000) -> list[Event]:
    rng = random.Random(seed)
    types = ["page_view", "impression", "click", "add_to_cart", "purchase"]
    out = []
    for i in range(n):
        t = AS_OF - rng.randrange(1, 9 * DAY)  # before as_of, across the cutover
        if i % 10 == 0:
            t = C + rng.choice([-1, 0, 1]) * rng.randrange(0, 5)  # right at the cutover
        out.append(Event(f"e{seed}-{i}", rng.choice(types), f"u{rng.randrange(5)}", f"p{rng.randrange(5)}",
                         t, round(rng.uniform(1, 90), 2), rng.randint(1, 3), None))
    return out


def load(client: redis.Redis, events: list[Event], version: str | None, cutover: int) -> None:
    """Write batch tiles (< cutover) under ``version`` and speed tiles (>= cutover), as the layers do."""
    pipe = client.pipeline(transaction=False)
    for view in VIEWS.values():
        for (entity, size, start), tile in build_tiles(view, events).items():
            for measure, p in tile.items():
                fields = partial_fields(size, start, measure, p)
                if start < cutover:
                    if version is not None:
                        pipe.hset(batch_key(view.name, entity, version), mapping=fields)
                else:
                    pipe.hset(speed_key(view.name, entity, start), mapping=fields)
    pipe.execute()
    if version is not None:
        client.set(POINTER_KEY, BatchPointer(version, cutover).dumps())


def app_client(url: str, **kw: object) -> TestClient:
    settings = ApiSettings(redis_url=url, **kw)  # type: ignore[arg-type]
    return TestClient(create_app(settings, clock=lambda: AS_OF))


def expected(view: FeatureView, events: list[Event], entity: str, t: int) -> dict[str, object]:
    return {f"{view.name}:{k}": v for k, v in bruteforce.values(view, events, entity, t).items()}


@pytest.mark.parametrize("history", ["batch_only", "speed_only", "mixed"])
def test_values_equal_brute_force(redis_client: redis.Redis, redis_server: RedisServer, history: str) -> None:
    events = make_events(1)
    if history == "batch_only":
        events = [e for e in events if e.event_time < C]
    elif history == "speed_only":
        events = [e for e in events if e.event_time >= C]
    load(redis_client, events, None if history == "speed_only" else "v1", C)
    with app_client(redis_server.url) as client:
        for u in ("u0", "u3", "nobody"):
            r = client.get("/features", params={"user_id": u, "features": "user_activity"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["as_of_us"] == AS_OF
            assert body["batch_cutoff"] == (None if history == "speed_only" else "2026-11-21T00:00:00Z")
            want = expected(USER_ACTIVITY, events, u, AS_OF)
            got = body["rows"][0]["values"]
            assert set(got) == set(want)
            assert all(isclose(got[k], want[k]) for k in want), (got, want)
        rows = [{"product_id": f"p{i}", "user_id": "u1"} for i in range(5)]
        r = client.post("/features", json={"entities": rows,
                                           "features": ["product_engagement", "user_activity:clicks_1h"]})
        assert r.status_code == 200, r.text
        for row, out in zip(rows, r.json()["rows"], strict=True):
            want = expected(PRODUCT_ENGAGEMENT, events, row["product_id"], AS_OF)
            assert all(isclose(out["values"][k], want[k]) for k in want)
            assert out["values"]["user_activity:clicks_1h"] == bruteforce.value(
                USER_ACTIVITY, "clicks_1h", events, "u1", AS_OF)


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
        r = client.post("/features", json={"entities": [{"user_id": f"u{i}"} for i in range(4)],
                                           "features": ["user_activity"]})
        assert r.status_code == 413 and "limit is 3" in r.json()["detail"]


def test_api_key(redis_client: redis.Redis, redis_server: RedisServer) -> None:
    with app_client(redis_server.url, api_key="s3cret") as client:
        params = {"user_id": "u1", "features": "user_activity"}
        assert client.get("/features", params=params).status_code == 401
        assert client.get("/features", params=params, headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.get("/features", params=params, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/health").status_code == 200


def test_cutover_during_reads_never_mixes_versions(redis_client: redis.Redis, redis_server: RedisServer) -> None:
    """Version A and B put the cutover at different places over different histories; every response
    must be exactly A's or exactly B's answer."""
    ev_a, ev_b = make_events(2), make_events(3)
    c_b = C - DAY
    load(redis_client, ev_a, "A", C)
    want_a = expected(USER_ACTIVITY, ev_a, "u1", AS_OF)
    # B: batch tiles of ev_b before C-1d, speed tiles of A's history from C on plus B's in [C-1d, C).
    speed_b = [e for e in ev_b if c_b <= e.event_time < C] + [e for e in ev_a if e.event_time >= C]
    load(redis_client, [e for e in ev_b if e.event_time < c_b], "B", c_b)
    load(redis_client, speed_b, None, c_b)
    want_b = expected(USER_ACTIVITY, [e for e in ev_b if e.event_time < c_b] + speed_b, "u1", AS_OF)
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
                assert body["batch_cutoff"] == ("2026-11-21T00:00:00Z" if body["batch_version"] == "A"
                                                else "2026-11-20T00:00:00Z")
                assert all(isclose(body["rows"][0]["values"][k], want[k]) for k in want), body
                seen[body["batch_version"]] += 1
        finally:
            stop.set()
            t.join()
    assert seen["A"] > 0 and seen["B"] > 0


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
