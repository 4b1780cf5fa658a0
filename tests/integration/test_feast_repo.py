"""``feast apply`` registers the shipped example (``feature_repo/``), and what it registered compiles to the
views and features of the plan the engines run from."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fstore.feast.compile import compile_registry
from fstore.plan_source import compile_dir

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_feast_apply_registers_the_example(tmp_path: Path) -> None:
    repo = tmp_path / "feature_repo"
    shutil.copytree(ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data"))
    env = {**os.environ, "FSTORE_REDIS_URL": "redis://127.0.0.1:1/0", "FSTORE_DATA_DIR": str(tmp_path / "data")}
    feast = str(Path(sys.executable).with_name("feast"))
    res = subprocess.run([feast, "apply"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    listed = subprocess.run(
        [feast, "stream-feature-views", "list"], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )
    assert {"user_activity", "product_engagement"} <= set(listed.stdout.split()), listed.stdout + listed.stderr

    from feast import FeatureStore

    plan = compile_dir(ROOT / "feature_repo")
    store = FeatureStore(repo_path=str(repo))
    assert {e.name for e in store.list_entities()} == {e.name for e in plan.entities}
    for view in plan.views:
        fv = store.get_stream_feature_view(view.name)
        assert {f.name for f in fv.features} - {view.entity.join_key} == set(view.feature_names)
        assert fv.entities == [view.entity.name]
    registered = compile_registry(store)  # what the registry holds compiles to the same views and features
    assert {(v.name, f) for v in registered.views for f in v.feature_names} == {
        (v.name, f) for v in plan.views for f in v.feature_names
    }
