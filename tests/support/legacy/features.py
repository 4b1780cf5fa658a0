"""The feature definitions of docs/design.md §3 — the one and only place features are listed.

The Feast repo, the stream job, the batch job, the serving layer and the point-in-time engine all read
these objects. A windowed feature is (entity, event filter, measure, aggregation, window); a derived
feature is a ratio of two windowed features of the same view.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from fstore.core.aggregates import Agg
from fstore.core.timeutil import DAY, HOUR
from fstore.core.windows import hop


class ValueKind(StrEnum):
    """What a measure takes from an event."""

    ONE = "one"  # the event itself (count-style measures)
    REVENUE = "revenue"  # price × quantity


@dataclass(frozen=True)
class Entity:
    """An entity type: Feast name and the join key carried by events and requests."""

    name: str
    join_key: str
    description: str


@dataclass(frozen=True)
class Measure:
    """Events of one type, measured one way. Tiles hold one :class:`Partial` per measure."""

    name: str
    event_type: str
    value: ValueKind = ValueKind.ONE

    def of(self, price: float | None, quantity: int) -> float:
        """The measured value of one event that passed the filter."""
        if self.value is ValueKind.REVENUE:
            return (price or 0.0) * quantity
        return 1.0


@dataclass(frozen=True)
class WindowedFeature:
    """AGG of a measure over the window ``[tail(t), t)``."""

    name: str
    measure: Measure
    agg: Agg
    window: int  # microseconds
    description: str = ""

    @property
    def hop(self) -> int:
        """Tile size that serves this feature."""
        return hop(self.window)

    @property
    def dtype(self) -> str:
        """``int64`` for counts, ``float64`` otherwise."""
        return "int64" if self.agg is Agg.COUNT else "float64"


@dataclass(frozen=True)
class RatioFeature:
    """A derived feature: ``numerator / denominator`` (two windowed features), null when the latter is 0."""

    name: str
    numerator: str
    denominator: str
    description: str = ""

    @property
    def dtype(self) -> str:
        """Ratios are always floats."""
        return "float64"


Feature = WindowedFeature | RatioFeature


@dataclass(frozen=True, eq=False)
class FeatureView:
    """A named group of features over one entity.

    Views compare and hash by identity (each is defined once), which keeps per-view caches such as
    :func:`tests.support.legacy.tiles.tile_plan` cheap on hot paths.
    """

    name: str
    entity: Entity
    features: tuple[Feature, ...]
    description: str = ""

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        if len(names) != len(set(names)):
            raise ValueError(f"view {self.name}: duplicate feature names")
        windowed = {f.name for f in self.windowed}
        for f in self.features:
            if isinstance(f, RatioFeature) and not {f.numerator, f.denominator} <= windowed:
                raise ValueError(f"view {self.name}: ratio {f.name} refers to an unknown feature")

    @property
    def windowed(self) -> tuple[WindowedFeature, ...]:
        """The windowed features, in definition order."""
        return tuple(f for f in self.features if isinstance(f, WindowedFeature))

    @property
    def feature_names(self) -> tuple[str, ...]:
        """All feature names, in definition order."""
        return tuple(f.name for f in self.features)

    def feature(self, name: str) -> Feature:
        """Look a feature up by name.

        Raises:
            KeyError: naming the view and the unknown feature.
        """
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"feature view '{self.name}' has no feature '{name}'")

    @property
    def hops(self) -> tuple[int, ...]:
        """Distinct tile sizes this view needs, ascending."""
        return tuple(sorted({f.hop for f in self.windowed}))

    def measures_for_hop(self, size: int) -> tuple[Measure, ...]:
        """Measures that tiles of ``size`` must carry for this view (stable order)."""
        seen: dict[str, Measure] = {}
        for f in self.windowed:
            if f.hop == size:
                seen.setdefault(f.measure.name, f.measure)
        return tuple(seen.values())

    @property
    def longest_window(self) -> int:
        """The longest window of the view, in microseconds."""
        return max(f.window for f in self.windowed)


USER = Entity("user", "user_id", "A shopper, keyed by the event's user_id")
PRODUCT = Entity("product", "product_id", "A catalogue product, keyed by the event's product_id")

PAGE_VIEW = Measure("page_view", "page_view")
IMPRESSION = Measure("impression", "impression")
CLICK = Measure("click", "click")
ADD_TO_CART = Measure("add_to_cart", "add_to_cart")
PURCHASE = Measure("purchase", "purchase", ValueKind.REVENUE)

H1, H24, D7 = HOUR, 24 * HOUR, 7 * DAY
COUNT, SUM, AVG, MAX = Agg.COUNT, Agg.SUM, Agg.AVG, Agg.MAX

USER_ACTIVITY = FeatureView(
    "user_activity",
    USER,
    (
        WindowedFeature("page_views_1h", PAGE_VIEW, COUNT, H1, "Page views in the last hour"),
        WindowedFeature("page_views_24h", PAGE_VIEW, COUNT, H24, "Page views in the last 24 hours"),
        WindowedFeature("clicks_1h", CLICK, COUNT, H1, "Clicks in the last hour"),
        WindowedFeature("clicks_24h", CLICK, COUNT, H24, "Clicks in the last 24 hours"),
        WindowedFeature("add_to_carts_24h", ADD_TO_CART, COUNT, H24, "Add-to-carts in the last 24 hours"),
        WindowedFeature("purchases_7d", PURCHASE, COUNT, D7, "Purchases in the last 7 days"),
        WindowedFeature("revenue_7d", PURCHASE, SUM, D7, "Revenue (price × quantity) in the last 7 days"),
        WindowedFeature("avg_order_value_7d", PURCHASE, AVG, D7, "Average revenue per purchase, 7 days"),
        WindowedFeature("max_order_value_7d", PURCHASE, MAX, D7, "Largest purchase revenue, 7 days"),
    ),
    "Rolling activity of a shopper",
)

PRODUCT_ENGAGEMENT = FeatureView(
    "product_engagement",
    PRODUCT,
    (
        WindowedFeature("impressions_1h", IMPRESSION, COUNT, H1, "Impressions in the last hour"),
        WindowedFeature("impressions_24h", IMPRESSION, COUNT, H24, "Impressions in the last 24 hours"),
        WindowedFeature("clicks_1h", CLICK, COUNT, H1, "Clicks in the last hour"),
        WindowedFeature("clicks_24h", CLICK, COUNT, H24, "Clicks in the last 24 hours"),
        RatioFeature("ctr_1h", "clicks_1h", "impressions_1h", "Click-through rate, last hour"),
        RatioFeature("ctr_24h", "clicks_24h", "impressions_24h", "Click-through rate, last 24 hours"),
        WindowedFeature("add_to_carts_24h", ADD_TO_CART, COUNT, H24, "Add-to-carts in the last 24 hours"),
        WindowedFeature("purchases_24h", PURCHASE, COUNT, H24, "Purchases in the last 24 hours"),
        WindowedFeature("revenue_24h", PURCHASE, SUM, H24, "Revenue in the last 24 hours"),
        WindowedFeature("clicks_7d", CLICK, COUNT, D7, "Clicks in the last 7 days"),
        WindowedFeature("purchases_7d", PURCHASE, COUNT, D7, "Purchases in the last 7 days"),
        RatioFeature("conversion_rate_7d", "purchases_7d", "clicks_7d", "Purchases per click, 7 days"),
    ),
    "Rolling engagement of a product",
)

VIEWS: dict[str, FeatureView] = {v.name: v for v in (USER_ACTIVITY, PRODUCT_ENGAGEMENT)}
ENTITIES: dict[str, Entity] = {e.name: e for e in (USER, PRODUCT)}


def get_view(name: str) -> FeatureView:
    """Look a feature view up by name.

    Raises:
        KeyError: naming the unknown view and the known ones.
    """
    try:
        return VIEWS[name]
    except KeyError:
        raise KeyError(f"unknown feature view '{name}' (known: {', '.join(VIEWS)})") from None


def resolve(refs: list[str]) -> list[tuple[FeatureView, Feature]]:
    """Resolve ``view:feature`` and whole-``view`` references, preserving order and dropping repeats.

    Raises:
        KeyError: naming the first unknown view or feature.
    """
    out: list[tuple[FeatureView, Feature]] = []
    seen: set[tuple[str, str]] = set()
    for ref in refs:
        view_name, _, feat_name = ref.strip().partition(":")
        view = get_view(view_name)
        feats = view.features if not feat_name else (view.feature(feat_name),)
        for f in feats:
            if (view.name, f.name) not in seen:
                seen.add((view.name, f.name))
                out.append((view, f))
    return out


def largest_hop() -> int:
    """The largest tile size used by any view."""
    return max(max(v.hops) for v in VIEWS.values())


def longest_window() -> int:
    """The longest window of any view."""
    return max(v.longest_window for v in VIEWS.values())
