"""The batch job runs from any compiled plan: the ``rides`` repository (its own entities, fields, id and
time fields, every function, filters, a product measure, ratios) through the real job — local Spark,
Delta on disk, Redis — gives the reference tiles, the brute-force snapshots, and a batch view whose
values equal the brute force of the contract (docs/design.md §3) over the events before the cutover."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import redis

from fstore.core.plan import Plan
from fstore.core.tile_state import Value
from fstore.core.timeutil import DAY, HOUR, MINUTE, SECOND, day_start, to_micros
from fstore.core.view_tiles import TileKey, ViewTiler, evaluate
from fstore.core.view_tiles_frame import member
from fstore.delta import raw_log
from fstore.redis.layout import BatchPointer, batch_key, parse_states
from jobs.batch.plan import plan_run
from jobs.batch.rebuild_features import build_spark, rebuild
from jobs.batch.settings import BatchSettings
from tests.support import plan_bruteforce
from tests.support.plan_rows import Copy, raw_events_table
from tests.support.repos import compiled
from tests.support.rides_traffic import rides

pytestmark = pytest.mark.integration

RUN = date(2026, 3, 31)
C = day_start(RUN + timedelta(days=1))
START = C - 33 * DAY


def same(a: Value, b: Value) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-9)


@pytest.fixture(scope="module")
def plan() -> Plan:
    return compiled("rides")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, plan: Plan) -> dict[str, Any]:
    """34 days of rides traffic (some after C) stored at least once: duplicate copies (later ones with a
    changed payload), a same-instant tie won by the smaller hash, late ingestions, and two stored rows
    that break the contract (the job re-checks and drops them)."""
    root = tmp_path_factory.mktemp("rides") / "data"
    rng = random.Random(7)
    rows = rides(4_000, START, 34 * DAY, seed=13, drivers=12, zones=5, riders=40)
    copies: list[Copy] = []
    for r in rows:
        lag = rng.randrange(5 * HOUR) if rng.random() < 0.03 else rng.randrange(2 * SECOND)
        copies.append((r["ts"] + lag, f"{rng.getrandbits(64):016x}", r))
        if rng.random() < 0.05:  # a redelivery, possibly of a changed payload: it must lose
            changed = {**r, "tip": 999.0} if r["kind"] == "tipped" else r
            copies.append((r["ts"] + lag + rng.randrange(1, 60 * SECOND), f"{rng.getrandbits(64):016x}", changed))
    tie = rows[500]
    copies.append((copies[500][0], "0" * 16, {**tie, "kind": "cancelled", "driver_id": "d0"}))
    recent = next(r for r in rows if r["ts"] >= C - 2 * HOUR)  # inside every window at C
    bad = [
        {**recent, "uid": "bad-kind", "kind": "teleported"},
        {**recent, "uid": "bad-driver", "kind": "completed", "driver_id": "no spaces!", "distance_km": 1.0,
         "rate_per_km": 1.0, "surge": 1.0},
    ]  # fmt: skip
    copies += [(b["ts"], "f" * 16, b) for b in bad]
    raw_log.append_raw(str(root / "raw_events"), raw_events_table(plan.schema, copies))
    best: dict[str, Copy] = {}
    for c in copies:
        if c[2]["uid"] not in best or (c[0], c[1]) < (best[c[2]["uid"]][0], best[c[2]["uid"]][1]):
            best[c[2]["uid"]] = c
    winners = [c[2] for c in best.values() if c[2]["uid"] not in ("bad-kind", "bad-driver")]
    assert best[tie["uid"]][2]["kind"] == "cancelled"
    return {"root": str(root), "events": [e for e in winners if e["ts"] < C]}


@pytest.fixture(scope="module")
def settings(data: dict[str, Any], redis_server: Any) -> BatchSettings:
    url = redis_server.url.rsplit("/", 1)[0] + "/12"  # the batch pointer is a global key: a database of its own
    redis.Redis.from_url(url).flushdb()
    return BatchSettings(
        data_dir=data["root"],
        redis_url=url,
        spark_master="local[2]",
        spark_driver_memory="1g",
        spark_shuffle_partitions=3,
        spark_ui=False,
        delta_engine="delta-rs",
    )


@pytest.fixture(scope="module")
def run(settings: BatchSettings, plan: Plan) -> Iterator[Any]:
    """The job for RUN (committing through delta-rs: test_batch.py covers delta-spark and re-runs)."""
    spark = build_spark(settings)
    try:
        yield rebuild(spark, settings, RUN, features=plan, log=lambda _m: None)
    finally:
        spark.stop()


def partition(root: str, table: str) -> pa.Table:
    return raw_log.read_table(f"{root}/{table}", filter=pc.field("run_date") == pa.scalar(RUN, pa.date32()))


def micros(v: datetime) -> int:
    return to_micros(v.astimezone(UTC))


def test_tiles_equal_the_reference_tiler(run: Any, data: dict[str, Any], plan: Plan) -> None:
    assert run.published
    horizons = plan_run(RUN, plan).horizons
    compared = 0
    for view in plan.views:
        key = view.entity.join_key
        want = {
            k: t
            for k, t in ViewTiler(view, plan.schema.timestamp_field).build(data["events"]).items()
            if k.start >= horizons[view.name][k.size]
        }
        got = partition(data["root"], f"tiles_{view.name}").to_pylist()
        assert sum(len(t) for t in want.values()) == len(got)
        for r in got:
            acc = want[TileKey(r[key], r["size"], micros(r["tile_start"]))][r["measure"]]
            assert (r["count"], r["min"], r["max"]) == (acc.count, acc.minimum, acc.maximum), r
            assert same(r["sum"], acc.total) and same(r["m2"], acc.m2), (r, acc)
            want_members = None if acc.distinct is None else sorted(member(x) for x in acc.distinct)
            assert r["distinct"] == want_members
            compared += 1
    assert compared > 1_000


def test_snapshots_equal_the_brute_force(run: Any, data: dict[str, Any], plan: Plan) -> None:
    checked = 0
    for view in plan.views:
        key = view.entity.join_key
        rows = {r[key]: r for r in partition(data["root"], f"feature_snapshots/{view.name}").to_pylist()}
        assert len(rows) >= 4
        for entity, row in rows.items():
            assert micros(row["event_timestamp"]) == C
            for name, v in plan_bruteforce.values(plan, view.name, data["events"], entity, C).items():
                assert same(row[name], v), (view.name, entity, name, row[name], v)
                checked += 1
    assert checked > 100


def test_batch_view_values_equal_the_brute_force(
    run: Any, data: dict[str, Any], plan: Plan, settings: BatchSettings
) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    pointer = BatchPointer.loads(client.get("fs:batch:current"))
    assert pointer == BatchPointer(run.version, C)
    checked = 0
    for view in plan.views:
        key = view.entity.join_key
        for entity in sorted({e[key] for e in data["events"] if e.get(key) is not None}):
            states = parse_states(client.hgetall(batch_key(view.name, entity, pointer.version)))
            for t in (C, C + 37 * MINUTE, C + 23 * HOUR):
                got = evaluate(view, lambda size, start, s=states: s.get((size, start)), t)  # type: ignore[misc]
                want = plan_bruteforce.values(plan, view.name, data["events"], entity, t)
                for name, v in want.items():
                    assert same(got[name], v), (view.name, entity, t, name, got[name], v)
                    checked += 1
    assert checked > 500
    client.close()
