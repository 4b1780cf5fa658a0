"""Settings of the serving layer (``FSTORE_`` prefix, validated at start-up)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr

from fstore.settings import Settings, load_settings


class ApiSettings(Settings):
    """Configuration of ``fstore serve``."""

    api_key: SecretStr | None = Field(None, description="If set, requests need header X-API-Key (not /health)")
    api_max_entities: int = Field(1000, ge=1, le=100_000, description="Most entities in one POST /features")
    api_max_rows: int = Field(100_000, ge=1, description="Most rows in one POST /historical-features")
    redis_timeout_ms: int = Field(300, ge=10, le=10_000, description="Redis connect/read timeout")
    api_host: str = Field("127.0.0.1", description="Bind address of `fstore serve`")
    api_port: int = Field(8000, ge=0, le=65535, description="Port of `fstore serve`")
    api_sample_rate: float = Field(
        0.001, ge=0, le=1, description="Share of /features answers kept for the consistency replay (0: none)"
    )
    api_sample_rows: int = Field(5, ge=1, description="Rows kept from one sampled answer")
    metrics_multiproc_dir: str | None = Field(
        None,
        validation_alias="PROMETHEUS_MULTIPROC_DIR",
        description="prometheus_client multiprocess folder; `fstore serve --workers N>1` sets it",
    )


@lru_cache(maxsize=1)
def get_api_settings() -> ApiSettings:
    """Load and validate once; the error names the offending variable."""
    return load_settings(ApiSettings)
