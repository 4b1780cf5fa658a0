"""Request and response models of the serving API."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, Field, field_validator

FeatureValue = int | float | None


class Freshness(BaseModel):
    """How current the speed view is for an entity."""

    newest_speed_tile: str | None = Field(None, description="Start of the newest speed tile (ISO, UTC)")
    speed_tile_age_s: float | None = Field(None, description="as_of minus that tile start, seconds")


class FeatureRow(BaseModel):
    """Values for one entity row."""

    entity: dict[str, str]
    values: dict[str, FeatureValue] = Field(description="`view:feature` → value (null per docs/design.md §3)")
    freshness: dict[str, Freshness] = Field(description="per feature view")


class FeaturesResponse(BaseModel):
    """Answer of GET /features (one row) and POST /features (many rows), read against one batch view."""

    as_of: str = Field(description="The exact time t used for every value (ISO, UTC, microseconds)")
    as_of_us: int = Field(description="as_of in epoch microseconds")
    batch_cutoff: str | None = Field(description="Cutover C: batch tiles before it, speed tiles from it on")
    batch_version: str | None
    rows: list[FeatureRow]


class EntityFeaturesResponse(FeaturesResponse):
    """Answer of GET /features: one entity row, its fields also at the top level (the same as ``rows[0]``)."""

    entity: dict[str, str] = Field(description="The entity row asked for (join key → id)")
    values: dict[str, FeatureValue] = Field(description="`view:feature` → value (null per docs/design.md §3)")
    freshness: dict[str, Freshness] = Field(description="per feature view")


class FeaturesRequest(BaseModel):
    """Body of POST /features."""

    entities: list[dict[str, str]] | dict[str, list[str]] = Field(
        description='Entity rows keyed by the entities\' join keys, e.g. [{"<join_key>": "id1"}], or columns as '
        'Feast\'s feature server takes them, e.g. {"<join_key>": ["id1", "id2"]} (one row per position)'
    )
    features: list[str] = Field(description="`view:feature` references or whole views")

    def rows(self) -> list[dict[str, str]]:
        """The entity rows; columns become one row per position.

        Raises:
            ValueError: columns of different lengths (the message names them).
        """
        if isinstance(self.entities, list):
            return self.entities
        lengths = {k: len(v) for k, v in self.entities.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"entity columns of different lengths: {lengths}")
        keys = list(self.entities)
        return [dict(zip(keys, values, strict=True)) for values in zip(*self.entities.values(), strict=True)]


class HealthResponse(BaseModel):
    """Answer of GET /health."""

    status: str
    redis: str
    batch_version: str | None = None
    batch_cutoff: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class HistoricalRequest(BaseModel):
    """Body of POST /historical-features."""

    entity_rows: list[dict[str, Any]] = Field(
        description="Rows with the join key(s) and `event_timestamp` (ISO-8601 text, naive means UTC, or "
        "a number of epoch milliseconds as in an event); other columns (labels) are returned unchanged"
    )
    features: list[str] = Field(description="`view:feature` references or whole views")
    full_feature_names: bool = Field(False, description="Name columns `view__feature`")

    @field_validator("entity_rows")
    @classmethod
    def finite_numbers(cls, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """NaN and ±Infinity are not JSON numbers: a row carrying one is refused, naming its column."""
        for i, row in enumerate(rows):
            for key, value in row.items():
                if isinstance(value, float) and not math.isfinite(value):
                    raise ValueError(f"entity_rows[{i}].{key} is {value}, which is not a JSON number")
        return rows


class HistoricalResponse(BaseModel):
    """One output row per input row, in input order, input columns kept."""

    rows: list[dict[str, Any]]
