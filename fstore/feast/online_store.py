"""The fstore online store for Feast (docs/design.md §4, §5): Feast reads the same merged values as the API.

Configure it in ``feature_store.yaml``::

    online_store:
      type: fstore.feast.online_store.FstoreOnlineStore
      redis_url: ${FSTORE_REDIS_URL}   # optional; default: FSTORE_REDIS_URL / the fstore settings
      redis_cluster: true              # optional; a Redis Cluster (default: FSTORE_REDIS_CLUSTER)
      timeout_ms: 300                  # Redis connect/read timeout

``FeatureStore("feature_repo").get_online_features(features=[...], entity_rows=[...])`` then returns, for
each entity, the features the repository declares (its ``StreamFeatureView`` aggregations and ratios,
compiled into the plan, :func:`fstore.feast.compile.applied_of`: the plan ``fstore apply`` recorded, as
the API serves it, with the same refusal of a feature applied but not built yet; Feast 0.67 hands such
views to ``online_read`` like any feature view and applies no aggregation of its own online), as the lambda merge of
:mod:`fstore.online.reader` (batch tiles before the cutover C, speed tiles from C on) evaluated at
``as_of`` = now — the values ``GET /features`` returns. The row's event timestamp is that
``as_of``. A view's own join key, which Feast's registry lists among a ``StreamFeatureView``'s features
(refs built from ``fv.features`` name it), is answered with the row's entity key, not refused.
Nothing here re-implements the merge or the pointer re-check: reads go through
:class:`fstore.online.reader.SyncOnlineReader` (sync path) or :class:`fstore.online.reader.OnlineReader` (async path),
both driving :class:`fstore.online.reader.ReadCore`, and keep its batch tile cache across calls.

Writes: fstore's stream and batch jobs own the online view, and a Feast row holds *final* values while
fstore stores *partial aggregates* in tiles, so there is nothing meaningful to write. ``online_write_batch``
(``write_to_online_store``, push sources) raises :class:`FstoreReadOnlyError`
instead of silently dropping data. ``update`` (``feast apply``) records the applied plan as ``fstore apply``
does (its new features refused until ``fstore backfill``, the state of removed ones freed);
``teardown`` (``feast teardown``) is a no-op: it never deletes fstore keys.

Limits: each feature view is read in its own round trip (Feast calls ``online_read`` per view), so a
request spanning two views evaluates each at its own ``as_of`` and, during a batch cutover, may see two
batch versions across views (never within one view).
"""

from __future__ import annotations

import asyncio
import os
import sys
import weakref
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, NamedTuple

import click
from feast import Entity
from feast.feature_view import FeatureView as FeastFeatureView
from feast.infra.online_stores.online_store import OnlineStore
from feast.infra.supported_async_methods import SupportedAsyncMethods
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import FeastConfigBaseModel, RepoConfig
from pydantic import Field

from fstore.applied import not_built
from fstore.applying import ENV_CALLER_RECORDS, WAIT_S, Applying, NotFreed, redis_client
from fstore.clock import Clock, wall_clock
from fstore.core.events import is_id
from fstore.core.plan import View
from fstore.core.plan_error import PlanError
from fstore.core.tile_state import Value
from fstore.feast.compile import applied_of, compile_repo
from fstore.feast.config_value import unset
from fstore.online.reader import EntityRead, OnlineReader, ReadResult, SyncOnlineReader
from fstore.redis.connect import async_client, sync_client
from fstore.settings import SERVICES_ENV, Settings, get_settings, load_settings

ReadRow = tuple[datetime | None, dict[str, ValueProto] | None]


class _Reads(NamedTuple):
    """What one ``online_read`` asks: the entity keys, their reads of the view's features, and whether the
    view's join key was requested too (Feast's registry lists it among a ``StreamFeatureView``'s features,
    so refs built from ``fv.features`` name it; its value is the row's entity key)."""

    keys: Sequence[EntityKeyProto]
    reads: list[EntityRead]
    with_key: bool


class FeatureNotBuiltError(RuntimeError):
    """Raised by reads of a feature ``fstore apply`` registered whose tiles ``fstore backfill`` has not built
    yet (the API answers 409 for it): no value rather than an undercounted one."""


class FstoreReadOnlyError(RuntimeError, click.ClickException):
    """Raised by writes: fstore's stream and batch jobs own the online view. A ``RuntimeError`` for Python
    callers, and for Feast's command line (``feast materialize``) an error it shows as ``Error: <message>``
    with exit code 1, not the last line of a traceback of Feast's internals."""

    def __init__(self, message: str) -> None:
        click.ClickException.__init__(self, message)


class DefinitionsRefused(PlanError, click.ClickException):
    """The repository's mistakes, refused by ``feast apply`` (nothing applied): a :class:`PlanError` for
    Python callers, and for Feast's command line an error it shows as ``Error: <message>`` with exit
    code 1 — the mistakes named as ``fstore apply`` names them, not under a traceback."""

    def __init__(self, root: str | Path, problems: Sequence[str]) -> None:
        PlanError.__init__(self, problems)
        listed = PlanError.__str__(self)
        click.ClickException.__init__(
            self, f"fstore: {root} has {len(self.problems)} mistake(s); nothing was applied:\n{listed}"
        )


def read_only(view: str) -> FstoreReadOnlyError:
    """The refusal of a Feast write into ``view`` (``online_write_batch``; ``feast materialize``, refused by
    :mod:`fstore.feast.batch_engine`), naming what writes it instead."""
    return FstoreReadOnlyError(
        f"the fstore online store is read-only: feature view '{view}' is written by fstore's "
        "stream job (`fstore stream`, speed view) and batch job (`fstore batch`, batch view), which store "
        "tile partial aggregates, not final values. Do not run `feast materialize` or push/write to the "
        "online store; ingest events instead (`fstore ingest` / the `events` topic)."
    )


class FstoreOnlineStoreConfig(FeastConfigBaseModel):
    """``online_store:`` block of ``feature_store.yaml``."""

    type: Literal["fstore.feast.online_store.FstoreOnlineStore"] = "fstore.feast.online_store.FstoreOnlineStore"
    redis_url: str | None = None
    """``redis://host:port/db`` of the online views. Unset, empty or an unexpanded ``${VAR}``: the fstore
    settings (``FSTORE_REDIS_URL``, ``.fstore/services.env``, default)."""
    redis_cluster: bool | None = None
    """``true``: ``redis_url`` is one node of a Redis Cluster (keys routed by hash slot). Unset: the fstore
    settings (``FSTORE_REDIS_CLUSTER``)."""
    timeout_ms: int = Field(300, ge=10, le=10_000)
    """Redis connect/read timeout in milliseconds (an unreachable Redis fails fast, never hangs)."""


def settings_of(config: RepoConfig) -> Settings:
    """The fstore settings a repository's stores fall back to: the environment, then the project's
    ``.fstore/services.env`` — the one beside the repository (its parent, where ``fstore services up`` ran),
    whatever the working directory (``cd feature_repo && feast ...``, a notebook in a subfolder) — else the
    working directory's, as every fstore command reads it."""
    root = getattr(config, "repo_path", None)
    if root:
        env = Path(root).resolve().parent / SERVICES_ENV
        try:
            changed = env.stat().st_mtime_ns
        except OSError:
            return get_settings()
        return _settings_from(str(env), changed, tuple(os.environ.get(v) for v in _READ_VARS))
    return get_settings()


_READ_VARS = ("FSTORE_REDIS_URL", "FSTORE_REDIS_CLUSTER")  # what the stores read: the environment wins


@lru_cache(maxsize=8)
def _settings_from(env_file: str, changed: int, environment: tuple[str | None, ...]) -> Settings:
    """Settings with ``env_file`` (cached per version of the file and of :data:`_READ_VARS`: reads stay cheap)."""
    return load_settings(Settings, _env_file=env_file)


def redis_url_of(config: RepoConfig) -> str:
    """The Redis URL for a repo config (yaml ``redis_url``, else the fstore settings: :func:`settings_of`)."""
    url = getattr(config.online_store, "redis_url", None)
    if url is None or unset(url):
        url = settings_of(config).redis_url
    return url


def cluster_of(config: RepoConfig) -> bool:
    """Whether the online views are on a Redis Cluster (yaml ``redis_cluster``, else ``FSTORE_REDIS_CLUSTER``)."""
    flag = getattr(config.online_store, "redis_cluster", None)
    if flag is None:
        return settings_of(config).redis_cluster
    return bool(flag)


def _key_value(key: EntityKeyProto, view: View) -> ValueProto:
    """The value of the view's join key in an entity key proto (typed as the view's schema field: Feast
    converts the entity rows with the dtypes of the view's entity columns).

    Raises:
        ValueError: when the key does not carry the view's join key.
    """
    values: list[ValueProto] = list(key.entity_values)
    for name, value in zip(key.join_keys, values, strict=True):
        if name == view.entity.join_key and value.WhichOneof("val") is not None:
            return value
    raise ValueError(f"feature view '{view.name}' needs entity key '{view.entity.join_key}'")


def _entity_id(key: EntityKeyProto, view: View) -> str:
    """The join-key value of an entity key proto, as a string.

    Raises:
        ValueError: when the key does not carry the view's join key, or its value is not an id (1–128
            characters of ``[A-Za-z0-9_.:-]``, docs/design.md §2): no event can carry it, so its zeros would
            be an answer to a mistyped key (the API refuses it with a 422 the same way).
    """
    value = _key_value(key, view)
    entity = str(getattr(value, str(value.WhichOneof("val"))))  # set: _key_value checks it
    if not is_id(entity):
        raise ValueError(f"entity key {view.entity.join_key}={entity!r} is not 1-128 characters of [A-Za-z0-9_.:-]")
    return entity


def _proto(value: Value, dtype: str) -> ValueProto:
    """A Feast value proto for a feature value (empty proto = null)."""
    if value is None:
        return ValueProto()
    if dtype == "int64":
        return ValueProto(int64_val=int(value))
    return ValueProto(double_val=float(value))


def _rows(view: View, reads: _Reads, results: Sequence[ReadResult], as_of: int) -> list[ReadRow]:
    """Feast rows (event timestamp = ``as_of``) for the results of one view, with the join key's own value
    where it was requested (:class:`_Reads`)."""
    ts = datetime.fromtimestamp(as_of // 1_000_000, tz=UTC).replace(microsecond=as_of % 1_000_000)
    dtypes = {f.name: f.dtype for f in view.features}
    rows: list[ReadRow] = []
    for key, r in zip(reads.keys, results, strict=True):
        values = {n: _proto(v, dtypes[n]) for n, v in r.values.items()}
        if reads.with_key:
            values[view.entity.join_key] = _key_value(key, view)
        rows.append((ts, values))
    return rows


class FstoreOnlineStore(OnlineStore):
    """Feast online store over fstore's Redis layout (read-only; see the module docstring).

    Attributes:
        clock: time source for ``as_of`` (default: the wall clock). Feast has no clock injection; tests set
            this attribute on the store instance to compare with an API built with the same fixed clock.
    """

    def __init__(self) -> None:
        self.clock: Clock = wall_clock
        self._reader: SyncOnlineReader | None = None
        self._reader_url: str | None = None
        # One async reader per event loop (a redis.asyncio client is bound to its loop); weak keys, so a
        # closed loop (e.g. after asyncio.run) drops its reader instead of handing it to a new loop.
        self._readers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[str, OnlineReader]] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def async_supported(self) -> SupportedAsyncMethods:
        """Async reads go through :class:`fstore.online.reader.OnlineReader`; writes are not supported."""
        return SupportedAsyncMethods(read=True, write=False)

    # -- reads ---------------------------------------------------------------------------------------

    def _sync_reader(self, config: RepoConfig) -> SyncOnlineReader:
        url = redis_url_of(config)
        if self._reader is None or self._reader_url != url:
            timeout = getattr(config.online_store, "timeout_ms", 300) / 1000
            client = sync_client(url, cluster_of(config), timeout=timeout, connect_timeout=timeout)
            self._reader = SyncOnlineReader(client, lambda: self.clock())
            self._reader_url = url
        return self._reader

    def _reads(
        self,
        config: RepoConfig,
        table: FeastFeatureView,
        entity_keys: Sequence[EntityKeyProto],
        requested_features: Sequence[str] | None,
    ) -> tuple[View, _Reads]:
        plan, pending = applied_of(config, "online store")
        view = plan.view(table.name)
        names = tuple(requested_features) if requested_features else view.feature_names
        key = view.entity.join_key  # Feast lists it among a StreamFeatureView's features: the key answers it
        features = tuple(n for n in names if n != key)
        for n in features:
            view.feature(n)  # KeyError naming an unknown feature
            if pending and f"{view.name}:{n}" in pending:
                raise FeatureNotBuiltError(not_built(view.name, n))
        reads = [EntityRead(view, _entity_id(k, view), features) for k in entity_keys]
        return view, _Reads(entity_keys, reads, key in names)

    def online_read(
        self,
        config: RepoConfig,
        table: FeastFeatureView,
        entity_keys: list[EntityKeyProto],
        requested_features: list[str] | None = None,
    ) -> list[ReadRow]:
        """Merged values of ``entity_keys`` at ``as_of`` = :attr:`clock` (one pipelined round trip).

        The pointer is read in the same pipeline as the hashes; if it moved since it was fetched, the read
        is repeated with the new pointer, so one call never mixes two batch versions (as
        :meth:`fstore.online.reader.OnlineReader.read` does).

        Raises:
            KeyError: unknown feature view or feature.
            FeatureNotBuiltError: a requested feature is applied but not built yet (``fstore backfill``).
            redis.exceptions.RedisError: Redis unreachable (after ``timeout_ms``) or the pointer kept moving.
        """
        view, reads = self._reads(config, table, entity_keys, requested_features)
        snap = self._sync_reader(config).read(reads.reads)
        return _rows(view, reads, snap.results, snap.as_of)

    async def online_read_async(
        self,
        config: RepoConfig,
        table: FeastFeatureView,
        entity_keys: list[EntityKeyProto],
        requested_features: list[str] | None = None,
    ) -> list[ReadRow]:
        """Async read through :class:`fstore.online.reader.OnlineReader` (one reader per event loop)."""
        view, reads = self._reads(config, table, entity_keys, requested_features)
        url, loop = redis_url_of(config), asyncio.get_running_loop()
        entry = self._readers.get(loop)
        if entry is None or entry[0] != url:
            timeout = getattr(config.online_store, "timeout_ms", 300) / 1000
            client = async_client(url, cluster_of(config), timeout=timeout, connect_timeout=timeout)
            entry = self._readers[loop] = (url, OnlineReader(client, lambda: self.clock()))
        reader = entry[1]
        snap = await reader.read(reads.reads)
        return _rows(view, reads, snap.results, snap.as_of)

    # -- writes and infrastructure: owned by fstore's layers -----------------------------------------

    def online_write_batch(
        self,
        config: RepoConfig,
        table: FeastFeatureView,
        data: list[tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]],
        progress: Callable[[int], Any] | None,
    ) -> None:
        """Refuse: fstore's speed (``fstore stream``) and batch (``fstore batch``) jobs write the online view.

        Raises:
            FstoreReadOnlyError: always, naming what to run instead.
        """
        raise read_only(table.name)

    async def online_write_batch_async(
        self,
        config: RepoConfig,
        table: FeastFeatureView,
        data: list[tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]],
        progress: Callable[[int], Any] | None,
    ) -> None:
        """Refuse, as :meth:`online_write_batch`."""
        self.online_write_batch(config, table, data, progress)

    def plan(self, config: RepoConfig, desired_registry_proto: Any) -> list[Any]:
        """``feast plan`` (and the plan ``feast apply`` makes first): refuse a repository with mistakes as
        ``feast apply`` does (:meth:`update`), instead of listing views to create that the apply then refuses.
        Nothing to create, so no infrastructure objects.

        Raises:
            DefinitionsRefused: the repository has mistakes, each named (``Error: ...``, exit code 1).
        """
        root = getattr(config, "repo_path", None)
        if root:
            try:  # compiled as update() compiles it; Applying refuses a change no backfill makes good
                Applying(Path(root).resolve(), compile_repo(root), lambda _: None, lambda _: None)
            except PlanError as exc:
                raise DefinitionsRefused(root, exc.problems) from None
        return []

    def update(
        self,
        config: RepoConfig,
        tables_to_delete: Sequence[FeastFeatureView],
        tables_to_keep: Sequence[FeastFeatureView],
        entities_to_delete: Sequence[Entity],
        entities_to_keep: Sequence[Entity],
        partial: bool,
    ) -> None:
        """``feast apply`` of the whole repository (``partial`` false): do what ``fstore apply`` does after it —
        compile the repository (all or nothing), record the plan with the features it leaves pending (refused
        until ``fstore backfill`` builds them) and free the Redis state of what it removed once every live
        stream worker runs it. Runs before Feast commits its registry: a repository with a mistake, or a
        Redis needed and unreachable, fails the ``feast apply`` and changes nothing. Nothing is created.
        A partial apply (``FeatureStore.apply(objects)`` from Python) and ``fstore apply``'s own
        ``feast apply`` record nothing here.

        Raises:
            DefinitionsRefused: the repository has mistakes (each one named); a :class:`PlanError` that
                Feast's command line shows as its message (``Error: ...``, exit code 1), not a traceback.
            fstore.applying.RedisUnreachable: Redis is needed to free removed state and does not answer.
        """
        if partial or os.environ.get(ENV_CALLER_RECORDS) == "1":
            return
        root = getattr(config, "repo_path", None)
        if not root:
            return
        try:
            plan = compile_repo(root)
            job = Applying(
                Path(root).resolve(),
                plan,
                print,
                lambda m: print(m, file=sys.stderr),
                lambda: redis_client(redis_url_of(config), cluster_of(config)),  # the Redis this store reads
            )
        except PlanError as exc:  # Feast's CLI would show it under a traceback of its own internals
            raise DefinitionsRefused(root, exc.problems) from None
        job.prepare(WAIT_S)
        try:
            job.record(WAIT_S)
        except NotFreed as exc:  # the plan is recorded; the record keeps what is left to free
            print(exc, file=sys.stderr)

    def teardown(self, config: RepoConfig, tables: Sequence[FeastFeatureView], entities: Sequence[Entity]) -> None:
        """No-op: ``feast teardown`` never deletes fstore's online views (they are rebuilt by its jobs)."""

    async def close(self) -> None:
        """Close the Redis clients."""
        if self._reader is not None:
            self._reader.client.close()
            self._reader = None
        entry = self._readers.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry[1].aclose()
            await entry[1].client.aclose()
