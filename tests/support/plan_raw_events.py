"""``raw_events`` of any compiled plan written to a real Delta table, and the Feast repository that reads it.

Rows are dicts in the plan's field names (the timestamp field in UTC epoch µs); each stored copy carries
``ingested_at`` and ``payload_hash`` as the raw sink writes them, partitioned by ``event_date``.
:func:`first_ingested` is the brute force of the de-duplication rule (first ingested copy wins, the smaller
hash breaking ties) over everything stored.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import write_deltalake

from fstore.core.event_schema import EventSchema
from fstore.delta import raw_log
from tests.support.pit import TS, arrow_schema

Row = dict[str, Any]
Copy = tuple[int, str, Row]  # ingested_at µs, payload_hash, event


def append(uri: str, schema: EventSchema, copies: Sequence[Copy], leave_out: Sequence[str] = ()) -> None:
    """Append stored copies (one Delta commit); ``leave_out``: fields this write does not have (an older
    writer), added to the table later by schema evolution."""
    fields = [f for f in arrow_schema(schema) if f.name not in leave_out]
    cols: dict[str, pa.Array] = {}
    for f in fields:
        values = [c[2].get(f.name) for c in copies]
        cols[f.name] = pa.array(values, pa.int64()).cast(TS) if f.type == TS else pa.array(values, f.type)
    cols["ingested_at"] = pa.array([c[0] for c in copies], pa.int64()).cast(TS)
    cols["payload_hash"] = pa.array([c[1] for c in copies], pa.string())
    cols["event_date"] = pc.cast(cols[schema.timestamp_field], pa.date32())
    table = pa.table(cols)
    existing = raw_log.open_table(uri)
    if existing is not None:  # the types the table has (another writer chose them) win
        have = pa.schema(existing.schema().to_arrow())
        table = table.cast(
            pa.schema([have.field(n) if n in have.names else table.field(n) for n in table.column_names])
        )
    write_deltalake(uri, table, mode="append", partition_by=["event_date"], schema_mode="merge")


def first_ingested(copies: Sequence[Copy], id_field: str) -> list[Row]:
    """The winning copy of each event id: smallest ``(ingested_at, payload_hash)``."""
    best: dict[str, Copy] = {}
    for c in copies:
        eid = c[2][id_field]
        if eid not in best or (c[0], c[1]) < (best[eid][0], best[eid][1]):
            best[eid] = c
    return [c[2] for c in best.values()]


def feast_repo(source: Path, dest: Path, data_dir: Path, engine: str = "local") -> Path:
    """A copy of the Feast repository ``source`` whose offline store is fstore's over ``data_dir``, applied."""
    from feast import FeatureStore

    from fstore.feast.compile import load_repo

    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("data", "__pycache__"))
    yaml = (dest / "feature_store.yaml").read_text()
    yaml += (
        "offline_store:\n  type: fstore.feast.offline_store.FstoreOfflineStore\n"
        f"  data_dir: {data_dir}\n  engine: {engine}\n"
    )
    (dest / "feature_store.yaml").write_text(yaml)
    objects = load_repo(dest)
    views = [*objects.stream_feature_views, *objects.feature_views]
    sources = {id(s): s for v in views for s in (v.stream_source, v.batch_source) if s is not None}
    FeatureStore(repo_path=str(dest)).apply([*objects.entities, *sources.values(), *views])
    return dest
