"""``fstore ingest`` feeds the speed layer as the stream worker would (docs/design.md §2, §5).

The first copy in arrival order wins everywhere, whichever way it came. History loaded with ``fstore
ingest`` is counted in the speed tiles at once (what is inside the stream's horizon), exactly as if it had
been sent through Kafka; when copies of some of its events come later through Kafka with another payload
(re-stamped, another quantity), the stream worker must not count them — the batch layer and point-in-time
reads keep the ingested copies; the very same bytes again are the same event and count once. A real
``fstore ingest`` process writes into the real Redis of a real worker on a real broker; the speed tiles are
compared with the brute force over the first copies, after the ingest and after the stream.
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
from fstore.redis.hold import HOLD_KEY
from tests.support.legacy.events_example import Event, parse
from tests.support.paths import FSTORE, message, run_fstore
from tests.support.stream import Factory, Traffic, assert_tiles_exact, make_traffic, publish

pytestmark = pytest.mark.integration


def test_ingested_events_count_online_once_and_a_later_copy_through_kafka_does_not(
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
    written = len(history.valid_ids)
    assert report["written"] == report["claimed"] == report["tiled"] == written, report
    assert_tiles_exact(redis_client, history)  # served online at once, each event once
    again = json.loads(run_fstore(["ingest", "--json", str(path)], env, tmp_path).strip().splitlines()[-1])
    assert again["written"] == again["tiled"] == 0, again

    now = time.time_ns() // 1000
    firsts = history.first_copies
    users = sorted({ev.user_id for ev in firsts})
    changed = [  # another payload: re-stamped within the hour, another quantity and, for half, another user
        message(
            ev._replace(
                event_time=min(ev.event_time + MINUTE, now - SECOND),
                quantity=ev.quantity % 4 + 1,
                user_id=users[(users.index(ev.user_id) + 1) % len(users)] if i % 2 else ev.user_id,
            )
        )
        for i, ev in enumerate(firsts[::3])
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
        fresh.valid_ids | history.valid_ids,
        firsts + fresh.first_copies,
    )
    publish(kafka_broker, worker.topic, later)
    worker.start()
    worker.wait_done(len(later.values), timeout=90)
    worker.stop()
    # The first copies, each once: the ingested ones and the fresh events; not the changed copies of ingested
    # events (those sent with another user lost to the ingested copies' claims: the markers of that user's
    # tiles have never seen them), and not the same bytes again (their markers).
    assert_tiles_exact(redis_client, later)


def test_ingest_stops_before_writing_when_redis_is_unreachable(tmp_path: Path) -> None:
    """Exit code 1 naming the way out, and nothing of the batch written (a copy stored without its claim
    would let a later copy count online; without its tiles it would be missing online)."""
    traffic = make_traffic(50, seed=63, users=5, products=3, hours=1)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(v + b"\n" for v in traffic.values))
    data = tmp_path / "data"
    env = {**os.environ, "FSTORE_DATA_DIR": str(data), "FSTORE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    proc = subprocess.run([FSTORE, "ingest", str(path)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1, (proc.stdout, proc.stderr[-2000:])
    assert "could not claim" in proc.stderr and "--no-speed" in proc.stderr, proc.stderr[-2000:]
    assert not (data / "raw_events").exists()
    out = run_fstore(["ingest", "--json", "--no-speed", str(path)], env, tmp_path)
    assert json.loads(out.strip().splitlines()[-1])["written"] == len(traffic.valid_ids)


def test_ingest_refuses_while_a_backfill_holds_the_speed_layer(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """``fstore backfill`` rebuilds tiles from ``raw_events`` and waits only for the workers it knows: ingest
    must not write tiles meanwhile. Exit 1 naming the hold; nothing written; once released, it goes on."""
    traffic = make_traffic(50, seed=64, users=5, products=3, hours=1)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(v + b"\n" for v in traffic.values))
    data = tmp_path / "data"
    env = {**os.environ, "FSTORE_DATA_DIR": str(data), "FSTORE_REDIS_URL": redis_server.url}
    redis_client.set(HOLD_KEY, "backfill-1", ex=60)
    proc = subprocess.run([FSTORE, "ingest", str(path)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1 and "holds the speed layer" in proc.stderr, (proc.stdout, proc.stderr[-2000:])
    assert not (data / "raw_events").exists()
    redis_client.delete(HOLD_KEY)
    out = run_fstore(["ingest", "--json", str(path)], env, tmp_path)
    assert json.loads(out.strip().splitlines()[-1])["tiled"] == len(traffic.valid_ids)
