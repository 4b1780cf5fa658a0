"""Applying a compiled plan (docs/design.md §3 "Evolution"): record it with what it leaves pending, and free
the Redis state of what it removed once every live stream worker runs it.

Two entry points run this: ``fstore apply`` (:mod:`fstore.commands.apply`, which also runs ``feast apply``)
and a plain ``feast apply`` of a repository whose online store is fstore's
(:meth:`fstore.feast.online_store.FstoreOnlineStore.update`), so registering a change with Feast always
leaves its new features refused until ``fstore backfill`` has built them, and frees what it removed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fstore import applied
from fstore.core.plan_diff import PlanChange, diff, retyped
from fstore.core.plan_error import PlanError
from fstore.core.plan_json import fingerprint
from fstore.settings import get_settings
from fstore.topics import events_topic

if TYPE_CHECKING:
    from fstore.core.plan import Plan
    from fstore.redis.connect import AdminClient

#: Default seconds to wait for the live stream workers to run the new plan before freeing removed state.
WAIT_S = 15.0
#: Set (to ``1``) by a caller that records fstore's plan itself around a ``feast apply`` it runs, so the
#: online store's ``feast apply`` hook does not record it a second time.
ENV_CALLER_RECORDS = "FSTORE_APPLY_RECORDS_ITSELF"

Say = Callable[[str], None]


class RedisUnreachable(RuntimeError):
    """Redis is needed (to free removed state) but does not answer: nothing was recorded."""


class NotFreed(RuntimeError):
    """The removed state is left (a live worker did not follow in time, or Redis failed); the record says what
    is left and the next apply frees it first."""


def previous(root: Path, say: Say) -> applied.AppliedPlan | None:
    """The record of ``root`` before this apply (an unreadable one counts as never applied, said so)."""
    try:
        return applied.load(root)
    except ValueError as exc:
        say(f"fstore: {exc}; treating the repository as never applied")
        return None


def describe(old: applied.AppliedPlan | None, root: Path, change: PlanChange, say: Say) -> None:
    """Say what applying ``change`` over ``old`` does."""
    if old is None:
        say(f"no plan applied yet in {root}: this apply records the baseline")
        return
    lines = change.lines()
    say("\n".join(lines) if lines else "no change")
    if old.unfreed:
        say(f"left to free by the last apply: {show_unfreed(old)} (this apply frees it first)")


def topic_mismatch(plan: Plan, events_topic: str) -> str | None:
    """The warning when the Kafka topic the repository's stream source declares is not ``events_topic``, the
    one the stream worker, ``fstore publish`` and ``fstore services`` use (:mod:`fstore.topics`: only an
    ``FSTORE_EVENTS_TOPIC`` that names another topic does that); ``None`` when they agree or the source
    declares none."""
    if not plan.topic or plan.topic == events_topic:
        return None
    return (
        f"the stream source {plan.source or '(unnamed)'} declares Kafka topic {plan.topic!r}, but "
        f"FSTORE_EVENTS_TOPIC={events_topic!r} overrides it for the stream worker, fstore publish and fstore "
        f"services: events sent to {plan.topic!r} are not read. Unset FSTORE_EVENTS_TOPIC (or set it to "
        f"{plan.topic!r}) where they run, or declare topic={events_topic!r} in the source"
    )


def topic_warning(plan: Plan) -> str | None:
    """:func:`topic_mismatch` against the topic this process would read (:func:`fstore.topics.events_topic`);
    ``None`` also when the settings cannot be read (a bad ``FSTORE_*`` value is for the command that needs
    it to report, not for ``plan``)."""
    try:
        topic = events_topic(get_settings(), plan.topic)
    except Exception:
        return None
    return topic_mismatch(plan, topic)


def removed(old: Plan, new: Plan, change: PlanChange) -> tuple[tuple[str, ...], tuple[applied.Unfreed, ...]]:
    """The views ``new`` removed, and what it removed from kept views: tile series (view, hop µs, measure, "")
    and states kept series shed (view, hop µs, measure, state)."""
    kept = {v.name for v in new.views}
    views = tuple(sorted({v.name for v in old.views} - kept))
    whole = {(sr.view, sr.hop, sr.measure, "") for sr in change.free if sr.view in kept}
    shed = {(sr.view, sr.hop, sr.measure, str(state)) for sr, state in change.shed}
    return views, tuple(sorted(whole | shed))


def show_unfreed(record: applied.AppliedPlan) -> str:
    """What ``record`` has still to free, in words."""
    return f"the keys of view(s) {list(record.unfreed_views)} and {len(record.unfreed_series)} tile series"


def redis_client(url: str | None = None, cluster: bool | None = None) -> AdminClient:
    """A client of the Redis at ``url`` (default: this process's settings), checked.

    Raises:
        RedisUnreachable: it does not answer (the apply must record nothing).
    """
    from fstore.redis.connect import admin_client
    from fstore.settings import Settings, load_settings

    if url is None or cluster is None:
        s = load_settings(Settings)  # not the cached settings: the environment of this command
        url = s.redis_url if url is None else url
        cluster = s.redis_cluster if cluster is None else cluster
    try:
        client = admin_client(url, cluster, socket_timeout=5, socket_connect_timeout=2)
        client.ping()
    except Exception as exc:
        raise RedisUnreachable(
            f"Redis is unreachable ({type(exc).__name__}: {exc}); the Redis state of removed features could not be "
            "freed, so fstore's record is not changed: start Redis and apply again"
        ) from None
    return client


class Applying:
    """One apply of ``new`` to the repository ``root``: :meth:`prepare` (checks, and frees what the last apply
    left), then whatever registers it with Feast, then :meth:`record` (records it and frees what it removed)."""

    def __init__(
        self, root: Path, new: Plan, say: Say, warn: Say, redis: Callable[[], AdminClient] = redis_client
    ) -> None:
        """Args:
        root: the repository.
        new: its compiled plan.
        say: where to say what happens.
        warn: where to warn.
        redis: the checked client of the Redis whose state the apply frees (called only when needed).

        Raises:
            PlanError: ``new`` changes what the applied plan stored in a way no backfill makes good (an event
                field's type: :func:`fstore.core.plan_diff.retyped`); nothing is changed.
        """
        self.root, self.new, self.say, self.warn, self.redis = root, new, say, warn, redis
        self.old = previous(root, warn)
        if self.old is not None and (problems := retyped(self.old.plan, new)):
            raise PlanError(problems)
        self.change = diff(self.old.plan, new, self.old.pending) if self.old is not None else diff(None, new)
        self.views, self.series = removed(self.old.plan, new, self.change) if self.old is not None else ((), ())
        self.client: AdminClient | None = None

    def describe(self) -> None:
        """Say what this apply changes (:func:`describe`), and warn of a declared topic the processes would not
        read (:func:`topic_warning`): what ``fstore plan`` shows and ``fstore apply`` starts with."""
        describe(self.old, self.root, self.change, self.say)
        if (mismatch := topic_warning(self.new)) is not None:
            self.warn(f"warning: {mismatch}")

    def prepare(self, wait_timeout: float) -> None:
        """Say what changes; get Redis if anything is to free, and free what the last apply left.

        Raises:
            RedisUnreachable: Redis is needed and does not answer (nothing changed).
            NotFreed: what the last apply left could not be freed (nothing changed).
        """
        old = self.old
        self.describe()
        if old is not None and (old.unfreed or self.views or self.series):
            self.client = self.redis()
        if old is not None and old.unfreed:
            assert self.client is not None
            self._free(old, wait_timeout, first=True)

    def record(self, wait_timeout: float) -> applied.AppliedPlan:
        """Record the plan with its pending features, then free what it removed.

        Raises:
            NotFreed: the plan is recorded, but what it removed is left (the record says so).
        """
        pending: tuple[str, ...] = ()
        building: tuple[str, ...] = ()
        old = self.old
        if old is None and (others := self._workers_on_other_plans()):
            # Never applied, and the live stream workers run another plan (their repository's source, as it was
            # when they started): what they built is unknown, so nothing is served until built.
            pending = tuple(f"{v.name}:{f}" for v in self.new.views for f in v.feature_names)
            building = tuple(sorted(v.name for v in self.new.views))
            names = ", ".join(f"{w} (plan {fp[:12]})" for w, fp in sorted(others.items()))
            self.warn(
                f"no plan was recorded yet, and live stream worker(s) run another one: {names}; what their tiles hold "
                "is unknown, so every feature is refused until `fstore backfill --view V` has built its view"
            )
        if old is not None:
            refs = {f"{v.name}:{f}" for v in self.new.views for f in v.feature_names}
            still = [r for r in old.pending if r in refs and r not in self.change.pending]
            pending = tuple(dict.fromkeys([*self.change.pending, *still]))
            building = tuple(sorted({r.partition(":")[0] for r in pending}))
        rec = applied.AppliedPlan(self.new, int(time.time() * 1_000_000), pending, building, self.views, self.series)
        applied.save(self.root, rec)
        self.say(
            f"applied plan {rec.fingerprint[:12]} ({len(self.new.views)} view(s)) to {applied.record_path(self.root)}"
        )
        if rec.unfreed:
            assert self.client is not None
            self._free(rec, wait_timeout)
        for view in building:
            self.say(f"next: fstore backfill --view {view}   (its new features are refused until then)")
        return rec

    def _workers_on_other_plans(self) -> dict[str, str]:
        """The live stream workers that run another plan than the new one (none when Redis does not answer)."""
        from fstore.redis.workers import worker_plans

        try:
            client = self.client or self.redis()
            plans = worker_plans(client)
        except Exception:  # an unreachable Redis: no worker can be seen, none is assumed
            return {}
        fp = fingerprint(self.new)
        return {w: f for w, f in plans.items() if f != fp}

    def _free(self, rec: applied.AppliedPlan, timeout: float, first: bool = False) -> None:
        """Free the Redis state ``rec`` removed once every live stream worker runs its plan, then record that.
        ``first``: what a previous apply left, freed before this apply changes anything.

        Raises:
            NotFreed: a worker did not follow in time or Redis failed (the record keeps what is left).
        """
        from fstore.redis.free_keys import free_series, free_views
        from fstore.redis.workers import wait_following

        assert self.client is not None
        fp = rec.fingerprint
        shown: set[str] = set()

        def waiting(behind: dict[str, str]) -> None:
            if set(behind) != shown:
                shown.clear()
                shown.update(behind)
                names = ", ".join(f"{w} (plan {f[:12]})" for w, f in sorted(behind.items()))
                self.say(f"waiting (up to {timeout:g} s) for stream worker(s) to run plan {fp[:12]}: {names}")

        try:
            wait_following(self.client, fp, timeout, waiting)
            freed = free_views(self.client, rec.unfreed_views)
            by_view: dict[str, list[tuple[int, str, str]]] = {}
            for view, hop, measure, state in rec.unfreed_series:
                by_view.setdefault(view, []).append((hop, measure, state))
            fields = sum(free_series(self.client, v, series).fields for v, series in by_view.items())
        except Exception as exc:  # a worker behind, or Redis failed: the record keeps what is left
            state = (
                "This apply changed nothing"
                if first
                else f"Plan {fp[:12]} is applied (what it removed is no longer served)"
            )
            raise NotFreed(
                f"fstore: NOT FREED: {show_unfreed(rec)}: {exc}. {state}, but a stream worker still "
                "running an older plan could write those keys again, so they are left. Check the workers (GET /health, "
                "their logs) or Redis, then run `fstore apply` again: it frees them first."
            ) from exc
        current = applied.load(self.root)
        if current is not None and current.fingerprint == fp:
            applied.save(self.root, current.freed())
        self.say(
            f"freed {freed.keys} key(s) of removed views {list(rec.unfreed_views)} and {fields} field(s) of "
            f"removed series (every live stream worker runs plan {fp[:12]})"
        )
