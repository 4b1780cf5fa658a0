"""The writers' index of ``raw_events`` (fstore.delta.event_index) over real Delta tables on disk.

Expected decisions are restated from docs/design.md §2 (first copy in arrival order wins, whatever the day);
readers are checked through the point-in-time adapter's read of a single partition.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from fstore.core.dedupe import drop_superseded, first_ingested_arrow
from fstore.core.timeutil import DAY, HOUR
from fstore.delta import event_index, raw_log
from fstore.delta.event_index import NEW, SAME_DAY, SUPERSEDED, EventIndex
from fstore.offline.local import read_events
from tests.support import raw_rows
from tests.support.legacy.events_example import Event
from tests.support.repos import compiled

pytestmark = pytest.mark.integration

D0 = 20_454  # 2026-01-01 as a UTC day number
EPOCH = date(1970, 1, 1).toordinal()
T0 = D0 * DAY


def ev(eid: str, day: int, hour: int = 1, quantity: int = 1) -> Event:
    return Event(eid, "click", "u1", "p1", T0 + day * DAY + hour * HOUR, None, quantity, None)


def write(index: EventIndex, events: list[Event], at: int) -> np.ndarray:
    """What a raw sink does: classify, mark, append, record. Returns the verdicts."""
    index.refresh()
    ids = [e.event_id for e in events]
    days = event_index.day_numbers(e.event_time for e in events)
    verdicts = index.classify(ids, days)
    index.write_marks(index.superseded(ids, days, verdicts))
    raw_log.append_raw(
        index.raw_uri, raw_rows.events_table(events, [f"h{e.quantity}" for e in events], range(at, at + len(events)))
    )
    index.committed()
    index.record(ids, days, verdicts)
    return verdicts


def read_events_ids(uri: str, day: int) -> list[str]:
    """The event_ids a reader of that one day's partition counts (superseded pairs dropped, first ingested)."""
    raw = raw_log.read_table(uri, filter=pc.field("event_date") == pa.scalar(date.fromordinal(EPOCH + D0 + day)))
    sup = raw_log.read_table(raw_log.superseded_uri(uri), ["event_id", "event_date"])
    won = first_ingested_arrow(drop_superseded(raw, sup))
    t = won.column("event_time").cast(pa.int64()).to_numpy()
    keep = (t >= T0 + day * DAY) & (t < T0 + (day + 1) * DAY)
    return [x for x, k in zip(won.column("event_id").to_pylist(), keep, strict=True) if k]


def test_arrival_order_across_days_flushes_and_restarts(tmp_path: Path) -> None:
    uri = str(tmp_path / "raw_events")
    a = EventIndex(uri)
    v = write(a, [ev("x", 0), ev("y", 1), ev("x", 2, quantity=2), ev("x", 0, quantity=3), ev("z", 3)], 100)
    assert v.tolist() == [NEW, NEW, SUPERSEDED, SAME_DAY, NEW]
    # A later flush, and a fresh index (a restarted worker) loading everything from the log.
    v = write(a, [ev("y", 0, quantity=4), ev("y", 1, quantity=5), ev("w", 2)], 200)
    assert v.tolist() == [SUPERSEDED, SAME_DAY, NEW]
    b = EventIndex(uri)
    v = write(b, [ev("z", 2, quantity=6), ev("x", 2, quantity=7), ev("w", 2, quantity=8), ev("v", 2)], 300)
    assert v.tolist() == [SUPERSEDED, SUPERSEDED, SAME_DAY, NEW]
    assert b.loaded_rows == 8
    marks = raw_log.read_table(raw_log.superseded_uri(uri), ["event_id", "event_date"])
    got = {(e, d.toordinal() - EPOCH - D0) for e, d in zip(*marks.to_pydict().values(), strict=True)}
    assert got == {("x", 2), ("y", 0), ("z", 2)} and marks.num_rows == 3
    # Each reader of one day counts every event_id once, on its winner's day only.
    assert sorted(read_events_ids(uri, 0)) == ["x"]
    assert sorted(read_events_ids(uri, 1)) == ["y"]
    assert sorted(read_events_ids(uri, 2)) == ["v", "w"]
    assert sorted(read_events_ids(uri, 3)) == ["z"]
    assert read_events(uri, (T0, T0 + 4 * DAY), plan=compiled("ecommerce")).num_rows == 5


def test_concurrent_writers_are_reconciled_by_either(tmp_path: Path) -> None:
    """Two writers store copies of one event_id on different days without seeing each other: the next
    catch-up of either marks the copy with the larger (ingested_at, payload_hash), and the other agrees."""
    uri = str(tmp_path / "raw_events")
    a, b = EventIndex(uri), EventIndex(uri)
    a.refresh()
    b.refresh()
    ids, days_a, days_b = ["r"], np.array([D0], np.int32), np.array([D0 + 1], np.int32)
    assert a.classify(ids, days_a).tolist() == b.classify(ids, days_b).tolist() == [NEW]
    raw_log.append_raw(uri, raw_rows.events_table([ev("r", 1, quantity=2)], ["h2"], [50]))  # b's copy: earlier
    raw_log.append_raw(uri, raw_rows.events_table([ev("r", 0)], ["h1"], [60]))  # a's copy
    a.refresh()
    b.refresh()
    marks = raw_log.read_table(raw_log.superseded_uri(uri), ["event_id"])
    assert marks.column("event_id").to_pylist() == ["r"]  # one mark, written once
    assert read_events_ids(uri, 0) == [] and read_events_ids(uri, 1) == ["r"]
    # Both now place r on day 1: a later copy on day 0 is superseded, on day 1 a same-day copy.
    for idx in (a, b, EventIndex(uri)):
        idx.refresh()
        assert idx.classify(["r", "r"], np.array([D0, D0 + 1], np.int32)).tolist() == [SUPERSEDED, SAME_DAY]


def test_hash_collisions_cost_a_read_never_a_decision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every event_id hashing alike: decisions are taken on the ids read back, so they do not change."""
    monkeypatch.setattr(event_index, "id_hashes", lambda ids: np.zeros(len(ids), np.uint64))
    uri = str(tmp_path / "raw_events")
    a = EventIndex(uri)
    v = write(a, [ev("k1", 0), ev("k2", 1), ev("k3", 2), ev("k1", 1, quantity=2)], 100)
    assert v.tolist() == [NEW, NEW, NEW, SUPERSEDED]
    v = write(EventIndex(uri), [ev("k4", 0), ev("k2", 1, quantity=3), ev("k3", 0, quantity=4), ev("k5", 3)], 200)
    assert v.tolist() == [NEW, SAME_DAY, SUPERSEDED, NEW]
    assert sorted(read_events_ids(uri, 0)) == ["k1", "k4"]
    assert sorted(read_events_ids(uri, 1)) == ["k2"]


def test_catch_up_reads_only_the_new_commits(tmp_path: Path) -> None:
    """A writer's index reads its own commits never and another writer's commits from their log entries."""
    uri = str(tmp_path / "raw_events")
    a = EventIndex(uri)
    write(a, [ev("m", 0), ev("n", 1)], 100)  # creates the table
    write(a, [ev("q", 3)], 150)
    assert a.loaded_rows == 0
    other = EventIndex(uri)
    assert write(other, [ev("n", 2, quantity=2), ev("o", 2)], 200).tolist() == [SUPERSEDED, NEW]
    assert other.loaded_rows == 3
    a.refresh()
    assert a.loaded_rows == 2  # just the other writer's commit
    verdicts = a.classify(["n", "o", "m", "q", "p"], np.array([D0 + 2, D0 + 2, D0, D0 + 1, D0], np.int32))
    assert verdicts.tolist() == [SUPERSEDED, SAME_DAY, SAME_DAY, SUPERSEDED, NEW]
