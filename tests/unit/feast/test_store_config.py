"""The Feast stores' ``feature_store.yaml`` settings: an unset ``${VAR}`` falls back to the fstore settings, as
the shipped ``feature_repo/feature_store.yaml`` says ("unset ones fall back to fstore's settings")."""

from __future__ import annotations

from pathlib import Path

import pytest
from feast.repo_config import load_repo_config

from fstore.feast.offline_store import raw_events_uri
from fstore.feast.online_store import redis_url_of

pytestmark = pytest.mark.unit

YAML = """project: p
provider: local
registry: data/registry.db
online_store:
  type: fstore.feast.online_store.FstoreOnlineStore
  redis_url: ${FSTORE_REDIS_URL}
offline_store:
  type: fstore.feast.offline_store.FstoreOfflineStore
  data_dir: ${FSTORE_DATA_DIR}
entity_key_serialization_version: 3
"""


def test_an_unset_variable_falls_back_to_the_fstore_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/training_data.md's ``data_dir: ${FSTORE_DATA_DIR}`` with the variable unset when Feast loads the
    file: Feast leaves ``${FSTORE_DATA_DIR}`` as it is, and reading a folder of that name answered every row
    with the values of no events (0 / null) instead of the events of the settings' data dir."""
    monkeypatch.chdir(tmp_path)  # no .fstore/services.env here
    for var in ("FSTORE_DATA_DIR", "FSTORE_REDIS_URL"):
        monkeypatch.delenv(var, raising=False)
    repo = tmp_path / "feature_repo"
    repo.mkdir()
    (repo / "feature_store.yaml").write_text(YAML)
    config = load_repo_config(repo, repo / "feature_store.yaml")
    assert config.offline_store.data_dir == "${FSTORE_DATA_DIR}"  # what Feast hands the store
    assert raw_events_uri(config) == str(tmp_path / "data" / "raw_events")  # the settings' default, "data"
    monkeypatch.setenv("FSTORE_DATA_DIR", str(tmp_path / "lake"))  # set later, in the notebook: read now
    assert raw_events_uri(config) == str(tmp_path / "lake" / "raw_events")
    assert "${" not in redis_url_of(config)


def test_the_projects_services_env_is_read_whatever_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fstore services up`` (in the project root) writes ``.fstore/services.env``; ``cd feature_repo && feast
    get-online-features ...`` (README) or a notebook in ``notebooks/`` then read Redis at the default
    127.0.0.1:6379 instead — refused, or another Redis answering with the values of no events."""
    for var in ("FSTORE_DATA_DIR", "FSTORE_REDIS_URL", "FSTORE_REDIS_CLUSTER"):
        monkeypatch.delenv(var, raising=False)
    repo = tmp_path / "feature_repo"
    repo.mkdir()
    (repo / "feature_store.yaml").write_text(YAML)
    (tmp_path / ".fstore").mkdir()
    (tmp_path / ".fstore" / "services.env").write_text("FSTORE_REDIS_URL=redis://127.0.0.1:1234/0\n")
    config = load_repo_config(repo, repo / "feature_store.yaml")
    for cwd in (repo, tmp_path):
        monkeypatch.chdir(cwd)
        assert redis_url_of(config) == "redis://127.0.0.1:1234/0"
    monkeypatch.setenv("FSTORE_REDIS_URL", "redis://127.0.0.1:4321/0")  # the environment still wins
    assert redis_url_of(config) == "redis://127.0.0.1:4321/0"
