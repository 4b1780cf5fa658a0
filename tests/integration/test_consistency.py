"""`fstore check-consistency` and POST /historical-features against a real API process, Redis and Delta."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import redis

from fstore.core.timeutil import DAY, floor_to, iso
from fstore.delta import raw_log
from fstore.devsvc.services import RedisServer, free_port
from tests.support import bruteforce, raw_rows
from tests.support.legacy.events_example import Event
from tests.support.legacy.features import USER_ACTIVITY
from tests.support.online import load, make_events

pytestmark = pytest.mark.integration


def shifted(events: list[Event], now: int) -> list[Event]:
    """The shared random history moved to end just before ``now``."""
    latest = max(e.event_time for e in events)
    return [e._replace(event_time=e.event_time - latest + now - 5_000_000) for e in events]


@pytest.fixture
def api(tmp_path: Path, redis_server: RedisServer) -> Iterator[tuple[str, str, list[Event]]]:
    now = time.time_ns() // 1000
    events = shifted(make_events(7, 4000), now)
    raw_uri = str(tmp_path / "data" / "raw_events")
    raw_log.append_raw(
        raw_uri, raw_rows.events_table(events, [f"h{i}" for i in range(len(events))], [now] * len(events))
    )
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    load(client, events, "v1", floor_to(now, DAY))
    port = free_port()
    env = {**os.environ, "FSTORE_REDIS_URL": redis_server.url, "FSTORE_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("fstore")), "serve", "--port", str(port)], env=env, cwd=tmp_path
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url, str(tmp_path / "data"), events
    finally:
        proc.terminate()
        proc.wait(10)


def test_check_consistency_reports_zero_mismatches(api: tuple[str, str, list[Event]]) -> None:
    url, data_dir, _ = api
    env = {**os.environ, "FSTORE_DATA_DIR": data_dir}
    res = subprocess.run(
        [
            str(Path(sys.executable).with_name("fstore")),
            "check-consistency",
            "--api-url",
            url,
            "--sample",
            "50",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert '"mismatches": 0' in res.stdout and '"entities": 10' in res.stdout  # 5 users + 5 products


def test_check_consistency_catches_a_missing_event(api: tuple[str, str, list[Event]], tmp_path: Path) -> None:
    url, data_dir, events = api
    late = events[0]._replace(event_id="late-1", event_type="click", event_time=time.time_ns() // 1000 - 60_000_000)
    raw_log.append_raw(f"{data_dir}/raw_events", raw_rows.events_table([late], ["h"], [time.time_ns() // 1000]))
    from fstore.consistency import check

    report = check(url, f"{data_dir}/raw_events", sample=50, views=["user_activity"])
    assert not report.ok and report.mismatches["user_activity:clicks_1h"] == 1


def test_post_historical_features(api: tuple[str, str, list[Event]]) -> None:
    url, _, events = api
    t0 = max(e.event_time for e in events) - DAY // 2
    rows = [
        {"user_id": "u1", "event_timestamp": iso(t0), "label": 1},
        {"user_id": "u1", "event_timestamp": iso(t0), "label": 1},
        {"user_id": "ghost", "event_timestamp": iso(t0).replace("Z", ""), "label": 0},
    ]
    r = httpx.post(f"{url}/historical-features", json={"entity_rows": rows, "features": ["user_activity"]})
    assert r.status_code == 200, r.text
    out = r.json()["rows"]
    assert [o["label"] for o in out] == [1, 1, 0] and len(out) == 3
    want = bruteforce.values(USER_ACTIVITY, events, "u1", t0)
    for k, v in want.items():
        assert out[0][k] == pytest.approx(v) if v is not None else out[0][k] is None
    assert out[2]["clicks_1h"] == 0 and out[2]["avg_order_value_7d"] is None
    bad = httpx.post(
        f"{url}/historical-features", json={"entity_rows": [{"user_id": "u1"}], "features": ["user_activity"]}
    )
    assert bad.status_code == 422 and "event_timestamp" in bad.text
    bad = httpx.post(f"{url}/historical-features", json={"entity_rows": rows, "features": ["user_activity:x"]})
    assert bad.status_code == 422 and "'x'" in bad.text
    # a zone name pandas cannot read ("PST") was dropped and the time read as UTC, 8 hours off: refused now;
    # the same wall time with its offset gets the brute force's values at the instant it names
    t_pst = (datetime(1970, 1, 1) + timedelta(microseconds=t0 - 8 * 3_600_000_000)).isoformat()
    named = [{"user_id": "u1", "event_timestamp": f"{t_pst} PST"}]
    bad = httpx.post(f"{url}/historical-features", json={"entity_rows": named, "features": ["user_activity"]})
    assert bad.status_code == 422 and "PST" in bad.text, bad.text
    offset = [{"user_id": "u1", "event_timestamp": f"{t_pst}-08:00"}]
    r = httpx.post(f"{url}/historical-features", json={"entity_rows": offset, "features": ["user_activity"]})
    assert r.status_code == 200, r.text
    for k, v in want.items():
        assert r.json()["rows"][0][k] == pytest.approx(v) if v is not None else r.json()["rows"][0][k] is None


def test_historical_features_on_a_damaged_table_is_a_clear_503(api: tuple[str, str, list[Event]]) -> None:
    """A truncated Parquet file or a lost Delta log entry under raw_events (probe-faults: both gave a bare 500
    "Internal Server Error", which the runbook calls a bug) answers 503 naming raw_events and the error."""
    url, data_dir, events = api
    last = max(e.event_time for e in events)
    rows = [{"user_id": "u1", "event_timestamp": iso(last)}]
    body = {"entity_rows": rows, "features": ["user_activity:clicks_1h"]}
    assert httpx.post(f"{url}/historical-features", json=body, timeout=60).status_code == 200
    day = datetime.fromtimestamp(last / 1e6, UTC).date().isoformat()  # the partition the request reads
    victim = sorted(Path(data_dir, "raw_events", f"event_date={day}").glob("*.parquet"))[0]
    whole = victim.read_bytes()
    victim.write_bytes(whole[: len(whole) // 2])
    r = httpx.post(f"{url}/historical-features", json=body, timeout=60)
    assert r.status_code == 503 and "raw_events" in r.json()["detail"] and "Parquet" in r.json()["detail"], r.text
    victim.write_bytes(whole)
    for _ in range(2):
        raw_log.append_raw(f"{data_dir}/raw_events", raw_rows.events_table(events[:1], ["h"], [time.time_ns() // 1000]))
    entry = sorted(Path(data_dir, "raw_events", "_delta_log").glob("*.json"))[1]
    entry.unlink()
    r = httpx.post(f"{url}/historical-features", json=body, timeout=60)
    assert r.status_code == 503 and "DeltaError" in r.json()["detail"], r.text
