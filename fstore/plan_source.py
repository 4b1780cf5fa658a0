"""The plan this process runs from (docs/design.md §3): the user's Feast repository, compiled once.

Every engine — the stream worker, the batch job, the online API, the Feast stores, the point-in-time
engine — asks :func:`current_plan` for the views, measures and event schema; nothing in the package
names a feature. The repository is ``FSTORE_FEATURE_REPO`` (default: the project's ``feature_repo/``).
The plan is the one ``fstore apply`` recorded (:mod:`fstore.applied`) or, for a repository never
applied, its source compiled on first use (all or nothing: a bad repository raises
:class:`~fstore.core.plan_error.PlanError` naming every mistake). It is kept for the life of the process;
long-running readers (the API, the stream worker) call :func:`refresh` to follow a later apply or
backfill; when the changed record cannot be read they keep the previous plan and :func:`stale` says why
until a good record is read (their ``/health`` and ``fstore_plan_stale`` report it). Tests and
in-process commands install a plan of their own with :func:`use_plan`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from fstore import applied
from fstore.core.plan import Plan

ENV_REPO = "FSTORE_FEATURE_REPO"
#: The example repository shipped with fstore.
DEFAULT_REPO = Path(__file__).resolve().parent.parent / "feature_repo"

_lock = threading.Lock()
_current: Plan | None = None
_pending: frozenset[str] = frozenset()
_installed = False  # a plan from use_plan: never replaced by refresh()
_stamp: tuple[int, int] | None = None  # (mtime_ns, size) of the applied record last read
_stale: str | None = None  # why the applied record last seen could not be followed
_record: str | None = None  # the path of the applied record of the repository last loaded


def repo_dir() -> Path:
    """The Feast repository the plan comes from (``FSTORE_FEATURE_REPO`` or the shipped example)."""
    configured = os.environ.get(ENV_REPO, "").strip()
    return Path(configured).resolve() if configured else DEFAULT_REPO


def compile_dir(root: str | Path) -> Plan:
    """Compile the repository in ``root`` (imports Feast; all or nothing)."""
    from fstore.feast.compile import compile_repo  # Feast is heavy: only when a plan is needed

    return compile_repo(root)


def _load() -> None:
    global _current, _pending, _stamp, _record
    repo = repo_dir()
    _record = str(applied.record_path(repo))
    _stamp = applied.stamp(repo)
    record = applied.load(repo) if _stamp is not None else None
    if record is not None:
        _current, _pending = record.plan, frozenset(record.pending)
    else:
        _current, _pending = compile_dir(repo), frozenset()


def current_plan() -> Plan:
    """The plan of this process: the one installed by :func:`use_plan`, else the applied one, else the
    repository's source, compiled once.

    Raises:
        PlanError: the repository has mistakes (each one named).
    """
    plan = _current
    if plan is not None:
        return plan
    with _lock:
        if _current is None:
            _load()
        assert _current is not None
        return _current


def declared_topic() -> str:
    """The Kafka topic the stream source of this process's plan declares (:mod:`fstore.topics`); ``""`` when it
    declares none or the repository cannot be compiled (the command that needs the plan reports its mistakes)."""
    try:
        return current_plan().topic
    except Exception:
        return ""


def pending() -> frozenset[str]:
    """``view:feature`` refs applied but not built yet: refused until ``fstore backfill`` builds them."""
    current_plan()
    return _pending


def refresh() -> bool:
    """Follow the applied record if it changed since it was read (one ``stat``); ``True`` when the plan
    or its pending set was reloaded. A plan installed with :func:`use_plan` stays."""
    global _stale
    if _installed:
        return False
    repo = repo_dir()
    stamp = applied.stamp(repo)
    if stamp == _stamp and _current is not None:
        return False
    with _lock:
        try:
            _load()
        except Exception as exc:
            where = str(applied.record_path(repo))
            _stale = str(exc) if where in str(exc) else f"{where}: {exc}"
            raise
        _stale = None
    return True


def follow() -> bool:
    """:func:`refresh` at the cost of one ``stat`` of the record while it does not change (readers call it
    on every request, so a client that applies or backfills and asks at once gets the new answer); a
    record that cannot be read is left to the caller's periodic :func:`refresh`, which reports it."""
    path = _record
    if _installed or path is None:
        return False
    try:
        st = os.stat(path)
        now: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
    except FileNotFoundError:
        now = None
    global _stamp
    before = _stamp
    if now == before:
        return False
    try:
        return refresh()
    except Exception:
        with _lock:
            _stamp = before  # the periodic refresh tries again, and reports it
        return False


def installed() -> bool:
    """Whether this process runs a plan installed with :func:`use_plan` (not the repository's)."""
    return _installed


def stale() -> str | None:
    """Why this process runs an older plan than the applied record (which changed but could not be read:
    corrupt, or its repository has mistakes), naming the record; ``None`` when it runs the applied one."""
    return _stale


def use_plan(plan: Plan | None, pending_refs: frozenset[str] = frozenset()) -> None:
    """Install ``plan`` (and its pending refs) as this process's plan; ``None``: load the repository's
    again on next use."""
    global _current, _pending, _installed, _stamp, _stale
    with _lock:
        _current, _pending, _installed, _stamp, _stale = plan, pending_refs, plan is not None, None, None
