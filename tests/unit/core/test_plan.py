"""The plan data model (fstore.core.plan): hops, tiles per hop, states, lookups and its invariants."""

from __future__ import annotations

import pytest

from fstore.core.event_schema import EventField, EventSchema, FieldType
from fstore.core.expr import Kind
from fstore.core.expr_parse import parse_measure
from fstore.core.functions import Function, State
from fstore.core.plan import Entity, Measure, Plan, RatioFeature, TileGroup, TileMeasure, View, WindowedFeature
from fstore.core.plan_error import PlanError
from fstore.core.timeutil import DAY, HOUR, MINUTE, SECOND
from fstore.core.window_limits import duration_text, window_problem

pytestmark = pytest.mark.unit

SCHEMA = EventSchema(
    (
        EventField("id", FieldType.STRING, required=True),
        EventField("who", FieldType.STRING),
        EventField("what", FieldType.STRING, values=("a", "b")),
        EventField("amount", FieldType.FLOAT),
        EventField("at", FieldType.TIMESTAMP, required=True),
    ),
    "id",
    "at",
)
WHO = Entity("who", "who")


def measure(name: str, text: str, kind: Kind = Kind.NUMBER) -> Measure:
    value, where = parse_measure(text)
    return Measure(name, value, where, kind)


A = measure("a", "1 if what == 'a'")
AMOUNT = measure("amount", "amount if what == 'b'")
LABEL = measure("label", "who", Kind.STRING)


def view(*features: WindowedFeature | RatioFeature, measures: tuple[Measure, ...] = (A, AMOUNT, LABEL)) -> View:
    return View("v", WHO, measures, features)


def test_hop_is_the_declared_slide_or_the_design_table() -> None:
    assert WindowedFeature("x", "a", Function.COUNT, 12 * HOUR).hop == 5 * MINUTE
    assert WindowedFeature("x", "a", Function.COUNT, 12 * HOUR + 1).hop == HOUR
    assert WindowedFeature("x", "a", Function.COUNT, 12 * DAY).hop == HOUR
    assert WindowedFeature("x", "a", Function.COUNT, 13 * DAY).hop == DAY
    assert WindowedFeature("x", "a", Function.COUNT, 3 * HOUR, slide=15 * MINUTE).hop == 15 * MINUTE


def test_tiles_group_measures_per_hop_with_the_states_their_features_read() -> None:
    v = view(
        WindowedFeature("n_1h", "a", Function.COUNT, HOUR),
        WindowedFeature("mean_2d", "amount", Function.MEAN, 2 * DAY),
        WindowedFeature("sd_2d", "amount", Function.STD, 2 * DAY),
        WindowedFeature("max_1h", "amount", Function.MAX, HOUR),
        WindowedFeature("who_1h", "label", Function.COUNT_DISTINCT, HOUR),
        WindowedFeature("who_30d", "label", Function.COUNT_DISTINCT, 30 * DAY, sketch="hll"),
        RatioFeature("r", "n_1h", "mean_2d"),
    )
    assert v.hops == (5 * MINUTE, HOUR, DAY)
    assert v.tiles == (
        TileGroup(
            5 * MINUTE,
            (
                TileMeasure("a", (State.COUNT,)),
                TileMeasure("amount", (State.MAX,)),
                TileMeasure("label", (State.DISTINCT,)),
            ),
        ),
        TileGroup(HOUR, (TileMeasure("amount", (State.COUNT, State.SUM, State.M2)),)),
        TileGroup(DAY, (TileMeasure("label", (State.DISTINCT,)),)),  # a declared sketch: exact members for now
    )
    assert v.longest_window == 30 * DAY
    assert [f.dtype for f in v.features] == ["int64", "float64", "float64", "float64", "int64", "int64", "float64"]


def test_plan_lookups() -> None:
    v = view(WindowedFeature("n", "a", Function.COUNT, HOUR), RatioFeature("r", "n", "n"), measures=(A,))
    plan = Plan(SCHEMA, (WHO,), (v,))
    assert plan.view("v") is v
    assert [f.name for _, f in plan.resolve(["v:r", "v", "v:n"])] == ["r", "n"]
    assert plan.largest_hop == 5 * MINUTE and plan.longest_window == HOUR
    with pytest.raises(KeyError, match="unknown feature view 'w' \\(known: v\\)"):
        plan.view("w")
    with pytest.raises(KeyError, match="has no feature 'm'"):
        plan.resolve(["v:m"])
    assert SCHEMA.columns()["what"].values == {"a", "b"}
    assert "at" not in SCHEMA.columns()  # timestamps are not expression values


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: view(WindowedFeature("n", "zzz", Function.COUNT, HOUR)), "unknown measure 'zzz'"),
        (lambda: view(WindowedFeature("s", "label", Function.SUM, HOUR)), "takes the sum of a string"),
        (lambda: view(RatioFeature("r", "n", "m")), "ratio r refers to a feature that is not windowed"),
        (
            lambda: view(
                WindowedFeature("n", "a", Function.COUNT, HOUR), WindowedFeature("n", "a", Function.SUM, HOUR)
            ),
            "feature names must be unique; repeated: n",
        ),
        (lambda: view(WindowedFeature("n", "a", Function.COUNT, HOUR, slide=7 * MINUTE)), "divide a day"),
        (lambda: EventSchema(SCHEMA.fields, "nope", "at"), "field 'nope' is not declared"),
        (lambda: Plan(SCHEMA, (Entity("who", "whom"),), ()), "join key 'whom' is not an event field"),
        (lambda: Plan(SCHEMA, (), (view(measures=()),)), "entity 'who' is not one of the plan's entities"),
    ],
)
def test_invariants(build: object, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        build()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("window", "slide", "problem"),
    [
        (HOUR, None, None),
        (366 * DAY, None, None),
        (30 * DAY, 6 * HOUR, None),
        (HOUR, MINUTE, None),
        (0, None, "must be positive"),
        (367 * DAY, None, "longer than the longest window fstore serves (366d)"),
        (HOUR, 30 * SECOND, "at least 1 minute"),
        (HOUR, 7 * MINUTE, "divide a day"),
        (HOUR, 2 * DAY, "divide a day"),
        (HOUR, 2 * HOUR, "slide_interval 2h is longer than time_window 1h"),
        (30 * DAY, MINUTE, "would read 43201 tiles of 1m (at most 1000)"),
    ],
)
def test_window_problems(window: int, slide: int | None, problem: str | None) -> None:
    why = window_problem(window, slide)
    assert why == problem if problem is None else problem in (why or "")


def test_duration_text() -> None:
    assert [duration_text(x) for x in (2 * DAY, 3 * HOUR, 90 * MINUTE, 30 * SECOND, 7)] == [
        "2d",
        "3h",
        "90m",
        "30s",
        "7us",
    ]
