"""Tile lookups over decoded hashes (``{(size, start): {measure: Partial}}``) for
:func:`tests.support.legacy.tiles.evaluate`."""

from __future__ import annotations

from collections.abc import Mapping

from fstore.core.aggregates import Partial
from tests.support.legacy.tiles import TileLookup


def lookup_in_dict(tiles: Mapping[tuple[int, int], Mapping[str, Partial]]) -> TileLookup:
    """A :data:`~tests.support.legacy.tiles.TileLookup` over one entity's decoded tiles."""
    return lambda size, start: tiles.get((size, start))
