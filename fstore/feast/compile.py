"""Compile a Feast repository into fstore's plan, all or nothing (docs/design.md §3, docs/adr/0012).

:func:`compile_repo` reads the Python files of a repository directory the way ``feast apply`` does;
:func:`compile_registry` reads what ``feast apply`` registered; both hand the Feast objects to
:func:`compile_objects`, which returns a :class:`~fstore.core.plan.Plan` or raises
:class:`~fstore.core.plan.PlanError` listing every mistake (each naming its object and what to do) —
never a partial plan.
"""

from __future__ import annotations

import importlib
import sys
import threading
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feast import Entity, FeatureStore, FeatureView, KafkaSource, OnDemandFeatureView, StreamFeatureView
from feast.repo_operations import get_repo_files

from fstore import applied
from fstore.core.plan import Entity as PlanEntity
from fstore.core.plan import Plan
from fstore.core.plan_error import PlanError
from fstore.feast.compile_source import entities, event_schema, source_name
from fstore.feast.compile_view import compile_view
from fstore.feast.problems import Problems

#: Feast adds this entity to every registry for views without entities.
DUMMY_ENTITY = "__dummy"


@dataclass
class RepoObjects:
    """The Feast objects of a repository (as ``feast apply`` collects them: each object once).

    ``field_order`` tells whether views list their fields in declaration order (not so in a registry).
    """

    field_order: bool = True
    entities: list[Entity] = field(default_factory=list)
    stream_feature_views: list[StreamFeatureView] = field(default_factory=list)
    feature_views: list[FeatureView] = field(default_factory=list)
    on_demand_feature_views: list[OnDemandFeatureView] = field(default_factory=list)

    def add(self, obj: Any) -> None:
        """Collect ``obj`` if it is an object the compiler reads (and not collected yet)."""
        for kind, bucket in (
            (StreamFeatureView, self.stream_feature_views),
            (OnDemandFeatureView, self.on_demand_feature_views),
            (FeatureView, self.feature_views),
            (Entity, self.entities),
        ):
            if isinstance(obj, kind):
                if not any(obj is seen for seen in bucket):
                    bucket.append(obj)  # type: ignore[arg-type]
                return


@contextmanager
def _repo_modules(root: Path, names: list[str]) -> Iterator[None]:
    """Import a repository's modules under their own names (``features``, sibling imports working as
    under ``feast apply``), then leave ``sys.modules`` and ``sys.path`` as they were."""
    tops = {n.split(".")[0] for n in names}

    def ours() -> list[str]:
        return [k for k in sys.modules if k.split(".")[0] in tops]

    saved = {k: sys.modules.pop(k) for k in ours()}
    sys.path.insert(0, str(root))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "stream feature views are experimental"
            yield
    finally:
        sys.path.remove(str(root))
        for k in ours():
            del sys.modules[k]
        sys.modules.update(saved)


def load_repo(root: str | Path) -> RepoObjects:
    """The Feast objects defined by the Python files of a repository (``.feastignore`` honoured).

    Raises:
        PlanError: naming each file that fails to import, with the error it raised.
    """
    root = Path(root).resolve()
    if not (root / "feature_store.yaml").is_file():
        raise PlanError([f"{root}: not a Feast repository (no feature_store.yaml)"])
    files = get_repo_files(root)
    names = [".".join(p.relative_to(root).with_suffix("").parts) for p in files]
    objects = RepoObjects()
    problems = Problems()
    with _repo_modules(root, names):
        for name, path in zip(names, files, strict=True):
            try:
                module = importlib.import_module(name)
            except Exception as exc:  # any error of user code is reported, never raised through
                problems.add(str(path.relative_to(root)), f"cannot be imported: {type(exc).__name__}: {exc}")
                continue
            for attr in dir(module):
                objects.add(getattr(module, attr))
    problems.raise_any()
    return objects


def registry_objects(store: FeatureStore) -> RepoObjects:
    """The objects ``feast apply`` registered in ``store``'s registry."""
    objects = RepoObjects(field_order=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for obj in [
            *store.list_entities(),
            *store.list_stream_feature_views(),
            *store.list_on_demand_feature_views(),
            *store.list_feature_views(),
        ]:
            objects.add(obj)
    return objects


def compile_objects(objects: RepoObjects) -> Plan:
    """Compile a repository's objects into the plan.

    Raises:
        PlanError: listing every mistake found; nothing is returned for a repository that has one.
    """
    problems = Problems()
    for fv in objects.feature_views:
        problems.add(  # the class the user wrote: a BatchFeatureView with aggregations is not a plain FeatureView
            f"{type(fv).__name__} '{fv.name}'",
            "fstore serves StreamFeatureViews with aggregations: make it one, or keep it out of this repository",
        )
    for odfv in objects.on_demand_feature_views:
        problems.add(
            f"OnDemandFeatureView '{odfv.name}'",
            "is not supported (its udf runs only in Python): declare a ratio as a Field of the stream feature "
            "view, tags={'fstore.ratio': 'a / b'}",
        )
    views = sorted(objects.stream_feature_views, key=lambda v: v.name)  # files and registries list in any order
    if not views:
        problems.add("repository", "declares no StreamFeatureView: fstore has nothing to compute")
        problems.raise_any()
    for name in _repeated(v.name for v in views):
        problems.add(f"StreamFeatureView '{name}'", "is declared twice: view names must be unique")
    for name in _repeated(e.name for e in objects.entities if e.name != DUMMY_ENTITY):
        problems.add(f"Entity '{name}'", "is declared twice: entity names must be unique")
    sources = {source_name(v.stream_source) for v in views}  # by name: the registry copies each view's source
    if len(sources) > 1:
        names = ", ".join(sorted(sources))
        problems.add("repository", f"fstore reads one event stream, but the views read several: {names}")
    source = views[0].stream_source
    if not isinstance(source, KafkaSource):
        problems.add(source_name(source), "fstore reads events from Kafka: declare a KafkaSource with a batch_source")
    problems.raise_any()
    assert isinstance(source, KafkaSource)
    schema = event_schema(source, problems)
    problems.raise_any()
    assert schema is not None
    declared = sorted((e for e in objects.entities if e.name != DUMMY_ENTITY), key=lambda e: e.name)
    ents = entities(declared, schema, problems)
    by_name: dict[str, PlanEntity | None] = {e.name: None for e in declared} | {e.name: e for e in ents}
    compiled = [compile_view(v, by_name, schema, problems, objects.field_order) for v in views]
    problems.raise_any()
    return Plan(
        schema,
        tuple(ents),
        tuple(v for v in compiled if v is not None),
        source=source.name,
        topic=source.kafka_options.topic,
    )


def _repeated(names: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for n in names:
        if n in seen and n not in out:
            out.append(n)
        seen.add(n)
    return out


def compile_repo(root: str | Path) -> Plan:
    """Compile the repository in directory ``root`` (all or nothing; see :func:`compile_objects`)."""
    return compile_objects(load_repo(root))


def compile_registry(store: FeatureStore) -> Plan:
    """Compile what ``feast apply`` registered for ``store`` (all or nothing)."""
    return compile_objects(registry_objects(store))


# Per repository: the applied record's (mtime_ns, size) last read (None: never applied), its plan and pending refs.
_REPO_PLANS: dict[Path, tuple[tuple[int, int] | None, Plan, frozenset[str]]] = {}
_REPO_PLANS_LOCK = threading.Lock()


def applied_of(config: Any, store: str) -> tuple[Plan, frozenset[str]]:
    """The plan of the Feast repository a Feast store's ``config`` (a ``RepoConfig``) belongs to
    (``repo_path``) and its ``view:feature`` refs still waiting for ``fstore backfill``: the plan
    ``fstore apply`` recorded (:mod:`fstore.applied`, followed when the record changes: one ``stat`` per
    call), else the repository's source compiled once per process — what the API and the jobs run
    (:mod:`fstore.plan_source`).

    Args:
        config: the store's ``RepoConfig``.
        store: which store asks ("online store", "offline store"), for the error message.

    Raises:
        PlanError: the repository has mistakes (each one named), or the config names no repository.
        ValueError: the applied record is unreadable (naming it; re-run ``fstore apply``).
    """
    path = getattr(config, "repo_path", None)
    if not path:
        raise PlanError([f"the fstore {store} needs the Feast repository's path (FeatureStore(repo_path=...))"])
    root = Path(path).resolve()
    stamp = applied.stamp(root)
    hit = _REPO_PLANS.get(root)
    if hit is not None and hit[0] == stamp:
        return hit[1], hit[2]
    with _REPO_PLANS_LOCK:
        hit = _REPO_PLANS.get(root)
        if hit is not None and hit[0] == stamp:
            return hit[1], hit[2]
        record = applied.load(root) if stamp is not None else None
        if record is not None:
            got = (stamp, record.plan, frozenset(record.pending))
        elif hit is not None and hit[0] is None:
            got = hit  # never applied: the source compiled once
        else:
            got = (None, compile_repo(root), frozenset())
        _REPO_PLANS[root] = got
        return got[1], got[2]


def plan_of(config: Any, store: str) -> Plan:
    """The plan a Feast store serves (:func:`applied_of` without the pending refs).

    Raises:
        PlanError: as :func:`applied_of`.
        ValueError: as :func:`applied_of`.
    """
    return applied_of(config, store)[0]
