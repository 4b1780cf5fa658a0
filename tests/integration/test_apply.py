"""``fstore apply`` / ``fstore plan`` (issue 13 Build 3 and 5): a repository with a mistake is rejected
as a whole and changes nothing — neither Feast's registry nor fstore's record; a valid change is
registered with the features it leaves pending; removing a view or a series frees its Redis state."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from fstore import applied
from fstore.cli import main
from fstore.core.timeutil import HOUR, MINUTE, SECOND
from fstore.devsvc.services import RedisServer
from fstore.redis.layout import distinct_field, future_field, marker_key, speed_key
from tests.support.repos import ROOT
from tests.support.repos.mistakes import INVALID, RIDES, edit

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


def test_adding_a_feature_leaves_it_pending_and_removing_frees_its_state(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    env = {"FSTORE_REDIS_URL": redis_server.url, "FSTORE_REDIS_CLUSTER": "false"}
    repo = rides_repo(tmp_path)
    assert run("apply", "--repo", str(repo), "--skip-feast", env=env)[0] == 0
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
