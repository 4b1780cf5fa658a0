"""The nightly batch job end to end: local Spark, real Delta files, real Redis, checked by brute force."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import redis
import redis.asyncio as aioredis
from click.testing import CliRunner
from deltalake import DeltaTable
from fastapi.testclient import TestClient

from examples.synth.generator import GeneratorConfig, generate
from fstore.commands.batch import batch
from fstore.commands.repair import repair as repair_cmd
from fstore.core.aggregates import isclose
from fstore.core.events import Rejection, payload_hash
from fstore.core.timeutil import DAY, HOUR, MINUTE, SECOND, day_start
from fstore.delta import raw_log, raw_winners
from fstore.plan_source import current_plan, use_plan
from fstore.redis.layout import POINTER_KEY, BatchPointer, parse_tiles
from jobs.batch import batch_view as batch_view_mod
from jobs.batch.file_systems import missing_file_system
from jobs.batch.plan import plan_run
from jobs.batch.rebuild_features import DQFailed, InjectedFailure, build_spark, rebuild
from jobs.batch.settings import BatchSettings
from jobs.stream.settings import StreamSettings, get_stream_settings
from jobs.stream.sinks import TileWriter
from services.online_api.app import create_app
from services.online_api.settings import ApiSettings
from tests.support import bruteforce, raw_rows
from tests.support.delta import batch_tile_rows, content_hash, spark_read
from tests.support.legacy.events_example import Event, parse
from tests.support.legacy.features import VIEWS
from tests.support.legacy.tiles import evaluate
from tests.support.paths import FSTORE
from tests.support.repos import compiled
from tests.support.tiles import lookup_in_dict

pytestmark = pytest.mark.integration

D1, D2 = date(2026, 11, 20), date(2026, 11, 21)
START = day_start(D1 - timedelta(days=8))
END = day_start(D2 + timedelta(days=1))
Copies = list[tuple[int, str, Event]]  # (ingested_at, payload_hash, event)


def write_raw(uri: str, copies: Copies) -> None:
    raw_log.append_raw(
        uri, raw_rows.events_table([c[2] for c in copies], [c[1] for c in copies], [c[0] for c in copies])
    )


@pytest.fixture(scope="module", autouse=True)
def example_plan() -> Iterator[None]:
    """The job runs from the example repository's plan (installed in-process, as ``fstore batch`` does)."""
    use_plan(compiled("ecommerce"))
    yield
    use_plan(None)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """10 days of generated traffic with duplicates (some with changed payloads), late and invalid events.

    Every copy goes to raw_events (an at-least-once sink), so the job itself must de-duplicate.
    """
    root = tmp_path_factory.mktemp("batch") / "data"
    cfg = GeneratorConfig(
        start=START,
        end=END,
        events=40_000,
        users=300,
        products=80,
        duplicate_rate=0.04,
        late_rate=0.03,
        malformed_rate=0.01,
        batch_size=20_000,
    )
    copies: Copies = []
    dead: list[tuple[bytes, str, int]] = []
    for b in generate(cfg, seed=11):
        for raw, arrival in zip(b.values, b.arrival.tolist(), strict=True):
            ev = parse(raw, END)
            if isinstance(ev, Rejection):
                dead.append((raw, ev.reason, arrival))
            else:
                copies.append((arrival // 1000 * 1000, payload_hash(raw), ev))  # ms clock: ties happen
    # Same event_id, different payload, ingested at the same instant: the smaller hash must win.
    twin = copies[100][2]
    tie = twin._replace(quantity=twin.quantity + 5, event_type="purchase", price=9.5)
    copies.append((copies[100][0], "0" * 32, tie))
    assert len({c[2].event_id for c in copies}) < len(copies)
    write_raw(str(root / "raw_events"), copies)
    by_day: dict[int, list[tuple[bytes, str]]] = defaultdict(list)
    for raw, reason, arrival in dead:
        by_day[arrival // DAY * DAY].append((raw, reason))
    for day, msgs in sorted(by_day.items()):
        raw_log.append_dead_letters(
            str(root / "dead_letters"),
            raw_log.dead_letters_table([m[0] for m in msgs], [m[1] for m in msgs], "test", day + 1),
        )
    return {"root": str(root), "copies": copies}


@pytest.fixture(scope="module")
def redis_url(request: pytest.FixtureRequest) -> str:
    """Database 13 of the session Redis (the batch pointer is a global key)."""
    server = request.getfixturevalue("redis_server")
    url = server.url.rsplit("/", 1)[0] + "/13"
    redis.Redis.from_url(url).flushdb()
    return str(url)


@pytest.fixture(scope="module")
def settings(data: dict[str, Any], redis_url: str) -> BatchSettings:
    return BatchSettings(
        data_dir=data["root"],
        redis_url=redis_url,
        spark_master="local[2]",
        spark_driver_memory="2g",
        spark_shuffle_partitions=4,
        spark_ui=False,
        dq_late_rate_fail=0.9,
        dq_duplicate_rate_fail=0.5,
    )


@pytest.fixture(scope="module")
def spark(settings: BatchSettings) -> Iterator[Any]:
    session = build_spark(settings)
    # a local driver listens on loopback only, whatever the host name resolves to (probe-docs)
    assert session.conf.get("spark.driver.bindAddress") == session.conf.get("spark.driver.host") == "127.0.0.1"
    yield session
    session.stop()


@pytest.fixture
def rdb(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def delta_partition(uri: str, run_date: date) -> pa.Table:
    return raw_log.read_table(uri, filter=pc.field("run_date") == pa.scalar(run_date, pa.date32()))


def batch_view(client: redis.Redis, version: str) -> dict[str, dict[Any, Any]]:
    return {
        k.decode().rsplit(":b:", 1)[0]: client.hgetall(k)
        for k in client.scan_iter(match=f"fs:*:b:{version}", count=1000)
    }


def winners(copies: Copies) -> list[Event]:
    return bruteforce.dedupe(copies)


def check_against_brute_force(root: str, copies: Copies, run_date: date) -> None:
    cutover = plan_run(run_date).cutover
    events = winners(copies)
    for name, view in VIEWS.items():
        key = view.entity.join_key
        got_rows = batch_tile_rows(root, name, key, run_date)
        assert len(got_rows) > 100
        want = bruteforce.batch_tiles(view, events, cutover)
        assert set(got_rows) == set(want)
        for k, (c, s, lo, hi) in want.items():
            gc, gs, glo, ghi = got_rows[k]
            assert gc == c and isclose(gs, s) and glo == lo and ghi == hi, k
        snap = delta_partition(f"{root}/feature_snapshots/{name}", run_date)
        assert set(view.feature_names) | {"event_timestamp", key, "run_date"} == set(snap.schema.names)
        per_entity: dict[str, list[Event]] = defaultdict(list)
        for e in events:
            if getattr(e, key) is not None:
                per_entity[getattr(e, key)].append(e)
        rows = {r[key]: r for r in snap.to_pylist()}
        expected_entities = {
            ent
            for ent, evs in per_entity.items()
            if any(
                e.event_type == f.measure.event_type
                for f in view.windowed
                for e in bruteforce.window_events(evs, key, ent, cutover, f.window)
            )
        }
        assert set(rows) == expected_entities and len(rows) > 10
        for ent in expected_entities:
            assert int(rows[ent]["event_timestamp"].timestamp() * 1e6) == cutover
            for n, v in bruteforce.values(view, per_entity[ent], ent, cutover).items():
                assert isclose(rows[ent][n], v), (name, ent, n, rows[ent][n], v)


def check_redis_view(client: redis.Redis, copies: Copies, pointer: BatchPointer) -> None:
    """Batch tiles alone give the brute-force value of every pre-cutover event at times after C."""
    events = [e for e in winners(copies) if e.event_time < pointer.cutover]
    checked = 0
    for name, view in VIEWS.items():
        key = view.entity.join_key
        ents = sorted({getattr(e, key) for e in events if getattr(e, key) is not None})[:25]
        for ent in ents:
            tiles = parse_tiles(client.hgetall(f"fs:{{{name}|{ent}}}:b:{pointer.version}"))
            evs = [e for e in events if getattr(e, key) == ent]
            for t in (pointer.cutover, pointer.cutover + 37 * MINUTE, pointer.cutover + 23 * 60 * MINUTE):
                got = evaluate(view, lookup_in_dict(tiles), t)
                want = bruteforce.values(view, evs, ent, t)
                assert all(isclose(got[n], want[n]) for n in want), (name, ent, t, got, want)
                checked += 1
    assert checked > 100


def test_rebuild_matches_brute_force_and_is_idempotent(
    spark: Any, settings: BatchSettings, data: dict[str, Any], rdb: redis.Redis
) -> None:
    root, copies = data["root"], data["copies"]
    first = rebuild(spark, settings, D1)
    assert first.metrics["delta_writer"] == "delta-spark", first.metrics["delta_writer_reason"]
    assert first.published and first.metrics["counters"]["rows_read"] > first.metrics["counters"]["events_deduplicated"]
    check_against_brute_force(root, copies, D1)
    pointer = BatchPointer.loads(rdb.get(POINTER_KEY))
    assert pointer == BatchPointer(first.version, plan_run(D1).cutover)
    check_redis_view(rdb, copies, pointer)
    dq = delta_partition(f"{root}/dq_reports", D1)
    assert "duplicate_rate" in dq.column("check").to_pylist() and "fail" not in dq.column("status").to_pylist()
    assert Path(settings.metrics_path() or "").read_text().count("fstore_batch_stage_seconds") > 3

    tables = [f"{root}/tiles_{n}" for n in VIEWS] + [f"{root}/feature_snapshots/{n}" for n in VIEWS]
    hashes = [content_hash(delta_partition(t, D1)) for t in tables]
    view1 = batch_view(rdb, first.version)
    # The nightly steady state: the closed days are read from their winners files (written once, as
    # after a nightly run), the night before (D0) was built from them, and D1's run takes the tiles of
    # every closed day from D0's tile tables (same files, same plan) and computes only D1's, from its
    # copies alone: the same tables and the same view as de-duplicating and tiling everything.
    compacted = raw_winners.compact(f"{root}/raw_events", compiled("ecommerce").schema, before=D1)
    assert len(compacted.written) == 8 and not compacted.conflicted
    d0 = D1 - timedelta(days=1)
    night_before = rebuild(spark, settings, d0)  # tables only: a later cutover serves
    assert night_before.metrics["days_from_winners"] == [str(d) for d in plan_run(d0).dates]
    second = rebuild(spark, settings, D1)
    assert second.version != first.version and second.published
    closed = [str(d) for d in plan_run(D1).dates if d < D1]
    assert second.metrics["days_from_winners"] == closed
    assert second.metrics["days_reused"] == {n: closed for n in VIEWS}
    assert second.metrics["tiles_reused_from"] == {n: str(d0) for n in VIEWS}
    assert second.metrics["days_read"] == [str(D1)]
    assert first.metrics["days_from_winners"] == [] and first.metrics["days_reused"] == {n: [] for n in VIEWS}
    assert 0 < second.metrics["counters"]["rows_read"] < first.metrics["counters"]["rows_read"] / 5
    assert [content_hash(delta_partition(t, D1)) for t in tables] == hashes
    assert batch_view(rdb, second.version) == view1 and len(view1) > 300
    old_key = next(iter(rdb.scan_iter(match=f"fs:*:b:{first.version}")))
    assert 0 < rdb.ttl(old_key) <= settings.batch_view_grace_s  # old view lingers for readers, then expires


def engines_of_last_commits(uri: str, n: int) -> list[str]:
    """Which library made each of the last ``n`` commits of a table (from commitInfo), newest first."""
    out = []
    for c in DeltaTable(uri).history(n):
        info = str(c.get("engineInfo") or c.get("clientVersion") or "")
        out.append("delta-spark" if "Delta-Lake" in info else "delta-rs" if "delta-rs" in info else info)
    return out


def test_delta_rs_fallback_commits_the_same_tables(
    spark: Any, settings: BatchSettings, data: dict[str, Any], rdb: redis.Redis
) -> None:
    """The same night committed by delta-rs on top of delta-spark's table: identical contents, whichever
    library reads them, and back again."""
    root = data["root"]
    tables = [f"{root}/tiles_{n}" for n in VIEWS] + [f"{root}/feature_snapshots/{n}" for n in VIEWS]
    by_spark = [content_hash(delta_partition(t, D1)) for t in tables]
    assert [content_hash(spark_read(spark, t, f"run_date = '{D1}'")) for t in tables] == by_spark
    assert all(engines_of_last_commits(t, 1) == ["delta-spark"] for t in tables)

    # Tiled from scratch (no reuse): equal to what the steady run above took from the night before.
    fallback = rebuild(spark, settings.model_copy(update={"delta_engine": "delta-rs", "reuse_tiles": False}), D1)
    assert fallback.metrics["delta_writer"] == "delta-rs" and fallback.published
    assert fallback.metrics["days_reused"] == {n: [] for n in VIEWS}
    assert all(engines_of_last_commits(t, 2) == ["delta-rs", "delta-spark"] for t in tables)
    assert [content_hash(delta_partition(t, D1)) for t in tables] == by_spark  # delta-rs reads delta-rs
    assert [content_hash(spark_read(spark, t, f"run_date = '{D1}'")) for t in tables] == by_spark  # and Spark

    # delta-spark on top of delta-rs's commit, with one view's definition changed (its description only,
    # so its values are the same): that view's tiles are computed again, the other's taken from the
    # delta-rs run's files.
    plan = compiled("ecommerce")
    changed, kept = plan.views
    edited = dataclasses.replace(plan, views=(dataclasses.replace(changed, description="edited"), kept))
    again = rebuild(spark, settings, D1, features=edited)
    assert again.metrics["delta_writer"] == "delta-spark"
    assert again.metrics["days_reused"] == {changed.name: [], kept.name: [str(d) for d in plan_run(D1).dates]}
    assert [content_hash(delta_partition(t, D1)) for t in tables] == by_spark
    check_against_brute_force(root, data["copies"], D1)


def test_failed_run_leaves_tables_whole_and_old_view_serving(
    spark: Any, settings: BatchSettings, data: dict[str, Any], rdb: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    root, copies = data["root"], data["copies"]
    before = rdb.get(POINTER_KEY)
    assert before is not None
    tables = {n: f"{root}/tiles_{n}" for n in VIEWS} | {f"snap:{n}": f"{root}/feature_snapshots/{n}" for n in VIEWS}
    old = {k: content_hash(delta_partition(t, D1)) for k, t in tables.items()}
    # Late events for D1 arrive (and one extra copy of an existing event, ingested later: must not count).
    c1 = plan_run(D1).cutover
    late = [
        (
            END + i,
            f"{i:032x}",
            Event(
                f"late{i}",
                et,
                f"u{i % 5}",
                f"p{i % 7}",
                c1 - (i + 1) * 7 * MINUTE,
                12.5 if et == "purchase" else None,
                2,
                None,
            ),
        )
        for i, et in enumerate(["click", "impression", "purchase", "add_to_cart", "page_view"] * 8)
    ]
    extra = [(END + 999, "f" * 32, copies[5][2]._replace(quantity=9))]
    # ... and a late event into a closed day, after whose compaction the day has a new winners file: its
    # tiles must be computed again, not taken from the earlier runs.
    closed = D1 - timedelta(days=3)
    late_closed = [
        (
            END + 1000 + i,
            f"{i + 100:032x}",
            Event(f"lateclosed{i}", et, "u1", "p1", day_start(closed) + (5 + i) * HOUR, 4.0, 3, None),
        )
        for i, et in enumerate(["click", "impression", "purchase", "add_to_cart"])
    ]
    write_raw(f"{root}/raw_events", late + extra + late_closed)
    copies.extend(late + extra + late_closed)
    assert closed in raw_winners.compact(f"{root}/raw_events", compiled("ecommerce").schema, before=D1).written

    first, second = (v.name for v in compiled("ecommerce").views)  # the job's order: the plan's
    failing = settings.model_copy(update={"fail_after": f"staged:tiles_{second}"})
    capsys.readouterr()
    with pytest.raises(InjectedFailure):
        rebuild(spark, failing, D1)
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # the run's metrics line
    # Every closed day but the one with the late event is taken from the earlier runs' tiles.
    assert metrics["days_reused"] == {n: [str(d) for d in plan_run(D1).dates if d not in (closed, D1)] for n in VIEWS}
    now = {k: content_hash(delta_partition(t, D1)) for k, t in tables.items()}
    assert now[first] != old[first] and now[f"snap:{first}"] != old[f"snap:{first}"]
    assert now[second] == old[second]  # staged files never committed
    assert now[f"snap:{second}"] == old[f"snap:{second}"]
    assert rdb.get(POINTER_KEY) == before

    def versions() -> set[str]:
        return {k.decode().rsplit(":b:", 1)[1] for k in rdb.scan_iter(match="fs:*:b:*")}

    loaded = versions()  # the serving one, and earlier ones in their grace period
    failing = settings.model_copy(update={"fail_after": f"load:{first}"})
    with pytest.raises(InjectedFailure):
        rebuild(spark, failing, D1)
    assert rdb.get(POINTER_KEY) == before
    ptr = BatchPointer.loads(before)
    assert ptr is not None and len(batch_view(rdb, ptr.version)) > 300
    assert versions() <= loaded  # the half-loaded version was dropped

    ok = rebuild(spark, settings, D1)
    assert ok.published
    # The failed runs committed the new tiles (the closed day and D1 computed again); this run takes
    # every day from the last of them. All exact: brute force over every copy, the late ones included.
    assert ok.metrics["days_reused"] == {n: [str(d) for d in plan_run(D1).dates] for n in VIEWS}
    check_against_brute_force(root, copies, D1)


def test_next_run_removes_the_keys_of_a_run_killed_while_loading(
    spark: Any, settings: BatchSettings, data: dict[str, Any], rdb: redis.Redis
) -> None:
    """A run killed -9 during the Redis load leaves its version registered as loading with a lease that
    lapses; the next run deletes those keys. A version whose lease is alive (a concurrent run) stays."""
    dead, alive = "20261120-killed", "20261120-concurrent"
    for version in (dead, alive):
        for i in range(510):
            rdb.hset(f"fs:{{user_activity|u{i}}}:b:{version}", "3600:0:click:p", "1|1|1|1")
            rdb.expire(f"fs:{{user_activity|u{i}}}:b:{version}", 3 * 86_400)
        rdb.sadd(batch_view_mod.LOADING_KEY, version)
    rdb.set(batch_view_mod.lease_key(alive), b"1", ex=600)  # the other run is still loading
    result = rebuild(spark, settings, D1)
    assert result.published and result.metrics["abandoned_versions_removed"] == [dead]
    assert not list(rdb.scan_iter(match=f"fs:*:b:{dead}"))
    assert len(list(rdb.scan_iter(match=f"fs:*:b:{alive}"))) == 510
    assert rdb.smembers(batch_view_mod.LOADING_KEY) == {alive.encode()}  # this run's own entry is gone
    assert not rdb.exists(batch_view_mod.lease_key(result.version))  # its lease is released
    rdb.delete(batch_view_mod.lease_key(alive))
    batch_view_mod.remove_abandoned(rdb)
    assert not list(rdb.scan_iter(match=f"fs:*:b:{alive}")) and not rdb.smembers(batch_view_mod.LOADING_KEY)


def test_a_run_that_loses_its_lease_while_loading_exits_1_and_publishes_nothing(
    spark: Any, settings: BatchSettings, data: dict[str, Any], rdb: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's lease lapses in the middle of its Redis load, as Redis sees a run paused longer than the
    lease (a watcher deletes the lease key once the first keys of the version are written). The swap is
    refused: exit 1 with a message, the serving pointer unchanged, the version's keys gone."""
    for k, v in {
        "DATA_DIR": settings.data_dir,
        "REDIS_URL": settings.redis_url,
        "SPARK_SHUFFLE_PARTITIONS": "4",
    }.items():
        monkeypatch.setenv(f"FSTORE_{k}", v)
    for k in ("DQ_LATE_RATE_FAIL", "DQ_DUPLICATE_RATE_FAIL"):
        monkeypatch.setenv(f"FSTORE_{k}", "0.9")
    before = rdb.get(POINTER_KEY)
    found: list[str] = []
    stop = threading.Event()

    def lapse() -> None:
        watcher = redis.Redis.from_url(settings.redis_url)
        while not stop.is_set():  # the loading registry names the versions (a SCAN of every key is too slow)
            for raw in watcher.smembers(batch_view_mod.LOADING_KEY):
                version = raw.decode() if isinstance(raw, bytes) else raw
                if next(watcher.scan_iter(match=f"fs:*:b:{version}", count=10_000), None) is not None:
                    watcher.delete(batch_view_mod.lease_key(version))
                    found.append(version)
                    watcher.close()
                    return
            time.sleep(0.01)
        watcher.close()

    thread = threading.Thread(target=lapse, daemon=True)
    thread.start()
    try:
        res = CliRunner().invoke(batch, ["--date", D2.isoformat(), "--no-progress"])
    finally:
        stop.set()
        thread.join(5)
    assert found, "the load never started"
    assert res.exit_code == 1, res.output
    assert f"lost its loading lease on version {found[0]}" in res.output
    assert rdb.get(POINTER_KEY) == before
    assert not list(rdb.scan_iter(match=f"fs:*:b:{found[0]}"))
    assert found[0].encode() not in rdb.smembers(batch_view_mod.LOADING_KEY)


def test_dq_failure_publishes_nothing(
    spark: Any, settings: BatchSettings, data: dict[str, Any], rdb: redis.Redis
) -> None:
    root = data["root"]
    before = rdb.get(POINTER_KEY)
    tables = [f"{root}/{t}" for t in ("tiles_user_activity", "tiles_product_engagement")]

    def state() -> list[tuple[int | None, int]]:  # each tile table's version and rows of D2 (an earlier test may
        # have run D2: a run that fails its gate must leave them as they are, not necessarily empty)
        return [
            (DeltaTable(t).version() if Path(t, "_delta_log").exists() else None, delta_partition(t, D2).num_rows)
            for t in tables
        ]

    tiles_before = state()
    strict = settings.model_copy(update={"dq_duplicate_rate_fail": 0.001})
    with pytest.raises(DQFailed) as err:
        rebuild(spark, strict, D2)
    assert "duplicate_rate" in str(err.value)
    assert rdb.get(POINTER_KEY) == before
    assert state() == tiles_before
    report = delta_partition(f"{root}/dq_reports", D2).to_pylist()
    assert {r["check"]: r["status"] for r in report}["duplicate_rate"] == "fail"
    text = Path(strict.metrics_path() or "").read_text()  # what the scheduler serves to Prometheus
    assert "fstore_batch_dq_status 2.0" in text and "fstore_batch_last_run_success 0.0" in text
    assert 'fstore_batch_dq_check_status{check="duplicate_rate"} 2.0' in text


def test_cli_backfill_publishes_forward_only(
    spark: Any, settings: BatchSettings, data: dict[str, Any], rdb: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in {
        "DATA_DIR": settings.data_dir,
        "REDIS_URL": settings.redis_url,
        "DQ_LATE_RATE_FAIL": "0.9",
        "DQ_DUPLICATE_RATE_FAIL": "0.5",
        "SPARK_SHUFFLE_PARTITIONS": "4",
    }.items():
        monkeypatch.setenv(f"FSTORE_{k}", v)
    res = CliRunner().invoke(batch, ["--from", D1.isoformat(), "--to", D2.isoformat(), "--no-progress"])
    assert res.exit_code == 0, res.output
    ptr = BatchPointer.loads(rdb.get(POINTER_KEY))
    assert ptr is not None and ptr.cutover == plan_run(D2).cutover
    check_against_brute_force(data["root"], data["copies"], D2)
    res = CliRunner().invoke(batch, ["--date", D1.isoformat()])  # an older date: tables yes, pointer no
    assert res.exit_code == 0, res.output
    assert BatchPointer.loads(rdb.get(POINTER_KEY)) == ptr
    bad = CliRunner().invoke(batch, ["--date", D2.isoformat()], env={"FSTORE_DQ_DUPLICATE_RATE_FAIL": "0.001"})
    assert bad.exit_code == 2 and BatchPointer.loads(rdb.get(POINTER_KEY)) == ptr


def test_redis_loss_is_503_until_fstore_repair_restores_exact_values(
    data: dict[str, Any],
    rdb: redis.Redis,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """Redis restarted empty after a published batch run and live speed traffic: the API refuses (503,
    /health degraded) instead of serving values without the batch view; `fstore repair` reloads the batch
    view from Delta and the speed view from raw_events, and every value equals the brute force again,
    also after a second repair (exactly once)."""
    root, copies = data["root"], data["copies"]
    ptr = BatchPointer.loads(rdb.get(POINTER_KEY))
    assert ptr is not None  # published by the backfill test above
    c = ptr.cutover
    kinds = ["click", "impression", "purchase", "add_to_cart", "page_view"]
    speed = [
        (
            c + DAY + i,
            f"{i:032x}",
            Event(
                f"speed{i}",
                kinds[i % 5],
                f"u{i % 6}",
                f"p{i % 4}",
                c + i * 89 * SECOND,  # all before as_of
                7.25 if i % 5 == 2 else None,
                1 + i % 3,
                None,
            ),
        )
        for i in range(120)
    ]
    write_raw(f"{root}/raw_events", speed)  # the worker's raw sink ...
    stream = StreamSettings(redis_url=redis_url, data_dir=root)
    applied = asyncio.run(apply_as_the_worker(stream, [e for _, _, e in speed]))  # ... and its tile writer
    assert applied == 120
    events = bruteforce.dedupe(copies + speed)
    as_of = c + 3 * HOUR + 17 * SECOND
    api = ApiSettings(redis_url=redis_url, data_dir=root)
    for k, v in {"DATA_DIR": root, "REDIS_URL": redis_url, "SPARK_MASTER": "local[2]"}.items():
        monkeypatch.setenv(f"FSTORE_{k}", v)
    # `fstore repair` reads the worker's settings through get_stream_settings(), memoised per process: a
    # module that imported jobs.stream.app earlier (tests/unit/jobs/stream/test_app.py at collection, in a
    # whole-suite run) cached them with another environment.
    get_stream_settings.cache_clear()
    request.addfinalizer(get_stream_settings.cache_clear)  # nor leave ours to later tests

    def assert_exact(client: TestClient) -> None:
        for u in (f"u{i}" for i in range(8)):
            r = client.get("/features", params={"user_id": u, "features": "user_activity"})
            assert r.status_code == 200, r.text
            got, want = r.json()["rows"][0]["values"], bruteforce.values(VIEWS["user_activity"], events, u, as_of)
            assert all(isclose(got[f"user_activity:{k}"], v) for k, v in want.items()), (u, got, want)

    with TestClient(create_app(api, clock=lambda: as_of)) as client:
        assert_exact(client)
        rdb.flushdb()  # Redis restarted without persistence
        r = client.get("/features", params={"user_id": "u1", "features": "user_activity"})
        assert r.status_code == 503 and "fstore repair" in r.json()["detail"] and ptr.version in r.json()["detail"]
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "degraded"
        res = CliRunner().invoke(repair_cmd, ["--no-progress"])
        assert res.exit_code == 0, res.output
        assert f"batch view {ptr.version} reloaded" in res.output and "120 events applied" in res.output
        assert client.get("/health").status_code == 200
        assert_exact(client)
        again = CliRunner().invoke(repair_cmd, ["--no-progress"])
        assert again.exit_code == 0 and "0 events applied, 120 already counted" in again.output, again.output
        assert_exact(client)


async def apply_as_the_worker(s: StreamSettings, events: list[Event]) -> int:
    client = aioredis.Redis.from_url(s.redis_url)
    try:
        writer = TileWriter(client, current_plan(), s.marker_ttl_s, s.tile_ttl_s)
        return len(events) - len(await writer.apply([e._asdict() for e in events]))
    finally:
        await client.aclose()


def test_a_data_root_on_an_object_store_spark_cannot_reach_is_a_configuration_error(
    spark: Any, tmp_path: Path, redis_url: str
) -> None:
    """PySpark ships no object-store connector: the batch job says so before reading anything — exit code 78
    (no retry), the scheme named, no Java stack trace — instead of failing mid-run with exit code 1."""
    for root in ("s3://bucket/fstore", "gs://bucket/fstore", "abfss://c@account.dfs.core.windows.net/fstore"):
        why = missing_file_system(spark, root)
        assert why is not None and f"scheme '{root.split(':')[0]}'" in why and root in why, why
    for root in (str(tmp_path), f"file://{tmp_path}"):
        assert missing_file_system(spark, root) is None
    env = {**os.environ, "FSTORE_DATA_DIR": "s3://bucket/fstore", "FSTORE_REDIS_URL": redis_url}
    env["FSTORE_SPARK_MASTER"] = "local[1]"
    run = subprocess.run(
        [FSTORE, "batch", "--date", "2026-11-20", "--no-progress"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 78, run.stdout[-2000:] + run.stderr[-3000:]
    assert "no Hadoop FileSystem for scheme 's3'" in run.stderr and "Traceback" not in run.stderr, run.stderr[-3000:]


def test_a_java_failure_is_summed_up_by_the_java_exceptions_own_line(spark: Any) -> None:
    """The closing line of a failed run quotes the Java exception, not py4j's "An error occurred while calling"."""
    from jobs.batch.run_failure import summary

    with pytest.raises(Exception) as caught:  # py4j's Py4JJavaError, or PySpark's conversion of it
        spark.sparkContext._jvm.java.lang.Integer.parseInt("not-a-number")
    assert summary(caught.value) == 'java.lang.NumberFormatException: For input string: "not-a-number"'
