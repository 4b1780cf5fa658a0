"""The plan this process runs from (docs/design.md §3): the user's Feast repository, compiled once.

Every engine — the stream worker, the batch job, the online API, the Feast stores, the point-in-time
engine — asks :func:`current_plan` for the views, measures and event schema; nothing in the package
names a feature. The repository is ``FSTORE_FEATURE_REPO`` (default: the project's ``feature_repo/``).
It is compiled on first use (all or nothing: a bad repository raises
:class:`~fstore.core.plan_error.PlanError` naming every mistake) and kept for the life of the process.
Tests and in-process commands install a plan of their own with :func:`use_plan`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from fstore.core.plan import Plan

ENV_REPO = "FSTORE_FEATURE_REPO"
#: The example repository shipped with fstore.
DEFAULT_REPO = Path(__file__).resolve().parent.parent / "feature_repo"

_lock = threading.Lock()
_current: Plan | None = None


def repo_dir() -> Path:
    """The Feast repository the plan comes from (``FSTORE_FEATURE_REPO`` or the shipped example)."""
    configured = os.environ.get(ENV_REPO, "").strip()
    return Path(configured).resolve() if configured else DEFAULT_REPO


def compile_dir(root: str | Path) -> Plan:
    """Compile the repository in ``root`` (imports Feast; all or nothing)."""
    from fstore.feast.compile import compile_repo  # Feast is heavy: only when a plan is needed

    return compile_repo(root)


def current_plan() -> Plan:
    """The plan of this process: the one installed by :func:`use_plan`, else the repository's, compiled once.

    Raises:
        PlanError: the repository has mistakes (each one named).
    """
    global _current
    plan = _current
    if plan is not None:
        return plan
    with _lock:
        if _current is None:
            _current = compile_dir(repo_dir())
        return _current


def use_plan(plan: Plan | None) -> None:
    """Install ``plan`` as this process's plan (``None``: compile the repository again on next use)."""
    global _current
    with _lock:
        _current = plan
