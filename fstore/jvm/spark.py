"""Spark sessions fstore starts: is delta-spark there, and where does a local driver listen?"""

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


def loopback_driver(master: str) -> dict[str, str]:
    """Settings that keep a ``local[...]`` driver on 127.0.0.1 (its RPC and block manager; empty for a cluster
    master, whose executors must reach the driver): Spark otherwise binds the address its host name
    resolves to — the machine's network interface when that is not loopback — so a local batch run or
    point-in-time join would listen on the network."""
    if not master.startswith("local"):
        return {}
    return {"spark.driver.bindAddress": "127.0.0.1", "spark.driver.host": "127.0.0.1"}
