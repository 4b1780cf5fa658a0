"""The applied plan: what ``fstore apply`` last registered, and which features wait for their backfill.

``fstore apply`` compiles the user's repository, registers it with Feast and records the compiled plan
here, next to Feast's registry (``<repo>/data/fstore_applied.json``), with the features that the change
left **pending**: their tiles do not hold what they need yet (:func:`fstore.core.plan_diff.diff`), so the
API refuses them (409) until ``fstore backfill`` has built them. Every process runs from the applied plan
(:mod:`fstore.plan_source`); a repository never applied runs from its source.

The record also keeps what the apply has still to **free** in Redis (``unfreed_views``, ``unfreed_series``,
``unfreed_states`` — the m2 or distinct fields a kept series sheds):
``fstore apply`` records the new plan first, waits for every live stream worker to run it, then frees the
keys of what it removed and clears that list; when the workers do not follow in time (or Redis fails) the
list stays, and the next ``fstore apply`` frees it first.

The record is written atomically (a temporary file renamed over the old one), so a reader sees the old
record or the new one, never half of either.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fstore.core.plan import Plan
from fstore.core.plan_json import fingerprint, from_dict, to_dict

FILE_NAME = "fstore_applied.json"
#: What is left to free of a kept view: (view, hop µs, measure, state) — the whole tile series when the state is
#: ``""``, else only that state's fields (:data:`fstore.core.plan_diff.APART`).
Unfreed = tuple[str, int, str, str]


@dataclass(frozen=True)
class AppliedPlan:
    """The applied plan, when it was applied (UTC epoch µs) and the ``view:feature`` refs still pending."""

    plan: Plan
    applied_at: int
    pending: tuple[str, ...] = ()
    building: tuple[str, ...] = field(default=())  # views whose tiles the pending features wait for
    unfreed_views: tuple[str, ...] = ()  # removed views whose Redis keys are not freed yet
    unfreed_series: tuple[Unfreed, ...] = ()  # removed tile series and shed states of kept views, ditto

    @property
    def unfreed(self) -> bool:
        """Whether Redis state of what was removed is still to free."""
        return bool(self.unfreed_views or self.unfreed_series)

    def freed(self) -> AppliedPlan:
        """The record once its removed state is freed."""
        return replace(self, unfreed_views=(), unfreed_series=())

    @property
    def fingerprint(self) -> str:
        """The plan's fingerprint (equal plans, equal fingerprints)."""
        return fingerprint(self.plan)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return {
            "fingerprint": self.fingerprint,
            "applied_at": self.applied_at,
            "pending": list(self.pending),
            "building": list(self.building),
            "unfreed_views": list(self.unfreed_views),
            # a shed state apart, so a reader of the three-element form (an older fstore) still reads the record
            "unfreed_series": [list(sr[:3]) for sr in self.unfreed_series if not sr[3]],
            "unfreed_states": [list(sr) for sr in self.unfreed_series if sr[3]],
            "plan": to_dict(self.plan),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AppliedPlan:
        """Inverse of :meth:`to_dict`."""
        return cls(
            from_dict(data["plan"]),
            int(data["applied_at"]),
            tuple(str(r) for r in data.get("pending", ())),
            tuple(str(v) for v in data.get("building", ())),
            tuple(str(v) for v in data.get("unfreed_views", ())),
            tuple(
                sorted(
                    [(str(v), int(h), str(m), "") for v, h, m in data.get("unfreed_series", ())]
                    + [(str(v), int(h), str(m), str(st)) for v, h, m, st in data.get("unfreed_states", ())]
                )
            ),
        )

    def without_pending(self, views: set[str]) -> AppliedPlan:
        """The record once ``views`` are built: their features are served."""
        keep = tuple(r for r in self.pending if r.partition(":")[0] not in views)
        return replace(self, pending=keep, building=tuple(v for v in self.building if v not in views))


def not_built(view: str, feature: str) -> str:
    """Why a pending feature is refused (the API's 409, the Feast online store's error)."""
    return (
        f"feature '{view}:{feature}' is applied but its tiles are not built for it yet: it is served once "
        f"`fstore backfill --view {view}` has run (a new or redefined feature waits for it, and every feature "
        "of a view waits while a backfill rebuilds it); until then no value is given rather than an "
        "undercounted one"
    )


def record_path(repo: str | Path) -> Path:
    """Where the applied plan of ``repo`` is recorded."""
    return Path(repo) / "data" / FILE_NAME


def stamp(repo: str | Path) -> tuple[int, int] | None:
    """``(mtime_ns, size)`` of ``repo``'s record, ``None`` when it was never applied: readers that follow the
    record compare it (one ``stat``) and re-read the record only when it moved."""
    try:
        st = record_path(repo).stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size)


def load(repo: str | Path) -> AppliedPlan | None:
    """The applied plan of ``repo``; ``None`` when it was never applied.

    Raises:
        ValueError: the record is unreadable (naming the file; re-run ``fstore apply``).
    """
    path = record_path(repo)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return AppliedPlan.from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: unreadable applied plan ({exc}); run `fstore apply` again") from exc


def save(repo: str | Path, record: AppliedPlan) -> None:
    """Record ``record`` atomically."""
    path = record_path(repo)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".fstore_applied.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(record.to_dict(), out, indent=1, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
