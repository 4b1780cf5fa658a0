"""De-duplication rules of fstore.core.dedupe against a restated brute force."""

from __future__ import annotations

import random
from datetime import date, timedelta

import pyarrow as pa
import pytest

from fstore.core.dedupe import drop_superseded, first_ingested_arrow
from fstore.core.timeutil import DAY

pytestmark = pytest.mark.unit

D0 = 20_454


def test_drop_superseded_drops_exactly_the_pairs() -> None:
    rng = random.Random(2)
    rows = [(f"e{rng.randrange(30)}", (D0 + rng.randrange(4)) * DAY + rng.randrange(DAY), i) for i in range(300)]
    raw = pa.table(
        {
            "event_id": [r[0] for r in rows],
            "event_time": pa.array([r[1] for r in rows], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "ingested_at": pa.array([r[2] for r in rows], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "payload_hash": [str(r[2]) for r in rows],
        }
    )
    pairs = {(f"e{rng.randrange(40)}", D0 + rng.randrange(5)) for _ in range(25)}
    sup = pa.table(
        {
            "event_id": [p[0] for p in sorted(pairs)],
            "event_date": pa.array([date(1970, 1, 1) + timedelta(days=p[1]) for p in sorted(pairs)], pa.date32()),
        }
    )
    for ids in (raw, raw.set_column(0, "event_id", raw.column("event_id").dictionary_encode())):
        got = drop_superseded(ids, sup)
        want = [r for r in rows if (r[0], r[1] // DAY) not in pairs]
        assert got.column("ingested_at").cast(pa.int64()).to_pylist() == [r[2] for r in want]
    assert drop_superseded(raw, sup.slice(0, 0)) is raw
    assert drop_superseded(raw, pa.table({"event_id": ["zz"], "event_date": pa.array([date(2026, 1, 1)])})) is raw
    # then first ingested wins among what is left
    won = first_ingested_arrow(drop_superseded(raw, sup))
    best: dict[str, int] = {}
    for r in rows:
        if (r[0], r[1] // DAY) not in pairs:
            best.setdefault(r[0], r[2])
    assert (
        dict(
            zip(won.column("event_id").to_pylist(), won.column("ingested_at").cast(pa.int64()).to_pylist(), strict=True)
        )
        == best
    )
