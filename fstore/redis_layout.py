"""Key and field layout of the online views in Redis (DESIGN.md §4, §7, §8) — pure, no client imports.

Every layer that touches Redis (stream job, batch loader, serving layer, Feast online store) builds its
keys here, so they cannot disagree.

Keys (``{...}`` is a Redis Cluster hash tag: all keys of one entity of one view live in one slot)::

    fs:{<view>|<entity>}:s:<yyyymmdd>    speed tiles whose start falls on that UTC day      (hash)
    fs:{<view>|<entity>}:b:<version>     batch-view tiles [C - longest window - hop, C)      (hash)
    fs:{<view>|<entity>}:seen:<event_id> de-duplication marker of the stream job            (string)
    fs:batch:current                     the serving batch view: JSON {version, cutover, ...} (string)

Fields of a tile hash: ``<size_s>:<start_s>:<measure>:<stat>`` with ``stat`` one of ``c`` (count, an
integer), ``s`` (sum), ``n`` (min), ``x`` (max); sizes and starts in seconds since the epoch. Keeping
the four statistics in separate fields lets the stream job use HINCRBY / HINCRBYFLOAT and a compare for
min/max, and lets readers merge tiles with :class:`fstore.core.aggregates.Partial`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from fstore.core.aggregates import Partial
from fstore.core.timeutil import SECOND, iso, to_date

PREFIX = "fs"
POINTER_KEY = f"{PREFIX}:batch:current"
STATS = ("c", "s", "n", "x")


def entity_tag(view: str, entity: str) -> str:
    """The hash tag of one entity of one view."""
    return f"{{{view}|{entity}}}"


def speed_key(view: str, entity: str, tile_start: int) -> str:
    """Speed-tile hash of the UTC day containing ``tile_start`` (epoch microseconds)."""
    return f"{PREFIX}:{entity_tag(view, entity)}:s:{to_date(tile_start).strftime('%Y%m%d')}"


def batch_key(view: str, entity: str, version: str) -> str:
    """Batch-view tile hash of one batch version."""
    return f"{PREFIX}:{entity_tag(view, entity)}:b:{version}"


def seen_key(view: str, entity: str, event_id: str) -> str:
    """De-duplication marker of an event for one entity of one view."""
    return f"{PREFIX}:{entity_tag(view, entity)}:seen:{event_id}"


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


def parse_tiles(raw: Mapping[bytes | str, bytes | str]) -> dict[tuple[int, int], dict[str, Partial]]:
    """Decode an HGETALL result into ``{(size_us, start_us): {measure: Partial}}``.

    Fields of other shapes are ignored; a tile with a count of 0 is dropped.
    """
    acc: dict[tuple[int, int, str], list[float | None]] = {}
    for k, v in raw.items():
        key = k.decode() if isinstance(k, bytes) else k
        parts = key.split(":")
        if len(parts) != 4 or parts[3] not in STATS:
            continue
        stats = acc.setdefault((int(parts[0]) * SECOND, int(parts[1]) * SECOND, parts[2]), [0, 0.0, None, None])
        text = v.decode() if isinstance(v, bytes) else v
        stats[STATS.index(parts[3])] = None if text == "None" else float(text)
    out: dict[tuple[int, int], dict[str, Partial]] = {}
    for (size, start, measure), (c, s, n, x) in acc.items():
        if c:
            out.setdefault((size, start), {})[measure] = Partial(int(c), float(s or 0.0), n, x)
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
