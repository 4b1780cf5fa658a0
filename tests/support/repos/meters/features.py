"""A smart-meter repository for the feature-contract audit (docs/design.md §3): an entity ``meter``
(join key ``meter_id``), readings with their own id (``reading_no``) and time (``read_at``) fields; every
aggregation spelling Feast accepts (count, sum, avg, mean, min, max, std, stddev, var, variance,
count_distinct); windows at the default hop table's exact boundaries (12 h → 5 min, 12 h 5 min → 1 h,
12 d → 1 h, 12 d 1 h → 1 d) and a declared 20-minute hop; filters on a string, a number and a boolean;
measures of 1, a field and a product of three fields; exact count_distinct of strings, of a float field
(where -0.0 and 0.0 are one number) and of an integer field; ratios, some with denominators often 0.
"""

from datetime import timedelta

from feast import Entity, Field, FileSource, KafkaSource, StreamFeatureView, ValueType
from feast.aggregation import Aggregation
from feast.data_format import DeltaFormat, JsonFormat
from feast.types import Float64, Int64, String

H2, H12, H12M5 = timedelta(hours=2), timedelta(hours=12), timedelta(hours=12, minutes=5)
D12, D12H1 = timedelta(days=12), timedelta(days=12, hours=1)

meter = Entity(name="meter", join_keys=["meter_id"], value_type=ValueType.STRING, description="A meter")

reading_log = FileSource(
    name="reading_log", path="data/reading_log", file_format=DeltaFormat(), timestamp_field="read_at"
)
readings = KafkaSource(
    name="readings",
    topic="readings",
    timestamp_field="read_at",
    batch_source=reading_log,
    message_format=JsonFormat(
        schema_json=(
            "reading_no STRING NOT NULL, phase STRING NOT NULL, meter_id STRING NOT NULL, circuit STRING, "
            "read_at TIMESTAMP NOT NULL, kwh DOUBLE, volts DOUBLE, amps DOUBLE, hours DOUBLE, tripped BOOLEAN, "
            "delta DOUBLE, tier INT"
        )
    ),
    tags={
        "fstore.id_field": "reading_no",
        "fstore.values.phase": "sample, fault, reset",
        "fstore.required_when.kwh": "phase == 'sample'",
        "fstore.min.kwh": "0",
    },
)

meter_stats = StreamFeatureView(
    name="meter_stats",
    entities=[meter],
    source=readings,
    timestamp_field="read_at",
    tags={
        "fstore.measure.sample": "1 if phase == 'sample'",
        "fstore.measure.fault": "1 if phase == 'fault'",
        "fstore.measure.big_kwh": "kwh if kwh >= 5",
        "fstore.measure.energy": "volts * amps * hours if phase == 'sample' and not tripped",
        "fstore.measure.tripped_circuit": "circuit if tripped",
    },
    aggregations=[
        Aggregation(column="sample", function="count", time_window=H12, name="samples_12h"),
        Aggregation(column="fault", function="count", time_window=H12M5, name="faults_12h5m"),
        Aggregation(column="kwh", function="sum", time_window=D12, name="kwh_12d"),
        Aggregation(column="kwh", function="avg", time_window=D12H1, name="kwh_avg_12d1h"),
        Aggregation(column="kwh", function="mean", time_window=H12, name="kwh_mean_12h"),
        Aggregation(column="volts", function="min", time_window=H12M5, name="volts_min_12h5m"),
        Aggregation(column="volts", function="max", time_window=D12, name="volts_max_12d"),
        Aggregation(column="energy", function="std", time_window=H12, name="energy_std_12h"),
        Aggregation(column="energy", function="stddev", time_window=D12H1, name="energy_stddev_12d1h"),
        Aggregation(column="energy", function="var", time_window=H12M5, name="energy_var_12h5m"),
        Aggregation(column="energy", function="variance", time_window=D12, name="energy_variance_12d"),
        Aggregation(column="circuit", function="count_distinct", time_window=D12, name="circuits_12d"),
        Aggregation(column="tripped_circuit", function="count_distinct", time_window=H12, name="tripped_12h"),
        Aggregation(column="delta", function="count_distinct", time_window=D12, name="deltas_12d"),
        Aggregation(column="tier", function="count_distinct", time_window=D12, name="tiers_12d"),
        Aggregation(
            column="big_kwh", function="sum", time_window=H2, slide_interval=timedelta(minutes=20), name="big_kwh_2h"
        ),
        Aggregation(column="kwh", function="count", time_window=H2, name="kwh_readings_2h"),
    ],
    schema=[
        Field(name="meter_id", dtype=String),
        Field(name="samples_12h", dtype=Int64),
        Field(name="faults_12h5m", dtype=Int64),
        Field(name="fault_rate", dtype=Float64, tags={"fstore.ratio": "faults_12h5m / samples_12h"}),
        Field(name="kwh_12d", dtype=Float64),
        Field(name="kwh_avg_12d1h", dtype=Float64),
        Field(name="kwh_mean_12h", dtype=Float64),
        Field(name="volts_min_12h5m", dtype=Float64),
        Field(name="volts_max_12d", dtype=Float64),
        Field(name="energy_std_12h", dtype=Float64),
        Field(name="energy_stddev_12d1h", dtype=Float64),
        Field(name="energy_var_12h5m", dtype=Float64),
        Field(name="energy_variance_12d", dtype=Float64),
        Field(name="circuits_12d", dtype=Int64),
        Field(name="tripped_12h", dtype=Int64),
        Field(name="deltas_12d", dtype=Int64, description="Distinct deltas (-0.0 and 0.0 are one number)"),
        Field(name="tiers_12d", dtype=Int64, description="Distinct tiers (an integer field)"),
        Field(name="big_kwh_2h", dtype=Float64),
        Field(name="big_share_2h", dtype=Float64, tags={"fstore.ratio": "big_kwh_2h / kwh_12d"}),
        Field(name="kwh_readings_2h", dtype=Int64),
        Field(name="trip_per_fault", dtype=Float64, tags={"fstore.ratio": "tripped_12h / faults_12h5m"}),
    ],
)
