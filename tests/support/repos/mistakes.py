"""A table of mistakes in a feature repository (issue 13: each gets a clear error and changes nothing):
the second repository (``rides``) with one edit each, and the message the compiler must give."""

from __future__ import annotations

from pathlib import Path

from tests.support.repos import ROOT

RIDES = (ROOT / "rides" / "features.py").read_text()
YAML = (ROOT / "rides" / "feature_store.yaml").read_text()


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
    "a BatchFeatureView": (  # named as declared, not as Feast's base class (probe-feast)
        RIDES
        + "\nfrom feast import BatchFeatureView\n"
        + "driver_batch = BatchFeatureView(name='driver_batch', entities=[driver], source=ride_log, "
        + "aggregations=[Aggregation(column='tip', function='sum', time_window=timedelta(days=7), name='tips_7d')], "
        + "schema=[Field(name='tips_7d', dtype=Float64)])\n",
        "BatchFeatureView 'driver_batch': fstore serves StreamFeatureViews with aggregations",
    ),
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
    # names end up in Delta columns and tables (a comma or space fails the batch job), Redis keys (a view's keys
    # are found by the prefix "fs:{<view>|") and the API's comma-separated view:feature references
    "feature name that is not a plain name": (
        edit(
            ('name="fare_mean_2d"),', 'name="fare,mean_2d"),'),
            ('Field(name="fare_mean_2d"', 'Field(name="fare,mean_2d"'),
        ),
        "aggregation 'fare,mean_2d': name 'fare,mean_2d' must be letters, digits, underscores and hyphens",
    ),
    "view name that is not a plain name": (
        edit(('    name="zone_demand",', '    name="zone|demand",')),
        "StreamFeatureView 'zone|demand': name 'zone|demand' must be letters, digits, underscores and hyphens",
    ),
    # Delta column names are case-insensitive: a feature named like another up to case (or like the join key,
    # or the snapshots' time column) would fail every batch run
    "feature names equal up to case": (
        edit(
            ('name="fare_mean_2d"),', 'name="Fare_3h"),'),
            ('Field(name="fare_mean_2d"', 'Field(name="Fare_3h"'),
        ),
        "feature 'Fare_3h' is one column with feature 'fare_3h' (Delta column names are case-insensitive)",
    ),
    "feature named like the snapshots' time column": (
        edit(
            ('name="fare_mean_2d"),', 'name="event_timestamp"),'),
            ('Field(name="fare_mean_2d"', 'Field(name="event_timestamp"'),
        ),
        "feature 'event_timestamp' is one column with the time column 'event_timestamp'",
    ),
    "measure name that is not a plain name": (
        edit(
            ('"fstore.measure.cancellation":', '"fstore.measure.cancel lation":'),
            ('column="cancellation"', 'column="cancel lation"'),
        ),
        "measure 'cancel lation': name 'cancel lation' must be letters, digits, underscores and hyphens",
    ),
    # probe-repo3: the advice named BIGINT while a BIGINT held 32 bits, so every epoch-millisecond value in it was
    # dead-lettered as invalid_type; it holds 64 now (tests/unit/feast/test_compile.py checks the advice)
    "a second TIMESTAMP field": (
        edit(("tip DOUBLE, airport BOOLEAN", "tip DOUBLE, airport BOOLEAN, paid_at TIMESTAMP")),
        "field paid_at: only the timestamp_field may be a TIMESTAMP; declare paid_at as STRING (ISO-8601 text) "
        "or BIGINT (epoch milliseconds",
    ),
}
