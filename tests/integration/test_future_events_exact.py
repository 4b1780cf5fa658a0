"""No event counts before its event_time, online included (docs/design.md §5), through the real speed layer.

Events stamped up to five minutes ahead of the clock (accepted by the event contract) go through Kafka and
the stream worker; the API (``GET``/``POST /features``), Feast's ``get_online_features`` (the fstore online
store) and ``get_historical_features`` are read while they are still ahead, once some of them are due
(the worker has moved them into the tiles), and after a ``kill -9`` that makes the worker replay future
events it had already stored. Every value must equal the brute force at the ``as_of`` the reader reports,
over the events published so far: an event counts exactly when ``event_time < as_of``.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis
from fastapi.testclient import TestClient
from feast import FeatureStore

from fstore.clock import wall_clock
from fstore.core.timeutil import HOUR, MINUTE, SECOND
from fstore.devsvc.services import Broker, RedisServer
from fstore.feast.online_store import FstoreOnlineStore
from fstore.kafka import client as kafka_io
from fstore.offline.local import get_historical_features
from fstore.redis.layout import FUTURE_PREFIX
from services.online_api.app import create_app
from services.online_api.settings import ApiSettings
from tests.support import bruteforce
from tests.support.legacy.events_example import Event
from tests.support.legacy.features import PRODUCT_ENGAGEMENT, USER_ACTIVITY, FeatureView
from tests.support.paths import close, message
from tests.support.repos import compiled
from tests.support.stream import Factory, WorkerProcess

pytestmark = pytest.mark.integration

TYPES = ["page_view", "impression", "click", "add_to_cart", "purchase"]
USERS = [f"u{i}" for i in range(6)]
PRODUCTS = [f"p{i}" for i in range(4)]
VIEWS_AND_KEYS: list[tuple[FeatureView, list[str]]] = [(USER_ACTIVITY, USERS), (PRODUCT_ENGAGEMENT, PRODUCTS)]


def event(rng: random.Random, eid: str, t: int) -> Event:
    etype = rng.choice(TYPES)
    price = round(rng.uniform(1, 200), 2) if etype == "purchase" else None
    return Event(eid, etype, rng.choice(USERS), rng.choice(PRODUCTS), t, price, rng.randint(1, 3), None)


def publish(broker: Broker, topic: str, events: list[Event]) -> None:
    msgs = [message(e) for e in events]
    rep = kafka_io.publish([([k for k, _ in msgs], [v for _, v in msgs])], broker.bootstrap, topic)
    assert rep.ok, rep.summary()


@pytest.fixture
def store(feast_repo: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[FeatureStore]:
    """Feast's store over the fstore online store, on the test Redis (its clock: the wall clock)."""
    monkeypatch.setenv("FSTORE_REDIS_URL", redis_server.url)
    yield FeatureStore(repo_path=str(feast_repo))


def check_api(url: str, events: list[Event]) -> int:
    """GET and POST /features (live clock) equal the brute force at the reported as_of; returns as_of."""
    with TestClient(create_app(ApiSettings(redis_url=url))) as client:
        as_of = 0
        for view, ents in VIEWS_AND_KEYS:
            key = view.entity.join_key
            r = client.post("/features", json={"entities": [{key: e} for e in ents], "features": [view.name]})
            assert r.status_code == 200, r.text
            as_of = r.json()["as_of_us"]
            bad = [
                (e, n, row["values"][f"{view.name}:{n}"], w)
                for e, row in zip(ents, r.json()["rows"], strict=True)
                for n, w in bruteforce.values(view, events, e, as_of).items()
                if not close(row["values"][f"{view.name}:{n}"], w)
            ]
            assert not bad, f"POST /features at {as_of}: {bad[:6]}"
            for e in ents[:2]:
                g = client.get("/features", params={key: e, "features": view.name}).json()
                want = bruteforce.values(view, events, e, g["as_of_us"])
                assert all(close(g["rows"][0]["values"][f"{view.name}:{n}"], w) for n, w in want.items()), (e, g)
    return as_of


def check_feast(fs: FeatureStore, events: list[Event]) -> None:
    """Feast's get_online_features through the fstore online store, at the as_of its reader used."""
    online = fs._get_provider().online_store
    assert isinstance(online, FstoreOnlineStore)
    seen: list[int] = []

    def clock() -> int:
        seen.append(wall_clock())
        return seen[-1]

    online.clock = clock
    for view, ents in VIEWS_AND_KEYS:
        key = view.entity.join_key
        seen.clear()
        refs = [f"{view.name}:{n}" for n in view.feature_names]
        out: dict[str, list[Any]] = fs.get_online_features(
            features=refs, entity_rows=[{key: e} for e in ents]
        ).to_dict()
        as_of = max(seen)  # the reader takes as_of after its round trip: the last clock reading
        for i, e in enumerate(ents):
            for n, w in bruteforce.values(view, events, e, as_of).items():
                assert close(out[n][i], w), (view.name, e, n, out[n][i], w, as_of)


def check_pit(data_dir: Path, as_of: int, events: list[Event]) -> None:
    """get_historical_features at event_timestamp = as_of equals the brute force (and so the API)."""
    for view, ents in VIEWS_AND_KEYS:
        key = view.entity.join_key
        df = pd.DataFrame({key: ents, "event_timestamp": pd.to_datetime([as_of] * len(ents), unit="us", utc=True)})
        out = get_historical_features(df, [view.name], plan=compiled("ecommerce"), raw_uri=str(data_dir / "raw_events"))
        for row in out.to_dict(orient="records"):
            for n, w in bruteforce.values(view, events, row[key], as_of).items():
                got = None if isinstance(row[n], float) and row[n] != row[n] else row[n]
                assert close(got, w), (view.name, row[key], n, got, w)


def future_fields(client: redis.Redis) -> dict[str, int]:
    """Future-event fields in the speed hashes: ``event_id`` → event_time (one entry per view it feeds)."""
    out: dict[str, int] = {}
    for key in client.scan_iter(match="fs:*:s:*"):
        for f in client.hkeys(key):
            name = f.decode() if isinstance(f, bytes) else f
            if name.startswith(FUTURE_PREFIX):
                t, eid = name[len(FUTURE_PREFIX) :].split(":", 1)
                out[eid] = int(t)
    return out


def ready(broker: Broker, w: WorkerProcess, rng: random.Random, eid: str) -> Event:
    """Start the worker and wait until it has processed one (past) event: returns that event."""
    w.start()
    warm = event(rng, eid, wall_clock() - HOUR)
    publish(broker, w.topic, [warm])
    deadline = time.monotonic() + 120
    while w.metric("fstore_stream_events_processed_total") < 1:
        assert time.monotonic() < deadline and w.proc is not None and w.proc.poll() is None, w.log_tail()
        time.sleep(0.2)
    return warm


def wait_until(t: int) -> None:
    while wall_clock() < t:
        time.sleep(0.2)


def test_future_stamped_events_count_from_their_time_on_every_reader(
    kafka_broker: Broker,
    redis_server: RedisServer,
    redis_client: redis.Redis,
    worker_factory: Factory,
    store: FeatureStore,
    tmp_path: Path,
) -> None:
    rng = random.Random(5)
    w: WorkerProcess = worker_factory(kafka_broker, FSTORE_STREAM_RAW_MAX_AGE_S="1")
    events = [ready(kafka_broker, w, rng, "w0")]  # timing below starts once the worker consumes
    now = wall_clock()
    past = [event(rng, f"p{i}", now - rng.randrange(1, 3 * HOUR)) for i in range(300)]
    ahead = [10 * SECOND, 15 * SECOND, 20 * SECOND, 30 * SECOND, 4 * MINUTE, 4 * MINUTE + 50 * SECOND]
    future = [event(rng, f"f{i}", now + ahead[i % len(ahead)] + rng.randrange(SECOND)) for i in range(60)]
    events += past + future
    publish(kafka_broker, w.topic, past + future)
    w.wait_done(len(events), timeout=120)
    data_dir = tmp_path / "data"

    # 1. While they are ahead: stored as exact fields, not counted by any reader.
    stored = future_fields(redis_client)
    assert {e.event_id for e in future if e.event_time > wall_clock() + 2 * SECOND} <= set(stored)
    as_of = check_api(redis_server.url, events)
    assert sum(e.event_time >= as_of for e in future) >= 30
    check_feast(store, events)
    check_pit(data_dir, as_of, events)
    # Not vacuous: counting the events ahead of as_of (what a head tile holding them did) changes values.
    early = [e._replace(event_time=min(e.event_time, as_of - 1)) for e in events]
    assert any(
        bruteforce.values(v, early, x, as_of) != bruteforce.values(v, events, x, as_of)
        for v, xs in VIEWS_AND_KEYS
        for x in xs
    )

    # 2. Once the first ones are due: still exact, and the worker has moved them into the tiles.
    wait_until(now + 32 * SECOND)
    deadline = time.monotonic() + 30
    while any(t < now + 31 * SECOND for t in future_fields(redis_client).values()):
        assert time.monotonic() < deadline, "due future events were not moved into the tiles"
        time.sleep(0.5)
    assert {eid for eid, t in future_fields(redis_client).items()} == {
        e.event_id for e in future if e.event_time >= now + 4 * MINUTE
    }
    check_api(redis_server.url, events)
    check_feast(store, events)

    # 3. kill -9 after the worker stored new future events but before it committed their offsets: the
    # restarted worker replays them (markers: counted once) and leaves the stored fields exact.
    w.stop()
    w.env["FSTORE_STREAM_RAW_MAX_AGE_S"] = "300"  # no raw flush, so no offset commit, before the kill
    done = len(events)
    more = [ready(kafka_broker, w, rng, "w1")]
    now2 = wall_clock()
    ahead2 = [event(rng, f"g{i}", now2 + (20 + i % 10) * SECOND) for i in range(20)]
    more += ahead2
    publish(kafka_broker, w.topic, ahead2)
    deadline = time.monotonic() + 60
    while not {e.event_id for e in ahead2} <= set(future_fields(redis_client)):
        assert time.monotonic() < deadline and w.proc is not None and w.proc.poll() is None, w.log_tail()
        time.sleep(0.2)
    w.kill(signal.SIGKILL)
    assert w.committed() == done
    w.env["FSTORE_STREAM_RAW_MAX_AGE_S"] = "1"
    w.start()
    w.wait_done(done + len(more), timeout=120)
    events += more
    check_api(redis_server.url, events)
    wait_until(max(e.event_time for e in more) + SECOND)
    as_of = check_api(redis_server.url, events)
    check_feast(store, events)
    check_pit(data_dir, as_of, events)
    assert {e.event_id for e in ahead2} <= set(future_fields(redis_client))  # the new process never stored them
    w.stop()
