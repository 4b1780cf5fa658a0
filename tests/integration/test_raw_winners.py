"""The winners written once per day (``raw_events_winners``, fstore/delta/raw_winners.py) give the point-in-time
engine exactly the answer of reading and de-duplicating ``raw_events`` (docs/design.md §2, §6).

One ``raw_events`` on disk (real Delta files) with copies of one event on its own day (earlier, tied and
later ``ingested_at``), copies on another day marked superseded (the winner before or after the loser), and
events of one entity at one instant with different values (sums must not depend on the order the files
hold them in). Each state is compared byte for byte with the raw path (``winners=False``) and with the
brute force of docs/design.md §3 over the first ingested copy of every event id: after compacting some days
(the others read raw: the open tail), after a late copy and a new superseded mark land on compacted days
(stale: those days read raw until compacted again), without the winners directory, and with copies of one
event on two days that no writer marked (a race of two writers: read everything raw, never publish).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from unittest.mock import ANY

import numpy as np
import pandas as pd
import pytest

from fstore.core.timeutil import DAY, to_date
from fstore.delta import raw_log, raw_winners
from fstore.offline import local as offline
from tests.support.pit import BASE, Row, assert_frame_matches, expected, query_times, random_events
from tests.support.plan_raw_events import Copy, append, first_ingested
from tests.support.repos import compiled

pytestmark = pytest.mark.integration

PLAN = compiled("ecommerce")
VIEWS = [v.name for v in PLAN.views]
SPAN = 6 * DAY
NOW = BASE + 30 * DAY
DAYS = [to_date(BASE + i * DAY) for i in range(6)]
EVE = to_date(BASE - 1)  # events 1 µs before a hop boundary fall on the day before BASE


@dataclass
class Store:
    raw_uri: str
    copies: list[Copy]
    marks: set[tuple[str, date]]
    frame: pd.DataFrame

    def add(self, copies: list[Copy], marks: Sequence[tuple[str, date]] = ()) -> None:
        if marks:
            pairs = [(eid, (d - date(1970, 1, 1)).days) for eid, d in marks]
            raw_log.append_superseded(raw_log.superseded_uri(self.raw_uri), raw_log.superseded_table(pairs, NOW))
            self.marks |= set(marks)
        if copies:
            append(self.raw_uri, PLAN.schema, copies)
        self.copies += copies

    def winners(self) -> list[Row]:
        """Brute force: the first ingested copy of each id, over every copy no mark drops."""
        alive = [c for c in self.copies if (c[2]["event_id"], to_date(c[2]["event_time"])) not in self.marks]
        return first_ingested(alive, "event_id")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    rng = np.random.default_rng(5)
    events = random_events(rng, 1500, users=12, products=6, span=SPAN)
    copies: list[Copy] = [(NOW + i, f"a{i:031x}", e) for i, e in enumerate(events)]
    for i, e in enumerate(events[:120]):  # same day, another payload: wins (earlier), ties (hash) or loses
        price = None if e["price"] is None else e["price"] + 2.5
        changed = {**e, "quantity": e["quantity"] + 1, "price": price}
        copies.append(([NOW - 10 - i, NOW + i, NOW + 5000 + i][i % 3], f"0{i:031x}", changed))
    ties: list[Copy] = []  # one entity, one instant, several values: sums must not depend on their order
    for i in range(40):
        base = events[200 + i // 4]
        tie = {**base, "event_id": f"tie{i}", "event_type": "purchase", "price": 10.01 + 7.13 * i}
        ties.append((NOW + 9000 + i, f"b{i:031x}", tie))
    early = {**events[200], "event_id": "early", "event_time": min(e["event_time"] for e in events[200:210]) - 1}
    marks: list[tuple[str, date]] = []
    for i, e in enumerate(events[300:360]):  # another day: the later copy loses and is marked
        moved = {**e, "event_time": e["event_time"] + (2 * DAY if e["event_time"] < BASE + 3 * DAY else -2 * DAY)}
        first, second = (e, moved) if i % 2 else (moved, e)
        copies.append((NOW - 20_000 - i, f"c{i:031x}", first))
        copies.append((NOW + 20_000 + i, f"d{i:031x}", second))
        marks.append((e["event_id"], to_date(second["event_time"])))
    times = query_times(rng, PLAN, events, 400, SPAN)
    frame = pd.DataFrame(
        {
            "user_id": [f"u{rng.integers(13)}" for _ in times],
            "product_id": [f"p{rng.integers(7)}" for _ in times],
            "event_timestamp": pd.to_datetime(times, unit="us", utc=True),
        }
    )
    s = Store(str(tmp_path / "raw_events"), [], set(), frame)
    s.add(copies[: len(events)])
    s.add(copies[len(events) :], marks)
    # two more files, the second starting earlier: the raw path puts its rows first, the day's winners file
    # keeps the log's order, so equal (entity, time) keys reach the engine in two different orders
    s.add(ties[::2])
    s.add([(NOW + 9999, "early", early), *ties[1::2]])
    yield s


def features(store: Store, winners: bool) -> tuple[pd.DataFrame, offline.Timings]:
    timings = offline.Timings()
    got = offline.get_historical_features(
        store.frame, VIEWS, plan=PLAN, raw_uri=store.raw_uri, full_feature_names=True, timings=timings, winners=winners
    )
    return got, timings


def check(store: Store, settled: list[date], brute: bool = True) -> None:
    """The winners path uses exactly the ``settled`` days and equals the raw path bit for bit (and the brute
    force when every cross-day loser is marked)."""
    got, timings = features(store, winners=True)
    assert timings.settled == settled
    raw, raw_timings = features(store, winners=False)
    assert raw_timings.settled == []
    pd.testing.assert_frame_equal(got, raw, check_exact=True)
    span = (BASE - DAY, BASE + 7 * DAY)  # read_events gives the same winners both ways
    events = [offline.read_events(store.raw_uri, span, plan=PLAN, winners=w).sort_by("event_id") for w in (True, False)]
    assert events[0].equals(events[1])
    if not brute:
        return
    events = store.winners()
    times = [int(t.value // 1000) for t in store.frame["event_timestamp"]]
    for view in PLAN.views:
        want = expected(PLAN, view.name, events, list(store.frame[view.entity.join_key]), times)
        assert_frame_matches(got, PLAN, view.name, want, prefix=f"{view.name}__")


def test_winners_equal_raw_through_late_copies_marks_and_loss(store: Store) -> None:
    uri = store.raw_uri
    check(store, [])  # nothing compacted yet: everything raw
    report = raw_winners.compact(uri, PLAN.schema, before=DAYS[4])
    assert report.written == [EVE, *DAYS[:4]] and not report.conflicted
    check(store, [EVE, *DAYS[:4]])  # days 4 and 5: the open tail, read raw and de-duplicated

    late = {**store.winners()[0], "event_id": "late1", "event_time": BASE + DAY + 7, "price": 3.0}
    store.add([(NOW + 50_000, "late", late)])  # a late event on compacted day 1
    moved = next(w for w in store.winners() if to_date(w["event_time"]) == DAYS[5])
    loser = {**moved, "event_time": BASE + 2 * DAY + 11, "quantity": 3}  # a losing copy on compacted day 2
    store.add([(NOW + 60_000, "loser", loser)], [(moved["event_id"], DAYS[2])])
    check(store, [EVE, DAYS[0], DAYS[3]])  # days 1 and 2 are stale: read raw until compacted again

    report = raw_winners.compact(uri, PLAN.schema, before=DAYS[4])
    assert report.written == [DAYS[1], DAYS[2]] and report.kept == [EVE, DAYS[0], DAYS[3]]
    assert report.removed_files == 2
    check(store, [EVE, *DAYS[:4]])

    shutil.rmtree(raw_winners.winners_uri(uri))  # the cache is gone: everything raw, same answer
    check(store, [])


def test_unmarked_copies_on_two_days_read_everything_raw_until_marked(store: Store) -> None:
    uri = store.raw_uri
    raw_winners.compact(uri, PLAN.schema, before=DAYS[4])
    first = next(w for w in store.winners() if to_date(w["event_time"]) == DAYS[0])
    racer = {**first, "event_time": BASE + 5 * DAY + 3, "price": 99.0}
    every = [EVE, *DAYS]
    assert sorted(raw_winners.settled(uri, every, PLAN.schema)) == [EVE, *DAYS[:4]]  # the batch job's choice
    store.add([(NOW - 90_000, "racer", racer)])  # two writers raced: no mark; the raw path de-duplicates it
    check(store, [], brute=False)  # the tail shares an id with compacted day 0: everything raw
    assert raw_winners.settled(uri, every, PLAN.schema) == {}
    report = raw_winners.compact(uri, PLAN.schema)
    assert report.conflicted == [DAYS[5]] and report.written == [DAYS[4]]  # day 5 is never published
    check(store, [], brute=False)

    store.add([], [(first["event_id"], DAYS[0])])  # a writer's catch-up marks the loser's day, no new row
    check(store, [EVE, *DAYS[1:5]])  # day 0's file is stale by its marks alone
    settled = raw_winners.settled(uri, every, PLAN.schema)
    assert sorted(settled) == [EVE, *DAYS[1:5]] and all(Path(p).is_file() for p in settled.values())
    report = raw_winners.compact(uri, PLAN.schema)
    assert report.written == [DAYS[0], DAYS[5]] and not report.conflicted
    check(store, [EVE, *DAYS])


def test_fstore_compact_writes_the_closed_days(store: Store) -> None:
    from click.testing import CliRunner

    from fstore.cli import main

    data_dir = str(Path(store.raw_uri).parent)
    args = ["compact", "--data-dir", data_dir, "--before", DAYS[4].isoformat()]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"written": 5, "kept": 0, "conflicted": [], "removed_files": 0, "rows": ANY}
    check(store, [EVE, *DAYS[:4]], brute=False)
    again = json.loads(CliRunner().invoke(main, args).output)
    assert again["written"] == 0 and again["kept"] == 5


def test_a_winners_file_that_vanishes_before_the_read_falls_back(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A compaction may remove a file a request listed a moment before (its day changed meanwhile)."""
    raw_winners.compact(store.raw_uri, PLAN.schema, before=DAYS[4])
    listed = raw_winners.usable
    monkeypatch.setattr(raw_winners, "usable", lambda uri, fps: {d: p + ".gone" for d, p in listed(uri, fps).items()})
    check(store, [])
    assert "reading raw_events instead" in caplog.text
