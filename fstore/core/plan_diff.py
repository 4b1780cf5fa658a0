"""What a change of feature definitions needs: which tiles to rebuild, which to free, which features
must be refused until then (docs/design.md §3 "Evolution").

Features are computed from **tile series**: one measure's tiles of one size in one view
(:class:`Series`). A series is identified by the view, its entity key, the tile size and the measure's
name, and defined by the measure's canonical text, the states its tiles keep and how far back the
batch view must hold them (the longest window that reads it). Comparing the series of the applied plan
with those of a new one says, without looking at any data:

* ``build``: series the new plan reads that hold nothing yet or hold something else — new, redefined
  (another filter or value), with states they did not keep (a std on a measure that only had sums), or
  read over a longer window than the history their tiles keep: the batch view keeps a view's tiles of
  one size back to the longest window of that size in the view (jobs/batch/plan.py ``size_horizons``),
  not to the plan's longest window, so a 6 h count on the tiles of a 1 h one (both 5-minute tiles)
  would miss five hours before the cutover. They need a backfill.
* ``free``: series no feature reads any more; their keys can go.
* ``shed``: states a kept series no longer keeps — the m2 of its last std/var, the distinct members of its
  last count_distinct — stored apart from the count/sum/min/max every tile holds, so they can go too.
* ``pending``: the features whose own needs the built tiles do not meet (and ratios of them) — the tiles
  of the applied plan but what its own pending features wait for, which no backfill has built yet —
  refused until the backfill has run, never served undercounted. A feature the tiles already serve stays
  served while its series is rebuilt for another one; a renamed feature on unchanged tiles is ready at
  once.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from fstore.core.functions import State
from fstore.core.plan import Plan, RatioFeature, View, WindowedFeature

#: States a tile keeps apart from the count, sum, min and max that every tile holds (freed when shed).
APART = frozenset({State.M2, State.DISTINCT, State.SKETCH})


@dataclass(frozen=True)
class Series:
    """One tile series and what it holds."""

    view: str
    entity_key: str
    hop: int
    measure: str
    definition: str
    states: frozenset[State]
    reach: int  # the longest window, in µs, that reads the series

    @property
    def key(self) -> tuple[str, str, int, str]:
        """Identity: where its tiles live."""
        return (self.view, self.entity_key, self.hop, self.measure)

    def serves(self, wanted: Series, covered: int) -> bool:
        """Whether these tiles hold everything ``wanted`` needs, given that the stored history of their tile
        size covers the last ``covered`` µs."""
        return (
            self.key == wanted.key
            and self.definition == wanted.definition
            and wanted.states <= self.states
            and wanted.reach <= covered
        )


def series_of(plan: Plan, unbuilt: AbstractSet[str] = frozenset()) -> dict[tuple[str, str, int, str], Series]:
    """Every tile series of ``plan``, by identity; without what only its ``unbuilt`` features (``view:feature``)
    read."""
    out: dict[tuple[str, str, int, str], Series] = {}
    for view in plan.views:
        for f in view.windowed:
            if f"{view.name}:{f.name}" in unbuilt:
                continue
            s = _series(view, f)
            old = out.get(s.key)
            if old is not None:
                s = Series(*s.key, s.definition, old.states | s.states, max(old.reach, s.reach))
            out[s.key] = s
    return out


def coverage(plan: Plan, unbuilt: AbstractSet[str] = frozenset()) -> dict[tuple[str, int], int]:
    """How far back, in µs, the stored tiles of each (view, tile size) of ``plan`` reach: the longest window
    of that size in the view (the batch view keeps a size's tiles from ``C − that window − size`` on), of its
    features but the ``unbuilt`` ones."""
    out: dict[tuple[str, int], int] = {}
    for view in plan.views:
        for f in view.windowed:
            if f"{view.name}:{f.name}" in unbuilt:
                continue
            out[(view.name, f.hop)] = max(out.get((view.name, f.hop), 0), f.window)
    return out


def _series(view: View, f: WindowedFeature) -> Series:
    m = view.measure(f.measure)
    return Series(view.name, view.entity.join_key, f.hop, m.name, m.text, frozenset(f.states), f.window)


@dataclass(frozen=True)
class PlanChange:
    """The difference between the applied plan and a new one (``view:feature`` references)."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    build: tuple[Series, ...]
    free: tuple[Series, ...]
    pending: tuple[str, ...]
    shed: tuple[tuple[Series, State], ...] = ()

    @property
    def empty(self) -> bool:
        """Nothing to do."""
        return not (self.added or self.removed or self.changed or self.build or self.free or self.shed)

    def lines(self) -> list[str]:
        """A readable summary, one line per item (what ``fstore backfill`` and ``apply`` print)."""
        out = [f"+ {r}" for r in self.added] + [f"- {r}" for r in self.removed] + [f"~ {r}" for r in self.changed]
        out += [f"build {_show(s)}" for s in self.build] + [f"free {_show(s)}" for s in self.free]
        out += [f"free {_show(s)}: {state}" for s, state in self.shed]
        out += [f"refused until built: {r}" for r in self.pending]
        return out


def _show(s: Series) -> str:
    return f"{s.view}/{s.measure} every {s.hop // 1_000_000}s"


def _definitions(plan: Plan | None) -> dict[str, object]:
    if plan is None:
        return {}
    out: dict[str, object] = {}
    for view in plan.views:
        windowed: dict[str, object] = {}
        for w in view.windowed:
            m = view.measure(w.measure)
            windowed[w.name] = (view.entity.join_key, m.text, w.function, w.window, w.hop, w.sketch)
        for f in view.features:  # a ratio is defined by what it divides
            d = ("ratio", windowed[f.numerator], windowed[f.denominator]) if isinstance(f, RatioFeature) else None
            out[f"{view.name}:{f.name}"] = d or windowed[f.name]
    return out


def diff(old: Plan | None, new: Plan, unbuilt: Iterable[str] = ()) -> PlanChange:
    """What applying ``new`` over ``old`` (``None``: nothing applied yet) needs, ``old``'s ``unbuilt`` features
    (``view:feature``, still pending) not built yet: what is ready is judged on the tiles built, not on the plan
    applied (a var added while a std still waits for the m2 state waits too); what is freed, on every tile
    written."""
    before, after = _definitions(old), _definitions(new)
    skip = frozenset(unbuilt)
    have = series_of(old) if old is not None else {}
    built = series_of(old, skip) if old is not None else {}
    covered = coverage(old, skip) if old is not None else {}
    want = series_of(new)

    def ready(s: Series) -> bool:
        return s.key in built and built[s.key].serves(s, covered.get((s.view, s.hop), 0))

    build = [s for s in want.values() if not ready(s)]
    free = [s for k, s in have.items() if k not in want]
    shed = [(s, st) for k, s in want.items() if k in have for st in State if st in (have[k].states - s.states) & APART]
    pending: list[str] = []
    for view in new.views:
        blocked = {f.name for f in view.windowed if not ready(_series(view, f))}
        for f in view.features:
            if f.name in blocked or (isinstance(f, RatioFeature) and {f.numerator, f.denominator} & blocked):
                pending.append(f"{view.name}:{f.name}")
    return PlanChange(
        added=_sorted(r for r in after if r not in before),
        removed=_sorted(r for r in before if r not in after),
        changed=_sorted(r for r in after if r in before and before[r] != after[r]),
        build=tuple(sorted(build, key=lambda s: s.key)),
        free=tuple(sorted(free, key=lambda s: s.key)),
        pending=tuple(pending),
        shed=tuple(sorted(shed, key=lambda p: (p[0].key, p[1]))),
    )


def retyped(old: Plan, new: Plan) -> list[str]:
    """The mistakes of ``new`` over the applied ``old`` that no backfill can make good: an event field whose
    type changed (``raw_events`` keeps one column per field, written with the type it had — a wider value
    could not be stored, and the stream would stop on it after counting it). Empty when there are none."""
    before = {f.name: f.type for f in old.schema.fields}
    return [
        f"event field '{f.name}': its type cannot change from {before[f.name].value} to {f.type.value} (raw_events "
        f"stores it as {before[f.name].value}); keep the type, or declare a field of another name with the new one"
        for f in new.schema.fields
        if f.name in before and before[f.name] is not f.type
    ]


def _sorted(refs: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(refs))
