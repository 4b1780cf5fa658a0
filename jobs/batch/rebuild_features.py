"""Nightly batch job: rebuild tiles and feature snapshots in Delta, gate on data quality, publish to Redis.

Run it as ``spark-submit jobs/batch/rebuild_features.py --date 2026-11-20`` (any master) or as
``fstore batch --date 2026-11-20`` (local Spark). The run for date D has cutover C = D+1 00:00 UTC and:

Everything comes from the compiled plan (:func:`fstore.plan_source.current_plan`: the views, the event
schema with its id and timestamp fields, the entity keys); under ``spark-submit`` the plan is that of
``FSTORE_FEATURE_REPO``.

1. reads the ``raw_events`` partitions of ``[C - longest window - largest hop, C)`` (executors read the
   files), keeps the first-ingested copy of every event id and the rows that pass the cheap checks; a
   day whose de-duplication winners file is current (``fstore compact``) is read from that file instead;
2. grades the day's data (:mod:`jobs.batch.dq`) and writes the report to ``dq_reports``; a hard failure
   stops here (exit 2) and publishes nothing;
3. computes the tiles of every view on the executors (:mod:`fstore.core.view_tiles_frame`: count, sum,
   min, max, the variance state and the distinct members of each measure) and the daily snapshots of
   every feature (:mod:`fstore.core.view_snapshot`) — the tiles of a day whose input and view are unchanged
   since an earlier run are read back from that run's partition instead (:mod:`jobs.batch.tile_reuse`),
   and only the days needed are read in step 1 — and replaces
   partition ``run_date = D`` of ``tiles_<view>`` and ``feature_snapshots/<view>`` (one Delta commit
   per table, so each table is fully old or fully new);
4. loads the tiles into Redis under a new version and publishes it with one atomic pointer swap that
   moves C (:mod:`jobs.batch.batch_view`); any failure before the swap leaves the previous view serving;
5. prints the metrics as JSON and writes them as a Prometheus textfile.

Re-running a date gives identical table contents and an identical batch view (under a new version).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any, NoReturn

import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from fstore.clock import wall_clock
from fstore.core import view_snapshot, view_tiles_frame
from fstore.core.plan import Plan, View
from fstore.core.plan_error import PlanError
from fstore.core.timeutil import SECOND, iso
from fstore.delta import batch_views, raw_log, raw_winners
from fstore.jvm.artifacts import delta_jars
from fstore.jvm.spark import loopback_driver
from fstore.plan_source import current_plan
from fstore.redis.layout import BatchPointer
from fstore.settings import SettingsError
from jobs.batch import batch_view, compute, delta_io, dq, exit_codes, run_failure, tile_reuse
from jobs.batch.file_systems import missing_file_system
from jobs.batch.metrics import JobMetrics
from jobs.batch.plan import OpenDay, RunPlan, check_closed, plan_run, snapshot_table, tiles_table
from jobs.batch.settings import BatchSettings, load_batch_settings

TS = pa.timestamp("us", tz="UTC")
VALID = "_valid"  # column of the de-duplicated rows: compute.is_valid(), evaluated once
EMPTY_DAY = "empty"  # the input fingerprint of a day without copies in raw_events


class InjectedFailure(RuntimeError):
    """Raised after the stage named by ``FSTORE_FAIL_AFTER`` (fault-injection tests)."""


class DQFailed(RuntimeError):
    """The data-quality gate failed: the report was written, nothing was published."""

    def __init__(self, report: dq.DQReport) -> None:
        super().__init__("data-quality gate failed:\n" + report.summary())
        self.report = report


@dataclass(frozen=True)
class RunResult:
    """What one run did."""

    run_date: date
    cutover: int
    version: str
    published: bool
    metrics: dict[str, Any]


def build_spark(s: BatchSettings, own_session: bool = True) -> SparkSession:
    """The Spark session of the job.

    Args:
        s: settings.
        own_session: start a session with ``s.spark_master`` and driver memory (``fstore batch``, tests),
            with delta-spark from the jar cache unless ``s.delta_engine`` is ``delta-rs``; False under
            ``spark-submit``, whose options (master, memory, ``--packages io.delta:…``) then apply.
    """
    builder = SparkSession.builder.appName("fstore-batch")
    if own_session and s.delta_engine != "delta-rs":
        for k, v in delta_jars(s.jar_cache).spark_conf().items():
            builder = builder.config(k, v)
    if own_session:
        # Local Python workers must run this interpreter (with pandas/pyarrow), not whatever python3 is on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = (
            builder.master(s.spark_master)
            .config("spark.driver.memory", s.spark_driver_memory)
            .config("spark.ui.enabled", str(s.spark_ui).lower())
            .config("spark.ui.showConsoleProgress", str(s.spark_ui).lower())
            .config("spark.pyspark.python", sys.executable)
            .config("spark.pyspark.driver.python", sys.executable)
        )
        for k, v in loopback_driver(s.spark_master).items():
            builder = builder.config(k, v)
    spark = builder.getOrCreate()
    # windowGroupLimitThreshold=-1: the de-duplication's row_number() == 1 would otherwise get a partial
    # group limit, i.e. a full sort of every copy BEFORE the shuffle, useless when almost all ids are unique.
    for k, v in {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(s.spark_shuffle_partitions),
        "spark.sql.execution.arrow.maxRecordsPerBatch": "200000",
        "spark.sql.optimizer.windowGroupLimitThreshold": "-1",
    }.items():
        spark.conf.set(k, v)
    return spark


def _delta_schema(schema: pa.Schema, ts_columns: tuple[str, ...]) -> pa.Schema:
    """``schema`` with the int64 epoch-µs columns ``ts_columns`` stored as UTC timestamps."""
    return pa.schema([pa.field(f.name, TS, f.nullable) if f.name in ts_columns else f for f in schema])


def new_run_id() -> str:
    """A unique, sortable id of one run (UTC start time + random suffix)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + uuid.uuid4().hex[:6]


def rebuild(
    spark: SparkSession,
    s: BatchSettings,
    run_date: date,
    allow_older: bool = False,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
    features: Plan | None = None,
) -> RunResult:
    """Run the nightly job for ``run_date`` (see the module docstring) for the views of ``features``
    (default: the process's plan).

    Raises:
        OpenDay: ``run_date`` is not over yet (its cutover is after the clock): nothing is read or written.
        DQFailed: the data-quality gate failed (report written, nothing else changed).
        InjectedFailure: ``s.fail_after`` named a stage that just finished.
        batch_view.LeaseLost: the run was paused longer than its loading lease (nothing published).
    """
    check_closed(run_date, wall_clock())
    features = current_plan() if features is None else features
    schema = features.schema
    plan, run_id, m = plan_run(run_date, features), new_run_id(), JobMetrics()
    version = f"{run_date:%Y%m%d}-{run_id}"
    m.info = {"run_date": run_date.isoformat(), "cutover": iso(plan.cutover), "run_id": run_id, "version": version}
    delta_spark, why = delta_io.choose_engine(spark, s.delta_engine, delta_jars(s.jar_cache).reason)
    m.info["delta_writer"] = "delta-spark" if delta_spark else "delta-rs"
    m.info["delta_writer_reason"] = why
    success = False
    cached: list[Any] = []

    def checkpoint(stage: str) -> None:
        if s.fail_after == stage:
            raise InjectedFailure(f"injected failure after stage {stage}")

    try:
        with m.stage("read_dedupe"):
            inputs = _inputs(s, plan, features)
            reuse = _reusable(s, plan, features, inputs, m)
            needed = {plan.run_date} | {d for v in features.views for d in plan.dates if d not in reuse[v.name].days}
            winners = _deduplicated(spark, s, plan, features, delta_spark, m, inputs, needed)
        checkpoint("read")
        with m.stage("dq"):
            report = _quality(spark, s, plan, features, winners, run_id, delta_spark, inputs, needed)
        m.info["dq"] = report.as_dict()
        log(report.summary())
        if report.hard_failure:
            raise DQFailed(report)
        checkpoint("dq")
        micros = F.unix_micros(schema.timestamp_field)
        events = winners.where(F.col(VALID) & (micros >= plan.read_from) & (micros < plan.cutover))
        tiles: dict[str, tuple[View, Any]] = {}
        for view in features.views:
            df = _write_view(
                s, plan, features, view, events, inputs, reuse[view.name], run_id, delta_spark, m, checkpoint
            )
            tiles[view.name] = (view, df)
            cached.append(df)
        with m.stage("redis_load"):
            published = _publish(s, plan, version, tiles, allow_older, m, checkpoint, log)
        if published and not m.info.get("superseded_by"):  # the durable record that outlives Redis (fstore repair,
            # the API's 503 on a lost view); a run replaced before its retry saw its swap does not serve
            batch_views.record(
                s.table("batch_views"), batch_views.PublishedView(version, plan.cutover, run_date, wall_clock())
            )
        success = True
        return RunResult(run_date, plan.cutover, version, published, m.as_dict())
    finally:
        for df in cached:
            df.unpersist()
        m.info["success"] = success
        print(json.dumps(m.as_dict(), default=str))
        path = s.metrics_path()
        if path:
            m.write_prometheus(path, run_date.isoformat(), success, plan.cutover / SECOND)


@dataclass(frozen=True)
class _Inputs:
    """Where each day of the run comes from: ``files`` (day → winners file), the other days (``rest``,
    read from ``raw_events`` and de-duplicated together), and per day the fingerprint that fixes its
    de-duplicated events when it has one (:mod:`jobs.batch.tile_reuse`)."""

    files: dict[date, str]
    rest: list[date]
    fingerprints: dict[date, str]


def _inputs(s: BatchSettings, plan: RunPlan, features: Plan) -> _Inputs:
    """The days of the run by source (:func:`fstore.delta.raw_winners.settled`). A winners file is named
    by its day's fingerprint; a day read alone from ``raw_events`` gets its fingerprint from the Delta log,
    taken BEFORE its rows are read (a copy appended in between then only makes the record useless)."""
    raw_uri = s.table("raw_events")
    files = raw_winners.settled(raw_uri, plan.dates, features.schema) if s.use_winners else {}
    rest = [d for d in plan.dates if d not in files]
    prints = {d: path.rsplit("/", 1)[-1].removesuffix(".parquet") for d, path in files.items()}
    raw = raw_log.open_table(raw_uri)
    if raw is not None and rest:
        marks = raw_log.open_table(raw_log.superseded_uri(raw_uri))
        held = raw_winners.fingerprints(raw, marks, rest)  # only the days with files in raw_events
        # A day without copies adds nothing to the de-duplication of the others and has no events.
        prints.update({d: EMPTY_DAY for d in rest if d not in held})
        if len(held) == 1:
            prints.update(held)
    return _Inputs(files, rest, prints)


def _reusable(
    s: BatchSettings, plan: RunPlan, features: Plan, inputs: _Inputs, m: JobMetrics
) -> dict[str, tile_reuse.Source]:
    """Per view, the earlier run whose tiles of some days are still exact, and those days (none when
    ``FSTORE_REUSE_TILES=false``)."""
    out = {}
    for view in features.views:
        keys = _day_keys(features, view, inputs)
        found = tile_reuse.find(s.table(tiles_table(view.name)), plan.run_date, keys) if s.reuse_tiles else None
        out[view.name] = found or tile_reuse.Source(plan.run_date, [], [])
    m.info["days_reused"] = {v: [d.isoformat() for d in src.days] for v, src in out.items()}
    m.info["tiles_reused_from"] = {v: src.run_date.isoformat() for v, src in out.items() if src.days}
    return out


def _day_keys(features: Plan, view: View, inputs: _Inputs) -> dict[date, str]:
    vk = tile_reuse.view_key(features, view)
    return {} if vk is None else {d: tile_reuse.day_key(vk, d, fp) for d, fp in inputs.fingerprints.items()}


def _deduplicated(
    spark: SparkSession,
    s: BatchSettings,
    plan: RunPlan,
    features: Plan,
    delta_spark: bool,
    m: JobMetrics,
    inputs: _Inputs,
    needed: set[date],
) -> Any:
    """The events of the days ``needed``, one row per event id, with :data:`VALID`, materialised.

    A day whose winners file is current (``raw_events_winners``, written once by ``fstore compact``) is
    read from it, already de-duplicated; the other days (in the steady state only the newest) are read
    from ``raw_events`` and de-duplicated here, all together when one of them is needed.
    :func:`fstore.delta.raw_winners.settled` returns no file when an event id of those days also has a
    winner in a file, so that every day is then de-duplicated together.
    """
    schema, raw_uri = features.schema, s.table("raw_events")
    files = {d: p for d, p in inputs.files.items() if d in needed}
    full = [d for d in inputs.rest if inputs.fingerprints.get(d) != EMPTY_DAY]
    rest = full if needed & set(full) else []
    if not files and not rest:  # only days without copies: read them all the same (no rows, the columns)
        rest = sorted(needed & set(inputs.rest))
    m.info["days_from_winners"] = [d.isoformat() for d in sorted(inputs.files)]
    m.info["days_read"] = [d.isoformat() for d in sorted([*files, *rest])]
    parts = []
    m.count("rows_read", 0)
    if rest:
        copies = delta_io.read_raw(spark, raw_uri, rest, delta_spark, schema)
        # payload_hash only breaks ties of the de-duplication.
        parts.append(compute.first_ingested(copies, schema.id_field).drop("payload_hash"))
        rows_read = delta_io.copies_in(raw_uri, rest)
        m.count("rows_read", copies.count() if rows_read is None else rows_read)
    if files:
        parts.append(delta_io.read_winners(spark, raw_uri, [files[d] for d in sorted(files)], schema))
    events = parts[0] if len(parts) == 1 else parts[0].unionByName(parts[1])
    # Materialised once as rows (cheaper to build than the columnar cache of persist()), with the validity
    # checks (regexes) evaluated once; DQ and both views read it.
    winners = events.withColumn(VALID, compute.is_valid(schema, _entity_keys(features))).localCheckpoint(
        eager=True, storageLevel=StorageLevel.MEMORY_AND_DISK
    )
    m.count("events_deduplicated", winners.count())
    return winners


def _entity_keys(features: Plan) -> list[str]:
    return [e.join_key for e in features.entities]


def _quality(
    spark: SparkSession,
    s: BatchSettings,
    plan: RunPlan,
    features: Plan,
    winners: Any,
    run_id: str,
    delta_spark: bool,
    inputs: _Inputs,
    read: set[date],
) -> dq.DQReport:
    fields = dq.checked_fields(features.schema, _entity_keys(features))
    figures = dq.day_figures(winners, plan, s.dq_late_after_s * SECOND, features.schema, fields, F.col(VALID))
    unread = {d for d in plan.dates if d not in read}
    if figures["latest_event_us"] is None and unread:  # the run date has no event: look further back
        older = _deduplicated(spark, s, plan, features, delta_spark, JobMetrics(), inputs, unread)
        micros = F.unix_micros(F.col(features.schema.timestamp_field))
        figures["latest_event_us"] = older.agg(F.max(F.when(micros < F.lit(plan.cutover), micros))).collect()[0][0]
        older.unpersist()
    report = dq.evaluate(
        s,
        plan,
        [f.name for f in fields],
        figures,
        delta_io.daily_copies(s.table("raw_events")),
        dq.dead_letters_on(s.table("dead_letters"), plan.run_date),
    )
    delta_io.overwrite_small(
        s.table("dq_reports"), report.table(plan, run_id), "run_date", plan.run_date, spark if delta_spark else None
    )
    return report


def _write_view(
    s: BatchSettings,
    plan: RunPlan,
    features: Plan,
    view: View,
    events: Any,
    inputs: _Inputs,
    reuse: tile_reuse.Source,
    run_id: str,
    delta_spark: bool,
    m: JobMetrics,
    checkpoint: Callable[[str], None],
) -> Any:
    """Tiles and snapshot of one view into Delta; returns the materialised tiles frame for the Redis load.

    The tiles of the days in ``reuse`` are read from that earlier run's partition (:mod:`jobs.batch.tile_reuse`),
    the others computed from ``events``; the day keys of this run are recorded after the commit.
    """
    name, table = view.name, s.table(tiles_table(view.name))
    with m.stage(f"tiles:{name}"):
        tiles = _tiles(s, plan, features, view, events, reuse)
        tiles = tiles.localCheckpoint(eager=True, storageLevel=StorageLevel.MEMORY_AND_DISK)
        m.count(f"tiles:{name}", tiles.count())
    with m.stage(f"write:{tiles_table(name)}"):
        delta_io.overwrite_partition(
            tiles,
            table,
            _delta_schema(view_tiles_frame.tile_schema(view), ("tile_start",)),
            "run_date",
            plan.run_date,
            delta_spark,
            run_id,
            before_commit=lambda: checkpoint(f"staged:{tiles_table(name)}"),
        )
        # Only days whose events are fixed by their fingerprint get a key (tile_reuse's docstring).
        tile_reuse.record(table, plan.run_date, _day_keys(features, view, inputs))
    checkpoint(f"write:{tiles_table(name)}")
    with m.stage(f"write:snapshot:{name}"):
        snap = compute.snapshots(tiles, view, plan.cutover)
        rows = delta_io.overwrite_partition(
            snap,
            s.table(snapshot_table(name)),
            _delta_schema(view_snapshot.snapshot_schema(view), ("event_timestamp",)),
            "run_date",
            plan.run_date,
            delta_spark,
            run_id,
        )
        m.count(f"snapshot_rows:{name}", rows)
    checkpoint(f"write:snapshot:{name}")
    return tiles


def _tiles(s: BatchSettings, plan: RunPlan, features: Plan, view: View, events: Any, reuse: tile_reuse.Source) -> Any:
    """The view's tiles: computed for the days not in ``reuse``, read back for the others."""
    horizons = plan.horizons[view.name]
    if not reuse.days:
        return compute.tiles(events, view, features.schema, horizons, plan.cutover, s.spark_shuffle_partitions)
    ts = features.schema.timestamp_field
    fresh_days = [d for d in plan.dates if d not in reuse.days]
    fresh = compute.tiles(
        events.where(F.to_date(F.col(ts)).isin(fresh_days)),
        view,
        features.schema,
        horizons,
        plan.cutover,
        s.spark_shuffle_partitions,
    )
    start = F.col("tile_start")
    in_days = F.to_date(F.timestamp_micros(start)).isin(reuse.days)
    needed = functools.reduce(
        lambda a, b: a | b, [(F.col("size") == size) & (start >= first) for size, first in horizons.items()]
    )
    schema = view_tiles_frame.tile_schema(view)
    old = delta_io.read_tiles(
        events.sparkSession, s.table(tiles_table(view.name)), reuse.files, schema, in_days & needed
    )
    # Every entity's tiles in one partition (the snapshot and the Redis load rely on it).
    return fresh.unionByName(old).repartition(s.spark_shuffle_partitions, view.entity.join_key)


def _publish(
    s: BatchSettings,
    plan: RunPlan,
    version: str,
    tiles: dict[str, tuple[View, Any]],
    allow_older: bool,
    m: JobMetrics,
    checkpoint: Callable[[str], None],
    log: Callable[[str], None],
) -> bool:
    """Load every view under ``version`` and swap the pointer; on failure drop the half-loaded version.

    Raises:
        batch_view.LeaseLost: the run's loading lease lapsed (nothing published, its version dropped).
    """
    from fstore.redis.connect import admin_client

    client = admin_client(s.redis_url, s.redis_cluster)
    abandoned = batch_view.remove_abandoned(client)  # versions of runs killed while loading
    m.info["abandoned_versions_removed"] = abandoned
    lease = batch_view.LoadingLease(client, version, s.batch_view_ttl_s)
    try:
        for name, (view, df) in tiles.items():
            keys, fields = batch_view.load_view(
                df, view, version, s.redis_url, s.batch_view_ttl_s, s.redis_chunk, s.redis_cluster
            )
            m.count(f"redis_keys:{name}", keys)
            m.count(f"redis_fields:{name}", fields)
            checkpoint(f"load:{name}")
            lease.check()  # a run that lost its lease stops here rather than loading the other views
        result = batch_view.publish(
            client, BatchPointer(version, plan.cutover), s.batch_view_ttl_s, s.batch_view_grace_s, allow_older, lease
        )
    except BaseException:
        lease.close(keep=False)
        raise
    lease.close(keep=result.published)
    m.info["published"] = result.published
    m.info["previous_version"] = result.previous.version if result.previous else None
    if result.superseded_by is not None:
        m.info["superseded_by"] = result.superseded_by.version
        log(
            f"published {version}, but its reply was lost and {result.superseded_by.version} replaced it before "
            "the retry: the version it replaced was not retired early and expires with its TTL"
        )
    m.count("redis_retired_keys", result.retired_keys)
    client.close()
    return result.published


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error; 2 means a data-quality failure here (:mod:`jobs.batch.exit_codes`)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(exit_codes.USAGE, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    """``spark-submit`` entry point; returns the exit code (:mod:`jobs.batch.exit_codes`)."""
    parser = _Parser(description="fstore nightly batch job (one run date)")
    parser.add_argument("--date", required=True, type=date.fromisoformat, help="run date D (UTC), cutover D+1")
    parser.add_argument("--allow-older", action="store_true", help="publish even if a later cutover serves")
    args = parser.parse_args(argv)
    try:
        check_closed(args.date, wall_clock())
    except OpenDay as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exit_codes.USAGE
    try:
        s = load_batch_settings()
        features = current_plan()
    except (SettingsError, PlanError) as exc:
        print(exc, file=sys.stderr)
        return exit_codes.CONFIG
    spark = build_spark(s, own_session=False)
    if (why := missing_file_system(spark, s.data_root())) is not None:
        print(f"Error: {why}", file=sys.stderr)
        spark.stop()
        return exit_codes.CONFIG
    try:
        rebuild(spark, s, args.date, allow_older=args.allow_older, features=features)
    except DQFailed:
        return exit_codes.DQ_FAILED
    except batch_view.LeaseLost as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exit_codes.RUN_FAILED
    except Exception as exc:  # Spark, Delta, Redis, the disk: the trace for whoever debugs it, then one line
        traceback.print_exc()
        print(run_failure.failure_line(args.date, exc), file=sys.stderr)
        return exit_codes.RUN_FAILED
    finally:
        spark.stop()
    return exit_codes.OK


if __name__ == "__main__":
    sys.exit(main())
