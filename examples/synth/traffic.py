"""Synthetic e-commerce traffic as numpy columns: the daily curve, the catalogue and the session funnel.

This is the simulation half of :mod:`examples.synth.generator` (which adds ids, injections, JSON encoding
and arrival order). Everything is vectorised over whole slices of sessions; randomness comes only from
the ``numpy.random.Generator`` passed in, so the same generator state gives the same columns.

Internally times are integer UTC epoch *milliseconds* (the precision of the serialized event_time).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from examples.synth.config import GeneratorConfig

I64 = NDArray[np.int64]
F64 = NDArray[np.float64]

DAY_MS = 86_400_000
#: Event type codes: index into :data:`examples.synth.config.EVENT_TYPES`.
PAGE_VIEW, IMPRESSION, CLICK, ADD_TO_CART, PURCHASE = range(5)

# Timing inside a session, in milliseconds (means of exponential gaps unless noted).
PV_GAP_MS = 30_000.0  # between page views
IMP_SPREAD_MS = 2_000.0  # impressions render within 2 s of their page view (uniform)
CLICK_GAP_MS = 10_000.0  # impression → click (plus 200 ms minimum)
CART_GAP_MS = 30_000.0  # click → add_to_cart (plus 500 ms)
BUY_GAP_MS = 120_000.0  # add_to_cart → purchase (plus 1 s)


class DailyCurve:
    """Session-start intensity over the UTC day, and sampling from it.

    The intensity is a raised cosine: 1 at ``peak_hour`` and ``night_ratio`` twelve hours later. It is
    tabulated per minute; the cumulative "mass" of a time is ``days × day_mass + G(time of day)``, which
    is strictly increasing, so equal mass steps are equal expected traffic and :meth:`time` inverts
    :meth:`mass` (piecewise linearly within a minute).
    """

    def __init__(self, peak_hour: float, night_ratio: float, origin_ms: int) -> None:
        minutes = np.arange(1440, dtype=np.float64) + 0.5
        phase = 2 * np.pi * (minutes / 60 - peak_hour) / 24
        level = night_ratio + (1.0 - night_ratio) * 0.5 * (1.0 + np.cos(phase))
        self._sec = np.arange(1441, dtype=np.float64) * 60.0
        self._cum = np.concatenate([[0.0], np.cumsum(level * 60.0)])
        self.day_mass = float(self._cum[-1])
        self.origin_ms = origin_ms - origin_ms % DAY_MS

    def intensity(self, hour: F64) -> F64:
        """Relative session-start rate at UTC hour(s) of day (1.0 at the peak)."""
        idx = np.clip((np.asarray(hour) * 60).astype(np.int64), 0, 1439)
        out: F64 = np.diff(self._cum)[idx] / 60.0
        return out

    def mass(self, t_ms: int) -> float:
        """Cumulative intensity from the origin day to ``t_ms``."""
        days, rest = divmod(t_ms - self.origin_ms, DAY_MS)
        return days * self.day_mass + float(np.interp(rest / 1000.0, self._sec, self._cum))

    def time(self, mass: F64) -> I64:
        """Inverse of :meth:`mass`: UTC epoch ms (floored) for an array of masses."""
        days = np.floor(mass / self.day_mass)
        sec = np.interp(mass - days * self.day_mass, self._cum, self._sec)
        out: I64 = self.origin_ms + days.astype(np.int64) * DAY_MS + np.floor(sec * 1000.0).astype(np.int64)
        return out


class Catalog:
    """Products: Zipf popularity (precomputed CDF + searchsorted) and a base price each.

    Popularity rank r (0 = most popular) has weight ``1 / (r + 1) ** exponent``; ranks are mapped to
    product numbers by a seeded permutation so that popularity is not sorted by id. Base prices are
    log-normal (median about 20) and end in .99.
    """

    def __init__(self, products: int, exponent: float, rng: np.random.Generator) -> None:
        weights = np.arange(1, products + 1, dtype=np.float64) ** -exponent
        self._cdf = np.cumsum(weights) / weights.sum()
        self.by_rank: I64 = rng.permutation(products).astype(np.int64)
        dollars = np.clip(np.rint(rng.lognormal(math.log(20.0), 0.9, products)), 1, 5000)
        self.base_cents: I64 = dollars.astype(np.int64) * 100 - 1

    def sample(self, rng: np.random.Generator, n: int) -> I64:
        """``n`` product numbers drawn by popularity."""
        rank = np.minimum(np.searchsorted(self._cdf, rng.random(n), side="right"), len(self._cdf) - 1)
        out: I64 = self.by_rank[rank]
        return out

    def price(self, rng: np.random.Generator, product: I64) -> I64:
        """Price in cents: the base price, with a 5–30 % discount one time in five."""
        base = self.base_cents[product]
        discount = np.where(rng.random(len(product)) < 0.2, rng.uniform(0.05, 0.30, len(product)), 0.0)
        out: I64 = np.floor(base * (1.0 - discount)).astype(np.int64)
        return out


@dataclass
class Frame:
    """Column-oriented events (one row per message to encode).

    ``product`` is -1 when absent, ``price`` (cents) -1 when absent, ``quantity`` 0 when absent; ``num``
    is the event-id number, ``arrival`` the arrival time (UTC epoch µs), ``flags`` the generator's
    injection bits. Columns the simulation does not know yet are zero until the generator fills them.
    """

    etype: I64
    user: I64
    product: I64
    session: I64
    time_ms: I64
    price: I64
    quantity: I64
    epoch_ms: NDArray[np.bool_]
    pii: NDArray[np.bool_]
    num: I64
    arrival: I64
    flags: NDArray[np.uint8]

    def __len__(self) -> int:
        return len(self.etype)

    def take(self, idx: I64) -> Frame:
        """Rows ``idx`` (a copy)."""
        return Frame(*(getattr(self, f.name)[idx] for f in dataclasses.fields(self)))

    @staticmethod
    def concat(frames: list[Frame]) -> Frame:
        """Rows of several frames, in order."""
        columns = (np.concatenate([getattr(fr, f.name) for fr in frames]) for f in dataclasses.fields(Frame))
        return Frame(*columns)


def mean_session_events(cfg: GeneratorConfig) -> float:
    """Expected number of events in one session."""
    funnel = 1 + cfg.click_rate * (1 + cfg.cart_rate * (1 + cfg.purchase_rate))
    return cfg.page_views_per_session + cfg.impressions_per_session * funnel


def draw_counts(rng: np.random.Generator, cfg: GeneratorConfig, n: int) -> I64:
    """Per-session event counts, shape (5, n): page views, impressions, clicks, carts, purchases.

    Page views are 1 + Poisson, impressions Poisson; each impression is clicked with ``click_rate``,
    each click carted with ``cart_rate``, each cart bought with ``purchase_rate`` (binomial draws).
    """
    pv = 1 + rng.poisson(cfg.page_views_per_session - 1.0, n)
    imp = rng.poisson(cfg.impressions_per_session, n)
    click = rng.binomial(imp, cfg.click_rate)
    cart = rng.binomial(click, cfg.cart_rate)
    buy = rng.binomial(cart, cfg.purchase_rate)
    return np.stack([pv, imp, click, cart, buy]).astype(np.int64)


def counts_for_events(rng: np.random.Generator, cfg: GeneratorConfig, target: int) -> I64:
    """Session counts (as :func:`draw_counts`) totalling exactly ``target`` events.

    Sessions are drawn until the total reaches ``target``; the last one is cut down from the end of
    the funnel (purchases first, page views last), so it stays consistent (purchases ≤ carts ≤ clicks ≤
    impressions) and keeps at least one page view.
    """
    blocks: list[I64] = []
    total = 0
    while total < target:
        block = draw_counts(rng, cfg, math.ceil((target - total) / mean_session_events(cfg) * 1.05) + 16)
        blocks.append(block)
        total += int(block.sum())
    if not blocks:
        return np.zeros((5, 0), dtype=np.int64)
    counts = np.concatenate(blocks, axis=1)
    cum = np.cumsum(counts.sum(axis=0))
    last = int(np.searchsorted(cum, target))
    counts = counts[:, : last + 1].copy()
    excess = int(cum[last]) - target
    for row in (PURCHASE, ADD_TO_CART, CLICK, IMPRESSION, PAGE_VIEW):
        cut = min(excess, int(counts[row, -1]))
        counts[row, -1] -= cut
        excess -= cut
    assert excess == 0 and counts[PAGE_VIEW, -1] >= 1
    return counts


def _rank_in_session(session: I64, per_session: I64) -> I64:
    """Position of each row within its session, for rows grouped by session in session order."""
    first = np.cumsum(per_session) - per_session
    out: I64 = np.arange(len(session), dtype=np.int64) - first[session]
    return out


def simulate(
    rng: np.random.Generator,
    cfg: GeneratorConfig,
    catalog: Catalog,
    counts: I64,
    starts_ms: I64,
    last_ms: int,
) -> Frame:
    """Events of sessions with the given counts and start times (columns; unsorted).

    Page views follow each other with exponential gaps; each impression belongs to a random page view of
    its session; the first ``clicks`` impressions of a session are clicked, the first ``carts`` clicks
    carted and the first ``purchases`` carts bought, each a little later than its predecessor, with the
    same product (carts and purchases carry its price and a quantity ≥ 1). Session numbers in the frame
    are local (0..n-1) and users are drawn uniformly. A session that would run past ``last_ms`` is
    compressed in time so that every event_time lies in ``[start, last_ms]``.
    """
    n_pv, n_imp, n_click, n_cart, n_buy = counts
    n_sessions = counts.shape[1]
    sessions = np.arange(n_sessions, dtype=np.int64)
    users = np.asarray(rng.integers(0, cfg.users, n_sessions), dtype=np.int64)

    pv_sess = np.repeat(sessions, n_pv)
    pv_first = np.cumsum(n_pv) - n_pv
    gaps = rng.exponential(PV_GAP_MS, len(pv_sess))
    gaps[pv_first[n_pv > 0]] = 0.0
    cum = np.cumsum(gaps)
    pv_off = cum - cum[pv_first[pv_sess]]
    with_product = rng.random(len(pv_sess)) < cfg.product_page_rate
    pv_prod = np.where(with_product, catalog.sample(rng, len(pv_sess)), -1)

    im_sess = np.repeat(sessions, n_imp)
    pick = np.minimum((rng.random(len(im_sess)) * n_pv[im_sess]).astype(np.int64), n_pv[im_sess] - 1)
    im_off = pv_off[pv_first[im_sess] + pick] + rng.random(len(im_sess)) * IMP_SPREAD_MS
    im_prod = catalog.sample(rng, len(im_sess))

    ck = np.flatnonzero(_rank_in_session(im_sess, n_imp) < n_click[im_sess])
    ck_sess, ck_prod = im_sess[ck], im_prod[ck]
    ck_off = im_off[ck] + 200.0 + rng.exponential(CLICK_GAP_MS, len(ck))

    ca = np.flatnonzero(_rank_in_session(ck_sess, n_click) < n_cart[ck_sess])
    ca_sess, ca_prod = ck_sess[ca], ck_prod[ca]
    ca_off = ck_off[ca] + 500.0 + rng.exponential(CART_GAP_MS, len(ca))
    ca_qty = rng.geometric(0.7, len(ca)).astype(np.int64)
    ca_price = catalog.price(rng, ca_prod)

    bu = np.flatnonzero(_rank_in_session(ca_sess, n_cart) < n_buy[ca_sess])
    bu_off = ca_off[bu] + 1000.0 + rng.exponential(BUY_GAP_MS, len(bu))

    kinds = [
        (PAGE_VIEW, pv_sess),
        (IMPRESSION, im_sess),
        (CLICK, ck_sess),
        (ADD_TO_CART, ca_sess),
        (PURCHASE, ca_sess[bu]),
    ]
    etype = np.concatenate([np.full(len(s), k, dtype=np.int64) for k, s in kinds])
    session = np.concatenate([s for _, s in kinds])
    product = np.concatenate([pv_prod, im_prod, ck_prod, ca_prod, ca_prod[bu]])
    offset = np.floor(np.concatenate([pv_off, im_off, ck_off, ca_off, bu_off])).astype(np.int64)
    none = np.full(len(pv_sess) + len(im_sess) + len(ck), -1, dtype=np.int64)
    price = np.concatenate([none, ca_price, ca_price[bu]])
    quantity = np.concatenate([np.zeros_like(none), ca_qty, ca_qty[bu]])

    time_ms = starts_ms[session] + offset
    over = time_ms > last_ms
    if over.any():  # only sessions that start shortly before the end of the range
        tail = np.isin(session, np.unique(session[over]))
        span = np.zeros(n_sessions, dtype=np.int64)
        np.maximum.at(span, session[tail], offset[tail])
        room = last_ms - starts_ms[session[tail]]
        offset[tail] = offset[tail] * room // np.maximum(span[session[tail]], 1)
        time_ms = starts_ms[session] + offset
    n = len(etype)
    zeros = np.zeros(n, dtype=np.int64)
    return Frame(
        etype,
        users[session],
        product,
        session,
        time_ms,
        price,
        quantity,
        np.zeros(n, dtype=np.bool_),
        np.zeros(n, dtype=np.bool_),
        zeros,
        zeros.copy(),
        np.zeros(n, dtype=np.uint8),
    )
