"""Duplicates through every real path (docs/design.md §2): arrival order wins, and a copy on another day counts once.

Two message files are built; the second arrives after the first. They hold:

* **copies in one file** (corner 1): later lines re-send an event with another payload (quantity, price,
  event_time within the same UTC day), always one whose payload hash is *smaller* than the first line's,
  some next to the original (same ingest batch), some far later (another batch);
* **copies on different days** (corner 2): an event re-sent with an event_time on another UTC day —
  winner inside the batch job's partitions and the loser 18 days earlier, the reverse, and both within a
  week of each other — some in the same file, some in the second file (a later run).

The same files go two ways: ``fstore ingest`` into data dir A, and ``fstore publish`` to Kafka, consumed by
the stream worker into data dir B (its raw sink) and Redis. Then ``fstore batch`` runs on each, and every
value is compared with the brute force over the first copy of each event_id in arrival order: the winners
stored in ``raw_events`` (as every reader picks them), the point-in-time engine
(``get_historical_features``, local and Spark) at times whose partitions hold one copy but not the other,
and the API over each batch view.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
import redis
from fastapi.testclient import TestClient

from fstore.core.dedupe import drop_superseded, first_ingested_arrow
from fstore.core.events import payload_hash
from fstore.core.timeutil import DAY, HOUR, MINUTE, floor_to, to_date
from fstore.delta import raw_log
from fstore.devsvc.services import Broker, RedisServer
from fstore.kafka.messages import MessageWriter
from fstore.offline.local import get_historical_features
from services.online_api.app import create_app
from services.online_api.settings import ApiSettings
from tests.support import bruteforce
from tests.support.legacy.events_example import Event
from tests.support.legacy.features import PRODUCT_ENGAGEMENT, USER_ACTIVITY, VIEWS
from tests.support.paths import api_mismatches, close, message, run_batch, run_fstore
from tests.support.repos import compiled
from tests.support.stream import WorkerProcess

pytestmark = pytest.mark.integration

TYPES = ["page_view", "impression", "click", "add_to_cart", "purchase"]
WEIGHTS = [25, 30, 25, 10, 10]
USERS = [f"u{i}" for i in range(12)]
PRODUCTS = [f"p{i}" for i in range(6)]


def event(rng: random.Random, eid: str, t: int, user: str | None = None) -> Event:
    etype = rng.choices(TYPES, WEIGHTS)[0]
    product = None if etype == "page_view" and rng.random() < 0.3 else rng.choice(PRODUCTS)
    price = round(rng.uniform(1, 200), 2) if etype == "purchase" else None
    return Event(eid, etype, user or rng.choice(USERS), product, t, price, rng.randint(1, 3), None)


def later_copy(rng: random.Random, ev: Event, t: int) -> Event:
    """Another payload for ``ev`` at ``t`` whose message hashes lower than the original's (so "the smaller
    payload hash wins" would pick it: only arrival order keeps the original)."""
    first = payload_hash(message(ev)[1])
    for q in range(1, 10_000):
        price = None if ev.price is None else round(ev.price + rng.uniform(1, 50), 2)
        copy = ev._replace(event_time=t, quantity=1 + (ev.quantity + q) % 5, price=price, session_id=f"s{q}")
        if payload_hash(message(copy)[1]) < first:
            return copy
    raise AssertionError("no lower-hashing copy found")


@dataclass
class Scenario:
    c: int  # the batch view's cutover: today 00:00 UTC
    files: list[list[Event]]  # arrival order: file 1, then file 2
    same_day: list[Event]  # the later copies of corner 1 (other payloads, lower hashes)
    cross_day: dict[str, tuple[int, int]]  # event_id -> (winner's time, loser's time)

    @property
    def arrivals(self) -> list[Event]:
        return [e for f in self.files for e in f]

    @property
    def winners(self) -> list[Event]:
        first: dict[str, Event] = {}
        for e in self.arrivals:
            first.setdefault(e.event_id, e)
        return list(first.values())


def build(now: int) -> Scenario:
    rng = random.Random(7)
    c = floor_to(now, DAY)
    base = [event(rng, f"e{i}", c - rng.randrange(1, 6 * DAY)) for i in range(260)]
    old = [event(rng, f"o{i}", c - 20 * DAY + rng.randrange(0, 3 * DAY)) for i in range(40)]
    file1: list[Event] = base + old
    file2: list[Event] = []
    same_day: list[Event] = []
    # Corner 1: same-day copies with other payloads, next to the original or far later.
    for k, ev in enumerate(rng.sample(base, 60)):
        day = floor_to(ev.event_time, DAY)
        t = min(max(ev.event_time + rng.randrange(-90, 90) * MINUTE, day), day + DAY - 1)
        copy = later_copy(rng, ev, t)
        same_day.append(copy)
        if k % 3 == 0:
            file1.insert(file1.index(ev) + 1, copy)
        elif k % 3 == 1:
            file1.append(copy)
        else:
            file2.append(copy)
    # Corner 2: copies on other days.
    cross: dict[str, tuple[int, int]] = {}
    shapes = [(2 * DAY, 20 * DAY), (20 * DAY, 2 * DAY), (3 * DAY, 1 * DAY)]  # (winner, loser) days before C
    for k in range(36):
        win_back, lose_back = shapes[k % 3]
        ev = event(rng, f"x{k}", c - win_back + rng.randrange(1, 20) * HOUR)
        ev = ev._replace(event_type="purchase" if k % 2 else "click", product_id=rng.choice(PRODUCTS))
        ev = ev._replace(price=round(rng.uniform(1, 200), 2) if k % 2 else None)
        loser = later_copy(rng, ev, c - lose_back + rng.randrange(1, 20) * HOUR)
        cross[ev.event_id] = (ev.event_time, loser.event_time)
        file1.insert(rng.randrange(len(file1) + 1), ev)
        (file1 if k % 2 else file2).append(loser)  # the same run, or a later one
    return Scenario(c, [file1, file2], same_day, cross)


@dataclass
class Paths:
    scenario: Scenario
    ingest_dir: Path  # data dir of `fstore ingest`
    stream_dir: Path  # data dir of the stream worker's raw sink
    ingest_redis: str
    stream_redis: str


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory, kafka_broker: Broker, redis_server: RedisServer) -> Iterator[Paths]:
    tmp = tmp_path_factory.mktemp("duplicates")
    now = time.time_ns() // 1000
    if now - floor_to(now, DAY) > DAY - 15 * MINUTE:  # the batch runs and reads must not straddle midnight
        time.sleep(DAY - (now - floor_to(now, DAY)) + 5_000_000)
        now = time.time_ns() // 1000
    sc = build(now)
    files = []
    for i, evs in enumerate(sc.files):
        path = tmp / f"events-{i + 1}.jsonl"
        with MessageWriter(path) as w:
            msgs = [message(e) for e in evs]
            w.write([k for k, _ in msgs], [v for _, v in msgs])
        files.append(path)
    base = redis_server.url.rsplit("/", 1)[0]
    p = Paths(sc, tmp / "ingest", tmp / "stream" / "data", f"{base}/1", f"{base}/2")
    for url in (p.ingest_redis, p.stream_redis):
        redis.Redis.from_url(url).flushdb()

    # fstore ingest: small batches, so copies fall in the same batch and in later ones; then a re-run.
    env = {"FSTORE_DATA_DIR": str(p.ingest_dir), "FSTORE_REDIS_URL": p.ingest_redis}  # its claims go there
    p.ingest_dir.mkdir()
    for path in files:
        run_fstore(["ingest", "--batch-size", "37", "--json", str(path)], env, tmp)
    rows = raw_log.read_table(str(p.ingest_dir / "raw_events")).num_rows
    assert rows == len(sc.winners)  # only first copies are written
    again = run_fstore(["ingest", "--json", *map(str, files)], env, tmp)
    assert '"written": 0' in again and again.count('"written": 0') == 2, again
    assert raw_log.read_table(str(p.ingest_dir / "raw_events")).num_rows == rows

    # Kafka: fstore publish, the stream worker's raw sink and tiles; the second file after the first is done.
    (tmp / "stream").mkdir()
    worker = WorkerProcess(tmp / "stream", kafka_broker, p.stream_redis, FSTORE_STREAM_RAW_MAX_AGE_S="1")
    worker.start()
    try:
        sent = 0
        for path, evs in zip(files, sc.files, strict=True):
            run_fstore(
                ["publish", "--no-progress", "--topic", worker.topic, str(path)],
                {"FSTORE_KAFKA_BOOTSTRAP": kafka_broker.bootstrap},
                tmp,
            )
            sent += len(evs)
            worker.wait_done(sent, timeout=180)
        worker.stop()
        assert worker.proc is not None and worker.proc.returncode == 0, worker.log_tail()
    finally:
        if worker.proc is not None and worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait(10)

    run_date = (to_date(sc.c) - timedelta(days=1)).isoformat()
    dq = {"FSTORE_DQ_DUPLICATE_RATE_FAIL": "1"}  # the scenario is mostly duplicates, on purpose
    run_batch(run_date, p.ingest_dir, p.ingest_redis, **dq)
    run_batch(run_date, p.stream_dir, p.stream_redis, **dq)
    yield p


def stored_winners(data_dir: Path) -> dict[str, tuple[int, int, float | None]]:
    """The copy every reader takes per event_id: superseded pairs dropped, then first ingested."""
    raw = raw_log.read_table(str(data_dir / "raw_events"))
    sup = raw_log.read_table(str(data_dir / "raw_events_superseded"), ["event_id", "event_date"])
    won = first_ingested_arrow(drop_superseded(raw, sup))
    assert won.num_rows == len(set(raw.column("event_id").to_pylist()))
    return {
        r["event_id"]: (int(r["event_time"].timestamp() * 1_000_000), r["quantity"], r["price"])
        for r in won.to_pylist()
    }


def pit_mismatches(data_dir: Path, times: list[int], events: list[Event], features: list[str]) -> list[object]:
    """``get_historical_features`` over ``data_dir`` for every user and product, one request per time (so
    each reads only the partitions its own time needs), compared with the brute force."""
    bad: list[object] = []
    uri = str(data_dir / "raw_events")
    rows = max(len(USERS), len(PRODUCTS))
    for t in times:
        df = pd.DataFrame(
            {
                "user_id": [USERS[i % len(USERS)] for i in range(rows)],
                "product_id": [PRODUCTS[i % len(PRODUCTS)] for i in range(rows)],
                "event_timestamp": pd.to_datetime([t] * rows, unit="us", utc=True),
            }
        )
        out = get_historical_features(df, features, plan=compiled("ecommerce"), raw_uri=uri, full_feature_names=True)
        for row in out.to_dict(orient="records"):
            for ref in features:
                view, name = ref.split(":")
                want = bruteforce.value(VIEWS[view], name, events, row[VIEWS[view].entity.join_key], t)
                got = row[f"{view}__{name}"]
                got = None if isinstance(got, float) and got != got else got
                if not close(got, want):
                    bad.append((data_dir.name, row[VIEWS[view].entity.join_key], name, t, got, want))
    return bad


ALL = [f"{v.name}:{n}" for v in VIEWS.values() for n in v.feature_names]
HOURLY = [f"{v.name}:{n}" for v in VIEWS.values() for n in v.feature_names if n.endswith("_1h")]


def test_copies_in_a_file_first_line_wins_on_every_path(paths: Paths) -> None:
    sc = paths.scenario
    want = {e.event_id: (e.event_time, e.quantity, e.price) for e in sc.winners}
    for data_dir in (paths.ingest_dir, paths.stream_dir):
        got = stored_winners(data_dir)
        wrong = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
        assert not wrong, f"{data_dir}: {len(wrong)} winners differ (stored, first line): {list(wrong.items())[:5]}"
    times = [sc.c - 5 * DAY + 13 * MINUTE, sc.c - 2 * DAY + 7 * HOUR, sc.c - HOUR, sc.c]
    times += [e.event_time + 1 for e in sc.files[0][::40]]
    for data_dir in (paths.ingest_dir, paths.stream_dir):
        assert pit_mismatches(data_dir, times, sc.winners, ALL) == []
    for url in (paths.ingest_redis, paths.stream_redis):
        with TestClient(create_app(ApiSettings(redis_url=url))) as client:
            for view, ents in ((USER_ACTIVITY, USERS), (PRODUCT_ENGAGEMENT, PRODUCTS)):
                checked, bad = api_mismatches(client, view, ents, sc.winners)
                assert checked and not bad, f"{url}: {len(bad)} of {checked} values differ: {bad[:6]}"
    # Not vacuous: had the later (lower-hashing) copies won, values would differ.
    swapped = {e.event_id: e for e in sc.same_day}
    other = [swapped.get(e.event_id, e) for e in sc.winners]
    assert any(
        bruteforce.values(view, other, x, t) != bruteforce.values(view, sc.winners, x, t)
        for view, ents in ((USER_ACTIVITY, USERS), (PRODUCT_ENGAGEMENT, PRODUCTS))
        for x in ents
        for t in times
    )


def test_copies_on_other_days_count_once_in_batch_and_point_in_time(paths: Paths) -> None:
    sc = paths.scenario
    # Times whose partitions hold one copy of a cross-day event but not the other.
    times = sorted({t for win, lose in sc.cross_day.values() for t in (win + 10 * MINUTE, lose + 10 * MINUTE)})
    times += [sc.c - 19 * DAY, sc.c - 17 * DAY, sc.c - HOUR, sc.c]
    for data_dir in (paths.ingest_dir, paths.stream_dir):
        assert pit_mismatches(data_dir, times, sc.winners, ALL) == []
        assert pit_mismatches(data_dir, times, sc.winners, HOURLY) == []  # reads one or two partitions only
    for url in (paths.ingest_redis, paths.stream_redis):
        with TestClient(create_app(ApiSettings(redis_url=url))) as client:
            for view, ents in ((USER_ACTIVITY, USERS), (PRODUCT_ENGAGEMENT, PRODUCTS)):
                checked, bad = api_mismatches(client, view, ents, sc.winners)
                assert checked and not bad, f"{url}: {len(bad)} of {checked} values differ: {bad[:6]}"
    # The Spark engine reads the same partitions the same way.
    df = pd.DataFrame(
        {
            "user_id": [u for u in USERS for _ in times],
            "event_timestamp": pd.to_datetime([t for _ in USERS for t in times], unit="us", utc=True),
        }
    )
    uri = str(paths.stream_dir / "raw_events")
    spark = get_historical_features(
        df, ["user_activity"], plan=compiled("ecommerce"), raw_uri=uri, engine="spark", buckets=2
    )
    local = get_historical_features(df, ["user_activity"], plan=compiled("ecommerce"), raw_uri=uri)
    for name in USER_ACTIVITY.feature_names:
        assert all(close(a, b) or (a != a and b != b) for a, b in zip(spark[name], local[name], strict=True))
    # Not vacuous: counting the losing copies changes values at those times.
    losers = [e for e in sc.arrivals if e.event_id in sc.cross_day and e.event_time == sc.cross_day[e.event_id][1]]
    assert len(losers) == len(sc.cross_day)
    assert any(
        bruteforce.values(USER_ACTIVITY, sc.winners + losers, u, t)
        != bruteforce.values(USER_ACTIVITY, sc.winners, u, t)
        for u in USERS
        for t in times
    )
