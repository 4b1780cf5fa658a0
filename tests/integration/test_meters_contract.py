"""The feature contract (docs/design.md §3) as an outside checker tests it, on a third repository of its
own (tests/support/repos/meters: a smart-meter stream; every aggregation spelling Feast accepts; windows
at the hop table's exact boundaries; a declared hop; filters on a string, a number and a boolean; measures
of 1, a field and a product of three fields; count_distinct of strings, of -0.0 and 0.0 and of integers;
ratios with zero denominators) through the real services —
Apache Kafka → the stream worker → Redis and Delta ``raw_events``, ``fstore batch`` on local Spark, the
online API (GET and POST /features), POST /historical-features and Feast's ``get_historical_features``.

Every value is compared with a brute force written by hand from §3 (tests/support/meters_traffic.py:
it shares no code with the engines): counts, count_distinct, min and max bit-equal, the rest to 1e-9
relative. The point-in-time rows sit on the edges of every window (an event at exactly t, 1 µs before
it, at each tail and 1 µs before); empty windows and single values are checked on meters with none or one
event. A bad definition that would also free state is refused naming it, and nothing changes: neither
Feast's registry, fstore's record, nor Redis. (Evolution — added: 409 until ``fstore backfill``, then
exact; removed: 404 and freed — runs on the rides repository in tests/integration/test_rides_e2e.py; here
only the backfill's own tile writer, whose distinct members once differed from the stream's.)"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis
from fastapi.testclient import TestClient

from fstore import plan_source
from fstore.core.timeutil import DAY, SECOND, floor_to, iso, to_date
from fstore.devsvc.services import Broker, RedisServer
from fstore.redis.layout import POINTER_KEY
from services.online_api.app import create_app
from services.online_api.settings import ApiSettings
from tests.support import meters_traffic as mt
from tests.support.e2e import publish
from tests.support.paths import run_batch, run_fstore, serve_repo
from tests.support.repos import compiled
from tests.support.stream import Factory

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Stream feature views are experimental:RuntimeWarning"),
]

Row = dict[str, Any]
VIEW = "meter_stats"
LONELY, NOBODY = "m-one", "m-none"  # one event (std/var null, mean = the value), none (0 / null)
CIRCUITS = '        Aggregation(column="circuit", function="count_distinct", time_window=D12, name="circuits_12d"),\n'
FSTORE = str(Path(sys.executable).with_name("fstore"))


def text(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x


def amps_fields(client: redis.Redis) -> list[tuple[str, str]]:
    """The speed and batch tile fields of measure ``amps`` (``<size>:<start>:amps[:...]``)."""
    keys = [text(k) for k in client.keys(f"fs:{{{VIEW}|*")]
    return [
        (k, f)
        for k in keys
        if ":s:" in k or ":b:" in k
        for f in (text(f) for f in client.hkeys(k))
        if f.split(":")[2:3] == ["amps"]
    ]


def state(repo: Path, client: redis.Redis) -> tuple[dict[str, bytes], dict[str, object]]:
    """Feast's registry and fstore's record (bytes), the batch pointer and every key of the view (the
    worker's own registration and heartbeat move every second)."""
    files = {p.name: p.read_bytes() for p in sorted((repo / "data").iterdir()) if p.is_file()}
    keys: dict[str, object] = {text(k): client.hgetall(k) for k in client.keys(f"fs:{{{VIEW}|*")}
    keys[POINTER_KEY] = client.get(POINTER_KEY)
    assert any(b"circuit:d:" in f for fields in keys.values() if isinstance(fields, dict) for f in fields)
    return files, keys


@pytest.fixture
def meters_env(tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    yield from serve_repo(mt.meters_repo(tmp_path, redis_server.url), redis_server.url, tmp_path / "data", monkeypatch)


def compare(where: str, meter: str, got: Mapping[str, Any], want: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (where, meter, name, got.get(name, "<missing>"), w)
        for name, w in want.items()
        if name not in got or not mt.same(mt.function_of(name), got[name], w)
    ]


def online(client: TestClient, meters: Sequence[str], events: Sequence[Row]) -> tuple[int, list[tuple[Any, ...]]]:
    """POST /features for ``meters`` and GET for the first, against the brute force at ``as_of``."""
    bad: list[tuple[Any, ...]] = []
    n = 0
    r = client.post("/features", json={"entities": [{"meter_id": m} for m in meters], "features": [VIEW]})
    assert r.status_code == 200, r.text
    body = r.json()
    g = client.get("/features", params={"meter_id": meters[0], "features": VIEW})
    assert g.status_code == 200, g.text
    for where, rows, as_of in (
        ("post", body["rows"], body["as_of_us"]),
        ("get", g.json()["rows"], g.json()["as_of_us"]),
    ):
        for m, row in zip(meters, rows, strict=False):
            got = {k.split(":", 1)[1]: v for k, v in row["values"].items()}
            want = mt.values(events, m, as_of)
            n += len(want)
            bad += compare(where, m, got, want)
            # counts are JSON integers, the rest floats or null
            counts = [k for k, (_, f, _, _) in mt.WINDOWED.items() if f.startswith("count")]
            bad += [(where, m, k, got[k], "int") for k in counts if type(got[k]) is not int]
    return n, bad


def test_user_features_agree_online_point_in_time_and_brute_force(
    meters_env: Path,
    kafka_broker: Broker,
    redis_server: RedisServer,
    redis_client: redis.Redis,
    worker_factory: Factory,
    tmp_path: Path,
) -> None:
    repo = meters_env
    run_fstore(["apply", "--repo", str(repo)], {}, tmp_path)
    plan = plan_source.current_plan()
    assert set(plan.view(VIEW).feature_names) == set(mt.WINDOWED) | set(mt.RATIOS)

    now = time.time_ns() // 1000
    if now - floor_to(now, DAY) < 30 * SECOND:
        time.sleep(30)
        now = time.time_ns() // 1000
    c = floor_to(now, DAY)
    start = c - 14 * DAY
    history = mt.readings(900, start, now - start - 5 * SECOND, seed=29)
    # point-in-time rows on the edges of every window, each over readings placed on those edges
    pit_times = [c - 3 * DAY + 7 * 60 * SECOND + 123, c - 1, c, c + (now - c) // 2 + 1]
    edge_events = [e for i, t in enumerate(pit_times) for e in mt.edges(mt.METERS[i % 2], t, f"x{i}-")]
    lonely = [{"reading_no": "one", "phase": "sample", "meter_id": LONELY, "read_at": c - 3 * 3_600 * SECOND,
               "circuit": "c1", "kwh": 3.0, "volts": 230.0, "amps": 2.0, "hours": 1.0, "tripped": False}]  # fmt: skip
    events = history + edge_events + lonely
    events = [e for e in events if e["read_at"] < now - 5 * SECOND]

    w = worker_factory(kafka_broker, FSTORE_STREAM_RAW_MAX_AGE_S="1")
    w.start()
    publish(kafka_broker, w.topic, [mt.message(e) for e in events])
    w.wait_done(len(events), timeout=180)

    run_batch((to_date(c) - timedelta(days=1)).isoformat(), tmp_path / "data", redis_server.url)

    meters = [*mt.METERS, LONELY, NOBODY]
    bad: list[tuple[Any, ...]] = []
    with TestClient(create_app(ApiSettings(redis_url=redis_server.url))) as client:
        checked, bad = online(client, meters, events)

        # POST /historical-features at every edge time, for every meter
        asked = [(t, m) for t in pit_times for m in meters]
        rows = [{"meter_id": m, "event_timestamp": iso(t), "label": i} for i, (t, m) in enumerate(asked)]
        r = client.post("/historical-features", json={"entity_rows": rows, "features": [VIEW]})
        assert r.status_code == 200, r.text
        out = r.json()["rows"]
        assert [o["label"] for o in out] == [row["label"] for row in rows]
        for (t, m), o in zip(asked, out, strict=True):
            want = mt.values(events, m, t)
            checked += len(want)
            bad += compare(f"http-pit@{iso(t)}", m, o, want)

    from feast import FeatureStore

    store = FeatureStore(repo_path=str(repo))
    df = pd.DataFrame(
        {
            "meter_id": [m for _, m in asked],
            "event_timestamp": [datetime.fromtimestamp(t / 1e6, UTC) for t, _ in asked],
            "label": range(len(rows)),
        }
    )
    # datetime.fromtimestamp(x / 1e6) may lose a µs: compare at the instant Feast was asked about
    feast_out = store.get_historical_features(
        entity_df=df, features=[f"{VIEW}:{n}" for n in plan.view(VIEW).feature_names]
    ).to_df()
    assert list(feast_out["label"]) == list(range(len(rows)))
    for _, o in feast_out.iterrows():
        t = int(pd.Timestamp(o["event_timestamp"]).value // 1000)
        want = mt.values(events, o["meter_id"], t)
        checked += len(want)
        bad += compare(
            f"feast-pit@{iso(t)}", o["meter_id"], {k: (None if pd.isna(v) else v) for k, v in o.items()}, want
        )

    assert not bad, f"{len(bad)} of {checked} values differ (where, meter, feature, got, brute force): {bad[:12]}"
    # not vacuous: the edges decide values (an engine that took the event at t, or missed the one at the
    # tail, would differ), and empty windows, single values and zero denominators occur
    for i, t in enumerate(pit_times):
        m = mt.METERS[i % 2]
        shifted = mt.values([dict(e, read_at=e["read_at"] + 1) for e in events], m, t)
        assert shifted != mt.values(events, m, t)
    lone = mt.values(events, LONELY, c)
    one = ("samples_12h", "kwh_mean_12h", "energy_std_12h", "energy_var_12h5m")
    assert [lone[n] for n in one] == [1, 3.0, None, None]
    empty = {n: 0 if f in ("count", "count_distinct", "sum") else None for n, (_, f, _, _) in mt.WINDOWED.items()}
    assert mt.values(events, NOBODY, now) == {**empty, **dict.fromkeys(mt.RATIOS)}

    # A bad definition (here with a removal that would free state) is refused naming it; nothing changes.
    text = (repo / "features.py").read_text()
    before = state(repo, redis_client)
    bad_text = text.replace("\"1 if phase == 'fault'\"", "\"1 if phse == 'fault'\"")
    bad_text = bad_text.replace('        Field(name="circuits_12d", dtype=Int64),\n', "")  # its series would be freed
    assert CIRCUITS in bad_text
    (repo / "features.py").write_text(bad_text.replace(CIRCUITS, ""))
    proc = subprocess.run(
        [FSTORE, "apply", "--repo", str(repo)], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    said = proc.stdout + proc.stderr
    assert "measure 'fault'" in said and "unknown field 'phse'" in said and "nothing was applied" in said, said
    assert state(repo, redis_client) == before

    w.stop()
    assert w.proc is not None and w.proc.returncode == 0, w.log_tail()


def test_backfill_writes_distinct_members_as_the_stream_and_batch_do(redis_client: redis.Redis) -> None:
    """``fstore backfill`` rebuilds the speed tiles itself: its distinct members must be spelt as the stream
    and the batch spell them (``member``), or a value seen on both sides of the cutover counts twice —
    -0.0 was written as "-0.0" next to the batch's "0.0" (found by the contract audit: 5 distinct deltas
    served where the point-in-time engine and the brute force counted 4)."""
    from fstore.core.view_tiles_frame import member
    from jobs.backfill import rebuild_speed

    plan = compiled("meters")
    view = plan.view(VIEW)
    t0 = 1_790_000_000 * SECOND
    rows = [
        {"reading_no": f"z{i}", "phase": "reset", "meter_id": "m0", "read_at": t0 + i, "delta": d, "tier": k}
        for i, (d, k) in enumerate(((-0.0, 2), (0.0, 2), (2.5, 3)))
    ]
    rebuild_speed(redis_client, view, plan.schema, rows, t0 + DAY, 3_600, marker_ttl_s=3_600, now=t0 + DAY)
    members = {
        (f.split(":")[2], f.split(":", 4)[4])
        for k in redis_client.keys(f"fs:{{{VIEW}|m0}}:s:*")
        for f in map(text, redis_client.hkeys(k))
        if ":d:" in f
    }
    assert {m for name, m in members if name == "delta"} == {member(0.0), member(2.5)} == {"0.0", "2.5"}
    assert {m for name, m in members if name == "tier"} == {member(2), member(3)}
