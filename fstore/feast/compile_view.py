"""Compiling one ``StreamFeatureView`` into a plan :class:`~fstore.core.plan.View` (docs/design.md §3).

A view declares, in Feast's own objects:

- ``aggregations=[Aggregation(column, function, time_window, slide_interval, name)]``: one windowed
  feature each. ``column`` is a measure declared in the view's tags or an event field; ``function`` one
  of Feast's (``count, sum, mean|avg, min, max, std|stddev, var|variance, count_distinct``);
  ``slide_interval`` the hop (Feast fills it with ``time_window`` when it is left out: that, like
  ``None``, means the default hop of docs/design.md §3);
- ``tags={"fstore.measure.<name>": "VALUE [if CONDITION]"}``: the measures (:mod:`fstore.core.expr`);
- ``schema=[Field(...)]``: one field per feature, in the order features are listed, with Feast's dtype
  (``Int64`` for count and count_distinct, ``Float64`` otherwise); a derived ratio is a ``Float64``
  field tagged ``{"fstore.ratio": "a / b"}``; an approximate count_distinct is tagged
  ``{"fstore.sketch": "hll"}``. The entity's join key may be listed too (``String``).
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta

from feast import Field, StreamFeatureView
from feast.aggregation import Aggregation
from feast.types import Float64, Int64

from fstore.core.event_schema import EventSchema
from fstore.core.expr import Col, ExprError, Kind
from fstore.core.expr_check import check_measure
from fstore.core.expr_parse import parse_measure
from fstore.core.functions import SKETCHES, Function
from fstore.core.plan import Entity, Feature, Measure, RatioFeature, View, WindowedFeature
from fstore.core.view_snapshot import SNAPSHOT_TIME
from fstore.core.window_limits import window_problem
from fstore.feast.problems import Problems, fstore_tags

FUNCTIONS = {f.value: f for f in Function} | {"avg": Function.MEAN, "stddev": Function.STD, "variance": Function.VAR}
_US = timedelta(microseconds=1)
_RATIO = re.compile(r"\s*([A-Za-z0-9_-]+)\s*/\s*([A-Za-z0-9_-]+)\s*")  # two feature names (_NAME)
#: What a view, measure or feature may be named: it names Delta columns and tables (where a space or comma fails
#: the batch job), Redis keys (a view's keys are found by the prefix ``fs:{<view>|``) and fields, and the API's
#: comma-separated ``view:feature`` references.
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_DTYPES = {"int64": Int64, "float64": Float64}
_DTYPE_NAMES = {"int64": "Int64", "float64": "Float64"}


def compile_view(
    sfv: StreamFeatureView,
    entities: dict[str, Entity | None],
    schema: EventSchema,
    problems: Problems,
    field_order: bool = True,
) -> View | None:
    """The plan of one view; ``None``, with every mistake recorded in ``problems``, when it has any.

    A mistake is reported once: what depends on an object that is already wrong (the field of a bad
    aggregation, the aggregations of a bad measure, a ratio of a bad aggregation) is not reported again.

    Args:
        entities: the repository's entities by name (``None``: an entity with a mistake of its own).
        field_order: whether ``sfv``'s fields are in the order they were declared (in the repository's
            files). Feast's registry does not keep that order (``FeatureView.schema`` is a set), so a
            view read from it gets :func:`canonical_order`.
    """
    return _ViewCompiler(sfv, schema, problems).compile(entities, field_order)


def canonical_order(features: list[Feature], aggregations: list[str]) -> list[Feature]:
    """Windowed features in the order of ``aggregations`` (which Feast keeps), each ratio right after the
    later of its two parts (ratios at one spot by name)."""
    position = {name: i for i, name in enumerate(aggregations)}

    def key(f: Feature) -> tuple[int, int, str]:
        if isinstance(f, WindowedFeature):
            return (position[f.name], 0, f.name)
        return (max(position[f.numerator], position[f.denominator]), 1, f.name)

    return sorted(features, key=key)


class _ViewCompiler:
    def __init__(self, sfv: StreamFeatureView, schema: EventSchema, problems: Problems) -> None:
        self.sfv, self.schema, self.problems = sfv, schema, problems
        self.where = f"StreamFeatureView '{sfv.name}'"
        self.columns = schema.columns()
        self.declared: dict[str, Measure] = {}
        self.bad: set[str] = set()  # measures and aggregations already reported
        self.used: dict[str, Measure] = {}
        self.windowed: dict[str, WindowedFeature] = {}

    def add(self, message: str, detail: str = "") -> None:
        self.problems.add(f"{self.where}{detail}", message)

    def compile(self, entities: dict[str, Entity | None], field_order: bool) -> View | None:
        sfv, before = self.sfv, len(self.problems.items)
        if sfv.udf is not None or sfv.udf_string:
            self.add("udfs are not supported: declare measures as tags {'fstore.measure.<name>': 'VALUE if CONDITION'}")
        if sfv.tiling_hop_size is not None:
            self.add("tiling_hop_size is not used by fstore: declare the hop per Aggregation(slide_interval=...)")
        self._name(sfv.name, "")
        entity = self._entity(entities)
        if sfv.timestamp_field != self.schema.timestamp_field:
            self.add(f"timestamp_field '{sfv.timestamp_field}' must be the source's '{self.schema.timestamp_field}'")
        if not sfv.aggregations:
            self.add("declares no aggregations=[Aggregation(column=..., function=..., time_window=..., name=...)]")
        self._measures()
        for agg in sfv.aggregations:
            self._aggregation(agg, entity)
        features = self._features()
        for name in self.declared.keys() - {agg.column for agg in sfv.aggregations}:
            self.add(f"measure '{name}' is declared but no aggregation uses it: use it or remove the tag")
        self._columns_apart(features, entity)
        if len(self.problems.items) > before or entity is None:
            return None
        if not field_order:
            features = canonical_order(features, list(self.windowed))
        used = dict.fromkeys(f.measure for f in features if isinstance(f, WindowedFeature))  # first-use order
        return View(sfv.name, entity, tuple(self.used[m] for m in used), tuple(features), sfv.description)

    def _columns_apart(self, features: list[Feature], entity: Entity | None) -> None:
        """Report features whose names are another column of the view's snapshot up to case (Delta column names are
        case-insensitive: ``Fare_3h`` beside ``fare_3h`` would fail every batch run), or its time column."""
        seen = {SNAPSHOT_TIME.casefold(): f"the time column '{SNAPSHOT_TIME}'"}
        if entity is not None:
            seen[entity.join_key.casefold()] = f"the entity key '{entity.join_key}'"
        for f in features:
            key = f.name.casefold()
            if key in seen:
                self.add(f"feature '{f.name}' is one column with {seen[key]} in the feature snapshots: rename it")
            else:
                seen[key] = f"feature '{f.name}' (Delta column names are case-insensitive)"

    def _name(self, name: str, at: str) -> bool:
        """Whether ``name`` is a plain name (else it is reported)."""
        if _NAME.fullmatch(name):
            return True
        self.add(
            f"name {name!r} must be letters, digits, underscores and hyphens (it names Delta columns, Redis keys "
            "and API references)",
            at,
        )
        return False

    def _entity(self, entities: dict[str, Entity | None]) -> Entity | None:
        names = [e for e in self.sfv.entities if e != "__dummy"]
        if len(names) != 1:
            self.add(f"fstore computes a view for one entity; entities={names} has {len(names)}")
            return None
        if names[0] not in entities:
            self.add(f"entity '{names[0]}' is not declared in the repository: declare it as a module-level Entity")
            return None
        return entities[names[0]]  # None: an invalid entity, reported with the entity

    def _measures(self) -> None:
        for _, name, text in fstore_tags(self.sfv.tags, ("measure.",), self.where, self.problems):
            if not self._name(name, f", measure '{name}'"):
                self.bad.add(name)
                continue
            try:
                value, cond = parse_measure(text)
                kind = check_measure(value, cond, self.columns)
            except ExprError as exc:
                self.add(f"{text!r}: {exc}", f", measure '{name}'")
                self.bad.add(name)
                continue
            self.declared[name] = Measure(name, value, cond, kind)

    def _aggregation(self, agg: Aggregation, entity: Entity | None) -> None:
        name = agg.resolved_name(agg.time_window)
        at = f", aggregation '{name}'"
        self.bad.add(name)  # until it compiles
        if not self._name(name, at):
            return
        function = FUNCTIONS.get(agg.function.strip().lower())
        if function is None:
            self.add(f"function '{agg.function}' is not supported; use one of {', '.join(Function)}", at)
        measure = self._measure(agg.column, at)
        if agg.time_window is None:
            self.add("declares no time_window: fstore serves windowed aggregations only", at)
            return
        window = agg.time_window // _US
        slide = None if agg.slide_interval in (None, agg.time_window) else agg.slide_interval // _US
        why = window_problem(window, slide)
        if why is not None:
            self.add(why, at)
        if measure is None or function is None or why is not None:
            return
        if function.numeric and measure.kind is not Kind.NUMBER:
            self.add(
                f"the {function} of '{agg.column}' (a {measure.kind}) is undefined: "
                "use count or count_distinct, or a numeric measure",
                at,
            )
            return
        if name in self.windowed:
            self.add(f"two aggregations are named '{name}': give each its own name=")
            return
        if entity is not None and name == entity.join_key:
            self.add(f"aggregation '{name}' is named like the entity key: rename it")
            return
        self.bad.discard(name)
        self.used.setdefault(measure.name, measure)
        self.windowed[name] = WindowedFeature(name, measure.name, function, window, slide)

    def _measure(self, column: str, at: str) -> Measure | None:
        """The measure an aggregation's column names: a declared one, else an event field as is."""
        if column in self.declared:
            return self.declared[column]
        kind = self.columns[column].kind if column in self.columns else None
        if column in self.bad:
            pass
        elif kind is Kind.BOOL:
            self.add(f"column '{column}' is a boolean: count its events with a measure '1 if {column}'", at)
        elif kind is not None:
            return Measure(column, Col(column), None, kind)
        else:
            known = ", ".join([*self.declared, *self.columns]) or "none"
            self.add(
                f"unknown column '{column}': declare tags {{'fstore.measure.{column}': '...'}} "
                f"or use an event field (known: {known})",
                at,
            )
        return None

    def _features(self) -> list[Feature]:
        """The features in the order of the view's schema, each checked against its ``Field``."""
        out: list[Feature] = []
        listed: set[str] = set()
        keys = {c.name for c in self.sfv.entity_columns}  # Feast marks the join-key fields itself
        for field in self.sfv.features:  # (sfv.schema is a set: its order is random)
            if field.name in keys:
                continue
            at = f", Field '{field.name}'"
            if field.name in listed:
                self.add("is listed twice in schema", at)
                continue
            listed.add(field.name)
            feature = self._feature(field, at)
            if feature is not None:
                out.append(feature)
        for name, f in self.windowed.items():
            if name not in listed:
                dtype = _DTYPE_NAMES[f.dtype]
                self.add(f"aggregation '{name}' has no Field: add Field(name='{name}', dtype={dtype}) to schema")
        return out

    def _feature(self, field: Field, at: str) -> Feature | None:
        tags = {k: v for k, _, v in fstore_tags(field.tags, ("ratio", "sketch"), self.where + at, self.problems)}
        if "ratio" in tags:
            return self._ratio(field, tags["ratio"], at) if self._name(field.name, at) else None
        if field.name in self.bad:
            return None
        if field.name not in self.windowed:
            self.add(
                "is neither an aggregation's name nor a ratio: add an Aggregation(name=...) "
                "or tags={'fstore.ratio': 'a / b'}, or remove it",
                at,
            )
            return None
        feature = self.windowed[field.name]
        dtype = _DTYPE_NAMES[feature.dtype]
        if field.dtype != _DTYPES[feature.dtype]:
            self.add(f"a {feature.function} is {dtype}: declare dtype={dtype}", at)
            return None
        sketch = tags.get("sketch")
        if sketch is not None and (feature.function is not Function.COUNT_DISTINCT or sketch not in SKETCHES):
            self.add(f"fstore.sketch applies to count_distinct only, with one of: {', '.join(SKETCHES)}", at)
            return None
        return replace(feature, sketch=sketch, description=field.description)

    def _ratio(self, field: Field, text: str, at: str) -> Feature | None:
        m = _RATIO.fullmatch(text)
        if field.name in self.windowed:
            self.add("is an aggregation and a ratio: drop the fstore.ratio tag or rename one", at)
        elif m is not None and {m[1], m[2]} & self.bad:
            pass  # a part is already reported
        elif m is None or not {m[1], m[2]} <= self.windowed.keys():
            self.add(
                f"fstore.ratio {text!r} must divide two aggregations of this view: 'a / b' "
                f"(known: {', '.join(self.windowed)})",
                at,
            )
        elif field.dtype != Float64:
            self.add("a ratio is a Float64: declare dtype=Float64", at)
        else:
            return RatioFeature(field.name, m[1], m[2], field.description)
        return None
