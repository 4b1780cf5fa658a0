"""``fstore ingest`` then Kafka: a later copy of an ingested event does not count online (docs/design.md §2).

The first copy in arrival order wins everywhere. History loaded with ``fstore ingest`` arrives first; when
copies of some of its events come later through Kafka with another payload (re-stamped, another
quantity), the batch layer and point-in-time reads keep the ingested copies — and so must the speed tiles:
the stream worker must not count the later copies. The same bytes sent again are the same event; the
ingested copy is in no tile, so the stream counts that one once. A real ``fstore ingest`` process claims
into the real Redis of a real worker on a real broker; the speed tiles are compared with the brute force.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import orjson
import pytest
import redis

from fstore.core.timeutil import MINUTE, SECOND
from fstore.devsvc.services import Broker, RedisServer, free_port
from tests.support.legacy.events_example import Event, parse
from tests.support.paths import FSTORE, message, run_fstore
from tests.support.stream import Factory, Traffic, assert_tiles_exact, make_traffic, publish

pytestmark = pytest.mark.integration


def test_a_later_copy_through_kafka_of_an_ingested_event_is_not_counted_online(
    tmp_path: Path,
    kafka_broker: Broker,
    redis_server: RedisServer,
    redis_client: redis.Redis,
    worker_factory: Factory,
) -> None:
    history = make_traffic(600, seed=61, users=40, products=12, hours=1)
    worker = worker_factory(kafka_broker)
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"".join(v + b"\n" for v in history.values))
    env = {"FSTORE_DATA_DIR": worker.env["FSTORE_DATA_DIR"], "FSTORE_REDIS_URL": redis_server.url}
    report = json.loads(run_fstore(["ingest", "--json", str(path)], env, tmp_path).strip().splitlines()[-1])
    assert report["written"] == len(history.valid_ids) and report["claimed"] == report["written"], report

    now = time.time_ns() // 1000
    firsts = history.first_copies
    changed = [  # another payload: re-stamped within the hour, another quantity
        message(ev._replace(event_time=min(ev.event_time + MINUTE, now - SECOND), quantity=ev.quantity % 4 + 1))
        for ev in firsts[::3]
    ]
    same = firsts[1::6]  # the very same bytes again (the first copy's message, as ingested); none changed
    by_id = {ev.event_id: ev for ev in firsts}
    raw_of: dict[str, bytes] = {}  # the bytes of each first copy (a malformed message may carry its id too)
    for v in history.values:
        ev = parse(v, now, orjson.loads)
        if isinstance(ev, Event) and by_id.get(ev.event_id) == ev and ev.event_id not in raw_of:
            raw_of[ev.event_id] = v
    resent = [(ev.user_id, raw_of[ev.event_id]) for ev in same]
    fresh = make_traffic(300, seed=62, users=40, products=12, hours=1)
    assert not fresh.valid_ids & history.valid_ids
    keys: list[str | None] = [*(k for k, _ in changed), *(k for k, _ in resent)]
    later = Traffic(
        keys + fresh.keys,
        [v for _, v in changed] + [v for _, v in resent] + fresh.values,
        fresh.malformed,
        fresh.valid_ids | {ev.event_id for ev in same},
        fresh.first_copies + same,
    )
    publish(kafka_broker, worker.topic, later)
    worker.start()
    worker.wait_done(len(later.values), timeout=90)
    worker.stop()
    # Only the stream's first copies are in the speed tiles: the fresh events and the same bytes sent again,
    # not the changed copies of ingested events (they lost to the ingested copies' claims).
    assert_tiles_exact(redis_client, later)


def test_ingest_stops_before_writing_when_it_cannot_claim(tmp_path: Path) -> None:
    """Redis unreachable: exit code 1 naming the way out, and nothing of the batch written (a claim missing
    for a copy written would let a later copy count online)."""
    traffic = make_traffic(50, seed=63, users=5, products=3, hours=1)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(v + b"\n" for v in traffic.values))
    data = tmp_path / "data"
    env = {**os.environ, "FSTORE_DATA_DIR": str(data), "FSTORE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    proc = subprocess.run([FSTORE, "ingest", str(path)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1, (proc.stdout, proc.stderr[-2000:])
    assert "could not claim" in proc.stderr and "--no-claims" in proc.stderr, proc.stderr[-2000:]
    assert not (data / "raw_events").exists()
    out = run_fstore(["ingest", "--json", "--no-claims", str(path)], env, tmp_path)
    assert json.loads(out.strip().splitlines()[-1])["written"] == len(traffic.valid_ids)
