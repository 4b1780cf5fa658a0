"""Key and field layout of the online views in Redis (docs/design.md §4, §7, §8) — pure, no client imports.

Every layer that touches Redis (stream job, batch loader, serving layer, Feast online store) builds its
keys here, so they cannot disagree.

Keys (``{...}`` is a Redis Cluster hash tag: all keys of one entity of one view live in one slot)::

    fs:{<view>|<entity>}:s:<yyyymmdd>    speed tiles whose start falls on that UTC day      (hash)
    fs:{<view>|<entity>}:b:<version>     batch-view tiles [C - longest window - hop, C)      (hash)
    fs:{<view>|<entity>}:m:<generation>  de-duplication markers of the stream job: event_id → 1 (hash)
    fs:{<view>|<entity>}:mv:<generation> future events moved from their field into the tiles  (hash)
    fs:{claim:<b>}:c:<generation>        event_id claims of the stream job: event_id → the winning copy's
                                         payload hash, in one of CLAIM_BUCKETS buckets by the id  (hash)
    fs:batch:current                     the serving batch view: JSON {version, cutover, ...} (string)

Fields of a tile hash come in two forms, and readers (:func:`parse_tiles`) accept both:

* per statistic, ``<size_s>:<start_s>:<measure>:<stat>`` with ``stat`` one of ``c`` (count, an integer),
  ``s`` (sum), ``n`` (min), ``x`` (max), ``v`` (m2, the variance state of
  :class:`fstore.core.tile_state.Acc`; absent = 0); sizes and starts in seconds since the epoch. Separate
  fields let the stream job use HINCRBY / HINCRBYFLOAT and a compare for min/max on speed tiles.
* packed, ``<size_s>:<start_s>:<measure>`` whose value is ``"<count> <sum> <min> <max> [<m2>]"`` (floats in
  shortest round-trip form, ``None`` for an absent min/max; a value without m2 has m2 = 0). Complete tiles
  that are written once (the batch view) use it: a quarter of the fields to write and read.

A measure that a count_distinct reads also keeps its distinct members, one field each in both forms:
``<size_s>:<start_s>:<measure>:d:<member>`` = ``1`` (``member`` as :func:`fstore.core.view_tiles_frame.member`
gives it; it may itself contain ``:``). Adding a member twice is harmless, so the stream job sets them
with HSET.

A speed hash may also hold the exact fields of future-stamped events (docs/design.md §5), one per event,
``f:<event_time µs>:<event_id>`` = a JSON object ``{"<measure>": <value>, ...}`` (numbers, or strings for
a measure whose value is text; older writers wrote ``"<measure>=<value> ..."``, still read) (:func:`future_field`,
:func:`parse_future`): readers count such an event only once ``as_of`` passes its event_time. They are
not tiles: :func:`parse_tiles` ignores them.

Floats always round-trip exactly (``repr`` or an equivalent shortest form), so a reader gets back the
bit-identical partial that was written; readers merge tiles with :class:`fstore.core.aggregates.Partial`.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from fstore.core.aggregates import Partial
from fstore.core.tile_state import Acc
from fstore.core.timeutil import DAY, SECOND, iso, to_date

if TYPE_CHECKING:
    import pyarrow as pa

PREFIX = "fs"
POINTER_KEY = f"{PREFIX}:batch:current"
STATS = ("c", "s", "n", "x")
#: Stat of the variance state (m2) in the per-statistic form; distinct members use :data:`DISTINCT`.
M2_STAT = "v"
DISTINCT = "d"


def entity_tag(view: str, entity: str) -> str:
    """The hash tag of one entity of one view."""
    return f"{{{view}|{entity}}}"


#: Buckets of the stream job's event_id claims (:func:`claim_key`): one hash slot each on Redis Cluster.
CLAIM_BUCKETS = 16


def claim_bucket(event_id: str) -> int:
    """The claims bucket of an event_id (the same in every process: CRC-32 of its UTF-8 bytes)."""
    return zlib.crc32(event_id.encode()) % CLAIM_BUCKETS


def claim_key(bucket: int, generation: int) -> str:
    """Hash of the event_id claims of one bucket made in one marker generation (:func:`marker_key`): field
    event_id, value the payload hash of the copy that claimed it first (:mod:`jobs.stream.claims`)."""
    return f"{PREFIX}:{{claim:{bucket:02d}}}:c:{generation}"


def speed_key(view: str, entity: str, tile_start: int) -> str:
    """Speed-tile hash of the UTC day containing ``tile_start`` (epoch microseconds)."""
    return f"{PREFIX}:{entity_tag(view, entity)}:s:{_day_tag(tile_start // DAY)}"


@lru_cache(maxsize=1024)
def _day_tag(day: int) -> str:
    """``yyyymmdd`` of UTC day number ``day`` (memoised: readers build two speed keys per entity read)."""
    return to_date(day * DAY).strftime("%Y%m%d")


def batch_key(view: str, entity: str, version: str) -> str:
    """Batch-view tile hash of one batch version."""
    return f"{PREFIX}:{entity_tag(view, entity)}:b:{version}"


def marker_key(view: str, entity: str, generation: int, moved: bool = False) -> str:
    """Hash of the de-duplication markers (fields = event_ids) one entity of one view got in one marker
    generation (``moved``: of the future events moved into its tiles). Generation ``g`` covers the
    processing-clock seconds ``[g·T, (g+1)·T)`` for the marker TTL ``T`` and expires at ``(g+2)·T``, so a
    marker lives between T and 2T (:mod:`jobs.stream.speed_lua`)."""
    return f"{PREFIX}:{entity_tag(view, entity)}:{'mv' if moved else 'm'}:{generation}"


#: Name prefix of the exact fields of future-stamped events in a speed hash.
FUTURE_PREFIX = "f:"


def future_field(event_time: int, event_id: str) -> str:
    """Speed-hash field of one future-stamped event: ``f:<event_time µs>:<event_id>``."""
    return f"{FUTURE_PREFIX}{event_time}:{event_id}"


def future_value(measures: Mapping[str, float | str]) -> str:
    """Value of a future-event field: ``{"<measure>": <value>, ...}`` (JSON floats are exact ``repr``)."""
    return json.dumps(dict(measures), separators=(",", ":"))


def parse_future(name: bytes | str, value: bytes | str) -> tuple[int, dict[str, float | str]] | None:
    """``(event_time, {measure: value})`` of a future-event field; ``None`` for any other field or a
    malformed one. Reads both the JSON form and the older ``"<measure>=<value> ..."`` form."""
    key = name.decode() if isinstance(name, bytes) else name
    if not key.startswith(FUTURE_PREFIX):
        return None
    text = value.decode() if isinstance(value, bytes) else value
    try:
        t = int(key[len(FUTURE_PREFIX) :].split(":", 1)[0])
        out: dict[str, float | str] = {}
        if text.startswith("{"):
            obj = json.loads(text)
            if not isinstance(obj, dict):
                return None
            for m, x in obj.items():
                if isinstance(x, bool) or not isinstance(x, int | float | str):
                    return None
                out[str(m)] = float(x) if isinstance(x, int | float) else x
            return t, out
        for item in text.split():
            m, _, x = item.partition("=")
            out[m] = float(x)
    except ValueError:
        return None
    return t, out


def field(size: int, start: int, measure: str, stat: str) -> str:
    """Hash field of one statistic of one measure of one tile (size, start in microseconds)."""
    return f"{size // SECOND}:{start // SECOND}:{measure}:{stat}"


def partial_fields(size: int, start: int, measure: str, p: Partial) -> dict[str, str]:
    """The four fields of a partial (for HSET of complete tiles, e.g. the batch view)."""
    return {
        field(size, start, measure, "c"): str(p.count),
        field(size, start, measure, "s"): repr(p.total),
        field(size, start, measure, "n"): repr(p.minimum),
        field(size, start, measure, "x"): repr(p.maximum),
    }


def distinct_field(size: int, start: int, measure: str, member: str) -> str:
    """Hash field of one distinct member of one measure of one tile (value ``1``)."""
    return f"{size // SECOND}:{start // SECOND}:{measure}:{DISTINCT}:{member}"


def acc_fields(size: int, start: int, measure: str, acc: Acc) -> dict[str, str]:
    """The fields of a complete partial in the packed form, with its distinct members (the batch view)."""
    out = {packed_field(size, start, measure): acc_value(acc)}
    for m in sorted(str(x) for x in acc.distinct or ()):
        out[distinct_field(size, start, measure, m)] = "1"
    return out


def acc_value(acc: Acc) -> str:
    """Packed value of a partial with its variance state: ``"<count> <sum> <min> <max> <m2>"``."""
    return f"{acc.count} {acc.total!r} {acc.minimum!r} {acc.maximum!r} {acc.m2!r}"


def packed_field(size: int, start: int, measure: str) -> str:
    """Packed hash field of one measure of one tile (size, start in microseconds)."""
    return f"{size // SECOND}:{start // SECOND}:{measure}"


def packed_value(p: Partial) -> str:
    """Value of a packed field: ``"<count> <sum> <min> <max>"`` with exact (repr) floats."""
    return f"{p.count} {p.total!r} {p.minimum!r} {p.maximum!r}"


def packed_fields(size: int, start: int, measure: str, p: Partial) -> dict[str, str]:
    """The one packed field of a partial (for HSET of complete tiles, e.g. the batch view)."""
    return {packed_field(size, start, measure): packed_value(p)}


def packed_arrays(
    size: pa.Array,
    start: pa.Array,
    measure: pa.Array,
    count: pa.Array,
    total: pa.Array,
    minimum: pa.Array,
    maximum: pa.Array,
    m2: pa.Array | None = None,
) -> tuple[pa.Array, pa.Array]:
    """Vectorised :func:`packed_field` / :func:`packed_value` over Arrow columns (one row per tile measure).

    Args:
        size: tile sizes, int64 epoch microseconds.
        start: tile starts, int64 epoch microseconds.
        measure: measure names (string).
        count: counts (int64).
        total: sums (float64).
        minimum: minima (float64, null allowed).
        maximum: maxima (float64, null allowed).
        m2: variance states (float64), appended as a fifth number when given.

    Returns:
        (fields, values) as string arrays. Arrow formats floats in their shortest round-trip form (what
        ``repr`` gives, up to notation such as ``7`` for ``7.0``), so :func:`parse_tiles` reads back the
        exact values.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    def text(a: pa.Array) -> pa.Array:
        return pc.fill_null(pc.cast(a, pa.string()), "None")

    def seconds(a: pa.Array) -> pa.Array:
        return pc.cast(pc.divide(pc.cast(a, pa.int64()), SECOND), pa.string())

    fields = pc.binary_join_element_wise(seconds(size), seconds(start), pc.cast(measure, pa.string()), ":")
    parts = [text(count), text(total), text(minimum), text(maximum)] + ([] if m2 is None else [text(m2)])
    values = pc.binary_join_element_wise(*parts, " ")
    return fields, values


def _number(text: str) -> float | None:
    return None if text == "None" else float(text)


def parse_tiles(
    raw: Mapping[bytes, bytes] | Mapping[str, str] | Mapping[bytes | str, bytes | str],
) -> dict[tuple[int, int], dict[str, Partial]]:
    """Decode an HGETALL result into ``{(size_us, start_us): {measure: Partial}}``.

    Accepts both field forms (module docstring), also mixed in one hash. Fields of other shapes (future
    events' fields among them) are ignored; a tile with a count of 0 is dropped.
    """
    acc: dict[tuple[int, int, str], list[float | None]] = {}
    for k, v in raw.items():
        key = k.decode() if isinstance(k, bytes) else k
        if key.startswith(FUTURE_PREFIX):
            continue
        parts = key.split(":")
        text = v.decode() if isinstance(v, bytes) else v
        if len(parts) == 3:
            values = text.split(" ")
            if len(values) not in (4, 5):
                continue
            acc[(int(parts[0]) * SECOND, int(parts[1]) * SECOND, parts[2])] = [_number(t) for t in values[:4]]
            continue
        if len(parts) != 4 or parts[3] not in STATS:
            continue
        stats = acc.setdefault((int(parts[0]) * SECOND, int(parts[1]) * SECOND, parts[2]), [0, 0.0, None, None])
        stats[STATS.index(parts[3])] = _number(text)
    out: dict[tuple[int, int], dict[str, Partial]] = {}
    for (size, start, measure), (c, s, n, x) in acc.items():
        if c:
            out.setdefault((size, start), {})[measure] = Partial(int(c), 0.0 if s is None else float(s), n, x)
    return out


def parse_states(
    raw: Mapping[bytes, bytes] | Mapping[str, str] | Mapping[bytes | str, bytes | str],
) -> dict[tuple[int, int], dict[str, Acc]]:
    """Decode an HGETALL result into ``{(size_us, start_us): {measure: Acc}}`` with every state: both
    field forms (also mixed), the variance state and the distinct members. Future events' fields and
    fields of other shapes are ignored; a tile measure with a count of 0 is dropped."""
    nums: dict[tuple[int, int, str], list[float | None]] = {}
    members: dict[tuple[int, int, str], set[Hashable]] = {}
    for k, v in raw.items():
        key = k.decode() if isinstance(k, bytes) else k
        if key.startswith(FUTURE_PREFIX):
            continue
        parts = key.split(":", 4)
        try:
            if len(parts) == 5 and parts[3] == DISTINCT:
                members.setdefault((int(parts[0]) * SECOND, int(parts[1]) * SECOND, parts[2]), set()).add(parts[4])
                continue
            text = v.decode() if isinstance(v, bytes) else v
            if len(parts) == 3:
                values = text.split(" ")
                if len(values) not in (4, 5):
                    continue
                got = [_number(t) for t in values] + ([0.0] if len(values) == 4 else [])
                nums[(int(parts[0]) * SECOND, int(parts[1]) * SECOND, parts[2])] = got
                continue
            if len(parts) != 4 or (parts[3] not in STATS and parts[3] != M2_STAT):
                continue
            tkey = (int(parts[0]) * SECOND, int(parts[1]) * SECOND, parts[2])
            stats = nums.setdefault(tkey, [0, 0.0, None, None, 0.0])
            stats[(*STATS, M2_STAT).index(parts[3])] = _number(text)
        except ValueError:  # a field of another shape, or a malformed number
            continue
    out: dict[tuple[int, int], dict[str, Acc]] = {}
    for tkey, (c, s, n, x, m2) in nums.items():
        if c:
            size, start, measure = tkey
            out.setdefault((size, start), {})[measure] = Acc(
                int(c), 0.0 if s is None else float(s), n, x, 0.0 if m2 is None else float(m2), members.get(tkey)
            )
    return out


@dataclass(frozen=True)
class BatchPointer:
    """The batch view that serves: its version and cutover C (epoch microseconds)."""

    version: str
    cutover: int

    def dumps(self) -> str:
        """JSON for :data:`POINTER_KEY`."""
        return json.dumps({"version": self.version, "cutover": self.cutover, "cutover_iso": iso(self.cutover)})

    @classmethod
    def loads(cls, raw: bytes | str | None) -> BatchPointer | None:
        """Parse :data:`POINTER_KEY`; ``None`` when no batch view was ever published."""
        if raw is None:
            return None
        obj = json.loads(raw)
        return cls(str(obj["version"]), int(obj["cutover"]))


#: Written by the stream worker after committing tiles (at most once a second): how fresh the speed view is.
HEARTBEAT_KEY = f"{PREFIX}:stream:heartbeat"

#: Set by a stream worker that found Redis lost writes it had made (``jobs.stream.lost_writes``): JSON
#: ``{"detected_at": <epoch us>, "message": ...}``; GET /health is degraded while it exists; ``fstore repair``
#: (or the FLUSHALL before it) removes it.
LOST_WRITES_KEY = f"{PREFIX}:redis:lost_writes"
LOST_WRITES_TTL_S = 7 * 86_400


def witness_key(worker: str) -> str:
    """One stream worker process's write witness (:mod:`jobs.stream.lost_writes`)."""
    return f"{PREFIX}:stream:witness:{worker}"


@dataclass(frozen=True)
class Heartbeat:
    """The speed layer's last tile commit: when it happened and the newest event time it held (epoch us).

    ``log_reset_at`` is the last time the worker found its Kafka log reset (topic re-created, broker log
    lost) and went back to its start; ``replaying`` says it has not yet caught up with what the new log held
    then: the speed view may be incomplete until it has (GET /health: degraded). ``plan_error`` says why
    the worker runs an older plan than the applied record (which changed but could not be read; GET /health:
    degraded).
    """

    committed_at: int
    newest_event_time: int | None
    log_reset_at: int | None = None
    replaying: bool = False
    plan_error: str | None = None

    def dumps(self) -> str:
        """JSON for :data:`HEARTBEAT_KEY`."""
        return json.dumps(
            {
                "committed_at": self.committed_at,
                "newest_event_time": self.newest_event_time,
                "log_reset_at": self.log_reset_at,
                "replaying": self.replaying,
                "plan_error": self.plan_error,
            }
        )

    @classmethod
    def loads(cls, raw: bytes | str | None) -> Heartbeat | None:
        """Parse :data:`HEARTBEAT_KEY`; ``None`` when no worker ever committed (or it expired)."""
        if raw is None:
            return None
        obj = json.loads(raw)
        newest, reset = obj.get("newest_event_time"), obj.get("log_reset_at")
        return cls(
            int(obj["committed_at"]),
            None if newest is None else int(newest),
            None if reset is None else int(reset),
            bool(obj.get("replaying", False)),
            None if obj.get("plan_error") is None else str(obj["plan_error"]),
        )
