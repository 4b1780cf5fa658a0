"""``fstore apply`` / ``fstore plan`` (issue 13 Build 3 and 5): a repository with a mistake is rejected
as a whole and changes nothing — neither Feast's registry nor fstore's record; a valid change is
registered with the features it leaves pending; removing a view or a series frees its Redis state, once
every live stream worker runs the new plan (a worker that does not follow in time: exit code 3, the keys
left for the next apply; a dead one blocks nothing)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from fstore import applied, plan_source
from fstore.cli import main
from fstore.core.plan_json import fingerprint
from fstore.core.timeutil import HOUR, MINUTE, SECOND
from fstore.devsvc.broker import Broker, list_topics
from fstore.devsvc.services import RedisServer
from fstore.redis.hold import ACKS_KEY, HOLD_KEY, HOLD_TTL_S, hold, release
from fstore.redis.layout import (
    POINTER_KEY,
    BatchPointer,
    batch_key,
    distinct_field,
    future_field,
    marker_key,
    speed_key,
)
from fstore.redis.workers import WORKERS_KEY, registration
from jobs.stream.control import Control
from jobs.stream.settings import StreamSettings
from tests.support.paths import FSTORE
from tests.support.redis_keys import keys_without_ttl
from tests.support.repos import ROOT
from tests.support.repos.mistakes import INVALID, RIDES, edit
from tests.support.rides_traffic import rides_repo as fstore_rides_repo

pytestmark = pytest.mark.integration


def rides_repo(tmp: Path) -> Path:
    repo = tmp / "rides"
    shutil.copytree(ROOT / "rides", repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    return repo


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.output


def snapshot(repo: Path) -> dict[str, bytes]:
    data = repo / "data"
    return {p.name: p.read_bytes() for p in sorted(data.iterdir()) if p.is_file()} if data.exists() else {}


def test_a_repository_with_a_mistake_changes_nothing(tmp_path: Path) -> None:
    repo = rides_repo(tmp_path)
    code, out = run("apply", "--repo", str(repo))  # the real `feast apply` once: registry.db + the record
    assert code == 0, out
    assert applied.load(repo) is not None and (repo / "data" / "registry.db").exists()
    before = snapshot(repo)
    assert len(INVALID) >= 10
    for case, (text, message) in INVALID.items():
        (repo / "features.py").write_text(text)
        code, out = run("apply", "--repo", str(repo))
        assert code == 2, (case, out)
        assert message in out and "nothing was applied" in out, (case, out)
        assert snapshot(repo) == before, case  # neither the registry nor the record moved
    # A valid repository that retypes a field of the applied plan (probe-evo2: INT → BIGINT was "no change", and
    # raw_events kept its int32 column): refused by plan, apply and a plain `feast apply`, nothing changed.
    assert RIDES.count("stars INT,") == 1
    (repo / "features.py").write_text(RIDES.replace("stars INT,", "stars BIGINT,"))
    for command in (("plan",), ("apply",)):
        code, out = run(*command, "--repo", str(repo))
        assert code == 2 and "event field 'stars': its type cannot change from int to long" in out, (command, out)
        assert snapshot(repo) == before, command
    (repo / "features.py").write_text(RIDES)
    code, out = run("plan", "--repo", str(repo))
    assert code == 0 and "no change" in out, out


STD_3H = (
    'Aggregation(column="fare", function="std", time_window=H3, slide_interval=timedelta(minutes=15), '
    'name="fare_std_3h"),'
)
RIDERS = (
    '        Aggregation(\n            column="rider_served",\n            function="count_distinct",\n'
    "            time_window=D30,\n            slide_interval=timedelta(hours=6),\n"
    '            name="riders_30d",\n        ),\n'
)
RIDERS_FIELD = '        Field(name="riders_30d", dtype=Int64, description="Distinct riders served (exact)"),\n'


@pytest.fixture
def baseline(tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis) -> tuple[Path, dict[str, str]]:
    """A copy of the rides repository with its baseline applied, and the environment of the commands (an
    empty Redis: no stream worker registered by an earlier test, which would make the baseline pending)."""
    env = {"FSTORE_REDIS_URL": redis_server.url, "FSTORE_REDIS_CLUSTER": "false"}
    repo = rides_repo(tmp_path)
    assert run("apply", "--repo", str(repo), "--skip-feast", env=env)[0] == 0
    return repo, env


def test_adding_a_feature_leaves_it_pending_and_removing_frees_its_state(
    baseline: tuple[Path, dict[str, str]], redis_client: redis.Redis
) -> None:
    repo, env = baseline
    assert applied.load(repo).pending == ()  # type: ignore[union-attr]  # the baseline

    # A new function on an existing measure needs a state its tiles lack (m2 on the 3 h fare series).
    added = edit(
        ('name="fare_3h"\n        ),', f'name="fare_3h"\n        ),\n        {STD_3H}'),
        (
            'Field(name="trips_2d", dtype=Int64),',
            'Field(name="trips_2d", dtype=Int64), Field(name="fare_std_3h", dtype=Float64),',
        ),
    )
    (repo / "features.py").write_text(added)
    code, out = run("plan", "--repo", str(repo), env=env)
    assert code == 0 and "+ driver_performance:fare_std_3h" in out and "refused until built" in out, out
    assert applied.load(repo).pending == ()  # type: ignore[union-attr]  # plan changes nothing
    code, out = run("apply", "--repo", str(repo), "--skip-feast", env=env)
    assert code == 0, out
    record = applied.load(repo)
    assert record is not None
    assert "driver_performance:fare_std_3h" in record.pending and record.building == ("driver_performance",)
    assert "driver_performance:fare_3h" not in record.pending  # its tiles still serve it while rebuilt
    assert "zone_demand:requests_3h" not in record.pending  # untouched features stay served
    assert "fstore backfill --view driver_performance" in out

    # Redis state of both views, then remove zone_demand and driver_performance's count_distinct series.
    t0 = 1_790_000_000 * SECOND
    d_key, z_key = speed_key("driver_performance", "d1", t0), speed_key("zone_demand", "z1", t0)
    six_h, fifteen = 6 * HOUR // SECOND, 15 * MINUTE // SECOND
    start = t0 // SECOND // six_h * six_h
    redis_client.hset(
        d_key,
        mapping={
            f"{six_h}:{start}:rider_served:c": 2,
            distinct_field(6 * HOUR, start * SECOND, "rider_served", "r:1"): 1,
            distinct_field(6 * HOUR, start * SECOND, "rider_served", "r2"): 1,
            f"{fifteen}:{start}:fare:c": 1,
            f"{fifteen}:{start}:fare:s": "12.5",
            future_field(t0 + HOUR, "e9"): '{"rider_served":"r3","fare":1.0}',
        },
    )
    redis_client.hset(z_key, mapping={f"{fifteen}:{start}:request:c": 3})
    redis_client.hset(marker_key("zone_demand", "z1", 7), mapping={"e1": 1})
    redis_client.set("fs:batch:current", "{}")
    text = added.split("zone_demand = StreamFeatureView(")[0]  # the whole view goes
    assert RIDERS in text and RIDERS_FIELD in text
    text = text.replace(RIDERS, "").replace(RIDERS_FIELD, "")
    tag = """        "fstore.measure.rider_served": "rider if kind == 'completed'",\n"""
    assert tag in text
    (repo / "features.py").write_text(text.replace(tag, ""))
    code, out = run("apply", "--repo", str(repo), "--skip-feast", env=env)
    assert code == 0, out
    assert "- zone_demand:requests_3h" in out and "- driver_performance:riders_30d" in out, out
    assert not redis_client.exists(z_key) and not redis_client.exists(marker_key("zone_demand", "z1", 7))
    left = {k.decode() if isinstance(k, bytes) else k for k in redis_client.hkeys(d_key)}
    assert left == {f"{fifteen}:{start}:fare:c", f"{fifteen}:{start}:fare:s", future_field(t0 + HOUR, "e9")}
    assert redis_client.get("fs:batch:current") == b"{}"  # nothing outside the views is touched
    record = applied.load(repo)
    assert record is not None and {v.name for v in record.plan.views} == {"driver_performance"}
    assert "driver_performance:fare_std_3h" in record.pending  # still waiting for its backfill


def test_a_feature_added_while_another_waits_for_its_backfill_waits_too(baseline: tuple[Path, dict[str, str]]) -> None:
    """Design §3 (never an undercounted value): readiness is judged against the tiles that are built, not the
    plan last applied — a var added after a std whose m2 state is still unbuilt reads the same missing state."""
    repo, env = baseline
    std = 'Aggregation(column="stars", function="std", time_window=D30, name="stars_std_30d"),'
    var = 'Aggregation(column="stars", function="var", time_window=D30, name="stars_var_30d"),'
    mean = 'Aggregation(column="stars", function="mean", time_window=D30, name="stars_mean_30d"),'
    field = 'Field(name="stars_mean_30d", dtype=Float64),'
    with_std = edit((mean, f"{mean} {std}"), (field, f'{field} Field(name="stars_std_30d", dtype=Float64),'))
    (repo / "features.py").write_text(with_std)
    assert run("apply", "--repo", str(repo), "--skip-feast", env=env)[0] == 0
    assert applied.load(repo).pending == ("driver_performance:stars_std_30d",)  # type: ignore[union-attr]
    with_var = with_std.replace(std, f"{std} {var}").replace(
        field, f'{field} Field(name="stars_var_30d", dtype=Float64),'
    )
    (repo / "features.py").write_text(with_var)
    code, out = run("apply", "--repo", str(repo), "--skip-feast", env=env)
    assert code == 0 and "refused until built: driver_performance:stars_var_30d" in out, out
    record = applied.load(repo)
    assert record is not None
    assert set(record.pending) == {"driver_performance:stars_std_30d", "driver_performance:stars_var_30d"}


def test_removing_the_only_std_or_count_distinct_of_a_kept_series_frees_that_state(
    baseline: tuple[Path, dict[str, str]], redis_client: redis.Redis
) -> None:
    """Design §3: a removed feature's state is freed — also when its tile series stays for other features:
    the m2 fields of the last std/var and the distinct members of the last count_distinct go (speed and
    batch hashes), the statistics the kept features read stay."""
    repo, env = baseline
    hour, six_h = HOUR // SECOND, 6 * HOUR // SECOND
    t = 1_790_000_000
    h_start, six_start = t // hour * hour, t // six_h * six_h
    s_key = speed_key("driver_performance", "d1", t * SECOND)
    b_key = batch_key("driver_performance", "d1", "v1")
    kept = {
        f"{hour}:{h_start}:fare:c": "2",
        f"{hour}:{h_start}:fare:s": "3.5",
        f"{six_h}:{six_start}:rider_served:c": "1",
    }
    gone = {
        f"{hour}:{h_start}:fare:v": "0.125",
        distinct_field(6 * HOUR, six_start * SECOND, "rider_served", "r:1"): "1",
    }
    for key, fields in ((s_key, kept | gone), (b_key, {f"{hour}:{h_start}:fare": "2 3.5 1.5 2.0 0.125"} | gone)):
        for name, value in fields.items():
            redis_client.hset(key, name, value)
    no_std = edit(
        ('        Aggregation(column="fare", function="std", time_window=D2, name="fare_std_2d"),\n', ""),
        ('        Aggregation(column="fare", function="var", time_window=D2, name="fare_var_2d"),\n', ""),
        ('        Field(name="fare_std_2d", dtype=Float64, description="Sample standard deviation (n - 1)"),\n', ""),
        ('        Field(name="fare_var_2d", dtype=Float64, description="Sample variance (n - 1)"),\n', ""),
        ('function="count_distinct",\n            time_window=D30', 'function="count",\n            time_window=D30'),
    )
    (repo / "features.py").write_text(no_std)
    code, out = run("plan", "--repo", str(repo), env=env)
    assert code == 0 and "free driver_performance/fare every 3600s: m2" in out, out
    assert "free driver_performance/rider_served every 21600s: distinct" in out, out
    code, out = run("apply", "--repo", str(repo), "--skip-feast", env=env)
    assert code == 0, out
    assert not applied.load(repo).unfreed  # type: ignore[union-attr]
    assert _fields(redis_client, s_key) == set(kept), out
    assert _fields(redis_client, b_key) == {f"{hour}:{h_start}:fare"}, out
    record = applied.load(repo)
    assert record is not None  # what a NOT FREED apply leaves survives the record's round trip
    left_over = replace(
        record, unfreed_series=(("driver_performance", HOUR, "fare", "m2"), ("x", HOUR, "trip", ""))
    )  # sorted
    assert applied.AppliedPlan.from_dict(json.loads(json.dumps(left_over.to_dict()))) == left_over


def _fields(client: redis.Redis, key: str) -> set[str]:
    return {k.decode() if isinstance(k, bytes) else k for k in client.hkeys(key)}


# A running stream worker follows the applied record about a second late and, until then, writes the
# removed state: `fstore apply` frees it only once every live worker runs the new plan. The worker below is
# the real jobs.stream.control.Control (its registration) driven by a thread that writes the keys of the
# plan it runs and switches plans `lag` seconds after the record changed, like the stream worker.
T0 = 1_790_000_000 * SECOND
D_KEY, Z_KEY = speed_key("driver_performance", "d1", T0), speed_key("zone_demand", "z1", T0)
SIX_H_START = T0 // (6 * HOUR) * (6 * HOUR)
RIDER = distinct_field(6 * HOUR, SIX_H_START, "rider_served", "r1")  # a field of the riders_30d series
FARE = f"{15 * MINUTE // SECOND}:{SIX_H_START // SECOND}:fare:c"  # a field every plan here keeps
RIDER_TAG = """        "fstore.measure.rider_served": "rider if kind == 'completed'",\n"""


class Worker(threading.Thread):
    """Registers every 50 ms with the plan it runs and writes that plan's keys; follows a changed record
    ``lag`` seconds after it saw it, while :attr:`follows` is set."""

    def __init__(self, url: str, repo: Path, lag: float) -> None:
        super().__init__(daemon=True)
        self.repo, self.lag = repo, lag
        record = applied.load(repo)
        assert record is not None
        self.control = Control(StreamSettings(redis_url=url), record.fingerprint, name="w1")
        self.writes = {record.fingerprint: [(D_KEY, RIDER), (D_KEY, FARE), (Z_KEY, FARE)]}
        self.client = redis.Redis.from_url(url)
        self.follows = threading.Event()
        self.follows.set()
        self.stop = threading.Event()

    def run(self) -> None:
        seen: float | None = None
        while not self.stop.wait(0.05):
            record = applied.load(self.repo)
            assert record is not None
            if record.fingerprint == self.control.fingerprint:
                seen = None
            elif self.follows.is_set():
                seen = seen or time.monotonic()
                if time.monotonic() - seen >= self.lag:
                    self.control.fingerprint = record.fingerprint
            self.control.register()
            for key, field in self.writes.get(self.control.fingerprint, []):
                self.client.hset(key, field, 1)


def test_removed_state_is_freed_once_every_live_worker_runs_the_new_plan(
    baseline: tuple[Path, dict[str, str]], redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    repo, env = baseline
    redis_client.hset(WORKERS_KEY, "dead", registration("0123456789abcdef", time.time() - 60))  # blocks nothing
    worker = Worker(redis_server.url, repo, lag=0.8)
    worker.start()
    try:
        deadline = time.monotonic() + 5
        while not (redis_client.exists(Z_KEY) and redis_client.hexists(D_KEY, RIDER)):
            assert time.monotonic() < deadline, "the worker never wrote"
            time.sleep(0.02)

        # 1. Remove the riders_30d series: apply waits for the worker to follow, then frees its fields.
        assert RIDERS in RIDES and RIDERS_FIELD in RIDES and RIDER_TAG in RIDES
        no_riders = RIDES.replace(RIDERS, "").replace(RIDERS_FIELD, "").replace(RIDER_TAG, "")
        (repo / "features.py").write_text(no_riders)
        plan_a = fingerprint(plan_source.compile_dir(repo))
        worker.writes[plan_a] = [(D_KEY, FARE), (Z_KEY, FARE)]
        code, out = run("apply", "--repo", str(repo), "--skip-feast", "--wait-timeout", "5", env=env)
        assert code == 0, out
        time.sleep(0.3)  # the worker writes every 50 ms: a freed field written again would be back
        assert not redis_client.hexists(D_KEY, RIDER) and redis_client.hexists(D_KEY, FARE)
        assert "waiting (up to 5 s) for stream worker(s) to run plan" in out and "w1 (plan" in out, out
        assert "dead" not in out.split("freed")[0], out
        assert not applied.load(repo).unfreed  # type: ignore[union-attr]

        # 2. Remove zone_demand while the worker is stuck on plan A: nothing freed, exit code 3, said loudly.
        worker.follows.clear()
        (repo / "features.py").write_text(no_riders.split("zone_demand = StreamFeatureView(")[0])
        code, out = run("apply", "--repo", str(repo), "--skip-feast", "--wait-timeout", "1", env=env)
        assert code == 3, out
        assert "NOT FREED" in out and "zone_demand" in out and "run `fstore apply` again" in out, out
        record = applied.load(repo)
        assert record is not None and record.unfreed_views == ("zone_demand",)
        assert {v.name for v in record.plan.views} == {"driver_performance"}  # the plan itself is applied
        assert redis_client.exists(Z_KEY)
        code, out = run("plan", "--repo", str(repo), env=env)
        assert code == 0 and "left to free by the last apply" in out and "zone_demand" in out, out

        # 3. The worker follows again: the next apply frees what was left.
        worker.follows.set()
        code, out = run("apply", "--repo", str(repo), "--skip-feast", env=env)
        assert code == 0 and "no change" in out and "freed 1 key(s) of removed views ['zone_demand']" in out, out
        time.sleep(0.3)
        assert not redis_client.exists(Z_KEY) and redis_client.hexists(D_KEY, FARE)
        assert not applied.load(repo).unfreed  # type: ignore[union-attr]
    finally:
        worker.stop.set()
        worker.join(5)


def test_a_workers_registration_and_hold_acknowledgement_expire(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """docs/design.md §7: every key fstore writes has a TTL — the workers' registry, and the hold's
    acknowledgements that a backfill dying mid-hold leaves behind."""
    control = Control(StreamSettings(redis_url=redis_server.url), "0123456789abcdef", name="w1")
    control.register()
    asyncio.run(control.ack("token", 1_790_000_000 * SECOND))
    assert redis_client.hget(ACKS_KEY, "w1") == f"token {1_790_000_000 * SECOND}".encode()
    assert keys_without_ttl(redis_client) == []
    assert redis_client.ttl(WORKERS_KEY) > 0 and 0 < redis_client.ttl(ACKS_KEY) <= HOLD_TTL_S


def test_a_second_backfill_is_refused_and_leaves_the_first_ones_hold(
    baseline: tuple[Path, dict[str, str]], redis_client: redis.Redis, tmp_path: Path
) -> None:
    """docs/design.md §3 "Evolution": never an undercounted value. Two backfills at once (`fstore apply`
    names one per view) shared the hold: the first one's release resumed the workers while the second still
    rebuilt its view, and what they counted meanwhile was deleted with the old speed hashes (probe-evo3: 2
    workers, 4 partitions, 101 of 236 values undercounted until a backfill run alone). A second backfill is
    refused, and neither refreshes nor releases a hold it does not own."""
    repo, env = baseline
    env = {**env, "FSTORE_FEATURE_REPO": str(repo), "FSTORE_DATA_DIR": str(tmp_path / "data")}
    hold(redis_client, "first")  # a backfill rebuilding its view
    code, out = run("backfill", "--view", "driver_performance", "--skip-batch", "--no-progress", env=env)
    assert code == 1 and "another fstore backfill holds the stream workers" in out, out
    assert redis_client.get(HOLD_KEY) == b"first"
    release(redis_client, "second")
    assert redis_client.get(HOLD_KEY) == b"first"
    release(redis_client, "first")
    assert redis_client.get(HOLD_KEY) is None


def test_a_backfill_with_skip_batch_names_the_batch_view_it_keeps(
    baseline: tuple[Path, dict[str, str]], redis_client: redis.Redis, tmp_path: Path
) -> None:
    """`fstore backfill --skip-batch` keeps the batch view that serves: its summary said "no batch view
    published yet" while one served (probe-evo3), which reads as if online values lacked their batch part."""
    repo, env = baseline
    env = {**env, "FSTORE_FEATURE_REPO": str(repo), "FSTORE_DATA_DIR": str(tmp_path / "data")}
    redis_client.set(POINTER_KEY, BatchPointer("20261128-run1", 1_795_910_400 * SECOND).dumps())
    code, out = run("backfill", "--view", "driver_performance", "--skip-batch", "--no-progress", env=env)
    assert code == 0 and "batch view 20261128-run1 kept (--skip-batch)" in out, out
    assert "no batch view published yet" not in out


def feast_apply(repo: Path) -> tuple[int, str]:
    """Feast's own ``feast apply`` command (its click CLI, in this process: Feast is imported once) in the
    repository, as a user runs it; the repository's module is imported afresh, as by a new process."""
    from feast.cli.cli import cli

    sys.modules.pop("features", None)
    result = CliRunner().invoke(cli, ["--chdir", str(repo), "apply"])
    sys.modules.pop("features", None)
    out = result.output + (repr(result.exception) if result.exception else "")
    return result.exit_code, out


def test_a_plain_feast_apply_records_the_plan_as_fstore_apply_does(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/design.md §3: `feast apply` registers the definitions; after a feature is added and applied the
    API refuses it until `fstore backfill` has built it, and a removed feature's state is freed. So a plain
    `feast apply` (the fstore online store's hook) records the plan with its pending features, frees what
    it removed, and a repository with a mistake fails it with nothing changed."""
    from feast import FeatureStore

    from fstore.feast.online_store import FeatureNotBuiltError

    monkeypatch.setenv("FSTORE_REDIS_URL", "redis://127.0.0.1:1/0")  # not this one: the store's own, below
    monkeypatch.setenv("FSTORE_REDIS_CLUSTER", "false")
    repo = fstore_rides_repo(tmp_path, redis_server.url)  # feature_store.yaml: the fstore stores, this Redis
    code, out = feast_apply(repo)
    assert code == 0 and "records the baseline" in out, out
    base = applied.load(repo)
    assert base is not None and base.pending == () and base.fingerprint == fingerprint(plan_source.compile_dir(repo))

    added = edit(
        ('name="fare_3h"\n        ),', f'name="fare_3h"\n        ),\n        {STD_3H}'),
        (
            'Field(name="trips_2d", dtype=Int64),',
            'Field(name="trips_2d", dtype=Int64), Field(name="fare_std_3h", dtype=Float64),',
        ),
    )
    (repo / "features.py").write_text(added)
    code, out = feast_apply(repo)
    assert code == 0 and "fstore backfill --view driver_performance" in out, out
    record = applied.load(repo)
    assert record is not None and record.pending == ("driver_performance:fare_std_3h",)
    with pytest.raises(FeatureNotBuiltError, match="fstore backfill --view driver_performance"):
        FeatureStore(repo_path=str(repo)).get_online_features(
            features=["driver_performance:fare_std_3h"], entity_rows=[{"driver_id": "d1"}]
        )

    redis_client.hset(Z_KEY, "x", 1)
    (repo / "features.py").write_text(added.split("zone_demand = StreamFeatureView(")[0])  # the view goes
    code, out = feast_apply(repo)
    assert code == 0 and "freed 1 key(s) of removed views ['zone_demand']" in out, out
    assert not redis_client.exists(Z_KEY)
    record = applied.load(repo)
    assert record is not None and not record.unfreed and {v.name for v in record.plan.views} == {"driver_performance"}
    assert record.pending == ("driver_performance:fare_std_3h",)  # still waiting for its backfill

    before = snapshot(repo)
    text, message = INVALID["unsupported function"]
    (repo / "features.py").write_text(text)
    code, out = feast_apply(repo)
    assert code != 0 and message in out, out
    assert snapshot(repo) == before  # neither Feast's registry nor fstore's record moved


def test_feast_apply_of_a_repository_with_mistakes_names_them_without_a_traceback(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/design.md §3: a bad definition gets a clear error naming it and changes nothing — through the
    real `feast` command too, whose CLI shows only its own login errors: the mistakes used to come last in
    a traceback of Feast's and click's internals. Now: `Error: ...` naming each, exit code 1, no traceback."""
    monkeypatch.setenv("FSTORE_REDIS_CLUSTER", "false")
    repo = fstore_rides_repo(tmp_path, redis_server.url)
    original = (repo / "features.py").read_text()
    feast = str(Path(sys.executable).with_name("feast"))
    first = subprocess.run([feast, "apply"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    before = snapshot(repo)
    text, message = INVALID["unsupported function"]
    (repo / "features.py").write_text(text.replace("\"1 if kind == 'cancelled'\"", "\"1 if knd == 'cancelled'\""))
    proc = subprocess.run([feast, "apply"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "Error: fstore:" in proc.stderr and "2 mistake(s); nothing was applied" in proc.stderr, proc.stderr
    assert message in proc.stderr and "unknown field 'knd' (did you mean kind?)" in proc.stderr, proc.stderr
    assert snapshot(repo) == before  # neither Feast's registry nor fstore's record moved
    # `feast plan` listed the views it would create, exit code 0 (probe-feast): now the same refusal
    proc = subprocess.run([feast, "plan"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert message in proc.stderr and "Error: fstore:" in proc.stderr, proc.stderr[-3000:]
    assert snapshot(repo) == before
    # a valid repository that retypes a field of the applied plan (probe-evo2): refused the same way
    assert original.count("stars INT,") == 1
    (repo / "features.py").write_text(original.replace("stars INT,", "stars BIGINT,"))
    proc = subprocess.run([feast, "apply"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "event field 'stars': its type cannot change from int to long" in proc.stderr, proc.stderr
    assert snapshot(repo) == before


def test_a_first_apply_while_workers_run_another_plan_refuses_every_feature_until_built(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """A repository never applied runs from its source: edited before its first apply, what the running
    workers built is unknown, so the first apply serves nothing unbuilt (design §3: never an undercounted
    value); with no live worker, or one on the same plan, it records the baseline."""
    env = {"FSTORE_REDIS_URL": redis_server.url, "FSTORE_REDIS_CLUSTER": "false"}
    repo = rides_repo(tmp_path)
    plan = plan_source.compile_dir(repo)
    redis_client.hset(WORKERS_KEY, "same", registration(fingerprint(plan)))
    redis_client.hset(WORKERS_KEY, "gone", registration("0123456789abcdef", time.time() - 60))  # not live
    code, out = run("apply", "--repo", str(repo), "--skip-feast", env=env)
    assert code == 0 and "records the baseline" in out, out
    assert applied.load(repo).pending == ()  # type: ignore[union-attr]

    applied.record_path(repo).unlink()
    redis_client.hset(WORKERS_KEY, "w1", registration("0123456789abcdef"))  # live, on the source before the edit
    code, out = run("apply", "--repo", str(repo), "--skip-feast", env=env)
    assert code == 0 and "w1 (plan 0123456789ab)" in out and "every feature is refused" in out, out
    record = applied.load(repo)
    assert record is not None
    assert set(record.pending) == {f"{v.name}:{f}" for v in plan.views for f in v.feature_names}
    assert record.building == ("driver_performance", "zone_demand")


def test_the_api_answers_for_the_record_an_apply_or_backfill_has_just_written(
    baseline: tuple[Path, dict[str, str]], redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that applies (or backfills) and asks at once gets the new answer — 409 for the feature just
    added, then its value once built, 404 once removed — not the plan of the API's last once-a-second look
    (slowed down here to an hour, so only the check at request time can see the change)."""
    from fastapi.testclient import TestClient

    from services.online_api import app as api
    from services.online_api.settings import ApiSettings

    repo, env = baseline
    monkeypatch.setenv("FSTORE_FEATURE_REPO", str(repo))
    monkeypatch.setattr(api, "PLAN_FOLLOW_S", 3600.0)
    plan_source.use_plan(None)
    try:
        with TestClient(api.create_app(ApiSettings(redis_url=redis_server.url))) as client:

            def get(ref: str) -> int:
                return int(client.get("/features", params={"driver_id": "d1", "features": ref}).status_code)

            assert get("driver_performance:fare_3h") == 200
            (repo / "features.py").write_text(
                edit(
                    ('name="fare_3h"\n        ),', f'name="fare_3h"\n        ),\n        {STD_3H}'),
                    (
                        'Field(name="trips_2d", dtype=Int64),',
                        'Field(name="trips_2d", dtype=Int64), Field(name="fare_std_3h", dtype=Float64),',
                    ),
                )
            )
            assert run("apply", "--repo", str(repo), "--skip-feast", env=env)[0] == 0
            assert get("driver_performance:fare_std_3h") == 409  # at once: not the 404 of the plan before
            record = applied.load(repo)
            assert record is not None
            applied.save(repo, record.without_pending({"driver_performance"}))  # what the backfill ends with
            assert get("driver_performance:fare_std_3h") == 200
            (repo / "features.py").write_text(RIDES)  # removed again: no longer served, at once
            assert run("apply", "--repo", str(repo), "--skip-feast", env=env)[0] == 0
            assert get("driver_performance:fare_std_3h") == 404
            r = client.post(
                "/historical-features",
                json={"entity_rows": [], "features": ["driver_performance:fare_std_3h"]},
            )
            assert r.status_code == 422 and "fare_std_3h" in r.text, r.text
    finally:
        plan_source.use_plan(None)


@pytest.mark.parametrize("command", [["plan"], ["apply", "--skip-feast"]])
def test_plan_and_apply_warn_when_the_declared_topic_is_not_the_one_read(tmp_path: Path, command: list[str]) -> None:
    """A repository whose stream source declares topic 'rides': with no FSTORE_EVENTS_TOPIC the processes read
    'rides' and ``fstore plan``/``apply`` say nothing of topics; with ``FSTORE_EVENTS_TOPIC=events`` events sent to
    'rides' would never be read, so they say so (stderr, with the fix)."""
    repo = tmp_path / "rides"
    shutil.copytree(Path(__file__).resolve().parents[1] / "support" / "repos" / "rides", repo)
    env = {k: v for k, v in os.environ.items() if k not in ("FSTORE_EVENTS_TOPIC", "FSTORE_FEATURE_REPO")}
    env["FSTORE_DATA_DIR"] = str(tmp_path / "data")
    argv = [FSTORE, *command, "--repo", str(repo)]
    ok = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert ok.returncode == 0 and "declares Kafka topic" not in ok.stderr, ok.stdout[-2000:] + ok.stderr[-3000:]
    shutil.rmtree(repo / "data", ignore_errors=True)  # apply recorded a baseline: the second run starts afresh
    out = subprocess.run(
        argv, env={**env, "FSTORE_EVENTS_TOPIC": "events"}, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "declares Kafka topic 'rides'" in out.stderr and "FSTORE_EVENTS_TOPIC='events'" in out.stderr, out.stderr


def test_the_worker_and_fstore_publish_use_the_topic_the_source_declares(tmp_path: Path, kafka_broker: Broker) -> None:
    """A repository says once where its events arrive: with no FSTORE_EVENTS_TOPIC, the stream worker
    subscribes to the topic its stream source declares and ``fstore publish`` sends there."""
    topic = f"rides-{uuid.uuid4().hex[:8]}"
    repo = tmp_path / "rides"
    shutil.copytree(Path(__file__).resolve().parents[1] / "support" / "repos" / "rides", repo)
    features = repo / "features.py"
    features.write_text(features.read_text().replace('topic="rides"', f"topic={topic!r}"))
    env = {k: v for k, v in os.environ.items() if k != "FSTORE_EVENTS_TOPIC"}
    env |= {"FSTORE_FEATURE_REPO": str(repo), "FSTORE_KAFKA_BOOTSTRAP": kafka_broker.bootstrap}
    env |= {"FSTORE_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    read = subprocess.run(
        [sys.executable, "-c", "from jobs.stream.app import settings; print(settings.events_topic)"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert read.returncode == 0 and read.stdout.strip().splitlines()[-1] == topic, read.stdout + read.stderr[-3000:]
    messages = tmp_path / "m.jsonl"
    messages.write_text("".join(json.dumps({"ride_id": f"r{i}"}) + "\n" for i in range(3)))
    sent = subprocess.run(
        [FSTORE, "publish", str(messages)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert sent.returncode == 0 and f"created topic {topic!r}" in sent.stdout, sent.stdout + sent.stderr[-3000:]
    assert topic in list_topics(kafka_broker.bootstrap)
