"""The jar sets fstore uses, their versions, and where a caller finds them (docs/adr/0005).

* :data:`KAFKA`: Apache Kafka's broker (``kafka.Kafka`` in KRaft mode) with its runtime dependencies and
  a log4j binding, for ``fstore services up``, the test fixtures and the demo.
* :func:`delta_jars_for`: delta-spark for the installed PySpark's minor version (``io.delta:delta-spark_<spark
  minor>_2.13`` and ``io.delta:delta-storage``, without their transitive dependencies: Spark brings its own
  Hadoop, Parquet, Jackson and Scala, and a second copy of those on the classpath breaks Spark).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from fstore.jvm.maven import JarSet, cached, last_failure

KAFKA_VERSION = "4.4.0"
KAFKA = JarSet(
    f"kafka-{KAFKA_VERSION}",
    (
        f"org.apache.kafka:kafka_2.13:{KAFKA_VERSION}",
        # the broker logs through slf4j 1.7; this binds it to the log4j2 that Kafka already depends on
        "org.apache.logging.log4j:log4j-slf4j-impl:2.25.5",
    ),
)

DELTA_VERSION = "4.4.0"
#: Spark minor version → the delta-spark build for it. Delta publishes one artifact per Spark minor
#: (``delta-spark_4.2_2.13``); a build for another minor fails at the first write (NoSuchMethodError).
DELTA_BY_SPARK = {
    "4.2": JarSet(
        f"delta-{DELTA_VERSION}-spark4.2",
        (f"io.delta:delta-spark_4.2_2.13:{DELTA_VERSION}", f"io.delta:delta-storage:{DELTA_VERSION}"),
        transitive=False,
    ),
}


def spark_minor() -> str | None:
    """``major.minor`` of the installed PySpark, or ``None`` when it is not installed."""
    try:
        version = metadata.version("pyspark")
    except metadata.PackageNotFoundError:
        return None
    return ".".join(version.split(".")[:2])


def delta_jars_for(minor: str | None) -> JarSet | None:
    """The delta-spark jar set for a Spark minor version (``None``: Delta has no build for it)."""
    return DELTA_BY_SPARK.get(minor or "")


@dataclass(frozen=True)
class DeltaJars:
    """What a Spark session needs to use delta-spark, or why it cannot."""

    jars: list[Path] | None
    reason: str

    def spark_conf(self) -> dict[str, str]:
        """Session configs that load delta-spark from the cached jars (empty when there are none)."""
        if not self.jars:
            return {}
        return {
            "spark.jars": ",".join(str(p) for p in self.jars),
            "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
            "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
            # the Delta log of fstore's tables is small: its state fits one task, not the default 50
            "spark.databricks.delta.snapshotPartitions": "2",
            # microsecond timestamps (not Spark's legacy INT96) in the data files: what delta-rs writes too
            "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        }

    def submit_args(self) -> list[str]:
        """The same as ``spark-submit`` options (``--jars`` and ``--conf`` pairs): what a job submitted to a
        cluster needs so that the driver AND the executors load delta-spark (Spark ships ``--jars`` to
        every executor from the driver)."""
        conf = self.spark_conf()
        jars = conf.pop("spark.jars", None)
        args = ["--jars", jars] if jars else []
        for k, v in conf.items():
            args += ["--conf", f"{k}={v}"]
        return args


def delta_jars(cache: Path) -> DeltaJars:
    """The cached delta-spark jars for the installed PySpark, or the reason they cannot be used.

    Never downloads: ``fstore services install`` (run by ``make setup``) fetches them.
    """
    minor = spark_minor()
    jars = delta_jars_for(minor)
    if jars is None:
        return DeltaJars(
            None, f"no delta-spark build for the installed PySpark {minor} (known: {sorted(DELTA_BY_SPARK)})"
        )
    have = cached(jars, cache)
    if have is not None:
        return DeltaJars(have, f"delta-spark {', '.join(jars.coordinates)} from {jars.directory(cache)}")
    failed = last_failure(jars, cache)
    if failed:
        return DeltaJars(None, failed.strip())
    return DeltaJars(
        None, f"{', '.join(jars.coordinates)} not in {cache}: run `make setup` or `fstore services install`"
    )
