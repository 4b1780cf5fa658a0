"""The compiled plan: every definition the engines run from, as plain frozen data (docs/design.md §2, §3).

A user's Feast repository is compiled once (:mod:`fstore.feast.compile`) into a :class:`Plan`: the event
schema (:mod:`fstore.core.event_schema`), the entities, and per feature view its measures (a declared
filter and value), its windowed features (measure, function, window, hop), its ratios and the tiles
each hop needs. Nothing here knows
Feast or any engine; the plan names no feature by itself. Invariants that hold for any plan (names
unique, references resolved, hops dividing a day) are checked on construction and raise
:class:`PlanError`; the compiler reports the user-facing mistakes before it gets that far.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fstore.core.event_schema import EventSchema
from fstore.core.expr import Expr, Kind, unparse_measure
from fstore.core.functions import Function, State, states_of
from fstore.core.plan_error import PlanError, require_unique
from fstore.core.window_limits import window_problem
from fstore.core.windows import hop as default_hop


@dataclass(frozen=True)
class Entity:
    """An entity type: its name and the event field that carries its key."""

    name: str
    join_key: str
    description: str = ""


@dataclass(frozen=True)
class Measure:
    """What a view's tiles aggregate: the value of each event where the filter holds.

    ``where`` ``None`` means every event; an event whose value is null does not count either.
    ``kind`` is the kind of the value (a number, or a string for count and count_distinct).
    """

    name: str
    value: Expr
    where: Expr | None = None
    kind: Kind = Kind.NUMBER

    @property
    def text(self) -> str:
        """The canonical text of the measure (``VALUE [if CONDITION]``)."""
        return unparse_measure(self.value, self.where)


@dataclass(frozen=True)
class WindowedFeature:
    """``function`` of a measure over ``[tail(t), t)``, ``tail(t) = floor(t - window, hop)``.

    ``slide`` is the hop the user declared (Feast's ``slide_interval``); ``None`` applies the default
    table of docs/design.md §3. Times are microseconds. ``sketch`` names a declared approximate sketch of a
    count_distinct feature (``None``: exact).
    """

    name: str
    measure: str
    function: Function
    window: int
    slide: int | None = None
    sketch: str | None = None
    description: str = ""

    @property
    def hop(self) -> int:
        """The tile size that serves this feature."""
        return self.slide if self.slide is not None else default_hop(self.window)

    @property
    def dtype(self) -> str:
        """The value type of the feature."""
        return self.function.dtype

    @property
    def states(self) -> tuple[State, ...]:
        """The partial-aggregate parts this feature reads from its tiles."""
        return states_of(self.function, self.sketch)


@dataclass(frozen=True)
class RatioFeature:
    """``numerator / denominator`` of two windowed features of the same view; null when the denominator
    is 0 or null."""

    name: str
    numerator: str
    denominator: str
    description: str = ""

    @property
    def dtype(self) -> str:
        """Ratios are floats."""
        return "float64"


Feature = WindowedFeature | RatioFeature


@dataclass(frozen=True)
class TileMeasure:
    """One measure in the tiles of one hop, with the parts its features need."""

    measure: str
    states: tuple[State, ...]


@dataclass(frozen=True)
class TileGroup:
    """The tiles of one size of a view: the measures they carry, in first-use order."""

    hop: int
    measures: tuple[TileMeasure, ...]


@dataclass(frozen=True)
class View:
    """A feature view: features of one entity computed from one event stream."""

    name: str
    entity: Entity
    measures: tuple[Measure, ...]
    features: tuple[Feature, ...]
    description: str = ""

    def __post_init__(self) -> None:
        require_unique([m.name for m in self.measures], f"view {self.name}: measure")
        require_unique(self.feature_names, f"view {self.name}: feature")
        measures = {m.name: m for m in self.measures}
        windowed = {f.name for f in self.windowed}
        problems = []
        for f in self.features:
            if isinstance(f, WindowedFeature):
                if f.measure not in measures:
                    problems.append(f"view {self.name}: feature {f.name} uses unknown measure '{f.measure}'")
                elif f.function.numeric and measures[f.measure].kind is not Kind.NUMBER:
                    problems.append(f"view {self.name}: feature {f.name} takes the {f.function} of a string")
                if (why := window_problem(f.window, f.slide)) is not None:
                    problems.append(f"view {self.name}: feature {f.name}: {why}")
            elif not {f.numerator, f.denominator} <= windowed:
                problems.append(f"view {self.name}: ratio {f.name} refers to a feature that is not windowed")
        if problems:
            raise PlanError(problems)

    @property
    def windowed(self) -> tuple[WindowedFeature, ...]:
        """The windowed features, in definition order."""
        return tuple(f for f in self.features if isinstance(f, WindowedFeature))

    @property
    def feature_names(self) -> tuple[str, ...]:
        """All feature names, in definition order."""
        return tuple(f.name for f in self.features)

    def feature(self, name: str) -> Feature:
        """The feature called ``name`` (``KeyError`` naming the view and the feature when there is none)."""
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"feature view '{self.name}' has no feature '{name}'")

    def measure(self, name: str) -> Measure:
        """The measure called ``name``."""
        for m in self.measures:
            if m.name == name:
                return m
        raise KeyError(f"feature view '{self.name}' has no measure '{name}'")

    @property
    def hops(self) -> tuple[int, ...]:
        """Distinct tile sizes this view needs, ascending."""
        return tuple(sorted({f.hop for f in self.windowed}))

    @property
    def tiles(self) -> tuple[TileGroup, ...]:
        """Per hop (ascending), the measures its tiles carry and the state each needs."""
        groups = []
        for size in self.hops:
            states: dict[str, dict[State, None]] = {}
            for f in self.windowed:
                if f.hop == size:
                    states.setdefault(f.measure, {}).update(dict.fromkeys(f.states))
            groups.append(TileGroup(size, tuple(TileMeasure(m, _ordered(s)) for m, s in states.items())))
        return tuple(groups)

    @property
    def longest_window(self) -> int:
        """The longest window of the view, in microseconds."""
        return max(f.window for f in self.windowed)


def _ordered(states: Mapping[State, None]) -> tuple[State, ...]:
    return tuple(s for s in State if s in states)


@dataclass(frozen=True)
class Plan:
    """Everything the engines run from: the event schema, the entities and the feature views.

    ``source`` and ``topic`` name the event stream (the Feast stream source and its Kafka topic).
    """

    schema: EventSchema
    entities: tuple[Entity, ...]
    views: tuple[View, ...]
    source: str = ""
    topic: str = ""

    def __post_init__(self) -> None:
        require_unique([e.name for e in self.entities], "entity")
        require_unique([v.name for v in self.views], "feature view")
        names = {e.name for e in self.entities}
        fields = set(self.schema.names)
        problems = []
        for e in self.entities:
            if e.join_key not in fields:
                problems.append(f"entity {e.name}: join key '{e.join_key}' is not an event field")
        for v in self.views:
            if v.entity.name not in names or v.entity not in self.entities:
                problems.append(f"view {v.name}: entity '{v.entity.name}' is not one of the plan's entities")
        if problems:
            raise PlanError(problems)

    def view(self, name: str) -> View:
        """The view called ``name`` (``KeyError`` naming it and the known views)."""
        for v in self.views:
            if v.name == name:
                return v
        raise KeyError(f"unknown feature view '{name}' (known: {', '.join(v.name for v in self.views)})")

    def resolve(self, refs: Iterable[str]) -> list[tuple[View, Feature]]:
        """Resolve ``view:feature`` and whole-``view`` references, keeping order and dropping repeats.

        A reference with a colon names one feature: ``view:`` is the unknown feature ``''``, never the view.

        Raises:
            KeyError: naming the first unknown view or feature.
        """
        out: list[tuple[View, Feature]] = []
        seen: set[tuple[str, str]] = set()
        for ref in refs:
            view_name, colon, feat_name = ref.strip().partition(":")
            view = self.view(view_name)
            for f in (view.feature(feat_name),) if colon else view.features:
                if (view.name, f.name) not in seen:
                    seen.add((view.name, f.name))
                    out.append((view, f))
        return out

    @property
    def largest_hop(self) -> int:
        """The largest tile size of any view."""
        return max(max(v.hops) for v in self.views)

    @property
    def longest_window(self) -> int:
        """The longest window of any view."""
        return max(v.longest_window for v in self.views)
