"""What the traffic generator makes: :class:`GeneratorConfig` (its own module so that the generator's
parts can name it without importing the generator)."""

from __future__ import annotations

from dataclasses import dataclass

from fstore.core.timeutil import DAY

#: The example's event types, the values ``feature_repo/`` declares for ``event_type`` (the generator's codes
#: index into it).
EVENT_TYPES = ("page_view", "impression", "click", "add_to_cart", "purchase")


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate. Times are UTC epoch microseconds (see :mod:`fstore.core.timeutil`).

    Raises:
        ValueError: from construction, naming the first invalid field.
    """

    start: int
    end: int
    events: int | None = None  #: exact number of messages; None: derive from sessions_per_user_per_day
    users: int = 10_000
    products: int = 1_000
    sessions_per_user_per_day: float = 0.5
    page_views_per_session: float = 3.0  #: mean (1 + Poisson)
    impressions_per_session: float = 8.0  #: mean (Poisson)
    product_page_rate: float = 0.6  #: share of page views that name a product
    click_rate: float = 0.1  #: per impression
    cart_rate: float = 0.3  #: per click
    purchase_rate: float = 0.5  #: per add_to_cart
    zipf_exponent: float = 1.1  #: product popularity ∝ 1 / rank ** exponent
    peak_hour: float = 19.0  #: UTC hour of peak traffic
    night_ratio: float = 0.15  #: traffic at peak_hour + 12 h relative to the peak
    epoch_ms_rate: float = 0.1  #: share of event_time values written as epoch ms instead of ISO-8601
    duplicate_rate: float = 0.0
    late_rate: float = 0.0
    malformed_rate: float = 0.0
    pii_rate: float = 0.0
    batch_size: int = 100_000  #: target messages per slice and per yielded batch

    def __post_init__(self) -> None:
        rates = (
            "product_page_rate",
            "click_rate",
            "cart_rate",
            "purchase_rate",
            "epoch_ms_rate",
            "duplicate_rate",
            "late_rate",
            "malformed_rate",
            "pii_rate",
        )
        checks = [(f, 0.0 <= getattr(self, f) <= 1.0, "must be in [0, 1]") for f in rates] + [
            ("start", self.start >= 0, "must be >= 0 (after 1970)"),
            ("end", self.end > self.start, "must be after start"),
            ("events", self.events is None or self.events >= 0, "must be >= 0"),
            ("users", self.users >= 1, "must be >= 1"),
            ("products", self.products >= 1, "must be >= 1"),
            ("sessions_per_user_per_day", self.sessions_per_user_per_day >= 0, "must be >= 0"),
            ("page_views_per_session", self.page_views_per_session >= 1, "must be >= 1"),
            ("impressions_per_session", self.impressions_per_session >= 0, "must be >= 0"),
            ("zipf_exponent", self.zipf_exponent >= 0, "must be >= 0"),
            ("peak_hour", 0 <= self.peak_hour < 24, "must be in [0, 24)"),
            ("night_ratio", 0.01 <= self.night_ratio <= 1, "must be in [0.01, 1]"),
            ("duplicate_rate", self.duplicate_rate + self.malformed_rate < 1, "+ malformed_rate must be < 1"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
        ]
        for field, ok, rule in checks:
            if not ok:
                raise ValueError(f"GeneratorConfig.{field} = {getattr(self, field)!r} {rule}")

    @property
    def days(self) -> float:
        """Length of the range in days."""
        return (self.end - self.start) / DAY
