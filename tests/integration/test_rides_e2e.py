"""Issue 13 acceptance: a second feature repository that shares nothing with the example (``rides``: its
own entities, event kinds and fields; windows of 10 min, 3 h, 2 d and 30 d; every aggregation function; a
filter, a product measure, a ratio) runs through the real stream worker (Apache Kafka → Redis, Delta
raw_events), the nightly batch (local Spark, Delta) and is read through the online API, Feast's
``get_online_features`` (FstoreOnlineStore) and Feast's ``get_historical_features`` (FstoreOfflineStore).
Every value equals the brute force of the contract (tests/support/plan_bruteforce.py): 0 mismatches, on
traffic with re-sent copies (the first copy wins), late events and malformed messages.

Then evolution on the running system (issue 13): a feature is added and applied (Feast's own ``feast apply``)
— the API refuses it (409 naming it, never a number) while traffic goes on — ``fstore backfill`` builds it
with the worker held, and right after every value of the view equals the brute force; removing the feature
and a whole view and applying stops serving them and, once the worker runs the new plan (rides still
coming), frees the view's keys: nothing writes them again. Afterwards no Redis key is left without a TTL.

Nothing in fstore names a rides field: the plan comes from the repository (``FSTORE_FEATURE_REPO``)."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
import redis
from fastapi.testclient import TestClient

from fstore import plan_source
from fstore.core.plan import Plan
from fstore.core.timeutil import DAY, HOUR, MINUTE, SECOND, floor_to, to_date
from fstore.devsvc.services import Broker, RedisServer
from fstore.redis.layout import POINTER_KEY, BatchPointer
from services.online_api.app import create_app
from services.online_api.settings import ApiSettings
from tests.support import plan_bruteforce
from tests.support.e2e import publish
from tests.support.paths import close, run_batch, run_fstore, serve_repo
from tests.support.redis_keys import keys_without_ttl
from tests.support.repos.mistakes import RIDES
from tests.support.rides_traffic import message, rides, rides_repo
from tests.support.stream import Factory

pytestmark = pytest.mark.integration

Row = dict[str, Any]
DRIVERS = [f"d{i}" for i in range(6)]
DP = "driver_performance"
# The feature the evolution step adds: a std on the 3 h fare series, whose tiles kept no variance state.
STD = (
    '        Aggregation(column="fare", function="std", time_window=H3, slide_interval=timedelta(minutes=15), '
    'name="fare_std_3h"),\n'
)
ANCHOR = '        Aggregation(column="trip", function="count", time_window=D2, name="trips_2d"),\n'
FIELD = '        Field(name="fare_std_3h", dtype=Float64),\n'
FIELD_ANCHOR = '        Field(name="trips_2d", dtype=Int64),\n'
ZONES = [f"z{i}" for i in range(4)]


MALFORMED = [
    ("x", b"{not json"),
    ("x", orjson.dumps({"uid": "bad1", "zone_id": "z0", "ts": "2026-01-01T00:00:00Z"})),  # no kind
    ("x", orjson.dumps({"uid": "bad2", "kind": "completed", "zone_id": "z0", "ts": "yesterday"})),
    ("x", orjson.dumps({"uid": "bad3", "kind": "teleported", "zone_id": "z0", "ts": "2026-01-01T00:00:00Z"})),
    ("x", orjson.dumps({"uid": "bad 4", "kind": "requested", "zone_id": "z0", "ts": "2026-01-01T00:00:00Z"})),
]


@pytest.fixture
def rides_env(tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    yield from serve_repo(rides_repo(tmp_path, redis_server.url), redis_server.url, tmp_path / "data", monkeypatch)


def first_copies(events: Sequence[Row]) -> list[Row]:
    seen: set[str] = set()
    out = []
    for ev in events:
        if ev["uid"] not in seen:
            seen.add(ev["uid"])
            out.append(ev)
    return out


def mismatches(plan: Plan, view: str, key: str, rows: Sequence[Mapping[str, Any]], entities: Sequence[str],
               events: Sequence[Row], at: Sequence[int]) -> tuple[int, list[tuple[object, ...]]]:  # fmt: skip
    """Compare one row of values per entity with the brute force at ``at`` (per row)."""
    bad: list[tuple[object, ...]] = []
    n = 0
    for entity, got, t in zip(entities, rows, at, strict=True):
        for name, want in plan_bruteforce.values(plan, view, events, entity, t).items():
            n += 1
            if not close(got[name], want):
                bad.append((view, entity, name, got[name], want))
    return n, bad


def test_a_second_repository_runs_through_every_engine_with_no_mismatch(
    rides_env: Path,
    kafka_broker: Broker,
    redis_server: RedisServer,
    redis_client: redis.Redis,
    worker_factory: Factory,
    tmp_path: Path,
) -> None:
    repo = rides_env
    run_fstore(["apply", "--repo", str(repo)], {}, tmp_path)  # `feast apply` + fstore's record
    plan = plan_source.current_plan()
    assert {v.name for v in plan.views} == {"driver_performance", "zone_demand"}

    now = time.time_ns() // 1000
    if now - floor_to(now, DAY) < 20 * SECOND:  # keep a few seconds of "today" for the speed side
        time.sleep(20)
        now = time.time_ns() // 1000
    c = floor_to(now, DAY)
    start = c - 3 * DAY
    first = rides(1500, start, now - start - 5 * SECOND, seed=13)
    rng = random.Random(13)
    resent_early = [dict(ev, distance_km=99.0) for ev in rng.sample(first, 40)]  # later copies: ignored
    msgs = [message(e) for e in first] + [message(e) for e in resent_early] + MALFORMED

    w = worker_factory(kafka_broker, FSTORE_STREAM_RAW_MAX_AGE_S="1")
    w.start()
    publish(kafka_broker, w.topic, msgs)
    w.wait_done(len(msgs), timeout=180)
    w.stop()
    assert w.proc is not None and w.proc.returncode == 0, w.log_tail()

    run_batch((to_date(c) - timedelta(days=1)).isoformat(), tmp_path / "data", redis_server.url)
    pointer = BatchPointer.loads(redis_client.get(POINTER_KEY))
    assert pointer is not None and pointer.cutover == c

    now2 = time.time_ns() // 1000
    more = [dict(e, uid=f"m{e['uid']}") for e in rides(300, c, now2 - c - SECOND, seed=14)]
    late = [dict(e, uid=f"l{e['uid']}") for e in rides(100, c - 2 * HOUR, 2 * HOUR - MINUTE, seed=15)]
    today = [e for e in first if e["ts"] >= c]
    resent = [dict(ev, kind="cancelled") for ev in rng.sample(today, min(30, len(today)))]
    msgs2 = [message(e) for e in more + late + resent] + MALFORMED
    w.start()  # runs on to the end: the evolution below happens on a live system
    publish(kafka_broker, w.topic, msgs2)
    w.wait_done(len(msgs) + len(msgs2), timeout=180)

    batch_side = [e for e in first if e["ts"] < c]
    speed_side = [e for e in first + more if e["ts"] >= c]
    served = batch_side + speed_side  # late events wait for the next batch; re-sent copies lose
    checked = 0
    bad: list[tuple[object, ...]] = []
    with TestClient(create_app(ApiSettings(redis_url=redis_server.url))) as client:
        for view, key, entities in (("driver_performance", "driver_id", DRIVERS), ("zone_demand", "zone_id", ZONES)):
            r = client.post("/features", json={"entities": [{key: e} for e in entities], "features": [view]})
            assert r.status_code == 200, r.text
            body = r.json()
            rows = [{k.split(":", 1)[1]: v for k, v in row["values"].items()} for row in body["rows"]]
            n, b = mismatches(plan, view, key, rows, entities, served, [body["as_of_us"]] * len(entities))
            checked, bad = checked + n, bad + b
            g = client.get("/features", params={key: entities[0], "features": f"{view}"})
            assert g.status_code == 200, g.text
            row = {k.split(":", 1)[1]: v for k, v in g.json()["rows"][0]["values"].items()}
            n, b = mismatches(plan, view, key, [row], entities[:1], served, [g.json()["as_of_us"]])
            checked, bad = checked + n, bad + b
        unknown = client.get("/features", params={"driver_id": "d0", "features": "driver_performance:nope"})
        assert unknown.status_code in (400, 404, 422) and "nope" in unknown.text

    # Feast online: the same values (compared at the instants around the read: equal unless a hop passed).
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(repo))
    for view, key, entities in (("driver_performance", "driver_id", DRIVERS), ("zone_demand", "zone_id", ZONES)):
        names = plan.view(view).feature_names
        t0 = time.time_ns() // 1000
        got = store.get_online_features(
            features=[f"{view}:{n}" for n in names], entity_rows=[{key: e} for e in entities]
        ).to_dict()
        t1 = time.time_ns() // 1000
        for i, e in enumerate(entities):
            want0 = plan_bruteforce.values(plan, view, served, e, t0)
            if want0 != plan_bruteforce.values(plan, view, served, e, t1):
                continue  # a hop boundary passed during the read
            for name in names:
                checked += 1
                if not close(got[name][i], want0[name]):
                    bad.append(("feast-online", view, e, name, got[name][i], want0[name]))

    # Point in time over raw_events: every valid first copy, late ones included.
    history = first_copies(first + more + late)
    times = [start + rng.randrange(now2 - start) for _ in range(40)] + [c, c - 1, now2]
    for view, key, entities in (("driver_performance", "driver_id", DRIVERS), ("zone_demand", "zone_id", ZONES)):
        ents = [rng.choice(entities) for _ in times]
        df = pd.DataFrame(
            {
                key: ents,
                "event_timestamp": [datetime.fromtimestamp(t / 1e6, UTC) for t in times],
                "label": range(len(times)),
            }
        )
        cols = plan.view(view).feature_names
        out = store.get_historical_features(entity_df=df, features=[f"{view}:{col}" for col in cols]).to_df()
        assert list(out["label"]) == list(range(len(times)))  # one row per input row, in order, labels kept
        ts_us = [int(pd.Timestamp(t).value // 1000) for t in out["event_timestamp"]]
        rows = [{col: (None if pd.isna(r[col]) else r[col]) for col in cols} for _, r in out.iterrows()]
        n, b = mismatches(plan, view, key, rows, list(out[key]), history, ts_us)
        checked, bad = checked + n, bad + b

    assert not bad, f"{len(bad)} of {checked} values differ: {bad[:10]}"
    assert checked > 800
    # Not vacuous: the late events and the re-sent copies would change values if they were counted.
    assert any(
        plan_bruteforce.values(plan, "zone_demand", served + late, z, now2)
        != plan_bruteforce.values(plan, "zone_demand", served, z, now2)
        for z in ZONES
    )

    # Evolution on the running system (worker and API up, batch view published): add a feature, apply,
    # 409 until built, traffic on, backfill, exact values; then remove it and a whole view.
    with TestClient(create_app(ApiSettings(redis_url=redis_server.url))) as client:
        assert ANCHOR in RIDES and FIELD_ANCHOR in RIDES
        (repo / "features.py").write_text(
            RIDES.replace(ANCHOR, ANCHOR + STD).replace(FIELD_ANCHOR, FIELD_ANCHOR + FIELD)
        )
        # registered by Feast's own `feast apply` (design §3), whose fstore online store records the plan
        feast = subprocess.run(
            [str(Path(sys.executable).with_name("feast")), "apply"],
            cwd=repo, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert feast.returncode == 0, feast.stdout[-3000:] + feast.stderr[-3000:]
        assert "refused until built: driver_performance:fare_std_3h" in feast.stdout, feast.stdout
        wait_for(client, "driver_performance:fare_std_3h", 409)
        r = client.get("/features", params={"driver_id": "d1", "features": f"{DP}:fare_std_3h,{DP}:fare_3h"})
        assert r.status_code == 409 and "fstore backfill --view driver_performance" in r.json()["detail"], r.text
        assert client.get("/features", params={"driver_id": "d1", "features": f"{DP}:fare_3h"}).status_code == 200
        from fstore.feast.online_store import FeatureNotBuiltError

        with pytest.raises(FeatureNotBuiltError, match="fstore backfill --view driver_performance"):
            FeatureStore(repo_path=str(repo)).get_online_features(  # Feast refuses it too: no number
                features=[f"{DP}:fare_std_3h"], entity_rows=[{"driver_id": "d1"}]
            )

        now3 = time.time_ns() // 1000  # traffic goes on while the worker follows the new plan
        newer = [dict(e, uid=f"n{e['uid']}") for e in rides(200, now3 - 60 * SECOND, 55 * SECOND, seed=16)]
        publish(kafka_broker, w.topic, [message(e) for e in newer])
        w.wait_done(len(msgs) + len(msgs2) + len(newer), timeout=180)
        out = run_fstore(["backfill", "--view", DP, "--no-progress"], {}, tmp_path)
        assert "1 worker(s) held" in out and f"{DP}:fare_std_3h" in out, out
        wait_for(client, f"{DP}:fare_std_3h", 200)
        plan2 = plan_source.current_plan()
        assert "fare_std_3h" in plan2.view(DP).feature_names
        after = first_copies(first + more + late + newer)  # the re-run batch counts the late events now
        r = client.post("/features", json={"entities": [{"driver_id": d} for d in DRIVERS], "features": [DP]})
        assert r.status_code == 200, r.text
        rows = [{k.split(":", 1)[1]: v for k, v in row["values"].items()} for row in r.json()["rows"]]
        n, bad = mismatches(plan2, DP, "driver_id", rows, DRIVERS, after, [r.json()["as_of_us"]] * len(DRIVERS))
        assert n == len(DRIVERS) * len(plan2.view(DP).feature_names) and not bad, bad[:5]

        # Remove the feature and the zone view while rides keep coming: no longer served, the view's keys
        # freed once the worker runs the new plan — it writes none of them again.
        assert redis_client.keys("fs:{zone_demand|*")
        (repo / "features.py").write_text(RIDES.split("zone_demand = StreamFeatureView(")[0])
        now4 = time.time_ns() // 1000
        during = [dict(e, uid=f"r{e['uid']}") for e in rides(300, now4 - 60 * SECOND, 55 * SECOND, seed=17)]
        publish(kafka_broker, w.topic, [message(e) for e in during[:150]])  # consumed under the old plan
        out = run_fstore(["apply", "--repo", str(repo)], {}, tmp_path)
        assert f"- {DP}:fare_std_3h" in out and "- zone_demand:trips_3h" in out, out
        assert "freed" in out and "every live stream worker runs plan" in out, out
        publish(kafka_broker, w.topic, [message(e) for e in during[150:]])
        w.wait_done(len(msgs) + len(msgs2) + len(newer) + len(during), timeout=180)
        wait_for(client, f"{DP}:fare_std_3h", 404)
        assert client.get("/features", params={"zone_id": "z0", "features": "zone_demand"}).status_code in (404, 422)
        assert not redis_client.keys("fs:{zone_demand|*")  # nothing wrote them again
    w.stop()
    assert w.proc is not None and w.proc.returncode == 0, w.log_tail()
    assert keys_without_ttl(redis_client) == []  # design §7: worker, batch view, backfill, apply — all expire


def wait_for(client: TestClient, ref: str, status: int) -> None:
    """The API follows the applied record within about a second."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if client.get("/features", params={"driver_id": "d0", "features": ref}).status_code == status:
            return
        time.sleep(0.2)
    raise AssertionError(f"GET {ref} never answered {status}")
