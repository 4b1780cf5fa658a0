"""The boundary table (tests/support/boundary.py) through the online merge: the tiles of each row (its view
as a plan view) split at a cutover into a batch hash (packed fields with m2, as the batch loader writes
them) and speed day hashes (c/s/n/x/v fields, as the Lua script writes them), read back as the reader
does, against the brute force and the reference tile path."""

from __future__ import annotations

from typing import Any

import pytest

from fstore.core.plan import View
from fstore.core.timeutil import DAY
from fstore.core.view_tiles import Tiles, ViewTiler, evaluate, lookup_in
from fstore.online.merge import EntityRead, decode_batch, finish
from fstore.online.reader import merge, speed_days
from fstore.redis.layout import BatchPointer, acc_fields
from tests.support.boundary import CASES, Case, case_ids, mismatches
from tests.support.legacy_view import plan_view
from tests.support.plan_online import speed_fields

pytestmark = pytest.mark.unit


def cutovers(t: int) -> list[int | None]:
    """No batch view; the day of ``t`` (C = t when t is midnight); two days earlier (C inside the 7-day
    and 12-day windows)."""
    day = t // DAY * DAY
    return [None, day, day - 2 * DAY]


def tiles(case: Case, view: View) -> Tiles:
    return ViewTiler(view, "event_time").build(e._asdict() for e in case.tileable())


def replies(case: Case, view: View, cutover: int | None) -> tuple[list[bytes], dict[int, list[bytes]]]:
    """The entity's batch hash (tiles before the cutover) and speed hashes by day (tiles from it on), as
    flat HGETALL replies."""
    batch: dict[str, str] = {}
    speed: dict[int, dict[str, str]] = {}
    for (entity, size, start), tile in tiles(case, view).items():
        if entity != case.entity:
            continue
        for measure, acc in tile.items():
            if cutover is not None and start < cutover:
                batch.update(acc_fields(size, start, measure, acc))
            else:
                speed.setdefault(start // DAY * DAY, {}).update(speed_fields(size, start, measure, acc))

    def flat(h: dict[str, str]) -> list[bytes]:
        return [x.encode() for kv in h.items() for x in kv]

    return flat(batch), {day: flat(h) for day, h in speed.items()}


@pytest.mark.parametrize("case", CASES, ids=case_ids())
def test_online_merge(case: Case) -> None:
    want = case.expected()
    view = plan_view(case.view)
    entity_read = EntityRead(view, case.entity, view.feature_names)
    core = evaluate(view, lookup_in(tiles(case, view), case.entity), case.t)
    for cutover in cutovers(case.t):
        batch, speed = replies(case, view, cutover)
        pointer = None if cutover is None else BatchPointer("v1", cutover)
        days: list[Any] = [speed.get(d, []) for d in speed_days(view, pointer, case.t)]
        # the reader's uncached path: every batch tile decoded
        got = merge(entity_read, pointer, ([batch] if pointer else []) + days, case.t).values
        assert not mismatches(got, want), (cutover, mismatches(got, want))
        assert got == core, "the online merge is not bit-identical to fstore.core.view_tiles.evaluate"
        if cutover is not None:  # the reader's cached path: batch tiles kept from the cutover on, folds memoised
            cached = decode_batch(view, batch, cutover, cutover)
            for _ in range(2):
                again = finish(entity_read, cutover, cached, days, case.t).values
                assert again == got, cutover
