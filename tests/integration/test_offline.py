"""Point-in-time training data from real Delta ``raw_events``: local engine, Spark engine and Feast.

``raw_events`` is written through :class:`fstore.ingest.Ingestor` and, for the at-least-once raw sink's
duplicates (same event_id, different payloads, earlier/later/equal ``ingested_at``), through
:mod:`fstore.delta.raw_log`. Every engine must equal the brute force of docs/design.md §3 over the brute-force
de-duplication of everything stored.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from fstore.core.events import Event
from fstore.core.features import VIEWS
from fstore.core.timeutil import DAY, iso
from fstore.delta import raw_log
from fstore.ingest import Ingestor, IngestReport
from fstore.offline import local as offline
from tests.support import bruteforce, raw_rows
from tests.support.pit import BASE, query_times, random_events

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NOW = BASE + 40 * DAY
SPAN = 10 * DAY


def message(e: Event, **changes: object) -> bytes:
    obj: dict[str, object] = {
        "event_id": e.event_id,
        "event_type": e.event_type,
        "user_id": e.user_id,
        "product_id": e.product_id,
        "event_time": iso(e.event_time),
        "price": e.price,
        "quantity": e.quantity,
    }
    obj.update(changes)
    return json.dumps({k: v for k, v in obj.items() if v is not None}).encode()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[Event]]]:
    """raw_events on disk and the brute-force de-duplicated events it stands for."""
    root = tmp_path_factory.mktemp("offline")
    rng = np.random.default_rng(11)
    events = random_events(rng, 3000, users=20, products=10, span=SPAN)
    raw_uri = str(root / "data" / "raw_events")
    clock = iter(range(NOW, NOW + 100))
    ing = Ingestor(raw_uri, str(root / "data" / "dead_letters"), clock=lambda: next(clock))
    msgs = [message(e) for e in events]
    report = IngestReport(source="test")
    for lo in range(0, len(msgs), 1000):
        ing.ingest_batch(msgs[lo : lo + 1000], "test", report)
    ing.ingest_batch([message(e, quantity=9) for e in events[:50]], "test", report)  # skipped: already present
    assert report.written == 3000 and report.duplicates == 50
    # The raw sink's copies: changed payloads ingested before (win), with (tie → hash) and after (lose) Ingestor.
    extra: list[Event] = []
    hashes, ats = [], []
    for i, e in enumerate(events[100:400]):
        changed = e._replace(quantity=e.quantity + 1 + i % 3, price=None if e.price is None else e.price + 1.5)
        extra.append(changed)
        hashes.append(f"{i:032x}" if i % 3 == 1 else f"f{i:031x}")
        ats.append([NOW - 5, NOW, NOW + 50][i % 3])
    raw_log.append_raw(raw_uri, raw_rows.events_table(extra, hashes, ats))
    stored = raw_log.read_table(raw_uri)
    assert stored.num_rows == 3300
    copies = []
    for r in stored.to_pylist():
        ev = Event(
            r["event_id"],
            r["event_type"],
            r["user_id"],
            r["product_id"],
            int(pd.Timestamp(r["event_time"]).value // 1000),
            r["price"],
            r["quantity"],
            r["session_id"],
        )
        copies.append((int(pd.Timestamp(r["ingested_at"]).value // 1000), r["payload_hash"], ev))
    winners = bruteforce.dedupe(copies)
    assert sum(w != e for w, e in zip(sorted(winners), sorted(events), strict=True)) > 50  # copies won
    yield root, winners


def entity_frame(events: list[Event], n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    times = query_times(rng, events, n, SPAN)
    users = [f"u{rng.integers(24)}" for _ in range(n)]
    products = [f"p{rng.integers(12)}" for _ in range(n)]
    users[5:10], products[5:10], times[5:10] = users[0:5], products[0:5], times[0:5]  # duplicate rows
    return pd.DataFrame(
        {
            "user_id": users,
            "product_id": products,
            "label": rng.integers(0, 2, n),
            "event_timestamp": pd.to_datetime(times, unit="us", utc=True),
        }
    )


def brute(events: list[Event], df: pd.DataFrame) -> dict[str, list[object]]:
    out: dict[str, list[object]] = defaultdict(list)
    for view in VIEWS.values():
        key = view.entity.join_key
        by_entity: dict[str, list[Event]] = defaultdict(list)
        for e in events:
            if getattr(e, key) is not None:
                by_entity[getattr(e, key)].append(e)
        for k, t in zip(df[key], df["event_timestamp"], strict=True):
            vals = bruteforce.values(view, by_entity.get(k, []), k, t.value // 1000)
            for name, v in vals.items():
                out[f"{view.name}__{name}"].append(v)
    return out


def assert_equal_brute(got: pd.DataFrame, want: dict[str, list[object]], df: pd.DataFrame) -> None:
    assert len(got) == len(df)
    pd.testing.assert_frame_equal(
        got[list(df.columns)].reset_index(drop=True), df.reset_index(drop=True), check_dtype=False
    )
    for name, expected in want.items():
        for i, (g, w) in enumerate(zip(got[name].tolist(), expected, strict=True)):
            g = None if isinstance(g, float) and np.isnan(g) else g
            assert (w is None and g is None) or (
                w is not None and g is not None and np.isclose(float(g), float(w), rtol=1e-9, atol=1e-12)  # type: ignore[arg-type]
            ), f"{name} row {i}: {g!r} != {w!r}"


def test_local_and_spark_engines_equal_brute_force(data: tuple[Path, list[Event]]) -> None:
    root, events = data
    df = entity_frame(events, 600, seed=1)
    want = brute(events, df)
    uri = str(root / "data" / "raw_events")
    timings = offline.Timings()
    local = offline.get_historical_features(df, list(VIEWS), raw_uri=uri, full_feature_names=True, timings=timings)
    assert_equal_brute(local, want, df)
    assert timings.rows_read <= 3300

    from fstore.offline.spark import spark_session

    spark = spark_session("fstore-test-offline")
    spark_out = offline.get_historical_features(
        df, list(VIEWS), raw_uri=uri, engine="spark", full_feature_names=True, spark=spark, buckets=3
    )
    assert_equal_brute(spark_out, want, df)
    pd.testing.assert_frame_equal(spark_out, local)  # identical to the default engine, dtypes included


def test_partition_pruning_reads_only_needed_days(data: tuple[Path, list[Event]]) -> None:
    root, events = data
    t = BASE + 2 * DAY
    df = pd.DataFrame({"user_id": ["u1"], "event_timestamp": [pd.Timestamp(t, unit="us", tz="UTC")]})
    timings = offline.Timings()
    got = offline.get_historical_features(
        df, ["user_activity:clicks_1h"], raw_uri=str(root / "data" / "raw_events"), timings=timings
    )
    day_rows = sum(1 for e in events if BASE + DAY <= e.event_time < BASE + 3 * DAY)  # 2 partitions (±1 µs)
    assert 0 < timings.rows_read < day_rows + 200
    assert got["clicks_1h"].tolist() == [bruteforce.value(VIEWS["user_activity"], "clicks_1h", events, "u1", t)]


def feast_repo(root: Path, engine: str) -> Path:
    repo = root / f"feature_repo_{engine}"
    shutil.copytree(ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    yaml = (repo / "feature_store.yaml").read_text()
    block = "  type: fstore.feast.offline_store.FstoreOfflineStore\n  engine: local\n"
    assert block in yaml, "feature_store.yaml no longer has the expected offline_store block"
    yaml = yaml.replace(
        block,
        f"  type: fstore.feast.offline_store.FstoreOfflineStore\n  data_dir: {root / 'data'}\n  engine: {engine}\n",
    )
    (repo / "feature_store.yaml").write_text(yaml)
    from feast import FeatureStore

    from fstore.feast.defs import feast_objects

    store = FeatureStore(repo_path=str(repo))
    store.apply(list(feast_objects(str(root / "data")).values()))
    return repo


def test_feast_get_historical_features(data: tuple[Path, list[Event]]) -> None:
    from feast import FeatureStore

    root, events = data
    repo = feast_repo(root, "local")
    df = entity_frame(events, 300, seed=2)
    want = brute(events, df)
    store = FeatureStore(repo_path=str(repo))
    refs = [f"{v.name}:{f}" for v in VIEWS.values() for f in v.feature_names]
    job = store.get_historical_features(entity_df=df, features=refs, full_feature_names=True)
    assert_equal_brute(job.to_df(), want, df)
    table = job.to_arrow()
    assert isinstance(table, pa.Table) and table.num_rows == len(df)
    short = store.get_historical_features(
        entity_df=df[["user_id", "event_timestamp"]], features=["user_activity:clicks_1h", "user_activity:revenue_7d"]
    ).to_df()
    assert list(short.columns) == ["user_id", "event_timestamp", "clicks_1h", "revenue_7d"]
    assert short["clicks_1h"].tolist() == want["user_activity__clicks_1h"]


def test_notebook_executes(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(ROOT / "examples" / "training_dataset.ipynb", as_version=4)
    env_dir = tmp_path / "work"
    os.environ["FSTORE_EXAMPLE_DIR"] = str(env_dir)
    try:
        nbclient.NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "examples")}}
        ).execute()
    finally:
        os.environ.pop("FSTORE_EXAMPLE_DIR", None)
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "training rows:" in outputs
    assert sys.executable  # the kernel is this interpreter's ipykernel (installed in the same venv)


def test_local_engine_resolves_ties_on_ingested_at_by_payload_hash(tmp_path: Path) -> None:
    """Copies stored at the same instant (two writers) differ in payload and hash: the smaller hash wins,
    and the engine's winner mask points at that copy among the rows read."""
    t = BASE + 3 * DAY
    buy = Event("e1", "purchase", "u1", "p1", t, 10.0, 1, None)
    other = Event("e2", "purchase", "u1", "p1", t + 1, 1.0, 1, None)
    uri = str(tmp_path / "raw_events")
    copies = [buy._replace(quantity=5), buy, other, buy._replace(price=99.0)]
    # e1: three copies tied at t + 7 (hashes b, a, c: the second copy wins), one more ingested later
    raw_log.append_raw(uri, raw_rows.events_table(copies[:2], ["b", "a"], [t + 7, t + 7]))
    raw_log.append_raw(uri, raw_rows.events_table(copies[2:], ["z", "0"], [t + 7, t + 9]))
    raw_log.append_raw(uri, raw_rows.events_table([buy._replace(quantity=3)], ["c"], [t + 7]))
    df = pd.DataFrame({"user_id": ["u1"], "event_timestamp": pd.to_datetime([t + DAY], unit="us", utc=True)})
    got = offline.get_historical_features(df, ["user_activity:revenue_7d", "user_activity:purchases_7d"], raw_uri=uri)
    assert got["purchases_7d"].tolist() == [2]
    assert got["revenue_7d"].tolist() == [11.0]  # 10 × 1 (hash "a") + 1 × 1
