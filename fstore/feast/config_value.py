"""Values of ``feature_store.yaml`` that the fstore stores read."""

from __future__ import annotations


def unset(value: str | None) -> bool:
    """Whether a yaml value is absent: missing, empty or an unexpanded variable (Feast leaves ``${VAR}`` of an
    unset ``VAR`` as it is), so the store falls back to the fstore settings instead of using it literally."""
    return not value or "${" in value or value.startswith("$")
