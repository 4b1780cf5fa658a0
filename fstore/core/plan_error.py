"""The error of definitions that cannot be compiled into a plan."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable


class PlanError(ValueError):
    """Definitions that cannot be compiled; ``problems`` holds one message per mistake, each naming the
    object and saying what to do."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(f"- {p}" for p in self.problems) or "invalid definitions")


def require_unique(names: Iterable[str], what: str) -> None:
    """Raise :class:`PlanError` naming the repeated ``names`` (``what``: e.g. ``"view v: feature"``)."""
    dups = sorted(n for n, k in Counter(names).items() if k > 1)
    if dups:
        raise PlanError([f"{what} names must be unique; repeated: {', '.join(dups)}"])
