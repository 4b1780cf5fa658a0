"""A ride-hailing repository that shares nothing with the shipped example (issue 13).

Its own entities (driver, zone), event types (``kind``), id (``uid``) and time (``ts``) fields; windows
of 10 minutes, 3 hours, 2 days and 30 days; every aggregation function; filters on a string and on a
boolean field; a product measure (distance × rate × surge); ratios; two declared hops.
"""

from datetime import timedelta

from feast import Entity, Field, FileSource, KafkaSource, StreamFeatureView, ValueType
from feast.aggregation import Aggregation
from feast.data_format import DeltaFormat, JsonFormat
from feast.types import Float64, Int64, String

M10, H3, D2, D30 = timedelta(minutes=10), timedelta(hours=3), timedelta(days=2), timedelta(days=30)

driver = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.STRING, description="A driver")
zone = Entity(name="zone", join_keys=["zone_id"], value_type=ValueType.STRING, description="A pick-up zone")

ride_log = FileSource(
    name="ride_log",
    path="data/ride_log",
    file_format=DeltaFormat(),
    timestamp_field="ts",
    description="Every valid ride event",
)
ride_events = KafkaSource(
    name="ride_events",
    topic="rides",
    timestamp_field="ts",
    batch_source=ride_log,
    message_format=JsonFormat(
        schema_json=(
            "uid STRING NOT NULL, kind STRING NOT NULL, driver_id STRING, zone_id STRING NOT NULL, "
            "rider STRING COMMENT 'pseudonymous rider id', ts TIMESTAMP NOT NULL, distance_km DOUBLE, "
            "rate_per_km DOUBLE, surge DOUBLE, stars INT, tip DOUBLE, airport BOOLEAN"
        )
    ),
    tags={
        "fstore.id_field": "uid",
        "fstore.values.kind": "requested, completed, cancelled, rated, tipped",
        "fstore.required_when.driver_id": "kind != 'requested'",
        "fstore.required_when.distance_km": "kind == 'completed'",
        "fstore.required_when.rate_per_km": "kind == 'completed'",
        "fstore.required_when.stars": "kind == 'rated'",
        "fstore.required_when.tip": "kind == 'tipped'",
        "fstore.min.distance_km": "0",
        "fstore.min.rate_per_km": "0",
        "fstore.min.surge": "1",
        "fstore.default.surge": "1",
        "fstore.min.stars": "1",
        "fstore.max.stars": "5",
        "fstore.min.tip": "0",
    },
)

driver_performance = StreamFeatureView(
    name="driver_performance",
    entities=[driver],
    source=ride_events,
    timestamp_field="ts",
    tags={
        "fstore.measure.trip": "1 if kind == 'completed'",
        "fstore.measure.fare": "distance_km * rate_per_km * surge if kind == 'completed'",
        "fstore.measure.cancellation": "1 if kind == 'cancelled'",
        "fstore.measure.airport_trip": "1 if kind == 'completed' and airport",
        "fstore.measure.rider_served": "rider if kind == 'completed'",
    },
    aggregations=[
        Aggregation(column="trip", function="count", time_window=M10, name="trips_10m"),
        Aggregation(
            column="fare", function="sum", time_window=H3, slide_interval=timedelta(minutes=15), name="fare_3h"
        ),
        Aggregation(column="trip", function="count", time_window=D2, name="trips_2d"),
        Aggregation(column="cancellation", function="count", time_window=D2, name="cancellations_2d"),
        Aggregation(column="fare", function="mean", time_window=D2, name="fare_mean_2d"),
        Aggregation(column="fare", function="std", time_window=D2, name="fare_std_2d"),
        Aggregation(column="fare", function="var", time_window=D2, name="fare_var_2d"),
        Aggregation(column="airport_trip", function="count", time_window=D2, name="airport_trips_2d"),
        Aggregation(column="stars", function="min", time_window=D30, name="stars_min_30d"),
        Aggregation(column="stars", function="max", time_window=D30, name="stars_max_30d"),
        Aggregation(column="stars", function="mean", time_window=D30, name="stars_mean_30d"),
        Aggregation(
            column="rider_served",
            function="count_distinct",
            time_window=D30,
            slide_interval=timedelta(hours=6),
            name="riders_30d",
        ),
    ],
    schema=[
        Field(name="driver_id", dtype=String),
        Field(name="trips_10m", dtype=Int64, description="Completed trips, last 10 minutes"),
        Field(name="fare_3h", dtype=Float64, description="Fares earned, last 3 hours (15-minute hop)"),
        Field(name="trips_2d", dtype=Int64),
        Field(name="cancellations_2d", dtype=Int64),
        Field(
            name="cancellation_rate_2d",
            dtype=Float64,
            description="Cancellations per completed trip",
            tags={"fstore.ratio": "cancellations_2d / trips_2d"},
        ),
        Field(name="fare_mean_2d", dtype=Float64),
        Field(name="fare_std_2d", dtype=Float64, description="Sample standard deviation (n - 1)"),
        Field(name="fare_var_2d", dtype=Float64, description="Sample variance (n - 1)"),
        Field(name="airport_trips_2d", dtype=Int64),
        Field(name="stars_min_30d", dtype=Float64),
        Field(name="stars_max_30d", dtype=Float64),
        Field(name="stars_mean_30d", dtype=Float64),
        Field(name="riders_30d", dtype=Int64, description="Distinct riders served (exact)"),
    ],
)

zone_demand = StreamFeatureView(
    name="zone_demand",
    entities=[zone],
    source=ride_events,
    timestamp_field="ts",
    tags={
        "fstore.measure.request": "1 if kind == 'requested'",
        "fstore.measure.trip": "1 if kind == 'completed'",
    },
    aggregations=[
        Aggregation(column="request", function="count", time_window=M10, name="requests_10m"),
        Aggregation(column="request", function="count", time_window=H3, name="requests_3h"),
        Aggregation(column="trip", function="count", time_window=H3, name="trips_3h"),
        Aggregation(column="driver_id", function="count_distinct", time_window=H3, name="drivers_3h"),
        Aggregation(column="tip", function="sum", time_window=D30, name="tips_30d"),
        Aggregation(column="tip", function="max", time_window=D30, name="tip_max_30d"),
    ],
    schema=[
        Field(name="zone_id", dtype=String),
        Field(name="requests_10m", dtype=Int64),
        Field(name="requests_3h", dtype=Int64),
        Field(name="trips_3h", dtype=Int64),
        Field(name="fill_rate_3h", dtype=Float64, tags={"fstore.ratio": "trips_3h / requests_3h"}),
        Field(name="drivers_3h", dtype=Int64, description="Distinct drivers with any event in the zone"),
        Field(name="tips_30d", dtype=Float64),
        Field(name="tip_max_30d", dtype=Float64),
    ],
)
