"""The real entry points as a user runs them: messages, ``fstore`` commands, the nightly batch, API reads."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from fstore import plan_source
from fstore.core.timeutil import iso
from tests.support import bruteforce
from tests.support.legacy.events_example import Event
from tests.support.legacy.features import FeatureView

FSTORE = str(Path(sys.executable).with_name("fstore"))


def message(ev: Event) -> tuple[str, bytes]:
    """``(Kafka key, JSON message)`` of an event as a producer sends it."""
    body: dict[str, object] = {
        "event_id": ev.event_id,
        "event_type": ev.event_type,
        "user_id": ev.user_id,
        "event_time": iso(ev.event_time),
        "quantity": ev.quantity,
    }
    if ev.session_id is not None:
        body["session_id"] = ev.session_id
    if ev.product_id is not None:
        body["product_id"] = ev.product_id
    if ev.price is not None:
        body["price"] = ev.price
    return ev.user_id, orjson.dumps(body)


def run_fstore(args: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float = 600) -> str:
    """Run ``fstore ARGS`` (the installed command) and return its stdout; fails the test on a non-zero exit."""
    proc = subprocess.run(
        [FSTORE, *args], env={**os.environ, **env}, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def serve_repo(repo: Path, redis_url: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Make ``repo`` the repository every fstore process of the test runs (the settings ``fstore batch`` and
    ``fstore backfill`` need included) while the generator is suspended (a fixture body: ``yield from``)."""
    for k, v in {
        "FSTORE_FEATURE_REPO": str(repo),
        "FSTORE_REDIS_URL": redis_url,
        "FSTORE_DATA_DIR": str(data_dir),
        # what run_batch sets, for the batch job `fstore backfill` runs: history is ingested days "late"
        "FSTORE_DQ_LATE_AFTER_S": str(40 * 86_400),
        "FSTORE_SPARK_SHUFFLE_PARTITIONS": "2",
        "FSTORE_SPARK_DRIVER_MEMORY": "2g",
    }.items():
        monkeypatch.setenv(k, v)
    plan_source.use_plan(None)
    try:
        yield repo
    finally:
        plan_source.use_plan(None)


def run_batch(run_date: str, data_dir: Path, redis_url: str, **extra: str) -> None:
    """``fstore batch --date RUN_DATE`` on local Spark over ``data_dir``, loading the batch view into Redis
    (``extra``: more ``FSTORE_*`` settings)."""
    env = {
        "FSTORE_DATA_DIR": str(data_dir),
        "FSTORE_REDIS_URL": redis_url,
        "FSTORE_DQ_LATE_AFTER_S": str(40 * 86_400),  # the tests' history is ingested days "late"
        "FSTORE_SPARK_SHUFFLE_PARTITIONS": "2",
        "FSTORE_SPARK_DRIVER_MEMORY": "2g",
        **extra,
    }
    run_fstore(["batch", "--date", run_date, "--no-progress"], env, data_dir.parent)


def close(a: object, b: object) -> bool:
    """Feature values equal (floats to 1e-9: sums are added in another order by each engine)."""
    if a is None or b is None:
        return a is b
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)  # type: ignore[arg-type]


def api_mismatches(
    client: TestClient, view: FeatureView, entities: Sequence[str], events: list[Event]
) -> tuple[int, list[tuple[object, ...]]]:
    """``POST /features`` of every entity of ``view``, compared with the brute force at the response's
    ``as_of``: ``(values checked, differences as (entity, feature, api, brute force))``."""
    key = view.entity.join_key
    r = client.post("/features", json={"entities": [{key: e} for e in entities], "features": [view.name]})
    assert r.status_code == 200, r.text
    as_of = r.json()["as_of_us"]
    bad: list[tuple[object, ...]] = []
    checked = 0
    for entity, row in zip(entities, r.json()["rows"], strict=True):
        for name, want in bruteforce.values(view, events, entity, as_of).items():
            checked += 1
            got = row["values"][f"{view.name}:{name}"]
            if not close(got, want):
                bad.append((entity, name, got, want))
    return checked, bad
