"""The shipped example: an e-commerce shop's features, declared in Feast's own objects (docs/adr/0012).

fstore compiles this repository into the plan every engine runs from (``fstore.plan_source``): entities,
the event source with its declared schema (``schema_json`` + ``fstore.*`` tags), and stream feature views
whose measures are tagged expressions (``fstore.measure.<name>``) and whose features are Feast
``Aggregation``s (plus ratios, tagged ``fstore.ratio``), as docs/design.md §2 and §3 describe.

``raw_events``' path is descriptive: fstore's stores read the Delta tables under ``FSTORE_DATA_DIR``
(``data_dir`` in feature_store.yaml) whatever it says.
"""

from datetime import timedelta

from feast import Entity, Field, FileSource, KafkaSource, StreamFeatureView, ValueType
from feast.aggregation import Aggregation
from feast.data_format import DeltaFormat, JsonFormat
from feast.types import Float64, Int64, String

H1, H24, D7 = timedelta(hours=1), timedelta(hours=24), timedelta(days=7)

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.STRING,
    description="A shopper, keyed by the event's user_id",
)
product = Entity(
    name="product",
    join_keys=["product_id"],
    value_type=ValueType.STRING,
    description="A catalogue product, keyed by the event's product_id",
)

raw_events = FileSource(
    name="raw_events",
    path="data/raw_events",
    file_format=DeltaFormat(),
    timestamp_field="event_time",
    description="Every valid event, de-duplicated by readers (Delta, written by the stream worker)",
)
events = KafkaSource(
    name="events",
    topic="events",
    timestamp_field="event_time",
    batch_source=raw_events,
    message_format=JsonFormat(
        schema_json=(
            "event_id STRING NOT NULL COMMENT 'unique per event', event_type STRING NOT NULL, "
            "user_id STRING NOT NULL, product_id STRING, event_time TIMESTAMP NOT NULL, price DOUBLE, "
            "quantity INT, session_id STRING"
        )
    ),
    tags={
        "fstore.id_field": "event_id",
        "fstore.values.event_type": "page_view, impression, click, add_to_cart, purchase",
        "fstore.required_when.product_id": "event_type != 'page_view'",
        "fstore.required_when.price": "event_type == 'purchase'",
        "fstore.min.price": "0",
        "fstore.max.price": "1e15",
        "fstore.min.quantity": "1",
        "fstore.max.quantity": "2147483647",
        "fstore.default.quantity": "1",
    },
    description="Shop events, one JSON object per Kafka message",
)

user_activity = StreamFeatureView(
    name="user_activity",
    description="Rolling activity of a shopper",
    entities=[user],
    source=events,
    timestamp_field="event_time",
    tags={
        "fstore.measure.page_view": "1 if event_type == 'page_view'",
        "fstore.measure.click": "1 if event_type == 'click'",
        "fstore.measure.add_to_cart": "1 if event_type == 'add_to_cart'",
        "fstore.measure.purchase": "price * quantity if event_type == 'purchase'",
    },
    aggregations=[
        Aggregation(column="page_view", function="count", time_window=H1, name="page_views_1h"),
        Aggregation(column="page_view", function="count", time_window=H24, name="page_views_24h"),
        Aggregation(column="click", function="count", time_window=H1, name="clicks_1h"),
        Aggregation(column="click", function="count", time_window=H24, name="clicks_24h"),
        Aggregation(column="add_to_cart", function="count", time_window=H24, name="add_to_carts_24h"),
        Aggregation(column="purchase", function="count", time_window=D7, name="purchases_7d"),
        Aggregation(column="purchase", function="sum", time_window=D7, name="revenue_7d"),
        Aggregation(column="purchase", function="mean", time_window=D7, name="avg_order_value_7d"),
        Aggregation(column="purchase", function="max", time_window=D7, name="max_order_value_7d"),
    ],
    schema=[
        Field(name="user_id", dtype=String),
        Field(name="page_views_1h", dtype=Int64, description="Page views in the last hour"),
        Field(name="page_views_24h", dtype=Int64, description="Page views in the last 24 hours"),
        Field(name="clicks_1h", dtype=Int64, description="Clicks in the last hour"),
        Field(name="clicks_24h", dtype=Int64, description="Clicks in the last 24 hours"),
        Field(name="add_to_carts_24h", dtype=Int64, description="Add-to-carts in the last 24 hours"),
        Field(name="purchases_7d", dtype=Int64, description="Purchases in the last 7 days"),
        Field(name="revenue_7d", dtype=Float64, description="Revenue (price × quantity) in the last 7 days"),
        Field(name="avg_order_value_7d", dtype=Float64, description="Average revenue per purchase, 7 days"),
        Field(name="max_order_value_7d", dtype=Float64, description="Largest purchase revenue, 7 days"),
    ],
)

product_engagement = StreamFeatureView(
    name="product_engagement",
    description="Rolling engagement of a product",
    entities=[product],
    source=events,
    timestamp_field="event_time",
    tags={
        "fstore.measure.impression": "1 if event_type == 'impression'",
        "fstore.measure.click": "1 if event_type == 'click'",
        "fstore.measure.add_to_cart": "1 if event_type == 'add_to_cart'",
        "fstore.measure.purchase": "price * quantity if event_type == 'purchase'",
    },
    aggregations=[
        Aggregation(column="impression", function="count", time_window=H1, name="impressions_1h"),
        Aggregation(column="impression", function="count", time_window=H24, name="impressions_24h"),
        Aggregation(column="click", function="count", time_window=H1, name="clicks_1h"),
        Aggregation(column="click", function="count", time_window=H24, name="clicks_24h"),
        Aggregation(column="add_to_cart", function="count", time_window=H24, name="add_to_carts_24h"),
        Aggregation(column="purchase", function="count", time_window=H24, name="purchases_24h"),
        Aggregation(column="purchase", function="sum", time_window=H24, name="revenue_24h"),
        Aggregation(column="click", function="count", time_window=D7, name="clicks_7d"),
        Aggregation(column="purchase", function="count", time_window=D7, name="purchases_7d"),
    ],
    schema=[
        Field(name="product_id", dtype=String),
        Field(name="impressions_1h", dtype=Int64, description="Impressions in the last hour"),
        Field(name="impressions_24h", dtype=Int64, description="Impressions in the last 24 hours"),
        Field(name="clicks_1h", dtype=Int64, description="Clicks in the last hour"),
        Field(name="clicks_24h", dtype=Int64, description="Clicks in the last 24 hours"),
        Field(
            name="ctr_1h",
            dtype=Float64,
            description="Click-through rate, last hour",
            tags={"fstore.ratio": "clicks_1h / impressions_1h"},
        ),
        Field(
            name="ctr_24h",
            dtype=Float64,
            description="Click-through rate, last 24 hours",
            tags={"fstore.ratio": "clicks_24h / impressions_24h"},
        ),
        Field(name="add_to_carts_24h", dtype=Int64, description="Add-to-carts in the last 24 hours"),
        Field(name="purchases_24h", dtype=Int64, description="Purchases in the last 24 hours"),
        Field(name="revenue_24h", dtype=Float64, description="Revenue in the last 24 hours"),
        Field(name="clicks_7d", dtype=Int64, description="Clicks in the last 7 days"),
        Field(name="purchases_7d", dtype=Int64, description="Purchases in the last 7 days"),
        Field(
            name="conversion_rate_7d",
            dtype=Float64,
            description="Purchases per click, 7 days",
            tags={"fstore.ratio": "purchases_7d / clicks_7d"},
        ),
    ],
)
