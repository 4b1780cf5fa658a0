"""Settings of the fstore command line and jobs (pydantic-settings, ``FSTORE_`` prefix).

This is the only module that reads the environment. Values come from, in order of precedence: explicit
environment variables, then ``.fstore/services.env`` (written by ``fstore services up`` with the ports of
the local Redis and broker), then the defaults below.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

STATE_DIR = Path(".fstore")
SERVICES_ENV = STATE_DIR / "services.env"


class Settings(BaseSettings):
    """Configuration shared by the CLI commands."""

    model_config = SettingsConfigDict(env_prefix="FSTORE_", env_file=str(SERVICES_ENV), extra="ignore")

    data_dir: str = Field("data", description="Root of the Delta tables (local path or object-store URI)")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for the online views")
    redis_cluster: bool = Field(
        False,
        description="Redis is a Redis Cluster: FSTORE_REDIS_URL names any one of its nodes (the others are "
        "discovered) and every layer routes its keys by hash slot",
    )
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma separated")
    events_topic: str = Field(
        "events", description="Topic of raw events (unset: the topic the stream source declares, else events)"
    )
    dlq_topic: str = Field("events.dlq", description="Dead-letter topic")
    topic_partitions: int = Field(1, ge=1, description="Partitions of the events topic when created")
    dead_letter_keep_unparseable: bool = Field(
        False,
        description="Keep the bytes of dead letters that are not JSON objects in the dead_letters table "
        "(default: only their size and hash, since nothing can be masked in them)",
    )
    samples_dir: str | None = Field(
        None, description="Local folder of the API's served-response samples (default <data_dir>/served_samples)"
    )
    jar_cache: Path = Field(
        Path.home() / ".cache" / "fstore" / "jars",
        description="Cache of the Maven jars (Apache Kafka, delta-spark) fetched by `fstore services install`",
    )

    def data_root(self) -> str:
        """The data root as jobs use it: an object-store URI as given, a local path made absolute (against
        the working directory), so Spark executors and Arrow file systems see the same location."""
        root = self.data_dir.rstrip("/") or "."
        return root if "://" in root else str(Path(root).resolve())

    def samples_path(self) -> Path | None:
        """Folder of the served-response samples (:mod:`fstore.samples`): ``samples_dir``, else
        ``served_samples`` under a local data root; ``None`` for an object-store data root without one."""
        if self.samples_dir:
            return Path(self.samples_dir).resolve()
        root = self.data_root()
        if "://" in root:
            return Path(root.removeprefix("file://")) / "served_samples" if root.startswith("file://") else None
        return Path(root) / "served_samples"

    def table(self, name: str) -> str:
        """Location of the Delta table ``name`` under the data root."""
        return f"{self.data_root()}/{name}"


class SettingsError(RuntimeError):
    """Invalid configuration; the message names the variable."""


S = TypeVar("S", bound=Settings)


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build and validate a settings class (explicit ``overrides`` win over the environment).

    Raises:
        SettingsError: naming every offending ``FSTORE_`` variable and what is wrong with it.
    """
    try:
        return cls(**overrides)
    except ValidationError as exc:
        bad = ", ".join(f"FSTORE_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        raise SettingsError(f"invalid settings: {bad}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Load and validate the shared settings once (see :func:`load_settings`)."""
    return load_settings(Settings)
