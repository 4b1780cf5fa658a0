"""A run date that is not over yet is refused (docs/batch.md, docs/design.md §4–§5).

`fstore batch --date <today>` used to publish a batch view whose cutover C was tomorrow's 00:00: the batch
layer then owned every tile up to tomorrow (built from the events that had arrived so far), the speed layer
none of today's, so today's later events were never served and one stamped a few minutes ahead counted
before its event_time (probe-repo2: 723 of 2,060 served values wrong). Such a run must change nothing (the
run for a closed day is every other batch test).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from fstore.clock import wall_clock
from fstore.commands.batch import batch
from fstore.core.timeutil import HOUR, MINUTE, day_start, to_date
from fstore.delta import raw_log
from fstore.devsvc.services import RedisServer
from fstore.plan_source import use_plan
from fstore.redis.layout import POINTER_KEY
from jobs.batch.rebuild_features import main as spark_submit_main
from tests.support import raw_rows
from tests.support.legacy.events_example import Event
from tests.support.repos import compiled

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def example_plan() -> Iterator[None]:
    use_plan(compiled("ecommerce"))
    yield
    use_plan(None)


def test_a_run_date_not_over_yet_is_refused_and_changes_nothing(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = wall_clock()
    today = to_date(now)
    c = day_start(today)
    events = [  # yesterday's users (b*) and today's (t*), one of them stamped 4 minutes ahead
        Event(f"e{i}", kind, f"b{i % 3}", f"p{i % 2}", c - (i + 1) * HOUR, 10.0 + i, 1 + i % 2, None)
        for i, kind in enumerate(["page_view", "click", "purchase", "click", "add_to_cart", "purchase", "click"])
    ] + [
        Event("t0", "click", "t0", "p0", max(c, now - 30 * MINUTE), None, 1, None),
        Event("t1", "purchase", "t1", "p1", now + 4 * MINUTE, 5.0, 1, None),
    ]
    root = tmp_path / "data"
    raw_log.append_raw(
        str(root / "raw_events"),
        raw_rows.events_table(events, [f"{i:032x}" for i in range(len(events))], [now] * len(events)),
    )
    url = redis_server.url.rsplit("/", 1)[0] + "/12"
    rdb = redis.Redis.from_url(url)
    rdb.flushdb()
    for k, v in {
        "DATA_DIR": str(root),
        "REDIS_URL": url,
        "SPARK_SHUFFLE_PARTITIONS": "2",
        "DQ_LATE_RATE_FAIL": "2",  # the gate is not what this test is about: a lenient one passes any day
        "DQ_FRESHNESS_FAIL_S": "9999999",
        "DQ_VOLUME_MIN_HISTORY": "1000",
    }.items():
        monkeypatch.setenv(f"FSTORE_{k}", v)

    for args in (
        ["--date", today.isoformat()],
        ["--from", (today - timedelta(days=1)).isoformat(), "--to", today.isoformat()],
    ):
        res = CliRunner().invoke(batch, [*args, "--no-progress"])
        assert res.exit_code == 64, res.output
        assert f"run date {today} is not over" in res.output and f"--date {today - timedelta(days=1)}" in res.output
    assert spark_submit_main(["--date", today.isoformat()]) == 64
    assert rdb.get(POINTER_KEY) is None  # nothing published
    assert not [p.name for p in root.iterdir() if p.name != "raw_events"]  # nothing written
    rdb.close()
