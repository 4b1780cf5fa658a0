"""Settings of the nightly batch job (pydantic-settings, ``FSTORE_`` prefix; extends the shared settings).

Every threshold of the data-quality gate lives here, so operators tune them with environment variables
(``FSTORE_DQ_DUPLICATE_RATE_FAIL=0.3``) and nothing else in the job reads the environment.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fstore.settings import Settings, load_settings


class BatchSettings(Settings):
    """Configuration of ``fstore batch`` / ``spark-submit jobs/batch/rebuild_features.py``."""

    spark_master: str = Field("local[*]", description="Spark master when the job starts its own session")
    spark_driver_memory: str = Field("6g", description="Driver memory of a session the job starts itself")
    spark_shuffle_partitions: int = Field(8, ge=1, description="spark.sql.shuffle.partitions")
    spark_ui: bool = Field(False, description="Enable the Spark UI of a session the job starts itself")
    delta_engine: Literal["auto", "delta-spark", "delta-rs"] = Field(
        "auto",
        description="Who commits the job's Delta tables: delta-spark when its jars are there (auto), or force one",
    )

    use_winners: bool = Field(
        True,
        description="Read a day whose de-duplication winners file is current (fstore compact) from it instead of "
        "de-duplicating its raw_events copies",
    )

    reuse_tiles: bool = Field(
        True,
        description="Take the tiles of a day whose input and view are unchanged since an earlier run from that "
        "run's tile table instead of computing them again",
    )

    batch_view_ttl_s: int = Field(3 * 86_400, ge=3600, description="TTL of a batch view's keys in Redis")
    batch_view_grace_s: int = Field(3600, ge=0, description="Lifetime of the previous batch view after a swap")
    redis_chunk: int = Field(500, ge=1, description="Entities per Redis pipeline when loading a batch view")
    metrics_file: str | None = Field(None, description="Prometheus textfile (default <data_dir>/metrics/batch.prom)")
    fail_after: str | None = Field(None, description="Fault injection: raise after this stage (tests only)")

    dq_freshness_warn_s: int = Field(3600, ge=0, description="Warn when the latest event is older than C - this")
    dq_freshness_fail_s: int = Field(6 * 3600, ge=0, description="Fail when the latest event is older than C - this")
    dq_volume_history_days: int = Field(14, ge=1, description="Trailing days of the volume z-score")
    dq_volume_min_history: int = Field(7, ge=2, description="Skip the volume check with fewer days of history")
    dq_volume_z_warn: float = Field(3.0, gt=0, description="Warn when |z| of the day's volume exceeds this")
    dq_volume_z_fail: float = Field(5.0, gt=0, description="Fail when |z| of the day's volume exceeds this")
    dq_null_rate_warn: float = Field(0.001, ge=0, description="Warn above this null rate of a key column")
    dq_null_rate_fail: float = Field(0.01, ge=0, description="Fail above this null rate of a key column")
    dq_duplicate_rate_warn: float = Field(0.05, ge=0, description="Warn above this share of duplicate copies")
    dq_duplicate_rate_fail: float = Field(0.25, ge=0, description="Fail above this share of duplicate copies")
    dq_invalid_rate_warn: float = Field(0.01, ge=0, description="Warn above this share of invalid messages")
    dq_invalid_rate_fail: float = Field(0.10, ge=0, description="Fail above this share of invalid messages")
    dq_late_after_s: int = Field(3600, ge=0, description="An event ingested this long after event_time is late")
    dq_late_rate_warn: float = Field(0.05, ge=0, description="Warn above this share of late events")
    dq_late_rate_fail: float = Field(0.5, ge=0, description="Fail above this share of late events")

    def metrics_path(self) -> str | None:
        """Where the Prometheus textfile goes; ``None`` when the data root is not a local path."""
        if self.metrics_file:
            return self.metrics_file
        if "://" in self.data_dir and not self.data_dir.startswith("file://"):
            return None
        return f"{self.data_dir.removeprefix('file://').rstrip('/')}/metrics/batch.prom"


def load_batch_settings(**overrides: object) -> BatchSettings:
    """Load and validate the batch settings (explicit ``overrides`` win over the environment).

    Raises:
        SettingsError: naming the offending ``FSTORE_`` variable.
    """
    return load_settings(BatchSettings, **overrides)
