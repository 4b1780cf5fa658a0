"""``fstore backfill --view V``: build what an applied change needs (docs/design.md §3 "Evolution").

After ``fstore apply`` the new or redefined features of a view are **pending**: the API refuses them
(409) because their tiles do not hold what they need. The backfill builds those tiles in both layers:

1. **batch**: the nightly job is run again for the last run date (``fstore batch --date``), with the
   applied plan: every view's batch tiles and a new batch view version, published with the same cutover C;
2. **speed**: the stream workers are held (:mod:`fstore.redis.hold`: each finishes what it took — tiles,
   future events due, raw sink flushed — and acknowledges with its processing clock B), then the view's
   speed hashes are rebuilt from ``raw_events``: the first copy of every event from C on (the rule of
   ``fstore repair``), events before the smallest B folded into tiles, later ones stored as exact
   future-event fields (the workers move them when their time comes, with the applied plan's measures).
   Before its speed hashes are deleted, every feature of the view is recorded pending (refused), so no
   reader sees half-rebuilt tiles;
3. the view's features stop being pending (the applied record is rewritten), then the workers resume.

The view's de-duplication markers are rebuilt with its tiles, one per event rebuilt, so a later copy of
those events is still skipped, while an event a writer counted but never stored in ``raw_events`` (a worker
or an ingest killed between its tiles and its raw commit) loses its marker with its tiles: its redelivery
(the worker's restart, the file ingested again) counts it in this view and nowhere else. The hold has a
TTL the backfill refreshes: if the backfill dies, the workers resume by themselves and the view's features
stay pending — all of them once its speed hashes were touched (run it again).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from fstore import applied, plan_source
from fstore.clock import Clock, wall_clock
from fstore.core.event_schema import EventSchema
from fstore.core.expr import Kind
from fstore.core.functions import State
from fstore.core.plan import View
from fstore.core.timeutil import SECOND, to_date
from fstore.core.view_tiles import ViewTiler
from fstore.core.view_tiles_frame import member
from fstore.redis import hold
from fstore.redis.connect import AdminClient, admin_client
from fstore.redis.free_keys import view_keys
from fstore.redis.layout import (
    M2_STAT,
    POINTER_KEY,
    BatchPointer,
    distinct_field,
    field,
    future_field,
    future_value,
    marker_key,
    speed_key,
)
from jobs.batch.settings import BatchSettings
from jobs.repair import speed_events
from jobs.stream.settings import StreamSettings
from jobs.stream.speed_lua import marker_generation
from jobs.stream.tile_steps import view_steps

CHUNK = 2_000  # Redis commands per pipeline


class BackfillRefused(RuntimeError):
    """The backfill cannot run now; the message says what to do."""


@dataclass
class BackfillReport:
    """What one backfill did."""

    view: str
    run_date: date | None = None
    kept_version: str | None = None  # the batch view serving, kept as it is (--skip-batch)
    cutover: int | None = None
    workers: int = 0
    events: int = 0
    tiles: int = 0
    future: int = 0
    served: tuple[str, ...] = ()

    def summary(self) -> str:
        batch = (
            f"batch view rebuilt for {self.run_date}"
            if self.run_date
            else f"batch view {self.kept_version} kept (--skip-batch)"
            if self.kept_version
            else "no batch view published yet"
        )
        return (
            f"{self.view}: {batch}; speed tiles rebuilt from {self.events} events since the cutover "
            f"({self.tiles} tile measures, {self.future} future events) with {self.workers} worker(s) held; "
            f"now served: {', '.join(self.served) or 'nothing was pending'}"
        )


def backfill(
    view_name: str,
    batch: BatchSettings,
    stream: StreamSettings,
    *,
    run_batch: Callable[[date], None] | None,
    timeout: float = 60.0,
    clock: Clock = wall_clock,
    say: Callable[[str], object] = print,
    progress: Callable[[int], object] | None = None,
) -> BackfillReport:
    """Build the tiles the applied plan needs for ``view_name`` (see the module docstring).

    Args:
        run_batch: runs the nightly job for a run date (``None``: skip the batch step).
        timeout: seconds to wait for the live workers to hold.

    Raises:
        BackfillRefused: nothing applied, an unknown view, workers that do not hold, or a plan applied again
            while this ran.
    """
    repo = plan_source.repo_dir()
    record = applied.load(repo)
    if record is None:
        raise BackfillRefused(f"nothing was applied in {repo}: run `fstore apply` first")
    try:
        view = record.plan.view(view_name)
    except KeyError as exc:
        raise BackfillRefused(str(exc.args[0])) from None
    plan_source.use_plan(record.plan, frozenset(record.pending))
    report = BackfillReport(view.name)
    client = admin_client(stream.redis_url, stream.redis_cluster, socket_timeout=30, socket_connect_timeout=5)
    try:
        pointer = BatchPointer.loads(client.get(POINTER_KEY))
        if pointer is not None and run_batch is not None:
            report.run_date = to_date(pointer.cutover) - timedelta(days=1)
            say(f"batch: the nightly job for {report.run_date} with the applied plan")
            run_batch(report.run_date)
            pointer = BatchPointer.loads(client.get(POINTER_KEY))
        elif pointer is not None:
            report.kept_version = pointer.version
        now = clock()
        since = pointer.cutover if pointer is not None else now - record.plan.longest_window - record.plan.largest_hop
        report.cutover = since
        token = uuid.uuid4().hex
        try:
            hold.hold(client, token)
        except hold.HoldTaken as exc:
            raise BackfillRefused(str(exc)) from None
        try:
            say(f"speed: holding the stream workers (up to {timeout:.0f} s)")
            clocks = hold.wait_held(client, token, timeout)
            report.workers = len(clocks)
            boundary = min(clocks.values()) if clocks else clock()
            rows = speed_events(
                stream.table("raw_events"), since, now - stream.marker_ttl_s * SECOND, record.plan.schema
            )
            hold.hold(client, token)
            report.served = _refuse_view_while_rebuilt(repo, record, view)
            report.events, report.tiles, report.future = rebuild_speed(
                client,
                view,
                record.plan.schema,
                rows,
                boundary,
                stream.tile_ttl_s,
                progress,
                marker_ttl_s=stream.marker_ttl_s,
                now=clock(),
                keepalive=lambda: hold.hold(client, token),
            )
            hold.hold(client, token)
            latest = _same_plan(repo, record)
            applied.save(repo, latest.without_pending({view.name}))
        except hold.HoldTaken as exc:
            raise BackfillRefused(str(exc)) from None
        finally:
            hold.release(client, token)
        return report
    finally:
        client.close()


def _same_plan(repo: Path, record: applied.AppliedPlan) -> applied.AppliedPlan:
    """The applied record now, which must still hold ``record``'s plan."""
    latest = applied.load(repo)
    if latest is None or latest.fingerprint != record.fingerprint:
        raise BackfillRefused("the plan was applied again while this ran: run `fstore backfill` again")
    return latest


def _refuse_view_while_rebuilt(repo: Path, record: applied.AppliedPlan, view: View) -> tuple[str, ...]:
    """Record every feature of ``view`` as pending before its speed hashes are deleted and rebuilt: readers
    (the API, the Feast online store) refuse them until the rebuild is complete and :func:`backfill` clears
    them — never a value from half-rebuilt tiles, and a backfill that dies part-way leaves the whole view
    refused until it is run again. Returns the view's features that were pending before."""
    latest = _same_plan(repo, record)
    before = tuple(r for r in latest.pending if r.partition(":")[0] == view.name)
    whole = tuple(dict.fromkeys([*latest.pending, *(f"{view.name}:{f}" for f in view.feature_names)]))
    building = tuple(sorted({*latest.building, view.name}))
    applied.save(repo, replace(latest, pending=whole, building=building))
    return before


def rebuild_speed(
    client: AdminClient,
    view: View,
    schema: EventSchema,
    rows: Sequence[dict[str, Any]],
    boundary: int,
    ttl_s: int,
    progress: Callable[[int], object] | None = None,
    *,
    marker_ttl_s: int,
    now: int,
    keepalive: Callable[[], object] | None = None,
) -> tuple[int, int, int]:
    """Replace the speed hashes of ``view`` with the tiles of ``rows`` before ``boundary`` and the exact
    fields of those from ``boundary`` on, and the view's de-duplication markers with one per row (marker
    generation of ``now``, the processing clock, for a marker TTL of ``marker_ttl_s``); returns (events, tile
    measures, future events).

    The markers follow the tiles: an event a writer counted but never stored in ``raw_events`` (a worker or an
    ``fstore ingest`` killed between its tiles and its raw commit) is not in the rebuilt tiles, so it must
    not keep its marker either — when the worker's restart (Kafka redelivers it) or the file ingested again
    brings it, this view counts it while the views not rebuilt, whose markers stay, skip it. The ``mv``
    markers (future events moved into the tiles) go too: the rebuild decides anew which future events are
    tiles and which are fields. ``keepalive`` is called between two pipelines of writes (the backfill renews
    its hold there, so a long rebuild never outlives it)."""
    key, ts = view.entity.join_key, schema.timestamp_field
    mine = [r for r in rows if r.get(key) is not None]
    tiles = ViewTiler(view, ts).build(r for r in mine if r[ts] < boundary)  # built before anything is deleted
    states = {(g.hop, tm.measure): frozenset(tm.states) for g in view.tiles for tm in g.measures}
    kinds = {m.name: m.kind for m in view.measures}
    writes: dict[str, dict[str, str]] = {}
    for tk, tile in tiles.items():
        h = writes.setdefault(speed_key(view.name, tk.entity, tk.start), {})
        for m, acc in tile.items():
            need = states[(tk.size, m)]
            h[field(tk.size, tk.start, m, "c")] = str(acc.count)
            if kinds[m] is Kind.NUMBER:
                h[field(tk.size, tk.start, m, "s")] = repr(acc.total)
                h[field(tk.size, tk.start, m, "n")] = repr(acc.minimum)
                h[field(tk.size, tk.start, m, "x")] = repr(acc.maximum)
                if State.M2 in need:
                    h[field(tk.size, tk.start, m, M2_STAT)] = repr(acc.m2)
            if State.DISTINCT in need:
                for x in acc.distinct or ():  # as the stream and the batch write them (-0.0 as 0.0)
                    h[distinct_field(tk.size, tk.start, m, member(x))] = "1"
    steps = view_steps(view, schema)
    future = 0
    id_field = steps.id_field
    for r in mine:
        if r[ts] >= boundary and (measured := steps.measured(r)):
            writes.setdefault(speed_key(view.name, str(r[key]), r[ts]), {})[future_field(r[ts], str(r[id_field]))] = (
                future_value(measured)
            )
            future += 1
    generation, marker_left = marker_generation(now, marker_ttl_s)
    markers: dict[str, dict[str, str]] = {}
    for r in mine:
        markers.setdefault(marker_key(view.name, str(r[key]), generation), {})[str(r[id_field])] = "1"
    # The markers first: a backfill failing part-way (Redis, Ctrl-C) leaves events marked but not counted — its
    # features stay pending, run it again — never counted but unmarked, which a redelivered copy would count twice.
    hashes = [(k, m, marker_left) for k, m in markers.items()] + [(k, m, ttl_s) for k, m in writes.items()]
    doomed = [k for k in view_keys(client, view.name) if k.rsplit(":", 2)[-2] in ("s", "m", "mv")]
    pipe = client.pipeline(transaction=False)
    for k in doomed:
        pipe.unlink(k)
    pipe.execute()
    done = 0
    for k, mapping, expiry in hashes:
        pipe.hset(k, mapping=mapping)  # type: ignore[arg-type]
        pipe.expire(k, expiry)
        done += 1
        if done % CHUNK == 0:
            pipe.execute()
            if keepalive is not None:
                keepalive()
            if progress is not None:
                progress(CHUNK)
    pipe.execute()
    if progress is not None:
        progress(done % CHUNK)
    return len(mine), sum(len(t) for t in tiles.values()), future


def run_batch_command(env: dict[str, str] | None = None) -> Callable[[date], None]:
    """A ``run_batch`` that runs ``fstore batch --date D`` (the installed command, this environment)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("fstore")

    def run(day: date) -> None:
        started = time.perf_counter()
        cmd = [str(exe) if exe.exists() else "fstore", "batch", "--date", day.isoformat(), "--no-progress"]
        done = subprocess.run(cmd, env={**os.environ, **(env or {})}, check=False)
        if done.returncode != 0:
            raise BackfillRefused(
                f"`{' '.join(cmd)}` failed (exit {done.returncode}); nothing was changed in the speed layer and "
                "the features stay pending"
            )
        print(f"batch: done in {time.perf_counter() - started:.0f} s")

    return run
