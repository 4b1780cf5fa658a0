"""The batch view in Redis: versioned load from the executors, atomic publish, expiry of the old view.

Layout is :mod:`fstore.redis_layout`: one hash per (view, entity, version) with the fields of
:func:`~fstore.redis_layout.partial_fields`. A run loads its tiles under a fresh version that no reader
knows yet, then ONE ``SET`` of :data:`~fstore.redis_layout.POINTER_KEY` (inside WATCH/MULTI, so a newer
cutover is never replaced by an older one) makes the version visible and moves the cutover C. The
previous version's keys get a short TTL (the grace period) so readers that fetched the old pointer still
read a complete view. Every key carries a TTL (DESIGN.md §7).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import redis
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from fstore.core.aggregates import Partial
from fstore.core.features import VIEWS
from fstore.redis_layout import POINTER_KEY, PREFIX, BatchPointer, batch_key, partial_fields


def version_pattern(version: str) -> str:
    """SCAN pattern of every key of one batch version."""
    return f"{PREFIX}:*:b:{version}"


def load_view(tiles_df: DataFrame, view_name: str, version: str, redis_url: str, ttl_s: int,
              chunk: int) -> tuple[int, int]:
    """Write a view's tiles into Redis under ``version`` from the executors, pipelined in chunks.

    ``tiles_df`` must hold each entity's tiles in one partition (see :func:`jobs.batch.compute.tiles`),
    so one HSET per entity carries all its fields.

    Returns:
        (keys written, fields written).
    """
    key = VIEWS[view_name].entity.join_key

    def load(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        parts = list(batches)
        if not any(b.num_rows for b in parts):
            return
        frame = pa.Table.from_batches(parts).to_pandas().sort_values([key, "size", "tile_start", "measure"])
        client = redis.Redis.from_url(redis_url)
        keys = fields = pending = 0
        pipe = client.pipeline(transaction=False)
        for entity, grp in frame.groupby(key, sort=True):
            mapping: dict[Any, Any] = {}  # redis-py types want its own key union
            for size, start, measure, c, s, lo, hi in zip(grp["size"], grp["tile_start"], grp["measure"],
                                                           grp["count"], grp["sum"], grp["min"], grp["max"],
                                                           strict=True):
                mapping.update(partial_fields(int(size), int(start), str(measure),
                                              Partial(int(c), float(s), float(lo), float(hi))))
            bkey = batch_key(view_name, str(entity), version)
            pipe.hset(bkey, mapping=mapping)
            pipe.expire(bkey, ttl_s)
            keys, fields, pending = keys + 1, fields + len(mapping), pending + 1
            if pending >= chunk:
                pipe.execute()
                pending = 0
        pipe.execute()
        client.close()
        yield pa.RecordBatch.from_pydict({"keys": [keys], "fields": [fields]})

    schema = T.StructType([T.StructField("keys", T.LongType()), T.StructField("fields", T.LongType())])
    rows = tiles_df.mapInArrow(load, schema).collect()
    return sum(r["keys"] for r in rows), sum(r["fields"] for r in rows)


@dataclass(frozen=True)
class PublishResult:
    """Outcome of :func:`publish`."""

    published: bool
    previous: BatchPointer | None
    retired_keys: int


def publish(client: redis.Redis, pointer: BatchPointer, ttl_s: int, grace_s: int,
            allow_older: bool = False) -> PublishResult:
    """Make ``pointer.version`` the serving batch view in one atomic step, then retire the previous one.

    Args:
        client: Redis client.
        pointer: the new version and its cutover.
        ttl_s: TTL of the pointer (the same as the version's keys, so both lapse together).
        grace_s: remaining lifetime of the previous version's keys.
        allow_older: publish even if the serving view has a later cutover (a backfill normally must not).

    Returns:
        Whether the pointer moved, the previous pointer and how many old keys got the grace TTL.
    """
    with client.pipeline() as pipe:
        while True:
            try:
                pipe.watch(POINTER_KEY)  # type: ignore[no-untyped-call]
                previous = BatchPointer.loads(pipe.get(POINTER_KEY))
                if previous is not None and previous.cutover > pointer.cutover and not allow_older:
                    pipe.unwatch()
                    return PublishResult(False, previous, 0)
                pipe.multi()
                pipe.set(POINTER_KEY, pointer.dumps(), ex=ttl_s)
                pipe.execute()
                break
            except redis.WatchError:
                continue
    retired = 0
    if previous is not None and previous.version != pointer.version:
        retired = expire_version(client, previous.version, grace_s)
    return PublishResult(True, previous, retired)


def expire_version(client: redis.Redis, version: str, ttl_s: int) -> int:
    """Lower the TTL of every key of ``version`` to ``ttl_s`` (0 deletes them); returns the key count."""
    n = 0
    pipe = client.pipeline(transaction=False)
    for k in client.scan_iter(match=version_pattern(version), count=10_000):
        if ttl_s > 0:
            pipe.expire(k, ttl_s, lt=True)
        else:
            pipe.unlink(k)
        n += 1
        if n % 5_000 == 0:
            pipe.execute()
    pipe.execute()
    return n


def current(client: redis.Redis) -> BatchPointer | None:
    """The serving batch pointer, if any."""
    return BatchPointer.loads(client.get(POINTER_KEY))
