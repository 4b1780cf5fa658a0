"""The worker's two sinks: speed tiles in Redis (exactly once per event_id) and the raw event log.

:class:`TileWriter` pre-aggregates a batch and applies it with the optimistic Lua script of
:mod:`jobs.stream.speed_lua` — one pipelined round trip, plus one for the subgroups that held a duplicate.
:class:`RawSink` buffers valid copies and appends them to Delta ``raw_events`` in micro-batches bounded by
size and age; whoever commits Kafka offsets does it only after the flush that holds them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa
from redis.exceptions import NoScriptError

from fstore.clock import Clock, wall_clock
from fstore.core.event_schema import EventSchema
from fstore.core.events import Row
from fstore.core.plan import Plan
from fstore.delta import raw_log
from fstore.delta.event_index import EventIndex, date_numbers, id_hashes
from fstore.redis.cluster import ClusterPool
from fstore.redis.resp import round_trip
from jobs.stream.claims import CLAIM, CLAIM_SHA, pack_claims
from jobs.stream.pipeline import Claims
from jobs.stream.speed_lua import (
    APPLY_TILES,
    APPLY_TILES_SHA,
    ScriptCall,
    Subgroup,
    group_events,
    marker_generation,
    move_subgroups,
    plan_calls,
)
from jobs.stream.tile_steps import ViewSteps, view_steps

#: A future event stored as a field: the compiled view, the entity, the row.
Held = tuple[ViewSteps, str, Row]

log = logging.getLogger(__name__)

MAX_ROUNDS = 20


class TilePlan:
    """A batch's tile updates, packed for Redis ahead of time (:meth:`TileWriter.plan`).

    Holds what is still to apply (the subgroups), the script calls of the next round with their request
    bytes, and the event_ids found to be duplicates so far; :meth:`TileWriter.send` advances it round by
    round, so sending the same plan again after a failure resumes where it stopped.
    """

    __slots__ = (
        "calls",
        "events",
        "generation",
        "groups",
        "packed",
        "parts",
        "pending",
        "sent",
        "skipped",
        "subgroups",
    )

    def __init__(
        self,
        pending: list[Subgroup],
        generation: tuple[int, int],
        events: Sequence[Row] = (),
        groups: dict[tuple[str, str], Subgroup] | None = None,
    ) -> None:
        self.pending = pending
        self.events, self.groups = events, groups or {}  # the rows planned, their subgroups by (view, entity)
        self.parts: list[bytes] = []  # the request of each call
        self.generation = generation  # the markers' (generation, seconds left), fixed for every round
        self.subgroups = tuple(pending)  # all of them: once sent, each holds what it applied
        self.calls: list[ScriptCall] = []
        self.packed: bytes | list[bytes] = b""  # the calls' requests, joined (standalone) or one per call (cluster)
        self.skipped: set[str] = set()
        self.sent = False  # the first round's request has been written (or there was nothing to send)

    def stored_future(self) -> list[Held]:
        """``(view steps, entity, row)`` of the future events this plan stored as fields (call once sent)."""
        return [(sub.steps, sub.entity, ev) for sub in self.subgroups if not sub.moving for ev in sub.future]

    def mark_sent(self, on_sent: Callable[[], None] | None) -> None:
        """Record that the first request is out; call ``on_sent`` the first time only."""
        if not self.sent:
            self.sent = True
            if on_sent is not None:
                on_sent()


class TileWriter:
    """Applies batches of candidate events to the speed tiles, skipping event_ids already counted.

    Each round is one pipelined request of ``EVALSHA`` calls written straight to a pooled connection:
    the request bytes are built by :meth:`ScriptCall.packed` (in :meth:`plan`, which the worker runs
    while Redis still works on the previous batch) instead of redis-py's per-argument packing.

    On a Redis Cluster (``client`` a :class:`fstore.redis.cluster.ClusterPool`) each script call carries
    the subgroups of one hash slot and the pool sends one pipeline per node; a call that fails (its node
    down, ``NOSCRIPT`` on a promoted replica, ...) leaves its subgroups pending while the others' results
    are kept, so a retry re-sends only what may not have landed.

    Args:
        client: a ``redis.asyncio`` client (``decode_responses=False``) or a ``ClusterPool``.
        plan: the compiled plan: its feature views are maintained (or only ``views``, names of some).
        marker_ttl: seconds a de-duplication marker lives.
        tile_ttl: seconds a tile hash lives after its last write.
        chunk: max markers per script call on a standalone Redis (a Redis Cluster client,
            :class:`~fstore.redis.cluster.ClusterPool`, gets one call per hash slot).
        clock: the processing clock (UTC epoch µs) that picks the markers' generation when a plan is
            given no ``now``.
    """

    def __init__(
        self,
        client: Any,
        plan: Plan,
        marker_ttl: int,
        tile_ttl: int,
        *,
        views: Sequence[str] | None = None,
        chunk: int = 4_000,
        clock: Clock = wall_clock,
    ) -> None:
        self.client, self.compiled = client, plan
        chosen = plan.views if views is None else [plan.view(name) for name in views]
        self.views = tuple(view_steps(v, plan.schema) for v in chosen)
        self.keys = tuple(dict.fromkeys(vs.key for vs in self.views))  # the join keys, in a claim's value
        self.marker_ttl, self.tile_ttl = marker_ttl, tile_ttl
        self.cluster, self.chunk, self.clock = isinstance(client, ClusterPool), chunk, clock

    def plan(self, events: Sequence[Row], now: int | None = None) -> TilePlan:
        """Pre-aggregate rows (unique by id) and pack the first round (pure CPU, no I/O).

        ``now`` is the processing clock: events with a time ``>= now`` are stored as exact future
        fields rather than folded into tiles (:mod:`jobs.stream.speed_lua`).
        """
        generation = marker_generation(self.clock() if now is None else now, self.marker_ttl)
        groups = group_events(self.views, events, now)
        plan = TilePlan(list(groups.values()), generation, events, groups)
        self._pack(plan)
        return plan

    async def claim(self, claims: Claims, now: int | None = None) -> set[str]:
        """Claim a batch's first copies (their event_ids, payload hashes and rows, ``None`` for one too old for
        the tiles) and return the ids whose rows must not count: another copy claimed them first and its markers do not
        cover these rows' entities (:mod:`jobs.stream.claims`). Safe to repeat: a copy finds its own claim."""
        if not claims:
            return set()
        now_ = self.clock() if now is None else now
        calls = pack_claims(claims, self.keys, *marker_generation(now_, self.marker_ttl))
        for _ in range(MAX_ROUNDS):
            if self.cluster:
                replies = await self.client.execute(calls.packed, calls.slots)
            else:
                try:
                    replies = await round_trip(self.client, b"".join(calls.packed), len(calls.packed))
                except NoScriptError:
                    replies = [NoScriptError()]
            errors = [r for r in replies if isinstance(r, BaseException)]
            if not errors:
                return calls.to_drop(replies)
            if not all(isinstance(e, NoScriptError) for e in errors):
                raise next(e for e in errors if not isinstance(e, NoScriptError))
            await self._load(CLAIM, CLAIM_SHA)
        raise RuntimeError(f"event_id claims: scripts still missing after {MAX_ROUNDS} rounds")

    def drop(self, plan: TilePlan, lost: set[str]) -> set[str]:
        """Take the rows whose ids are in ``lost`` out of an unsent plan; returns the ids it held. Only the
        subgroups of those rows are re-aggregated and only their script calls packed again."""
        if not lost or not self.views:
            return set()
        idf = self.views[0].id_field
        rows = [ev for ev in plan.events if ev[idf] in lost]
        if not rows:
            return set()
        dropped = {ev[idf] for ev in rows}
        touched: dict[int, Subgroup] = {}
        for vs in self.views:
            for ev in rows:
                entity = ev[vs.key]
                sub = None if entity is None else plan.groups.get((vs.name, str(entity)))
                if sub is not None and id(sub) not in touched:
                    touched[id(sub)] = sub
                    sub.rebuild(dropped)
        generation, marker_ttl = plan.generation
        calls: list[ScriptCall] = []
        parts: list[bytes] = []
        for call, part in zip(plan.calls, plan.parts, strict=True):
            if not any(id(sub) in touched for _, sub in call.subs):
                calls.append(call)
                parts.append(part)
                continue
            remaining = [sub for _, sub in call.subs if sub.events]
            for again in plan_calls(
                remaining, marker_ttl, self.tile_ttl, cluster=self.cluster, chunk=self.chunk, generation=generation
            ):
                calls.append(again)
                parts.append(again.packed())
        plan.calls, plan.parts = calls, parts
        plan.packed = parts if self.cluster else b"".join(parts)
        plan.pending = [sub for call in calls for _, sub in call.subs]
        return dropped

    def stored_future(self, plan: TilePlan) -> list[Held]:
        """The future events a sent plan stored as fields (:meth:`TilePlan.stored_future`)."""
        return plan.stored_future()

    def plan_moves(self, due: Sequence[Held]) -> TilePlan:
        """Move future events whose time has come from their fields into the tiles (only events this
        worker stored as fields: :meth:`TilePlan.stored_future`)."""
        plan = TilePlan(move_subgroups(due), marker_generation(self.clock(), self.marker_ttl))
        self._pack(plan)
        return plan

    def _pack(self, plan: TilePlan) -> None:
        generation, marker_ttl = plan.generation
        plan.calls = list(
            plan_calls(
                plan.pending, marker_ttl, self.tile_ttl, cluster=self.cluster, chunk=self.chunk, generation=generation
            )
        )
        parts = plan.parts = [c.packed() for c in plan.calls]
        plan.packed = parts if self.cluster else b"".join(parts)

    async def apply(self, events: Sequence[Row], now: int | None = None) -> set[str]:
        """Apply rows (unique by id within the call) and return the ids skipped as duplicates."""
        return await self.send(self.plan(events, now))

    async def send(self, plan: TilePlan, on_sent: Callable[[], None] | None = None) -> set[str]:
        """Apply a plan and return the event_ids skipped as duplicates.

        Safe to repeat after any failure: a subgroup is applied with its markers atomically, so a retry
        reports what already landed as duplicates instead of counting it twice. ``on_sent`` is called
        once, as soon as the plan's first request is written or at once if there is nothing to send (the
        caller may then start on other work).
        """
        if not plan.pending:
            plan.mark_sent(on_sent)
        for _ in range(MAX_ROUNDS):
            if not plan.pending:
                return plan.skipped
            try:
                replies = await self._round(plan, on_sent)
            except NoScriptError:  # first use, or Redis restarted / flushed its scripts: load, redo the round
                await self._load_script()
                continue
            retry: dict[int, tuple[Subgroup, set[str]]] = {}
            plan.pending, failed, load = [], None, False
            for call, reply in zip(plan.calls, replies, strict=True):
                if isinstance(reply, BaseException):  # cluster: this call's node failed; the others stand
                    plan.pending += [sub for _, sub in call.subs]
                    load = load or isinstance(reply, NoScriptError)
                    failed = failed or (None if isinstance(reply, NoScriptError) else reply)
                    continue
                for idx in reply:
                    sub, event_id = call.owner(int(idx))
                    retry.setdefault(id(sub), (sub, set()))[1].add(event_id)
            for sub, drop in retry.values():
                plan.skipped |= drop
                sub.rebuild(drop)
                if sub.events:
                    plan.pending.append(sub)
            if plan.pending:
                self._pack(plan)
            if failed is not None:
                raise failed
            if load:
                await self._load_script()
        raise RuntimeError(f"speed tiles: duplicates still reported after {MAX_ROUNDS} rounds")

    async def _load(self, script: str, want: str) -> None:
        sha = await self.client.script_load(script)
        sha = sha.decode() if isinstance(sha, bytes) else str(sha)
        if sha != want:
            raise RuntimeError(f"Redis named a stream script {sha}, expected {want}") from None

    async def _load_script(self) -> None:
        await self._load(APPLY_TILES, APPLY_TILES_SHA)

    async def _round(self, plan: TilePlan, on_sent: Callable[[], None] | None) -> list[Any]:
        """Send the plan's packed calls in one write and read every reply (the first error is raised once
        all replies are read, so the connection stays in step; anything else drops the connection). Not
        retried here: :meth:`apply` decides what to send again. On a cluster: one pipeline per node, the
        replies with errors in place."""
        if self.cluster:
            plan.mark_sent(on_sent)
            slots = [call.subs[0][1].slot for call in plan.calls]
            return await self.client.execute(plan.packed, slots)  # type: ignore[no-any-return]
        assert isinstance(plan.packed, bytes)
        return await round_trip(
            self.client, plan.packed, len(plan.calls), retry_broken=False, on_sent=lambda: plan.mark_sent(on_sent)
        )


class RawSink:
    """Buffers valid event copies and appends them to ``raw_events`` in micro-batches.

    A batch's rows are converted to Arrow when the batch is validated (:meth:`to_rows`, before its tiles are
    applied), so a value that ``raw_events`` cannot hold fails there — where the worker can still
    isolate and dead-letter the message — never in a flush that holds many batches. Each buffered chunk
    carries opaque *tokens* (the Kafka messages it came from); :meth:`flush` returns the tokens of what it
    wrote, in order, so the caller commits them only once the rows are stored.

    Every copy is stored (at least once: readers de-duplicate), but a copy whose event_id already has its
    winning copy on another day — stored before, or earlier in the same flush — is first recorded as
    superseded (:mod:`fstore.delta.event_index`), so a reader of its day alone does not count it.

    Args:
        uri: the ``raw_events`` table.
        schema: the plan's event schema (the table's columns, :func:`fstore.delta.raw_log.raw_schema`).
        max_events: flush when this many rows are buffered.
        max_age_s: flush when the oldest buffered chunk is this old.
        clock: monotonic seconds (injectable).
    """

    def __init__(
        self,
        uri: str,
        schema: EventSchema,
        max_events: int,
        max_age_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.uri, self.schema, self.max_events, self.max_age_s, self.clock = uri, schema, max_events, max_age_s, clock
        self._tables: list[pa.Table] = []
        self._rows = 0
        self._tokens: list[Any] = []
        self._since: float | None = None
        self._lock = asyncio.Lock()
        self.index = EventIndex(uri, id_column=schema.id_field)

    @property
    def buffered(self) -> int:
        """Rows waiting for the next flush."""
        return self._rows

    def to_rows(self, events: Sequence[Row], hashes: Sequence[str], ingested_at: Sequence[int]) -> pa.Table:
        """The rows of a batch in the ``raw_events`` schema (raises on a value the table cannot hold)."""
        return raw_log.rows_table(self.schema, events, hashes, ingested_at)

    def add(self, rows: pa.Table, tokens: Sequence[Any]) -> None:
        """Buffer rows made by :meth:`to_rows` (possibly none) and the tokens to release once they are written."""
        if self._since is None:
            self._since = self.clock()
        if rows.num_rows:
            self._tables.append(rows)
            self._rows += rows.num_rows
        self._tokens += tokens

    def warm(self) -> None:
        """Build a one-row table once, so the first real batch does not pay for lazy imports (pyarrow
        loads pandas on its first timestamp cast: most of a second of CPU, in the middle of the stream),
        and load the index of the event_ids already stored."""
        raw_log.rows_table(self.schema, [raw_log.sample_row(self.schema)], ["0"], [0])
        self.index.refresh()

    def due(self) -> bool:
        """Whether the buffer reached its size or age bound."""
        if self._since is None:
            return False
        return self._rows >= self.max_events or self.clock() - self._since >= self.max_age_s

    def _take(self) -> tuple[list[pa.Table], list[Any]]:
        tables, tokens = self._tables, self._tokens
        self._tables, self._tokens, self._rows, self._since = [], [], 0, None
        return tables, tokens

    async def flush(self) -> tuple[list[Any], int]:
        """Write everything buffered (one Delta commit, in a thread) and return ``(tokens, rows)``.

        Flushes are serialised, so tokens come back in the order they were added. On a write error the
        buffer is put back in front and the error propagates: nothing is released unwritten.
        """
        async with self._lock:
            tables, tokens = self._take()
            if not tokens and not tables:
                return [], 0
            rows = sum(t.num_rows for t in tables)
            try:
                if tables:
                    await asyncio.to_thread(self._write, tables)
            except BaseException:
                self._tables, self._tokens = tables + self._tables, tokens + self._tokens
                self._rows += rows
                self._since = self.clock() - self.max_age_s
                raise
            return tokens, rows

    def flush_sync(self) -> tuple[list[Any], int]:
        """Blocking flush for shutdown paths where the event loop is going away."""
        tables, tokens = self._take()
        if tables:
            self._write(tables)
        return tokens, sum(t.num_rows for t in tables)

    def _write(self, tables: Sequence[pa.Table]) -> None:
        """Mark the copies superseded by a winner on another day, then append every copy (in that order:
        a crash in between leaves a mark without rows, which is harmless, never rows without their mark)."""
        index = self.index
        index.refresh()
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        ids = table.column(self.schema.id_field)
        days = date_numbers(table.column("event_date"))
        hashes = id_hashes(ids)  # once for both steps
        verdicts = index.classify(ids, days, hashes)
        index.write_marks(index.superseded(ids, days, verdicts))
        raw_log.append_raw(self.uri, table, self.schema)
        index.committed()
        index.record(ids, days, verdicts, hashes)
