"""The fstore offline store for Feast (docs/design.md §6): ``get_historical_features`` from ``raw_events``.

Configure it in ``feature_store.yaml``::

    offline_store:
      type: fstore.feast.offline_store.FstoreOfflineStore
      data_dir: ${FSTORE_DATA_DIR}   # optional; default: FSTORE_DATA_DIR / the fstore settings
      engine: local                  # or spark

``FeatureStore(...).get_historical_features(entity_df, features=[...])`` then returns the values of the fstore
point-in-time engine (:mod:`fstore.offline.local`), not an as-of join over the daily snapshots: exact windows
at every ``event_timestamp``, the fstore row contract (input order, duplicates kept, no row dropped). The
features are those the store's own repository declares (``repo_path``: the plan ``fstore apply`` recorded,
else the source compiled once per process, :func:`fstore.feast.compile.plan_of`; a feature still waiting for
its backfill is exact here already, since the engine reads raw_events). A view's own join key, which Feast's
registry lists among a ``StreamFeatureView``'s features, is the row's key: a ``view__key`` column with
``full_feature_names``, else the entity column already there. ``pull_latest``/``pull_all``
(materialisation, saved datasets) are delegated to Feast's file (dask) store, which reads the feature views'
snapshot Parquet sources.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
from feast import FeatureView
from feast.data_source import DataSource
from feast.infra.offline_stores.dask import DaskOfflineStore, DaskOfflineStoreConfig
from feast.infra.offline_stores.offline_store import OfflineStore, RetrievalJob, RetrievalMetadata
from feast.infra.offline_stores.offline_utils import infer_event_timestamp_from_entity_df
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import FeastConfigBaseModel, RepoConfig

from fstore.core import pit
from fstore.core.plan import Plan
from fstore.feast.compile import plan_of
from fstore.feast.config_value import unset
from fstore.offline import local as offline


class FstoreOfflineStoreConfig(FeastConfigBaseModel):
    """``offline_store:`` block of ``feature_store.yaml``."""

    type: Literal["fstore.feast.offline_store.FstoreOfflineStore"] = "fstore.feast.offline_store.FstoreOfflineStore"
    data_dir: str | None = None
    """Root of the Delta tables; relative paths are relative to the project (the repo's parent). Unset, empty or
    an unexpanded ``${VAR}``: the fstore settings (``FSTORE_DATA_DIR``, read at each request)."""
    engine: Literal["local", "spark"] = "local"


def raw_events_uri(config: RepoConfig) -> str:
    """``raw_events`` location for a repo config (yaml ``data_dir``, else the fstore settings)."""
    store = config.offline_store
    data_dir = getattr(store, "data_dir", None)
    if data_dir is None or unset(
        data_dir
    ):  # read now, not the process's cached settings: a notebook may change FSTORE_DATA_DIR
        from fstore.settings import Settings, load_settings

        data_dir = load_settings(Settings).data_dir
    if "://" not in data_dir and not Path(data_dir).is_absolute():
        base = Path(config.repo_path).resolve().parent if config.repo_path else Path.cwd()
        data_dir = str((base / data_dir).resolve())
    return offline.raw_events_uri(data_dir)


class FstoreRetrievalJob(RetrievalJob):
    """Runs the point-in-time engine when the result is asked for (``to_df``/``to_arrow``)."""

    def __init__(self, run: Callable[[], pa.Table], full_feature_names: bool, metadata: RetrievalMetadata) -> None:
        self._run = run
        self._full_feature_names = full_feature_names
        self._metadata = metadata

    @property
    def full_feature_names(self) -> bool:
        """Whether columns are named ``view__feature``."""
        return self._full_feature_names

    @property
    def on_demand_feature_views(self) -> list[OnDemandFeatureView]:
        """fstore defines no on-demand views."""
        return []

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        return self._run()

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        return self._run().to_pandas()

    @property
    def metadata(self) -> RetrievalMetadata | None:
        """Features, keys and the timestamp range of the request."""
        return self._metadata

    def persist(self, storage: Any, allow_overwrite: bool = False, timeout: int | None = None) -> None:
        """Saved datasets are not supported: write ``to_df()`` where you need it."""
        raise NotImplementedError(
            "the fstore offline store does not persist saved datasets; "
            "call .to_df() / .to_arrow() and write the result yourself"
        )


def _as_arrow(entity_df: pd.DataFrame) -> tuple[pa.Table, str]:
    """The entity rows as Arrow, the timestamp column as UTC timestamps (ISO-8601 text is read as Feast's own
    offline stores read it: offsets converted, naive = UTC)."""
    ts = infer_event_timestamp_from_entity_df(dict(entity_df.dtypes))
    if not pd.api.types.is_datetime64_any_dtype(entity_df[ts]):
        try:
            entity_df = entity_df.assign(**{ts: pit.to_utc(entity_df[ts])})
        except (ValueError, TypeError) as exc:
            raise pit.PointInTimeError(f"column '{ts}' is not a timestamp: {exc}") from None
    table = pa.Table.from_pandas(entity_df, preserve_index=False)
    if ts != pit.TIMESTAMP_COLUMN:
        table = table.rename_columns([pit.TIMESTAMP_COLUMN if c == ts else c for c in table.column_names])
    return table, ts


def _key_refs(plan: Plan, refs: Sequence[str]) -> dict[str, str]:
    """The references (``view:name``) that name their view's own join key, each with that key.

    Feast's registry lists a ``StreamFeatureView``'s join key among its features (the schema's ``Field``
    for it), so references built from ``fv.features`` name it; its value is the row's entity key, as
    Feast's own offline stores return it for that field."""
    views = {v.name: v for v in plan.views}
    out: dict[str, str] = {}
    for ref in refs:
        name, colon, feature = ref.partition(":")
        view = views.get(name)
        if colon and view is not None and feature == view.entity.join_key:
            out[ref] = feature
    return out


def _mapped_keys(plan: Plan, feature_views: Sequence[FeatureView]) -> dict[str, str]:
    """The entity_df column of each join key that a view's projection maps (Feast's ``with_join_key_map`` in a
    FeatureService: ``{"<join key>": "<column>"}`` reads that view's keys from ``<column>``).

    Raises:
        fstore.core.pit.PointInTimeError: one join key read from two columns in one request (map one of the
            views in a request of its own).
    """
    views = {v.name: v for v in plan.views}
    columns: dict[str, dict[str, list[str]]] = {}
    for fv in feature_views:
        view = views.get(fv.name)
        if view is None:  # unknown to fstore: resolve() names it
            continue
        key = view.entity.join_key
        mapping = dict(fv.projection.join_key_map or {}) if fv.projection is not None else {}
        columns.setdefault(key, {}).setdefault(mapping.get(key, key), []).append(fv.name)
    for key, by_column in columns.items():
        if len(by_column) > 1:
            ways = "; ".join(f"{', '.join(names)} from '{col}'" for col, names in by_column.items())
            raise pit.PointInTimeError(
                f"join key '{key}' is read from two columns in one request ({ways}): request them separately"
            )
    return {key: col for key, by_column in columns.items() for col in by_column if col != key}


def _with_keys_from(table: pa.Table, mapped: dict[str, str]) -> pa.Table:
    """``table`` with each mapped join key's column holding the keys of the column it is mapped to."""
    for key, col in mapped.items():
        if col not in table.column_names:
            raise pit.PointInTimeError(
                f"entity dataframe has no column '{col}' (the join key map {key} -> {col}; "
                f"columns: {', '.join(table.column_names)})"
            )
        values = table.column(col)
        names = table.column_names
        table = table.set_column(names.index(key), key, values) if key in names else table.append_column(key, values)
    return table


class FstoreOfflineStore(OfflineStore):
    """Feast offline store backed by the fstore point-in-time engine over ``raw_events``."""

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str | None,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        **kwargs: Any,
    ) -> RetrievalJob:
        """Point-in-time correct features for every row of ``entity_df`` (a pandas DataFrame).

        Raises:
            NotImplementedError: for a SQL string or no entity_df (start/end date mode).
            fstore.core.pit.PointInTimeError: a missing column or a feature unknown to fstore.
        """
        if not isinstance(entity_df, pd.DataFrame):
            raise NotImplementedError(
                "the fstore offline store needs entity_df as a pandas DataFrame with "
                "event_timestamp and the join keys (SQL and date ranges are not supported)"
            )
        if kwargs.get("filter_by_created_timestamp"):
            raise NotImplementedError("filter_by_created_timestamp does not apply to the fstore offline store")
        refs = list(feature_refs)
        plan = plan_of(config, "offline store")
        key_refs = _key_refs(plan, refs)
        features = [r for r in refs if r not in key_refs]
        given, ts = _as_arrow(entity_df)
        mapped = _mapped_keys(plan, feature_views)
        table = _with_keys_from(given, mapped)  # the engine reads each view's keys from its own join key column
        # unknown features and missing or clashing columns fail here, not at to_df()
        request = pit.resolve(plan, features, full_feature_names) if features else None
        keys = list(dict.fromkeys([*(request.join_keys if request else ()), *key_refs.values()]))
        if key_refs:  # the key columns are there and hold keys (the check a feature's join key gets)
            pit.entity_rows_of(table, list(dict.fromkeys(key_refs.values())))
        added = {ref: ref.replace(":", "__") for ref in key_refs} if full_feature_names else {}
        clash = [n for n in added.values() if n in table.column_names]
        if clash:
            raise pit.PointInTimeError(f"entity dataframe already has column(s) {', '.join(clash)}; rename them")
        store = config.offline_store
        engine: offline.Engine = "spark" if getattr(store, "engine", "local") == "spark" else "local"
        uri = raw_events_uri(config)
        times = table.column(pit.TIMESTAMP_COLUMN) if pit.TIMESTAMP_COLUMN in table.column_names else None
        lo = hi = datetime.fromtimestamp(0)
        if times is not None and len(times):
            down, up = pit.entity_times(times.combine_chunks())
            lo, hi = (
                pd.Timestamp(int(down.min()), unit="us", tz="UTC").to_pydatetime(),
                pd.Timestamp(int(up.max()), unit="us", tz="UTC").to_pydatetime(),
            )
        metadata = RetrievalMetadata(features=refs, keys=keys, min_event_timestamp=lo, max_event_timestamp=hi)

        def run() -> pa.Table:
            out = table
            if features:
                out = offline.get_historical_features(
                    table, features, raw_uri=uri, engine=engine, full_feature_names=full_feature_names, plan=plan
                )
            if added:  # view__key columns where requested; without full names the entity column is the key's
                for ref, name in added.items():
                    out = out.append_column(name, table.column(key_refs[ref]))  # as given: its own type
                out = out.select(list(dict.fromkeys([*table.column_names, *(r.replace(":", "__") for r in refs)])))
            for key in mapped:  # the caller's columns as given
                at = out.column_names.index(key)
                out = out.set_column(at, key, given.column(key)) if key in given.column_names else out.remove_column(at)
            if ts != pit.TIMESTAMP_COLUMN:
                out = out.rename_columns([ts if c == pit.TIMESTAMP_COLUMN else c for c in out.column_names])
            return out

        return FstoreRetrievalJob(run, full_feature_names, metadata)

    @staticmethod
    def _dask_config(config: RepoConfig) -> RepoConfig:
        dask_config = config.model_copy()
        dask_config._offline_store = DaskOfflineStoreConfig()  # type: ignore[assignment]
        return dask_config

    @staticmethod
    def pull_latest_from_table_or_query(
        config: RepoConfig,
        data_source: DataSource,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None,
        start_date: datetime,
        end_date: datetime,
    ) -> RetrievalJob:
        """Materialisation reads the snapshot Parquet sources through Feast's file store."""
        return DaskOfflineStore.pull_latest_from_table_or_query(
            FstoreOfflineStore._dask_config(config),
            data_source,
            join_key_columns,
            feature_name_columns,
            timestamp_field,
            created_timestamp_column,
            start_date,
            end_date,
        )

    @staticmethod
    def pull_all_from_table_or_query(
        config: RepoConfig,
        data_source: DataSource,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None = None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
    ) -> RetrievalJob:
        """All rows of a snapshot source in a time range, through Feast's file store."""
        return DaskOfflineStore.pull_all_from_table_or_query(
            FstoreOfflineStore._dask_config(config),
            data_source,
            join_key_columns,
            feature_name_columns,
            timestamp_field,
            created_timestamp_column,
            start_date,
            end_date,
        )
