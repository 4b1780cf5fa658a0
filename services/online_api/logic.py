"""Request handling of the serving API, kept out of the routes: resolve, read, shape the answer."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from fstore.applied import not_built
from fstore.core.events import Rejection, event_time_of, is_id
from fstore.core.plan import Feature, Plan, View
from fstore.core.timeutil import EPOCH, SECOND
from fstore.online.ports import FeatureReader
from fstore.online.reader import EntityRead, Snapshot, iso_cached
from fstore.plan_source import current_plan, follow, pending


class RequestError(ValueError):
    """A client error; ``status`` is the HTTP status, the message names the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def join_keys(plan: Plan) -> tuple[str, ...]:
    """The entity keys a request may carry: the join keys of the plan's entities."""
    return tuple(dict.fromkeys(e.join_key for e in plan.entities))


def parse_refs(features: Sequence[str], plan: Plan | None = None) -> list[tuple[View, Feature]]:
    """Resolve feature references (comma-separated items allowed) against ``plan`` (default: the
    process's, :func:`fstore.plan_source.current_plan`).

    Raises:
        RequestError: 422 when none is given, 404 naming an unknown view or feature, 409 naming a feature
            applied but not built yet (``fstore backfill``).
    """
    refs = [r.strip() for item in features for r in item.split(",") if r.strip()]
    if not refs:
        raise RequestError(422, "no features requested: pass features=view:feature or features=view")
    try:
        resolved = (plan or current_plan()).resolve(refs)
    except KeyError as exc:
        raise RequestError(404, str(exc.args[0])) from None
    waiting = pending()
    if waiting:
        blocked = [(view.name, f.name) for view, f in resolved if f"{view.name}:{f.name}" in waiting]
        if blocked:
            others = ", ".join(f"{v}:{f}" for v, f in blocked[1:])
            raise RequestError(409, not_built(*blocked[0]) + (f"; also not built yet: {others}" if others else ""))
    return resolved


class ViewPlan(tuple[tuple[View, tuple[str, ...], tuple[str, ...]], ...]):
    """The requested features per view (view, names, ``view:name`` response keys), with the join keys
    a request may carry."""

    join_keys: tuple[str, ...]

    def __new__(
        cls, items: tuple[tuple[View, tuple[str, ...], tuple[str, ...]], ...], keys: tuple[str, ...]
    ) -> ViewPlan:
        out = super().__new__(cls, items)
        out.join_keys = keys
        return out


_VIEW_PLANS: dict[tuple[str, ...], tuple[Plan, ViewPlan]] = {}
_VIEW_PLANS_MAX = 256


def view_plan(features: tuple[str, ...], plan: Plan | None = None) -> ViewPlan:
    """The requested features grouped per view, in request order, with their response keys (memoised
    per plan: clients repeat the same feature lists).

    Without ``plan``: the process's, once the applied record is followed (:func:`fstore.plan_source.follow`,
    one ``stat``), so a client that runs ``feast apply`` or ``fstore backfill`` and asks at once gets the
    new answer (a removed feature no longer served, a new one refused, a built one served).

    Raises:
        RequestError: as :func:`parse_refs`.
    """
    if plan is None:
        follow()
        plan = current_plan()
    return _view_plan(features, plan)


def _view_plan(features: tuple[str, ...], plan: Plan) -> ViewPlan:
    hit = _VIEW_PLANS.get(features)
    if hit is not None and hit[0] is plan:
        return hit[1]
    by_view: dict[str, tuple[View, list[str]]] = {}
    for view, f in parse_refs(features, plan):
        by_view.setdefault(view.name, (view, []))[1].append(f.name)
    out = ViewPlan(
        tuple((view, tuple(names), tuple(f"{view.name}:{n}" for n in names)) for view, names in by_view.values()),
        join_keys(plan),
    )
    if len(_VIEW_PLANS) >= _VIEW_PLANS_MAX:
        _VIEW_PLANS.clear()
    _VIEW_PLANS[features] = (plan, out)
    return out


def entity_reads(row: Mapping[str, str], plan: ViewPlan) -> list[EntityRead]:
    """One read per view for an entity row.

    Raises:
        RequestError: 422 naming an unknown entity key, a missing join key or a malformed id.
    """
    keys = plan.join_keys
    for key, value in row.items():
        if key not in keys:
            raise RequestError(422, f"unknown entity key '{key}' (known: {', '.join(keys)})")
        if not is_id(value):
            raise RequestError(422, f"entity key {key}={value!r} is not 1-128 characters of [A-Za-z0-9_.:-]")
    reads = []
    for view, names, _ in plan:
        key = view.entity.join_key
        if key not in row:
            raise RequestError(422, f"feature view '{view.name}' needs entity key '{key}'")
        reads.append(EntityRead(view, row[key], names))
    return reads


async def read_features(
    reader: FeatureReader,
    rows: Sequence[Mapping[str, str]],
    features: Sequence[str],
    max_entities: int,
    without_batch: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Resolve, read (one round trip) and shape the answer for entity rows (a ``FeaturesResponse`` dict).

    ``without_batch`` is awaited when Redis has no batch pointer; it raises when serving speed tiles
    alone would be wrong (a published batch view was lost: see
    :class:`services.online_api.published.PublishedBatch`).
    """
    if len(rows) > max_entities:
        raise RequestError(
            413, f"{len(rows)} entities requested; the limit is {max_entities} per request (FSTORE_API_MAX_ENTITIES)"
        )
    if not rows:
        raise RequestError(422, "no entities given")
    plan = view_plan(tuple(features))
    reads = [r for row in rows for r in entity_reads(row, plan)]
    snap = await reader.read(reads)
    if snap.pointer is None and without_batch is not None:
        await without_batch()
    return shape(snap, rows, plan)


def shape(snap: Snapshot, rows: Sequence[Mapping[str, str]], plan: ViewPlan) -> dict[str, Any]:
    """Turn a snapshot (results row by row, view by view in ``plan`` order) into the JSON-able body of
    :class:`~services.online_api.schemas.FeaturesResponse` (values keyed ``view:feature``); plain dicts,
    same fields and order as the model."""
    results = iter(snap.results)
    out_rows = []
    as_of = snap.as_of
    for row in rows:
        values: dict[str, int | float | None] = {}
        fresh: dict[str, dict[str, Any]] = {}
        for view, _, keys in plan:
            res = next(results)
            values.update(zip(keys, res.values.values(), strict=True))  # values come in the order of names
            newest = res.newest_speed_tile
            fresh[view.name] = {
                "newest_speed_tile": iso_cached(newest) if newest is not None else None,
                "speed_tile_age_s": (as_of - newest) / SECOND if newest is not None else None,
            }
        out_rows.append({"entity": dict(row), "values": values, "freshness": fresh})
    return {**snap.meta(), "rows": out_rows}


def one_entity(body: dict[str, Any]) -> dict[str, Any]:
    """The body of GET /features (:class:`~services.online_api.schemas.EntityFeaturesResponse`): its one
    row's ``entity``, ``values`` and ``freshness`` also at the top level, beside ``as_of`` and
    ``batch_cutoff`` (docs/design.md §5); ``rows`` stays, the same shape as POST's."""
    row = body["rows"][0]
    return {**body, "entity": row["entity"], "values": row["values"], "freshness": row["freshness"]}


def _epoch_ms(value: Any) -> Any:
    """A JSON number in ``event_timestamp`` read as an event's time is (design §2: epoch milliseconds, the
    same bounds); anything else unchanged. Raises ValueError naming a number out of range."""
    if value.__class__ is str or isinstance(value, bool) or not isinstance(value, int | float):
        return value
    if value != value:  # NaN: JSON has none, so a row without the key (the null check names it)
        return None
    us = event_time_of(value, "event_timestamp")
    if isinstance(us, Rejection):
        raise ValueError(f"{value!r} is not a timestamp in epoch milliseconds ({us.reason})")
    return EPOCH + timedelta(microseconds=us)  # a datetime: years past 2262 too (pandas' ns end there)


def unreadable_message(raw_uri: str, exc: BaseException) -> str:
    """The 503 detail when ``raw_uri`` cannot be read: the table, the error's type and its first line."""
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return (
        f"raw_events ({raw_uri}) could not be read: {type(exc).__name__}: {first}; a damaged or missing file or "
        "Delta log entry, or storage unreachable (the API log has the traceback); retry later"
    )


def historical_features(
    rows: Sequence[Mapping[str, object]], features: Sequence[str], full_feature_names: bool, raw_uri: str, max_rows: int
) -> list[dict[str, object]]:
    """Point-in-time values per entity row from ``raw_events`` (blocking: run it in a worker thread).

    Raises:
        RequestError: 413 above ``max_rows``; 422 for a bad timestamp, a missing column, an unknown
            feature (the message names it).
    """
    import math

    import pandas as pd
    import pyarrow as pa
    from deltalake.exceptions import DeltaError

    from fstore.core.pit import TIMESTAMP_COLUMN, PointInTimeError, resolve, to_utc
    from fstore.offline.local import get_historical_features
    from fstore.plan_source import current_plan

    if len(rows) > max_rows:
        raise RequestError(
            413, f"{len(rows)} rows requested; the limit is {max_rows} per request (FSTORE_API_MAX_ROWS)"
        )
    follow()  # an apply or backfill that has just changed the features (one `stat`)
    refs = [r.strip() for item in features for r in item.split(",") if r.strip()]
    if not rows:  # no rows, no values: the features named must still exist
        try:
            resolve(current_plan(), refs, full_feature_names)
        except PointInTimeError as exc:
            raise RequestError(422, str(exc.args[0] if exc.args else exc)) from None
        return []
    df = pd.DataFrame(list(rows), dtype=object)  # labels as given: [1, None] made float would change 2**53 + 1
    if TIMESTAMP_COLUMN in df.columns:
        try:
            df[TIMESTAMP_COLUMN] = to_utc(df[TIMESTAMP_COLUMN].map(_epoch_ms))
        except (ValueError, TypeError) as exc:
            raise RequestError(422, f"column '{TIMESTAMP_COLUMN}': {exc}") from None
    try:
        out = get_historical_features(
            df, refs, plan=current_plan(), raw_uri=raw_uri, full_feature_names=full_feature_names
        )
    except (PointInTimeError, KeyError) as exc:
        raise RequestError(422, str(exc.args[0] if exc.args else exc)) from None
    except (OSError, pa.ArrowException, DeltaError) as exc:  # a damaged or unreachable table: not a 500 (a bug)
        logging.getLogger("fstore.api").error("POST /historical-features: raw_events unreadable", exc_info=exc)
        raise RequestError(503, unreadable_message(raw_uri, exc)) from exc
    records: list[dict[str, object]] = []
    for rec in out.to_dict(orient="records"):
        clean: dict[str, object] = {}
        for k, v in rec.items():
            if isinstance(v, pd.Timestamp):
                clean[str(k)] = v.isoformat()
            elif isinstance(v, float) and math.isnan(v):
                clean[str(k)] = None
            else:
                clean[str(k)] = v.item() if hasattr(v, "item") else v
        records.append(clean)
    return records
