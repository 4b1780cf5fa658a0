"""The boundary table (tests/support/boundary.py) through the online merge: the tiles of each row split at
a cutover into a batch hash (packed fields, as the batch loader writes them) and speed day hashes (c/s/n/x
fields, as the Lua script writes them), read back as the reader does, against the brute force."""

from __future__ import annotations

from typing import Any

import pytest

from fstore.core.tiles import build_tiles, evaluate, lookup_in
from fstore.core.timeutil import DAY
from fstore.online.merge import EntityRead, decode_batch, finish
from fstore.online.reader import merge, speed_days
from fstore.redis.layout import BatchPointer, packed_fields, partial_fields
from tests.support.boundary import CASES, Case, case_ids, mismatches

pytestmark = pytest.mark.unit


def cutovers(t: int) -> list[int | None]:
    """No batch view; the day of ``t`` (C = t when t is midnight); two days earlier (C inside the 7-day
    and 12-day windows)."""
    day = t // DAY * DAY
    return [None, day, day - 2 * DAY]


def replies(case: Case, cutover: int | None) -> tuple[list[bytes], dict[int, list[bytes]]]:
    """The entity's batch hash (tiles before the cutover) and speed hashes by day (tiles from it on), as
    flat HGETALL replies."""
    batch: dict[str, str] = {}
    speed: dict[int, dict[str, str]] = {}
    for (entity, size, start), tile in build_tiles(case.view, case.tileable()).items():
        if entity != case.entity:
            continue
        for measure, p in tile.items():
            if cutover is not None and start < cutover:
                batch.update(packed_fields(size, start, measure, p))
            else:
                speed.setdefault(start // DAY * DAY, {}).update(partial_fields(size, start, measure, p))

    def flat(h: dict[str, str]) -> list[bytes]:
        return [x.encode() for kv in h.items() for x in kv]

    return flat(batch), {day: flat(h) for day, h in speed.items()}


@pytest.mark.parametrize("case", CASES, ids=case_ids())
def test_online_merge(case: Case) -> None:
    want = case.expected()
    entity_read = EntityRead(case.view, case.entity, case.view.feature_names)
    core = evaluate(case.view, lookup_in(build_tiles(case.view, case.tileable()), case.entity), case.t)
    for cutover in cutovers(case.t):
        batch, speed = replies(case, cutover)
        pointer = None if cutover is None else BatchPointer("v1", cutover)
        days: list[Any] = [speed.get(d, []) for d in speed_days(case.view, pointer, case.t)]
        # the reader's uncached path: every batch tile decoded
        got = merge(entity_read, pointer, ([batch] if pointer else []) + days, case.t).values
        assert not mismatches(got, want), (cutover, mismatches(got, want))
        assert got == core, "the online merge is not bit-identical to fstore.core.tiles.evaluate"
        if cutover is not None:  # the reader's cached path: batch tiles kept from the cutover on, folds memoised
            tiles = decode_batch(case.view, batch, cutover, cutover)
            for _ in range(2):
                again = finish(entity_read, cutover, tiles, days, case.t).values
                assert again == got, cutover
