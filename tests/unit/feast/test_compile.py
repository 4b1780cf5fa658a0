"""The compiler (fstore.feast.compile): the example repository compiles to exactly today's definitions,
the second repository compiles, and every invalid repository gets one clear error per mistake and no
plan at all."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fstore.core.events import EVENT_TYPES, ID_FIELDS, MAX_PRICE, MAX_QUANTITY, Event
from fstore.core.expr import Num
from fstore.core.expr_parse import parse_condition, parse_measure
from fstore.core.features import VIEWS, RatioFeature, ValueKind, WindowedFeature, largest_hop, longest_window
from fstore.core.functions import Function
from fstore.core.plan import RatioFeature as PlanRatio
from fstore.core.plan import WindowedFeature as PlanWindowed
from fstore.core.plan_error import PlanError
from fstore.core.timeutil import DAY, HOUR, MINUTE
from fstore.feast.compile import compile_objects, compile_repo, load_repo
from fstore.feast.schema_json import parse_schema_json
from tests.support.repos import ROOT, compiled

pytestmark = pytest.mark.unit

RIDES = (ROOT / "rides" / "features.py").read_text()
YAML = (ROOT / "rides" / "feature_store.yaml").read_text()
TODAY = {"count": Function.COUNT, "sum": Function.SUM, "avg": Function.MEAN, "min": Function.MIN, "max": Function.MAX}


def test_the_example_repository_compiles_to_todays_definitions() -> None:
    plan = compiled("ecommerce")
    assert {v.name for v in plan.views} == set(VIEWS)
    for old in VIEWS.values():
        new = plan.view(old.name)
        assert (new.entity.name, new.entity.join_key, new.entity.description) == (
            old.entity.name,
            old.entity.join_key,
            old.entity.description,
        )
        assert new.description == old.description
        assert new.feature_names == old.feature_names  # the declared order is kept
        for f in old.features:
            g = new.feature(f.name)
            assert (g.description, g.dtype) == (f.description, f.dtype)
            if isinstance(f, RatioFeature):
                assert isinstance(g, PlanRatio)
                assert (g.numerator, g.denominator) == (f.numerator, f.denominator)
                continue
            assert isinstance(f, WindowedFeature) and isinstance(g, PlanWindowed)
            m = new.measure(g.measure)
            assert g.measure == f.measure.name
            assert m.where == parse_condition(f"event_type == '{f.measure.event_type}'")
            # today's revenue is (price or 0) × quantity; price is required for purchases, so it is never null
            revenue = parse_measure("price * quantity")[0]
            assert m.value == (revenue if f.measure.value is ValueKind.REVENUE else Num(1.0))
            assert g.function is TODAY[str(f.agg)]
            assert (g.window, g.hop, g.slide, g.sketch) == (f.window, f.hop, None, None)
        assert new.hops == old.hops
        for group in new.tiles:
            assert [t.measure for t in group.measures] == [m.name for m in old.measures_for_hop(group.hop)]
    assert (plan.largest_hop, plan.longest_window) == (largest_hop(), longest_window())
    assert (plan.source, plan.topic) == ("events", "events")


def test_the_example_event_schema_states_todays_contract() -> None:
    plan = compiled("ecommerce")
    s = plan.schema
    assert s.names == Event._fields
    assert s.field("event_type").values == EVENT_TYPES
    assert {s.id_field, *(e.join_key for e in plan.entities)} == set(ID_FIELDS)
    assert {f.name for f in s.fields if f.required} == {"event_id", "event_type", "user_id", "event_time"}
    assert s.field("product_id").required_when == parse_condition("event_type != 'page_view'")
    assert s.field("price").required_when == parse_condition("event_type == 'purchase'")
    assert (s.field("price").minimum, s.field("price").maximum) == (0, MAX_PRICE)
    quantity = s.field("quantity")
    assert (quantity.minimum, quantity.maximum, quantity.default) == (1, MAX_QUANTITY, 1)
    assert s.timestamp_field == "event_time"


def test_the_second_repository_compiles() -> None:
    plan = compiled("rides")
    assert [v.name for v in plan.views] == ["driver_performance", "zone_demand"]
    assert [(e.name, e.join_key) for e in plan.entities] == [("driver", "driver_id"), ("zone", "zone_id")]
    assert (plan.schema.id_field, plan.schema.timestamp_field) == ("uid", "ts")
    windowed = [f for v in plan.views for f in v.windowed]
    assert {f.function for f in windowed} == set(Function)
    assert {f.window for f in windowed} == {10 * MINUTE, 3 * HOUR, 2 * DAY, 30 * DAY}
    dp = plan.view("driver_performance")
    assert dp.feature("fare_3h") == PlanWindowed(
        "fare_3h", "fare", Function.SUM, 3 * HOUR, 15 * MINUTE, None, "Fares earned, last 3 hours (15-minute hop)"
    )
    assert dp.measure("fare").value == parse_measure("distance_km * rate_per_km * surge")[0]
    assert dp.feature("cancellation_rate_2d") == PlanRatio(
        "cancellation_rate_2d", "cancellations_2d", "trips_2d", "Cancellations per completed trip"
    )
    assert dp.hops == (5 * MINUTE, 15 * MINUTE, HOUR, 6 * HOUR, DAY)


def test_registry_order_is_canonical() -> None:
    """Feast's registry does not keep a view's field order: without it, ratios follow their parts."""
    objects = load_repo(ROOT / "ecommerce")
    objects.field_order = False
    pe = compile_objects(objects).view("product_engagement")
    assert pe.feature_names[:6] == ("impressions_1h", "impressions_24h", "clicks_1h", "ctr_1h", "clicks_24h", "ctr_24h")
    assert pe.feature_names[-1] == "conversion_rate_7d"
    assert sorted(pe.feature_names) == sorted(compiled("ecommerce").view("product_engagement").feature_names)
    rides = load_repo(ROOT / "rides")
    rides.field_order = False
    assert compile_objects(rides) == compiled("rides")  # declared in the canonical order already


def write_repo(tmp: Path, text: str) -> Path:
    repo = tmp / "repo"
    repo.mkdir()
    (repo / "feature_store.yaml").write_text(YAML)
    (repo / "features.py").write_text(text)
    return repo


def edit(*pairs: tuple[str, str]) -> str:
    text = RIDES
    for old, new in pairs:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


INVALID: dict[str, tuple[str, str]] = {
    "unsupported function": (
        edit(('function="sum", time_window=H3', 'function="median", time_window=H3')),
        "aggregation 'fare_3h': function 'median' is not supported; use one of count, sum, mean, min, max, std, var",
    ),
    "slide interval not dividing a day": (
        edit(("slide_interval=timedelta(hours=6)", "slide_interval=timedelta(minutes=7)")),
        "aggregation 'riders_30d': slide_interval 7m must be at least 1 minute and divide a day",
    ),
    "window too long": (
        edit(('time_window=M10, name="trips_10m"', 'time_window=timedelta(days=400), name="trips_10m"')),
        "aggregation 'trips_10m': time_window 400d is longer than the longest window fstore serves",
    ),
    "no window": (
        edit(('function="count", time_window=D2, name="trips_2d"', 'function="count", name="trips_2d"')),
        "aggregation 'trips_2d': declares no time_window",
    ),
    "unknown column": (
        edit(('column="cancellation"', 'column="cancelation"')),
        "aggregation 'cancellations_2d': unknown column 'cancelation': declare tags {'fstore.measure.cancelation'",
    ),
    "sum of a string": (
        edit(('column="tip", function="sum"', 'column="rider", function="sum"')),
        "aggregation 'tips_30d': the sum of 'rider' (a string) is undefined",
    ),
    "aggregation of a boolean": (
        edit(
            ('column="trip", function="count", time_window=M10', 'column="airport", function="count", time_window=M10')
        ),
        "column 'airport' is a boolean: count its events with a measure '1 if airport'",
    ),
    "two aggregations with one name": (
        edit(
            ('function="count", time_window=D2, name="trips_2d"', 'function="count", time_window=D2, name="trips_10m"')
        ),
        "StreamFeatureView 'driver_performance': two aggregations are named 'trips_10m'",
    ),
    "two views with one name": (
        edit(('name="zone_demand"', 'name="driver_performance"')),
        "StreamFeatureView 'driver_performance': is declared twice",
    ),
    "entity key missing from the event schema": (
        edit(('join_keys=["zone_id"]', 'join_keys=["zone"]')),
        "Entity 'zone': join key 'zone' must be a STRING field of the event schema: add 'zone STRING'",
    ),
    "bad expression": (
        edit(("\"1 if kind == 'cancelled'\"", "\"1 if kind = 'cancelled'\"")),
        "measure 'cancellation': \"1 if kind = 'cancelled'\": unexpected '=' at position 11: compare with ==",
    ),
    "filter on an undeclared value": (
        edit(("\"1 if kind == 'requested'\"", "\"1 if kind == 'request'\"")),
        "'request' is not a declared value of kind (declared: cancelled, completed, rated, requested, tipped)",
    ),
    "ratio of an unknown feature": (
        edit(('"cancellations_2d / trips_2d"', '"cancellations_2d / trip_2d"')),
        "Field 'cancellation_rate_2d': fstore.ratio 'cancellations_2d / trip_2d' must divide two aggregations",
    ),
    "no id field": (
        edit(('"fstore.id_field": "uid",', "")),
        "KafkaSource 'ride_events': no id field: declare the field that identifies an event",
    ),
    "no timestamp field": (
        edit(("ts TIMESTAMP NOT NULL, ", "")),
        "KafkaSource 'ride_events': timestamp_field 'ts' must be a TIMESTAMP field of schema_json",
    ),
    "feature dtype mismatch": (
        edit(('Field(name="trips_10m", dtype=Int64', 'Field(name="trips_10m", dtype=Float64')),
        "Field 'trips_10m': a count is Int64: declare dtype=Int64",
    ),
    "aggregation without a field": (
        edit(('        Field(name="tips_30d", dtype=Float64),\n', "")),
        "aggregation 'tips_30d' has no Field: add Field(name='tips_30d', dtype=Float64) to schema",
    ),
    "unknown fstore tag": (
        edit(('"fstore.min.tip": "0"', '"fstore.minimum.tip": "0"')),
        "unknown tag 'fstore.minimum.tip'",
    ),
    "nested field type": (
        edit(("airport BOOLEAN", "airport ARRAY<BOOLEAN>")),
        "schema_json: field 'airport ARRAY<BOOLEAN>': nested types are not supported",
    ),
    "default of the wrong type": (
        edit(('"fstore.default.surge": "1"', '"fstore.default.surge": "high"')),
        "field surge: fstore.default 'high' must be a valid float for an optional field",
    ),
    "sketch on a count": (
        edit(
            (
                'Field(name="trips_2d", dtype=Int64)',
                'Field(name="trips_2d", dtype=Int64, tags={"fstore.sketch": "hll"})',
            )
        ),
        "Field 'trips_2d': fstore.sketch applies to count_distinct only",
    ),
    "a file that does not import": (RIDES + "\nboom(\n", "features.py: cannot be imported: SyntaxError"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_an_invalid_repository_gets_a_clear_error_and_no_plan(case: str, tmp_path: Path) -> None:
    text, message = INVALID[case]
    repo = write_repo(tmp_path, text)
    with pytest.raises(PlanError) as err:
        compile_repo(repo)
    assert message in str(err.value), str(err.value)
    assert "features" not in sys.modules  # the repository's modules are gone again


def test_every_mistake_is_reported_at_once(tmp_path: Path) -> None:
    text = edit(
        ('function="sum", time_window=H3', 'function="median", time_window=H3'),
        ('"cancellations_2d / trips_2d"', '"cancellations_2d / trip_2d"'),
        ('join_keys=["zone_id"]', 'join_keys=["zone"]'),
    )
    with pytest.raises(PlanError) as err:
        compile_repo(write_repo(tmp_path, text))
    assert len(err.value.problems) >= 3
    assert "function 'median'" in str(err.value) and "trip_2d" in str(err.value) and "join key 'zone'" in str(err.value)


def test_a_declared_sketch_is_kept(tmp_path: Path) -> None:
    text = edit(
        (
            'Field(name="riders_30d", dtype=Int64, description="Distinct riders served (exact)")',
            'Field(name="riders_30d", dtype=Int64, tags={"fstore.sketch": "hll"})',
        )
    )
    feature = compile_repo(write_repo(tmp_path, text)).view("driver_performance").feature("riders_30d")
    assert isinstance(feature, PlanWindowed) and feature.sketch == "hll"


def test_two_repositories_with_the_same_module_names_load_side_by_side() -> None:
    assert compile_repo(ROOT / "rides") == compiled("rides")
    assert compile_repo(ROOT / "ecommerce") == compiled("ecommerce")
    assert "features" not in sys.modules


def test_schema_json_reads_the_flat_spark_ddl() -> None:
    fields = parse_schema_json("`a b` STRING NOT NULL COMMENT 'it\\'s', n BIGINT, x DOUBLE, s VARCHAR(10), t TIMESTAMP")
    assert [(f.name, f.type.value, f.not_null, f.comment) for f in fields] == [
        ("a b", "string", True, "it's"),
        ("n", "int", False, ""),
        ("x", "float", False, ""),
        ("s", "string", False, ""),
        ("t", "timestamp", False, ""),
    ]
    for bad, message in [
        ("", "is empty"),
        ("p DECIMAL(10,2)", "DECIMAL is not supported"),
        ("just_a_name", "cannot read"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_schema_json(bad)
