"""Synthetic e-commerce event stream: realistic traffic as Kafka messages, fast and reproducible.

Sessions follow the funnel page views → impressions → click → add_to_cart → purchase, products have Zipf
popularity, session starts follow a day/night curve over ``[start, end)``. Optional injections make
duplicates, late events, every kind of invalid message and events carrying personal data. Messages come
out in *arrival order* (event_time + a small delivery lag; hours more for late events), in batches.

Contract:

* The same ``(config, seed)`` gives byte-identical output (no clock, no global random state); the JSON
  serialiser only has to agree with :func:`~examples.synth.malformed.compact_dumps` on ``dumps`` of
  plain dicts (``orjson.dumps`` does).
* With ``config.events`` set, exactly that many messages; otherwise ``users × days ×
  sessions_per_user_per_day`` sessions. ``duplicate_rate`` and ``malformed_rate`` are fractions of all
  messages; ``late_rate``, ``pii_rate`` and ``epoch_ms_rate`` fractions of the distinct valid events.
* Every valid message passes the event contract of the schema ``feature_repo/`` declares (docs/design.md
  §2) with ``now = config.end`` (all event times lie in ``[start, end)``); every malformed one is rejected
  with the reason in :attr:`Batch.reasons`.
* Ids: users ``u000123``, products ``p00042`` (zero-padded to at least 6 and 5 digits), events
  ``e<run>-<10 digits>`` and sessions ``s<run>-<10 digits>``, where ``run`` is 8 hex digits hashed from
  ``(seed, config)``: streams generated with other parameters (say, the next day) never share an
  event_id. Event numbers increase with event_time within a slice; a duplicate keeps its original's id.
* Output is globally sorted by arrival time (ties keep generation order). Time is cut into slices of
  equal expected traffic (about ``batch_size`` messages each); a slice's events that arrive after the
  next slice starts are held back and merged, so memory stays bounded by one slice plus the events in
  flight (late ones for up to 48 h).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from examples.synth import malformed
from examples.synth.config import EVENT_TYPES
from examples.synth.config import GeneratorConfig as GeneratorConfig  # re-exported: the generator's input
from examples.synth.jsonenc import Encoder
from examples.synth.malformed import Dumps, compact_dumps
from examples.synth.traffic import (
    Catalog,
    DailyCurve,
    Frame,
    counts_for_events,
    draw_counts,
    mean_session_events,
    simulate,
)
from fstore.core.timeutil import HOUR, MILLISECOND, SECOND

I64 = NDArray[np.int64]

# Bits of Batch.flags.
LATE = 1  #: arrives 1–48 h after its event_time
DUPLICATE = 2  #: a re-sent copy of an earlier message (same event_id)
CHANGED = 4  #: a duplicate whose payload differs from the original (quantity or session_id)
PII = 8  #: carries e-mail, phone and IP fields (still a valid event)
MALFORMED = 16  #: invalid; Batch.reasons holds the intended rejection reason

LAG_MEAN_US = 500 * MILLISECOND  #: mean delivery lag (exponential)
DUP_DELAY_US = (100 * MILLISECOND, 30 * SECOND)  #: a duplicate is re-sent min + Exp(mean) after its original
LATE_DELAY_US = (HOUR, 48 * HOUR)  #: extra arrival delay of a late event (uniform)
MAX_NUMBER = 10**10  #: event and session numbers have 10 digits


class Batch(NamedTuple):
    """Consecutive messages in arrival order, with labels for tests and summaries."""

    keys: list[str | None]  #: Kafka keys: the user_id, None when the message has no string user_id
    values: list[bytes]  #: message bytes (no newline inside)
    arrival: I64  #: arrival time, UTC epoch µs (non-decreasing across the whole run)
    flags: NDArray[np.uint8]  #: LATE | DUPLICATE | CHANGED | PII | MALFORMED bits
    reasons: list[str | None]  #: intended rejection reason of malformed messages, else None


@dataclass(frozen=True)
class _Plan:
    slices: int
    total: int  # exact with config.events, else an estimate
    sessions: int  # sessions mode only
    valid: int  # events mode only: distinct valid events
    duplicates: int
    malformed: int


def _plan(cfg: GeneratorConfig) -> _Plan:
    d, m = cfg.duplicate_rate, cfg.malformed_rate
    if cfg.events is None:
        sessions = round(cfg.users * cfg.days * cfg.sessions_per_user_per_day)
        total = round(sessions * mean_session_events(cfg) / (1 - d - m))
        slices = max(1, min(math.ceil(total / cfg.batch_size), sessions))
        return _Plan(slices, total, sessions, 0, 0, 0)
    total = cfg.events
    bad = min(total, math.floor(total * m + 0.5))
    dups = min(total - bad, math.floor(total * d + 0.5))
    valid = total - bad - dups
    if valid == 0:  # nothing to copy: the duplicates become malformed messages
        bad, dups = total, 0
    return _Plan(max(1, min(math.ceil(total / cfg.batch_size), valid)), total, 0, valid, dups, bad)


def planned_total(cfg: GeneratorConfig) -> int:
    """Number of messages :func:`generate` yields: exact when ``cfg.events`` is set, else an estimate."""
    return _plan(cfg).total


def _share(n: int, k: int, slices: int) -> int:
    """Slice ``k``'s part of ``n`` items split evenly (the parts sum to ``n``)."""
    return n * (k + 1) // slices - n * k // slices


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _ids(prefix: str, n: int, width: int) -> pa.Array:
    width = max(width, len(str(n - 1)))
    return pa.array([f"{prefix}{i:0{width}d}" for i in range(n)], pa.string())


class _Pending(NamedTuple):
    keys: pa.Array
    values: pa.Array
    arrival: I64
    flags: NDArray[np.uint8]
    reasons: NDArray[np.object_]

    @staticmethod
    def concat(parts: list[_Pending]) -> _Pending:
        return _Pending(
            pa.concat_arrays([p.keys for p in parts]),
            pa.concat_arrays([p.values for p in parts]),
            np.concatenate([p.arrival for p in parts]),
            np.concatenate([p.flags for p in parts]),
            np.concatenate([p.reasons for p in parts]),
        )

    def take(self, idx: I64) -> _Pending:
        arr = pa.array(idx, pa.int64())
        return _Pending(
            self.keys.take(arr), self.values.take(arr), self.arrival[idx], self.flags[idx], self.reasons[idx]
        )


class _Run:
    """State carried from slice to slice: offsets of numbers, the catalogue, the encoder."""

    def __init__(self, cfg: GeneratorConfig, seed: int, dumps: Dumps) -> None:
        self.cfg, self.seed, self.dumps = cfg, seed, dumps
        self.plan = _plan(cfg)
        self.start_ms = -(-cfg.start // MILLISECOND)
        self.last_ms = -(-cfg.end // MILLISECOND) - 1  # the last ms whose µs value is < end
        self.curve = DailyCurve(cfg.peak_hour, cfg.night_ratio, self.start_ms)
        lo, hi = self.curve.mass(self.start_ms), self.curve.mass(self.last_ms + 1)
        self.masses = np.linspace(lo, hi, self.plan.slices + 1)
        bounds = np.clip(self.curve.time(self.masses), self.start_ms, self.last_ms)
        bounds[0] = self.start_ms
        self.bounds: I64 = bounds
        self.catalog = Catalog(cfg.products, cfg.zipf_exponent, _rng(seed, 0))
        run = hashlib.blake2b(repr((seed, cfg)).encode(), digest_size=4).hexdigest()
        self.users = _ids("u", cfg.users, 6)
        self.encoder = Encoder(self.users, _ids("p", cfg.products, 5), run)
        self.next_num = self.next_session = self.valid_so_far = self.dups_so_far = self.bad_so_far = 0
        self.bad_index = 0  # run-wide index of the next malformed message (picks its reason)

    def quotas(self, k: int, valid: int) -> tuple[int, int]:
        """Duplicates and malformed messages for slice ``k`` that brought ``valid`` distinct events."""
        p, cfg = self.plan, self.cfg
        if cfg.events is not None:
            return _share(p.duplicates, k, p.slices), _share(p.malformed, k, p.slices)
        self.valid_so_far += valid
        total = self.valid_so_far / (1 - cfg.duplicate_rate - cfg.malformed_rate)
        dups = math.floor(total * cfg.duplicate_rate + 0.5) - self.dups_so_far
        bad = math.floor(total * cfg.malformed_rate + 0.5) - self.bad_so_far
        dups = dups if valid else 0
        self.dups_so_far += dups
        self.bad_so_far += bad
        return dups, bad

    def slice(self, k: int) -> _Pending:
        """All messages whose events start in slice ``k``, unsorted."""
        cfg, rng = self.cfg, _rng(self.seed, 1, k)
        if cfg.events is None:
            counts = draw_counts(rng, cfg, _share(self.plan.sessions, k, self.plan.slices))
        else:
            counts = counts_for_events(rng, cfg, _share(self.plan.valid, k, self.plan.slices))
        n_sessions = counts.shape[1]
        lo_ms = int(self.bounds[k])
        masses = np.sort(rng.uniform(self.masses[k], self.masses[k + 1], n_sessions))
        starts = np.clip(self.curve.time(masses), lo_ms, self.last_ms)
        fr = simulate(rng, cfg, self.catalog, counts, starts, self.last_ms)
        fr = fr.take(np.argsort(fr.time_ms, kind="stable"))
        n = len(fr)
        fr.session += self.next_session
        fr.num = self.next_num + np.arange(n, dtype=np.int64)
        fr.epoch_ms = rng.random(n) < cfg.epoch_ms_rate
        fr.pii = rng.random(n) < cfg.pii_rate
        late = rng.random(n) < cfg.late_rate
        lag = rng.exponential(LAG_MEAN_US, n).astype(np.int64)
        delay = rng.integers(LATE_DELAY_US[0], LATE_DELAY_US[1], n, endpoint=True)
        fr.arrival = fr.time_ms * MILLISECOND + lag + np.where(late, delay, 0)
        fr.flags = (np.where(late, LATE, 0) | np.where(fr.pii, PII, 0)).astype(np.uint8)
        n_dups, n_bad = self.quotas(k, n)
        dup = self._duplicates(rng, fr, n_dups)
        rows = Frame.concat([fr, dup])
        valid = _Pending(
            self.users.take(pa.array(rows.user)),
            self.encoder.encode(rows),
            rows.arrival,
            rows.flags,
            np.full(len(rows), None, dtype=object),
        )
        bad = self._malformed(rng, k, n_bad, self.next_num + n, n_sessions)
        self.next_num += n + n_bad
        self.next_session += n_sessions
        if self.next_num > MAX_NUMBER or self.next_session > MAX_NUMBER:
            raise ValueError(f"more than {MAX_NUMBER:,} events or sessions are not supported")
        return _Pending.concat([valid, bad])

    def _duplicates(self, rng: np.random.Generator, fr: Frame, n: int) -> Frame:
        """Re-sent copies of distinct random events of the slice; every second one with a changed payload."""
        picks = rng.choice(len(fr), n, replace=n > len(fr)) if n else np.zeros(0, np.int64)
        dup = fr.take(np.sort(picks))
        dup.arrival += DUP_DELAY_US[0] + rng.exponential(DUP_DELAY_US[1], n).astype(np.int64)
        changed = np.arange(n) % 2 == 1
        dup.flags |= np.where(changed, DUPLICATE | CHANGED, DUPLICATE).astype(np.uint8)
        has_qty = dup.quantity > 0
        dup.quantity[changed & has_qty] += 1
        dup.session[changed & ~has_qty] += 1
        return dup

    def _malformed(self, rng: np.random.Generator, k: int, n: int, first_num: int, n_sessions: int) -> _Pending:
        """``n`` invalid messages timed like slice ``k``'s sessions, numbered from ``first_num``."""
        users = rng.integers(0, self.cfg.users, n)
        products = self.catalog.sample(rng, n)
        etypes = rng.integers(0, len(EVENT_TYPES), n)
        masses = rng.uniform(self.masses[k], self.masses[k + 1], n)
        times = np.clip(self.curve.time(masses), int(self.bounds[k]), self.last_ms)
        sessions = rng.integers(self.next_session, self.next_session + max(n_sessions, 1), n)
        lags = rng.exponential(LAG_MEAN_US, n).astype(np.int64)
        num = np.arange(first_num, first_num + n, dtype=np.int64)
        eids = self.encoder.number("e", num).to_pylist()
        sids = self.encoder.number("s", sessions).to_pylist()
        users_s = self.users.take(pa.array(users)).to_pylist()
        products_s = self.encoder.product_ids.take(pa.array(products)).to_pylist()
        msgs = []
        for i in range(n):
            base = malformed.base_event(
                eids[i],
                EVENT_TYPES[etypes[i]],
                users_s[i],
                products_s[i],
                sids[i],
                int(times[i]),
                int(self.catalog.base_cents[products[i]]),
            )
            msgs.append(malformed.build(self.bad_index + i, base, self.last_ms + 1, rng, self.dumps))
        self.bad_index += n
        return _Pending(
            pa.array([m.key for m in msgs], pa.string()),
            pa.array([m.value for m in msgs], pa.binary()),
            times * MILLISECOND + lags,
            np.full(n, MALFORMED, dtype=np.uint8),
            np.array([m.reason for m in msgs], dtype=object).reshape(n),
        )


def generate(cfg: GeneratorConfig, seed: int, dumps: Dumps = compact_dumps) -> Iterator[Batch]:
    """Messages of the synthetic stream in arrival order, in batches of at most ``cfg.batch_size``.

    Args:
        cfg: what to generate.
        seed: any non-negative integer; the same seed and config give byte-identical output.
        dumps: JSON serialiser for the irregular (malformed) messages; must produce the same bytes as
            :func:`~examples.synth.malformed.compact_dumps` for output to be independent of it.

    Yields:
        :class:`Batch` objects; their ``values`` concatenated are the whole stream.
    """
    if seed < 0:
        raise ValueError(f"seed {seed} must be >= 0")
    run = _Run(cfg, seed, dumps)
    pending: _Pending | None = None
    for k in range(run.plan.slices):
        new = run.slice(k)
        merged = new if pending is None else _Pending.concat([pending, new])
        order = np.argsort(merged.arrival, kind="stable")
        final = k == run.plan.slices - 1
        boundary = run.bounds[k + 1] * MILLISECOND  # no later slice has an earlier arrival
        cut = len(order) if final else int(np.searchsorted(merged.arrival[order], boundary))
        pending = merged.take(order[cut:])
        ready = merged.take(order[:cut])
        del new, merged, order  # hold only the pending events and this slice's output while yielding
        for lo in range(0, cut, cfg.batch_size):
            hi = min(lo + cfg.batch_size, cut)
            yield Batch(
                ready.keys[lo:hi].to_pylist(),
                ready.values[lo:hi].to_pylist(),
                ready.arrival[lo:hi],
                ready.flags[lo:hi],
                ready.reasons[lo:hi].tolist(),
            )


def generate_batches(
    cfg: GeneratorConfig,
    seed: int,
    dumps: Dumps = compact_dumps,
) -> Iterator[tuple[list[str | None], list[bytes]]]:
    """:func:`generate` without the labels: ``(kafka keys, message bytes)`` per batch."""
    for batch in generate(cfg, seed, dumps):
        yield batch.keys, batch.values
