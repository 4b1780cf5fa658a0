"""A temporary copy of the example Feast repository wired to the fstore stores and applied with ``feast``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from fstore.redis.connect import admin_client
from fstore.redis.workers import WORKERS_KEY

ROOT = Path(__file__).resolve().parents[2]
ONLINE_STORE = {
    "type": "fstore.feast.online_store.FstoreOnlineStore",
    "redis_url": "${FSTORE_REDIS_URL}",
    "timeout_ms": 300,
}


def applied_repo(
    tmp: Path, redis_url: str, data_dir: Path, redis_cluster: bool = False, source: Path = ROOT / "feature_repo"
) -> Path:
    """A copy of ``source`` (default: ``feature_repo``) under ``tmp`` with the fstore online store, applied
    by the ``feast`` CLI (``redis_cluster``: the store's ``redis_cluster: true``)."""
    repo = tmp / source.name
    shutil.copytree(source, repo, ignore=shutil.ignore_patterns("data"))
    cfg_path = repo / "feature_store.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["online_store"] = {**ONLINE_STORE, **({"redis_cluster": True} if redis_cluster else {})}
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, "FSTORE_REDIS_URL": redis_url, "FSTORE_DATA_DIR": str(data_dir)}
    # `feast apply` records fstore's plan too; a first apply while a live stream worker runs another plan
    # refuses every feature until built (fstore/applying.py): a worker an earlier test left registered on
    # this shared Redis is not this repository's.
    client = admin_client(redis_url, redis_cluster, socket_timeout=5, socket_connect_timeout=2)
    try:
        client.delete(WORKERS_KEY)
    finally:
        client.close()
    feast = str(Path(sys.executable).with_name("feast"))
    res = subprocess.run([feast, "apply"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return repo
