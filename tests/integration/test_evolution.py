"""Issue 13 acceptance: adding a feature to a running system (stream worker and API up, batch view
published), then ``fstore apply`` + ``fstore backfill``. Before the backfill the API refuses the new
feature (409 naming it) and never gives a number; right after, its values — and every other value — equal
the brute force of the contract. Removing a feature and a view, and applying, stops serving them and frees
the removed view's keys. Real Apache Kafka, stream worker, local Spark, Delta and Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from fstore import plan_source
from fstore.core.plan import Plan
from fstore.core.timeutil import DAY, SECOND, floor_to, to_date
from fstore.devsvc.services import Broker, RedisServer
from fstore.redis.layout import POINTER_KEY, BatchPointer
from services.online_api.app import create_app
from services.online_api.settings import ApiSettings
from tests.support import plan_bruteforce
from tests.support.e2e import publish
from tests.support.paths import close, run_batch, run_fstore
from tests.support.repos.mistakes import RIDES
from tests.support.rides_traffic import message, rides, rides_repo
from tests.support.stream import Factory

pytestmark = pytest.mark.integration

Row = dict[str, Any]
DRIVERS = [f"d{i}" for i in range(6)]
STD = (
    '        Aggregation(column="fare", function="std", time_window=H3, slide_interval=timedelta(minutes=15), '
    'name="fare_std_3h"),\n'
)
ANCHOR = '        Aggregation(column="trip", function="count", time_window=D2, name="trips_2d"),\n'
FIELD = '        Field(name="fare_std_3h", dtype=Float64),\n'
FIELD_ANCHOR = '        Field(name="trips_2d", dtype=Int64),\n'


@pytest.fixture
def repo(tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    repo = rides_repo(tmp_path, redis_server.url)
    for k, v in {
        "FSTORE_FEATURE_REPO": str(repo),
        "FSTORE_REDIS_URL": redis_server.url,
        "FSTORE_DATA_DIR": str(tmp_path / "data"),
        "FSTORE_DQ_LATE_AFTER_S": str(40 * 86_400),
        "FSTORE_SPARK_SHUFFLE_PARTITIONS": "2",
        "FSTORE_SPARK_DRIVER_MEMORY": "2g",
    }.items():
        monkeypatch.setenv(k, v)
    plan_source.use_plan(None)
    try:
        yield repo
    finally:
        plan_source.use_plan(None)


def wait_for(client: TestClient, ref: str, status: int, key: str = "driver_id") -> None:
    """The API follows the applied record within about a second."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if client.get("/features", params={key: "d0", "features": ref}).status_code == status:
            return
        time.sleep(0.2)
    raise AssertionError(f"GET {ref} never answered {status}")


def mismatches(client: TestClient, plan: Plan, events: Sequence[Row]) -> tuple[int, list[object]]:
    r = client.post(
        "/features", json={"entities": [{"driver_id": d} for d in DRIVERS], "features": ["driver_performance"]}
    )
    assert r.status_code == 200, r.text
    as_of = r.json()["as_of_us"]
    bad: list[object] = []
    n = 0
    for d, row in zip(DRIVERS, r.json()["rows"], strict=True):
        for name, want in plan_bruteforce.values(plan, "driver_performance", events, d, as_of).items():
            n += 1
            got = row["values"][f"driver_performance:{name}"]
            if not close(got, want):
                bad.append((d, name, got, want))
    return n, bad


def test_adding_a_feature_to_a_running_system(
    repo: Path, kafka_broker: Broker, redis_server: RedisServer, redis_client: redis.Redis, worker_factory: Factory,
    tmp_path: Path,
) -> None:  # fmt: skip
    run_fstore(["apply", "--repo", str(repo)], {}, tmp_path)
    now = time.time_ns() // 1000
    if now - floor_to(now, DAY) < 20 * SECOND:
        time.sleep(20)
        now = time.time_ns() // 1000
    c = floor_to(now, DAY)
    history = rides(900, c - 2 * DAY, now - (c - 2 * DAY) - 5 * SECOND, seed=31)
    w = worker_factory(kafka_broker, FSTORE_STREAM_RAW_MAX_AGE_S="1")
    w.start()
    publish(kafka_broker, w.topic, [message(e) for e in history])
    w.wait_done(len(history), timeout=180)
    run_batch((to_date(c) - timedelta(days=1)).isoformat(), tmp_path / "data", redis_server.url)
    assert BatchPointer.loads(redis_client.get(POINTER_KEY)) is not None

    with TestClient(create_app(ApiSettings(redis_url=redis_server.url))) as client:
        n, bad = mismatches(client, plan_source.current_plan(), history)
        assert n and not bad, bad[:5]
        assert (
            client.get(
                "/features", params={"driver_id": "d0", "features": "driver_performance:fare_std_3h"}
            ).status_code
            == 404
        )

        # Add a feature (a std on the 3 h fare series, which kept no variance state) and apply it.
        assert ANCHOR in RIDES and FIELD_ANCHOR in RIDES
        (repo / "features.py").write_text(
            RIDES.replace(ANCHOR, ANCHOR + STD).replace(FIELD_ANCHOR, FIELD_ANCHOR + FIELD)
        )
        out = run_fstore(["apply", "--repo", str(repo)], {}, tmp_path)
        assert "refused until built: driver_performance:fare_std_3h" in out, out
        wait_for(client, "driver_performance:fare_std_3h", 409)
        r = client.get(
            "/features",
            params={"driver_id": "d1", "features": "driver_performance:fare_std_3h,driver_performance:fare_3h"},
        )
        assert r.status_code == 409 and "fstore backfill --view driver_performance" in r.json()["detail"], r.text
        assert (
            client.get("/features", params={"driver_id": "d1", "features": "driver_performance:fare_3h"}).status_code
            == 200
        )

        # Traffic goes on while the worker adopts the new plan; then the backfill.
        now2 = time.time_ns() // 1000
        more = [dict(e, uid=f"n{e['uid']}") for e in rides(200, c, now2 - c - SECOND, seed=32)]
        publish(kafka_broker, w.topic, [message(e) for e in more])
        w.wait_done(len(history) + len(more), timeout=180)
        out = run_fstore(["backfill", "--view", "driver_performance", "--no-progress"], {}, tmp_path)
        assert "1 worker(s) held" in out and "driver_performance:fare_std_3h" in out, out
        wait_for(client, "driver_performance:fare_std_3h", 200)
        plan = plan_source.current_plan()
        assert "fare_std_3h" in plan.view("driver_performance").feature_names
        n, bad = mismatches(client, plan, history + more)
        assert n >= len(DRIVERS) * 14 and not bad, bad[:5]

        # Traffic after the backfill counts in the new feature as well (the worker runs the new plan).
        now3 = time.time_ns() // 1000
        late_ones = [dict(e, uid=f"p{e['uid']}") for e in rides(100, now3 - 30 * SECOND, 25 * SECOND, seed=33)]
        publish(kafka_broker, w.topic, [message(e) for e in late_ones])
        w.wait_done(len(history) + len(more) + len(late_ones), timeout=180)
        n, bad = mismatches(client, plan, history + more + late_ones)
        assert not bad, bad[:5]

        # Remove the feature and the zone view: no longer served, the view's keys freed.
        assert redis_client.keys("fs:{zone_demand|*")
        (repo / "features.py").write_text(RIDES.split("zone_demand = StreamFeatureView(")[0])
        out = run_fstore(["apply", "--repo", str(repo)], {}, tmp_path)
        assert "- driver_performance:fare_std_3h" in out and "- zone_demand:trips_3h" in out, out
        wait_for(client, "driver_performance:fare_std_3h", 404)
        assert client.get("/features", params={"zone_id": "z0", "features": "zone_demand"}).status_code in (404, 422)
        assert not redis_client.keys("fs:{zone_demand|*")  # the worker is idle: nothing wrote them again
    w.stop()
    assert w.proc is not None and w.proc.returncode == 0, w.log_tail()
