"""The traffic and the checks of the end-to-end lambda tests (tests/integration/test_lambda_e2e.py on a
standalone Redis, tests/integration/test_redis_cluster.py on a Redis Cluster)."""

from __future__ import annotations

import random

from fastapi.testclient import TestClient

from fstore.core.timeutil import DAY, HOUR, iso
from fstore.devsvc.services import Broker
from tests.support import bruteforce
from tests.support.legacy.events_example import Event
from tests.support.legacy.features import FeatureView
from tests.support.paths import close

SECOND = 1_000_000
TYPES = ["page_view", "impression", "click", "add_to_cart", "purchase"]
WEIGHTS = [30, 35, 20, 10, 5]
PRODUCTS = [f"p{i}" for i in range(20)]


def event(rng: random.Random, i: int, user: str, t: int, tag: str) -> Event:
    etype = rng.choices(TYPES, WEIGHTS)[0]
    product = None if etype == "page_view" and rng.random() < 0.3 else rng.choice(PRODUCTS)
    price = round(rng.uniform(1, 200), 2) if etype == "purchase" or rng.random() < 0.2 else None
    return Event(f"{tag}-{i}", etype, user, product, t, price, rng.randint(1, 3), f"s-{user}")


def phase1_events(rng: random.Random, c: int, now: int) -> list[Event]:
    """Batch-only (b*), speed-only (s*) and mixed (m*) users; times in [C - 3 d, now)."""
    out: list[Event] = []

    def before() -> int:
        return c - rng.choice([rng.randrange(1, 3 * DAY), rng.randrange(1, HOUR), 1])

    def after() -> int:
        return c + rng.choice([rng.randrange(0, now - c), rng.randrange(0, min(HOUR, now - c)), 0])

    for u in range(30):
        for kind, pick in (("b", before), ("s", after), ("m", lambda: before() if rng.random() < 0.5 else after())):
            for _ in range(rng.randint(5, 60)):
                out.append(event(rng, len(out), f"{kind}{u}", pick(), "e"))
    rng.shuffle(out)
    return out


def publish(broker: Broker, topic: str, msgs: list[tuple[str, bytes]]) -> None:
    from fstore.kafka import client as kafka_io

    rep = kafka_io.publish([([k for k, _ in msgs], [v for _, v in msgs])], broker.bootstrap, topic)
    assert rep.ok, rep.summary()


def check_view(
    client: TestClient, view: FeatureView, key: str, entities: list[str], events: list[Event], c: int
) -> int:
    """POST /features for the entities (and GET for the first), compared with brute force; returns #values."""
    r = client.post("/features", json={"entities": [{key: e} for e in entities], "features": [view.name]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["batch_cutoff"] == iso(c)
    as_of = body["as_of_us"]
    checked = 0
    bad = []
    for entity, row in zip(entities, body["rows"], strict=True):
        want = bruteforce.values(view, events, entity, as_of)
        got = row["values"]
        assert set(got) == {f"{view.name}:{k}" for k in want}
        for k, v in want.items():
            checked += 1
            if not close(got[f"{view.name}:{k}"], v):
                bad.append((entity, k, got[f"{view.name}:{k}"], v))
    assert not bad, f"{len(bad)} of {checked} values differ (entity, feature, api, brute force): {bad[:8]}"
    g = client.get("/features", params={key: entities[0], "features": view.name})
    assert g.status_code == 200, g.text
    want = bruteforce.values(view, events, entities[0], g.json()["as_of_us"])
    assert all(close(g.json()["rows"][0]["values"][f"{view.name}:{k}"], v) for k, v in want.items())
    return checked
