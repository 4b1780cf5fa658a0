"""Whether Spark can reach the data root: a root on object storage needs the store's Hadoop connector.

``FSTORE_DATA_DIR`` may be an object-store URI (docs/design.md §7). The parts that write and read Delta
through delta-rs (``fstore ingest``, the stream worker's raw sink, the local point-in-time engine) reach it
with delta-rs' own clients; Spark reaches it only through a Hadoop ``FileSystem`` registered for its scheme
(``s3a://`` with hadoop-aws, ``gs://`` with the GCS connector, ``abfss://`` with hadoop-azure, or what a
managed cluster provides). PySpark's own distribution ships none, so the batch job checks before it reads
anything and stops with a configuration error naming the scheme, instead of a Java stack trace mid-run.
"""

from __future__ import annotations

from pyspark.sql import SparkSession


def missing_file_system(spark: SparkSession, root: str) -> str | None:
    """Why Spark cannot reach ``root`` (a data root: a local path or an object-store URI), or ``None``."""
    scheme, sep, _ = root.partition("://")
    if not sep or scheme == "file":
        return None
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    try:
        jvm.org.apache.hadoop.fs.FileSystem.getFileSystemClass(scheme, spark.sparkContext._jsc.hadoopConfiguration())
    except Exception as exc:  # py4j's error: no class registered for the scheme, or its class is not on the classpath
        if not any(why in str(exc) for why in ("UnsupportedFileSystemException", "ClassNotFoundException")):
            raise
        return (
            f"FSTORE_DATA_DIR={root}: this Spark has no Hadoop FileSystem for scheme '{scheme}'. Put the object "
            "store's connector on its classpath (for S3: hadoop-aws and the AWS SDK bundle, with an s3a:// "
            "root; a managed cluster usually has it), or use a local or shared path (docs/scaling.md)"
        )
    return None
