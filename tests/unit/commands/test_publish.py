"""``fstore publish``'s message key: a field of the applied repository, never a hard-coded name."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from fstore.commands.publish import partition_key
from fstore.kafka.client import iter_keyed_batches, key_of
from tests.support.repos import compiled

pytestmark = pytest.mark.unit


def test_the_key_is_the_first_entity_key_every_event_carries() -> None:
    # the shop: product_id is optional (page views), so the shopper keys, as before plans existed
    assert partition_key(compiled("ecommerce")) == "user_id"
    rides = compiled("rides")
    required = {f.name for f in rides.schema.fields if f.required}
    assert [e.join_key in required for e in rides.entities] == [False, True]  # an optional key is skipped
    assert partition_key(rides) == rides.entities[1].join_key


def test_without_a_required_entity_key_the_id_field_keys() -> None:
    plan = compiled("rides")
    optional = tuple(
        dataclasses.replace(f, required=False) if f.name != plan.schema.id_field else f for f in plan.schema.fields
    )
    plan = dataclasses.replace(plan, schema=dataclasses.replace(plan.schema, fields=optional))
    assert partition_key(plan) == plan.schema.id_field


def test_jsonl_lines_are_keyed_by_that_field(tmp_path) -> None:  # type: ignore[no-untyped-def]
    lines = [orjson.dumps({"uid": "e1", "zone_id": "z7"}), b"not json", orjson.dumps({"zone_id": 3}), b"[1]"]
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert [key_of(v, "zone_id") for v in lines] == ["z7", None, None, None]
    assert list(iter_keyed_batches(path, "zone_id")) == [(["z7", None, None, None], lines)]


def test_parquet_files_without_a_key_column_or_without_a_value_column(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A Parquet file without ``key`` is keyed as JSONL lines are; one without a ``value`` column of bytes or
    text is refused up front, when the messages are counted (``fstore publish`` says "FILE: ..., found ..."
    before it connects): it failed half-way through the publish with a pyarrow error before."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fstore.kafka.messages import MessageFileError, count_messages

    lines = [orjson.dumps({"uid": "e1", "zone_id": "z7"}), b"not json"]
    pq.write_table(pa.table({"value": pa.array(lines, pa.binary())}), tmp_path / "nokey.parquet")
    assert list(iter_keyed_batches(tmp_path / "nokey.parquet", "zone_id")) == [(["z7", None], lines)]
    pq.write_table(pa.table({"key": ["z7"], "value": [7]}), tmp_path / "ints.parquet")
    pq.write_table(pa.table({"key": ["z7"], "payload": lines[:1]}), tmp_path / "novalue.parquet")
    for name in ("ints", "novalue"):
        with pytest.raises(MessageFileError, match="needs a column 'value' of binary or string"):
            count_messages(tmp_path / f"{name}.parquet")
        with pytest.raises(MessageFileError):
            iter_keyed_batches(tmp_path / f"{name}.parquet", "zone_id")


def test_a_parquet_key_column_that_is_not_text_or_bytes_is_refused_before_any_batch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Kafka keys are bytes: an integer ``key`` column used to reach the producer as ints and fail half-way
    through the publish; it is refused when the batches are asked for, naming the column and its type."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fstore.kafka.messages import MessageFileError

    lines = [orjson.dumps({"uid": "e1", "zone_id": "z7"})]
    pq.write_table(pa.table({"key": [7], "value": pa.array(lines, pa.binary())}), tmp_path / "intkey.parquet")
    with pytest.raises(MessageFileError, match=r"column 'key' .* must be string or binary, found int64"):
        iter_keyed_batches(tmp_path / "intkey.parquet", "zone_id")
    for keys in (
        pa.array(["z7"]),
        pa.array([b"z7"]),
        pa.array([b"z7"], pa.binary(2)),
        pa.array(["z7"]).dictionary_encode(),  # pandas categories
        pa.array([None], pa.null()),
    ):
        pq.write_table(pa.table({"key": keys, "value": pa.array(lines, pa.binary())}), tmp_path / "ok.parquet")
        assert list(iter_keyed_batches(tmp_path / "ok.parquet", "zone_id")) == [(keys.to_pylist(), lines)]
