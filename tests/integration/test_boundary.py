"""The boundary table (tests/support/boundary.py) through the engines that need a real service: the Lua
script inside a real Redis (read back by the online reader) and the batch job's Spark tile computation
(local Spark), each against the brute force."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from fstore.core.timeutil import DAY
from fstore.devsvc.services import RedisServer
from fstore.online.merge import EntityRead
from fstore.online.reader import SyncOnlineReader
from fstore.redis.layout import POINTER_KEY, BatchPointer, batch_key, packed_fields
from jobs.batch.plan import size_horizons
from tests.support.boundary import CASES, Case, assert_expected, batches, case_ids, raw_table, tiles_from_rows
from tests.support.legacy.tiles import build_tiles, evaluate, lookup_in
from tests.support.legacy_view import plan_view

pytestmark = pytest.mark.integration

TTL = 3600


# -- Lua inside Redis ------------------------------------------------------------------------------------


def publish_batch_view(client: redis.Redis, case: Case, cutover: int) -> None:
    """The batch view of the row's entity: its tiles before ``cutover`` under version v1, then the pointer."""
    fields: dict[str, str] = {}
    for (entity, size, start), tile in build_tiles(case.view, case.winners).items():
        if entity == case.entity and start < cutover:
            for measure, p in tile.items():
                fields.update(packed_fields(size, start, measure, p))
    if fields:
        client.hset(batch_key(case.view.name, case.entity, "v1"), mapping=fields)  # type: ignore[arg-type]
    client.set(POINTER_KEY, BatchPointer("v1", cutover).dumps())


def apply_copies(url: str, case: Case, calls: list[list[Any]], now: int | None) -> int:
    """Send the copies through the stream worker's tile writer (one script round per call) with processing
    clock ``now`` (``None``: every event folds into tiles); returns how many copies the script reported as
    duplicates."""
    import redis.asyncio as aredis

    from jobs.stream.sinks import TileWriter
    from tests.support.raw_rows import plan_of

    async def run() -> int:
        client = aredis.Redis.from_url(url, socket_timeout=10)
        writer = TileWriter(client, plan_of(case.view), TTL, TTL, chunk=3)
        skipped = 0
        try:
            for call in calls:
                skipped += len(await writer.apply([e._asdict() for e in call], now))
        finally:
            await client.aclose()
        return skipped

    return asyncio.run(run())


@pytest.mark.parametrize("mode", ["one copy per call", "batches", "clock at t"])
@pytest.mark.parametrize("case", CASES, ids=case_ids())
def test_lua_script_through_redis(case: Case, mode: str, redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """Every copy goes through the script in arrival order (duplicates are the script's to drop); the reader
    at ``as_of = t`` merges the speed tiles with no batch view, then with one whose cutover is t's midnight.

    Tiles are written with no clock (every event folds into its tile) from the copies a tile store read at
    ``t`` may hold; with the clock at ``t`` every copy is written, those from ``t`` on as exact
    future-stamped fields that a read at ``t`` leaves out (docs/design.md §5)."""
    now = case.t if mode == "clock at t" else None
    copies = list(case.copies) if now is not None else case.tileable_copies()
    calls = [[c] for c in copies] if mode == "one copy per call" else list(batches(copies))
    for cutover in (None, case.t // DAY * DAY):
        redis_client.flushdb()
        if cutover is not None:
            publish_batch_view(redis_client, case, cutover)
        skipped = apply_copies(redis_server.url, case, calls, now)
        assert skipped == len(copies) - len({c.event_id for c in copies})
        reader = SyncOnlineReader(redis_client, batch_cache_entries=0)
        view = plan_view(case.view)  # the reader runs from plan views
        snap = reader.read([EntityRead(view, case.entity, view.feature_names)], as_of=case.t)
        assert_expected(case, snap.results[0].values, f"Lua + reader ({mode}, cutover {cutover})")


# -- Spark ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    from fstore.offline.spark import spark_session

    session = spark_session("fstore-test-boundary", master="local[1]")
    yield session
    session.stop()


@pytest.mark.parametrize("case", CASES, ids=case_ids())
def test_spark_batch_tiles(case: Case, spark: Any) -> None:
    """The batch job's Spark steps on the row's copies: first-ingested de-duplication, then the tiles of
    ``[horizon, t)`` with ``t`` as the cutover; evaluated at t by the core; on the grid, Spark's snapshot.
    (The job's validity filter is left out: it would drop the negative values of row ``negatives``.)"""
    from jobs.batch import compute
    from jobs.batch.delta_io import spark_schema
    from tests.support.plan_compat import plan_view
    from tests.support.repos import compiled

    schema, view = compiled("ecommerce").schema, plan_view(case.view)
    raw = raw_table(case.copies)
    copies = spark.createDataFrame(raw.to_pandas(), schema=spark_schema(raw.schema))
    first = compute.first_ingested(copies, schema.id_field)
    tiles = compute.tiles(first, view, schema, size_horizons(view, case.t), case.t, 2)
    rows = tiles.collect()
    got = evaluate(case.view, lookup_in(tiles_from_rows(case.view, (r.asDict() for r in rows)), case.entity), case.t)
    assert_expected(case, got, "Spark tiles")
    if case.on_grid():
        snap = {r[view.entity.join_key]: r for r in compute.snapshots(tiles, view, case.t).collect()}
        assert case.entity in snap, "Spark's snapshot has no row for an entity with events in its windows"
        assert_expected(case, {n: snap[case.entity][n] for n in case.view.feature_names}, "Spark snapshot")
