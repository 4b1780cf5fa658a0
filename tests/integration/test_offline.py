"""Point-in-time training data of the example plan from real Delta ``raw_events``: local engine, Spark
engine and Feast (the example repository's objects, tests/support/repos/ecommerce).

``raw_events`` is written through :class:`fstore.ingest.Ingestor` and, for the at-least-once raw sink's
duplicates (same event_id, different payloads, earlier/later/equal ``ingested_at``), as stored copies
(tests/support/plan_raw_events.py). Every engine must equal the brute force of docs/design.md §3 over the
brute-force de-duplication of everything stored. The second repository has its own test
(test_offline_plans.py).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from fstore.core.timeutil import DAY, iso
from fstore.delta import raw_log
from fstore.ingest import Ingestor, IngestReport
from fstore.offline import local as offline
from tests.support import plan_bruteforce
from tests.support.pit import BASE, Row, expected, query_times, random_events
from tests.support.plan_raw_events import Copy, append, feast_repo, first_ingested
from tests.support.repos import ROOT as REPOS
from tests.support.repos import compiled

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NOW = BASE + 40 * DAY
SPAN = 10 * DAY
PLAN = compiled("ecommerce")
VIEWS = [v.name for v in PLAN.views]


def message(e: Row, **changes: object) -> bytes:
    obj: dict[str, object] = {**e, "event_time": iso(e["event_time"])}
    obj.update(changes)
    return json.dumps({k: v for k, v in obj.items() if v is not None}).encode()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[Row]]]:
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
    extra: list[Copy] = []
    for i, e in enumerate(events[100:400]):
        price = None if e["price"] is None else e["price"] + 1.5
        changed = {**e, "quantity": e["quantity"] + 1 + i % 3, "price": price}
        extra.append(([NOW - 5, NOW, NOW + 50][i % 3], f"{i:032x}" if i % 3 == 1 else f"f{i:031x}", changed))
    append(raw_uri, PLAN.schema, extra)
    stored = raw_log.read_table(raw_uri)
    assert stored.num_rows == 3300
    copies: list[Copy] = []
    for r in stored.to_pylist():
        ev = {f: r[f] for f in PLAN.schema.names}
        ev["event_time"] = int(pd.Timestamp(r["event_time"]).value // 1000)
        copies.append((int(pd.Timestamp(r["ingested_at"]).value // 1000), r["payload_hash"], ev))
    winners = first_ingested(copies, "event_id")
    key = {e["event_id"]: e for e in events}
    assert sum(w != key[w["event_id"]] for w in winners) > 50  # copies won
    yield root, winners


def entity_frame(events: list[Row], n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    times = query_times(rng, PLAN, events, n, SPAN)
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


def brute(events: list[Row], df: pd.DataFrame) -> dict[str, list[object]]:
    out: dict[str, list[object]] = {}
    times = [int(t.value // 1000) for t in df["event_timestamp"]]
    for view in PLAN.views:
        rows = expected(PLAN, view.name, events, list(df[view.entity.join_key]), times)
        for name in view.feature_names:
            out[f"{view.name}__{name}"] = [r[name] for r in rows]
    return out


def assert_equal_brute(got: pd.DataFrame, want: dict[str, list[object]], df: pd.DataFrame) -> None:
    assert len(got) == len(df)
    pd.testing.assert_frame_equal(
        got[list(df.columns)].reset_index(drop=True), df.reset_index(drop=True), check_dtype=False
    )
    for name, column in want.items():
        for i, (g, w) in enumerate(zip(got[name].tolist(), column, strict=True)):
            g = None if isinstance(g, float) and np.isnan(g) else g
            assert (w is None and g is None) or (
                w is not None and g is not None and np.isclose(float(g), float(w), rtol=1e-9, atol=1e-12)  # type: ignore[arg-type]
            ), f"{name} row {i}: {g!r} != {w!r}"


def test_local_and_spark_engines_equal_brute_force(data: tuple[Path, list[Row]]) -> None:
    root, events = data
    df = entity_frame(events, 600, seed=1)
    want = brute(events, df)
    uri = str(root / "data" / "raw_events")
    timings = offline.Timings()
    local = offline.get_historical_features(df, VIEWS, plan=PLAN, raw_uri=uri, full_feature_names=True, timings=timings)
    assert_equal_brute(local, want, df)
    assert timings.rows_read <= 3300

    from fstore.offline.spark import spark_session

    spark = spark_session("fstore-test-offline")
    spark_out = offline.get_historical_features(
        df, VIEWS, plan=PLAN, raw_uri=uri, engine="spark", full_feature_names=True, spark=spark, buckets=3
    )
    assert_equal_brute(spark_out, want, df)
    pd.testing.assert_frame_equal(spark_out, local)  # identical to the default engine, dtypes included


def test_partition_pruning_reads_only_needed_days(data: tuple[Path, list[Row]]) -> None:
    root, events = data
    t = BASE + 2 * DAY
    df = pd.DataFrame({"user_id": ["u1"], "event_timestamp": [pd.Timestamp(t, unit="us", tz="UTC")]})
    timings = offline.Timings()
    got = offline.get_historical_features(
        df, ["user_activity:clicks_1h"], plan=PLAN, raw_uri=str(root / "data" / "raw_events"), timings=timings
    )
    day_rows = sum(1 for e in events if BASE + DAY <= e["event_time"] < BASE + 3 * DAY)  # 2 partitions (±1 µs)
    assert 0 < timings.rows_read < day_rows + 200
    assert got["clicks_1h"].tolist() == [plan_bruteforce.value(PLAN, "user_activity", "clicks_1h", events, "u1", t)]


def test_rows_at_the_ends_of_the_calendar_get_the_values_of_no_events(data: tuple[Path, list[Row]]) -> None:
    """A row in the first days of year 1 (its 7-day window starts before any date) or on 9999-12-31: 0 and
    null like any row without events, next to rows that have some — the read range's days were computed
    from a time before year 1, an OverflowError."""
    root, events = data
    df = entity_frame(events, 12, seed=3)
    times = [int(t.value // 1000) for t in df["event_timestamp"]]
    want = expected(PLAN, "user_activity", events, list(df["user_id"]), times)
    far = [pd.Timestamp("0001-01-02", tz="UTC"), pd.Timestamp("9999-12-31", tz="UTC")]
    df = df.astype({"event_timestamp": "datetime64[us, UTC]"})
    ends = df.iloc[:2].assign(event_timestamp=pd.Series(far, index=df.index[:2]).astype("datetime64[us, UTC]"))
    df = pd.concat([df, ends], ignore_index=True)
    refs = ["user_activity:clicks_1h", "user_activity:avg_order_value_7d"]
    uri = str(root / "data" / "raw_events")
    got = offline.get_historical_features(df, refs, plan=PLAN, raw_uri=uri)
    assert got["clicks_1h"].tolist() == [w["clicks_1h"] for w in want] + [0, 0]
    assert got["avg_order_value_7d"][12:].isna().all() and got["event_timestamp"][12:].tolist() == far

    from fstore.offline.spark import spark_session  # its days went to Spark as "1-01-01": not a date

    spark = spark_session("fstore-test-offline")
    on_spark = offline.get_historical_features(df, refs, plan=PLAN, raw_uri=uri, engine="spark", spark=spark)
    pd.testing.assert_frame_equal(on_spark, got)


def test_a_missing_raw_events_table_gives_no_events_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    df = pd.DataFrame({"user_id": ["u1"], "event_timestamp": [pd.Timestamp(NOW, unit="us", tz="UTC")]})
    uri = str(tmp_path / "nowhere" / "raw_events")
    with caplog.at_level("WARNING", logger=offline.__name__):
        got = offline.get_historical_features(df, ["user_activity:clicks_1h"], plan=PLAN, raw_uri=uri)
    assert got["clicks_1h"].tolist() == [0]  # design §3: an empty window counts 0
    assert [r for r in caplog.records if uri in r.getMessage() and "FSTORE_DATA_DIR" in r.getMessage()]
    caplog.clear()
    with caplog.at_level("WARNING", logger=offline.__name__):  # once per path: not again on every request
        offline.get_historical_features(df, ["user_activity:clicks_1h"], plan=PLAN, raw_uri=uri)
    assert not [r for r in caplog.records if uri in r.getMessage()]


def test_feast_get_historical_features(data: tuple[Path, list[Row]], tmp_path: Path) -> None:
    from feast import FeatureStore

    root, events = data
    repo = feast_repo(REPOS / "ecommerce", tmp_path / "ecommerce_repo", root / "data")
    df = entity_frame(events, 300, seed=2)
    want = brute(events, df)
    store = FeatureStore(repo_path=str(repo))
    refs = [f"{v.name}:{f}" for v in PLAN.views for f in v.feature_names]
    job = store.get_historical_features(entity_df=df, features=refs, full_feature_names=True)
    assert_equal_brute(job.to_df(), want, df)
    table = job.to_arrow()
    assert isinstance(table, pa.Table) and table.num_rows == len(df)
    short = store.get_historical_features(
        entity_df=df[["user_id", "event_timestamp"]], features=["user_activity:clicks_1h", "user_activity:revenue_7d"]
    ).to_df()
    assert list(short.columns) == ["user_id", "event_timestamp", "clicks_1h", "revenue_7d"]
    assert short["clicks_1h"].tolist() == want["user_activity__clicks_1h"]
    # ISO-8601 text, as Feast's own offline stores take it (offsets converted, naive = UTC): the same values
    text = df[["user_id", "event_timestamp"]].copy()
    text["event_timestamp"] = [
        t.tz_convert("Asia/Kolkata").isoformat() if i % 2 else t.tz_localize(None).isoformat()
        for i, t in enumerate(df["event_timestamp"])
    ]
    read = store.get_historical_features(entity_df=text, features=["user_activity:clicks_1h"]).to_df()
    assert read["clicks_1h"].tolist() == want["user_activity__clicks_1h"]
    assert read["event_timestamp"].tolist() == df["event_timestamp"].tolist()
    # a zone name pandas cannot read was dropped and the wall time read as UTC (8 h off, silently): refused
    named = text.head(3).assign(
        event_timestamp=[f"{t.tz_localize(None).isoformat()} PST" for t in df["event_timestamp"][:3]]
    )
    with pytest.raises(ValueError, match="PST"):
        store.get_historical_features(entity_df=named, features=["user_activity:clicks_1h"]).to_df()


def test_feast_join_key_map_reads_the_mapped_column(data: tuple[Path, list[Row]], tmp_path: Path) -> None:
    """A FeatureService view projected with ``with_join_key_map({"user_id": "buyer_id"})`` reads its keys from
    ``buyer_id`` (as Feast's own stores and the fstore online store do); it got the features of the row's
    ``user_id`` (the map was ignored, silently). Every input column stays as given, ``user_id`` too."""
    from feast import FeatureService, FeatureStore

    root, events = data
    repo = feast_repo(REPOS / "ecommerce", tmp_path / "ecommerce_repo", root / "data")
    df = entity_frame(events, 60, seed=5)
    store = FeatureStore(repo_path=str(repo))
    view = store.get_stream_feature_view("user_activity")[["clicks_24h", "purchases_7d"]]
    store.apply([FeatureService(name="buyers", features=[view.with_join_key_map({"user_id": "buyer_id"})])])
    service = store.get_feature_service("buyers")
    names = ("user_activity__clicks_24h", "user_activity__purchases_7d")
    want = brute(events, df)
    buyers = df.rename(columns={"user_id": "buyer_id"}).assign(user_id="someone_else")
    got = store.get_historical_features(entity_df=buyers, features=service, full_feature_names=True).to_df()
    assert list(got.columns) == [*buyers.columns, *names]
    assert_equal_brute(got, {k: want[k] for k in names}, buyers)
    only = buyers.drop(columns=["user_id"])
    got = store.get_historical_features(entity_df=only, features=service).to_df()
    assert list(got.columns) == [*only.columns, "clicks_24h", "purchases_7d"]
    assert got["clicks_24h"].tolist() == want[names[0]] and got["purchases_7d"].tolist() == want[names[1]]
    with pytest.raises(ValueError, match="buyer_id"):
        store.get_historical_features(entity_df=df, features=service).to_df()


@pytest.mark.parametrize("engine", ["local", "spark"])
def test_feast_refs_from_the_registry_and_feature_services(
    data: tuple[Path, list[Row]], tmp_path: Path, engine: str
) -> None:
    """Refs built from the registry's ``fv.features`` name each view's join key (Feast lists it among a
    StreamFeatureView's features): its column is the row's key, the others equal brute force (the store
    refused the key with a PointInTimeError); so do FeatureServices of a whole view and
    ``product_engagement[["ctr_1h"]]``, declared with the repository's objects or built from the registry's."""
    from feast import FeatureService, FeatureStore

    from fstore.feast.compile import load_repo

    root, events = data
    repo = feast_repo(REPOS / "ecommerce", tmp_path / "ecommerce_repo", root / "data", engine=engine)
    df = entity_frame(events, 120, seed=3)
    want = brute(events, df)
    store = FeatureStore(repo_path=str(repo))
    registered = {v.name: store.get_stream_feature_view(v.name) for v in PLAN.views}
    refs = [f"{name}:{f.name}" for name, fv in registered.items() for f in fv.features]
    assert {"user_activity:user_id", "product_engagement:product_id"} <= set(refs)

    full = store.get_historical_features(entity_df=df, features=refs, full_feature_names=True).to_df()
    assert list(full.columns) == [*df.columns, *(r.replace(":", "__") for r in refs)]
    assert_equal_brute(full, want, df)
    assert full["user_activity__user_id"].tolist() == df["user_id"].tolist()
    assert full["product_engagement__product_id"].tolist() == df["product_id"].tolist()
    for name in registered:  # plain names: the key is the entity column, not a second column of that name
        key = PLAN.view(name).entity.join_key
        names = [r.split(":")[1] for r in refs if r.startswith(f"{name}:")]
        plain = store.get_historical_features(entity_df=df, features=[f"{name}:{n}" for n in names]).to_df()
        assert list(plain.columns) == [*df.columns, *(n for n in names if n != key)]
        for n in names:
            pd.testing.assert_series_equal(plain[n], full[f"{name}__{n}"], check_names=False)
    alone = store.get_historical_features(entity_df=df, features=["user_activity:user_id"], full_feature_names=True)
    assert alone.to_df()["user_activity__user_id"].tolist() == df["user_id"].tolist()

    declared = {v.name: v for v in load_repo(repo).stream_feature_views}
    services = [
        FeatureService(name=svc, features=[views["user_activity"], views["product_engagement"][["ctr_1h"]]])
        for svc, views in (("declared", declared), ("registered", registered))
    ]
    store.apply([*services])
    subset = {k: v for k, v in want.items() if k.startswith("user_activity__") or k == "product_engagement__ctr_1h"}
    for svc in services:
        job = store.get_historical_features(
            entity_df=df, features=store.get_feature_service(svc.name), full_feature_names=True
        )
        got = job.to_df()
        extra = ["user_activity__user_id"] if svc.name == "registered" else []  # its projection lists the key
        assert set(got.columns) == {*df.columns, *subset, *extra} and len(got.columns) == len(df.columns) + len(
            subset
        ) + len(extra), svc.name
        assert_equal_brute(got, subset, df)
        assert all(got[c].tolist() == df["user_id"].tolist() for c in extra)


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
    buy: Row = {"event_id": "e1", "event_type": "purchase", "user_id": "u1", "product_id": "p1", "event_time": t,
                "price": 10.0, "quantity": 1}  # fmt: skip
    other = {**buy, "event_id": "e2", "event_time": t + 1, "price": 1.0}
    uri = str(tmp_path / "raw_events")
    # e1: three copies tied at t + 7 (hashes b, a, c: the second copy wins), one more ingested later
    append(uri, PLAN.schema, [(t + 7, "b", {**buy, "quantity": 5}), (t + 7, "a", buy)])
    append(uri, PLAN.schema, [(t + 7, "z", other), (t + 9, "0", {**buy, "price": 99.0})])
    append(uri, PLAN.schema, [(t + 7, "c", {**buy, "quantity": 3})])
    df = pd.DataFrame({"user_id": ["u1"], "event_timestamp": pd.to_datetime([t + DAY], unit="us", utc=True)})
    refs = ["user_activity:revenue_7d", "user_activity:purchases_7d"]
    got = offline.get_historical_features(df, refs, plan=PLAN, raw_uri=uri)
    assert got["purchases_7d"].tolist() == [2]
    assert got["revenue_7d"].tolist() == [11.0]  # 10 × 1 (hash "a") + 1 × 1
