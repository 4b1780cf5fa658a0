"""Consistency watched in production: the API samples what it serves, ``fstore check-consistency
--from-samples`` replays it through the point-in-time engine.

A real stream worker fills Redis and ``raw_events`` from a real broker; the API (in process, real Redis)
keeps every answer; the replay runs as the CLI. A healthy run has 0 mismatches over every value served;
one speed tile changed by hand in Redis is caught, on the features that read it and no other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import redis
from fastapi.testclient import TestClient

from fstore.consistency import replay
from fstore.core.timeutil import SECOND, iso
from fstore.delta import raw_log
from fstore.devsvc.services import Broker, RedisServer
from fstore.offline.local import get_historical_features
from fstore.samples import ResponseSampler, read_samples
from services.online_api.app import create_app
from services.online_api.settings import ApiSettings
from tests.support import raw_rows
from tests.support.legacy.events_example import Event
from tests.support.repos import compiled
from tests.support.stream import Factory, make_traffic, publish

pytestmark = pytest.mark.integration

FSTORE = str(Path(sys.executable).with_name("fstore"))


def replay_cli(data: Path, samples: Path, metrics: Path) -> tuple[int, dict[str, object]]:
    env = {**os.environ, "FSTORE_DATA_DIR": str(data), "FSTORE_SAMPLES_DIR": str(samples)}
    cmd = [FSTORE, "check-consistency", "--from-samples", "--settle", "0", "--in-flight", "1", "--json"]
    res = subprocess.run(
        [*cmd, "--metrics-file", str(metrics)], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert res.returncode in (0, 1), res.stdout + res.stderr
    return res.returncode, json.loads(res.stdout.strip().splitlines()[-1])


def test_replay_of_served_samples_is_clean_then_catches_a_corrupted_speed_tile(
    kafka_broker: Broker, redis_server: RedisServer, redis_client: redis.Redis, worker_factory: Factory, tmp_path: Path
) -> None:
    traffic = make_traffic(6_000, seed=5, users=200, products=50)
    w = worker_factory(kafka_broker)
    w.start()
    publish(kafka_broker, w.topic, traffic)
    w.wait_done(len(traffic.values), timeout=120)
    w.stop()  # raw_events flushed
    time.sleep(1.2)  # every event ingested more than --in-flight (1 s) before the answers below
    data, samples, metrics = tmp_path / "data", tmp_path / "samples", tmp_path / "consistency.prom"
    users = sorted({e.user_id for e in traffic.first_copies})[:60]
    products = sorted({e.product_id for e in traffic.first_copies if e.product_id})[:30]
    cfg = ApiSettings(redis_url=redis_server.url, data_dir=str(data), samples_dir=str(samples), api_sample_rate=1.0)
    with TestClient(create_app(cfg)) as client:
        for u in users[:30]:
            assert client.get("/features", params={"user_id": u, "features": "user_activity"}).status_code == 200
        r = client.post(
            "/features", json={"entities": [{"user_id": u} for u in users[30:]], "features": ["user_activity"]}
        )
        assert r.status_code == 200
        for p in products:  # through the FastAPI route (a repeated parameter is not the fast path)
            r = client.get(
                "/features", params=[("product_id", p), ("features", "product_engagement:ctr_1h,product_engagement")]
            )
            assert r.status_code == 200, r.text
        assert client.get("/features", params={"user_id": "u1", "features": "user_activity:nope"}).status_code == 404
    served = list(read_samples(samples, 0, time.time_ns() // 1000 + SECOND))
    assert len(served) == 30 + 5 + 30  # rate 1: every answer, at most 5 rows of the POST, no error answer

    code, report = replay_cli(data, samples, metrics)
    assert code == 0 and report["mismatches"] == 0, report
    assert report["values_compared"] == 30 * 9 + 5 * 9 + 30 * 12 and report["skipped_in_flight"] == 0
    text = metrics.read_text()
    assert 'fstore_consistency_mismatch_ratio{feature="user_activity:clicks_1h"} 0.0' in text
    assert 'fstore_consistency_values_compared{feature="product_engagement:ctr_1h"} 30.0' in text

    # One speed tile of one user gets a click too many (what a lost dedupe marker or a bad write would do).
    victim = next(
        u for u in users[:30] if any(e.user_id == u and e.event_type == "click" for e in traffic.first_copies)
    )
    # an hour tile: read by clicks_24h (hop 1 h), not by clicks_1h (5-minute tiles) — in whichever of the user's
    # day hashes holds one (traffic of the last 2 hours spans two UTC days between midnight and 02:00)
    hours: list[tuple[bytes, bytes]] = []
    for k in redis_client.scan_iter(match=f"fs:{{user_activity|{victim}}}:s:*"):
        fields: list[bytes] = redis_client.hkeys(k)  # type: ignore[assignment]
        hours += [(k, f) for f in fields if f.startswith(b"3600:") and f.endswith(b":click:c")]
    key, field = hours[0]
    redis_client.hincrby(key, field, 1)
    for f in (tmp_path / "samples").rglob("*.jsonl"):
        f.unlink()  # replay only what is served from now on
    with TestClient(create_app(cfg)) as client:
        for u in users[:30]:
            assert client.get("/features", params={"user_id": u, "features": "user_activity"}).status_code == 200
    code, report = replay_cli(data, samples, metrics)
    assert code == 1, report
    by_feature = report["by_feature"]
    assert by_feature == {"user_activity:clicks_24h": 1}, report
    assert 'fstore_consistency_mismatches{feature="user_activity:clicks_24h"} 1.0' in metrics.read_text()


def test_rows_with_events_still_in_flight_are_left_out(tmp_path: Path) -> None:
    """An event before as_of ingested after as_of - in_flight (a late arrival the API could not count):
    the row proves nothing either way, so it is counted apart, not as a mismatch."""
    uri = str(tmp_path / "raw_events")
    as_of = time.time_ns() // 1000
    early = Event("e1", "click", "u1", "p1", as_of - 600 * SECOND, None, 1, None)
    late = Event("e2", "click", "u2", "p1", as_of - 600 * SECOND, None, 1, None)
    raw_log.append_raw(uri, raw_rows.events_table([early, late], ["h1", "h2"], [as_of - 60 * SECOND, as_of + SECOND]))
    s = ResponseSampler(tmp_path / "s", 1.0)
    for user, clicks in (("u1", 1), ("u2", 0)):  # what the API served: u2's click was not there yet
        s.add(
            {
                "as_of_us": as_of,
                "batch_version": None,
                "rows": [{"entity": {"user_id": user}, "values": {"user_activity:clicks_1h": clicks}}],
            }
        )
    s.flush()
    rows = list(read_samples(tmp_path / "s", as_of, as_of + 1))
    report = replay(rows, uri, in_flight_us=5 * SECOND)
    assert (report.entities, report.in_flight, report.compared, dict(report.mismatches)) == (1, 1, 1, {})
    # without the rule the late arrival would be a mismatch: offline counts it at as_of
    df = pd.DataFrame({"user_id": ["u2"], "event_timestamp": [pd.Timestamp(iso(as_of))]})
    assert get_historical_features(df, ["user_activity:clicks_1h"], plan=compiled("ecommerce"), raw_uri=uri)[
        "clicks_1h"
    ].tolist() == [1]
