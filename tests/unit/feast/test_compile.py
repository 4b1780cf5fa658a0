"""The compiler (fstore.feast.compile): the example repository compiles to exactly today's definitions,
the second repository compiles, and every invalid repository gets one clear error per mistake and no
plan at all."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from fstore.core.event_check import EventCheck
from fstore.core.events import Rejection
from fstore.core.expr import Num
from fstore.core.expr_parse import parse_condition, parse_measure
from fstore.core.functions import Function
from fstore.core.plan import RatioFeature as PlanRatio
from fstore.core.plan import WindowedFeature as PlanWindowed
from fstore.core.plan_error import PlanError
from fstore.core.timeutil import DAY, HOUR, MINUTE
from fstore.feast.compile import compile_objects, compile_repo, load_repo, plan_of
from fstore.feast.schema_json import parse_schema_json
from tests.support.legacy.events_example import EVENT_TYPES, ID_FIELDS, MAX_PRICE, MAX_QUANTITY, Event
from tests.support.legacy.features import VIEWS, RatioFeature, ValueKind, WindowedFeature, largest_hop, longest_window
from tests.support.repos import ROOT, compiled
from tests.support.repos.mistakes import INVALID, edit, write_repo

pytestmark = pytest.mark.unit

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


@pytest.mark.parametrize("case", list(INVALID))
def test_an_invalid_repository_gets_a_clear_error_and_no_plan(case: str, tmp_path: Path) -> None:
    text, message = INVALID[case]
    repo = write_repo(tmp_path, text)
    with pytest.raises(PlanError) as err:
        compile_repo(repo)
    assert message in str(err.value), str(err.value)
    assert "features" not in sys.modules  # the repository's modules are gone again


@pytest.mark.parametrize("kind", ["DOUBLE", "STRING", "BIGINT", "INT"])
def test_the_advice_for_a_second_timestamp_holds_an_epoch_millisecond_value(kind: str, tmp_path: Path) -> None:
    """A second TIMESTAMP is refused with advice (probe-repo3): the advised types keep today's epoch
    milliseconds (1.8e12) and ISO text (a BIGINT, which the advice names, held 32 bits and dead-lettered
    them); an INT, which holds 32 bits, is not advised."""
    (tmp_path / "t").mkdir()
    (tmp_path / kind).mkdir()
    with pytest.raises(PlanError) as err:
        compile_repo(write_repo(tmp_path / "t", edit(("airport BOOLEAN", "airport BOOLEAN, paid_at TIMESTAMP"))))
    advised = re.findall(r"(?:declare paid_at as|\) or| or) ([A-Z]+)\b", str(err.value))
    plan = compile_repo(write_repo(tmp_path / kind, edit(("airport BOOLEAN", f"airport BOOLEAN, paid_at {kind}"))))
    check = EventCheck(plan.schema, [e.join_key for e in plan.entities]).check
    now_ms = 1_795_941_558_730
    value = "2026-11-29T08:39:18.730Z" if kind == "STRING" else now_ms
    event = {"uid": "r1", "kind": "requested", "zone_id": "z1", "ts": now_ms, "paid_at": value}
    row = check(event, now_ms * 1000)
    assert advised == ["STRING", "BIGINT"], str(err.value)
    if kind == "INT":
        assert isinstance(row, Rejection) and row.reason == "invalid_type:paid_at"
    else:
        assert not isinstance(row, Rejection) and row["paid_at"] == value


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
        ("n", "long", False, ""),
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


def test_the_feast_stores_share_one_compiled_plan_per_repository() -> None:
    """The online and offline stores ask :func:`plan_of`: one compilation per repository and process, and a
    config without a repository path is refused naming the store."""
    config = SimpleNamespace(repo_path=str(ROOT / "rides"))
    first = plan_of(config, "online store")
    assert plan_of(SimpleNamespace(repo_path=ROOT / "rides" / "." / ""), "offline store") is first
    assert first == compiled("rides")
    with pytest.raises(PlanError, match="the fstore offline store needs the Feast repository's path"):
        plan_of(SimpleNamespace(repo_path=None), "offline store")


def test_the_feast_stores_follow_the_applied_record_and_refuse_pending_features(tmp_path: Path) -> None:
    """With an applied record the Feast stores serve its plan (not the source), follow it when it changes,
    and the online store refuses a pending feature with the API's 409 message instead of a value."""
    import shutil
    import time

    from fstore import applied
    from fstore.feast.compile import applied_of
    from fstore.feast.online_store import FeatureNotBuiltError, FstoreOnlineStore

    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "rides", repo)
    rides, ecommerce = compiled("rides"), compiled("ecommerce")
    config = SimpleNamespace(repo_path=str(repo))
    assert applied_of(config, "online store") == (rides, frozenset())  # never applied: the source

    view = ecommerce.views[0]
    ref = f"{view.name}:{view.feature_names[0]}"
    applied.save(repo, applied.AppliedPlan(ecommerce, 1, pending=(ref,), building=(view.name,)))
    assert applied_of(config, "offline store") == (ecommerce, frozenset({ref}))
    assert plan_of(config, "offline store") == ecommerce
    table = SimpleNamespace(name=view.name)
    with pytest.raises(FeatureNotBuiltError, match=f"'{ref}' is applied but its tiles are not built.*fstore backfill"):
        FstoreOnlineStore()._reads(config, table, [], [view.feature_names[0]])  # type: ignore[arg-type]

    time.sleep(0.01)  # a new mtime
    applied.save(repo, applied.AppliedPlan(ecommerce, 2))  # the backfill done
    assert applied_of(config, "online store") == (ecommerce, frozenset())
    got, reads = FstoreOnlineStore()._reads(config, table, [], [view.feature_names[0]])  # type: ignore[arg-type]
    assert got == view and reads.reads == [] and not reads.with_key
