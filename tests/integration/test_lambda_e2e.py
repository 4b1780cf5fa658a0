"""The whole lambda path: Kafka → stream worker → (Redis speed tiles, raw_events) → nightly batch → API.

Nothing is loaded into Redis or Delta by the test: the speed tiles and raw_events come from the real
worker (a subprocess reading a real Apache Kafka broker), the batch view from ``fstore batch`` (local Spark,
real Delta tables), and the values from the API's ``GET``/``POST /features`` over the real Redis.

1. Traffic across the cutover C (today 00:00 UTC) is published and consumed by the worker, then the
   worker stops (raw_events flushed). Users are of three kinds: batch-only (events before C),
   speed-only (events from C on) and mixed (both, many within an hour of C, some exactly at C).
2. ``fstore batch --date C-1`` rebuilds from raw_events and publishes the batch view with cutover C.
3. The worker runs again on more traffic: events from C on, re-sent copies with different payloads
   (the first copy must win) and late events before C (docs/design.md §4: the next batch corrects those, so
   the view must not count them yet).
4. Every user and product is read through the API; each value must equal the brute force of
   docs/design.md §3 at the response's ``as_of`` over batch-side events (before C, phase 1) plus speed-side
   events (from C on, first copy of each event_id).
"""

from __future__ import annotations

import random
import time
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from fstore.core.timeutil import DAY, HOUR, floor_to, to_date
from fstore.devsvc.services import Broker, RedisServer
from fstore.redis.layout import POINTER_KEY, BatchPointer
from services.online_api.app import create_app
from services.online_api.settings import ApiSettings
from tests.support import bruteforce
from tests.support.e2e import PRODUCTS, SECOND, check_view, event, phase1_events, publish
from tests.support.legacy.features import PRODUCT_ENGAGEMENT, USER_ACTIVITY
from tests.support.paths import message, run_batch
from tests.support.stream import Factory

pytestmark = pytest.mark.integration


def test_stream_batch_and_api_end_to_end_equal_brute_force(
    kafka_broker: Broker, redis_server: RedisServer, redis_client: redis.Redis, worker_factory: Factory, tmp_path: Path
) -> None:
    now = time.time_ns() // 1000
    if now - floor_to(now, DAY) < 10 * SECOND:  # keep a few seconds of "today" for the speed side
        time.sleep(10)
        now = time.time_ns() // 1000
    c = floor_to(now, DAY)
    rng = random.Random(21)
    first = phase1_events(rng, c, now)
    msgs = [message(e) for e in first]
    msgs += [msgs[i] for i in rng.sample(range(len(msgs)), len(msgs) // 30)]  # identical re-sent copies
    msgs.insert(len(msgs) // 2, ("b0", b"{not json"))  # dead-lettered, must not disturb anything

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
    more = [
        event(rng, i, f"{rng.choice('sm')}{rng.randrange(30)}", c + rng.randrange(0, now2 - c + 1), "f")
        for i in range(300)
    ]
    late = [event(rng, i, f"m{rng.randrange(30)}", c - rng.randrange(1, HOUR), "late") for i in range(100)]
    resent = [e._replace(price=999.0, quantity=7) for e in rng.sample([e for e in first if e.event_time >= c], 50)]
    msgs2 = [message(e) for e in more + late + resent]
    w.start()
    publish(kafka_broker, w.topic, msgs2)
    w.wait_done(len(msgs) + len(msgs2), timeout=180)
    w.stop()

    batch_side = [e for e in first if e.event_time < c]
    speed_side = [e for e in first + more if e.event_time >= c]  # `resent` lose: same event_id, later
    expected_events = batch_side + speed_side
    with TestClient(create_app(ApiSettings(redis_url=redis_server.url))) as client:
        users = [f"{k}{u}" for k in "bsm" for u in range(30)]
        n = check_view(client, USER_ACTIVITY, "user_id", users, expected_events, c)
        n += check_view(client, PRODUCT_ENGAGEMENT, "product_id", PRODUCTS, expected_events, c)
    assert n > 1000

    # The checks above are not vacuous: counting the late events (or the re-sent payloads) would change
    # values, so a merge that used speed tiles before C, or a second copy, would have failed.
    t = time.time_ns() // 1000
    mixed = [f"m{u}" for u in range(30)]
    assert any(
        bruteforce.values(USER_ACTIVITY, expected_events + late, m, t)
        != bruteforce.values(USER_ACTIVITY, expected_events, m, t)
        for m in mixed
    )
    assert any(
        bruteforce.values(PRODUCT_ENGAGEMENT, expected_events + resent, p, t)
        != bruteforce.values(PRODUCT_ENGAGEMENT, expected_events, p, t)
        for p in PRODUCTS
    )
