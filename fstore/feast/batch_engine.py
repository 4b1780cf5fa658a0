"""The fstore batch engine for Feast: ``feast materialize`` is refused, naming what fstore runs instead.

Configure it in ``feature_store.yaml`` beside the fstore online store::

    batch_engine:
      type: fstore.feast.batch_engine.FstoreComputeEngine

Feast's materialisation computes final values from the offline store and writes them into the online store.
fstore's online view is written by its own jobs (``fstore stream``: speed tiles; ``fstore batch``: the
batch view), as tile partial aggregates, so there is nothing for Feast to compute or write: ``feast
materialize`` and ``feast materialize-incremental`` raise
:class:`fstore.feast.online_store.FstoreReadOnlyError` before reading or writing anything (Feast's local
engine failed instead on the views' time windows, saying nothing of fstore). Infrastructure hooks
(``feast apply``, ``feast teardown``) have nothing to create or delete.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from feast import Entity
from feast.feature_view import FeatureView
from feast.infra.common.materialization_job import MaterializationJob, MaterializationTask
from feast.infra.compute_engines.base import ComputeEngine
from feast.infra.registry.base_registry import BaseRegistry
from feast.repo_config import FeastConfigBaseModel

from fstore.feast.online_store import read_only


class FstoreComputeEngineConfig(FeastConfigBaseModel):
    """``batch_engine:`` block of ``feature_store.yaml``."""

    type: Literal["fstore.feast.batch_engine.FstoreComputeEngine"] = "fstore.feast.batch_engine.FstoreComputeEngine"


class FstoreComputeEngine(ComputeEngine):
    """Feast batch engine that refuses materialisation (see the module docstring)."""

    def update(
        self,
        project: str,
        views_to_delete: Sequence[Any],
        views_to_keep: Sequence[Any],
        entities_to_delete: Sequence[Entity],
        entities_to_keep: Sequence[Entity],
    ) -> None:
        """Nothing to create: fstore's jobs own their state (``feast apply`` records the plan elsewhere)."""

    def teardown_infra(self, project: str, fvs: Sequence[FeatureView], entities: Sequence[Entity]) -> None:
        """Nothing to delete (``feast teardown`` never touches fstore's state)."""

    def _materialize_one(self, registry: BaseRegistry, task: MaterializationTask, **kwargs: Any) -> MaterializationJob:
        """Refuse.

        Raises:
            fstore.feast.online_store.FstoreReadOnlyError: always, naming the view and the jobs that write it.
        """
        raise read_only(task.feature_view.name)
