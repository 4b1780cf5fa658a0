"""The batch view in Redis: versioned load from the executors, atomic publish, expiry of the old view.

Layout is :mod:`fstore.redis.layout`: one hash per (view, entity, version) with one packed field per
tile measure (count, sum, min, max and the variance state, :func:`~fstore.redis.layout.packed_arrays`)
and one field per distinct member of a measure a count_distinct reads
(:func:`~fstore.redis.layout.distinct_field`); readers decode it with
:func:`~fstore.redis.layout.parse_states`. A run loads its tiles under a fresh version that no reader
knows yet, then ONE ``SET`` of :data:`~fstore.redis.layout.POINTER_KEY` (in a compare-and-set script, so
a newer cutover is never replaced by an older one) makes the version visible and moves the cutover C.
The previous version's keys get a short TTL (the grace period) so readers that fetched the old pointer still
read a complete view. Every key carries a TTL (docs/design.md §7).

A run that dies while loading (kill -9, lost executor) cannot clean up after itself: its version is in
the set :data:`LOADING_KEY` with a lease key that the run keeps alive (:class:`LoadingLease`). The next
run (:func:`remove_abandoned`) deletes every version whose lease lapsed and that is not serving, so no
unpublished keys linger until their TTL; a run still loading keeps its lease and is left alone.

What holds around the swap, and why (docs/batch.md, "Batch view versioning"):

* The swap is idempotent. The pointer records the version it replaced (``"previous"`` in its JSON;
  readers ignore it), and a swap that finds its own version already published (a retry after a reply
  lost on the wire, by redis-py or by :func:`publish` itself) answers with that recorded version instead
  of its own. So the replaced version gets the grace TTL once (``EXPIRE ... LT`` never lengthens a TTL,
  so a second retirement changes nothing), and the new version never gets it.
* Deleting a version is decided in one script with the pointer and the lease (:data:`_MAY_DELETE`), and a
  swap succeeds only while the run's lease holds the run's token (:data:`_SWAP_POINTER`). Once a version's
  lease is gone it never comes back (renewal compares the token and never re-creates the key,
  :class:`LoadingLease`), so from the moment that script answers "delete" no swap can make the version
  serve: the SCAN + UNLINK that follows (over every primary of a Redis Cluster, where one script cannot
  reach keys of every slot) races with nothing. The check-then-delete this replaces was reachable, not
  because two runs share a version (a version is ``<date>-<UTC start><random>``, unique per run) but
  through (a) a concurrent run's swap and lease release landing between the registry read of
  :func:`remove_abandoned` and its lease check; (b) a run paused longer than its lease (GC, stopped VM)
  whose renewal re-created the lease after another run deleted its keys, then published; (c) a run's own
  swap delayed on the wire past its failure cleanup. All keys the scripts touch share the pointer's
  Redis Cluster slot (hash tag ``{fs:batch:current}``).
* A run that lost its lease (:class:`LeaseLost`) publishes nothing and fails (exit 1): the keys it loaded
  may have been deleted by another run.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from fstore.core.plan import View
from fstore.core.view_tiles_frame import tile_schema
from fstore.redis.connect import AdminClient, admin_client
from fstore.redis.layout import DISTINCT, POINTER_KEY, PREFIX, BatchPointer, batch_key, packed_arrays
from jobs.batch.delta_io import lists_from_json

_PIPELINE_FIELDS = 200_000  # also flush a pipeline after this many fields (bounded client buffers)
#: Hash tag that puts the loading registry and the leases in the Redis Cluster slot of the pointer, so that one
#: script can check and change them together with the pointer.
_TAG = f"{{{POINTER_KEY}}}"
LOADING_KEY = f"{PREFIX}:batch:{_TAG}:loading"  # set of versions being loaded (removed once published or dropped)
LEASE_S = 120  # a loading run renews its lease every LEASE_S / 4 seconds
SWAP_ATTEMPTS = 6  # tries of the (idempotent) pointer swap when its reply is lost (≈ 6 s: a failover's time)


def lease_key(version: str) -> str:
    """The key whose value (the run's token) says that the run loading ``version`` is alive."""
    return f"{PREFIX}:batch:{_TAG}:lease:{version}"


class LeaseLost(RuntimeError):
    """The run's loading lease lapsed (the run was paused longer than it): another run may have deleted
    the keys of its version, so it must not publish. Nothing was published; run the job again."""

    def __init__(self, version: str) -> None:
        super().__init__(
            f"the batch run lost its loading lease on version {version} (paused longer than the lease?); "
            "another run may have removed its keys as abandoned, so nothing was published: run the job again"
        )


#: Renew the lease only while it still holds this run's token (KEYS: lease; ARGV: token, lease_s).
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

#: Whether the keys of version ARGV[1] may be deleted (KEYS: pointer, loading set, lease; ARGV: version, token
#: of the caller's own lease or ''): 0 it serves (dropped from the registry, never delete), -1 another run
#: holds its lease, 1 delete (the caller's own lease is dropped first; once the lease is gone no swap to the
#: version can succeed). The caller removes the version from the registry after deleting its keys.
_MAY_DELETE = """
local cur = redis.call('GET', KEYS[1])
if cur and cjson.decode(cur)['version'] == ARGV[1] then
  redis.call('SREM', KEYS[2], ARGV[1])
  if ARGV[2] ~= '' and redis.call('GET', KEYS[3]) == ARGV[2] then redis.call('DEL', KEYS[3]) end
  return 0
end
local lease = redis.call('GET', KEYS[3])
if lease and lease ~= ARGV[2] then
  return -1
end
redis.call('DEL', KEYS[3])
return 1
"""


class LoadingLease:
    """Registers ``version`` as loading and renews its lease from a daemon thread until closed.

    The lease key holds a random token; renewal extends it only while it still holds that token, so a
    lease that lapsed (the run paused longer than ``lease_s``) stays lapsed: :attr:`lost` is set, and the
    swap refuses to publish (:class:`LeaseLost`). ``close(keep=False)`` (the run failed or did not publish)
    deletes the version's keys as well, unless the pointer names the version after all (a swap that Redis
    applied but whose reply was lost).

    Args:
        client: Redis client.
        version: the version being loaded.
        ttl_s: TTL of the version's keys; the set :data:`LOADING_KEY` gets it too (docs/design.md §7: every
            key expires), so a run killed while loading leaves nothing without a TTL, even if no run follows.
        lease_s: lifetime of the lease key, renewed every ``lease_s / 4`` seconds.
    """

    def __init__(self, client: AdminClient, version: str, ttl_s: int, lease_s: int = LEASE_S) -> None:
        self.client, self.version, self.lease_s = client, version, lease_s
        self.token = uuid.uuid4().hex
        self.lost = threading.Event()
        self._stop = threading.Event()
        # The lease first: a version is never in the registry without its lease until that lapses.
        client.set(lease_key(version), self.token, ex=lease_s)
        client.sadd(LOADING_KEY, version)
        client.expire(LOADING_KEY, ttl_s)
        self._thread = threading.Thread(target=self._renew, name=f"lease-{version}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                if not self.client.eval(_RENEW, 1, lease_key(self.version), self.token, self.lease_s):
                    self.lost.set()
                    return
            except redis.RedisError:  # the load itself will fail loudly if Redis is gone
                continue

    def check(self) -> None:
        """Raise :class:`LeaseLost` if renewal found the lease lapsed (no round trip)."""
        if self.lost.is_set():
            raise LeaseLost(self.version)

    def close(self, keep: bool) -> None:
        """Stop renewing; forget the version (and delete its keys unless ``keep``: it was published)."""
        self._stop.set()
        self._thread.join(5)
        if keep:
            self.client.delete(lease_key(self.version))
        elif _may_delete(self.client, self.version, self.token) == 1:
            expire_version(self.client, self.version, 0)
        self.client.srem(LOADING_KEY, self.version)


def _may_delete(client: AdminClient, version: str, token: str) -> int:
    keys = (POINTER_KEY, LOADING_KEY, lease_key(version))
    return int(client.eval(_MAY_DELETE, len(keys), *keys, version, token))


def remove_abandoned(client: AdminClient) -> list[str]:
    """Delete the keys of every loading version whose run is gone (lease lapsed) and that is not serving
    (on a Redis Cluster, :func:`expire_version` scans every primary). Each version is judged in one script
    with the pointer and its lease (the module docstring says why).

    Returns:
        The versions removed.
    """
    removed = []
    for raw in client.smembers(LOADING_KEY):
        version = raw.decode() if isinstance(raw, bytes) else str(raw)
        verdict = _may_delete(client, version, "")
        if verdict < 0:
            continue  # another run is loading it right now
        if verdict == 1:
            expire_version(client, version, 0)
            removed.append(version)
        client.srem(LOADING_KEY, version)
    return removed


def version_pattern(version: str) -> str:
    """SCAN pattern of every key of one batch version."""
    return f"{PREFIX}:*:b:{version}"


def tile_fields(table: pa.Table, key: str) -> tuple[pa.Array, pa.Array, pa.Array]:
    """``(entity, field, value)`` of every hash field of the tiles in ``table``, grouped by entity: per
    tile measure its packed field (:func:`fstore.redis.layout.packed_arrays` with the variance state),
    then its distinct members as ``<size_s>:<start_s>:<measure>:d:<member>`` = ``1``
    (:func:`fstore.redis.layout.distinct_field`, vectorised). Arrow compute, no Python loop per tile."""
    order = [(key, "ascending"), ("size", "ascending"), ("tile_start", "ascending"), ("measure", "ascending")]
    table = table.take(pc.sort_indices(table, order))
    size, start, measure, count, total, lo, hi = (
        table.column(c).combine_chunks() for c in ("size", "tile_start", "measure", "count", "sum", "min", "max")
    )
    m2 = table.column("m2").combine_chunks() if "m2" in table.column_names else None  # older tiles: none
    fields, values = packed_arrays(size, start, measure, count, total, lo, hi, m2=m2)
    entities = table.column(key).combine_chunks()
    if "distinct" not in table.column_names:  # tiles written before the distinct members existed
        return entities, fields, values
    lists = table.column("distinct").combine_chunks()
    members = pc.list_flatten(lists)
    if len(members) == 0:
        return entities, fields, values
    owner = pc.list_parent_indices(lists)
    extra = pc.binary_join_element_wise(fields.take(owner), pa.scalar(DISTINCT), members, ":")
    rows = pa.table(
        {
            "entity": pa.concat_arrays([entities, entities.take(owner)]),
            "row": pa.concat_arrays([pa.array(np.arange(len(fields))), owner.cast(pa.int64())]),
            "field": pa.concat_arrays([fields, extra]),
            "value": pa.concat_arrays([values, pa.repeat(pa.scalar("1"), len(extra))]),
        }
    )
    # Tile rows are sorted by entity, so (row, field) keeps each entity's fields together and in order.
    rows = rows.take(pc.sort_indices(rows, [("row", "ascending"), ("field", "ascending")]))
    return (
        rows.column("entity").combine_chunks(),
        rows.column("field").combine_chunks(),
        rows.column("value").combine_chunks(),
    )


def load_tiles(
    table: pa.Table, view: View, version: str, client: AdminClient, ttl_s: int, chunk: int
) -> tuple[int, int]:
    """Write tiles (the ``tiles_<view>`` columns) into Redis under ``version``, pipelined in chunks.

    ``table`` must hold each of its entities' tiles completely (one HSET per entity carries all its
    fields, :func:`tile_fields`). Used by the Spark job per partition (:func:`load_view`) and by
    ``fstore repair`` on tiles read back from Delta.

    Returns:
        (keys written, fields written).
    """
    if table.num_rows == 0:
        return 0, 0
    view_name = view.name
    entities, fields, values = tile_fields(table, view.entity.join_key)
    n = len(fields)
    args = np.empty(2 * n, dtype=object)
    args[0::2] = fields.to_numpy(zero_copy_only=False)
    args[1::2] = values.to_numpy(zero_copy_only=False)
    bounds = [
        0,
        *(np.flatnonzero(pc.not_equal(entities[1:], entities[:-1]).to_numpy(zero_copy_only=False)) + 1).tolist(),
        n,
    ]
    names = entities.take(bounds[:-1]).to_pylist()
    pipe = client.pipeline(transaction=False)
    pending = pending_fields = 0
    for entity, (lo, hi) in zip(names, itertools.pairwise(bounds), strict=True):
        bkey = batch_key(view_name, entity, version)
        pipe.execute_command("HSET", bkey, *args[2 * lo : 2 * hi].tolist())
        pipe.expire(bkey, ttl_s)
        pending, pending_fields = pending + 1, pending_fields + hi - lo
        if pending >= chunk or pending_fields >= _PIPELINE_FIELDS:
            pipe.execute()
            pending = pending_fields = 0
    pipe.execute()
    return len(bounds) - 1, n


def load_view(
    tiles_df: DataFrame, view: View, version: str, redis_url: str, ttl_s: int, chunk: int, cluster: bool = False
) -> tuple[int, int]:
    """Write a view's tiles into Redis under ``version`` from the executors (:func:`load_tiles` per
    partition). ``tiles_df`` must hold each entity's tiles in one partition (see
    :func:`jobs.batch.compute.tiles`). ``cluster``: ``redis_url`` is a node of a Redis Cluster (each
    executor's pipelines are then split per node by redis-py's ``RedisCluster``).

    Returns:
        (keys written, fields written).
    """

    def load(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        parts = [b for b in batches if b.num_rows]
        if not parts:
            return
        client = admin_client(redis_url, cluster)
        try:
            table = lists_from_json(pa.Table.from_batches(parts), tile_schema(view))
            keys, fields = load_tiles(table, view, version, client, ttl_s, chunk)
        finally:
            client.close()
        yield pa.RecordBatch.from_pydict({"keys": [keys], "fields": [fields]})

    schema = T.StructType([T.StructField("keys", T.LongType()), T.StructField("fields", T.LongType())])
    rows = tiles_df.mapInArrow(load, schema).collect()
    return sum(r["keys"] for r in rows), sum(r["fields"] for r in rows)


@dataclass(frozen=True)
class PublishResult:
    """Outcome of :func:`publish`.

    ``superseded_by``: the swap was applied, its reply lost, and another run's swap replaced it before the
    retry (that run retires this version); the version this one replaced is then unknown and keeps its TTL.
    """

    published: bool
    previous: BatchPointer | None
    retired_keys: int
    superseded_by: BatchPointer | None = None


#: Compare-and-set of the pointer in one script (one slot on a Redis Cluster, where WATCH/MULTI is not
#: portable). KEYS: pointer, loading set, lease of the version. ARGV: new pointer JSON, its cutover, '1' to
#: allow an older cutover, TTL, version, lease token ('' = no lease to check: ``fstore repair``).
#: Returns {status, raw}: {1, replaced pointer or ''} published (the pointer JSON gets ``"previous"``, the
#: replaced {version, cutover}; a retry of an applied swap returns that record); {0, serving pointer} a
#: later cutover serves; {2, serving pointer} applied, then replaced by another run; {3, ''} the lease is lost.
#: Publishing drops the version from the loading set and its lease in the same step.
#: Cutovers are epoch microseconds, below 2^53, so Lua's doubles hold and print ('%.0f') them exactly.
_SWAP_POINTER = """
local function ident(p)
  return '{"version":' .. cjson.encode(p['version']) .. ',"cutover":' .. string.format('%.0f', p['cutover']) .. '}'
end
local cur = redis.call('GET', KEYS[1])
local p = cur and cjson.decode(cur)
if p and p['version'] == ARGV[5] then
  redis.call('SET', KEYS[1], cur, 'EX', ARGV[4])
  redis.call('SREM', KEYS[2], ARGV[5])
  redis.call('DEL', KEYS[3])
  if type(p['previous']) == 'table' then return {1, ident(p['previous'])} end
  return {1, ''}
end
if ARGV[6] ~= '' and p and type(p['previous']) == 'table' and p['previous']['version'] == ARGV[5] then
  return {2, cur}
end
if ARGV[6] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[6] then
  return {3, ''}
end
if p and ARGV[3] ~= '1' and p['cutover'] > tonumber(ARGV[2]) then
  return {0, cur}
end
local new, prev = ARGV[1], ''
if p then
  prev = ident(p)
  new = string.sub(ARGV[1], 1, -2) .. ',"previous":' .. prev .. '}'
end
redis.call('SET', KEYS[1], new, 'EX', ARGV[4])
redis.call('SREM', KEYS[2], ARGV[5])
redis.call('DEL', KEYS[3])
return {1, prev}
"""


def publish(
    client: AdminClient,
    pointer: BatchPointer,
    ttl_s: int,
    grace_s: int,
    allow_older: bool = False,
    lease: LoadingLease | None = None,
) -> PublishResult:
    """Make ``pointer.version`` the serving batch view in one atomic step, then retire the previous one.

    A swap whose reply is lost (``ConnectionError``/``TimeoutError``) is sent again, up to
    :data:`SWAP_ATTEMPTS` times in all (redis-py may also retry it on its own): the script is idempotent and
    a retry of an applied swap returns the version it replaced, which alone gets the grace TTL.

    Args:
        client: Redis client.
        pointer: the new version and its cutover.
        ttl_s: TTL of the pointer (the same as the version's keys, so both lapse together).
        grace_s: remaining lifetime of the previous version's keys.
        allow_older: publish even if the serving view has a later cutover (a backfill normally must not).
        lease: the run's :class:`LoadingLease` on ``pointer.version``; the swap happens only while it holds.

    Returns:
        Whether the pointer moved, the previous pointer and how many old keys got the grace TTL.

    Raises:
        LeaseLost: ``lease`` lapsed; nothing was published.
    """
    if lease is not None:
        lease.check()
    keys = (POINTER_KEY, LOADING_KEY, lease_key(pointer.version))
    args = (pointer.dumps(), pointer.cutover, int(allow_older), ttl_s, pointer.version, lease.token if lease else "")
    for attempt in range(1, SWAP_ATTEMPTS + 1):
        try:
            status, raw = client.eval(_SWAP_POINTER, len(keys), *keys, *args)
            break
        except (redis.ConnectionError, redis.TimeoutError):
            if attempt == SWAP_ATTEMPTS:
                raise
            time.sleep(0.2 * 2 ** (attempt - 1))
    if status == 3 and attempt > 1:
        # The lease is gone after a lost reply: the swap was applied (it drops the lease) and then replaced by
        # more than one later run, whose pointer no longer records this version; a lease cannot lapse in the
        # seconds of these retries. Published and superseded: its keys keep their TTL, never deleted here.
        return PublishResult(True, None, 0, superseded_by=BatchPointer.loads(client.get(POINTER_KEY)))
    if status == 3:
        if lease is not None:
            lease.lost.set()
        raise LeaseLost(pointer.version)
    if status == 2:
        return PublishResult(True, None, 0, superseded_by=BatchPointer.loads(raw))
    previous = BatchPointer.loads(raw or None)
    if not status:
        return PublishResult(False, previous, 0)
    retired = 0
    if previous is not None and previous.version != pointer.version:
        retired = expire_version(client, previous.version, grace_s)
    return PublishResult(True, previous, retired)


def expire_version(client: AdminClient, version: str, ttl_s: int) -> int:
    """Lower the TTL of every key of ``version`` to ``ttl_s`` (0 deletes them); returns the key count.

    The keys are found with ``SCAN``; a ``RedisCluster`` client's ``scan_iter`` walks every primary and its
    pipeline sends each command to its key's node."""
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


def current(client: AdminClient) -> BatchPointer | None:
    """The serving batch pointer, if any."""
    return BatchPointer.loads(client.get(POINTER_KEY))
