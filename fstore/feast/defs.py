"""Feast objects generated from the core feature definitions (the Feast adapter).

``feature_repo/features.py`` calls :func:`feast_objects`, so ``feast apply`` registers exactly the
entities, feature views and feature names of :mod:`fstore.core.features` — no feature list is typed
twice. Feature views read the daily feature snapshots (Delta tables) that the batch job writes under
``$FSTORE_DATA_DIR/feature_snapshots/<view>``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.data_format import DeltaFormat
from feast.types import Float64, Int64

from fstore.core.features import ENTITIES, VIEWS

_DTYPES = {"int64": Int64, "float64": Float64}
#: Daily snapshots are taken at each cutover; a snapshot row answers for the day that follows it.
SNAPSHOT_TTL = timedelta(days=1)


def _py_name(name: str) -> str:
    return name.replace("-", "_").replace(".", "_")


def feast_objects(data_dir: str) -> dict[str, Any]:
    """Entities and feature views keyed by a Python identifier (for a Feast repo module's globals).

    Args:
        data_dir: root of the Delta tables (``FSTORE_DATA_DIR``).
    """
    entities = {
        name: Entity(name=name, join_keys=[e.join_key], value_type=ValueType.STRING, description=e.description)
        for name, e in ENTITIES.items()
    }
    objects: dict[str, Any] = {_py_name(n): e for n, e in entities.items()}
    for view in VIEWS.values():
        source = FileSource(
            name=f"{view.name}_snapshots",
            path=f"{data_dir.rstrip('/')}/feature_snapshots/{view.name}",
            file_format=DeltaFormat(),
            timestamp_field="event_timestamp",
            description=f"Daily snapshots of {view.name} written by the batch job",
        )
        objects[_py_name(view.name)] = FeatureView(
            name=view.name,
            entities=[entities[view.entity.name]],
            ttl=SNAPSHOT_TTL,
            schema=[Field(name=f.name, dtype=_DTYPES[f.dtype], description=f.description) for f in view.features],
            source=source,
            online=True,
            description=view.description,
        )
    return objects
