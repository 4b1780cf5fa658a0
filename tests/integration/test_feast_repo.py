"""``feast apply`` registers exactly the core feature definitions."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fstore.core.features import ENTITIES, VIEWS

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_feast_apply_registers_core_definitions(tmp_path: Path) -> None:
    repo = tmp_path / "feature_repo"
    shutil.copytree(ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data"))
    env = {**os.environ, "FSTORE_REDIS_URL": "redis://127.0.0.1:1/0", "FSTORE_DATA_DIR": str(tmp_path / "data")}
    feast = str(Path(sys.executable).with_name("feast"))
    res = subprocess.run([feast, "apply"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    listed = subprocess.run(
        [feast, "feature-views", "list"], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )
    assert {"user_activity", "product_engagement"} <= set(listed.stdout.split())

    from feast import FeatureStore

    store = FeatureStore(repo_path=str(repo))
    assert {e.name for e in store.list_entities()} == set(ENTITIES)
    for view in VIEWS.values():
        fv = store.get_feature_view(view.name)
        assert [f.name for f in fv.features] == list(view.feature_names)
        assert fv.entities == [view.entity.name]
        assert str(tmp_path / "data") in getattr(fv.batch_source, "path", "")
