"""Issue 12, Build 5: ``fstore ingest`` and the stream's raw sink writing the same events at the same time.

One message file (20,000 generated events over the last 60 hours — three UTC days — with 3% duplicates,
some with another payload, and copies re-stamped on another day) goes two ways into **one** data dir: a
real ``fstore ingest`` process, and Kafka, read by the stream worker (raw sink and speed tiles), published in
chunks while the ingest runs. Both writers then hold copies of the same event_ids: docs/design.md §2 lets
them store copies (each with its ingestion order) as long as every reader keeps one — the first — and the
writers mark copies on other days superseded (docs/adr/0010-duplicates-across-days.md).

Afterwards every event_id counts exactly once, with the first copy in arrival order as the winner, in
``raw_events`` as read by the readers (superseded pairs dropped, then the first ingested copy; and the
point-in-time engine's own read, day by day and over the whole range), in the batch tiles of ``fstore
batch``, in the point-in-time engine's values and in the speed tiles, each compared with the brute force
over the first copies.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import redis

from fstore.core.dedupe import drop_superseded, first_ingested_arrow
from fstore.core.timeutil import DAY, HOUR, MINUTE, floor_to, to_date
from fstore.delta import raw_log
from fstore.devsvc.services import Broker, RedisServer
from fstore.offline.local import get_historical_features, read_events
from jobs.batch.plan import plan_run
from tests.support import bruteforce
from tests.support.delta import batch_tile_rows
from tests.support.legacy.events_example import Event
from tests.support.legacy.features import VIEWS
from tests.support.paths import FSTORE, close, message, run_batch
from tests.support.repos import compiled
from tests.support.stream import Factory, Traffic, assert_tiles_exact, make_traffic, publish

pytestmark = pytest.mark.faults

EVENTS = 20_000
CROSS_DAY = 300  # first copies re-sent at the end, stamped a day earlier or later
CHUNK = 1_000  # messages per publish while the ingest runs


def with_cross_day_copies(traffic: Traffic, now: int) -> Traffic:
    """``traffic`` plus copies of some first copies on another UTC day, sent after everything else (so they
    lose): the stream stores them and marks them superseded, the ingest skips them."""
    lo = now - 60 * HOUR
    extra_keys: list[str | None] = []
    extra_values: list[bytes] = []
    for k, ev in enumerate(traffic.first_copies[7 :: len(traffic.first_copies) // CROSS_DAY][:CROSS_DAY]):
        later, earlier = ev.event_time + DAY, ev.event_time - DAY
        t = later if (k % 2 or earlier < lo) and later < now - MINUTE else earlier
        key, value = message(ev._replace(event_time=t, quantity=ev.quantity % 5 + 1))
        extra_keys.append(key)
        extra_values.append(value)
    return Traffic(
        traffic.keys + extra_keys,
        traffic.values + extra_values,
        traffic.malformed,
        traffic.valid_ids,
        traffic.first_copies,
    )


def reader_winners(uri: str) -> pa.Table:
    """The copy each reader of ``raw_events`` keeps: superseded pairs dropped, then the first ingested."""
    raw = raw_log.read_table(uri)
    sup = raw_log.read_table(raw_log.superseded_uri(uri), ["event_id", "event_date"])
    return first_ingested_arrow(drop_superseded(raw, sup))


def rows(table: pa.Table) -> Counter[tuple[object, ...]]:
    """Event rows as comparable tuples (event_time in µs), counted."""
    cols = ["event_type", "user_id", "product_id", "event_time", "price", "quantity"]
    t = table.select(cols).cast(
        pa.schema([pa.field(c, pa.int64() if c == "event_time" else table.schema.field(c).type) for c in cols])
    )
    return Counter(
        (r["event_type"], r["user_id"], r["product_id"], r["event_time"], r["price"], r["quantity"])
        for r in t.to_pylist()
    )


def event_rows(events: list[Event]) -> Counter[tuple[object, ...]]:
    return Counter((e.event_type, e.user_id, e.product_id, e.event_time, e.price, e.quantity) for e in events)


def test_ingest_and_stream_at_once_count_each_event_once_everywhere(
    tmp_path: Path,
    kafka_broker: Broker,
    redis_server: RedisServer,
    redis_client: redis.Redis,
    worker_factory: Factory,
) -> None:
    now = time.time_ns() // 1000
    c = floor_to(now, DAY)  # the batch run of yesterday cuts over here, whatever the clock says later
    traffic = with_cross_day_copies(make_traffic(EVENTS, seed=12, users=400, products=60, hours=60), now)
    first = traffic.first_copies
    days = sorted({floor_to(e.event_time, DAY) for e in first})
    assert len(days) >= 3, days
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(v + b"\n" for v in traffic.values))
    data = tmp_path / "data"

    worker = worker_factory(kafka_broker, FSTORE_STREAM_RAW_MAX_AGE_S="0.3")
    worker.start()
    publish(kafka_broker, worker.topic, traffic, 0, CHUNK)
    worker.wait_done(CHUNK, timeout=60)  # the stream has stored some: the ingest starts behind it
    env = {
        **os.environ,
        "FSTORE_DATA_DIR": str(data),
        "FSTORE_REDIS_URL": redis_server.url,
    }  # its claims and speed tiles: the worker's Redis
    ingest = subprocess.Popen(
        [FSTORE, "ingest", str(path), "--batch-size", "400", "--json"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    for lo in range(CHUNK, len(traffic.values), CHUNK):  # the stream keeps writing while the ingest runs
        publish(kafka_broker, worker.topic, traffic, lo, lo + CHUNK)
        time.sleep(0.02)
    out, err = ingest.communicate(timeout=120)
    assert ingest.returncode == 0, (out.decode()[-2000:], err.decode()[-3000:])
    worker.wait_done(len(traffic.values), timeout=60)
    worker.stop()
    assert worker.proc is not None and worker.proc.returncode == 0, worker.log_tail()
    report = json.loads(out)
    # Both wrote the same events at the same time: the ingest found some stored by the stream and stored
    # others itself, which the stream then stored again (copies, as the contract allows).
    assert report["written"] > 0 and report["already_present"] > 0, report

    uri = str(data / "raw_events")
    stored = raw_log.read_table(uri, ["event_id"]).column("event_id")
    assert len(stored) > len(pc.unique(stored)), "no event stored by both writers: the test proves nothing"

    # raw_events as its readers see it: one copy per event_id, the first in arrival order.
    won = reader_winners(uri)
    assert won.num_rows == len(traffic.valid_ids)
    assert set(won.column("event_id").to_pylist()) == traffic.valid_ids
    want = event_rows(first)
    assert rows(won) == want
    # The point-in-time engine's own read picks the same copies, over all days and day by day (a day alone
    # sees the cross-day copies' losers and must drop them by their superseded marks).
    assert rows(read_events(uri, (days[0], c + DAY), plan=compiled("ecommerce"))) == want
    for d in days:
        assert rows(read_events(uri, (d, d + DAY), plan=compiled("ecommerce"))) == event_rows(
            [e for e in first if d <= e.event_time < d + DAY]
        )

    # Speed tiles: each event_id once (the worker's markers), the first copy's values.
    assert_tiles_exact(redis_client, traffic)

    # Batch tiles of `fstore batch` for yesterday (cutover C): the brute force over the first copies.
    run_date = to_date(c) - timedelta(days=1)
    assert plan_run(run_date).cutover == c
    run_batch(
        run_date.isoformat(),
        data,
        redis_server.url,
        FSTORE_DQ_DUPLICATE_RATE_FAIL="1",  # both writers stored most events: copies by design
    )
    for name, view in VIEWS.items():
        got = batch_tile_rows(str(data), name, view.entity.join_key, run_date)
        brute = bruteforce.batch_tiles(view, first, c)
        assert set(got) == set(brute), name
        bad = [k for k, v in brute.items() if not all(close(a, b) for a, b in zip(got[k], v, strict=True))]
        assert not bad, f"{name}: {len(bad)} tiles differ, e.g. {[(k, got[k], brute[k]) for k in bad[:3]]}"

    # Point-in-time values at times on every day, for a sample of users and products.
    users = sorted({e.user_id for e in first})[:30]
    products = sorted({e.product_id for e in first if e.product_id is not None})[:30]
    times = [d + 7 * HOUR + 13 * MINUTE for d in days[:-1]] + [c, now - MINUTE]
    df = pd.DataFrame(
        {
            "user_id": [u for u in users for _ in times],
            "product_id": [p for p in products for _ in times],
            "event_timestamp": pd.to_datetime([t for _ in users for t in times], unit="us", utc=True),
        }
    )
    refs = [f"{v.name}:{n}" for v in VIEWS.values() for n in v.feature_names]
    out_df = get_historical_features(df, refs, plan=compiled("ecommerce"), raw_uri=uri, full_feature_names=True)
    by_entity: dict[str, list[Event]] = {}
    for e in first:
        by_entity.setdefault(e.user_id, []).append(e)
        if e.product_id is not None:
            by_entity.setdefault(e.product_id, []).append(e)
    mismatches = []
    for row in out_df.to_dict(orient="records"):
        t = int(row["event_timestamp"].value // 1000)
        for ref in refs:
            view_name, name = ref.split(":")
            view = VIEWS[view_name]
            entity = row[view.entity.join_key]
            want_v = bruteforce.value(view, name, by_entity[entity], entity, t)
            got_v = row[f"{view_name}__{name}"]
            got_v = None if isinstance(got_v, float) and got_v != got_v else got_v
            if not close(got_v, want_v):
                mismatches.append((entity, ref, t, got_v, want_v))
    assert not mismatches, f"{len(mismatches)} point-in-time values differ: {mismatches[:5]}"
