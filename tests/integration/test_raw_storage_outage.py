"""The storage of ``raw_events`` refusing a write is an outage, not a bug (docs/runbook.md, *Stream worker
exit codes*): delta-rs reports the file system's error inside a ``DeltaError`` ("... (os error 28)" for a full
disk), which the worker took for a failure of its own (exit 70, probe-faults: a full tmpfs under
FSTORE_DATA_DIR). A real Delta append fails on a real OS error here, and succeeds once the cause is gone."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError

from fstore.delta import raw_log
from jobs.stream.faults import EXIT_OUTAGE, exit_code, is_outage
from tests.support import raw_rows
from tests.support.online import make_events

pytestmark = pytest.mark.integration


def test_a_file_system_error_under_raw_events_is_an_outage(tmp_path: Path) -> None:
    uri = str(tmp_path / "raw_events")
    now = time.time_ns() // 1000
    events = [e._replace(event_time=now - 60_000_000) for e in make_events(3, 20)[:5]]
    rows = raw_rows.events_table(events, [f"h{i}" for i in range(len(events))], [now] * len(events))
    old = [events[0]._replace(event_id="old", event_time=now - 3 * 86_400_000_000)]
    raw_log.append_raw(uri, raw_rows.events_table(old, ["h"], [now]))  # the table exists, today's partition not
    day = datetime.fromtimestamp(now / 1e6, UTC).date().isoformat()
    blocker = Path(uri, f"event_date={day}")
    blocker.write_text("not a directory")  # the OS refuses every file under it, as a full disk refuses writes
    with pytest.raises(DeltaError) as info:
        raw_log.append_raw(uri, rows)
    assert "(os error" in str(info.value)
    assert is_outage(info.value) and exit_code(info.value) == EXIT_OUTAGE
    assert not is_outage(DeltaError("Schema error: cannot merge types"))  # a data problem stays one
    blocker.unlink()
    blocker.mkdir()
    raw_log.append_raw(uri, rows)  # the retry after the outage
    assert DeltaTable(uri).to_pyarrow_table(columns=["event_id"]).num_rows == len(events) + 1
