"""The expression language evaluates identically on the engines that do not run Python: Redis Lua (a
real ``redis-server``) and Spark SQL (a local Spark session), against the Python evaluator, on the
hand-computed table and on random expressions and rows."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from fstore.core.expr_eval import measure_fn
from fstore.core.expr_parse import parse_measure
from fstore.core.expr_render import LUA_PRELUDE, measure_lua, measure_sql
from tests.support.expr_cases import CASES, ROWS, SCHEMA, random_measures, random_rows

pytestmark = pytest.mark.integration

RNG_ROWS = random_rows(random.Random(11), 60)
RNG_MEASURES = random_measures(random.Random(12), 60)

# Lua numbers travel back as %.17g text (exact for a double); strings and nulls are marked
LUA_LOOP = """
local evs = cjson.decode(ARGV[1])
local out = {}
for i = 1, #evs do
  local ev = evs[i]
  local v = %s
  if v == nil then out[i] = 'null'
  elseif type(v) == 'number' then out[i] = 'n:' .. string.format('%%.17g', v)
  else out[i] = 's:' .. v end
end
return out
"""


def _decode_lua(item: bytes) -> Any:
    text = item.decode()
    if text == "null":
        return None
    return float(text[2:]) if text.startswith("n:") else text[2:]


def _python(text: str, rows: list[dict[str, Any]]) -> list[Any]:
    return [measure_fn(*parse_measure(text))(r) for r in rows]


def _same(got: list[Any], want: list[Any]) -> bool:
    """Bit-identical doubles (``-0.0 == 0.0`` is allowed: every engine compares them equal)."""
    return len(got) == len(want) and all(type(g) is type(w) and g == w for g, w in zip(got, want, strict=True))


def test_lua_evaluates_like_python(redis_client: redis.Redis) -> None:
    for rows, texts in ((ROWS, [t for t, _ in CASES]), (RNG_ROWS, RNG_MEASURES)):
        payload = json.dumps(rows)
        for text in texts:
            script = LUA_PRELUDE + LUA_LOOP % measure_lua(*parse_measure(text), SCHEMA)
            got = [_decode_lua(x) for x in redis_client.eval(script, 0, payload)]
            assert _same(got, _python(text, rows)), text


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[1]")
        .appName("fstore-expr-test")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.driver.memory", "512m")
        .getOrCreate()
    )
    yield session
    session.stop()


def test_spark_sql_evaluates_like_python(spark: Any) -> None:
    from pyspark.sql import types as T

    schema = T.StructType(
        [
            T.StructField("kind", T.StringType()),
            T.StructField("label", T.StringType()),
            T.StructField("price", T.DoubleType()),
            T.StructField("qty", T.LongType()),
            T.StructField("flag", T.BooleanType()),
        ]
    )
    for rows, texts in ((ROWS, [t for t, _ in CASES]), (RNG_ROWS, RNG_MEASURES)):
        frame = spark.createDataFrame([tuple(r.get(f.name) for f in schema.fields) for r in rows], schema)
        columns = [f"{measure_sql(*parse_measure(t), SCHEMA)} AS c{i}" for i, t in enumerate(texts)]
        result = frame.selectExpr(*columns).collect()
        for i, text in enumerate(texts):
            got = [row[i] for row in result]
            assert _same(got, _python(text, rows)), (text, columns[i])
