"""Settings of the stream worker (pydantic-settings, ``FSTORE_`` prefix; extends the shared settings).

Everything the worker can tune lives here (``FSTORE_STREAM_BATCH_MAX=20000``); nothing else in the job
reads the environment.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from fstore.core.timeutil import SECOND
from fstore.plan_source import current_plan
from fstore.settings import Settings, load_settings
from jobs.stream.dead_letters import DLQ_MAX_BYTES, FALLBACK_BYTES

#: Tiles stay in Redis this long after their last write: longest window + largest hop + a margin.
DEFAULT_MARGIN_S = 6 * 3600


class StreamSettings(Settings):
    """Configuration of ``fstore stream`` / ``faust -A jobs.stream.app worker``."""

    stream_app_id: str = Field("fstore-stream", description="Faust app id = Kafka consumer group")
    stream_batch_max: int = Field(10_000, ge=1, description="Events per in-memory batch (stream.take max)")
    stream_batch_within_s: float = Field(0.1, gt=0, description="Max seconds to wait to fill a batch")
    stream_raw_max_events: int = Field(100_000, ge=1, description="Raw sink: flush after this many events")
    stream_raw_max_age_s: float = Field(2.0, gt=0, description="Raw sink: flush when the oldest is this old")
    stream_metrics_port: int = Field(9108, ge=0, description="Prometheus HTTP port (0 = no server)")
    stream_metrics_host: str = Field("127.0.0.1", description="Bind address of the metrics server (0.0.0.0: all)")
    stream_pointer_cache_s: float = Field(5.0, ge=0, description="Cache of the batch pointer (cutover C)")
    stream_late_horizon_s: int | None = Field(
        None, ge=60, description="Events older than now - this go to raw_events only (default: key TTL)"
    )
    stream_key_ttl_margin_s: int = Field(DEFAULT_MARGIN_S, ge=0, description="Margin added to the tile TTL")
    stream_marker_ttl_s: int | None = Field(None, ge=60, description="TTL of dedupe markers (default: tile TTL)")
    stream_script_chunk: int = Field(
        4_000, ge=1, description="Max dedupe markers per Lua call (standalone Redis; on a cluster: one call per slot)"
    )
    stream_session_timeout_s: float = Field(10.0, gt=0, description="Kafka consumer session timeout")
    stream_heartbeat_s: float = Field(1.0, gt=0, description="Kafka consumer heartbeat interval")
    stream_rebalance_timeout_s: float = Field(10.0, gt=0, description="Kafka consumer rebalance timeout")
    stream_max_poll_records: int = Field(10_000, ge=1, description="Records per Kafka fetch")
    stream_fetch_partition_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Max bytes per partition per Kafka fetch (bulk consumer)"
    )
    stream_commit_interval_s: float = Field(
        1.0,
        gt=0,
        description="Faust's commit interval for bench/faust_native_worker.py (ADR 0009); the worker itself "
        "commits after each raw flush",
    )
    stream_outage_exit_s: float = Field(
        300.0,
        gt=0,
        description="An outage of Redis or the dead-letter topic longer than this stops the worker with exit code 69",
    )
    stream_dlq_max_bytes: int = Field(
        DLQ_MAX_BYTES,
        ge=FALLBACK_BYTES,
        description="Dead letters longer than this are cut to it (headers keep the original size and hash); "
        "keep it under the broker's message.max.bytes",
    )
    stream_topic_check_s: float = Field(
        5.0,
        gt=0,
        description="Period of the events topic's metadata check (re-created topic, new partitions)",
    )
    stream_log_level: str = Field("info", description="Worker log level")
    stream_naive_per_event: bool = Field(
        False, description="Benchmark reference only: one Redis round trip per event instead of per batch"
    )

    @property
    def tile_ttl_s(self) -> int:
        """TTL of every speed-tile hash: the plan's longest window + largest hop + margin."""
        plan = current_plan()
        return (plan.longest_window + plan.largest_hop) // SECOND + self.stream_key_ttl_margin_s

    @property
    def marker_ttl_s(self) -> int:
        """TTL of de-duplication markers (default: the tile TTL, so a marker outlives its tiles' use)."""
        return self.stream_marker_ttl_s or self.tile_ttl_s

    @property
    def horizon_us(self) -> int:
        """Events older than ``now - horizon`` are too late for tiles (raw_events still gets them)."""
        return (self.stream_late_horizon_s or self.tile_ttl_s) * SECOND


@lru_cache(maxsize=1)
def get_stream_settings() -> StreamSettings:
    """Load and validate the worker settings once.

    Raises:
        SettingsError: naming the offending ``FSTORE_`` variable.
    """
    return load_settings(StreamSettings)
