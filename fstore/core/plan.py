"""The compiled plan: every definition the engines run from, as plain frozen data (DESIGN.md §2, §3).

A user's Feast repository is compiled once (:mod:`fstore.feast.compile`) into a :class:`Plan`: the event
schema, the entities, and per feature view its measures (a declared filter and value), its windowed
features (measure, function, window, hop), its ratios and the tiles each hop needs. Nothing here knows
Feast or any engine; the plan names no feature by itself. Invariants that hold for any plan (names
unique, references resolved, hops dividing a day) are checked on construction and raise
:class:`PlanError`; the compiler reports the user-facing mistakes before it gets that far.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from fstore.core.expr import Column, Expr, Kind, unparse_measure
from fstore.core.timeutil import DAY, MINUTE, SECOND
from fstore.core.windows import hop as default_hop


class PlanError(ValueError):
    """Definitions that cannot be compiled; ``problems`` holds one message per mistake, each naming the
    object and saying what to do."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(f"- {p}" for p in self.problems) or "invalid definitions")


class FieldType(StrEnum):
    """Types of event fields."""

    STRING = "string"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    TIMESTAMP = "timestamp"

    @property
    def kind(self) -> Kind | None:
        """The expression kind of the field (``None``: not usable in expressions)."""
        return _KINDS.get(self)


_KINDS = {
    FieldType.STRING: Kind.STRING,
    FieldType.INT: Kind.NUMBER,
    FieldType.FLOAT: Kind.NUMBER,
    FieldType.BOOL: Kind.BOOL,
}

Scalar = str | int | float | bool


@dataclass(frozen=True)
class EventField:
    """One declared field of the event schema.

    ``required``: every event carries it; ``required_when``: a condition under which it is required;
    ``values``: the allowed values of a string field (empty: any); ``minimum``/``maximum``: inclusive
    bounds of a number; ``default``: the value of an absent optional field.
    """

    name: str
    type: FieldType
    required: bool = False
    required_when: Expr | None = None
    values: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    default: Scalar | None = None
    description: str = ""


@dataclass(frozen=True)
class EventSchema:
    """The declared event schema: fields (in declaration order), the id field and the timestamp field."""

    fields: tuple[EventField, ...]
    id_field: str
    timestamp_field: str

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        _unique(names, "event field")
        for special in (self.id_field, self.timestamp_field):
            if special not in names:
                raise PlanError([f"event schema: field '{special}' is not declared"])

    @property
    def names(self) -> tuple[str, ...]:
        """Field names in declaration order."""
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> EventField:
        """The field called ``name`` (``KeyError`` naming it when there is none)."""
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"event schema has no field '{name}'")

    def columns(self) -> dict[str, Column]:
        """What the expression type checker may read: every field but timestamps."""
        return expr_columns(self.fields)


def expr_columns(fields: Iterable[EventField]) -> dict[str, Column]:
    """The fields an expression may read (timestamps may not), with their kinds and declared values."""
    return {f.name: Column(k, frozenset(f.values)) for f in fields if (k := f.type.kind) is not None}


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


class Function(StrEnum):
    """The aggregation functions of Feast's ``Aggregation`` that fstore serves (DESIGN.md §3)."""

    COUNT = "count"
    SUM = "sum"
    MEAN = "mean"
    MIN = "min"
    MAX = "max"
    STD = "std"
    VAR = "var"
    COUNT_DISTINCT = "count_distinct"

    @property
    def dtype(self) -> str:
        """``int64`` for counts, ``float64`` otherwise."""
        return "int64" if self in (Function.COUNT, Function.COUNT_DISTINCT) else "float64"

    @property
    def numeric(self) -> bool:
        """Whether the function needs a numeric measure."""
        return self not in (Function.COUNT, Function.COUNT_DISTINCT)


class State(StrEnum):
    """Parts of a tile's partial aggregate of one measure (DESIGN.md §4)."""

    COUNT = "count"
    SUM = "sum"
    MIN = "min"
    MAX = "max"
    M2 = "m2"  # sum of squared deviations from the mean, merged with the parallel (Chan et al.) formula
    DISTINCT = "distinct"  # the distinct values themselves (exact count_distinct)
    SKETCH = "sketch"  # a declared approximate distinct-count sketch


_STATES = {
    Function.COUNT: (State.COUNT,),
    Function.SUM: (State.SUM,),
    Function.MEAN: (State.COUNT, State.SUM),
    Function.MIN: (State.MIN,),
    Function.MAX: (State.MAX,),
    Function.STD: (State.COUNT, State.SUM, State.M2),
    Function.VAR: (State.COUNT, State.SUM, State.M2),
}

#: Sketches a count_distinct feature may declare instead of exact members.
SKETCHES = ("hll",)
#: The longest window fstore serves: the nightly batch rebuilds ``longest window + largest hop`` of tiles.
MAX_WINDOW = 366 * DAY
#: The smallest declared hop (one tile per entity and measure every minute is the finest Redis keeps).
MIN_HOP = MINUTE
#: The most tiles one value may read (the default hop table never needs more than 366).
MAX_TILES = 1000


def duration_text(us: int) -> str:
    """``90 * MINUTE`` → ``"90m"``, ``2 * DAY`` → ``"2d"``: the largest unit that divides the duration."""
    for unit, suffix in ((DAY, "d"), (3600 * SECOND, "h"), (MINUTE, "m"), (SECOND, "s")):
        if us and us % unit == 0:
            return f"{us // unit}{suffix}"
    return f"{us}us"


def window_problem(window: int, slide: int | None) -> str | None:
    """Why fstore cannot serve a window with this declared hop (``None``: it can).

    A window must be positive and at most :data:`MAX_WINDOW`; a declared hop at least :data:`MIN_HOP`,
    dividing a day (so 00:00 UTC, the batch cutover, is a tile boundary of every hop), at most the
    window, and such that a value reads at most :data:`MAX_TILES` tiles.
    """
    if window <= 0:
        return "time_window must be positive"
    if window > MAX_WINDOW:
        return f"time_window {duration_text(window)} is longer than the longest window fstore serves (366d)"
    if slide is None:
        return None
    if slide < MIN_HOP or DAY % slide:
        return (
            f"slide_interval {duration_text(slide)} must be at least 1 minute and divide a day "
            "(e.g. 5 minutes, 15 minutes, 1 hour, 6 hours, 1 day)"
        )
    if slide > window:
        return f"slide_interval {duration_text(slide)} is longer than time_window {duration_text(window)}"
    tiles = -(-window // slide) + 1
    if tiles > MAX_TILES:
        return (
            f"a value would read {tiles} tiles of {duration_text(slide)} (at most {MAX_TILES}): "
            "declare a larger slide_interval"
        )
    return None


@dataclass(frozen=True)
class WindowedFeature:
    """``function`` of a measure over ``[tail(t), t)``, ``tail(t) = floor(t - window, hop)``.

    ``slide`` is the hop the user declared (Feast's ``slide_interval``); ``None`` applies the default
    table of DESIGN.md §3. Times are microseconds. ``sketch`` names a declared approximate sketch of a
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
        if self.function is Function.COUNT_DISTINCT:
            return (State.SKETCH,) if self.sketch else (State.DISTINCT,)
        return _STATES[self.function]


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
        _unique([m.name for m in self.measures], f"view {self.name}: measure")
        _unique(self.feature_names, f"view {self.name}: feature")
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
        _unique([e.name for e in self.entities], "entity")
        _unique([v.name for v in self.views], "feature view")
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

        Raises:
            KeyError: naming the first unknown view or feature.
        """
        out: list[tuple[View, Feature]] = []
        seen: set[tuple[str, str]] = set()
        for ref in refs:
            view_name, _, feat_name = ref.strip().partition(":")
            view = self.view(view_name)
            for f in view.features if not feat_name else (view.feature(feat_name),):
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


def _unique(names: Iterable[str], what: str) -> None:
    dups = sorted(n for n, k in Counter(names).items() if k > 1)
    if dups:
        raise PlanError([f"{what} names must be unique; repeated: {', '.join(dups)}"])
