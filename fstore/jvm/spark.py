"""delta-spark in a Spark session: is it there?"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def has_delta_spark(spark: SparkSession) -> bool:
    """True when the session loads delta-spark (its classes on the classpath, its SQL extension on)."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    try:  # Spark's own class loader sees the jars of spark.jars, which py4j's Class.forName does not
        jvm.org.apache.spark.util.Utils.classForName("io.delta.tables.DeltaTable", True, False)
    except Exception:  # py4j raises a generic error for a missing class
        return False
    return "io.delta.sql.DeltaSparkSessionExtension" in (spark.conf.get("spark.sql.extensions", "") or "")
