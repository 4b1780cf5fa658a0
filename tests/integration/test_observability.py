"""The observability of a running stack, checked by a real Prometheus.

A real stream worker (real broker, Redis, Delta), ``fstore serve --workers 2``, the nightly batch run by
``fstore schedule`` (Spark, Delta, the Redis batch view) and the consistency replay run by another
``fstore schedule``, all scraped every second by ``prometheus`` with the stack's own scrape config and
alert rules (infra/prometheus/). Then every query of every panel of the committed Grafana dashboard must
return a finite value, the alert rules must evaluate without error and none may fire on this healthy
stack, and the figures must say what happened (404s and 503s, a passed data-quality gate, 0 mismatches).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from examples.synth.config import GeneratorConfig
from examples.synth.generator import generate
from fstore.core.timeutil import DAY, HOUR, floor_to
from fstore.devsvc.services import Broker, RedisServer, free_port
from fstore.kafka import client as kafka_io
from tests.support.prometheus import Prometheus
from tests.support.stream import Factory

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FSTORE = str(Path(sys.executable).with_name("fstore"))
DASHBOARD = ROOT / "infra" / "grafana" / "dashboards" / "fstore.json"


@contextlib.contextmanager
def process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for(check: Callable[[], bool], what: str, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{tail}"
        time.sleep(0.5)


def scraped(port: int, name: str) -> float:
    """A sample of a /metrics page (``name`` with its labels as printed), 0 when absent or unreachable."""
    try:
        body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.TransportError:
        return 0.0
    m = re.search(rf"^{re.escape(name)} (\S+)$", body, re.M)
    return float(m.group(1)) if m else 0.0


def traffic(start: int, end: int, events: int, seed: int) -> tuple[list[str | None], list[bytes]]:
    cfg = GeneratorConfig(
        start=start, end=end, events=events, users=300, products=60, duplicate_rate=0.02, malformed_rate=0.02
    )
    keys: list[str | None] = []
    values: list[bytes] = []
    for b in generate(cfg, seed, dumps=orjson.dumps):
        keys += b.keys
        values += b.values
    return keys, values


def test_every_dashboard_panel_and_alert_rule_on_a_live_stack(
    kafka_broker: Broker, redis_server: RedisServer, redis_client: redis.Redis, worker_factory: Factory, tmp_path: Path
) -> None:
    now = time.time_ns() // 1000
    c = floor_to(now, DAY)
    data = tmp_path / "data"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FSTORE_REDIS_URL": redis_server.url,
        "FSTORE_DATA_DIR": str(data),
        "FSTORE_SAMPLES_DIR": str(tmp_path / "samples"),
        "FSTORE_API_SAMPLE_RATE": "1",
        "FSTORE_DQ_LATE_AFTER_S": str(10 * 86_400),  # the history below is published now, hours "late"
        "FSTORE_SPARK_SHUFFLE_PARTITIONS": "2",
        "FSTORE_SPARK_DRIVER_MEMORY": "2g",
    }
    # 1. The speed layer consumes 6 hours of history up to now (2% duplicates, 2% malformed).
    w = worker_factory(kafka_broker, FSTORE_STREAM_RAW_MAX_AGE_S="1")
    w.start()
    keys, values = traffic(c - 6 * HOUR, now, 6_000, seed=3)
    assert kafka_io.publish([(keys, values)], kafka_broker.bootstrap, w.topic).ok
    w.wait_done(len(values), timeout=180)

    api_port, batch_port, check_port = free_port(), free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}"
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            process([FSTORE, "serve", "--workers", "2", "--port", str(api_port)], env, tmp_path / "api.log")
        )
        wait_for(lambda: scraped(api_port, "fstore_api_redis_up") == 1, "the API", 60, tmp_path / "api.log")
        prom = stack.enter_context(
            Prometheus(
                tmp_path / "prometheus",
                {
                    "fstore-stream": f"127.0.0.1:{w.port}",
                    "fstore-api": f"127.0.0.1:{api_port}",
                    "fstore-batch": f"127.0.0.1:{batch_port}",
                    "fstore-consistency": f"127.0.0.1:{check_port}",
                },
            )
        )

        # 2. Answers of every kind: 200, 404 (unknown feature), 503 (Redis paused beyond the API's timeout).
        def read_some(n: int) -> None:
            for i in range(n):
                r = httpx.get(f"{api}/features", params={"user_id": f"u{i:06d}", "features": "user_activity"})
                assert r.status_code == 200, r.text
                r = httpx.post(
                    f"{api}/features",
                    json={"entities": [{"product_id": f"p{i:05d}"}], "features": ["product_engagement"]},
                )
                assert r.status_code == 200, r.text

        read_some(20)
        assert httpx.get(f"{api}/features", params={"user_id": "u1", "features": "user_activity:x"}).status_code == 404
        redis_client.client_pause(1500)
        statuses = [httpx.get(f"{api}/features", params={"user_id": "u1", "features": "user_activity"}).status_code]
        time.sleep(1.6)
        assert statuses == [503]

        # 3. The nightly batch for yesterday, by the scheduler (no state yet: it catches up at once).
        batch_log = tmp_path / "batch.log"
        schedule = f"schedule --retries 0 --metrics-host 127.0.0.1 --metrics-port {batch_port} --job batch --at 00:00"
        files = f"--state {tmp_path / 'batch-state.json'} --textfile {data / 'metrics' / 'batch.prom'}"
        cmd = [
            FSTORE,
            *schedule.split(),
            *files.split(),
            "--",
            FSTORE,
            *["batch", "--date", "{yesterday}", "--no-progress"],
        ]
        stack.enter_context(process(cmd, env, batch_log))
        done = 'fstore_schedule_runs_total{outcome="success",task="batch"}'
        failed = 'fstore_schedule_runs_total{outcome="failed",task="batch"}'
        wait_for(lambda: scraped(batch_port, done) + scraped(batch_port, failed) > 0, "the batch", 600, batch_log)
        assert scraped(batch_port, done) == 1, batch_log.read_text()[-4000:]

        # 4. Served answers across the new cutover, then the replay of every sampled answer.
        read_some(20)
        time.sleep(1.5)  # the API flushes its samples every second
        check_log = tmp_path / "consistency.log"
        schedule = f"schedule --retries 0 --metrics-host 127.0.0.1 --metrics-port {check_port} --job consistency"
        replay = "check-consistency --from-samples --settle 0 --in-flight 1"
        textfile = ["--textfile", str(data / "metrics" / "consistency.prom")]
        cmd = [FSTORE, *schedule.split(), "--every", "3600", *textfile, "--", FSTORE, *replay.split()]
        stack.enter_context(process(cmd, env, check_log))
        ran = 'fstore_schedule_runs_total{outcome="%s",task="consistency"}'
        wait_for(lambda: sum(scraped(check_port, ran % o) for o in ("success", "failed")) > 0, "the replay", 300)
        assert scraped(check_port, ran % "success") == 1, check_log.read_text()[-4000:]

        # 5. A last burst of traffic and reads, so that every rate window holds fresh observations.
        later = time.time_ns() // 1000
        keys, more = traffic(later - 60_000_000, later, 500, seed=4)
        assert kafka_io.publish([(keys, more)], kafka_broker.bootstrap, w.topic).ok
        w.wait_done(len(values) + len(more), timeout=120)
        read_some(10)
        wait_for(lambda: prom.targets_up() == dict.fromkeys(prom.targets_up(), 1.0) != {}, "scrapes", 30)
        time.sleep(3)

        # 6. Every panel's every query returns a finite value.
        board = json.loads(DASHBOARD.read_text())
        panels = {p["title"]: [t["expr"] for t in p["targets"]] for p in board["panels"] if p["type"] != "row"}
        assert len(panels) >= 15
        empty = [(title, e) for title, exprs in panels.items() for e in exprs if not prom.finite(e)]
        assert not empty, f"queries without a finite series: {empty}\n{prom.targets_up()}"

        # 7. ... and they say what happened.
        # the 500/503 series exist at 0 from the start (a first burst must show in rate()): the statuses counted
        errors = prom.query('sum by (status) (fstore_api_requests_total{status=~"4..|5.."}) > 0')
        assert {r["metric"]["status"] for r in errors} == {"404", "503"}
        assert prom.finite("max(fstore_batch_dq_status)") in ([0.0], [1.0])
        assert prom.finite("sum(fstore_consistency_mismatches)") == [0.0]
        assert prom.finite("sum(fstore_consistency_values_compared)")[0] > 500
        assert 0 < prom.finite("time() - max(fstore_batch_last_success_timestamp_seconds)")[0] < 600
        assert prom.finite("time() - max(fstore_batch_view_cutover_timestamp_seconds)")[0] == pytest.approx(
            time.time() - c / 1e6, abs=60
        )
        reasons = {r["metric"]["reason"] for r in prom.query("fstore_stream_events_invalid_total > 0")}
        assert len(reasons) >= 3
        assert prom.finite("sum(rate(fstore_stream_tile_commits_total[5m]))")[0] > 0
        p99 = "histogram_quantile(0.99, sum by (le) (rate(fstore_stream_freshness_lag_seconds_bucket[5m])))"
        assert prom.finite(p99)[0] > 0
        assert prom.finite("sum(fstore_stream_consumer_lag)") == [0.0]
        stale = prom.query("fstore_plan_stale")  # the API and the stream worker both report it
        assert {r["metric"]["job"] for r in stale} >= {"fstore-api", "fstore-stream"}, stale
        assert prom.finite("max(fstore_plan_stale)") == [0.0]
        served = prom.finite('sum(fstore_api_requests_total{route="/features",status="200"})')
        assert served == [100.0]  # 50 GETs + 50 POSTs over both workers

        # 8. The alert rules are loaded, evaluate without error, and none fires on this healthy stack.
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        assert len(rules) == 19 and all(r["health"] == "ok" for r in rules), [
            (r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"
        ]
        assert [a["labels"]["alertname"] for a in prom.api("alerts")["alerts"] if a["state"] == "firing"] == []
    w.stop()
