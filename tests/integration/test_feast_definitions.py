"""Feast accepts the definitions the compiler reads: ``feast plan`` and ``feast apply`` run on copies of
the test repositories (a local registry and SQLite online store: files only), and what ``feast apply``
registered compiles to the same plan as the files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fstore.feast.compile import compile_registry, compile_repo
from tests.support.repos import ROOT, compiled

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Stream feature views are experimental:RuntimeWarning"),
]

FEAST = str(Path(sys.executable).with_name("feast"))


def feast(repo: Path, *args: str) -> str:
    res = subprocess.run([FEAST, *args], cwd=repo, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


@pytest.mark.parametrize("name", ["rides", "ecommerce"])
def test_feast_plan_and_apply_accept_the_repository(name: str, tmp_path: Path) -> None:
    from feast import FeatureStore

    repo = tmp_path / name
    shutil.copytree(ROOT / name, repo, ignore=shutil.ignore_patterns("data", "__pycache__", "__init__.py"))
    plan = compiled(name)
    planned = feast(repo, "plan")
    for view in plan.views:
        assert f"Created stream feature view {view.name}" in planned
    feast(repo, "apply")
    assert not feast(repo, "plan").count("Created")  # applied: nothing left to create

    store = FeatureStore(repo_path=str(repo))
    registered = compile_registry(store)
    # the registry does not keep a view's field order (fstore.feast.compile_view.canonical_order)
    assert [sorted(v.feature_names) for v in registered.views] == [sorted(v.feature_names) for v in plan.views]
    assert [{f.name: f for f in v.features} for v in registered.views] == [
        {f.name: f for f in v.features} for v in plan.views
    ]
    assert (registered.schema, registered.entities) == (plan.schema, plan.entities)
    assert compile_repo(repo) == plan
    for view in plan.views:
        fv = store.get_stream_feature_view(view.name)
        assert {f.name for f in fv.features} - {view.entity.join_key} == set(view.feature_names)


def test_feast_plan_shows_a_changed_measure(tmp_path: Path) -> None:
    repo = tmp_path / "rides"
    shutil.copytree(ROOT / "rides", repo, ignore=shutil.ignore_patterns("data", "__pycache__", "__init__.py"))
    feast(repo, "apply")
    source = repo / "features.py"
    old = '"fstore.measure.cancellation": "1 if kind == \'cancelled\'"'
    new = '"fstore.measure.cancellation": "1 if kind == \'cancelled\' and not airport"'
    assert source.read_text().count(old) == 1
    source.write_text(source.read_text().replace(old, new))
    assert "Updated stream feature view driver_performance" in feast(repo, "plan")
